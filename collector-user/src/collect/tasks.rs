//! The set of tasks the collector follows: found in cgroupfs in Nomad's layouts, or
//! declared in the configuration. Each task keeps the state its rates need between
//! cycles; a task whose cgroup is recreated under the same name starts afresh.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tracing::{debug, info, warn};

use super::{
    assemble::{PidFigures, TaskFigures},
    ebpf::Tracking,
    rates::{CounterTrack, CpuRates},
    steady::{SteadyMemory, SteadyPressure},
};
use crate::{
    cgroup::{
        CgroupDir, DiscoveredTask, Discovery, Hierarchies, MemoryFigures, Pressure, PressureTotals,
        TaskCgroups, ThrottleFigures,
    },
    config::StaticAllocation,
    kernel::Attribution,
    sample::KernelCounters,
    snapshot::{AllocOrigin, CpuWait, PressureSeconds, ProcessChurn, TaskExtra, TaskPressure},
};

/// (allocation ID, task name).
pub type TaskKey = (String, String);

/// Labels of an allocation known from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocMeta {
    pub job: Option<String>,
    pub namespace: Option<String>,
    pub task_group: Option<String>,
}

/// How a task's processes are found.
#[derive(Clone, Debug)]
pub enum Members {
    /// Everything in the task's cgroups.
    Cgroups(TaskCgroups),
    /// A fixed list of PIDs from the configuration.
    Pids(Vec<u32>),
}

/// A task and what the collector remembers about it between cycles.
pub struct TaskEntry {
    /// The task's key, shared with every snapshot it appears in.
    pub alloc_id: Arc<str>,
    pub name: Arc<str>,
    pub origin: AllocOrigin,
    pub meta: Arc<AllocMeta>,
    pub members: Members,
    pub cgroup_paths: Arc<[PathBuf]>,
    /// Inodes of the task's cgroup directories: a change means "recreated".
    fingerprint: Vec<u64>,
    /// Cgroup ids the kernel attributes to this task (its cgroups in the attribution
    /// hierarchies and their descendants). Empty: not measurable by eBPF.
    pub attribution: Vec<u64>,
    /// The task's own cgroup among `attribution` (the one its processes are in unless
    /// they sit in child cgroups), with the ids of the memory and cpu cgroups whose
    /// counters the kernel reads alongside its processes.
    pub counter_cgroups: Option<CounterCgroups>,
    attribution_checked: u64,
    /// CLOCK_MONOTONIC ns from which the kernel counts this task's threads' time.
    pub since_ns: u64,
    pub cpu: CounterTrack,
    /// Each process's last reading, by PID (sorted): the next interval's rates.
    pub pids: Vec<(u32, CounterTrack)>,
    pub memory: Option<MemoryFigures>,
    pub throttling: ThrottleFigures,
    pub cgroups_read_at: Option<Instant>,
    /// Pressure stall totals (cgroup v2) and OOM kills, as last read with the memory.
    pub pressure: Option<Pressure>,
    pub oom_kills: Option<u64>,
    /// Whether the memory cgroup's counters stood still: `memory.stat` is then not read.
    pub steady_memory: SteadyMemory,
    /// Whether the task's kernel counters stood still since `pressure` was read: the
    /// pressure files are then not read.
    pub steady_pressure: SteadyPressure,
    /// What the kernel counted for the task (eBPF source), and the run-queue wait over
    /// the last interval as a share of wall time.
    kernel_counters: Option<KernelCounters>,
    wait_share: Option<f64>,
    /// The cumulative wait and when it was read, for the next interval's share.
    wait_prev: Option<(u64, Instant)>,
    /// Cumulative CPU ns (see `TaskInfo::cpu_total_ns`).
    pub cpu_total_ns: u64,
    /// The figures of the last cycle, shared with the snapshot that shows them.
    pub figures: Option<Arc<TaskFigures>>,
}

/// See [`TaskEntry::counter_cgroups`]: cgroup ids (directory inodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterCgroups {
    pub id: u64,
    pub memory_id: u64,
    pub cpu_id: u64,
}

/// How often (in cycles) a task's child cgroups are looked for again. Tasks are spread
/// over the period so that a thousand tasks found together do not all rescan in the
/// same cycle.
const DESCENDANT_RESCAN_CYCLES: u64 = 30;

impl TaskEntry {
    fn new(
        (alloc_id, name): &TaskKey,
        origin: AllocOrigin,
        meta: Arc<AllocMeta>,
        members: Members,
        cgroup_paths: Arc<[PathBuf]>,
        fingerprint: Vec<u64>,
        since_ns: u64,
    ) -> Self {
        Self {
            alloc_id: Arc::from(alloc_id.as_str()),
            name: Arc::from(name.as_str()),
            origin,
            meta,
            members,
            cgroup_paths,
            fingerprint,
            attribution: Vec::new(),
            counter_cgroups: None,
            attribution_checked: 0,
            since_ns,
            cpu: CounterTrack::default(),
            pids: Vec::new(),
            memory: None,
            throttling: ThrottleFigures::default(),
            cgroups_read_at: None,
            pressure: None,
            oom_kills: None,
            steady_memory: SteadyMemory::default(),
            steady_pressure: SteadyPressure::default(),
            kernel_counters: None,
            wait_share: None,
            wait_prev: None,
            cpu_total_ns: 0,
            figures: None,
        }
    }

    /// Records what the kernel counted for the task this cycle, and the share of the
    /// interval its threads waited on a run queue. A counter that went down (the task's
    /// cgroups changed, or the kernel map was rebuilt) gives no share this cycle.
    pub fn set_kernel_counters(&mut self, counters: KernelCounters, at: Instant) {
        self.wait_share = match self.wait_prev {
            Some((wait, then)) if counters.wait_ns >= wait && at > then => {
                Some((counters.wait_ns - wait) as f64 / (at - then).as_nanos() as f64)
            }
            _ => None,
        };
        self.wait_prev = Some((counters.wait_ns, at));
        self.kernel_counters = Some(counters);
    }

    /// What the kernel counted for the task this cycle (`None`: measured from /proc).
    pub fn kernel_counters(&self) -> Option<&KernelCounters> {
        self.kernel_counters.as_ref()
    }

    /// The task is measured from /proc this cycle: nothing kernel-counted to show.
    pub fn clear_kernel_counters(&mut self) {
        self.kernel_counters = None;
        self.wait_share = None;
        self.wait_prev = None;
    }

    /// The figures beyond Nomad's for the allocations list. `wait_measured`: the kernel
    /// keeps run-queue delays (else the wait is absent, not 0).
    pub fn extra_figures(&self, wait_measured: bool) -> TaskExtra {
        let seconds = |us: u64| us as f64 / 1e6;
        let totals = |p: Option<PressureTotals>| {
            p.map(|p| PressureSeconds {
                some_seconds: seconds(p.some_us),
                full_seconds: p.full_us.map(seconds),
            })
        };
        TaskExtra {
            cpu_wait: self
                .kernel_counters
                .filter(|_| wait_measured)
                .map(|k| CpuWait {
                    total_seconds: k.wait_ns as f64 / 1e9,
                    percent: self.wait_share.map(|s| s * 100.0),
                }),
            processes: self.kernel_counters.map(|k| ProcessChurn {
                started: k.processes_started,
                exited: k.processes_exited,
            }),
            oom_kills: self.oom_kills,
            pressure: self.pressure.map(|p| TaskPressure {
                cpu: totals(p.cpu),
                memory: totals(p.memory),
                io: totals(p.io),
            }),
        }
    }

    /// Records this cycle's figures: CPU and processes as given, memory and throttling
    /// as last read.
    pub fn set_figures(
        &mut self,
        rates: CpuRates,
        cpu_total_ns: u64,
        pids: Vec<PidFigures>,
        timestamp: i64,
    ) {
        self.cpu_total_ns = cpu_total_ns;
        self.figures = Some(Arc::new(TaskFigures {
            rates,
            memory: self.memory,
            throttling: self.throttling,
            pids,
            timestamp,
        }));
    }

    /// Whether `cycle` is this task's turn of a job done every `period` cycles: tasks
    /// take turns by their identity, so that a thousand tasks found together do not all
    /// do it in the same cycle.
    pub fn turn(&self, cycle: u64, period: u64) -> bool {
        let period = period.max(1);
        // The identity's low bits follow the inode numbers' (consecutive numbers give
        // lopsided turns): take the phase from the well-mixed high bits of a Fibonacci
        // hash instead.
        let phase = (self.identity().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % period;
        (cycle % period + phase).is_multiple_of(period)
    }

    /// An identity for the task's cumulative counter: changes when its cgroups do.
    pub fn identity(&self) -> u64 {
        self.fingerprint
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, x| {
                (h ^ x).wrapping_mul(0x0100_0000_01b3)
            })
    }

    pub fn cgroups(&self) -> Option<&TaskCgroups> {
        match &self.members {
            Members::Cgroups(c) => Some(c),
            Members::Pids(_) => None,
        }
    }
}

/// The task cgroup directories the kernel attributes by, for a given attribution.
fn attribution_dirs<'a>(cgroups: &'a TaskCgroups, attribution: &Attribution) -> Vec<&'a CgroupDir> {
    let mut dirs = Vec::new();
    let v1 = match attribution.v1_controller.as_deref() {
        Some("cpuacct") => cgroups.cpuacct.as_ref(),
        Some("cpu") => cgroups.cpu.as_ref(),
        Some("memory") => cgroups.memory.as_ref(),
        _ => None,
    };
    dirs.extend(v1);
    if attribution.v2 {
        dirs.extend(cgroups.v2.as_ref());
    }
    dirs
}

fn cgroup_paths(cgroups: &TaskCgroups) -> Arc<[PathBuf]> {
    [&cgroups.cpu, &cgroups.cpuacct, &cgroups.memory, &cgroups.v2]
        .into_iter()
        .flatten()
        .map(CgroupDir::path)
        .collect()
}

fn fingerprint_of(task: &DiscoveredTask) -> Vec<u64> {
    let mut inodes: Vec<u64> = task
        .v1
        .values()
        .map(|c| c.inode)
        .chain(task.v2.iter().map(|c| c.inode))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes
}

/// All the tasks, by key.
#[derive(Default)]
pub struct TaskSet {
    pub tasks: BTreeMap<TaskKey, TaskEntry>,
    cycle: u64,
    /// Changes whenever a task or a task's cgroup ids change (see `generation`).
    generation: u64,
    /// Warned about these configured cgroups being absent.
    missing_warned: std::collections::HashSet<PathBuf>,
}

impl TaskSet {
    /// Brings the set up to date with cgroupfs and the configuration. `since_ns` is what
    /// new tasks count from (see [`TaskEntry::since_ns`]).
    pub fn refresh(
        &mut self,
        mut discovery: Option<&mut Discovery>,
        allocations: &[StaticAllocation],
        attribution: Option<&Attribution>,
        since_ns: u64,
    ) {
        self.cycle += 1;
        let mut seen: Vec<TaskKey> = Vec::new();
        let scan = discovery.as_deref_mut().map(Discovery::scan_if_changed);
        // Nothing changed in cgroupfs since the last scan: the tasks found then stand.
        let found_stand = matches!(scan, Some(None));
        if let (Some(discovery), Some(Some(scan))) = (discovery.as_deref_mut(), scan) {
            for found in scan {
                let key = (found.alloc_id.clone(), found.task.clone());
                let fingerprint = fingerprint_of(&found);
                let unchanged = self
                    .tasks
                    .get(&key)
                    .is_some_and(|t| t.fingerprint == fingerprint);
                if !unchanged {
                    let cgroups = discovery.task_cgroups(&found);
                    let recreated = self.tasks.contains_key(&key);
                    info!(
                        alloc_id = %found.alloc_id,
                        task = %found.task,
                        layout = %found.layout,
                        recreated,
                        "task found"
                    );
                    let entry = TaskEntry::new(
                        &key,
                        AllocOrigin::Nomad {
                            layout: found.layout.as_str(),
                        },
                        Arc::default(),
                        Members::Cgroups(cgroups.clone()),
                        cgroup_paths(&cgroups),
                        fingerprint,
                        since_ns,
                    );
                    self.tasks.insert(key.clone(), entry);
                    self.generation += 1;
                }
                seen.push(key);
            }
        }
        let hierarchies = discovery.as_deref().map(Discovery::hierarchies);
        self.refresh_static(hierarchies, allocations, since_ns, &mut seen);
        seen.sort();
        let before = self.tasks.len();
        self.tasks.retain(|key, task| {
            let keep = (found_stand && matches!(task.origin, AllocOrigin::Nomad { .. }))
                || seen.binary_search(key).is_ok();
            if !keep {
                info!(alloc_id = %key.0, task = %key.1, "task gone");
            }
            keep
        });
        if self.tasks.len() != before {
            self.generation += 1;
        }
        if let Some(attribution) = attribution {
            self.update_attribution(attribution);
        }
    }

    fn refresh_static(
        &mut self,
        hierarchies: Option<&Hierarchies>,
        allocations: &[StaticAllocation],
        since_ns: u64,
        seen: &mut Vec<TaskKey>,
    ) {
        for alloc in allocations {
            let meta = Arc::new(AllocMeta {
                job: alloc.job.clone(),
                namespace: alloc.namespace.clone(),
                task_group: alloc.task_group.clone(),
            });
            for task in &alloc.tasks {
                let key = (alloc.id.clone(), task.name.clone());
                let (members, paths, fingerprint) = match &task.cgroup {
                    Some(path) => {
                        let Some(cgroups) = self.static_cgroups(hierarchies, path) else {
                            continue;
                        };
                        let mut inodes: Vec<u64> =
                            [&cgroups.cpu, &cgroups.cpuacct, &cgroups.memory, &cgroups.v2]
                                .into_iter()
                                .flatten()
                                .filter_map(|d| d.inode().ok())
                                .collect();
                        inodes.sort_unstable();
                        let paths = cgroup_paths(&cgroups);
                        (Members::Cgroups(cgroups), paths, inodes)
                    }
                    None => (
                        Members::Pids(task.pids.clone()),
                        Arc::from([]),
                        task.pids.iter().map(|&p| p as u64).collect(),
                    ),
                };
                let unchanged = self.tasks.get(&key).is_some_and(|t| {
                    t.fingerprint == fingerprint
                        && *t.meta == *meta
                        && t.origin == AllocOrigin::Config
                });
                if !unchanged {
                    info!(alloc_id = %alloc.id, task = %task.name, "configured task added");
                    self.generation += 1;
                    self.tasks.insert(
                        key.clone(),
                        TaskEntry::new(
                            &key,
                            AllocOrigin::Config,
                            Arc::clone(&meta),
                            members,
                            paths,
                            fingerprint,
                            since_ns,
                        ),
                    );
                }
                seen.push(key);
            }
        }
    }

    /// Readers for a configured cgroup path, or None (warned once) while it is absent.
    fn static_cgroups(
        &mut self,
        hierarchies: Option<&Hierarchies>,
        path: &Path,
    ) -> Option<TaskCgroups> {
        let found = hierarchies.and_then(|h| h.task_cgroups_at(path));
        let present = found.as_ref().is_some_and(|c| {
            [&c.cpu, &c.cpuacct, &c.memory, &c.v2]
                .into_iter()
                .flatten()
                .any(|d| d.inode().is_ok())
        });
        if present {
            self.missing_warned.remove(path);
            found
        } else {
            if self.missing_warned.insert(path.to_path_buf()) {
                warn!(path = %path.display(), "configured task cgroup does not exist (yet); skipping it");
            }
            None
        }
    }

    fn update_attribution(&mut self, attribution: &Attribution) {
        let cycle = self.cycle;
        for (key, task) in &mut self.tasks {
            let due = task.attribution_checked == 0
                || (cycle - task.attribution_checked >= DESCENDANT_RESCAN_CYCLES / 2
                    && task.turn(cycle, DESCENDANT_RESCAN_CYCLES));
            if !due {
                continue;
            }
            task.attribution_checked = cycle;
            let Some(cgroups) = task.cgroups() else {
                continue;
            };
            let dirs = attribution_dirs(cgroups, attribution);
            let inode = |dir: Option<&CgroupDir>| dir.and_then(|d| d.inode().ok());
            // The kernel looks a thread's v1 cgroup up first, so the first directory is
            // where the task's own processes get their slot.
            let counter_cgroups = inode(dirs.first().copied()).map(|id| CounterCgroups {
                id,
                memory_id: inode(cgroups.memory_dir()).unwrap_or(0),
                cpu_id: inode(cgroups.cpu_dir()).unwrap_or(0),
            });
            let mut ids = Vec::new();
            for dir in dirs {
                match dir.inode() {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        debug!(alloc_id = %key.0, task = %key.1, error = %e, "task cgroup gone while reading its id");
                        continue;
                    }
                }
                match dir.descendants() {
                    Ok(children) => ids.extend(children.into_iter().map(|(_, id)| id)),
                    Err(e) => debug!(error = %e, "listing child cgroups"),
                }
            }
            ids.sort_unstable();
            ids.dedup();
            task.counter_cgroups = counter_cgroups;
            if task.attribution != ids {
                task.attribution = ids;
                self.generation += 1;
            }
        }
    }

    /// Forgets a task whose cgroups vanished (its cgroup ids leave the kernel map at the
    /// next sync).
    pub fn remove(&mut self, key: &TaskKey) {
        if self.tasks.remove(key).is_some() {
            self.generation += 1;
        }
    }

    /// A number that changes whenever the set of tasks or of their cgroup ids does: the
    /// kernel's tracked-cgroup map needs updating only then.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every cgroup id to track: the time its task counts from, and for each task's own
    /// cgroup the memory and cpu cgroups whose counters are read with it.
    pub fn attribution_ids(&self) -> HashMap<u64, Tracking> {
        self.tasks
            .values()
            .flat_map(|t| {
                t.attribution.iter().map(move |&id| {
                    let counters = t.counter_cgroups.filter(|c| c.id == id);
                    let tracking = Tracking {
                        since_ns: t.since_ns,
                        memory_id: counters.map_or(0, |c| c.memory_id),
                        cpu_id: counters.map_or(0, |c| c.cpu_id),
                    };
                    (id, tracking)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_with_inodes(inodes: Vec<u64>) -> TaskEntry {
        TaskEntry::new(
            &("alloc".to_owned(), "task".to_owned()),
            AllocOrigin::Config,
            Arc::default(),
            Members::Pids(Vec::new()),
            Arc::from([]),
            inodes,
            0,
        )
    }

    #[test]
    fn tasks_take_turns_evenly() {
        // A thousand Nomad tasks as cgroupfs numbers them: a task's cgroups in the cpu,
        // cpuacct and memory hierarchies, each directory followed by one kernfs node per
        // control file (strides 14, 13 and 33 seen on this kernel). A phase taken from
        // the identity's low bits put every such task on odd cycles only.
        let tasks: Vec<TaskEntry> = (0..1000u64)
            .map(|i| task_with_inodes(vec![249_063 + 14 * i, 232_144 + 13 * i, 590_933 + 33 * i]))
            .collect();
        for cycle in 0..10 {
            let due = tasks.iter().filter(|t| t.turn(cycle, 10)).count();
            assert!(
                (60..=140).contains(&due),
                "cycle {cycle}: {due} of 1000 tasks take their turn"
            );
        }
        for task in &tasks {
            assert_eq!(
                (100..110).filter(|&c| task.turn(c, 10)).count(),
                1,
                "once per period"
            );
        }
    }
}
