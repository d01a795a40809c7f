//! The listener: HTTP/1.1 (optionally over TLS) with bounded connections, head size,
//! URI length and header read time, and a graceful, time-bounded shutdown.

use std::{
    convert::Infallible,
    fs,
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::{
    server::conn::{Connection, Http},
    service::Service,
    Body, Request, Response, Uri,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::{timeout, Instant, Sleep},
};
use tokio_rustls::{rustls, TlsAcceptor};
use tracing::{debug, info, warn};

use super::{app, errors::ApiError, ApiState};
use crate::config::HttpConfig;

/// hyper refuses a read buffer smaller than this.
pub const MIN_HEADER_BUFFER: usize = 8192;

/// Time limits of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest time to receive a request head, from the connection's start or from the
    /// head's first byte (slowloris).
    pub header_read: Duration,
    /// A connection that neither sends nor takes a byte for this long is closed: bounds
    /// idle keep-alive connections, silent new ones and clients that stop reading.
    pub idle: Duration,
    pub tls_handshake: Duration,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
            shutdown: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: no PKCS#8, RSA or EC private key found")]
    NoKey { path: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
/// RSA or SEC1 EC). Offers HTTP/1.1 by ALPN.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let certs =
        rustls_pemfile::certs(&mut cert_pem.as_slice()).map_err(|source| TlsError::Read {
            path: cert.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key_pem = read(key)?;
    let mut reader = key_pem.as_slice();
    let key_der = loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(
                rustls_pemfile::Item::PKCS8Key(der)
                | rustls_pemfile::Item::RSAKey(der)
                | rustls_pemfile::Item::ECKey(der),
            )) => break der,
            Ok(Some(_)) => continue,
            // Never echo the key file's contents.
            Ok(None) | Err(_) => {
                return Err(TlsError::NoKey {
                    path: key.display().to_string(),
                })
            }
        }
    };
    let mut config = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(
            certs.into_iter().map(rustls::Certificate).collect(),
            rustls::PrivateKey(key_der),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves [`app`] on `listener` until `shutdown` completes, with the default
/// [`Timeouts`].
pub async fn serve(
    listener: TcpListener,
    config: &HttpConfig,
    tls: Option<TlsAcceptor>,
    state: ApiState,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, config, tls, state, shutdown, Timeouts::default()).await
}

/// [`serve`] with explicit time limits.
///
/// At most `config.max_connections` connections are served at once: a permit is taken
/// before `accept`, so further connections wait in the kernel's backlog. On shutdown the
/// listener is closed, every connection finishes its in-flight request (idle ones close
/// at once) and whatever is left after `timeouts.shutdown` is dropped.
pub async fn serve_with(
    listener: TcpListener,
    config: &HttpConfig,
    tls: Option<TlsAcceptor>,
    state: ApiState,
    shutdown: impl Future<Output = ()>,
    timeouts: Timeouts,
) -> io::Result<()> {
    let address = listener.local_addr()?;
    let max_connections = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    info!(
        %address,
        tls = tls.is_some(),
        acl = state.acl.load().enabled(),
        max_connections,
        "HTTP API listening"
    );

    let mut http = Http::new();
    http.http1_only(true)
        .http1_keep_alive(true)
        .http1_header_read_timeout(timeouts.header_read)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BUFFER));
    let service = ApiService::new(state, config.max_uri_bytes);
    let limit = Arc::new(Semaphore::new(max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        while let Some(finished) = connections.try_join_next() {
            if let Err(error) = finished {
                warn!(%error, "connection task failed");
            }
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            },
        };
        let connection = ConnectionTask {
            http: http.clone(),
            service: service.clone(),
            tls: tls.clone(),
            closing: closing_rx.clone(),
            timeouts,
            _permit: permit,
        };
        connections.spawn(connection.run(stream, peer));
    }

    drop(listener);
    closing_tx.send_replace(true);
    info!(
        connections = connections.len(),
        "HTTP API shutting down: finishing in-flight requests"
    );
    let drained = timeout(timeouts.shutdown, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "shutdown timeout: dropping the remaining connections"
        );
        connections.shutdown().await;
    }
    info!("HTTP API stopped");
    Ok(())
}

async fn accept_error(error: io::Error) {
    match error.kind() {
        // The peer gave up before accept: nothing to do.
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
            debug!(%error, "accept")
        }
        // Out of file descriptors or memory: back off instead of spinning.
        _ => {
            warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Length of the request target as sent (origin form: path and query).
fn target_len(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;
type Handler = dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync;

/// [`app`] as a hyper service, answering 414 to a request target over the limit.
#[derive(Clone)]
pub struct ApiService {
    handler: Arc<Handler>,
}

impl ApiService {
    pub fn new(state: ApiState, max_uri_bytes: usize) -> Self {
        let filtered = warp::service(app(state));
        let handler = move |request: Request<Body>| -> ResponseFuture {
            if target_len(request.uri()) > max_uri_bytes {
                return Box::pin(async { Ok(ApiError::UriTooLong.to_response()) });
            }
            let mut filtered = filtered.clone();
            Box::pin(filtered.call(request))
        };
        Self {
            handler: Arc::new(handler),
        }
    }
}

impl Service<Request<Body>> for ApiService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture {
        (self.handler)(request)
    }
}

struct ConnectionTask {
    http: Http,
    service: ApiService,
    tls: Option<TlsAcceptor>,
    closing: watch::Receiver<bool>,
    timeouts: Timeouts,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionTask {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = self.tls.clone() else {
            return self.drive(stream, peer).await;
        };
        let handshake = tokio::select! {
            handshake = timeout(self.timeouts.tls_handshake, acceptor.accept(stream)) => handshake,
            () = wait_closing(&mut self.closing) => return,
        };
        match handshake {
            Ok(Ok(stream)) => self.drive(stream, peer).await,
            Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn drive<I>(mut self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let read_any = Arc::new(AtomicBool::new(false));
        let io = Tracked::new(io, read_any.clone(), self.timeouts.idle);
        let connection: Connection<Tracked<I>, ApiService> =
            self.http.serve_connection(io, self.service.clone());
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => return log_end(result, peer),
            () = wait_closing(&mut self.closing) => {}
        }
        if !read_any.load(Ordering::Relaxed) {
            // Not a byte received: nothing is in flight.
            return;
        }
        // Finishes the request being read or answered, then closes (an idle
        // keep-alive connection closes at once).
        connection.as_mut().graceful_shutdown();
        log_end(connection.await, peer);
    }
}

fn log_end(result: hyper::Result<()>, peer: SocketAddr) {
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}

async fn wait_closing(closing: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is gone: close too.
    let _ = closing.wait_for(|closing| *closing).await.map(|_| ());
}

/// Records whether any byte was ever read (to tell a connection with a request in
/// flight from one that never sent anything), and fails the connection once no byte has
/// been read or written for `idle` (hyper bounds the wait for a head only while one is
/// being read, not the wait of an idle keep-alive connection, nor a stalled reader).
struct Tracked<I> {
    inner: I,
    read_any: Arc<AtomicBool>,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<I> Tracked<I> {
    fn new(inner: I, read_any: Arc<AtomicBool>, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            read_any,
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Called when the inner stream is pending: an error once idle for too long (the
    /// timer also wakes the task then, so the check runs without any I/O).
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_any.store(true, Ordering::Relaxed);
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
