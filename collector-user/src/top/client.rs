//! The HTTP side of `top`: the daemon's own API, over plain HTTP or TLS, with its ACL
//! token, through hyper's low-level client (already in the tree for the server) on a few
//! kept-alive connections.

use std::{fmt, io::BufReader, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use hyper::{
    body::Bytes,
    client::conn::{self, SendRequest},
    Body, Request, StatusCode,
};
use thiserror::Error;
use tokio::{net::TcpStream, task::JoinSet};

use super::model::{AllocListing, AllocRow, AllocStats};

/// Connections the stats of the allocations are fetched over at once: the daemon
/// answers each from memory, and a few in parallel keep a screen of hundreds of
/// allocations from waiting on the round trips one after another.
const PARALLEL: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Far above what a request takes: the daemon answers every one from memory.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{addr}: connection refused — is the daemon running?")]
    Refused { addr: String },
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: 403: the ACL token was refused ({message})")]
    TokenRefused { addr: String, message: String },
    #[error("{addr}: 403: the daemon needs an ACL token ({message}); give --token or a -c configuration with acl.tokens")]
    TokenMissing { addr: String, message: String },
    #[error("{addr}: TLS: {message} (trust the daemon's certificate or CA with --ca-cert, or use --insecure)")]
    Tls { addr: String, message: String },
    #[error("{addr}: no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { addr: String },
    #[error("{addr}: {path}: {status}: {body}")]
    Status {
        addr: String,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("{addr}: {path}: {message}")]
    Protocol {
        addr: String,
        path: String,
        message: String,
    },
}

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("address `{0}`: expected host:port, http://host:port or https://host:port")]
    Address(String),
    #[error("reading the CA certificate {path}: {message}")]
    CaCert { path: String, message: String },
    #[error("https needs --ca-cert (the daemon's certificate or its CA) or --insecure")]
    NoTrust,
}

/// Where the daemon is and how to reach it.
pub struct Endpoint {
    /// `host:port`, as connected to and shown in messages.
    pub authority: String,
    host: String,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

/// How a TLS connection decides to trust the daemon.
pub enum Trust<'a> {
    /// Certificates (PEM) to trust: a CA, or the daemon's own self-signed certificate.
    CaFile(&'a Path),
    /// Any certificate (`--insecure`): encrypted, not authenticated.
    Anything,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Splits `addr` into (https?, host, authority). A listen address on every interface
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn parse_addr(addr: &str) -> Result<(bool, String, String), SetupError> {
    let bad = || SetupError::Address(addr.to_owned());
    let (https, rest) = if let Some(rest) = addr.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, addr.strip_prefix("http://").unwrap_or(addr))
    };
    let rest = rest.trim_end_matches('/');
    if let Ok(socket) = rest.parse::<SocketAddr>() {
        let ip = match socket.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".parse().unwrap(),
            ip if ip.is_unspecified() => "::1".parse().unwrap(),
            ip => ip,
        };
        let socket = SocketAddr::new(ip, socket.port());
        return Ok((https, ip.to_string(), socket.to_string()));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(['/', '[', ']']) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((https, host.to_owned(), rest.to_owned()))
}

impl Endpoint {
    pub fn new(
        addr: &str,
        token: Option<String>,
        trust: Option<Trust<'_>>,
    ) -> Result<Endpoint, SetupError> {
        let (https, host, authority) = parse_addr(addr)?;
        let tls = match (https, trust) {
            (false, _) => None,
            (true, None) => return Err(SetupError::NoTrust),
            (true, Some(trust)) => Some(tls_connector(trust)?),
        };
        Ok(Endpoint {
            authority,
            host,
            tls,
            token,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Body>, FetchError> {
        let addr = || self.authority.clone();
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
        {
            Err(_) => return Err(FetchError::Timeout { addr: addr() }),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(FetchError::Refused { addr: addr() })
            }
            Ok(Err(source)) => {
                return Err(FetchError::Connect {
                    addr: addr(),
                    source,
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let handshake_error = |e: hyper::Error| FetchError::Protocol {
            addr: addr(),
            path: "/".to_owned(),
            message: e.to_string(),
        };
        match &self.tls {
            None => {
                let (sender, connection) = conn::handshake(tcp).await.map_err(handshake_error)?;
                tokio::spawn(connection);
                Ok(sender)
            }
            Some(connector) => {
                let name = rustls::ServerName::try_from(self.host.as_str()).map_err(|e| {
                    FetchError::Tls {
                        addr: addr(),
                        message: e.to_string(),
                    }
                })?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| FetchError::Timeout { addr: addr() })?
                    .map_err(|e| FetchError::Tls {
                        addr: addr(),
                        message: e.to_string(),
                    })?;
                let (sender, connection) =
                    conn::handshake(stream).await.map_err(handshake_error)?;
                tokio::spawn(connection);
                Ok(sender)
            }
        }
    }

    /// GET `path` on `sender`: the body of a 200, `None` for a 404, an error otherwise.
    async fn get(
        &self,
        sender: &mut SendRequest<Body>,
        path: &str,
    ) -> Result<Option<Bytes>, FetchError> {
        let addr = || self.authority.clone();
        let protocol = |message: String| FetchError::Protocol {
            addr: addr(),
            path: path.to_owned(),
            message,
        };
        let mut request = Request::get(path).header(hyper::header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header("X-Nomad-Token", token);
        }
        let request = request
            .body(Body::empty())
            .map_err(|e| protocol(e.to_string()))?;
        let exchange = async {
            futures_util::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = hyper::body::to_bytes(response.into_body()).await?;
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout { addr: addr() })?
            .map_err(|e| protocol(e.to_string()))?;
        let text = || String::from_utf8_lossy(&body).trim().to_owned();
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::FORBIDDEN if self.token.is_some() => Err(FetchError::TokenRefused {
                addr: addr(),
                message: text(),
            }),
            StatusCode::FORBIDDEN => Err(FetchError::TokenMissing {
                addr: addr(),
                message: text(),
            }),
            status => Err(FetchError::Status {
                addr: addr(),
                path: path.to_owned(),
                status,
                body: text(),
            }),
        }
    }
}

/// Fetches one screenful of data: the allocation list, then every allocation's stats.
pub struct Client {
    endpoint: Arc<Endpoint>,
    /// Kept-alive connections, reused while the daemon keeps them open.
    idle: Vec<SendRequest<Body>>,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint: Arc::new(endpoint),
            idle: Vec::new(),
        }
    }

    pub fn authority(&self) -> &str {
        &self.endpoint.authority
    }

    /// `idle` if the daemon still holds it open (it closes connections idle for 30 s),
    /// else a new connection.
    async fn connection(
        endpoint: &Endpoint,
        idle: Option<SendRequest<Body>>,
    ) -> Result<SendRequest<Body>, FetchError> {
        if let Some(mut sender) = idle {
            if futures_util::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .is_ok()
            {
                return Ok(sender);
            }
        }
        endpoint.connect().await
    }

    /// Every allocation's row, in the daemon's order. An allocation that disappears
    /// between the list and its stats (a 404) is left out.
    pub async fn fetch(&mut self) -> Result<Vec<AllocRow>, FetchError> {
        let endpoint = Arc::clone(&self.endpoint);
        let mut first = Self::connection(&endpoint, self.idle.pop()).await?;
        let path = "/v1/client/allocations";
        let body = endpoint
            .get(&mut first, path)
            .await?
            .ok_or_else(|| FetchError::Protocol {
                addr: endpoint.authority.clone(),
                path: path.to_owned(),
                message: "404: not a nomad-collector daemon (Nomad itself has no such route)"
                    .to_owned(),
            })?;
        let listing: Vec<AllocListing> =
            serde_json::from_slice(&body).map_err(|e| FetchError::Protocol {
                addr: endpoint.authority.clone(),
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let listing = Arc::new(listing);
        let workers = PARALLEL.min(listing.len()).max(1);
        let mut senders = vec![first];
        while senders.len() < workers {
            senders.push(Self::connection(&endpoint, self.idle.pop()).await?);
        }
        // Worker `w` takes allocations w, w + workers, …: each request waits on its own
        // connection only.
        let mut set = JoinSet::new();
        for (w, mut sender) in senders.into_iter().enumerate() {
            let endpoint = Arc::clone(&endpoint);
            let listing = Arc::clone(&listing);
            set.spawn(async move {
                let mut rows = Vec::new();
                for (i, alloc) in listing.iter().enumerate().skip(w).step_by(workers) {
                    let path = format!("/v1/client/allocation/{}/stats", alloc.id);
                    let Some(body) = endpoint.get(&mut sender, &path).await? else {
                        continue;
                    };
                    let stats: AllocStats =
                        serde_json::from_slice(&body).map_err(|e| FetchError::Protocol {
                            addr: endpoint.authority.clone(),
                            path,
                            message: e.to_string(),
                        })?;
                    rows.push((i, AllocRow::new(alloc, &stats)));
                }
                Ok::<_, FetchError>((rows, sender))
            });
        }
        let mut rows = Vec::with_capacity(listing.len());
        let mut failed = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok((part, sender))) => {
                    rows.extend(part);
                    self.idle.push(sender);
                }
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => {
                    failed = failed.or(Some(FetchError::Protocol {
                        addr: endpoint.authority.clone(),
                        path: "stats".to_owned(),
                        message: e.to_string(),
                    }))
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        rows.sort_by_key(|(i, _)| *i);
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }
}

fn tls_connector(trust: Trust<'_>) -> Result<tokio_rustls::TlsConnector, SetupError> {
    let builder = rustls::ClientConfig::builder().with_safe_defaults();
    let config = match trust {
        Trust::CaFile(path) => {
            let ca_error = |message: String| SetupError::CaCert {
                path: path.display().to_string(),
                message,
            };
            let file = std::fs::File::open(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = rustls_pemfile::certs(&mut BufReader::new(file))
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".to_owned()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots
                    .add(&rustls::Certificate(cert))
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anything => {
            let mut config = builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AcceptAnyCertificate));
            config
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `--insecure`: the handshake's signatures are still checked by rustls, the
/// certificate's issuer and name are not.
struct AcceptAnyCertificate;

impl rustls::client::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::Certificate,
        _intermediates: &[rustls::Certificate],
        _server_name: &rustls::ServerName,
        _scts: &mut dyn Iterator<Item = &[u8]>,
        _ocsp_response: &[u8],
        _now: std::time::SystemTime,
    ) -> Result<rustls::client::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::ServerCertVerified::assertion())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_or_without_a_scheme() {
        let parse = |s| parse_addr(s).unwrap();
        assert_eq!(
            parse("127.0.0.1:4649"),
            (false, "127.0.0.1".into(), "127.0.0.1:4649".into())
        );
        assert_eq!(
            parse("https://localhost:4649/"),
            (true, "localhost".into(), "localhost:4649".into())
        );
        assert_eq!(
            parse("http://0.0.0.0:4649"),
            (false, "127.0.0.1".into(), "127.0.0.1:4649".into()),
            "a listen address on every interface is reached on loopback"
        );
        assert_eq!(parse("[::]:80"), (false, "::1".into(), "[::1]:80".into()));
        for bad in ["localhost", "host:port", ":80", "http://a/b:1"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_without_a_trust_decision_is_refused() {
        assert!(matches!(
            Endpoint::new("https://127.0.0.1:1", None, None),
            Err(SetupError::NoTrust)
        ));
        assert!(Endpoint::new("https://127.0.0.1:1", None, Some(Trust::Anything)).is_ok());
        assert!(Endpoint::new("http://127.0.0.1:1", None, None).is_ok());
    }

    /// The two failures `top` must explain in one line, against real sockets: nothing
    /// listening, and a server that refuses the token.
    #[tokio::test]
    async fn refused_connections_and_tokens_read_as_one_clear_line() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut client =
            Client::new(Endpoint::new(&format!("127.0.0.1:{port}"), None, None).unwrap());
        let e = client.fetch().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("127.0.0.1:{port}: connection refused — is the daemon running?")
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(hyper::server::conn::Http::new().serve_connection(
                    stream,
                    hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(403)
                                .body(Body::from("ACL token not found"))
                                .unwrap(),
                        )
                    }),
                ));
            }
        });
        let mut client = Client::new(
            Endpoint::new(&addr.to_string(), Some("wrong-token".into()), None).unwrap(),
        );
        let e = client.fetch().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{addr}: 403: the ACL token was refused (ACL token not found)")
        );
        let mut client = Client::new(Endpoint::new(&addr.to_string(), None, None).unwrap());
        assert!(matches!(
            client.fetch().await.unwrap_err(),
            FetchError::TokenMissing { .. }
        ));
    }
}
