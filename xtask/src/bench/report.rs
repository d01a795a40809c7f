//! `BENCHMARKS.md`: medians (min–max) of every figure group, and the targets; the raw
//! figures of every run in `benchmarks/results.json`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Result;

use super::{
    api,
    daemon::Source,
    kernel,
    measure::RunFigures,
    plot,
    stats::{sig, Summary},
    Plan, ScenarioResult,
};
use crate::shell::output;

#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub date: String,
    pub uname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory: String,
    pub hypervisor: String,
    pub load_before: f64,
    pub load_after: f64,
}

impl Machine {
    pub fn probe() -> Self {
        let run = |cmd: &mut Command| output(cmd).unwrap_or_default().trim().to_owned();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let lscpu = run(&mut Command::new("lscpu"));
        Self {
            date: run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            uname: run(Command::new("uname").arg("-a")),
            kernel: run(Command::new("uname").arg("-r")),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
                .unwrap_or_default(),
            // SAFETY: sysconf has no preconditions.
            cores: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
            memory: format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0),
            hypervisor: lscpu
                .lines()
                .find_map(|l| l.strip_prefix("Hypervisor vendor:"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "none".to_owned()),
            load_before: super::process::load_average(),
            load_after: 0.0,
        }
    }
}

pub struct Report {
    pub plan: Plan,
    pub machine: Machine,
    pub results: Vec<ScenarioResult>,
    pub elapsed: Duration,
    pub leftovers: Vec<String>,
}

fn summary<'a>(
    runs: impl Iterator<Item = &'a RunFigures>,
    f: impl Fn(&RunFigures) -> f64,
) -> Option<Summary> {
    Summary::of(runs.map(f))
}

fn show(s: Option<Summary>, fmt: impl Fn(f64) -> String) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show(fmt))
}

fn ms(x: f64) -> String {
    sig(x)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1048576.0)
}

/// `over` ÷ `under` of `f`, one ratio per round (both arms ran in the same round).
fn round_ratios(
    r: &ScenarioResult,
    over: Source,
    under: Source,
    f: impl Fn(&RunFigures) -> f64,
) -> Option<Summary> {
    let ratios = r.of(under).filter_map(|u| {
        let o = r.of(over).find(|o| o.round == u.round)?;
        Some(f(o) / f(u))
    });
    Summary::of(ratios)
}

/// The arms a scenario ran, in report order.
fn arms(r: &ScenarioResult) -> impl Iterator<Item = Source> + '_ {
    [Source::Ebpf, Source::Procfs]
        .into_iter()
        .filter(|src| r.of(*src).next().is_some())
}

fn times(s: Option<Summary>) -> String {
    show(s, |x| format!("{}×", sig(x)))
}

fn yes(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

struct Target {
    what: &'static str,
    measured: String,
    met: Option<bool>,
}

fn targets(report: &Report) -> Vec<Target> {
    let find = |key: &str| report.results.iter().find(|r| r.spec.key == key);
    let mut out = Vec::new();

    let procfs_over = |key, under| {
        find(key).and_then(|r| round_ratios(r, Source::Procfs, under, RunFigures::ms_per_cycle))
    };
    let ratio = procfs_over("10k", Source::Ebpf);
    let idle = procfs_over("10k-idle", Source::Ebpf);
    out.push(Target {
        what: "eBPF cycle ≥ 20× cheaper than procfs at 10,000 processes / 1,000 tasks",
        measured: ratio.map_or("–".into(), |s| {
            let mut text = format!(
                "{} cheaper (median of per-round procfs ÷ eBPF; both read every process and \
                 cgroup file of every allocation every interval, no client polling)",
                s.show(|x| format!("{}×", sig(x)))
            );
            if let Some(i) = idle {
                text += &format!("; {} with all tasks idle (`10k-idle`)", times(Some(i)));
            }
            text
        }),
        met: ratio.map(|s| s.median >= 20.0),
    });

    // Total CPU at every process-count scale measured (eBPF), no client polling.
    let shares: Vec<(&str, Summary)> = report
        .results
        .iter()
        .filter(|r| r.spec.is_quiet_sleepers())
        .filter_map(|r| {
            let s = summary(r.of(Source::Ebpf), RunFigures::total_share)?;
            Some((r.spec.key, s))
        })
        .collect();
    out.push(Target {
        what: "daemon total CPU (user + system + BPF) < 1% of one core at a 1 s interval",
        measured: if shares.is_empty() {
            "–".into()
        } else {
            shares
                .iter()
                .map(|(k, s)| format!("`{k}`: {}%", s.show(|x| format!("{x:.2}"))))
                .collect::<Vec<_>>()
                .join("; ")
                + " (eBPF source)"
        },
        met: (!shares.is_empty()).then(|| shares.iter().all(|(_, s)| s.median < 1.0)),
    });

    let per_event = find("pipe").and_then(|r| {
        summary(
            r.of(Source::Ebpf).filter(|f| f.switch_runs > 0.0),
            RunFigures::switch_ns_per_event,
        )
    });
    let others = Summary::of(
        report
            .results
            .iter()
            .filter(|r| r.spec.key != "pipe")
            .filter_map(|r| {
                summary(
                    r.of(Source::Ebpf).filter(|f| f.switch_runs > 0.0),
                    RunFigures::switch_ns_per_event,
                )
            })
            .map(|s| s.median),
    );
    out.push(Target {
        what: "≤ 100 ns BPF run time per sched_switch event",
        measured: per_event.map_or("–".into(), |s| {
            let mut text = format!(
                "{} ns in the context-switch-heavy `pipe` load (the method of \
                 shared/notes/ebpf-toolchain.md)",
                s.show(|x| format!("{x:.0}"))
            );
            if let Some(o) = others {
                text += &format!(
                    "; {} ns per event in the other scenarios, where switches are rare and \
                     every run starts with cold caches",
                    o.show(|x| format!("{x:.0}"))
                );
            }
            text
        }),
        met: per_event.map(|s| s.median <= 100.0),
    });

    let pipe = find("pipe").and_then(|r| r.slowdown.as_ref());
    let slowdown_of = |arm: fn(&kernel::Slowdown) -> &Vec<f64>| {
        pipe.and_then(|s| {
            let none = Summary::of(s.none.iter().copied())?;
            let with = Summary::of(arm(s).iter().copied())?;
            Some((with.median / none.median - 1.0) * 100.0)
        })
    };
    let slowdown = slowdown_of(|s| &s.ebpf);
    let floor = slowdown_of(|s| &s.empty);
    out.push(Target {
        what: "≤ 4% slowdown of a pinned `perf bench sched pipe` with the daemon running",
        measured: slowdown.map_or("–".into(), |x| {
            let mut text = format!("{x:+.1}% (eBPF daemon)");
            if let Some(f) = floor {
                text += &format!(
                    "; an empty program on the same tracepoint: {f:+.1}%, the floor under \
                     any sched_switch program on this machine"
                );
            }
            text
        }),
        met: slowdown.map(|x| x <= 4.0),
    });

    let api_ratio = find("1k").and_then(|r| r.api.as_ref()).and_then(api_ratio);
    out.push(Target {
        what: "API ≥ 70% of the plain-warp ceiling (requests/s)",
        measured: api_ratio.map_or("–".into(), |s| {
            format!(
                "{} (median of per-round daemon ÷ plain warp)",
                s.show(|x| format!("{x:.0}%"))
            )
        }),
        met: api_ratio.map(|s| s.median >= 70.0),
    });

    let rss = find("10k").and_then(|r| summary(r.of(Source::Ebpf), |f| f.rss_bytes as f64));
    let hwm = find("10k").and_then(|r| summary(r.of(Source::Ebpf), |f| f.hwm_bytes as f64));
    out.push(Target {
        what: "daemon RSS < 32 MiB at 10,000 processes",
        measured: rss.map_or("–".into(), |s| {
            format!(
                "VmRSS {} MiB at the end of the window; peak VmHWM {} MiB (eBPF source; \
                 judged on VmRSS)",
                s.show(mib),
                show(hwm, mib)
            )
        }),
        met: rss.map(|s| s.median < 32.0 * 1048576.0),
    });
    out.extend(client_targets(report));
    out
}

/// Issue 13's targets under Nomad's clients, at 10,000 processes.
fn client_targets(report: &Report) -> Vec<Target> {
    let Some(r) = report.results.iter().find(|r| r.spec.key == "clients-10k") else {
        return Vec::new();
    };
    let ratio = round_ratios(r, Source::Procfs, Source::Ebpf, RunFigures::total_share);
    let total = summary(r.of(Source::Ebpf), RunFigures::total_share);
    let rss = summary(r.of(Source::Ebpf), |f| f.rss_bytes as f64);
    let hwm = summary(r.of(Source::Ebpf), |f| f.hwm_bytes as f64);
    let limit = 32.0 * 1048576.0;
    vec![
        Target {
            what: "daemon CPU (user + system + BPF) under Nomad's clients (`clients-10k`): \
                   ≥ 20× less than procfs, and ≤ 0.5% of one core",
            measured: match (ratio, total) {
                (Some(x), Some(t)) => format!(
                    "{} less (median of per-round procfs ÷ eBPF totals); eBPF {} of one core",
                    times(Some(x)),
                    t.show(|v| format!("{v:.2}%"))
                ),
                _ => "–".into(),
            },
            met: ratio
                .zip(total)
                .map(|(x, t)| x.median >= 20.0 && t.median <= 0.5),
        },
        Target {
            what: "daemon VmRSS and peak VmHWM < 32 MiB under Nomad's clients (`clients-10k`)",
            measured: match (rss, hwm) {
                (Some(r), Some(h)) => format!(
                    "VmRSS {} MiB at the end of the window; VmHWM {} MiB (eBPF source)",
                    r.show(mib),
                    h.show(mib)
                ),
                _ => "–".into(),
            },
            met: rss
                .zip(hwm)
                .map(|(r, h)| r.median < limit && h.median < limit),
        },
    ]
}

/// Daemon ÷ plain warp requests/s in %, one ratio per round (the two ran back to back).
fn api_ratio(a: &api::ApiResult) -> Option<Summary> {
    Summary::of(
        a.daemon
            .iter()
            .zip(&a.plain)
            .map(|(d, p)| d.requests_per_s / p.requests_per_s * 100.0),
    )
}

fn scenario_label(r: &ScenarioResult) -> String {
    format!("`{}` {}", r.spec.key, r.spec.title)
}

pub fn render(report: &Report) -> String {
    let plan = &report.plan;
    let m = &report.machine;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `cargo xtask bench` (xtask/src/bench/): every figure below was measured \
         in the run described here; nothing is typed in by hand but the previous design's \
         figures at the end of section 8, labelled as such. Medians over runs, with \
         (min–max).\n"
    );
    let _ = writeln!(w, "- Date: {}", m.date);
    let _ = writeln!(
        w,
        "- Machine: {}, {} cores, {} RAM, hypervisor: {}",
        m.cpu_model, m.cores, m.memory, m.hypervisor
    );
    let _ = writeln!(w, "- Kernel: `{}` (`uname -a`: `{}`)", m.kernel, m.uname);
    let _ = writeln!(
        w,
        "- Load average (1 min) at start / end: {:.2} / {:.2} (the machine is shared; \
         sources are alternated within each scenario so that both see the same conditions)",
        m.load_before, m.load_after
    );
    let _ = writeln!(w, "- Command: `{}`", plan.command);
    let _ = writeln!(
        w,
        "- Raw figures of every run: [benchmarks/results.json](benchmarks/results.json)"
    );
    let _ = writeln!(
        w,
        "- Plan: daemon `--no-pin --interval {}s`, {} warm-up cycles, then {} measured cycles \
         per run; {} run(s) per arm per scenario, the arms' order rotated each round; \
         `kernel.bpf_stats_enabled=1` during these runs; total time {:.1} min",
        plan.settings.interval.as_secs_f64(),
        plan.settings.warmup_cycles,
        plan.settings.cycles,
        plan.runs,
        report.elapsed.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        w,
        "- Scenarios run in real cgroups, Nomad 1.7+ cgroup v1 layout \
         (`/sys/fs/cgroup/{{cpu,cpuacct,memory}}/nomad/<alloc>.<task>`, two tasks per \
         allocation). Scale scenarios: 10 processes per task; one of them wakes every second, \
         nine `pause()` (`10k-idle`: all ten pause). `pipe`: `perf bench sched pipe` in one \
         task. `churn`: a parent in one task forking children that each burn 10 ms of CPU and \
         exit, 10 ms apart. `clients-1k`, `clients-10k`: the `1k` and `10k` loads with \
         nomad-apm and the Nomad UI polling the daemon (section 8)."
    );
    let _ = writeln!(
        w,
        "- Teardown: every process killed and every cgroup removed after each scenario; at \
         the end `/sys/fs/cgroup/*/nomad`: {}\n",
        if report.leftovers.is_empty() {
            "gone".to_owned()
        } else {
            format!("still present: {}", report.leftovers.join(", "))
        }
    );

    // Targets.
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| Target | Measured (median, min–max) | Result |");
    let _ = writeln!(w, "|---|---|---|");
    for t in targets(report) {
        let _ = writeln!(w, "| {} | {} | {} |", t.what, t.measured, yes(t.met));
    }
    let _ = writeln!(w);
    if let Some(r) = report.results.iter().find(|r| r.spec.key == "pipe") {
        if let (Some(bpf), Some(rate)) = (
            summary(r.of(Source::Ebpf), RunFigures::bpf_share),
            summary(r.of(Source::Ebpf), RunFigures::switches_per_s),
        ) {
            let _ = writeln!(
                w,
                "Not in the CPU target above: under the `pipe` load ({:.0} context switches/s \
                 on the host) the sched_switch program alone costs {:.2}% of one core \
                 (section 3); this cost scales with the host's switch rate, not with the \
                 number of tasks.\n",
                rate.median, bpf.median
            );
        }
    }

    cost_tables(report, w);
    kernel_tables(report, w);
    share_table(report, w);
    memory_table(report, w);
    accuracy_table(report, w);
    api_table(report, w);
    pidstat_table(report, w);
    clients_table(report, w);
    s
}

fn cost_tables(report: &Report, w: &mut String) {
    let _ = writeln!(w, "## 1. Userspace CPU per collection cycle\n");
    let _ = writeln!(
        w,
        "The daemon process's CPU time (all threads; the exact scheduler runtime from its \
         process CPU clock, of which `/proc/<pid>/stat` utime+stime is the tick-rounded \
         split) over the measured window ÷ cycles completed in it. The window starts and \
         ends on cycle boundaries and the daemon serves no request inside it (except in the \
         `clients-*` scenarios, section 8). The eBPF arm is the full profile: every \
         allocation's processes (through one task-iterator pass over the host, inside the \
         daemon's `read(2)`: its system time) and cgroup memory and throttling every \
         interval, as Nomad's method does (the single-value counters read in the same pass \
         where the kernel allows, `memory.stat` from its file when those counters moved and \
         at least every 10 intervals). Ratios: procfs ÷ eBPF per round (both arms in the \
         same round).\n\n\
         ![collection CPU per cycle](benchmarks/collection-cost.svg)\n"
    );
    let _ = writeln!(
        w,
        "| Scenario | eBPF ms/cycle (every process and cgroup file) | procfs ms/cycle | procfs ÷ eBPF | cycle wall time eBPF / procfs (ms) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for r in &report.results {
        let wall = |src| {
            show(
                summary(r.of(src), |f| {
                    f.cycle_wall_metric_s.iter().sum::<f64>()
                        / f.cycle_wall_metric_s.len().max(1) as f64
                        * 1e3
                }),
                ms,
            )
        };
        let per_cycle = |src| show(summary(r.of(src), RunFigures::ms_per_cycle), ms);
        let ratio = times(round_ratios(
            r,
            Source::Procfs,
            Source::Ebpf,
            RunFigures::ms_per_cycle,
        ));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} / {} |",
            scenario_label(r),
            per_cycle(Source::Ebpf),
            per_cycle(Source::Procfs),
            ratio,
            wall(Source::Ebpf),
            wall(Source::Procfs),
        );
    }
    let _ = writeln!(
        w,
        "\nThe same cycles seen three other ways: the collector thread alone \
         (`/proc/<pid>/task/<tid>/schedstat`), the daemon's own \
         `nomad_collector_cycle_cpu_seconds` (collector thread CPU of one cycle; sampled at \
         the start and end of each window), and `/proc/<pid>/stat` utime+stime (10 ms ticks).\n"
    );
    let _ = writeln!(
        w,
        "| Scenario | collector thread eBPF / procfs (ms/cycle) | cycle_cpu metric eBPF / procfs (ms) | stat utime+stime eBPF / procfs (ms/cycle) |"
    );
    let _ = writeln!(w, "|---|---|---|---|");
    for r in &report.results {
        let metric = |src| {
            show(
                Summary::of(
                    r.of(src)
                        .flat_map(|f| f.cycle_cpu_metric_s.iter().map(|x| x * 1e3)),
                ),
                ms,
            )
        };
        let _ = writeln!(
            w,
            "| {} | {} / {} | {} / {} | {} / {} |",
            scenario_label(r),
            show(
                summary(r.of(Source::Ebpf), RunFigures::collector_ms_per_cycle),
                ms
            ),
            show(
                summary(r.of(Source::Procfs), RunFigures::collector_ms_per_cycle),
                ms
            ),
            metric(Source::Ebpf),
            metric(Source::Procfs),
            show(
                summary(r.of(Source::Ebpf), RunFigures::stat_ms_per_cycle),
                ms
            ),
            show(
                summary(r.of(Source::Procfs), RunFigures::stat_ms_per_cycle),
                ms
            ),
        );
    }
    let _ = writeln!(w);
}

fn kernel_tables(report: &Report, w: &mut String) {
    let _ = writeln!(w, "## 2. Kernel-side cost\n");
    let _ = writeln!(
        w,
        "eBPF arm, `kernel.bpf_stats_enabled=1` during the window; run time and run count \
         from `/proc/<daemon>/fdinfo/<prog fd>` (`run_time_ns`, `run_cnt`). The sched_switch \
         program runs on every context switch of the host (whatever else the shared machine \
         runs); the checkpoint once per CPU per cycle; the task iterator once per task of the \
         host per cycle (one pass, which writes records for the threads of tracked \
         cgroups that ran since their last record, and for every thread of the cgroups \
         read in full that pass; the daemon carries the others' records).\n"
    );
    let _ = writeln!(
        w,
        "| Scenario | arm | sched_switch ns/event | context switches/s (host) | checkpoint µs/cycle | process iterator µs/cycle | processes sampled/cycle |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (r, src) in report
        .results
        .iter()
        .flat_map(|r| arms(r).filter(|s| s.is_ebpf()).map(move |s| (r, s)))
    {
        let e = || r.of(src).filter(|f| f.bpf_stats_on);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            scenario_label(r),
            src.as_str(),
            show(
                summary(
                    e().filter(|f| f.switch_runs > 0.0),
                    RunFigures::switch_ns_per_event
                ),
                |x| format!("{x:.0}")
            ),
            show(summary(e(), RunFigures::switches_per_s), |x| format!(
                "{x:.0}"
            )),
            show(summary(e(), RunFigures::checkpoint_us_per_cycle), sig),
            show(summary(e(), RunFigures::iter_us_per_cycle), sig),
            show(summary(r.of(src), |f| f.processes_sampled), |x| {
                format!("{x:.0}")
            }),
        );
    }
    if let Some((r, s)) = report
        .results
        .iter()
        .find_map(|r| Some((r, r.slowdown.as_ref()?)))
    {
        let _ = writeln!(
            w,
            "\n### Pinned pipe slowdown\n\n`taskset -c 1 perf bench sched pipe -l {}` in the \
             `{}` task's cgroup, {} rounds of: no daemon / an empty program on sched_switch \
             (`nomad-collector --empty-probe`: what the tracepoint costs with any program on \
             it) / eBPF daemon / procfs daemon (order rotating each round; daemon at a 1 s \
             interval, started and warmed up before the run). \
             `kernel.bpf_stats_enabled=0`{}.\n",
            s.loops,
            r.spec.key,
            s.none.len(),
            if s.stats_seen_on {
                " was requested, **but something else on the host had bpf_stats on during \
                 some runs**"
            } else {
                ""
            }
        );
        let _ = writeln!(
            w,
            "On this VM the pinned pipe is bimodal (runs land near one of two speeds whatever \
             runs beside them), so the median of each arm can flip between modes; the \
             fastest run of each arm (noise only ever adds time) is given as a second \
             estimate. The target is judged on the medians.\n"
        );
        let _ = writeln!(
            w,
            "| Daemon | µs per pipe op | slowdown vs no daemon (of medians) | per-round slowdown | slowdown of the fastest runs |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|");
        let none = Summary::of(s.none.iter().copied());
        for (name, values) in [
            ("none", &s.none),
            ("empty sched_switch program", &s.empty),
            ("eBPF", &s.ebpf),
            ("procfs", &s.procfs),
        ] {
            let v = Summary::of(values.iter().copied());
            let (slow, fastest) = match (v, none) {
                (Some(v), Some(n)) if name != "none" => (
                    format!("{:+.2}%", (v.median / n.median - 1.0) * 100.0),
                    format!("{:+.2}%", (v.min / n.min - 1.0) * 100.0),
                ),
                _ => ("–".to_owned(), "–".to_owned()),
            };
            // Runs of the same round ran back to back.
            let per_round = Summary::of(
                values
                    .iter()
                    .zip(&s.none)
                    .map(|(v, n)| (v / n - 1.0) * 100.0),
            )
            .filter(|_| name != "none");
            let _ = writeln!(
                w,
                "| {name} | {} | {slow} | {} | {fastest} |",
                show(v, |x| format!("{x:.3}")),
                show(per_round, |x| format!("{x:+.1}%"))
            );
        }
    }
    let _ = writeln!(w);
}

fn share_table(report: &Report, w: &mut String) {
    let _ = writeln!(w, "## 3. Total CPU share at a 1 s interval\n");
    let _ = writeln!(
        w,
        "In % of one core over the measured window: the daemon's user + system time (the \
         per-process iterator included), plus the run time of the sched_switch program on \
         all CPUs and of the checkpoint on the other CPUs (eBPF arm only).\n"
    );
    let _ = writeln!(w, "| Scenario | arm | user + system % | BPF % | total % |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    for r in &report.results {
        for src in arms(r) {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                scenario_label(r),
                src.as_str(),
                show(summary(r.of(src), RunFigures::process_share), |x| format!(
                    "{x:.3}"
                )),
                if src.is_ebpf() {
                    show(summary(r.of(src), RunFigures::bpf_share), |x| {
                        format!("{x:.3}")
                    })
                } else {
                    "–".to_owned()
                },
                show(summary(r.of(src), RunFigures::total_share), |x| format!(
                    "{x:.3}"
                )),
            );
        }
    }
    let _ = writeln!(w);
}

fn memory_table(report: &Report, w: &mut String) {
    let _ = writeln!(w, "## 4. Daemon memory\n");
    let _ = writeln!(
        w,
        "VmRSS and peak VmHWM from `/proc/<pid>/status` at the end of the window; kernel \
         memory of the eBPF maps and programs the daemon holds (`memlock` of \
         `/proc/<pid>/fdinfo`; the task-storage map's per-thread entries, a 192-byte slab \
         object per thread that ran since the programs were loaded (or that the iterator \
         read), are allocated as threads switch and freed with them, and are not in its \
         `memlock`).\n"
    );
    let _ = writeln!(
        w,
        "| Scenario | arm | VmRSS MiB | VmHWM MiB | maps memlock KiB (maps) | programs memlock KiB |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for r in &report.results {
        for src in arms(r) {
            let maps = summary(r.of(src), |f| f.maps as f64).map_or(0.0, |s| s.median);
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} ({maps:.0}) | {} |",
                scenario_label(r),
                src.as_str(),
                show(summary(r.of(src), |f| f.rss_bytes as f64), mib),
                show(summary(r.of(src), |f| f.hwm_bytes as f64), mib),
                show(summary(r.of(src), |f| f.map_memlock_bytes as f64), |x| {
                    format!("{:.0}", x / 1024.0)
                }),
                show(summary(r.of(src), |f| f.prog_memlock_bytes as f64), |x| {
                    format!("{:.0}", x / 1024.0)
                }),
            );
        }
    }
    let _ = writeln!(w);
}

fn accuracy_table(report: &Report, w: &mut String) {
    let rows: Vec<&ScenarioResult> = report
        .results
        .iter()
        .filter(|r| r.runs.iter().any(|f| f.accuracy.is_some()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(w, "## 5. Accuracy\n");
    let _ = writeln!(
        w,
        "The task's CPU as each source reports it (`Percent` × the time between snapshots, \
         summed over {} consecutive snapshots of `GET /v1/client/allocation/<ID>/stats`) in % \
         of the growth of the task cgroup's own `cpuacct.usage` over the same snapshots. \
         Nomad's /proc method sums the processes alive at two consecutive samples, so \
         processes that start and exit between samples are missed.\n",
        report.plan.settings.accuracy_cycles
    );
    let _ = writeln!(
        w,
        "| Scenario | task CPU (cpuacct, % of a core) | eBPF reports | procfs reports |"
    );
    let _ = writeln!(w, "|---|---|---|---|");
    for r in rows {
        let acc = |src| {
            show(
                Summary::of(r.of(src).filter_map(|f| Some(f.accuracy?.percent()))),
                |x| format!("{x:.1}%"),
            )
        };
        let load = Summary::of(r.runs.iter().filter_map(|f| {
            let a = f.accuracy?;
            Some(a.true_ns / (report.plan.settings.accuracy_cycles as f64 * 1e9) * 100.0)
        }));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            scenario_label(r),
            show(load, |x| format!("{x:.0}%")),
            acc(Source::Ebpf),
            acc(Source::Procfs)
        );
    }
    let _ = writeln!(w);
}

fn api_table(report: &Report, w: &mut String) {
    let Some((r, a)) = report
        .results
        .iter()
        .find_map(|r| Some((r, r.api.as_ref()?)))
    else {
        return;
    };
    let _ = writeln!(w, "## 6. API\n");
    let _ = writeln!(
        w,
        "`wrk -t{} -c{} -d{}s --latency` on `GET /v1/client/allocation/<ID>/stats` ({} byte \
         body), against the daemon (eBPF source, collecting every 1 s at the `{}` scale) and \
         against `plain-warp` (xtask/src/bin/plain-warp.rs: warp 0.3, same runtime shape, a \
         fixed body of the same size) on the same machine, alternated, {} round(s). wrk \
         shares the 2 cores with the server.\n",
        api::THREADS,
        api::CONNECTIONS,
        a.seconds,
        a.body_bytes,
        r.spec.key,
        a.daemon.len()
    );
    let _ = writeln!(w, "| Server | requests/s | p50 ms | p99 ms | errors |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (name, runs) in [("daemon", &a.daemon), ("plain warp", &a.plain)] {
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} |",
            show(Summary::of(runs.iter().map(|x| x.requests_per_s)), |x| {
                format!("{x:.0}")
            }),
            show(Summary::of(runs.iter().map(|x| x.p50_ms)), |x| format!(
                "{x:.3}"
            )),
            show(Summary::of(runs.iter().map(|x| x.p99_ms)), |x| format!(
                "{x:.3}"
            )),
            runs.iter().map(|x| x.errors).sum::<u64>()
        );
    }
    if let Some(ratio) = api_ratio(a) {
        let _ = writeln!(
            w,
            "\nDaemon ÷ plain warp (requests/s), per round, median (min–max): **{}**.",
            ratio.show(|x| format!("{x:.0}%"))
        );
    }
    let _ = writeln!(w);
}

fn pidstat_table(report: &Report, w: &mut String) {
    let rows: Vec<&ScenarioResult> = report
        .results
        .iter()
        .filter(|r| !r.pidstat_ns.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(w, "## 7. Outside reference: pidstat\n");
    let _ = writeln!(
        w,
        "`pidstat -u -r -p ALL 1 {}` (sysstat) run alone in each scenario (no daemon): its \
         own CPU time (wait4 rusage) ÷ intervals. It reads /proc for every process of the \
         host, as Nomad's method does for every task process.\n",
        report.plan.pidstat_intervals
    );
    let _ = writeln!(
        w,
        "| Scenario | processes on the host | load avg at set-up | pidstat ms CPU per 1 s interval | daemon procfs ms/cycle | daemon eBPF ms/cycle |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {:.2} | {} | {} | {} |",
            scenario_label(r),
            r.host_processes,
            r.load,
            show(Summary::of(r.pidstat_ns.iter().map(|x| x / 1e6)), ms),
            show(summary(r.of(Source::Procfs), RunFigures::ms_per_cycle), ms),
            show(summary(r.of(Source::Ebpf), RunFigures::ms_per_cycle), ms),
        );
    }
    let _ = writeln!(w);
}

fn clients_table(report: &Report, w: &mut String) {
    let rows: Vec<&ScenarioResult> = report
        .results
        .iter()
        .filter(|r| r.runs.iter().any(|f| f.clients.is_some()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## 8. Under Nomad's clients
"
    );
    let _ = writeln!(
        w,
        "The `clients-*` scenarios: the `1k` and `10k` loads, with the two clients of the \
         stats endpoint that real Nomad deployments run polling the daemon from its start \
         (xtask/src/bench/clients.rs): nomad-apm, which asks for every allocation, one \
         `GET /v1/client/allocation/<ID>/stats` after another, every {} s, and reads \
         `CpuStats.Percent`, `CpuStats.TotalTicks` and `MemoryStats.Usage`; and the Nomad \
         UI, which asks for one allocation {} s after each answer and reads `TotalTicks` and \
         `RSS`/`Usage` of the allocation and of each task. They run on threads of the \
         benchmark over loopback (their CPU is not the daemon's); each request is a new \
         connection. The window starts after nomad-apm's first pass and the warm-up, on the \
         first cycle end half-way between two passes, so that a {}-cycle window holds the \
         same number of passes in every run. Daemon CPU in % of one core over the window: \
         user + system of every thread (the HTTP threads included), plus the sched_switch \
         and checkpoint run time (eBPF arm); procfs ÷ \
         eBPF of those totals, per round. VmRSS at the end of the window, VmHWM the peak \
         since start (start-up and first answers included). Requests in the window, median \
         per run; failed: answers that were not 200 or lacked a field their client reads, \
         all runs.\n",
        super::clients::APM_EVERY.as_secs(),
        super::clients::UI_EVERY.as_secs(),
        report.plan.settings.cycles,
    );
    let _ = writeln!(
        w,
        "| Scenario | arm | user + system % | BPF % | total % | procfs ÷ eBPF (total) | VmRSS MiB | VmHWM MiB | requests per window: nomad-apm / UI | failed of all requests (all runs) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    let pct = |x: f64| format!("{x:.3}");
    for r in rows {
        for src in arms(r) {
            let counts = || {
                r.of(src)
                    .filter_map(|f| f.clients.as_ref().map(|c| c.counts))
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} of {} |",
                scenario_label(r),
                src.as_str(),
                show(summary(r.of(src), RunFigures::process_share), pct),
                if src.is_ebpf() {
                    show(summary(r.of(src), RunFigures::bpf_share), pct)
                } else {
                    "–".to_owned()
                },
                show(summary(r.of(src), RunFigures::total_share), pct),
                if src.is_ebpf() {
                    times(round_ratios(
                        r,
                        Source::Procfs,
                        src,
                        RunFigures::total_share,
                    ))
                } else {
                    "–".to_owned()
                },
                show(summary(r.of(src), |f| f.rss_bytes as f64), mib),
                show(summary(r.of(src), |f| f.hwm_bytes as f64), mib),
                show(Summary::of(counts().map(|c| c.apm.requests as f64)), |x| {
                    format!("{x:.0}")
                }),
                show(Summary::of(counts().map(|c| c.ui.requests as f64)), |x| {
                    format!("{x:.0}")
                }),
                counts().map(|c| c.failed()).sum::<u64>(),
                counts().map(|c| c.requests()).sum::<u64>(),
            );
        }
    }
    let errors: Vec<String> = report
        .results
        .iter()
        .flat_map(|r| r.runs.iter())
        .filter_map(|f| f.clients.as_ref()?.first_error.clone())
        .collect();
    if let Some(e) = errors.first() {
        let _ = writeln!(w, "\nFirst failed request: `{e}`.");
    }
    let _ = writeln!(w, "\n{}\n", previous_design());
}

/// The previous build's figures (the on-demand design: per-process figures and cgroup
/// memory/throttling only for allocations someone had asked about, other cgroup files
/// every 10 s; `--detail-all` to collect every allocation in full), typed in by hand
/// from two earlier runs of this bench, before every allocation was collected in full
/// every interval. `clients-*`: the run of 2026-12-01 (daemon total CPU in % of one
/// core, median (min–max); procfs ÷ eBPF as that run reported it, the median of the
/// per-round ratios). `10k`: BENCHMARKS.md as of main's 8c947e1 (the full run of
/// 2026-11-30), ms of daemon CPU per cycle with no client polling, procfs ÷ eBPF the
/// median of the per-round ratios. Not measured in the run the report describes: the
/// only figures of the report that are not.
struct Previous {
    clients_10k_ebpf: (f64, f64, f64),
    clients_10k_procfs: f64,
    clients_10k_ratio: f64,
    clients_1k_ebpf: f64,
    clients_1k_procfs: f64,
    clients_1k_ratio: f64,
    detail_all_10k_ms: f64,
    procfs_10k_ms: f64,
    detail_all_10k_ratio: f64,
    on_demand_10k_ms: f64,
    on_demand_10k_ratio: f64,
}

const PREVIOUS: Previous = Previous {
    clients_10k_ebpf: (14.32, 14.10, 14.96),
    clients_10k_procfs: 32.59,
    clients_10k_ratio: 2.26,
    clients_1k_ebpf: 1.49,
    clients_1k_procfs: 3.44,
    clients_1k_ratio: 2.28,
    detail_all_10k_ms: 159.0,
    procfs_10k_ms: 416.0,
    detail_all_10k_ratio: 2.59,
    on_demand_10k_ms: 8.86,
    on_demand_10k_ratio: 45.3,
};

/// A fixed paragraph: [`PREVIOUS`], labelled as such.
fn previous_design() -> String {
    let p = &PREVIOUS;
    format!(
        "**The previous design, for comparison (earlier runs, not this one; not comparable \
         run to run on a shared machine).** Before this build the daemon had on-demand \
         detail: per-process figures and cgroup memory/throttling only for the allocations \
         someone had asked about (`--detail-all` for all of them). Measured with this bench \
         on 2026-12-01: `clients-10k` eBPF {:.2}% of one core ({:.2}–{:.2}) against procfs \
         {:.2}% ({}×); `clients-1k` eBPF {:.2}% against procfs {:.2}% ({}×). From the \
         previous BENCHMARKS.md (2026-11-30), `10k` with no client: `--detail-all` {} \
         ms/cycle against procfs {} ms ({}×); the on-demand eBPF arm, nobody asking, {} \
         ms/cycle ({}×).",
        p.clients_10k_ebpf.0,
        p.clients_10k_ebpf.1,
        p.clients_10k_ebpf.2,
        p.clients_10k_procfs,
        sig(p.clients_10k_ratio),
        p.clients_1k_ebpf,
        p.clients_1k_procfs,
        sig(p.clients_1k_ratio),
        sig(p.detail_all_10k_ms),
        sig(p.procfs_10k_ms),
        sig(p.detail_all_10k_ratio),
        sig(p.on_demand_10k_ms),
        sig(p.on_demand_10k_ratio),
    )
}

/// The chart's points: (processes, median, min, max) ms/cycle per source, for the
/// scale scenarios and (separately) the idle-task variant.
fn chart_points(report: &Report, idle: bool) -> Vec<(Source, plot::Points)> {
    [Source::Ebpf, Source::Procfs]
        .into_iter()
        .map(|src| {
            let mut pts: plot::Points = report
                .results
                .iter()
                .filter(|r| r.spec.is_quiet_sleepers())
                .filter(|r| r.spec.is_scale() != idle)
                .filter_map(|r| {
                    let s = summary(r.of(src), RunFigures::ms_per_cycle)?;
                    Some((r.spec.processes() as f64, s.median, s.min, s.max))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (src, pts)
        })
        .collect()
}

/// Every run's raw figures, so that the tables can be checked against them.
fn raw_results(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let scenarios: Vec<serde_json::Value> = report
        .results
        .iter()
        .map(|r| {
            let runs: Vec<serde_json::Value> = r
                .runs
                .iter()
                .map(|f| {
                    json!({
                        "source": f.source.map(Source::as_str),
                        "round": f.round,
                        "cycles": f.cycles,
                        "wall_ns": f.wall_ns,
                        "process_cpu_ns": f.process_cpu_ns,
                        "stat_cpu_ns": f.stat_cpu_ns,
                        "collector_cpu_ns": f.collector_cpu_ns,
                        "cycle_cpu_metric_s": f.cycle_cpu_metric_s,
                        "cycle_wall_metric_s": f.cycle_wall_metric_s,
                        "processes_sampled": f.processes_sampled,
                        "control_files_open": f.control_files_open,
                        "sched_switch_run_ns": f.switch_run_ns,
                        "sched_switch_runs": f.switch_runs,
                        "checkpoint_run_ns": f.checkpoint_run_ns,
                        "checkpoint_runs": f.checkpoint_runs,
                        "process_iter_run_ns": f.iter_run_ns,
                        "process_iter_runs": f.iter_runs,
                        "bpf_stats_on": f.bpf_stats_on,
                        "vm_rss_bytes": f.rss_bytes,
                        "vm_hwm_bytes": f.hwm_bytes,
                        "maps_memlock_bytes": f.map_memlock_bytes,
                        "progs_memlock_bytes": f.prog_memlock_bytes,
                        "accuracy": f.accuracy.map(|a| json!({
                            "reported_ns": a.reported_ns,
                            "cpuacct_ns": a.true_ns,
                        })),
                        "clients": f.clients.as_ref().map(|c| json!({
                            "apm_requests": c.counts.apm.requests,
                            "apm_failed": c.counts.apm.failed,
                            "apm_passes": c.counts.apm_sweeps,
                            "ui_requests": c.counts.ui.requests,
                            "ui_failed": c.counts.ui.failed,
                            "first_error": c.first_error,
                        })),
                    })
                })
                .collect();
            json!({
                "scenario": r.spec.key,
                "title": r.spec.title,
                "processes": r.spec.processes(),
                "tasks": r.spec.tasks(),
                "host_processes": r.host_processes,
                "load_average": r.load,
                "runs": runs,
                "pidstat_cpu_ns_per_interval": r.pidstat_ns,
                "pipe_slowdown_usecs_per_op": r.slowdown.as_ref().map(|s| json!({
                    "loops": s.loops,
                    "none": s.none,
                    "empty_program": s.empty,
                    "ebpf": s.ebpf,
                    "procfs": s.procfs,
                    "bpf_stats_seen_on": s.stats_seen_on,
                })),
                "api": r.api.as_ref().map(|a| {
                    let wrk = |v: &Vec<api::Wrk>| -> Vec<serde_json::Value> {
                        v.iter()
                            .map(|w| json!({
                                "requests_per_s": w.requests_per_s,
                                "p50_ms": w.p50_ms,
                                "p99_ms": w.p99_ms,
                                "errors": w.errors,
                            }))
                            .collect()
                    };
                    json!({
                        "body_bytes": a.body_bytes,
                        "seconds": a.seconds,
                        "daemon": wrk(&a.daemon),
                        "plain_warp": wrk(&a.plain),
                    })
                }),
            })
        })
        .collect();
    json!({
        "date": report.machine.date,
        "command": report.plan.command,
        "kernel": report.machine.kernel,
        "cpu": report.machine.cpu_model,
        "cores": report.machine.cores,
        "scenarios": scenarios,
    })
}

/// Writes BENCHMARKS.md and benchmarks/collection-cost.svg under `out`.
pub fn write(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    let md = out.join("BENCHMARKS.md");
    fs::write(&md, render(report))?;
    let dir = out.join("benchmarks");
    fs::create_dir_all(&dir)?;
    let raw = dir.join("results.json");
    fs::write(&raw, serde_json::to_string_pretty(&raw_results(report))?)?;
    let svg = dir.join("collection-cost.svg");
    plot::collection_cost(
        &svg,
        &chart_points(report, false),
        &chart_points(report, true),
    )?;
    Ok(vec![md, svg, raw])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_design_paragraph_cites_every_figure() {
        let text = previous_design();
        for figure in [
            "14.32% of one core (14.10–14.96)",
            "32.59% (2.26×)",
            "1.49%",
            "3.44% (2.28×)",
            "`--detail-all` 159 ms/cycle against procfs 416 ms (2.59×)",
            "8.86 ms/cycle (45.3×)",
            "2026-12-01",
            "2026-11-30",
        ] {
            assert!(text.contains(figure), "{figure} not in: {text}");
        }
    }
}
