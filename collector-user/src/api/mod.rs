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

use std::convert::Infallible;

use warp::{Filter, Reply};

pub mod acl;
pub mod errors;
pub mod filters;
pub mod handlers;
pub mod metrics;
pub mod models;
pub mod server;
pub mod state;

#[cfg(test)]
mod tests;

pub use acl::Acl;
pub use errors::ApiError;
pub use server::{load_tls, serve, TlsError};
pub use state::ApiState;

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
