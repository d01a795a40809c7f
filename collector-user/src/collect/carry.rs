//! Carrying the task iterator's records from pass to pass.
//!
//! The iterator reports a thread only when it ran or changed cgroup since its last
//! record (its accounted CPU time moved), except in the slots whose pass is full. Between
//! two records of a thread its figures stand still: its CPU times move only while it
//! runs, and its process's memory only while one of its threads runs (which reports that
//! thread, with the process's figures) or when its pages are reclaimed, which moves its
//! memory cgroup's usage. So the daemon keeps each thread's last record, and makes a
//! slot's next pass full (every thread reported, nothing carried) when it cannot tell
//! that the carried records still hold:
//! - a thread of the slot exited (its counters' `exited_threads` moved): the process's
//!   exited-thread CPU and its list of threads changed;
//! - the slot's memory cgroup usage or swap moved, or the pass read none for it;
//! - the slot was handed to a new cgroup;
//! - its turn came, once in [`FULL_PASS_EVERY`](collector_common::FULL_PASS_EVERY) passes, which bounds how long a record
//!   is carried (a sleeping thread moved to an untracked cgroup is not reported);
//! - the daemon lost track (its first pass, a failed read): every slot is full.
//!
//! Pure: the decisions and the merge, with no I/O (see `ebpf.rs` for the kernel side).

use collector_common::{cgroup_parts, full_by_turn, CgroupCpu, CgroupSample, ThreadSample};

/// A thread's record and the pass that read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub sample: ThreadSample,
    pub pass: u64,
}

/// What the daemon watches per counter slot.
#[derive(Clone, Copy, Debug, Default)]
struct SlotWatch {
    /// The slot's `exited_threads` at the last plan.
    exited: u64,
    /// (usage, swap) pages of the slot's memory cgroup in the last pass.
    memory: Option<(u64, u64)>,
    /// The next pass must report every thread of the slot.
    full_next: bool,
    /// The current pass reports every thread of the slot.
    full_now: bool,
}

/// One pass to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Its number (`control::PASS`).
    pub pass: u64,
    /// Every slot is full.
    pub all_full: bool,
}

/// The last records of every tracked thread, and which slots' passes are full.
#[derive(Debug)]
pub struct CarriedThreads {
    records: Vec<Seen>,
    slots: Vec<SlotWatch>,
    pass: u64,
    all_full: bool,
    /// Nothing can be carried into the next pass.
    lost: bool,
    /// Reused buffers of `merge`.
    tids: Vec<u32>,
    merged: Vec<Seen>,
    occupied: Vec<bool>,
}

impl Default for CarriedThreads {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            slots: Vec::new(),
            pass: 0,
            all_full: true,
            lost: true,
            tids: Vec::new(),
            merged: Vec::new(),
            occupied: Vec::new(),
        }
    }
}

impl CarriedThreads {
    /// Plans the next pass from the slots' counters read just before it (`counters`,
    /// indexed by slot). `mark` gets the slots the daemon must mark full for the
    /// iterator: those full for a reason the iterator cannot see itself (not when every
    /// slot is full, nor at a slot's turn, which it computes from the pass number).
    pub fn plan(&mut self, counters: &[CgroupCpu], mark: &mut Vec<u32>) -> Plan {
        self.pass += 1;
        self.all_full = self.lost;
        mark.clear();
        if self.slots.len() < counters.len() {
            self.slots.resize(counters.len(), SlotWatch::default());
        }
        for (slot, watch) in self.slots.iter_mut().enumerate() {
            let exited = counters.get(slot).map_or(0, |c| c.exited_threads);
            let exits = exited != watch.exited;
            watch.exited = exited;
            let turn = full_by_turn(self.pass, slot as u32);
            watch.full_now = self.all_full || turn || watch.full_next || exits;
            watch.full_next = false;
            if watch.full_now && !self.all_full && !turn {
                mark.push(slot as u32);
            }
        }
        Plan {
            pass: self.pass,
            all_full: self.all_full,
        }
    }

    /// Merges the records the planned pass reported (`reported`) with the carried ones,
    /// and watches the slots' memory for the next plan (`cgroups`: the pass's cgroup
    /// records, sorted by slot).
    pub fn merge(&mut self, reported: &[ThreadSample], cgroups: &[CgroupSample]) {
        let tids = &mut self.tids;
        tids.clear();
        tids.extend(reported.iter().map(|t| t.tid));
        tids.sort_unstable();
        let merged = &mut self.merged;
        merged.clear();
        if !self.all_full {
            let slots = &self.slots;
            merged.extend(self.records.iter().copied().filter(|r| {
                let full = slots.get(r.sample.slot as usize).is_none_or(|w| w.full_now);
                // A thread reported again (in this slot or, moved, in another) replaces
                // its record.
                !full && tids.binary_search(&r.sample.tid).is_err()
            }));
        }
        merged.extend(reported.iter().map(|&sample| Seen {
            sample,
            pass: self.pass,
        }));
        std::mem::swap(&mut self.records, merged);

        let occupied = &mut self.occupied;
        occupied.clear();
        occupied.resize(self.slots.len(), false);
        for r in &self.records {
            if let Some(o) = occupied.get_mut(r.sample.slot as usize) {
                *o = true;
            }
        }
        for (slot, watch) in self.slots.iter_mut().enumerate() {
            let memory = cgroups
                .binary_search_by_key(&(slot as u32), |c| c.slot)
                .ok()
                .map(|i| &cgroups[i])
                .filter(|c| c.parts & cgroup_parts::MEMORY != 0)
                .map(|c| (c.memory_pages, c.swap_pages));
            // A slot with no thread carries nothing, whatever its memory does.
            if occupied[slot] && (memory.is_none() || memory != watch.memory) {
                watch.full_next = true;
            }
            watch.memory = memory;
        }
        self.lost = false;
    }

    /// The planned pass failed (or the counters it was planned from are not this
    /// cycle's): nothing is carried, and the next pass reports every thread.
    pub fn lose(&mut self) {
        self.records.clear();
        self.lost = true;
    }

    /// `slot` was handed to a new cgroup: its next pass reports every thread.
    pub fn renew(&mut self, slot: u32) {
        let index = slot as usize;
        if self.slots.len() <= index {
            self.slots.resize(index + 1, SlotWatch::default());
        }
        self.slots[index] = SlotWatch {
            full_next: true,
            ..SlotWatch::default()
        };
    }

    /// Every tracked thread's last record.
    pub fn records(&self) -> &[Seen] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(slot: u32, tid: u32, run_ns: u64) -> ThreadSample {
        ThreadSample {
            tid,
            tgid: tid,
            run_ns,
            slot,
            ..ThreadSample::default()
        }
    }

    fn memory(slot: u32, pages: u64) -> CgroupSample {
        CgroupSample {
            slot,
            parts: cgroup_parts::MEMORY,
            memory_pages: pages,
            ..CgroupSample::default()
        }
    }

    /// (slot, tid, run_ns, pass) of every record, sorted.
    fn records(carried: &CarriedThreads) -> Vec<(u32, u32, u64, u64)> {
        let mut all: Vec<_> = carried
            .records()
            .iter()
            .map(|r| (r.sample.slot, r.sample.tid, r.sample.run_ns, r.pass))
            .collect();
        all.sort_unstable();
        all
    }

    /// Slots 1 and 2 (3 counter slots), memory steady, through their first passes.
    /// Pass numbers are chosen so that no slot's turn falls in the passes tested.
    fn settled() -> (CarriedThreads, Vec<CgroupCpu>, Vec<CgroupSample>) {
        let mut carried = CarriedThreads::default();
        // Passes 1 and 2: slot 1's turn is pass 9, slot 2's pass 8.
        let counters = vec![CgroupCpu::default(); 3];
        let cgroups = vec![memory(1, 100), memory(2, 200)];
        let mut mark = Vec::new();
        let plan = carried.plan(&counters, &mut mark);
        assert_eq!(
            plan,
            Plan {
                pass: 1,
                all_full: true
            },
            "the first pass reports every thread"
        );
        assert!(mark.is_empty(), "nothing to mark when every slot is full");
        carried.merge(
            &[thread(1, 10, 5), thread(1, 11, 6), thread(2, 20, 7)],
            &cgroups,
        );
        // Pass 2: the memory seen for the first time makes both full once more.
        let plan = carried.plan(&counters, &mut mark);
        assert!(!plan.all_full);
        assert_eq!(mark, vec![1, 2]);
        carried.merge(
            &[thread(1, 10, 5), thread(1, 11, 6), thread(2, 20, 7)],
            &cgroups,
        );
        (carried, counters, cgroups)
    }

    #[test]
    fn threads_that_did_not_run_are_carried() {
        let (mut carried, counters, cgroups) = settled();
        let mut mark = Vec::new();
        let plan = carried.plan(&counters, &mut mark);
        assert_eq!((plan.pass, plan.all_full), (3, false));
        assert!(mark.is_empty(), "no exit, memory steady: {mark:?}");
        carried.merge(&[thread(1, 11, 9)], &cgroups);
        assert_eq!(
            records(&carried),
            vec![(1, 10, 5, 2), (1, 11, 9, 3), (2, 20, 7, 2)],
            "the thread that ran replaced its record; the others are carried"
        );
    }

    #[test]
    fn an_exit_makes_its_slot_full() {
        let (mut carried, mut counters, cgroups) = settled();
        counters[1].exited_threads = 1;
        let mut mark = Vec::new();
        carried.plan(&counters, &mut mark);
        assert_eq!(
            mark,
            vec![1],
            "the slot with the exit is marked for the iterator"
        );
        // Thread 11 exited: the full slot's records are what the pass reported.
        carried.merge(&[thread(1, 10, 5)], &cgroups);
        assert_eq!(records(&carried), vec![(1, 10, 5, 3), (2, 20, 7, 2)]);
        carried.plan(&counters, &mut mark);
        assert!(mark.is_empty(), "the exit is counted once");
    }

    #[test]
    fn moved_memory_makes_the_next_pass_full() {
        let (mut carried, counters, _) = settled();
        let mut mark = Vec::new();
        carried.plan(&counters, &mut mark);
        carried.merge(&[], &[memory(1, 100), memory(2, 250)]);
        carried.plan(&counters, &mut mark);
        assert_eq!(mark, vec![2]);
        carried.merge(&[], &[memory(1, 100), memory(2, 250)]);
        assert!(
            records(&carried).iter().all(|r| r.0 != 2),
            "slot 2 reported none"
        );
        carried.plan(&counters, &mut mark);
        assert!(mark.is_empty(), "steady again: {mark:?}");
    }

    #[test]
    fn a_slot_without_memory_figures_is_always_full() {
        let (mut carried, counters, _) = settled();
        let mut mark = Vec::new();
        carried.plan(&counters, &mut mark);
        carried.merge(&[], &[memory(1, 100)]);
        carried.plan(&counters, &mut mark);
        assert_eq!(mark, vec![2], "no memory record for slot 2");
    }

    #[test]
    fn a_thread_reported_in_another_slot_moves() {
        let (mut carried, counters, cgroups) = settled();
        let mut mark = Vec::new();
        carried.plan(&counters, &mut mark);
        carried.merge(&[thread(2, 11, 6)], &cgroups);
        assert_eq!(
            records(&carried),
            vec![(1, 10, 5, 2), (2, 11, 6, 3), (2, 20, 7, 2)]
        );
    }

    #[test]
    fn a_slot_is_full_at_its_turn_without_being_marked() {
        let (mut carried, counters, cgroups) = settled();
        let mut mark = Vec::new();
        for _ in 3..8 {
            carried.plan(&counters, &mut mark);
            carried.merge(&[], &cgroups);
        }
        let plan = carried.plan(&counters, &mut mark);
        assert_eq!(plan.pass, 8);
        assert!(full_by_turn(8, 2) && !full_by_turn(8, 1));
        assert!(mark.is_empty(), "the iterator computes the turn itself");
        carried.merge(&[], &cgroups);
        assert_eq!(
            records(&carried),
            vec![(1, 10, 5, 2), (1, 11, 6, 2)],
            "slot 2's full pass reported nothing: its record is dropped"
        );
    }

    #[test]
    fn a_lost_pass_carries_nothing() {
        let (mut carried, counters, cgroups) = settled();
        carried.lose();
        assert!(carried.records().is_empty());
        let mut mark = Vec::new();
        assert!(carried.plan(&counters, &mut mark).all_full);
        carried.merge(&[thread(1, 10, 5)], &cgroups);
        assert_eq!(records(&carried), vec![(1, 10, 5, 3)]);
    }

    #[test]
    fn a_renewed_slot_is_full() {
        let (mut carried, counters, cgroups) = settled();
        carried.renew(2);
        let mut mark = Vec::new();
        carried.plan(&counters, &mut mark);
        assert_eq!(mark, vec![2]);
        carried.merge(&[thread(2, 30, 1)], &cgroups);
        assert_eq!(
            records(&carried),
            vec![(1, 10, 5, 2), (1, 11, 6, 2), (2, 30, 1, 3)]
        );
    }
}
