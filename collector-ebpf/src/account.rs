//! Adding a thread's CPU time to its tracked cgroup's counters.
//!
//! Called for the thread being switched out at every context switch, and for the thread
//! running on a CPU when the daemon checkpoints that CPU. Both run on the thread's own
//! CPU with interrupts off, so a thread's [`ThreadState`] never has two writers at once.
//!
//! The common case costs one task-storage lookup and two compares: the thread's cached
//! attribution (slot, `css_set`, generation) is still valid. Only a thread that is new,
//! moved to another cgroup, or whose cached generation is older than the daemon's looks
//! its cgroup up in `TRACKED_CGROUPS`.

use aya_ebpf::EbpfContext;
use collector_common::{
    stat, thread_flags, CgroupCpu, ThreadState, TrackedCgroup, NO_SLOT, PF_KTHREAD,
};

use crate::{
    kernel::{CpuTimes, Task},
    maps::{count, generation, thread_state, tracked_cgroup, CGROUP_CPU},
};

/// Adds what `task` ran since it was last accounted to its tracked cgroup. `exiting`:
/// this is the thread's final switch (its CPU time is final).
#[inline(always)]
pub unsafe fn account<C: EbpfContext>(ctx: &C, task: Task, exiting: bool) {
    if unsafe { task.flags() } & PF_KTHREAD != 0 {
        return; // kernel threads and the idle tasks are never in an allocation
    }
    let generation = generation();
    let css_set = unsafe { task.css_set() };
    let mut state = unsafe { thread_state(task, false) };
    if state.is_null()
        || unsafe { (*state).generation != generation || (*state).css_set != css_set }
    {
        state = unsafe { resolve(ctx, task, state, css_set, generation, exiting) };
        if state.is_null() {
            return;
        }
    }
    let state = unsafe { &mut *state };
    if state.slot == NO_SLOT {
        return;
    }
    let Some(cgroup) = CGROUP_CPU.get_ptr_mut(state.slot) else {
        return;
    };
    let now = unsafe { task.cpu_times() };
    let delta = now.since(&CpuTimes::accounted(state));
    now.store(state);
    unsafe { add(cgroup, &delta, exiting) };
    if exiting {
        count(stat::EXITS_FOLDED);
    }
}

/// The slow path: looks the thread's cgroup up and caches the answer in its storage
/// (created when missing). Returns null when no storage could be had.
#[inline(always)]
unsafe fn resolve<C: EbpfContext>(
    ctx: &C,
    task: Task,
    state: *mut ThreadState,
    css_set: u64,
    generation: u64,
    exiting: bool,
) -> *mut ThreadState {
    count(stat::LOOKUPS);
    let tracked = unsafe { tracked_cgroup(task) };
    let state = if state.is_null() {
        let created = unsafe { thread_state(task, true) };
        if created.is_null() {
            // Out of memory (rare, and never on the common path): say so with the thread.
            count(stat::STORAGE_FAILED);
            aya_log_ebpf::warn!(
                ctx,
                "no task storage for thread {}: its CPU time is not attributed",
                unsafe { task.pid() }
            );
            return created;
        }
        created
    } else {
        state
    };
    let s = unsafe { &mut *state };
    s.css_set = css_set;
    s.generation = generation;
    match tracked {
        None => {
            s.slot = NO_SLOT;
            s.flags &= !thread_flags::ACCOUNTED;
        }
        Some(TrackedCgroup { slot, since_ns, .. }) => {
            if s.flags & thread_flags::ACCOUNTED == 0 {
                // First time in a tracked cgroup: a thread born since tracking began is
                // counted from birth; an older one from now (its first sample is 0).
                let base = if unsafe { task.start_time() } >= since_ns {
                    CpuTimes::ZERO
                } else {
                    if exiting {
                        count(stat::EXITS_UNSEEN);
                    }
                    unsafe { task.cpu_times() }
                };
                base.store(s);
                s.flags |= thread_flags::ACCOUNTED;
            }
            // A thread that moved here from another tracked cgroup keeps its baseline:
            // what it ran since its last switch is added here.
            s.slot = slot;
        }
    }
    state
}

#[inline(always)]
unsafe fn add(cgroup: *mut CgroupCpu, delta: &CpuTimes, exiting: bool) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).run_ns, delta.run);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).user_ns, delta.user);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).system_ns, delta.system);
        if exiting {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).exited_threads, 1);
        }
    }
}
