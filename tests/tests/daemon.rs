//! The daemon as a user runs it, on the real kernel: Nomad-style cgroups with real
//! processes, a real HTTP client. (Issues: foundation, allocations, HTTP API.)

use std::{thread, time::Duration};

use integration_tests::{burner, eventually, favoured, privileged, uuid, Cgroup, Daemon, Nomad};
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// A fresh daemon with a short interval and no pins (nothing survives the test).
fn daemon(extra: &[&str]) -> Daemon {
    let mut args = vec!["--interval", "500ms", "--no-pin"];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

fn stats(daemon: &Daemon, alloc: &str) -> Option<Value> {
    let (status, body) = daemon.get(&format!("/v1/client/allocation/{alloc}/stats"));
    (status == 200).then(|| serde_json::from_str(&body).expect("stats are JSON"))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// Waits for the allocation to be reported with non-first-sample figures, then returns
/// the median of `n` further readings of `read`.
fn settle(daemon: &Daemon, alloc: &str, n: usize, read: impl Fn(&Value) -> f64) -> f64 {
    let first =
        eventually(Duration::from_secs(15), || stats(daemon, alloc)).expect("allocation appears");
    // Two more samples of this allocation (its Timestamp changes with each): the figures
    // then cover a whole interval after its first sample. Only this allocation is asked
    // about, so the waiting adds no collection work.
    let mut seen = first["Timestamp"].as_i64();
    let mut fresh = 0;
    eventually(Duration::from_secs(15), || {
        let now = stats(daemon, alloc)?["Timestamp"].as_i64();
        if now != seen {
            seen = now;
            fresh += 1;
        }
        (fresh >= 2).then_some(())
    })
    .expect("the allocation's figures are refreshed");
    let mut values: Vec<f64> = (0..n)
        .map(|_| {
            thread::sleep(Duration::from_millis(500));
            read(&stats(daemon, alloc).expect("allocation still there"))
        })
        .collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[n / 2]
}

/// `burner`, favoured (see [`favoured`]).
fn favoured_burner() -> std::process::Command {
    let mut cmd = burner!();
    favoured(&mut cmd);
    cmd
}

fn pid_percent(v: &Value, task: &str, pid: u32) -> f64 {
    f(
        &v["Tasks"][task]["Pids"][pid.to_string()],
        &["CpuStats", "Percent"],
    )
}

#[test]
fn percent_is_one_core_per_busy_thread_and_zero_when_asleep() {
    if !privileged("percent_is_one_core_per_busy_thread_and_zero_when_asleep") {
        return;
    }
    let alloc = uuid();
    let busy = Cgroup::task(&alloc, "busy");
    let asleep = Cgroup::task(&alloc, "asleep");
    let two = Cgroup::task(&alloc, "two.threads");
    let daemon = daemon(&[]);
    // This machine has two cores: one busy thread at a time, then the two-thread
    // process alone.
    let spin = busy.spawn(favoured_burner().args(["spin", "1", "60"]));
    let sleep = asleep.spawn(burner!().args(["sleep", "60"]));
    let one = settle(&daemon, &alloc, 5, |v| pid_percent(v, "busy", spin.pid()));
    let task = settle(&daemon, &alloc, 3, |v| {
        f(
            v,
            &["Tasks", "busy", "ResourceUsage", "CpuStats", "Percent"],
        )
    });
    let zero = settle(&daemon, &alloc, 5, |v| {
        pid_percent(v, "asleep", sleep.pid())
    });
    drop(spin);
    let spin2 = two.spawn(favoured_burner().args(["spin", "2", "60"]));
    let twice = settle(&daemon, &alloc, 5, |v| {
        pid_percent(v, "two.threads", spin2.pid())
    });
    assert!((one - 100.0).abs() <= 5.0, "busy loop reads {one}%");
    assert!((task - 100.0).abs() <= 5.0, "busy task reads {task}%");
    assert!(zero.abs() <= 1.0, "sleeping child reads {zero}%");
    assert!(
        (twice - 200.0).abs() <= 10.0,
        "two busy threads read {twice}%"
    );
}

#[test]
fn memory_of_allocations_no_one_asks_about_is_fresh_every_interval() {
    if !privileged("memory_of_allocations_no_one_asks_about_is_fresh_every_interval") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "hold");
    let _first = cgroup.spawn(burner!().args(["hold", "20", "60"]));
    let daemon = daemon(&[]);
    let rss_mib = || {
        daemon
            .metric(
                "nomad_client_allocs_memory_rss",
                &[("alloc_id", &alloc), ("task", "hold")],
            )
            .map(|v| v / MIB)
    };
    eventually(Duration::from_secs(10), || {
        rss_mib().filter(|m| (m - 20.0).abs() <= 3.0)
    })
    .expect("20 MiB reported without a request for the allocation");
    let _second = cgroup.spawn(burner!().args(["hold", "30", "60"]));
    // The child touches its 30 MiB in well under a second; then within an interval
    // (500 ms here) or two, never asked for.
    let seen = eventually(Duration::from_secs(3), || {
        rss_mib().filter(|m| (m - 50.0).abs() <= 4.0)
    });
    assert!(
        seen.is_some(),
        "RSS of an allocation no one asked about stayed at {:?} MiB",
        rss_mib()
    );
}

#[test]
fn memory_of_a_task_holding_200_mib() {
    if !privileged("memory_of_a_task_holding_200_mib") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "hold");
    let holder = cgroup.spawn(burner!().args(["hold", "200", "60"]));
    let daemon = daemon(&[]);
    let read =
        |v: &Value, what: &str| f(v, &["Tasks", "hold", "ResourceUsage", "MemoryStats", what]);
    let rss = settle(&daemon, &alloc, 3, |v| read(v, "RSS"));
    let v = stats(&daemon, &alloc).unwrap();
    assert!(
        (rss / MIB - 200.0).abs() <= 10.0,
        "RSS {:.1} MiB is not within 5% of 200 MiB",
        rss / MIB
    );
    assert!(read(&v, "Usage") >= read(&v, "RSS"), "Usage < RSS: {v}");
    // Against the cgroup's own files, read right after the same snapshot: the holder
    // touched its memory once and sleeps, so they barely move.
    let (true_rss, true_usage) = cgroup.memory_truth();
    let within_5_percent = |what: &str, got: f64, truth: u64| {
        let truth = truth as f64;
        assert!(
            (got - truth).abs() <= truth * 0.05,
            "{what}: the daemon says {:.1} MiB, the cgroup {:.1} MiB",
            got / MIB,
            truth / MIB
        );
    };
    within_5_percent("RSS", read(&v, "RSS"), true_rss);
    within_5_percent("Usage", read(&v, "Usage"), true_usage);
    let measured = &v["Tasks"]["hold"]["ResourceUsage"]["MemoryStats"]["Measured"];
    // A peak is measured where the kernel keeps one (cgroup v2's `memory.peak` came in
    // 5.19); the spec lists it only then.
    let mut expected = vec!["RSS", "Cache", "Usage"];
    if cgroup.has_memory_peak() {
        expected.push("Max Usage");
    }
    for name in expected {
        assert!(
            measured.as_array().unwrap().iter().any(|m| m == name),
            "{name} not in {measured}"
        );
    }
    let pid_rss = f(
        &v["Tasks"]["hold"]["Pids"][holder.pid().to_string()],
        &["MemoryStats", "RSS"],
    );
    assert!(
        (pid_rss / MIB - 200.0).abs() <= 10.0,
        "per-PID RSS {:.1} MiB",
        pid_rss / MIB
    );
}

#[test]
fn a_half_core_quota_reads_50_percent_and_throttles() {
    if !privileged("a_half_core_quota_reads_50_percent_and_throttles") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "quota");
    cgroup.set_cpu_quota(50_000, 100_000);
    let _spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    let daemon = daemon(&[]);
    let cpu = |v: &Value, what: &str| f(v, &["Tasks", "quota", "ResourceUsage", "CpuStats", what]);
    let percent = settle(&daemon, &alloc, 5, |v| cpu(v, "Percent"));
    assert!(
        (percent - 50.0).abs() <= 7.0,
        "half-core quota reads {percent}%"
    );
    let first = cpu(&stats(&daemon, &alloc).unwrap(), "ThrottledPeriods");
    // The quota keeps throttling: a later cycle reads more throttled periods.
    let v = eventually(Duration::from_secs(10), || {
        stats(&daemon, &alloc).filter(|v| cpu(v, "ThrottledPeriods") > first)
    })
    .unwrap_or_else(|| stats(&daemon, &alloc).unwrap());
    let second = cpu(&v, "ThrottledPeriods");
    assert!(
        second > first && first > 0.0,
        "ThrottledPeriods not growing: {first} -> {second}"
    );
    assert!(cpu(&v, "ThrottledTime") > 0.0);
    let measured = &v["Tasks"]["quota"]["ResourceUsage"]["CpuStats"]["Measured"];
    assert_eq!(
        measured,
        &serde_json::json!([
            "System Mode",
            "User Mode",
            "Throttled Periods",
            "Throttled Time",
            "Percent"
        ])
    );
}

#[test]
fn children_shorter_than_an_interval_are_counted() {
    if !privileged("children_shorter_than_an_interval_are_counted") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "churn");
    let daemon = daemon(&[]);
    // A parent that starts children one after another, each burning 10 ms and exiting:
    // most are born and gone between two samples.
    let _parent = cgroup.spawn(burner!().args(["churn", "2000", "10"]));
    let percent = settle(&daemon, &alloc, 5, |v| {
        f(
            v,
            &["Tasks", "churn", "ResourceUsage", "CpuStats", "Percent"],
        )
    });
    // The children keep one core about busy (minus fork/exec gaps).
    assert!(
        percent >= 60.0,
        "short-lived children's CPU is missing: task reads {percent}%"
    );
}

#[test]
fn allocations_appear_and_disappear_with_their_cgroups() {
    if !privileged("allocations_appear_and_disappear_with_their_cgroups") {
        return;
    }
    // Nomad's parent exists before the daemon starts, as on a client that already runs
    // allocations; the allocation comes later.
    let earlier = Cgroup::task(&uuid(), "earlier");
    let daemon = daemon(&[]);
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "late");
    let _child = cgroup.spawn(burner!().args(["sleep", "60"]));
    eventually(Duration::from_secs(3), || stats(&daemon, &alloc))
        .expect("an allocation created after start-up appears within a few intervals");
    // Relative to what the map holds now: a shared CI host may run other Nomad-style
    // allocations (another job's benchmark) that this daemon tracks as well.
    let tracked = |d: &Daemon| d.metric("nomad_collector_tracked_cgroups", &[]);
    let with_late = eventually(Duration::from_secs(3), || {
        tracked(&daemon).filter(|n| *n >= 2.0)
    })
    .expect("both allocations' cgroups are in the kernel map");
    drop(cgroup);
    let (status, body) = eventually(Duration::from_secs(3), || {
        let (status, body) = daemon.get(&format!("/v1/client/allocation/{alloc}/stats"));
        (status == 404).then_some((status, body))
    })
    .expect("allocation disappears within a few intervals");
    assert_eq!(body, format!("Unknown allocation \"{alloc}\""), "{status}");
    eventually(Duration::from_secs(3), || {
        (tracked(&daemon) == Some(with_late - 1.0)).then_some(())
    })
    .expect("its cgroup leaves the kernel map; the earlier allocation's stays");
    drop(earlier);
    assert!(
        daemon.error_lines().is_empty(),
        "errors logged:\n{}",
        daemon.log_text()
    );
}

#[test]
fn cgroup2_membership_is_attributed_by_cgroup2_id() {
    if !privileged("cgroup2_membership_is_attributed_by_cgroup2_id") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::nomad(Nomad::CurrentV2, &alloc, "web");
    let legacy_alloc = uuid();
    let legacy = Cgroup::nomad(Nomad::LegacyV2, &legacy_alloc, "api");
    let sleeper = legacy.spawn(burner!().args(["sleep", "60"]));
    let spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    let daemon = daemon(&[]);
    let task = settle(&daemon, &alloc, 5, |v| {
        f(v, &["Tasks", "web", "ResourceUsage", "CpuStats", "Percent"])
    });
    assert!((task - 100.0).abs() <= 5.0, "cgroup2 task reads {task}%");
    let v = stats(&daemon, &alloc).unwrap();
    assert!(
        v["Tasks"]["web"]["Pids"]
            .get(spin.pid().to_string())
            .is_some(),
        "{v}"
    );
    // Nomad 1.3–1.6 put v2 task scopes right under nomad.slice.
    let v = eventually(Duration::from_secs(10), || stats(&daemon, &legacy_alloc))
        .expect("a task in Nomad 1.3-1.6's cgroup2 layout is found");
    assert!(
        v["Tasks"]["api"]["Pids"]
            .get(sleeper.pid().to_string())
            .is_some(),
        "{v}"
    );
}

/// Every key of the seed page's JSON, at every level, with its JSON type.
fn assert_resource_usage_shape(v: &Value, at: &str) {
    let mem = &v["MemoryStats"];
    for key in [
        "RSS",
        "Cache",
        "Swap",
        "MappedFile",
        "Usage",
        "MaxUsage",
        "KernelUsage",
        "KernelMaxUsage",
    ] {
        assert!(
            mem[key].is_u64(),
            "{at}.MemoryStats.{key} is not an unsigned integer: {mem}"
        );
    }
    assert!(mem["Measured"].is_array(), "{at}.MemoryStats.Measured");
    let cpu = &v["CpuStats"];
    for key in ["SystemMode", "UserMode", "TotalTicks", "Percent"] {
        assert!(
            cpu[key].is_number(),
            "{at}.CpuStats.{key} is not a number: {cpu}"
        );
    }
    for key in ["ThrottledPeriods", "ThrottledTime"] {
        assert!(
            cpu[key].is_u64(),
            "{at}.CpuStats.{key} is not an unsigned integer: {cpu}"
        );
    }
    assert!(cpu["Measured"].is_array(), "{at}.CpuStats.Measured");
    assert!(v.get("DeviceStats").is_some(), "{at}.DeviceStats missing");
}

#[test]
fn stats_have_nomads_shape_and_consistent_sums() {
    if !privileged("stats_have_nomads_shape_and_consistent_sums") {
        return;
    }
    let alloc = uuid();
    let web = Cgroup::task(&alloc, "web");
    let side = Cgroup::task(&alloc, "side.car");
    let a = web.spawn(burner!().args(["spin", "1", "60"]));
    let b = web.spawn(burner!().args(["hold", "20", "60"]));
    let c = side.spawn(burner!().args(["spin", "1", "60"]));
    let daemon = daemon(&[]);
    settle(&daemon, &alloc, 1, |_| 0.0);
    let v = stats(&daemon, &alloc).unwrap();

    assert_resource_usage_shape(&v["ResourceUsage"], "ResourceUsage");
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as f64;
    let ts = v["Timestamp"].as_i64().expect("Timestamp is an integer") as f64;
    assert!(
        (now_ns - ts).abs() < 5e9,
        "Timestamp {ts} is not within 5 s of now {now_ns}"
    );
    let tasks = v["Tasks"].as_object().expect("Tasks is an object");
    assert_eq!(tasks.len(), 2);
    let mut sum_percent = 0.0;
    let mut sum_rss = 0.0;
    for (name, task) in tasks {
        assert_resource_usage_shape(
            &task["ResourceUsage"],
            &format!("Tasks.{name}.ResourceUsage"),
        );
        assert!(task["Timestamp"].is_i64());
        let pids = task["Pids"].as_object().expect("Pids is an object");
        let expected: Vec<String> = if name == "web" {
            vec![a.pid().to_string(), b.pid().to_string()]
        } else {
            vec![c.pid().to_string()]
        };
        let mut keys: Vec<&String> = pids.keys().collect();
        keys.sort();
        let mut expected_sorted: Vec<&String> = expected.iter().collect();
        expected_sorted.sort();
        assert_eq!(keys, expected_sorted, "Pids of {name} are the real PIDs");
        let mut pid_percent = 0.0;
        for (pid, usage) in pids {
            assert_resource_usage_shape(usage, &format!("Tasks.{name}.Pids.{pid}"));
            pid_percent += f(usage, &["CpuStats", "Percent"]);
        }
        let task_percent = f(task, &["ResourceUsage", "CpuStats", "Percent"]);
        // The task counts everything in its cgroup (the processes here are long-lived,
        // so the two agree up to sampling jitter).
        assert!(
            (task_percent - pid_percent).abs() <= 10.0,
            "task {name} {task_percent}% vs its PIDs {pid_percent}%"
        );
        sum_percent += task_percent;
        sum_rss += f(task, &["ResourceUsage", "MemoryStats", "RSS"]);
    }
    assert!((f(&v, &["ResourceUsage", "CpuStats", "Percent"]) - sum_percent).abs() < 1e-6);
    assert!((f(&v, &["ResourceUsage", "MemoryStats", "RSS"]) - sum_rss).abs() < 1e-6);

    // ?task= limits Tasks and the sums; an unknown task is an empty 200.
    let only = daemon.get_json(&format!(
        "/v1/client/allocation/{alloc}/stats?task=side.car"
    ));
    assert_eq!(only["Tasks"].as_object().unwrap().len(), 1);
    let none = daemon.get_json(&format!("/v1/client/allocation/{alloc}/stats?task=nope"));
    assert!(none["Tasks"].as_object().unwrap().is_empty());
    let pretty = daemon
        .get(&format!("/v1/client/allocation/{alloc}/stats?pretty"))
        .1;
    assert!(pretty.contains("\n  "), "?pretty indents");
}

#[test]
fn hostile_requests_get_4xx_and_the_daemon_keeps_serving() {
    if !privileged("hostile_requests_get_4xx_and_the_daemon_keeps_serving") {
        return;
    }
    let alloc = uuid();
    let cgroup = Cgroup::task(&alloc, "web");
    let _spin = cgroup.spawn(burner!().args(["spin", "1", "60"]));
    let daemon = daemon(&[]);
    settle(&daemon, &alloc, 1, |_| 0.0);
    let long = "a".repeat(10_000);
    // Sent as raw bytes: an HTTP client library would normalize `..` and `%2e%2e`
    // before the daemon ever saw them.
    let paths = [
        "/v1/client/allocation/../../../../etc/passwd/stats".to_owned(),
        "/v1/client/allocation/..%2F..%2F..%2Fetc%2Fpasswd/stats".to_owned(),
        "/v1/client/allocation/%2e%2e/stats".to_owned(),
        "/v1/client/allocation/%2e%2e/%2e%2e/%2e%2e/proc/self/environ".to_owned(),
        "/v1/client/allocation/%ff%fe%00/stats".to_owned(),
        format!("/v1/client/allocation/{long}/stats"),
        format!("/v1/client/allocation/{alloc}/stats/extra"),
        format!("/v1/client/allocation/{alloc}"),
        "/v1/client/allocation//stats".to_owned(),
        "/sys/fs/cgroup/memory/memory.stat".to_owned(),
        format!("/v1/client/allocation/{alloc}/stats?task=%ff"),
    ];
    for path in &paths {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_request(&daemon.addr, request.as_bytes());
        let status = status.unwrap_or_else(|| panic!("{path}: no answer"));
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(
            !body.contains("root:") && !body.contains("PATH="),
            "{path} leaked a file"
        );
    }
    // Other methods.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let status = match ureq::request(
            method,
            &daemon.url(&format!("/v1/client/allocation/{alloc}/stats")),
        )
        .call()
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{method}: {e}"),
        };
        assert!((400..500).contains(&status), "{method}: {status}");
    }
    // Raw bytes: non-UTF-8 request line, over-long header.
    for raw in [
        b"GET /v1/client/allocation/\xff\xfe/stats HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(64 * 1024)
        )
        .into_bytes(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
    ] {
        let (status, _) = raw_request(&daemon.addr, &raw);
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "raw request answered {status:?}"
        );
    }
    // Thousands of unknown IDs.
    for _ in 0..3000 {
        let (status, _) = daemon.get(&format!("/v1/client/allocation/{}/stats", uuid()));
        assert_eq!(status, 404);
    }
    // Still serving correct stats.
    let v = stats(&daemon, &alloc).expect("still serving");
    let percent = f(
        &v,
        &["Tasks", "web", "ResourceUsage", "CpuStats", "Percent"],
    );
    assert!(percent > 50.0, "stats after the abuse: {percent}%");
}

/// Sends raw bytes and returns the status code of the answer (None if the server just
/// closed the connection) and the whole response text.
fn raw_request(addr: &str, request: &[u8]) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    (
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()),
        text,
    )
}
