//! The task iterator's body: one pass over every task on the host, reporting the threads
//! of tracked cgroups. Threads of other cgroups (and kernel threads) are skipped in the
//! kernel, and so is a tracked thread that has not run since its last record: its
//! accounted `run_ns` in its
//! [`ThreadState`](collector_common::ThreadState) (which the context-switch program moves at
//! every switch, and the checkpoint for a thread on a CPU) and its cgroup are what that
//! record saw, so the daemon's copy of the record is still exact. A slot the daemon marks
//! full for this pass (`SlotCgroups::full_pass`) has every thread reported: after an exit
//! or a move of its memory, at its turn (`full_by_turn`), or when the daemon has no
//! records to carry.
//!
//! Which tracked cgroup a thread is in is looked up from its cgroups (the chain from its
//! `css_set` to the cgroup's id, and a hash lookup), not from the attribution the
//! context-switch program caches: measured at 10,000 processes in 1,000 tasks, the lookup
//! is the cheaper of the two, because the objects it reads are shared by every thread of a
//! cgroup and stay in cache through the pass.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use collector_common::{
    cgroup_parts, full_by_turn, sample_flags, stat, CgroupSample, SlotCgroups, ThreadSample,
    NO_SLOT, PF_KTHREAD,
};

use crate::{
    account::ThreadStore,
    kernel::{Direct, Task},
    maps::{count, passes, tracked_cgroup, CGROUP_CPU, SLOT_CGROUPS},
};

/// # Safety
/// `ctx` must be the `struct bpf_iter__task *` the kernel passes to an `iter/task`
/// program.
#[inline(always)]
pub unsafe fn try_tracked_threads<S: ThreadStore<Direct>>(ctx: *mut c_void) {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    let ctx = ctx as *const *const u8;
    // SAFETY: ctx is a bpf_iter__task (the caller's contract): its first field.
    let meta = unsafe { *ctx };
    // SAFETY: as above: the address of its second field, inside the struct.
    let second = unsafe { ctx.add(1) };
    // SAFETY: as above: its second field.
    let task = unsafe { *second };
    if task.is_null() {
        return; // end of iteration
    }
    // SAFETY: the iterator's task is a BTF task_struct, live for this call.
    let task = unsafe { Task::<Direct>::new(task) };
    if task.flags() & PF_KTHREAD != 0 {
        return;
    }
    let slot = tracked_cgroup(task).slot;
    if slot == NO_SLOT {
        return;
    }
    let Some(entry) = SLOT_CGROUPS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: meta is the iterator's bpf_iter_meta (the caller's contract).
    let session = unsafe { session_of(meta) };
    // SAFETY: meta is the iterator's bpf_iter_meta, whose first field is its seq_file.
    let seq = unsafe { *(meta as *const *mut aya_ebpf::bindings::seq_file) };
    let out = SeqOutput(seq);
    // A full buffer is already counted, and the kernel shows this task again at the
    // next read().
    // SAFETY: entry is the slot's element; the iterator's task is live for this call.
    let _ = unsafe { visit_thread::<S, _>(task, slot, entry, session, false, &out) };
}

/// # Safety
/// `meta` must be an iterator's `struct bpf_iter_meta { seq, session_id, seq_num }`.
#[inline(always)]
pub(crate) unsafe fn session_of(meta: *const u8) -> u64 {
    // SAFETY: the caller's contract: the address of its second field, inside it.
    let session_id = unsafe { meta.add(8) } as *const u64;
    // SAFETY: as above: its u64 session_id.
    unsafe { *session_id }
}

/// Reports one thread of slot `slot` if it must be (see the module's text), and the
/// slot's cgroup counters at its first thread in the session; `Err` when `out` had no
/// room (the thread's state then still says it is unreported). `ran`: the thread is
/// known to have run since the walk before (it is in its slot's ran set), whatever the
/// slot's counter says, which is then not looked at.
///
/// # Safety
/// `entry` must be the slot's element of `SLOT_CGROUPS`, `task` a live BTF task.
#[inline(always)]
pub(crate) unsafe fn visit_thread<S: ThreadStore<Direct>, O: Output>(
    task: Task<Direct>,
    slot: u32,
    entry: *mut SlotCgroups,
    session: u64,
    ran: bool,
    out: &O,
) -> Result<(), ()> {
    let (pass, full_pass) = passes();
    // SAFETY: (this read and the next) an element of an array map, valid while the
    // program runs; the daemon writes it only between passes.
    let full =
        pass == full_pass || unsafe { (*entry).full_pass } == pass || full_by_turn(pass, slot);
    // SAFETY: as above.
    let cgroup_due = O::CGROUP_SAMPLE_PER_THREAD && unsafe { (*entry).session } != session;
    // SAFETY: entry is the slot's element (above).
    let active = ran || unsafe { slot_active(entry, slot, session) };
    if !full && !active && !cgroup_due {
        return Ok(()); // no thread of the slot ran since the last pass
    }
    let tid = task.pid();
    let mut state = core::ptr::null_mut();
    // What the thread's state says, read once: the switch program may move it meanwhile
    // (it runs on the thread's CPU), which at worst reports the thread again next pass.
    // Plain values, not an `Option`: LLVM may read the undefined payload of a `None`,
    // which 5.10's verifier rejects as a read of uninitialized stack.
    let mut run_ns = 0;
    let mut unchanged = false;
    if full || active {
        state = S::get(task);
        if state.is_null() {
            // A thread that has not switched since the programs were loaded: the state
            // is made here, so that from its next pass on it is reported only once it
            // ran.
            state = S::create(task);
        }
        if !state.is_null() {
            // SAFETY: a non-null state is this thread's, valid while the program runs.
            let s = unsafe { &*state };
            run_ns = s.run_ns;
            unchanged =
                s.reported_tid == tid && s.reported_run_ns == run_ns && s.reported_slot == slot;
        }
    }
    // In a slot where nothing ran, nothing is reported (nor looked at: `state` is null
    // there, and not marked).
    let report = full || (active && !unchanged);
    if !report && !cgroup_due {
        return Ok(());
    }
    if report && out.write(&thread_sample(task, tid, slot)).is_err() {
        return Err(());
    }
    if cgroup_due {
        // SAFETY: entry is the slot's element (the caller's contract).
        match unsafe { try_cgroup_sample(task, slot, entry, out) } {
            Written::Yes => {
                // SAFETY: as above: an aligned word of the element.
                unsafe { (*entry).session = session };
            }
            Written::Nothing => {}
            // The output filled after the thread's own record: the thread is not marked
            // reported yet (with the seq_file, the kernel drops what this task wrote and
            // shows it again at the next read(), which writes both again).
            Written::Full => return Err(()),
        }
    }
    // Only a record moves what the state says was reported (an unchanged thread's
    // fields already hold these values).
    if report && !state.is_null() {
        // SAFETY: non-null, this thread's (above); these fields are the iterator's alone.
        let s = unsafe { &mut *state };
        s.reported_run_ns = run_ns;
        s.reported_slot = slot;
        s.reported_tid = tid;
    }
    Ok(())
}

/// Whether any thread of `slot` ran since the previous pass: its CPU counter moved
/// (the switch program adds to it at every switch of one of its threads, and the
/// checkpoint for the threads on a CPU, just before the pass). Decided at the slot's
/// first thread in the pass, so that every thread of the slot gets the same answer; a
/// thread that runs after that is seen by the next pass, whose answer that run changes.
///
/// # Safety
/// `entry` must be the slot's element of `SLOT_CGROUPS`.
#[inline(always)]
pub(crate) unsafe fn slot_active(entry: *mut SlotCgroups, slot: u32, session: u64) -> bool {
    // SAFETY: (every access below) an element of an array map, valid while the program
    // runs; these fields are the iterator's, and one pass runs at a time.
    if unsafe { (*entry).decided_session } == session {
        // SAFETY: as above.
        return unsafe { (*entry).active } != 0;
    }
    let run_ns = CGROUP_CPU.get(slot).map_or(0, |c| c.run_ns);
    // SAFETY: as above.
    let active = unsafe { (*entry).seen_run_ns } != run_ns;
    // SAFETY: as above.
    unsafe { (*entry).seen_run_ns = run_ns };
    // SAFETY: as above.
    unsafe { (*entry).active = u64::from(active) };
    // SAFETY: as above.
    unsafe { (*entry).decided_session = session };
    active
}

/// The record of one thread of slot `slot`, with its process's figures.
#[inline(always)]
fn thread_sample(task: Task<Direct>, tid: u32, slot: u32) -> ThreadSample {
    let now = task.cpu_times();
    let tgid = task.tgid();
    let exited = task.exited_threads_times();
    let mut sample = ThreadSample {
        tid,
        tgid,
        run_ns: now.run,
        user_ns: now.user,
        system_ns: now.system,
        start_ns: task.start_time(),
        exited_run_ns: exited.run,
        exited_user_ns: exited.user,
        exited_system_ns: exited.system,
        slot,
        ..ThreadSample::default()
    };
    if tid == tgid {
        sample.flags |= sample_flags::LEADER;
    }
    if let Some((rss, swap)) = task.memory_pages() {
        sample.flags |= sample_flags::MEMORY;
        sample.rss_pages = rss;
        sample.swap_pages = swap;
    }
    sample
}

/// Where a pass's records go.
pub(crate) trait Output {
    /// Whether [`visit_thread`] writes the slot's cgroup sample at its first thread
    /// through this output. The cgroup walk writes it before its loop instead: inside
    /// the loop, its branches multiply the states the verifier walks through (903,647
    /// instructions verified on 6.18 with it, 41,827 without).
    const CGROUP_SAMPLE_PER_THREAD: bool = true;

    /// Writes `record`; `Err` when there is no room for it (counted).
    fn write<T>(&self, record: &T) -> Result<(), ()>;
}

/// The task iterator's seq_file, which the daemon reads.
struct SeqOutput(*mut aya_ebpf::bindings::seq_file);

impl Output for SeqOutput {
    #[inline(always)]
    fn write<T>(&self, record: &T) -> Result<(), ()> {
        // SAFETY: the field is the iterator's seq_file (set by `try_tracked_threads`
        // from its context); the source is a reference of the given size.
        let written = unsafe {
            bpf_seq_write(
                self.0,
                (record as *const T).cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if written == 0 {
            Ok(())
        } else {
            // The read() buffer is full: the kernel shows this task again at the start
            // of the next read(), so nothing is lost.
            count(stat::SAMPLES_DEFERRED);
            Err(())
        }
    }
}

/// What [`try_cgroup_sample`] did.
pub(crate) enum Written {
    Yes,
    /// The thread is not in the slot's registered cgroups (or the slot has none).
    Nothing,
    /// The read() buffer is full.
    Full,
}

/// At the first thread of a tracked cgroup met in this pass that is in them: one
/// [`CgroupSample`] with the counters of the memory and cpu cgroups the daemon
/// registered for its slot. A cgroup whose threads are all elsewhere (in its child
/// cgroups, or where the controller is not enabled) gets none, and the daemon reads its
/// control files instead.
///
/// # Safety
/// `entry` must be the slot's element of `SLOT_CGROUPS`.
#[inline(always)]
pub(crate) unsafe fn try_cgroup_sample(
    task: Task<Direct>,
    slot: u32,
    entry: *mut SlotCgroups,
    out: &impl Output,
) -> Written {
    // SAFETY: (this read and the next) an element of an array map, valid while the
    // program runs (the caller's contract); the daemon writes it only between passes.
    let memory_id = unsafe { (*entry).memory_id };
    // SAFETY: as above.
    let cpu_id = unsafe { (*entry).cpu_id };
    if memory_id == 0 && cpu_id == 0 {
        return Written::Nothing;
    }
    let mut sample = CgroupSample {
        flags: sample_flags::CGROUP,
        slot,
        ..CgroupSample::default()
    };
    if let Some(memory) = task.memory_counters(memory_id) {
        sample.parts |= cgroup_parts::MEMORY;
        sample.memory_pages = memory.usage.max(0) as u64;
        sample.memory_peak_pages = memory.watermark;
        sample.swap_pages = memory.swap.max(0) as u64;
        sample.kmem_pages = memory.kmem.max(0) as u64;
        sample.kmem_peak_pages = memory.kmem_watermark;
        sample.oom_kills = memory.oom_kills.max(0) as u64;
    }
    if let Some(cpu) = task.cpu_counters(cpu_id) {
        sample.parts |= cgroup_parts::CPU;
        sample.nr_throttled = u64::from(cpu.nr_throttled);
        sample.throttled_ns = cpu.throttled_ns;
    }
    if sample.parts == 0 {
        return Written::Nothing;
    }
    if out.write(&sample).is_ok() {
        Written::Yes
    } else {
        Written::Full
    }
}
