//! The collector's kernel side, for kernels with task storage in tracing programs
//! (5.11+). `thread_hash.rs` builds the same programs for kernels without it (5.10).
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
//! * `tracked_threads` (iter/task) walks every task on the host once per interval and
//!   reports each thread of a tracked cgroup that ran since its last record (its CPU
//!   times, and its process's memory), so every allocation's per-process figures need no
//!   /proc reads, and an idle thread costs the daemon nothing but the walk.
//! * `sched_switch_empty` is only for measuring the tracepoint's own cost.
//!
//! `tracked_threads` and `sched_switch_empty` are the same in both builds (`programs.rs`).
//!
//! The daemon loads each program on its own: one the kernel rejects turns off only what
//! needs it.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod account;
mod cgroup_walk;
mod iter;
mod kernel;
mod maps;
mod programs;
mod store_task;

use aya_ebpf::{
    helpers::generated::bpf_get_current_task_btf,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    account::{account, account_switch, CheckpointMarks, SwitchMarks},
    kernel::{Direct, Task},
    store_task::TaskStore,
};

/// Where this build keeps each thread's state (the shared iterator uses it too).
type Store = TaskStore;

/// Context switch: accounts the thread being switched out.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
    // SAFETY: argument 1 of sched_switch is the task being switched out, a BTF pointer.
    let prev = unsafe { Task::<Direct>::new(ctx.arg(1)) };
    account_switch::<Direct, Store, SwitchMarks, _>(&ctx, prev);
    0
}

/// Accounts the thread running on this CPU (run by the daemon, not by an event).
#[raw_tracepoint]
pub fn checkpoint(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a helper without preconditions; it returns the running task as a BTF pointer.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the running task, a BTF pointer live while the program runs.
    let current = unsafe { Task::<Direct>::new(task.cast()) };
    account::<Direct, Store, CheckpointMarks, _>(&ctx, current, false);
    0
}

/// Cgroup iterator (`iter/cgroup`) over a cgroup hierarchy, read by the daemon once per
/// interval where the kernel has the css task iterator (6.7+) instead of
/// `tracked_threads`: the same records, into the `SAMPLES` ring buffer, from a walk over
/// only the tracked cgroups' threads (see `cgroup_walk`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/cgroup")]
fn tracked_cgroup_threads(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel calls an iter/cgroup program with its bpf_iter__cgroup context.
    unsafe { cgroup_walk::try_tracked_cgroup_threads::<Store>(ctx) };
    0
}
