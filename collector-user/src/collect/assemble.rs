//! Shaping finished figures into Nomad's types. No I/O and no rate arithmetic here.

use std::collections::BTreeMap;

use super::rates::CpuRates;
use crate::{
    cgroup::{MemoryFigures, ThrottleFigures},
    model::{measured, CpuStats, MemoryStats, ResourceUsage, TaskResourceUsage},
    sample::ProcessMemory,
};

/// One process's figures for the `Pids` map.
#[derive(Clone, Copy, Debug)]
pub struct PidFigures {
    pub pid: u32,
    pub rates: CpuRates,
    pub memory: Option<ProcessMemory>,
}

/// A task's finished figures for one interval, kept compact in the snapshot until a
/// request or a metrics scrape turns them into Nomad's types.
#[derive(Clone, Debug)]
pub struct TaskFigures {
    pub rates: CpuRates,
    pub memory: Option<MemoryFigures>,
    pub throttling: ThrottleFigures,
    pub pids: Vec<PidFigures>,
    /// Unix ns.
    pub timestamp: i64,
}

impl TaskFigures {
    /// Nomad's `TaskResourceUsage`; without the `Pids` map unless `with_pids` (the
    /// task's own figures, memory summed from its processes included, are the same
    /// either way).
    pub fn usage(&self, ticks_per_percent: f64, with_pids: bool) -> TaskResourceUsage {
        let mut usage = own_usage(
            &self.rates,
            ticks_per_percent,
            self.memory.as_ref(),
            &self.throttling,
            &self.pids,
            self.timestamp,
        );
        if with_pids {
            usage.pids = pid_map(&self.pids, ticks_per_percent);
        }
        usage
    }
}

/// `Measured` of CPU figures in Nomad's order.
fn cpu_measured(throttling: &ThrottleFigures) -> Vec<&'static str> {
    let mut names = vec![measured::SYSTEM_MODE, measured::USER_MODE];
    names.extend(throttling.measured());
    names.push(measured::PERCENT);
    names
}

fn cpu_stats(rates: &CpuRates, ticks: f64, throttling: &ThrottleFigures) -> CpuStats {
    CpuStats {
        system_mode: rates.system_mode,
        user_mode: rates.user_mode,
        total_ticks: ticks,
        throttled_periods: throttling.periods.unwrap_or(0),
        throttled_time: throttling.time_ns.unwrap_or(0),
        percent: rates.percent,
        measured: cpu_measured(throttling),
    }
}

fn pid_memory(memory: Option<ProcessMemory>) -> MemoryStats {
    match memory {
        Some(m) => MemoryStats {
            rss: m.rss_bytes,
            swap: m.swap_bytes,
            measured: vec![measured::RSS, measured::SWAP],
            ..MemoryStats::default()
        },
        None => MemoryStats::default(),
    }
}

/// The memory of a task without cgroup memory figures: its processes' sum.
fn pids_memory(pids: &[PidFigures]) -> MemoryStats {
    let mut total = MemoryStats::default();
    for p in pids.iter().filter(|p| p.memory.is_some()) {
        total.add(&pid_memory(p.memory));
    }
    total
}

/// A task's `TaskResourceUsage`.
///
/// Memory comes from the task's cgroup where it was measured; a task without a memory
/// cgroup (no controller, or configured by PID) reports the sum of its processes'
/// RSS and swap, as Nomad's executor does for such tasks.
pub fn task_usage(
    rates: &CpuRates,
    ticks_per_percent: f64,
    memory: Option<&MemoryFigures>,
    throttling: &ThrottleFigures,
    pids: &[PidFigures],
    timestamp: i64,
) -> TaskResourceUsage {
    TaskResourceUsage {
        pids: pid_map(pids, ticks_per_percent),
        ..own_usage(
            rates,
            ticks_per_percent,
            memory,
            throttling,
            pids,
            timestamp,
        )
    }
}

/// [`task_usage`] with an empty `Pids` map: the task's own figures only.
fn own_usage(
    rates: &CpuRates,
    ticks_per_percent: f64,
    memory: Option<&MemoryFigures>,
    throttling: &ThrottleFigures,
    pids: &[PidFigures],
    timestamp: i64,
) -> TaskResourceUsage {
    let memory_stats = match memory.filter(|m| !m.measured().is_empty()) {
        Some(figures) => figures.to_memory_stats(),
        None => pids_memory(pids),
    };
    TaskResourceUsage {
        resource_usage: ResourceUsage {
            memory_stats,
            cpu_stats: cpu_stats(rates, rates.percent * ticks_per_percent, throttling),
            device_stats: None,
        },
        timestamp,
        pids: BTreeMap::new(),
    }
}

/// The `Pids` map: each process's memory and CPU, without throttling.
fn pid_map(pids: &[PidFigures], ticks_per_percent: f64) -> BTreeMap<String, ResourceUsage> {
    let no_throttling = ThrottleFigures::default();
    pids.iter()
        .map(|p| {
            (
                p.pid.to_string(),
                ResourceUsage {
                    memory_stats: pid_memory(p.memory),
                    cpu_stats: cpu_stats(
                        &p.rates,
                        p.rates.percent * ticks_per_percent,
                        &no_throttling,
                    ),
                    device_stats: None,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_lists_only_what_was_read() {
        let rates = CpuRates {
            percent: 50.0,
            user_mode: 40.0,
            system_mode: 10.0,
        };
        let pids = [
            PidFigures {
                pid: 42,
                rates,
                memory: Some(ProcessMemory {
                    rss_bytes: 100,
                    swap_bytes: 1,
                }),
            },
            PidFigures {
                pid: 7,
                rates: CpuRates::default(),
                memory: None,
            },
        ];
        let throttled = ThrottleFigures {
            periods: Some(3),
            time_ns: Some(9),
        };
        let task = task_usage(&rates, 2.0, None, &throttled, &pids, 5);
        let cpu = &task.resource_usage.cpu_stats;
        assert_eq!(
            cpu.measured,
            vec![
                "System Mode",
                "User Mode",
                "Throttled Periods",
                "Throttled Time",
                "Percent"
            ]
        );
        assert_eq!(
            (cpu.percent, cpu.total_ticks, cpu.throttled_periods),
            (50.0, 100.0, 3)
        );
        // No memory cgroup: the processes' RSS and swap.
        let mem = &task.resource_usage.memory_stats;
        assert_eq!((mem.rss, mem.swap), (100, 1));
        assert_eq!(mem.measured, vec!["RSS", "Swap"]);
        assert_eq!(task.pids["7"].memory_stats.measured, Vec::<&str>::new());
        assert_eq!(
            task.pids["42"].cpu_stats.measured,
            vec!["System Mode", "User Mode", "Percent"]
        );
        let cgroup = MemoryFigures {
            rss: Some(10),
            usage: Some(20),
            ..MemoryFigures::default()
        };
        let task = task_usage(
            &rates,
            2.0,
            Some(&cgroup),
            &ThrottleFigures::default(),
            &pids,
            5,
        );
        assert_eq!(
            task.resource_usage.memory_stats.measured,
            vec!["RSS", "Usage"]
        );
        assert_eq!(
            task.resource_usage.cpu_stats.measured,
            vec!["System Mode", "User Mode", "Percent"]
        );
    }

    #[test]
    fn without_pids_the_tasks_own_figures_are_the_same() {
        let rates = CpuRates {
            percent: 50.0,
            user_mode: 40.0,
            system_mode: 10.0,
        };
        let figures = TaskFigures {
            rates,
            // No memory cgroup: the task's memory is its processes' sum either way.
            memory: None,
            throttling: ThrottleFigures::default(),
            pids: vec![PidFigures {
                pid: 42,
                rates,
                memory: Some(ProcessMemory {
                    rss_bytes: 100,
                    swap_bytes: 1,
                }),
            }],
            timestamp: 5,
        };
        let full = figures.usage(2.0, true);
        let without = figures.usage(2.0, false);
        assert_eq!(full.pids.len(), 1);
        assert!(without.pids.is_empty());
        assert_eq!(without.resource_usage, full.resource_usage);
        assert_eq!(without.resource_usage.memory_stats.rss, 100);
        assert_eq!(without.timestamp, full.timestamp);
    }
}
