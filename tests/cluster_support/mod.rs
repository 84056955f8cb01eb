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

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one expected frame may take to arrive, across nodes, in a debug build on a
/// loaded 2-core machine. A passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for: long enough for a delivery already in
/// flight through Redis to show up on loopback.
pub const QUIET: Duration = Duration::from_millis(500);

/// The HS256 secret nodes started by [`Cluster::start_with_jwt`] verify tokens with.
pub const JWT_SECRET: &str = "cluster-test-secret";

pub mod backend;
#[path = "../support/client.rs"]
mod client;
pub use client::*;

mod topology;
mod tracked;
#[allow(unused_imports)]
pub use topology::{
    cluster_mode, AnyConnection, Redis, RedisCluster, Sentinel, NODE_TIMEOUT_MS, SENTINEL_MASTER,
};
#[allow(unused_imports)]
pub use tracked::{Position, Tracked};

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
    /// More arguments (a Redis Cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    /// Start on a free port and wait (bounded) until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut last = String::new();
        // A free port can be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("a directory for redis-server"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
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
            .args(&self.extra)
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
        self.try_conn()
            .is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
    }

    /// A connection if the server answers soon, `None` if not (it may be down on purpose).
    pub fn try_conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(conn)
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
    "WSS_RESUME_TTL",
    "WSS_RESUME_MAX_REPLAY",
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
        Self::spawn_with_env(name, pack, redis_url, prefix, args, &[])
    }

    /// [`Node::spawn`] with more environment variables (fault-injection hooks).
    pub fn spawn_with_env(
        name: &str,
        pack: &Path,
        redis_url: &str,
        prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
        cmd.arg("--config")
            .arg(pack)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--redis", redis_url])
            .args(["--redis-prefix", prefix])
            .args(args)
            .envs(env.iter().copied());
        Self::spawn_command(name, cmd)
    }

    /// Start a node from a command the caller built: the binary with its arguments, or
    /// a wrapper that runs it (`ip netns exec NS wss-engine …`, which execs, so the PID
    /// is the node's). The engine's environment variables are cleared unless the
    /// command sets them; its stderr is collected. Returns once it logged its address.
    pub fn spawn_command(name: &str, mut cmd: Command) -> Node {
        let explicit: Vec<std::ffi::OsString> =
            cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
        for var in ENGINE_ENV {
            if !explicit.iter().any(|k| k == var) {
                cmd.env_remove(var);
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !cmd.get_envs().any(|(k, _)| k == "WSS_LOG") {
            cmd.env("WSS_LOG", "info");
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
        Client::connect(&self.url_with_token(&token(JWT_SECRET, user, 3600))).await
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

    /// SIGSTOP: the process keeps its sockets and answers nothing (a stalled VM).
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGHUP: reload the pack.
    pub fn sighup(&self) {
        signal(self.pid(), "HUP");
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
    pub redis: Redis,
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
        Self::start_on(Redis::start(), n, pack, args).await
    }

    /// [`Cluster::start_pack`] on a Redis of the caller's choice.
    pub async fn start_on(redis: Redis, n: usize, pack: &Path, args: &[&str]) -> Cluster {
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
        self.add_node_with_env(pack, &[]).await
    }

    /// [`Cluster::add_node`] with more environment variables.
    pub async fn add_node_with_env(&mut self, pack: Option<&Path>, env: &[(&str, &str)]) -> &Node {
        let name = format!("n{}", self.nodes.len() + 1);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let node = Node::spawn_with_env(
            &name,
            pack.unwrap_or(&self.pack),
            &self.redis.url(),
            &self.prefix,
            &args,
            env,
        );
        node.wait_ready(Duration::from_secs(20)).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// A prefixed key or channel name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A per-room key (`room:`, `pos:`, `hist:`) as the backend names it: on a Redis
    /// Cluster the room is the hash tag.
    pub fn room_key(&self, kind: &str, room: &str) -> String {
        if self.redis.is_cluster() {
            format!("{}{kind}{{{room}}}", self.prefix)
        } else {
            format!("{}{kind}{room}", self.prefix)
        }
    }

    /// A state key's value (`s:`) or version (`v:`) key as the backend names it: on a
    /// Redis Cluster a key without a hash tag of its own is its own tag.
    pub fn state_key(&self, kind: &str, key: &str) -> String {
        let has_tag = key
            .split_once('{')
            .is_some_and(|(_, rest)| rest.find('}').is_some_and(|end| end > 0));
        if self.redis.is_cluster() && !has_tag {
            format!("{}{kind}{{{key}}}", self.prefix)
        } else {
            format!("{}{kind}{key}", self.prefix)
        }
    }

    /// The current JSON value of state key `key`, read straight from Redis.
    pub fn state_json(&self, key: &str) -> Option<Value> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.state_key("s:", key))
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
