//! The collector's kernel side for kernels whose tracing programs have no task storage
//! and no `bpf_get_current_task_btf` (5.10): the same programs as `main.rs`, with each
//! thread's state in a hash map keyed by task (see `store_hash`), and a checkpoint that
//! reads the running task through `bpf_probe_read_kernel` (it runs once per CPU per
//! interval, so the slower reads cost nothing that matters).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod account;
mod iter;
mod kernel;
mod maps;
mod programs;
mod store_hash;

use aya_ebpf::{
    helpers::generated::bpf_get_current_task,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    account::{account, account_switch, NoMarks},
    kernel::{Direct, Probed, Task},
    store_hash::HashStore,
};

/// Where this build keeps each thread's state (the shared iterator uses it too).
type Store = HashStore;

/// Context switch: accounts the thread being switched out.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: argument 1 of sched_switch is the task being switched out, a BTF pointer.
    let prev = unsafe { Task::<Direct>::new(ctx.arg(1)) };
    account_switch::<Direct, Store, NoMarks, _>(&ctx, prev);
    0
}

/// Accounts the thread running on this CPU (run by the daemon, not by an event).
#[raw_tracepoint]
pub fn checkpoint(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a helper without preconditions; it returns the running task's address.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the running task's address, read here only through bpf_probe_read_kernel.
    let current = unsafe { Task::<Probed>::new(task as *const u8) };
    account::<Probed, Store, NoMarks, _>(&ctx, current, false);
    0
}
