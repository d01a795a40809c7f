//! The Prometheus exposition of a snapshot, encoded by `prometheus-client` in text
//! format 0.0.4 or OpenMetrics. The snapshot is handed to the library as a
//! [`Collector`] that walks the [`families`](super::families) tables, so no per-sample
//! metric object or label map is ever built, and it is encoded one family at a time, so
//! that a body is never whole in memory.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, text, DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{
    families::{Family, HealthInput, Kind, HEALTH, SOURCE, TASK},
    Format, TaskRows,
};
use crate::snapshot::Snapshot;

/// Bytes of one task's sample, to size a chunk's buffer so it seldom grows (a growth
/// copies what was written): six labels, a name and a value.
const SAMPLE_BYTES: usize = 192;

/// The exposition of `snapshot`, one chunk per family, each encoded when the iterator
/// is advanced: a streamed body holds one chunk at a time however many tasks there
/// are. Together they are exactly what the library encodes for the whole registry.
pub fn chunks(
    snapshot: Arc<Snapshot>,
    host: Arc<str>,
    format: Format,
) -> impl Iterator<Item = Bytes> + Send + 'static {
    let rows = Arc::new(TaskRows::new(snapshot, host));
    let parts = (0..TASK.len())
        .map(Part::Task)
        .chain([Part::Health, Part::End]);
    parts
        .map(move |part| encode(&rows, part, format))
        .filter(|chunk| !chunk.is_empty())
}

/// Collects every chunk: the whole exposition (tests, and the fuzz harness).
pub fn render(snapshot: Arc<Snapshot>, host: Arc<str>, format: Format) -> String {
    let mut out = String::new();
    for chunk in chunks(snapshot, host, format) {
        out.push_str(std::str::from_utf8(&chunk).expect("the encoder writes UTF-8"));
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Part {
    /// `TASK[i]`, one sample per task that measured it.
    Task(usize),
    /// `nomad_collector_source` and every `HEALTH` family.
    Health,
    /// OpenMetrics' `# EOF`.
    End,
}

fn encode(rows: &Arc<TaskRows>, part: Part, format: Format) -> Bytes {
    let mut out = String::new();
    let result = match (part, format) {
        (Part::End, Format::Text) => Ok(()),
        (Part::End, Format::OpenMetrics) => text::encode_eof(&mut out),
        _ => {
            if let Part::Task(_) = part {
                out.reserve(rows.len() * SAMPLE_BYTES);
            }
            let mut registry = Registry::default();
            registry.register_collector(Box::new(PartCollector {
                rows: rows.clone(),
                part,
            }));
            match format {
                Format::Text => prometheus_text::encode(&mut out, &registry),
                // Without `# EOF`, which only the last chunk carries.
                Format::OpenMetrics => text::encode_registry(&mut out, &registry),
            }
        }
    };
    // The only error source is the writer, and a String grows instead of failing.
    result.expect("encoding into memory cannot fail");
    Bytes::from(out)
}

/// One part of a snapshot's exposition.
struct PartCollector {
    rows: Arc<TaskRows>,
    part: Part,
}

impl fmt::Debug for PartCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartCollector")
            .field("part", &self.part)
            .finish()
    }
}

impl Collector for PartCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match self.part {
            Part::Task(i) => encode_task_family(&self.rows, i, &mut encoder),
            Part::Health => encode_health(self.rows.snapshot(), &mut encoder),
            Part::End => Ok(()),
        }
    }
}

fn encode_task_family(rows: &TaskRows, i: usize, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let task = &TASK[i];
    // A family no task measured is left out, descriptor and all, as the go-metrics form
    // leaves out the gauges.
    let mut family = None;
    for row in rows.iter() {
        let Some(value) = row.value(i) else {
            continue;
        };
        if family.is_none() {
            family = Some(describe(encoder, &task.family)?);
        }
        if let Some(family) = family.as_mut() {
            let labels = row.labels();
            encode_value(family.encode_family(&labels)?, task.family.kind, value)?;
        }
    }
    Ok(())
}

fn encode_health(snapshot: &Snapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let health = &snapshot.health;
    let mut source = describe(encoder, &SOURCE)?;
    let mut labels = vec![("source", health.source.as_str())];
    if let Some(reason) = &health.fallback_reason {
        labels.push(("fallback_reason", reason.as_str()));
    }
    encode_value(source.encode_family(&labels)?, SOURCE.kind, 1.0)?;

    let input = HealthInput {
        health,
        allocations: snapshot.allocations.len(),
    };
    for figure in &HEALTH {
        let family = describe(encoder, &figure.family)?;
        encode_value(family, figure.family.kind, (figure.value)(&input))?;
    }
    Ok(())
}

fn describe<'s>(
    encoder: &'s mut DescriptorEncoder<'_>,
    family: &'s Family,
) -> Result<MetricEncoder<'s>, fmt::Error> {
    encoder.encode_descriptor(
        family.name,
        family.help,
        family.unit.as_ref(),
        family.metric_type(),
    )
}

fn encode_value(encoder: MetricEncoder<'_>, kind: Kind, value: f64) -> fmt::Result {
    match kind {
        Kind::Gauge => ConstGauge::new(value).encode(encoder),
        Kind::Counter => ConstCounter::new(value).encode(encoder),
    }
}
