//! The accept loop: one HTTP/1 connection per accepted socket, each bounded until its
//! request head has arrived.
//!
//! A socket that has not yet sent a complete request head costs a file descriptor and a
//! task, and until then nothing else (idle timeout, pings) watches it. So the head is
//! bounded in size (431 beyond it: in total by hyper, per header line here) and in time
//! (the connection is closed when the head takes longer than `head_timeout`), which is
//! what stops a slowloris client from holding sockets open. Once a request is upgraded
//! to a WebSocket, the socket's own limits take over.
//!
//! axum's `serve` does not expose hyper's HTTP/1 builder, where both limits live, hence
//! this loop. It also terminates TLS (`--tls-cert`/`--tls-key`) for deployments without
//! a proxy in front; the certificate is reloaded on `SIGHUP` without touching the
//! connections already open (each keeps the certificate it was accepted with).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

/// Bounds on a request head, before any handler sees the request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request head (request line and every header) in bytes.
    pub max_head_bytes: usize,
    /// Largest single header (name and value) in bytes.
    pub max_header_line_bytes: usize,
    /// Time a client has to send a complete request head (also between the requests
    /// of a keep-alive connection).
    pub head_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 32 * 1024,
            max_header_line_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(10),
        }
    }
}

/// hyper refuses to work with a smaller read buffer than this, and the head must fit in it.
pub const MIN_HEAD_BYTES: usize = 8 * 1024;

/// The PEM files TLS is served from (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served; each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate {}: {source}", path.display())]
    ReadCertificate { path: PathBuf, source: pem::Error },
    #[error("certificate {}: {source}", path.display())]
    Certificate { path: PathBuf, source: pem::Error },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("private key {}: {source}", path.display())]
    Key { path: PathBuf, source: pem::Error },
    #[error("certificate {} with its key: {source}", path.display())]
    Mismatch {
        path: PathBuf,
        source: tokio_rustls::rustls::Error,
    },
}

/// The TLS side of the listener: a certificate and key from PEM files, swapped whole on
/// reload.
pub struct Tls {
    files: TlsFiles,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl Tls {
    /// Read the certificate chain and key.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            acceptor: ArcSwap::from_pointee(acceptor(files)?),
            files: files.clone(),
        }))
    }

    /// Read the files again; on any error the certificate served stays as it was.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.acceptor.store(Arc::new(acceptor(&self.files)?));
        Ok(())
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let path = || files.cert.clone();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|source| TlsError::ReadCertificate {
            path: path(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Certificate {
            path: path(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Mismatch {
            path: path(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept connections and serve `app` on each until `shutdown` flips to `true`; then
/// stop accepting and ask every open HTTP connection to finish its current request.
/// Upgraded WebSockets are not tracked here: they watch the same signal themselves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(limits.max_head_bytes.max(MIN_HEAD_BYTES))
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES) + MIN_HEAD_BYTES);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            down = shutdown.wait_for(|down| *down) => {
                drop(down);
                return;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE) and the like: retrying at once would
                // spin on the same error while connections close and free some.
                tracing::warn!(error = %e, "accept failed; pausing accepts for 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Deliveries are small frames written as they come: Nagle's algorithm would
        // hold each behind the previous one's ACK (tens of ms with delayed ACKs).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let connection = Connection {
            peer,
            builder: builder.clone(),
            app: app.clone(),
            max_header_line_bytes: limits.max_header_line_bytes,
            shutdown: shutdown.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(tcp));
            }
            Some(tls) => {
                let acceptor = tls.acceptor.load_full();
                let handshake_timeout = limits.head_timeout;
                tokio::spawn(async move {
                    // The handshake is part of what a client must finish in time.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => {
                            metrics::counter!("wss_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("wss_http_head_timeouts_total").increment(1);
                            tracing::debug!(%peer, "TLS handshake did not finish in time");
                        }
                    }
                });
            }
        }
    }
}

/// One accepted connection, plain or TLS, before its first request.
struct Connection {
    peer: SocketAddr,
    builder: http1::Builder,
    app: axum::Router,
    max_header_line_bytes: usize,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            builder,
            app,
            max_header_line_bytes,
            shutdown,
        } = self;
        serve_connection(io, peer, builder, app, max_header_line_bytes, shutdown).await
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    builder: http1::Builder,
    app: axum::Router,
    max_header_line_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let refused = oversized_header(&request, max_header_line_bytes);
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            if let Some(name) = refused {
                metrics::counter!("wss_http_heads_refused_total", "reason" => "header_too_large")
                    .increment(1);
                tracing::info!(%peer, header = %name, "refused a request with an oversized header (431)");
                return Ok::<_, Infallible>(too_large(&name, max_header_line_bytes));
            }
            app.call(request.map(Body::new)).await
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let shut_down = async move {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shut_down => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("wss_http_head_timeouts_total").increment(1);
            tracing::debug!(%peer, "closed a connection that did not send a request head in time");
        } else if e.is_parse_too_large() {
            metrics::counter!("wss_http_heads_refused_total", "reason" => "head_too_large")
                .increment(1);
            tracing::info!(%peer, "refused a request head over the size limit (431)");
        } else {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}

/// The first header longer than the per-line limit, if any.
fn oversized_header(request: &Request<Incoming>, max: usize) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|(name, value)| name.as_str().len() + value.len() > max)
        .map(|(name, _)| name.as_str().to_string())
}

fn too_large(name: &str, max: usize) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "header `{name}` is longer than {max} bytes\n"
    )));
    *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    response
}
