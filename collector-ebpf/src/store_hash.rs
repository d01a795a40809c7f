//! Thread state in a preallocated hash map keyed by `task_struct` address, for kernels
//! whose tracing programs have no task storage (5.10). Exact like task storage: the
//! entry is deleted at the thread's final switch, and an entry whose `start_ns` is not
//! the thread's (a new task got a freed address whose deletion was missed) is reset, so
//! a new thread always starts from nothing.
//!
//! Preallocated because an allocation inside `sched_switch` could wake kswapd under the
//! runqueue lock. Its capacity (the daemon's `ebpf.max_threads`) bounds the user threads
//! of the whole host; a thread that finds it full is counted (`STORAGE_FAILED`) when it
//! belongs to a tracked cgroup.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::HashMap};
use collector_common::{ThreadEntry, ThreadState};

use crate::{
    account::ThreadStore,
    kernel::{Access, Task},
};

#[map]
static THREAD_STATE_HASH: HashMap<u64, ThreadEntry> = HashMap::with_max_entries(65536, 0);

pub struct HashStore;

impl<A: Access> ThreadStore<A> for HashStore {
    #[inline(always)]
    fn get(task: Task<A>) -> *mut ThreadState {
        let Some(entry) = THREAD_STATE_HASH.get_ptr_mut(task.address()) else {
            return core::ptr::null_mut();
        };
        let start_ns = task.start_time();
        // SAFETY: a preallocated element, only written on the owning thread's CPU;
        // valid while the program runs.
        let entry = unsafe { &mut *entry };
        if entry.start_ns != start_ns {
            *entry = ThreadEntry {
                start_ns,
                ..ThreadEntry::default()
            };
        }
        &raw mut entry.state
    }

    #[inline(always)]
    fn create(task: Task<A>) -> *mut ThreadState {
        let entry = ThreadEntry {
            start_ns: task.start_time(),
            ..ThreadEntry::default()
        };
        if THREAD_STATE_HASH
            .insert(task.address(), entry, BPF_NOEXIST as u64)
            .is_err()
        {
            return core::ptr::null_mut();
        }
        match THREAD_STATE_HASH.get_ptr_mut(task.address()) {
            Some(entry) => {
                // SAFETY: as in `get`.
                unsafe { &raw mut (*entry).state }
            }
            None => core::ptr::null_mut(),
        }
    }

    #[inline(always)]
    fn release(task: Task<A>) {
        let _ = THREAD_STATE_HASH.remove(task.address());
    }
}
