//! `cargo xtask bench`: what the daemon costs and how accurate it is, eBPF against
//! Nomad's /proc method, on real cgroups in Nomad's layout, written to `BENCHMARKS.md`
//! and `benchmarks/collection-cost.svg`.
//!
//! Modules: [`cleanup`] (teardown on every path), [`cgroups`] and [`workload`] (the
//! scenarios), [`daemon`], [`process`] and [`http`] (the daemon and what /proc says of
//! it), [`measure`] (one daemon run), [`clients`] (nomad-apm and the UI polling a run's
//! window), [`kernel`] (bpf_stats, pipe slowdown), [`api`] (wrk against the daemon and a
//! plain warp server; pidstat), [`report`] and [`plot`];
//! [`quick`]: `--quick`, the headline figures only, as a table on the terminal.

pub(crate) mod api;
pub(crate) mod cgroups;
pub(crate) mod cleanup;
mod clients;
pub(crate) mod daemon;
pub(crate) mod http;
mod kernel;
mod measure;
mod plot;
pub(crate) mod process;
mod quick;
mod report;
mod stats;
pub(crate) mod workload;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    setup,
    shell::{announce, cargo, is_root, step, workspace_root},
};

use self::{
    daemon::Source,
    measure::{RunFigures, Settings},
    workload::{Load, Scenario, Spec},
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The headline figures only, in under 5 minutes, printed as a table (nothing is
    /// written): eBPF against procfs at 1k and 10k processes, and at 10k under nomad-apm
    /// and the UI, the sched_switch cost against an empty program, daemon CPU and RSS.
    /// The other flags do not apply.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios, comma-separated: 100, 1k, 10k, 10k-idle, pipe, churn, clients-1k,
    /// clients-10k [default: all].
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Runs per source and scenario, the sources alternated [default: 5].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Measured collection cycles per run [default: 20].
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Rounds of the pipe slowdown (no daemon / eBPF / procfs) [default: 15].
    #[arg(long)]
    pub pipe_rounds: Option<usize>,
    /// Skip the API throughput test (wrk).
    #[arg(long)]
    pub no_api: bool,
    /// Folder for BENCHMARKS.md and benchmarks/ [default: the workspace root].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Everything the run decided, for the report.
#[derive(Clone, Debug)]
pub struct Plan {
    pub runs: usize,
    pub settings: Settings,
    pub pipe_rounds: usize,
    pub pipe_loops: u64,
    pub api_rounds: usize,
    pub api_seconds: u64,
    pub pidstat_runs: usize,
    pub pidstat_intervals: u64,
    pub command: String,
}

/// One scenario's results.
#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub spec: Spec,
    pub host_processes: usize,
    /// 1-minute load average when the scenario was set up.
    pub load: f64,
    pub runs: Vec<RunFigures>,
    pub pidstat_ns: Vec<f64>,
    pub slowdown: Option<kernel::Slowdown>,
    pub api: Option<api::ApiResult>,
}

impl ScenarioResult {
    pub fn of(&self, source: Source) -> impl Iterator<Item = &RunFigures> {
        self.runs.iter().filter(move |r| r.source == Some(source))
    }
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds `bins` of `package` in release mode, in one announced cargo step (one package
/// at a time, so that no other package's features change the daemon's build), and returns
/// their paths.
pub(crate) fn build_release<const N: usize>(
    what: &str,
    package: &str,
    bins: [&str; N],
) -> Result<[PathBuf; N]> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", package]);
    for bin in bins {
        build.args(["--bin", bin]);
    }
    step(what, &mut build)?;
    let paths = bins.map(|bin| target_dir().join("release").join(bin));
    for path in &paths {
        if !path.exists() {
            bail!("{} is missing after the build", path.display());
        }
    }
    Ok(paths)
}

/// From here on the host is changed: checks the cgroup layout, makes Ctrl-C tear down
/// (call before any other thread exists, so that every later thread inherits the blocked
/// signals), and removes the task cgroups a previous, killed run left.
pub(crate) fn take_over_host() -> Result<()> {
    cgroups::check_layout()?;
    cleanup::install_signal_handler();
    let stale = cgroups::remove_stale();
    if stale > 0 {
        announce(&format!(
            "removed {stale} task cgroups a previous (killed) run left"
        ));
    }
    Ok(())
}

pub(crate) fn progress_printer(started: Instant) -> impl Fn(&str) {
    move |what: &str| {
        let t = started.elapsed().as_secs();
        eprintln!("    [{:>2}:{:02}] {what}", t / 60, t % 60);
    }
}

fn pick_scenarios(args: &BenchArgs) -> Result<Vec<Spec>> {
    if args.scenarios.is_empty() {
        return Ok(workload::every().collect());
    }
    args.scenarios
        .iter()
        .map(|k| {
            workload::find(k.trim()).with_context(|| {
                let keys: Vec<&str> = workload::every().map(|s| s.key).collect();
                format!("unknown scenario `{k}`; known: {}", keys.join(", "))
            })
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<()> {
    cleanup::unless_interrupted(if args.quick {
        quick::run()
    } else {
        run_all(args)
    })
}

/// The binaries a benchmark runs.
pub(crate) struct Binaries {
    pub daemon: PathBuf,
    /// `bench-load`: the scenarios' processes.
    pub helper: PathBuf,
    /// `plain-warp`: the API ceiling.
    pub plain: PathBuf,
}

/// Root check, packages, release builds, and the host taken over (see
/// [`take_over_host`]).
pub(crate) fn prepare() -> Result<Binaries> {
    if !is_root() {
        bail!(
            "the benchmark must run as root: it creates cgroups under /sys/fs/cgroup, moves \
             processes into them, loads eBPF programs (the daemon) and sets \
             kernel.bpf_stats_enabled. Run it as root, e.g. `sudo -E cargo xtask bench`."
        );
    }
    setup::ensure(&setup::Needs::bench())?;
    let [daemon] = build_release(
        "building the daemon (release, eBPF programs included)",
        "collector-user",
        ["nomad-collector"],
    )?;
    let [helper, plain] = build_release(
        "building the benchmark helpers (bench-load, plain-warp; release)",
        "xtask",
        ["bench-load", "plain-warp"],
    )?;
    take_over_host()?;
    Ok(Binaries {
        daemon,
        helper,
        plain,
    })
}

/// The command line as typed, for the report.
fn command_line() -> String {
    std::iter::once("cargo xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_all(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let progress = progress_printer(started);
    let specs = pick_scenarios(&args)?;
    let plan = Plan {
        runs: args.runs.unwrap_or(5).max(1),
        settings: Settings {
            interval: Duration::from_secs(1),
            warmup_cycles: 3,
            cycles: args.cycles.unwrap_or(20).max(2),
            accuracy_cycles: 10,
        },
        pipe_rounds: args.pipe_rounds.unwrap_or(15).max(1),
        pipe_loops: 200_000,
        api_rounds: if args.no_api { 0 } else { 5 },
        api_seconds: 8,
        pidstat_runs: 3,
        pidstat_intervals: 10,
        command: command_line(),
    };
    let Binaries {
        daemon: daemon_bin,
        helper: helper_bin,
        plain: plain_bin,
    } = prepare()?;

    let machine = report::Machine::probe();
    if machine.load_before > machine.cores as f64 {
        announce(&format!(
            "warning: load average {:.2} on {} cores: the host is busy and the figures will \
             be noisy (they are alternated, so ratios stay fair); re-run when it is quiet",
            machine.load_before, machine.cores
        ));
    }
    announce(&format!(
        "machine: {} ({} cores, {}), load average {:.2}; plan: {} run(s) per source, {} \
         cycles per run, scenarios {}",
        machine.cpu_model,
        machine.cores,
        machine.memory,
        machine.load_before,
        plan.runs,
        plan.settings.cycles,
        specs.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
    ));

    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        announce(&format!(
            "scenario {}/{}: {} [{}]",
            i + 1,
            specs.len(),
            spec.title,
            spec.key
        ));
        results.push(run_scenario(
            *spec,
            &plan,
            &daemon_bin,
            &helper_bin,
            &plain_bin,
            &progress,
        )?);
    }

    let leftovers = cgroups::leftovers();
    if leftovers.is_empty() {
        announce("teardown verified: no /sys/fs/cgroup/*/nomad left");
    } else {
        announce(&format!(
            "warning: still present (another user of the host?): {}",
            leftovers.join(", ")
        ));
    }
    let mut machine = machine;
    machine.load_after = process::load_average();
    let out = args.out.clone().unwrap_or_else(workspace_root);
    let report = report::Report {
        plan,
        machine,
        results,
        elapsed: started.elapsed(),
        leftovers,
    };
    let written = report::write(&report, &out)?;
    for path in written {
        announce(&format!("wrote {}", path.display()));
    }
    Ok(())
}

pub(crate) fn run_scenario(
    spec: Spec,
    plan: &Plan,
    daemon_bin: &Path,
    helper_bin: &Path,
    plain_bin: &Path,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let setup_started = Instant::now();
    let mut scenario = Scenario::setup(spec, helper_bin)?;
    let setup_took = setup_started.elapsed();
    // Let the host settle after starting thousands of processes.
    std::thread::sleep(Duration::from_secs(2));
    let host_processes = process::host_process_count();
    let load = process::load_average();
    progress(&format!(
        "set up {} task cgroups, {} processes in {:.1} s ({host_processes} processes on the \
         host, load average {load:.2})",
        scenario.tasks.len(),
        spec.processes(),
        setup_took.as_secs_f64()
    ));
    let accuracy = matches!(spec.load, Load::Pipe | Load::Churn { .. });
    let mut runs = Vec::new();
    {
        let _stats = kernel::BpfStats::set(true)?;
        let sources = [Source::Ebpf, Source::Procfs];
        for round in 0..plan.runs {
            // Rotate the order each round so that no arm always runs first or last.
            let mut order = sources;
            order.rotate_left(round % sources.len());
            for source in order {
                let f = measure::run(
                    daemon_bin,
                    &scenario,
                    source,
                    round,
                    &plan.settings,
                    accuracy,
                    spec.clients(),
                )
                .with_context(|| {
                    format!("{} run {}, source {}", spec.key, round + 1, source.as_str())
                })?;
                let mut line = format!(
                    "run {}/{} {:<6}: {:.3} ms CPU/cycle (collector thread {:.3} ms) over {} cycles, RSS {:.1} MiB",
                    round + 1,
                    plan.runs,
                    source.as_str(),
                    f.ms_per_cycle(),
                    f.collector_ms_per_cycle(),
                    f.cycles,
                    f.rss_bytes as f64 / 1048576.0
                );
                if source.is_ebpf() {
                    line += &format!(
                        ", sched_switch {:.0} ns/event, {:.0} processes sampled",
                        f.switch_ns_per_event(),
                        f.processes_sampled
                    );
                }
                if let Some(a) = f.accuracy {
                    line += &format!(", reports {:.1}% of cpuacct", a.percent());
                }
                if let Some(c) = &f.clients {
                    line += &format!(
                        ", {} requests ({} nomad-apm, passes: {}; {} UI), {} failed",
                        c.counts.requests(),
                        c.counts.apm.requests,
                        c.counts.apm_sweeps,
                        c.counts.ui.requests,
                        c.counts.failed()
                    );
                    if let Some(e) = &c.first_error {
                        line += &format!(" (first: {e})");
                    }
                }
                progress(&line);
                runs.push(f);
            }
        }
    }
    let mut pidstat_ns = Vec::new();
    if spec.is_quiet_sleepers() {
        for i in 0..plan.pidstat_runs {
            let ns = api::pidstat_cpu_per_interval(plan.pidstat_intervals)?;
            progress(&format!(
                "pidstat {}/{}: {:.2} ms CPU per 1 s interval",
                i + 1,
                plan.pidstat_runs,
                ns / 1e6
            ));
            pidstat_ns.push(ns);
        }
    }
    let mut api_result = None;
    if spec.key == "1k" && plan.api_rounds > 0 {
        let alloc = scenario.allocs()[0].clone();
        api_result = Some(api::run(
            daemon_bin,
            plain_bin,
            &alloc,
            plan.api_rounds,
            plan.api_seconds,
            plan.settings.interval,
            progress,
        )?);
    }
    let mut slowdown = None;
    if spec.load == Load::Pipe {
        scenario.stop_load();
        slowdown = Some(kernel::pipe_slowdown(
            daemon_bin,
            &scenario.tasks[0],
            plan.pipe_rounds,
            plan.pipe_loops,
            plan.settings.interval,
            progress,
        )?);
    }
    let teardown = Instant::now();
    drop(scenario);
    progress(&format!(
        "torn down in {:.1} s",
        teardown.elapsed().as_secs_f64()
    ));
    Ok(ScenarioResult {
        spec,
        host_processes,
        load,
        runs,
        pidstat_ns,
        slowdown,
        api: api_result,
    })
}
