//! Storm (W5): clients with tokens in rooms with history on two nodes A and B,
//! publishers on B throughout; node A is SIGKILLed and its clients reconnect to B with
//! full-jitter backoff and `$resume`. How fast do they all come back, what does B's
//! handshake cost meanwhile, what happens to the latency of B's own clients, and is
//! every message either delivered once and in order or flagged as not recoverable?
//!
//! ```text
//! coordinator (this process)              workers (`storm --worker`, one per share)
//!   spawn workers ───────────────────────▶  connect + join, each with its own JWT
//!   ◀──────────────────────────── ready    (client i: room i mod R, node ⌊i/R⌋ mod 2,
//!   publishers on B, --rate msg/s in all    so every room has members on both nodes)
//!   --before s; "storm"; kill -KILL A ───▶  A's sockets die: backoff, dial B, $resume
//!   ◀──────────────── progress (100 ms)     replay checked offset by offset
//!   all of A's resumed (or --storm-timeout): "after"; --after s; publishers stop
//!   "finish" + every room's last offset ─▶  tail loss = last offset − last seen
//!   ◀─────────────────────────── report     counts, histograms, resume times
//! ```
//!
//! One process may hold 20,000 open files here, so the clients live in `--procs`
//! worker processes of this binary (`crate::workers`). A worker holds the
//! clients of one node only, so B's survivors are timed by processes that do none of
//! the reconnecting. A reconnect goes straight to B, as a load balancer that has taken
//! A out of rotation would send it.

mod publish;
mod tally;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::conn::{Protocol, Target};
use crate::stats::{self, now_us};
use crate::workers::{first_lines, Said, Workers};
use crate::Common;
use publish::{publish, Published};

/// Index of the node that is killed and of the survivor in `--url`.
const NODE_A: usize = 0;
const NODE_B: usize = 1;
/// Clients one worker holds by default: well under the 20,000 open files of a process.
const PER_PROC: usize = 5_000;
/// Publishes awaiting their ack at once; past it the publisher falls behind its rate.
const PUB_WINDOW: u64 = 4_096;

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// `--url A,B`: the node killed first, the survivor second.
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients per room (rooms = clients / this, rounded up).
    #[arg(long, default_value_t = 10)]
    pub per_room: usize,
    /// Messages per second the publishers (on B) send in all, round-robin over the rooms.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Publisher connections (on B); publisher j sends to the rooms r with r mod P = j.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Seconds of publishing before the kill (survivors' latency "before").
    #[arg(long, default_value_t = 3.0)]
    pub before: f64,
    /// Seconds of publishing after the storm (everyone back, or the timeout).
    #[arg(long, default_value_t = 2.0)]
    pub after: f64,
    /// Seconds after the kill for every client of A to resume; also how long one
    /// client keeps trying.
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout: f64,
    /// Full-jitter backoff: attempt k waits uniform(0, min(max, min·2^k)) ms.
    #[arg(long, default_value_t = 100)]
    pub backoff_min_ms: u64,
    #[arg(long, default_value_t = 2000)]
    pub backoff_max_ms: u64,
    /// Milliseconds to wait after the publisher's last ack before counting.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,
    /// Pid of node A, SIGKILLed by the coordinator.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Pid of node B (its CPU seconds over the storm are reported per resume).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker processes holding the clients, half for each node's (0: one per 5,000).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// The nodes' HS256 secret (`--jwt-secret`); every client signs its own token.
    #[arg(long, env = "WSS_BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Connect without tokens (anonymous sessions, no per-user channel on the node): to
    /// see what authenticated users cost in the storm.
    #[arg(long)]
    pub anonymous: bool,
    /// Internal: run as a worker holding clients offset..offset+count.
    #[arg(long, hide = true)]
    pub worker: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    pub offset: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    pub count: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    pub run_id: u32,
}

impl StormArgs {
    fn rooms(&self) -> usize {
        self.clients.div_ceil(self.per_room.max(1)).max(1)
    }

    /// `?token=…` for `user` (empty with `--anonymous`).
    fn token_query(&self, user: &str) -> anyhow::Result<String> {
        if self.anonymous {
            return Ok(String::new());
        }
        Ok(format!("?token={}", token(&self.secret()?, user)?))
    }

    fn secret(&self) -> anyhow::Result<String> {
        self.jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow!("give --jwt-secret (or WSS_BENCH_JWT_SECRET): the nodes' HS256 secret")
            })
    }
}

/// Room and home node of client `i`: round-robin over the rooms, and each room's
/// members alternate between the nodes.
fn client_plan(i: usize, rooms: usize) -> (usize, usize) {
    (i % rooms, (i / rooms) % 2)
}

/// Every client index, A's first: worker shares are slices of this, so a worker holds
/// clients of one node only and B's survivors are timed by processes that do no
/// reconnecting of their own.
fn by_node(clients: usize, rooms: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..clients).collect();
    order.sort_by_key(|&i| client_plan(i, rooms).1);
    order
}

fn room_name(run_id: u32, room: usize) -> String {
    format!("s{run_id:08x}-{room}")
}

/// An HS256 token for `user`, valid for two hours.
fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    let claims = json!({ "sub": user, "exp": now_us() / 1_000_000 + 7200 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a token")
}

/// A histogram as `[[value, count], ...]` for the pipe; see [`merge_histogram`].
fn histogram_json(h: &Histogram<u64>) -> Value {
    h.iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

fn merge_histogram(into: &mut Histogram<u64>, v: &Value) {
    for pair in v.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = into.record_n(value.max(1), count);
        }
    }
}

/// Start the workers; their stdout lines arrive on the returned channel.
fn spawn_workers(
    args: &StormArgs,
    run_id: u32,
    procs: usize,
) -> anyhow::Result<(Workers, mpsc::UnboundedReceiver<Said>)> {
    let exe = std::env::current_exe().context("locating wss-bench for the workers")?;
    let mut commands = Vec::with_capacity(procs);
    // Each node's clients split evenly over its own workers.
    let on_a = by_node(args.clients, args.rooms())
        .iter()
        .filter(|&&i| client_plan(i, args.rooms()).1 == NODE_A)
        .count();
    let procs_a = procs.div_ceil(2);
    let mut offset = 0;
    for w in 0..procs {
        let (side, n, k) = if w < procs_a {
            (on_a, procs_a, w)
        } else {
            (args.clients - on_a, procs - procs_a, w - procs_a)
        };
        let count = side / n + usize::from(k < side % n);
        let c = &args.common;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["storm", "--worker", "--threads", "1"])
            .args(args.anonymous.then_some("--anonymous"))
            .args(["--url", &c.url.join(",")])
            .args(["--clients", &args.clients.to_string()])
            .args(["--per-room", &args.per_room.to_string()])
            .args(["--offset", &offset.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--run-id", &run_id.to_string()])
            .args(["--storm-timeout", &args.storm_timeout.to_string()])
            .args(["--backoff-min-ms", &args.backoff_min_ms.to_string()])
            .args(["--backoff-max-ms", &args.backoff_max_ms.to_string()])
            .args(["--source-addrs", &c.source_addrs.to_string()])
            .args(["--connect-concurrency", &c.connect_concurrency.to_string()])
            .args(["--connect-timeout", &c.connect_timeout.to_string()])
            .args(["--setup-timeout", &c.setup_timeout.to_string()])
            .env(
                "WSS_BENCH_JWT_SECRET",
                args.jwt_secret.clone().unwrap_or_default(),
            );
        commands.push(cmd);
        offset += count;
    }
    Workers::spawn(commands)
}

pub async fn run(args: StormArgs) -> anyhow::Result<Value> {
    if args.worker {
        return worker::run(args).await;
    }
    let common = &args.common;
    if common.protocol != Protocol::Wss {
        bail!("storm speaks wss-engine's protocol only");
    }
    let targets = common.targets().await?;
    if targets.len() != 2 {
        bail!("--url takes two nodes: the one killed (A), then the survivor (B)");
    }
    let kill_pid = args
        .kill_pid
        .ok_or_else(|| anyhow!("give --kill-pid (node A's pid)"))?;
    if !args.anonymous {
        args.secret()?;
    }
    if args.clients < 2 || args.rate <= 0.0 {
        bail!("--clients must be at least 2 and --rate positive");
    }
    let rooms = args.rooms();
    // At least one worker per node (A's and B's clients never share a process).
    let procs = match args.procs {
        0 => 2 * (args.clients / 2).div_ceil(PER_PROC),
        n => n.clamp(2, 64),
    };
    let on_a = (0..args.clients)
        .filter(|&i| client_plan(i, rooms).1 == NODE_A)
        .count() as u64;
    let run_id: u32 = rand::random();
    eprintln!(
        "storm: {} clients ({on_a} on A) in {rooms} rooms, {procs} worker process(es)",
        args.clients
    );
    let started = Instant::now();
    let (mut workers, mut lines) = spawn_workers(&args, run_id, procs)?;
    let (mut ready, mut failed, mut first_error) = (0u64, 0u64, None);
    let timeout = common.setup_timeout() + Duration::from_secs(10);
    for v in first_lines(&mut lines, workers.len(), timeout).await? {
        ready += v["ready"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
        if first_error.is_none() && !v["first_error"].is_null() {
            first_error = Some(v["first_error"].clone());
        }
    }
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!("storm: {ready} clients joined in {setup_s:.1}s ({failed} failed)");
    if failed > 0 {
        bail!(
            "{failed} clients could not join; first error: {}",
            first_error.unwrap_or_default()
        );
    }

    // The publishers, on the survivor, for the whole run. Several: a node handles one
    // connection's frames in order, each waiting for its commit, so one publisher's
    // latency would be a queue of its own frames whenever Redis is slow to answer.
    let (stop_pub, stop_rx) = watch::channel(false);
    let phase = Arc::new(AtomicBool::new(false));
    let npub = args.publishers.clamp(1, rooms);
    let mut publishers = Vec::with_capacity(npub);
    for j in 0..npub {
        let mine: Vec<(usize, String)> = (j..rooms)
            .step_by(npub)
            .map(|r| (r, room_name(run_id, r)))
            .collect();
        let target = Target {
            url: format!(
                "{}{}",
                targets[NODE_B].url,
                args.token_query(&format!("publisher-{j}"))?
            ),
            addr: targets[NODE_B].addr,
        };
        let (rate, timeout) = (
            args.rate * mine.len() as f64 / rooms as f64,
            common.connect_timeout(),
        );
        let (stop_rx, storming) = (stop_rx.clone(), phase.clone());
        publishers.push(tokio::spawn(async move {
            publish(target, mine, rooms, rate, stop_rx, storming, timeout).await
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.before.clamp(0.5, 600.0))).await;

    // The kill.
    workers.tell("storm");
    phase.store(true, Ordering::Relaxed);
    let cpu_b_before = args.server_pid.and_then(stats::cpu_seconds);
    let kill_us = now_us();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &kill_pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {kill_pid} failed: is node A running?");
    }
    eprintln!("storm: node A (pid {kill_pid}) killed");
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs_f64(args.storm_timeout.clamp(1.0, 3600.0));
    let mut progress = vec![0u64; procs];
    let mut last_print = Instant::now();
    while progress.iter().sum::<u64>() < on_a {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some((w, v))) => progress[w] = v["resumed_a"].as_u64().unwrap_or(progress[w]),
            Ok(None) => bail!("the workers went away during the storm"),
            Err(_) => break,
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("  {}/{on_a} resumed", progress.iter().sum::<u64>());
            last_print = Instant::now();
        }
    }
    let storm_end_us = now_us();
    let cpu_b_after = args.server_pid.and_then(stats::cpu_seconds);
    workers.tell("after");
    phase.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.after.clamp(0.0, 600.0))).await;
    let _ = stop_pub.send(true);
    let mut published = Published::new(rooms);
    for publisher in publishers {
        let one = publisher.await.context("a publisher panicked")??;
        for (all, mine) in published.finals.iter_mut().zip(&one.finals) {
            *all += mine;
        }
        for (all, mine) in published.ack.iter_mut().zip(&one.ack) {
            let _ = all.add(mine);
        }
        published.sent += one.sent;
        published.acked += one.acked;
        published.refused += one.refused;
    }
    tokio::time::sleep(Duration::from_millis(args.drain_ms)).await;
    workers.tell(&format!("finish {}", json!({ "finals": published.finals })));
    let mut reports = Vec::new();
    while reports.len() < procs {
        match tokio::time::timeout(Duration::from_secs(30), lines.recv()).await {
            Ok(Some((_, v))) if v.get("report").is_some() => reports.push(v["report"].clone()),
            Ok(Some(_)) => {}
            _ => bail!("only {} of {procs} workers reported", reports.len()),
        }
    }
    workers.release(Duration::from_secs(5)).await;
    let cpu_b = match (cpu_b_before, cpu_b_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(summarize(
        &args,
        on_a,
        rooms,
        procs,
        setup_s,
        kill_us,
        storm_end_us,
        cpu_b,
        &published,
        &reports,
    ))
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &StormArgs,
    on_a: u64,
    rooms: usize,
    procs: usize,
    setup_s: f64,
    kill_us: u64,
    storm_end_us: u64,
    cpu_b: Option<f64>,
    published: &Published,
    reports: &[Value],
) -> Value {
    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let min = |k: &str| {
        reports
            .iter()
            .filter_map(|r| r[k].as_u64())
            .min()
            .unwrap_or(u64::MAX)
    };
    let merged = |f: &dyn Fn(&Value) -> &Value| {
        let mut h = stats::new_histogram();
        for r in reports {
            merge_histogram(&mut h, f(r));
        }
        stats::summary(&h)
    };
    let mut done: Vec<u64> = reports
        .iter()
        .flat_map(|r| r["done_a_us"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_u64())
        .collect();
    done.sort_unstable();
    let ms = |us: u64| (us as f64 / 1000.0).round();
    // Time from the kill until the first ⌈q·N⌉ of A's clients had resumed.
    let at = |q: f64| {
        let n = ((on_a as f64 * q).ceil() as usize).max(1);
        done.get(n - 1).map(|t| ms(t.saturating_sub(kill_us)))
    };
    let first_sent = min("first_resume_sent_us");
    let span_s = done
        .last()
        .filter(|_| first_sent != u64::MAX)
        .map(|last| last.saturating_sub(first_sent) as f64 / 1e6)
        .filter(|s| *s > 0.0);
    // The best one-second window, in 100 ms steps.
    let peak = done
        .iter()
        .map(|&t| done.partition_point(|&u| u < t + 1_000_000) - done.partition_point(|&u| u < t))
        .max()
        .unwrap_or(0);
    let resumed_a = done.len() as u64;
    // Every delivery the rooms' members should have had: each room's last offset times
    // its members. received + flagged + lost = expected when nothing came twice.
    let expected: u64 = (0..args.clients)
        .map(|i| published.finals[client_plan(i, rooms).0])
        .sum();
    let lost = sum("lost");
    let first_disconnect = min("first_disconnect_us");
    let resumes_per_s = span_s.map(|s| (resumed_a as f64 / s).round());
    let ok = resumed_a as f64 >= 0.99 * on_a as f64 && lost == 0 && sum("received") > 0;
    let result = json!({
        "mode": "storm",
        "urls": args.common.url,
        "clients": args.clients,
        "on_a": on_a,
        "rooms": rooms,
        "procs": procs,
        "rate": args.rate,
        "backoff_ms": [args.backoff_min_ms, args.backoff_max_ms],
        "setup_seconds": (setup_s * 10.0).round() / 10.0,
        "published": published.acked,
        "publish_unacked": published.sent - published.acked - published.refused,
        "publish_refused": published.refused,
        "detected_ms": (first_disconnect != u64::MAX).then(|| ms(first_disconnect.saturating_sub(kill_us))),
        "resumed_a": resumed_a,
        "resumed": sum("resumed"),
        "to_50pct_ms": at(0.5),
        "to_99pct_ms": at(0.99),
        "to_100pct_ms": at(1.0),
        "storm_ms": ms(storm_end_us.saturating_sub(kill_us)),
        // A's resumes over the span from the first `$resume` written to the last ack.
        "resumes_per_s": resumes_per_s,
        "peak_resumes_per_s": peak,
    });
    // Two objects: one json! of every field passes the macro's recursion limit.
    let more = json!({
        "handshake": merged(&|r| &r["handshake"]),
        "resume_ack": merged(&|r| &r["resume_ack"]),
        "attempts": sum("attempts"),
        "failed_attempts": sum("failed_attempts"),
        "failed_resumes": sum("failed_resumes"),
        "gave_up": sum("gave_up"),
        "node_b_cpu_s": cpu_b.map(|c| (c * 100.0).round() / 100.0),
        "node_b_cpu_ms_per_resume": cpu_b.filter(|_| resumed_a > 0).map(|c| (c * 1e6 / resumed_a as f64).round() / 1000.0),
        "publish_ack_before": stats::summary(&published.ack[0]),
        "publish_ack_during": stats::summary(&published.ack[1]),
        "survivors_before": merged(&|r| &r["survivors"][0]),
        "survivors_during": merged(&|r| &r["survivors"][1]),
        "survivors_after": merged(&|r| &r["survivors"][2]),
        "expected": expected,
        "received": sum("received"),
        "lost": lost,
        "flagged": sum("flagged"),
        "not_recovered": sum("not_recovered"),
        "refused": sum("refused"),
        "gaps": sum("gaps"),
        "duplicates": sum("duplicates"),
        "out_of_order": sum("out_of_order"),
        "disconnects_a": sum("disconnects_a"),
        "disconnects_b": sum("disconnects_b"),
        // Enough of A's clients came back (99%) and nothing was lost without a flag.
        "ok": ok,
    });
    let mut result = result;
    if let (Some(r), Value::Object(m)) = (result.as_object_mut(), more) {
        r.extend(m);
    }
    eprintln!(
        "storm: {resumed_a}/{on_a} of A's clients resumed on B; 99% at {} ms after the kill, {} resumes/s (peak {peak}/s); handshake p50 {} / p99 {} ms; survivors' p99 {} ms before, {} ms during; lost {lost}, flagged {} (not recovered {}, gaps {}), duplicates {}, out of order {}{}",
        result["to_99pct_ms"],
        result["resumes_per_s"],
        result["handshake"]["p50_ms"],
        result["handshake"]["p99_ms"],
        result["survivors_before"]["p99_ms"],
        result["survivors_during"]["p99_ms"],
        result["flagged"],
        result["not_recovered"],
        result["gaps"],
        result["duplicates"],
        result["out_of_order"],
        if ok { "" } else { " — FAILED: fewer than 99% resumed or a loss without a flag" },
    );
    result
}

/// Resolves once `stop` holds `true` (or its sender is gone). Unlike `wait_for`, holds
/// no guard across an await, so the futures using it stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let set = *stop.borrow_and_update();
        if set || stop.changed().await.is_err() {
            return;
        }
    }
}
