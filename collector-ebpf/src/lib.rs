#![no_std]
// This file exists so that the crate has a library target that builds on the host:
// collector-user lists this crate as a build-dependency so that cargo rebuilds the
// embedded eBPF object when its sources change. The programs are in main.rs.
