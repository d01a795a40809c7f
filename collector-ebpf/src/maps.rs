//! The programs' maps. Sizes of the bounded ones are set by the daemon at load time.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::bpf_task_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray},
};
use collector_common::{control, stat, CgroupCpu, ThreadState, TrackedCgroup};

use crate::kernel::Task;

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

/// Values the daemon sets for the programs (see `collector_common::control`).
#[map]
static CONTROL: Array<u64> = Array::with_max_entries(control::COUNT, 0);

/// Counters of what the programs did or had to drop (see `collector_common::stat`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// A BTF-defined `BPF_MAP_TYPE_TASK_STORAGE` map (aya-ebpf 0.2 has no wrapper for it):
/// the fields are placeholders whose types the loader reads from BTF.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: only ever passed to helpers by address; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

#[btf_map]
static THREAD_STATE: TaskStorage<ThreadState> = TaskStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

/// The thread's [`ThreadState`], created zeroed when `create` is set; null when absent
/// (or when the kernel could not allocate it).
#[inline(always)]
pub unsafe fn thread_state(task: Task, create: bool) -> *mut ThreadState {
    let flags = if create {
        BPF_LOCAL_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    unsafe {
        bpf_task_storage_get(
            (&raw const THREAD_STATE).cast_mut().cast(),
            task.0.cast_mut().cast(),
            ptr::null_mut(),
            flags,
        )
        .cast()
    }
}

/// The tracked cgroup the task belongs to, by its cgroup v1 id first, then cgroup v2.
#[inline(always)]
pub unsafe fn tracked_cgroup(task: Task) -> Option<TrackedCgroup> {
    let (v1, v2) = unsafe { task.cgroup_ids() };
    if v1 != 0 {
        if let Some(entry) = unsafe { TRACKED_CGROUPS.get(v1) } {
            return Some(*entry);
        }
    }
    if v2 != 0 {
        if let Some(entry) = unsafe { TRACKED_CGROUPS.get(v2) } {
            return Some(*entry);
        }
    }
    None
}

/// The daemon's current `control::GENERATION`.
#[inline(always)]
pub fn generation() -> u64 {
    CONTROL
        .get(control::GENERATION)
        .copied()
        .unwrap_or_default()
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}
