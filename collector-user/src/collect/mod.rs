//! The collection cycle: sources -> samples -> rates -> snapshot.
//!
//! Once per interval [`Collector::cycle`] brings the task set up to date (cgroupfs scan,
//! configured allocations), reads every task's CPU, processes and cgroup memory and
//! throttling, turns two readings into rates, and returns an immutable [`Snapshot`].
//! Nothing here runs on the request path: every allocation is complete in every
//! snapshot, whether anyone asks or not.
//!
//! | | eBPF source | /proc source (Nomad's method) |
//! |---|---|---|
//! | task CPU | kernel counters of every tracked cgroup: one batch read | sum of the processes' |
//! | processes (`Pids`) | one task-iterator pass over the host for every tracked cgroup | `cgroup.procs`, then /proc per process |
//! | cgroup memory, throttling | control files kept open, re-read | the same |

pub mod assemble;
pub mod ebpf;
pub mod fastmap;
pub mod rates;
pub mod runner;
pub mod tasks;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::{debug, error, warn};

use self::{
    assemble::PidFigures,
    ebpf::EbpfSource,
    fastmap::FastMap,
    rates::{total_ticks, CounterTrack, CpuRates},
    tasks::{Members, TaskEntry, TaskKey, TaskSet},
};
use crate::{
    cgroup::{CgroupMounts, Discovery, NomadParents},
    config::{Config, SourceChoice, StaticAllocation},
    kernel::{Attribution, KernelOptions, ThreadStateChoice, ThreadStateStore},
    procfs::{HostReader, ProcReader},
    sample::{self, KernelCounters, ProcessSample},
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
    cpu_total_compute: Option<u64>,
    data_dirs: Vec<PathBuf>,
    allocations: Vec<StaticAllocation>,
}

impl Settings {
    fn from_config(config: &Config) -> Self {
        Self {
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
    /// The task set generation the kernel map was last brought up to date with.
    synced_generation: Option<u64>,
    /// Cgroup ids the kernel map had no room for (their tasks are measured per process).
    untrackable: HashSet<u64>,
    /// `TotalTicks` of one percent of a core, as of the last cycle.
    ticks_per_percent: f64,
    /// Cumulative CPU per tracked cgroup id from the last kernel reading (exited threads
    /// included); kept between cycles to reuse its allocation.
    kernel_cpu: FastMap<u64, KernelCounters>,
    scratch: Scratch,
}

/// Buffers reused from cycle to cycle, and what they sampled.
#[derive(Default)]
struct Scratch {
    pids: Vec<u32>,
    samples: Vec<ProcessSample>,
    /// Processes sampled in the current cycle.
    sampled: u64,
}

/// Where a task's figures come from this cycle, borrowed from the collector.
struct Sources<'a> {
    ebpf: Option<&'a mut EbpfSource>,
    procs: &'a mut ProcReader,
    scratch: &'a mut Scratch,
}

/// The task's cgroups are gone: it ended.
struct Vanished;

impl Sources<'_> {
    /// Samples every process of the task. A task whose cgroups the kernel tracks
    /// (`tracked`) takes them from this cycle's task-iterator pass; any other lists them
    /// from its cgroups (descendants included) or the configuration and reads each from
    /// /proc. Processes that exit meanwhile are skipped.
    fn processes_of(
        &mut self,
        task: &TaskEntry,
        tracked: bool,
    ) -> Result<Vec<ProcessSample>, Vanished> {
        let samples = &mut self.scratch.samples;
        samples.clear();
        match self
            .ebpf
            .as_deref()
            .filter(|e| tracked && e.has_processes())
        {
            Some(ebpf) => {
                for &id in &task.attribution {
                    samples.extend_from_slice(ebpf.processes_in(id));
                }
                if task.attribution.len() > 1 {
                    merge_same_processes(samples);
                }
                if !ebpf.reads_process_memory() {
                    // A kernel whose mm_struct layout is unknown: memory from /proc.
                    for process in samples.iter_mut() {
                        process.memory = read_process_memory(self.procs, process.pid);
                    }
                }
            }
            None => {
                let pids = &mut self.scratch.pids;
                pids.clear();
                match &task.members {
                    Members::Cgroups(cgroups) => match cgroups.read_procs() {
                        Ok(listed) => pids.extend(listed),
                        Err(e) if e.is_vanished() => return Err(Vanished),
                        Err(e) => warn!(error = %e, "listing a task's processes"),
                    },
                    Members::Pids(configured) => pids.extend(configured),
                }
                for &pid in pids.iter() {
                    match self.procs.sample(pid, true) {
                        Ok(Some(sample)) => samples.push(sample),
                        Ok(None) => {}
                        Err(e) => debug!(pid, error = %e, "reading a process"),
                    }
                }
                // Listed from cgroups they are; configured ones need not be.
                samples.sort_unstable_by_key(|p| p.pid);
                samples.dedup_by_key(|p| p.pid);
            }
        }
        self.scratch.sampled += samples.len() as u64;
        Ok(samples.clone())
    }
}

/// Sorts by PID and makes one sample of a process seen in several of the task's
/// cgroups (threads of one process in two cgroups, which cgroup v2's threaded mode
/// allows): its CPU added up, start and memory from the part that has them.
fn merge_same_processes(samples: &mut Vec<ProcessSample>) {
    samples.sort_unstable_by_key(|p| p.pid);
    samples.dedup_by(|later, kept| {
        if later.pid != kept.pid {
            return false;
        }
        kept.cpu = kept.cpu.saturating_add(later.cpu);
        kept.start = kept.start.min(later.start);
        kept.memory = kept.memory.or(later.memory);
        true
    });
}

/// A task's CPU over one interval.
struct TaskCpu {
    rates: CpuRates,
    /// Cumulative CPU ns (see `TaskInfo::cpu_total_ns`).
    total_ns: u64,
    /// Per-process figures.
    processes: Vec<(ProcessSample, CpuRates)>,
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
                    thread_state: match config.ebpf.thread_state.as_str() {
                        "task_storage" => ThreadStateChoice::Only(ThreadStateStore::TaskStorage),
                        "hash" => ThreadStateChoice::Only(ThreadStateStore::Hash),
                        _ => ThreadStateChoice::Auto,
                    },
                    max_threads: config.ebpf.max_threads,
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
                             BTF and tp_btf programs (5.10+) to use eBPF."
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
            synced_generation: None,
            untrackable: HashSet::new(),
            ticks_per_percent: 0.0,
            kernel_cpu: FastMap::default(),
            scratch: Scratch::default(),
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

        let kernel_read = match self.ebpf.as_mut() {
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
                let read = match ebpf.read(&mut self.kernel_cpu) {
                    Ok(()) => true,
                    Err(e) => {
                        errors += 1;
                        warn!(error = %e, "reading the eBPF programs failed; CPU figures are 0 this cycle");
                        false
                    }
                };
                if ebpf.samples_processes() {
                    if let Err(e) = ebpf.sample_processes() {
                        errors += 1;
                        warn!(error = %e, "the task iterator failed; processes are read from /proc this cycle");
                    }
                }
                read
            }
            None => false,
        };
        let at = Instant::now();
        let timestamp = unix_ns();
        let (total_compute, cores) = self.compute_capacity();
        self.ticks_per_percent = total_ticks(1.0, total_compute, cores);

        self.scratch.sampled = 0;
        let mut vanished = Vec::new();
        let mut sources = Sources {
            ebpf: self.ebpf.as_mut(),
            procs: &mut self.procs,
            scratch: &mut self.scratch,
        };
        for (key, task) in self.tasks.tasks.iter_mut() {
            let kernel = (kernel_read
                && !task.attribution.is_empty()
                && !task
                    .attribution
                    .iter()
                    .any(|id| self.untrackable.contains(id)))
            .then_some(&self.kernel_cpu);
            let cpu = match task_cpu(task, kernel, &mut sources, at) {
                Ok(cpu) => cpu,
                Err(Vanished) => {
                    vanished.push(key.clone());
                    continue;
                }
            };
            match refresh_cgroup_figures(task, at) {
                Ok(()) => {}
                Err(true) => {
                    vanished.push(key.clone());
                    continue;
                }
                Err(false) => errors += 1,
            }
            task.set_figures(
                cpu.rates,
                cpu.total_ns,
                pid_figures(&cpu.processes),
                timestamp,
            );
        }
        for key in vanished {
            debug!(alloc_id = %key.0, task = %key.1, "task cgroup vanished during the cycle");
            self.tasks.remove(&key);
        }

        let host = self
            .host
            .sample(&self.settings.data_dirs, self.settings.cpu_total_compute);
        self.cycles += 1;
        if errors > 0 {
            self.cycle_errors += 1;
        }
        let allocations = self.allocation_entries();
        let health = self.health(
            started.elapsed(),
            thread_cpu_time().saturating_sub(cpu_before),
        );
        Snapshot {
            taken_at_unix_ns: timestamp,
            allocations,
            host,
            health,
            ..Snapshot::default()
        }
    }

    /// Every allocation's snapshot entry.
    fn allocation_entries(&self) -> HashMap<String, Arc<AllocEntry>> {
        let mut out = HashMap::new();
        let mut tasks = self.tasks.tasks.iter().peekable();
        while let Some(((alloc_id, _), _)) = tasks.peek() {
            let alloc_id = alloc_id.clone();
            let group: Vec<(&TaskKey, &TaskEntry)> =
                std::iter::from_fn(|| tasks.next_if(|((a, _), _)| *a == alloc_id)).collect();
            if let Some(entry) = self.entry_of(&alloc_id, group) {
                out.insert(alloc_id, Arc::new(entry));
            }
        }
        out
    }

    /// The entry of allocation `alloc_id` made of `tasks` (all its tasks). Nomad's types
    /// are built from the tasks' figures only when something reads them.
    fn entry_of(&self, alloc_id: &str, tasks: Vec<(&TaskKey, &TaskEntry)>) -> Option<AllocEntry> {
        let (_, first) = tasks.first()?;
        let mut info = AllocInfo {
            id: alloc_id.to_owned(),
            origin: first.origin.clone(),
            job: first.meta.job.clone(),
            namespace: first.meta.namespace.clone(),
            task_group: first.meta.task_group.clone(),
            tasks: Vec::with_capacity(tasks.len()),
        };
        let mut figures = Vec::with_capacity(tasks.len());
        let wait_measured = self
            .ebpf
            .as_ref()
            .is_some_and(|e| e.features().cpu_wait.enabled);
        for ((_, name), task) in tasks {
            let Some(f) = &task.figures else {
                continue;
            };
            info.tasks.push(TaskInfo {
                name: name.clone(),
                cgroups: task.cgroup_paths.clone(),
                pids: match &task.members {
                    Members::Pids(p) => p.clone(),
                    Members::Cgroups(_) => Vec::new(),
                },
                cpu_total_ns: task.cpu_total_ns,
                extra: task.extra_figures(wait_measured),
            });
            figures.push((name.clone(), Arc::clone(f)));
        }
        if figures.is_empty() {
            return None;
        }
        let ticks_per_percent = self.ticks_per_percent;
        Some(AllocEntry::lazy(info, move || {
            figures
                .iter()
                .map(|(name, f)| (name.clone(), f.usage(ticks_per_percent)))
                .collect()
        }))
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

    fn health(&self, took: Duration, cpu: Duration) -> Health {
        let mut health = Health {
            source: self.source_kind(),
            fallback_reason: self.fallback_reason.clone(),
            cycle_duration: took,
            cycle_cpu: cpu,
            cycles: self.cycles,
            cycle_errors: self.cycle_errors,
            processes_sampled: self.scratch.sampled,
            control_files_open: crate::cgroup::control_files::kept() as u64,
            ..Health::default()
        };
        if let Some(ebpf) = &self.ebpf {
            let features = ebpf.features();
            health.programs_attached = 1
                + u32::from(features.checkpoint.enabled)
                + u32::from(features.process_iter.enabled);
            health.kernel_features = Some(features.clone());
            health.kernel = ebpf.kernel_stats();
            (
                health.sched_switch_run_count,
                health.sched_switch_run_time_ns,
            ) = ebpf.program_run_stats().sched_switch;
            health.tracked_cgroups = ebpf.tracked() as u64;
            health.max_tracked_cgroups = u64::from(ebpf.max_tracked());
            health.tracked_cgroups_full = ebpf.full_events();
            health.checkpoint_failures = ebpf.checkpoint_failures();
        }
        health
    }
}

/// One task's CPU and processes this cycle.
///
/// With `kernel` counters (eBPF, the task's cgroups tracked): the task's CPU is the
/// change of its cgroups' cumulative counters, exited processes included, and its
/// processes come from the cycle's task-iterator pass. Otherwise (the /proc source,
/// configured PIDs, cgroups that did not fit the kernel map) the task's CPU is the sum
/// of its processes' (Nomad's method: a process that exited between two samples is not
/// counted).
fn task_cpu(
    task: &mut TaskEntry,
    kernel: Option<&FastMap<u64, KernelCounters>>,
    sources: &mut Sources<'_>,
    at: Instant,
) -> Result<TaskCpu, Vanished> {
    let Some(kernel) = kernel else {
        // No cumulative counter of the task's own this way: a later switch to the
        // kernel's starts from a first sample.
        task.cpu = CounterTrack::default();
        task.clear_kernel_counters();
        let processes = sources.processes_of(task, false)?;
        let total_ns = processes.iter().map(|p| p.cpu.run_ns).sum();
        let processes = pid_rates(task, processes, at);
        let mut rates = CpuRates::default();
        for (_, r) in &processes {
            rates.percent += r.percent;
            rates.user_mode += r.user_mode;
            rates.system_mode += r.system_mode;
        }
        return Ok(TaskCpu {
            rates,
            total_ns,
            processes,
        });
    };
    let mut counters = KernelCounters::default();
    for id in &task.attribution {
        if let Some(c) = kernel.get(id) {
            counters = counters.saturating_add(*c);
        }
    }
    let cumulative = counters.cpu;
    let identity = task.identity();
    let rates = task.cpu.update(identity, cumulative, at);
    task.set_kernel_counters(counters, at);
    let processes = sources.processes_of(task, true)?;
    let processes = pid_rates(task, processes, at);
    Ok(TaskCpu {
        rates,
        total_ns: cumulative.run_ns,
        processes,
    })
}

/// Per-PID rates: each process against its previous reading (same PID and start).
/// `processes` are sorted by PID, as are the task's readings, which they replace: one
/// merge, no hashing, whatever the number of processes.
fn pid_rates(
    task: &mut TaskEntry,
    processes: Vec<ProcessSample>,
    at: Instant,
) -> Vec<(ProcessSample, CpuRates)> {
    debug_assert!(processes.is_sorted_by_key(|p| p.pid));
    let mut previous = std::mem::take(&mut task.pids).into_iter().peekable();
    let mut readings = Vec::with_capacity(processes.len());
    let rated = processes
        .into_iter()
        .map(|p| {
            while previous.next_if(|(pid, _)| *pid < p.pid).is_some() {}
            let mut track = previous
                .next_if(|(pid, _)| *pid == p.pid)
                .map(|(_, track)| track)
                .unwrap_or_default();
            let rates = track.update(p.start, p.cpu, at);
            readings.push((p.pid, track));
            (p, rates)
        })
        .collect();
    task.pids = readings;
    rated
}

fn read_process_memory(procs: &mut ProcReader, pid: u32) -> Option<sample::ProcessMemory> {
    let statm = procs.read_statm(pid).ok()??;
    let swap = procs.read_vmswap(pid).ok()?.unwrap_or(0);
    Some(sample::ProcessMemory {
        rss_bytes: statm.resident * crate::procfs::page_size(),
        swap_bytes: swap,
    })
}

/// Reads the task's cgroup memory and throttling. `Err(true)`: the cgroup is gone;
/// `Err(false)`: a read failed (logged; the previous figures stay).
fn refresh_cgroup_figures(task: &mut TaskEntry, at: Instant) -> Result<(), bool> {
    let Some(cgroups) = task.cgroups() else {
        return Ok(());
    };
    let memory = cgroups.read_memory();
    let throttling = cgroups.read_throttling();
    let pressure = cgroups.read_pressure();
    let oom_kills = cgroups.read_oom_kills();
    match (memory, throttling, pressure, oom_kills) {
        (Ok(memory), Ok(throttling), Ok(pressure), Ok(oom_kills)) => {
            task.memory = Some(memory);
            task.throttling = throttling;
            task.pressure = pressure;
            task.oom_kills = oom_kills;
            task.cgroups_read_at = Some(at);
            Ok(())
        }
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) if e.is_vanished() => {
            Err(true)
        }
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
            warn!(error = %e, "reading a task's cgroup");
            Err(false)
        }
    }
}

/// The per-process part of [`TaskFigures`].
fn pid_figures(processes: &[(ProcessSample, CpuRates)]) -> Vec<PidFigures> {
    processes
        .iter()
        .map(|(p, rates)| PidFigures {
            pid: p.pid,
            rates: *rates,
            memory: p.memory,
        })
        .collect()
}
