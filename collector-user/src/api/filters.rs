//! Routing. Every request first passes [`guard`] (method, no body); every route but the
//! liveness check then passes [`acl`] before anything is looked up, so an
//! unauthenticated client learns nothing, not even which paths or allocations exist.

use warp::{
    http::{header, HeaderMap, HeaderValue, Method},
    path::Tail,
    reject, Filter, Rejection, Reply,
};

use super::{
    errors::ApiError,
    handlers,
    models::{decode_path_segment, Params},
    state::ApiState,
};

/// All routes, without error recovery (see [`super::app`]).
pub fn api(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let protected = acl(state.clone()).and(
        alloc_stats(state.clone())
            .or(host_stats(state.clone()))
            .or(allocations(state.clone()))
            .or(metrics(state)),
    );
    guard().and(agent_health().or(protected))
}

/// GET (or HEAD, answered by hyper without a body) and no request body.
pub fn guard() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::headers_cloned())
        .and_then(|method: Method, headers: HeaderMap| async move {
            if method != Method::GET && method != Method::HEAD {
                return Err(reject::custom(ApiError::MethodNotAllowed));
            }
            check_no_body(&headers).map_err(reject::custom)
        })
        .untuple_one()
}

/// Rejects a request that announces a body: `Content-Length` above 0 or any
/// `Transfer-Encoding`. No route takes one.
pub fn check_no_body(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ApiError::BodyNotAllowed);
    }
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let length = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::BadRequest("invalid Content-Length".to_owned()))?;
        if length > 0 {
            return Err(ApiError::BodyNotAllowed);
        }
    }
    Ok(())
}

/// Passes when ACLs are off or the request carries an accepted token. The tokens are
/// read at each request, so a reload applies to the next request.
pub fn acl(state: ApiState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let result = state.acl.load().check(&headers).map_err(reject::custom);
            async move { result }
        })
        .untuple_one()
}

fn with_state(
    state: ApiState,
) -> impl Filter<Extract = (ApiState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `GET /v1/agent/health`: liveness, never behind a token.
pub fn agent_health() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "agent" / "health").map(handlers::agent_health)
}

/// `GET /v1/client/allocation/<ID>/stats[?task=<name>][&pretty]`.
pub fn alloc_stats(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "client" / "allocation" / ..)
        .and(warp::path::tail())
        .and_then(|tail: Tail| async move { alloc_id_from_tail(tail.as_str()) })
        .and(params())
        .and(with_state(state))
        .map(handlers::alloc_stats)
}

/// The allocation ID of `<ID>/stats`: Nomad's path has exactly two segments after
/// `/v1/client/allocation/`, the second one the action (only `stats` here).
fn alloc_id_from_tail(tail: &str) -> Result<String, Rejection> {
    let mut parts = tail.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some("stats"), None) if !id.is_empty() => Ok(decode_path_segment(id)),
        _ => Err(reject::not_found()),
    }
}

/// `GET /v1/client/stats`: host stats.
pub fn host_stats(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "client" / "stats")
        .and(params())
        .and(with_state(state))
        .map(handlers::host_stats)
}

/// `GET /v1/client/allocations`: every allocation this collector knows about.
pub fn allocations(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "client" / "allocations")
        .and(params())
        .and(with_state(state))
        .map(handlers::allocations)
}

/// `GET /v1/metrics[?format=prometheus]`.
pub fn metrics(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "metrics")
        .and(params())
        .and(accept())
        .and(with_state(state))
        .map(handlers::metrics)
}

/// The `Accept` header, if any, unparsed: a value that is not visible ASCII must not
/// turn a scrape into an error (it is read as no preference).
fn accept(
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| headers.get(header::ACCEPT).cloned())
}

/// The query string as [`Params`]; a request without one has the defaults.
pub fn params() -> impl Filter<Extract = (Params,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move { Params::parse(&raw).map_err(reject::custom) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_path_shapes() {
        assert!(alloc_id_from_tail("abc/stats").is_ok());
        for bad in [
            "",
            "abc",
            "abc/",
            "/stats",
            "abc/stats/",
            "abc/stats/x",
            "abc/gc",
        ] {
            assert!(alloc_id_from_tail(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies() {
        let mut headers = HeaderMap::new();
        assert!(check_no_body(&headers).is_ok());
        headers.insert(header::CONTENT_LENGTH, "0".parse().unwrap());
        assert!(check_no_body(&headers).is_ok());
        headers.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        assert_eq!(check_no_body(&headers), Err(ApiError::BodyNotAllowed));
        headers.insert(header::CONTENT_LENGTH, "x".parse().unwrap());
        assert!(matches!(
            check_no_body(&headers),
            Err(ApiError::BadRequest(_))
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(check_no_body(&headers), Err(ApiError::BodyNotAllowed));
    }
}
