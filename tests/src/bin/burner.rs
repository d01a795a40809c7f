//! A controllable workload for the integration tests.
//!
//! burner spin <threads> <seconds>      busy-loop on <threads> threads
//! burner sleep <seconds>               sleep
//! burner hold <MiB> <seconds>          touch <MiB> of anonymous memory, then sleep
//! burner churn <n> <cpu-ms>            start <n> children one after another, each
//!                                      burning <cpu-ms> of CPU then exiting
//! burner once <cpu-ms>                 burn <cpu-ms> of CPU and exit (churn's child)
//! burner churn-waits <n> <cpu-ms>      as churn, each child printing its own run-queue
//!                                      wait (schedstat) just before it exits; prints
//!                                      the children's and its own total, in ns
//! burner once-wait <cpu-ms>            churn-waits' child
//! burner threads <n> <cpu-ms> <secs>   start <n> short threads one after another, then
//!                                      sleep <secs>
//! burner fanout <n> <seconds>          fork <n> children that sleep <seconds> (cheap
//!                                      processes for density tests), then wait for them
//!
//! CPU is measured with the process's own CPU clock, so "burn 10 ms" means 10 ms on CPU.

use std::{
    hint::black_box,
    process::Command,
    thread,
    time::{Duration, Instant},
};

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn burn_thread_cpu(amount: Duration) {
    let start = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut x = 0u64;
    while cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - start < amount {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn spin_for(wall: Duration) {
    let end = Instant::now() + wall;
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_add(1));
        }
    }
}

/// This (single-threaded) process's run-queue wait so far: `/proc/self/schedstat`'s
/// second field, the kernel's `sched_info.run_delay`.
fn own_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn arg(args: &[String], i: usize) -> u64 {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} missing or not a number: {args:?}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("spin") => {
            let (threads, secs) = (arg(&args, 2), arg(&args, 3));
            let handles: Vec<_> = (0..threads)
                .map(|_| thread::spawn(move || spin_for(Duration::from_secs(secs))))
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        }
        Some("sleep") => thread::sleep(Duration::from_secs(arg(&args, 2))),
        Some("hold") => {
            let (mib, secs) = (arg(&args, 2) as usize, arg(&args, 3));
            let mut memory = vec![0u8; mib << 20];
            for page in memory.chunks_mut(4096) {
                page[0] = 1;
            }
            black_box(&memory);
            thread::sleep(Duration::from_secs(secs));
            black_box(&memory);
        }
        Some("churn") => {
            let (n, ms) = (arg(&args, 2), arg(&args, 3));
            let me = std::env::current_exe().unwrap();
            for _ in 0..n {
                let status = Command::new(&me)
                    .args(["once", &ms.to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        Some("once") => burn_thread_cpu(Duration::from_millis(arg(&args, 2))),
        Some("churn-waits") => {
            let (n, ms) = (arg(&args, 2), arg(&args, 3));
            let me = std::env::current_exe().unwrap();
            let mut total = 0;
            for _ in 0..n {
                let out = Command::new(&me)
                    .args(["once-wait", &ms.to_string()])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                total += String::from_utf8(out.stdout)
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
            println!("{}", total + own_wait_ns());
        }
        Some("once-wait") => {
            burn_thread_cpu(Duration::from_millis(arg(&args, 2)));
            println!("{}", own_wait_ns());
        }
        Some("threads") => {
            let (n, ms) = (arg(&args, 2), arg(&args, 3));
            for _ in 0..n {
                thread::spawn(move || burn_thread_cpu(Duration::from_millis(ms)))
                    .join()
                    .unwrap();
            }
            // Stay alive so the process (and its exited threads' time) can be read.
            thread::sleep(Duration::from_secs(arg(&args, 4)));
        }
        Some("fanout") => {
            let (n, secs) = (arg(&args, 2), arg(&args, 3));
            let mut children = Vec::new();
            for _ in 0..n {
                // SAFETY: the child only sleeps and exits (async-signal-safe calls only).
                match unsafe { libc::fork() } {
                    0 => {
                        // SAFETY: sleep is async-signal-safe, so callable in the forked child.
                        unsafe { libc::sleep(secs as u32) };
                        // SAFETY: _exit is async-signal-safe and ends the child here.
                        unsafe { libc::_exit(0) }
                    }
                    -1 => panic!("fork failed"),
                    pid => children.push(pid),
                }
            }
            for pid in children {
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
        }
        _ => {
            eprintln!("usage: burner spin|sleep|hold|churn|once|threads|fanout …");
            std::process::exit(2);
        }
    }
}
