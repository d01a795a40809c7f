//! `cargo xtask test`: every check and test the project has, in one command.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{
    setup,
    shell::{announce, cargo, is_root, step, workspace_root},
};

/// The debug daemon binary the integration tests start (on the host and in the VMs).
pub fn build_daemon(what: &str) -> Result<()> {
    step(
        what,
        cargo().args([
            "build",
            "--package",
            "collector-user",
            "--bin",
            "nomad-collector",
        ]),
    )
}

/// What clippy denies on both sides: every warning, and unsafe code that is not one
/// operation per block with a `SAFETY:` comment saying why it holds.
const CLIPPY_DENY: [&str; 6] = [
    "-D",
    "warnings",
    "-D",
    "clippy::undocumented_unsafe_blocks",
    "-D",
    "clippy::multiple_unsafe_ops_per_block",
];

pub fn run(filter: Option<&str>, lint: bool, vm: bool) -> Result<()> {
    setup::ensure(&setup::Needs::test())?;
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if lint {
        step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "clippy, user side (-D warnings, documented unsafe)",
            cargo()
                .args(["clippy", "--all-targets", "--"])
                .args(CLIPPY_DENY),
        )?;
        step(
            "clippy, eBPF side (-D warnings, documented unsafe)",
            Command::new("cargo")
                .current_dir(workspace_root())
                .args([
                    "+nightly",
                    "clippy",
                    "--package",
                    "collector-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--bins",
                    "--",
                ])
                .args(CLIPPY_DENY),
        )?;
    }
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "collector-ebpf",
        "--exclude",
        "integration-tests",
    ]);
    if let Some(filter) = filter {
        unit.arg(filter);
    }
    step("unit tests", &mut unit)?;

    if !is_root() {
        if in_ci {
            bail!("CI is set but not running as root: the privileged eBPF tests cannot run");
        }
        announce("not root: the privileged integration tests will report themselves skipped");
    }
    build_daemon("building the daemon binary the end-to-end tests start")?;
    let mut integration = cargo();
    integration.env(
        "NOMAD_COLLECTOR_BIN",
        workspace_root().join("target/debug/nomad-collector"),
    );
    integration.args(["test", "--package", "integration-tests", "--"]);
    if let Some(filter) = filter {
        integration.arg(filter);
    }
    // Privileged tests share kernel state (cgroups, attached programs): one at a time.
    integration.arg("--test-threads=1");
    step(
        "integration tests (real eBPF programs, real cgroups, real HTTP; one at a time)",
        &mut integration,
    )?;
    // The Debian package: installed, run as its unit would, purged (needs root; CI is
    // root, checked above).
    if filter.is_none_or(|f| "package".contains(f)) {
        if is_root() {
            crate::package::test()?;
        } else {
            announce("not root: the package test (dpkg -i, eBPF, cgroups) is skipped");
        }
    }
    if filter.is_none() {
        // A bounded run of every fuzz target (the longer run is `cargo xtask fuzz`).
        crate::fuzz::run(&crate::fuzz::Options {
            seconds: 10,
            targets: Vec::new(),
            sanitizer: "none".to_owned(),
        })?;
    }
    // The same tests on other kernels and on pure cgroup v2, in VMs.
    if !vm && in_ci {
        announce("CI is set: the VM matrix runs even though it was asked to be skipped");
    }
    if !vm && !in_ci {
        announce("VM matrix skipped (--no-vm / NOMAD_COLLECTOR_NO_VM)");
    } else if !is_root() {
        announce("not root: the VM matrix is skipped (it installs packages and boots VMs)");
    } else if filter.is_some_and(|f| !crate::vm::has_test_matching(f)) {
        announce("no VM test matches the filter: the VM matrix is skipped");
    } else {
        let mut args = crate::vm::VmArgs::matrix();
        args.test = filter.map(str::to_owned);
        crate::vm::run(args)?;
    }
    Ok(())
}
