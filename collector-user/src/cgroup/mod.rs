//! Cgroup hierarchies: where they are mounted ([`mounts`]), where Nomad put each task's
//! cgroups ([`discover`]), and the memory, throttling and CPU counters read from them
//! ([`stats`]), through control files kept open ([`control_files`]).
//!
//! Every file is read through [`crate::fsutil::Tree`], opened once per hierarchy mount,
//! so a name found in a cgroup directory can never lead a read out of that mount.
//!
//! Tasks end at any moment: a cgroup that disappears between being found and being read
//! gives [`CgroupError::Vanished`], which callers treat as "task gone", not as a failure.

pub mod control_files;
mod discover;
mod mounts;
mod stats;
#[cfg(test)]
mod tests;
mod watch;

use std::{io, path::PathBuf};

pub use discover::{DiscoveredTask, Discovery, FoundCgroup, NomadLayout, NomadParents};
pub use mounts::{CgroupMounts, Hierarchies, HostKind, V1_CONTROLLERS};
pub use stats::{
    descendants, CgroupDir, CpuMax, CpuStat, Limit, MemoryFigures, MemoryStat, Pressure,
    PressureTotals, TaskCgroups, ThrottleFigures, MAX_DESCENDANT_DEPTH,
};
/// The control-file parsers behind [`CgroupDir`]'s readers, for the fuzz targets.
pub use stats::{
    parse_cpu_max, parse_cpu_stat, parse_limit, parse_memory_stat, parse_oom_kill, parse_pressure,
    parse_procs, parse_u64, v1_bytes_limit,
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
