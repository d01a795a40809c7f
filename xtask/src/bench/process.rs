//! Child processes that cannot outlive the benchmark, and what /proc tells about a
//! process: CPU time (ns), memory, and the eBPF objects it holds.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::cleanup;

/// A child process registered for teardown; SIGKILLed and reaped on drop (or stopped
/// politely with [`ChildGuard::stop`]).
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd`; the child is killed by the kernel if the benchmark dies.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        unblock_signals(cmd);
        let hook = || {
            // SAFETY: prctl takes plain integers; async-signal-safe.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            Ok(())
        };
        // SAFETY: the hook only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(hook);
        }
        Self::spawn_raw(cmd)
    }

    /// Spawns `cmd` with the pre_exec hooks it already has.
    pub fn spawn_raw(cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        cleanup::add_pid(child.id() as i32);
        Ok(Self { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Whether it exited (and how).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns whether it exited successfully.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as i32;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        let mut ok = false;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    ok = status.success();
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        cleanup::remove_pid(pid);
        ok
    }

    /// Waits for the exit and returns the child's own CPU time (user + system, from
    /// wait4's rusage), with its exit status.
    pub fn wait_with_cpu(mut self) -> Result<(std::process::ExitStatus, Duration)> {
        use std::os::unix::process::ExitStatusExt;
        let child = self.child.take().expect("running");
        let pid = child.id() as i32;
        // The Child is not waited through std: wait4 reaps it here.
        std::mem::forget(child);
        let mut status = 0;
        // SAFETY: rusage is plain data: all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: all pointers are valid for the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        cleanup::remove_pid(pid);
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("wait4");
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Ok((
            std::process::ExitStatus::from_raw(status),
            tv(usage.ru_utime) + tv(usage.ru_stime),
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = child.kill();
            let _ = child.wait();
            cleanup::remove_pid(pid);
        }
    }
}

/// Starts `cmd` with no signal blocked: the benchmark blocks SIGINT/SIGTERM/SIGHUP in
/// its own threads (see `cleanup`), and a child inherits the mask, so without this a
/// daemon would never see the SIGTERM that stops it.
pub fn unblock_signals(cmd: &mut Command) {
    let hook = || {
        // SAFETY: sigset_t is plain data: all zeroes is a valid value.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a local set; async-signal-safe.
        unsafe { libc::sigemptyset(&mut set) };
        // SAFETY: a valid set, no old set asked; async-signal-safe.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
        Ok(())
    };
    // SAFETY: the hook only calls sigemptyset and pthread_sigmask, async-signal-safe.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Total CPU time of a whole process (every thread, exited ones included), in ns, from
/// its POSIX process CPU clock: the scheduler's exact runtime, of which
/// `/proc/<pid>/stat`'s utime+stime are the tick-rounded split.
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: valid out-pointers.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("clock_getcpuclockid");
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(process clock)");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// utime + stime of `/proc/<pid>/stat`, in ns (tick resolution).
pub fn stat_cpu_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ")": state is field 3 of the whole line, utime 14, stime 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) * 1_000_000_000 / clock_ticks())
}

/// On-CPU ns of one thread (`/proc/<pid>/task/<tid>/schedstat`, first field).
pub fn thread_cpu_ns(pid: u32, tid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))?;
    Ok(text
        .split_whitespace()
        .next()
        .context("schedstat")?
        .parse()?)
}

/// Scheduler state of one thread (`R`, `S`, `D`, …).
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    text.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The thread of `pid` whose name is `comm`.
pub fn thread_named(pid: u32, comm: &str) -> Option<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// (VmRSS, VmHWM) in bytes.
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .context(name.to_owned())?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// What `/proc/<pid>/fdinfo` shows of an eBPF object the process holds.
#[derive(Clone, Debug, Default)]
pub struct BpfObject {
    pub kind: &'static str,
    pub fields: BTreeMap<String, String>,
}

impl BpfObject {
    pub fn num(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Every eBPF map and program `pid` holds a descriptor to, deduplicated by id.
pub fn bpf_objects(pid: u32) -> Vec<BpfObject> {
    let mut out: BTreeMap<(&'static str, u64), BpfObject> = BTreeMap::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        let kind = match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-map" => "map",
            "anon_inode:bpf-prog" => "prog",
            _ => continue,
        };
        let info: PathBuf = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(fd.file_name());
        let Ok(text) = fs::read_to_string(info) else {
            continue;
        };
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect();
        let object = BpfObject { kind, fields };
        let id = object.num(if kind == "map" { "map_id" } else { "prog_id" });
        out.insert((kind, id), object);
    }
    out.into_values().collect()
}

/// Processes on the host now.
pub fn host_process_count() -> usize {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
