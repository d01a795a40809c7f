//! Everything the benchmark and the soak create outside themselves (processes, cgroups,
//! a sysctl, eBPF pins) is registered here before it is created, so that it is undone in
//! every case: the RAII guards undo their own part on drop (normal end, `?` error,
//! panic), and a signal thread undoes whatever is still registered on
//! SIGINT/SIGTERM/SIGHUP before exiting.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

#[derive(Default)]
struct Registry {
    /// Processes to SIGKILL (helpers, daemons, load generators).
    pids: Vec<i32>,
    /// Cgroup directories, in creation order (removed in reverse).
    cgroups: Vec<PathBuf>,
    /// Files to write back: (path, original content).
    restore: Vec<(PathBuf, String)>,
    /// eBPF pin folders to remove: (daemon binary, pin root).
    pin_roots: Vec<(PathBuf, PathBuf)>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a signal started the teardown (the main thread then leaves the exit to the
/// signal thread: its errors are consequences of the teardown).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `result`, unless a signal started the teardown: then the signal thread is tearing
/// down and will exit the process, so this waits for it.
pub fn unless_interrupted<T>(result: T) -> T {
    if interrupted() {
        loop {
            thread::park();
        }
    }
    result
}

fn registry() -> MutexGuard<'static, Option<Registry>> {
    // A panic while the lock was held must not stop the teardown.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(registry().get_or_insert_with(Registry::default))
}

pub fn add_pid(pid: i32) {
    with(|r| r.pids.push(pid));
}

pub fn remove_pid(pid: i32) {
    with(|r| r.pids.retain(|&p| p != pid));
}

pub fn add_cgroup(dir: &Path) {
    with(|r| r.cgroups.push(dir.to_path_buf()));
}

pub fn remove_cgroup(dir: &Path) {
    with(|r| r.cgroups.retain(|d| d != dir));
}

pub fn add_restore(path: &Path, original: &str) {
    with(|r| r.restore.push((path.to_path_buf(), original.to_owned())));
}

pub fn remove_restore(path: &Path) {
    with(|r| r.restore.retain(|(p, _)| p != path));
}

pub fn add_pin_root(daemon: &Path, root: &Path) {
    with(|r| r.pin_roots.push((daemon.to_path_buf(), root.to_path_buf())));
}

pub fn remove_pin_root(root: &Path) {
    with(|r| r.pin_roots.retain(|(_, p)| p != root));
}

/// `<daemon> --uninstall --pin-root <root>`: removes the pins under `root` (detaching
/// the programs they hold) and the folder. Returns whether the folder is gone.
pub fn uninstall_pins(daemon: &Path, root: &Path) -> bool {
    let _ = Command::new(daemon)
        .arg("--uninstall")
        .arg("--pin-root")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    !root.exists()
}

/// The PIDs in a cgroup directory and its descendants.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

pub fn kill(pid: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills every process in `dirs` and removes them (children first), retrying while
/// processes are still exiting. Returns the directories that could not be removed.
pub fn remove_cgroups(dirs: &[PathBuf], timeout: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + timeout;
    let mut left: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    loop {
        for dir in &left {
            for pid in cgroup_pids(dir) {
                kill(pid);
            }
        }
        left.retain(|dir| remove_tree(dir).is_err());
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// rmdir of a cgroup directory and of the child cgroups a workload may have made.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Undoes everything still registered. Safe to call more than once.
pub fn teardown_all() {
    let Some(registry) = registry().take() else {
        return;
    };
    for &pid in &registry.pids {
        kill(pid);
    }
    let left = remove_cgroups(&registry.cgroups, Duration::from_secs(20));
    for dir in left {
        eprintln!("warning: could not remove cgroup {}", dir.display());
    }
    for (path, original) in &registry.restore {
        let _ = fs::write(path, original);
    }
    for (daemon, root) in &registry.pin_roots {
        if !uninstall_pins(daemon, root) {
            eprintln!(
                "warning: could not remove the eBPF pins under {}",
                root.display()
            );
        }
    }
}

/// Blocks the termination signals in this thread (and so in every thread started
/// after it) and starts a thread that waits for them, tears down, and exits. Call
/// before any other thread exists. Child processes start with an empty signal mask
/// (std resets it), so Ctrl-C still reaches them.
pub fn install_signal_handler() {
    let set = {
        // SAFETY: sigset_t is plain data: all zeroes is a valid value.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigset operations on a local set.
        unsafe { libc::sigemptyset(&mut set) };
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: sigset operations on a local set.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: pthread_sigmask on this thread, with a valid set and no old set asked.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        set
    };
    thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: set is a valid signal set; sig a valid out-pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\n\x1b[1;31m==> signal {sig}: stopping every process and removing every cgroup and pin this run made\x1b[0m");
            teardown_all();
            eprintln!("==> torn down");
            std::process::exit(128 + sig);
        })
        .expect("starting the signal thread");
}
