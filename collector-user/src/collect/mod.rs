//! The collection cycle: sources -> samples -> rates -> snapshot.
//!
//! Once per interval [`Collector::cycle`] brings the task set up to date (cgroupfs scan,
//! configured allocations), reads every task's CPU, processes and cgroup memory and
//! throttling, turns two readings into rates, and returns an immutable [`Snapshot`].
//! Nothing here runs on the request path: every allocation is complete in every
//! snapshot, whether anyone asks or not.
//!
//! | | eBPF source | /proc source (Nomad's method) |
//! |---|---|---|
//! | task CPU | kernel counters of every tracked cgroup: one batch read | sum of the processes' |
//! | processes (`Pids`) | one task-iterator pass over the host for every tracked cgroup | `cgroup.procs`, then /proc per process |
//! | cgroup memory, throttling | kernel counters read in the same pass; `memory.stat` re-read when they moved | control files kept open, re-read |

pub mod assemble;
mod carry;
mod clock;
mod cycle;
pub mod ebpf;
pub mod fastmap;
pub mod rates;
pub mod runner;
mod sampling;
mod setup;
mod steady;
pub mod tasks;
#[cfg(test)]
mod tests;

use std::{collections::HashSet, path::PathBuf};

use self::{ebpf::EbpfSource, fastmap::FastMap, sampling::Scratch, tasks::TaskSet};
use crate::{
    cgroup::Discovery,
    config::{Config, StaticAllocation},
    procfs::{HostReader, ProcReader},
    sample::KernelCounters,
};

pub use clock::thread_cpu_time;
pub use setup::CollectError;

/// The settings a running collector can take from a reloaded configuration.
#[derive(Clone, Debug)]
struct Settings {
    cpu_total_compute: Option<u64>,
    data_dirs: Vec<PathBuf>,
    allocations: Vec<StaticAllocation>,
}

impl Settings {
    fn from_config(config: &Config) -> Self {
        Self {
            cpu_total_compute: (config.cpu_total_compute > 0).then_some(config.cpu_total_compute),
            data_dirs: config.data_dirs.clone(),
            allocations: config.allocations.clone(),
        }
    }
}

pub struct Collector {
    settings: Settings,
    discovery: Option<Discovery>,
    ebpf: Option<EbpfSource>,
    fallback_reason: Option<String>,
    procs: ProcReader,
    host: HostReader,
    tasks: TaskSet,
    /// When the previous scan ran (CLOCK_MONOTONIC ns): tasks found now count their
    /// threads from there.
    previous_scan_ns: u64,
    cycles: u64,
    cycle_errors: u64,
    /// The task set generation the kernel map was last brought up to date with.
    synced_generation: Option<u64>,
    /// Cgroup ids the kernel map had no room for (their tasks are measured per process).
    untrackable: HashSet<u64>,
    /// `TotalTicks` of one percent of a core, as of the last cycle.
    ticks_per_percent: f64,
    /// Cumulative CPU per tracked cgroup id from the last kernel reading (exited threads
    /// included); kept between cycles to reuse its allocation.
    kernel_cpu: FastMap<u64, KernelCounters>,
    scratch: Scratch,
}
