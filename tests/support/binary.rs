//! The built binary as a process: spawned with none of the tester's engine
//! environment, its stderr (the log) collected line by line, its address and node id
//! read from the `listening` line, signalled and stopped by PID (our own child only).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variables the binary reads that would change what it serves; the
/// tester's own must not leak in. A command that sets one keeps it.
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
    "WSS_API_KEYS_FILE",
    "WSS_IDLE_TIMEOUT",
    "WSS_PING_INTERVAL",
    "WSS_SHUTDOWN_TIMEOUT",
    "WSS_RESUME_TTL",
    "WSS_RESUME_MAX_REPLAY",
];

/// Clear [`ENGINE_ENV`] (except what `cmd` sets itself) and colours.
pub fn without_engine_env(cmd: &mut Command) {
    let explicit: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
    for var in ENGINE_ENV {
        if !explicit.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.env("NO_COLOR", "1");
}

/// `wss-engine --config DIR --listen 127.0.0.1:0 ARGS…`, for a test that adds its own
/// arguments or environment before [`spawn_command`].
pub fn binary_command(pack: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
    cmd.arg("--config")
        .arg(pack)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    cmd
}

/// Start `wss-engine --config DIR --listen 127.0.0.1:0 ARGS…` and wait (bounded) for its
/// `listening: ws://ADDR/ws` log line.
pub fn spawn_binary(pack: &Path, args: &[&str]) -> BinaryServer {
    spawn_command("wss-engine", binary_command(pack, args))
}

/// Send a signal by PID with the system `kill` (no libc dependency).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Wait (bounded) for a child to exit; `None` if it is still running at the deadline.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
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

/// One `wss-engine` process, killed when dropped (its last log lines are printed if
/// the test panicked).
pub struct BinaryServer {
    /// A label for messages: `wss-engine`, `n1`, …
    pub name: String,
    pub addr: SocketAddr,
    /// The node id (from the `listening` log line).
    pub id: String,
    child: Child,
    /// Every stderr line so far (the log), collected by a reader thread.
    log: Arc<Mutex<Vec<String>>>,
}

/// Start a prepared command: the binary with its arguments, or a wrapper that runs it
/// (`ip netns exec NS wss-engine …`, which execs, so the PID is the binary's). Its
/// stderr is collected; it logs at `WSS_LOG` if the command sets it, else at
/// `WSS_TEST_LOG` or `info`. Returns once it logged its address (bounded); it may not
/// be ready yet (`/readyz`).
pub fn spawn_command(name: &str, mut cmd: Command) -> BinaryServer {
    without_engine_env(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !cmd.get_envs().any(|(k, _)| k == "WSS_LOG") {
        cmd.env(
            "WSS_LOG",
            std::env::var("WSS_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
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
            panic!("{name} never logged `listening: ws://…/ws`; stderr:\n{seen}");
        }
    };
    BinaryServer {
        name: name.to_string(),
        addr,
        id: id.unwrap_or_default(),
        child,
        log,
    }
}

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

/// `(addr, node id)` from a `listening: ws://ADDR/ws … node=ID` log line (`wss://`
/// too; the text format names the node).
fn listening_line(line: &str) -> Option<(SocketAddr, Option<String>)> {
    let rest = &line[line.find("listening: ws")?..];
    let rest = &rest[rest.find("://")? + 3..];
    let addr = rest[..rest.find("/ws")?].parse().ok()?;
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .map(|s| s.trim_matches('"').to_string());
    Some((addr, id))
}

impl BinaryServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still the one we started and has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send signal `name` (`TERM`, `HUP`, `INT` …).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// SIGSTOP: the process keeps its sockets and answers nothing (a stalled VM).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`BinaryServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL and reap: the process gets no chance to deregister or clean up.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait (bounded) for the process to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match wait_child(&mut self.child, within) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {within:?}; log:\n{}",
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
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ({}) ----\n{}",
                self.name,
                self.id,
                self.log_tail(30)
            );
        }
    }
}
