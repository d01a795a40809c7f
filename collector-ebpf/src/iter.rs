//! The task iterator's body: one [`ThreadSample`] per thread of a tracked cgroup, over
//! every task on the host in one pass. Threads of other cgroups (and kernel threads)
//! are skipped in the kernel, so the daemon reads only the records it uses.
//!
//! Which tracked cgroup a thread is in comes from the attribution the context-switch
//! program cached in its state when that is still valid (same `css_set`, current
//! generation): one storage lookup instead of the walk to the cgroup's id and a hash
//! lookup. The walk is the fallback, for threads that have not switched since.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use collector_common::{sample_flags, stat, ThreadSample, NO_SLOT, PF_KTHREAD};

use crate::{
    account::ThreadStore,
    kernel::{Direct, Task},
    maps::{count, generation, tracked_cgroup},
};

/// The tracked cgroup's slot of `task`, or [`NO_SLOT`].
#[inline(always)]
fn slot_of<S: ThreadStore<Direct>>(task: Task<Direct>) -> u32 {
    let state = S::peek(task);
    if !state.is_null() {
        // SAFETY: (this read and the next two) a non-null state is the thread's, valid while the
        // program runs; its owner may be rewriting it on another CPU, but each field is
        // an aligned word and a rewrite stores the attribution of the same css_set and
        // generation.
        let generation_then = unsafe { (*state).generation };
        // SAFETY: as above.
        let css_set = unsafe { (*state).css_set };
        // SAFETY: as above.
        let slot = unsafe { (*state).slot };
        if generation_then == generation() && css_set == task.css_set() {
            return slot;
        }
    }
    tracked_cgroup(task).slot
}

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
    let slot = slot_of::<S>(task);
    if slot == NO_SLOT {
        return;
    }
    let now = task.cpu_times();
    let tid = task.pid();
    let tgid = task.tgid();
    let mut sample = ThreadSample {
        tid,
        tgid,
        run_ns: now.run,
        user_ns: now.user,
        system_ns: now.system,
        start_ns: task.start_time(),
        slot,
        ..ThreadSample::default()
    };
    if tid == tgid {
        sample.flags |= sample_flags::LEADER;
        let exited = task.exited_threads_times();
        sample.exited_run_ns = exited.run;
        sample.exited_user_ns = exited.user;
        sample.exited_system_ns = exited.system;
        if let Some((rss, swap)) = task.memory_pages() {
            sample.flags |= sample_flags::MEMORY;
            sample.rss_pages = rss;
            sample.swap_pages = swap;
        }
    }
    // SAFETY: meta is the iterator's bpf_iter_meta, whose first field is its seq_file.
    let seq = unsafe { *(meta as *const *mut aya_ebpf::bindings::seq_file) };
    // SAFETY: seq is the iterator's seq_file; the source is a local of the given size.
    let written = unsafe {
        bpf_seq_write(
            seq,
            (&raw const sample).cast(),
            core::mem::size_of::<ThreadSample>() as u32,
        )
    };
    if written != 0 {
        // The read() buffer is full: the kernel shows this thread again at the start of
        // the next read(), so nothing is lost.
        count(stat::SAMPLES_DEFERRED);
    }
}
