//! Fake cgroupfs and procfs trees in temporary directories, plus one test against the
//! real kernel (root only).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::*;
use crate::fsutil::Tree;

const A: &str = "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10";
const B: &str = "0b6f2f3e-1c1d-4c4e-8f8f-123456789abc";
const C: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";
/// Legacy executor UUIDs (not alloc ids).
const U1: &str = "11111111-2222-4333-8444-555555555555";
const U2: &str = "66666666-7777-4888-8999-aaaaaaaaaaaa";

fn mkdir(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    p
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).unwrap().ino()
}

/// A hybrid-looking root: v1 `cpu,cpuacct` (with the real hosts' symlinks), `memory`,
/// `cpuset`, `freezer`, `pids`, a named `systemd` hierarchy, and `unified`.
fn v1_root(root: &Path, with_unified: bool) {
    for d in [
        "cpu,cpuacct",
        "memory",
        "cpuset",
        "freezer",
        "pids",
        "systemd",
    ] {
        write(root, &format!("{d}/cgroup.procs"), "");
    }
    symlink("cpu,cpuacct", root.join("cpu")).unwrap();
    symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
    if with_unified {
        write(root, "unified/cgroup.controllers", "");
    }
}

fn empty_proc() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn discovery(root: &Path, proc: &Path) -> Discovery {
    let mounts = CgroupMounts::probe_root(root).unwrap();
    Discovery::new(mounts, NomadParents::default(), proc).unwrap()
}

/// One Nomad task cgroup on a pure-v2 fake tree (cpu and memory enabled, PID 9 in it),
/// with these files written; `write` changes one later.
struct V2Task {
    root: tempfile::TempDir,
    _proc: tempfile::TempDir,
    dir: String,
    cgroups: TaskCgroups,
}

impl V2Task {
    fn new(files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "cgroup.controllers", "cpu memory\n");
        let dir = format!("nomad.slice/share.slice/{A}.web.scope");
        for (name, text) in files {
            write(r, &format!("{dir}/{name}"), text);
        }
        write(r, &format!("{dir}/cgroup.procs"), "9\n");
        let proc = empty_proc();
        let mut d = discovery(r, proc.path());
        let tasks = d.scan();
        let cgroups = d.task_cgroups(&tasks[0]);
        Self {
            root,
            _proc: proc,
            dir,
            cgroups,
        }
    }

    fn write(&self, name: &str, text: &str) {
        write(self.root.path(), &format!("{}/{name}", self.dir), text);
    }
}

fn names(tasks: &[DiscoveredTask]) -> Vec<(String, String, NomadLayout)> {
    tasks
        .iter()
        .map(|t| (t.alloc_id.clone(), t.task.clone(), t.layout))
        .collect()
}

#[test]
fn mountinfo_controllers_named_hierarchies_cgroup2_and_escapes() {
    let text = "\
24 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
35 31 0:32 / /sys/fs/cgroup/my\\040cpuset rw - cgroup cgroup rw,noprefix,cpuset,clone_children
36 31 0:33 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
37 31 0:30 / /mnt/memory-again rw - cgroup cgroup rw,memory
38 31 0:34 / /other/cgroup2 rw - cgroup2 cgroup2 rw
garbage line
";
    let m = CgroupMounts::parse_mountinfo(text);
    let keys: Vec<_> = m.v1.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cpu", "cpuacct", "cpuset", "memory"]);
    assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(m.v1["cpuacct"], m.v1["cpu"]);
    assert_eq!(
        m.v1["memory"],
        PathBuf::from("/sys/fs/cgroup/memory"),
        "first mount kept"
    );
    assert_eq!(
        m.controller("cpuset"),
        Some(Path::new("/sys/fs/cgroup/my cpuset"))
    );
    assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    assert_eq!(m.kind(), HostKind::Hybrid);

    let v2 = CgroupMounts::parse_mountinfo(
        "30 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
    );
    assert_eq!((v2.kind(), v2.v1.len()), (HostKind::V2, 0));
    let v1 = CgroupMounts::parse_mountinfo(
        "32 31 0:29 / /cg/cpuacct rw - cgroup cgroup rw,cpuacct\n\
         34 31 0:31 / /cg/systemd rw - cgroup cgroup rw,name=systemd\n",
    );
    assert_eq!(v1.kind(), HostKind::V1);
    assert_eq!(CgroupMounts::parse_mountinfo("").kind(), HostKind::None);
}

#[test]
fn mountinfo_of_this_process_parses() {
    let m = CgroupMounts::from_mountinfo_file(Path::new("/proc/self/mountinfo")).unwrap();
    // Whatever the host, this must not fail; on a cgroup host something is found.
    if Path::new("/sys/fs/cgroup").exists() {
        assert_ne!(m.kind(), HostKind::None, "{m:?}");
    }
}

#[test]
fn probe_root_v1_v2_and_hybrid() {
    let hybrid = tempfile::tempdir().unwrap();
    v1_root(hybrid.path(), true);
    let m = CgroupMounts::probe_root(hybrid.path()).unwrap();
    assert_eq!(m.kind(), HostKind::Hybrid);
    let keys: Vec<_> = m.v1.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["cpu", "cpuacct", "cpuset", "freezer", "memory", "pids"]
    );
    assert_eq!(
        m.v1["cpu"],
        hybrid.path().join("cpu,cpuacct"),
        "symlink not followed"
    );
    assert_eq!(m.v1["cpuacct"], hybrid.path().join("cpu,cpuacct"));
    assert_eq!(m.v2, Some(hybrid.path().join("unified")));

    let v1 = tempfile::tempdir().unwrap();
    v1_root(v1.path(), false);
    mkdir(v1.path(), "not-a-controller");
    let m = CgroupMounts::probe_root(v1.path()).unwrap();
    assert_eq!((m.kind(), m.v1.len()), (HostKind::V1, 6));

    let v2 = tempfile::tempdir().unwrap();
    write(v2.path(), "cgroup.controllers", "cpu memory pids\n");
    mkdir(v2.path(), "memory"); // a cgroup named like a controller, not a hierarchy
    let m = CgroupMounts::probe_root(v2.path()).unwrap();
    assert_eq!(m.kind(), HostKind::V2);
    assert_eq!(m.v2.as_deref(), Some(v2.path()));

    let none = tempfile::tempdir().unwrap();
    assert_eq!(
        CgroupMounts::probe_root(none.path()).unwrap().kind(),
        HostKind::None
    );
    assert!(CgroupMounts::probe_root(&none.path().join("missing")).is_err());
}

#[test]
fn nomad_1_7_on_v1_with_dotted_names_and_noise_ignored() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, false);
    for ctrl in ["cpu,cpuacct", "memory", "freezer", "pids"] {
        mkdir(r, &format!("{ctrl}/nomad/{A}.web"));
        mkdir(r, &format!("{ctrl}/nomad/{A}.web.frontend"));
    }
    mkdir(r, &format!("memory/nomad/{B}.db"));
    mkdir(r, &format!("cpuset/nomad/share/{A}.web"));
    mkdir(r, &format!("cpuset/nomad/reserve/{A}.web.frontend"));
    // Noise: non-UUID names, a file and a symlink named like tasks, an empty task name,
    // share/reserve under a non-cpuset controller, a task nested under a task.
    mkdir(r, "memory/nomad/system.slice");
    mkdir(r, "memory/nomad/share");
    mkdir(r, &format!("memory/nomad/{C}."));
    mkdir(r, &format!("memory/nomad/{C}x.web"));
    write(r, &format!("memory/nomad/{C}.file"), "");
    symlink(
        r.join(format!("memory/nomad/{B}.db")),
        r.join(format!("memory/nomad/{C}.link")),
    )
    .unwrap();
    mkdir(r, &format!("memory/nomad/share/{C}.hidden"));
    mkdir(r, &format!("memory/{C}.outside"));

    let proc = empty_proc();
    let mut d = discovery(r, proc.path());
    let tasks = d.scan();
    assert_eq!(
        names(&tasks),
        [
            (B.to_owned(), "db".to_owned(), NomadLayout::V1),
            (A.to_owned(), "web".to_owned(), NomadLayout::V1),
            (A.to_owned(), "web.frontend".to_owned(), NomadLayout::V1),
        ],
        "sorted by (alloc, task)"
    );
    let web = tasks.iter().find(|t| t.task == "web").unwrap();
    let ctrls: Vec<_> = web.v1.keys().map(String::as_str).collect();
    assert_eq!(
        ctrls,
        ["cpu", "cpuacct", "cpuset", "freezer", "memory", "pids"]
    );
    assert_eq!(
        web.v1["cpu"].path,
        r.join(format!("cpu,cpuacct/nomad/{A}.web"))
    );
    assert_eq!(
        web.v1["cpuset"].path,
        r.join(format!("cpuset/nomad/share/{A}.web"))
    );
    for found in web.v1.values() {
        assert_eq!(found.inode, inode(&found.path), "{}", found.path.display());
    }
    assert_eq!(web.v2, None);
    let frontend = tasks.iter().find(|t| t.task == "web.frontend").unwrap();
    assert_eq!(
        frontend.v1["cpuset"].path,
        r.join(format!("cpuset/nomad/reserve/{A}.web.frontend"))
    );
    let db = tasks.iter().find(|t| t.task == "db").unwrap();
    assert_eq!(db.v1.keys().collect::<Vec<_>>(), ["memory"]);

    // Readers resolve to the right directories.
    let cg = d.task_cgroups(web);
    assert_eq!(cg.cpu.as_ref().unwrap().path(), web.v1["cpu"].path);
    assert_eq!(cg.memory.as_ref().unwrap().path(), web.v1["memory"].path);
    assert!(cg.v2.is_none());

    // Deterministic across scans.
    assert_eq!(d.scan(), tasks);
}

#[test]
fn nomad_on_v2_both_generations() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "cgroup.controllers", "cpu memory\n");
    mkdir(
        r,
        &format!("nomad.slice/share.slice/{A}.web.frontend.scope"),
    );
    mkdir(r, &format!("nomad.slice/reserve.slice/{B}.db.scope"));
    mkdir(r, &format!("nomad.slice/{C}.api.scope"));
    // Noise.
    mkdir(r, &format!("nomad.slice/share.slice/{C}.noscope"));
    mkdir(r, &format!("nomad.slice/{C}.scope"));
    mkdir(r, "nomad.slice/other.slice");
    write(r, &format!("nomad.slice/share.slice/{C}.file.scope"), "");
    mkdir(r, &format!("system.slice/{C}.elsewhere.scope"));

    let proc = empty_proc();
    let tasks = discovery(r, proc.path()).scan();
    assert_eq!(
        names(&tasks),
        [
            (B.to_owned(), "db".to_owned(), NomadLayout::V2),
            (A.to_owned(), "web.frontend".to_owned(), NomadLayout::V2),
            (C.to_owned(), "api".to_owned(), NomadLayout::V2Legacy),
        ]
    );
    let api = &tasks[2];
    let found = api.v2.as_ref().unwrap();
    assert_eq!(found.path, r.join(format!("nomad.slice/{C}.api.scope")));
    assert_eq!(found.inode, inode(&found.path));
    assert!(api.v1.is_empty());
}

#[test]
fn task_in_both_v1_and_v2_is_one_entry() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, true);
    mkdir(r, &format!("cpu,cpuacct/nomad/{A}.web"));
    mkdir(r, &format!("memory/nomad/{A}.web"));
    mkdir(r, &format!("unified/nomad.slice/share.slice/{A}.web.scope"));
    let proc = empty_proc();
    let d = &mut discovery(r, proc.path());
    let tasks = d.scan();
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(
        t.layout,
        NomadLayout::V1,
        "v1 describes a task found in both"
    );
    assert_eq!(t.v1.len(), 3);
    assert_eq!(
        t.v2.as_ref().unwrap().path,
        r.join(format!("unified/nomad.slice/share.slice/{A}.web.scope"))
    );
    let cg = d.task_cgroups(t);
    assert!(cg.memory.is_some() && cg.cpu.is_some() && cg.cpuacct.is_some() && cg.v2.is_some());
}

#[test]
fn missing_parents_give_nothing() {
    let root = tempfile::tempdir().unwrap();
    v1_root(root.path(), true);
    let proc = empty_proc();
    assert!(discovery(root.path(), proc.path()).scan().is_empty());
    let v2 = tempfile::tempdir().unwrap();
    write(v2.path(), "cgroup.controllers", "");
    assert!(discovery(v2.path(), proc.path()).scan().is_empty());
    // Mounts that do not exist at all.
    let mounts = CgroupMounts {
        v1: [("memory".to_owned(), root.path().join("gone"))].into(),
        v2: Some(root.path().join("gone2")),
    };
    let mut d = Discovery::new(mounts, NomadParents::default(), proc.path()).unwrap();
    assert!(d.scan().is_empty());
    assert!(Discovery::new(
        CgroupMounts::default(),
        NomadParents::default(),
        &root.path().join("x")
    )
    .is_err());
}

#[test]
fn custom_parents() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, false);
    mkdir(r, &format!("memory/custom/{A}.web"));
    mkdir(r, &format!("memory/nomad/{B}.db"));
    let proc = empty_proc();
    let parents = NomadParents {
        v1: "custom".to_owned(),
        ..NomadParents::default()
    };
    let mut d = Discovery::new(CgroupMounts::probe_root(r).unwrap(), parents, proc.path()).unwrap();
    assert_eq!(
        names(&d.scan()),
        [(A.to_owned(), "web".to_owned(), NomadLayout::V1)]
    );
}

#[test]
fn legacy_v1_uuid_dirs_are_identified_from_environ_once() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, false);
    let proc = tempfile::tempdir().unwrap();
    let p = proc.path();
    // U1: first member is the executor (no task environment), the second the task.
    for ctrl in ["cpu,cpuacct", "memory", "freezer"] {
        write(r, &format!("{ctrl}/nomad/{U1}/cgroup.procs"), "100\n101\n");
        write(r, &format!("{ctrl}/nomad/{U2}/cgroup.procs"), "");
    }
    write(p, "100/environ", "PATH=/bin\0HOME=/\0");
    write(
        p,
        "101/environ",
        &format!("PATH=/bin\0NOMAD_ALLOC_ID={A}\0NOMAD_TASK_NAME=web.frontend\0"),
    );
    // Cpuset: reserved cores by name, shared pool ignored.
    mkdir(r, &format!("cpuset/nomad/reserved/{B}-db-1"));
    mkdir(r, "cpuset/nomad/shared");
    mkdir(r, "cpuset/nomad/reserved/not-a-task");

    let mut d = discovery(r, p);
    let tasks = d.scan();
    assert_eq!(
        names(&tasks),
        [
            (B.to_owned(), "db-1".to_owned(), NomadLayout::V1Legacy),
            (
                A.to_owned(),
                "web.frontend".to_owned(),
                NomadLayout::V1Legacy
            ),
        ]
    );
    let web = &tasks[1];
    let ctrls: Vec<_> = web.v1.keys().map(String::as_str).collect();
    assert_eq!(ctrls, ["cpu", "cpuacct", "freezer", "memory"]);
    assert_eq!(web.v1["memory"].path, r.join(format!("memory/nomad/{U1}")));
    assert_eq!(
        web.v1["memory"].inode,
        inode(&r.join(format!("memory/nomad/{U1}")))
    );
    assert_eq!(
        tasks[0].v1["cpuset"].path,
        r.join(format!("cpuset/nomad/reserved/{B}-db-1"))
    );

    // Cached: the environment is not read again.
    fs::remove_file(p.join("101/environ")).unwrap();
    assert_eq!(d.scan(), tasks);

    // The empty cgroup gets a process: identified on a later scan.
    write(r, &format!("memory/nomad/{U2}/cgroup.procs"), "200\n");
    write(
        p,
        "200/environ",
        &format!("NOMAD_TASK_NAME=api\0NOMAD_ALLOC_ID={C}\0"),
    );
    let tasks = d.scan();
    let api = tasks.iter().find(|t| t.task == "api").unwrap();
    assert_eq!(
        (api.alloc_id.as_str(), api.v1.len()),
        (C, 4),
        "all controllers of U2"
    );

    // U1 recreated under the same name (new inode) in every controller: the cache no
    // longer applies, and with no readable environment it is not identified.
    for ctrl in ["cpu,cpuacct", "memory", "freezer"] {
        let old = r.join(format!("{ctrl}/nomad/{U1}"));
        let moved = r.join(format!("{ctrl}/old"));
        fs::rename(&old, &moved).unwrap();
        write(r, &format!("{ctrl}/nomad/{U1}/cgroup.procs"), "100\n");
        fs::remove_dir_all(moved).unwrap();
    }
    let tasks = d.scan();
    assert!(tasks.iter().all(|t| t.task != "web.frontend"), "{tasks:?}");
}

#[test]
fn legacy_dirs_claiming_the_same_task_are_not_reported() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, false);
    let proc = tempfile::tempdir().unwrap();
    let p = proc.path();
    write(r, &format!("memory/nomad/{U1}/cgroup.procs"), "100\n");
    write(r, &format!("memory/nomad/{U2}/cgroup.procs"), "200\n");
    let env = format!("NOMAD_ALLOC_ID={A}\0NOMAD_TASK_NAME=web\0");
    write(p, "100/environ", &env);
    write(p, "200/environ", &env);
    let mut d = discovery(r, p);
    assert!(d.scan().is_empty());
    assert!(d.scan().is_empty(), "still refused from the cache");
    // The impostor's cgroup goes away: the remaining claim stands.
    fs::remove_dir_all(r.join(format!("memory/nomad/{U2}"))).unwrap();
    let tasks = d.scan();
    assert_eq!(
        names(&tasks),
        [(A.to_owned(), "web".to_owned(), NomadLayout::V1Legacy)]
    );
}

#[test]
fn v1_memory_cpu_and_throttling() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, false);
    let task = format!("nomad/{A}.web");
    let mem = format!("memory/{task}");
    write(
        r,
        &format!("{mem}/memory.stat"),
        "cache 1\nrss 2\nmapped_file 3\nswap 4\ntotal_cache 10\ntotal_rss 20\n\
         total_mapped_file 30\ntotal_swap 40\nhierarchical_memory_limit 9223372036854771712\n",
    );
    write(r, &format!("{mem}/memory.usage_in_bytes"), "1000\n");
    write(r, &format!("{mem}/memory.max_usage_in_bytes"), "2000\n");
    write(r, &format!("{mem}/memory.memsw.usage_in_bytes"), "9999\n");
    write(r, &format!("{mem}/memory.kmem.usage_in_bytes"), "300\n");
    write(r, &format!("{mem}/memory.kmem.max_usage_in_bytes"), "400\n");
    write(
        r,
        &format!("{mem}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    let cpu = format!("cpu,cpuacct/{task}");
    write(
        r,
        &format!("{cpu}/cpu.stat"),
        "nr_periods 50\nnr_throttled 7\nthrottled_time 123456\n",
    );
    write(r, &format!("{cpu}/cpu.cfs_quota_us"), "-1\n");
    write(r, &format!("{cpu}/cpu.cfs_period_us"), "100000\n");
    write(r, &format!("{cpu}/cpuacct.usage"), "5000000\n");
    write(r, &format!("{cpu}/cpuacct.usage_user"), "3000000\n");
    write(r, &format!("{cpu}/cpuacct.usage_sys"), "1000000\n");
    write(r, &format!("{cpu}/cgroup.procs"), "42\n7\n");

    let proc = empty_proc();
    let mut d = discovery(r, proc.path());
    let tasks = d.scan();
    let cg = d.task_cgroups(&tasks[0]);
    let m = cg.read_memory(None, None).unwrap();
    assert_eq!(
        m,
        MemoryFigures {
            rss: Some(20),
            cache: Some(10),
            mapped_file: Some(30),
            swap: Some(40),
            usage: Some(1000),
            max_usage: Some(2000),
            kernel_usage: Some(300),
            kernel_max_usage: Some(400),
        },
        "hierarchical total_ lines, swap from memory.stat"
    );
    assert_eq!(m.measured().len(), 8);
    // Carried over: memory.stat is not read again, and what it gave comes back whole.
    write(r, &format!("{mem}/memory.stat"), "total_rss 99\n");
    assert_eq!(cg.read_memory_carrying_stat(None, &m).unwrap(), m);
    assert_eq!(
        cg.read_throttling(None, &ThrottleFigures::default())
            .unwrap(),
        ThrottleFigures {
            periods: Some(7),
            time_ns: Some(123456)
        }
    );
    let cpu_dir = cg.cpu.as_ref().unwrap();
    assert_eq!(cg.read_procs().unwrap(), [7, 42]);
    assert_eq!(cpu_dir.inode().unwrap(), inode(&cpu_dir.path()));

    // No total_ lines, no swap line: swap = memsw - usage; no kmem files.
    write(
        r,
        &format!("{mem}/memory.stat"),
        "cache 1\nrss 2\nmapped_file 3\n",
    );
    fs::remove_file(r.join(format!("{mem}/memory.kmem.usage_in_bytes"))).unwrap();
    fs::remove_file(r.join(format!("{mem}/memory.kmem.max_usage_in_bytes"))).unwrap();
    // A fresh reader: the old one keeps its files open, and a removed file of a fake tree
    // would still read (cgroupfs never removes one under a reader without ENODEV).
    let cg = d.task_cgroups(&tasks[0]);
    let m = cg.read_memory(None, None).unwrap();
    assert_eq!((m.rss, m.cache, m.mapped_file), (Some(2), Some(1), Some(3)));
    assert_eq!(m.swap, Some(8999));
    assert_eq!((m.kernel_usage, m.kernel_max_usage), (None, None));
    assert_eq!(
        m.measured(),
        ["RSS", "Cache", "Swap", "Mapped File", "Usage", "Max Usage"]
    );

    // memsw below usage (raced between reads): saturates at 0. Without memsw: no swap.
    write(r, &format!("{mem}/memory.memsw.usage_in_bytes"), "10\n");
    assert_eq!(cg.read_memory(None, None).unwrap().swap, Some(0));
    fs::remove_file(r.join(format!("{mem}/memory.memsw.usage_in_bytes"))).unwrap();
    let cg = d.task_cgroups(&tasks[0]);
    assert_eq!(cg.read_memory(None, None).unwrap().swap, None);

    // Garbage where a number belongs is a parse error, not a panic.
    write(r, &format!("{mem}/memory.usage_in_bytes"), "lots\n");
    assert!(matches!(
        cg.read_memory(None, None),
        Err(CgroupError::Parse { .. })
    ));
}

#[test]
fn v2_memory_cpu_throttling_and_limits() {
    let task = V2Task::new(&[
        (
            "memory.stat",
            "anon 100\nfile 200\nkernel 50\nkernel_stack 8\nfile_mapped 30\nfile_dirty 1\n",
        ),
        ("memory.current", "400\n"),
        ("memory.swap.current", "7\n"),
        ("memory.max", "max\n"),
        ("memory.swap.max", "1048576\n"),
        ("memory.high", "max\n"),
        ("pids.max", "max\n"),
        ("cpu.max", "max 100000\n"),
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 3\n\
             throttled_usec 250\nnr_bursts 0\nburst_usec 0\n",
        ),
    ]);
    let cg = &task.cgroups;
    let m = cg.read_memory(None, None).unwrap();
    assert_eq!(
        m,
        MemoryFigures {
            rss: Some(100),
            cache: Some(200),
            mapped_file: Some(30),
            swap: Some(7),
            usage: Some(400),
            max_usage: None,
            kernel_usage: Some(50),
            kernel_max_usage: None,
        },
        "no memory.peak before 5.19"
    );
    assert_eq!(
        m.measured(),
        [
            "RSS",
            "Cache",
            "Swap",
            "Mapped File",
            "Usage",
            "Kernel Usage"
        ]
    );
    task.write("memory.peak", "450\n");
    // A file that appears is looked for again only every ABSENT_RETRY reads.
    for _ in 0..crate::cgroup::control_files::ABSENT_RETRY {
        assert_eq!(cg.read_memory(None, None).unwrap().max_usage, None);
    }
    assert_eq!(cg.read_memory(None, None).unwrap().max_usage, Some(450));

    assert_eq!(
        cg.read_throttling(None, &ThrottleFigures::default())
            .unwrap(),
        ThrottleFigures {
            periods: Some(3),
            time_ns: Some(250_000)
        }
    );
    assert_eq!(cg.read_procs().unwrap(), [9]);

    // No cpu controller enabled: cpu.stat has only the usage lines.
    task.write("cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n");
    let throttling = cg
        .read_throttling(None, &ThrottleFigures::default())
        .unwrap();
    assert_eq!(throttling, ThrottleFigures::default());
    assert!(throttling.measured().is_empty());
}

#[test]
fn kernel_counters_stand_in_only_for_files_the_previous_read_found() {
    let task = V2Task::new(&[
        ("memory.stat", "anon 100\nfile 200\nfile_mapped 30\n"),
        ("memory.current", "400\n"),
        ("memory.swap.current", "7\n"),
        (
            "cpu.stat",
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 10\nnr_throttled 3\nthrottled_usec 250\n",
        ),
    ]);
    let cg = &task.cgroups;
    let kernel = KernelMemoryCounters {
        usage: 4096,
        peak: 8192,
        swap: Some(0),
        kernel_usage: Some(1),
        kernel_peak: Some(2),
        oom_kills: 5,
    };
    // A first read is from the files, whatever the kernel read.
    let first = cg.read_memory(Some(&kernel), None).unwrap();
    assert_eq!(
        (first.usage, first.swap, first.max_usage),
        (Some(400), Some(7), None)
    );
    let v2 = cg.v2.as_ref().unwrap();
    let kept = |name: &str| v2.kept_files().contains(&name);
    assert!(kept("memory.current") && kept("memory.swap.current"));
    // Then the counters stand in for the files that were there; memory.stat is still
    // read, and memory.peak (absent: before 5.19) stays absent.
    task.write("memory.stat", "anon 101\nfile 200\nfile_mapped 30\n");
    let next = cg.read_memory(Some(&kernel), Some(&first)).unwrap();
    assert_eq!(
        next,
        MemoryFigures {
            rss: Some(101),
            cache: Some(200),
            mapped_file: Some(30),
            swap: Some(0),
            usage: Some(4096),
            max_usage: None,
            kernel_usage: None,
            kernel_max_usage: None,
        }
    );
    // The files the counters stand in for are closed; memory.stat stays open.
    assert!(!kept("memory.current") && !kept("memory.swap.current"));
    assert!(kept("memory.stat"));
    // With memory.stat carried over (the counters stood still), its figures are the
    // previous read's and the counters the kernel's.
    task.write(
        "memory.stat",
        "anon 999\nfile 999\nfile_mapped 999\nkernel 999\n",
    );
    let moved = KernelMemoryCounters {
        usage: 8192,
        ..kernel
    };
    assert_eq!(
        cg.read_memory_carrying_stat(Some(&moved), &next).unwrap(),
        MemoryFigures {
            usage: Some(8192),
            ..next
        }
    );
    assert_eq!(
        cg.read_memory(Some(&moved), Some(&next)).unwrap().rss,
        Some(999)
    );
    // Without a kernel reading (its process was not in the cgroup), the files again.
    assert_eq!(cg.read_memory(None, Some(&next)).unwrap().usage, Some(400));
    assert!(kept("memory.current"));

    let throttle = KernelThrottleCounters {
        nr_throttled: 4,
        throttled_ns: 300_999,
    };
    let first = cg
        .read_throttling(Some(&throttle), &ThrottleFigures::default())
        .unwrap();
    assert_eq!(first.periods, Some(3));
    assert!(kept("cpu.stat"));
    assert_eq!(
        cg.read_throttling(Some(&throttle), &first).unwrap(),
        ThrottleFigures {
            periods: Some(4),
            time_ns: Some(300_000),
        },
        "whole microseconds, as v2's cpu.stat shows them"
    );
    assert!(!kept("cpu.stat"));
    // v2's OOM kills always come from memory.events.
    task.write("memory.events", "oom 1\noom_kill 1\n");
    assert_eq!(cg.read_oom_kills(Some(&kernel), Some(1)).unwrap(), Some(1));
}

#[test]
fn v2_without_controllers_reads_all_none() {
    // As on this machine's unified hierarchy: no memory.* files, cpu.stat usage only.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "cgroup.controllers", "");
    let dir = format!("nomad.slice/{A}.web.scope");
    write(
        r,
        &format!("{dir}/cpu.stat"),
        "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
    );
    write(r, &format!("{dir}/cgroup.procs"), "");
    write(r, &format!("{dir}/memory.pressure"), "some avg10=0.00\n");
    let proc = empty_proc();
    let mut d = discovery(r, proc.path());
    let tasks = d.scan();
    let cg = d.task_cgroups(&tasks[0]);
    assert_eq!(
        cg.read_memory(None, None).unwrap(),
        MemoryFigures::default()
    );
    assert_eq!(
        cg.read_throttling(None, &ThrottleFigures::default())
            .unwrap(),
        ThrottleFigures::default()
    );
    assert!(cg.read_procs().unwrap().is_empty());
    // A task with no readers at all.
    let nothing = TaskCgroups::default();
    assert_eq!(
        nothing.read_memory(None, None).unwrap(),
        MemoryFigures::default()
    );
    assert!(nothing.read_procs().unwrap().is_empty());
}

#[test]
fn cgroup_removed_after_discovery_is_vanished() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, true);
    let mem = format!("memory/nomad/{A}.web");
    write(r, &format!("{mem}/memory.usage_in_bytes"), "1\n");
    write(
        r,
        &format!("cpu,cpuacct/nomad/{A}.web/cpuacct.usage"),
        "1\n",
    );
    let v2 = format!("unified/nomad.slice/{A}.web.scope");
    write(r, &format!("{v2}/cpu.stat"), "usage_usec 1\n");
    let proc = empty_proc();
    let mut d = discovery(r, proc.path());
    let tasks = d.scan();
    let cg = d.task_cgroups(&tasks[0]);
    assert!(cg.read_memory(None, None).is_ok());
    for dir in [mem, format!("cpu,cpuacct/nomad/{A}.web"), v2] {
        fs::remove_dir_all(r.join(dir)).unwrap();
    }
    let vanished = |res: Result<(), CgroupError>| match res {
        Err(CgroupError::Vanished(path)) => assert!(path.starts_with(r), "{}", path.display()),
        other => panic!("expected Vanished, got {other:?}"),
    };
    vanished(cg.read_memory(None, None).map(drop));
    vanished(
        cg.read_throttling(None, &ThrottleFigures::default())
            .map(drop),
    );
    vanished(cg.read_procs().map(drop));
    vanished(cg.cpu.as_ref().unwrap().inode().map(drop));
    vanished(cg.v2.as_ref().unwrap().descendants().map(drop));
    assert!(cg.read_memory(None, None).unwrap_err().is_vanished());
    let v2only = TaskCgroups {
        v2: cg.v2.clone(),
        ..TaskCgroups::default()
    };
    vanished(v2only.read_memory(None, None).map(drop));
    assert!(d.scan().is_empty());
}

#[test]
fn descendants_and_procs_of_nested_cgroups() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "cgroup.controllers", "");
    let task = format!("nomad.slice/{A}.web.scope");
    write(r, &format!("{task}/cgroup.procs"), "1\n2\n");
    write(r, &format!("{task}/a/cgroup.procs"), "2\n3\n");
    write(r, &format!("{task}/a/b/cgroup.procs"), "4\n");
    write(r, &format!("{task}/c/cgroup.procs"), "");
    symlink(r.join(&task).join("a"), r.join(&task).join("link")).unwrap();
    // A chain deeper than the bound.
    let deep: String = (1..=10).map(|i| format!("/d{i}")).collect();
    write(r, &format!("{task}{deep}/cgroup.procs"), "99\n");

    let tree = Tree::open(r).unwrap();
    let mut found = descendants(&tree, Path::new(&task)).unwrap();
    found.sort();
    let rels: Vec<_> = found
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(r.join(&task))
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut expected = vec!["a".to_owned(), "a/b".to_owned(), "c".to_owned()];
    let mut chain = String::new();
    for i in 1..=MAX_DESCENDANT_DEPTH {
        chain = if chain.is_empty() {
            format!("d{i}")
        } else {
            format!("{chain}/d{i}")
        };
        expected.push(chain.clone());
    }
    expected.sort();
    assert_eq!(rels, expected);
    for (path, ino) in &found {
        assert_eq!(*ino, inode(path));
    }

    let dir = CgroupDir::new(Arc::new(tree), PathBuf::from(&task));
    let cg = TaskCgroups {
        v2: Some(dir),
        ..TaskCgroups::default()
    };
    assert_eq!(
        cg.read_procs().unwrap(),
        [1, 2, 3, 4],
        "deduplicated, bounded depth"
    );
}

#[test]
fn static_task_paths() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    v1_root(r, true);
    mkdir(r, "memory/custom/job");
    mkdir(r, "cpu,cpuacct/custom/job");
    mkdir(r, "unified/custom.scope");
    let h = Hierarchies::open(CgroupMounts::probe_root(r).unwrap());
    let cg = h.task_cgroups_at(&r.join("memory/custom/job")).unwrap();
    assert_eq!(cg.memory.unwrap().rel(), Path::new("custom/job"));
    assert_eq!(cg.cpuacct.unwrap().path(), r.join("cpu,cpuacct/custom/job"));
    assert!(cg.v2.is_none());
    let cg = h.task_cgroups_at(&r.join("unified/custom.scope")).unwrap();
    assert!(cg.v2.is_some() && cg.memory.is_none());
    assert!(h.task_cgroups_at(Path::new("/elsewhere")).is_none());
}

/// Removes the test's cgroups even when an assertion fails: the child first (a cgroup with
/// a live process cannot be removed), then the scope, then `nomad.slice` if this test made it.
struct RealCgroupGuard {
    child: Option<std::process::Child>,
    scope: PathBuf,
    slice: Option<PathBuf>,
}

impl Drop for RealCgroupGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..100 {
            match fs::remove_dir(&self.scope) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
        if let Some(slice) = &self.slice {
            let _ = fs::remove_dir(slice); // fails harmlessly if someone else uses it
        }
    }
}

/// A test that cannot run here: with `CI` set (as `cargo xtask test` and `.ci/run` read
/// it) that is a failure; elsewhere the skip is said on the terminal itself, past the test
/// harness's capture of passing tests' output.
fn skip_or_fail(test: &str, reason: &str) {
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if in_ci {
        panic!("{test}: CI is set and this test cannot run ({reason}); refusing to skip");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

#[test]
fn real_kernel_v2_scope_is_discovered_and_read() {
    const TEST: &str = "real_kernel_v2_scope_is_discovered_and_read";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(TEST, "needs root to create cgroups");
        return;
    }
    let mounts = CgroupMounts::from_mountinfo_file(Path::new("/proc/self/mountinfo")).unwrap();
    let Some(v2) = mounts.v2.clone() else {
        skip_or_fail(TEST, "no cgroup2 mount");
        return;
    };
    let slice = v2.join("nomad.slice");
    let created_slice = match fs::create_dir(&slice) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            skip_or_fail(TEST, &format!("cannot create {}: {e}", slice.display()));
            return;
        }
    };
    // A fresh alloc id per run, so concurrent runs never collide.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let alloc = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        (nanos >> 48) as u16,
        (nanos >> 36) as u16 & 0xfff,
        (nanos >> 24) as u16 & 0xfff,
        nanos as u64 & 0xffff_ffff_ffff
    );
    assert!(crate::config::is_alloc_id(&alloc), "{alloc}");
    let scope = slice.join(format!("{alloc}.real.task.scope"));
    let mut guard = RealCgroupGuard {
        child: None,
        scope: scope.clone(),
        slice: created_slice.then(|| slice.clone()),
    };
    if let Err(e) = fs::create_dir(&scope) {
        skip_or_fail(TEST, &format!("cannot create {}: {e}", scope.display()));
        return;
    }
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.child = Some(child);
    fs::write(scope.join("cgroup.procs"), pid.to_string()).unwrap();

    let mut d = Discovery::new(mounts, NomadParents::default(), Path::new("/proc")).unwrap();
    let tasks = d.scan();
    let task = tasks
        .iter()
        .find(|t| t.alloc_id == alloc)
        .unwrap_or_else(|| panic!("{alloc} not found in {tasks:?}"));
    assert_eq!(task.task, "real.task");
    assert_eq!(task.layout, NomadLayout::V2Legacy);
    let found = task.v2.as_ref().unwrap();
    assert_eq!(found.path, scope);
    assert_eq!(
        found.inode,
        inode(&scope),
        "readdir inode is the cgroup's inode"
    );
    let cg = d.task_cgroups(task);
    assert_eq!(cg.v2.as_ref().unwrap().inode().unwrap(), found.inode);
    assert_eq!(cg.read_procs().unwrap(), [pid]);
    let stat = cg
        .v2
        .as_ref()
        .unwrap()
        .read_cpu_stat()
        .unwrap()
        .expect("cpu.stat is always in cgroup2");
    assert!(stat.user_usec.is_some() && stat.system_usec.is_some());
    // Whatever controllers are enabled here, reading memory must not fail.
    cg.read_memory(None, None).unwrap();
    cg.read_throttling(None, &ThrottleFigures::default())
        .unwrap();

    drop(guard);
    assert!(!scope.exists(), "scope left behind");
    assert!(matches!(
        cg.read_throttling(None, &ThrottleFigures::default()),
        Err(CgroupError::Vanished(_))
    ));
    assert!(d.scan().iter().all(|t| t.alloc_id != alloc));
}

/// Sets a directory's modification time `secs` into the past.
fn age(path: &Path, secs: i64) {
    let old = std::time::SystemTime::now()
        - std::time::Duration::from_secs(secs.try_into().expect("a positive age"));
    let times = std::fs::FileTimes::new()
        .set_accessed(old)
        .set_modified(old);
    std::fs::File::open(path)
        .and_then(|dir| dir.set_times(times))
        .unwrap();
}

#[test]
fn an_unchanged_tree_is_not_listed_again_and_any_change_is_seen() {
    for inotify in [true, false] {
        unchanged_trees_are_not_listed_again(inotify);
    }
}

/// With inotify, or comparing the directories' subdirectories every interval.
fn unchanged_trees_are_not_listed_again(inotify: bool) {
    let root = tempfile::tempdir().unwrap();
    let proc = empty_proc();
    v1_root(root.path(), false);
    let first = format!("cpu,cpuacct/nomad/{A}.web");
    mkdir(root.path(), &first);
    let mut discovery = discovery(root.path(), proc.path());
    if !inotify {
        discovery = discovery.without_watch();
    }
    assert_eq!(
        discovery.scan_if_changed().map(|t| t.len()),
        Some(1),
        "first scan lists"
    );
    assert!(
        discovery.scan_if_changed().is_none(),
        "nothing changed: no listing"
    );
    // cgroupfs does not touch a directory's modification time when child cgroups come
    // and go: do the same here by putting the parents' times back after each change.
    let parents = ["cpu,cpuacct/nomad", "memory/nomad"];
    let age_parents = || {
        for dir in parents.map(|d| root.path().join(d)) {
            if dir.exists() {
                age(&dir, 100);
            }
        }
    };
    let unchanged_times = |change: &dyn Fn()| {
        age_parents();
        change();
        age_parents();
    };
    unchanged_times(&|| {
        mkdir(root.path(), &format!("memory/nomad/{B}.db"));
    });
    let tasks = discovery
        .scan_if_changed()
        .expect("a new task cgroup is seen, whatever the parent's time says");
    assert_eq!(tasks.len(), 2, "inotify: {inotify}");
    assert!(discovery.scan_if_changed().is_none());
    unchanged_times(&|| fs::remove_dir(root.path().join(&first)).unwrap());
    let tasks = discovery
        .scan_if_changed()
        .expect("a removed task cgroup is seen");
    assert_eq!(tasks.len(), 1, "inotify: {inotify}");
    assert!(discovery.scan_if_changed().is_none());
    // Nomad's parent removed and created again, with a task in it.
    fs::remove_dir_all(root.path().join("cpu,cpuacct/nomad")).unwrap();
    mkdir(root.path(), &format!("cpu,cpuacct/nomad/{A}.again"));
    let tasks = discovery
        .scan_if_changed()
        .expect("a recreated parent is seen");
    assert!(
        tasks.iter().any(|t| t.task == "again"),
        "inotify: {inotify}: {tasks:?}"
    );
    assert!(discovery.scan_if_changed().is_none());
}
