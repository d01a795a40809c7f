//! Raw bytes on a connection: a hyper HTTP/1 connection configured as `api::serve`
//! configures it, over an in-memory duplex, serving the daemon's own `ApiService`
//! (`app` plus the 414 for long targets) with ACLs on. Any bytes may arrive: non-UTF-8
//! request lines, huge or broken headers, pipelined requests, bodies.
//!
//! Every answer the service gives must pass `check_answer`; on the wire, the answers
//! must come back in order and framed (`Content-Length`), followed at most by one of
//! hyper's own answers to a request it could not parse (400, 414, 431).
#![no_main]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use collector_fuzz::{check_answer, fixture_state, may_carry_token, Answer};
use collector_user::{
    api::{
        server::{ApiService, MIN_HEADER_BUFFER},
        ApiState,
    },
    config::HttpConfig,
};
use hyper::{
    header, server::conn::Http, service::service_fn, service::Service, Body, Method, Request,
    Response,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn state() -> &'static ApiState {
    static STATE: OnceLock<ApiState> = OnceLock::new();
    STATE.get_or_init(fixture_state)
}

thread_local! {
    /// Paused time: the clock jumps ahead whenever both ends wait (see `serve`), so no
    /// input ever waits for real time.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
}

/// How long the client waits, once everything is sent, before closing its side. With
/// the clock paused this passes only when the server has nothing left to do with what it
/// was sent: then every request that can be answered has been. (hyper drops a request in
/// progress when the client's side closes, as a real server does, so closing at once
/// would leave most requests unanswered.) Shorter than the head read timeout.
const LINGER: Duration = Duration::from_secs(1);

/// What the service answered, in order: whether the request was HEAD (no body on the
/// wire) and the status.
type Seen = Arc<Mutex<Vec<(bool, u16)>>>;

async fn serve(data: &[u8]) -> (Vec<u8>, Vec<(bool, u16)>) {
    let config = HttpConfig::default();
    let service = ApiService::new(state().clone(), config.max_uri_bytes);
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let recording = service_fn(move |request: Request<Body>| {
        let head = request.method() == Method::HEAD;
        let token = may_carry_token(request.headers().values().map(|v| v.as_bytes()));
        let mut service = service.clone();
        let seen = recorded.clone();
        async move {
            let response = service.call(request).await?;
            let (parts, body) = response.into_parts();
            let body = hyper::body::to_bytes(body)
                .await
                .expect("the API's bodies are in memory");
            check_answer(&Answer {
                status: parts.status.as_u16(),
                content_type: parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
                body: &body,
                may_carry_token: token,
            });
            seen.lock().unwrap().push((head, parts.status.as_u16()));
            Ok::<_, Infallible>(Response::from_parts(parts, Body::from(body)))
        }
    });

    // As `api::server::serve_with` sets up every connection.
    let mut http = Http::new();
    http.http1_only(true)
        .http1_keep_alive(true)
        .http1_header_read_timeout(Duration::from_secs(10))
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BUFFER));

    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let connection = http.serve_connection(server, recording);
    let send = async {
        // The server may close before taking everything: not an error.
        let _ = to_server.write_all(data).await;
        tokio::time::sleep(LINGER).await;
        let _ = to_server.shutdown().await;
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out).await;
        out
    };
    let (_, (), out) = tokio::join!(connection, send, receive);
    let seen = seen.lock().unwrap().clone();
    (out, seen)
}

/// Walks the answers on the wire against what the service answered.
fn check_wire(mut wire: &[u8], seen: &[(bool, u16)]) {
    let mut index = 0;
    while !wire.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(wire) {
            Ok(httparse::Status::Complete(n)) => n,
            // The connection may end in the middle of an answer.
            Ok(httparse::Status::Partial) => return,
            Err(e) => panic!(
                "answer {index} does not parse ({e}): {:?}",
                String::from_utf8_lossy(&wire[..wire.len().min(200)])
            ),
        };
        let status = response.code.expect("a complete head has a status");
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .expect("a numeric Content-Length")
            })
            .unwrap_or(0);
        let body = match seen.get(index) {
            Some(&(head, expected)) => {
                assert_eq!(status, expected, "answer {index} on the wire");
                if head {
                    0
                } else {
                    length
                }
            }
            None => {
                assert!(
                    [400, 414, 431].contains(&status),
                    "hyper's own answer is a {status}"
                );
                assert_eq!(
                    wire.len(),
                    head_len + length,
                    "bytes after hyper's error answer"
                );
                length
            }
        };
        wire = wire.get(head_len + body..).unwrap_or_default();
        index += 1;
    }
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    let (wire, seen) = RUNTIME.with(|rt| rt.block_on(serve(data)));
    check_wire(&wire, &seen);
});
