//! The WebSocket and HTTP client every integration test speaks through: `$welcome`,
//! acks, deliveries and closes, every read bounded by the client's [`Bounds`] (a
//! cluster's nodes get longer ones than a server of this process; see
//! `cluster::Node::connect`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{BOUNDS, WAIT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Small client buffers, as the server's: tungstenite's default 128 KiB read buffer is
/// zero-filled on every read.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// How long a client waits for an expected frame, and watches for "nothing arrives".
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub wait: Duration,
    pub quiet: Duration,
}

/// A WebSocket client that knows the protocol's shape: `$welcome`, acks, events.
pub struct Client {
    pub ws: Ws,
    /// This connection's id and node, from `$welcome`.
    pub conn: String,
    pub node: String,
    pub welcome: Value,
    /// Frames read while waiting for a particular ack, handed out by `recv` first.
    backlog: VecDeque<Value>,
    next_id: u64,
    /// Text frames read from the socket so far, `$welcome` included.
    text_frames: usize,
    /// `$joined` / `$left` frames, set aside unless `membership_inline` is set: most
    /// tests are about deliveries and acks, and see membership only when they ask.
    pub memberships: VecDeque<Value>,
    /// Hand out `$joined` / `$left` in order with every other frame.
    pub membership_inline: bool,
    bounds: Bounds,
}

/// What the server did to a connection at its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// A close frame without a code.
    NoCode,
    /// The TCP stream ended or broke without a close frame.
    Dropped(String),
}

impl Client {
    /// Connect to `url` and read `$welcome`, which must be the first frame.
    pub async fn connect(url: &str) -> Client {
        Self::connect_bounded(url, BOUNDS).await
    }

    /// [`Client::connect`], every wait of this client bounded by `bounds`.
    pub async fn connect_bounded(url: &str, bounds: Bounds) -> Client {
        let ws = Self::upgrade(url, bounds.wait)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade to {url} failed: {e}"));
        Self::from_ws_bounded(ws, bounds).await
    }

    /// The upgrade alone, so tests can inspect a refusal (e.g. HTTP 401).
    pub async fn open(url: &str) -> Result<Ws, tungstenite::Error> {
        Self::open_request(url).await
    }

    pub async fn open_request(
        request: impl tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<Ws, tungstenite::Error> {
        Self::upgrade(request, WAIT).await
    }

    async fn upgrade(
        request: impl tungstenite::client::IntoClientRequest + Unpin,
        within: Duration,
    ) -> Result<Ws, tungstenite::Error> {
        match tokio::time::timeout(
            within,
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true),
        )
        .await
        {
            Ok(result) => result.map(|(ws, _response)| ws),
            Err(_) => panic!("WebSocket upgrade took more than {within:?}"),
        }
    }

    /// Wrap an upgraded socket and read `$welcome`.
    pub async fn from_ws(ws: Ws) -> Client {
        Self::from_ws_bounded(ws, BOUNDS).await
    }

    async fn from_ws_bounded(ws: Ws, bounds: Bounds) -> Client {
        let mut client = Client {
            ws,
            conn: String::new(),
            node: String::new(),
            welcome: Value::Null,
            backlog: VecDeque::new(),
            next_id: 0,
            text_frames: 0,
            memberships: VecDeque::new(),
            membership_inline: false,
            bounds,
        };
        let welcome = client.recv().await;
        assert_eq!(
            welcome["event"], "$welcome",
            "the first frame must be $welcome, got {welcome}"
        );
        client.conn = welcome["data"]["conn"]
            .as_str()
            .unwrap_or_else(|| panic!("$welcome without a conn id: {welcome}"))
            .to_string();
        client.node = welcome["data"]["node"]
            .as_str()
            .unwrap_or_else(|| panic!("$welcome without a node id: {welcome}"))
            .to_string();
        client.welcome = welcome;
        client
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(self.bounds.wait, self.ws.send(Message::text(text)))
            .await
            .expect("send took too long")
            .expect("send a text frame");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(self.bounds.wait, self.ws.send(Message::binary(bytes)))
            .await
            .expect("send took too long")
            .expect("send a binary frame");
    }

    /// Send an event without an id (no ack expected on success).
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_json(json!({ "event": event, "data": data }))
            .await;
    }

    /// Send an event with a fresh id and return its ack. Frames that arrive before the
    /// ack (deliveries, other acks) are kept for `recv`, in order.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        self.call_within(event, data, self.bounds.wait).await
    }

    /// `call`, waiting up to `within` for the ack.
    pub async fn call_within(&mut self, event: &str, data: Value, within: Duration) -> Value {
        self.next_id += 1;
        let id = json!(format!("t{}", self.next_id));
        self.send_json(json!({ "event": event, "data": data, "id": id }))
            .await;
        self.ack_within(&id, within).await
    }

    /// `call`, asserting success; returns the ack's `data` (the script's reply).
    pub async fn ok(&mut self, event: &str, data: Value) -> Value {
        let ack = self.call(event, data.clone()).await;
        assert_eq!(
            ack["ok"], true,
            "`{event}` with {data} should succeed, got {ack}"
        );
        ack.get("data")
            .cloned()
            .unwrap_or_else(|| panic!("a successful ack always has `data`: {ack}"))
    }

    /// `call`, asserting failure; returns the ack's `error` object.
    pub async fn fail(&mut self, event: &str, data: Value) -> Value {
        let ack = self.call(event, data.clone()).await;
        assert_eq!(
            ack["ok"], false,
            "`{event}` with {data} should fail, got {ack}"
        );
        assert!(
            ack.get("data").is_none(),
            "a failed ack carries no data: {ack}"
        );
        ack["error"].clone()
    }

    /// Read until the ack with `id`; everything before it goes to the backlog.
    pub async fn ack(&mut self, id: &Value) -> Value {
        self.ack_within(id, self.bounds.wait).await
    }

    async fn ack_within(&mut self, id: &Value, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let frame = self.read_frame_until(deadline).await.unwrap_or_else(|| {
                panic!(
                    "{}: no ack for {id} within {within:?}; saw {skipped:?}",
                    self.conn
                )
            });
            if frame.get("ack") == Some(id) {
                self.backlog.extend(skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// Text frames this client has read from its socket, `$welcome` included.
    pub fn frames_received(&self) -> usize {
        self.text_frames
    }

    /// A round trip that proves the server has processed everything sent before: an
    /// unknown event's ack can only come after those.
    pub async fn sync(&mut self) {
        let err = self.fail("zz.sync-probe", Value::Null).await;
        assert_eq!(err["code"], "unknown_event", "sync probe: {err}");
    }

    /// The next JSON frame (backlog first), failing the test after the wait bound.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        let wait = self.bounds.wait;
        match self
            .read_frame_until(tokio::time::Instant::now() + wait)
            .await
        {
            Some(v) => v,
            None => panic!("no frame within {wait:?} on {}", self.conn),
        }
    }

    /// The next frame, which must be the event `name`; returns its `data`.
    pub async fn recv_event(&mut self, name: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(
            frame["event"], name,
            "expected event `{name}` on {}, got {frame}",
            self.conn
        );
        frame["data"].clone()
    }

    /// The next frame, which must be a `$error` with `code`; returns its `data`.
    pub async fn recv_error(&mut self, code: &str) -> Value {
        let data = self.recv_event("$error").await;
        assert_eq!(data["code"], code, "expected $error {code}, got {data}");
        assert!(
            data["message"].as_str().is_some_and(|m| !m.is_empty()),
            "$error needs a message: {data}"
        );
        data
    }

    /// The next JSON frame if one arrives within `within`.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        self.read_frame_until(tokio::time::Instant::now() + within)
            .await
    }

    /// Assert that no frame arrives for the quiet bound.
    pub async fn expect_silence(&mut self) {
        self.expect_silence_for(self.bounds.quiet).await;
    }

    pub async fn expect_silence_for(&mut self, within: Duration) {
        if let Some(frame) = self.try_recv(within).await {
            panic!("{} expected no frame, got {frame}", self.conn);
        }
    }

    /// Read one text frame as JSON, skipping pings/pongs; `None` at the deadline.
    /// Panics on a close, a broken stream or a non-JSON frame: none of those is a frame
    /// the caller expected.
    async fn read_frame_until(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    self.text_frames += 1;
                    let frame: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a text frame that is not JSON ({e}): {text}")
                    });
                    let membership = matches!(frame["event"].as_str(), Some("$joined" | "$left"));
                    if membership && !self.membership_inline {
                        self.memberships.push_back(frame);
                        continue;
                    }
                    return Some(frame);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => {
                    panic!("server sent a binary frame of {} bytes", b.len())
                }
                Some(Ok(Message::Close(frame))) => {
                    panic!(
                        "{} was closed while a frame was expected: {frame:?}",
                        self.conn
                    )
                }
                Some(Err(e)) => panic!("{}: stream error while reading: {e}", self.conn),
                None => panic!("{}: stream ended while a frame was expected", self.conn),
            }
        }
    }

    /// Read (discarding data frames, counting them) until the server closes; bounded by
    /// `within`. Returns how the connection ended and how many text frames came first.
    pub async fn recv_close_within(&mut self, within: Duration) -> (Closed, usize) {
        self.recv_close_pacing(within, Duration::ZERO).await
    }

    /// [`Self::recv_close_within`] for a slow reader: a pause of `pace` after each data
    /// frame.
    pub async fn recv_close_pacing(&mut self, within: Duration, pace: Duration) -> (Closed, usize) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = self.backlog.len();
        self.backlog.clear();
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!(
                    "{} was not closed within {within:?} ({frames} frames read)",
                    self.conn
                ),
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    frames += 1;
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite queued our reply; it is only written while the stream
                    // is polled, so finish the handshake instead of making the server
                    // wait out its close grace period.
                    let _ = tokio::time::timeout_at(deadline, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    let how = match frame {
                        Some(CloseFrame { code, reason }) => {
                            Closed::Frame(u16::from(code), reason.to_string())
                        }
                        None => Closed::NoCode,
                    };
                    return (how, frames);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return (Closed::Dropped(e.to_string()), frames),
                None => return (Closed::Dropped("end of stream".into()), frames),
            }
        }
    }

    pub async fn recv_close(&mut self) -> Closed {
        self.recv_close_within(self.bounds.wait).await.0
    }

    /// Waits for a close frame with `code` and returns its reason.
    pub async fn recv_close_code(&mut self, code: u16) -> String {
        match self.recv_close().await {
            Closed::Frame(got, reason) if got == code => reason,
            other => panic!("{}: expected close {code}, got {other:?}", self.conn),
        }
    }

    /// Close from the client side with 1000 and wait (bounded) for the server's reply.
    /// The oldest frame set aside while waiting for an ack, if any.
    pub fn take_backlog(&mut self) -> Option<Value> {
        self.backlog.pop_front()
    }

    /// This connection's session, from `$welcome`.
    pub fn session(&self) -> String {
        self.welcome["data"]["session"]
            .as_str()
            .unwrap_or_else(|| panic!("$welcome without a session: {}", self.welcome))
            .to_string()
    }

    /// Send `$resume` for `session` with the client's `rooms` positions as its first
    /// frame; returns the ack (frames before it stay for `recv`, in order).
    pub async fn resume(&mut self, session: &str, rooms: Value) -> Value {
        self.next_id += 1;
        let id = json!(format!("r{}", self.next_id));
        self.send_json(json!({
            "event": "$resume",
            "data": { "session": session, "rooms": rooms },
            "id": id,
        }))
        .await;
        self.ack(&id).await
    }

    /// Drop the TCP connection without a closing handshake: a phone that lost its
    /// network, a laptop lid closed.
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }

    pub async fn close(mut self) {
        let wait = self.bounds.wait;
        let _ = tokio::time::timeout(
            wait,
            self.ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })),
        )
        .await;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// A tiny HTTP/1.1 GET: `(status, body)`, or `None` on any failure or after `within`.
pub async fn try_http_get(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(within, exchange).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// [`try_http_get`], failing the test if there is no answer within `WAIT`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_within(addr, path, WAIT).await
}

/// [`try_http_get`], failing the test if there is no answer within `within`.
pub async fn http_get_within(addr: SocketAddr, path: &str, within: Duration) -> (u16, String) {
    try_http_get(addr, path, within)
        .await
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: no answer within {within:?}"))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// An HS256 token for `sub`, expiring `exp_in_s` seconds from now (negative: expired).
pub fn token(secret: &str, sub: &str, exp_in_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let claims = json!({ "sub": sub, "exp": now + exp_in_s, "role": "tester" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a test token")
}

/// Poll `check` every 50 ms until it returns `Some`, or panic with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
