//! The per-process task iterator's body: one [`ThreadSample`] per thread.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use collector_common::{sample_flags, stat, ThreadSample};

use crate::{
    kernel::{Direct, Task},
    maps::count,
};

/// # Safety
/// `ctx` must be the `struct bpf_iter__task *` the kernel passes to an `iter/task`
/// program.
#[inline(always)]
pub unsafe fn try_process_threads(ctx: *mut c_void) {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    let ctx = ctx as *const *const u8;
    // SAFETY: ctx is a bpf_iter__task (the caller's contract): two pointers.
    let (meta, task) = unsafe { (*ctx, *ctx.add(1)) };
    if task.is_null() {
        return; // end of iteration
    }
    // SAFETY: the iterator's task is a BTF task_struct, live for this call.
    let task = unsafe { Task::<Direct>::new(task) };
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
