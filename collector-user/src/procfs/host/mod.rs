//! Host figures for `GET /v1/client/stats` ([`HostStats`](crate::model::host::HostStats)),
//! computed the way Nomad's client computes them (through gopsutil), so that dashboards
//! built on Nomad read the same numbers: memory from `/proc/meminfo`, per-CPU percentages
//! from two readings of `/proc/stat`, MHz per CPU from cpufreq or `/proc/cpuinfo`, disks
//! from `statvfs` and the mount table.
//!
//! One concern per file: [`types`] holds the figures as read; `meminfo`, `uptime`,
//! `stat`, `cpuinfo`, `cpufreq` and `statvfs` each read one source; [`reader`] puts them
//! together in [`HostReader`]; the tests are in `tests.rs`. The mount table is parsed by
//! [`super::mountinfo`], shared with the cgroup mounts.

mod cpufreq;
mod cpuinfo;
mod meminfo;
pub mod reader;
mod stat;
mod statvfs;
#[cfg(test)]
mod tests;
pub mod types;
mod uptime;

pub use cpufreq::{parse_cpu_list, parse_khz, read_cpu_frequencies, total_compute_mhz};
pub use cpuinfo::parse_cpuinfo_mhz;
pub use meminfo::parse_meminfo;
pub use reader::HostReader;
pub use stat::{parse_cpu_ticks, CpuTimesTracker};
pub use types::{CpuFrequency, CpuPercent, CpuTicks, FrequencySource, FsUsage};
pub use uptime::parse_uptime;

pub use super::mountinfo::{find_mount, Mount};
