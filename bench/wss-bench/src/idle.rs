//! Idle connections: open C connections, hold them, and read the server's RSS from
//! /proc to get the memory one idle connection costs.
//!
//! A process may have at most 20,000 open files on this machine, so with `--procs M`
//! the connections are held by M child processes of this binary (`idle --child`,
//! `crate::workers`), each reporting one line when its share is open; the parent holds none itself and only
//! measures. Connections rotate over several 127.0.0.x source addresses so ephemeral
//! ports never run out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::Read;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Protocol};
use crate::stats;
use crate::workers::{first_lines, Workers};
use crate::Common;

/// Child processes one run may start.
const MAX_PROCS: usize = 64;

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Pid of the server whose RSS is measured (VmRSS from /proc/<pid>/status).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Processes holding the connections (each stays under the open-files cap).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Seconds to wait after the last connection opened before reading the RSS.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds to hold the connections after the measurement.
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// Internal: run as a child holding connections until stdin closes.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: index offset of this child's connections (source address rotation).
    #[arg(long, hide = true, default_value_t = 0)]
    pub offset: usize,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Value> {
    if args.child {
        return child(args).await;
    }
    let procs = args.procs.clamp(1, MAX_PROCS);
    let before = match args.pid {
        Some(pid) => {
            Some(stats::rss_kib(pid).with_context(|| format!("reading the RSS of pid {pid}"))?)
        }
        None => None,
    };
    let started = Instant::now();
    eprintln!(
        "idle: opening {} connections in {procs} process(es) over {} source address(es)",
        args.connections, args.common.source_addrs
    );
    let (opened, failed, mut holder) = if procs == 1 {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (opened, failed, tasks) = open_all(&args, 0, args.connections, stop_rx).await?;
        (opened, failed, Holder::InProcess(stop_tx, tasks))
    } else {
        spawn_children(&args, procs).await?
    };
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("idle: {opened} open, {failed} failed in {connect_secs:.1}s; settling");
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let after = match args.pid {
        Some(pid) => Some(stats::rss_kib(pid)?),
        None => None,
    };
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    holder.release().await;

    let mut result = json!({
        "mode": "idle",
        "protocol": args.common.protocol,
        "urls": args.common.url,
        "connections": args.connections,
        "opened": opened,
        "failed": failed,
        "procs": procs,
        "source_addrs": args.common.source_addrs,
        "connect_seconds": (connect_secs * 100.0).round() / 100.0,
        "ok": opened > 0 && failed == 0,
    });
    if let (Some((rss0, _)), Some((rss1, hwm))) = (before, after) {
        let per_conn = (rss1 as f64 - rss0 as f64) * 1024.0 / opened.max(1) as f64;
        result["server_pid"] = json!(args.pid);
        result["rss_before_kib"] = json!(rss0);
        result["rss_after_kib"] = json!(rss1);
        result["hwm_kib"] = json!(hwm);
        result["rss_per_conn_bytes"] = json!(per_conn.round());
        result["rss_per_conn_kib"] = json!((per_conn / 1024.0 * 100.0).round() / 100.0);
        eprintln!(
            "idle: server RSS {rss0} KiB -> {rss1} KiB: {:.2} KiB per connection",
            per_conn / 1024.0
        );
    }
    Ok(result)
}

enum Holder {
    InProcess(watch::Sender<bool>, JoinSet<()>),
    Children(Workers),
}

impl Holder {
    /// Close every connection: stop the tasks, or close the children's stdin and reap
    /// them (killing any that outlives the grace period).
    async fn release(&mut self) {
        match self {
            Holder::InProcess(stop, tasks) => {
                let _ = stop.send(true);
                let all = async { while tasks.join_next().await.is_some() {} };
                if tokio::time::timeout(Duration::from_secs(10), all)
                    .await
                    .is_err()
                {
                    tasks.abort_all();
                }
            }
            Holder::Children(children) => children.release(Duration::from_secs(15)).await,
        }
    }
}

async fn spawn_children(args: &IdleArgs, procs: usize) -> anyhow::Result<(u64, u64, Holder)> {
    let exe = std::env::current_exe().context("locating wss-bench for the child processes")?;
    let mut commands = Vec::with_capacity(procs);
    let mut offset = 0usize;
    for i in 0..procs {
        let share = args.connections / procs + usize::from(i < args.connections % procs);
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("idle")
            .arg("--child")
            .args(["--protocol", protocol_name(args.common.protocol)])
            .args(["--url", &args.common.url.join(",")])
            .args(["--connections", &share.to_string()])
            .args(["--offset", &offset.to_string()])
            .args(["--source-addrs", &args.common.source_addrs.to_string()])
            .args(["--threads", "1"])
            .args([
                "--connect-concurrency",
                &args.common.connect_concurrency.to_string(),
            ]);
        commands.push(cmd);
        offset += share;
    }
    let (children, mut said) = Workers::spawn(commands)?;
    let (mut opened, mut failed) = (0u64, 0u64);
    for v in first_lines(&mut said, procs, args.common.setup_timeout()).await? {
        opened += v["opened"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
    }
    Ok((opened, failed, Holder::Children(children)))
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Wss => "wss",
        Protocol::Socketio => "socketio",
    }
}

/// A child: open its share, report `{"opened","failed"}`, hold until stdin closes (or
/// the hold limit passes), then close.
async fn child(args: IdleArgs) -> anyhow::Result<Value> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened, failed, mut tasks) =
        open_all(&args, args.offset, args.connections, stop_rx).await?;
    println!("{}", json!({ "opened": opened, "failed": failed }));
    // Hold until the parent closes our stdin (a blocking read on its own thread);
    // never longer than an hour.
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        for _ in 0..1_000_000 {
            if matches!(stdin.read(&mut buf), Ok(0) | Err(_)) {
                break;
            }
        }
        let _ = eof_tx.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(3600), eof_rx).await;
    let _ = stop_tx.send(true);
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    // The parent already has this child's line; the caller prints nothing more.
    Ok(Value::Null)
}

/// Open `n` connections (indices `offset..offset+n` choose node and source address) and
/// keep each in a task that answers pings until `stop`.
async fn open_all(
    args: &IdleArgs,
    offset: usize,
    n: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64, JoinSet<()>)> {
    let common = &args.common;
    let targets = common.targets().await?;
    let sources = common.sources();
    let protocol = common.protocol;
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(parking_lot::Mutex::new(None::<String>));
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1024);
    let mut tasks = JoinSet::new();
    for i in offset..offset + n {
        let target = targets[i % targets.len()].clone();
        let source = sources.pick(i);
        let permits = permits.clone();
        let (opened, failed, first_error) = (opened.clone(), failed.clone(), first_error.clone());
        let mut stop = stop.clone();
        let done = done_tx.clone();
        let timeout = common.connect_timeout();
        tasks.spawn(async move {
            let ws = {
                let _permit = permits.acquire().await;
                conn::connect(&target, source, protocol, timeout).await
            };
            let mut ws = match ws {
                Ok(ws) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(()).await;
                    ws
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().get_or_insert_with(|| format!("{e:#}"));
                    let _ = done.send(()).await;
                    return;
                }
            };
            drop(done);
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) if protocol == Protocol::Socketio && t.as_str() == "2" => {
                            if ws.send(Message::text("3")).await.is_err() { return; }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    },
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        });
    }
    drop(done_tx);
    let deadline = tokio::time::Instant::now() + common.setup_timeout();
    let mut last = Instant::now();
    let mut seen = 0usize;
    while seen < n {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(())) => seen += 1,
            Ok(None) | Err(_) => break,
        }
        if last.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {}/{n} open ({} failed)",
                opened.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
            last = Instant::now();
        }
    }
    if let Some(e) = first_error.lock().as_ref() {
        eprintln!("idle: first connection error: {e}");
    }
    Ok((
        opened.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        tasks,
    ))
}
