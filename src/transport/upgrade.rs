//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's extractor.
//!
//! axum's `WebSocket` hides the TCP stream, and two things need it:
//!
//! - fan-out: a delivery is written to the socket by whoever delivers it
//!   ([`ConnLink`]), so tungstenite only reads, and its own writes (pong replies, the
//!   close handshake) go through the same link to stay in order;
//! - a frame past the hard size cap is refused from its header while the client is
//!   still sending the payload. Dropping the socket then, with unread bytes, makes the
//!   kernel answer with an RST, which fails the client's send and can destroy our 1009
//!   close frame before the client reads it. [`linger`] reads and discards the rest.
//!
//! So the server runs hyper's HTTP/1.1 connection itself (`server.rs`) and the upgraded
//! connection is downcast back to its `TcpStream`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::engine::router::ConnLink;

pub type Socket = WebSocketStream<SocketIo>;

/// An upgraded connection before the WebSocket protocol starts on it.
pub struct Raw {
    pub tcp: Arc<TcpStream>,
    /// Bytes the client sent right behind its handshake, already read by hyper.
    read_ahead: Bytes,
}

impl Raw {
    pub async fn into_socket(self, link: Arc<ConnLink>, config: WebSocketConfig) -> Socket {
        let io = SocketIo {
            tcp: self.tcp,
            link,
        };
        WebSocketStream::from_partially_read(
            io,
            self.read_ahead.to_vec(),
            Role::Server,
            Some(config),
        )
        .await
    }
}

/// tungstenite's view of the socket: reads come from the TCP stream, writes go through
/// the connection's link (see the module doc).
pub struct SocketIo {
    tcp: Arc<TcpStream>,
    link: Arc<ConnLink>,
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared: the next poll registers for the next wake.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.link.push_control(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    /// The link's writer flushes; tungstenite's flush only hands bytes over.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A validated upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl Upgrade {
    /// Checks the handshake headers; the error is the status to answer instead.
    pub fn from_request(request: &mut Request) -> Result<Self, (StatusCode, &'static str)> {
        let refuse = |message: &'static str| (StatusCode::BAD_REQUEST, message);
        if request.method() != Method::GET {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET"));
        }
        let headers = request.headers();
        if !header_has_token(headers, header::CONNECTION, "upgrade")
            || !header_has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse("expected a WebSocket upgrade request"));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(refuse("unsupported Sec-WebSocket-Version: expected 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| refuse("missing Sec-WebSocket-Key"))?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or_else(|| refuse("connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }

    /// Answers 101 and runs `serve` on the connection once the client has switched.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Raw) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        tokio::spawn(async move {
            let upgraded = match self.on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
            };
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    serve(Raw {
                        tcp: Arc::new(parts.io.into_inner()),
                        read_ahead: parts.read_buf,
                    })
                    .await
                }
                // Only if the server stopped serving plain TCP connections (server.rs).
                Err(_) => tracing::error!("upgraded connection is not a TCP stream; dropped"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// `Connection: keep-alive, Upgrade` is as valid as `Connection: upgrade`.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads and discards what the client still sends, until it stops (EOF, or nothing for
/// `quiet`) or `deadline` passes, so closing the socket afterwards sends a FIN and not
/// an RST. Memory stays at one small buffer whatever the client sends.
pub async fn linger(socket: &mut Socket, quiet: Duration, deadline: Duration) {
    let stream = &*socket.get_ref().tcp;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(deadline, async {
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, read_some(stream, &mut sink)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn read_some(tcp: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        tcp.readable().await?;
        match tcp.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            read => return read,
        }
    }
}
