//! nomad-collector: per-allocation CPU and memory usage for Nomad client hosts.
//!
//! Data flows one way: `kernel` (eBPF), `cgroup` and `procfs` read raw counters;
//! `collect` turns two samples into rates, assembles Nomad's shapes (`model`) and
//! publishes them as an immutable `snapshot`; `api` serves snapshots over HTTP. `top`
//! is the live terminal view, a client of that API.
//!
//! Imports follow that direction and never loop back, between top-level modules and
//! between the files of one directory (checked by `tests/import_graph.rs`; the order
//! is in the README's layout section).
pub mod api;
pub mod cgroup;
pub mod collect;
pub mod config;
pub mod fsutil;
pub mod heap;
pub mod kernel;
pub mod model;
pub mod procfs;
pub mod sample;
pub mod security;
pub mod snapshot;
pub mod top;
