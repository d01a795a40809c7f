//! The programs' maps. Sizes are set by the daemon at load time.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::bpf_task_storage_get,
    macros::{btf_map, map},
    maps::{HashMap, PerCpuArray},
};
use collector_common::{stat, CgroupCpu, ThreadLast};

use crate::kernel::Task;

/// Tracked task cgroups and their cumulative CPU, keyed by cgroup id. Not preallocated:
/// an element the daemon deletes while a program still holds it is freed after an RCU
/// grace period instead of being reused for another cgroup.
#[map]
static TRACKED_CGROUPS: HashMap<u64, CgroupCpu> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

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
static THREAD_LAST: TaskStorage<ThreadLast> = TaskStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
};

/// The thread's [`ThreadLast`], created zeroed when `create` is set; null when absent
/// (or when the kernel could not allocate it).
#[inline(always)]
pub unsafe fn thread_last(task: Task, create: bool) -> *mut ThreadLast {
    let flags = if create {
        BPF_LOCAL_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    unsafe {
        bpf_task_storage_get(
            (&raw const THREAD_LAST).cast_mut().cast(),
            task.0.cast_mut().cast(),
            ptr::null_mut(),
            flags,
        )
        .cast()
    }
}

/// The tracked cgroup the task belongs to, by its cgroup v1 id first, then cgroup v2.
#[inline(always)]
pub unsafe fn tracked_cgroup(task: Task) -> Option<(u64, *mut CgroupCpu)> {
    let (v1, v2) = unsafe { task.cgroup_ids() };
    if v1 != 0 {
        if let Some(entry) = TRACKED_CGROUPS.get_ptr_mut(v1) {
            return Some((v1, entry));
        }
    }
    if v2 != 0 {
        if let Some(entry) = TRACKED_CGROUPS.get_ptr_mut(v2) {
            return Some((v2, entry));
        }
    }
    None
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}
