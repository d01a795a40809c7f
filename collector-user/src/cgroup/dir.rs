//! [`CgroupDir`]: one cgroup directory and its readers.
//!
//! A [`CgroupDir`] has one `read_<file>()` per control file, and one
//! [`CgroupDir::read_counter`] for the files that hold a single counter (named by
//! [`CounterFile`], so that the file a kernel counter stands in for can also be closed by
//! that name). Each returns `Ok(None)` when
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

use super::{
    control_files::ControlFiles,
    parse::{
        parse_cpu_stat, parse_memory_stat, parse_oom_kill, parse_pressure, parse_procs, parse_u64,
    },
    types::{CpuStat, MemoryStat, PressureTotals},
    CgroupError,
};
use crate::fsutil::{fd_inode, open_beneath, read_fd_into, Tree};

/// Files listing PIDs: a seq_file record per PID, so not read the way
/// [`ControlFiles`] reads single-record files.
const PID_LISTS: [&str; 2] = ["cgroup.procs", "cgroup.threads"];

thread_local! {
    /// Reused buffer for control files' text.
    static TEXT: RefCell<String> = RefCell::new(String::with_capacity(4096));
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

/// The control files that hold one counter. The task iterator reads the counters behind
/// most of them in the kernel, so these are read, and closed when a kernel counter stands
/// in for them, by name ([`CgroupDir::read_counter`], [`CgroupDir::close_counter`]).
// The variants spell the files' names, which all begin with their controller's.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterFile {
    /// v1 `memory.usage_in_bytes`.
    MemoryUsageInBytes,
    /// v1 `memory.max_usage_in_bytes`.
    MemoryMaxUsageInBytes,
    /// v1 `memory.memsw.usage_in_bytes` (memory + swap; absent without swap accounting).
    MemoryMemswUsageInBytes,
    /// v1 `memory.kmem.usage_in_bytes` (absent on kernels without kmem accounting).
    MemoryKmemUsageInBytes,
    /// v1 `memory.kmem.max_usage_in_bytes`.
    MemoryKmemMaxUsageInBytes,
    /// v1 `memory.oom_control`'s `oom_kill` (4.13+).
    MemoryOomControl,
    /// v2 `memory.current`.
    MemoryCurrent,
    /// v2 `memory.peak` (kernel >= 5.19).
    MemoryPeak,
    /// v2 `memory.swap.current`.
    MemorySwapCurrent,
}

impl CounterFile {
    pub const fn name(self) -> &'static str {
        match self {
            Self::MemoryUsageInBytes => "memory.usage_in_bytes",
            Self::MemoryMaxUsageInBytes => "memory.max_usage_in_bytes",
            Self::MemoryMemswUsageInBytes => "memory.memsw.usage_in_bytes",
            Self::MemoryKmemUsageInBytes => "memory.kmem.usage_in_bytes",
            Self::MemoryKmemMaxUsageInBytes => "memory.kmem.max_usage_in_bytes",
            Self::MemoryOomControl => "memory.oom_control",
            Self::MemoryCurrent => "memory.current",
            Self::MemoryPeak => "memory.peak",
            Self::MemorySwapCurrent => "memory.swap.current",
        }
    }

    /// The counter in the file's text; `None` where the file has no such line (v1
    /// `memory.oom_control` before 4.13).
    fn parse(self, text: &str) -> Result<Option<u64>, String> {
        match self {
            Self::MemoryOomControl => parse_oom_kill(text),
            _ => parse_u64(text).map(Some),
        }
    }
}

/// `cpu.stat`: read whole by [`CgroupDir::read_cpu_stat`], closed by
/// [`CgroupDir::close_cpu_stat`] where kernel counters stand in for its throttling lines.
const CPU_STAT: &str = "cpu.stat";

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
        self.read_file(CPU_STAT, parse_cpu_stat)
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

    /// One counter file (see [`CounterFile`]).
    pub fn read_counter(&self, file: CounterFile) -> Result<Option<u64>, CgroupError> {
        Ok(self
            .read_file(file.name(), |text| file.parse(text))?
            .flatten())
    }

    /// Closes a counter file if kept: a kernel counter stands in for it (see
    /// [`ControlFiles::close`]).
    pub fn close_counter(&self, file: CounterFile) {
        self.files.close(file.name());
    }

    /// Closes `cpu.stat` if kept: kernel counters stand in for it.
    pub fn close_cpu_stat(&self) {
        self.files.close(CPU_STAT);
    }

    /// The names of the control files kept open or known absent, for tests.
    #[cfg(test)]
    pub fn kept_files(&self) -> Vec<&'static str> {
        self.files.names()
    }

    /// Appends the PIDs of this cgroup alone (not its descendants) to `out`.
    pub fn read_cgroup_procs(&self, out: &mut Vec<u32>) -> Result<Option<()>, CgroupError> {
        self.read_file("cgroup.procs", |t| parse_procs(t, out))
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
