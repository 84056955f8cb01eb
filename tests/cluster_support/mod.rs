//! Helpers for the `cluster_*` tests: a real `redis-server` and real `wss-engine`
//! processes, WebSocket clients that speak the protocol, and bounded waits.
//!
//! - [`RedisServer`]: our own `redis-server` on a free port (never the machine's shared
//!   one), killed by PID when dropped; it can be SIGKILLed and restarted on the same port.
//! - [`Node`]: the built binary with `--redis`, a unique key prefix per test, killed when
//!   dropped (its log is printed if the test panicked).
//! - [`Cluster`]: one Redis plus N nodes, the usual starting point.
//! - [`Client`]: `$welcome`, acks, deliveries and closes, every read bounded.
//! - [`serial`]: a cross-process lock, so tests that start nodes run one at a time even
//!   under `cargo nextest` (one process per test) on a 2-core machine.

// Each `tests/cluster_*.rs` file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one expected frame may take to arrive, across nodes, in a debug build on a
/// loaded 2-core machine. A passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for: long enough for a delivery already in
/// flight through Redis to show up on loopback.
pub const QUIET: Duration = Duration::from_millis(500);

/// The HS256 secret nodes started by [`Cluster::start_with_jwt`] verify tokens with.
pub const JWT_SECRET: &str = "cluster-test-secret";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A pack under `tests/packs/cluster/`.
pub fn pack(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs/cluster")
        .join(name)
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix(tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t{}-{nanos:x}-{}-{tag}:",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port nobody listens on right now (bound and released; the short race is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Held for the whole of a test that starts nodes: tests run one at a time, across test
/// threads and across processes, so at most one cluster (≤ 3 nodes) runs at once.
pub struct SerialGuard {
    _file: std::fs::File,
}

pub fn serial() -> SerialGuard {
    let path = std::env::temp_dir().join("wss-engine-cluster-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the cluster test lock file");
    // Bounded: the longest cluster test takes about a minute; many queued ones more.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        match file.try_lock() {
            Ok(()) => return SerialGuard { _file: file },
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("could not take {} : {e}", path.display()),
        }
    }
}

/// Send a signal by PID with the system `kill` (no libc dependency).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Wait (bounded) for a child to exit; `None` if it is still running at the deadline.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("poll a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------

/// A `redis-server` of this test: no persistence, its own port and directory.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start on a free port and wait (bounded) until it answers PING.
    pub fn start() -> Self {
        let mut last = String::new();
        // A free port can be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("a directory for redis-server"),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server (is it installed?): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                return Err(format!("redis-server on {} exited: {status}", self.port));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on {} never answered PING", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// SIGKILL (no shutdown, no save) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: Redis keeps its data and its sockets but answers nothing, like a
    /// stalled or partitioned server. Its clock (and so key expiry) keeps running.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Start again, empty, on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart needs a stopped redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("redis-server restart on {}: {e}; retrying", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("could not restart redis-server: {e}"),
            }
        }
    }

    /// A plain connection for inspecting keys (with this test's prefix), bounded.
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test's redis-server");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        conn.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        conn
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// wss-engine nodes
// ---------------------------------------------------------------------------------------

/// One `wss-engine` process.
pub struct Node {
    /// A label for messages: `n1`, `n2`, …
    pub name: String,
    pub addr: SocketAddr,
    /// The node id (from the `listening` log line).
    pub id: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// Environment variables the binary reads; the test's own environment must not leak in.
const ENGINE_ENV: &[&str] = &[
    "WSS_CONFIG",
    "WSS_LISTEN",
    "SERVER_PORT",
    "REDIS_URL",
    "REDIS_SERVER",
    "WSS_REDIS_PREFIX",
    "WSS_NODE_TTL",
    "WSS_LOG_FORMAT",
    "WSS_JWT_SECRET",
    "WSS_AUTH_REQUIRED",
    "WSS_IDLE_TIMEOUT",
    "WSS_PING_INTERVAL",
    "WSS_SHUTDOWN_TIMEOUT",
];

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(addr, node id)` from the `listening: ws://ADDR/ws … node=ID` log line.
fn listening_line(line: &str) -> Option<(SocketAddr, Option<String>)> {
    let rest = &line[line.find("listening: ws://")? + "listening: ws://".len()..];
    let addr = rest[..rest.find("/ws")?].parse().ok()?;
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .map(|s| s.trim_matches('"').to_string());
    Some((addr, id))
}

impl Node {
    /// `wss-engine --config PACK --listen 127.0.0.1:0 --redis URL --redis-prefix P ARGS…`;
    /// returns once it logged its address (bounded). It may not be ready yet: see
    /// [`Node::wait_ready`].
    pub fn spawn(name: &str, pack: &Path, redis_url: &str, prefix: &str, args: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
        cmd.arg("--config")
            .arg(pack)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--redis", redis_url])
            .args(["--redis-prefix", prefix])
            .args(args)
            .env("NO_COLOR", "1")
            .env("WSS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in ENGINE_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("spawn the wss-engine binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(found) = listening_line(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(found);
                    }
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let (addr, id) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let seen = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                panic!("node {name} never logged `listening: ws://…/ws`; stderr:\n{seen}");
            }
        };
        Node {
            name: name.to_string(),
            addr,
            id: id.unwrap_or_default(),
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url_with_token(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Connect authenticated as `user` (HS256 token with [`JWT_SECRET`]).
    pub async fn connect_as(&self, user: &str) -> Client {
        Client::connect(&self.url_with_token(&token(JWT_SECRET, user))).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// The HTTP status of `path`, or `None` if the node does not answer in time.
    pub async fn status(&self, path: &str) -> Option<u16> {
        try_http_get(self.addr, path, Duration::from_secs(2))
            .await
            .map(|(s, _)| s)
    }

    /// Wait (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.status("/readyz").await == Some(200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} was not ready within {within:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still the one we started and has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// SIGKILL and reap: the node gets no chance to deregister or clean up.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait (bounded) for the process to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match wait_child(&mut self.child, within) {
            Some(status) => status,
            None => panic!(
                "node {} did not exit within {within:?}; log:\n{}",
                self.name,
                self.log_tail(40)
            ),
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log[log.len().saturating_sub(lines)..].join("\n")
    }

    /// The sum of every sample of a Prometheus metric on this node (0 if absent).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics on {}", self.name);
        metric_sum(&body, name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of node {} ({}) ----\n{}",
                self.name,
                self.id,
                self.log_tail(30)
            );
        }
    }
}

/// Sum the samples of `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One Redis and N nodes of the same pack under a prefix of their own.
pub struct Cluster {
    // Field order is drop order: nodes go before the Redis they talk to.
    pub nodes: Vec<Node>,
    pub redis: RedisServer,
    pub prefix: String,
    pub pack: PathBuf,
    pub args: Vec<String>,
}

impl Cluster {
    /// `n` nodes serving `tests/packs/cluster/basic`, each ready (bounded).
    pub async fn start(n: usize, args: &[&str]) -> Cluster {
        Self::start_pack(n, &pack("basic"), args).await
    }

    /// Like [`Cluster::start`], the nodes verifying JWTs signed with [`JWT_SECRET`].
    pub async fn start_with_jwt(n: usize) -> Cluster {
        Self::start(n, &["--jwt-secret", JWT_SECRET]).await
    }

    pub async fn start_pack(n: usize, pack: &Path, args: &[&str]) -> Cluster {
        let redis = RedisServer::start();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            prefix: unique_prefix("c"),
            redis,
            pack: pack.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            cluster.add_node(None).await;
        }
        cluster
    }

    /// Start one more node (optionally with another pack) and wait until it is ready.
    pub async fn add_node(&mut self, pack: Option<&Path>) -> &Node {
        let name = format!("n{}", self.nodes.len() + 1);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let node = Node::spawn(
            &name,
            pack.unwrap_or(&self.pack),
            &self.redis.url(),
            &self.prefix,
            &args,
        );
        node.wait_ready(Duration::from_secs(20)).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// A prefixed key or channel name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The current JSON value of state key `key`, read straight from Redis.
    pub fn state_json(&self, key: &str) -> Option<Value> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.key(&format!("s:{key}")))
            .query(&mut self.redis.conn())
            .expect("GET a state key");
        raw.map(|s| serde_json::from_str(&s).expect("state values are JSON"))
    }
}

/// The output of one CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `wss-engine ARGS…` to completion, bounded by `within`.
pub fn run_cli(args: &[&str], within: Duration) -> CliRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ENGINE_ENV {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn the wss-engine binary");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = wait_child(&mut child, within) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`wss-engine {}` did not finish within {within:?}",
            args.join(" ")
        );
    };
    CliRun {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP and JWT
// ---------------------------------------------------------------------------------------

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

/// [`try_http_get`], failing the test if there is no answer within [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path, WAIT)
        .await
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: no answer within {WAIT:?}"))
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

/// An HS256 token for `sub`, valid for an hour.
pub fn token(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "exp": now + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a test token")
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

/// Small buffers on the client too (DESIGN.md: tungstenite's 128 KiB default read buffer
/// is zero-filled on every read).
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A protocol client: reads `$welcome` on connect; acks and deliveries on demand.
pub struct Client {
    pub ws: Ws,
    /// This connection's id and node, from `$welcome`.
    pub conn: String,
    pub node: String,
    /// Frames read while waiting for an ack, handed out by `recv` first.
    backlog: VecDeque<Value>,
    next_id: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    Code(u16, String),
    NoCode,
    Dropped(String),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true),
        )
        .await
        .unwrap_or_else(|_| panic!("WebSocket upgrade to {url} took more than {WAIT:?}"))
        .unwrap_or_else(|e| panic!("WebSocket upgrade to {url} failed: {e}"));
        let mut client = Client {
            ws,
            conn: String::new(),
            node: String::new(),
            backlog: VecDeque::new(),
            next_id: 0,
        };
        let welcome = client.recv().await;
        assert_eq!(welcome["event"], "$welcome", "first frame: {welcome}");
        client.conn = welcome["data"]["conn"]
            .as_str()
            .expect("$welcome has a conn id")
            .to_string();
        client.node = welcome["data"]["node"]
            .as_str()
            .expect("$welcome has a node id")
            .to_string();
        client
    }

    pub async fn send_json(&mut self, value: Value) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(value.to_string())))
            .await
            .expect("send took too long")
            .expect("send a text frame");
    }

    /// Send an event with a fresh id and return its ack (bounded). Frames that arrive
    /// first are kept for `recv`, in order.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        self.call_within(event, data, WAIT).await
    }

    pub async fn call_within(&mut self, event: &str, data: Value, within: Duration) -> Value {
        self.next_id += 1;
        let id = json!(format!("c{}", self.next_id));
        self.send_json(json!({ "event": event, "data": data, "id": id }))
            .await;
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let frame = self.read_until(deadline).await.unwrap_or_else(|| {
                panic!(
                    "{}: no ack for `{event}` within {within:?}; saw {skipped:?}",
                    self.conn
                )
            });
            if frame.get("ack") == Some(&id) {
                self.backlog.extend(skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// `call`, asserting success; returns the reply.
    pub async fn ok(&mut self, event: &str, data: Value) -> Value {
        let ack = self.call(event, data.clone()).await;
        assert_eq!(
            ack["ok"], true,
            "{}: `{event}` {data} failed: {ack}",
            self.conn
        );
        ack["data"].clone()
    }

    /// The next frame (backlog first), failing after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("{}: no frame within {WAIT:?}", self.conn),
        }
    }

    /// The next frame, which must be the delivery `event`; returns its data.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(
            frame["event"], event,
            "{}: expected `{event}`, got {frame}",
            self.conn
        );
        frame["data"].clone()
    }

    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        self.read_until(tokio::time::Instant::now() + within).await
    }

    /// Nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(frame) = self.try_recv(QUIET).await {
            panic!("{}: expected no frame, got {frame}", self.conn);
        }
    }

    async fn read_until(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{}: a text frame that is not JSON ({e}): {text}", self.conn)
                    }))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(other)) => panic!("{}: unexpected frame {other:?}", self.conn),
                Some(Err(e)) => panic!("{}: stream error: {e}", self.conn),
                None => panic!("{}: stream ended while a frame was expected", self.conn),
            }
        }
    }

    /// Read (discarding data frames) until the server closes, bounded by `within`.
    pub async fn recv_close(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        self.backlog.clear();
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("{} was not closed within {within:?}", self.conn),
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed::Code(u16::from(code), reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return Closed::NoCode,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Closed::Dropped(e.to_string()),
                None => return Closed::Dropped("end of stream".into()),
            }
        }
    }

    /// Close with 1000 and wait (bounded) for the server to finish.
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
