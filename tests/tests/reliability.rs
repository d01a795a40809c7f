//! Reliability and security on the real kernel: restarts, full maps, PID reuse, vanishing
//! cgroups, churn, lost privileges, configuration reload, ACL. (Issue: reliability.)

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    burner, eventually, percent_and_truth, privileged, schedstat_ns, unix_ns, uuid, vm_rss_bytes,
    Background, Cgroup, ConfigFile, Daemon, Pins,
};
use serde_json::Value;

fn stats(daemon: &Daemon, alloc: &str) -> Option<Value> {
    let (status, body) = daemon.get(&format!("/v1/client/allocation/{alloc}/stats"));
    (status == 200).then(|| serde_json::from_str(&body).expect("JSON"))
}

fn task_percent(v: &Value, task: &str) -> f64 {
    v["Tasks"][task]["ResourceUsage"]["CpuStats"]["Percent"]
        .as_f64()
        .unwrap()
}

fn stop_process(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Waits until the daemon has taken `cycles` further cycles.
fn wait_cycles(daemon: &Daemon, cycles: f64) {
    let start = daemon
        .metric("nomad_collector_cycles_total", &[])
        .unwrap_or(0.0);
    eventually(Duration::from_secs(20), || {
        (daemon.metric("nomad_collector_cycles_total", &[])? >= start + cycles).then_some(())
    })
    .expect("the daemon keeps cycling");
}

/// (link id, program id) of the `sched_switch` link the daemon pinned under this test's
/// own pin root (in whichever layout version directory), if there is one. Judging by these
/// ids, not by program names, lets the test pass beside any other collector on the host
/// (a production instance attaches its own `sched_switch`).
fn pinned_switch(pins: &Pins) -> Option<(u32, u32)> {
    let pin = fs::read_dir(&pins.root)
        .ok()?
        .flatten()
        .map(|version| version.path().join("sched_switch_link"))
        .find(|path| path.exists())?;
    let link = aya::programs::links::PinnedLink::from_pin(&pin).ok()?;
    // The descriptor opened here is closed when `info` returns: it holds nothing up.
    let info = aya::programs::links::FdLink::from(link).info().ok()?;
    Some((info.id(), info.program_id()))
}

/// Whether a program with this id is loaded, named `sched_switch` (ids are not reused
/// while the kernel runs, short of wrapping around 2^31).
fn switch_program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == id && p.name_as_str() == Some("sched_switch"))
}

/// How the first daemon of a restart test goes away.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGTERM: a clean stop that leaves the pins for the next start.
    Clean,
    /// SIGKILL: no chance to do anything; the pins alone carry the state.
    Killed,
}

#[test]
fn a_restart_loses_no_cpu_time() {
    if privileged("a_restart_loses_no_cpu_time") {
        restart_loses_no_cpu_time(Stop::Clean);
    }
}

#[test]
fn a_sigkilled_daemon_loses_no_cpu_time() {
    if privileged("a_sigkilled_daemon_loses_no_cpu_time") {
        restart_loses_no_cpu_time(Stop::Killed);
    }
}

fn restart_loses_no_cpu_time(how: Stop) {
    let pins = Pins::new();
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "work");
    let spinner = cgroup.spawn(burner!().args(["spin", "1", "120"]));
    let args = ["--interval", "500ms", "--pin-root", pins.root.as_str()];
    let mut first = Daemon::start(&args);
    eventually(Duration::from_secs(10), || stats(&first, &alloc)).expect("task found");
    thread::sleep(Duration::from_secs(2));
    // Freeze the workload so that the daemon's total and the cgroup's own counter are
    // read at a standstill.
    stop_process(spinner.pid(), libc::SIGSTOP);
    wait_cycles(&first, 2.0);
    let before = first.task_cpu_total_ns(&alloc, "work").unwrap();
    let usage_before = cgroup.cpu_usage_ns();
    assert!(
        before > 1_000_000_000,
        "counted {before} ns before the restart"
    );
    let pinned = pinned_switch(&pins).expect("the daemon pinned its sched_switch link");
    let (_, program) = pinned;
    assert!(
        switch_program_loaded(program),
        "the pinned program is loaded"
    );
    match how {
        Stop::Clean => assert!(first.stop(), "clean stop"),
        Stop::Killed => first.kill(),
    }
    assert!(
        pinned_switch(&pins) == Some(pinned) && switch_program_loaded(program),
        "the pinned program stays loaded while the daemon is down"
    );

    // While the daemon is down: the live process runs again, and short children come and go.
    stop_process(spinner.pid(), libc::SIGCONT);
    let churn = cgroup.spawn(burner!().args(["churn", "50", "20"]));
    assert!(churn.wait());
    thread::sleep(Duration::from_secs(1));
    stop_process(spinner.pid(), libc::SIGSTOP);

    let second = Daemon::start(&args);
    assert!(
        !second
            .log_lines("kept the pinned sched_switch program")
            .is_empty(),
        "the restarted daemon reuses the pinned program:\n{}",
        second.log_text()
    );
    wait_cycles(&second, 2.0);
    let after = second.task_cpu_total_ns(&alloc, "work").unwrap();
    let usage_after = cgroup.cpu_usage_ns();
    let counted = after - before;
    let truth = usage_after - usage_before;
    assert!(
        truth > 1_500_000_000,
        "the workload ran while the daemon was down: {truth} ns"
    );
    let error = (counted as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error < 0.05,
        "across the restart the daemon counted {counted} ns, the cgroup {truth} ns ({:.1}% apart)",
        error * 100.0
    );
    // Percent is right again one interval after start, with no spike on the way.
    stop_process(spinner.pid(), libc::SIGCONT);
    let mut readings = Vec::new();
    for _ in 0..6 {
        thread::sleep(Duration::from_millis(500));
        readings.push(task_percent(&stats(&second, &alloc).unwrap(), "work"));
    }
    assert!(
        readings.iter().all(|p| *p <= 106.0),
        "spike after restart: {readings:?}"
    );
    let (mean, truth) = percent_and_truth(&second, &alloc, "work", &cgroup, 4);
    assert!(
        truth > 50.0 && (mean - truth).abs() <= 8.0,
        "after restart the task reads {mean}%, its cgroup used {truth}% ({readings:?})"
    );

    drop(second);
    assert!(pins.uninstall(), "--uninstall succeeds");
    assert!(!std::path::Path::new(&pins.root).exists(), "pins removed");
    assert!(
        eventually(Duration::from_secs(5), || (!switch_program_loaded(program))
            .then_some(()))
        .is_some(),
        "uninstall detaches the program"
    );
}

#[test]
fn incompatible_pins_are_replaced_with_a_clear_message() {
    if !privileged("incompatible_pins_are_replaced_with_a_clear_message") {
        return;
    }
    let pins = Pins::new();
    // A first run creates the folder (and mounts bpffs if needed).
    let small = ConfigFile::new("[ebpf]\nmax_tracked_cgroups = 64\n");
    let mut daemon = Daemon::start(&["--config", small.arg(), "--pin-root", &pins.root]);
    assert!(daemon.stop());
    // Pins of another layout version, and a map size that no longer matches.
    let stale = format!("{}/v0", pins.root);
    fs::create_dir(&stale).unwrap();
    let large = ConfigFile::new("[ebpf]\nmax_tracked_cgroups = 128\n");
    let daemon = Daemon::start(&["--config", large.arg(), "--pin-root", &pins.root]);
    assert!(
        !std::path::Path::new(&stale).exists(),
        "old-version pins removed"
    );
    assert!(
        !daemon
            .log_lines("incompatible collector version")
            .is_empty()
            && !daemon
                .log_lines("do not match this configuration")
                .is_empty(),
        "replacements are logged:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        daemon.metric("nomad_collector_source", &[("source", "ebpf")]),
        Some(1.0)
    );
}

#[test]
fn a_full_map_is_counted_and_nobody_gets_anothers_figures() {
    if !privileged("a_full_map_is_counted_and_nobody_gets_anothers_figures") {
        return;
    }
    let alloc = uuid();
    let tiny = ConfigFile::new("interval = \"500ms\"\n[ebpf]\nmax_tracked_cgroups = 2\n");
    let groups: Vec<Cgroup> = (0..4)
        .map(|i| Cgroup::task(&alloc, &format!("t{i}")))
        .collect();
    let busy = groups[0].spawn(burner!().args(["spin", "1", "60"]));
    let sleepers: Vec<_> = groups[1..]
        .iter()
        .map(|g| g.spawn(burner!().args(["sleep", "60"])))
        .collect();
    let daemon = Daemon::start(&["--config", tiny.arg(), "--no-pin"]);
    eventually(Duration::from_secs(10), || stats(&daemon, &alloc)).unwrap();
    thread::sleep(Duration::from_secs(3));
    let v = stats(&daemon, &alloc).unwrap();
    assert_eq!(
        v["Tasks"].as_object().unwrap().len(),
        4,
        "every task is served: {v}"
    );
    let mut pids = vec![busy.pid()];
    pids.extend(sleepers.iter().map(|s| s.pid()));
    for (i, pid) in pids.iter().enumerate() {
        let task = &v["Tasks"][format!("t{i}")];
        let keys: Vec<&String> = task["Pids"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            vec![&pid.to_string()],
            "t{i} shows exactly its own process"
        );
    }
    let (busy_percent, truth) = percent_and_truth(&daemon, &alloc, "t0", &groups[0], 6);
    assert!(truth > 50.0, "the busy task ran: {truth}%");
    assert!(
        (busy_percent - truth).abs() <= 8.0,
        "busy task reads {busy_percent}%, its cgroup used {truth}%"
    );
    for i in 1..4 {
        let p = task_percent(&v, &format!("t{i}"));
        assert!(p <= 2.0, "sleeping task t{i} reads {p}%");
    }
    assert_eq!(
        daemon.metric("nomad_collector_tracked_cgroups", &[]),
        Some(2.0)
    );
    assert!(
        daemon
            .metric("nomad_collector_tracked_cgroups_full_total", &[])
            .unwrap()
            >= 1.0
    );
    assert!(
        !daemon.log_lines("tracked cgroups is full").is_empty(),
        "overflow is logged"
    );
}

#[test]
fn a_reused_pid_starts_from_zero_in_the_api() {
    if !privileged("a_reused_pid_starts_from_zero_in_the_api") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "reuse");
    let daemon = Daemon::start(&["--interval", "500ms", "--no-pin"]);
    let busy = cgroup.spawn(burner!().args(["spin", "1", "3"]));
    let pid = busy.pid();
    eventually(Duration::from_secs(10), || {
        let v = stats(&daemon, &alloc)?;
        let p = v["Tasks"]["reuse"]["Pids"][pid.to_string()]["CpuStats"]["Percent"].as_f64()?;
        (p > 50.0).then_some(())
    })
    .expect("the busy process is seen busy");
    assert!(busy.wait());
    let mut reused = None;
    for _ in 0..50 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let child = cgroup.spawn(burner!().args(["sleep", "30"]));
        if child.pid() == pid {
            reused = Some(child);
            break;
        }
    }
    let _sleeper = reused.expect("got the PID back");
    let reused_at = unix_ns();
    let mut checked = 0;
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(300));
        let v = stats(&daemon, &alloc).unwrap();
        // Only snapshots taken after the reuse speak about the new process.
        if v["Tasks"]["reuse"]["Timestamp"].as_i64().unwrap() <= reused_at {
            continue;
        }
        let p = v["Tasks"]["reuse"]["Pids"][pid.to_string()]["CpuStats"]["Percent"]
            .as_f64()
            .expect("the new process is listed under the reused PID");
        // Every process is sampled from its start, so an interval may hold the new
        // process's own start-up (slow under emulation): never more than that, and
        // nothing of the 3 s the old one ran.
        let own_ms = schedstat_ns(pid) as f64 / 1e6;
        let reported_ms = p / 100.0 * 500.0;
        assert!(
            reported_ms <= own_ms + 5.0,
            "the sleeping process behind the reused PID reads {p}% ({reported_ms:.1} ms of \
             an interval) but has run {own_ms:.1} ms in all: {}",
            v["Tasks"]["reuse"]
        );
        checked += 1;
    }
    assert!(checked >= 5, "too few fresh snapshots ({checked})");
}

#[test]
fn vanishing_processes_and_cgroups_never_cause_errors() {
    if !privileged("vanishing_processes_and_cgroups_never_cause_errors") {
        return;
    }
    let daemon = Arc::new(Daemon::start(&["--interval", "200ms", "--no-pin"]));
    let stop = Arc::new(AtomicBool::new(false));
    let current = Arc::new(std::sync::Mutex::new(uuid()));
    let bad = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (daemon, stop, current, bad) =
                (daemon.clone(), stop.clone(), current.clone(), bad.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let alloc = current.lock().unwrap().clone();
                    for path in [
                        format!("/v1/client/allocation/{alloc}/stats"),
                        "/v1/metrics?format=prometheus".to_owned(),
                        "/v1/client/allocations".to_owned(),
                    ] {
                        let (status, _) = daemon.get(&path);
                        if !(status == 200 || status == 404) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut rounds = 0;
    while Instant::now() < deadline {
        let alloc = uuid();
        *current.lock().unwrap() = alloc.clone();
        let cgroup = Cgroup::task(&alloc, "flash");
        let children: Vec<_> = (0..3)
            .map(|_| cgroup.spawn(burner!().args(["churn", "3", "5"])))
            .collect();
        thread::sleep(Duration::from_millis(150 + (rounds % 5) * 60));
        drop(children);
        drop(cgroup); // kills what is left and removes the cgroups mid-cycle
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "a request got neither 200 nor 404"
    );
    assert!(rounds > 10);
    assert_eq!(daemon.get("/v1/agent/health").0, 200, "daemon alive");
    let log = daemon.log_text();
    assert!(
        !log.contains(" ERROR ") && !log.contains("panicked"),
        "errors logged:\n{log}"
    );
}

#[test]
fn without_privileges_it_falls_back_to_proc_and_says_so() {
    if !privileged("without_privileges_it_falls_back_to_proc_and_says_so") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    // nobody: no CAP_BPF, no CAP_SYS_ADMIN; eBPF cannot load.
    let daemon = Daemon::start_as(Some(65534), &["--interval", "500ms"]);
    assert!(
        !daemon.log_lines("eBPF COULD NOT BE LOADED").is_empty(),
        "the fallback is logged loudly:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        daemon.metric("nomad_collector_source", &[("source", "procfs")]),
        Some(1.0)
    );
    assert_eq!(
        daemon.metric("nomad_collector_programs_attached", &[]),
        Some(0.0)
    );
    eventually(Duration::from_secs(10), || stats(&daemon, &alloc)).unwrap();
    let (p, truth) = percent_and_truth(&daemon, &alloc, "web", &cgroup, 4);
    assert!(
        truth > 50.0 && (p - truth).abs() <= 8.0,
        "the /proc source reads {p}% for a busy loop whose cgroup used {truth}%"
    );
    let v = stats(&daemon, &alloc).unwrap();
    assert!(
        v["Tasks"]["web"]["Pids"]
            .get(spin.pid().to_string())
            .is_some(),
        "the busy process is listed: {v}"
    );
}

fn status_field(pid: u32, tid: &str, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

#[test]
fn after_start_up_no_capability_is_left_and_the_user_can_change() {
    if !privileged("after_start_up_no_capability_is_left_and_the_user_can_change") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let _spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    let config = ConfigFile::new("interval = \"500ms\"\n[security]\nuser = \"nobody\"\n");
    let daemon = Daemon::start(&["--config", config.arg(), "--no-pin"]);
    let pid = daemon.pid();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid = task.file_name().into_string().unwrap();
        for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            let value = status_field(pid, &tid, field);
            assert!(
                value.trim_start_matches('0').is_empty(),
                "thread {tid} {field} {value}"
            );
        }
        assert_eq!(status_field(pid, &tid, "NoNewPrivs:"), "1");
        assert!(
            status_field(pid, &tid, "Uid:").starts_with("65534"),
            "runs as nobody"
        );
    }
    // Still measuring with eBPF through the descriptors it kept.
    assert_eq!(
        daemon.metric("nomad_collector_source", &[("source", "ebpf")]),
        Some(1.0)
    );
    eventually(Duration::from_secs(10), || stats(&daemon, &alloc)).unwrap();
    let (p, truth) = percent_and_truth(&daemon, &alloc, "web", &cgroup, 4);
    assert!(
        truth > 50.0 && (p - truth).abs() <= 8.0,
        "after dropping privileges the busy task reads {p}%, its cgroup used {truth}%"
    );
}

fn reload_config(token: &str, alloc: &str, cgroup: &str, extra: &str) -> String {
    format!(
        r#"interval = "500ms"
[acl]
tokens = ["{token}"]
[[allocation]]
id = "{alloc}"
job = "reload-test"
[[allocation.task]]
name = "static"
cgroup = "{cgroup}"
{extra}"#
    )
}

/// `CpuTotalNs` of the `static` task, through the ACL.
fn cpu_total(daemon: &Daemon, token: &str, alloc: &str) -> u64 {
    let (status, body) = daemon.get_with_token("/v1/client/allocations", token);
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["ID"] == alloc)
        .and_then(|a| a["Tasks"][0]["CpuTotalNs"].as_u64())
        .expect("the static task is listed")
}

#[test]
fn sighup_reloads_and_rejects_a_bad_configuration() {
    if !privileged("sighup_reloads_and_rejects_a_bad_configuration") {
        return;
    }
    let (alloc, other) = (uuid(), uuid());
    // Outside Nomad's layout: found only because the configuration names it.
    let cgroup = Cgroup::outside_nomad(&format!("collector-test-static/{alloc}"));
    let second = Cgroup::outside_nomad(&format!("collector-test-static/{other}"));
    let _spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    let _sleep = second.spawn(burner!().args(["sleep", "60"]));
    let path = cgroup.cpu_path().to_str().unwrap().to_owned();
    let path2 = second.cpu_path().to_str().unwrap().to_owned();
    let (one, two) = ("token-one-1234567", "token-two-7654321");
    let config = ConfigFile::new(&reload_config(one, &alloc, &path, ""));
    let daemon = Daemon::start(&["--config", config.arg(), "--no-pin"]);
    let stats_path = format!("/v1/client/allocation/{alloc}/stats");
    eventually(Duration::from_secs(10), || {
        (daemon.get_with_token(&stats_path, one).0 == 200).then_some(())
    })
    .expect("static allocation served");

    // ACL on: every route but liveness needs a token.
    for route in [
        stats_path.as_str(),
        "/v1/client/stats",
        "/v1/metrics",
        "/v1/client/allocations",
    ] {
        let (status, body) = daemon.get(route);
        assert_eq!(
            (status, body.as_str()),
            (403, "Permission denied"),
            "{route} without a token"
        );
        let (status, body) = daemon.get_with_token(route, "not-a-real-token");
        assert_eq!(
            (status, body.as_str()),
            (403, "ACL token not found"),
            "{route}"
        );
        assert_eq!(
            daemon.get_with_token(route, one).0,
            200,
            "{route} with the token"
        );
    }
    assert_eq!(daemon.get("/v1/agent/health").0, 200);
    thread::sleep(Duration::from_secs(2));

    let total_before = cpu_total(&daemon, one, &alloc);
    // A valid new configuration: new token, one more allocation.
    let extra = format!("[[allocation]]\nid = \"{other}\"\n[[allocation.task]]\nname = \"second\"\ncgroup = \"{path2}\"\n");
    config.rewrite(&reload_config(two, &alloc, &path, &extra));
    daemon.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), || {
        (daemon
            .get_with_token(&format!("/v1/client/allocation/{other}/stats"), two)
            .0
            == 200)
            .then_some(())
    })
    .expect("the new allocation appears after SIGHUP");
    assert_eq!(
        daemon.get_with_token(&stats_path, one).0,
        403,
        "old token revoked"
    );
    // Collected state kept: the busy task's rate does not restart from a first sample
    // (which would read 0) and its cumulative CPU continues.
    for _ in 0..4 {
        let (_, body) = daemon.get_with_token(&stats_path, two);
        let v: Value = serde_json::from_str(&body).unwrap();
        let p = task_percent(&v, "static");
        assert!(
            p > 30.0,
            "after reload the busy task reads {p}%: its state was lost"
        );
        thread::sleep(Duration::from_millis(300));
    }
    let total_after = cpu_total(&daemon, two, &alloc);
    assert!(
        total_after > total_before,
        "cumulative CPU went from {total_before} to {total_after} ns across the reload"
    );

    // An invalid configuration is rejected as a whole.
    config.rewrite("interval = \"not a duration\"\n");
    daemon.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), || {
        (!daemon.log_lines("configuration reload rejected").is_empty()).then_some(())
    })
    .expect("rejection logged");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        daemon.get_with_token(&stats_path, two).0,
        200,
        "previous configuration in force"
    );
}

#[test]
fn two_hundred_concurrent_clients_get_answers_while_collecting_a_thousand_processes() {
    if !privileged(
        "two_hundred_concurrent_clients_get_answers_while_collecting_a_thousand_processes",
    ) {
        return;
    }
    let alloc = uuid();
    let groups: Vec<Cgroup> = (0..100)
        .map(|i| Cgroup::task(&alloc, &format!("t{i}")))
        .collect();
    let _load: Vec<_> = groups
        .iter()
        .map(|g| g.spawn(burner!().args(["fanout", "10", "120"])))
        .collect();
    let daemon = Arc::new(Daemon::start(&["--interval", "1s", "--no-pin"]));
    eventually(Duration::from_secs(20), || {
        let v = stats(&daemon, &alloc)?;
        let pids: usize = v["Tasks"]
            .as_object()?
            .values()
            .map(|t| t["Pids"].as_object().map_or(0, |p| p.len()))
            .sum();
        (pids >= 1000).then_some(())
    })
    .expect("1,000+ processes collected");
    let deadline = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (daemon, alloc) = (daemon.clone(), alloc.clone());
            thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let url = daemon.url(&format!("/v1/client/allocation/{alloc}/stats"));
                let mut latencies = Vec::new();
                let mut failures = 0u32;
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match agent.get(&url).call() {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_string();
                            latencies.push(start.elapsed());
                        }
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for c in clients {
        let (l, f) = c.join().unwrap();
        latencies.extend(l);
        failures += f;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "{} requests, p50 {:?}, p99 {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99
    );
    assert_eq!(failures, 0, "requests failed under load");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
}

/// A figure of the daemon's own health (label-less `nomad_collector_*`).
fn health_gauge(daemon: &Daemon, name: &str) -> f64 {
    daemon
        .metric(name, &[])
        .unwrap_or_else(|| panic!("the daemon exports no {name}"))
}

/// The highest map counts a client saw during the churn, and how often it asked.
#[derive(Clone, Copy, Default)]
struct Peaks {
    tracked_cgroups: f64,
    processes_sampled: f64,
    requests: u64,
}

/// Churn: a task starting and ending thousands of short processes a minute, while
/// another allocation's cgroups come and go and a client keeps asking for the churning
/// one. No CPU of the churning task is lost against its cgroup's own counter, the map
/// counts return to their baseline, the daemon's RSS stays flat, and no cycle fails.
#[test]
fn churn_loses_no_cpu_and_leaves_nothing_behind() {
    if !privileged("churn_loses_no_cpu_and_leaves_nothing_behind") {
        return;
    }
    const CHURN_FOR: Duration = Duration::from_secs(25);
    // Children per `burner churn` run; each run is waited for, so the load ends with no
    // child in flight.
    const CHILDREN_PER_RUN: u64 = 100;
    const CHILD_CPU_MS: u64 = 3;
    const RSS_GROWTH_BOUND: u64 = 4 << 20;
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "churn");
    // A resident process, so that the sampled processes return to one rather than to
    // none (which an empty task would give whatever the daemon kept).
    let _resident = cgroup.spawn(burner!().args(["sleep", "300"]));
    let daemon = Arc::new(Daemon::start(&["--interval", "500ms", "--no-pin"]));
    // Asking once makes the allocation detailed: its processes are sampled from now on.
    eventually(Duration::from_secs(10), || stats(&daemon, &alloc))
        .expect("the churning task is served");
    wait_cycles(&daemon, 4.0);

    // Baseline, at a standstill: only the resident process, asleep, is in the cgroup.
    let tracked_baseline = health_gauge(&daemon, "nomad_collector_tracked_cgroups");
    let sampled_baseline = health_gauge(&daemon, "nomad_collector_processes_sampled");
    let errors_before = health_gauge(&daemon, "nomad_collector_cycle_errors_total");
    assert!(
        sampled_baseline >= 1.0,
        "the resident process is sampled before the load ({sampled_baseline})"
    );
    let rss_start = vm_rss_bytes(daemon.pid());
    let total_before = daemon.task_cpu_total_ns(&alloc, "churn").unwrap();
    let usage_before = cgroup.cpu_usage_ns();

    let mut background = Background::default();
    // Another allocation whose cgroups are created and removed over and over, living
    // from under one interval to a few, asked about every other time.
    let flaps = Arc::new(AtomicU64::new(0));
    {
        let (daemon, flaps) = (daemon.clone(), flaps.clone());
        background.spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                let round = flaps.load(Ordering::Relaxed);
                let flap = uuid();
                let cgroup = Cgroup::task(&flap, "flap");
                let _short_lived = cgroup.spawn(burner!().args(["churn", "20", "2"]));
                thread::sleep(Duration::from_millis(200 + (round % 6) * 250));
                if round % 2 == 0 {
                    let _ = stats(&daemon, &flap);
                }
                flaps.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // A client asking for the churning allocation, so that its processes are sampled
    // while they come and go; it also watches the map counts rise above the baseline.
    let peaks = Arc::new(std::sync::Mutex::new(Peaks::default()));
    {
        let (daemon, alloc, peaks) = (daemon.clone(), alloc.clone(), peaks.clone());
        background.spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                stats(&daemon, &alloc).expect("the churning allocation is served");
                let tracked = health_gauge(&daemon, "nomad_collector_tracked_cgroups");
                let sampled = health_gauge(&daemon, "nomad_collector_processes_sampled");
                let mut peaks = peaks.lock().unwrap();
                peaks.tracked_cgroups = peaks.tracked_cgroups.max(tracked);
                peaks.processes_sampled = peaks.processes_sampled.max(sampled);
                peaks.requests += 1;
                drop(peaks);
                thread::sleep(Duration::from_millis(700));
            }
        });
    }
    let started = Instant::now();
    let mut children = 0;
    while started.elapsed() < CHURN_FOR {
        let run = cgroup.spawn(burner!().args([
            "churn",
            &CHILDREN_PER_RUN.to_string(),
            &CHILD_CPU_MS.to_string(),
        ]));
        assert!(run.wait(), "burner churn failed");
        children += CHILDREN_PER_RUN;
    }
    let churned_for = started.elapsed();
    background.stop();
    let Peaks {
        tracked_cgroups: tracked_peak,
        processes_sampled: sampled_peak,
        requests,
    } = *peaks.lock().unwrap();
    let flaps = flaps.load(Ordering::Relaxed);
    let per_minute = children as f64 / churned_for.as_secs_f64() * 60.0;
    eprintln!(
        "churn: {children} children in {:.1} s ({per_minute:.0} a minute); {flaps} \
         allocations created and removed; {requests} requests for the churning allocation; \
         peaks: {tracked_peak} tracked cgroups, {sampled_peak} processes sampled",
        churned_for.as_secs_f64()
    );
    assert!(
        per_minute >= 2000.0,
        "too little churn: {per_minute:.0} a minute"
    );
    assert!(flaps >= 10, "too few flapping allocations: {flaps}");

    // Standstill again: every child has exited; two cycles publish their last CPU.
    wait_cycles(&daemon, 2.0);
    let counted = daemon.task_cpu_total_ns(&alloc, "churn").unwrap() as f64 - total_before as f64;
    let truth = (cgroup.cpu_usage_ns() - usage_before) as f64;
    eprintln!(
        "CPU of the churning task: daemon {:.3} s, its cgroup's own usage {:.3} s",
        counted / 1e9,
        truth / 1e9
    );
    assert!(truth > 5e9, "the churn used only {truth} ns of CPU");
    let error = (counted - truth).abs() / truth;
    assert!(
        error < 0.05,
        "the daemon counted {counted} ns for the churning task, its cgroup {truth} ns \
         ({:.2}% apart)",
        error * 100.0
    );

    let rss_end = vm_rss_bytes(daemon.pid());
    eprintln!(
        "daemon VmRSS: {} KiB after warm-up, {} KiB after the churn",
        rss_start / 1024,
        rss_end / 1024
    );
    assert!(
        rss_end <= rss_start + RSS_GROWTH_BOUND,
        "daemon VmRSS grew from {} KiB to {} KiB",
        rss_start / 1024,
        rss_end / 1024
    );

    let errors_after = health_gauge(&daemon, "nomad_collector_cycle_errors_total");
    assert_eq!(
        errors_after, errors_before,
        "cycles failed during the churn"
    );
    let errors = daemon.error_lines();
    assert!(errors.is_empty(), "errors logged:\n{}", errors.join("\n"));

    // The load reached the maps, and left them as it found them.
    assert!(
        tracked_peak > tracked_baseline,
        "the flapping allocations were never tracked (tracked cgroups peaked at \
         {tracked_peak}, the baseline): allocations created after the daemon started were \
         not discovered"
    );
    assert!(
        sampled_peak > sampled_baseline,
        "the churning processes were never sampled (processes sampled peaked at \
         {sampled_peak}, the baseline)"
    );

    let mut settled = (0.0, 0.0);
    let back = eventually(Duration::from_secs(10), || {
        settled = (
            health_gauge(&daemon, "nomad_collector_tracked_cgroups"),
            health_gauge(&daemon, "nomad_collector_processes_sampled"),
        );
        (settled == (tracked_baseline, sampled_baseline)).then_some(())
    });
    assert!(
        back.is_some(),
        "after the load: {} tracked cgroups (baseline {tracked_baseline}), {} processes \
         sampled (baseline {sampled_baseline})",
        settled.0,
        settled.1
    );
}
