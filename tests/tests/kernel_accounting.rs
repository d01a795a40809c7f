//! The eBPF programs on the real kernel: loaded, attached to sched_switch, and counting
//! exactly (issue: foundation). Uses the library directly, no daemon.

use std::{collections::BTreeSet, thread, time::Duration};

use collector_common::{cgroup_parts, sample_flags, CgroupSample, ThreadSample, TrackedCgroup};
use collector_user::kernel::{
    Attribution, KernelAccounting, KernelOptions, ThreadStateChoice, ThreadStateStore,
    CGROUP_WALK_RING_BYTES,
};
use integration_tests::{
    burner, ebpf_or_skip, kernel_version, mounts, privileged, schedstat_ns, uuid, Cgroup,
};

fn load(test: &str) -> Option<KernelAccounting> {
    load_with(test, ThreadStateChoice::Auto)
}

/// Loads the programs with threads' state in `store` (the 5.10 build, `Hash`, runs on
/// every kernel, so the host tests it too).
fn load_with(test: &str, thread_state: ThreadStateChoice) -> Option<KernelAccounting> {
    load_with_ring(test, thread_state, CGROUP_WALK_RING_BYTES)
}

fn load_with_ring(
    test: &str,
    thread_state: ThreadStateChoice,
    cgroup_walk_ring_bytes: u32,
) -> Option<KernelAccounting> {
    if !privileged(test) {
        return None;
    }
    // As the daemon's `auto`: by the cpuacct hierarchy where v1 controllers are
    // mounted, by cgroup2 ids always.
    let v1_controller = (!mounts().pure_v2()).then(|| "cpuacct".to_owned());
    let kernel = ebpf_or_skip(
        test,
        KernelAccounting::load(&KernelOptions {
            cgroup_roots: mounts().attribution_roots(v1_controller.as_deref()),
            attribution: Attribution {
                v1_controller,
                v2: true,
            },
            max_tracked_cgroups: 1024,
            pin_root: None,
            thread_state,
            max_threads: 65536,
            cgroup_walk_ring_bytes,
        }),
    )?;
    assert_features_as_expected(&kernel);
    Some(kernel)
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

/// Tracks cgroup `id` in counter slot `slot`, counting threads born since `since_ns`
/// from birth, and makes the programs see it (as the daemon does).
fn track(kernel: &mut KernelAccounting, id: u64, slot: u32, since_ns: u64) {
    let entry = TrackedCgroup {
        slot,
        since_ns,
        ..TrackedCgroup::default()
    };
    assert!(kernel.track(id, entry).unwrap(), "map full");
    let generation = kernel.generation().unwrap() + 1;
    kernel.set_generation(generation).unwrap();
}

/// The cumulative run time of counter `slot`, every CPU's running thread accounted up
/// to now first.
fn slot_run_ns(kernel: &mut KernelAccounting, slot: u32) -> u64 {
    assert_eq!(kernel.checkpoint(), 0, "checkpoint failed on some CPU");
    let mut counters = Vec::new();
    kernel.read_cgroup_cpu(slot + 1, &mut counters).unwrap();
    counters[slot as usize].run_ns
}

/// A process's cumulative run time from one pass of the task iterator: its live threads
/// plus the leader's record of exited threads. The process must be in a tracked cgroup;
/// every record of the pass must be of one (the kernel skips the rest). `None` where the
/// iterator is off (held to the kernel version by `assert_features_as_expected`).
fn process_run_ns(kernel: &mut KernelAccounting, pid: u32) -> Option<u64> {
    if !kernel.features().process_iter.enabled {
        assert!(
            !process_iter_expected(),
            "the iterator is off where it must be on"
        );
        return None;
    }
    let mut samples: Vec<ThreadSample> = Vec::new();
    let tracked: Vec<u32> = kernel
        .tracked_entries()
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry.slot)
        .collect();
    pass_reporting_all_of(kernel, &tracked, false, &mut samples, &mut Vec::new()).unwrap();
    assert!(
        samples.iter().all(|s| tracked.contains(&s.slot)),
        "the pass reports threads of tracked cgroups only"
    );
    let threads: Vec<&ThreadSample> = samples.iter().filter(|s| s.tgid == pid).collect();
    assert!(!threads.is_empty(), "process {pid} is in the pass");
    Some(
        threads
            .iter()
            .map(|s| {
                s.run_ns
                    + if s.flags & sample_flags::LEADER != 0 {
                        s.exited_run_ns
                    } else {
                        0
                    }
            })
            .sum(),
    )
}

/// A new pass number for a test's iterator pass (every test's pass is full unless it
/// says otherwise).
fn next_pass() -> u64 {
    static PASS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    PASS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A pass that reports every thread of `slots`. With `host_wide`, every slot's pass is
/// full, as in the daemon's first pass: the task walk's. Otherwise only `slots` are
/// marked full, as in the daemon's later passes: the cgroup walk's where that is on.
fn pass_reporting_all_of(
    kernel: &mut KernelAccounting,
    slots: &[u32],
    host_wide: bool,
    threads: &mut Vec<ThreadSample>,
    cgroups: &mut Vec<CgroupSample>,
) -> Result<(), String> {
    let pass = next_pass();
    if !host_wide {
        for &slot in slots {
            kernel.mark_full(slot, pass).unwrap();
        }
    }
    kernel
        .sample_tracked_threads(pass, host_wide, threads, cgroups)
        .map_err(|e| e.to_string())
}

/// Whether the task iterator must be on here: the loader probes features, the test
/// holds it to the kernels that have task iterators (5.8+, so every supported one), so
/// that a feature wrongly turned off fails instead of silently shrinking the test.
fn process_iter_expected() -> bool {
    kernel_version() >= (5, 8)
}

fn assert_features_as_expected(kernel: &KernelAccounting) {
    let features = kernel.features();
    assert!(
        features.checkpoint.enabled,
        "the checkpoint runs on every supported kernel: {:?}",
        features.checkpoint.reason
    );
    assert_eq!(
        features.process_iter.enabled,
        process_iter_expected(),
        "task iterator on kernel {:?}: {:?}",
        kernel_version(),
        features.process_iter.reason
    );
    assert_eq!(
        features.cgroup_counters.enabled,
        process_iter_expected(),
        "cgroup counters in the kernel on {:?}: {:?}",
        kernel_version(),
        features.cgroup_counters.reason
    );
    assert_eq!(
        features.cgroup_walk.enabled,
        process_iter_expected()
            && kernel_version() >= (6, 7)
            && features.thread_state == ThreadStateStore::TaskStorage,
        "cgroup walk (css task iterator) on kernel {:?}: {:?}",
        kernel_version(),
        features.cgroup_walk.reason
    );
    if kernel_version() >= (5, 11) {
        // An explicit `Hash` choice is the only way to get it there.
        assert!(matches!(
            features.thread_state,
            ThreadStateStore::TaskStorage | ThreadStateStore::Hash
        ));
    } else {
        assert_eq!(features.thread_state, ThreadStateStore::Hash);
    }
}

/// The counters the task iterator reads from a task cgroup's `mem_cgroup` and
/// `task_group` are the ones its control files show: the same values, read while its
/// only process is stopped (kernel oracle).
#[test]
fn cgroup_counters_read_in_the_kernel_are_the_control_files_values() {
    let test = "cgroup_counters_read_in_the_kernel_are_the_control_files_values";
    let Some(mut kernel) = load(test) else {
        return;
    };
    if !kernel.features().cgroup_counters.enabled {
        return; // held to the kernel version by `assert_features_as_expected`
    }
    let cgroup = Cgroup::task(&uuid(), "counters");
    let v2 = cgroup.memory_is_v2();
    let (memory, cpu) = if v2 {
        ("unified", "unified")
    } else {
        ("memory", "cpu")
    };
    let slot = 6;
    track(&mut kernel, cgroup.cpu_id(), slot, monotonic_ns());
    kernel
        .set_slot_cgroups(slot, cgroup.id(memory), cgroup.id(cpu))
        .unwrap();
    // A tenth of a CPU for a spinning thread: throttled in most periods.
    cgroup.set_cpu_quota(10_000, 100_000);
    let child = cgroup.spawn(burner!().args(["spin", "1", "30"]));
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.pid() as i32, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(300));

    // Both walks read them: the task walk in a host-wide full pass, the cgroup walk
    // (where it is on) in the others.
    for host_wide in [true, false] {
        let walk = if host_wide {
            "host-wide full pass"
        } else {
            "slot-full pass"
        };
        let (mut threads, mut cgroups) = (Vec::new(), Vec::<CgroupSample>::new());
        pass_reporting_all_of(&mut kernel, &[slot], host_wide, &mut threads, &mut cgroups).unwrap();
        let read: Vec<&CgroupSample> = cgroups.iter().filter(|c| c.slot == slot).collect();
        assert_eq!(
            read.len(),
            1,
            "{walk}: one record for the slot per pass: {cgroups:?}"
        );
        let sample = read[0];
        assert_eq!(
            sample.parts,
            cgroup_parts::MEMORY | cgroup_parts::CPU,
            "{walk}: both cgroups are the process's"
        );
        let page = 4096; // the test machines' page size (x86-64)
        let file = |hierarchy: &str, name: &str| -> u64 {
            cgroup.read(hierarchy, name).trim().parse().unwrap()
        };
        let usage = file(
            memory,
            if v2 {
                "memory.current"
            } else {
                "memory.usage_in_bytes"
            },
        );
        // The process is stopped, but the kernel may still free a few of the cgroup's
        // objects (RCU-freed slabs) between the two reads.
        let read_usage = sample.memory_pages * page;
        assert!(
            read_usage.abs_diff(usage) <= 16 * page,
            "{walk}: usage: kernel {read_usage} bytes, file {usage}"
        );
        if cgroup.has_memory_peak() {
            let peak = file(
                memory,
                if v2 {
                    "memory.peak"
                } else {
                    "memory.max_usage_in_bytes"
                },
            );
            assert_eq!(sample.memory_peak_pages * page, peak, "{walk}: peak");
        }
        if v2 {
            assert_eq!(
                sample.swap_pages * page,
                file(memory, "memory.swap.current"),
                "{walk}: swap"
            );
        } else {
            let kmem = file(memory, "memory.kmem.usage_in_bytes");
            assert!(
                (sample.kmem_pages * page).abs_diff(kmem) <= 16 * page,
                "{walk}: kernel memory: kernel {} bytes, file {kmem}",
                sample.kmem_pages * page
            );
            assert_eq!(
                sample.oom_kills,
                cgroup.stat(memory, "memory.oom_control", "oom_kill"),
                "{walk}: oom kills"
            );
        }
        let throttled = cgroup.stat(cpu, "cpu.stat", "nr_throttled");
        assert!(throttled > 0, "{walk}: the quota throttled the process");
        assert_eq!(sample.nr_throttled, throttled, "{walk}: nr_throttled");
        if v2 {
            let us = cgroup.stat(cpu, "cpu.stat", "throttled_usec");
            assert_eq!(sample.throttled_ns / 1000, us, "{walk}: throttled time");
        } else {
            let ns = cgroup.stat(cpu, "cpu.stat", "throttled_time");
            assert_eq!(sample.throttled_ns, ns, "{walk}: throttled time");
        }
    }
}

fn relative_error(measured: u64, truth: u64) -> f64 {
    (measured as f64 - truth as f64).abs() / truth as f64
}

#[test]
fn programs_are_loaded_and_attached_to_sched_switch() {
    let Some(kernel) = load("programs_are_loaded_and_attached_to_sched_switch") else {
        return;
    };
    assert_features_as_expected(&kernel);
    if kernel_version() >= (5, 11) {
        assert_eq!(
            kernel.features().thread_state,
            ThreadStateStore::TaskStorage,
            "auto picks task storage where the kernel has it"
        );
    }
    let ids = kernel.programs().clone();
    let loaded: Vec<_> = aya::programs::loaded_programs().flatten().collect();
    let name_of = |id: u32| {
        loaded
            .iter()
            .find(|p| p.id() == id)
            .and_then(|p| p.name_as_str().map(str::to_owned))
    };
    assert_eq!(
        name_of(ids.sched_switch_id).as_deref(),
        Some("sched_switch")
    );
    assert_eq!(
        ids.checkpoint_id.and_then(name_of).as_deref(),
        Some("checkpoint")
    );
    if process_iter_expected() {
        assert_eq!(
            ids.process_iter_id.and_then(name_of).as_deref(),
            Some("tracked_threads")
        );
    }
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
fn process_and_cgroup_totals_match_the_kernels_own_counters() {
    let Some(mut kernel) = load("process_and_cgroup_totals_match_the_kernels_own_counters") else {
        return;
    };
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    track(&mut kernel, cgroup.cpu_id(), 3, monotonic_ns());
    let usage_before = cgroup.cpu_usage_ns();
    // Two busy threads for long enough to accumulate a couple of CPU-seconds.
    let child = cgroup.spawn(burner!().args(["spin", "2", "30"]));
    thread::sleep(Duration::from_millis(1500));
    // Freeze it so that every reading sees the same totals.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.pid() as i32, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(100));
    let from_proc = schedstat_ns(child.pid());
    assert!(
        from_proc > 1_000_000_000,
        "the workload ran: {from_proc} ns"
    );
    if let Some(process) = process_run_ns(&mut kernel, child.pid()) {
        assert!(
            relative_error(process, from_proc) < 0.01,
            "process: iterator {process} ns vs schedstat {from_proc} ns"
        );
    }
    // The cgroup counter, built at context switches, against the cgroup's own counter.
    let counted = slot_run_ns(&mut kernel, 3);
    let truth = cgroup.cpu_usage_ns() - usage_before;
    assert!(
        relative_error(counted, truth) < 0.01,
        "cgroup: sched_switch accounting {counted} ns vs the cgroup's own usage delta {truth} ns"
    );
}

#[test]
fn a_thread_that_never_switches_out_is_counted_up_to_now() {
    if let Some(kernel) = load("a_thread_that_never_switches_out_is_counted_up_to_now") {
        a_thread_that_never_switches_out_is_counted_up_to_now_with(kernel);
    }
}

/// The 5.10 build (threads' state in a hash map keyed by task), on this kernel.
#[test]
fn a_thread_that_never_switches_out_is_counted_up_to_now_with_the_thread_hash() {
    let test = "a_thread_that_never_switches_out_is_counted_up_to_now_with_the_thread_hash";
    if let Some(kernel) = load_with(test, ThreadStateChoice::Only(ThreadStateStore::Hash)) {
        a_thread_that_never_switches_out_is_counted_up_to_now_with(kernel);
    }
}

fn a_thread_that_never_switches_out_is_counted_up_to_now_with(mut kernel: KernelAccounting) {
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    track(&mut kernel, cgroup.cpu_id(), 0, monotonic_ns());
    let child = cgroup.spawn(burner!().args(["spin", "1", "30"]));
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(400));
        // Still running: only the checkpoint can account the slice in progress.
        let counted = slot_run_ns(&mut kernel, 0);
        let truth = schedstat_ns(child.pid());
        // The kernel updates a running thread's runtime at each tick (4 ms at HZ=250);
        // allow a few ticks between the two reads.
        assert!(
            counted + 20_000_000 >= truth && counted <= truth + 20_000_000,
            "running thread: counted {counted} ns, schedstat {truth} ns"
        );
    }
}

#[test]
fn short_lived_children_are_all_counted() {
    if let Some(kernel) = load("short_lived_children_are_all_counted") {
        short_lived_children_are_all_counted_with(kernel);
    }
}

/// The 5.10 build (threads' state in a hash map keyed by task), on this kernel.
#[test]
fn short_lived_children_are_all_counted_with_the_thread_hash() {
    let test = "short_lived_children_are_all_counted_with_the_thread_hash";
    if let Some(kernel) = load_with(test, ThreadStateChoice::Only(ThreadStateStore::Hash)) {
        short_lived_children_are_all_counted_with(kernel);
    }
}

fn short_lived_children_are_all_counted_with(mut kernel: KernelAccounting) {
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    track(&mut kernel, cgroup.cpu_id(), 0, monotonic_ns());
    let usage_before = cgroup.cpu_usage_ns();
    let exits_before = kernel.stats().exits_folded;
    // 100 children of ~10 ms CPU each, all shorter than one collection interval.
    let parent = cgroup.spawn(burner!().args(["churn", "100", "10"]));
    assert!(parent.wait(), "churn workload failed");
    let counted = slot_run_ns(&mut kernel, 0);
    let truth = cgroup.cpu_usage_ns() - usage_before;
    assert!(
        truth >= 900_000_000,
        "the children ran about 1 s of CPU: {truth} ns"
    );
    assert!(
        relative_error(counted, truth) < 0.10,
        "attributed {counted} ns vs the cgroup's own usage delta {truth} ns"
    );
    assert!(
        kernel.stats().exits_folded - exits_before >= 100,
        "every child's final switch was accounted"
    );
}

#[test]
fn a_thread_that_moves_is_counted_where_it_runs() {
    let Some(mut kernel) = load("a_thread_that_moves_is_counted_where_it_runs") else {
        return;
    };
    let from = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let to = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let since = monotonic_ns();
    track(&mut kernel, from.cpu_id(), 0, since);
    track(&mut kernel, to.cpu_id(), 1, since);
    let child = from.spawn(burner!().args(["spin", "1", "30"]));
    thread::sleep(Duration::from_millis(600));
    let before_move = slot_run_ns(&mut kernel, 0);
    to.move_in(child.pid());
    thread::sleep(Duration::from_millis(600));
    let in_from = slot_run_ns(&mut kernel, 0);
    let in_to = slot_run_ns(&mut kernel, 1);
    assert!(
        in_from < before_move + 50_000_000,
        "the old cgroup kept counting after the move: {before_move} -> {in_from} ns"
    );
    assert!(
        in_to > 400_000_000,
        "the new cgroup did not count the moved thread: {in_to} ns"
    );
    let total = in_from + in_to;
    let truth = schedstat_ns(child.pid());
    assert!(
        relative_error(total, truth) < 0.05,
        "the two cgroups together {total} ns vs the thread's {truth} ns"
    );
}

#[test]
fn a_reused_pid_starts_from_zero() {
    if let Some(kernel) = load("a_reused_pid_starts_from_zero") {
        a_reused_pid_starts_from_zero_with(kernel);
    }
}

/// The 5.10 build (threads' state in a hash map keyed by task), on this kernel.
#[test]
fn a_reused_pid_starts_from_zero_with_the_thread_hash() {
    let test = "a_reused_pid_starts_from_zero_with_the_thread_hash";
    if let Some(kernel) = load_with(test, ThreadStateChoice::Only(ThreadStateStore::Hash)) {
        a_reused_pid_starts_from_zero_with(kernel);
    }
}

fn a_reused_pid_starts_from_zero_with(mut kernel: KernelAccounting) {
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    track(&mut kernel, cgroup.cpu_id(), 0, monotonic_ns());
    let first = cgroup.spawn(burner!().args(["spin", "1", "1"]));
    let pid = first.pid();
    assert!(first.wait());
    let after_first = slot_run_ns(&mut kernel, 0);
    assert!(after_first > 500_000_000, "the first process ran");
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
    if let Some(run) = process_run_ns(&mut kernel, second.pid()) {
        assert!(
            run < 100_000_000,
            "the sleeping process with the reused PID shows {run} ns: it inherited the old one's"
        );
    }
    let grew = slot_run_ns(&mut kernel, 0) - after_first;
    assert!(
        grew < 100_000_000,
        "the cgroup gained {grew} ns from a sleeping process"
    );
}

/// Run-queue wait (`sched_info.run_delay`) of every thread of a process, from
/// `/proc/<pid>/task/*/schedstat`'s second field: the kernel's own figure.
fn schedstat_wait_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("process exists")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Every CPU's running thread accounted up to now, then the counters of slots `0..n`.
fn slots(kernel: &mut KernelAccounting, n: u32) -> Vec<collector_common::CgroupCpu> {
    assert_eq!(kernel.checkpoint(), 0, "checkpoint failed on some CPU");
    let mut counters = Vec::new();
    kernel.read_cgroup_cpu(n, &mut counters).unwrap();
    counters
}

#[test]
fn two_busy_tasks_on_one_cpu_each_wait_half_the_time() {
    let test = "two_busy_tasks_on_one_cpu_each_wait_half_the_time";
    let Some(mut kernel) = load(test) else {
        return;
    };
    // Every kernel of the matrix keeps run-queue delays (Debian sets CONFIG_SCHED_INFO,
    // and /proc/<pid>/schedstat exists exactly then).
    assert!(
        std::path::Path::new("/proc/self/schedstat").exists(),
        "this kernel keeps no schedstat"
    );
    assert!(
        kernel.features().cpu_wait.enabled,
        "CPU wait is off: {:?}",
        kernel.features().cpu_wait.reason
    );
    let since = monotonic_ns();
    let busy: Vec<Cgroup> = (0..2)
        .map(|_| Cgroup::outside_nomad(&format!("collector-test/{}", uuid())))
        .collect();
    let sleeping = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    for (slot, cgroup) in busy.iter().chain([&sleeping]).enumerate() {
        track(&mut kernel, cgroup.cpu_id(), slot as u32, since);
    }
    let burner_path = env!("CARGO_BIN_EXE_burner");
    let children: Vec<_> = busy
        .iter()
        .map(|cgroup| {
            cgroup.spawn(std::process::Command::new("taskset").args([
                "-c",
                "0",
                burner_path,
                "spin",
                "1",
                "30",
            ]))
        })
        .collect();
    let sleeper = sleeping.spawn(burner!().args(["sleep", "30"]));
    thread::sleep(Duration::from_millis(500));
    let start = std::time::Instant::now();
    let before = slots(&mut kernel, 3);
    let truth_before: Vec<u64> = children
        .iter()
        .map(|c| schedstat_wait_ns(c.pid()))
        .collect();
    thread::sleep(Duration::from_secs(2));
    let after = slots(&mut kernel, 3);
    let truth_after: Vec<u64> = children
        .iter()
        .map(|c| schedstat_wait_ns(c.pid()))
        .collect();
    let wall = start.elapsed().as_nanos() as f64;
    for i in 0..2 {
        let run = (after[i].run_ns - before[i].run_ns) as f64 / wall;
        let wait = (after[i].wait_ns - before[i].wait_ns) as f64 / wall;
        let truth = (truth_after[i] - truth_before[i]) as f64;
        let counted = (after[i].wait_ns - before[i].wait_ns) as f64;
        assert!(
            (run - 0.5).abs() <= 0.1,
            "task {i}: {run:.3} of a CPU, not about half (waited {wait:.3} s per second)"
        );
        assert!(
            (wait - 0.5).abs() <= 0.1,
            "task {i}: waited {wait:.3} s per second, not about 0.5"
        );
        assert!(
            (counted - truth).abs() <= 0.10 * truth,
            "task {i}: wait {counted} ns vs its threads' schedstat run delay {truth} ns"
        );
    }
    let idle_wait = (after[2].wait_ns - before[2].wait_ns) as f64 / wall;
    assert!(
        idle_wait < 0.01,
        "a sleeping task waited {idle_wait:.4} s per second"
    );
    drop(sleeper);
}

#[test]
fn the_wait_of_children_shorter_than_an_interval_is_counted() {
    let test = "the_wait_of_children_shorter_than_an_interval_is_counted";
    let Some(mut kernel) = load(test) else {
        return;
    };
    let churn = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let rival = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    track(&mut kernel, churn.cpu_id(), 0, monotonic_ns());
    let burner_path = env!("CARGO_BIN_EXE_burner");
    let pinned = |args: &[&str]| {
        let mut cmd = std::process::Command::new("taskset");
        cmd.args(["-c", "0", burner_path]).args(args);
        cmd
    };
    // A busy loop on the same CPU, in a cgroup that is not tracked, makes every child
    // wait for its turn.
    let _rival = rival.spawn(&mut pinned(&["spin", "1", "60"]));
    thread::sleep(Duration::from_millis(200));
    let before = slots(&mut kernel, 1)[0].wait_ns;
    // 40 children of 10 ms CPU each, each reporting its own schedstat wait just before
    // it exits; the parent adds its own.
    let mut cmd = pinned(&["churn-waits", "40", "10"]);
    cmd.stdout(std::process::Stdio::piped());
    let mut parent = churn.spawn(&mut cmd);
    let mut printed = String::new();
    std::io::Read::read_to_string(
        parent.child().stdout.as_mut().expect("piped stdout"),
        &mut printed,
    )
    .unwrap();
    assert!(parent.wait(), "churn-waits failed");
    let counted = slots(&mut kernel, 1)[0].wait_ns - before;
    let truth: u64 = printed.trim().parse().expect("the total wait");
    assert!(
        truth > 100_000_000,
        "the children hardly waited ({truth} ns): was the CPU contended?"
    );
    assert!(
        counted.abs_diff(truth) <= truth / 10,
        "counted {counted} ns of wait vs the children's and parent's own {truth} ns"
    );
}

/// After a full pass, the task iterator reports a thread again only once it ran: a
/// sleeping process is skipped, a spinning one reported with its new figures, and a
/// slot the daemon marks full reports both.
#[test]
fn an_idle_thread_is_reported_again_only_once_it_ran() {
    if let Some(kernel) = load("an_idle_thread_is_reported_again_only_once_it_ran") {
        an_idle_thread_is_reported_again_only_once_it_ran_with(kernel);
    }
}

/// The 5.10 build (threads' state in a hash map keyed by task), on this kernel.
#[test]
fn an_idle_thread_is_reported_again_only_once_it_ran_with_the_thread_hash() {
    let test = "an_idle_thread_is_reported_again_only_once_it_ran_with_the_thread_hash";
    if let Some(kernel) = load_with(test, ThreadStateChoice::Only(ThreadStateStore::Hash)) {
        an_idle_thread_is_reported_again_only_once_it_ran_with(kernel);
    }
}

/// A pass whose records do not fit in the cgroup walk's ring buffer fails (so the
/// daemon does not take a slot's missing threads for exits), and the next pass walks
/// every task instead, which reports them all; the pass after that walks the cgroups
/// again.
#[test]
fn a_cgroup_walk_that_overflows_its_ring_is_redone_by_the_task_walk() {
    let test = "a_cgroup_walk_that_overflows_its_ring_is_redone_by_the_task_walk";
    // One page: room for 39 records of 96 bytes and their 8-byte headers.
    let Some(mut kernel) = load_with_ring(test, ThreadStateChoice::Auto, 4096) else {
        return;
    };
    if !kernel.features().cgroup_walk.enabled {
        assert!(
            kernel_version() < (6, 7),
            "the cgroup walk is off where it must be on"
        );
        return;
    }
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let slot = 1;
    track(&mut kernel, cgroup.cpu_id(), slot, monotonic_ns());
    let parent = cgroup.spawn(burner!().args(["fanout", "60", "30"]));
    let procs = || -> BTreeSet<u32> { cgroup.procs().into_iter().collect() };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while procs().len() < 61 {
        assert!(
            std::time::Instant::now() < deadline,
            "fanout did not start its 60 children"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // As the daemon does: a pass that lost records is followed by a host-wide full one,
    // which is the task walk's; the passes after it are the cgroup walk's again.
    let mut pass = |host_wide: bool| -> Result<BTreeSet<u32>, String> {
        let mut samples: Vec<ThreadSample> = Vec::new();
        pass_reporting_all_of(
            &mut kernel,
            &[slot],
            host_wide,
            &mut samples,
            &mut Vec::new(),
        )?;
        Ok(samples
            .iter()
            .filter(|s| s.slot == slot)
            .map(|s| s.tgid)
            .collect())
    };
    let lost = pass(false);
    assert!(
        lost.as_ref().is_err_and(|e| e.contains("ring buffer")),
        "61 records do not fit in one page: {lost:?}"
    );
    assert_eq!(
        pass(true).unwrap(),
        procs(),
        "the task walk reports every process"
    );
    assert!(
        pass(false).is_err(),
        "the next pass walks the cgroups again"
    );
    drop(parent);
}

fn an_idle_thread_is_reported_again_only_once_it_ran_with(mut kernel: KernelAccounting) {
    if !kernel.features().process_iter.enabled {
        assert!(
            !process_iter_expected(),
            "the iterator is off where it must be on"
        );
        return;
    }
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let slot = 1;
    track(&mut kernel, cgroup.cpu_id(), slot, monotonic_ns());
    let sleeper = cgroup.spawn(burner!().args(["sleep", "30"]));
    let spinner = cgroup.spawn(burner!().args(["spin", "1", "30"]));
    thread::sleep(Duration::from_millis(300));
    // Pass numbers away from the slot's turn ((pass + slot) % FULL_PASS_EVERY == 0).
    let run = |kernel: &mut KernelAccounting, pass: u64, full: bool| {
        assert_ne!(
            (pass + u64::from(slot)) % collector_common::FULL_PASS_EVERY,
            0
        );
        // As the daemon does before each pass: a thread on a CPU is accounted up to now.
        assert_eq!(kernel.checkpoint(), 0);
        let mut samples: Vec<ThreadSample> = Vec::new();
        kernel
            .sample_tracked_threads(pass, full, &mut samples, &mut Vec::new())
            .unwrap();
        samples.retain(|s| s.slot == slot);
        let run_of = |pid: u32| samples.iter().find(|s| s.tgid == pid).map(|s| s.run_ns);
        (run_of(sleeper.pid()), run_of(spinner.pid()))
    };
    let (sleeping, spinning) = run(&mut kernel, 1001, true);
    assert!(
        sleeping.is_some(),
        "a full pass reports the sleeping process"
    );
    let spun = spinning.expect("a full pass reports the spinning process");
    thread::sleep(Duration::from_millis(200));
    let (sleeping, spinning) = run(&mut kernel, 1002, false);
    assert_eq!(
        sleeping, None,
        "the sleeping process did not run: not reported"
    );
    let spun_more = spinning.expect("the spinning process ran: reported");
    assert!(
        spun_more > spun + 100_000_000,
        "its new record has its new CPU time: {spun} -> {spun_more} ns"
    );
    kernel.mark_full(slot, 1003).unwrap();
    let (sleeping, spinning) = run(&mut kernel, 1003, false);
    assert!(
        sleeping.is_some() && spinning.is_some(),
        "a slot marked full reports every thread"
    );
    let (sleeping, _) = run(&mut kernel, 1004, false);
    assert_eq!(sleeping, None, "skipped again once reported");
    // Nothing of the slot runs any more: no thread of it is looked at.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(spinner.pid() as i32, libc::SIGSTOP) };
    thread::sleep(Duration::from_millis(100));
    run(&mut kernel, 1005, false);
    assert_eq!(
        run(&mut kernel, 1006, false),
        (None, None),
        "a slot where nothing ran reports nothing"
    );
    // SAFETY: as above.
    unsafe { libc::kill(spinner.pid() as i32, libc::SIGCONT) };
}

/// On 6.7+ (the cgroup walk), a slot that is not full is read from its set of the
/// threads that ran, which the context-switch program and the checkpoint fill: only
/// when the set is complete (exactly one checkpoint of every CPU since the pass before),
/// and only when it kept every such thread; otherwise every thread of the slot is
/// walked. Each way, a spinning thread is reported with its new CPU time and a sleeping
/// one is not.
#[test]
fn a_slot_is_read_from_its_ran_set_only_when_the_set_is_complete() {
    let test = "a_slot_is_read_from_its_ran_set_only_when_the_set_is_complete";
    let Some(mut kernel) = load(test) else {
        return;
    };
    if !kernel.features().cgroup_walk.enabled {
        assert!(
            kernel_version() < (6, 7),
            "the cgroup walk is off where it must be on"
        );
        return;
    }
    let cgroup = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let crowd = Cgroup::outside_nomad(&format!("collector-test/{}", uuid()));
    let (slot, crowd_slot) = (1, 2);
    track(&mut kernel, cgroup.cpu_id(), slot, monotonic_ns());
    track(&mut kernel, crowd.cpu_id(), crowd_slot, monotonic_ns());
    let sleeper = cgroup.spawn(burner!().args(["sleep", "30"]));
    let spinner = cgroup.spawn(burner!().args(["spin", "1", "30"]));
    // More spinning threads than a set holds.
    let spinners = collector_common::RAN_SET_CAPACITY as u32 + 2;
    let crowded = crowd.spawn(burner!().args(["spin", &spinners.to_string(), "30"]));
    thread::sleep(Duration::from_millis(300));
    // Pass numbers away from both slots' turns.
    let mut pass = 2000;
    let mut run = |kernel: &mut KernelAccounting, checkpoints: u32, full: bool| {
        pass += 1;
        while (pass + u64::from(slot)) % collector_common::FULL_PASS_EVERY == 0
            || (pass + u64::from(crowd_slot)) % collector_common::FULL_PASS_EVERY == 0
        {
            pass += 1;
        }
        for _ in 0..checkpoints {
            assert_eq!(kernel.checkpoint(), 0, "checkpoint failed on some CPU");
        }
        let before = kernel.stats();
        let mut samples: Vec<ThreadSample> = Vec::new();
        kernel
            .sample_tracked_threads(pass, full, &mut samples, &mut Vec::new())
            .unwrap();
        let after = kernel.stats();
        let run_of = |pid: u32| {
            samples
                .iter()
                .find(|s| s.slot == slot && s.tgid == pid)
                .map(|s| s.run_ns)
        };
        let crowd_threads = samples.iter().filter(|s| s.slot == crowd_slot).count();
        (
            (run_of(sleeper.pid()), run_of(spinner.pid()), crowd_threads),
            after.ran_set_slots - before.ran_set_slots,
            after.ran_set_overflows - before.ran_set_overflows,
        )
    };
    let ((sleeping, spinning, _), _, _) = run(&mut kernel, 1, true);
    assert!(
        sleeping.is_some(),
        "a full pass reports the sleeping process"
    );
    let mut spun = spinning.expect("a full pass reports the spinning process");
    for (checkpoints, way) in [
        (1, "from the sets"),
        (0, "with no checkpoint since the pass before"),
        (2, "with two checkpoints since the pass before"),
        (1, "from the sets again"),
    ] {
        thread::sleep(Duration::from_millis(200));
        let ((sleeping, spinning, crowd_threads), from_sets, overflows) =
            run(&mut kernel, checkpoints, false);
        let complete = checkpoints == 1;
        assert_eq!(
            from_sets,
            u64::from(complete),
            "{way}: slots read from their sets: {from_sets}"
        );
        assert_eq!(
            overflows,
            u64::from(complete),
            "{way}: the crowded slot overflows its set exactly when sets are read"
        );
        assert_eq!(
            sleeping, None,
            "{way}: the sleeping process is not reported"
        );
        let spun_more = spinning.unwrap_or_else(|| panic!("{way}: the spinner is reported"));
        // It shares the two CPUs with the crowd: about a ninth of 200 ms.
        assert!(
            spun_more > spun + 5_000_000,
            "{way}: with its new CPU time: {spun} -> {spun_more} ns"
        );
        spun = spun_more;
        assert!(
            crowd_threads >= spinners as usize,
            "{way}: every spinning thread of the crowded slot is reported: {crowd_threads}"
        );
    }
    drop((sleeper, spinner, crowded));
}
