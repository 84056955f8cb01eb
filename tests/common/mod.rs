//! Helpers shared by the `ws_*` integration tests.
//!
//! Every test starts its own server on `127.0.0.1:0` (in-process through
//! `server::run`, or the built binary for CLI, signals and logs), so tests run in
//! parallel without fixed ports. Every wait in here is bounded: a test that does not get
//! what it expects fails with a message instead of hanging.

// Each `tests/ws_*.rs` file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use wss_engine::engine::script::{ScriptLimits, ScriptRuntime};
use wss_engine::server::{self, ServerConfig};

/// How long any single expected frame may take. Generous for a loaded 2-core machine in
/// a debug build; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long "nothing arrives" is watched for. Long enough that a delivery already in
/// flight would show up on loopback, short enough to keep tests quick.
pub const QUIET: Duration = Duration::from_millis(300);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client buffers as small as the server's (DESIGN.md: tungstenite's 128 KiB default
/// read buffer is zero-filled on every read).
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Write a pack (one `pack.yaml` holding `yaml`) to a fresh temporary directory.
pub fn write_pack(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create a temporary pack directory");
    std::fs::write(dir.path().join("pack.yaml"), yaml).expect("write pack.yaml");
    dir
}

/// Load a pack directory the way the server does, failing the test with every
/// diagnostic if the pack has errors.
pub fn load_pack(dir: &Path) -> wss_engine::config::Pack {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    match wss_engine::config::load(dir, &runtime) {
        Ok((pack, _warnings)) => pack,
        Err(diags) => {
            let all: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            panic!("test pack does not load:\n{}", all.join("\n"));
        }
    }
}

/// A server running in this process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _pack: tempfile::TempDir,
}

/// Start a server for an inline pack with default limits.
pub async fn start(yaml: &str) -> TestServer {
    start_with(yaml, |_| {}).await
}

/// Start a server for an inline pack, letting the test adjust limits, auth, etc.
pub async fn start_with(yaml: &str, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    if std::env::var_os("WSS_TEST_LOG").is_some() {
        server::init_tracing(wss_engine::cli::LogFormat::Text);
    }
    let dir = write_pack(yaml);
    let mut config = ServerConfig::new(load_pack(dir.path()));
    // Tests that do not shut down explicitly must not keep the runtime busy for long.
    config.shutdown_timeout = Duration::from_secs(2);
    adjust(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("listener address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task: Some(task),
        _pack: dir,
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Start the graceful shutdown; returns once `server::run` returned (bounded).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(joined) => joined?,
            Err(_) => anyhow::bail!("server did not stop within 10 s of shutdown"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A WebSocket client that knows the protocol's shape: `$welcome`, acks, events.
pub struct Client {
    pub ws: Ws,
    /// This connection's id, from `$welcome`.
    pub conn: String,
    pub welcome: Value,
    /// Frames read while waiting for a particular ack, handed out by `recv` first.
    backlog: VecDeque<Value>,
    next_id: u64,
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
        let ws = Self::open(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade to {url} failed: {e}"));
        Self::from_ws(ws).await
    }

    /// The upgrade alone, so tests can inspect a refusal (e.g. HTTP 401).
    pub async fn open(url: &str) -> Result<Ws, tungstenite::Error> {
        Self::open_request(url).await
    }

    pub async fn open_request(
        request: impl tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<Ws, tungstenite::Error> {
        match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true),
        )
        .await
        {
            Ok(result) => result.map(|(ws, _response)| ws),
            Err(_) => panic!("WebSocket upgrade took more than {WAIT:?}"),
        }
    }

    /// Wrap an upgraded socket and read `$welcome`.
    pub async fn from_ws(ws: Ws) -> Client {
        let mut client = Client {
            ws,
            conn: String::new(),
            welcome: Value::Null,
            backlog: VecDeque::new(),
            next_id: 0,
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
        client.welcome = welcome;
        client
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("send took too long")
            .expect("send a text frame");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes)))
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
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        self.send_json(json!({ "event": event, "data": data, "id": id }))
            .await;
        self.ack(&json!(id)).await
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
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let frame = self
                .read_frame_until(deadline)
                .await
                .unwrap_or_else(|| panic!("no ack for {id} within {WAIT:?}; saw {skipped:?}"));
            if frame.get("ack") == Some(id) {
                self.backlog.extend(skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// A round trip that proves the server has processed everything sent before: an
    /// unknown event's ack can only come after those.
    pub async fn sync(&mut self) {
        let err = self.fail("zz.sync-probe", Value::Null).await;
        assert_eq!(err["code"], "unknown_event", "sync probe: {err}");
    }

    /// The next JSON frame (backlog first), failing the test after `WAIT`.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        match self.read_frame_until(deadline).await {
            Some(v) => v,
            None => panic!("no frame within {WAIT:?} on {}", self.conn),
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

    /// Assert that no frame arrives for `QUIET`.
    pub async fn expect_silence(&mut self) {
        self.expect_silence_for(QUIET).await;
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
                    return Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a text frame that is not JSON ({e}): {text}")
                    }))
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
                Some(Ok(Message::Text(_) | Message::Binary(_))) => frames += 1,
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
        self.recv_close_within(WAIT).await.0
    }

    /// Waits for a close frame with `code` and returns its reason.
    pub async fn recv_close_code(&mut self, code: u16) -> String {
        match self.recv_close().await {
            Closed::Frame(got, reason) if got == code => reason,
            other => panic!("{}: expected close {code}, got {other:?}", self.conn),
        }
    }

    /// Close from the client side with 1000 and wait (bounded) for the server's reply.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            WAIT,
            self.ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })),
        )
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// A tiny HTTP/1.1 GET over a plain TCP stream: `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} took more than {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no header/body separator in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
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

/// The built binary, serving a pack on an ephemeral port.
pub struct BinaryServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far (the log), collected by a reader thread.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Start `wss-engine --config DIR --listen 127.0.0.1:0 ARGS…` and wait (bounded) for the
/// `listening: ws://ADDR/ws` log line.
pub fn spawn_binary(pack: &Path, args: &[&str]) -> BinaryServer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wss-engine"))
        .arg("--config")
        .arg(pack)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "WSS_LOG",
            std::env::var("WSS_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("REDIS_URL")
        .env_remove("WSS_LISTEN")
        .env_remove("SERVER_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the wss-engine binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listen_addr_in(&line) {
                if let Some(tx) = addr_tx.take() {
                    let _ = tx.send(addr);
                }
            }
            lines.lock().expect("log lock").push(line);
        }
    });
    let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let seen = log.lock().expect("log lock").join("\n");
            panic!("the binary never logged `listening: ws://…/ws`; stderr:\n{seen}");
        }
    };
    BinaryServer { child, addr, log }
}

/// The address in a `listening: ws://ADDR/ws` log line (text or JSON logs).
pub fn listen_addr_in(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening: ws://")? + "listening: ws://".len()..];
    rest[..rest.find("/ws")?].parse().ok()
}

impl BinaryServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by PID with the system `kill` (no libc dependency).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the binary did not exit within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        // Only our own child, by its handle; a test that already reaped it is a no-op.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
