//! The cgroup iterator's body, for kernels with the css task iterator (6.7+, kfuncs:
//! see `collector_common::kfunc`): the same records as the task iterator's (`iter`),
//! from a walk over only the tracked cgroups' threads instead of every task on the host,
//! skipping whole slots where nothing is to be reported. Only in the task-storage build
//! (`main.rs`): with the thread hash's lookups and inserts in its loop, the verifier's
//! walk through the program exceeds its limit.

use core::ffi::c_void;

use aya_ebpf::{
    macros::map,
    maps::{Array, RingBuf},
};
use collector_common::{
    full_by_turn, kfunc, stat, RanThreads, SlotCgroups, PF_KTHREAD, RAN_SET_CAPACITY,
};

use crate::{
    account::ThreadStore,
    iter::{session_of, slot_active, try_cgroup_sample, visit_thread, Output, Written},
    kernel::{cgroup_id, Direct, Task},
    maps::{
        count, mark, passes, ran_sets_valid, tracked_cgroup, RAN_THREADS, SLOT_CGROUPS,
        TRACKED_CGROUPS,
    },
};

/// The walk's records (a cgroup iterator cannot resume a walk in a second `read()`, so
/// they cannot go through its seq_file); its size is set by the daemon at load.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Records the walk could not fit in `SAMPLES`, since the programs were loaded: a pass
/// during which it moved lost records. Not in `STATS`, whose pinned shape would change.
#[map]
static RING_DROPS: Array<u64> = Array::with_max_entries(1, 0);

/// # Safety
/// `ctx` must be the `struct bpf_iter__cgroup *` the kernel passes to an `iter/cgroup`
/// program.
///
/// The cgroup iterator's counterpart of `iter::try_tracked_threads`, for kernels with the
/// css task iterator (6.7+): called for each cgroup of a hierarchy, it walks the tasks
/// of the tracked ones only, and of those only where the slot has something to report
/// (so a slot where nothing ran costs one lookup, not a visit per thread). A cgroup
/// iterator cannot resume its walk in a second `read()`, so the records go to the
/// `SAMPLES` ring buffer, not to the seq_file; a record that does not fit is counted
/// in `RING_DROPS`, and the daemon does not trust that pass.
#[inline(always)]
pub unsafe fn try_tracked_cgroup_threads<S: ThreadStore<Direct>>(ctx: *mut c_void) {
    // struct bpf_iter__cgroup { struct bpf_iter_meta *meta; struct cgroup *cgroup; }
    let ctx = ctx as *const *const u8;
    // SAFETY: ctx is a bpf_iter__cgroup (the caller's contract): its first field.
    let meta = unsafe { *ctx };
    // SAFETY: as above: the address of its second field, inside the struct.
    let second = unsafe { ctx.add(1) };
    // SAFETY: as above: its second field, a trusted cgroup (or null at the end).
    let cgroup = unsafe { *second };
    if cgroup.is_null() {
        return;
    }
    // SAFETY: the copy is taken at once; see `tracked_cgroup`.
    let Some(tracked) = (unsafe { TRACKED_CGROUPS.get(cgroup_id::<Direct>(cgroup)) }) else {
        return;
    };
    let slot = tracked.slot;
    let Some(entry) = SLOT_CGROUPS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: meta is the iterator's bpf_iter_meta (the caller's contract).
    let session = unsafe { session_of(meta) };
    let ran = take_ran_set(slot);
    // SAFETY: entry is the slot's element (above).
    let full = unsafe { slot_full(entry, slot) };
    if !full && ran.valid {
        if ran.count as usize <= RAN_SET_CAPACITY {
            count(stat::RAN_SET_SLOTS);
            // SAFETY: entry is the slot's element; cgroup the iterator's trusted cgroup.
            unsafe { walk_ran_set::<S>(cgroup, slot, entry, session, &ran) };
            return;
        }
        count(stat::RAN_SET_OVERFLOWS);
    }
    // SAFETY: entry is the slot's element (above).
    if unsafe { !slot_due(entry, slot, session) } {
        return;
    }
    // SAFETY: entry is the slot's element (above).
    let cgroup_due = unsafe { (*entry).session } != session;
    // SAFETY: entry as above; cgroup is the iterator's trusted cgroup.
    if cgroup_due && unsafe { cgroup_sample_first(cgroup, slot, entry, session) }.is_err() {
        return; // the ring is full: this pass is lost anyway
    }
    // More threads ran than the set holds: they are many of the slot's, and walking
    // them all costs little more than reporting them.
    let overflowed = ran.valid && ran.count != 0;
    let mut walk = CssTasks::new();
    // SAFETY: cgroup is the iterator's trusted cgroup, whose first member is its own
    // css (`struct cgroup { struct cgroup_subsys_state self; ... }`).
    unsafe { walk.start(cgroup) };
    loop {
        let task = walk.next();
        if task.is_null() {
            break;
        }
        // SAFETY: a non-null result of the walk is a trusted task_struct, live until the
        // walk's next step.
        let task = unsafe { Task::<Direct>::new(task) };
        if task.flags() & PF_KTHREAD != 0 || tracked_cgroup(task).slot != slot {
            // A thread of this cgroup attributed elsewhere (by its other hierarchy, on
            // a host with both) is reported with that slot, by that walk.
            continue;
        }
        // SAFETY: entry is the slot's element; the walk's task is live until next().
        let visited =
            unsafe { visit_thread::<S, _>(task, slot, entry, session, overflowed, &RingOutput) };
        if visited.is_err() {
            break; // the ring is full: this pass is lost anyway
        }
    }
    walk.finish();
}

/// What a slot's ran set for this walk held, taken (emptied) by [`take_ran_set`].
struct RanSetTaken {
    /// The daemon says the set is complete (`control::RAN_SETS_VALID`).
    valid: bool,
    /// Threads put in, possibly more than it kept.
    count: u64,
    /// The element, for reading the thread ids kept.
    ran: *const RanThreads,
    parity: usize,
}

/// The slot's set of mark `mark() - 1`, which no program writes any more (the daemon
/// bumped the mark and then checkpointed every CPU), emptied for its next use two marks
/// on: whether or not this walk reads it, so that it never holds stale threads.
#[inline(always)]
fn take_ran_set(slot: u32) -> RanSetTaken {
    let parity = (mark().wrapping_sub(1) & 1) as usize;
    let mut taken = RanSetTaken {
        valid: false,
        count: 0,
        ran: core::ptr::null(),
        parity,
    };
    if let Some(ran) = RAN_THREADS.get_ptr_mut(slot) {
        // SAFETY: an element of an array map, valid while the program runs; this set is
        // written by no program now (above), and one walk runs at a time.
        let count = unsafe { &raw mut (*ran).sets[parity].count };
        // SAFETY: as above.
        taken.count = unsafe { *count };
        // SAFETY: as above.
        unsafe { *count = 0 };
        taken.ran = ran;
        taken.valid = ran_sets_valid();
    }
    taken
}

/// A slot that is not full, whose ran set is complete and kept every thread that ran:
/// its cgroup sample, then each of those threads, found by id (a thread that exited
/// meanwhile is gone; its slot is full at the next pass, from its exit). Nothing else of
/// the slot can have run, so nothing else is looked at.
///
/// # Safety
/// `cgroup` must be the iterator's trusted cgroup, `entry` the slot's element of
/// `SLOT_CGROUPS`, `ran` taken from that slot's element of `RAN_THREADS`.
#[inline(always)]
unsafe fn walk_ran_set<S: ThreadStore<Direct>>(
    cgroup: *const u8,
    slot: u32,
    entry: *mut SlotCgroups,
    session: u64,
    ran: &RanSetTaken,
) {
    // SAFETY: entry is the slot's element (the caller's contract).
    let cgroup_due = unsafe { (*entry).session } != session;
    // SAFETY: as above; cgroup is the iterator's trusted cgroup.
    if cgroup_due && unsafe { cgroup_sample_first(cgroup, slot, entry, session) }.is_err() {
        return; // the ring is full: this pass is lost anyway
    }
    let mut rounds = Numbers::new();
    rounds.start(0, ran.count as i32);
    loop {
        let at = rounds.next();
        if at.is_null() {
            break;
        }
        // SAFETY: a non-null result of bpf_iter_num_next points to the round's number.
        let Some(at) = usize::try_from(unsafe { *at })
            .ok()
            .filter(|&at| at < RAN_SET_CAPACITY)
        else {
            break;
        };
        // SAFETY: ran.ran is the slot's element (the caller's contract), valid while the
        // program runs; `at` is in bounds (checked) and `parity` 0 or 1.
        let tid = unsafe { (*ran.ran).sets[ran.parity].tids[at] };
        let task = task_from_pid(tid);
        if task.is_null() {
            continue; // gone
        }
        // SAFETY: a non-null result of bpf_task_from_pid is a trusted task_struct, held
        // until the release below.
        let thread = unsafe { Task::<Direct>::new(task) };
        // Another thread may have got the id of one that exited: only a thread of this
        // slot is reported with it.
        let visited = if thread.flags() & PF_KTHREAD == 0 && tracked_cgroup(thread).slot == slot {
            // SAFETY: entry is the slot's element; the task is held (above).
            unsafe { visit_thread::<S, _>(thread, slot, entry, session, true, &RingOutput) }
        } else {
            Ok(())
        };
        task_release(task);
        if visited.is_err() {
            break; // the ring is full: this pass is lost anyway
        }
    }
    rounds.finish();
}

/// Whether every thread of slot `slot` is reported in this pass: a pass full for every
/// slot, this slot's full pass, or its turn.
///
/// # Safety
/// `entry` must be the slot's element of `SLOT_CGROUPS`.
#[inline(always)]
unsafe fn slot_full(entry: *mut SlotCgroups, slot: u32) -> bool {
    let (pass, full_pass) = passes();
    // SAFETY: an element of an array map, valid while the program runs; the daemon
    // writes it only between passes.
    pass == full_pass || unsafe { (*entry).full_pass } == pass || full_by_turn(pass, slot)
}

/// Whether slot `slot` has anything to report in this pass: it is full, one of its
/// threads ran ([`slot_active`]), or its cgroup counters are due.
///
/// # Safety
/// `entry` must be the slot's element of `SLOT_CGROUPS`.
#[inline(always)]
unsafe fn slot_due(entry: *mut SlotCgroups, slot: u32, session: u64) -> bool {
    // SAFETY: entry is the slot's element (the caller's contract).
    let full = unsafe { slot_full(entry, slot) };
    // SAFETY: an element of an array map, valid while the program runs.
    let cgroup_due = unsafe { (*entry).session } != session;
    // SAFETY: entry is the slot's element (the caller's contract).
    full || cgroup_due || unsafe { slot_active(entry, slot, session) }
}

/// The slot's cgroup counters, read through the cgroup's first task (the counters are
/// found from a task's `css_set`, as in the task walk); before the walk's loop, and
/// outside any loop, so that the verifier goes through them once. A cgroup whose first
/// task is attributed elsewhere gets no sample this pass (the daemon then reads the
/// control files). `Err` when the ring is full.
///
/// # Safety
/// `cgroup` must be the iterator's trusted cgroup, `entry` the slot's element of
/// `SLOT_CGROUPS`.
#[inline(always)]
unsafe fn cgroup_sample_first(
    cgroup: *const u8,
    slot: u32,
    entry: *mut SlotCgroups,
    session: u64,
) -> Result<(), ()> {
    let mut first = CssTasks::new();
    // SAFETY: the caller's contract (see `try_tracked_cgroup_threads`).
    unsafe { first.start(cgroup) };
    let task = first.next();
    let mut written = Ok(());
    if !task.is_null() {
        // SAFETY: a non-null result of the walk is a trusted task_struct, live until the
        // walk's next step.
        let task = unsafe { Task::<Direct>::new(task) };
        if task.flags() & PF_KTHREAD == 0 && tracked_cgroup(task).slot == slot {
            // SAFETY: entry is the slot's element (the caller's contract).
            match unsafe { try_cgroup_sample(task, slot, entry, &RingOutput) } {
                Written::Yes => {
                    // SAFETY: as above: an aligned word of the element.
                    unsafe { (*entry).session = session };
                }
                Written::Nothing => {}
                Written::Full => written = Err(()),
            }
        }
    }
    first.finish();
    written
}

/// The `SAMPLES` ring buffer, which the daemon drains after the pass.
struct RingOutput;

impl Output for RingOutput {
    const CGROUP_SAMPLE_PER_THREAD: bool = false;

    #[inline(always)]
    fn write<T>(&self, record: &T) -> Result<(), ()> {
        SAMPLES.output::<T>(record, 0).map_err(|_| dropped())
    }
}

/// The css task iterator (`bpf_iter_css_task_*`, kfuncs of 6.7+, called through the
/// placeholders the daemon patches: see `collector_common::kfunc`). Its state lives on
/// the program's stack, where the verifier tracks it from `start` to `finish`.
#[repr(C, align(8))]
struct CssTasks {
    /// `struct bpf_iter_css_task { __u64 __opaque[1]; }`
    opaque: [u64; 1],
}

impl CssTasks {
    #[inline(always)]
    fn new() -> Self {
        CssTasks { opaque: [0] }
    }

    /// # Safety
    /// `css` must be a trusted `struct cgroup_subsys_state`.
    #[inline(always)]
    unsafe fn start(&mut self, css: *const u8) {
        // SAFETY: the placeholder becomes a call of the kfunc with this prototype,
        // int bpf_iter_css_task_new(struct bpf_iter_css_task *, struct
        // cgroup_subsys_state *, unsigned int flags); a program whose placeholder was not
        // patched is rejected by the verifier, never run.
        let new: unsafe extern "C" fn(*mut CssTasks, *const u8, u32) -> i32 =
            unsafe { core::mem::transmute(kfunc::ITER_CSS_TASK_NEW as usize) };
        // Flags 0: every thread, not only leaders. An error leaves the iterator empty
        // (next() returns null), which the verifier requires us to handle anyway.
        // SAFETY: self is the iterator's stack state; css per the caller's contract.
        unsafe { new(self, css, 0) };
    }

    /// The next task, or null at the end. A pointer, not an `Option`: LLVM may read the
    /// undefined payload of a `None`, which the verifier rejects as a read of
    /// uninitialized stack.
    #[inline(always)]
    fn next(&mut self) -> *const u8 {
        // SAFETY: as in `start`, for struct task_struct *bpf_iter_css_task_next(struct
        // bpf_iter_css_task *).
        let next: unsafe extern "C" fn(*mut CssTasks) -> *const u8 =
            unsafe { core::mem::transmute(kfunc::ITER_CSS_TASK_NEXT as usize) };
        // SAFETY: self is the iterator's state, started.
        unsafe { next(self) }
    }

    /// Ends the walk. By reference: the state must not be copied (the verifier rejects
    /// any read of it but the kfuncs').
    #[inline(always)]
    fn finish(&mut self) {
        // SAFETY: as in `start`, for void bpf_iter_css_task_destroy(struct
        // bpf_iter_css_task *).
        let destroy: unsafe extern "C" fn(*mut CssTasks) =
            unsafe { core::mem::transmute(kfunc::ITER_CSS_TASK_DESTROY as usize) };
        // SAFETY: self is the iterator's state, started.
        unsafe { destroy(self) };
    }
}

/// The open-coded number loop (`bpf_iter_num_*`, kfuncs of 6.4+, called through the
/// placeholders the daemon patches): the verifier checks its body once, where a plain
/// bounded loop would be checked once per round. Its state lives on the stack.
#[repr(C, align(8))]
struct Numbers {
    /// `struct bpf_iter_num { __u64 __opaque[1]; }`
    opaque: [u64; 1],
}

impl Numbers {
    #[inline(always)]
    fn new() -> Self {
        Numbers { opaque: [0] }
    }

    /// Starts the loop over `start..end`. In place: the state must not be copied once
    /// started (the verifier rejects any read of it but the kfuncs').
    #[inline(always)]
    fn start(&mut self, start: i32, end: i32) {
        // SAFETY: the placeholder becomes a call of the kfunc with this prototype,
        // int bpf_iter_num_new(struct bpf_iter_num *, int start, int end); a program
        // whose placeholder was not patched is rejected by the verifier, never run.
        let new: unsafe extern "C" fn(*mut Numbers, i32, i32) -> i32 =
            unsafe { core::mem::transmute(kfunc::ITER_NUM_NEW as usize) };
        // An error (end below start, or too far) leaves the loop empty.
        // SAFETY: self is the loop's stack state.
        unsafe { new(self, start, end) };
    }

    /// A pointer to the next number, or null at the end.
    #[inline(always)]
    fn next(&mut self) -> *const i32 {
        // SAFETY: as in `new`, for int *bpf_iter_num_next(struct bpf_iter_num *).
        let next: unsafe extern "C" fn(*mut Numbers) -> *const i32 =
            unsafe { core::mem::transmute(kfunc::ITER_NUM_NEXT as usize) };
        // SAFETY: self is the loop's state, started.
        unsafe { next(self) }
    }

    /// Ends the loop.
    #[inline(always)]
    fn finish(&mut self) {
        // SAFETY: as in `new`, for void bpf_iter_num_destroy(struct bpf_iter_num *).
        let destroy: unsafe extern "C" fn(*mut Numbers) =
            unsafe { core::mem::transmute(kfunc::ITER_NUM_DESTROY as usize) };
        // SAFETY: self is the loop's state, started.
        unsafe { destroy(self) };
    }
}

/// The thread with id `tid` in the initial PID namespace, held until
/// [`task_release`]; null when there is none.
#[inline(always)]
fn task_from_pid(tid: u32) -> *const u8 {
    // SAFETY: as in `Numbers::new`, for struct task_struct *bpf_task_from_pid(s32 pid).
    let from_pid: unsafe extern "C" fn(i32) -> *const u8 =
        unsafe { core::mem::transmute(kfunc::TASK_FROM_PID as usize) };
    // SAFETY: takes any id; the verifier makes the caller release a non-null result.
    unsafe { from_pid(tid as i32) }
}

/// Drops the reference [`task_from_pid`] took.
#[inline(always)]
fn task_release(task: *const u8) {
    // SAFETY: as in `Numbers::new`, for void bpf_task_release(struct task_struct *).
    let release: unsafe extern "C" fn(*const u8) =
        unsafe { core::mem::transmute(kfunc::TASK_RELEASE as usize) };
    // SAFETY: task is a non-null result of task_from_pid not released yet (the caller).
    unsafe { release(task) };
}

/// Counts a record that did not fit in `SAMPLES`.
#[inline(always)]
fn dropped() {
    if let Some(drops) = RING_DROPS.get_ptr_mut(0) {
        // SAFETY: an element of an array map, valid while the program runs; one pass
        // runs at a time, and only this program writes it.
        unsafe { *drops += 1 };
    }
}
