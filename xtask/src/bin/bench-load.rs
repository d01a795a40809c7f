//! Workload helper for `cargo xtask bench`.
//!
//! bench-load sleepers <per-task> <tickers-per-task>
//!     Reads one line per task on stdin: the task's `cgroup.procs` files (one per
//!     hierarchy, space-separated). For each task it moves ITSELF into the task's
//!     cgroups and forks `<per-task>` children there (children inherit the cgroups, so a
//!     task costs one migration per hierarchy instead of one per process). The first
//!     `<tickers-per-task>` children wake once a second; the others `pause()`. Then it
//!     moves back to the cgroups it started in, prints `ready <n>` and waits.
//!     Every child dies with this process (PR_SET_PDEATHSIG).
//!
//! bench-load churn <cpu-ms> <gap-ms>
//!     Forever: fork a child that burns <cpu-ms> of its own CPU time and exits, wait
//!     for it, sleep <gap-ms>.

use std::{
    fs,
    hint::black_box,
    io::{self, BufRead, Write},
    time::Duration,
};

fn die(what: &str) -> ! {
    eprintln!("bench-load: {what}: {}", io::Error::last_os_error());
    std::process::exit(1);
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn burn(amount: Duration) {
    let start = cpu_time();
    let mut x = 0u64;
    while cpu_time() - start < amount {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// In a freshly forked child: die with the parent.
fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl takes plain integers.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // SAFETY: _exit takes a plain integer and does not return.
        unsafe { libc::_exit(0) };
    }
}

fn sleeper(ticker: bool) -> ! {
    loop {
        if ticker {
            std::thread::sleep(Duration::from_secs(1));
        } else {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
}

/// The cgroup.procs files this process is in now, for the hierarchies named in `like`
/// (`/sys/fs/cgroup/<hierarchy>/...`): where to return to.
fn own_procs_files(like: &[String]) -> Vec<String> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    like.iter()
        .filter_map(|file| {
            let hierarchy = file.strip_prefix("/sys/fs/cgroup/")?.split('/').next()?;
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == hierarchy)
                    .then(|| path.to_owned())
            })?;
            Some(format!(
                "/sys/fs/cgroup/{hierarchy}{}/cgroup.procs",
                path.trim_end_matches('/')
            ))
        })
        .collect()
}

fn join(files: &[String]) {
    for file in files {
        if let Err(e) = fs::write(file, "0") {
            eprintln!("bench-load: joining {file}: {e}");
            std::process::exit(1);
        }
    }
}

fn sleepers(per_task: usize, tickers: usize) {
    let tasks: Vec<Vec<String>> = io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    let home = tasks
        .first()
        .map(|t| own_procs_files(t))
        .unwrap_or_default();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut started = 0usize;
    for files in &tasks {
        join(files);
        for i in 0..per_task {
            // SAFETY: the child only calls async-signal-safe functions and sleeps.
            match unsafe { libc::fork() } {
                -1 => die("fork"),
                0 => {
                    die_with_parent(me);
                    // SAFETY: closing an inherited descriptor the child does not use.
                    unsafe { libc::close(0) };
                    // SAFETY: closing an inherited descriptor the child does not use.
                    unsafe { libc::close(1) };
                    sleeper(i < tickers);
                }
                _ => started += 1,
            }
        }
    }
    join(&home);
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "ready {started}");
    let _ = out.flush();
    loop {
        // Reap nothing (children never exit on their own); just wait to be killed.
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

fn churn(cpu: Duration, gap: Duration) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    loop {
        // SAFETY: the child burns CPU and calls _exit.
        match unsafe { libc::fork() } {
            -1 => die("fork"),
            0 => {
                die_with_parent(me);
                burn(cpu);
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(0) };
            }
            child => {
                let mut status = 0;
                // SAFETY: status is a valid out-pointer.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
        std::thread::sleep(gap);
    }
}

fn num(args: &[String], i: usize) -> u64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("bench-load: argument {i} missing or not a number: {args:?}");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sleepers") => sleepers(num(&args, 2) as usize, num(&args, 3) as usize),
        Some("churn") => churn(
            Duration::from_millis(num(&args, 2)),
            Duration::from_millis(num(&args, 3)),
        ),
        _ => {
            eprintln!("usage: bench-load sleepers <per-task> <tickers> | churn <cpu-ms> <gap-ms>");
            std::process::exit(2);
        }
    }
}
