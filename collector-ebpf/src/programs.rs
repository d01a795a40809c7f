//! The programs both builds share (see `main.rs` and `thread_hash.rs` for the ones that
//! differ by kernel; `Store` is each build's thread state), and the object's panic
//! handler and licence.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{iter, Store};

/// Task iterator (`iter/task`) over every task on the host, read by the daemon once per
/// interval: one record per thread of a tracked cgroup that ran since its last record
/// (every thread of a slot whose pass is full).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
fn tracked_threads(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel calls an iter/task program with its bpf_iter__task context.
    unsafe { iter::try_tracked_threads::<Store>(ctx) };
    0
}

/// Does nothing. Attached alone by `nomad-collector --empty-probe`, so that the benchmark
/// can measure what the sched_switch tracepoint itself costs with a program attached: the
/// floor under any program here.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
