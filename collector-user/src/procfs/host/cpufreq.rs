//! CPU frequencies: cpufreq's files under `/sys/devices/system/cpu`, then `/proc/cpuinfo`,
//! in Nomad's order, and Nomad's `TotalCompute` from them.

use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use tracing::debug;

use super::{
    cpuinfo::parse_cpuinfo_mhz,
    types::{CpuFrequency, FrequencySource},
};
use crate::{fsutil::Tree, procfs::ParseError};

/// A cpufreq frequency file: one integer, in kHz.
pub fn parse_khz(text: &str) -> Result<u64, ParseError> {
    text.trim().parse().map_err(|_| ParseError::Invalid {
        file: "cpufreq",
        field: "frequency (kHz)",
    })
}

/// A list of CPU ids as sysfs writes them: space-separated (`related_cpus`) or as ranges
/// (`0-3,8`). Unreadable tokens are skipped; a range is capped so that a corrupt file
/// cannot make a huge list.
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    const MAX_RANGE: u32 = 1 << 16;
    let mut cpus = Vec::new();
    for token in text.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
        match token.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    if a <= b && b - a < MAX_RANGE {
                        cpus.extend(a..=b);
                    }
                }
            }
            None => cpus.extend(token.parse::<u32>().ok()),
        }
    }
    cpus
}

pub(super) const SYS_CPU: &str = "devices/system/cpu";

/// MHz of each of `cpus`: cpufreq `base_frequency`, else `cpuinfo_max_freq`, else the
/// `cpu MHz` of `/proc/cpuinfo`, else 0 (Nomad's order). `sys` is a tree over `/sys`,
/// `proc_` over `/proc`.
///
/// `cpuN/cpufreq` is a symlink to `cpufreq/policyM` on current kernels and a [`Tree`]
/// follows no symlink, so the policies are read first (`related_cpus` says whose they
/// are); `cpuN/cpufreq` is only tried for a CPU no policy names (old kernels, where it is
/// a directory).
pub fn read_cpu_frequencies(sys: &Tree, proc_: &Tree, cpus: &[u32]) -> Vec<CpuFrequency> {
    let policies_dir = Path::new(SYS_CPU).join("cpufreq");
    let mut policy_of: Vec<(u32, PathBuf)> = Vec::new();
    // No cpufreq at all (most VMs) is normal, hence no log.
    if let Ok(names) = sys.subdirs(&policies_dir) {
        for name in names {
            if !name.as_bytes().starts_with(b"policy") {
                continue;
            }
            let dir = policies_dir.join(&name);
            if let Ok(text) = sys.read_to_string(&dir.join("related_cpus")) {
                policy_of.extend(parse_cpu_list(&text).into_iter().map(|c| (c, dir.clone())));
            }
        }
    }
    let cpuinfo = match proc_.read_to_string(Path::new("cpuinfo")) {
        Ok(text) => parse_cpuinfo_mhz(&text),
        Err(err) => {
            debug!(error = %err, "cannot read /proc/cpuinfo");
            Vec::new()
        }
    };
    let khz_in = |dir: &Path, file: &str| {
        sys.read_to_string(&dir.join(file))
            .ok()
            .and_then(|text| parse_khz(&text).ok())
            .filter(|&khz| khz > 0)
            .map(|khz| khz as f64 / 1000.0)
    };
    let mut out: Vec<CpuFrequency> = cpus
        .iter()
        .map(|&cpu| {
            let dir = policy_of
                .iter()
                .find(|(c, _)| *c == cpu)
                .map(|(_, dir)| dir.clone())
                .unwrap_or_else(|| Path::new(SYS_CPU).join(format!("cpu{cpu}/cpufreq")));
            let (mhz, source) = if let Some(mhz) = khz_in(&dir, "base_frequency") {
                (mhz, FrequencySource::BaseFrequency)
            } else if let Some(mhz) = khz_in(&dir, "cpuinfo_max_freq") {
                (mhz, FrequencySource::MaxFrequency)
            } else if let Some(&(_, mhz)) = cpuinfo.iter().find(|(c, _)| *c == cpu) {
                (mhz, FrequencySource::CpuInfo)
            } else {
                (0.0, FrequencySource::Unknown)
            };
            CpuFrequency { cpu, mhz, source }
        })
        .collect();
    out.sort_unstable_by_key(|f| f.cpu);
    out.dedup_by_key(|f| f.cpu);
    out
}

/// Nomad's `TotalCompute`: the sum of every logical CPU's MHz, rounded.
pub fn total_compute_mhz(frequencies: &[CpuFrequency]) -> u64 {
    frequencies.iter().map(|f| f.mhz).sum::<f64>().round() as u64
}
