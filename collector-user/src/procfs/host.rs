//! Host figures for `GET /v1/client/stats` ([`HostStats`]), computed the way Nomad's client
//! computes them (through gopsutil), so that dashboards built on Nomad read the same
//! numbers: memory from `/proc/meminfo`, per-CPU percentages from two readings of
//! `/proc/stat`, MHz per CPU from cpufreq or `/proc/cpuinfo`, disks from `statvfs`.

use std::{
    borrow::Cow,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{debug, warn};

use super::error::{ParseError, ProcError};
use crate::{
    fsutil::Tree,
    model::host::{HostCpuStats, HostDiskStats, HostMemoryStats, HostStats},
};

/// The number before an optional `kB` unit in a `/proc/meminfo` line, in bytes.
fn meminfo_bytes(rest: &str) -> Option<u64> {
    let mut fields = rest.split_ascii_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Parses `/proc/meminfo` as gopsutil does for Nomad: `Used = Total - Available` (not
/// `Total - Free`: page cache the kernel can drop is not "used"). Kernels before 3.14 have
/// no `MemAvailable`; there `Available` is estimated as `Free + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> Result<HostMemoryStats, ParseError> {
    const F: &str = "meminfo";
    let (mut total, mut free, mut available, mut buffers, mut cached) =
        (None, None, None, None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let (slot, field) = match key {
            "MemTotal" => (&mut total, "MemTotal"),
            "MemFree" => (&mut free, "MemFree"),
            "MemAvailable" => (&mut available, "MemAvailable"),
            "Buffers" => (&mut buffers, "Buffers"),
            "Cached" => (&mut cached, "Cached"),
            _ => continue,
        };
        *slot = Some(meminfo_bytes(rest).ok_or(ParseError::Invalid { file: F, field })?);
    }
    let total = total.ok_or(ParseError::Missing {
        file: F,
        field: "MemTotal",
    })?;
    let free = free.ok_or(ParseError::Missing {
        file: F,
        field: "MemFree",
    })?;
    let available = available.unwrap_or_else(|| {
        free.saturating_add(buffers.unwrap_or(0))
            .saturating_add(cached.unwrap_or(0))
    });
    Ok(HostMemoryStats {
        total,
        available,
        used: total.saturating_sub(available),
        free,
    })
}

/// Seconds since boot: the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    const F: &str = "uptime";
    let seconds: f64 = text
        .split_ascii_whitespace()
        .next()
        .ok_or(ParseError::Missing {
            file: F,
            field: "uptime",
        })?
        .parse()
        .map_err(|_| ParseError::Invalid {
            file: F,
            field: "uptime",
        })?;
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(seconds)
    } else {
        Err(ParseError::Invalid {
            file: F,
            field: "uptime",
        })
    }
}

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

/// Parses the per-CPU lines (`cpu0 …`, not the aggregate `cpu …`) of `/proc/stat`.
/// Columns a kernel does not have yet (iowait and later arrived in 2.5/2.6) count as 0.
/// Offline CPUs have no line.
pub fn parse_cpu_ticks(text: &str) -> Result<Vec<CpuTicks>, ParseError> {
    const F: &str = "stat";
    let mut cpus = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("cpu")
            .filter(|rest| rest.as_bytes().first().is_some_and(u8::is_ascii_digit))
        else {
            if cpus.is_empty() {
                continue;
            }
            // The CPU lines come first, together; the rest (`intr` is long) is not needed.
            break;
        };
        let mut fields = rest.split_ascii_whitespace();
        let cpu = fields
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or(ParseError::Invalid {
                file: F,
                field: "cpuN",
            })?;
        // user nice system idle iowait irq softirq steal
        let mut v = [0u64; 8];
        for (i, slot) in v.iter_mut().enumerate() {
            match fields.next() {
                Some(text) => {
                    *slot = text.parse().map_err(|_| ParseError::Invalid {
                        file: F,
                        field: "cpuN ticks",
                    })?
                }
                None if i >= 4 => break,
                None => {
                    return Err(ParseError::Missing {
                        file: F,
                        field: "cpuN ticks",
                    })
                }
            }
        }
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
        cpus.push(CpuTicks {
            cpu,
            user: user.saturating_add(nice),
            system: system.saturating_add(irq).saturating_add(softirq),
            idle: idle.saturating_add(iowait),
            steal,
            total: v.iter().fold(0u64, |sum, &x| sum.saturating_add(x)),
        });
    }
    if cpus.is_empty() {
        return Err(ParseError::Missing {
            file: F,
            field: "cpuN lines",
        });
    }
    Ok(cpus)
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

/// Turns successive `/proc/stat` readings into per-CPU percentages over each interval.
#[derive(Debug, Default)]
pub struct CpuTimesTracker {
    /// The previous reading, sorted by CPU.
    prev: Vec<CpuTicks>,
}

impl CpuTimesTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Percentages between the previous reading and `now`, one per CPU of `now`. A CPU
    /// with no usable interval reads all zeros: on the first call, when it just came
    /// online, when no tick elapsed, or when one of its counters went backwards (CPU
    /// hotplug can reset them; a difference would wrap to a huge number).
    pub fn update(&mut self, mut now: Vec<CpuTicks>) -> Vec<CpuPercent> {
        now.sort_unstable_by_key(|t| t.cpu);
        let percents = now
            .iter()
            .map(|t| {
                self.prev
                    .binary_search_by_key(&t.cpu, |p| p.cpu)
                    .ok()
                    .and_then(|i| interval_percent(&self.prev[i], t))
                    .unwrap_or(CpuPercent {
                        cpu: t.cpu,
                        ..CpuPercent::default()
                    })
            })
            .collect();
        self.prev = now;
        percents
    }
}

fn interval_percent(prev: &CpuTicks, now: &CpuTicks) -> Option<CpuPercent> {
    let user = now.user.checked_sub(prev.user)?;
    let system = now.system.checked_sub(prev.system)?;
    let idle = now.idle.checked_sub(prev.idle)?;
    if now.steal < prev.steal {
        return None;
    }
    let total = now.total.checked_sub(prev.total)?;
    if total == 0 {
        return None;
    }
    let pct = |part: u64| part as f64 / total as f64 * 100.0;
    let idle = pct(idle);
    Some(CpuPercent {
        cpu: now.cpu,
        user: pct(user),
        system: pct(system),
        idle,
        total_percent: 100.0 - idle,
    })
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

/// `(processor, cpu MHz)` for every processor block of `/proc/cpuinfo` that has a
/// `cpu MHz` line (x86 has one; arm64 has none).
pub fn parse_cpuinfo_mhz(text: &str) -> Vec<(u32, f64)> {
    let mut out = Vec::new();
    let mut processor = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim_end() {
            "processor" => processor = value.trim().parse::<u32>().ok(),
            "cpu MHz" => {
                if let (Some(cpu), Ok(mhz)) = (processor, value.trim().parse::<f64>()) {
                    if mhz.is_finite() && mhz > 0.0 {
                        out.push((cpu, mhz));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

const SYS_CPU: &str = "devices/system/cpu";

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

/// The mount holding a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount source (`/dev/sda1`, `tmpfs`, …), which gopsutil reports as the device.
    pub device: String,
    pub mountpoint: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, also tab, newline, backslash).
fn unescape_mount_field(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = (u32::from(d[0] - b'0') << 6)
                    | (u32::from(d[1] - b'0') << 3)
                    | u32::from(d[2] - b'0');
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether the absolute path `path` lies on or below `mountpoint` (by whole components:
/// `/data` holds `/data/x` but not `/database`).
fn is_beneath(path: &str, mountpoint: &str) -> bool {
    mountpoint == "/"
        || path
            .strip_prefix(mountpoint)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The mount of `/proc/<pid>/mountinfo` that holds the absolute, canonical `path`: the
/// longest mount point that is a prefix of it; of equal ones the last, which is mounted
/// over the others.
pub fn find_mount(mountinfo: &str, path: &str) -> Option<Mount> {
    let mut best: Option<(Cow<'_, str>, &str)> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional…] - fstype source super
        let mut fields = line.split(' ');
        let Some(mountpoint) = fields.nth(4) else {
            continue;
        };
        let mut after = fields.skip_while(|f| *f != "-").skip(2);
        let source = after.next().unwrap_or("none");
        let mountpoint = unescape_mount_field(mountpoint);
        if is_beneath(path, &mountpoint)
            && best
                .as_ref()
                .is_none_or(|(b, _)| mountpoint.len() >= b.len())
        {
            best = Some((mountpoint, source));
        }
    }
    best.map(|(mountpoint, source)| Mount {
        device: unescape_mount_field(source).into_owned(),
        mountpoint: mountpoint.into_owned(),
    })
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

impl FsUsage {
    pub fn of(path: &Path) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: zeroed statvfs is valid plain data, filled by the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is NUL-terminated and st is writable for the whole call.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            block_size: st.f_frsize as u64,
            blocks: st.f_blocks as u64,
            blocks_free: st.f_bfree as u64,
            blocks_available: st.f_bavail as u64,
            files: st.f_files as u64,
            files_free: st.f_ffree as u64,
        })
    }

    /// Nomad's disk figures (gopsutil's `disk.Usage`): `Used` counts the root reserve,
    /// `Available` does not, and `UsedPercent` is `Used / (Used + Available)`, i.e. of the
    /// space a user can have, as `df` reports it.
    pub fn disk_stats(&self, mount: Mount) -> HostDiskStats {
        let size = self.blocks.saturating_mul(self.block_size);
        let available = self.blocks_available.saturating_mul(self.block_size);
        let used = self
            .blocks
            .saturating_sub(self.blocks_free)
            .saturating_mul(self.block_size);
        let usable = used.saturating_add(available);
        let inodes_used = self.files.saturating_sub(self.files_free);
        HostDiskStats {
            device: mount.device,
            mountpoint: mount.mountpoint,
            size,
            used,
            available,
            used_percent: if usable == 0 {
                0.0
            } else {
                used as f64 / usable as f64 * 100.0
            },
            inodes_used_percent: if self.files == 0 {
                0.0
            } else {
                inodes_used as f64 / self.files as f64 * 100.0
            },
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const MEMINFO: &str = "MemTotal:       24683656 kB\nMemFree:        21457200 kB\nMemAvailable:   23714340 kB\nBuffers:            6496 kB\nCached:          2419184 kB\nSwapCached:            0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

    #[test]
    fn meminfo_as_nomad() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24683656 * 1024);
        assert_eq!(m.available, 23714340 * 1024);
        assert_eq!(m.free, 21457200 * 1024);
        assert_eq!(m.used, (24683656 - 23714340) * 1024);
    }

    #[test]
    fn meminfo_without_memavailable_estimates_it() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let m = parse_meminfo(old).unwrap();
        assert_eq!(m.available, 400 * 1024);
        assert_eq!(m.used, 600 * 1024);
    }

    #[test]
    fn meminfo_garbage_is_an_error() {
        assert!(parse_meminfo("").is_err());
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
        assert_eq!(
            parse_meminfo("MemTotal: lots kB\nMemFree: 1 kB\n"),
            Err(ParseError::Invalid {
                file: "meminfo",
                field: "MemTotal"
            })
        );
        assert!(parse_meminfo("MemTotal: 1 MB\nMemFree: 1 kB\n").is_err());
    }

    #[test]
    fn uptime_seconds() {
        assert_eq!(parse_uptime("1636.08 2402.78\n"), Ok(1636.08));
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("abc 1").is_err());
        assert!(parse_uptime("-1 1").is_err());
        assert!(parse_uptime("inf 1").is_err());
    }

    const STAT: &str = "cpu  69052 0 15634 240278 837 0 173 180 0 0\ncpu0 33816 10 5485 123398 180 5 91 84 7 0\ncpu1 35236 0 10148 116879 657 0 81 95 0 0\nintr 1234 0 9\nctxt 99\nbtime 1700000000\n";

    #[test]
    fn cpu_ticks_per_cpu() {
        let cpus = parse_cpu_ticks(STAT).unwrap();
        assert_eq!(cpus.len(), 2, "the aggregate line is not a CPU");
        assert_eq!(
            cpus[0],
            CpuTicks {
                cpu: 0,
                user: 33826,
                system: 5485 + 5 + 91,
                idle: 123398 + 180,
                steal: 84,
                total: 33816 + 10 + 5485 + 123398 + 180 + 5 + 91 + 84,
            }
        );
        assert_eq!(cpus[1].cpu, 1);
        // A kernel with only four columns.
        let old = parse_cpu_ticks("cpu 2 0 2 8\ncpu3 1 0 1 4\n").unwrap();
        assert_eq!(
            old,
            vec![CpuTicks {
                cpu: 3,
                user: 1,
                system: 1,
                idle: 4,
                steal: 0,
                total: 6
            }]
        );
    }

    #[test]
    fn cpu_ticks_garbage_is_an_error() {
        for bad in [
            "",
            "cpu  1 2 3 4\nintr 1\n",
            "cpu0 1 2 3\n",
            "cpu0 1 x 3 4\n",
            "cpux 1 2 3 4\n",
            "cpu0a 1 2 3 4\n",
        ] {
            assert!(parse_cpu_ticks(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn ticks(cpu: u32, user: u64, system: u64, idle: u64, steal: u64) -> CpuTicks {
        CpuTicks {
            cpu,
            user,
            system,
            idle,
            steal,
            total: user + system + idle + steal,
        }
    }

    #[test]
    fn tracker_percentages() {
        let mut tracker = CpuTimesTracker::new();
        let first = tracker.update(vec![ticks(0, 100, 100, 100, 0), ticks(1, 0, 0, 0, 0)]);
        assert_eq!(
            first,
            vec![
                CpuPercent {
                    cpu: 0,
                    ..Default::default()
                },
                CpuPercent {
                    cpu: 1,
                    ..Default::default()
                }
            ]
        );
        let second = tracker.update(vec![ticks(0, 130, 110, 150, 10), ticks(1, 0, 0, 100, 0)]);
        let c0 = second[0];
        assert_eq!(c0.cpu, 0);
        assert!((c0.user - 30.0).abs() < 1e-9);
        assert!((c0.system - 10.0).abs() < 1e-9);
        assert!((c0.idle - 50.0).abs() < 1e-9);
        assert!(
            (c0.total_percent - 50.0).abs() < 1e-9,
            "steal counts as busy"
        );
        assert_eq!(second[1].idle, 100.0);
        assert_eq!(second[1].total_percent, 0.0);
    }

    #[test]
    fn tracker_guards_backwards_and_new_cpus() {
        let mut tracker = CpuTimesTracker::new();
        tracker.update(vec![ticks(0, 100, 100, 100, 0), ticks(1, 50, 50, 50, 0)]);
        // cpu1 went offline and came back with smaller idle; cpu2 is new; cpu0 unchanged.
        let out = tracker.update(vec![
            ticks(2, 5, 5, 5, 0),
            ticks(0, 100, 100, 100, 0),
            ticks(1, 60, 60, 10, 0),
        ]);
        assert_eq!(out.iter().map(|p| p.cpu).collect::<Vec<_>>(), vec![0, 1, 2]);
        for p in &out {
            assert_eq!(
                *p,
                CpuPercent {
                    cpu: p.cpu,
                    ..Default::default()
                }
            );
        }
        // The next interval measures from the reading that went backwards.
        let out = tracker.update(vec![ticks(1, 70, 60, 20, 0)]);
        assert!((out[0].user - 50.0).abs() < 1e-9);
        assert!((out[0].total_percent - 50.0).abs() < 1e-9);
    }

    #[test]
    fn frequency_file_parsers() {
        assert_eq!(parse_khz("2400000\n"), Ok(2_400_000));
        assert!(parse_khz("").is_err());
        assert!(parse_khz("<unknown>\n").is_err());
        assert_eq!(parse_cpu_list("0 1 2 3 \n"), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("0-2,8\n"), vec![0, 1, 2, 8]);
        assert_eq!(parse_cpu_list("x 5 3-1 0-4294967295\n"), vec![5]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    const CPUINFO_X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.406\ncache size\t: 512 KB\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2445.500\n\nprocessor\t: 2\ncpu MHz\t\t: bogus\n\n";
    const CPUINFO_ARM: &str = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\n";

    #[test]
    fn cpuinfo_mhz() {
        assert_eq!(
            parse_cpuinfo_mhz(CPUINFO_X86),
            vec![(0, 2445.406), (1, 2445.5)]
        );
        assert_eq!(parse_cpuinfo_mhz(CPUINFO_ARM), vec![]);
        assert_eq!(parse_cpuinfo_mhz(""), vec![]);
    }

    #[test]
    fn mhz_fallback_order() {
        let sys = tempfile::tempdir().unwrap();
        let proc_ = tempfile::tempdir().unwrap();
        let cpu = sys.path().join(SYS_CPU);
        let write = |path: PathBuf, text: &str| {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        // cpu0, cpu1: a policy with a base frequency; cpuN/cpufreq are symlinks to it.
        write(cpu.join("cpufreq/policy0/related_cpus"), "0 1\n");
        write(cpu.join("cpufreq/policy0/base_frequency"), "2100000\n");
        write(cpu.join("cpufreq/policy0/cpuinfo_max_freq"), "3900000\n");
        fs::create_dir_all(cpu.join("cpu0")).unwrap();
        std::os::unix::fs::symlink("../cpufreq/policy0", cpu.join("cpu0/cpufreq")).unwrap();
        // cpu2: a policy with only a maximum frequency (base_frequency 0 means unknown).
        write(cpu.join("cpufreq/policy2/related_cpus"), "2\n");
        write(cpu.join("cpufreq/policy2/base_frequency"), "0\n");
        write(cpu.join("cpufreq/policy2/cpuinfo_max_freq"), "3000000\n");
        // cpu3: an old kernel's real cpu3/cpufreq directory.
        write(cpu.join("cpu3/cpufreq/cpuinfo_max_freq"), "1800000\n");
        // cpu4: only /proc/cpuinfo; cpu5: nothing at all.
        write(
            proc_.path().join("cpuinfo"),
            "processor\t: 0\ncpu MHz\t\t: 999.0\n\nprocessor\t: 4\ncpu MHz\t\t: 2445.406\n\nprocessor\t: 5\n",
        );
        let sys = Tree::open(sys.path()).unwrap();
        let proc_ = Tree::open(proc_.path()).unwrap();
        let freqs = read_cpu_frequencies(&sys, &proc_, &[5, 4, 3, 2, 1, 0]);
        let got: Vec<(u32, f64, FrequencySource)> =
            freqs.iter().map(|f| (f.cpu, f.mhz, f.source)).collect();
        use FrequencySource::*;
        assert_eq!(
            got,
            vec![
                (0, 2100.0, BaseFrequency),
                (1, 2100.0, BaseFrequency),
                (2, 3000.0, MaxFrequency),
                (3, 1800.0, MaxFrequency),
                (4, 2445.406, CpuInfo),
                (5, 0.0, Unknown),
            ]
        );
        assert_eq!(total_compute_mhz(&freqs), 11445);

        // No cpufreq directory at all (this VM): /proc/cpuinfo decides.
        let empty = tempfile::tempdir().unwrap();
        let freqs = read_cpu_frequencies(&Tree::open(empty.path()).unwrap(), &proc_, &[0, 4]);
        assert_eq!(freqs[0].source, CpuInfo);
        assert_eq!(total_compute_mhz(&freqs), 3444);
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 27 8:17 / /data rw,relatime shared:5 master:2 - xfs /dev/sdb1 rw
31 30 0:40 / /data/nomad\\040alloc rw - tmpfs tmpfs rw
32 27 8:33 / /data rw - ext4 /dev/sdc1 rw
";

    #[test]
    fn mount_of_a_path() {
        let m = |path| find_mount(MOUNTINFO, path).map(|m| (m.device, m.mountpoint));
        let pair = |d: &str, p: &str| Some((d.to_string(), p.to_string()));
        assert_eq!(m("/var/lib/nomad"), pair("/dev/sda1", "/"));
        assert_eq!(m("/"), pair("/dev/sda1", "/"));
        assert_eq!(
            m("/database"),
            pair("/dev/sda1", "/"),
            "prefix by component"
        );
        assert_eq!(
            m("/data/x"),
            pair("/dev/sdc1", "/data"),
            "the later mount is on top"
        );
        assert_eq!(m("/data"), pair("/dev/sdc1", "/data"));
        assert_eq!(m("/data/nomad alloc/a"), pair("tmpfs", "/data/nomad alloc"));
        assert_eq!(m("/proc/1"), pair("proc", "/proc"));
        assert_eq!(find_mount("", "/x"), None);
        assert_eq!(find_mount("garbage\n1 2\n", "/x"), None);
        assert_eq!(unescape_mount_field("a\\011b\\134c\\9"), "a\tb\\c\\9");
    }

    #[test]
    fn disk_figures_as_gopsutil() {
        let usage = FsUsage {
            block_size: 4096,
            blocks: 1000,
            blocks_free: 300,
            blocks_available: 250,
            files: 200,
            files_free: 150,
        };
        let mount = Mount {
            device: "/dev/sda1".into(),
            mountpoint: "/".into(),
        };
        let d = usage.disk_stats(mount);
        assert_eq!(
            (d.size, d.used, d.available),
            (4_096_000, 700 * 4096, 250 * 4096)
        );
        assert!((d.used_percent - 700.0 / 950.0 * 100.0).abs() < 1e-9);
        assert!((d.inodes_used_percent - 25.0).abs() < 1e-9);
        let zero = FsUsage::default().disk_stats(Mount {
            device: String::new(),
            mountpoint: "/".into(),
        });
        assert_eq!((zero.used_percent, zero.inodes_used_percent), (0.0, 0.0));
    }

    struct FakeHost {
        proc_: tempfile::TempDir,
        _sys: tempfile::TempDir,
        data: tempfile::TempDir,
        reader: HostReader,
    }

    fn fake_host() -> FakeHost {
        let proc_ = tempfile::tempdir().unwrap();
        let sys = tempfile::tempdir().unwrap();
        let p = proc_.path();
        fs::write(p.join("meminfo"), MEMINFO).unwrap();
        fs::write(p.join("uptime"), "1636.98 2402.78\n").unwrap();
        fs::write(p.join("cpuinfo"), CPUINFO_X86).unwrap();
        fs::write(
            p.join("stat"),
            "cpu  0 0 0 0\ncpu0 100 0 100 800\ncpu1 0 0 0 1000\nintr 1\n",
        )
        .unwrap();
        let own = p.join(std::process::id().to_string());
        fs::create_dir(&own).unwrap();
        let data = tempfile::tempdir().unwrap();
        fs::write(
            own.join("mountinfo"),
            format!(
                "1 0 8:1 / / rw - ext4 /dev/root rw\n2 1 8:2 / {} rw - xfs /dev/data rw\n",
                data.path().canonicalize().unwrap().display()
            ),
        )
        .unwrap();
        let reader = HostReader::open(p, sys.path()).unwrap();
        FakeHost {
            proc_,
            _sys: sys,
            data,
            reader,
        }
    }

    #[test]
    fn host_reader_on_a_fake_tree() {
        let FakeHost {
            proc_,
            _sys,
            data,
            mut reader,
        } = fake_host();
        assert_eq!(reader.total_compute_mhz(), 4891);

        let dirs = vec![
            data.path().join("sub"),
            data.path().to_path_buf(),
            PathBuf::from("/"),
        ];
        fs::create_dir(data.path().join("sub")).unwrap();
        let first = reader.sample(&dirs, None);
        assert_eq!(first.memory.total, 24683656 * 1024);
        assert_eq!(first.uptime, 1636);
        assert!(first.timestamp > 1_600_000_000_000_000_000);
        assert_eq!(first.cpu.len(), 2);
        assert!(first
            .cpu
            .iter()
            .all(|c| c.total_percent == 0.0 && c.total_ticks == 0.0));
        assert_eq!(first.cpu_ticks_consumed, 0.0);
        // Two directories on one mount are one disk; "/" is another.
        assert_eq!(first.disk_stats.len(), 2, "{:?}", first.disk_stats);
        let alloc = first.alloc_dir_stats.unwrap();
        assert_eq!(alloc.device, "/dev/data");
        assert_eq!(
            alloc.mountpoint,
            data.path().canonicalize().unwrap().to_string_lossy()
        );
        assert!(alloc.size > 0);
        assert_eq!(first.disk_stats[1].device, "/dev/root");

        // cpu0: 50 of 100 ticks busy; cpu1 idle; cpu2 came online (its MHz: cpuinfo's).
        fs::write(
            proc_.path().join("stat"),
            "cpu  0 0 0 0\ncpu0 130 0 120 850\ncpu1 0 0 0 1100\ncpu2 10 0 0 10\n",
        )
        .unwrap();
        let second = reader.sample(&[], None);
        assert!(second.disk_stats.is_empty() && second.alloc_dir_stats.is_none());
        let c0 = &second.cpu[0];
        assert_eq!(c0.cpu, "cpu0");
        assert!((c0.user - 30.0).abs() < 1e-9 && (c0.system - 20.0).abs() < 1e-9);
        assert!((c0.idle - 50.0).abs() < 1e-9 && (c0.total_percent - 50.0).abs() < 1e-9);
        assert!((c0.total_ticks - 2445.406 / 2.0).abs() < 1e-9);
        assert_eq!(second.cpu[1].total_ticks, 0.0);
        assert_eq!(second.cpu[2].total_percent, 0.0, "new CPU: no interval yet");
        assert!((second.cpu_ticks_consumed - 2445.406 / 2.0).abs() < 1e-9);
        assert_eq!(reader.frequencies().len(), 3);
        assert_eq!(reader.frequencies()[2].source, FrequencySource::Unknown);

        // With cpu_total_compute = 3000 over 3 CPUs, each CPU is 1000 MHz.
        fs::write(
            proc_.path().join("stat"),
            "cpu  0 0 0 0\ncpu0 230 0 120 850\ncpu1 0 0 0 1200\ncpu2 10 0 0 20\n",
        )
        .unwrap();
        let third = reader.sample(&[], Some(3000));
        assert!((third.cpu[0].total_ticks - 1000.0).abs() < 1e-9);
        assert_eq!(third.cpu[1].total_ticks, 0.0);
        assert!((third.cpu_ticks_consumed - 1000.0).abs() < 1e-9);

        // Unreadable files: zeros, no panic.
        fs::remove_file(proc_.path().join("meminfo")).unwrap();
        fs::write(proc_.path().join("stat"), "garbage\n").unwrap();
        let broken = reader.sample(&[], None);
        assert_eq!(broken.memory, HostMemoryStats::default());
        assert!(broken.cpu.is_empty());
        assert_eq!(broken.uptime, 1636);
    }

    #[test]
    fn host_reader_on_this_machine() {
        let mut reader = HostReader::open(Path::new("/proc"), Path::new("/sys")).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
        if cpuinfo.contains("cpu MHz")
            || Path::new("/sys/devices/system/cpu/cpufreq/policy0").exists()
        {
            assert!(
                reader.frequencies().iter().all(|f| f.mhz > 0.0),
                "{:?}",
                reader.frequencies()
            );
            assert!(reader.total_compute_mhz() > 0);
        }

        let here = std::env::current_dir().unwrap();
        let dirs = vec![here.clone(), PathBuf::from("/definitely/not/here")];
        reader.sample(&dirs, None);
        let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut spin = 0u64;
        while std::time::Instant::now() < until {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let stats = reader.sample(&dirs, None);
        assert!(stats.memory.total > 0 && stats.memory.used <= stats.memory.total);
        assert!(stats.memory.available <= stats.memory.total);
        assert!(stats.uptime > 0);
        assert!(
            stats.cpu.len() >= cpus,
            "{} CPUs in /proc/stat",
            stats.cpu.len()
        );
        for c in &stats.cpu {
            for v in [c.user, c.system, c.idle, c.total_percent] {
                assert!((0.0..=100.0).contains(&v), "{c:?}");
            }
        }
        assert!(
            stats.cpu.iter().any(|c| c.total_percent > 0.0),
            "{:?}",
            stats.cpu
        );
        assert_eq!(stats.disk_stats.len(), 1);
        let disk = stats.alloc_dir_stats.unwrap();
        assert!(disk.size > 0 && disk.used <= disk.size);
        assert!(
            here.canonicalize().unwrap().starts_with(&disk.mountpoint),
            "{disk:?}"
        );
    }
}
