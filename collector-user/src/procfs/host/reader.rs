//! [`HostReader`]: every host figure of `GET /v1/client/stats`, read through [`Tree`]s over
//! `/proc` and `/sys`.

use std::{
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{debug, warn};

use super::{
    cpufreq::{read_cpu_frequencies, total_compute_mhz},
    meminfo::parse_meminfo,
    stat::{parse_cpu_ticks, CpuTimesTracker},
    types::{CpuFrequency, CpuTicks, FrequencySource, FsUsage},
    uptime::parse_uptime,
};
use crate::{
    fsutil::Tree,
    model::host::{HostCpuStats, HostDiskStats, HostStats},
    procfs::{
        mountinfo::{find_mount, Mount},
        ParseError, ProcError,
    },
};

/// Host files that can fail to read; each warns when it starts failing, not every sample.
#[derive(Debug, Default)]
struct Failing {
    meminfo: bool,
    stat: bool,
    uptime: bool,
    mountinfo: bool,
}

fn noted<T>(failing: &mut bool, result: Result<T, ProcError>) -> Option<T> {
    match result {
        Ok(value) => {
            *failing = false;
            Some(value)
        }
        Err(err) => {
            if !*failing {
                warn!(error = %err, "host figure unavailable; reported as 0");
            } else {
                debug!(error = %err, "host figure still unavailable");
            }
            *failing = true;
            None
        }
    }
}

/// Reads the host figures of `GET /v1/client/stats`. Keeps the previous `/proc/stat`
/// reading (CPU percentages are over the interval between two samples) and the per-CPU
/// MHz, which are read once and again only when a CPU appears.
#[derive(Debug)]
pub struct HostReader {
    proc_: Tree,
    sys: Tree,
    tracker: CpuTimesTracker,
    /// Sorted by CPU.
    frequencies: Vec<CpuFrequency>,
    buf: String,
    failing: Failing,
}

impl HostReader {
    /// `proc_` is a tree over `/proc`, `sys` over `/sys`.
    pub fn new(proc_: Tree, sys: Tree) -> Self {
        let mut reader = Self {
            proc_,
            sys,
            tracker: CpuTimesTracker::new(),
            frequencies: Vec::new(),
            buf: String::new(),
            failing: Failing::default(),
        };
        // Errors are reported by the first sample, which reads /proc/stat again.
        if let Ok(ticks) = reader.read_parsed(Path::new("stat"), parse_cpu_ticks) {
            reader.ensure_frequencies(&ticks);
        }
        reader
    }

    pub fn open(proc_root: &Path, sys_root: &Path) -> io::Result<Self> {
        Ok(Self::new(Tree::open(proc_root)?, Tree::open(sys_root)?))
    }

    /// MHz of each logical CPU known so far, sorted by CPU.
    pub fn frequencies(&self) -> &[CpuFrequency] {
        &self.frequencies
    }

    /// Nomad's `TotalCompute` as detected (without the `cpu_total_compute` override).
    pub fn total_compute_mhz(&self) -> u64 {
        total_compute_mhz(&self.frequencies)
    }

    fn read_parsed<T>(
        &mut self,
        rel: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, ProcError> {
        let path = || self.proc_.path().join(rel);
        self.proc_
            .read_into(rel, &mut self.buf)
            .map_err(|source| ProcError::Io {
                path: path(),
                source,
            })?;
        parse(&self.buf).map_err(|source| ProcError::Parse {
            path: path(),
            source,
        })
    }

    /// Reads the MHz of every CPU again when `ticks` names one not seen yet (the first
    /// reading, or a CPU brought online); CPUs seen before are kept.
    fn ensure_frequencies(&mut self, ticks: &[CpuTicks]) {
        let known = |cpu: u32| {
            self.frequencies
                .binary_search_by_key(&cpu, |f| f.cpu)
                .is_ok()
        };
        if ticks.iter().all(|t| known(t.cpu)) {
            return;
        }
        let mut cpus: Vec<u32> = self
            .frequencies
            .iter()
            .map(|f| f.cpu)
            .chain(ticks.iter().map(|t| t.cpu))
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        self.frequencies = read_cpu_frequencies(&self.sys, &self.proc_, &cpus);
        let unknown: Vec<u32> = self
            .frequencies
            .iter()
            .filter(|f| f.source == FrequencySource::Unknown)
            .map(|f| f.cpu)
            .collect();
        if !unknown.is_empty() {
            warn!(
                cpus = ?unknown,
                "no frequency found for these CPUs (no cpufreq, no cpu MHz in /proc/cpuinfo): \
                 their TotalTicks are 0 unless cpu_total_compute is set"
            );
        }
        debug!(
            total_compute_mhz = total_compute_mhz(&self.frequencies),
            frequencies = ?self.frequencies,
            "CPU frequencies read"
        );
    }

    fn mhz_of(&self, cpu: u32) -> f64 {
        self.frequencies
            .binary_search_by_key(&cpu, |f| f.cpu)
            .map(|i| self.frequencies[i].mhz)
            .unwrap_or(0.0)
    }

    fn cpu_stats(&mut self, cpu_total_compute_override: Option<u64>) -> Vec<HostCpuStats> {
        let read = self.read_parsed(Path::new("stat"), parse_cpu_ticks);
        let Some(ticks) = noted(&mut self.failing.stat, read) else {
            return Vec::new();
        };
        self.ensure_frequencies(&ticks);
        let count = ticks.len() as f64;
        let per_cpu_override = cpu_total_compute_override
            .filter(|&total| total > 0)
            .map(|total| total as f64 / count);
        self.tracker
            .update(ticks)
            .into_iter()
            .map(|p| {
                let mhz = per_cpu_override.unwrap_or_else(|| self.mhz_of(p.cpu));
                HostCpuStats {
                    cpu: format!("cpu{}", p.cpu),
                    user: p.user,
                    system: p.system,
                    idle: p.idle,
                    total_percent: p.total_percent,
                    total_ticks: p.total_percent / 100.0 * mhz,
                }
            })
            .collect()
    }

    /// Disk figures of each data directory's filesystem, once per mount point, and of the
    /// first directory's alone (Nomad's alloc dir). A directory that does not exist is
    /// skipped: it may not have been created yet.
    fn disk_stats(&mut self, data_dirs: &[PathBuf]) -> (Vec<HostDiskStats>, Option<HostDiskStats>) {
        let mut disks: Vec<HostDiskStats> = Vec::new();
        let mut first = None;
        if data_dirs.is_empty() {
            return (disks, first);
        }
        // Our own mount table: statvfs below resolves paths in our mount namespace.
        // `self` is a symlink, which a Tree does not follow; our pid's directory is the same.
        let rel = PathBuf::from(format!("{}/mountinfo", std::process::id()));
        let read = self.read_parsed(&rel, |text| Ok(text.to_owned()));
        let mountinfo = noted(&mut self.failing.mountinfo, read).unwrap_or_default();
        for dir in data_dirs {
            let canonical = match std::fs::canonicalize(dir) {
                Ok(path) => path,
                Err(err) => {
                    debug!(dir = %dir.display(), error = %err, "data directory skipped");
                    continue;
                }
            };
            let usage = match FsUsage::of(&canonical) {
                Ok(usage) => usage,
                Err(err) => {
                    warn!(dir = %canonical.display(), error = %err, "statvfs failed; disk skipped");
                    continue;
                }
            };
            let text = canonical.to_string_lossy();
            let mount = find_mount(&mountinfo, &text).unwrap_or_else(|| Mount {
                device: String::new(),
                mountpoint: text.into_owned(),
            });
            let stats = usage.disk_stats(mount);
            if first.is_none() {
                first = Some(stats.clone());
            }
            if !disks.iter().any(|d| d.mountpoint == stats.mountpoint) {
                disks.push(stats);
            }
        }
        (disks, first)
    }

    /// The host figures now. CPU percentages are over the interval since the previous call
    /// (all 0 on the first). With `cpu_total_compute_override` (Nomad's
    /// `cpu_total_compute`; 0 counts as unset) each CPU is taken to run at
    /// `override / CPUs` MHz. A figure that cannot be read is 0, with a warning when it
    /// starts failing.
    pub fn sample(
        &mut self,
        data_dirs: &[PathBuf],
        cpu_total_compute_override: Option<u64>,
    ) -> HostStats {
        let read = self.read_parsed(Path::new("meminfo"), parse_meminfo);
        let memory = noted(&mut self.failing.meminfo, read).unwrap_or_default();
        let read = self.read_parsed(Path::new("uptime"), parse_uptime);
        let uptime = noted(&mut self.failing.uptime, read).unwrap_or(0.0) as u64;
        let cpu = self.cpu_stats(cpu_total_compute_override);
        let cpu_ticks_consumed = cpu.iter().map(|c| c.total_ticks).sum();
        let (disk_stats, alloc_dir_stats) = self.disk_stats(data_dirs);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        HostStats {
            memory,
            cpu,
            disk_stats,
            alloc_dir_stats,
            device_stats: None,
            uptime,
            timestamp,
            cpu_ticks_consumed,
        }
    }
}
