//! The collection cycle: sources -> samples -> rates -> snapshot.
//!
//! Once per interval [`Collector::cycle`] brings the task set up to date (cgroupfs scan,
//! configured allocations), reads CPU from the eBPF programs (or /proc), reads each
//! task's cgroup memory and throttling, turns two readings into rates, and returns an
//! immutable [`Snapshot`]. Nothing here runs on the request path.

pub mod assemble;
pub mod ebpf;
mod fastmap;
pub mod rates;
pub mod runner;
pub mod sample;
pub mod tasks;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::{debug, error, warn};

use self::{
    assemble::{PidFigures, TaskFigures},
    ebpf::{EbpfReading, EbpfSource},
    rates::{total_ticks, CpuRates},
    sample::ProcessSample,
    tasks::{Members, TaskEntry, TaskSet},
};
use crate::{
    cgroup::{CgroupMounts, Discovery, NomadParents},
    config::{Config, SourceChoice, StaticAllocation},
    kernel::{Attribution, KernelOptions},
    procfs::{HostReader, ProcReader},
    snapshot::{AllocEntry, AllocInfo, CpuSourceKind, Health, Snapshot, TaskInfo},
};

#[derive(Debug, Error)]
pub enum CollectError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF is required (source = \"ebpf\") but could not be loaded: {0}")]
    EbpfRequired(String),
}

/// The settings a running collector can take from a reloaded configuration.
#[derive(Clone, Debug)]
struct Settings {
    idle_refresh: Duration,
    cpu_total_compute: Option<u64>,
    data_dirs: Vec<PathBuf>,
    allocations: Vec<StaticAllocation>,
}

impl Settings {
    fn from_config(config: &Config) -> Self {
        Self {
            idle_refresh: config.idle_refresh,
            cpu_total_compute: (config.cpu_total_compute > 0).then_some(config.cpu_total_compute),
            data_dirs: config.data_dirs.clone(),
            allocations: config.allocations.clone(),
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time this thread has used (the collector runs on its own thread).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Picks the cgroup hierarchies threads are attributed by.
fn attribution_for(config: &Config, mounts: &CgroupMounts) -> Attribution {
    match config.ebpf.attribution.as_str() {
        "auto" => Attribution {
            v1_controller: ["cpuacct", "cpu", "memory"]
                .into_iter()
                .find(|c| mounts.v1.contains_key(*c))
                .map(str::to_owned),
            v2: mounts.v2.is_some(),
        },
        "v2" => Attribution {
            v1_controller: None,
            v2: true,
        },
        controller => Attribution {
            v1_controller: Some(controller.to_owned()),
            v2: false,
        },
    }
}

pub struct Collector {
    settings: Settings,
    discovery: Option<Discovery>,
    ebpf: Option<EbpfSource>,
    fallback_reason: Option<String>,
    procs: ProcReader,
    host: HostReader,
    tasks: TaskSet,
    /// When the previous scan ran (CLOCK_MONOTONIC ns): tasks found now count their
    /// threads from there.
    previous_scan_ns: u64,
    cycles: u64,
    cycle_errors: u64,
    pid_scratch: Vec<u32>,
    /// The task set generation the kernel map was last brought up to date with.
    synced_generation: Option<u64>,
    /// Cgroup ids the kernel map had no room for (their tasks are measured from /proc).
    untrackable: HashSet<u64>,
}

impl Collector {
    /// Sets up the sources. With `source = auto`, an eBPF failure is logged loudly and
    /// the collector measures CPU from /proc instead.
    pub fn new(config: &Config) -> Result<Self, CollectError> {
        let open_err = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| CollectError::Open { path, source }
        };
        let proc_root = config.proc_root.clone();
        let mounts = match &config.cgroup_root {
            Some(root) => CgroupMounts::probe_root(root).map_err(open_err(root))?,
            None => {
                let mountinfo = proc_root
                    .join(std::process::id().to_string())
                    .join("mountinfo");
                CgroupMounts::from_mountinfo_file(&mountinfo).map_err(open_err(&mountinfo))?
            }
        };
        let attribution = attribution_for(config, &mounts);
        // Nomad writes its cgroup_parent as "/nomad"; the trees here take relative paths.
        let parents = NomadParents {
            v1: config
                .nomad
                .cgroup_parent_v1
                .trim_start_matches('/')
                .to_owned(),
            v2: config
                .nomad
                .cgroup_parent_v2
                .trim_start_matches('/')
                .to_owned(),
        };
        let discovery = match Discovery::new(mounts.clone(), parents, &proc_root) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "cgroup discovery unavailable: only configured allocations are followed");
                None
            }
        };
        let procs = ProcReader::open(&proc_root).map_err(open_err(&proc_root))?;
        let host = HostReader::open(&proc_root, std::path::Path::new("/sys"))
            .map_err(open_err(&proc_root))?;

        let (ebpf, fallback_reason) = match config.source {
            SourceChoice::Procfs => (None, None),
            choice => {
                let options = KernelOptions {
                    attribution,
                    max_tracked_cgroups: config.ebpf.max_tracked_cgroups,
                    pin_root: config.pin_root().map(|p| p.to_path_buf()),
                };
                match EbpfSource::load(&options) {
                    Ok(source) => (Some(source), None),
                    Err(e) if choice == SourceChoice::Ebpf => {
                        return Err(CollectError::EbpfRequired(e.to_string()))
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        error!(
                            reason = %reason,
                            "!!! eBPF COULD NOT BE LOADED: falling back to reading CPU time from /proc \
                             for every process every interval (Nomad's costly method; exited \
                             processes between samples are missed). Run as root on a kernel with \
                             BTF, tp_btf and task iterators (5.11+) to use eBPF."
                        );
                        (None, Some(reason))
                    }
                }
            }
        };
        Ok(Self {
            settings: Settings::from_config(config),
            discovery,
            ebpf,
            fallback_reason,
            procs,
            host,
            tasks: TaskSet::default(),
            previous_scan_ns: monotonic_ns(),
            cycles: 0,
            cycle_errors: 0,
            pid_scratch: Vec::new(),
            synced_generation: None,
            untrackable: HashSet::new(),
        })
    }

    pub fn source_kind(&self) -> CpuSourceKind {
        if self.ebpf.is_some() {
            CpuSourceKind::Ebpf
        } else {
            CpuSourceKind::Procfs
        }
    }

    /// The eBPF source, when in use.
    pub fn ebpf(&self) -> Option<&EbpfSource> {
        self.ebpf.as_ref()
    }

    /// Takes the reloadable settings of a new configuration (already validated).
    pub fn reconfigure(&mut self, config: &Config) {
        self.settings = Settings::from_config(config);
    }

    /// One collection cycle.
    pub fn cycle(&mut self) -> Snapshot {
        let started = Instant::now();
        let cpu_before = thread_cpu_time();
        let mut errors = 0u64;

        let scan_ns = monotonic_ns();
        let attribution = self.ebpf.as_ref().map(|e| e.attribution().clone());
        self.tasks.refresh(
            self.discovery.as_mut(),
            &self.settings.allocations,
            attribution.as_ref(),
            // The first cycle counts from now (processes already running start at 0);
            // later ones from the previous scan, so a task's first children are counted.
            if self.cycles == 0 {
                scan_ns
            } else {
                self.previous_scan_ns
            },
        );
        self.previous_scan_ns = scan_ns;

        let reading = match self.ebpf.as_mut() {
            Some(ebpf) => {
                if self.synced_generation != Some(self.tasks.generation()) {
                    let wanted = self.tasks.attribution_ids();
                    match ebpf.sync(&wanted) {
                        Ok(full) => {
                            self.untrackable = full;
                            // Cgroups that did not fit are tried again next cycle.
                            if self.untrackable.is_empty() {
                                self.synced_generation = Some(self.tasks.generation());
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            warn!(error = %e, "updating the tracked cgroups failed");
                        }
                    }
                }
                match ebpf.read() {
                    Ok(()) => true,
                    Err(e) => {
                        errors += 1;
                        warn!(error = %e, "reading the eBPF programs failed; CPU figures are 0 this cycle");
                        false
                    }
                }
            }
            None => false,
        };
        let reading = if reading {
            self.ebpf.as_ref().map(EbpfSource::reading)
        } else {
            None
        };
        let at = Instant::now();
        let timestamp = unix_ns();

        let (total_compute, cores) = self.compute_capacity();
        let ticks_per_percent = total_ticks(1.0, total_compute, cores);
        let kernel_memory = self
            .ebpf
            .as_ref()
            .is_some_and(EbpfSource::reads_process_memory);

        let mut allocs: BTreeMap<String, (AllocInfo, Vec<(String, TaskFigures)>)> = BTreeMap::new();
        let mut vanished = Vec::new();
        for (key, task) in self.tasks.tasks.iter_mut() {
            let by_kernel = reading.is_some()
                && !task.attribution.is_empty()
                && !task
                    .attribution
                    .iter()
                    .any(|id| self.untrackable.contains(id));
            let TaskCpu {
                rates,
                total_ns: cpu_total_ns,
                processes,
            } = if by_kernel {
                let reading = reading.expect("checked above");
                kernel_task_cpu(task, reading, at)
            } else {
                match procfs_task_cpu(task, &mut self.procs, &mut self.pid_scratch, at) {
                    Some(r) => r,
                    None => {
                        vanished.push(key.clone());
                        continue;
                    }
                }
            };
            let pids: Vec<PidFigures> = processes
                .iter()
                .map(|(p, rates)| PidFigures {
                    pid: p.pid,
                    rates: *rates,
                    memory: p.memory.or_else(|| {
                        // eBPF on a kernel whose mm layout we do not know: /proc for this
                        // process only (the kernel normally gives it for free).
                        (by_kernel && !kernel_memory)
                            .then(|| read_process_memory(&mut self.procs, p.pid))
                            .flatten()
                    }),
                })
                .collect();

            if let Err(gone) = refresh_cgroup_figures(task, &rates, at, self.settings.idle_refresh)
            {
                if gone {
                    vanished.push(key.clone());
                    continue;
                }
                errors += 1;
            }
            let figures = TaskFigures {
                rates,
                memory: task.memory,
                throttling: task.throttling,
                pids,
                timestamp,
            };
            let (info, tasks) = allocs.entry(key.0.clone()).or_insert_with(|| {
                (
                    AllocInfo {
                        id: key.0.clone(),
                        origin: task.origin.clone(),
                        job: task.meta.job.clone(),
                        namespace: task.meta.namespace.clone(),
                        task_group: task.meta.task_group.clone(),
                        tasks: Vec::new(),
                    },
                    Vec::new(),
                )
            });
            info.tasks.push(TaskInfo {
                name: key.1.clone(),
                cgroups: task.cgroup_paths.clone(),
                pids: match &task.members {
                    Members::Pids(p) => p.clone(),
                    Members::Cgroups(_) => Vec::new(),
                },
                cpu_total_ns,
            });
            tasks.push((key.1.clone(), figures));
        }
        for key in vanished {
            debug!(alloc_id = %key.0, task = %key.1, "task cgroup vanished during the cycle");
            self.tasks.tasks.remove(&key);
        }

        let host = self
            .host
            .sample(&self.settings.data_dirs, self.settings.cpu_total_compute);
        self.cycles += 1;
        if errors > 0 {
            self.cycle_errors += 1;
        }
        let health = self.health(
            reading,
            started.elapsed(),
            thread_cpu_time().saturating_sub(cpu_before),
        );
        Snapshot {
            taken_at_unix_ns: timestamp,
            allocations: allocs
                .into_iter()
                .map(|(id, (info, tasks))| {
                    let entry = AllocEntry::lazy(info, move || {
                        tasks
                            .iter()
                            .map(|(name, f)| (name.clone(), f.usage(ticks_per_percent)))
                            .collect()
                    });
                    (id, Arc::new(entry))
                })
                .collect(),
            host,
            health,
            ..Snapshot::default()
        }
    }

    /// (TotalCompute MHz, logical cores) for TotalTicks.
    fn compute_capacity(&self) -> (f64, u32) {
        let cores = self.host.frequencies().len().max(1) as u32;
        let total = self
            .settings
            .cpu_total_compute
            .unwrap_or_else(|| self.host.total_compute_mhz());
        (total as f64, cores)
    }

    fn health(&self, reading: Option<&EbpfReading>, took: Duration, cpu: Duration) -> Health {
        let mut health = Health {
            source: self.source_kind(),
            fallback_reason: self.fallback_reason.clone(),
            cycle_duration: took,
            cycle_cpu: cpu,
            cycles: self.cycles,
            cycle_errors: self.cycle_errors,
            ..Health::default()
        };
        if let Some(ebpf) = &self.ebpf {
            health.programs_attached = 2;
            health.kernel = ebpf.kernel_stats();
            (
                health.sched_switch_run_count,
                health.sched_switch_run_time_ns,
            ) = ebpf.sched_switch_run_stats();
            health.tracked_cgroups = ebpf.tracked() as u64;
            health.max_tracked_cgroups = u64::from(ebpf.max_tracked());
            health.tracked_cgroups_full = ebpf.full_events();
            health.threads_sampled = reading.map_or(0, |r| r.threads as u64);
        }
        health
    }
}

/// A task's CPU over one interval.
struct TaskCpu {
    rates: CpuRates,
    /// Cumulative CPU ns (see `TaskInfo::cpu_total_ns`).
    total_ns: u64,
    processes: Vec<(ProcessSample, CpuRates)>,
}

/// Per-PID rates: each process against its previous reading (same PID and start).
fn pid_rates(
    task: &mut TaskEntry,
    processes: Vec<ProcessSample>,
    at: Instant,
) -> Vec<(ProcessSample, CpuRates)> {
    let live: HashSet<u32> = processes.iter().map(|p| p.pid).collect();
    task.pids.retain(|pid, _| live.contains(pid));
    processes
        .into_iter()
        .map(|p| {
            let rates = task
                .pids
                .entry(p.pid)
                .or_default()
                .update(p.start, p.cpu, at);
            (p, rates)
        })
        .collect()
}

/// eBPF: the task's CPU is its cgroups' cumulative counters (exited processes included);
/// its processes are the iterator's.
fn kernel_task_cpu(task: &mut TaskEntry, reading: &EbpfReading, at: Instant) -> TaskCpu {
    let mut cumulative = sample::CpuTimes::default();
    let mut processes = Vec::new();
    for id in &task.attribution {
        if let Some(cpu) = reading.cgroups.get(id) {
            cumulative = cumulative.saturating_add(*cpu);
        }
        processes.extend(reading.processes_of(*id).copied());
    }
    processes.sort_unstable_by_key(|p| p.pid);
    let identity = task.identity();
    let rates = task.cpu.update(identity, cumulative, at);
    TaskCpu {
        rates,
        total_ns: cumulative.run_ns,
        processes: pid_rates(task, processes, at),
    }
}

/// /proc (Nomad's method): every process of the task, every interval; the task's CPU is
/// the sum of its processes' rates, so a process that exited between two samples is not
/// counted. None when the task's cgroup vanished.
fn procfs_task_cpu(
    task: &mut TaskEntry,
    procs: &mut ProcReader,
    scratch: &mut Vec<u32>,
    at: Instant,
) -> Option<TaskCpu> {
    // The task's own cumulative counter is the kernel's; measured this way it has none,
    // so a later switch back to eBPF starts from a first sample.
    task.cpu = rates::CounterTrack::default();
    scratch.clear();
    match &task.members {
        Members::Cgroups(cgroups) => match cgroups.read_procs() {
            Ok(pids) => scratch.extend(pids),
            Err(e) if e.is_vanished() => return None,
            Err(e) => warn!(error = %e, "listing a task's processes"),
        },
        Members::Pids(pids) => scratch.extend(pids),
    }
    let mut processes = Vec::with_capacity(scratch.len());
    for &pid in scratch.iter() {
        match procs.sample(pid, true) {
            Ok(Some(sample)) => processes.push(sample),
            Ok(None) => {}
            Err(e) => debug!(pid, error = %e, "reading a process"),
        }
    }
    let cpu_total_ns = processes.iter().map(|p| p.cpu.run_ns).sum();
    let pids = pid_rates(task, processes, at);
    let mut rates = CpuRates::default();
    for (_, r) in &pids {
        rates.percent += r.percent;
        rates.user_mode += r.user_mode;
        rates.system_mode += r.system_mode;
    }
    Some(TaskCpu {
        rates,
        total_ns: cpu_total_ns,
        processes: pids,
    })
}

fn read_process_memory(procs: &mut ProcReader, pid: u32) -> Option<sample::ProcessMemory> {
    let statm = procs.read_statm(pid).ok()??;
    let swap = procs.read_vmswap(pid).ok()?.unwrap_or(0);
    Some(sample::ProcessMemory {
        rss_bytes: statm.resident * crate::procfs::page_size(),
        swap_bytes: swap,
    })
}

/// Reads the task's cgroup memory and throttling when they can have changed: the task ran
/// this interval (throttling only moves when it runs), or `idle_refresh` passed.
/// `Err(true)`: the cgroup is gone.
fn refresh_cgroup_figures(
    task: &mut TaskEntry,
    rates: &CpuRates,
    at: Instant,
    idle_refresh: Duration,
) -> Result<(), bool> {
    let Some(cgroups) = task.cgroups() else {
        return Ok(());
    };
    let due = match task.cgroups_read_at {
        None => true,
        Some(last) => rates.percent > 0.0 || at.saturating_duration_since(last) >= idle_refresh,
    };
    if !due {
        return Ok(());
    }
    let memory = cgroups.read_memory();
    let throttling = cgroups.read_throttling();
    match (memory, throttling) {
        (Ok(memory), Ok(throttling)) => {
            task.memory = Some(memory);
            task.throttling = throttling;
            task.cgroups_read_at = Some(at);
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) if e.is_vanished() => Err(true),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "reading a task's cgroup");
            Err(false)
        }
    }
}
