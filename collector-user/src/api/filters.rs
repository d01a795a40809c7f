//! Routing. Every request first passes [`guard`] (method, no body); every route but the
//! liveness check then passes [`acl`] before anything is looked up, so an
//! unauthenticated client learns nothing, not even which paths or allocations exist.

use warp::{
    http::{header, HeaderMap, HeaderValue, Method},
    path::Tail,
    reject, Filter, Rejection, Reply,
};

use super::{errors::ApiError, handlers, ApiState};

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

/// The query parameters this API understands; others (Nomad clients send `region`,
/// `namespace`, `stale`, …) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `?task=<name>`.
    pub task: Option<String>,
    /// `?pretty` (any value but `0`, as Nomad: `?pretty=0` does not indent).
    pub pretty: bool,
    /// `?format=prometheus` on `/v1/metrics`.
    pub format: Option<String>,
}

impl Params {
    /// Parses a raw query string (`application/x-www-form-urlencoded`). A malformed
    /// percent escape, a non-UTF-8 value or a repeated `task`/`format` is an error.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::BadRequest("invalid query string".to_owned());
        let mut params = Params::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_form(key).ok_or_else(invalid)?;
            let value = decode_form(value).ok_or_else(invalid)?;
            let slot = match key.as_str() {
                "pretty" => {
                    params.pretty = value != "0";
                    continue;
                }
                "task" => &mut params.task,
                "format" => &mut params.format,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "query parameter \"{key}\" given more than once"
                )));
            }
            *slot = Some(value);
        }
        Ok(params)
    }
}

/// The query string as [`Params`]; a request without one has the defaults.
pub fn params() -> impl Filter<Extract = (Params,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move { Params::parse(&raw).map_err(reject::custom) })
}

/// Percent-decodes `input`; `None` for a malformed escape.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn decode_form(input: &str) -> Option<String> {
    String::from_utf8(percent_decode(input.as_bytes(), true)?).ok()
}

/// A path segment percent-decoded when that gives valid UTF-8, else as given.
pub fn decode_path_segment(raw: &str) -> String {
    percent_decode(raw.as_bytes(), false)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(Params::parse("").unwrap(), Params::default());
        let p = Params::parse("task=web.frontend&pretty").unwrap();
        assert_eq!(p.task.as_deref(), Some("web.frontend"));
        assert!(p.pretty);
        assert!(Params::parse("pretty=true").unwrap().pretty);
        assert!(!Params::parse("pretty=0").unwrap().pretty);
        assert_eq!(
            Params::parse("task=a%20b+c&region=global")
                .unwrap()
                .task
                .as_deref(),
            Some("a b c")
        );
        assert!(Params::parse("task=%zz").is_err());
        assert!(Params::parse("task=%ff").is_err());
        assert!(Params::parse("task=a&task=b").is_err());
        assert_eq!(
            Params::parse("format=prometheus")
                .unwrap()
                .format
                .as_deref(),
            Some("prometheus")
        );
    }

    #[test]
    fn path_segments() {
        assert_eq!(decode_path_segment("..%2F..%2Fetc"), "../../etc");
        assert_eq!(decode_path_segment("%ff%fe"), "%ff%fe");
        assert_eq!(decode_path_segment("100%"), "100%");
        assert_eq!(decode_path_segment("a+b"), "a+b");
    }

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
