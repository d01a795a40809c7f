//! The eBPF programs on the real kernel: loaded, attached to sched_switch, and counting
//! exactly (issue: foundation). Uses the library directly, no daemon.

use std::{collections::HashMap, thread, time::Duration};

use collector_common::{sample_flags, ThreadSample};
use collector_user::kernel::{Attribution, KernelAccounting, KernelOptions};
use integration_tests::{burner, ebpf_or_skip, privileged, schedstat_ns, uuid, Cgroup};

fn load(test: &str) -> Option<KernelAccounting> {
    if !privileged(test) {
        return None;
    }
    ebpf_or_skip(
        test,
        KernelAccounting::load(&KernelOptions {
            attribution: Attribution {
                v1_controller: Some("cpuacct".to_owned()),
                v2: true,
            },
            max_tracked_cgroups: 1024,
            pin_root: None,
        }),
    )
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cgroup_run_ns(kernel: &mut KernelAccounting, id: u64) -> u64 {
    kernel
        .read_cgroups()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, v)| v.run_ns)
        .unwrap_or(0)
}

/// Per-process cumulative run time from one iterator pass: live threads plus the
/// leader's record of exited threads.
fn process_run_ns(samples: &[ThreadSample], pid: u32) -> u64 {
    samples
        .iter()
        .filter(|s| s.tgid == pid)
        .map(|s| {
            s.run_ns
                + if s.flags & sample_flags::LEADER != 0 {
                    s.exited_run_ns
                } else {
                    0
                }
        })
        .sum()
}

#[test]
fn programs_are_loaded_and_attached_to_sched_switch() {
    let Some(kernel) = load("programs_are_loaded_and_attached_to_sched_switch") else {
        return;
    };
    let ids = kernel.programs().clone();
    let program = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == ids.sched_switch_id)
        .expect("sched_switch program is loaded");
    assert_eq!(program.name_as_str(), Some("sched_switch"));
    let link = aya::programs::loaded_links()
        .flatten()
        .find(|l| l.program_id() == ids.sched_switch_id)
        .expect("a link attaches the sched_switch program");
    assert_eq!(
        link.link_type().unwrap(),
        aya::programs::links::LinkType::RawTracePoint,
        "tp_btf programs are attached through raw tracepoint links"
    );
    drop(kernel);
    assert!(
        !aya::programs::loaded_links()
            .flatten()
            .any(|l| l.program_id() == ids.sched_switch_id),
        "an unpinned link must be detached when the daemon lets go of it"
    );
}

#[test]
fn process_total_matches_schedstat() {
    let Some(mut kernel) = load("process_total_matches_schedstat") else {
        return;
    };
    let cgroup = Cgroup::create(&["cpuacct"], &format!("collector-test/{}", uuid()));
    kernel.track(cgroup.id("cpuacct"), 0).unwrap();
    // Two busy threads for long enough to accumulate a couple of CPU-seconds.
    let child = cgroup.spawn(burner!().args(["spin", "2", "30"]));
    thread::sleep(Duration::from_millis(1500));
    // Freeze it so both readings see the same totals.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.pid() as i32, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(100));
    let mut samples = Vec::new();
    kernel.sample_threads(&mut samples).unwrap();
    let from_kernel = process_run_ns(&samples, child.pid());
    let from_proc = schedstat_ns(child.pid());
    assert!(
        from_proc > 1_000_000_000,
        "the workload ran: {from_proc} ns"
    );
    let error = (from_kernel as f64 - from_proc as f64).abs() / from_proc as f64;
    assert!(
        error < 0.01,
        "kernel map {from_kernel} ns vs schedstat {from_proc} ns ({:.3}% apart)",
        error * 100.0
    );
}

#[test]
fn short_lived_children_are_all_counted() {
    let Some(mut kernel) = load("short_lived_children_are_all_counted") else {
        return;
    };
    let cgroup = Cgroup::create(&["cpuacct"], &format!("collector-test/{}", uuid()));
    let id = cgroup.id("cpuacct");
    kernel.track(id, monotonic_ns()).unwrap();
    let usage_before: u64 = cgroup
        .read("cpuacct", "cpuacct.usage")
        .trim()
        .parse()
        .unwrap();
    let exits_before = kernel.stats().exits_folded;
    // 100 children of ~10 ms CPU each, all shorter than one collection interval; the
    // iterator never sees most of them alive.
    let parent = cgroup.spawn(burner!().args(["churn", "100", "10"]));
    assert!(parent.wait(), "churn workload failed");
    let mut samples = Vec::new();
    kernel.sample_threads(&mut samples).unwrap();
    let counted = cgroup_run_ns(&mut kernel, id);
    let usage_after: u64 = cgroup
        .read("cpuacct", "cpuacct.usage")
        .trim()
        .parse()
        .unwrap();
    let truth = usage_after - usage_before;
    assert!(
        truth >= 900_000_000,
        "the children ran about 1 s of CPU: {truth} ns"
    );
    let error = (counted as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error < 0.10,
        "attributed {counted} ns vs cpuacct.usage delta {truth} ns ({:.1}% apart)",
        error * 100.0
    );
    assert!(
        kernel.stats().exits_folded - exits_before >= 100,
        "every child's exit was folded at its final context switch"
    );
}

#[test]
fn a_reused_pid_starts_from_zero() {
    let Some(mut kernel) = load("a_reused_pid_starts_from_zero") else {
        return;
    };
    let cgroup = Cgroup::create(&["cpuacct"], &format!("collector-test/{}", uuid()));
    kernel.track(cgroup.id("cpuacct"), 0).unwrap();
    let first = cgroup.spawn(burner!().args(["spin", "1", "1"]));
    let pid = first.pid();
    assert!(first.wait());
    // Ask the kernel for the same PID again.
    let ns_last_pid = "/proc/sys/kernel/ns_last_pid";
    let mut reused = None;
    for _ in 0..50 {
        std::fs::write(ns_last_pid, (pid - 1).to_string()).unwrap();
        let child = cgroup.spawn(burner!().args(["sleep", "30"]));
        if child.pid() == pid {
            reused = Some(child);
            break;
        }
    }
    let second = reused.expect("could not get the same PID back");
    thread::sleep(Duration::from_millis(200));
    let mut samples = Vec::new();
    kernel.sample_threads(&mut samples).unwrap();
    let by_tgid: HashMap<u32, u64> = samples
        .iter()
        .filter(|s| s.tgid == second.pid())
        .map(|s| (s.tgid, s.run_ns))
        .collect();
    let run = by_tgid[&second.pid()];
    assert!(
        run < 100_000_000,
        "the sleeping process with the reused PID shows {run} ns: it inherited the old one's"
    );
}
