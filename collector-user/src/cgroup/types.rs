//! What the cgroup control files say, as read ([`MemoryStat`], [`CpuStat`], [`Limit`],
//! [`PressureTotals`]), and a task's figures made of them ([`MemoryFigures`],
//! [`ThrottleFigures`], [`Pressure`]).

use crate::model::measured;

/// A limit that may be `max` (unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

impl Limit {
    /// The limit, `None` when unlimited.
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Max => None,
            Limit::Value(v) => Some(v),
        }
    }
}

/// v2 `cpu.max`: quota per period, in µs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: Limit,
    pub period_us: u64,
}

/// The lines of `memory.stat` this collector uses (v1 and v2 names; a kernel writes one
/// set or the other). A line the kernel does not write stays `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStat {
    // cgroup v1: this cgroup alone, and `total_` = this cgroup and its descendants.
    pub cache: Option<u64>,
    pub rss: Option<u64>,
    pub mapped_file: Option<u64>,
    pub swap: Option<u64>,
    pub total_cache: Option<u64>,
    pub total_rss: Option<u64>,
    pub total_mapped_file: Option<u64>,
    pub total_swap: Option<u64>,
    // cgroup v2 (always hierarchical).
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub file_mapped: Option<u64>,
    pub kernel: Option<u64>,
}

/// The lines of `cpu.stat` this collector uses. v1 (cpu controller) writes `nr_periods`,
/// `nr_throttled`, `throttled_time` (ns); v2 writes `usage_usec`, `user_usec`,
/// `system_usec` always and the throttling lines (`throttled_usec`) only when the cpu
/// controller is enabled for the cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
    pub throttled_time: Option<u64>,
}

/// What the kernel's structs behind a task cgroup's single-value control files held,
/// as the task iterator read them (bytes and counts); see [`super::TaskCgroups`] for
/// when each stands in for its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCgroupCounters {
    /// The task's memory cgroup (`mem_cgroup`), when the iterator met one of its
    /// processes in it.
    pub memory: Option<KernelMemoryCounters>,
    /// The task's cpu cgroup's CFS bandwidth counters, likewise.
    pub throttling: Option<KernelThrottleCounters>,
}

/// `memory.usage_in_bytes`/`memory.current`, `memory.max_usage_in_bytes`/`memory.peak`,
/// v2 `memory.swap.current`, v1 `memory.kmem.usage_in_bytes` and
/// `memory.kmem.max_usage_in_bytes` (`None` where the kernel has no such counter), and
/// the OOM kills of v1 `memory.oom_control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelMemoryCounters {
    pub usage: u64,
    pub peak: u64,
    /// cgroup v2 only: on v1 the same kernel counter is memory + swap.
    pub swap: Option<u64>,
    pub kernel_usage: Option<u64>,
    pub kernel_peak: Option<u64>,
    pub oom_kills: u64,
}

/// `cpu.stat`'s `nr_throttled` and throttled time, in ns (v2's file rounds it to µs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelThrottleCounters {
    pub nr_throttled: u64,
    pub throttled_ns: u64,
}

/// A task's memory figures in bytes; `None` = not measured on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    pub rss: Option<u64>,
    pub cache: Option<u64>,
    pub mapped_file: Option<u64>,
    /// Swap alone. **Deliberate**: Nomad reports v1 `memsw` (memory + swap) and v2
    /// `swap.current + current`, which makes Swap exceed Usage (Nomad #10190).
    pub swap: Option<u64>,
    pub usage: Option<u64>,
    pub max_usage: Option<u64>,
    pub kernel_usage: Option<u64>,
    pub kernel_max_usage: Option<u64>,
}

impl MemoryFigures {
    /// Names of the measured fields, in Nomad's `Measured` order.
    pub fn measured(&self) -> Vec<&'static str> {
        [
            (self.rss, measured::RSS),
            (self.cache, measured::CACHE),
            (self.swap, measured::SWAP),
            (self.mapped_file, measured::MAPPED_FILE),
            (self.usage, measured::USAGE),
            (self.max_usage, measured::MAX_USAGE),
            (self.kernel_usage, measured::KERNEL_USAGE),
            (self.kernel_max_usage, measured::KERNEL_MAX_USAGE),
        ]
        .into_iter()
        .filter_map(|(v, name)| v.map(|_| name))
        .collect()
    }

    /// Nomad's shape: unmeasured figures are 0 and left out of `Measured`.
    pub fn to_memory_stats(&self) -> crate::model::MemoryStats {
        crate::model::MemoryStats {
            rss: self.rss.unwrap_or(0),
            cache: self.cache.unwrap_or(0),
            swap: self.swap.unwrap_or(0),
            mapped_file: self.mapped_file.unwrap_or(0),
            usage: self.usage.unwrap_or(0),
            max_usage: self.max_usage.unwrap_or(0),
            kernel_usage: self.kernel_usage.unwrap_or(0),
            kernel_max_usage: self.kernel_max_usage.unwrap_or(0),
            measured: self.measured(),
        }
    }
}

/// A task's cumulative CPU throttling counters (raw, as Nomad reports them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleFigures {
    /// Periods in which the cgroup was throttled.
    pub periods: Option<u64>,
    /// Total time throttled, ns.
    pub time_ns: Option<u64>,
}

impl ThrottleFigures {
    /// Names of the measured fields, in Nomad's `Measured` order.
    pub fn measured(&self) -> Vec<&'static str> {
        let mut out = Vec::with_capacity(2);
        if self.periods.is_some() {
            out.push(measured::THROTTLED_PERIODS);
        }
        if self.time_ns.is_some() {
            out.push(measured::THROTTLED_TIME);
        }
        out
    }
}

/// The cumulative totals of one PSI file (`cpu.pressure`, `memory.pressure`,
/// `io.pressure`), µs: time in which some (`some`) or all (`full`) of the cgroup's
/// non-idle tasks were stalled on the resource. `full` is absent from `cpu.pressure`
/// before 5.13.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PressureTotals {
    pub some_us: u64,
    pub full_us: Option<u64>,
}

/// The three PSI files of a cgroup v2 directory; each `None` where the kernel has no
/// such file (PSI off, or a kernel without it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub cpu: Option<PressureTotals>,
    pub memory: Option<PressureTotals>,
    pub io: Option<PressureTotals>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_names_follow_nomads_order() {
        let all = MemoryFigures {
            rss: Some(1),
            cache: Some(2),
            mapped_file: Some(3),
            swap: Some(4),
            usage: Some(5),
            max_usage: Some(6),
            kernel_usage: Some(7),
            kernel_max_usage: Some(8),
        };
        assert_eq!(
            all.measured(),
            [
                "RSS",
                "Cache",
                "Swap",
                "Mapped File",
                "Usage",
                "Max Usage",
                "Kernel Usage",
                "Kernel Max Usage"
            ]
        );
        let v2 = MemoryFigures {
            rss: Some(1),
            usage: Some(5),
            ..Default::default()
        };
        assert_eq!(v2.measured(), ["RSS", "Usage"]);
        let stats = v2.to_memory_stats();
        assert_eq!((stats.rss, stats.cache, stats.usage), (1, 0, 5));
        assert_eq!(MemoryFigures::default().measured(), Vec::<&str>::new());
        let t = ThrottleFigures {
            periods: Some(1),
            time_ns: None,
        };
        assert_eq!(t.measured(), ["Throttled Periods"]);
    }
}
