//! Nomad's full profile, every interval, for every allocation whether anyone asks or
//! not (issue 13): every process listed within an interval of its start and gone within
//! one of its exit, each process's CPU against its own schedstat, its RSS against statm,
//! and rates, not first samples, from the first request on.

use std::{
    fs,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    burner, eventually, favoured, kernel_version, privileged, schedstat_ns, unix_ns, uuid,
    Background, Cgroup, Daemon,
};
use serde_json::Value;

const INTERVAL: Duration = Duration::from_secs(1);
/// What a published snapshot may lag its interval by: the cycle itself, the poll, and a
/// shared machine's scheduling noise.
const SLACK: Duration = Duration::from_millis(300);

fn daemon() -> Daemon {
    Daemon::start(&["--interval", "1s", "--no-pin"])
}

fn stats(daemon: &Daemon, alloc: &str) -> Option<Value> {
    let (status, body) = daemon.get(&format!("/v1/client/allocation/{alloc}/stats"));
    (status == 200).then(|| serde_json::from_str(&body).expect("stats are JSON"))
}

/// The allocation is listed (without asking for its stats) and the daemon has run
/// `cycles` more cycles since.
fn listed_and_cycled(daemon: &Daemon, alloc: &str, cycles: f64) {
    eventually(Duration::from_secs(15), || {
        let list = daemon.get_json("/v1/client/allocations");
        list.as_array()?
            .iter()
            .any(|a| a["ID"] == alloc)
            .then_some(())
    })
    .expect("allocation listed");
    let cycle = || daemon.metric("nomad_collector_cycles_total", &[]);
    let from = cycle().expect("cycles");
    eventually(Duration::from_secs(15), || {
        (cycle()? >= from + cycles).then_some(())
    })
    .expect("cycles go on");
}

fn pids_of(v: &Value, task: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = v["Tasks"][task]["Pids"]
        .as_object()
        .map(|m| m.keys().map(|k| k.parse().expect("PID keys")).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

#[test]
fn every_process_is_listed_within_an_interval_of_its_start_and_gone_within_one_of_its_exit() {
    if !privileged(
        "every_process_is_listed_within_an_interval_of_its_start_and_gone_within_one_of_its_exit",
    ) {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let first = cgroup.spawn(burner!().args(["sleep", "60"]));
    let daemon = daemon();
    listed_and_cycled(&daemon, &alloc, 1.0);
    // Nobody asked for the allocation: its processes are there all the same.
    let v = stats(&daemon, &alloc).expect("stats");
    assert_eq!(pids_of(&v, "web"), vec![first.pid()], "{v}");
    for round in 0..3 {
        let started = Instant::now();
        let child = cgroup.spawn(burner!().args(["sleep", "60"]));
        let pid = child.pid();
        eventually(INTERVAL * 3, || {
            pids_of(&stats(&daemon, &alloc)?, "web")
                .contains(&pid)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: process {pid} never listed"));
        let listed = started.elapsed();
        assert!(
            listed <= INTERVAL + SLACK,
            "round {round}: process {pid} listed {listed:?} after its start"
        );
        let ended = Instant::now();
        drop(child);
        eventually(INTERVAL * 3, || {
            (!pids_of(&stats(&daemon, &alloc)?, "web").contains(&pid)).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: process {pid} still listed"));
        let gone = ended.elapsed();
        assert!(
            gone <= INTERVAL + SLACK,
            "round {round}: process {pid} still listed {gone:?} after its exit"
        );
    }
}

/// The CPU of a thread group by wall-clock time, sampled every few milliseconds.
struct CpuLog(Arc<Mutex<Vec<(i64, u64)>>>);

impl CpuLog {
    fn start(pid: u32, background: &mut Background) -> CpuLog {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&log);
        background.spawn(move |stop| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sample = (unix_ns(), schedstat_ns(pid));
                writer.lock().unwrap().push(sample);
                thread::sleep(Duration::from_millis(2));
            }
        });
        CpuLog(log)
    }

    /// The thread group's CPU ns at unix time `at`, interpolated between the samples
    /// around it.
    fn at(&self, at: i64) -> Option<f64> {
        let log = self.0.lock().unwrap();
        let after = log.iter().position(|&(t, _)| t >= at)?;
        let (t1, c1) = log[after.checked_sub(1)?];
        let (t2, c2) = log[after];
        let share = (at - t1) as f64 / (t2 - t1).max(1) as f64;
        Some(c1 as f64 + (c2 as f64 - c1 as f64) * share)
    }
}

#[test]
fn each_process_cpu_over_an_interval_is_its_schedstat_delta_within_1_percent() {
    if !privileged("each_process_cpu_over_an_interval_is_its_schedstat_delta_within_1_percent") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let spinner = cgroup.spawn(favoured(&mut burner!()).args(["spin", "1", "60"]));
    let pid = spinner.pid();
    let mut background = Background::default();
    let log = CpuLog::start(pid, &mut background);
    let daemon = daemon();
    listed_and_cycled(&daemon, &alloc, 1.0);
    // Consecutive snapshots: (the task's Timestamp, the process's Percent).
    let mut seen: Vec<(i64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 6 && Instant::now() < deadline {
        if let Some(v) = stats(&daemon, &alloc) {
            let task = &v["Tasks"]["web"];
            let at = task["Timestamp"].as_i64().expect("Timestamp");
            if seen.last().is_none_or(|&(t, _)| t != at) {
                let percent = task["Pids"][pid.to_string()]["CpuStats"]["Percent"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no Percent for {pid}: {v}"));
                seen.push((at, percent));
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    background.stop();
    let intervals: Vec<_> = seen
        .windows(2)
        .filter(|w| {
            // Only snapshots one interval apart (none missed between two polls).
            let gap = Duration::from_nanos((w[1].0 - w[0].0) as u64);
            gap < INTERVAL + INTERVAL / 2
        })
        .collect();
    assert!(intervals.len() >= 3, "too few intervals seen: {seen:?}");
    for w in intervals {
        let ((t1, _), (t2, percent)) = (w[0], w[1]);
        let truth =
            (log.at(t2).expect("logged") - log.at(t1).expect("logged")) / (t2 - t1) as f64 * 100.0;
        assert!(
            (percent - truth).abs() <= truth * 0.01,
            "process {pid}: {percent:.2}% reported over [{t1}, {t2}], schedstat says {truth:.2}%"
        );
    }
}

/// Pages by which the RSS a process reports may differ from statm's. Before 6.2 the
/// per-mm counters are plain atomics that both read: none. From 6.2 they are per-CPU
/// counters; the daemon reads their shared part, and so does statm, except on kernels
/// with 6.16's "fix the inaccurate memory statistics" (backported to stable kernels:
/// Debian's 6.12 has it), where statm adds every CPU's part up. The difference is then
/// at most the kernel's per-CPU batch on each CPU, for each of the file, anon and shmem
/// counters.
fn rss_tolerance_pages() -> u64 {
    if kernel_version() < (6, 2) {
        return 0;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let batch = (2 * cpus).max(32);
    3 * batch * cpus
}

#[test]
fn each_process_rss_is_its_statm_resident_pages() {
    if !privileged("each_process_rss_is_its_statm_resident_pages") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "hold");
    let holders = [
        cgroup.spawn(burner!().args(["hold", "20", "60"])),
        cgroup.spawn(burner!().args(["hold", "5", "60"])),
    ];
    let daemon = daemon();
    listed_and_cycled(&daemon, &alloc, 2.0);
    let page = 4096; // every machine of the matrix (x86-64)
    let tolerance = rss_tolerance_pages();
    for holder in &holders {
        let pid = holder.pid();
        // Both settle once the process touched its memory: read until they agree.
        let mut last = None;
        let agreed = eventually(Duration::from_secs(10), || {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            let v = stats(&daemon, &alloc)?;
            let rss = v["Tasks"]["hold"]["Pids"][pid.to_string()]["MemoryStats"]["RSS"].as_u64()?;
            last = Some((rss / page, resident));
            (rss % page == 0 && (rss / page).abs_diff(resident) <= tolerance).then_some(rss)
        });
        let rss = agreed.unwrap_or_else(|| {
            panic!(
                "process {pid}: (reported, statm) resident pages {last:?}, allowed to differ \
                 by {tolerance}"
            )
        });
        assert!(rss >= 5 << 20, "process {pid}: {rss} B");
    }
    // The holders sleep once their memory is touched: after that the task iterator no
    // longer reports them, and the figures above are their carried records (a slot is
    // read in full at its turn, once in 10 intervals, hence the wait).
    let carried = eventually(Duration::from_secs(5), || {
        daemon
            .metric("nomad_collector_threads_carried", &[])
            .filter(|&n| n >= holders.len() as f64)
    });
    assert!(
        carried.is_some(),
        "the sleeping holders' records are carried, not read again"
    );
}

#[test]
fn the_first_request_gets_rates_not_first_samples() {
    if !privileged("the_first_request_gets_rates_not_first_samples") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let spinner = cgroup.spawn(favoured(&mut burner!()).args(["spin", "1", "60"]));
    let daemon = daemon();
    listed_and_cycled(&daemon, &alloc, 2.0);
    let v = stats(&daemon, &alloc).expect("stats");
    let task = &v["Tasks"]["web"]["ResourceUsage"]["CpuStats"]["Percent"];
    let pid = &v["Tasks"]["web"]["Pids"][spinner.pid().to_string()]["CpuStats"]["Percent"];
    for (what, percent) in [("task", task), ("process", pid)] {
        let percent = percent.as_f64().unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(
            (percent - 100.0).abs() <= 15.0,
            "{what} Percent on the first request: {percent} (a busy thread): {v}"
        );
    }
}
