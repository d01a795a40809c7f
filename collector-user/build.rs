//! Builds the eBPF programs (collector-ebpf, nightly, bpfel-unknown-none) into OUT_DIR,
//! where `src/kernel/accounting.rs` embeds the object with `include_bytes_aligned!`.
//!
//! `AYA_BUILD_SKIP=1` skips that build (for quick host-only work such as unit tests on a
//! machine without bpf-linker); the embedded object is then empty and loading it fails
//! at run time with a clear error, so the daemon falls back to /proc.
use std::path::PathBuf;

use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../collector-ebpf");
    let root_dir = root_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [Package {
            name: "collector-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )?;
    // One object per build of the programs (see collector-ebpf's Cargo.toml).
    for name in ["collector", "collector-thread-hash"] {
        let object = PathBuf::from(std::env::var("OUT_DIR")?).join(name);
        if !object.exists() {
            std::fs::write(&object, [])?;
        }
    }
    Ok(())
}
