//! Adding a thread's CPU time to its tracked cgroup's counters.
//!
//! Called for the thread being switched out at every context switch, and for the thread
//! running on a CPU when the daemon checkpoints that CPU. Both run on the thread's own
//! CPU with interrupts off, so a thread's [`ThreadState`] never has two writers at once.
//!
//! The common case costs one state lookup and two compares: the thread's cached
//! attribution (slot, `css_set`, generation) is still valid. Only a thread that is new,
//! moved to another cgroup, or whose cached generation is older than the daemon's looks
//! its cgroup up in `TRACKED_CGROUPS`.
//!
//! Where the state lives is the [`ThreadStore`]: task storage where the kernel has it
//! for tracing programs (5.11+), a hash map keyed by task otherwise.

use aya_ebpf::EbpfContext;
use collector_common::{
    stat, thread_flags, CgroupCpu, ThreadState, TrackedCgroup, NO_SLOT, PF_KTHREAD, TASK_DEAD,
};

use crate::{
    kernel::{Access, CpuTimes, Task},
    maps::{count, generation, mark, mark_ran, ran_sets_on, tracked_cgroup, CGROUP_CPU},
};

/// Whether a program puts the threads it accounts into their slot's ran set (see
/// `maps::mark_ran`), and into which.
pub trait Marks {
    /// False in the build for kernels without the cgroup walk (the set's atomic
    /// fetch-and-add is 5.12+; 5.10 refuses it even where it cannot run).
    const ON: bool;
    /// The mark of the set.
    fn target() -> u64;
}

/// Puts no thread into a set.
#[allow(dead_code, reason = "each of the two builds uses its own")]
pub struct NoMarks;

impl Marks for NoMarks {
    const ON: bool = false;
    #[inline(always)]
    fn target() -> u64 {
        0
    }
}

/// At a context switch: the set of the current mark, which the walk after the next
/// bump reads.
#[allow(dead_code, reason = "each of the two builds uses its own")]
pub struct SwitchMarks;

impl Marks for SwitchMarks {
    const ON: bool = true;
    #[inline(always)]
    fn target() -> u64 {
        mark()
    }
}

/// At a checkpoint, which the daemon runs just after it bumps the mark: the set the
/// next walk reads, since the thread is running in the interval that walk reports.
#[allow(dead_code, reason = "each of the two builds uses its own")]
pub struct CheckpointMarks;

impl Marks for CheckpointMarks {
    const ON: bool = true;
    #[inline(always)]
    fn target() -> u64 {
        // Before the daemon's first bump, the switches' own (so that nothing goes into
        // a set twice an interval where no walk reads them).
        mark().saturating_sub(1)
    }
}

/// Where each thread's [`ThreadState`] is kept, for tasks read with access `A`.
pub trait ThreadStore<A: Access> {
    /// The thread's state; null when it has none yet.
    fn get(task: Task<A>) -> *mut ThreadState;
    /// Makes the thread's state, zeroed; null when there is no room.
    fn create(task: Task<A>) -> *mut ThreadState;
    /// The thread has switched out for the last time.
    fn release(task: Task<A>);
}

/// The thread being switched out: its state tells whether this is its final switch.
#[inline(always)]
pub fn account_switch<A: Access, S: ThreadStore<A>, M: Marks, C: EbpfContext>(
    ctx: &C,
    task: Task<A>,
) {
    let exiting = task.state() == TASK_DEAD;
    account::<A, S, M, C>(ctx, task, exiting);
    if exiting {
        S::release(task);
    }
}

/// Adds what `task` ran since it was last accounted to its tracked cgroup. `exiting`:
/// this is the thread's final switch (its CPU time is final). A thread of a tracked
/// cgroup goes into its slot's ran set of `M` (once per mark).
#[inline(always)]
pub fn account<A: Access, S: ThreadStore<A>, M: Marks, C: EbpfContext>(
    ctx: &C,
    task: Task<A>,
    exiting: bool,
) {
    if task.flags() & PF_KTHREAD != 0 {
        return; // kernel threads and the idle tasks are never in an allocation
    }
    let generation = generation();
    let css_set = task.css_set();
    let mut state = S::get(task);
    if state.is_null() || {
        // SAFETY: a non-null state is this thread's, written only on its own CPU (see the
        // module comment), and valid while the program runs.
        let cached = unsafe { &*state };
        cached.generation != generation || cached.css_set != css_set
    } {
        state = resolve::<A, S, C>(ctx, task, state, css_set, generation, exiting);
        if state.is_null() {
            return;
        }
    }
    // SAFETY: as above; non-null here.
    let state = unsafe { &mut *state };
    if state.slot == NO_SLOT {
        return;
    }
    let Some(cgroup) = CGROUP_CPU.get_ptr_mut(state.slot) else {
        return;
    };
    let now = task.cpu_times();
    let delta = now.since(&CpuTimes::accounted(state));
    now.store(state);
    add(cgroup, &delta);
    if M::ON && ran_sets_on() {
        mark_ran(
            &mut state.marked_pass,
            state.slot,
            || task.pid(),
            M::target(),
        );
    }
    if exiting {
        count(stat::EXITS_FOLDED);
        // SAFETY: cgroup is an element of CGROUP_CPU, valid while the program runs.
        let exited_threads = unsafe { &raw mut (*cgroup).exited_threads };
        // SAFETY: a counter inside that map value.
        unsafe { add_one(exited_threads) };
        if task.pid() == task.tgid() {
            // SAFETY: as above.
            let processes_exited = unsafe { &raw mut (*cgroup).processes_exited };
            // SAFETY: a counter inside that map value.
            unsafe { add_one(processes_exited) };
        }
    }
}

/// The slow path: looks the thread's cgroup up and caches the answer in its state
/// (created when missing). Returns null when no state could be had.
#[inline(always)]
fn resolve<A: Access, S: ThreadStore<A>, C: EbpfContext>(
    ctx: &C,
    task: Task<A>,
    state: *mut ThreadState,
    css_set: u64,
    generation: u64,
    exiting: bool,
) -> *mut ThreadState {
    count(stat::LOOKUPS);
    let tracked = tracked_cgroup(task);
    let state = if state.is_null() {
        let created = S::create(task);
        if created.is_null() {
            // Out of room (rare, and never on the common path). It matters only for a
            // thread of a tracked cgroup: say so with the thread.
            if tracked.slot != NO_SLOT {
                count(stat::STORAGE_FAILED);
                aya_log_ebpf::warn!(
                    ctx,
                    "no thread state for thread {}: its CPU time is not attributed",
                    task.pid()
                );
            }
            return created;
        }
        created
    } else {
        state
    };
    // SAFETY: non-null, and this thread's (see `account`).
    let s = unsafe { &mut *state };
    s.css_set = css_set;
    s.generation = generation;
    match tracked {
        TrackedCgroup { slot: NO_SLOT, .. } => {
            s.slot = NO_SLOT;
            s.flags &= !thread_flags::ACCOUNTED;
        }
        TrackedCgroup { slot, since_ns, .. } => {
            if s.flags & thread_flags::ACCOUNTED == 0 {
                // First time in a tracked cgroup: a thread born since tracking began is
                // counted from birth; an older one from now (its first sample is 0).
                let base = if task.start_time() >= since_ns {
                    if task.pid() == task.tgid() {
                        if let Some(cgroup) = CGROUP_CPU.get_ptr_mut(slot) {
                            // SAFETY: an element of CGROUP_CPU, valid while the
                            // program runs.
                            let started = unsafe { &raw mut (*cgroup).processes_started };
                            // SAFETY: a counter inside that map value.
                            unsafe { add_one(started) };
                        }
                    }
                    CpuTimes::ZERO
                } else {
                    if exiting {
                        count(stat::EXITS_UNSEEN);
                    }
                    task.cpu_times()
                };
                base.store(s);
                s.flags |= thread_flags::ACCOUNTED;
            }
            // A thread that moved here from another tracked cgroup keeps its baseline:
            // what it ran since its last switch is added here; it goes into this
            // slot's set too.
            if s.slot != slot {
                s.marked_pass = 0;
            }
            s.slot = slot;
        }
    }
    state
}

/// Adds `delta` to the cgroup's counters. The tick-sampled user and system times
/// change only at a tick and the wait only after a wait, so most switches skip those
/// atomic adds (each a locked instruction on a cache line other CPUs share).
#[inline(always)]
fn add(cgroup: *mut CgroupCpu, delta: &CpuTimes) {
    // SAFETY: cgroup is an element of CGROUP_CPU (from get_ptr_mut), valid while the
    // program runs; this takes the address of one of its counters.
    let run = unsafe { &raw mut (*cgroup).run_ns };
    // SAFETY: a counter inside that map value.
    unsafe { add_to(run, delta.run) };
    if delta.user != 0 {
        // SAFETY: as above.
        let user = unsafe { &raw mut (*cgroup).user_ns };
        // SAFETY: as above.
        unsafe { add_to(user, delta.user) };
    }
    if delta.system != 0 {
        // SAFETY: as above.
        let system = unsafe { &raw mut (*cgroup).system_ns };
        // SAFETY: as above.
        unsafe { add_to(system, delta.system) };
    }
    if delta.wait != 0 {
        // SAFETY: as above.
        let wait = unsafe { &raw mut (*cgroup).wait_ns };
        // SAFETY: as above.
        unsafe { add_to(wait, delta.wait) };
    }
}

/// Atomically adds `value` to a counter that threads on other CPUs add to as well.
///
/// # Safety
/// `counter` must point into a map value, valid while the program runs.
#[inline(always)]
unsafe fn add_to(counter: *mut u64, value: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
    // SAFETY: the caller's contract.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(counter, value) };
}

/// # Safety
/// As [`add_to`].
#[inline(always)]
unsafe fn add_one(counter: *mut u64) {
    // SAFETY: the caller's contract.
    unsafe { add_to(counter, 1) };
}
