//! Helpers shared by the `ws_*` integration tests.
//!
//! Every test starts its own server on `127.0.0.1:0` (in-process through
//! `server::run`, or the built binary for CLI, signals and logs), so tests run in
//! parallel without fixed ports. Every wait in here is bounded: a test that does not get
//! what it expects fails with a message instead of hanging.

// Each `tests/ws_*.rs` file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use wss_engine::script::{ScriptLimits, ScriptRuntime};
use wss_engine::server::{self, ServerConfig};

/// How long any single expected frame may take. Generous for a loaded 2-core machine in
/// a debug build; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long "nothing arrives" is watched for. Long enough that a delivery already in
/// flight would show up on loopback, short enough to keep tests quick.
pub const QUIET: Duration = Duration::from_millis(300);

#[path = "../support/client.rs"]
mod client;
pub use client::*;

/// A port nobody listens on right now (bound and released; the short race is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
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
        Ok(loaded) => loaded.pack,
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
        wss_engine::commands::init_tracing(wss_engine::cli::LogFormat::Text);
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
    spawn_command(binary_command(pack, args))
}

/// `wss-engine --config DIR --listen 127.0.0.1:0 ARGS…`, stderr piped, with none of the
/// environment that would change what it serves (Redis, listen address, API keys file):
/// for a test that adds its own before [`spawn_command`].
pub fn binary_command(pack: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
    cmd.arg("--config")
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
        .env_remove("WSS_API_KEYS_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Spawn a prepared `wss-engine` command (stderr piped) and wait (bounded) for its
/// `listening: ws://…/ws` log line.
pub fn spawn_command(mut cmd: Command) -> BinaryServer {
    let mut child = cmd.spawn().expect("spawn the wss-engine binary");
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

/// The address in a `listening: ws://ADDR/ws` (or `wss://`) log line (text or JSON).
pub fn listen_addr_in(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening: ws")?;
    let rest = &line[at..];
    let rest = &rest[rest.find("://")? + 3..];
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

    /// The log once it holds a line with every one of `needles` (within 5 s: the server
    /// may log after it answered, and the reader thread collects lines on its own).
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log_text();
            if log
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
                || Instant::now() >= deadline
            {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
