//! Fan-out: N subscribers in R rooms over K nodes, P publishers at an offered rate that
//! steps up until a step fails (a loss, an error, a dropped subscriber, or p99 above the
//! bound). The connections stay open across steps; every message carries its step, so a
//! late delivery is counted against the step that sent it.

mod publisher;

use std::ops::ControlFlow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, classify, fields_u64, Inbound, Protocol, Ws};
use crate::stats::{self, now_us, Steps};
use crate::Common;
use publisher::{publisher, Spacing, StepCmd};

/// The room fan-out event of `bench/pack` (and of `bench/socketio/server.js`).
const PUBLISH_EVENT: &str = "bench.pub";
const DELIVERY_EVENT: &str = "bench.msg";
/// Messages written before one flush when a publisher is behind its schedule.
const MAX_BURST: u64 = 256;
/// Steps one run may take, whatever the arguments say.
const MAX_STEPS: usize = 64;
/// Retries of one failing step, whatever the arguments say.
const MAX_RETRIES: usize = 3;

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber connections, spread round-robin over the URLs and the rooms.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publisher connections (not room members), spread over the URLs; each cycles
    /// through the rooms.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Offered rates to run, in published messages per second over all publishers
    /// (deliveries/s = rate × room size). Without it: --step-from × --step-factor^n.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    #[arg(long, default_value_t = 10.0)]
    pub step_from: f64,
    #[arg(long, default_value_t = 1.25)]
    pub step_factor: f64,
    #[arg(long, default_value_t = 30)]
    pub max_steps: usize,
    /// Seconds each step publishes for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Milliseconds to wait after a step for its last deliveries.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,
    /// A step with a p99 above this fails.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// Run every step even after one failed.
    #[arg(long)]
    pub keep_going: bool,
    /// Times a failing step is run again before the run stops: on a shared machine one
    /// bad second (another process taking the cores) should not end the search.
    #[arg(long, default_value_t = 1)]
    pub retries: usize,
    /// Bytes of padding in every message (the rest of the payload is ~90 bytes).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Server pids (comma-separated) whose CPU time each step reports, with this
    /// generator's own: shows who used the cores.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Pids whose CPU time is reported after the servers' (Redis, say) but not counted
    /// as node CPU in `node_cpu_us_per_delivery`.
    #[arg(long, value_delimiter = ',')]
    pub other_pids: Vec<u32>,
    /// How publishers space their messages. `phased` (default): every publisher sends at
    /// the even rate, each from its own random phase within the interval, so 50
    /// publishers do not fire in the same microsecond. `poisson`: exponential gaps
    /// (a Poisson process per publisher). `lockstep`: every publisher starts its
    /// schedule at the same instant (the generator's behaviour before the phases:
    /// bursts that a server's write window coalesces, an unrealistically kind load).
    #[arg(long, value_enum, default_value = "phased")]
    pub schedule: Schedule,
    /// Shorthand for `--schedule poisson`.
    #[arg(long)]
    pub poisson: bool,
    /// Seed of the publishers' phases and gaps (each publisher draws from its own stream
    /// derived from it), so a run can be repeated with the same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// When each publisher sends within a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Phased,
    Poisson,
    Lockstep,
}

struct Shared {
    protocol: Protocol,
    steps: Steps,
    /// Subscribers in each room (all nodes): a message to room r is expected this often.
    members: Vec<u64>,
    rooms: Vec<String>,
    closed_subscribers: AtomicU64,
    /// Inbound frames that were neither deliveries nor known control frames.
    other_frames: AtomicU64,
    pad: String,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<Value> {
    let common = &args.common;
    if args.subscribers == 0 || args.rooms == 0 || args.publishers == 0 {
        bail!("--subscribers, --rooms and --publishers must be at least 1");
    }
    let targets = common.targets().await?;
    let rates = plan_rates(&args);
    if rates.is_empty() {
        bail!("no step to run: give --rates or a positive --step-from");
    }
    let schedule = if args.poisson {
        Schedule::Poisson
    } else {
        args.schedule
    };
    let run_id: u32 = rand::random();
    let rooms: Vec<String> = (0..args.rooms)
        .map(|i| format!("b{run_id:08x}-{i}"))
        .collect();
    let mut members = vec![0u64; args.rooms];
    for i in 0..args.subscribers {
        members[i % args.rooms] += 1;
    }
    let shared = Arc::new(Shared {
        protocol: common.protocol,
        // Every planned step may be retried.
        steps: Steps::new(rates.len() * (args.retries.min(MAX_RETRIES) + 1)),
        members,
        rooms,
        closed_subscribers: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        pad: "x".repeat(args.payload_bytes),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every task ends by this deadline even if the coordinator never says stop.
    let hard_deadline = Instant::now()
        + Duration::from_secs_f64(
            600.0 + rates.len() as f64 * (args.duration + args.drain_ms as f64 / 1000.0 + 10.0),
        );

    eprintln!(
        "fanout: connecting {} subscribers in {} rooms over {} node(s) ({:?})",
        args.subscribers,
        args.rooms,
        targets.len(),
        common.protocol
    );
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(1024);
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    for i in 0..args.subscribers {
        let target = targets[i % targets.len()].clone();
        let source = common.sources().pick(i);
        let room = i % args.rooms;
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let stop = stop_rx.clone();
        let permits = permits.clone();
        let timeout = common.connect_timeout();
        let publishers = args.publishers;
        tasks.spawn(async move {
            let ws = {
                let _permit = permits.acquire().await;
                let joined = async {
                    let mut ws = conn::connect(&target, source, shared.protocol, timeout).await?;
                    conn::join(&mut ws, shared.protocol, &shared.rooms[room], timeout).await?;
                    Ok::<_, anyhow::Error>(ws)
                }
                .await;
                match joined {
                    Ok(ws) => {
                        let _ = ready.send(Ok(())).await;
                        ws
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                        return;
                    }
                }
            };
            subscriber(ws, i, publishers, shared, stop, hard_deadline).await;
        });
    }
    drop(ready_tx);
    wait_ready(&mut ready_rx, args.subscribers, common.setup_timeout()).await?;
    eprintln!(
        "fanout: {} subscribers joined in {:.1}s",
        args.subscribers,
        started.elapsed().as_secs_f64()
    );

    let mut publishers = Vec::with_capacity(args.publishers);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(1024);
    for j in 0..args.publishers {
        let target = targets[j % targets.len()].clone();
        let source = common.sources().pick(args.subscribers + j);
        let (cmd_tx, cmd_rx) = mpsc::channel::<StepCmd>(1);
        publishers.push(cmd_tx);
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let timeout = common.connect_timeout();
        let spacing = Spacing::new(schedule, args.seed, j as u64);
        tasks.spawn(async move {
            match conn::connect(&target, source, shared.protocol, timeout).await {
                Ok(ws) => {
                    let _ = ready.send(Ok(())).await;
                    let npub = j as u64;
                    if let Err(e) =
                        publisher(ws, npub, shared, cmd_rx, spacing, hard_deadline).await
                    {
                        eprintln!("fanout: publisher {j} failed: {e:#}");
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                }
            }
        });
    }
    drop(ready_tx);
    wait_ready(&mut ready_rx, args.publishers, common.setup_timeout()).await?;

    let mut results = Vec::new();
    let mut best: Option<Value> = None;
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    // (rate, attempt) in the order they run; a failed step is queued again right away.
    let mut plan: std::collections::VecDeque<(f64, usize)> =
        rates.iter().map(|&r| (r, 0)).collect();
    let mut k = 0usize;
    while let Some((rate, attempt)) = plan.pop_front() {
        let Some(step) = shared.steps.get(k) else {
            break;
        };
        let mut dones = Vec::new();
        for p in &publishers {
            let (done_tx, done_rx) = oneshot::channel();
            let cmd = StepCmd {
                k,
                rate: rate / args.publishers as f64,
                duration,
                done: done_tx,
            };
            if p.send(cmd).await.is_ok() {
                dones.push(done_rx);
            }
        }
        let step_started = Instant::now();
        let cpu_before = cpu_snapshot(&args.server_pids, &args.other_pids);
        for done in dones {
            let _ = tokio::time::timeout(duration + Duration::from_secs(30), done).await;
        }
        let send_secs = step_started.elapsed().as_secs_f64();
        let expected = stats::load(&step.expected);
        let drain_deadline = Instant::now() + Duration::from_millis(args.drain_ms);
        while stats::load(&step.received) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu_after = cpu_snapshot(&args.server_pids, &args.other_pids);
        let cpu: Vec<f64> = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(a, b)| ((b - a) * 100.0).round() / 100.0)
            .collect();
        let received = stats::load(&step.received);
        let sent = stats::load(&step.sent);
        let errors = stats::load(&step.errors);
        let closed = stats::load(&shared.closed_subscribers);
        let latency = step.latency.merged();
        let p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
        let lost = expected.saturating_sub(received);
        let deliveries_per_s = received as f64 / args.duration.max(0.1);
        // The nodes' CPU (the --server-pids, not the generator nor --other-pids) over
        // the step, per delivery received: what one delivery costs the servers.
        let node_cpu: f64 = (1..=args.server_pids.len())
            .map(|i| cpu_after[i] - cpu_before[i])
            .sum();
        let node_us_per_delivery = (!args.server_pids.is_empty() && received > 0)
            .then(|| (node_cpu * 1e6 / received as f64 * 100.0).round() / 100.0);
        let pass = sent > 0
            && lost == 0
            && errors == 0
            && closed == 0
            && p99_ms <= args.max_p99_ms
            && send_secs <= args.duration * 1.1 + 0.5;
        let result = json!({
            "step": k,
            "attempt": attempt,
            "offered_msgs_per_s": rate,
            "offered_deliveries_per_s": rate * args.subscribers as f64 / args.rooms as f64,
            "sent": sent,
            "send_seconds": (send_secs * 1000.0).round() / 1000.0,
            "expected": expected,
            "received": received,
            "lost": lost,
            "errors": errors,
            "reordered": stats::load(&step.reordered),
            "closed_subscribers": closed,
            "deliveries_per_s": deliveries_per_s.round(),
            "latency": stats::summary(&latency),
            // CPU seconds over the step (send + drain): generator first, then each
            // --server-pids entry.
            "cpu_s": cpu,
            "node_cpu_us_per_delivery": node_us_per_delivery,
            "pass": pass,
        });
        eprintln!(
            "fanout: step {k}: {rate:.0} msg/s offered, {:.0} deliveries/s, lost {lost}, errors {errors}, p99 {p99_ms:.1} ms{}",
            deliveries_per_s,
            if pass { "" } else { "  FAIL" }
        );
        if pass {
            best = Some(json!({
                "offered_msgs_per_s": rate,
                "deliveries_per_s": deliveries_per_s.round(),
                "p99_ms": p99_ms,
                "node_cpu_us_per_delivery": node_us_per_delivery,
            }));
        }
        results.push(result);
        k += 1;
        if !pass {
            if attempt < args.retries.min(MAX_RETRIES) {
                eprintln!("fanout: step failed; running it again");
                plan.push_front((rate, attempt + 1));
            } else if !args.keep_going {
                break;
            }
        }
    }

    let _ = stop_tx.send(true);
    drop(publishers);
    let closing = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .is_err()
    {
        eprintln!("fanout: some connections did not close within 10 s; aborting them");
    }
    let received_total: u64 = results.iter().filter_map(|r| r["received"].as_u64()).sum();
    Ok(json!({
        "mode": "fanout",
        "protocol": common.protocol,
        "urls": common.url,
        "subscribers": args.subscribers,
        "rooms": args.rooms,
        "publishers": args.publishers,
        "duration_s": args.duration,
        "max_p99_ms": args.max_p99_ms,
        "payload_bytes": args.payload_bytes,
        "schedule": schedule,
        "seed": args.seed,
        "steps": results,
        "best": best,
        "other_frames": stats::load(&shared.other_frames),
        // The harness worked: something was delivered. (A failing step is a result,
        // not a broken harness.)
        "ok": received_total > 0,
    }))
}

/// CPU seconds used so far by this generator, then by each given server process, then
/// by each other process.
fn cpu_snapshot(pids: &[u32], others: &[u32]) -> Vec<f64> {
    std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .chain(others.iter().copied())
        .map(|pid| stats::cpu_seconds(pid).unwrap_or(0.0))
        .collect()
}

fn plan_rates(args: &FanoutArgs) -> Vec<f64> {
    let mut rates: Vec<f64> = if !args.rates.is_empty() {
        args.rates.clone()
    } else if args.step_from > 0.0 {
        let factor = args.step_factor.max(1.01);
        (0..args.max_steps.min(MAX_STEPS))
            .map(|n| args.step_from * factor.powi(n as i32))
            .collect()
    } else {
        Vec::new()
    };
    rates.retain(|r| r.is_finite() && *r > 0.0);
    rates.truncate(MAX_STEPS);
    rates
}

/// Wait for `n` connect results; the first failure aborts the run.
pub async fn wait_ready(
    rx: &mut mpsc::Receiver<anyhow::Result<()>>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ok = 0usize;
    let mut last_report = Instant::now();
    while ok < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => return Err(e.context(format!("after {ok} of {n} connections"))),
            Ok(None) => bail!("connection tasks ended early ({ok} of {n} ready)"),
            Err(_) => bail!("only {ok} of {n} connections ready within {timeout:?}"),
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  {ok}/{n} connected");
            last_report = Instant::now();
        }
    }
    Ok(())
}

async fn subscriber(
    mut ws: Ws,
    index: usize,
    publishers: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) {
    let mut tally = Tally {
        index,
        // Last sequence number seen from each publisher, to spot duplicates and reordering.
        last_seq: vec![0u64; publishers],
        shared,
    };
    // Built once: the loop turns once per delivery, and a fresh timer and watch future
    // per turn cost more than the frame handling itself.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let expired = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
    tokio::pin!(stopped, expired);
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = &mut stopped => break,
            _ = &mut expired => break,
        };
        if tally.frame(&mut ws, frame).await.is_break() {
            return;
        }
        // A server that batches writes hands over several frames per read: take the
        // ones already buffered without a turn of the select (and its timer and watch
        // polls) each.
        while let Some(frame) = ws.next().now_or_never() {
            if tally.frame(&mut ws, frame).await.is_break() {
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// What one subscriber counts of the frames it receives.
struct Tally {
    index: usize,
    last_seq: Vec<u64>,
    shared: Arc<Shared>,
}

impl Tally {
    /// Count one frame; `Break` when the connection is gone.
    async fn frame(
        &mut self,
        ws: &mut Ws,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> ControlFlow<()> {
        let shared = &self.shared;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                stats::add(&shared.closed_subscribers, 1);
                return ControlFlow::Break(());
            }
            Some(Ok(_)) => return ControlFlow::Continue(()),
        };
        match classify(shared.protocol, &text, DELIVERY_EVENT) {
            Inbound::Delivery(data) => {
                let now = now_us();
                let [Some(k), Some(p), Some(seq), Some(ts)] =
                    fields_u64(data, ["k", "p", "seq", "ts"])
                else {
                    stats::add(&shared.other_frames, 1);
                    return ControlFlow::Continue(());
                };
                let Some(step) = shared.steps.get(k as usize) else {
                    stats::add(&shared.other_frames, 1);
                    return ControlFlow::Continue(());
                };
                stats::add(&step.received, 1);
                step.latency.record(self.index, now.saturating_sub(ts));
                if let Some(last) = self.last_seq.get_mut(p as usize) {
                    if seq <= *last {
                        stats::add(&step.reordered, 1);
                    }
                    *last = seq;
                }
            }
            Inbound::Ping => {
                if ws.send(Message::text("3")).await.is_err() {
                    stats::add(&shared.closed_subscribers, 1);
                    return ControlFlow::Break(());
                }
            }
            _ => stats::add(&shared.other_frames, 1),
        }
        ControlFlow::Continue(())
    }
}
