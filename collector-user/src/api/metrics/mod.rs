//! `/v1/metrics`: the snapshot's figures in Nomad's go-metrics JSON ([`json`]) or as a
//! Prometheus exposition ([`exposition`]), both read from the family tables in
//! [`families`].
//!
//! The exposition is streamed, one metric family per chunk, as the connection takes
//! it: at a thousand tasks it is some seventeen thousand samples and about two
//! megabytes, and building all of it (from per-sample allocations, then keeping it with
//! the snapshot) is what used to leave the daemon's memory many megabytes higher after
//! a scrape. A chunk is one family's samples, a hundred kilobytes or so there.

use std::sync::Arc;

use crate::snapshot::{AllocEntry, Snapshot};

use families::{TaskFigures, TASK, TASK_FAMILIES};

pub mod exposition;
pub mod families;
pub mod json;

pub use json::go_timestamp;

/// The two Prometheus text formats, chosen by the scraper's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text format 0.0.4: what a scraper gets unless it asks for OpenMetrics.
    Text,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`), which Prometheus asks for
    /// first.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a scraper prefers by its `Accept` header: OpenMetrics when it weighs
    /// `application/openmetrics-text` above text format 0.0.4 (`text/plain`, or a
    /// wildcard), else 0.0.4, which is also the answer to no header at all.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=")?.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" => text = text.max(q),
                "*/*" => {
                    openmetrics = openmetrics.max(q);
                    text = text.max(q);
                }
                _ => {}
            }
        }
        if openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// The node's hostname (`gethostname(2)`, what Go's `os.Hostname` and so Nomad's `host`
/// label report); empty if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Labels of one task's samples: `alloc_id`, `task`, then `job`, `task_group`,
/// `namespace` when known, and `host`.
pub type TaskLabels<'a> = [(&'static str, &'a str)];

/// One task: its allocation, its name and the value of each [`TASK`] family (NaN where
/// the task did not measure the figure).
struct Row {
    alloc: usize,
    task: String,
    values: [f64; TASK_FAMILIES],
}

/// One task's labels and figures, as a renderer reads them.
pub struct TaskRow<'a> {
    labels: [(&'static str, &'a str); 6],
    len: usize,
    values: &'a [f64; TASK_FAMILIES],
}

impl<'a> TaskRow<'a> {
    pub fn labels(&self) -> &TaskLabels<'a> {
        &self.labels[..self.len]
    }

    /// The value of `TASK[family]`, `None` when the task did not measure it.
    pub fn value(&self, family: usize) -> Option<f64> {
        Some(self.values[family]).filter(|v| !v.is_nan())
    }
}

/// Every task of a snapshot, allocations by ID and tasks by name, reduced to its labels'
/// sources and its figures: read once per render, then walked once per family. Nomad's
/// per-task types are built one allocation at a time and dropped at once (see
/// [`AllocEntry::with_tasks`]). Owns what it reads, so that a streamed body can carry it
/// from chunk to chunk.
pub struct TaskRows {
    snapshot: Arc<Snapshot>,
    host: Arc<str>,
    allocs: Vec<Arc<AllocEntry>>,
    rows: Vec<Row>,
}

impl TaskRows {
    pub fn new(snapshot: Arc<Snapshot>, host: Arc<str>) -> Self {
        let mut allocs: Vec<Arc<AllocEntry>> = snapshot.allocations.values().cloned().collect();
        allocs.sort_unstable_by(|a, b| a.info.id.cmp(&b.info.id));
        let mut rows = Vec::with_capacity(allocs.len());
        for (index, alloc) in allocs.iter().enumerate() {
            let info = &alloc.info;
            alloc.with_tasks(|tasks| {
                for (task, usage) in tasks {
                    let figures = TaskFigures {
                        cpu: &usage.resource_usage.cpu_stats,
                        memory: &usage.resource_usage.memory_stats,
                        info: info.tasks.iter().find(|t| *t.name == **task),
                    };
                    rows.push(Row {
                        alloc: index,
                        task: task.clone(),
                        values: std::array::from_fn(|i| {
                            (TASK[i].value)(&figures).unwrap_or(f64::NAN)
                        }),
                    });
                }
            });
        }
        Self {
            snapshot,
            host,
            allocs,
            rows,
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Tasks of the snapshot.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = TaskRow<'_>> + '_ {
        let host: &str = &self.host;
        self.rows.iter().map(move |row| {
            let info = &self.allocs[row.alloc].info;
            let mut labels = [("", ""); 6];
            let mut len = 0;
            let optional = [
                ("job", &info.job),
                ("task_group", &info.task_group),
                ("namespace", &info.namespace),
            ];
            let present = optional
                .into_iter()
                .filter_map(|(key, value)| Some((key, value.as_deref()?)));
            for label in [("alloc_id", &*info.id), ("task", row.task.as_str())]
                .into_iter()
                .chain(present)
                .chain([("host", host)])
            {
                labels[len] = label;
                len += 1;
            }
            TaskRow {
                labels,
                len,
                values: &row.values,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_negotiation() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        for text in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("application/openmetrics-text;q=0.5,text/plain"),
            Some("application/openmetrics-text;q=0"),
            Some("application/json"),
        ] {
            assert_eq!(Format::from_accept(text), Format::Text, "{text:?}");
        }
        assert!(Format::Text
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
        assert!(Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
    }

    #[test]
    fn hostname_is_the_kernels() {
        // SAFETY: `utsname` is arrays of bytes, for which all zeroes is valid.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct it is given.
        assert_eq!(unsafe { libc::uname(&mut uts) }, 0);
        // SAFETY: uname wrote a NUL-terminated node name into `uts`, which outlives it
        // (and a zeroed array is NUL-terminated had it not).
        let nodename = unsafe { std::ffi::CStr::from_ptr(uts.nodename.as_ptr()) };
        assert_eq!(hostname(), nodename.to_string_lossy());
        assert!(!hostname().is_empty());
    }
}
