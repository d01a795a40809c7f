use which::which;

/// Cargo does not track the linker: rebuild the programs when bpf-linker changes.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found in PATH");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
