//! One generator process's share of a storm: its clients connect (each with its own
//! token) to their home node, join their room, and follow the room's offsets; when a
//! socket dies they reconnect to the survivor with full-jitter backoff and `$resume`.
//!
//! The coordinator drives it over the pipes (one JSON line out per report, one command
//! line in per phase):
//!
//! ```text
//! worker → {"ready": N, "failed": F, "first_error": …}   all clients joined (or not)
//! ← storm                                                  survivors' latency is "during"
//! worker → {"resumed": R, "resumed_a": RA}                 every 100 ms until `after`
//! ← after                                                  the storm is over
//! ← finish {"finals": [offset per room]}                   the publisher is done
//! worker → {"report": {...}}                               counts and histograms, then exit
//! ```
//!
//! Stdin closing (the coordinator gone) ends the worker at once: nothing outlives a run.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::tally::{add, record, report, Ctx, Track, AFTER, DURING};
use super::{by_node, client_plan, room_name, stopped, StormArgs, NODE_B};
use crate::conn::{self, classify, fields_u64, Inbound, Protocol, Target, Ws};
use crate::stats::now_us;

const DELIVERY_EVENT: &str = "bench.msg";
pub async fn run(args: StormArgs) -> anyhow::Result<Value> {
    let common = &args.common;
    let targets = common.targets().await?;
    if targets.len() != 2 {
        bail!("--url takes two nodes: the one killed, then the survivor");
    }
    let ctx = Arc::new(Ctx {
        first_disconnect_us: AtomicU64::new(u64::MAX),
        first_resume_sent_us: AtomicU64::new(u64::MAX),
        ..Ctx::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(1024);
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let (offset, count) = (args.offset, args.count);
    for &i in &by_node(args.clients, args.rooms())[offset..offset + count] {
        let (room, home) = client_plan(i, args.rooms());
        let client = Client {
            index: i,
            room,
            room_name: room_name(args.run_id, room),
            home_b: home == NODE_B,
            token: args.token_query(&format!("u{:08x}-{i}", args.run_id))?,
            home: targets[home].clone(),
            survivor: targets[NODE_B].clone(),
        };
        let ctx = ctx.clone();
        let (ready, permits, stop) = (ready_tx.clone(), permits.clone(), stop_rx.clone());
        let opts = Opts::from(&args);
        tasks.spawn(async move { client.run(ctx, ready, permits, stop, opts).await });
    }
    drop(ready_tx);
    // Report the setup: how many joined, and the first failure.
    let deadline = tokio::time::Instant::now() + common.setup_timeout();
    let (mut ready, mut failed, mut first_error) = (0usize, 0usize, None);
    while ready + failed < count {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ready += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "{}",
        json!({ "ready": ready, "failed": failed + (count - ready - failed), "first_error": first_error })
    );

    // Commands from the coordinator, read on a thread of their own (stdin blocks).
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Option<String>>(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.blocking_send(Some(line)).is_err() {
                return;
            }
        }
        let _ = cmd_tx.blocking_send(None);
    });
    let mut progress = tokio::time::interval(Duration::from_millis(100));
    // No run lasts an hour: a lost coordinator cannot leave a worker behind.
    let limit = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd.flatten() {
                None => {
                    let _ = stop_tx.send(true);
                    tasks.abort_all();
                    return Ok(Value::Null);
                }
                Some(line) => {
                    let line = line.trim();
                    if line == "storm" {
                        ctx.phase.store(DURING, Ordering::Relaxed);
                    } else if line == "after" {
                        ctx.phase.store(AFTER, Ordering::Relaxed);
                    } else if let Some(rest) = line.strip_prefix("finish ") {
                        let v: Value = serde_json::from_str(rest).context("the finish command")?;
                        let finals = v["finals"].as_array().ok_or_else(|| anyhow!("finish without finals"))?;
                        let _ = ctx.finals.set(finals.iter().map(|f| f.as_u64().unwrap_or(0)).collect());
                        break;
                    }
                }
            },
            _ = progress.tick(), if ctx.phase.load(Ordering::Relaxed) == DURING => {
                println!("{}", json!({
                    "resumed": ctx.resumed.load(Ordering::Relaxed),
                    "resumed_a": ctx.resumed_a.load(Ordering::Relaxed),
                }));
            }
            _ = &mut limit => bail!("the coordinator sent no `finish` within an hour"),
        }
    }
    let _ = stop_tx.send(true);
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), all)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    println!("{}", json!({ "report": report(&ctx) }));
    Ok(Value::Null)
}

/// The timing options every client needs.
#[derive(Clone, Copy)]
struct Opts {
    connect_timeout: Duration,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    /// From a client's disconnect: how long it keeps trying.
    give_up: Duration,
    sources: u8,
    clients: usize,
}

impl From<&StormArgs> for Opts {
    fn from(a: &StormArgs) -> Self {
        Self {
            connect_timeout: a.common.connect_timeout(),
            backoff_min_ms: a.backoff_min_ms.max(1),
            backoff_max_ms: a.backoff_max_ms.max(a.backoff_min_ms.max(1)),
            give_up: Duration::from_secs_f64(a.storm_timeout.clamp(1.0, 3600.0)),
            sources: a.common.source_addrs,
            clients: a.clients,
        }
    }
}

struct Client {
    index: usize,
    room: usize,
    room_name: String,
    home_b: bool,
    /// `?token=…`, or empty for an anonymous client.
    token: String,
    home: Target,
    survivor: Target,
}

/// How a read loop ended.
enum Ended {
    Died,
    Stopped,
}

impl Client {
    async fn run(
        self,
        ctx: Arc<Ctx>,
        ready: mpsc::Sender<anyhow::Result<()>>,
        permits: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
        opts: Opts,
    ) {
        let sources = conn::Sources::loopback(opts.sources);
        let joined = {
            let _permit = permits.acquire().await;
            self.join(sources.pick(self.index), opts.connect_timeout)
                .await
        };
        let (mut ws, mut session, mut epoch, joined_at) = match joined {
            Ok(j) => {
                let _ = ready.send(Ok(())).await;
                j
            }
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return;
            }
        };
        drop(ready);
        let mut track = Track::new(joined_at);
        let mut survivor = self.home_b;
        let mut attempt_source = self.index + opts.clients;
        loop {
            match self
                .read_live(&mut ws, &mut track, survivor, &ctx, &mut stop)
                .await
            {
                Ended::Stopped => break,
                Ended::Died if *stop.borrow() => break,
                Ended::Died => {}
            }
            survivor = false;
            ctx.first_disconnect_us
                .fetch_min(now_us(), Ordering::Relaxed);
            add(
                if self.home_b {
                    &ctx.disconnects_b
                } else {
                    &ctx.disconnects_a
                },
                1,
            );
            let came_back = self
                .come_back(
                    &session,
                    &mut epoch,
                    &mut track,
                    &ctx,
                    &sources,
                    &mut attempt_source,
                    opts,
                    &stop,
                )
                .await;
            match came_back {
                Some((new_ws, new_session)) => (ws, session) = (new_ws, new_session),
                None => {
                    add(&ctx.gave_up, 1);
                    return;
                }
            }
        }
        // The publisher is done: whatever of the room's stream never came is lost.
        if let Some(&last) = ctx.finals.get().and_then(|f| f.get(self.room)) {
            add(&ctx.lost, last.saturating_sub(track.last()));
        }
        add(&ctx.lost, track.missing.len() as u64 + track.lost_wide);
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    }

    fn target(&self, base: &Target) -> Target {
        Target {
            url: format!("{}{}", base.url, self.token),
            addr: base.addr,
        }
    }

    /// Connect home, note the session, join the room: (ws, session, epoch, offset).
    async fn join(
        &self,
        source: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> anyhow::Result<(Ws, String, String, u64)> {
        let target = self.target(&self.home);
        let (mut ws, welcome) =
            conn::connect_welcomed(&target, source, Protocol::Wss, timeout).await?;
        let session = session_of(&welcome)?;
        let room = &self.room_name;
        let frame = format!(r#"{{"event":"bench.join","data":{{"room":"{room}"}},"id":"join"}}"#);
        tokio::time::timeout(timeout, async {
            ws.send(Message::text(frame)).await?;
            let mut position = None;
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                if text.starts_with(r#"{"event":"$joined""#) {
                    position = Some(joined_position(&text, room)?);
                } else if text.starts_with(r#"{"ack":"join""#) {
                    if !text.contains(r#""ok":true"#) {
                        bail!("join refused: {text}");
                    }
                    let (epoch, offset) =
                        position.ok_or_else(|| anyhow!("the join's ack came without $joined"))?;
                    return Ok((epoch, offset));
                }
            }
            bail!("connection closed while joining")
        })
        .await
        .map_err(|_| anyhow!("join of room {room} timed out"))?
        .map(|(epoch, offset)| (ws, session, epoch, offset))
    }

    /// Follow the room until the socket dies or the run stops.
    async fn read_live(
        &self,
        ws: &mut Ws,
        track: &mut Track,
        survivor: bool,
        ctx: &Ctx,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = stopped(stop) => return Ended::Stopped,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Died,
                Some(Ok(_)) => continue,
            };
            self.on_frame(&text, track, survivor, ctx);
        }
    }

    fn on_frame(&self, text: &str, track: &mut Track, survivor: bool, ctx: &Ctx) {
        match classify(Protocol::Wss, text, DELIVERY_EVENT) {
            Inbound::Delivery(_) => {
                let [offset, ts] = fields_u64(text, ["offset", "ts"]);
                add(&ctx.received, 1);
                if let Some(offset) = offset {
                    track.see(offset, ctx);
                }
                if let (true, Some(ts)) = (survivor, ts) {
                    let phase = ctx.phase.load(Ordering::Relaxed).min(AFTER) as usize;
                    record(&ctx.survivors[phase], now_us().saturating_sub(ts));
                }
            }
            _ if text.starts_with(r#"{"event":"$gap""#) => {
                add(&ctx.gaps, 1);
                track.resync = true;
            }
            _ => {}
        }
    }

    /// Reconnect to the survivor with full-jitter exponential backoff and resume;
    /// `None` when it did not work within the give-up time.
    #[allow(clippy::too_many_arguments)]
    async fn come_back(
        &self,
        session: &str,
        epoch: &mut String,
        track: &mut Track,
        ctx: &Ctx,
        sources: &conn::Sources,
        attempt_source: &mut usize,
        opts: Opts,
        stop: &watch::Receiver<bool>,
    ) -> Option<(Ws, String)> {
        let give_up = Instant::now() + opts.give_up;
        let target = self.target(&self.survivor);
        for attempt in 0u32.. {
            let cap = opts
                .backoff_max_ms
                .min(opts.backoff_min_ms.saturating_mul(1 << attempt.min(20)));
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=cap))).await;
            if Instant::now() > give_up || *stop.borrow() {
                return None;
            }
            add(&ctx.attempts, 1);
            *attempt_source += opts.clients;
            let dialed = Instant::now();
            let timeout = opts.connect_timeout;
            let (mut ws, welcome) = match conn::connect_welcomed(
                &target,
                sources.pick(*attempt_source),
                Protocol::Wss,
                timeout,
            )
            .await
            {
                Ok(w) => w,
                Err(_) => {
                    add(&ctx.failed_attempts, 1);
                    continue;
                }
            };
            record(&ctx.handshake, dialed.elapsed().as_micros() as u64);
            let Ok(new_session) = session_of(&welcome) else {
                add(&ctx.failed_attempts, 1);
                continue;
            };
            match self
                .resume(&mut ws, session, epoch, track, ctx, timeout)
                .await
            {
                Ok(()) => return Some((ws, new_session)),
                Err(_) => add(&ctx.failed_resumes, 1),
            }
        }
        None
    }

    /// Send `$resume` and take in the replay up to its ack. Deliveries are held until
    /// the ack says whether the room was recovered (if not, `$joined` gives the new
    /// position and the stretch in between is flagged, not lost).
    async fn resume(
        &self,
        ws: &mut Ws,
        session: &str,
        epoch: &mut String,
        track: &mut Track,
        ctx: &Ctx,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let room = &self.room_name;
        let frame = json!({
            "event": "$resume",
            "data": { "session": session, "rooms": { room: { "epoch": *epoch, "offset": track.last() } } },
            "id": "r",
        })
        .to_string();
        let sent = Instant::now();
        ws.send(Message::text(frame)).await?;
        ctx.first_resume_sent_us
            .fetch_min(now_us(), Ordering::Relaxed);
        let mut held: Vec<String> = Vec::new();
        let mut joined = None;
        let ack = tokio::time::timeout(timeout, async {
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                if text.starts_with(r#"{"ack":"r""#) {
                    return Ok(serde_json::from_str::<Value>(&text)?);
                } else if text.starts_with(r#"{"event":"$joined""#) {
                    joined = Some(joined_position(&text, room)?);
                } else {
                    held.push(text.to_string());
                }
            }
            bail!("connection closed during the resume")
        })
        .await
        .map_err(|_| anyhow!("no resume ack within {timeout:?}"))??;
        if ack["ok"] != true {
            // Unknown session (or refused): the client is told, so it joins its room
            // again and reloads; what it missed is flagged, not lost.
            add(&ctx.refused, 1);
            let (new_epoch, offset, held) = self.rejoin(ws, timeout).await?;
            *epoch = new_epoch;
            track.skip_flagged(offset, ctx);
            for text in &held {
                self.on_frame(text, track, false, ctx);
            }
            return Ok(());
        }
        record(&ctx.resume_ack, sent.elapsed().as_micros() as u64);
        if ack["data"]["rooms"][room]["recovered"] != true {
            add(&ctx.not_recovered, 1);
            if let Some((new_epoch, offset)) = joined {
                *epoch = new_epoch;
                track.skip_flagged(offset, ctx);
            } else {
                track.resync = true;
            }
        }
        for text in &held {
            self.on_frame(text, track, false, ctx);
        }
        add(&ctx.resumed, 1);
        if !self.home_b {
            add(&ctx.resumed_a, 1);
            ctx.done_a_us.lock().push(now_us());
        }
        Ok(())
    }
}

impl Client {
    /// Join the room afresh on `ws`: its `(epoch, offset)` and the frames that came
    /// with them, held until the position is known.
    async fn rejoin(
        &self,
        ws: &mut Ws,
        timeout: Duration,
    ) -> anyhow::Result<(String, u64, Vec<String>)> {
        let room = &self.room_name;
        let frame = format!(r#"{{"event":"bench.join","data":{{"room":"{room}"}},"id":"join"}}"#);
        ws.send(Message::text(frame)).await?;
        tokio::time::timeout(timeout, async {
            let (mut position, mut held) = (None, Vec::new());
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                if text.starts_with(r#"{"event":"$joined""#) {
                    position = Some(joined_position(&text, room)?);
                } else if text.starts_with(r#"{"ack":"join""#) {
                    let (epoch, offset) =
                        position.ok_or_else(|| anyhow!("the join's ack came without $joined"))?;
                    return Ok((epoch, offset, held));
                } else {
                    held.push(text.to_string());
                }
            }
            bail!("connection closed while joining")
        })
        .await
        .map_err(|_| anyhow!("rejoin of {room} timed out"))?
    }
}

fn session_of(welcome: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(welcome).context("reading $welcome")?;
    v["data"]["session"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("$welcome has no session: {welcome}"))
}

/// `(epoch, offset)` of a `$joined` for `room` (a room with history).
fn joined_position(text: &str, room: &str) -> anyhow::Result<(String, u64)> {
    let v: Value = serde_json::from_str(text)?;
    if v["data"]["room"] != room {
        bail!("$joined for another room: {text}");
    }
    match (v["data"]["epoch"].as_str(), v["data"]["offset"].as_u64()) {
        (Some(e), Some(o)) => Ok((e.to_string(), o)),
        _ => bail!("room {room} has no history ({text}): run the nodes on bench/pack-history"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_has_members_on_both_nodes_and_workers_hold_one_node() {
        let (clients, rooms) = (40, 4);
        for r in 0..rooms {
            let homes: Vec<usize> = (0..clients)
                .filter(|&i| client_plan(i, rooms).0 == r)
                .map(|i| client_plan(i, rooms).1)
                .collect();
            assert_eq!(homes.iter().filter(|&&h| h == NODE_B).count(), 5);
        }
        let order = by_node(clients, rooms);
        let homes: Vec<usize> = order.iter().map(|&i| client_plan(i, rooms).1).collect();
        assert!(homes[..20].iter().all(|&h| h != NODE_B));
        assert!(homes[20..].iter().all(|&h| h == NODE_B));
    }
}
