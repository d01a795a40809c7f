//! Project tasks: `cargo xtask run`, `cargo xtask test`, `cargo xtask setup`,
//! `cargo xtask bench`, `cargo xtask soak`, `cargo xtask fuzz`, `cargo xtask vm-test`.
//!
//! Every task first installs what a fresh machine lacks (the nightly `rust-src`
//! component, `bpf-linker`, Debian packages), printing what it does.

mod bench;
mod fuzz;
mod package;
mod setup;
mod shell;
mod soak;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "nomad-collector project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and packages the build and tests need.
    Setup,
    /// Build the daemon (eBPF + userspace, release) and run it as root.
    Run {
        /// Build in debug mode instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments for the daemon, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every check and test: fmt, clippy (user side and eBPF side), unit tests, and
    /// the privileged integration tests (real eBPF, real cgroups).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the VM matrix (`cargo xtask vm-test`); also NOMAD_COLLECTOR_NO_VM=1.
        /// Ignored when CI is set: CI always runs it.
        #[arg(long, env = "NOMAD_COLLECTOR_NO_VM")]
        no_vm: bool,
    },
    /// Build the cargo-fuzz targets of fuzz/ (nightly) and run each for a while; fails
    /// on a crash, naming the input. Installs cargo-fuzz if missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Sanitizer: none (default; the fuzzed code is safe Rust) or address.
        #[arg(long, default_value = "none", value_parser = ["none", "address"])]
        sanitizer: String,
        /// Targets to run (default: all; `cargo +nightly fuzz list` names them).
        targets: Vec<String>,
    },
    /// Build the Debian package (cargo-deb, installed if missing): the daemon, its
    /// systemd unit, /etc/nomad-collector/config.toml, the man page. Prints its path.
    Deb {
        /// Then install it here, run it as its unit would against a busy task, and purge
        /// it (the package test of `cargo xtask test`; needs root).
        #[arg(long)]
        test: bool,
    },
    /// Measure the daemon (eBPF against Nomad's /proc method) on real Nomad-style
    /// cgroups; writes BENCHMARKS.md and benchmarks/*.svg. Needs root.
    Bench(bench::BenchArgs),
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels under QEMU on pure cgroup v2 and run
    /// the privileged integration tests that matter there inside, with the binaries the
    /// host built; prints a kernel × test table. Needs root.
    VmTest(vm::VmArgs),
    /// Churn, restarts on pins and 200 concurrent API clients together, on real
    /// Nomad-style cgroups, for a while (10 minutes; --quick: 2); prints a table of checks
    /// and fails if one fails. Needs root.
    Soak(soak::SoakArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure(&setup::Needs::all()),
        Command::Run { debug, args } => run(debug, &args),
        Command::Test {
            filter,
            no_lint,
            no_vm,
        } => test::run(filter.as_deref(), !no_lint, !no_vm),
        Command::Fuzz {
            seconds,
            sanitizer,
            targets,
        } => fuzz::run(&fuzz::Options {
            seconds,
            targets,
            sanitizer,
        }),
        Command::Deb { test } => {
            if test {
                package::test()
            } else {
                package::build().map(drop)
            }
        }
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::VmTest(args) => vm::run(args),
    }
}

fn run(debug: bool, args: &[String]) -> Result<()> {
    setup::ensure(&setup::Needs::build())?;
    let mut build = shell::cargo();
    build.args([
        "build",
        "--package",
        "collector-user",
        "--bin",
        "nomad-collector",
    ]);
    if !debug {
        build.arg("--release");
    }
    shell::step(
        "building the daemon (eBPF programs + userspace)",
        &mut build,
    )?;
    let binary = shell::workspace_root()
        .join("target")
        .join(if debug { "debug" } else { "release" })
        .join("nomad-collector");
    shell::exec_as_root(&binary, args)
}
