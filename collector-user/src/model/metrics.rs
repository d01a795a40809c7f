//! `GET /v1/metrics` in the JSON shape of go-metrics' in-memory sink, which Nomad serves.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Gauge {
    /// Dotted name, e.g. `nomad.client.allocs.cpu.total_percent`.
    pub name: String,
    pub value: f64,
    pub labels: BTreeMap<String, String>,
}

/// A go-metrics counter: this collector reports cumulative counts, so `Count` is the
/// number of increments seen and `Sum` the total.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Counter {
    pub name: String,
    pub count: u64,
    pub rate: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricsSummary {
    /// go-metrics writes the interval start as `2006-01-02 15:04:05 -0700 MST`.
    pub timestamp: String,
    pub gauges: Vec<Gauge>,
    pub points: Vec<serde_json::Value>,
    pub counters: Vec<Counter>,
    pub samples: Vec<serde_json::Value>,
}
