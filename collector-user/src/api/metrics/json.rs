//! `/v1/metrics` in Nomad's JSON shape ([`MetricsSummary`], go-metrics' in-memory sink):
//! every figure as a gauge with its dotted go-metrics name, as Nomad serves it.
//!
//! Per-task gauges are Nomad's `nomad.client.allocs.{cpu,memory}.*`, one set per task of
//! each allocation, and only for the figures in that task's `Measured` list. The
//! collector's own health is reported as `nomad_collector.*` gauges. go-metrics
//! counters are per-interval aggregates, not running totals, so cumulative figures stay
//! gauges here; the Prometheus form types them as counters.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;

use super::{
    families::{HealthInput, HEALTH, SOURCE_JSON, TASK},
    TaskRow, TaskRows,
};
use crate::{
    model::{Gauge, MetricsSummary},
    snapshot::Snapshot,
};

/// Every gauge of a snapshot: per-task gauges (allocations by ID, tasks by name), then
/// the collector's health.
pub fn gauges(snapshot: &Arc<Snapshot>, host: &Arc<str>) -> Vec<Gauge> {
    let mut out = Vec::new();
    for row in TaskRows::new(snapshot.clone(), host.clone()).iter() {
        task_gauges(&row, &mut out);
    }
    health_gauges(snapshot, &mut out);
    out
}

fn task_gauges(row: &TaskRow<'_>, out: &mut Vec<Gauge>) {
    let labels: BTreeMap<String, String> = row
        .labels()
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (i, task) in TASK.iter().enumerate() {
        let (Some(name), Some(value)) = (task.json, row.value(i)) else {
            continue;
        };
        out.push(Gauge {
            name: name.to_owned(),
            value,
            labels: labels.clone(),
        });
    }
}

fn health_gauges(snapshot: &Snapshot, out: &mut Vec<Gauge>) {
    let health = &snapshot.health;
    let mut source_labels = BTreeMap::new();
    source_labels.insert("source".to_owned(), health.source.as_str().to_owned());
    if let Some(reason) = &health.fallback_reason {
        source_labels.insert("fallback_reason".to_owned(), reason.clone());
    }
    out.push(Gauge {
        name: SOURCE_JSON.to_owned(),
        value: 1.0,
        labels: source_labels,
    });
    let input = HealthInput {
        health,
        allocations: snapshot.allocations.len(),
    };
    for figure in &HEALTH {
        out.push(Gauge {
            name: figure.json.to_owned(),
            value: (figure.value)(&input),
            labels: BTreeMap::new(),
        });
    }
}

/// The go-metrics summary Nomad serves as JSON.
pub fn summary(snapshot: &Arc<Snapshot>, host: &Arc<str>) -> MetricsSummary {
    MetricsSummary {
        timestamp: go_timestamp(snapshot.taken_at_unix_ns),
        gauges: gauges(snapshot, host),
        points: Vec::new(),
        counters: Vec::new(),
        samples: Vec::new(),
    }
}

pub fn render(snapshot: &Arc<Snapshot>, host: &Arc<str>, pretty: bool) -> Bytes {
    Snapshot::json(&summary(snapshot, host), pretty)
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
}
