//! Resume: N clients in rooms with history drop, miss M messages per room, come back
//! (by default to another node) and send `$resume`; every missed message must arrive
//! exactly once, in offset order, before the resume's ack.
//!
//! ```text
//! 1. connect N clients (round-robin over the URLs), each joins one of R rooms and
//!    notes the session ($welcome) and its room's epoch and offset ($joined)
//! 2. all drop: TCP close without a close frame (--drop abrupt) or a clean close
//! 3. one publisher sends M messages to every room, each acknowledged (= committed)
//! 4. N new connections are opened (welcome only), then all send `$resume` at once
//! 5. each counts the deliveries of its room until the ack: exactly offsets
//!    o+1 ..= o+M, in order, no duplicate
//! ```
//!
//! The clock runs from the first `$resume` written to the last client holding every
//! missed message and its ack; the connections are opened before it starts, so it
//! measures the resume, not TCP and WebSocket handshakes.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, classify, fields_u64, Inbound, Protocol, Target, Ws};
use crate::fanout::wait_ready;
use crate::stats::{self, now_us};
use crate::Common;

const DELIVERY_EVENT: &str = "bench.msg";

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that drop and resume.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Rooms the clients are spread over (round-robin). Every room must have history
    /// (`bench/pack-history`) holding at least --messages entries.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages published to each room while its clients are away.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// How the clients leave: `abrupt` (TCP close without a WebSocket close frame, as
    /// a lost network does) or `clean` (a close handshake).
    #[arg(long, value_enum, default_value = "abrupt")]
    pub drop: DropKind,
    /// Come back to the same node (default: the next URL, so a resume crosses nodes
    /// when there are several).
    #[arg(long)]
    pub same_node: bool,
    /// Publishes in flight at once per publisher (each waits for its ack, which means
    /// committed).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Publisher connections (round-robin over the URLs); publisher j sends to the
    /// rooms r with r mod P = j, so each room's messages keep their order.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Seconds the resume phase may take before the missing clients count as failed.
    #[arg(long, default_value_t = 60.0)]
    pub resume_timeout: f64,
    /// Server pids whose CPU time over the resume phase is reported.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropKind {
    Abrupt,
    Clean,
}

/// What a client knows when it drops: enough to resume.
struct Position {
    session: String,
    room: usize,
    epoch: String,
    offset: u64,
}

/// What one client saw of its resume.
#[derive(Default)]
struct Outcome {
    /// Missed messages that arrived (distinct offsets in the expected range).
    received: u64,
    duplicates: u64,
    /// A delivery whose offset was not above the previous one.
    out_of_order: u64,
    /// Deliveries with an offset outside o+1 ..= o+M (live traffic would be; there is none).
    unexpected: u64,
    recovered: bool,
    ack_ok: bool,
    /// From this client's `$resume` to its last missed message and ack.
    micros: Option<u64>,
    /// From the run's start of the resume phase to this client's completion.
    done_at: Option<Duration>,
    error: Option<String>,
}

pub async fn run(args: ResumeArgs) -> anyhow::Result<Value> {
    let common = &args.common;
    if common.protocol != Protocol::Wss {
        bail!("resume speaks wss-engine's protocol only (Socket.IO has no resumable history)");
    }
    if args.clients == 0 || args.rooms == 0 || args.messages == 0 {
        bail!("--clients, --rooms and --messages must be at least 1");
    }
    let targets = common.targets().await?;
    let run_id: u32 = rand::random();
    let rooms: Arc<Vec<String>> = Arc::new(
        (0..args.rooms)
            .map(|i| format!("r{run_id:08x}-{i}"))
            .collect(),
    );
    let timeout = common.connect_timeout();

    // 1. Clients join and note their positions.
    eprintln!(
        "resume: connecting {} clients in {} rooms over {} node(s)",
        args.clients,
        args.rooms,
        targets.len()
    );
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut joins = JoinSet::new();
    for i in 0..args.clients {
        let target = targets[i % targets.len()].clone();
        let source = common.sources().pick(i);
        let room = i % args.rooms;
        let rooms = rooms.clone();
        let permits = permits.clone();
        joins.spawn(async move {
            let _permit = permits.acquire().await;
            let joined = join_room(&target, source, &rooms[room], timeout).await;
            (
                i,
                joined.map(|(ws, session, epoch, offset)| {
                    (
                        ws,
                        Position {
                            session,
                            room,
                            epoch,
                            offset,
                        },
                    )
                }),
            )
        });
    }
    let mut clients: Vec<Option<(Ws, Position)>> = (0..args.clients).map(|_| None).collect();
    let setup = tokio::time::timeout(common.setup_timeout(), async {
        while let Some(done) = joins.join_next().await {
            let (i, joined) = done.context("a joining task panicked")?;
            clients[i] = Some(joined.with_context(|| format!("client {i}"))?);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match setup {
        Ok(r) => r?,
        Err(_) => bail!(
            "the clients did not join within {:?}",
            common.setup_timeout()
        ),
    }
    eprintln!(
        "resume: {} clients joined in {:.1}s",
        args.clients,
        started.elapsed().as_secs_f64()
    );

    // 2. All drop.
    let mut positions = Vec::with_capacity(args.clients);
    let mut closing = JoinSet::new();
    for (ws, position) in clients.into_iter().flatten() {
        positions.push(position);
        match args.drop {
            // Dropping the stream closes the socket: a FIN, no close frame.
            DropKind::Abrupt => drop(ws),
            DropKind::Clean => {
                closing.spawn(async move {
                    let mut ws = ws;
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = ws.close(None).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                });
            }
        }
    }
    while closing.join_next().await.is_some() {}
    // Let the nodes see the closes (their sessions become resumable) before the
    // messages the clients will miss.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. The messages they miss, every one acknowledged.
    let publish_started = Instant::now();
    let mut publishing = JoinSet::new();
    let npub = args.publishers.clamp(1, args.rooms);
    for j in 0..npub {
        let target = targets[j % targets.len()].clone();
        let mine: Vec<String> = rooms.iter().skip(j).step_by(npub).cloned().collect();
        let (common, messages, window) = (common.clone(), args.messages, args.window);
        publishing.spawn(async move { publish(&target, &common, &mine, messages, window).await });
    }
    let mut published = 0;
    while let Some(done) = publishing.join_next().await {
        published += done.context("a publisher panicked")??;
    }
    let publish_secs = publish_started.elapsed().as_secs_f64();
    eprintln!(
        "resume: published {published} messages ({} per room) in {publish_secs:.2}s",
        args.messages
    );

    // 4. New connections, opened before the clock starts.
    let (go_tx, go_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(1024);
    let mut resumes = JoinSet::new();
    let phase_start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let first_sent = Arc::new(AtomicU64::new(u64::MAX));
    let resume_timeout = Duration::from_secs_f64(args.resume_timeout.clamp(1.0, 3600.0));
    for (i, position) in positions.into_iter().enumerate() {
        let shift = if args.same_node { 0 } else { 1 };
        let target = targets[(i + shift) % targets.len()].clone();
        let source = common.sources().pick(args.clients + i);
        let room = rooms[position.room].clone();
        let permits = permits.clone();
        let ready = ready_tx.clone();
        let mut go = go_rx.clone();
        let messages = args.messages;
        let phase_start = phase_start.clone();
        let first_sent = first_sent.clone();
        resumes.spawn(async move {
            let ws = {
                let _permit = permits.acquire().await;
                match conn::connect(&target, source, Protocol::Wss, timeout).await {
                    Ok(ws) => {
                        let _ = ready.send(Ok(())).await;
                        ws
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e)).await;
                        return Outcome::default();
                    }
                }
            };
            if go.wait_for(|g| *g).await.is_err() {
                return Outcome::default();
            }
            let Some(&start) = phase_start.get() else {
                return Outcome::default();
            };
            resume_one(
                ws,
                &position,
                &room,
                messages,
                start,
                &first_sent,
                resume_timeout,
            )
            .await
        });
    }
    drop(ready_tx);
    wait_ready(&mut ready_rx, args.clients, common.setup_timeout()).await?;

    // 5. Go: every client sends its `$resume` now.
    let cpu_before = cpu_snapshot(&args.server_pids);
    let start = Instant::now();
    let _ = phase_start.set(start);
    let start_us = now_us();
    let _ = go_tx.send(true);
    let mut outcomes = Vec::with_capacity(args.clients);
    while let Some(done) = resumes.join_next().await {
        outcomes.push(done.unwrap_or_default());
    }
    let cpu_after = cpu_snapshot(&args.server_pids);
    let cpu: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(a, b)| ((b - a) * 100.0).round() / 100.0)
        .collect();

    let completed: Vec<&Outcome> = outcomes.iter().filter(|o| o.done_at.is_some()).collect();
    let mut per_client = stats::new_histogram();
    for o in &completed {
        if let Some(us) = o.micros {
            per_client.saturating_record(us.max(1));
        }
    }
    let first_offset_us = first_sent.load(std::sync::atomic::Ordering::Relaxed);
    // From the first `$resume` written to the last completion.
    let last_done = completed.iter().filter_map(|o| o.done_at).max();
    let first_sent_after = Duration::from_micros(first_offset_us.saturating_sub(start_us));
    let total = last_done.map(|d| d.saturating_sub(first_sent_after));
    let expected = args.clients as u64 * args.messages;
    let received: u64 = outcomes.iter().map(|o| o.received).sum();
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let all_done = completed.len() == args.clients;
    let total_s = total.map(|d| d.as_secs_f64());
    let result = json!({
        "mode": "resume",
        "urls": common.url,
        "clients": args.clients,
        "rooms": args.rooms,
        "messages_per_room": args.messages,
        "drop": args.drop,
        "same_node": args.same_node,
        "published": published,
        "publish_seconds": (publish_secs * 1000.0).round() / 1000.0,
        "completed": completed.len(),
        "total_ms": total_s.map(|s| (s * 1e6).round() / 1000.0),
        "resumes_per_s": total_s.filter(|s| *s > 0.0).map(|s| (completed.len() as f64 / s).round()),
        "per_client": stats::summary(&per_client),
        "expected": expected,
        "received": received,
        "lost": expected.saturating_sub(received),
        "duplicates": sum(|o| o.duplicates),
        "out_of_order": sum(|o| o.out_of_order),
        "unexpected": sum(|o| o.unexpected),
        "not_recovered": outcomes.iter().filter(|o| !o.recovered).count(),
        "refused": outcomes.iter().filter(|o| !o.ack_ok).count(),
        "errors": errors.len(),
        "first_error": errors.first(),
        // CPU seconds over the resume phase: generator first, then each --server-pids.
        "cpu_s": cpu,
        // The harness worked: the missed messages came back.
        "ok": all_done && received > 0,
    });
    eprintln!(
        "resume: {} of {} clients resumed in {} ms ({} resumes/s), per client p50 {} / p99 {} ms; lost {}, duplicates {}, out of order {}, not recovered {}",
        completed.len(),
        args.clients,
        result["total_ms"],
        result["resumes_per_s"],
        result["per_client"]["p50_ms"],
        result["per_client"]["p99_ms"],
        result["lost"],
        result["duplicates"],
        result["out_of_order"],
        result["not_recovered"],
    );
    Ok(result)
}

/// Connect, join `room` and return the session and the room's position from `$joined`.
async fn join_room(
    target: &Target,
    source: Option<std::net::IpAddr>,
    room: &str,
    timeout: Duration,
) -> anyhow::Result<(Ws, String, String, u64)> {
    let (mut ws, welcome) = conn::connect_welcomed(target, source, Protocol::Wss, timeout).await?;
    let welcome: Value = serde_json::from_str(&welcome).context("reading $welcome")?;
    let session = welcome["data"]["session"]
        .as_str()
        .ok_or_else(|| anyhow!("$welcome has no session: {welcome}"))?
        .to_string();
    let frame = format!(r#"{{"event":"bench.join","data":{{"room":"{room}"}},"id":"join"}}"#);
    let position = tokio::time::timeout(timeout, async {
        ws.send(Message::text(frame)).await?;
        let mut position = None;
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            let v: Value = serde_json::from_str(&text)?;
            if v["event"] == "$joined" && v["data"]["room"] == room {
                let epoch = v["data"]["epoch"].as_str().map(str::to_string);
                let offset = v["data"]["offset"].as_u64();
                match (epoch, offset) {
                    (Some(e), Some(o)) => position = Some((e, o)),
                    _ => bail!("room {room} has no history (its $joined: {text}): run the nodes on bench/pack-history"),
                }
            } else if v["ack"] == "join" {
                if v["ok"] != true {
                    bail!("join refused: {text}");
                }
                return position.ok_or_else(|| anyhow!("the join's ack came without $joined"));
            }
        }
        bail!("connection closed while joining")
    })
    .await
    .map_err(|_| anyhow!("join of room {room} timed out"))??;
    Ok((ws, session, position.0, position.1))
}

/// Publish `messages` to every room over one connection, `window` awaiting their acks
/// at a time; returns how many were acknowledged.
async fn publish(
    target: &Target,
    common: &Common,
    rooms: &[String],
    messages: u64,
    window: usize,
) -> anyhow::Result<u64> {
    let mut ws = conn::connect(target, None, Protocol::Wss, common.connect_timeout()).await?;
    let total = messages * rooms.len() as u64;
    let window = window.max(1) as u64;
    let (mut next, mut acked) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < total {
        // Round-robin over the rooms: message n of room r is id n·R + r.
        while next < total && next - acked < window {
            let (n, r) = (next / rooms.len() as u64, next as usize % rooms.len());
            ws.feed(Message::text(format!(
                r#"{{"event":"bench.pub","data":{{"room":"{}","k":0,"p":0,"seq":{},"ts":{}}},"id":{next}}}"#,
                rooms[r],
                n + 1,
                now_us()
            )))
            .await?;
            next += 1;
        }
        ws.flush().await?;
        let frame = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .map_err(|_| anyhow!("publishing: {acked} of {total} acknowledged within 120 s"))?;
        let Some(frame) = frame else {
            bail!("the publisher's connection closed after {acked} acks")
        };
        let Message::Text(text) = frame? else {
            continue;
        };
        match classify(Protocol::Wss, &text, DELIVERY_EVENT) {
            Inbound::Ack { ok: true, .. } => acked += 1,
            Inbound::Ack { ok: false, .. } | Inbound::Error => {
                bail!("a publish was refused: {text}")
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(acked)
}

/// Send the `$resume` and count the replay until the ack (and a short quiet after it,
/// to catch a duplicate that comes late).
async fn resume_one(
    mut ws: Ws,
    position: &Position,
    room: &str,
    messages: u64,
    start: Instant,
    first_sent: &AtomicU64,
    timeout: Duration,
) -> Outcome {
    let mut out = Outcome::default();
    let frame = json!({
        "event": "$resume",
        "data": {
            "session": position.session,
            "rooms": { room: { "epoch": position.epoch, "offset": position.offset } },
        },
        "id": "r",
    })
    .to_string();
    let sent = Instant::now();
    if let Err(e) = ws.send(Message::text(frame)).await {
        out.error = Some(format!("sending $resume: {e}"));
        return out;
    }
    first_sent.fetch_min(now_us(), std::sync::atomic::Ordering::Relaxed);
    let (first, last) = (position.offset + 1, position.offset + messages);
    let mut seen = vec![false; messages as usize];
    let mut previous = position.offset;
    let mut acked = false;
    let deadline = tokio::time::Instant::from_std(sent + timeout);
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                out.error = Some(format!(
                    "timed out with {} of {messages} and{} the ack",
                    out.received,
                    if acked { "" } else { "out" }
                ));
                break;
            }
            Ok(None) => {
                out.error = Some("connection closed".into());
                break;
            }
            Ok(Some(Err(e))) => {
                out.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
        };
        match classify(Protocol::Wss, &frame, DELIVERY_EVENT) {
            Inbound::Delivery(_) => {
                let [Some(offset)] = fields_u64(&frame, ["offset"]) else {
                    out.unexpected += 1;
                    continue;
                };
                if offset <= previous {
                    out.out_of_order += 1;
                }
                previous = previous.max(offset);
                if (first..=last).contains(&offset) {
                    let slot = &mut seen[(offset - first) as usize];
                    if *slot {
                        out.duplicates += 1;
                    } else {
                        *slot = true;
                        out.received += 1;
                    }
                } else {
                    out.unexpected += 1;
                }
            }
            _ => {
                // `{"ack":"r",…}` has a string id, which the classifier does not read.
                if frame.starts_with(r#"{"ack":"r""#) {
                    acked = true;
                    if let Ok(v) = serde_json::from_str::<Value>(&frame) {
                        out.ack_ok = v["ok"] == true;
                        out.recovered = v["data"]["rooms"][room]["recovered"] == true;
                        if !out.ack_ok {
                            out.error = Some(format!("resume refused: {frame}"));
                            break;
                        }
                    }
                }
            }
        }
        if acked && out.received == messages {
            out.micros = Some(sent.elapsed().as_micros() as u64);
            out.done_at = Some(start.elapsed());
            break;
        }
    }
    // A duplicate arriving after the ack would still be one: listen a little longer.
    if out.done_at.is_some() {
        let quiet = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout_at(quiet, ws.next()).await
        {
            if let Inbound::Delivery(_) = classify(Protocol::Wss, &text, DELIVERY_EVENT) {
                out.duplicates += 1;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

fn cpu_snapshot(pids: &[u32]) -> Vec<f64> {
    std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .map(|pid| stats::cpu_seconds(pid).unwrap_or(0.0))
        .collect()
}
