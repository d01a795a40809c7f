//! When a task's `memory.stat` need not be read again: its memory cgroup's kernel
//! counters have not moved. Pure bookkeeping, the one place where that rule lives.
//!
//! `memory.stat` is the costliest file a cycle reads (the kernel formats some forty
//! lines, v1 twice over with the `total_` ones), and the counters the task iterator reads
//! in the kernel each interval (usage, peak, swap, kernel memory, OOM kills) say whether
//! anything was charged to or freed from the cgroup: a page that becomes anon, cache or
//! mapped file is charged, one that stops being any of them is uncharged. While they stand
//! still, the breakdown read last is carried over:
//!
//! * after a change the file is still read for [`SETTLE_READS`] cycles, so that a
//!   breakdown the kernel folds into its totals later (cgroup v2's rstat is flushed every
//!   2 s) is picked up;
//! * and at least every [`REFRESH_CYCLES`] (tasks take turns), which bounds how long a
//!   shift the counters cannot see stays unseen: charges taken from the per-CPU stock of
//!   pre-charged pages (at most 64 pages a CPU) and pages of the cgroup mapped by a
//!   process elsewhere.
//!
//! v2's OOM kills (`memory.events`) follow the same rule exactly: a kill in the cgroup
//! moves the hierarchical counter the kernel reads.
//!
//! cgroup v2's pressure files (`cpu.pressure`, `memory.pressure`, `io.pressure`: three
//! reads a task a cycle, each summing every CPU's stall times in the kernel) follow
//! [`SteadyPressure`]: their totals grow only while a thread of the cgroup is stalled,
//! waiting for a CPU, for memory or for I/O, and a stalled thread moves the task's
//! kernel-counted CPU, run-queue wait or process counts when it runs again. While those
//! stand still, the totals read last are carried over; the same [`REFRESH_CYCLES`] turn
//! bounds how late a stall that has not ended yet (a thread blocked on slow I/O) shows.
//! The totals are cumulative, so a late read loses nothing.

use crate::{cgroup::KernelMemoryCounters, sample::KernelCounters};

/// Reads of `memory.stat` after the counters last moved.
pub const SETTLE_READS: u32 = 3;

/// The longest a task goes without reading `memory.stat`, in cycles.
pub const REFRESH_CYCLES: u64 = 10;

/// One task's memory counters as last seen, and for how many cycles in a row.
#[derive(Clone, Copy, Debug, Default)]
pub struct SteadyMemory {
    seen: Option<KernelMemoryCounters>,
    /// Cycles in a row with `seen` after the one that saw it first.
    steady: u32,
}

impl SteadyMemory {
    /// Records this cycle's counters (`None`: the kernel did not read them) and whether
    /// it is the task's refresh turn; true when the breakdown read last still holds.
    pub fn observe(&mut self, counters: Option<&KernelMemoryCounters>, refresh: bool) -> bool {
        match counters {
            Some(c) if self.seen.as_ref() == Some(c) => {
                self.steady = self.steady.saturating_add(1);
            }
            _ => {
                self.seen = counters.copied();
                self.steady = 0;
            }
        }
        self.seen.is_some() && self.steady >= SETTLE_READS && !refresh
    }

    /// The read that followed failed: the next one starts afresh.
    pub fn forget(&mut self) {
        *self = Self::default();
    }
}

/// One task's kernel counters as of its last pressure read.
#[derive(Clone, Copy, Debug, Default)]
pub struct SteadyPressure {
    seen: Option<KernelCounters>,
}

impl SteadyPressure {
    /// Whether the pressure totals read last still hold: the task's kernel counters
    /// (`None`: the kernel did not count it this cycle) are those of the last read, and
    /// it is not the task's refresh turn. When not, the caller reads the files and the
    /// counters are recorded as those of that read.
    pub fn holds(&mut self, counters: Option<&KernelCounters>, refresh: bool) -> bool {
        let holds = counters.is_some() && self.seen.as_ref() == counters && !refresh;
        if !holds {
            self.seen = counters.copied();
        }
        holds
    }

    /// The read that followed failed: the next cycle reads again.
    pub fn forget(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(usage: u64) -> KernelMemoryCounters {
        KernelMemoryCounters {
            usage,
            peak: usage,
            ..KernelMemoryCounters::default()
        }
    }

    #[test]
    fn carries_only_after_the_counters_settled() {
        let mut m = SteadyMemory::default();
        let c = counters(4096);
        let carried: Vec<bool> = (0..6).map(|_| m.observe(Some(&c), false)).collect();
        assert_eq!(carried, [false, false, false, true, true, true]);
    }

    #[test]
    fn any_counter_that_moves_starts_the_settling_again() {
        let mut m = SteadyMemory::default();
        let c = counters(4096);
        for _ in 0..5 {
            m.observe(Some(&c), false);
        }
        assert!(m.observe(Some(&c), false));
        let oom = KernelMemoryCounters { oom_kills: 1, ..c };
        assert!(!m.observe(Some(&oom), false));
        let swapped = KernelMemoryCounters {
            swap: Some(4096),
            ..oom
        };
        assert!(!m.observe(Some(&swapped), false));
        for _ in 0..SETTLE_READS - 1 {
            assert!(!m.observe(Some(&swapped), false));
        }
        assert!(m.observe(Some(&swapped), false));
    }

    #[test]
    fn the_refresh_turn_and_missing_counters_read_the_file() {
        let mut m = SteadyMemory::default();
        let c = counters(8192);
        for _ in 0..5 {
            m.observe(Some(&c), false);
        }
        assert!(!m.observe(Some(&c), true), "the task's refresh turn");
        assert!(
            m.observe(Some(&c), false),
            "the turn does not restart the settling"
        );
        assert!(!m.observe(None, false), "no kernel counters this cycle");
        assert!(!m.observe(Some(&c), false), "seen again: settles again");
    }

    #[test]
    fn a_failed_read_starts_afresh() {
        let mut m = SteadyMemory::default();
        let c = counters(8192);
        for _ in 0..5 {
            m.observe(Some(&c), false);
        }
        m.forget();
        assert!(!m.observe(Some(&c), false));
    }

    fn kernel(run_ns: u64, wait_ns: u64) -> KernelCounters {
        let mut k = KernelCounters {
            wait_ns,
            ..KernelCounters::default()
        };
        k.cpu.run_ns = run_ns;
        k
    }

    #[test]
    fn pressure_is_read_again_once_anything_the_kernel_counts_moved() {
        let mut p = SteadyPressure::default();
        let idle = kernel(1_000, 10);
        assert!(!p.holds(Some(&idle), false), "never read: read");
        assert!(p.holds(Some(&idle), false), "nothing ran: carried");
        assert!(p.holds(Some(&idle), false));
        let ran = kernel(2_000, 10);
        assert!(!p.holds(Some(&ran), false), "a thread ran");
        assert!(p.holds(Some(&ran), false));
        let waited = kernel(2_000, 20);
        assert!(!p.holds(Some(&waited), false), "a thread waited for a CPU");
        let exited = KernelCounters {
            processes_exited: 1,
            ..waited
        };
        assert!(!p.holds(Some(&exited), false), "a process exited");
        assert!(p.holds(Some(&exited), false));
    }

    #[test]
    fn pressure_is_read_at_the_turn_without_counters_and_after_a_failure() {
        let mut p = SteadyPressure::default();
        let idle = kernel(1_000, 10);
        p.holds(Some(&idle), false);
        assert!(!p.holds(Some(&idle), true), "the task's refresh turn");
        assert!(
            p.holds(Some(&idle), false),
            "the turn's read is the last one"
        );
        assert!(
            !p.holds(None, false),
            "not counted by the kernel: always read"
        );
        assert!(!p.holds(None, false));
        assert!(!p.holds(Some(&idle), false), "counted again: read once");
        assert!(p.holds(Some(&idle), false));
        p.forget();
        assert!(!p.holds(Some(&idle), false), "the last read failed");
    }
}
