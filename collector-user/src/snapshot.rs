//! The immutable result of one collection cycle, and the store the HTTP API reads it
//! from. A request handler only ever touches a [`Snapshot`]: never /proc, never cgroupfs.
//!
//! Serialized bodies are built at most once per snapshot (on first request) and shared
//! as `Bytes`, so any number of concurrent readers cost a reference-count increment.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;

use crate::{
    kernel::{KernelFeatures, KernelStats},
    model::{AllocResourceUsage, HostStats, TaskResourceUsage},
};

/// Which source produced the CPU figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum CpuSourceKind {
    /// eBPF programs (sched_switch accounting + per-process task iterator).
    #[default]
    #[serde(rename = "ebpf")]
    Ebpf,
    /// /proc/<pid>/stat for every process (Nomad's method, and the fallback).
    #[serde(rename = "procfs")]
    Procfs,
}

impl CpuSourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuSourceKind::Ebpf => "ebpf",
            CpuSourceKind::Procfs => "procfs",
        }
    }
}

/// How the collector itself is doing: served in `/v1/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Health {
    pub source: CpuSourceKind,
    /// Why eBPF is not in use (set when `source` is procfs because eBPF failed to load).
    pub fallback_reason: Option<String>,
    /// eBPF programs attached (0 on the /proc source).
    pub programs_attached: u32,
    /// What runs in the kernel, and what this kernel turned off and why (eBPF source).
    pub kernel_features: Option<KernelFeatures>,
    pub kernel: KernelStats,
    /// BPF run time and runs of the sched_switch program (needs kernel.bpf_stats_enabled).
    pub sched_switch_run_time_ns: u64,
    pub sched_switch_run_count: u64,
    pub tracked_cgroups: u64,
    pub max_tracked_cgroups: u64,
    /// Cgroups that could not be tracked because the kernel map was full (cumulative).
    pub tracked_cgroups_full: u64,
    /// CPUs on which accounting the running thread failed (cumulative).
    pub checkpoint_failures: u64,
    /// Processes of every task sampled in the last cycle.
    pub processes_sampled: u64,
    /// Threads the task iterator's last pass reported (those that ran, and every thread
    /// of the slots whose pass was full), and the records carried from earlier passes
    /// for the threads that did not run.
    pub threads_reported: u64,
    pub threads_carried: u64,
    /// Cgroup control files kept open for re-reading (see `cgroup::control_files`).
    pub control_files_open: u64,
    /// Duration of the last collection cycle.
    pub cycle_duration: Duration,
    /// CPU time (user + system) the daemon's collection thread used in the last cycle.
    pub cycle_cpu: Duration,
    pub cycles: u64,
    /// Cycles in which something failed (logged); the snapshot still holds what was read.
    pub cycle_errors: u64,
}

/// Where an allocation was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "Kind")]
pub enum AllocOrigin {
    /// Found in cgroupfs in one of Nomad's layouts.
    Nomad {
        #[serde(rename = "Layout")]
        layout: &'static str,
    },
    /// Declared in the configuration file.
    Config,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskInfo {
    /// Shared with the collector's record of the task, as are the allocation's ID and
    /// origin: a snapshot of a thousand allocations copies no strings.
    pub name: Arc<str>,
    /// The task's cgroup directories (one per hierarchy it was found in); shared with
    /// the collector's own record of the task rather than copied each cycle.
    pub cgroups: Arc<[PathBuf]>,
    /// PIDs given in the configuration (tasks without a cgroup).
    pub pids: Vec<u32>,
    /// CPU time (ns) attributed to the task since the collector began following it:
    /// with eBPF every process that ran in its cgroups, exited ones included, kept across
    /// daemon restarts by the pinned maps; on the /proc source only the processes alive
    /// now.
    pub cpu_total_ns: u64,
    /// Figures no peer reports (absent where not measured), flattened into the task.
    #[serde(flatten)]
    pub extra: TaskExtra,
}

/// A task's figures beyond Nomad's, in `/v1/client/allocations` and the exposition.
/// Each is `None` (JSON `null`) where it was not measured: the kernel lacks it, the CPU
/// source is /proc, or the cgroup has no such file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskExtra {
    /// Time the task's threads waited on a run queue (`sched_info.run_delay`, counted
    /// in the kernel at each context switch, exited processes included).
    pub cpu_wait: Option<CpuWait>,
    /// Processes started and exited in the task's cgroups, counted in the kernel.
    pub processes: Option<ProcessChurn>,
    /// Processes the OOM killer killed in the task's memory cgroup (v2 `memory.events`,
    /// v1 `memory.oom_control`).
    pub oom_kills: Option<u64>,
    /// Pressure stall totals of the task's cgroup (v2 only).
    pub pressure: Option<TaskPressure>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CpuWait {
    /// Cumulative, since the collector began following the task.
    pub total_seconds: f64,
    /// Share of wall time over the last interval, in percent (a task with two waiting
    /// threads can exceed 100); `None` on the first interval.
    pub percent: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessChurn {
    /// Since the collector began following the task (processes already running then
    /// are not counted as started).
    pub started: u64,
    pub exited: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskPressure {
    pub cpu: Option<PressureSeconds>,
    pub memory: Option<PressureSeconds>,
    pub io: Option<PressureSeconds>,
}

/// Cumulative PSI stall time: some (at least one task stalled) and full (all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PressureSeconds {
    pub some_seconds: f64,
    pub full_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocInfo {
    #[serde(rename = "ID")]
    pub id: Arc<str>,
    pub origin: AllocOrigin,
    pub job: Option<String>,
    pub namespace: Option<String>,
    pub task_group: Option<String>,
    pub tasks: Vec<TaskInfo>,
}

/// Builds an allocation's per-task usage from the collector's compact figures; with
/// `false`, without the per-process `Pids` maps.
type BuildTasks = Box<dyn Fn(bool) -> BTreeMap<String, TaskResourceUsage> + Send + Sync>;

/// One allocation in a snapshot.
///
/// The collector hands over compact figures and a builder; Nomad's types (a map, two
/// `Measured` lists and a string key per process) are built only when something reads
/// them, and dropped once read: only the response bodies are kept, at most one of each
/// per snapshot. nomad-apm asks for every allocation within a second: at ten thousand
/// processes its pass raised VmRSS by 7 MiB with only the bodies kept (about 4.4 KiB an
/// allocation), by 14 MiB when the types were kept too.
pub struct AllocEntry {
    pub info: AllocInfo,
    build: BuildTasks,
    json: OnceLock<Bytes>,
    json_pretty: OnceLock<Bytes>,
}

impl std::fmt::Debug for AllocEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocEntry")
            .field("info", &self.info)
            .field("body_built", &self.json.get().is_some())
            .finish()
    }
}

fn to_bytes<T: Serialize>(value: &T, pretty: bool) -> Bytes {
    let result = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    // The model types are plain data (no maps with non-string keys, no failing
    // Serialize impls): serialization cannot fail.
    Bytes::from(result.expect("model types always serialize"))
}

impl AllocEntry {
    /// An entry of usage already built (tests and fuzzing); every reader gets a copy.
    pub fn new(info: AllocInfo, tasks: BTreeMap<String, TaskResourceUsage>) -> Self {
        Self::lazy(info, move |_| tasks.clone())
    }

    /// An entry whose task usage is built by `build` when read (`build(false)`: without
    /// the `Pids` maps, for readers that do not read them).
    pub fn lazy(
        info: AllocInfo,
        build: impl Fn(bool) -> BTreeMap<String, TaskResourceUsage> + Send + Sync + 'static,
    ) -> Self {
        Self {
            info,
            build: Box::new(build),
            json: OnceLock::new(),
            json_pretty: OnceLock::new(),
        }
    }

    /// Runs `f` on every task's usage, built for this call without the `Pids` maps and
    /// dropped after it. For readers of every allocation (a metrics scrape): none of them
    /// reads per-process figures, and at ten thousand processes those were most of a
    /// scrape's cost.
    pub fn with_tasks<R>(&self, f: impl FnOnce(&BTreeMap<String, TaskResourceUsage>) -> R) -> R {
        f(&(self.build)(false))
    }

    /// `AllocResourceUsage` of the allocation (or of one task, `?task=`), built for the
    /// caller.
    pub fn usage(&self, only_task: Option<&str>) -> AllocResourceUsage {
        AllocResourceUsage::from_tasks((self.build)(true), only_task)
    }

    /// The response body of `/v1/client/allocation/<ID>/stats`, built once per snapshot.
    /// With a task filter it is built per request (rare, and still from memory).
    pub fn stats_json(&self, only_task: Option<&str>, pretty: bool) -> Bytes {
        if only_task.is_some() {
            return to_bytes(&self.usage(only_task), pretty);
        }
        let slot = if pretty {
            &self.json_pretty
        } else {
            &self.json
        };
        slot.get_or_init(|| to_bytes(&self.usage(None), pretty))
            .clone()
    }
}

/// The result of one collection cycle.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Unix time in ns when the cycle finished.
    pub taken_at_unix_ns: i64,
    pub allocations: HashMap<Arc<str>, Arc<AllocEntry>>,
    pub host: HostStats,
    pub health: Health,
    /// Bodies built on first use from this snapshot (see [`Snapshot::memo`]).
    pub host_json: OnceLock<Bytes>,
    pub metrics_json: OnceLock<Bytes>,
    pub allocations_json: OnceLock<Bytes>,
}

impl Snapshot {
    /// Returns the body in `slot`, building it with `build` the first time.
    pub fn memo(slot: &OnceLock<Bytes>, build: impl FnOnce() -> Bytes) -> Bytes {
        slot.get_or_init(build).clone()
    }

    pub fn json<T: Serialize>(value: &T, pretty: bool) -> Bytes {
        to_bytes(value, pretty)
    }
}

/// Holds the current snapshot; the collector swaps in a new one each cycle.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl SnapshotStore {
    pub fn new(initial: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AllocEntry {
        let mut tasks = BTreeMap::new();
        tasks.insert("web".to_owned(), TaskResourceUsage::default());
        AllocEntry::new(
            AllocInfo {
                id: "x".into(),
                origin: AllocOrigin::Config,
                job: None,
                namespace: None,
                task_group: None,
                tasks: vec![],
            },
            tasks,
        )
    }

    #[test]
    fn stats_body_is_built_once_and_shared() {
        let entry = entry();
        let a = entry.stats_json(None, false);
        let b = entry.stats_json(None, false);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "second request must reuse the same buffer"
        );
        let pretty = entry.stats_json(None, true);
        assert!(pretty.len() > a.len() && pretty.contains(&b'\n'));
    }

    #[test]
    fn readers_get_the_usage_built_for_them_and_only_bodies_are_kept() {
        let info = entry().info;
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = built.clone();
        let lazy = AllocEntry::lazy(info, move |with_pids| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut task = TaskResourceUsage::default();
            if with_pids {
                task.pids.insert("7".to_owned(), Default::default());
            }
            let mut tasks = BTreeMap::new();
            tasks.insert("web".to_owned(), task);
            tasks
        });
        let builds = || built.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            lazy.with_tasks(|t| t["web"].pids.len()),
            0,
            "a map built for a reader of every allocation has no Pids"
        );
        assert_eq!(lazy.with_tasks(|t| t.len()), 1);
        assert_eq!(builds(), 2, "built per call, not kept");
        assert_eq!(
            lazy.usage(None).tasks["web"].pids.len(),
            1,
            "usage has the Pids"
        );
        assert_eq!(builds(), 3);
        let body = lazy.stats_json(None, false);
        assert!(std::str::from_utf8(&body).unwrap().contains("\"7\""));
        assert_eq!(lazy.stats_json(None, false), body);
        assert_eq!(builds(), 4, "the body is built once per snapshot");
        lazy.stats_json(Some("web"), false);
        assert_eq!(builds(), 5, "a filtered body is built per request");
    }

    #[test]
    fn store_swaps_snapshots() {
        let store = SnapshotStore::default();
        let old = store.load();
        store.store(Snapshot {
            taken_at_unix_ns: 42,
            ..Snapshot::default()
        });
        assert_eq!(old.taken_at_unix_ns, 0);
        assert_eq!(store.load().taken_at_unix_ns, 42);
    }
}
