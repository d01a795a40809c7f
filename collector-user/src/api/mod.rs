//! The HTTP API: Nomad's client stats endpoints served from the current snapshot.
//!
//! Laid out as warp's `todos` example: [`filters`] route, [`handlers`] answer,
//! [`errors`] turns rejections into Nomad's plain-text errors; [`acl`] checks tokens,
//! [`metrics`] renders `/v1/metrics`, and [`server`] runs the listener (limits, TLS,
//! graceful shutdown).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/client/allocation/<ID>/stats[?task=][&pretty]` | `AllocResourceUsage` |
//! | `GET /v1/client/stats` | `HostStats` |
//! | `GET /v1/client/allocations` | every allocation's `AllocInfo`, by ID |
//! | `GET /v1/metrics[?format=prometheus]` | go-metrics JSON or Prometheus text |
//! | `GET /v1/agent/health` | liveness, never behind a token |

use std::{convert::Infallible, sync::Arc};

use arc_swap::ArcSwap;
use warp::{Filter, Reply};

use crate::snapshot::SnapshotStore;

pub mod acl;
pub mod errors;
pub mod filters;
pub mod handlers;
pub mod metrics;
pub mod server;

#[cfg(test)]
mod tests;

pub use acl::Acl;
pub use errors::ApiError;
pub use server::{load_tls, serve, TlsError};

/// What the handlers read: the snapshot store, and the tokens (swappable at run time);
/// the `host` label of metrics. Handlers only read: nothing here reaches the collector.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<SnapshotStore>,
    pub acl: Arc<ArcSwap<Acl>>,
    /// The node's hostname, as Nomad labels its metrics.
    pub host: Arc<str>,
}

impl ApiState {
    /// Metrics are labelled with this node's hostname (see [`ApiState::with_host`]).
    pub fn new(store: Arc<SnapshotStore>, acl: Acl) -> Self {
        Self {
            store,
            acl: Arc::new(ArcSwap::from_pointee(acl)),
            host: metrics::hostname().into(),
        }
    }

    /// Labels the metrics with `host` instead of the hostname (tests, fixed output).
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }

    /// Replaces the accepted tokens (on SIGHUP); applies from the next request on.
    pub fn set_acl(&self, acl: Acl) {
        self.acl.store(Arc::new(acl));
    }
}

/// The whole API, errors recovered: what [`server::serve`] runs and tests call with
/// `warp::test::request()`.
pub fn app(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    filters::api(state)
        .recover(errors::recover)
        .with(warp::log::custom(log_request))
}

/// One debug line per request. The path is capped and escaped; headers (tokens) are
/// never logged.
fn log_request(info: warp::log::Info<'_>) {
    tracing::debug!(
        method = %info.method(),
        path = ?errors::sanitize_echo(info.path(), 256),
        status = info.status().as_u16(),
        elapsed_us = info.elapsed().as_micros() as u64,
        "request"
    );
}
