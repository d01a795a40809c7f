//! Nomad's JSON shapes, field for field and in the order Nomad's Go structs emit them.
//! Maps are `BTreeMap` because Go's encoder writes map keys sorted.
//!
//! These are the only types the HTTP API serializes; they hold finished figures (rates,
//! bytes), never raw counters.

pub mod host;
pub mod metrics;
pub mod usage;

pub use host::{HostCpuStats, HostDiskStats, HostMemoryStats, HostStats};
pub use metrics::{Gauge, MetricsSummary};
pub use usage::{
    measured, AllocResourceUsage, CpuStats, MemoryStats, ResourceUsage, TaskResourceUsage,
};
