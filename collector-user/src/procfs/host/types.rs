//! The host figures as read, before they become the API's [`crate::model::host`] types.

/// Cumulative clock ticks of one logical CPU, grouped as Nomad reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// The `N` of `cpuN`.
    pub cpu: u32,
    /// user + nice (guest time is already inside user).
    pub user: u64,
    /// system + irq + softirq.
    pub system: u64,
    /// idle + iowait: waiting for I/O leaves the CPU free for others.
    pub idle: u64,
    /// Time a hypervisor gave this virtual CPU to someone else. Counted in `total` but not
    /// in `idle`, so a starved VM shows busy, as in Nomad.
    pub steal: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal.
    pub total: u64,
}

/// One logical CPU's use over an interval, in percent of that CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPercent {
    pub cpu: u32,
    pub user: f64,
    pub system: f64,
    pub idle: f64,
    /// 100 − idle.
    pub total_percent: f64,
}

/// Where a CPU's MHz came from, in Nomad's order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrequencySource {
    /// cpufreq `base_frequency` (Intel P-state): the rated, non-turbo clock.
    BaseFrequency,
    /// cpufreq `cpuinfo_max_freq`: the highest the driver may set (often turbo).
    MaxFrequency,
    /// The `cpu MHz` of `/proc/cpuinfo`: the current clock (constant on most VMs).
    CpuInfo,
    /// Nothing said: 0 MHz; `cpu_total_compute` must be set for TotalTicks to mean anything.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuFrequency {
    pub cpu: u32,
    pub mhz: f64,
    pub source: FrequencySource,
}

/// A filesystem's size and use, from `statvfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// `f_frsize`: the unit of the block counts.
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks an unprivileged user may use (excludes the root reserve).
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}
