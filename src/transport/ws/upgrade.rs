//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's extractor.
//!
//! axum's `WebSocket` hides the TCP stream, and one close needs it: a frame past the
//! hard size cap is refused from its header while the client is still sending the
//! payload. Dropping the socket then, with unread bytes, makes the kernel answer with
//! an RST, which fails the client's send and can destroy our 1009 close frame before
//! the client reads it. Owning the stream lets [`linger`] read and discard the rest.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

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

    /// Answers 101 and runs `serve` on the socket once the client has switched.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        tokio::spawn(async move {
            match self.on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    serve(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
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
    let stream = socket.get_mut();
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(deadline, async {
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
