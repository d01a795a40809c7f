//! The real server on loopback: limits, slow heads, the connection limit, graceful
//! shutdown, TLS.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::{timeout, Instant},
};
use tokio_rustls::rustls;

use super::*;
use crate::{
    api::server::{serve_with, Timeouts},
    config::HttpConfig,
};

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("serve result");
        started.elapsed()
    }
}

fn http_config() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 16,
        max_header_bytes: 8192,
        max_uri_bytes: 256,
        tls_cert: None,
        tls_key: None,
    }
}

async fn start_with(
    config: HttpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeouts: Timeouts,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = state(Acl::disabled());
    let task = tokio::spawn(async move {
        serve_with(
            listener,
            &config,
            tls,
            state,
            async move {
                let _ = stopped.await;
            },
            timeouts,
        )
        .await
    });
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn start(config: HttpConfig) -> Server {
    start_with(config, None, Timeouts::default()).await
}

/// Reads until EOF (or reset), at most 5 s.
async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection not closed: {}", String::from_utf8_lossy(&out)),
        }
    }
}

/// Reads one response (head + Content-Length body) from a keep-alive connection.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    out.extend_from_slice(&body);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_all(&mut stream).await).into_owned()
}

const HEALTH: &[u8] = b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n";
const HEALTH_CLOSE: &[u8] =
    b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn serves_and_limits_head_and_uri() {
    let server = start(http_config()).await;

    let ok = exchange(server.addr, HEALTH_CLOSE).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.ends_with(r#"{"client":{"ok":true,"message":"ok"}}"#),
        "{ok}"
    );

    // Over-long head: 431 (or 400), never 500, then the connection is closed.
    let mut big = b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    let resp = exchange(server.addr, &big).await;
    assert!(
        resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );

    // Over-long request target: 414.
    let long = format!(
        "GET /v1/client/allocation/{}/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(300)
    );
    let resp = exchange(server.addr, long.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");
    assert!(resp.ends_with("URI too long"), "{resp}");
    let long_query = format!(
        "GET /v1/metrics?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(300)
    );
    let resp = exchange(server.addr, long_query.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");

    // Non-UTF-8 bytes in the request line: 400.
    let resp = exchange(
        server.addr,
        b"GET /v1/\xff\xfe/stats HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = exchange(server.addr, b"\xff\xfe\xfd\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    // A request body: 4xx.
    let resp = exchange(
        server.addr,
        b"GET /v1/agent/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let resp = exchange(
        server.addr,
        b"POST /v1/agent/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");

    // HEAD: headers only, and the connection stays usable.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"HEAD /v1/agent/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    stream.write_all(HEALTH).await.unwrap();
    let next = read_response(&mut stream).await.unwrap();
    assert!(
        next.starts_with("HTTP/1.1 200"),
        "no stray HEAD body: {next}"
    );

    // Still serving after all of that.
    let ok = exchange(server.addr, HEALTH_CLOSE).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    server.stop().await;
}

#[tokio::test]
async fn slow_heads_are_cut_off() {
    let timeouts = Timeouts {
        header_read: Duration::from_millis(300),
        idle: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let server = start_with(http_config(), None, timeouts).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/agent/health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    let resp = String::from_utf8_lossy(&read_all(&mut stream).await).into_owned();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp}"
    );
    // An idle keep-alive connection is bounded the same way.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut idle)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection closed");
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_is_respected() {
    let config = HttpConfig {
        max_connections: 2,
        ..http_config()
    };
    let server = start(config).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(HEALTH).await.unwrap();
        assert!(read_response(stream)
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
    }
    // The third connects (kernel backlog) but is not served while two are open.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(HEALTH).await.unwrap();
    let waited = timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(waited.is_err(), "third connection served over the limit");
    // Both kept-alive connections still work.
    second.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut second)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    drop(first);
    let served = timeout(Duration::from_secs(3), read_response(&mut third))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = start(http_config()).await;
    let addr = server.addr;
    // In flight: half a request head sent.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /v1/client/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Idle keep-alive after one request, and connected but silent.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(HEALTH).await.unwrap();
    read_response(&mut idle).await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Let the server read the half head (a connection that sent nothing it has read
    // is dropped at shutdown).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stop = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    busy.write_all(b"\r\n").await.unwrap();
    let resp = String::from_utf8_lossy(&read_all(&mut busy).await).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"Memory\""), "{resp}");
    let took = stop.await.unwrap();
    assert!(
        took < Duration::from_secs(3),
        "idle and silent connections do not hold shutdown: {took:?}"
    );
    assert!(read_all(&mut idle).await.is_empty());
    assert!(read_all(&mut silent).await.is_empty());
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.serialize_pem().unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.serialize_private_key_pem()).unwrap();
    (cert_path, key_path, cert_pem)
}

async fn tls_get(addr: SocketAddr, cert_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut cert_pem.as_bytes()).unwrap() {
        roots.add(&rustls::Certificate(der)).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_safe_defaults()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    stream
        .write_all(
            format!(
                "GET /v1/client/allocation/{ALLOC}/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&read_all(&mut stream).await).into_owned()
}

#[tokio::test]
async fn tls_round_trip_and_plain_http_on_the_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(dir.path());
    let acceptor = load_tls(&cert, &key).expect("load_tls");
    let server = start_with(http_config(), Some(acceptor), Timeouts::default()).await;

    let resp = tls_get(server.addr, &cert_pem).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"ResourceUsage\""), "{resp}");

    // Plain HTTP to the TLS port: the handshake fails, the connection closes, and
    // nothing resembling an HTTP answer comes back.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(HEALTH_CLOSE).await.unwrap();
    let answer = read_all(&mut plain).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // The server is still up.
    let resp = tls_get(server.addr, &cert_pem).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    server.stop().await;
}

#[test]
fn load_tls_reports_missing_or_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        load_tls(&missing, &key),
        Err(TlsError::Read { .. })
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a pem").unwrap();
    assert!(matches!(
        load_tls(&empty, &key),
        Err(TlsError::NoCertificate { .. })
    ));
    // A certificate is not a key; the error does not show the file's contents.
    let err = load_tls(&cert, &cert).err().expect("no key");
    assert!(matches!(err, TlsError::NoKey { .. }));
    assert!(!err.to_string().contains("BEGIN"));
}
