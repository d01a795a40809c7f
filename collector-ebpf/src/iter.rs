//! The task iterator's body: one [`ThreadSample`] per thread of a tracked cgroup, over
//! every task on the host in one pass. Threads of other cgroups (and kernel threads)
//! are skipped in the kernel, so the daemon reads only the records it uses.
//!
//! Which tracked cgroup a thread is in is looked up from its cgroups (the chain from its
//! `css_set` to the cgroup's id, and a hash lookup), not from the attribution the
//! context-switch program caches in the thread's state. Measured at 10,000 processes in
//! 1,000 tasks, the lookup is the cheaper of the two: the objects it reads are shared by
//! every thread of a cgroup and stay in cache through the pass, while each thread's
//! state is its own cold cache lines (`bpf_task_storage_get` was 16% of the daemon's
//! CPU with a state for every thread).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use collector_common::{
    cgroup_parts, sample_flags, stat, CgroupSample, ThreadSample, NO_SLOT, PF_KTHREAD,
};

use crate::{
    kernel::{Direct, Task},
    maps::{count, tracked_cgroup, SLOT_CGROUPS},
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
    // SAFETY: seq is the iterator's seq_file; the source is a local of its size.
    if unsafe { write(seq, &sample) }.is_err() {
        // The read() buffer is full: the kernel shows this thread again at the start of
        // the next read(), so nothing is lost.
        count(stat::SAMPLES_DEFERRED);
        return;
    }
    if tid == tgid {
        // SAFETY: meta is the iterator's bpf_iter_meta, { seq, session_id, seq_num }:
        // the address of its second field, inside it.
        let session_id = unsafe { meta.add(8) } as *const u64;
        // SAFETY: as above: its u64 session_id.
        let session = unsafe { *session_id };
        // SAFETY: seq as above.
        unsafe { try_cgroup_sample(task, slot, session, seq) };
    }
}

/// Writes `record` to the iterator's output; `Err` when the read() buffer is full.
///
/// # Safety
/// `seq` must be the iterator's seq_file.
#[inline(always)]
unsafe fn write<T>(seq: *mut aya_ebpf::bindings::seq_file, record: &T) -> Result<(), ()> {
    // SAFETY: the caller's contract; the source is a reference of the given size.
    let written = unsafe {
        bpf_seq_write(
            seq,
            (record as *const T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if written == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// At the first leader of a tracked cgroup met in this pass (`session`): one
/// [`CgroupSample`] with the counters of the memory and cpu cgroups the daemon
/// registered for its slot, when the leader is in them. A cgroup whose leaders are all
/// elsewhere (in its child cgroups, or where the controller is not enabled) gets none,
/// and the daemon reads its control files instead.
///
/// # Safety
/// `seq` must be the iterator's seq_file.
#[inline(always)]
unsafe fn try_cgroup_sample(
    task: Task<Direct>,
    slot: u32,
    session: u64,
    seq: *mut aya_ebpf::bindings::seq_file,
) {
    let Some(entry) = SLOT_CGROUPS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: (this read and the next two) an element of an array map, valid while the
    // program runs; the daemon may rewrite it meanwhile, word by word, which at worst
    // reports one pass's counters of the slot's previous cgroups, as a read just before
    // the rewrite would have.
    let seen = unsafe { (*entry).session };
    // SAFETY: as above.
    let memory_id = unsafe { (*entry).memory_id };
    // SAFETY: as above.
    let cpu_id = unsafe { (*entry).cpu_id };
    if seen == session || (memory_id == 0 && cpu_id == 0) {
        return;
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
        return;
    }
    // SAFETY: the caller's contract.
    if unsafe { write(seq, &sample) }.is_ok() {
        // SAFETY: as above: an aligned word of the element.
        unsafe { (*entry).session = session };
    } else {
        // The buffer filled after the leader's own record: the kernel drops what this
        // task wrote and shows it again at the next read(), which writes both again.
        count(stat::SAMPLES_DEFERRED);
    }
}
