//! `cargo xtask soak`: the reliability items of issue 7 together, for a while, on the
//! real kernel, with the release daemon:
//!
//! * churn: one task starting and ending thousands of short processes a minute, next to
//!   1,000 long-lived processes in 100 other tasks, and allocations whose cgroups are
//!   created and removed over and over;
//! * restarts: the daemon (pinned, under a temporary pin root) stopped and started again
//!   every few minutes while the churn goes on; at a standstill of the churning task
//!   before each restart and at the end, its `CpuTotalNs` is compared with its cgroup's
//!   own `cpuacct.usage`;
//! * HTTP load: 200 concurrent `wrk` connections on the churning allocation's stats;
//! * the daemon's VmRSS, map counts and cycle errors sampled throughout.
//!
//! Ends with a Markdown table of checks, and fails if one fails. Everything it creates
//! is registered with [`cleanup`] first, so it is torn down on every path, Ctrl-C
//! included.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{
        api::{self, Wrk},
        build_release,
        cgroups::{self, uuid, NomadParents, TaskCgroup, TASK_PREFIX},
        cleanup,
        daemon::{Daemon, Source},
        http, process, progress_printer, take_over_host,
        workload::{in_cgroup, Load, Scenario, Spec},
    },
    setup,
    shell::{announce, is_root},
};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// A two-minute version (overrides --minutes).
    #[arg(long)]
    pub quick: bool,
}

const INTERVAL: Duration = Duration::from_secs(1);
/// Children burning 3 ms each, 5 ms apart: about 7,000 a minute.
const CHURN: Spec = Spec {
    key: "soak-churn",
    title: "churn: 3 ms children, 5 ms apart, in 1 task",
    load: Load::Churn {
        cpu_ms: 3,
        gap_ms: 5,
    },
};
const DENSITY: Spec = Spec {
    key: "soak-density",
    title: "1,000 long-lived processes / 100 tasks",
    load: Load::Sleepers {
        tasks: 100,
        per_task: 10,
        tickers: 1,
    },
};
const HTTP_CONNECTIONS: u32 = 200;
const HTTP_P99_BOUND_MS: f64 = 100.0;
const CPU_TOLERANCE: f64 = 0.05;
const RSS_GROWTH_BOUND: u64 = 4 << 20;
/// How long a new allocation may take to be listed: a few intervals.
const DISCOVERY_WAIT: Duration = Duration::from_secs(5);
/// Folder names of the soak's pin roots under /sys/fs/bpf (a killed run's are removed
/// by the next).
const PIN_ROOT_PREFIX: &str = "nomad-collector-soak-";

/// The run's timeline: `lives` daemon lifetimes of `life` each, a restart between two.
struct Plan {
    lives: u32,
    life: Duration,
    /// The lifetime with the HTTP load (the second: a restarted daemon serves it).
    http_life: u32,
    http_seconds: u64,
    sample_every: Duration,
    /// How long the daemon stays down at a restart, the churn going on.
    down_for: Duration,
}

impl Plan {
    fn new(args: &SoakArgs) -> Self {
        let (total, lives) = if args.quick {
            (Duration::from_secs(120), 3)
        } else {
            let minutes = args.minutes.max(1);
            // A restart every two to three minutes, and at least two.
            (
                Duration::from_secs(minutes * 60),
                minutes.div_ceil(3).max(3) as u32,
            )
        };
        let life = total / lives;
        Self {
            lives,
            life,
            http_life: 1,
            http_seconds: (life.as_secs() / 2).min(60),
            sample_every: if args.quick {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(30)
            },
            down_for: if args.quick {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(5)
            },
        }
    }
}

/// The churning task's counters at a standstill: the daemon's and the cgroup's own.
#[derive(Clone, Copy, Debug)]
struct CpuPoint {
    daemon_ns: u64,
    cgroup_ns: u64,
}

/// One reading of the daemon's health.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    life: u32,
    rss: u64,
    tracked_cgroups: f64,
    processes_sampled: f64,
    cycle_errors: f64,
    exits_folded: f64,
}

/// What one daemon lifetime showed.
#[derive(Clone, Debug, Default)]
struct Life {
    /// Whether it served the HTTP load.
    http_load: bool,
    rss_start: u64,
    rss_end: u64,
    cycle_errors: f64,
    error_lines: Vec<String>,
    /// Whether this daemon reused the pinned sched_switch program (restarted ones must).
    kept_pinned: bool,
    stopped_cleanly: bool,
}

/// Allocations created and removed over and over, and how many the daemon listed.
#[derive(Clone, Copy, Debug, Default)]
struct Flapping {
    created: u64,
    listed: u64,
    /// The daemon was down (restarting) while the allocation was new.
    undetermined: u64,
}

/// One row of the summary.
struct Check {
    what: &'static str,
    figures: String,
    bound: String,
    /// None: informational.
    pass: Option<bool>,
}

/// The daemon's pins under a temporary root, uninstalled on drop (and by the signal
/// thread on Ctrl-C).
struct PinRoot {
    daemon: PathBuf,
    root: PathBuf,
}

impl PinRoot {
    fn new(daemon: &Path) -> Self {
        let root = Path::new("/sys/fs/bpf").join(format!("{PIN_ROOT_PREFIX}{}", &uuid()[..8]));
        cleanup::add_pin_root(daemon, &root);
        Self {
            daemon: daemon.to_path_buf(),
            root,
        }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if !cleanup::uninstall_pins(&self.daemon, &self.root) {
            eprintln!(
                "warning: could not remove the eBPF pins under {}",
                self.root.display()
            );
        }
        cleanup::remove_pin_root(&self.root);
    }
}

/// Removes the pin roots a previous, killed soak left. Returns how many.
fn remove_stale_pins(daemon: &Path) -> usize {
    let Ok(entries) = fs::read_dir("/sys/fs/bpf") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PIN_ROOT_PREFIX))
        .filter(|e| cleanup::uninstall_pins(daemon, &e.path()))
        .count()
}

/// The processes of a task stopped with SIGSTOP; continued on drop.
struct Frozen(Vec<i32>);

impl Frozen {
    fn stop(task: &TaskCgroup) -> Self {
        let pids = task.pids();
        for &pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Self(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// `CpuTotalNs` of a task, from `/v1/client/allocations`.
fn cpu_total_ns(daemon: &Daemon, task: &TaskCgroup) -> Result<u64> {
    let text = http::get_ok(daemon.addr, "/v1/client/allocations")?;
    let list: serde_json::Value = serde_json::from_str(&text).context("allocations JSON")?;
    list.as_array()
        .and_then(|allocs| allocs.iter().find(|a| a["ID"] == task.alloc.as_str()))
        .and_then(|a| a["Tasks"].as_array())
        .and_then(|tasks| tasks.iter().find(|t| t["Name"] == task.task.as_str()))
        .and_then(|t| t["CpuTotalNs"].as_u64())
        .with_context(|| format!("task {}.{} not listed", task.alloc, task.task))
}

/// Whether the daemon at `addr` lists allocation `alloc` within [`DISCOVERY_WAIT`];
/// None when it is down (restarting) meanwhile.
fn listed_in_time(alloc: &str, addr: &Mutex<Option<SocketAddr>>) -> Option<bool> {
    let path = format!("/v1/client/allocation/{alloc}/stats");
    let deadline = Instant::now() + DISCOVERY_WAIT;
    while Instant::now() < deadline {
        let current = (*addr.lock().unwrap_or_else(|e| e.into_inner()))?;
        match http::get(current, &path) {
            Ok((200, _)) => return Some(true),
            Ok(_) => thread::sleep(Duration::from_millis(100)),
            Err(_) => return None,
        }
    }
    Some(false)
}

/// Creates allocations and removes them again until `stop`: each runs a short-lived
/// churning process for one to three seconds, with a second without one between two.
fn flap(
    helper: &Path,
    addr: &Mutex<Option<SocketAddr>>,
    stop: &AtomicBool,
    counts: &Mutex<Flapping>,
) -> Result<()> {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let task = TaskCgroup::create(&uuid(), &format!("{TASK_PREFIX}soak-flap"))?;
        let mut cmd = Command::new(helper);
        cmd.args(["churn", "2", "20"]).stdout(Stdio::null());
        in_cgroup(&mut cmd, &task.procs_files())?;
        let load = process::ChildGuard::spawn_raw(&mut cmd)?;
        let born = Instant::now();
        let listed = listed_in_time(&task.alloc, addr);
        {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.created += 1;
            match listed {
                Some(true) => counts.listed += 1,
                Some(false) => {}
                None => counts.undetermined += 1,
            }
        }
        let life = Duration::from_millis(1000 + (round % 5) * 500);
        thread::sleep(life.saturating_sub(born.elapsed()));
        drop(load);
        drop(task);
        thread::sleep(Duration::from_secs(1));
        round += 1;
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The CPU the daemon attributed over a segment, in percent of the cgroup's own.
fn attributed_percent(from: CpuPoint, to: CpuPoint) -> f64 {
    let daemon = to.daemon_ns as f64 - from.daemon_ns as f64;
    let cgroup = to.cgroup_ns as f64 - from.cgroup_ns as f64;
    daemon / cgroup * 100.0
}

/// The soak while it runs: the current daemon and what was measured so far.
struct Soak<'a> {
    daemon_bin: &'a Path,
    pin_root: &'a Path,
    churn: &'a TaskCgroup,
    /// The current daemon's address, for the flapping thread (None while it is down).
    addr: &'a Mutex<Option<SocketAddr>>,
    progress: &'a dyn Fn(&str),
    daemon: Option<Daemon>,
    lives: Vec<Life>,
    samples: Vec<Sample>,
    points: Vec<CpuPoint>,
}

impl Soak<'_> {
    fn daemon(&self) -> Result<&Daemon> {
        self.daemon.as_ref().context("no daemon is running")
    }

    /// Starts a daemon on the pins and waits a few cycles. Its first sample (which asks
    /// for the churning allocation, so that its processes are sampled from then on, and
    /// renders the metrics) gives the RSS it starts from.
    fn start_daemon(&mut self) -> Result<Sample> {
        let daemon =
            Daemon::start_with_pins(self.daemon_bin, Source::Ebpf, INTERVAL, Some(self.pin_root))?;
        let cycles = daemon.metrics()?.get("cycles_total") as u64;
        daemon.wait_cycles(cycles + 3)?;
        let kept_pinned = daemon
            .log_text()
            .contains("kept the pinned sched_switch program");
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(daemon.addr);
        self.daemon = Some(daemon);
        self.lives.push(Life {
            kept_pinned,
            ..Life::default()
        });
        let first = self.sample()?;
        if let Some(life) = self.lives.last_mut() {
            life.rss_start = first.rss;
        }
        Ok(first)
    }

    /// Notes how the current daemon ends, and stops it.
    fn stop_daemon(&mut self) -> Result<()> {
        let end = self.sample()?;
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let daemon = self.daemon.take().context("no daemon is running")?;
        let life = self.lives.last_mut().context("no daemon was started")?;
        life.rss_end = end.rss;
        life.cycle_errors = end.cycle_errors;
        life.error_lines = daemon
            .log_text()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
            .map(str::to_owned)
            .collect();
        life.stopped_cleanly = daemon.stop();
        Ok(())
    }

    /// Asks for the churning allocation's stats (it stays collected in detail while
    /// asked about).
    fn ask(&self) -> Result<()> {
        let path = format!("/v1/client/allocation/{}/stats", self.churn.alloc);
        http::get_ok(self.daemon()?.addr, &path).map(drop)
    }

    /// Reads the daemon's health and prints it.
    fn sample(&mut self) -> Result<Sample> {
        self.ask()?;
        let daemon = self.daemon()?;
        let metrics = daemon.metrics()?;
        let (rss, _) = process::memory(daemon.pid())?;
        let s = Sample {
            at: Instant::now(),
            life: self.lives.len() as u32,
            rss,
            tracked_cgroups: metrics.get("tracked_cgroups"),
            processes_sampled: metrics.get("processes_sampled"),
            cycle_errors: metrics.get("cycle_errors_total"),
            exits_folded: metrics.get("kernel_exits_folded_total"),
        };
        let exits_per_minute = self
            .samples
            .last()
            .filter(|p| p.life == s.life)
            .map(|p| (s.exits_folded - p.exits_folded) / (s.at - p.at).as_secs_f64() * 60.0);
        (self.progress)(&format!(
            "daemon {}: VmRSS {}, tracked cgroups {}, processes sampled {}, cycle errors {}{}",
            s.life,
            mib(s.rss),
            s.tracked_cgroups,
            s.processes_sampled,
            s.cycle_errors,
            exits_per_minute.map_or(String::new(), |e| format!(
                ", {e:.0} process exits a minute"
            ))
        ));
        self.samples.push(s);
        Ok(s)
    }

    /// Freezes the churning task, waits until its cgroup's counter stops moving (a child
    /// forked just before the freeze finishes its burn) and the daemon has published two
    /// more cycles, and notes both counters.
    fn standstill(&mut self) -> Result<CpuPoint> {
        let _frozen = Frozen::stop(self.churn);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.churn.cpuacct_usage()?;
        loop {
            thread::sleep(Duration::from_millis(100));
            let now = self.churn.cpuacct_usage()?;
            if now == last {
                break;
            }
            if Instant::now() > deadline {
                bail!("the churning task did not come to a standstill");
            }
            last = now;
        }
        let daemon = self.daemon()?;
        let cycles = daemon.metrics()?.get("cycles_total") as u64;
        daemon.wait_cycles(cycles + 2)?;
        let point = CpuPoint {
            daemon_ns: cpu_total_ns(daemon, self.churn)?,
            cgroup_ns: self.churn.cpuacct_usage()?,
        };
        self.points.push(point);
        Ok(point)
    }

    /// The daemon lifetimes one after another, a restart between two, the HTTP load in
    /// one; ends at a standstill with the last daemon running. Returns the HTTP result.
    fn lifetimes<'scope>(
        &mut self,
        plan: &Plan,
        started: Instant,
        scope: &'scope thread::Scope<'scope, '_>,
    ) -> Result<Option<Wrk>> {
        let mut wrk = None;
        for life in 0..plan.lives {
            if life > 0 {
                self.stop_daemon()?;
                (self.progress)(&format!(
                    "restart {life}/{}: daemon stopped, down for {} s while the churn goes on",
                    plan.lives - 1,
                    plan.down_for.as_secs()
                ));
                thread::sleep(plan.down_for);
                self.start_daemon()?;
            }
            let life_end = started + plan.life * (life + 1);
            let http = if life == plan.http_life {
                if let Some(current) = self.lives.last_mut() {
                    current.http_load = true;
                }
                let (addr, seconds) = (self.daemon()?.addr, plan.http_seconds);
                let path = format!("/v1/client/allocation/{}/stats", self.churn.alloc);
                (self.progress)(&format!(
                    "HTTP load: {HTTP_CONNECTIONS} connections for {seconds} s"
                ));
                Some(scope.spawn(move || api::run_wrk(addr, &path, seconds, HTTP_CONNECTIONS)))
            } else {
                None
            };
            while Instant::now() + plan.sample_every < life_end {
                thread::sleep(plan.sample_every);
                self.sample()?;
            }
            if let Some(http) = http {
                let result = http.join().expect("the wrk thread")?;
                (self.progress)(&format!(
                    "HTTP load: {:.0} requests/s, p99 {:.2} ms, {} errors",
                    result.requests_per_s, result.p99_ms, result.errors
                ));
                wrk = Some(result);
            }
            thread::sleep(life_end.saturating_duration_since(Instant::now()));
            let from = *self.points.last().context("a first standstill")?;
            let to = self.standstill()?;
            (self.progress)(&format!(
                "standstill: the daemon attributed {:.2}% of the churning task's \
                 cpuacct.usage growth since the last one{}",
                attributed_percent(from, to),
                if life > 0 { " (across a restart)" } else { "" }
            ));
        }
        Ok(wrk)
    }
}

/// Everything the run measured, for the summary.
struct Outcome {
    points: Vec<CpuPoint>,
    lives: Vec<Life>,
    samples: Vec<Sample>,
    tracked_baseline: f64,
    tracked_end: f64,
    flapping: Flapping,
    wrk: Option<Wrk>,
    planned_restarts: u32,
}

fn run_soak(
    plan: &Plan,
    daemon_bin: &Path,
    helper_bin: &Path,
    progress: &dyn Fn(&str),
) -> Result<Outcome> {
    let started = Instant::now();
    // Dropped last: the `nomad` parents outlive every task cgroup of the soak.
    let _parents = NomadParents::ensure()?;
    let pins = PinRoot::new(daemon_bin);
    let setup_started = Instant::now();
    let churn = Scenario::setup(CHURN, helper_bin)?;
    let density = Scenario::setup(DENSITY, helper_bin)?;
    progress(&format!(
        "set up {} task cgroups: {} long-lived processes, and a task starting a process \
         every ~8 ms, in {:.1} s",
        churn.tasks.len() + density.tasks.len(),
        DENSITY.processes(),
        setup_started.elapsed().as_secs_f64()
    ));
    let addr = Mutex::new(None);
    let mut soak = Soak {
        daemon_bin,
        pin_root: &pins.root,
        churn: &churn.tasks[0],
        addr: &addr,
        progress,
        daemon: None,
        lives: Vec::new(),
        samples: Vec::new(),
        points: Vec::new(),
    };
    // Before any flapping allocation exists.
    let tracked_baseline = soak.start_daemon()?.tracked_cgroups;
    soak.standstill()?;

    let stop_flapping = AtomicBool::new(false);
    let flapping = Mutex::new(Flapping::default());
    let (lifetimes, flapped, wrk) = thread::scope(|scope| {
        let flapper = scope.spawn(|| flap(helper_bin, &addr, &stop_flapping, &flapping));
        let lifetimes = soak.lifetimes(plan, started, scope);
        // Whatever ended the lifetimes, the flapping stops with them.
        stop_flapping.store(true, Ordering::Relaxed);
        let flapped = flapper.join().expect("the flapping thread");
        let (lifetimes, wrk) = match lifetimes {
            Ok(wrk) => (Ok(()), wrk),
            Err(e) => (Err(e), None),
        };
        (lifetimes, flapped, wrk)
    });
    lifetimes?;
    flapped.context("creating and removing allocations")?;

    // The last flapping allocation is gone: the tracked cgroups must come back to the
    // baseline within a few cycles.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tracked_end = loop {
        let tracked = soak.daemon()?.metrics()?.get("tracked_cgroups");
        if tracked == tracked_baseline || Instant::now() > deadline {
            break tracked;
        }
        thread::sleep(INTERVAL);
    };
    soak.stop_daemon()?;
    let Soak {
        lives,
        samples,
        points,
        ..
    } = soak;
    let teardown = Instant::now();
    drop(density);
    drop(churn);
    drop(pins);
    progress(&format!(
        "torn down in {:.1} s",
        teardown.elapsed().as_secs_f64()
    ));
    Ok(Outcome {
        points,
        lives,
        samples,
        tracked_baseline,
        tracked_end,
        flapping: flapping.into_inner().unwrap_or_else(|e| e.into_inner()),
        wrk,
        planned_restarts: plan.lives - 1,
    })
}

/// The checks of the summary, from what the run measured and what it left.
fn checks(o: &Outcome, leftovers: &[String]) -> Vec<Check> {
    let mut checks = Vec::new();

    let segments: Vec<f64> = o
        .points
        .windows(2)
        .map(|w| attributed_percent(w[0], w[1]))
        .collect();
    let whole = match (o.points.first(), o.points.last()) {
        (Some(&first), Some(&last)) if o.points.len() > 1 => attributed_percent(first, last),
        _ => f64::NAN,
    };
    let within = |p: f64| (p / 100.0 - 1.0).abs() <= CPU_TOLERANCE;
    checks.push(Check {
        what: "CPU of the churning task: growth of its `CpuTotalNs` ÷ growth of its \
               cgroup's `cpuacct.usage`, between standstills (a restart in every segment \
               but the first)",
        figures: format!(
            "{}; whole run {whole:.2}%",
            segments
                .iter()
                .enumerate()
                .map(|(i, p)| format!("segment {}: {p:.2}%", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        bound: format!("within {:.0}%", CPU_TOLERANCE * 100.0),
        pass: Some(!segments.is_empty() && segments.iter().all(|&p| within(p)) && within(whole)),
    });

    checks.push(Check {
        what: "Daemon VmRSS, after warm-up → at its end, for each daemon",
        figures: o
            .lives
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "{}{}: {} → {}",
                    i + 1,
                    if l.http_load { " (HTTP load)" } else { "" },
                    mib(l.rss_start),
                    mib(l.rss_end)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        bound: format!("end ≤ start + {}", mib(RSS_GROWTH_BOUND)),
        pass: Some(
            o.lives
                .iter()
                .all(|l| l.rss_end <= l.rss_start + RSS_GROWTH_BOUND),
        ),
    });

    let (tracked_min, tracked_max) = o.samples.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
        (lo.min(s.tracked_cgroups), hi.max(s.tracked_cgroups))
    });
    checks.push(Check {
        what: "Tracked cgroups (`nomad_collector_tracked_cgroups`) once the flapping stopped",
        figures: format!(
            "baseline {}, end {} (samples {tracked_min}–{tracked_max})",
            o.tracked_baseline, o.tracked_end
        ),
        bound: "end = baseline".into(),
        pass: Some(o.tracked_end == o.tracked_baseline),
    });

    let f = o.flapping;
    checks.push(Check {
        what: "Allocations created and removed during the run, listed by the daemon within \
               5 s of creation",
        figures: format!(
            "{} created, {} listed, {} created while the daemon was down",
            f.created, f.listed, f.undetermined
        ),
        bound: "every one created while the daemon ran".into(),
        pass: Some(f.created > f.undetermined && f.listed == f.created - f.undetermined),
    });

    let cycle_errors: f64 = o.lives.iter().map(|l| l.cycle_errors).sum();
    let error_lines: Vec<&String> = o.lives.iter().flat_map(|l| &l.error_lines).collect();
    checks.push(Check {
        what: "Cycle errors (`nomad_collector_cycle_errors_total` at each daemon's end) and ERROR \
               lines in the daemons' logs",
        figures: format!(
            "{cycle_errors} cycle errors, {} ERROR lines{}",
            error_lines.len(),
            error_lines
                .first()
                .map_or(String::new(), |l| format!(" (first: `{l}`)"))
        ),
        bound: "none".into(),
        pass: Some(cycle_errors == 0.0 && error_lines.is_empty()),
    });

    checks.push(match o.wrk {
        Some(w) => Check {
            what: "HTTP: `wrk` with 200 connections on the churning allocation's stats",
            figures: format!(
                "{:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                w.requests_per_s, w.p50_ms, w.p99_ms, w.errors
            ),
            bound: format!("no errors, p99 < {HTTP_P99_BOUND_MS} ms"),
            pass: Some(w.errors == 0 && w.p99_ms < HTTP_P99_BOUND_MS),
        },
        None => Check {
            what: "HTTP: `wrk` with 200 connections on the churning allocation's stats",
            figures: "did not run".into(),
            bound: format!("no errors, p99 < {HTTP_P99_BOUND_MS} ms"),
            pass: Some(false),
        },
    });

    let restarted = o.lives.iter().skip(1);
    let done = restarted.clone().count() as u32;
    let kept = restarted.filter(|l| l.kept_pinned).count() as u32;
    let clean = o.lives.iter().filter(|l| l.stopped_cleanly).count();
    checks.push(Check {
        what: "Restarts on the pins (the restarted daemon keeps the pinned sched_switch \
               program), and clean stops",
        figures: format!(
            "{done}/{} restarts, pinned program kept {kept}/{done}, {clean}/{} clean stops",
            o.planned_restarts,
            o.lives.len()
        ),
        bound: "all".into(),
        pass: Some(
            done == o.planned_restarts && kept == done && clean == o.lives.len() && done > 0,
        ),
    });

    let sampled: Vec<f64> = o.samples.iter().map(|s| s.processes_sampled).collect();
    checks.push(Check {
        what: "Processes sampled (`nomad_collector_processes_sampled`; the churning \
               allocation is asked about)",
        figures: format!(
            "first {}, peak {}, last {}",
            sampled.first().unwrap_or(&0.0),
            sampled.iter().copied().fold(0.0, f64::max),
            sampled.last().unwrap_or(&0.0)
        ),
        bound: "–".into(),
        pass: None,
    });

    let (exits, minutes) = o
        .samples
        .windows(2)
        .filter(|w| w[0].life == w[1].life)
        .fold((0.0, 0.0), |(e, m), w| {
            (
                e + w[1].exits_folded - w[0].exits_folded,
                m + (w[1].at - w[0].at).as_secs_f64() / 60.0,
            )
        });
    checks.push(Check {
        what: "Churn: process exits folded into tracked cgroups \
               (`nomad_collector_kernel_exits_folded_total`)",
        figures: format!("{:.0} a minute", exits / minutes),
        bound: "–".into(),
        pass: None,
    });

    checks.push(Check {
        what: "Teardown: cgroups under `/sys/fs/cgroup/*/nomad` and the soak's pins",
        figures: if leftovers.is_empty() {
            "nothing left".into()
        } else {
            leftovers.join(", ")
        },
        bound: "nothing left".into(),
        pass: Some(leftovers.is_empty()),
    });
    checks
}

fn table(checks: &[Check]) -> String {
    let mut out = String::from("| Check | Figures | Bound | Result |\n|---|---|---|---|\n");
    for c in checks {
        let result = match c.pass {
            Some(true) => "pass",
            Some(false) => "**FAIL**",
            None => "info",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {result} |",
            c.what, c.figures, c.bound
        );
    }
    out
}

/// What the soak left: task cgroups (the `nomad` parents) and pin roots.
fn leftovers() -> Vec<String> {
    let mut left = cgroups::leftovers();
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        left.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(PIN_ROOT_PREFIX))
                .map(|e| e.path().display().to_string()),
        );
    }
    left
}

pub fn run(args: SoakArgs) -> Result<()> {
    cleanup::unless_interrupted(soak(&args))
}

fn soak(args: &SoakArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "the soak must run as root: it creates cgroups under /sys/fs/cgroup, moves \
             processes into them, and runs the daemon (eBPF programs, pins under \
             /sys/fs/bpf). Run it as root, e.g. `sudo -E cargo xtask soak`."
        );
    }
    let plan = Plan::new(args);
    let mut needs = setup::Needs::build();
    // wrk drives the HTTP load.
    needs.packages.push(("wrk", "wrk"));
    setup::ensure(&needs)?;
    let [daemon_bin] = build_release(
        "building the daemon (release, eBPF programs included)",
        "collector-user",
        ["nomad-collector"],
    )?;
    let [helper_bin] = build_release(
        "building the load helper (bench-load; release)",
        "xtask",
        ["bench-load"],
    )?;
    take_over_host()?;
    let stale_pins = remove_stale_pins(&daemon_bin);
    if stale_pins > 0 {
        announce(&format!(
            "removed {stale_pins} pin roots a previous (killed) soak left"
        ));
    }
    announce(&format!(
        "soak: {} daemon lifetimes of {} s, a restart between two (down {} s each), HTTP \
         load ({HTTP_CONNECTIONS} connections, {} s) in lifetime {}; {} processes in {} \
         tasks, a churning task, allocations created and removed throughout",
        plan.lives,
        plan.life.as_secs(),
        plan.down_for.as_secs(),
        plan.http_seconds,
        plan.http_life + 1,
        DENSITY.processes(),
        DENSITY.tasks() + 1,
    ));
    let progress = progress_printer(Instant::now());
    let outcome = run_soak(&plan, &daemon_bin, &helper_bin, &progress)?;
    let checks = checks(&outcome, &leftovers());
    println!("\n{}", table(&checks));
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.pass == Some(false))
        .map(|c| c.what.split(':').next().unwrap_or(c.what))
        .collect();
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join("; "));
    }
    announce("the soak passed");
    Ok(())
}
