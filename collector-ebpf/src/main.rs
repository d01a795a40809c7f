//! The collector's kernel side.
//!
//! The kernel already keeps every thread's exact on-CPU time (`se.sum_exec_runtime`),
//! so no program here does arithmetic on every context switch. Instead:
//!
//! * `task_cpu` (a task iterator, run once per collection interval by the daemon) visits
//!   every thread, and for threads of tracked cgroups adds what each ran since its
//!   previous visit to its cgroup's counters and emits one [`ThreadSample`] per thread;
//! * `sched_switch` returns at once unless the thread being switched out is dead
//!   (`prev_state == TASK_DEAD`, its very last switch, when its CPU time is final), and
//!   then folds what that thread ran since its last visit into its cgroup's counters.
//!
//! Each thread remembers what was last added for it in task-local storage, so every
//! nanosecond is added exactly once whichever of the two sees it, and a new process that
//! reuses a PID starts from nothing (the storage belongs to the `task_struct`, not the PID).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod kernel;
mod maps;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_seq_write, macros::btf_tracepoint, programs::BtfTracePointContext,
    EbpfContext,
};
use collector_common::{
    sample_flags, stat, CgroupCpu, ThreadLast, ThreadSample, PF_EXITING, PF_KTHREAD, TASK_DEAD,
};

use crate::{
    kernel::{CpuTimes, Task},
    maps::{count, thread_last, tracked_cgroup},
};

/// Context switch: only a dead thread's final switch does any work.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state)
    let prev_state: u32 = ctx.arg(3);
    if prev_state != TASK_DEAD {
        return 0;
    }
    let prev: *const u8 = ctx.arg(1);
    unsafe { try_fold_exited_thread(Task(prev)) };
    0
}

/// Adds what a dead thread ran since its last visit to its cgroup.
unsafe fn try_fold_exited_thread(task: Task) {
    let Some((_, cgroup)) = (unsafe { tracked_cgroup(task) }) else {
        return;
    };
    let now = unsafe { task.cpu_times() };
    let last = unsafe { thread_last(task, false) };
    let base = if !last.is_null() && unsafe { (*last).seen } != 0 {
        unsafe { CpuTimes::from_last(&*last) }
    } else if unsafe { task.start_time() >= (*cgroup).since_ns } {
        CpuTimes::ZERO
    } else {
        count(stat::EXITS_UNSEEN);
        return;
    };
    unsafe { add_to_cgroup(cgroup, &now.since(&base)) };
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*cgroup).exited_threads,
            1,
        )
    };
    count(stat::EXITS_FOLDED);
}

/// Task iterator (`iter/task`): the daemon reads it once per collection interval.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
fn task_cpu(ctx: *mut c_void) -> i32 {
    unsafe { try_task_cpu(ctx) };
    0
}

/// The iterator's context, for aya-log.
struct IterContext(*mut c_void);

impl EbpfContext for IterContext {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}

unsafe fn try_task_cpu(raw_ctx: *mut c_void) {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    let ctx = raw_ctx as *const *const u8;
    let meta = unsafe { *ctx };
    let task = unsafe { *ctx.add(1) };
    if task.is_null() {
        return; // end of iteration
    }
    let task = Task(task);
    if unsafe { task.flags() } & (PF_KTHREAD | PF_EXITING) != 0 {
        // Exiting threads are folded at their final switch, never here, so that the
        // two paths never race on the same thread.
        return;
    }
    let Some((cgroup_id, cgroup)) = (unsafe { tracked_cgroup(task) }) else {
        return;
    };
    let now = unsafe { task.cpu_times() };
    let tid = unsafe { task.pid() };
    let tgid = unsafe { task.tgid() };
    let start_ns = unsafe { task.start_time() };
    let mut sample = ThreadSample {
        tid,
        tgid,
        cgroup_id,
        run_ns: now.run,
        user_ns: now.user,
        system_ns: now.system,
        start_ns,
        ..ThreadSample::default()
    };
    if tid == tgid {
        sample.flags |= sample_flags::LEADER;
        let exited = unsafe { task.exited_threads_times() };
        sample.exited_run_ns = exited.run;
        sample.exited_user_ns = exited.user;
        sample.exited_system_ns = exited.system;
        if let Some((rss, swap)) = unsafe { task.memory_pages() } {
            sample.flags |= sample_flags::MEMORY;
            sample.rss_pages = rss;
            sample.swap_pages = swap;
        }
    }

    let last = unsafe { thread_last(task, true) };
    let delta = if last.is_null() {
        // Out of memory for task storage: rare, and worth a log line (this runs once per
        // thread per interval, never per context switch).
        count(stat::STORAGE_FAILED);
        aya_log_ebpf::warn!(
            &IterContext(raw_ctx),
            "no task storage for thread {}: its CPU is not attributed this interval",
            tid
        );
        sample.flags |= sample_flags::NO_STORAGE;
        None
    } else {
        let base = if unsafe { (*last).seen } != 0 {
            unsafe { CpuTimes::from_last(&*last) }
        } else if start_ns >= unsafe { (*cgroup).since_ns } {
            CpuTimes::ZERO // born while tracked: count it from birth
        } else {
            now // existed before tracking began: its first sample is 0
        };
        let delta = now.since(&base);
        sample.run_delta_ns = delta.run;
        sample.user_delta_ns = delta.user;
        sample.system_delta_ns = delta.system;
        Some(delta)
    };

    // Commit only once the record is out: when the output buffer is full the kernel
    // shows this thread again on the next read(), and that visit must find it unchanged.
    let seq = unsafe { *(meta as *const *mut aya_ebpf::bindings::seq_file) };
    let written = unsafe {
        bpf_seq_write(
            seq,
            (&raw const sample).cast(),
            core::mem::size_of::<ThreadSample>() as u32,
        )
    };
    if written != 0 {
        // The read() buffer is full: the kernel shows this thread again at the start of
        // the next read(), so nothing is lost; nothing may be committed either.
        count(stat::SAMPLES_DEFERRED);
        return;
    }
    if let Some(delta) = delta {
        unsafe {
            add_to_cgroup(cgroup, &delta);
            *last = ThreadLast {
                run_ns: now.run,
                user_ns: now.user,
                system_ns: now.system,
                seen: 1,
            };
        }
    }
}

#[inline(always)]
unsafe fn add_to_cgroup(cgroup: *mut CgroupCpu, delta: &CpuTimes) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).run_ns, delta.run);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).user_ns, delta.user);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*cgroup).system_ns, delta.system);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
