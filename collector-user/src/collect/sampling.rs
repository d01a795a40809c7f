//! Sampling one task: its processes (from the cycle's task-iterator pass or from
//! /proc), its CPU (the kernel's cumulative counters or the sum of its processes'), the
//! per-process rates, and its cgroup memory, throttling and pressure.

use std::time::Instant;

use tracing::{debug, warn};

use super::{
    assemble::PidFigures,
    ebpf::EbpfSource,
    fastmap::FastMap,
    rates::{CounterTrack, CpuRates},
    steady::REFRESH_CYCLES,
    tasks::{Members, TaskEntry},
};
use crate::{
    cgroup::KernelCgroupCounters,
    procfs::ProcReader,
    sample::{self, KernelCounters, ProcessSample},
};

/// Buffers reused from task to task and cycle to cycle (at ten thousand processes the
/// per-task vectors they replace were a thousand allocations a cycle each), and what was
/// sampled.
#[derive(Default)]
pub(super) struct Scratch {
    pids: Vec<u32>,
    /// The processes of the task being sampled, by PID. (The tasks' own readings are
    /// not passed around this way: a buffer swapped from task to task would carry the
    /// capacity of the largest task to every other.)
    samples: Vec<ProcessSample>,
    /// Processes sampled in the current cycle.
    pub(super) sampled: u64,
}

/// Where a task's figures come from this cycle, borrowed from the collector.
pub(super) struct Sources<'a> {
    pub(super) ebpf: Option<&'a mut EbpfSource>,
    pub(super) procs: &'a mut ProcReader,
    pub(super) scratch: &'a mut Scratch,
}

/// The task's cgroups are gone: it ended.
pub(super) struct Vanished;

impl Sources<'_> {
    /// Samples every process of the task. A task whose cgroups the kernel tracks
    /// (`tracked`) takes them from this cycle's task-iterator pass; any other lists them
    /// from its cgroups (descendants included) or the configuration and reads each from
    /// /proc. Processes that exit meanwhile are skipped. The samples, sorted by PID, are
    /// left in `scratch.samples`.
    fn processes_of(&mut self, task: &TaskEntry, tracked: bool) -> Result<(), Vanished> {
        let samples = &mut self.scratch.samples;
        samples.clear();
        match self
            .ebpf
            .as_deref()
            .filter(|e| tracked && e.has_processes())
        {
            Some(ebpf) => {
                for &id in &task.attribution {
                    samples.extend_from_slice(ebpf.processes_in(id));
                }
                if task.attribution.len() > 1 {
                    merge_same_processes(samples);
                }
                if !ebpf.reads_process_memory() {
                    // A kernel whose mm_struct layout is unknown: memory from /proc.
                    for process in samples.iter_mut() {
                        process.memory = read_process_memory(self.procs, process.pid);
                    }
                }
            }
            None => {
                let pids = &mut self.scratch.pids;
                pids.clear();
                match &task.members {
                    Members::Cgroups(cgroups) => match cgroups.read_procs() {
                        Ok(listed) => pids.extend(listed),
                        Err(e) if e.is_vanished() => return Err(Vanished),
                        Err(e) => warn!(error = %e, "listing a task's processes"),
                    },
                    Members::Pids(configured) => pids.extend(configured),
                }
                for &pid in pids.iter() {
                    match self.procs.sample(pid, true) {
                        Ok(Some(sample)) => samples.push(sample),
                        Ok(None) => {}
                        Err(e) => debug!(pid, error = %e, "reading a process"),
                    }
                }
                // Listed from cgroups they are; configured ones need not be.
                samples.sort_unstable_by_key(|p| p.pid);
                samples.dedup_by_key(|p| p.pid);
            }
        }
        self.scratch.sampled += samples.len() as u64;
        Ok(())
    }
}

/// Sorts by PID and makes one sample of a process seen in several of the task's
/// cgroups (threads of one process in two cgroups, which cgroup v2's threaded mode
/// allows): its CPU added up, start and memory from the part that has them.
fn merge_same_processes(samples: &mut Vec<ProcessSample>) {
    samples.sort_unstable_by_key(|p| p.pid);
    samples.dedup_by(|later, kept| {
        if later.pid != kept.pid {
            return false;
        }
        kept.cpu = kept.cpu.saturating_add(later.cpu);
        kept.start = kept.start.min(later.start);
        kept.memory = kept.memory.or(later.memory);
        true
    });
}

/// A task's CPU over one interval.
pub(super) struct TaskCpu {
    pub(super) rates: CpuRates,
    /// Cumulative CPU ns (see `TaskInfo::cpu_total_ns`).
    pub(super) total_ns: u64,
    /// Per-process figures, by PID.
    pub(super) pids: Vec<PidFigures>,
}

/// One task's CPU and processes this cycle.
///
/// With `kernel` counters (eBPF, the task's cgroups tracked): the task's CPU is the
/// change of its cgroups' cumulative counters, exited processes included, and its
/// processes come from the cycle's task-iterator pass. Otherwise (the /proc source,
/// configured PIDs, cgroups that did not fit the kernel map) the task's CPU is the sum
/// of its processes' (Nomad's method: a process that exited between two samples is not
/// counted).
pub(super) fn task_cpu(
    task: &mut TaskEntry,
    kernel: Option<&FastMap<u64, KernelCounters>>,
    sources: &mut Sources<'_>,
    at: Instant,
) -> Result<TaskCpu, Vanished> {
    let Some(kernel) = kernel else {
        // No cumulative counter of the task's own this way: a later switch to the
        // kernel's starts from a first sample.
        task.cpu = CounterTrack::default();
        task.clear_kernel_counters();
        sources.processes_of(task, false)?;
        let total_ns = sources.scratch.samples.iter().map(|p| p.cpu.run_ns).sum();
        let pids = sources.scratch.pid_rates(task, at);
        let mut rates = CpuRates::default();
        for p in &pids {
            rates.percent += p.rates.percent;
            rates.user_mode += p.rates.user_mode;
            rates.system_mode += p.rates.system_mode;
        }
        return Ok(TaskCpu {
            rates,
            total_ns,
            pids,
        });
    };
    let mut counters = KernelCounters::default();
    for id in &task.attribution {
        if let Some(c) = kernel.get(id) {
            counters = counters.saturating_add(*c);
        }
    }
    let cumulative = counters.cpu;
    let identity = task.identity();
    let rates = task.cpu.update(identity, cumulative, at);
    task.set_kernel_counters(counters, at);
    sources.processes_of(task, true)?;
    let pids = sources.scratch.pid_rates(task, at);
    Ok(TaskCpu {
        rates,
        total_ns: cumulative.run_ns,
        pids,
    })
}

impl Scratch {
    /// Per-PID figures of the task's `samples`: each process's rates against its
    /// previous reading (same PID and start). The samples are sorted by PID, as are the
    /// task's readings, which they replace: one merge, no hashing, whatever the number
    /// of processes.
    fn pid_rates(&self, task: &mut TaskEntry, at: Instant) -> Vec<PidFigures> {
        debug_assert!(self.samples.is_sorted_by_key(|p| p.pid));
        let mut readings = Vec::with_capacity(self.samples.len());
        let mut previous = std::mem::take(&mut task.pids).into_iter().peekable();
        let figures = self
            .samples
            .iter()
            .map(|p| {
                while previous.next_if(|(pid, _)| *pid < p.pid).is_some() {}
                let mut track = previous
                    .next_if(|(pid, _)| *pid == p.pid)
                    .map(|(_, track)| track)
                    .unwrap_or_default();
                let rates = track.update(p.start, p.cpu, at);
                readings.push((p.pid, track));
                PidFigures {
                    pid: p.pid,
                    rates,
                    memory: p.memory,
                }
            })
            .collect();
        task.pids = readings;
        figures
    }
}

fn read_process_memory(procs: &mut ProcReader, pid: u32) -> Option<sample::ProcessMemory> {
    let statm = procs.read_statm(pid).ok()??;
    let swap = procs.read_vmswap(pid).ok()?.unwrap_or(0);
    Some(sample::ProcessMemory {
        rss_bytes: statm.resident * crate::procfs::page_size(),
        swap_bytes: swap,
    })
}

/// Reads the task's cgroup memory, throttling, pressure and OOM kills; the counters the
/// task iterator read in the kernel (`kernel`) stand in for the single-value control
/// files (see [`crate::cgroup::TaskCgroups::read_memory`]), and while they stand still
/// `memory.stat` and `memory.events` are not read again, nor the pressure files while
/// the task's kernel-counted CPU, wait and processes stand still (see [`super::steady`];
/// tasks take turns by `cycle` to read them anyway). `Err(true)`: the cgroup is gone;
/// `Err(false)`: a read failed (logged; the previous figures stay).
pub(super) fn refresh_cgroup_figures(
    task: &mut TaskEntry,
    kernel: Option<&KernelCgroupCounters>,
    cycle: u64,
    at: Instant,
) -> Result<(), bool> {
    let kernel_memory = kernel.and_then(|k| k.memory.as_ref());
    let kernel_throttling = kernel.and_then(|k| k.throttling.as_ref());
    let refresh = task.turn(cycle, REFRESH_CYCLES);
    let steady = task.steady_memory.observe(kernel_memory, refresh);
    let counted = task.kernel_counters().copied();
    let steady_pressure = task.steady_pressure.holds(counted.as_ref(), refresh);
    let Some(cgroups) = task.cgroups() else {
        return Ok(());
    };
    let (memory, oom_kills) = match task.memory.as_ref().filter(|_| steady) {
        Some(previous) => (
            cgroups.read_memory_carrying_stat(kernel_memory, previous),
            Ok(task.oom_kills),
        ),
        None => (
            cgroups.read_memory(kernel_memory, task.memory.as_ref()),
            cgroups.read_oom_kills(kernel_memory, task.oom_kills),
        ),
    };
    let throttling = cgroups.read_throttling(kernel_throttling, &task.throttling);
    let pressure = if steady_pressure {
        Ok(task.pressure)
    } else {
        cgroups.read_pressure()
    };
    let result = match (memory, throttling, pressure, oom_kills) {
        (Ok(memory), Ok(throttling), Ok(pressure), Ok(oom_kills)) => {
            task.memory = Some(memory);
            task.throttling = throttling;
            task.pressure = pressure;
            task.oom_kills = oom_kills;
            task.cgroups_read_at = Some(at);
            return Ok(());
        }
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) if e.is_vanished() => {
            Err(true)
        }
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
            warn!(error = %e, "reading a task's cgroup");
            Err(false)
        }
    };
    task.steady_memory.forget();
    task.steady_pressure.forget();
    result
}
