//! The whole warp app (`api::app`, ACLs on) driven through `warp::test::request()`. The
//! input is a request in text form (see `RawRequest`): method, target (path and query)
//! and headers, each raw bytes, kept when valid for the `http` types. Every answer must
//! be a 2xx or a plain-text 4xx, and nothing but the liveness check answers without the
//! token.
#![no_main]

use std::sync::OnceLock;

use collector_fuzz::{check_answer, fixture_state, may_carry_token, Answer, RawRequest};
use collector_user::api::{app, ApiState};
use libfuzzer_sys::fuzz_target;
use warp::http::{header, HeaderName, HeaderValue, Method, Uri};

fn state() -> &'static ApiState {
    static STATE: OnceLock<ApiState> = OnceLock::new();
    STATE.get_or_init(fixture_state)
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let Some(raw) = RawRequest::split(data) else {
        return;
    };
    let Ok(method) = Method::from_bytes(raw.method) else {
        return;
    };
    // `warp::test::request().path()` takes what parses as a URI.
    let Ok(target) = std::str::from_utf8(raw.target) else {
        return;
    };
    if target.parse::<Uri>().is_err() {
        return;
    }
    let headers: Vec<(HeaderName, HeaderValue)> = raw
        .headers
        .iter()
        .filter_map(|&(name, value)| {
            Some((
                HeaderName::from_bytes(name).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            ))
        })
        .collect();
    let token = may_carry_token(headers.iter().map(|(_, v)| v.as_bytes()));

    let mut request = warp::test::request().method(method.as_str()).path(target);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = RUNTIME.with(|rt| rt.block_on(request.reply(&app(state().clone()))));
    check_answer(&Answer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        body: response.body(),
        may_carry_token: token,
    });
});
