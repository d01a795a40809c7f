//! Per-task cgroup readers: memory, CPU throttling, pressure and member PIDs, mapped to
//! Nomad's figures as in spec §3.
//!
//! A [`CgroupDir`] has one `read_<file>()` per control file. Each returns `Ok(None)` when
//! the file does not exist (a kernel without that feature, a v2 controller not enabled)
//! and [`CgroupError::Vanished`] when the cgroup itself is gone. These run for many tasks
//! per interval, so each cgroup directory is opened once and kept (a control file is then
//! one path component away instead of a walk from the mount), its control files are kept
//! open and re-read (see [`super::control_files`]), file contents go through one reused
//! per-thread buffer, and each file is read at most once per `TaskCgroups::read_*` call.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use tracing::debug;

use super::{control_files::ControlFiles, CgroupError};
use crate::{
    fsutil::{fd_inode, open_beneath, read_fd_into, Tree},
    model::measured,
};

/// Files listing PIDs: a seq_file record per PID, so not read the way
/// [`ControlFiles`] reads single-record files.
const PID_LISTS: [&str; 2] = ["cgroup.procs", "cgroup.threads"];

thread_local! {
    /// Reused buffer for control files' text.
    static TEXT: RefCell<String> = RefCell::new(String::with_capacity(4096));
}

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

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=N` and the same
/// for `full`.
pub fn parse_pressure(text: &str) -> Result<PressureTotals, String> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let total = words
            .find_map(|w| w.strip_prefix("total="))
            .ok_or_else(|| format!("no total= in {line:?}"))?;
        *slot = Some(parse_u64(total)?);
    }
    Ok(PressureTotals {
        some_us: some.ok_or("no `some` line")?,
        full_us: full,
    })
}

/// The `oom_kill` count of v2 `memory.events` or v1 `memory.oom_control` (both
/// flat-keyed; v1 has it since 4.13, absent before).
pub fn parse_oom_kill(text: &str) -> Result<Option<u64>, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .map(|v| parse_u64(v.trim()))
        .transpose()
}

pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse()
        .map_err(|_| format!("expected a number, got {t:?}"))
}

/// A single value that may be `max`.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim() {
        "max" => Ok(Limit::Max),
        t => parse_u64(t).map(Limit::Value),
    }
}

/// Parses a flat keyed file (`key value` lines) into `S`: `slot` names the field a key
/// fills. Values are parsed only for keys `slot` knows, so lines a newer kernel adds
/// never fail a read.
fn parse_keyed<S: Default>(
    text: &str,
    slot: for<'a> fn(&'a mut S, &str) -> Option<&'a mut Option<u64>>,
) -> Result<S, String> {
    let mut s = S::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if let Some(field) = slot(&mut s, key) {
            *field = Some(parse_u64(value).map_err(|e| format!("{key}: {e}"))?);
        }
    }
    Ok(s)
}

fn memory_stat_slot<'a>(s: &'a mut MemoryStat, key: &str) -> Option<&'a mut Option<u64>> {
    Some(match key {
        "cache" => &mut s.cache,
        "rss" => &mut s.rss,
        "mapped_file" => &mut s.mapped_file,
        "swap" => &mut s.swap,
        "total_cache" => &mut s.total_cache,
        "total_rss" => &mut s.total_rss,
        "total_mapped_file" => &mut s.total_mapped_file,
        "total_swap" => &mut s.total_swap,
        "anon" => &mut s.anon,
        "file" => &mut s.file,
        "file_mapped" => &mut s.file_mapped,
        "kernel" => &mut s.kernel,
        _ => return None,
    })
}

fn cpu_stat_slot<'a>(s: &'a mut CpuStat, key: &str) -> Option<&'a mut Option<u64>> {
    Some(match key {
        "usage_usec" => &mut s.usage_usec,
        "user_usec" => &mut s.user_usec,
        "system_usec" => &mut s.system_usec,
        "nr_periods" => &mut s.nr_periods,
        "nr_throttled" => &mut s.nr_throttled,
        "throttled_usec" => &mut s.throttled_usec,
        "throttled_time" => &mut s.throttled_time,
        _ => return None,
    })
}

pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, String> {
    parse_keyed(text, memory_stat_slot)
}

pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, String> {
    parse_keyed(text, cpu_stat_slot)
}

pub fn parse_cpu_max(text: &str) -> Result<CpuMax, String> {
    let mut parts = text.split_whitespace();
    let (Some(quota), Some(period), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected `quota period`, got {:?}", text.trim()));
    };
    Ok(CpuMax {
        quota_us: parse_limit(quota)?,
        period_us: parse_u64(period)?,
    })
}

/// v1 writes "unlimited" as the largest page-aligned `i64` (9223372036854771712 with 4 KiB
/// pages); anything within 64 KiB of `i64::MAX` is that, whatever the page size.
pub fn v1_bytes_limit(value: u64) -> Limit {
    if value >= (i64::MAX as u64) - 0xffff {
        Limit::Max
    } else {
        Limit::Value(value)
    }
}

/// Appends the PIDs listed in a `cgroup.procs` text.
pub fn parse_procs(text: &str, out: &mut Vec<u32>) -> Result<(), String> {
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        out.push(
            line.parse()
                .map_err(|_| format!("expected a PID, got {line:?}"))?,
        );
    }
    Ok(())
}

/// How deep [`descendants`] looks below a task cgroup. Tasks rarely nest cgroups at all;
/// the bound keeps a pathological tree from costing unbounded work per scan.
pub const MAX_DESCENDANT_DEPTH: usize = 8;

/// The task cgroups below a task cgroup: (absolute path, inode), depth-first, at most
/// [`MAX_DESCENDANT_DEPTH`] levels down. A child that vanishes while being walked is
/// skipped; `rel` itself vanishing is [`CgroupError::Vanished`].
pub fn descendants(tree: &Tree, rel: &Path) -> Result<Vec<(PathBuf, u64)>, CgroupError> {
    let abs = || tree.path().join(rel);
    let top = tree
        .subdirs_with_inodes(rel)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENOTDIR) => CgroupError::Vanished(abs()),
            _ => CgroupError::Io {
                path: abs(),
                source: err,
            },
        })?;
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, u64, usize)> = top
        .into_iter()
        .map(|d| (rel.join(d.name), d.inode, 1))
        .collect();
    while let Some((child, inode, depth)) = stack.pop() {
        if depth < MAX_DESCENDANT_DEPTH {
            if let Ok(grandchildren) = tree.subdirs_with_inodes(&child) {
                stack.extend(
                    grandchildren
                        .into_iter()
                        .map(|d| (child.join(d.name), d.inode, depth + 1)),
                );
            }
        }
        out.push((tree.path().join(&child), inode));
    }
    Ok(out)
}

/// One cgroup directory: the hierarchy it lives in (shared) and its path inside it.
#[derive(Clone, Debug)]
pub struct CgroupDir {
    tree: Arc<Tree>,
    rel: PathBuf,
    /// The directory (`O_PATH`) and its inode, opened beneath the mount on first read and
    /// kept; shared by clones.
    handle: Arc<OnceLock<(OwnedFd, u64)>>,
    /// Its control files, kept open once read; shared by clones.
    files: Arc<ControlFiles>,
}

macro_rules! single_value_files {
    ($($(#[$doc:meta])* $fn:ident => $file:literal, $parse:expr, $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(&self) -> Result<Option<$ty>, CgroupError> {
                self.read_file($file, $parse)
            }
        )*
    };
}

impl CgroupDir {
    /// `rel` is relative to the hierarchy's mount (`tree`); empty for the root cgroup.
    pub fn new(tree: Arc<Tree>, rel: PathBuf) -> Self {
        Self {
            tree,
            rel,
            handle: Arc::default(),
            files: Arc::default(),
        }
    }

    /// Opens control file `name` from the kept directory descriptor, or by path from the
    /// mount when no descriptor can be had (the open files limit reached).
    fn open_file(&self, name: &str) -> io::Result<OwnedFd> {
        match self.handle() {
            Ok((dir, _)) => open_beneath(dir.as_fd(), Path::new(name), libc::O_RDONLY),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.tree.open_at(&self.rel.join(name), libc::O_RDONLY)
            }
            Err(e) => Err(e),
        }
    }

    /// The kept directory descriptor and the inode it was opened at.
    fn handle(&self) -> io::Result<&(OwnedFd, u64)> {
        if let Some(handle) = self.handle.get() {
            return Ok(handle);
        }
        let fd = self
            .tree
            .open_at(&self.rel, libc::O_PATH | libc::O_DIRECTORY)?;
        let (inode, _) = fd_inode(fd.as_fd())?;
        // Another thread racing here would have opened the same directory: keep either.
        let _ = self.handle.set((fd, inode));
        Ok(self.handle.get().expect("just set"))
    }

    /// The cgroup's absolute path.
    pub fn path(&self) -> PathBuf {
        self.tree.path().join(&self.rel)
    }

    /// The path relative to the hierarchy's mount.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    pub fn tree(&self) -> &Arc<Tree> {
        &self.tree
    }

    /// The directory's inode number, which is the kernel's cgroup id: a cgroup removed and
    /// recreated under the same name has a new one.
    pub fn inode(&self) -> Result<u64, CgroupError> {
        match self.tree.inode_of(&self.rel) {
            Ok((inode, true)) => Ok(inode),
            Ok((_, false)) => Err(CgroupError::Vanished(self.path())),
            Err(err) => Err(self.dir_error(err)),
        }
    }

    /// Child cgroups, recursively (see [`descendants`]).
    pub fn descendants(&self) -> Result<Vec<(PathBuf, u64)>, CgroupError> {
        descendants(&self.tree, &self.rel)
    }

    /// Maps an error on the directory itself.
    fn dir_error(&self, err: io::Error) -> CgroupError {
        match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENOTDIR) => {
                debug!(cgroup = %self.path().display(), "cgroup vanished");
                CgroupError::Vanished(self.path())
            }
            _ => CgroupError::Io {
                path: self.path(),
                source: err,
            },
        }
    }

    /// Reads control file `name` and parses it. A missing file (or one the kernel refuses
    /// to read as unsupported) is `Ok(None)` if the directory is still there; if the
    /// directory is gone, or the read fails with ENODEV (a file of a removed cgroup), the
    /// cgroup vanished.
    fn read_file<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, CgroupError> {
        let result = TEXT.with(|text| {
            let text = &mut *text.borrow_mut();
            let read = if PID_LISTS.contains(&name) {
                // Many records, and read rarely (the /proc fallback): opened per read.
                self.open_file(name)
                    .and_then(|file| read_fd_into(file.as_fd(), text))
            } else {
                self.files.read(name, || self.open_file(name), text)
            };
            read.map(|()| parse(text))
        });
        match result {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(detail)) => Err(CgroupError::Parse {
                path: self.path().join(name),
                detail,
            }),
            Err(err) => match err.raw_os_error() {
                // A file of a removed cgroup, or a kept file whose controller was turned
                // off (cgroup v2 removes its files): the directory tells which.
                Some(libc::ENODEV) => match (self.inode(), self.handle.get()) {
                    (Ok(now), Some((_, opened))) if now == *opened => Ok(None),
                    _ => Err(self.dir_error(err)),
                },
                // No such file, or a kept directory that was removed: which one is told
                // by whether the directory at this path is still the one opened.
                Some(libc::ENOENT) => match (self.inode(), self.handle.get()) {
                    (Ok(now), Some((_, opened))) if now != *opened => {
                        Err(CgroupError::Vanished(self.path()))
                    }
                    (Ok(_), _) => Ok(None),
                    (Err(e), _) => Err(e),
                },
                Some(libc::EOPNOTSUPP | libc::EINVAL) => Ok(None),
                _ => Err(CgroupError::Io {
                    path: self.path().join(name),
                    source: err,
                }),
            },
        }
    }

    /// `memory.stat` (v1 or v2).
    pub fn read_memory_stat(&self) -> Result<Option<MemoryStat>, CgroupError> {
        self.read_file("memory.stat", parse_memory_stat)
    }

    /// `cpu.stat` (v1 cpu controller, or v2).
    pub fn read_cpu_stat(&self) -> Result<Option<CpuStat>, CgroupError> {
        self.read_file("cpu.stat", parse_cpu_stat)
    }

    /// v2 `cpu.pressure`, `memory.pressure`, `io.pressure` (absent without PSI).
    pub fn read_pressure(&self, resource: &str) -> Result<Option<PressureTotals>, CgroupError> {
        let file = match resource {
            "cpu" => "cpu.pressure",
            "memory" => "memory.pressure",
            _ => "io.pressure",
        };
        self.read_file(file, parse_pressure)
    }

    /// v2 `memory.events`' `oom_kill`.
    pub fn read_memory_events_oom_kill(&self) -> Result<Option<u64>, CgroupError> {
        Ok(self.read_file("memory.events", parse_oom_kill)?.flatten())
    }

    /// v1 `memory.oom_control`'s `oom_kill` (4.13+).
    pub fn read_memory_oom_control_oom_kill(&self) -> Result<Option<u64>, CgroupError> {
        Ok(self
            .read_file("memory.oom_control", parse_oom_kill)?
            .flatten())
    }

    /// Appends the PIDs of this cgroup alone (not its descendants) to `out`.
    pub fn read_cgroup_procs(&self, out: &mut Vec<u32>) -> Result<Option<()>, CgroupError> {
        self.read_file("cgroup.procs", |t| parse_procs(t, out))
    }

    single_value_files! {
        /// v1 `memory.usage_in_bytes`.
        read_memory_usage_in_bytes => "memory.usage_in_bytes", parse_u64, u64;
        /// v1 `memory.max_usage_in_bytes`.
        read_memory_max_usage_in_bytes => "memory.max_usage_in_bytes", parse_u64, u64;
        /// v1 `memory.memsw.usage_in_bytes` (memory + swap; absent without swap accounting).
        read_memory_memsw_usage_in_bytes => "memory.memsw.usage_in_bytes", parse_u64, u64;
        /// v1 `memory.kmem.usage_in_bytes` (absent on kernels without kmem accounting).
        read_memory_kmem_usage_in_bytes => "memory.kmem.usage_in_bytes", parse_u64, u64;
        /// v1 `memory.kmem.max_usage_in_bytes`.
        read_memory_kmem_max_usage_in_bytes => "memory.kmem.max_usage_in_bytes", parse_u64, u64;
        /// v2 `memory.current`.
        read_memory_current => "memory.current", parse_u64, u64;
        /// v2 `memory.peak` (kernel >= 5.19).
        read_memory_peak => "memory.peak", parse_u64, u64;
        /// v2 `memory.swap.current`.
        read_memory_swap_current => "memory.swap.current", parse_u64, u64;
    }

    /// Appends the PIDs of this cgroup and of its descendants to `out`. Descendants that
    /// vanish meanwhile are skipped; this cgroup vanishing is an error.
    pub fn read_procs_recursive(&self, out: &mut Vec<u32>) -> Result<(), CgroupError> {
        self.read_cgroup_procs(out)?;
        for (path, _) in self.descendants()? {
            let Ok(rel) = path.strip_prefix(self.tree.path()) else {
                continue;
            };
            let child = CgroupDir::new(Arc::clone(&self.tree), rel.to_path_buf());
            match child.read_cgroup_procs(out) {
                Ok(_) => {}
                Err(err) if err.is_vanished() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// One task's cgroups, in whichever hierarchies it has them. Where a task is in both v1
/// and v2 (possible on a hybrid host), v1 is read: Nomad on a hybrid host uses v1, and the
/// unified hierarchy there has no controllers enabled.
#[derive(Clone, Debug, Default)]
pub struct TaskCgroups {
    pub memory: Option<CgroupDir>,
    pub cpu: Option<CgroupDir>,
    pub cpuacct: Option<CgroupDir>,
    pub v2: Option<CgroupDir>,
}

fn v1_memory(dir: &CgroupDir) -> Result<MemoryFigures, CgroupError> {
    let stat = dir.read_memory_stat()?.unwrap_or_default();
    let usage = dir.read_memory_usage_in_bytes()?;
    let swap = match stat.total_swap.or(stat.swap) {
        Some(swap) => Some(swap),
        None => match (dir.read_memory_memsw_usage_in_bytes()?, usage) {
            (Some(memsw), Some(usage)) => Some(memsw.saturating_sub(usage)),
            _ => None,
        },
    };
    Ok(MemoryFigures {
        rss: stat.total_rss.or(stat.rss),
        cache: stat.total_cache.or(stat.cache),
        mapped_file: stat.total_mapped_file.or(stat.mapped_file),
        swap,
        usage,
        max_usage: dir.read_memory_max_usage_in_bytes()?,
        kernel_usage: dir.read_memory_kmem_usage_in_bytes()?,
        kernel_max_usage: dir.read_memory_kmem_max_usage_in_bytes()?,
    })
}

fn v2_memory(dir: &CgroupDir) -> Result<MemoryFigures, CgroupError> {
    let stat = dir.read_memory_stat()?.unwrap_or_default();
    Ok(MemoryFigures {
        rss: stat.anon,
        cache: stat.file,
        mapped_file: stat.file_mapped,
        swap: dir.read_memory_swap_current()?,
        usage: dir.read_memory_current()?,
        max_usage: dir.read_memory_peak()?,
        kernel_usage: stat.kernel,
        kernel_max_usage: None,
    })
}

fn v1_throttling(stat: Option<CpuStat>) -> ThrottleFigures {
    let stat = stat.unwrap_or_default();
    ThrottleFigures {
        periods: stat.nr_throttled,
        time_ns: stat.throttled_time,
    }
}

fn v2_throttling(stat: Option<CpuStat>) -> ThrottleFigures {
    let stat = stat.unwrap_or_default();
    ThrottleFigures {
        periods: stat.nr_throttled,
        time_ns: stat.throttled_usec.map(|us| us.saturating_mul(1000)),
    }
}

impl TaskCgroups {
    /// Memory figures (spec §3): v1 memory controller if the task has it, else v2; all
    /// `None` when neither has memory accounting.
    pub fn read_memory(&self) -> Result<MemoryFigures, CgroupError> {
        match (&self.memory, &self.v2) {
            (Some(dir), _) => v1_memory(dir),
            (None, Some(dir)) => v2_memory(dir),
            (None, None) => Ok(MemoryFigures::default()),
        }
    }

    /// Throttling counters: v1 cpu controller `cpu.stat`, else v2 `cpu.stat`.
    pub fn read_throttling(&self) -> Result<ThrottleFigures, CgroupError> {
        match (&self.cpu, &self.v2) {
            (Some(dir), _) => Ok(v1_throttling(dir.read_cpu_stat()?)),
            (None, Some(dir)) => Ok(v2_throttling(dir.read_cpu_stat()?)),
            (None, None) => Ok(ThrottleFigures::default()),
        }
    }

    /// Pressure stall totals, cgroup v2 only (the files do not exist on v1).
    pub fn read_pressure(&self) -> Result<Option<Pressure>, CgroupError> {
        let Some(dir) = &self.v2 else {
            return Ok(None);
        };
        let pressure = Pressure {
            cpu: dir.read_pressure("cpu")?,
            memory: dir.read_pressure("memory")?,
            io: dir.read_pressure("io")?,
        };
        Ok((pressure != Pressure::default()).then_some(pressure))
    }

    /// Processes the kernel's OOM killer killed in the task's memory cgroup: v1
    /// `memory.oom_control`, else v2 `memory.events`.
    pub fn read_oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        match (&self.memory, &self.v2) {
            (Some(dir), _) => dir.read_memory_oom_control_oom_kill(),
            (None, Some(dir)) => dir.read_memory_events_oom_kill(),
            (None, None) => Ok(None),
        }
    }

    /// The directory whose membership defines the task's processes.
    pub fn procs_dir(&self) -> Option<&CgroupDir> {
        self.v2
            .as_ref()
            .or(self.cpuacct.as_ref())
            .or(self.cpu.as_ref())
            .or(self.memory.as_ref())
    }

    /// The task's PIDs: `cgroup.procs` of its cgroup and of every descendant, sorted and
    /// deduplicated.
    pub fn read_procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        if let Some(dir) = self.procs_dir() {
            dir.read_procs_recursive(&mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_and_oom_kills() {
        let cpu = "some avg10=1.50 avg60=0.00 avg300=0.00 total=123456\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        assert_eq!(
            parse_pressure(cpu),
            Ok(PressureTotals {
                some_us: 123456,
                full_us: Some(789)
            })
        );
        // cpu.pressure before 5.13 has no `full` line.
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(parse_pressure(old).unwrap().full_us, None);
        assert!(parse_pressure("full avg10=0.00 total=1\n").is_err());
        assert!(parse_pressure("some avg10=0.00\n").is_err());
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(events), Ok(Some(2)));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kill(v1), Ok(Some(7)));
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"),
            Ok(None)
        );
        assert!(parse_oom_kill("oom_kill x\n").is_err());
    }

    #[test]
    fn parses_keyed_files_and_ignores_unknown_lines() {
        let s = parse_memory_stat(
            "cache 10\nrss 20\nweird\nhierarchical_memory_limit x\ntotal_rss 30\n",
        )
        .unwrap();
        assert_eq!(
            (s.cache, s.rss, s.total_rss, s.anon),
            (Some(10), Some(20), Some(30), None)
        );
        assert!(parse_memory_stat("rss lots\n").is_err());
        let c = parse_cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!((c.usage_usec, c.nr_throttled), (Some(5), None));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Ok(Limit::Max));
        assert_eq!(parse_limit("4096\n"), Ok(Limit::Value(4096)));
        assert!(parse_limit("lots").is_err());
        assert_eq!(
            parse_cpu_max("max 100000\n"),
            Ok(CpuMax {
                quota_us: Limit::Max,
                period_us: 100000
            })
        );
        assert_eq!(
            parse_cpu_max("50000 100000\n").unwrap().quota_us.value(),
            Some(50000)
        );
        assert!(parse_cpu_max("50000\n").is_err());
        assert_eq!(v1_bytes_limit(9223372036854771712), Limit::Max);
        assert_eq!(v1_bytes_limit(9223372036854710272), Limit::Max); // 64 KiB pages
        assert_eq!(v1_bytes_limit(1 << 30), Limit::Value(1 << 30));
    }

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
