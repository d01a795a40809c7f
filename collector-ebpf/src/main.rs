//! The collector's kernel side.
//!
//! * `sched_switch` (tp_btf) adds what the thread being switched out ran since it was last
//!   accounted to its tracked cgroup's counters in `CGROUP_CPU`. A thread's final switch
//!   is accounted like any other, so processes that exit between two samples are never
//!   lost. The time is the kernel's own exact `se.sum_exec_runtime`, so the program does no
//!   clock reads; a per-thread cache in task storage makes most switches cost one storage
//!   lookup and two compares (see `account`).
//! * `checkpoint` (raw_tp, never attached) does the same for the thread running on a CPU;
//!   the daemon runs it on every CPU (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_RUN_ON_CPU`)
//!   just before it reads the counters, so a thread that has run for seconds without a
//!   context switch is counted up to now, not only up to its last switch.
//! * `process_threads` (iter/task) is attached by the daemon to one process at a time,
//!   for the allocations someone asks about: it reports each thread's CPU times and the
//!   process's memory, so per-process figures need no /proc reads.
//! * `sched_switch_empty` is only for measuring the tracepoint's own cost.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod account;
mod kernel;
mod maps;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_seq_write},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use collector_common::{sample_flags, stat, ThreadSample, TASK_DEAD};

use crate::{account::account, kernel::Task, maps::count};

/// Context switch: accounts the thread being switched out.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state)
    let prev: *const u8 = ctx.arg(1);
    let prev_state: u32 = ctx.arg(3);
    unsafe { account(&ctx, Task(prev), prev_state == TASK_DEAD) };
    0
}

/// Does nothing. Attached alone by `nomad-collector --empty-probe`, so that the benchmark
/// can measure what the sched_switch tracepoint itself costs with a program attached: the
/// floor under any program here.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Accounts the thread running on this CPU (run by the daemon, not by an event).
#[raw_tracepoint]
pub fn checkpoint(ctx: RawTracePointContext) -> i32 {
    let current: *const u8 = unsafe { bpf_get_current_task_btf() }.cast();
    unsafe { account(&ctx, Task(current), false) };
    0
}

/// Task iterator (`iter/task`), attached by the daemon to one process: one record per
/// thread.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
fn process_threads(ctx: *mut c_void) -> i32 {
    unsafe { try_process_threads(ctx) };
    0
}

unsafe fn try_process_threads(ctx: *mut c_void) {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    let ctx = ctx as *const *const u8;
    let meta = unsafe { *ctx };
    let task = unsafe { *ctx.add(1) };
    if task.is_null() {
        return; // end of iteration
    }
    let task = Task(task);
    let now = unsafe { task.cpu_times() };
    let tid = unsafe { task.pid() };
    let tgid = unsafe { task.tgid() };
    let mut sample = ThreadSample {
        tid,
        tgid,
        run_ns: now.run,
        user_ns: now.user,
        system_ns: now.system,
        start_ns: unsafe { task.start_time() },
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
        // the next read(), so nothing is lost.
        count(stat::SAMPLES_DEFERRED);
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
