//! What `top` shows, independent of the terminal: the daemon's two JSON answers parsed
//! leniently, turned into allocation and task rows, filtered and sorted.
//!
//! Parsing is lenient on purpose: `top` must work against a daemon from before or after
//! the per-task figures (CPU wait, OOM kills, process churn, pressure) were added to
//! `/v1/client/allocations`, so every field is optional and unknown ones are ignored.

use std::{cmp::Ordering, collections::BTreeMap};

use serde::Deserialize;

/// One entry of `GET /v1/client/allocations`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocListing {
    #[serde(rename = "ID")]
    pub id: String,
    pub job: Option<String>,
    pub namespace: Option<String>,
    pub task_group: Option<String>,
    pub tasks: Vec<TaskListing>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskListing {
    pub name: String,
    pub cpu_wait: Option<CpuWait>,
    pub processes: Option<ProcessChurn>,
    pub oom_kills: Option<u64>,
    pub pressure: Option<Pressure>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CpuWait {
    pub total_seconds: f64,
    /// Run-queue wait over the last interval, in percent of wall time (per thread
    /// waiting, so it can exceed 100 like CPU percent).
    pub percent: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProcessChurn {
    pub started: u64,
    pub exited: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Pressure {
    pub cpu: Option<PressureTotals>,
    pub memory: Option<PressureTotals>,
    pub io: Option<PressureTotals>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PressureTotals {
    pub some_seconds: f64,
    pub full_seconds: f64,
}

/// The part of Nomad's `AllocResourceUsage` (`/v1/client/allocation/<ID>/stats`) shown.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocStats {
    pub resource_usage: Usage,
    pub tasks: BTreeMap<String, TaskStats>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskStats {
    pub resource_usage: Usage,
    /// Nomad's JSON has `null` here when no process was sampled.
    #[serde(deserialize_with = "null_as_default")]
    pub pids: BTreeMap<String, Usage>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Usage {
    pub cpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CpuStats {
    pub percent: f64,
    /// Cumulative, in ns.
    pub throttled_time: u64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MemoryStats {
    #[serde(rename = "RSS")]
    pub rss: u64,
    pub usage: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub measured: Vec<String>,
}

impl MemoryStats {
    /// The figure shown as memory: RSS where it was measured (cgroup v1, processes),
    /// else the cgroup's whole usage (cgroup v2 reports no RSS), as Nomad's UI does.
    pub fn shown(&self) -> u64 {
        if self.measured.iter().any(|m| m == "RSS") || self.usage == 0 {
            self.rss
        } else {
            self.usage
        }
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One process of an expanded task.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRow {
    pub pid: u32,
    pub cpu_percent: f64,
    pub rss: u64,
}

/// One task, with everything its row shows.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub name: String,
    pub cpu_percent: f64,
    pub wait_percent: Option<f64>,
    pub throttled_ns: u64,
    pub memory: u64,
    pub oom_kills: Option<u64>,
    pub churn: Option<ProcessChurn>,
    pub processes: Vec<ProcessRow>,
}

/// One allocation: its tasks and their sums.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocRow {
    pub id: String,
    pub job: Option<String>,
    pub tasks: Vec<TaskRow>,
}

impl AllocRow {
    /// Builds the row from the listing and the allocation's stats; a task the stats do
    /// not (yet) cover reads zero rather than disappearing.
    pub fn new(listing: &AllocListing, stats: &AllocStats) -> AllocRow {
        let mut tasks: Vec<TaskRow> = listing
            .tasks
            .iter()
            .map(|task| {
                let usage = stats.tasks.get(&task.name);
                let empty = TaskStats::default();
                let usage = usage.unwrap_or(&empty);
                let mut processes: Vec<ProcessRow> = usage
                    .pids
                    .iter()
                    .filter_map(|(pid, u)| {
                        Some(ProcessRow {
                            pid: pid.parse().ok()?,
                            cpu_percent: u.cpu_stats.percent,
                            rss: u.memory_stats.rss,
                        })
                    })
                    .collect();
                processes.sort_by(|a, b| {
                    desc(a.cpu_percent, b.cpu_percent).then_with(|| a.pid.cmp(&b.pid))
                });
                TaskRow {
                    name: task.name.clone(),
                    cpu_percent: usage.resource_usage.cpu_stats.percent,
                    wait_percent: task.cpu_wait.and_then(|w| w.percent),
                    throttled_ns: usage.resource_usage.cpu_stats.throttled_time,
                    memory: usage.resource_usage.memory_stats.shown(),
                    oom_kills: task.oom_kills,
                    churn: task.processes,
                    processes,
                }
            })
            .collect();
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        AllocRow {
            id: listing.id.clone(),
            job: listing.job.clone(),
            tasks,
        }
    }

    pub fn cpu_percent(&self) -> f64 {
        self.tasks.iter().map(|t| t.cpu_percent).sum()
    }

    /// Absent when no task has the figure (a kernel or daemon without it).
    pub fn wait_percent(&self) -> Option<f64> {
        self.tasks
            .iter()
            .filter_map(|t| t.wait_percent)
            .reduce(|a, b| a + b)
    }

    pub fn throttled_ns(&self) -> u64 {
        self.tasks.iter().map(|t| t.throttled_ns).sum()
    }

    pub fn memory(&self) -> u64 {
        self.tasks.iter().map(|t| t.memory).sum()
    }

    pub fn oom_kills(&self) -> Option<u64> {
        self.tasks
            .iter()
            .filter_map(|t| t.oom_kills)
            .reduce(|a, b| a + b)
    }

    pub fn process_count(&self) -> usize {
        self.tasks.iter().map(|t| t.processes.len()).sum()
    }

    /// Whether the filter (an allocation ID prefix or a job name prefix, case-insensitive)
    /// keeps this allocation. An empty filter keeps everything.
    pub fn matches(&self, filter: &str) -> bool {
        let filter = filter.trim().to_ascii_lowercase();
        filter.is_empty()
            || self.id.to_ascii_lowercase().starts_with(&filter)
            || self
                .job
                .as_deref()
                .is_some_and(|job| job.to_ascii_lowercase().starts_with(&filter))
    }
}

/// What rows are ordered by, largest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Cpu,
    Wait,
    Throttled,
    Memory,
    Oom,
}

impl SortKey {
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Wait => "wait",
            SortKey::Throttled => "throttled",
            SortKey::Memory => "memory",
            SortKey::Oom => "oom",
        }
    }

    fn task(self, a: &TaskRow, b: &TaskRow) -> Ordering {
        match self {
            SortKey::Cpu => desc(a.cpu_percent, b.cpu_percent),
            SortKey::Wait => desc_opt(a.wait_percent, b.wait_percent),
            SortKey::Throttled => b.throttled_ns.cmp(&a.throttled_ns),
            SortKey::Memory => b.memory.cmp(&a.memory),
            SortKey::Oom => b.oom_kills.cmp(&a.oom_kills),
        }
    }

    fn alloc(self, a: &AllocRow, b: &AllocRow) -> Ordering {
        match self {
            SortKey::Cpu => desc(a.cpu_percent(), b.cpu_percent()),
            SortKey::Wait => desc_opt(a.wait_percent(), b.wait_percent()),
            SortKey::Throttled => b.throttled_ns().cmp(&a.throttled_ns()),
            SortKey::Memory => b.memory().cmp(&a.memory()),
            SortKey::Oom => b.oom_kills().cmp(&a.oom_kills()),
        }
    }
}

/// Larger first; NaN (never sent, but not worth a panic) compares equal.
fn desc(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// Larger first, absent figures last.
fn desc_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => desc(a, b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The allocations the filter keeps, ordered by `key` (ties by ID, so equal rows do not
/// swap places at every refresh), each with its tasks ordered the same way.
pub fn arrange(allocs: &[AllocRow], key: SortKey, filter: &str) -> Vec<AllocRow> {
    let mut kept: Vec<AllocRow> = allocs
        .iter()
        .filter(|a| a.matches(filter))
        .cloned()
        .collect();
    for alloc in &mut kept {
        alloc
            .tasks
            .sort_by(|a, b| key.task(a, b).then_with(|| a.name.cmp(&b.name)));
    }
    kept.sort_by(|a, b| key.alloc(a, b).then_with(|| a.id.cmp(&b.id)));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/v1/client/allocations` as the daemon answers today (no per-task extras), and an
    /// allocation with every field added for `top` in place.
    const LISTING: &str = r#"[
      {"ID":"0b7ad8a2-41c9-4a0f-8d0e-2f1c4a9e7b31","Origin":{"Kind":"Config"},"Job":null,
       "Namespace":null,"TaskGroup":null,
       "Tasks":[{"Name":"sidecar","Cgroups":[],"Pids":[42],"CpuTotalNs":1000}]},
      {"ID":"8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10","Origin":{"Kind":"Nomad","Layout":"v2-1.7"},
       "Job":"web","Namespace":"default","TaskGroup":"frontend",
       "Tasks":[{"Name":"web.frontend","Cgroups":["/sys/fs/cgroup/x"],"Pids":[],
                 "CpuTotalNs":5,"CpuWait":{"TotalSeconds":1.5,"Percent":12.5},
                 "Processes":{"Started":7,"Exited":5},"OomKills":1,
                 "Pressure":{"Cpu":{"SomeSeconds":0.5,"FullSeconds":0.0},"Memory":null}},
                {"Name":"logs","CpuWait":null,"OomKills":null}]}
    ]"#;

    /// A Nomad `AllocResourceUsage` body, `Pids` null for a task without processes.
    const STATS: &str = r#"{
      "ResourceUsage":{"MemoryStats":{"RSS":1048576,"Cache":0,"Usage":2097152,
        "Measured":["RSS","Cache"]},"CpuStats":{"Percent":101.5,"ThrottledTime":250000000,
        "Measured":["Percent"]},"DeviceStats":null},
      "Tasks":{
        "web.frontend":{"ResourceUsage":{"MemoryStats":{"RSS":1048576,"Usage":2097152,
          "Measured":["RSS"]},"CpuStats":{"Percent":99.5,"ThrottledTime":250000000}},
          "Timestamp":1,"Pids":{"27072":{"CpuStats":{"Percent":99.0},"MemoryStats":{"RSS":4096}},
                                "27073":{"CpuStats":{"Percent":0.5},"MemoryStats":{"RSS":8192}}}},
        "logs":{"ResourceUsage":{"MemoryStats":{"RSS":0,"Usage":3145728,"Measured":["Usage"]},
          "CpuStats":{"Percent":2.0}},"Timestamp":1,"Pids":null}},
      "Timestamp":1}"#;

    fn parsed() -> (Vec<AllocListing>, AllocStats) {
        (
            serde_json::from_str(LISTING).unwrap(),
            serde_json::from_str(STATS).unwrap(),
        )
    }

    #[test]
    fn both_endpoints_parse_with_and_without_the_new_task_fields() {
        let (listing, stats) = parsed();
        assert_eq!(listing.len(), 2);
        assert_eq!(listing[0].job, None);
        assert_eq!(listing[0].tasks[0].cpu_wait, None);
        assert_eq!(listing[0].tasks[0].oom_kills, None);
        let web = &listing[1].tasks[0];
        assert_eq!(web.cpu_wait.unwrap().percent, Some(12.5));
        assert_eq!(
            web.processes,
            Some(ProcessChurn {
                started: 7,
                exited: 5
            })
        );
        assert_eq!(web.oom_kills, Some(1));
        let pressure = web.pressure.unwrap();
        assert_eq!(pressure.cpu.unwrap().some_seconds, 0.5);
        assert_eq!(pressure.memory, None);
        assert_eq!(stats.tasks["logs"].pids.len(), 0);
        assert_eq!(stats.tasks["web.frontend"].pids.len(), 2);
        assert_eq!(stats.resource_usage.cpu_stats.throttled_time, 250_000_000);
    }

    #[test]
    fn rows_take_figures_from_both_answers() {
        let (listing, stats) = parsed();
        let row = AllocRow::new(&listing[1], &stats);
        assert_eq!(row.tasks.len(), 2);
        let web = row.tasks.iter().find(|t| t.name == "web.frontend").unwrap();
        assert_eq!(web.cpu_percent, 99.5);
        assert_eq!(web.wait_percent, Some(12.5));
        assert_eq!(web.memory, 1_048_576, "RSS where measured");
        let pids: Vec<u32> = web.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![27072, 27073], "busiest process first");
        let logs = row.tasks.iter().find(|t| t.name == "logs").unwrap();
        assert_eq!(logs.memory, 3_145_728, "usage where RSS is not measured");
        assert_eq!(logs.wait_percent, None);
        assert_eq!(row.cpu_percent(), 101.5);
        assert_eq!(row.wait_percent(), Some(12.5));
        assert_eq!(row.oom_kills(), Some(1));
        assert_eq!(row.process_count(), 2);
        // A task the stats do not cover yet reads zero.
        let bare = AllocRow::new(&listing[0], &AllocStats::default());
        assert_eq!(bare.tasks[0].cpu_percent, 0.0);
        assert_eq!(bare.wait_percent(), None);
    }

    fn task(name: &str, cpu: f64, wait: Option<f64>, memory: u64) -> TaskRow {
        TaskRow {
            name: name.into(),
            cpu_percent: cpu,
            wait_percent: wait,
            throttled_ns: 0,
            memory,
            oom_kills: None,
            churn: None,
            processes: Vec::new(),
        }
    }

    fn alloc(id: &str, job: Option<&str>, tasks: Vec<TaskRow>) -> AllocRow {
        AllocRow {
            id: id.into(),
            job: job.map(str::to_owned),
            tasks,
        }
    }

    #[test]
    fn sorting_orders_allocations_and_their_tasks_absent_figures_last() {
        let allocs = vec![
            alloc("aaaa", Some("batch"), vec![task("a", 5.0, None, 900)]),
            alloc(
                "bbbb",
                Some("web"),
                vec![task("x", 10.0, Some(1.0), 10), task("y", 90.0, None, 20)],
            ),
            alloc("cccc", None, vec![task("z", 50.0, Some(40.0), 30)]),
        ];
        let ids = |rows: &[AllocRow]| rows.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        let by_cpu = arrange(&allocs, SortKey::Cpu, "");
        assert_eq!(ids(&by_cpu), ["bbbb", "cccc", "aaaa"]);
        assert_eq!(by_cpu[0].tasks[0].name, "y");
        let by_wait = arrange(&allocs, SortKey::Wait, "");
        assert_eq!(ids(&by_wait), ["cccc", "bbbb", "aaaa"]);
        assert_eq!(
            by_wait[1].tasks[0].name, "x",
            "a task with the figure first"
        );
        let by_memory = arrange(&allocs, SortKey::Memory, "");
        assert_eq!(ids(&by_memory), ["aaaa", "bbbb", "cccc"]);
        // Equal keys keep ID order.
        let same = vec![
            alloc("bb", None, vec![task("t", 1.0, None, 0)]),
            alloc("aa", None, vec![task("t", 1.0, None, 0)]),
        ];
        assert_eq!(ids(&arrange(&same, SortKey::Oom, "")), ["aa", "bb"]);
    }

    #[test]
    fn filter_is_an_id_or_job_prefix() {
        let allocs = vec![
            alloc("8d3c5bd8-1", Some("web"), vec![]),
            alloc("0b7ad8a2-2", Some("batch-web"), vec![]),
            alloc("0b7ffff0-3", None, vec![]),
        ];
        let ids = |filter: &str| {
            arrange(&allocs, SortKey::Cpu, filter)
                .into_iter()
                .map(|a| a.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("").len(), 3);
        assert_eq!(ids("0B7"), ["0b7ad8a2-2", "0b7ffff0-3"]);
        assert_eq!(
            ids("web"),
            ["8d3c5bd8-1"],
            "a prefix of the job, not a substring"
        );
        assert_eq!(ids("batch"), ["0b7ad8a2-2"]);
        assert!(ids("zzz").is_empty());
    }
}
