//! The task iterator's body: one [`ThreadSample`] per thread of a tracked cgroup, over
//! every task on the host in one pass. Threads of other cgroups (and kernel threads)
//! are skipped in the kernel, so the daemon reads only the records it uses.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use collector_common::{sample_flags, stat, ThreadSample, NO_SLOT, PF_KTHREAD};

use crate::{
    kernel::{Direct, Task},
    maps::{count, tracked_cgroup},
};

/// # Safety
/// `ctx` must be the `struct bpf_iter__task *` the kernel passes to an `iter/task`
/// program.
#[inline(always)]
pub unsafe fn try_tracked_threads(ctx: *mut c_void) {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    let ctx = ctx as *const *const u8;
    // SAFETY: ctx is a bpf_iter__task (the caller's contract): its first field.
    let meta = unsafe { *ctx };
    // SAFETY: as above: its second field.
    let task = unsafe { *ctx.add(1) };
    if task.is_null() {
        return; // end of iteration
    }
    // SAFETY: the iterator's task is a BTF task_struct, live for this call.
    let task = unsafe { Task::<Direct>::new(task) };
    if task.flags() & PF_KTHREAD != 0 {
        return;
    }
    let tracked = tracked_cgroup(task);
    if tracked.slot == NO_SLOT {
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
        slot: tracked.slot,
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
