//! `HostStats` (`GET /v1/client/stats`), as Nomad's client reports them.

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostMemoryStats {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    pub free: u64,
}

/// One logical CPU's use over the last interval, in percent of that CPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostCpuStats {
    /// `cpu0`, `cpu1`, … as in /proc/stat.
    #[serde(rename = "CPU")]
    pub cpu: String,
    pub user: f64,
    pub system: f64,
    pub idle: f64,
    pub total_percent: f64,
    /// MHz in use: `TotalPercent / 100 × this CPU's MHz`.
    pub total_ticks: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostDiskStats {
    pub device: String,
    pub mountpoint: String,
    pub size: u64,
    pub used: u64,
    pub available: u64,
    pub used_percent: f64,
    pub inodes_used_percent: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostStats {
    pub memory: HostMemoryStats,
    #[serde(rename = "CPU")]
    pub cpu: Vec<HostCpuStats>,
    pub disk_stats: Vec<HostDiskStats>,
    /// The first configured data directory's disk, as Nomad reports its alloc dir.
    pub alloc_dir_stats: Option<HostDiskStats>,
    pub device_stats: Option<Vec<serde_json::Value>>,
    /// Seconds since boot.
    pub uptime: u64,
    /// Unix time in ns.
    pub timestamp: i64,
    /// MHz in use over all CPUs.
    #[serde(rename = "CPUTicksConsumed")]
    pub cpu_ticks_consumed: f64,
}
