//! `cargo xtask vm-test`: the privileged integration tests in QEMU guests booted with
//! Debian's kernels on pure cgroup v2, with the binaries the host built.
//!
//! Every kernel is booted in turn (the machine has two cores) under TCG, the host's `/`
//! shared read-only with a tmpfs overlay so host-built binaries run at their own paths.
//! Ends with a kernel × test table; fails on any failure.

mod apt;
mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod report;
mod suite;
mod tools;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    setup,
    shell::{announce, is_root, workspace_root},
};
use report::{Outcome, Row};

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Kernels to boot (default: every one of the matrix: 5.10, 6.1, 6.12). Repeatable.
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// Only run VM tests whose name contains this.
    #[arg(long)]
    pub test: Option<String>,
    /// Seconds each test may take in a guest before it is killed and failed.
    #[arg(long, default_value_t = 300)]
    pub test_timeout: u64,
    /// Where packages, kernels, initramfs images and the last results are kept.
    #[arg(
        long,
        env = "NOMAD_COLLECTOR_VM_CACHE",
        default_value = "/var/cache/nomad-collector-vm"
    )]
    pub cache: PathBuf,
}

impl VmArgs {
    /// The whole matrix with the defaults (what `cargo xtask test` runs).
    pub fn matrix() -> VmArgs {
        VmArgs {
            kernels: Vec::new(),
            test: None,
            test_timeout: 300,
            cache: PathBuf::from("/var/cache/nomad-collector-vm"),
        }
    }
}

/// Whether a VM test's name contains `filter`.
pub fn has_test_matching(filter: &str) -> bool {
    suite::VM_TESTS
        .iter()
        .any(|(_, name)| name.contains(filter))
}

/// Boot, the daemon's start-up check and slack around the tests, per guest.
const GUEST_OVERHEAD: Duration = Duration::from_secs(180);

pub fn run(args: VmArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask vm-test needs root (it installs packages and caches kernels under {})",
            args.cache.display()
        );
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let specs = if args.kernels.is_empty() {
        kernels::MATRIX.iter().collect::<Vec<_>>()
    } else {
        args.kernels
            .iter()
            .map(|v| kernels::spec(v))
            .collect::<Result<_>>()?
    };
    fs::create_dir_all(&args.cache)
        .with_context(|| format!("creating {}", args.cache.display()))?;
    tools::ensure(&args.cache)?;
    setup::ensure(&setup::Needs::build())?;
    let build = suite::build(args.test.as_deref())?;

    // Every download first, so that a missing package fails before any guest boots.
    let mut packages = kernels::Kernels::new(&args.cache)?;
    let mut guests = Vec::new();
    for spec in specs {
        let kernel = packages.get(spec)?;
        let initramfs = initramfs::get(&kernel, &args.cache)?;
        guests.push((kernel, initramfs));
    }

    let mut rows = Vec::new();
    let mut times = Vec::new();
    for (kernel, initramfs) in &guests {
        let started = Instant::now();
        let results = args.cache.join("runs").join(kernel.spec.version);
        if results.exists() {
            fs::remove_dir_all(&results)?;
        }
        fs::create_dir_all(&results)?;
        let script = guest::run_script(&guest::Plan {
            results: &results,
            workspace: &workspace_root(),
            daemon: &build.daemon,
            cases: &build.cases,
            test_timeout_s: args.test_timeout,
            ci: in_ci,
        });
        fs::write(results.join(guest::SCRIPT), script)?;
        announce(&format!(
            "booting {} ({}, stands for {}): {} tests, one at a time",
            kernel.spec.version,
            kernel.release,
            kernel.spec.stands_for,
            build.cases.len()
        ));
        let deadline = GUEST_OVERHEAD
            + Duration::from_secs((args.test_timeout + 15) * build.cases.len() as u64);
        let powered_off = qemu::boot(&qemu::Boot {
            label: kernel.spec.version,
            vmlinuz: &kernel.vmlinuz,
            initramfs,
            results: &results,
            deadline,
        })?;
        let took = started.elapsed();
        if !powered_off {
            announce(&format!(
                "{}: the guest was killed after {} s",
                kernel.spec.version,
                deadline.as_secs()
            ));
        }
        if !results.join(guest::DONE).exists() {
            print_tail(&results.join("kernel.log"), 30);
        }
        print_ebpf_lines(kernel.spec.version, &results.join("daemon.log"));
        for (i, case) in build.cases.iter().enumerate() {
            let (outcome, seconds) = report::read(&results, i, args.test_timeout);
            rows.push(Row {
                kernel: kernel.spec.version.to_owned(),
                test: format!("{}::{}", case.file, case.name),
                outcome,
                seconds,
            });
        }
        times.push((kernel.spec.version.to_owned(), kernel.package.clone(), took));
    }
    report::print(&rows, &times);
    let failed = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    println!(
        "vm-test: {} passed, {failed} failed",
        rows.iter().filter(|r| r.outcome == Outcome::Pass).count()
    );
    if failed > 0 {
        bail!(
            "{failed} of {} VM tests failed (logs in {}/runs/<kernel>/)",
            rows.len(),
            args.cache.display()
        );
    }
    Ok(())
}

/// The daemon's own words about eBPF when started by hand in the guest: what loaded,
/// what did not and why (debug lines left out; the whole log stays in the file).
fn print_ebpf_lines(kernel: &str, log: &Path) {
    let Ok(text) = fs::read_to_string(log) else {
        announce(&format!("{kernel}: the daemon left no log"));
        return;
    };
    announce(&format!(
        "{kernel}: the daemon's start-up, about eBPF ({})",
        log.display()
    ));
    let words = [
        "bpf", "verifier", "fallback", "procfs", "program", "attached",
    ];
    for line in text
        .lines()
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .filter(|l| {
            let lower = l.to_lowercase();
            words.iter().any(|w| lower.contains(w))
        })
        .take(20)
    {
        eprintln!("[{kernel}]   {line}");
    }
}

fn print_tail(path: &Path, lines: usize) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    announce(&format!("last lines of {}", path.display()));
    for line in &all[all.len().saturating_sub(lines)..] {
        eprintln!("  {line}");
    }
}
