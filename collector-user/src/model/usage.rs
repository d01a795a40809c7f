//! `AllocResourceUsage` and its parts (`GET /v1/client/allocation/<ID>/stats`).

use std::collections::BTreeMap;

use serde::Serialize;

/// The exact strings Nomad puts in `Measured`.
pub mod measured {
    pub const RSS: &str = "RSS";
    pub const CACHE: &str = "Cache";
    pub const SWAP: &str = "Swap";
    pub const MAPPED_FILE: &str = "Mapped File";
    pub const USAGE: &str = "Usage";
    pub const MAX_USAGE: &str = "Max Usage";
    pub const KERNEL_USAGE: &str = "Kernel Usage";
    pub const KERNEL_MAX_USAGE: &str = "Kernel Max Usage";
    pub const SYSTEM_MODE: &str = "System Mode";
    pub const USER_MODE: &str = "User Mode";
    pub const THROTTLED_PERIODS: &str = "Throttled Periods";
    pub const THROTTLED_TIME: &str = "Throttled Time";
    pub const PERCENT: &str = "Percent";
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemoryStats {
    #[serde(rename = "RSS")]
    pub rss: u64,
    pub cache: u64,
    pub swap: u64,
    pub mapped_file: u64,
    pub usage: u64,
    pub max_usage: u64,
    pub kernel_usage: u64,
    pub kernel_max_usage: u64,
    pub measured: Vec<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CpuStats {
    pub system_mode: f64,
    pub user_mode: f64,
    pub total_ticks: f64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
    pub percent: f64,
    pub measured: Vec<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceUsage {
    pub memory_stats: MemoryStats,
    pub cpu_stats: CpuStats,
    /// Nomad reports device (GPU, …) statistics from device plugins; this collector has
    /// none, and Nomad writes a nil list as `null`.
    pub device_stats: Option<Vec<serde_json::Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskResourceUsage {
    pub resource_usage: ResourceUsage,
    /// Unix time in ns.
    pub timestamp: i64,
    /// Keyed by PID as a decimal string.
    pub pids: BTreeMap<String, ResourceUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocResourceUsage {
    pub resource_usage: ResourceUsage,
    pub tasks: BTreeMap<String, TaskResourceUsage>,
    /// Unix time in ns: the newest task timestamp.
    pub timestamp: i64,
}

/// Appends the names of `b` missing from `a`, keeping `a`'s order (Nomad's union).
fn union_measured(a: &mut Vec<&'static str>, b: &[&'static str]) {
    for name in b {
        if !a.contains(name) {
            a.push(name);
        }
    }
}

impl MemoryStats {
    /// Adds every field of `other` (Nomad's `MemoryStats.Add`).
    pub fn add(&mut self, other: &MemoryStats) {
        self.rss += other.rss;
        self.cache += other.cache;
        self.swap += other.swap;
        self.mapped_file += other.mapped_file;
        self.usage += other.usage;
        self.max_usage += other.max_usage;
        self.kernel_usage += other.kernel_usage;
        self.kernel_max_usage += other.kernel_max_usage;
        union_measured(&mut self.measured, &other.measured);
    }
}

impl CpuStats {
    /// Adds every field of `other` (Nomad's `CpuStats.Add`, `Percent` included).
    pub fn add(&mut self, other: &CpuStats) {
        self.system_mode += other.system_mode;
        self.user_mode += other.user_mode;
        self.total_ticks += other.total_ticks;
        self.throttled_periods += other.throttled_periods;
        self.throttled_time += other.throttled_time;
        self.percent += other.percent;
        union_measured(&mut self.measured, &other.measured);
    }
}

impl ResourceUsage {
    pub fn add(&mut self, other: &ResourceUsage) {
        self.memory_stats.add(&other.memory_stats);
        self.cpu_stats.add(&other.cpu_stats);
    }
}

impl AllocResourceUsage {
    /// Builds an allocation's usage from its tasks: the sum of every task's figures and
    /// the newest task timestamp (spec §2). `only_task` limits it to one task (`?task=`);
    /// an unknown name gives empty results, as Nomad does.
    pub fn from_tasks(tasks: BTreeMap<String, TaskResourceUsage>, only_task: Option<&str>) -> Self {
        let mut out = AllocResourceUsage::default();
        for (name, task) in tasks {
            if only_task.is_some_and(|only| only != name) {
                continue;
            }
            out.resource_usage.add(&task.resource_usage);
            out.timestamp = out.timestamp.max(task.timestamp);
            out.tasks.insert(name, task);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(percent: f64, rss: u64, ts: i64, cpu_measured: &[&'static str]) -> TaskResourceUsage {
        TaskResourceUsage {
            resource_usage: ResourceUsage {
                memory_stats: MemoryStats {
                    rss,
                    measured: vec![measured::RSS],
                    ..Default::default()
                },
                cpu_stats: CpuStats {
                    percent,
                    measured: cpu_measured.to_vec(),
                    ..Default::default()
                },
                device_stats: None,
            },
            timestamp: ts,
            pids: BTreeMap::new(),
        }
    }

    #[test]
    fn allocation_is_the_sum_of_its_tasks_with_the_newest_timestamp() {
        let mut tasks = BTreeMap::new();
        tasks.insert("a".to_owned(), task(50.0, 100, 10, &[measured::PERCENT]));
        tasks.insert(
            "b".to_owned(),
            task(25.5, 20, 30, &[measured::USER_MODE, measured::PERCENT]),
        );
        let alloc = AllocResourceUsage::from_tasks(tasks.clone(), None);
        assert_eq!(alloc.resource_usage.cpu_stats.percent, 75.5);
        assert_eq!(alloc.resource_usage.memory_stats.rss, 120);
        assert_eq!(alloc.timestamp, 30);
        assert_eq!(
            alloc.resource_usage.cpu_stats.measured,
            vec![measured::PERCENT, measured::USER_MODE]
        );
    }

    #[test]
    fn task_filter_limits_tasks_and_sum_and_unknown_task_is_empty() {
        let mut tasks = BTreeMap::new();
        tasks.insert("a".to_owned(), task(50.0, 100, 10, &[]));
        tasks.insert("b".to_owned(), task(25.0, 20, 30, &[]));
        let only_a = AllocResourceUsage::from_tasks(tasks.clone(), Some("a"));
        assert_eq!(only_a.tasks.len(), 1);
        assert_eq!(only_a.resource_usage.cpu_stats.percent, 50.0);
        assert_eq!(only_a.timestamp, 10);
        let none = AllocResourceUsage::from_tasks(tasks, Some("zzz"));
        assert!(none.tasks.is_empty());
        assert_eq!(none.resource_usage.cpu_stats.percent, 0.0);
    }

    #[test]
    fn json_has_nomads_field_names_and_order() {
        let json = serde_json::to_string(&ResourceUsage::default()).unwrap();
        assert_eq!(
            json,
            r#"{"MemoryStats":{"RSS":0,"Cache":0,"Swap":0,"MappedFile":0,"Usage":0,"MaxUsage":0,"KernelUsage":0,"KernelMaxUsage":0,"Measured":[]},"CpuStats":{"SystemMode":0.0,"UserMode":0.0,"TotalTicks":0.0,"ThrottledPeriods":0,"ThrottledTime":0,"Percent":0.0,"Measured":[]},"DeviceStats":null}"#
        );
    }
}
