//! Raw, cumulative readings as the sources produce them, before any rate is computed.
//! Both CPU sources (eBPF and /proc) fill these; `collect::rates` turns two of them into
//! figures. It sits below both `procfs` and `collect`, which import it.

/// Cumulative CPU time in ns. `run` is the total; `user` and `system` are the (tick-
/// sampled) split, which need not add up to `run` exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub run_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

/// What the kernel counts for one tracked cgroup (or, summed, one task), cumulative:
/// CPU time, run-queue wait, and processes started and exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub cpu: CpuTimes,
    pub wait_ns: u64,
    pub processes_started: u64,
    pub processes_exited: u64,
}

impl KernelCounters {
    pub fn saturating_add(self, other: KernelCounters) -> KernelCounters {
        KernelCounters {
            cpu: self.cpu.saturating_add(other.cpu),
            wait_ns: self.wait_ns.saturating_add(other.wait_ns),
            processes_started: self
                .processes_started
                .saturating_add(other.processes_started),
            processes_exited: self.processes_exited.saturating_add(other.processes_exited),
        }
    }
}

/// Resident and swapped memory of one process, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    pub rss_bytes: u64,
    pub swap_bytes: u64,
}

/// One process (thread group) at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    /// When the process started, in whatever unit the source has (ns or clock ticks):
    /// used only to tell a reused PID from the process that had it before.
    pub start: u64,
    pub cpu: CpuTimes,
    pub memory: Option<ProcessMemory>,
}

impl CpuTimes {
    pub fn saturating_add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            run_ns: self.run_ns.saturating_add(other.run_ns),
            user_ns: self.user_ns.saturating_add(other.user_ns),
            system_ns: self.system_ns.saturating_add(other.system_ns),
        }
    }
}
