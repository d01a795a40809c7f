//! The eBPF CPU source: keeps the kernel's tracked-cgroup map in step with the tasks,
//! runs the task iterator once per cycle and groups its per-thread records into
//! per-process samples.

use std::collections::{HashMap, HashSet};

use super::fastmap::FastMap;

use collector_common::{sample_flags, CgroupCpu, ThreadSample};
use tracing::{info, warn};

use super::sample::{CpuTimes, ProcessMemory, ProcessSample};
use crate::kernel::{
    AttachedPrograms, Attribution, KernelAccounting, KernelError, KernelOptions, KernelStats,
};

/// One cycle's reading. Its collections are reused from cycle to cycle (cleared, not
/// freed): with ten thousand processes, allocating them anew each second shows.
#[derive(Debug, Default)]
pub struct EbpfReading {
    /// Cumulative CPU per tracked cgroup id, exited threads included.
    pub cgroups: FastMap<u64, CpuTimes>,
    /// Live processes, sorted by (cgroup id, pid).
    processes: Vec<(u64, ProcessSample)>,
    /// Cgroup id -> range of `processes`.
    ranges: FastMap<u64, (usize, usize)>,
    pub threads: usize,
}

impl EbpfReading {
    /// The live processes whose leader is in cgroup `id`, by pid.
    pub fn processes_of(&self, id: u64) -> impl Iterator<Item = &ProcessSample> {
        let (start, end) = self.ranges.get(&id).copied().unwrap_or((0, 0));
        self.processes[start..end].iter().map(|(_, p)| p)
    }
}

pub struct EbpfSource {
    kernel: KernelAccounting,
    attribution: Attribution,
    /// Cgroup ids currently in the kernel map.
    tracked: HashSet<u64>,
    /// Whether the kernel map has been reconciled with what a previous run left pinned.
    reconciled: bool,
    /// Cgroups that could not be tracked because the map was full (cumulative count of
    /// such events) and those that do not fit now.
    full: u64,
    overflowed: HashSet<u64>,
    max_tracked: u32,
    samples: Vec<ThreadSample>,
    /// tgid -> (cgroup id of the leader or first thread, sample); reused.
    by_tgid: FastMap<u32, (u64, ProcessSample)>,
    reading: EbpfReading,
    page_size: u64,
    pinned: bool,
}

/// Adds a thread's record to its process's sample.
fn fold_thread(process: &mut ProcessSample, thread: &ThreadSample, page_size: u64) {
    process.cpu = process.cpu.saturating_add(CpuTimes {
        run_ns: thread.run_ns,
        user_ns: thread.user_ns,
        system_ns: thread.system_ns,
    });
    if thread.flags & sample_flags::LEADER != 0 {
        process.start = thread.start_ns;
        process.cpu = process.cpu.saturating_add(CpuTimes {
            run_ns: thread.exited_run_ns,
            user_ns: thread.exited_user_ns,
            system_ns: thread.exited_system_ns,
        });
        if thread.flags & sample_flags::MEMORY != 0 {
            // The kernel's per-CPU counters can read slightly negative; clamp.
            process.memory = Some(ProcessMemory {
                rss_bytes: thread.rss_pages.max(0) as u64 * page_size,
                swap_bytes: thread.swap_pages.max(0) as u64 * page_size,
            });
        }
    }
}

impl EbpfSource {
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        let kernel = KernelAccounting::load(options)?;
        let programs = kernel.programs();
        info!(
            sched_switch = programs.sched_switch_id,
            task_iter = programs.task_iter_id,
            kept_pinned = programs.reused_pinned_link,
            v1 = options.attribution.v1_controller.as_deref().unwrap_or("-"),
            v2 = options.attribution.v2,
            "eBPF programs attached: CPU time comes from the kernel"
        );
        Ok(Self {
            kernel,
            attribution: options.attribution.clone(),
            tracked: HashSet::new(),
            reconciled: false,
            full: 0,
            overflowed: HashSet::new(),
            max_tracked: options.max_tracked_cgroups,
            samples: Vec::new(),
            by_tgid: FastMap::default(),
            reading: EbpfReading::default(),
            page_size: crate::procfs::page_size(),
            pinned: options.pin_root.is_some(),
        })
    }

    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    pub fn programs(&self) -> &AttachedPrograms {
        self.kernel.programs()
    }

    /// Whether the programs stay attached through bpffs pins after the daemon exits.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    pub fn reads_process_memory(&self) -> bool {
        self.kernel.reads_process_memory()
    }

    pub fn kernel_stats(&self) -> KernelStats {
        self.kernel.stats()
    }

    pub fn sched_switch_run_stats(&self) -> (u64, u64) {
        self.kernel.program_run_stats().sched_switch
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    pub fn max_tracked(&self) -> u32 {
        self.max_tracked
    }

    pub fn full_events(&self) -> u64 {
        self.full
    }

    /// Makes the kernel attribute exactly the cgroups in `wanted` (id -> since_ns).
    /// Returns the ids that could not be tracked because the map is full.
    pub fn sync(&mut self, wanted: &HashMap<u64, u64>) -> Result<HashSet<u64>, KernelError> {
        if !self.reconciled {
            // Entries pinned by a previous run: keep those still wanted (their counters
            // continue), drop the rest.
            let pinned: Vec<u64> = self
                .kernel
                .read_cgroups()?
                .iter()
                .map(|(id, _)| *id)
                .collect();
            for id in pinned {
                if wanted.contains_key(&id) {
                    self.tracked.insert(id);
                } else {
                    self.kernel.untrack(id);
                }
            }
            self.reconciled = true;
        }
        let stale: Vec<u64> = self
            .tracked
            .iter()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.kernel.untrack(id);
            self.tracked.remove(&id);
        }
        let mut untracked = HashSet::new();
        for (&id, &since) in wanted {
            if self.tracked.contains(&id) {
                continue;
            }
            if self.kernel.track(id, since)? {
                self.tracked.insert(id);
            } else {
                untracked.insert(id);
            }
        }
        // Count and log each cgroup once when it first does not fit, not every cycle.
        for &id in &untracked {
            if self.overflowed.insert(id) {
                self.full += 1;
                warn!(
                    cgroup_id = id,
                    capacity = self.max_tracked,
                    "the kernel map of tracked cgroups is full: raise ebpf.max_tracked_cgroups; \
                     tasks that do not fit are measured from /proc"
                );
            }
        }
        self.overflowed.retain(|id| untracked.contains(id));
        Ok(untracked)
    }

    /// Runs the iterator (which brings every tracked cgroup's counters up to date) and
    /// then reads the counters.
    pub fn read(&mut self) -> Result<(), KernelError> {
        self.kernel.sample_threads(&mut self.samples)?;
        self.by_tgid.clear();
        for thread in &self.samples {
            let entry = self.by_tgid.entry(thread.tgid).or_insert_with(|| {
                (
                    thread.cgroup_id,
                    ProcessSample {
                        pid: thread.tgid,
                        ..ProcessSample::default()
                    },
                )
            });
            if thread.flags & sample_flags::LEADER != 0 {
                entry.0 = thread.cgroup_id;
            }
            fold_thread(&mut entry.1, thread, self.page_size);
        }
        let reading = &mut self.reading;
        reading.threads = self.samples.len();
        reading.processes.clear();
        reading.processes.extend(self.by_tgid.values().copied());
        reading
            .processes
            .sort_unstable_by_key(|(cgroup, p)| (*cgroup, p.pid));
        reading.ranges.clear();
        let mut start = 0;
        for (i, (cgroup, _)) in reading.processes.iter().enumerate() {
            let next = reading.processes.get(i + 1).map(|(c, _)| *c);
            if next != Some(*cgroup) {
                reading.ranges.insert(*cgroup, (start, i + 1));
                start = i + 1;
            }
        }
        reading.cgroups.clear();
        for (id, cpu) in self.kernel.read_cgroups()? {
            let CgroupCpu {
                run_ns,
                user_ns,
                system_ns,
                ..
            } = *cpu;
            reading.cgroups.insert(
                *id,
                CpuTimes {
                    run_ns,
                    user_ns,
                    system_ns,
                },
            );
        }
        Ok(())
    }

    /// The last successful [`EbpfSource::read`].
    pub fn reading(&self) -> &EbpfReading {
        &self.reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_fold_into_their_process_with_the_leaders_extras() {
        let leader = ThreadSample {
            tid: 10,
            tgid: 10,
            run_ns: 100,
            user_ns: 60,
            system_ns: 40,
            start_ns: 7,
            exited_run_ns: 1000,
            exited_user_ns: 500,
            exited_system_ns: 500,
            rss_pages: 3,
            swap_pages: -1,
            flags: sample_flags::LEADER | sample_flags::MEMORY,
            ..ThreadSample::default()
        };
        let worker = ThreadSample {
            tid: 11,
            tgid: 10,
            run_ns: 50,
            user_ns: 50,
            start_ns: 9,
            ..ThreadSample::default()
        };
        let mut process = ProcessSample::default();
        fold_thread(&mut process, &worker, 4096);
        fold_thread(&mut process, &leader, 4096);
        assert_eq!(process.cpu.run_ns, 1150);
        assert_eq!(process.cpu.user_ns, 610);
        assert_eq!(process.cpu.system_ns, 540);
        assert_eq!(
            process.start, 7,
            "the process is identified by its leader's start"
        );
        assert_eq!(
            process.memory,
            Some(ProcessMemory {
                rss_bytes: 3 * 4096,
                swap_bytes: 0
            })
        );
    }
}
