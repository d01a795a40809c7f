//! Cgroup hierarchies: where they are mounted ([`mounts`]), where Nomad put each task's
//! cgroups ([`discover`]), and the memory, throttling and pressure counters read from
//! them: one directory's readers ([`dir`]) through control files kept open
//! ([`control_files`]), parsed by [`parse`] into [`types`], and a task's v1 or v2 files
//! mapped to Nomad's figures ([`task`]).
//!
//! Every file is read through [`crate::fsutil::Tree`], opened once per hierarchy mount,
//! so a name found in a cgroup directory can never lead a read out of that mount.
//!
//! Tasks end at any moment: a cgroup that disappears between being found and being read
//! gives [`CgroupError::Vanished`], which callers treat as "task gone", not as a failure.

pub mod control_files;
mod dir;
mod discover;
mod mounts;
mod parse;
mod task;
#[cfg(test)]
mod tests;
mod types;
mod watch;

use std::{io, path::PathBuf};

pub use dir::{descendants, CgroupDir, MAX_DESCENDANT_DEPTH};
pub use discover::{DiscoveredTask, Discovery, FoundCgroup, NomadLayout, NomadParents};
pub use mounts::{CgroupMounts, Hierarchies, HostKind, V1_CONTROLLERS};
/// The control-file parsers behind [`CgroupDir`]'s readers, for the fuzz targets.
pub use parse::{
    parse_cpu_max, parse_cpu_stat, parse_limit, parse_memory_stat, parse_oom_kill, parse_pressure,
    parse_procs, parse_u64, v1_bytes_limit,
};
pub use task::TaskCgroups;
pub use types::{
    CpuMax, CpuStat, KernelCgroupCounters, KernelMemoryCounters, KernelThrottleCounters, Limit,
    MemoryFigures, MemoryStat, Pressure, PressureTotals, ThrottleFigures,
};

/// Why a cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup directory was there and is gone (ENOENT on the directory, or ENODEV
    /// reading a file of a removed cgroup): its task ended. A normal outcome, not a fault.
    #[error("cgroup {} vanished", .0.display())]
    Vanished(PathBuf),
    /// Any other failure to read (permissions, I/O).
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A control file held something no kernel writes there.
    #[error("{}: unexpected content: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

impl CgroupError {
    /// True when the cgroup is gone (the task ended), as opposed to a read failure.
    pub fn is_vanished(&self) -> bool {
        matches!(self, CgroupError::Vanished(_))
    }
}
