//! Readers of /proc (and of /sys for CPU frequencies).
//!
//! - [`process`]: per-process CPU and memory, as Nomad's executor polls them; the /proc CPU
//!   source uses these when eBPF is unavailable, and the per-PID figures come from here.
//! - [`host`]: the figures of `GET /v1/client/stats`.
//! - [`mountinfo`]: the mount table's parser, shared with [`crate::cgroup`]'s mounts.
//!
//! Every read goes through a [`crate::fsutil::Tree`] opened once on the root (`/proc`,
//! `/sys`, or a fake tree in tests), so no symlink is ever followed out of it.

mod error;
pub mod host;
pub mod mountinfo;
pub mod process;

use std::sync::OnceLock;

pub use error::{ParseError, ProcError};
pub use host::{
    find_mount, parse_cpu_list, parse_cpu_ticks, parse_cpuinfo_mhz, parse_khz, parse_meminfo,
    parse_uptime, read_cpu_frequencies, total_compute_mhz, CpuFrequency, CpuPercent, CpuTicks,
    CpuTimesTracker, FrequencySource, FsUsage, HostReader, Mount,
};
pub use process::{
    parse_environ_vars, parse_schedstat, parse_stat, parse_statm, parse_status_vmswap, ProcReader,
    ProcStat, Statm,
};

/// `sysconf(name)`, or `fallback` if the C library cannot say.
fn sysconf_or(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .unwrap_or(fallback)
}

/// Clock ticks per second (`USER_HZ`), the unit of the CPU times in `/proc/<pid>/stat` and
/// `/proc/stat`. It is fixed for the life of the system, so it is asked for once. 100 if
/// `sysconf` fails: the value of every mainstream Linux architecture.
pub fn clock_ticks_per_sec() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| sysconf_or(libc::_SC_CLK_TCK, 100))
}

/// Bytes per page, the unit of `/proc/<pid>/statm`. Asked for once; 4096 if `sysconf`
/// fails.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| sysconf_or(libc::_SC_PAGESIZE, 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_plausible() {
        let hz = clock_ticks_per_sec();
        assert!((1..=10_000).contains(&hz), "{hz}");
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096, "{page}");
    }
}
