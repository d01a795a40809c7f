//! The maps every build of the programs has. Sizes of the bounded ones are set by the
//! daemon at load time. Where a thread's own state is kept differs by kernel: see
//! `store_task` and `store_hash`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use collector_common::{control, stat, CgroupCpu, SlotCgroups, TrackedCgroup, NO_SLOT};

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

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, and programs do not preempt each other on a CPU: no
        // other writer.
        unsafe { *counter += 1 };
    }
}
