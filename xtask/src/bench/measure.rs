//! One measured daemon run: start the daemon with a source, warm up, measure a window
//! of whole collection cycles, optionally measure accuracy, stop.
//!
//! The window is aligned on cycle ends (the collector thread's CPU clock stops moving),
//! and the daemon gets no request inside it: the metrics it serves are read just before
//! the start readings and just after the end readings, so the HTTP side costs nothing
//! inside the window. Except in the `clients-*` scenarios: there nomad-apm and the UI
//! ([`super::clients`]) poll from the daemon's start to the window's end, the window
//! starting half-way between two nomad-apm passes once the first pass is done, and what
//! they cost the daemon (its HTTP threads) is in the window's figures.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    clients::{ClientCounts, Clients},
    daemon::{Daemon, ProgramIds, Source},
    http,
    process::{self, BpfObject},
    workload::Scenario,
};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub interval: Duration,
    pub warmup_cycles: u64,
    pub cycles: u64,
    pub accuracy_cycles: u64,
}

/// CPU the daemon reported for a task against the task cgroup's own counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Accuracy {
    pub reported_ns: f64,
    pub true_ns: f64,
}

impl Accuracy {
    pub fn percent(&self) -> f64 {
        self.reported_ns / self.true_ns * 100.0
    }
}

/// Everything one run measured (deltas over the window unless said otherwise).
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    pub source: Option<Source>,
    pub round: usize,
    pub cycles: f64,
    pub wall_ns: f64,
    /// The whole daemon process (every thread), exact.
    pub process_cpu_ns: f64,
    /// utime + stime of /proc/<pid>/stat (tick resolution), for comparison.
    pub stat_cpu_ns: f64,
    /// The collector thread only.
    pub collector_cpu_ns: f64,
    /// `nomad_collector_cycle_cpu_seconds` at the window's start and end.
    pub cycle_cpu_metric_s: Vec<f64>,
    /// `nomad_collector_cycle_seconds` at the window's start and end.
    pub cycle_wall_metric_s: Vec<f64>,
    /// Processes sampled one by one in the last cycle of the window.
    pub processes_sampled: f64,
    /// cgroup control files the daemon holds open at the window's end.
    pub control_files_open: f64,
    /// sched_switch program: run time and runs over the window (bpf_stats on).
    pub switch_run_ns: f64,
    pub switch_runs: f64,
    /// Checkpoint program (one run per CPU per cycle, mostly on other CPUs in interrupt
    /// context, so not in the daemon's own CPU time).
    pub checkpoint_run_ns: f64,
    pub checkpoint_runs: f64,
    /// Per-process task iterator (runs inside the daemon's read(2): in its system time).
    pub iter_run_ns: f64,
    pub iter_runs: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
    pub map_memlock_bytes: u64,
    pub prog_memlock_bytes: u64,
    pub maps: usize,
    pub bpf_stats_on: bool,
    pub accuracy: Option<Accuracy>,
    /// Prometheus scrapes after the window: daemon CPU per scrape outside the collector
    /// thread, and how far VmRSS stands above its value before them, 3 s after the last.
    pub scrape: Option<ScrapeCost>,
    /// The clients' requests inside the window (`clients-*` scenarios).
    pub clients: Option<ClientFigures>,
}

/// What Nomad's clients did inside a window.
#[derive(Clone, Debug, Default)]
pub struct ClientFigures {
    pub counts: ClientCounts,
    /// The first failed request of the window, if any.
    pub first_error: Option<String>,
}

/// What `/v1/metrics?format=prometheus` costs the daemon.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrapeCost {
    pub cpu_ns_per_scrape: f64,
    pub rss_growth_bytes: i64,
    pub body_bytes: usize,
}

const SCRAPES: u32 = 10;

/// [`SCRAPES`] scrapes one after another; the collector thread's CPU over the same time
/// is taken out, so that what remains is the HTTP threads' rendering and sending.
fn measure_scrapes(daemon: &Daemon, tid: u32) -> Result<ScrapeCost> {
    let pid = daemon.pid();
    let (rss_before, _) = process::memory(pid)?;
    let cpu0 = (
        process::process_cpu_ns(pid)?,
        process::thread_cpu_ns(pid, tid)?,
    );
    let mut body_bytes = 0;
    for _ in 0..SCRAPES {
        body_bytes = http::get_ok(daemon.addr, "/v1/metrics?format=prometheus")?.len();
    }
    let cpu1 = (
        process::process_cpu_ns(pid)?,
        process::thread_cpu_ns(pid, tid)?,
    );
    thread::sleep(Duration::from_secs(3));
    let (rss_after, _) = process::memory(pid)?;
    let outside_collector =
        cpu1.0.saturating_sub(cpu0.0) as f64 - cpu1.1.saturating_sub(cpu0.1) as f64;
    Ok(ScrapeCost {
        cpu_ns_per_scrape: outside_collector.max(0.0) / f64::from(SCRAPES),
        rss_growth_bytes: rss_after as i64 - rss_before as i64,
        body_bytes,
    })
}

impl RunFigures {
    pub fn ms_per_cycle(&self) -> f64 {
        self.process_cpu_ns / self.cycles / 1e6
    }

    pub fn collector_ms_per_cycle(&self) -> f64 {
        self.collector_cpu_ns / self.cycles / 1e6
    }

    pub fn stat_ms_per_cycle(&self) -> f64 {
        self.stat_cpu_ns / self.cycles / 1e6
    }

    /// Daemon user+system in % of one core.
    pub fn process_share(&self) -> f64 {
        self.process_cpu_ns / self.wall_ns * 100.0
    }

    /// BPF run time outside the daemon's own CPU time, in % of one core: sched_switch on
    /// every CPU, and the checkpoint (its run on the daemon's own CPU, which is also in
    /// the daemon's time, is a few hundred ns per cycle). The per-process iterator runs
    /// inside the daemon's read(2), so it is already in the daemon's system time.
    pub fn bpf_share(&self) -> f64 {
        (self.switch_run_ns + self.checkpoint_run_ns) / self.wall_ns * 100.0
    }

    /// Everything the daemon costs, in % of one core.
    pub fn total_share(&self) -> f64 {
        self.process_share() + self.bpf_share()
    }

    pub fn switch_ns_per_event(&self) -> f64 {
        self.switch_run_ns / self.switch_runs
    }

    pub fn switches_per_s(&self) -> f64 {
        self.switch_runs / self.wall_ns * 1e9
    }

    pub fn checkpoint_us_per_cycle(&self) -> f64 {
        self.checkpoint_run_ns / self.cycles / 1e3
    }

    pub fn iter_us_per_cycle(&self) -> f64 {
        self.iter_run_ns / self.cycles / 1e3
    }
}

struct Point {
    at: Instant,
    process: u64,
    stat: u64,
    collector: u64,
    switch: (u64, u64),
    checkpoint: (u64, u64),
    iter: (u64, u64),
}

fn prog_stats(objects: &[BpfObject], id: Option<u64>) -> (u64, u64) {
    id.and_then(|id| {
        objects
            .iter()
            .find(|o| o.kind == "prog" && o.num("prog_id") == id)
    })
    .map(|o| (o.num("run_time_ns"), o.num("run_cnt")))
    .unwrap_or_default()
}

/// Waits for the end of a collection cycle: the collector thread's CPU time moves (a
/// cycle runs), then the thread is asleep (`S`, waiting for the next interval) with its
/// CPU time still for 30 ms. A runnable thread that waits for a CPU on a busy host does
/// not count as done. Gives up (and returns) after three intervals.
fn wait_cycle_end(pid: u32, tid: u32, interval: Duration) {
    let deadline = Instant::now() + interval * 3;
    let read = || process::thread_cpu_ns(pid, tid).unwrap_or(0);
    let start = read();
    while read() == start && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    let mut last = read();
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
        let now = read();
        let asleep = process::thread_state(pid, tid) == Some('S');
        if now != last || !asleep {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_millis(30) {
            return;
        }
    }
}

fn point(daemon: &Daemon, tid: u32, ids: Option<ProgramIds>) -> Result<Point> {
    let pid = daemon.pid();
    let objects = process::bpf_objects(pid);
    Ok(Point {
        at: Instant::now(),
        process: process::process_cpu_ns(pid)?,
        stat: process::stat_cpu_ns(pid)?,
        collector: process::thread_cpu_ns(pid, tid)?,
        switch: prog_stats(&objects, ids.map(|i| i.sched_switch)),
        checkpoint: prog_stats(&objects, ids.map(|i| i.checkpoint)),
        // A pass is the task walk's or the cgroup walk's: both count as the iterator.
        iter: {
            let (task_ns, task_runs) = prog_stats(&objects, ids.map(|i| i.process_iter));
            let (walk_ns, walk_runs) = prog_stats(&objects, ids.and_then(|i| i.cgroup_walk));
            (task_ns + walk_ns, task_runs + walk_runs)
        },
    })
}

pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// How long nomad-apm's first pass over every allocation may take.
const FIRST_PASS_TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon's collector thread. It can still be unnamed (or not started) when the
/// daemon first answers on a busy host: looked for during a few seconds.
fn collector_thread(pid: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(tid) = process::thread_named(pid, "collector") {
            return Ok(tid);
        }
        if Instant::now() > deadline {
            anyhow::bail!("no `collector` thread");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One daemon run against `scenario` with `source`, Nomad's clients polling it when
/// `with_clients`.
pub fn run(
    binary: &Path,
    scenario: &Scenario,
    source: Source,
    round: usize,
    settings: &Settings,
    accuracy: bool,
    with_clients: bool,
) -> Result<RunFigures> {
    let daemon = Daemon::start(binary, source, settings.interval)?;
    let figures = measure(&daemon, scenario, round, settings, accuracy, with_clients);
    let clean = daemon.stop();
    let mut figures = figures?;
    if !clean {
        eprintln!(
            "warning: the {} daemon did not exit cleanly",
            source.as_str()
        );
    }
    figures.source = Some(source);
    Ok(figures)
}

fn measure(
    daemon: &Daemon,
    scenario: &Scenario,
    round: usize,
    settings: &Settings,
    accuracy: bool,
    with_clients: bool,
) -> Result<RunFigures> {
    let pid = daemon.pid();
    let tid = collector_thread(pid)?;
    let ids = daemon.program_ids();
    let interval = settings.interval;
    let clients = if with_clients {
        // Once the daemon knows the allocations: the first cycle has run.
        wait_cycle_end(pid, tid, interval);
        let clients = Clients::start(daemon.addr, scenario)?;
        clients.wait_first_sweep(FIRST_PASS_TIMEOUT)?;
        Some(clients)
    } else {
        None
    };
    // Warm-up counted on the collector thread, without requests of ours (a metrics
    // request renders every task's gauges: it would add to the daemon's heap and CPU).
    for _ in 0..settings.warmup_cycles {
        wait_cycle_end(pid, tid, interval);
    }
    if let Some(c) = &clients {
        // Start on the first cycle end after a point half-way between two passes.
        let at = c.between_passes();
        thread::sleep(at.saturating_duration_since(Instant::now()));
        wait_cycle_end(pid, tid, interval);
    }

    let m0 = daemon.metrics()?;
    let expected = daemon.source.reported();
    if m0.source.as_deref() != Some(expected) {
        anyhow::bail!(
            "the daemon reports source {:?}, expected {expected}",
            m0.source
        );
    }
    let c0 = clients.as_ref().map(|c| {
        let before = c.counts();
        let first = c.take_first_error();
        if before.failed() > 0 {
            eprintln!(
                "warning: {} of {} client requests failed before the window (first: {})",
                before.failed(),
                before.requests(),
                first.unwrap_or_default()
            );
        }
        before
    });
    let p0 = point(daemon, tid, ids)?;
    let stats_on_start = bpf_stats_enabled();
    thread::sleep(interval.mul_f64(settings.cycles as f64 - 0.5));
    wait_cycle_end(pid, tid, interval);
    let p1 = point(daemon, tid, ids)?;
    let client_figures = clients.as_ref().zip(c0).map(|(c, c0)| ClientFigures {
        counts: c.counts().since(&c0),
        first_error: c.take_first_error(),
    });
    let m1 = daemon.metrics()?;
    let (rss, hwm) = process::memory(pid)?;
    // The scrapes below are measured with no other request.
    if let Some(c) = clients {
        c.stop();
    }
    let objects = process::bpf_objects(pid);
    let memlock = |kind: &str| -> u64 {
        objects
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.num("memlock"))
            .sum()
    };

    let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let mut figures = RunFigures {
        source: Some(daemon.source),
        round,
        cycles: m1.get("cycles_total") - m0.get("cycles_total"),
        wall_ns: (p1.at - p0.at).as_nanos() as f64,
        process_cpu_ns: delta(p0.process, p1.process),
        stat_cpu_ns: delta(p0.stat, p1.stat),
        collector_cpu_ns: delta(p0.collector, p1.collector),
        cycle_cpu_metric_s: vec![m0.get("cycle_cpu_seconds"), m1.get("cycle_cpu_seconds")],
        cycle_wall_metric_s: vec![m0.get("cycle_seconds"), m1.get("cycle_seconds")],
        processes_sampled: m1.get("processes_sampled"),
        control_files_open: m1.get("control_files_open"),
        switch_run_ns: delta(p0.switch.0, p1.switch.0),
        switch_runs: delta(p0.switch.1, p1.switch.1),
        checkpoint_run_ns: delta(p0.checkpoint.0, p1.checkpoint.0),
        checkpoint_runs: delta(p0.checkpoint.1, p1.checkpoint.1),
        iter_run_ns: delta(p0.iter.0, p1.iter.0),
        iter_runs: delta(p0.iter.1, p1.iter.1),
        rss_bytes: rss,
        hwm_bytes: hwm,
        map_memlock_bytes: memlock("map"),
        prog_memlock_bytes: memlock("prog"),
        maps: objects.iter().filter(|o| o.kind == "map").count(),
        bpf_stats_on: stats_on_start && bpf_stats_enabled(),
        accuracy: None,
        scrape: None,
        clients: client_figures,
    };
    if figures.cycles < 1.0 {
        anyhow::bail!("no cycle completed in the window");
    }
    if accuracy {
        figures.accuracy = Some(measure_accuracy(daemon, scenario, settings)?);
    }
    figures.scrape = Some(measure_scrapes(daemon, tid)?);
    Ok(figures)
}

/// Polls the first task's stats every 20 ms; for each new snapshot, the CPU it reports
/// over its interval (Percent × the time between snapshots) is summed and compared with
/// the growth of the task cgroup's `cpuacct.usage`, read as each new snapshot is seen.
fn measure_accuracy(daemon: &Daemon, scenario: &Scenario, settings: &Settings) -> Result<Accuracy> {
    let task = &scenario.tasks[0];
    let path = format!("/v1/client/allocation/{}/stats", task.alloc);
    let deadline = Instant::now() + settings.interval * (settings.accuracy_cycles as u32 * 3 + 10);
    let mut seen: Vec<(i64, f64, u64)> = Vec::new();
    while seen.len() as u64 <= settings.accuracy_cycles {
        if Instant::now() > deadline {
            anyhow::bail!("accuracy: the stats did not advance");
        }
        let body = http::get_ok(daemon.addr, &path)?;
        let usage = task.cpuacct_usage()?;
        let v: serde_json::Value = serde_json::from_str(&body).context("stats JSON")?;
        let ts = v["Timestamp"].as_i64().context("Timestamp")?;
        let percent = v["Tasks"][&task.task]["ResourceUsage"]["CpuStats"]["Percent"]
            .as_f64()
            .context("task Percent")?;
        if seen.last().is_none_or(|last| last.0 != ts) {
            seen.push((ts, percent, usage));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let reported: f64 = seen
        .windows(2)
        .map(|w| w[1].1 / 100.0 * (w[1].0 - w[0].0) as f64)
        .sum();
    let first = seen.first().expect("samples").2;
    let last = seen.last().expect("samples").2;
    Ok(Accuracy {
        reported_ns: reported,
        true_ns: last.saturating_sub(first) as f64,
    })
}
