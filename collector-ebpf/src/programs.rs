//! The program both builds share unchanged (see `main.rs` and `thread_hash.rs` for the
//! ones that differ by kernel), and the object's panic handler and licence.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

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
