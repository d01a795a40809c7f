//! Helpers for the privileged integration tests: real cgroups and processes that are
//! cleaned up even when a test fails, the daemon as a child process, and a root check
//! that never lets CI skip.
//!
//! Tests panic rather than return `Result`, as aya's integration tests do.

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Once, OnceLock,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// `Command` for the test workload binary (see `src/bin/burner.rs`). A macro so that
/// `CARGO_BIN_EXE_burner`, set only for integration tests, is read at the call site.
#[macro_export]
macro_rules! burner {
    () => {
        std::process::Command::new(env!("CARGO_BIN_EXE_burner"))
    };
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// `cmd` with its nice value raised (-10) before it runs, for it and every thread it
/// creates: a busy loop must really have its core, whatever else a shared machine runs,
/// when a test checks the measurement of one full core (or of a fair half), not the
/// scheduler's fairness.
pub fn favoured(cmd: &mut Command) -> &mut Command {
    let hook = || {
        // SAFETY: setpriority takes plain integers; async-signal-safe.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls setpriority, which is async-signal-safe; it applies to
    // the child and what it executes.
    unsafe {
        cmd.pre_exec(hook);
    }
    cmd
}

/// Whether a privileged test can run here. Outside CI a non-root run skips (and says
/// so); with `CI` set a test that cannot run fails.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if in_ci() {
        panic!("{test}: CI is set but this test needs root (eBPF, cgroups); refusing to skip");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Fails the test in CI (and skips it elsewhere) when eBPF cannot be loaded.
pub fn ebpf_or_skip<T, E: std::fmt::Display>(test: &str, loaded: Result<T, E>) -> Option<T> {
    match loaded {
        Ok(value) => Some(value),
        Err(e) if in_ci() => panic!("{test}: CI is set and eBPF failed to load: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: eBPF failed to load: {e}");
            None
        }
    }
}

/// A random (v4-shaped) UUID, for allocation IDs.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The cgroup hierarchies this machine mounts, from `/proc/self/mountinfo`: the same
/// test binary runs on the hybrid host (v1 controllers, cgroup2 beside them) and in the
/// VMs (pure cgroup v2), and builds Nomad's layout for whichever it finds.
#[derive(Debug)]
pub struct Mounts {
    /// v1 hierarchies: (controllers of the mount, mount point).
    v1: Vec<(Vec<String>, PathBuf)>,
    /// The cgroup2 mount, if any.
    v2: Option<PathBuf>,
}

impl Mounts {
    fn parse(mountinfo: &str) -> Mounts {
        let mut mounts = Mounts {
            v1: Vec::new(),
            v2: None,
        };
        for line in mountinfo.lines() {
            // `id parent dev root mountpoint opts [optional…] - fstype source superopts`
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            let mut right = right.split(' ');
            match (right.next(), right.nth(1)) {
                (Some("cgroup2"), _) => {
                    mounts.v2.get_or_insert(point);
                }
                (Some("cgroup"), Some(options)) => {
                    let controllers = options
                        .split(',')
                        .filter(|o| !o.contains('=') && *o != "rw" && *o != "ro")
                        .map(str::to_owned)
                        .collect();
                    mounts.v1.push((controllers, point));
                }
                _ => {}
            }
        }
        mounts
    }

    /// The mount point of the v1 hierarchy holding `controller`.
    fn v1_root(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
            .map(|(_, point)| point.as_path())
    }

    /// The mount points a daemon attributing by `v1_controller` and cgroup2 walks.
    pub fn attribution_roots(&self, v1_controller: Option<&str>) -> Vec<PathBuf> {
        v1_controller
            .and_then(|c| self.v1_root(c))
            .map(Path::to_path_buf)
            .into_iter()
            .chain(self.v2.clone())
            .collect()
    }

    /// Pure cgroup v2: no v1 hierarchy holds the controllers the tests measure with.
    pub fn pure_v2(&self) -> bool {
        ["cpu", "cpuacct", "memory"]
            .iter()
            .all(|c| self.v1_root(c).is_none())
    }

    /// Root of `hierarchy`: a v1 controller name, or `unified` for cgroup2.
    fn root(&self, hierarchy: &str) -> PathBuf {
        let root = if hierarchy == "unified" {
            self.v2.as_deref()
        } else {
            self.v1_root(hierarchy)
        };
        root.unwrap_or_else(|| panic!("no {hierarchy} cgroup hierarchy is mounted: {self:?}"))
            .to_path_buf()
    }
}

/// This machine's cgroup mounts, read once.
pub fn mounts() -> &'static Mounts {
    static MOUNTS: OnceLock<Mounts> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        Mounts::parse(
            &fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo"),
        )
    })
}

/// Which of Nomad's cgroup layouts a task cgroup follows (spec: nomad-compat.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nomad {
    /// 1.7+: v1 `<controller>/nomad/<alloc>.<task>`, v2
    /// `nomad.slice/share.slice/<alloc>.<task>.scope`.
    Current,
    /// 1.3–1.6 on cgroup v2: `nomad.slice/<alloc>.<task>.scope`.
    LegacyV2,
    /// 1.7+'s cgroup v2 layout (`nomad.slice/share.slice/<alloc>.<task>.scope`) on the
    /// cgroup2 mount, also on a hybrid host: for what only cgroup v2 has.
    CurrentV2,
}

/// The v1 controllers Nomad gives a task and the tests read.
const NOMAD_V1: &[&str] = &["cpu", "cpuacct", "memory"];

/// The v2 controllers Nomad enables down to a task's scope.
const NOMAD_V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// A cgroup made of one directory per hierarchy (e.g. `cpu`, `cpuacct`, `memory` at the
/// same relative path, as Nomad does on cgroup v1), or of one cgroup2 directory. Dropping
/// it kills every process in it, removes the directories, and removes every parent
/// directory this test process created that is empty by then.
pub struct Cgroup {
    /// (hierarchy name, absolute directory); `unified` for cgroup v2.
    dirs: Vec<(String, PathBuf)>,
}

/// Parent directories (`nomad`, `nomad.slice`, …) created by any `Cgroup` of this test
/// process, each after its own parent (so removing from the end takes children first).
/// Shared because guards are not dropped in creation order: the guard that made `nomad`
/// may go while another still has a task in it, and the last guard to go must still
/// remove `nomad`.
static CREATED_PARENTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes the created parents that are empty now (`rmdir` refuses the others).
fn remove_empty_created_parents() {
    let mut parents = CREATED_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
    for i in (0..parents.len()).rev() {
        if fs::remove_dir(&parents[i]).is_ok() || !parents[i].exists() {
            parents.remove(i);
        }
    }
}

/// Enables the wanted controllers that `dir`'s hierarchy offers in `dir`'s
/// `cgroup.subtree_control`, so that its children get their interface files (`cpu.max`,
/// `memory.current`, …). On the hybrid host the cgroup2 mount offers none: nothing to do.
fn enable_v2_controllers(dir: &Path) {
    let offered = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = NOMAD_V2_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let file = dir.join("cgroup.subtree_control");
    fs::write(&file, wanted.join(" "))
        .unwrap_or_else(|e| panic!("write {:?} to {}: {e}", wanted, file.display()));
}

impl Cgroup {
    /// Creates `<hierarchy>/<rel>` in each hierarchy (`cpu`, `memory`, …, or `unified`).
    /// On cgroup2 the controllers Nomad uses are enabled down the path, from the root.
    pub fn create(hierarchies: &[&str], rel: &str) -> Cgroup {
        let mut cgroup = Cgroup { dirs: Vec::new() };
        for hierarchy in hierarchies {
            let root = mounts().root(hierarchy);
            let dir = root.join(rel);
            // Co-mounted controllers (`cpu,cpuacct`) share one directory.
            if let Some((_, same)) = cgroup.dirs.iter().find(|(_, d)| *d == dir) {
                let same = same.clone();
                cgroup.dirs.push((hierarchy.to_string(), same));
                continue;
            }
            let v2 = *hierarchy == "unified";
            // Held while the missing parents are found and made: tests run in parallel
            // and share them (`nomad` and its slices).
            let mut created = CREATED_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
            let mut missing = Vec::new();
            let mut p = dir.parent();
            while let Some(parent) = p {
                if parent == root || parent.exists() {
                    break;
                }
                missing.push(parent.to_path_buf());
                p = parent.parent();
            }
            if v2 {
                // The root's controllers are left enabled at the end: a pure-v2 machine
                // (systemd's, a test VM) runs with them enabled anyway.
                let mut p = dir.parent();
                let mut existing = Vec::new();
                while let Some(parent) = p {
                    if !missing.iter().any(|m| m == parent) {
                        existing.push(parent.to_path_buf());
                    }
                    if parent == root {
                        break;
                    }
                    p = parent.parent();
                }
                for parent in existing.iter().rev() {
                    enable_v2_controllers(parent);
                }
            }
            for parent in missing.iter().rev() {
                fs::create_dir(parent)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
                created.push(parent.clone());
                if v2 {
                    enable_v2_controllers(parent);
                }
            }
            // Still held: a guard dropped meanwhile would remove an empty new parent.
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            drop(created);
            cgroup.dirs.push((hierarchy.to_string(), dir));
        }
        cgroup
    }

    /// A Nomad 1.7+ task cgroup for `<alloc>.<task>` in this machine's layout: v1
    /// `cpu`, `cpuacct` and `memory` directories under `nomad/` where v1 controllers are
    /// mounted, else a `nomad.slice/share.slice` scope with `cpu`, `memory` and `pids`.
    pub fn task(alloc: &str, task: &str) -> Cgroup {
        Self::nomad(Nomad::Current, alloc, task)
    }

    /// A task cgroup in the given Nomad layout. [`Nomad::LegacyV2`] and
    /// [`Nomad::CurrentV2`] are cgroup2 layouts, made on the cgroup2 mount whatever else
    /// is mounted.
    pub fn nomad(layout: Nomad, alloc: &str, task: &str) -> Cgroup {
        match layout {
            Nomad::Current if !mounts().pure_v2() => {
                Self::create(NOMAD_V1, &format!("nomad/{alloc}.{task}"))
            }
            Nomad::Current | Nomad::CurrentV2 => Self::create(
                &["unified"],
                &format!("nomad.slice/share.slice/{alloc}.{task}.scope"),
            ),
            Nomad::LegacyV2 => {
                Self::create(&["unified"], &format!("nomad.slice/{alloc}.{task}.scope"))
            }
        }
    }

    /// A cgroup outside Nomad's layout at `rel` (`cpuacct` and `memory` on v1, the
    /// cgroup2 hierarchy on pure v2), for tests that name cgroups themselves.
    pub fn outside_nomad(rel: &str) -> Cgroup {
        if mounts().pure_v2() {
            Self::create(&["unified"], rel)
        } else {
            Self::create(&["cpuacct", "memory"], rel)
        }
    }

    pub fn path(&self, hierarchy: &str) -> &Path {
        &self
            .dirs
            .iter()
            .find(|(h, _)| h == hierarchy)
            .unwrap_or_else(|| panic!("cgroup has no {hierarchy} directory"))
            .1
    }

    /// The hierarchy whose counter is the truth for this cgroup's CPU: `cpuacct` on v1,
    /// else cgroup2.
    fn cpu_hierarchy(&self) -> &str {
        if self.dirs.iter().any(|(h, _)| h == "cpuacct") {
            "cpuacct"
        } else {
            "unified"
        }
    }

    /// The directory CPU is accounted in (see [`Cgroup::cpu_usage_ns`]).
    pub fn cpu_path(&self) -> &Path {
        self.path(self.cpu_hierarchy())
    }

    /// The cgroup id the kernel uses: the directory's inode number.
    pub fn id(&self, hierarchy: &str) -> u64 {
        fs::metadata(self.path(hierarchy)).unwrap().ino()
    }

    /// The id of the directory CPU is accounted in.
    pub fn cpu_id(&self) -> u64 {
        self.id(self.cpu_hierarchy())
    }

    pub fn write(&self, hierarchy: &str, file: &str, value: &str) {
        let path = self.path(hierarchy).join(file);
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn read(&self, hierarchy: &str, file: &str) -> String {
        let path = self.path(hierarchy).join(file);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The cgroup's own CPU counter (ns): `cpuacct.usage` on v1, `cpu.stat`
    /// `usage_usec` on v2. The truth the tests compare the daemon's figures with.
    pub fn cpu_usage_ns(&self) -> u64 {
        match self.cpu_hierarchy() {
            "cpuacct" => self
                .read("cpuacct", "cpuacct.usage")
                .trim()
                .parse()
                .unwrap(),
            _ => self.stat("unified", "cpu.stat", "usage_usec") * 1000,
        }
    }

    /// Limits the cgroup to `quota_us` of CPU every `period_us`: `cpu.cfs_quota_us` and
    /// `cpu.cfs_period_us` on v1, `cpu.max` on v2.
    pub fn set_cpu_quota(&self, quota_us: u64, period_us: u64) {
        if self.dirs.iter().any(|(h, _)| h == "cpu") {
            self.write("cpu", "cpu.cfs_period_us", &period_us.to_string());
            self.write("cpu", "cpu.cfs_quota_us", &quota_us.to_string());
        } else {
            self.write("unified", "cpu.max", &format!("{quota_us} {period_us}"));
        }
    }

    /// Whether this cgroup's memory is accounted on cgroup v2.
    pub fn memory_is_v2(&self) -> bool {
        !self.dirs.iter().any(|(h, _)| h == "memory")
    }

    /// Whether the memory files include a peak (`memory.max_usage_in_bytes` on v1,
    /// `memory.peak` on v2, which kernels before 5.19 do not have).
    pub fn has_memory_peak(&self) -> bool {
        if self.memory_is_v2() {
            self.path("unified").join("memory.peak").exists()
        } else {
            self.path("memory")
                .join("memory.max_usage_in_bytes")
                .exists()
        }
    }

    /// The cgroup's own memory figures, in bytes: (anonymous resident memory, usage):
    /// `memory.stat` `total_rss` and `memory.usage_in_bytes` on v1, `memory.stat` `anon`
    /// and `memory.current` on v2.
    pub fn memory_truth(&self) -> (u64, u64) {
        if self.memory_is_v2() {
            let usage = self
                .read("unified", "memory.current")
                .trim()
                .parse()
                .unwrap();
            (self.stat("unified", "memory.stat", "anon"), usage)
        } else {
            let usage = self
                .read("memory", "memory.usage_in_bytes")
                .trim()
                .parse()
                .unwrap();
            (self.stat("memory", "memory.stat", "total_rss"), usage)
        }
    }

    /// Moves process `pid` into every directory of this cgroup.
    pub fn move_in(&self, pid: u32) {
        let mut seen: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if seen.contains(&dir.as_path()) {
                continue;
            }
            seen.push(dir);
            let file = dir.join("cgroup.procs");
            fs::write(&file, pid.to_string())
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        }
    }

    /// A `key value` line of a flat-keyed file such as `cpu.stat`.
    pub fn stat(&self, hierarchy: &str, file: &str, key: &str) -> u64 {
        self.read(hierarchy, file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{file} has no {key}"))
    }

    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .flat_map(|(_, dir)| procs_of(dir))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Starts `cmd` with the child already in every directory of this cgroup before it
    /// executes its first instruction.
    pub fn spawn(&self, cmd: &mut Command) -> ChildGuard {
        let mut procs_files: Vec<CString> = self
            .dirs
            .iter()
            .map(|(_, d)| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap()
            })
            .collect();
        procs_files.dedup();
        let hook = move || {
            for file in &procs_files {
                // SAFETY: a NUL-terminated path prepared before fork; async-signal-safe.
                let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: one byte from a static buffer to the descriptor opened above.
                let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
                // SAFETY: closes the descriptor opened above, once.
                unsafe { libc::close(fd) };
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only calls async-signal-safe libc functions on data prepared
        // before fork.
        unsafe {
            cmd.pre_exec(hook);
        }
        ChildGuard(Some(cmd.spawn().expect("spawn workload")))
    }
}

fn procs_of(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // Child cgroups the workload may have made.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(procs_of(&e.path()));
            }
        }
    }
    pids
}

fn remove_cgroup_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_dir(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for pid in procs_of(dir) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("warning: could not remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (_, dir) in self.dirs.iter().rev() {
            remove_cgroup_dir(dir);
        }
        remove_empty_created_parents();
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }

    /// Waits for the child to exit and returns whether it succeeded.
    pub fn wait(mut self) -> bool {
        self.0
            .take()
            .expect("child")
            .wait()
            .expect("wait")
            .success()
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }
}

/// Guards a process a test started itself (Prometheus, a daemon with its own flags).
impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        ChildGuard(Some(child))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (major, minor) of the running kernel, from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Wall-clock time in ns since the Unix epoch, as the API's `Timestamp`s are.
pub fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64
}

/// Total on-CPU ns of a thread group from `/proc/<pid>/task/*/schedstat`.
pub fn schedstat_ns(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("process exists")
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A process's resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn vm_rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no VmRSS"));
    kib * 1024
}

/// Threads a test runs beside its main line (load, clients), stopped and joined by
/// [`Background::stop`] or, when the test fails first, on drop: none outlives the test
/// with the cgroups and processes it holds.
#[derive(Default)]
pub struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    /// Runs `body` on a new thread; it is given the stop flag and should return soon
    /// after the flag is set.
    pub fn spawn(&mut self, body: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || body(&stop)));
    }

    /// Stops and joins every thread; a thread's panic is raised again here.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

static BUILD_DAEMON: Once = Once::new();

/// The daemon binary: `$NOMAD_COLLECTOR_BIN`, else built (debug) on first use.
pub fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NOMAD_COLLECTOR_BIN") {
        return PathBuf::from(path);
    }
    BUILD_DAEMON.call_once(|| {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--package",
                "collector-user",
                "--bin",
                "nomad-collector",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join("nomad-collector")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon running as a child process, as a user would start it. Stopped with
/// SIGTERM (then SIGKILL) on drop; its log is kept and printed if the test failed.
pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on a free loopback port with `args` and waits until it serves.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_as(None, args)
    }

    /// Like [`Daemon::start`], as user `uid` (group `uid` too) instead of root.
    pub fn start_as(uid: Option<u32>, args: &[&str]) -> Daemon {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("nomad-collector-test-{port}.log"));
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(daemon_binary());
        cmd.args(["--listen", &addr])
            .args(args)
            .env("RUST_LOG", "info,collector_user=debug")
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file));
        if let Some(uid) = uid {
            let hook = move || {
                // SAFETY: an empty group list (no pointer read); async-signal-safe.
                if unsafe { libc::setgroups(0, std::ptr::null()) } != 0
                    // SAFETY: a plain integer; async-signal-safe.
                    || unsafe { libc::setgid(uid) } != 0
                    // SAFETY: a plain integer; async-signal-safe.
                    || unsafe { libc::setuid(uid) } != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
        let child = cmd.spawn().expect("start the daemon");
        let mut daemon = Daemon {
            child: Some(child),
            addr,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", self.log_text());
            }
            if ureq::get(&self.url("/v1/agent/health")).call().is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not start serving:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path`: (status, body). Never fails on 4xx/5xx.
    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(resp) => (resp.status(), resp.into_string().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}\n{}", self.log_text()),
        }
    }

    /// GET with an ACL token in `X-Nomad-Token`.
    pub fn get_with_token(&self, path: &str, token: &str) -> (u16, String) {
        match ureq::get(&self.url(path))
            .set("X-Nomad-Token", token)
            .call()
        {
            Ok(resp) => (resp.status(), resp.into_string().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {path}: {e}\n{}", self.log_text()),
        }
    }

    /// A value of the Prometheus exposition: the first sample of `name` whose labels
    /// contain every `label="value"` given.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, body) = self.get("/v1/metrics?format=prometheus");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// `CpuTotalNs` of a task from `/v1/client/allocations`.
    pub fn task_cpu_total_ns(&self, alloc: &str, task: &str) -> Option<u64> {
        let list = self.get_json("/v1/client/allocations");
        list.as_array()?.iter().find(|a| a["ID"] == alloc)?["Tasks"]
            .as_array()?
            .iter()
            .find(|t| t["Name"] == task)?["CpuTotalNs"]
            .as_u64()
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        fs::File::open(&self.log)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.contains(needle))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Error-level lines of the log, and panics (the daemon writes no colour codes to a
    /// file, so the level reads as ` ERROR `).
    pub fn error_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Kills the daemon with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and returns whether it exited cleanly in time.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let clean = self.stop();
        if thread::panicking() || !clean {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A configuration file in a temporary directory, removed on drop.
pub struct ConfigFile {
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(toml: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!("nomad-collector-test-{}.toml", uuid()));
        fs::write(&path, toml).unwrap();
        ConfigFile { path }
    }

    pub fn rewrite(&self, toml: &str) {
        fs::write(&self.path, toml).unwrap();
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// eBPF pins under a test-only folder on bpffs; `--uninstall`ed on drop so no program
/// stays attached after the test, even when it fails.
pub struct Pins {
    pub root: String,
}

impl Pins {
    pub fn new() -> Pins {
        Pins {
            root: format!("/sys/fs/bpf/nomad-collector-test-{}", &uuid()[..8]),
        }
    }

    /// Runs `nomad-collector --uninstall` on this folder; true when it succeeded.
    pub fn uninstall(&self) -> bool {
        Command::new(daemon_binary())
            .args(["--uninstall", "--pin-root", &self.root])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Default for Pins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.uninstall();
    }
}

/// A task's `Percent` averaged over `readings` consecutive snapshots, and the true CPU
/// rate of its cgroup ([`Cgroup::cpu_usage_ns`]) over the same window, in percent of one core.
/// Comparing the two holds on a busy machine, where "a busy loop reads 100%" does not.
/// The truth's rate is taken over the times its counter was read, not the snapshots'
/// timestamps: each read comes a poll and a request after its snapshot, a lag that
/// varies (by hundreds of ms under emulation) and would skew a steady rate.
pub fn percent_and_truth(
    daemon: &Daemon,
    alloc: &str,
    task: &str,
    cgroup: &Cgroup,
    readings: usize,
) -> (f64, f64) {
    // (counter ns, wall-clock ns when read).
    let usage = || {
        let ns = cgroup.cpu_usage_ns();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        (ns, at)
    };
    let path = format!("/v1/client/allocation/{alloc}/stats");
    // (snapshot timestamp, Percent) of the next snapshot newer than `after`.
    let next = |after: i64| -> (i64, f64) {
        eventually(Duration::from_secs(10), || {
            let (status, body) = daemon.get(&path);
            if status != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let t = &v["Tasks"][task];
            let ts = t["Timestamp"].as_i64()?;
            (ts > after).then(|| {
                (
                    ts,
                    t["ResourceUsage"]["CpuStats"]["Percent"].as_f64().unwrap(),
                )
            })
        })
        .expect("the daemon publishes new snapshots")
    };
    let (mut ts, _) = next(0);
    (ts, _) = next(ts);
    let (first_usage, first_at) = usage();
    let mut sum = 0.0;
    for _ in 0..readings {
        let (t, p) = next(ts);
        ts = t;
        sum += p;
    }
    let (last_usage, last_at) = usage();
    let truth = (last_usage - first_usage) as f64 / (last_at - first_at) as f64 * 100.0;
    (sum / readings as f64, truth)
}
