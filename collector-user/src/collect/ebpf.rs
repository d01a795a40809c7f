//! The eBPF CPU source: keeps the kernel's tracked-cgroup map in step with the tasks,
//! reads every tracked cgroup's cumulative CPU with one batch lookup per cycle, and
//! every tracked cgroup's processes with one pass of the task iterator.

use std::collections::{HashMap, HashSet};

use collector_common::{
    cgroup_parts, sample_flags, CgroupCpu, CgroupSample, KernelLayout, ThreadSample, TrackedCgroup,
};
use tracing::{info, warn};

use super::{
    carry::{CarriedThreads, Seen},
    fastmap::FastMap,
};
use crate::{
    cgroup::{KernelCgroupCounters, KernelMemoryCounters, KernelThrottleCounters},
    kernel::{
        AttachedPrograms, Attribution, KernelAccounting, KernelError, KernelFeatures,
        KernelOptions, KernelStats, ProgramRunStats,
    },
    sample::{CpuTimes, KernelCounters, ProcessMemory, ProcessSample},
};

/// What the kernel is to track for one cgroup id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracking {
    /// CLOCK_MONOTONIC ns from which its threads' time counts.
    pub since_ns: u64,
    /// Ids of the memory and cpu cgroups whose counters the task iterator reads at its
    /// processes (a task's own cgroup); 0 for none (its child cgroups).
    pub memory_id: u64,
    pub cpu_id: u64,
}

/// Which counter slots are in use. A slot given up is quarantined until the next
/// [`Slots::start_sync`], at least one interval later: a program that looked the old
/// cgroup up just before the generation changed may still add to it for a moment, and
/// that must not land on the next owner (whose slot is zeroed when handed out).
#[derive(Debug)]
struct Slots {
    free: Vec<u32>,
    quarantined: Vec<u32>,
    /// Slots `0..next` have been handed out at some point: the prefix read each cycle.
    next: u32,
    capacity: u32,
}

impl Slots {
    fn new(capacity: u32) -> Self {
        Self {
            free: Vec::new(),
            quarantined: Vec::new(),
            next: 0,
            capacity,
        }
    }

    /// Rebuilds the free list around the slots already in use (after a restart).
    fn adopt(&mut self, used: &HashSet<u32>) {
        self.next = used
            .iter()
            .copied()
            .filter(|&s| s < self.capacity)
            .max()
            .map_or(0, |s| s + 1);
        self.free = (0..self.next).filter(|s| !used.contains(s)).rev().collect();
        self.quarantined.clear();
    }

    fn start_sync(&mut self) {
        self.free.append(&mut self.quarantined);
    }

    fn take(&mut self) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.next < self.capacity).then(|| {
                self.next += 1;
                self.next - 1
            })
        })
    }

    /// A slot handed out but never used (the map insert failed): free at once.
    fn put_back(&mut self, slot: u32) {
        self.free.push(slot);
    }

    fn release(&mut self, slot: u32) {
        self.quarantined.push(slot);
    }

    /// How many slots to read: every slot ever handed out.
    fn high_water(&self) -> u32 {
        self.next
    }
}

pub struct EbpfSource {
    kernel: KernelAccounting,
    attribution: Attribution,
    /// Cgroup id -> counter slot, for every cgroup in the kernel map.
    tracked: FastMap<u64, u32>,
    slots: Slots,
    generation: u64,
    /// Whether the kernel map has been reconciled with what a previous run left pinned.
    reconciled: bool,
    /// Cgroups that could not be tracked because the map was full (cumulative count of
    /// such events) and those that do not fit now.
    full: u64,
    overflowed: HashSet<u64>,
    max_tracked: u32,
    checkpoint_failures: u64,
    counters: Vec<CgroupCpu>,
    /// The last pass's reports (only the threads that ran, in most slots) ...
    samples: Vec<ThreadSample>,
    /// ... merged into every tracked thread's last record.
    carried: CarriedThreads,
    /// Reused: the slots to mark full for the next pass.
    full_slots: Vec<u32>,
    /// The last pass's cgroup counters, sorted by slot.
    cgroup_samples: Vec<CgroupSample>,
    /// The last pass's processes, by the counter slot of their cgroup (see
    /// [`EbpfSource::processes_in`]).
    processes: SlotProcesses,
    /// Whether the last pass succeeded (else tasks read their processes from /proc).
    processes_read: bool,
    page_size: u64,
    pinned: bool,
}

/// Processes sorted by the counter slot of the tracked cgroup they were seen in.
#[derive(Debug, Default)]
struct SlotProcesses {
    slots: Vec<u32>,
    processes: Vec<ProcessSample>,
    /// Reused sort keys: ((slot << 32) | tgid, index of the thread record).
    keys: Vec<(u64, usize)>,
}

impl SlotProcesses {
    /// Folds the threads' last records into processes: the threads of one process in
    /// one cgroup become one sample (a process whose threads sit in two cgroups, as
    /// cgroup v2's threaded mode allows, gets one sample in each). Every record carries
    /// its process's figures as they were when it was read; the newest is taken.
    fn fold(&mut self, threads: &[Seen], page_size: u64) {
        self.slots.clear();
        self.processes.clear();
        // Sorted as (slot, tgid) keys with the record's index, not as 96-byte records.
        let keys = &mut self.keys;
        keys.clear();
        keys.extend(threads.iter().enumerate().map(|(i, t)| {
            (
                (u64::from(t.sample.slot) << 32) | u64::from(t.sample.tgid),
                i,
            )
        }));
        keys.sort_unstable();
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let records = || group.iter().map(|&(_, i)| &threads[i]);
            let first = &threads[group[0].1].sample;
            let leader = records().find(|t| t.sample.flags & sample_flags::LEADER != 0);
            // Without the leader in this cgroup, the oldest thread tells a reused PID.
            let start = leader.map_or_else(
                || records().map(|t| t.sample.start_ns).min().unwrap_or(0),
                |l| l.sample.start_ns,
            );
            // The newest record, the leader's among equals.
            let newest = records()
                .max_by_key(|t| (t.pass, t.sample.flags & sample_flags::LEADER != 0))
                .map(|t| &t.sample);
            let mut process = ProcessSample {
                pid: first.tgid,
                start,
                ..ProcessSample::default()
            };
            for t in records() {
                fold_thread(&mut process, &t.sample);
            }
            if let Some(newest) = newest {
                fold_process(&mut process, newest, page_size);
            }
            self.slots.push(first.slot);
            self.processes.push(process);
        }
    }

    fn in_slot(&self, slot: u32) -> &[ProcessSample] {
        let start = self.slots.partition_point(|&s| s < slot);
        let end = self.slots.partition_point(|&s| s <= slot);
        &self.processes[start..end]
    }
}

/// Adds a thread's own CPU to its process's sample.
fn fold_thread(process: &mut ProcessSample, thread: &ThreadSample) {
    process.cpu = process.cpu.saturating_add(CpuTimes {
        run_ns: thread.run_ns,
        user_ns: thread.user_ns,
        system_ns: thread.system_ns,
    });
}

/// Adds the process-wide figures of one of its threads' records: the CPU of its exited
/// threads, and its memory.
fn fold_process(process: &mut ProcessSample, thread: &ThreadSample, page_size: u64) {
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

/// A [`CgroupSample`] in bytes, with the counters this kernel does not have `None`.
fn cgroup_counters(
    sample: &CgroupSample,
    layout: &KernelLayout,
    page_size: u64,
) -> KernelCgroupCounters {
    let bytes = |pages: u64| pages.saturating_mul(page_size);
    let has = |offset: u32, value: u64| (offset != 0).then_some(value);
    KernelCgroupCounters {
        memory: (sample.parts & cgroup_parts::MEMORY != 0).then(|| KernelMemoryCounters {
            usage: bytes(sample.memory_pages),
            peak: bytes(sample.memory_peak_pages),
            swap: has(layout.memcg_swap_usage, bytes(sample.swap_pages)),
            kernel_usage: has(layout.memcg_kmem_usage, bytes(sample.kmem_pages)),
            kernel_peak: has(layout.memcg_kmem_watermark, bytes(sample.kmem_peak_pages)),
            oom_kills: sample.oom_kills,
        }),
        throttling: (sample.parts & cgroup_parts::CPU != 0).then_some(KernelThrottleCounters {
            nr_throttled: sample.nr_throttled,
            throttled_ns: sample.throttled_ns,
        }),
    }
}

impl EbpfSource {
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        let kernel = KernelAccounting::load(options)?;
        let programs = kernel.programs();
        let features = kernel.features();
        let off: Vec<&str> = features
            .optional()
            .into_iter()
            .filter(|(_, f)| !f.enabled)
            .map(|(name, _)| name)
            .collect();
        info!(
            sched_switch = programs.sched_switch_id,
            checkpoint = ?programs.checkpoint_id,
            process_iter = ?programs.process_iter_id,
            cgroup_walk = ?programs.cgroup_walk_id,
            thread_state = features.thread_state.build_name(),
            off = ?off,
            kept_pinned = programs.reused_pinned_link,
            v1 = options.attribution.v1_controller.as_deref().unwrap_or("-"),
            v2 = options.attribution.v2,
            "eBPF programs attached: CPU time comes from the kernel"
        );
        Ok(Self {
            kernel,
            attribution: options.attribution.clone(),
            tracked: FastMap::default(),
            slots: Slots::new(options.max_tracked_cgroups),
            generation: 0,
            reconciled: false,
            full: 0,
            overflowed: HashSet::new(),
            max_tracked: options.max_tracked_cgroups,
            checkpoint_failures: 0,
            counters: Vec::new(),
            samples: Vec::new(),
            carried: CarriedThreads::default(),
            full_slots: Vec::new(),
            cgroup_samples: Vec::new(),
            processes: SlotProcesses::default(),
            processes_read: false,
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

    /// Whether per-process figures come from the kernel's task iterator (else /proc).
    pub fn samples_processes(&self) -> bool {
        self.kernel.samples_processes()
    }

    pub fn features(&self) -> &KernelFeatures {
        self.kernel.features()
    }

    pub fn kernel_stats(&self) -> KernelStats {
        self.kernel.stats()
    }

    pub fn program_run_stats(&self) -> ProgramRunStats {
        self.kernel.program_run_stats()
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

    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures
    }

    /// (threads the last pass reported, records carried for the others).
    pub fn thread_records(&self) -> (u64, u64) {
        let reported = self.samples.len();
        let all = self.carried.records().len();
        (reported as u64, all.saturating_sub(reported) as u64)
    }

    /// Makes the kernel attribute exactly the cgroups in `wanted` (id -> since_ns).
    /// Returns the ids that could not be tracked because the map is full.
    pub fn sync(&mut self, wanted: &HashMap<u64, Tracking>) -> Result<HashSet<u64>, KernelError> {
        let mut changed = false;
        if !self.reconciled {
            // Entries pinned by a previous run: keep those still wanted (their counters
            // continue), drop the rest.
            let mut used = HashSet::new();
            for (id, entry) in self.kernel.tracked_entries()? {
                let Some(tracking) = wanted.get(&id) else {
                    self.kernel.untrack(id);
                    changed = true;
                    continue;
                };
                if entry.slot < self.max_tracked {
                    // The slots' cgroups are not pinned: registered again.
                    self.kernel.set_slot_cgroups(
                        entry.slot,
                        tracking.memory_id,
                        tracking.cpu_id,
                    )?;
                    self.tracked.insert(id, entry.slot);
                    used.insert(entry.slot);
                } else {
                    self.kernel.untrack(id);
                    changed = true;
                }
            }
            self.slots.adopt(&used);
            self.generation = self.kernel.generation()?;
            self.reconciled = true;
        }
        self.slots.start_sync();
        let stale: Vec<u64> = self
            .tracked
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.kernel.untrack(id);
            if let Some(slot) = self.tracked.remove(&id) {
                self.slots.release(slot);
            }
            changed = true;
        }
        let mut untracked = HashSet::new();
        for (&id, tracking) in wanted {
            if self.tracked.contains_key(&id) {
                continue;
            }
            let Some(slot) = self.slots.take() else {
                untracked.insert(id);
                continue;
            };
            let entry = TrackedCgroup {
                slot,
                since_ns: tracking.since_ns,
                ..TrackedCgroup::default()
            };
            self.kernel
                .set_slot_cgroups(slot, tracking.memory_id, tracking.cpu_id)?;
            self.carried.renew(slot);
            if self.kernel.track(id, entry)? {
                self.tracked.insert(id, slot);
                changed = true;
            } else {
                self.slots.put_back(slot);
                untracked.insert(id);
            }
        }
        if changed {
            self.generation += 1;
            self.kernel.set_generation(self.generation)?;
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

    /// Brings every tracked cgroup's counters up to now (the threads running on each CPU
    /// included) and reads them into `out`: cumulative CPU by cgroup id, exited threads
    /// included.
    pub fn read(&mut self, out: &mut FastMap<u64, KernelCounters>) -> Result<(), KernelError> {
        let failed = self.kernel.checkpoint();
        if failed > 0 {
            self.checkpoint_failures += u64::from(failed);
            warn!(
                cpus = failed,
                "checkpointing the running threads failed on some CPUs: their current \
                 slices are counted at their next context switch instead"
            );
        }
        self.kernel
            .read_cgroup_cpu(self.slots.high_water(), &mut self.counters)
            // The exits that decide which slots' passes are full are unknown: nothing
            // is carried into the next pass.
            .inspect_err(|_| self.carried.lose())?;
        out.clear();
        for (&id, &slot) in &self.tracked {
            if let Some(cpu) = self.counters.get(slot as usize) {
                out.insert(
                    id,
                    KernelCounters {
                        cpu: CpuTimes {
                            run_ns: cpu.run_ns,
                            user_ns: cpu.user_ns,
                            system_ns: cpu.system_ns,
                        },
                        wait_ns: cpu.wait_ns,
                        processes_started: cpu.processes_started,
                        processes_exited: cpu.processes_exited,
                    },
                );
            }
        }
        Ok(())
    }

    /// Reads the processes of every tracked cgroup with one pass of the task iterator
    /// (see [`EbpfSource::processes_in`]): the threads that ran since their last record,
    /// the others carried (see `carry`). Without the iterator, nothing is read and every
    /// cgroup shows no process.
    pub fn sample_processes(&mut self) -> Result<(), KernelError> {
        let result = self.pass();
        self.processes_read = result.is_ok();
        if result.is_err() {
            self.carried.lose();
            self.samples.clear();
            self.cgroup_samples.clear();
        }
        self.processes.fold(self.carried.records(), self.page_size);
        result
    }

    /// One pass: plan, mark, run, merge.
    fn pass(&mut self) -> Result<(), KernelError> {
        let plan = self.carried.plan(&self.counters, &mut self.full_slots);
        for &slot in &self.full_slots {
            self.kernel.mark_full(slot, plan.pass)?;
        }
        self.kernel.sample_tracked_threads(
            plan.pass,
            plan.all_full,
            &mut self.samples,
            &mut self.cgroup_samples,
        )?;
        self.cgroup_samples.sort_unstable_by_key(|c| c.slot);
        self.carried.merge(&self.samples, &self.cgroup_samples);
        Ok(())
    }

    /// The counters the last [`EbpfSource::sample_processes`] read in the kernel for
    /// tracked cgroup `id`'s memory and cpu cgroups (see [`Tracking`]); `None` when it
    /// met none of its processes there.
    pub fn cgroup_counters_in(&self, id: u64) -> Option<KernelCgroupCounters> {
        let &slot = self.tracked.get(&id)?;
        let at = self
            .cgroup_samples
            .binary_search_by_key(&slot, |c| c.slot)
            .ok()?;
        Some(cgroup_counters(
            &self.cgroup_samples[at],
            self.kernel.layout(),
            self.page_size,
        ))
    }

    /// Whether the last [`EbpfSource::sample_processes`] read every tracked cgroup's
    /// processes.
    pub fn has_processes(&self) -> bool {
        self.processes_read
    }

    /// The processes the last [`EbpfSource::sample_processes`] saw in tracked cgroup
    /// `id` (not its descendants, which are tracked cgroups of their own), by PID.
    pub fn processes_in(&self, id: u64) -> &[ProcessSample] {
        match self.tracked.get(&id) {
            Some(&slot) => self.processes.in_slot(slot),
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(sample: ThreadSample, pass: u64) -> Seen {
        Seen { sample, pass }
    }

    #[test]
    fn threads_fold_into_their_process_with_its_newest_figures() {
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
            system_ns: 0,
            start_ns: 9,
            ..leader
        };
        let worker = ThreadSample {
            flags: sample_flags::MEMORY,
            ..worker
        };
        let mut table = SlotProcesses::default();
        table.fold(&[seen(worker, 1), seen(leader, 1)], 4096);
        let process = &table.in_slot(0)[0];
        assert_eq!(
            (
                process.cpu.run_ns,
                process.cpu.user_ns,
                process.cpu.system_ns
            ),
            (1150, 610, 540),
            "both threads, and the exited ones once"
        );
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

        // The worker ran since: its newer record carries the process's newer figures,
        // the leader's (carried) record its own CPU only.
        let newer = ThreadSample {
            run_ns: 80,
            exited_run_ns: 2000,
            rss_pages: 5,
            ..worker
        };
        table.fold(&[seen(leader, 1), seen(newer, 2)], 4096);
        let process = &table.in_slot(0)[0];
        assert_eq!(process.cpu.run_ns, 100 + 80 + 2000);
        assert_eq!(process.memory.map(|m| m.rss_bytes), Some(5 * 4096));
        assert_eq!(process.start, 7);
    }

    #[test]
    fn a_pass_folds_into_processes_per_cgroup_slot() {
        let thread = |slot, tgid, tid, run_ns| {
            seen(
                ThreadSample {
                    slot,
                    tgid,
                    tid,
                    run_ns,
                    start_ns: u64::from(tid),
                    flags: if tid == tgid { sample_flags::LEADER } else { 0 },
                    ..ThreadSample::default()
                },
                1,
            )
        };
        let threads = vec![
            thread(2, 30, 31, 5),
            thread(0, 10, 10, 1),
            thread(2, 30, 30, 7),
            thread(0, 11, 11, 2),
            thread(1, 30, 32, 100),
        ];
        let mut table = SlotProcesses::default();
        table.fold(&threads, 4096);
        let pids = |slot| {
            table
                .in_slot(slot)
                .iter()
                .map(|p| (p.pid, p.cpu.run_ns, p.start))
                .collect::<Vec<_>>()
        };
        assert_eq!(pids(0), vec![(10, 1, 10), (11, 2, 11)]);
        assert_eq!(
            pids(1),
            vec![(30, 100, 32)],
            "a thread in another cgroup than its leader: a sample there, started as it"
        );
        assert_eq!(pids(2), vec![(30, 12, 30)], "two threads, one process");
        assert!(table.in_slot(3).is_empty());
    }

    #[test]
    fn slots_are_reused_only_after_a_quarantine() {
        let mut slots = Slots::new(3);
        slots.start_sync();
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert_eq!((a, b), (0, 1));
        slots.release(a);
        assert_eq!(
            slots.take(),
            Some(2),
            "a released slot is not reused in the same sync"
        );
        assert_eq!(slots.take(), None, "capacity reached");
        slots.start_sync();
        assert_eq!(slots.take(), Some(0), "reused one sync later");
        assert_eq!(slots.high_water(), 3);
        slots.put_back(0);
        assert_eq!(slots.take(), Some(0), "a slot never used is free at once");
    }

    #[test]
    fn adopting_pinned_slots_frees_the_gaps() {
        let mut slots = Slots::new(10);
        slots.adopt(&HashSet::from([1, 4]));
        assert_eq!(slots.high_water(), 5);
        let mut taken: Vec<u32> = std::iter::from_fn(|| slots.take()).take(4).collect();
        taken.sort_unstable();
        assert_eq!(taken, vec![0, 2, 3, 5]);
    }
}
