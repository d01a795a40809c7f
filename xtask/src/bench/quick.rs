//! `cargo xtask bench --quick`: the headline figures of the full run in a few minutes, as
//! a table on the terminal, for a user checking the claims on their own host. The same
//! scenarios, daemon runs and pipe slowdown as the full run ([`super::run_scenario`]),
//! fewer of them: `1k` and `10k` (eBPF and procfs arms, no pidstat, no API load), `clients-10k` (the same arms under nomad-apm and the UI, a
//! window of one nomad-apm period) and `pipe` (the sched_switch program's run time per
//! event under bpf_stats, then the pinned pipe with nothing / an empty program / the
//! eBPF daemon). Nothing is written: BENCHMARKS.md stays the full run's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{
    cgroups,
    daemon::Source,
    kernel::Slowdown,
    measure::{RunFigures, ScrapeCost, Settings},
    prepare, progress_printer, run_scenario,
    stats::{sig, Summary},
    workload, Binaries, Plan, ScenarioResult,
};
use crate::shell::announce;

const SCENARIOS: [&str; 4] = ["1k", "10k", "clients-10k", "pipe"];

/// Cycles of a `clients-*` window: one nomad-apm period at a 1 s interval, so that every
/// window holds one pass over the allocations.
const CLIENT_CYCLES: u64 = 10;

fn plan() -> Plan {
    Plan {
        // Two rounds: a ratio from one round is at the mercy of one noisy window.
        runs: 2,
        settings: Settings {
            interval: Duration::from_secs(1),
            warmup_cycles: 3,
            cycles: 6,
            accuracy_cycles: 3,
        },
        // The pipe's slowdown is a few percent of a ~6 µs round trip: fewer or shorter
        // runs than this drown it in a shared machine's noise.
        pipe_rounds: 5,
        pipe_loops: 200_000,
        api_rounds: 0,
        api_seconds: 0,
        pidstat_runs: 0,
        pidstat_intervals: 0,
        command: super::command_line(),
    }
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let progress = progress_printer(started);
    let Binaries {
        daemon,
        helper,
        plain,
    } = prepare()?;
    let plan = plan();
    let mut results = Vec::new();
    for (i, key) in SCENARIOS.iter().enumerate() {
        let spec = workload::find(key).context("a known scenario")?;
        announce(&format!(
            "quick {}/{}: {} [{}]",
            i + 1,
            SCENARIOS.len(),
            spec.title,
            spec.key
        ));
        let mut plan = plan.clone();
        if spec.clients() {
            plan.settings.cycles = CLIENT_CYCLES;
        }
        results.push(run_scenario(
            spec, &plan, &daemon, &helper, &plain, &progress,
        )?);
    }
    let leftovers = cgroups::leftovers();
    if !leftovers.is_empty() {
        announce(&format!(
            "warning: still present (another user of the host?): {}",
            leftovers.join(", ")
        ));
    }
    let rows = rows(&results);
    println!();
    print!("{}", render(&rows));
    println!(
        "\n{} run(s) per arm of {} cycles ({CLIENT_CYCLES} under the clients) at a {} s \
         interval; kernel.bpf_stats_enabled=1 for the per-event figure only. Measured in \
         {:.1} min. The full run (`cargo xtask bench`, about 50 minutes) writes \
         BENCHMARKS.md.",
        plan.runs,
        plan.settings.cycles,
        plan.settings.interval.as_secs(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

struct Row {
    figure: String,
    measured: String,
    target: &'static str,
    met: Option<bool>,
}

fn find<'a>(results: &'a [ScenarioResult], key: &str) -> Option<&'a ScenarioResult> {
    results.iter().find(|r| r.spec.key == key)
}

fn of(r: &ScenarioResult, source: Source, f: impl Fn(&RunFigures) -> f64) -> Option<Summary> {
    Summary::of(r.of(source).map(f))
}

/// procfs ÷ eBPF of `f`, one ratio per round (both arms ran in it).
fn ratio(r: &ScenarioResult, f: fn(&RunFigures) -> f64) -> Option<Summary> {
    Summary::of(r.of(Source::Ebpf).filter_map(|e| {
        let p = r.of(Source::Procfs).find(|p| p.round == e.round)?;
        Some(f(p) / f(e))
    }))
}

/// Median usecs/op of one arm of the pinned pipe.
fn pipe_median(s: &Slowdown, arm: fn(&Slowdown) -> &Vec<f64>) -> Option<f64> {
    Summary::of(arm(s).iter().copied()).map(|m| m.median)
}

fn rows(results: &[ScenarioResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (key, target, floor) in [("1k", "", None), ("10k", "≥ 20×", Some(20.0))] {
        let Some(r) = find(results, key) else {
            continue;
        };
        let ratio = ratio(r, RunFigures::ms_per_cycle);
        rows.push(Row {
            figure: format!("cycle cost, procfs ÷ eBPF, {}", r.spec.title),
            measured: match (
                ratio,
                of(r, Source::Ebpf, RunFigures::ms_per_cycle),
                of(r, Source::Procfs, RunFigures::ms_per_cycle),
            ) {
                (Some(x), Some(e), Some(p)) => format!(
                    "{}: eBPF {} ms, procfs {} ms of daemon CPU per cycle",
                    x.show(|v| format!("{}×", sig(v))),
                    sig(e.median),
                    sig(p.median)
                ),
                _ => "–".into(),
            },
            target,
            met: floor.and_then(|f| ratio.map(|x| x.median >= f)),
        });
    }
    for key in ["1k", "10k"] {
        let Some(r) = find(results, key) else {
            continue;
        };
        let share = of(r, Source::Ebpf, RunFigures::total_share);
        rows.push(Row {
            figure: format!("daemon CPU (user + system + BPF), {}", r.spec.key),
            measured: share.map_or("–".into(), |s| {
                format!("{} of one core", s.show(|v| format!("{v:.2}%")))
            }),
            target: "< 1%",
            met: share.map(|s| s.median < 1.0),
        });
    }
    if let Some(r) = find(results, "10k") {
        let rss = of(r, Source::Ebpf, |f| f.rss_bytes as f64);
        let hwm = of(r, Source::Ebpf, |f| f.hwm_bytes as f64);
        let mib = |v: f64| format!("{:.1}", v / 1048576.0);
        rows.push(Row {
            figure: "daemon RSS, 10k (VmRSS after a scrape)".into(),
            measured: match (rss, hwm) {
                (Some(r), Some(h)) => format!("{} MiB; peak {} MiB", r.show(mib), h.show(mib)),
                _ => "–".into(),
            },
            target: "< 32 MiB",
            met: rss.map(|s| s.median < 32.0 * 1048576.0),
        });
        let scrape = |f: fn(&ScrapeCost) -> f64| {
            Summary::of(
                r.of(Source::Ebpf)
                    .filter_map(|run| run.scrape.as_ref().map(f)),
            )
        };
        let cpu = scrape(|s| s.cpu_ns_per_scrape);
        let growth = scrape(|s| s.rss_growth_bytes as f64);
        let body = scrape(|s| s.body_bytes as f64);
        rows.push(Row {
            figure: format!(
                "a Prometheus scrape, {} tasks: CPU; VmRSS 3 s after 10 scrapes",
                r.spec.tasks()
            ),
            measured: match (cpu, growth, body) {
                (Some(c), Some(g), Some(b)) => format!(
                    "{} ms; {} MiB ({} MiB body)",
                    c.show(|v| format!("{:.1}", v / 1e6)),
                    g.show(|v| format!("{:+.2}", v / 1048576.0)),
                    sig(b.median / 1048576.0)
                ),
                _ => "–".into(),
            },
            target: "≤ 10 ms; ≤ +2 MiB",
            met: cpu
                .zip(growth)
                .map(|(c, g)| c.median <= 10e6 && g.median <= 2.0 * 1048576.0),
        });
    }
    if let Some(r) = find(results, "clients-10k") {
        let ratio = ratio(r, RunFigures::total_share);
        let ebpf = of(r, Source::Ebpf, RunFigures::total_share);
        let procfs = of(r, Source::Procfs, RunFigures::total_share);
        let failed: u64 = r
            .runs
            .iter()
            .filter_map(|f| Some(f.clients.as_ref()?.counts.failed()))
            .sum();
        rows.push(Row {
            figure: "daemon CPU under nomad-apm + UI, procfs ÷ eBPF, clients-10k".into(),
            measured: match (ratio, ebpf, procfs) {
                (Some(x), Some(e), Some(p)) => format!(
                    "{}: eBPF {}%, procfs {}% of one core; {failed} failed requests",
                    x.show(|v| format!("{}×", sig(v))),
                    sig(e.median),
                    sig(p.median)
                ),
                _ => "–".into(),
            },
            target: "≥ 20×; ≤ 0.5%",
            met: ratio
                .zip(ebpf)
                .map(|(x, e)| x.median >= 20.0 && e.median <= 0.5 && failed == 0),
        });
    }
    if let Some(r) = find(results, "pipe") {
        let per_event = Summary::of(
            r.of(Source::Ebpf)
                .filter(|f| f.switch_runs > 0.0)
                .map(RunFigures::switch_ns_per_event),
        );
        rows.push(Row {
            figure: "sched_switch BPF run time per event, pipe".into(),
            measured: per_event.map_or("– (bpf_stats gave no runs)".into(), |s| {
                format!("{} ns", s.show(|v| format!("{v:.0}")))
            }),
            target: "≤ 100 ns",
            met: per_event.map(|s| s.median <= 100.0),
        });
        if let Some(s) = &r.slowdown {
            let none = pipe_median(s, |s| &s.none);
            let empty = pipe_median(s, |s| &s.empty);
            let ebpf = pipe_median(s, |s| &s.ebpf);
            let slow = |with: Option<f64>| Some((with? / none? - 1.0) * 100.0);
            rows.push(Row {
                figure: "pinned pipe slowdown: empty program → eBPF daemon".into(),
                measured: match (slow(empty), slow(ebpf), empty, ebpf) {
                    (Some(e), Some(d), Some(eu), Some(du)) => format!(
                        "{e:+.1}% → {d:+.1}%: {:+.1} points, {:+.0} ns per round trip over \
                         the empty program",
                        d - e,
                        (du - eu) * 1e3
                    ),
                    _ => "–".into(),
                },
                target: "≤ 4%",
                met: slow(ebpf).map(|d| d <= 4.0),
            });
        }
    }
    rows
}

fn render(rows: &[Row]) -> String {
    let verdict = |m: Option<bool>| match m {
        Some(true) => "met",
        Some(false) => "missed",
        None => "",
    };
    let header = ["figure", "measured (median, min–max)", "target", ""];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.measured.clone(),
                r.target.to_owned(),
                verdict(r.met).to_owned(),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..4).map(width).collect();
    let line = |cols: [&str; 4]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out += &format!("|-{}-|\n", rule.join("-|-"));
    for c in &cells {
        out += &line([&c[0], &c[1], &c[2], &c[3]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let rows = vec![
            Row {
                figure: "a".into(),
                measured: "45.3× (37–48×)".into(),
                target: "≥ 20×",
                met: Some(true),
            },
            Row {
                figure: "longer figure".into(),
                measured: "–".into(),
                target: "",
                met: None,
            },
        ];
        let text = render(&rows);
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert_eq!(widths.len(), 4);
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(text.contains("| met"), "{text}");
    }
}
