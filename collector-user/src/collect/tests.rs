//! The whole cycle on fake cgroupfs trees (layouts this machine lacks, files missing,
//! cgroups vanishing or recreated), with the /proc source and this test process as the
//! task's member. No root needed.

use std::{fs, path::Path};

use super::Collector;
use crate::config::{Config, SourceChoice};

const ALLOC: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn config(root: &Path) -> Config {
    Config {
        cgroup_root: Some(root.to_path_buf()),
        source: SourceChoice::Procfs,
        ..Config::default()
    }
}

/// A Nomad 1.7+ cgroup v1 task in co-mounted `cpu,cpuacct` and `memory`, holding this
/// test process.
fn v1_task(root: &Path, task: &str, rss: u64) {
    let me = std::process::id().to_string();
    let cpu = root
        .join("cpu,cpuacct/nomad")
        .join(format!("{ALLOC}.{task}"));
    write(&cpu.join("cgroup.procs"), &format!("{me}\n"));
    write(
        &cpu.join("cpu.stat"),
        "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
    );
    write(&cpu.join("cpuacct.usage"), "123\n");
    let memory = root.join("memory/nomad").join(format!("{ALLOC}.{task}"));
    write(&memory.join("cgroup.procs"), &format!("{me}\n"));
    write(
        &memory.join("memory.stat"),
        &format!("cache 10\nrss 20\nmapped_file 5\nswap 0\ntotal_cache 100\ntotal_rss {rss}\ntotal_mapped_file 50\ntotal_swap 7\n"),
    );
    write(&memory.join("memory.usage_in_bytes"), "4096\n");
    write(&memory.join("memory.max_usage_in_bytes"), "8192\n");
    // No kmem files: a kernel without kmem accounting.
}

fn task_json(collector: &mut Collector, task: &str) -> Option<serde_json::Value> {
    let snapshot = collector.cycle();
    let alloc = snapshot.allocations.get(ALLOC)?;
    let body = alloc.stats_json(None, false);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Some(v["Tasks"][task].clone())
}

#[test]
fn a_v1_task_is_found_read_and_reset_when_recreated() {
    let root = tempfile::tempdir().unwrap();
    v1_task(root.path(), "web.frontend", 1000);
    let mut collector = Collector::new(&config(root.path())).unwrap();
    let task = task_json(&mut collector, "web.frontend").expect("task found");
    let memory = &task["ResourceUsage"]["MemoryStats"];
    assert_eq!(memory["RSS"], 1000, "hierarchical total_rss");
    assert_eq!(memory["Cache"], 100);
    assert_eq!(memory["Swap"], 7, "swap alone");
    assert_eq!(memory["MappedFile"], 50);
    assert_eq!(memory["Usage"], 4096);
    assert_eq!(
        memory["Measured"],
        serde_json::json!(["RSS", "Cache", "Swap", "Mapped File", "Usage", "Max Usage"]),
        "no kmem files, no Kernel Usage"
    );
    let cpu = &task["ResourceUsage"]["CpuStats"];
    assert_eq!(cpu["ThrottledPeriods"], 4);
    assert_eq!(cpu["ThrottledTime"], 5000);
    assert_eq!(cpu["Percent"], 0.0, "first sample");
    let me = std::process::id().to_string();
    assert!(
        task["Pids"].get(&me).is_some(),
        "this process is the member: {task}"
    );

    // Burn a little CPU so the next sample has something to show.
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(50) {
        std::hint::black_box(0u64);
    }
    let task = task_json(&mut collector, "web.frontend").unwrap();
    let pid_percent = task["Pids"][&me]["CpuStats"]["Percent"].as_f64().unwrap();
    assert!(pid_percent > 0.0, "second sample has a rate");

    // Recreated under the same name (new inode): its state starts afresh. The new
    // directories are built beside the old ones and renamed over them, so that this
    // file system cannot hand the freed inode numbers back (kernfs never reuses them
    // at once; ext4 would).
    let staging = tempfile::tempdir_in(root.path()).unwrap();
    v1_task(staging.path(), "web.frontend", 2000);
    for hierarchy in ["memory", "cpu,cpuacct"] {
        let rel = format!("{hierarchy}/nomad/{ALLOC}.web.frontend");
        fs::remove_dir_all(root.path().join(&rel)).unwrap();
        fs::rename(staging.path().join(&rel), root.path().join(&rel)).unwrap();
    }
    let memory_dir = root
        .path()
        .join(format!("memory/nomad/{ALLOC}.web.frontend"));
    let task = task_json(&mut collector, "web.frontend").unwrap();
    assert_eq!(
        task["ResourceUsage"]["MemoryStats"]["RSS"], 2000,
        "re-read at once"
    );
    assert_eq!(
        task["Pids"][&me]["CpuStats"]["Percent"], 0.0,
        "a recreated task starts from a first sample"
    );

    // Removed: the allocation is gone, no error.
    fs::remove_dir_all(&memory_dir).unwrap();
    fs::remove_dir_all(
        root.path()
            .join(format!("cpu,cpuacct/nomad/{ALLOC}.web.frontend")),
    )
    .unwrap();
    let snapshot = collector.cycle();
    assert!(snapshot.allocations.is_empty());
    assert_eq!(snapshot.health.cycle_errors, 0);
}

#[test]
fn a_pure_v2_host_with_both_nomad_layouts() {
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("cgroup.controllers"), "cpu memory\n");
    let me = std::process::id().to_string();
    let modern = root
        .path()
        .join(format!("nomad.slice/share.slice/{ALLOC}.api.scope"));
    write(&modern.join("cgroup.procs"), &format!("{me}\n"));
    write(
        &modern.join("memory.stat"),
        "anon 300\nfile 400\nfile_mapped 50\nkernel 60\n",
    );
    write(&modern.join("memory.current"), "900\n");
    write(&modern.join("memory.swap.current"), "11\n");
    write(
        &modern.join("cpu.stat"),
        "usage_usec 10\nuser_usec 5\nsystem_usec 5\nnr_periods 3\nnr_throttled 2\nthrottled_usec 7\n",
    );
    // No memory.peak: a kernel before 5.19.
    let other = "0f1e2d3c-4b5a-4968-8776-655443322110";
    let legacy = root.path().join(format!("nomad.slice/{other}.db.scope"));
    write(&legacy.join("cgroup.procs"), "");
    write(&legacy.join("memory.current"), "1\n");

    let mut collector = Collector::new(&config(root.path())).unwrap();
    let snapshot = collector.cycle();
    let mut ids: Vec<&str> = snapshot.allocations.keys().map(|id| &**id).collect();
    ids.sort();
    assert_eq!(ids, vec![other, ALLOC]);
    let body = snapshot.allocations[ALLOC].stats_json(None, false);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let memory = &v["Tasks"]["api"]["ResourceUsage"]["MemoryStats"];
    assert_eq!(
        (memory["RSS"].as_u64(), memory["Cache"].as_u64()),
        (Some(300), Some(400))
    );
    assert_eq!(memory["Swap"], 11);
    assert_eq!(memory["KernelUsage"], 60);
    assert_eq!(
        memory["Measured"],
        serde_json::json!([
            "RSS",
            "Cache",
            "Swap",
            "Mapped File",
            "Usage",
            "Kernel Usage"
        ]),
        "no memory.peak, no Max Usage"
    );
    let cpu = &v["Tasks"]["api"]["ResourceUsage"]["CpuStats"];
    assert_eq!(
        (
            cpu["ThrottledPeriods"].as_u64(),
            cpu["ThrottledTime"].as_u64()
        ),
        (Some(2), Some(7000))
    );
    let info = &snapshot.allocations[other].info;
    assert_eq!(&*info.tasks[0].name, "db");
}

#[test]
fn before_the_first_cycle_the_health_already_names_the_source() {
    let root = tempfile::tempdir().unwrap();
    v1_task(root.path(), "web", 1000);
    let collector = Collector::new(&config(root.path())).unwrap();
    let snapshot = collector.startup_snapshot();
    // The default source is eBPF: a scrape racing the first cycle used to report it.
    assert_eq!(
        snapshot.health.source,
        crate::snapshot::CpuSourceKind::Procfs
    );
    assert_eq!(snapshot.health.programs_attached, 0);
    assert!(snapshot.allocations.is_empty(), "nothing read yet");
}
