//! The scenarios: Nomad-style task cgroups and the processes that run in them.
//!
//! * `100`, `1k`, `10k`: 10 processes per task in 10 / 100 / 1,000 tasks (two tasks per
//!   allocation). In each task one process wakes once a second (so every task shows a
//!   little CPU every interval, as live services do) and the other nine `pause()`.
//! * `10k-idle`: the 10,000 processes all `pause()` (tasks that use no CPU at all).
//! * `pipe`: `perf bench sched pipe` in one task (context-switch heavy).
//! * `churn`: in one task, a parent starting children that each burn 10 ms of CPU and
//!   exit (10 ms pause between children).
//! * `clients-1k`, `clients-10k`: the `1k` and `10k` loads, with nomad-apm and the Nomad
//!   UI polling the daemon during each measured window ([`super::clients`]).

use std::{
    ffi::CString,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{
    cgroups::{uuid, NomadParents, TaskCgroup, TASK_PREFIX},
    process::ChildGuard,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// `tasks` tasks of `per_task` sleeping processes, `tickers` of which wake each second.
    Sleepers {
        tasks: usize,
        per_task: usize,
        tickers: usize,
    },
    /// `perf bench sched pipe` running in one task.
    Pipe,
    /// Short-lived children burning `cpu_ms` each, `gap_ms` apart, in one task.
    Churn { cpu_ms: u64, gap_ms: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub key: &'static str,
    pub title: &'static str,
    pub load: Load,
}

impl Spec {
    /// Processes the scenario runs (long-lived ones).
    pub fn processes(&self) -> usize {
        match self.load {
            Load::Sleepers {
                tasks, per_task, ..
            } => tasks * per_task,
            Load::Pipe => 2,
            Load::Churn { .. } => 1,
        }
    }

    pub fn tasks(&self) -> usize {
        match self.load {
            Load::Sleepers { tasks, .. } => tasks,
            _ => 1,
        }
    }

    /// Whether this is one of the process-count scales (chart, pidstat).
    pub fn is_scale(&self) -> bool {
        matches!(self.load, Load::Sleepers { tickers, .. } if tickers > 0) && !self.clients()
    }

    /// Whether Nomad's clients poll the daemon during the measured windows (one of
    /// [`WITH_CLIENTS`]).
    pub fn clients(&self) -> bool {
        WITH_CLIENTS.iter().any(|s| s.key == self.key)
    }

    /// One of the sleeper loads, no client asking: the scenarios of the no-request
    /// figures (the CPU target, pidstat, the chart).
    pub fn is_quiet_sleepers(&self) -> bool {
        matches!(self.load, Load::Sleepers { .. }) && !self.clients()
    }
}

pub const ALL: [Spec; 6] = [
    Spec {
        key: "100",
        title: "100 processes / 10 tasks",
        load: Load::Sleepers {
            tasks: 10,
            per_task: 10,
            tickers: 1,
        },
    },
    Spec {
        key: "1k",
        title: "1,000 processes / 100 tasks",
        load: Load::Sleepers {
            tasks: 100,
            per_task: 10,
            tickers: 1,
        },
    },
    Spec {
        key: "10k",
        title: "10,000 processes / 1,000 tasks",
        load: Load::Sleepers {
            tasks: 1000,
            per_task: 10,
            tickers: 1,
        },
    },
    Spec {
        key: "10k-idle",
        title: "10,000 idle processes / 1,000 tasks",
        load: Load::Sleepers {
            tasks: 1000,
            per_task: 10,
            tickers: 0,
        },
    },
    Spec {
        key: "pipe",
        title: "context switches: perf bench sched pipe in 1 task",
        load: Load::Pipe,
    },
    Spec {
        key: "churn",
        title: "churn: 10 ms children, one after another, in 1 task",
        load: Load::Churn {
            cpu_ms: 10,
            gap_ms: 10,
        },
    },
];

/// The `1k` and `10k` loads again, polled by Nomad's clients during the windows.
pub const WITH_CLIENTS: [Spec; 2] = [
    Spec {
        key: "clients-1k",
        title: "1,000 processes / 100 tasks, polled by nomad-apm and the UI",
        load: Load::Sleepers {
            tasks: 100,
            per_task: 10,
            tickers: 1,
        },
    },
    Spec {
        key: "clients-10k",
        title: "10,000 processes / 1,000 tasks, polled by nomad-apm and the UI",
        load: Load::Sleepers {
            tasks: 1000,
            per_task: 10,
            tickers: 1,
        },
    },
];

/// Every scenario, in the full run's order.
pub fn every() -> impl Iterator<Item = Spec> {
    ALL.into_iter().chain(WITH_CLIENTS)
}

pub fn find(key: &str) -> Option<Spec> {
    every().find(|s| s.key == key)
}

/// A scenario set up on the host. Dropping it kills its processes, then removes its
/// cgroups (field order is drop order).
pub struct Scenario {
    procs: Vec<ChildGuard>,
    pub tasks: Vec<TaskCgroup>,
    _parents: NomadParents,
}

/// `cmd` with its child joining every `cgroup.procs` file before it executes.
pub fn in_cgroup(cmd: &mut Command, procs_files: &[PathBuf]) -> Result<()> {
    let files: Vec<CString> = procs_files
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).context("path with NUL"))
        .collect::<Result<_>>()?;
    super::process::unblock_signals(cmd);
    let hook = move || {
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
        for file in &files {
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
    // SAFETY: the hook makes only async-signal-safe calls, on data prepared before fork.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

impl Scenario {
    pub fn setup(spec: Spec, helper: &Path) -> Result<Self> {
        let parents = NomadParents::ensure()?;
        let mut scenario = Self {
            procs: Vec::new(),
            tasks: Vec::new(),
            _parents: parents,
        };
        let mut alloc = uuid();
        for i in 0..spec.tasks() {
            if i % 2 == 0 && i > 0 {
                alloc = uuid();
            }
            let task = format!("{TASK_PREFIX}{}-{i}", spec.key);
            scenario.tasks.push(TaskCgroup::create(&alloc, &task)?);
        }
        match spec.load {
            Load::Sleepers {
                per_task, tickers, ..
            } => scenario.start_sleepers(helper, per_task, tickers)?,
            Load::Pipe => {
                let task = &scenario.tasks[0];
                let mut cmd = Command::new("perf");
                cmd.args(["bench", "sched", "pipe", "-l", "2000000000"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                in_cgroup(&mut cmd, &task.procs_files())?;
                scenario.procs.push(ChildGuard::spawn_raw(&mut cmd)?);
            }
            Load::Churn { cpu_ms, gap_ms } => {
                let task = &scenario.tasks[0];
                let mut cmd = Command::new(helper);
                cmd.args(["churn", &cpu_ms.to_string(), &gap_ms.to_string()])
                    .stdout(Stdio::null());
                in_cgroup(&mut cmd, &task.procs_files())?;
                scenario.procs.push(ChildGuard::spawn_raw(&mut cmd)?);
            }
        }
        Ok(scenario)
    }

    fn start_sleepers(&mut self, helper: &Path, per_task: usize, tickers: usize) -> Result<()> {
        let mut child = ChildGuard::spawn(
            Command::new(helper)
                .args(["sleepers", &per_task.to_string(), &tickers.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        {
            let mut stdin = child.child().stdin.take().context("helper stdin")?;
            for task in &self.tasks {
                let files: Vec<String> = task
                    .procs_files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                writeln!(stdin, "{}", files.join(" "))?;
            }
        }
        let stdout = child.child().stdout.take().context("helper stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let expected = self.tasks.len() * per_task;
        if line.trim() != format!("ready {expected}") {
            bail!("the process helper did not start {expected} processes: {line:?}");
        }
        self.procs.push(child);
        let found: usize = self.tasks.iter().map(|t| t.pids().len()).sum();
        if found != expected {
            bail!("{found} processes in the task cgroups, expected {expected}");
        }
        Ok(())
    }

    /// Stops the scenario's own processes (the cgroups stay until drop).
    pub fn stop_load(&mut self) {
        self.procs.clear();
        for task in &self.tasks {
            for pid in task.pids() {
                super::cleanup::kill(pid);
            }
        }
    }

    /// Allocation IDs, in task order, without repeats.
    pub fn allocs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.tasks {
            if out.last() != Some(&t.alloc) {
                out.push(t.alloc.clone());
            }
        }
        out
    }
}
