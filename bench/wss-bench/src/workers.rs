//! Worker processes: copies of this binary that hold clients for a coordinator, since
//! one process may hold at most 20,000 open files here (`idle --child`,
//! `storm --worker`).
//!
//! A worker reads its orders as lines on stdin and answers JSON lines on stdout; it
//! exits when its stdin closes, so none outlives the coordinator, and a coordinator
//! that leaves early (an error, a panic) reaps its workers on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::sync::mpsc;

/// What a worker said: its index and one JSON line, or `Value::Null` once its stdout
/// closed (it exited).
pub type Said = (usize, Value);

pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl Workers {
    /// Start one worker per command (stdin and stdout piped, stderr inherited); every
    /// JSON line a worker prints arrives on the returned channel.
    pub fn spawn(commands: Vec<Command>) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Said>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut workers = Workers {
            children: Vec::with_capacity(commands.len()),
            stdins: Vec::with_capacity(commands.len()),
        };
        for (w, mut cmd) in commands.into_iter().enumerate() {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().context("starting a worker process")?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("no worker stdout"))?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow!("no worker stdin"));
            workers.children.push(child);
            workers.stdins.push(stdin?);
            let tx = tx.clone();
            // A blocking reader per worker: pipes are few, and this keeps the
            // coordinator's runtime free for its own clients.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                        if tx.send((w, v)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send((w, Value::Null));
            });
        }
        Ok((workers, rx))
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Send one line to every worker.
    pub fn tell(&mut self, line: &str) {
        for stdin in &mut self.stdins {
            let _ = writeln!(stdin, "{line}").and_then(|_| stdin.flush());
        }
    }

    /// Close every stdin (each worker winds down on its own) and reap them all,
    /// killing any still running after `grace`.
    pub async fn release(&mut self, grace: Duration) {
        self.stdins.clear();
        let deadline = Instant::now() + grace;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.reap();
    }

    fn reap(&mut self) {
        for mut child in self.children.drain(..) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.reap();
    }
}

/// The first line of every worker (its "ready" report), within `timeout`.
pub async fn first_lines(
    said: &mut mpsc::UnboundedReceiver<Said>,
    workers: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first: Vec<Option<Value>> = vec![None; workers];
    let mut missing = workers;
    while missing > 0 {
        match tokio::time::timeout_at(deadline, said.recv()).await {
            Ok(Some((w, Value::Null))) if first.get(w).is_some_and(Option::is_none) => {
                bail!("worker {w} exited before reporting")
            }
            Ok(Some((w, v))) => {
                if let Some(slot @ None) = first.get_mut(w) {
                    *slot = Some(v);
                    missing -= 1;
                }
            }
            Ok(None) => bail!("the workers went away"),
            Err(_) => bail!("{missing} of {workers} workers did not report within {timeout:?}"),
        }
    }
    Ok(first.into_iter().flatten().collect())
}
