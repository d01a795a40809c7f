//! Installing what a fresh machine lacks. Idempotent: each piece is checked first.

use std::process::Command;

use anyhow::{bail, Result};

use crate::shell::{announce, is_root, output, step};

/// bpf-linker 0.10.4 loads rustc's own LLVM at run time; newer releases need a system
/// LLVM matching rustc's, which Debian bookworm does not have.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// cargo-deb, for `cargo xtask deb`: pinned so that the package's layout (unit path,
/// maintainer-script snippets) does not change under the package test.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What a task needs.
pub struct Needs {
    /// Debian packages (binary name to check, package that provides it).
    pub packages: Vec<(&'static str, &'static str)>,
}

impl Needs {
    /// Building the daemon: nightly rust-src and bpf-linker only.
    pub fn build() -> Self {
        Self { packages: vec![] }
    }

    /// Tests: the build, plus Debian's `prometheus` package: `promtool check metrics`
    /// lints the exposition, and a real Prometheus scrapes the daemon (tests/tests/
    /// prometheus.rs). The tests use aya's own program info, not `bpftool`. `tmux`
    /// drives `nomad-collector top` as a person would (tests/tests/top.rs).
    pub fn test() -> Self {
        let mut needs = Self::build();
        needs.packages.extend([
            ("promtool", "prometheus"),
            ("prometheus", "prometheus"),
            ("tmux", "tmux"),
        ]);
        needs
    }

    /// `cargo xtask bench`: the build, plus pidstat (the outside reference), wrk (API
    /// load) and perf (`perf bench sched pipe`).
    pub fn bench() -> Self {
        let mut needs = Self::build();
        needs.packages.extend([
            ("pidstat", "sysstat"),
            ("wrk", "wrk"),
            ("perf", "linux-perf"),
            ("taskset", "util-linux"),
        ]);
        needs
    }

    /// `cargo xtask deb` and its test: the build, plus dpkg, `systemd-analyze verify`
    /// (and man) for the unit and `setpriv` to run the installed daemon with the unit's
    /// capabilities (no systemd runs as PID 1 on a CI machine). cargo-deb itself is
    /// checked by [`ensure_cargo_deb`].
    pub fn package() -> Self {
        let mut needs = Self::build();
        needs.packages.extend([
            ("dpkg-deb", "dpkg"),
            ("systemd-analyze", "systemd"),
            ("setpriv", "util-linux"),
            // The unit's Documentation=man:nomad-collector(1), which verify looks up.
            ("man", "man-db"),
        ]);
        needs
    }

    pub fn all() -> Self {
        Self::test()
    }
}

pub fn ensure(needs: &Needs) -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages(&needs.packages)?;
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => step(
            "installing the nightly rust-src component (the eBPF build needs -Z build-std=core)",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        ),
        None => step(
            "installing the nightly toolchain with rust-src",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        ),
    }
}

fn ensure_bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    step(
        &format!("installing bpf-linker {BPF_LINKER_VERSION} (about a minute)"),
        Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]),
    )?;
    // Cargo does not notice a changed linker: make the eBPF crate rebuild.
    let main = crate::shell::workspace_root().join("collector-ebpf/src/main.rs");
    let _ = Command::new("touch").arg(main).status();
    Ok(())
}

/// Installs cargo-deb from crates.io unless this version is there (a few minutes of
/// compiling, shown as it goes).
pub fn ensure_cargo_deb() -> Result<()> {
    let version = output(Command::new("cargo").args(["deb", "--version"]));
    if version
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    {
        return Ok(());
    }
    step(
        &format!("installing cargo-deb {CARGO_DEB_VERSION} (a few minutes)"),
        Command::new("cargo").args([
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
            "--force",
        ]),
    )
}

fn ensure_packages(packages: &[(&'static str, &'static str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(binary, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {binary}")])).is_none()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them with `sudo apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    announce(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    step(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
