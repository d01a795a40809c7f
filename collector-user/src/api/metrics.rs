//! `/v1/metrics`: the snapshot as go-metrics gauges, in Nomad's JSON shape
//! ([`MetricsSummary`]) or as Prometheus text exposition 0.0.4.
//!
//! Per-task gauges are Nomad's `nomad.client.allocs.{cpu,memory}.*`, one set per task of
//! each allocation, and only for the figures in that task's `Measured` list. The
//! collector's own health is reported as `nomad_collector.*` gauges.

use std::{collections::BTreeMap, fmt::Write as _};

use bytes::Bytes;

use crate::{
    model::{measured, CpuStats, Gauge, MemoryStats, MetricsSummary},
    snapshot::{AllocEntry, Health, Snapshot},
};

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type CpuFigure = (&'static str, &'static str, fn(&CpuStats) -> f64);
type MemoryFigure = (&'static str, &'static str, fn(&MemoryStats) -> f64);

/// (gauge suffix, `Measured` name it depends on, value). `total_ticks` is derived from
/// `Percent`, so it is reported when `Percent` is measured.
const CPU_FIGURES: [CpuFigure; 6] = [
    ("total_percent", measured::PERCENT, |c| c.percent),
    ("system", measured::SYSTEM_MODE, |c| c.system_mode),
    ("user", measured::USER_MODE, |c| c.user_mode),
    ("throttled_time", measured::THROTTLED_TIME, |c| {
        c.throttled_time as f64
    }),
    ("throttled_periods", measured::THROTTLED_PERIODS, |c| {
        c.throttled_periods as f64
    }),
    ("total_ticks", measured::PERCENT, |c| c.total_ticks),
];

const MEMORY_FIGURES: [MemoryFigure; 8] = [
    ("rss", measured::RSS, |m| m.rss as f64),
    ("cache", measured::CACHE, |m| m.cache as f64),
    ("swap", measured::SWAP, |m| m.swap as f64),
    ("mapped_file", measured::MAPPED_FILE, |m| {
        m.mapped_file as f64
    }),
    ("usage", measured::USAGE, |m| m.usage as f64),
    ("max_usage", measured::MAX_USAGE, |m| m.max_usage as f64),
    ("kernel_usage", measured::KERNEL_USAGE, |m| {
        m.kernel_usage as f64
    }),
    ("kernel_max_usage", measured::KERNEL_MAX_USAGE, |m| {
        m.kernel_max_usage as f64
    }),
];

/// Every gauge of a snapshot: per-task gauges (allocations by ID, tasks by name), then
/// the collector's health.
pub fn gauges(snapshot: &Snapshot) -> Vec<Gauge> {
    let mut allocs: Vec<&AllocEntry> = snapshot.allocations.values().map(|a| &**a).collect();
    allocs.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    let mut out = Vec::new();
    for alloc in allocs {
        task_gauges(alloc, &mut out);
    }
    health_gauges(&snapshot.health, snapshot.allocations.len(), &mut out);
    out
}

fn task_gauges(alloc: &AllocEntry, out: &mut Vec<Gauge>) {
    let info = &alloc.info;
    let mut base = BTreeMap::new();
    base.insert("alloc_id".to_owned(), info.id.clone());
    for (key, value) in [
        ("job", &info.job),
        ("task_group", &info.task_group),
        ("namespace", &info.namespace),
    ] {
        if let Some(value) = value {
            base.insert(key.to_owned(), value.clone());
        }
    }
    for (task, usage) in alloc.tasks() {
        let mut labels = base.clone();
        labels.insert("task".to_owned(), task.clone());
        if let Some(info) = info.tasks.iter().find(|t| &t.name == task) {
            out.push(Gauge {
                name: "nomad_collector.task.cpu_total_seconds".to_owned(),
                value: info.cpu_total_ns as f64 / 1e9,
                labels: labels.clone(),
            });
        }
        let cpu = &usage.resource_usage.cpu_stats;
        for (suffix, needs, value) in CPU_FIGURES {
            if cpu.measured.contains(&needs) {
                out.push(Gauge {
                    name: format!("nomad.client.allocs.cpu.{suffix}"),
                    value: value(cpu),
                    labels: labels.clone(),
                });
            }
        }
        let memory = &usage.resource_usage.memory_stats;
        for (suffix, needs, value) in MEMORY_FIGURES {
            if memory.measured.contains(&needs) {
                out.push(Gauge {
                    name: format!("nomad.client.allocs.memory.{suffix}"),
                    value: value(memory),
                    labels: labels.clone(),
                });
            }
        }
    }
}

fn health_gauges(health: &Health, allocations: usize, out: &mut Vec<Gauge>) {
    let mut source_labels = BTreeMap::new();
    source_labels.insert("source".to_owned(), health.source.as_str().to_owned());
    if let Some(reason) = &health.fallback_reason {
        source_labels.insert("fallback_reason".to_owned(), reason.clone());
    }
    out.push(Gauge {
        name: "nomad_collector.source".to_owned(),
        value: 1.0,
        labels: source_labels,
    });
    let plain: [(&str, f64); 19] = [
        ("programs_attached", f64::from(health.programs_attached)),
        ("allocations", allocations as f64),
        ("cycle_seconds", health.cycle_duration.as_secs_f64()),
        ("cycle_cpu_seconds", health.cycle_cpu.as_secs_f64()),
        ("cycles", health.cycles as f64),
        ("cycle_errors", health.cycle_errors as f64),
        ("detailed_allocations", health.detailed_allocations as f64),
        ("processes_sampled", health.processes_sampled as f64),
        ("tracked_cgroups", health.tracked_cgroups as f64),
        ("tracked_cgroups_max", health.max_tracked_cgroups as f64),
        ("tracked_cgroups_full", health.tracked_cgroups_full as f64),
        ("checkpoint_failures", health.checkpoint_failures as f64),
        ("kernel.exits_folded", health.kernel.exits_folded as f64),
        ("kernel.exits_unseen", health.kernel.exits_unseen as f64),
        ("kernel.storage_failed", health.kernel.storage_failed as f64),
        (
            "kernel.samples_deferred",
            health.kernel.samples_deferred as f64,
        ),
        ("kernel.lookups", health.kernel.lookups as f64),
        (
            "bpf.sched_switch_run_time_ns",
            health.sched_switch_run_time_ns as f64,
        ),
        (
            "bpf.sched_switch_run_count",
            health.sched_switch_run_count as f64,
        ),
    ];
    for (name, value) in plain {
        out.push(Gauge {
            name: format!("nomad_collector.{name}"),
            value,
            labels: BTreeMap::new(),
        });
    }
}

/// The go-metrics summary Nomad serves as JSON.
pub fn summary(snapshot: &Snapshot) -> MetricsSummary {
    MetricsSummary {
        timestamp: go_timestamp(snapshot.taken_at_unix_ns),
        gauges: gauges(snapshot),
        points: Vec::new(),
        counters: Vec::new(),
        samples: Vec::new(),
    }
}

pub fn render_json(snapshot: &Snapshot, pretty: bool) -> Bytes {
    Snapshot::json(&summary(snapshot), pretty)
}

/// Prometheus text exposition format 0.0.4: `.` in names becomes `_`, one `# TYPE` line
/// per metric family, the family's samples together.
pub fn render_prometheus(snapshot: &Snapshot) -> Bytes {
    let gauges = gauges(snapshot);
    // Families in order of first appearance.
    let mut families: Vec<(String, Vec<&Gauge>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for gauge in &gauges {
        let name = prometheus_name(&gauge.name);
        match index.get(&name) {
            Some(&i) => families[i].1.push(gauge),
            None => {
                index.insert(name.clone(), families.len());
                families.push((name, vec![gauge]));
            }
        }
    }
    let mut out = String::with_capacity(gauges.len() * 128);
    for (name, samples) in &families {
        let _ = writeln!(out, "# TYPE {name} gauge");
        for gauge in samples {
            out.push_str(name);
            if !gauge.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in gauge.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&prometheus_name(key));
                    out.push_str("=\"");
                    escape_label_value(value, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&prometheus_value(gauge.value));
            out.push('\n');
        }
    }
    Bytes::from(out)
}

/// A metric or label name with every character outside `[a-zA-Z0-9_]` (`:` too, for
/// metric names) replaced by `_`, and a leading digit prefixed with `_`.
pub fn prometheus_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Escapes `\`, `"` and newline as the text format requires.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn prometheus_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

/// Unix ns as Go prints a UTC `time.Time`: `2026-11-25 12:00:00 +0000 UTC`.
pub fn go_timestamp(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_timestamps() {
        assert_eq!(go_timestamp(0), "1970-01-01 00:00:00 +0000 UTC");
        // 2026-11-25T12:00:00Z
        assert_eq!(
            go_timestamp(1_795_608_000 * 1_000_000_000 + 999_999_999),
            "2026-11-25 12:00:00 +0000 UTC"
        );
        assert_eq!(
            go_timestamp(951_782_400 * 1_000_000_000),
            "2000-02-29 00:00:00 +0000 UTC"
        );
        assert_eq!(go_timestamp(-1), "1969-12-31 23:59:59 +0000 UTC");
    }

    #[test]
    fn names_and_values() {
        assert_eq!(
            prometheus_name("nomad.client.allocs.cpu.total_percent"),
            "nomad_client_allocs_cpu_total_percent"
        );
        assert_eq!(prometheus_name("9x-y"), "_9x_y");
        let mut out = String::new();
        escape_label_value("a\\b\"c\nd", &mut out);
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        assert_eq!(prometheus_value(f64::INFINITY), "+Inf");
        assert_eq!(prometheus_value(f64::NAN), "NaN");
        assert_eq!(prometheus_value(2.5), "2.5");
        assert_eq!(prometheus_value(1e-7), "0.0000001");
    }
}
