//! The figures no peer reports, through the daemon's API on the real kernel: run-queue
//! wait, processes started and exited, OOM kills (issue 11), pressure stall totals.

use std::{process::Command, thread, time::Duration};

use integration_tests::{burner, eventually, favoured, privileged, uuid, Cgroup, Daemon, Nomad};
use serde_json::Value;

fn daemon() -> Daemon {
    Daemon::start(&["--interval", "500ms", "--no-pin"])
}

/// The task's entry in `/v1/client/allocations`, once the daemon lists it.
fn task_info(daemon: &Daemon, alloc: &str, task: &str) -> Option<Value> {
    let list = daemon.get_json("/v1/client/allocations");
    list.as_array()?
        .iter()
        .find(|a| a["ID"] == alloc)?
        .get("Tasks")?
        .as_array()?
        .iter()
        .find(|t| t["Name"] == task)
        .cloned()
}

/// `task_info` once `ready` holds for it.
fn task_info_when(
    daemon: &Daemon,
    alloc: &str,
    task: &str,
    ready: impl Fn(&Value) -> bool,
) -> Option<Value> {
    eventually(Duration::from_secs(20), || {
        task_info(daemon, alloc, task).filter(|t| ready(t))
    })
}

/// `burner` pinned to CPU 0 with `taskset`, so that two of them compete for one CPU,
/// favoured so that whatever else a shared machine runs there takes little of it.
fn pinned_burner(args: &[&str]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", env!("CARGO_BIN_EXE_burner")])
        .args(args);
    favoured(&mut cmd);
    cmd
}

#[test]
fn two_busy_tasks_on_one_cpu_each_wait_half_the_time_in_the_api() {
    if !privileged("two_busy_tasks_on_one_cpu_each_wait_half_the_time_in_the_api") {
        return;
    }
    let alloc = uuid();
    let a = Cgroup::task(&alloc, "a");
    let b = Cgroup::task(&alloc, "b");
    let idle = Cgroup::task(&alloc, "idle");
    let daemon = daemon();
    eventually(Duration::from_secs(15), || {
        task_info(&daemon, &alloc, "idle")
    })
    .expect("the allocation is listed");
    let _a = a.spawn(&mut pinned_burner(&["spin", "1", "60"]));
    let _b = b.spawn(&mut pinned_burner(&["spin", "1", "60"]));
    let _idle = idle.spawn(burner!().args(["sleep", "60"]));
    thread::sleep(Duration::from_secs(2));
    let percent = |task: &str| -> Vec<f64> {
        (0..5)
            .filter_map(|_| {
                thread::sleep(Duration::from_millis(500));
                task_info(&daemon, &alloc, task)?["CpuWait"]["Percent"].as_f64()
            })
            .collect()
    };
    let median = |mut v: Vec<f64>| {
        assert!(!v.is_empty(), "no CpuWait.Percent read");
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    for task in ["a", "b"] {
        let wait = median(percent(task));
        assert!(
            (wait - 50.0).abs() <= 10.0,
            "task {task} waited {wait:.1}% of the time, not about half"
        );
    }
    let wait = median(percent("idle"));
    assert!(wait < 1.0, "a sleeping task waited {wait:.2}% of the time");
    let total = task_info(&daemon, &alloc, "a").unwrap()["CpuWait"]["TotalSeconds"]
        .as_f64()
        .expect("a cumulative wait");
    assert!(total > 0.5, "task a's total wait is {total} s");
}

/// The `total=` (µs) of the `some` line of a cgroup2 pressure file, in seconds.
fn some_total_seconds(pressure: &str) -> f64 {
    let line = pressure
        .lines()
        .find(|l| l.starts_with("some "))
        .unwrap_or_else(|| panic!("no `some` line in {pressure:?}"));
    let total = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))
        .unwrap_or_else(|| panic!("no total in {line:?}"));
    total.parse::<f64>().expect("a number of µs") / 1e6
}

#[test]
fn cpu_pressure_follows_the_cgroup_while_busy_and_after_its_threads_stop() {
    if !privileged("cpu_pressure_follows_the_cgroup_while_busy_and_after_its_threads_stop") {
        return;
    }
    let alloc = uuid();
    let task = Cgroup::nomad(Nomad::CurrentV2, &alloc, "busy");
    let daemon = daemon();
    eventually(Duration::from_secs(15), || {
        task_info(&daemon, &alloc, "busy")
    })
    .expect("the allocation is listed");
    let file = || some_total_seconds(&task.read("unified", "cpu.pressure"));
    let listed = |t: &Value| t["Pressure"]["Cpu"]["SomeSeconds"].as_f64();
    // Two threads on one CPU: one of them always waits, so `some` grows at about
    // wall-clock speed.
    let one = task.spawn(&mut pinned_burner(&["spin", "1", "60"]));
    let two = task.spawn(&mut pinned_burner(&["spin", "1", "60"]));
    let busy = task_info_when(&daemon, &alloc, "busy", |t| {
        listed(t).is_some_and(|s| s > 1.0)
    })
    .unwrap_or_else(|| panic!("cpu pressure is not reported: {}", daemon.log_text()));
    let (reported, truth) = (listed(&busy).unwrap(), file());
    // The daemon's figure is at most one interval (0.5 s, plus the request) older than
    // the file read just after it.
    assert!(
        reported <= truth + 0.001 && truth - reported < 1.5,
        "reported {reported} s of cpu pressure, the cgroup shows {truth} s"
    );
    drop(one);
    drop(two);
    // Nothing runs in the cgroup any more: the total stops, and the daemon's figure
    // reaches it (the stall ended with the threads' last runs and exits).
    let caught_up = task_info_when(&daemon, &alloc, "busy", |t| {
        listed(t).is_some_and(|s| (file() - s).abs() < 0.001)
    });
    assert!(
        caught_up.is_some(),
        "after the threads stopped the daemon shows {:?} s, the cgroup {} s",
        task_info(&daemon, &alloc, "busy").and_then(|t| listed(&t)),
        file()
    );
}

#[test]
fn processes_started_and_exited_are_counted_in_the_kernel() {
    if !privileged("processes_started_and_exited_are_counted_in_the_kernel") {
        return;
    }
    let alloc = uuid();
    let task = Cgroup::task(&alloc, "churn");
    let daemon = daemon();
    let zero = |t: &Value| t["Processes"]["Started"] == 0 && t["Processes"]["Exited"] == 0;
    task_info_when(&daemon, &alloc, "churn", zero).expect("listed with no processes yet");
    // 30 children of 5 ms each, every one shorter than an interval, and their parent.
    let parent = task.spawn(burner!().args(["churn", "30", "5"]));
    assert!(parent.wait(), "churn workload failed");
    let done = |t: &Value| t["Processes"]["Exited"].as_u64() >= Some(31);
    let info = task_info_when(&daemon, &alloc, "churn", done).unwrap_or_else(|| {
        panic!(
            "not every exit counted: {:?}",
            task_info(&daemon, &alloc, "churn")
        )
    });
    assert_eq!(
        info["Processes"]["Started"], 31,
        "the parent and its 30 children started: {info}"
    );
    assert_eq!(
        info["Processes"]["Exited"], 31,
        "the parent and its 30 children exited: {info}"
    );
}

#[test]
fn a_task_killed_for_exceeding_its_memory_limit_counts_one_oom_kill() {
    if !privileged("a_task_killed_for_exceeding_its_memory_limit_counts_one_oom_kill") {
        return;
    }
    let alloc = uuid();
    let task = Cgroup::task(&alloc, "hog");
    // 64 MiB and no swap: a process touching 256 MiB is killed, not swapped out.
    if task.memory_is_v2() {
        task.write("unified", "memory.max", &(64 << 20).to_string());
        if task.path("unified").join("memory.swap.max").exists() {
            task.write("unified", "memory.swap.max", "0");
        }
    } else {
        task.write("memory", "memory.limit_in_bytes", &(64 << 20).to_string());
        if task
            .path("memory")
            .join("memory.memsw.limit_in_bytes")
            .exists()
        {
            task.write(
                "memory",
                "memory.memsw.limit_in_bytes",
                &(64 << 20).to_string(),
            );
        }
    }
    let daemon = daemon();
    let before = task_info_when(&daemon, &alloc, "hog", |t| t["OomKills"].is_u64())
        .expect("OomKills is read")["OomKills"]
        .as_u64()
        .unwrap();
    assert_eq!(before, 0, "a new cgroup has had no OOM kill");
    let hog = task.spawn(burner!().args(["hold", "256", "30"]));
    assert!(!hog.wait(), "the process over its limit was not killed");
    let after = task_info_when(&daemon, &alloc, "hog", |t| t["OomKills"] != 0)
        .expect("the OOM kill is counted");
    assert_eq!(after["OomKills"], 1, "one process was killed: {after}");
}
