//! Request handlers. They read the current [`Snapshot`](crate::snapshot::Snapshot) and
//! nothing else (no /proc, no cgroupfs, no file, no request to the collector); bodies
//! are built at most once per snapshot and shared.

use bytes::Bytes;
use warp::{
    http::{header, HeaderValue},
    hyper::Body,
    reply::Response,
};

use super::{errors::ApiError, metrics, models::Params, state::ApiState};
use crate::snapshot::{AllocInfo, Snapshot};

/// Body of `GET /v1/agent/health`.
pub const AGENT_HEALTH_BODY: &[u8] = br#"{"client":{"ok":true,"message":"ok"}}"#;

pub const APPLICATION_JSON: &str = "application/json";

fn response(body: Bytes, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(body: Bytes) -> Response {
    response(body, APPLICATION_JSON)
}

pub fn agent_health() -> Response {
    json(Bytes::from_static(AGENT_HEALTH_BODY))
}

/// `id` is the path segment, percent-decoded when that gave valid UTF-8. Every
/// allocation in the snapshot is complete (its processes and cgroup figures of the last
/// interval), so the first request is answered like any other.
pub fn alloc_stats(id: String, params: Params, state: ApiState) -> Response {
    let snapshot = state.store.load();
    match snapshot.allocations.get(id.as_str()) {
        Some(entry) => json(entry.stats_json(params.task.as_deref(), params.pretty)),
        None => ApiError::unknown_allocation(&id).to_response(),
    }
}

pub fn host_stats(params: Params, state: ApiState) -> Response {
    let snapshot = state.store.load();
    json(if params.pretty {
        Snapshot::json(&snapshot.host, true)
    } else {
        Snapshot::memo(&snapshot.host_json, || {
            Snapshot::json(&snapshot.host, false)
        })
    })
}

/// Every allocation's [`AllocInfo`], sorted by ID.
pub fn allocations_body(snapshot: &Snapshot, pretty: bool) -> Bytes {
    let mut list: Vec<&AllocInfo> = snapshot.allocations.values().map(|a| &a.info).collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Snapshot::json(&list, pretty)
}

pub fn allocations(params: Params, state: ApiState) -> Response {
    let snapshot = state.store.load();
    json(if params.pretty {
        allocations_body(&snapshot, true)
    } else {
        Snapshot::memo(&snapshot.allocations_json, || {
            allocations_body(&snapshot, false)
        })
    })
}

/// JSON unless `format=prometheus` (as Nomad: any other format gives JSON); the
/// Prometheus exposition in the text format the `Accept` header prefers.
///
/// The exposition is streamed from the snapshot, one family at a time as the connection
/// takes it, rather than built whole and kept with the snapshot: at a thousand tasks it
/// is about two megabytes, and one chunk is a hundred kilobytes or so.
pub fn metrics(params: Params, accept: Option<HeaderValue>, state: ApiState) -> Response {
    let snapshot = state.store.load();
    if params.format.as_deref() == Some("prometheus") {
        let format = metrics::Format::from_accept(accept.as_ref().and_then(|v| v.to_str().ok()));
        let chunks = metrics::exposition::chunks(snapshot, state.host.clone(), format)
            .map(Ok::<_, std::convert::Infallible>);
        let mut response = Response::new(Body::wrap_stream(futures_util::stream::iter(chunks)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        return response;
    }
    json(if params.pretty {
        metrics::json::render(&snapshot, &state.host, true)
    } else {
        Snapshot::memo(&snapshot.metrics_json, || {
            metrics::json::render(&snapshot, &state.host, false)
        })
    })
}
