//! The maps every build of the programs has. Sizes of the bounded ones are set by the
//! daemon at load time. Where a thread's own state is kept differs by kernel: see
//! `store_task` and `store_hash`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use collector_common::{
    control, stat, CgroupCpu, RanThreads, SlotCgroups, TrackedCgroup, NO_SLOT, RAN_SET_CAPACITY,
};

use crate::kernel::{Access, Task};

/// Tracked task cgroups, keyed by cgroup id: where their counters are and since when.
/// Written only by the daemon. Not preallocated: an element the daemon deletes while a
/// program still holds it is freed after an RCU grace period instead of being reused.
#[map]
pub static TRACKED_CGROUPS: HashMap<u64, TrackedCgroup> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Cumulative CPU per tracked cgroup, indexed by [`TrackedCgroup::slot`]; read by the
/// daemon with one batch lookup per interval. Same capacity as `TRACKED_CGROUPS`.
#[map]
pub static CGROUP_CPU: Array<CgroupCpu> = Array::with_max_entries(16384, 0);

/// By counter slot: the memory and cpu cgroups whose counters the task iterator reports
/// with the slot (see `iter`). Same capacity as `CGROUP_CPU`. Not pinned: the daemon
/// writes every slot it tracks, adopted ones included, after each load.
#[map]
pub static SLOT_CGROUPS: Array<SlotCgroups> = Array::with_max_entries(16384, 0);

/// By counter slot: the threads that ran in the last two intervals (see
/// [`mark_ran`]), which the cgroup walk reads instead of walking every thread of the
/// slot. Same capacity as `CGROUP_CPU`. Pinned with it: a kept context-switch program
/// goes on filling the sets it was loaded with.
#[map]
pub static RAN_THREADS: Array<RanThreads> = Array::with_max_entries(16384, 0);

/// 1 when the context-switch program and the checkpoint put threads into
/// `RAN_THREADS` (set by the daemon at load where the cgroup walk can read them);
/// in `.rodata`, so that elsewhere the verifier drops the code that does it.
#[unsafe(no_mangle)]
static RAN_SETS_ON: u32 = 0;

/// Values the daemon sets for the programs (see `collector_common::control`).
#[map]
static CONTROL: Array<u64> = Array::with_max_entries(control::COUNT, 0);

/// Counters of what the programs did or had to drop (see `collector_common::stat`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// The tracked cgroup the task belongs to, by its cgroup v1 id first, then cgroup v2;
/// `slot` is [`NO_SLOT`] when it belongs to none. A plain value, not an `Option`: the
/// payload of a `None` is undefined, and LLVM may keep it in a register across a helper
/// call, which the verifier rejects as a read of an uninitialized register.
#[inline(always)]
pub fn tracked_cgroup<A: Access>(task: Task<A>) -> TrackedCgroup {
    let (v1, v2) = task.cgroup_ids();
    if v1 != 0 {
        // SAFETY: the entry is copied out at once; the daemon may delete it meanwhile,
        // and a non-preallocated element is freed only after an RCU grace period.
        if let Some(entry) = unsafe { TRACKED_CGROUPS.get(v1) } {
            return *entry;
        }
    }
    if v2 != 0 {
        // SAFETY: as for `v1` above: copied out at once, freed only after a grace period.
        if let Some(entry) = unsafe { TRACKED_CGROUPS.get(v2) } {
            return *entry;
        }
    }
    TrackedCgroup {
        slot: NO_SLOT,
        _pad: 0,
        since_ns: 0,
    }
}

/// The daemon's current `control::GENERATION`.
#[inline(always)]
pub fn generation() -> u64 {
    CONTROL
        .get(control::GENERATION)
        .copied()
        .unwrap_or_default()
}

/// The task iterator pass the daemon is running and its last pass in which every slot
/// is full (`control::PASS`, `control::FULL_PASS`).
#[inline(always)]
pub fn passes() -> (u64, u64) {
    let pass = CONTROL.get(control::PASS).copied().unwrap_or_default();
    let full = CONTROL.get(control::FULL_PASS).copied().unwrap_or_default();
    (pass, full)
}

/// `control::MARK` (see `collector_common::control`).
#[allow(dead_code, reason = "only the task-storage build has ran sets")]
#[inline(always)]
pub fn mark() -> u64 {
    CONTROL.get(control::MARK).copied().unwrap_or_default()
}

/// Whether the set of `mark() - 1` is complete (`control::RAN_SETS_VALID`).
#[allow(dead_code, reason = "only the task-storage build has ran sets")]
#[inline(always)]
pub fn ran_sets_valid() -> bool {
    CONTROL
        .get(control::RAN_SETS_VALID)
        .is_some_and(|valid| *valid != 0)
}

/// Whether the daemon turned the ran sets on (`RAN_SETS_ON`).
#[inline(always)]
pub fn ran_sets_on() -> bool {
    // SAFETY: a static integer, valid for the program's life; volatile so that the
    // compiler cannot fold the 0 the daemon overrides at load.
    unsafe { core::ptr::read_volatile(&raw const RAN_SETS_ON) != 0 }
}

/// Puts thread `tid` of `slot` into the slot's set of `mark` ([`RanThreads`]), once per
/// mark: `marked_pass` is the thread's own field of its state, written only on its CPU.
/// Costs one compare at the switches after the first of an interval.
#[inline(always)]
pub fn mark_ran(marked_pass: &mut u64, slot: u32, tid: impl FnOnce() -> u32, mark: u64) {
    if *marked_pass == mark {
        return;
    }
    *marked_pass = mark;
    let Some(ran) = RAN_THREADS.get_ptr_mut(slot) else {
        return;
    };
    let parity = (mark & 1) as usize;
    // SAFETY: ran is an element of RAN_THREADS, valid while the program runs; this takes
    // the address of one of its sets' counts (parity is 0 or 1).
    let count = unsafe { &raw mut (*ran).sets[parity].count };
    // Threads on other CPUs add to the same set: each takes its own place.
    // SAFETY: a counter inside that map value.
    let at = unsafe { fetch_add_one(count) };
    if let Some(place) = usize::try_from(at).ok().filter(|&at| at < RAN_SET_CAPACITY) {
        // SAFETY: as above, the place this thread took (in bounds: checked); the cgroup
        // walk reads it only after the checkpoint that follows the next bump of the mark.
        unsafe { (*ran).sets[parity].tids[place] = tid() };
    }
}

/// Atomically adds 1 to `counter` and returns what it held: `BPF_ATOMIC | BPF_FETCH`
/// (5.12+), written out because LLVM emits it only for its v3 CPU, which the object is
/// not built for (the build for 5.10 must not contain it at all: see `Marks::ON`).
///
/// # Safety
/// `counter` must point into a map value, valid while the program runs.
#[inline(always)]
unsafe fn fetch_add_one(counter: *mut u64) -> u64 {
    let mut value: u64 = 1;
    // SAFETY: the caller's contract; the instruction reads and writes only the counter
    // and the register it is given.
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({counter} + 0), {value})",
            value = inout(reg) value,
            counter = in(reg) counter,
            options(nostack),
        );
    }
    value
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, and programs do not preempt each other on a CPU: no
        // other writer.
        unsafe { *counter += 1 };
    }
}
