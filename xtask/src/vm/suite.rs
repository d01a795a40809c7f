//! The tests run in the VMs, and the host builds they run from.

use std::{collections::HashMap, path::PathBuf, process::Stdio};

use anyhow::{bail, Context, Result};

use crate::shell::{announce, cargo, workspace_root};

/// The lean list for emulated guests, where fork/exec is 10-15x slower: one test per
/// thing the matrix must show on each kernel (issue 10), as (test file, test name).
pub const VM_TESTS: &[(&str, &str)] = &[
    // eBPF attached to sched_switch.
    (
        "kernel_accounting",
        "programs_are_loaded_and_attached_to_sched_switch",
    ),
    // A busy task reads 100 ± 5 (a cgroup2 scope, attributed by its cgroup2 id; also
    // finds a task in Nomad 1.3-1.6's v2 layout).
    ("daemon", "cgroup2_membership_is_attributed_by_cgroup2_id"),
    // A half-core quota reads 50 ± 7 with growing ThrottledPeriods (`cpu.max`).
    ("daemon", "a_half_core_quota_reads_50_percent_and_throttles"),
    // Short-lived children within 10% of the cgroup's own usage.
    ("kernel_accounting", "short_lived_children_are_all_counted"),
    // A 200 MiB task's RSS within 5% (v2 memory files).
    ("daemon", "memory_of_a_task_holding_200_mib"),
    // A restart, and a SIGKILL, lose no CPU time (pins).
    ("reliability", "a_restart_loses_no_cpu_time"),
    ("reliability", "a_sigkilled_daemon_loses_no_cpu_time"),
    // A process given a reused PID starts from zero.
    ("reliability", "a_reused_pid_starts_from_zero_in_the_api"),
    // Run-queue wait equals the kernel's schedstat (issue 11), and an OOM kill is
    // counted from v2 `memory.events`. (The wait of short-lived children is checked on
    // the host only: under TCG a child's exit after its last schedstat read is slow
    // enough that its waits there, counted in the kernel but after the child's own
    // reading, came to 25% of the total on 5.10.)
    (
        "kernel_accounting",
        "two_busy_tasks_on_one_cpu_each_wait_half_the_time",
    ),
    (
        "signals",
        "a_task_killed_for_exceeding_its_memory_limit_counts_one_oom_kill",
    ),
    // Pressure totals, read only when the task's kernel counters moved (or at its
    // turn), follow the cgroup's `cpu.pressure` on pure v2.
    (
        "signals",
        "cpu_pressure_follows_the_cgroup_while_busy_and_after_its_threads_stop",
    ),
    // The full profile (issue 13): the task iterator's pass against the kernel's own
    // counters, every process listed within an interval of its start and gone within
    // one of its exit, RSS equal to statm, rates from the first request on.
    (
        "kernel_accounting",
        "process_and_cgroup_totals_match_the_kernels_own_counters",
    ),
    // A thread that did not run since its last record is not reported again; one that
    // ran is, and a slot marked full reports every thread (the iterator's own state,
    // in task storage or, on 5.10, the hash map).
    (
        "kernel_accounting",
        "an_idle_thread_is_reported_again_only_once_it_ran",
    ),
    // On 6.7+, a slot not read in full is read from its set of the threads that ran,
    // only when that set is complete and holds them all (returns early elsewhere,
    // after checking that the walk is off only before 6.7).
    (
        "kernel_accounting",
        "a_slot_is_read_from_its_ran_set_only_when_the_set_is_complete",
    ),
    // Memory and throttling counters read in the kernel equal the control files'.
    (
        "kernel_accounting",
        "cgroup_counters_read_in_the_kernel_are_the_control_files_values",
    ),
    (
        "full_profile",
        "every_process_is_listed_within_an_interval_of_its_start_and_gone_within_one_of_its_exit",
    ),
    (
        "full_profile",
        "each_process_rss_is_its_statm_resident_pages",
    ),
    (
        "full_profile",
        "the_first_request_gets_rates_not_first_samples",
    ),
    // An unprivileged start falls back to /proc and still serves right figures.
    (
        "reliability",
        "without_privileges_it_falls_back_to_proc_and_says_so",
    ),
];

/// One test to run: its binary and its exact name.
pub struct Case {
    pub file: &'static str,
    pub name: &'static str,
    pub binary: PathBuf,
}

/// What the guests run, built on the host.
pub struct Build {
    pub daemon: PathBuf,
    pub cases: Vec<Case>,
}

/// Builds the daemon (debug, as the host suite uses) and the integration test binaries,
/// and picks the cases whose name contains `filter`.
pub fn build(filter: Option<&str>) -> Result<Build> {
    crate::test::build_daemon("building the daemon binary the guests start")?;
    announce("building the integration test binaries the guests run");
    let binaries = test_binaries()?;
    let cases: Vec<Case> = VM_TESTS
        .iter()
        .filter(|(_, name)| filter.is_none_or(|f| name.contains(f)))
        .map(|&(file, name)| {
            let binary = binaries
                .get(file)
                .with_context(|| format!("cargo built no test binary {file}"))?
                .clone();
            Ok(Case { file, name, binary })
        })
        .collect::<Result<_>>()?;
    if cases.is_empty() {
        bail!("no VM test matches {filter:?}");
    }
    Ok(Build {
        daemon: workspace_root().join("target/debug/nomad-collector"),
        cases,
    })
}

/// Test target name → executable, from cargo's JSON messages.
fn test_binaries() -> Result<HashMap<String, PathBuf>> {
    let out = cargo()
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "--package",
            "integration-tests",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed ({})", out.status);
    }
    let mut binaries = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || !message["profile"]["test"].as_bool().unwrap_or(false)
        {
            continue;
        }
        if let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}
