//! Thread state in task storage (`BPF_MAP_TYPE_TASK_STORAGE`, tracing programs since
//! 5.11): the kernel frees it with the `task_struct`, so a new thread, whatever PID it
//! gets, starts from nothing and nothing needs deleting.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::bpf_task_storage_get,
    macros::btf_map,
};
use collector_common::ThreadState;

use crate::{
    account::ThreadStore,
    kernel::{Direct, Task},
};

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

pub struct TaskStore;

#[inline(always)]
fn storage(task: Task<Direct>, flags: u64) -> *mut ThreadState {
    // SAFETY: THREAD_STATE is a task storage map and task a BTF task_struct pointer (the
    // Task<Direct> invariant), which is what the helper takes; it returns the thread's
    // storage or null.
    unsafe {
        bpf_task_storage_get(
            (&raw const THREAD_STATE).cast_mut().cast(),
            task.as_ptr().cast_mut().cast(),
            ptr::null_mut(),
            flags,
        )
        .cast()
    }
}

impl ThreadStore<Direct> for TaskStore {
    #[inline(always)]
    fn get(task: Task<Direct>) -> *mut ThreadState {
        storage(task, 0)
    }

    #[inline(always)]
    fn create(task: Task<Direct>) -> *mut ThreadState {
        storage(task, BPF_LOCAL_STORAGE_GET_F_CREATE as u64)
    }

    #[inline(always)]
    fn release(_task: Task<Direct>) {
        // Freed by the kernel with the task.
    }
}
