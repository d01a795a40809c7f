//! Raw bytes as `/sys/kernel/btf/vmlinux`: `Btf::parse` and every lookup the daemon
//! makes through `layout::resolve` must return (an error is fine) without panicking,
//! overflowing or running away.
#![no_main]

use collector_user::kernel::{
    btf::Btf,
    layout::{self, Attribution},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    for attribution in [
        Attribution {
            v1_controller: None,
            v2: true,
        },
        Attribution {
            v1_controller: Some("cpuacct".to_owned()),
            v2: false,
        },
    ] {
        let _ = layout::resolve(&btf, &attribution);
    }
    // Lookups of names the resolver does not use, nested paths included.
    for (strukt, path) in [
        ("task_struct", "se.sum_exec_runtime"),
        ("task_struct", "a.b.c"),
        ("s", "m"),
        ("s", "m.n"),
        ("", ""),
    ] {
        let _ = btf.member_offset(strukt, path);
        let _ = btf.struct_size(strukt);
        let _ = btf.has_struct(strukt);
    }
    for name in ["cpuacct_cgrp_id", "MM_FILEPAGES", "e", ""] {
        let _ = btf.enum_value(name);
    }
});
