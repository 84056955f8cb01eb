//! Scripted events: every message runs a read-modify-write script (`bench.incr`: read a
//! counter, add one, write it back) on shared state, from many connections on every node
//! at once. Closed loop: each client keeps `--window` events in flight for `--duration`.
//! At the end the counters are read back (`bench.get`) and must equal the number of
//! increments the server acknowledged: a lost update shows up as a wrong count.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, classify, event_frame, Inbound, Protocol, Target, Ws};
use crate::stats::{self, new_histogram};
use crate::Common;

const INCR_EVENT: &str = "bench.incr";
const GET_EVENT: &str = "bench.get";

#[derive(Debug, clap::Args)]
pub struct ScriptedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Client connections, spread round-robin over the URLs.
    #[arg(long, default_value_t = 48)]
    pub clients: usize,
    /// Events each client keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Counters the clients share (client i increments counter i % keys); 1 puts every
    /// event on the same key, the worst case for optimistic transactions.
    #[arg(long, default_value_t = 1)]
    pub keys: usize,
}

#[derive(Default)]
struct ClientResult {
    ok: u64,
    errors: BTreeMap<String, u64>,
    outstanding: u64,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

pub async fn run(args: ScriptedArgs) -> anyhow::Result<Value> {
    let common = &args.common;
    if common.protocol != Protocol::Wss {
        bail!("scripted mode needs a wss-engine server (bench/pack's bench.incr)");
    }
    if args.clients == 0 || args.window == 0 || args.keys == 0 {
        bail!("--clients, --window and --keys must be at least 1");
    }
    let targets = common.targets().await?;
    let run_id: u32 = rand::random();
    let keys: Vec<String> = (0..args.keys)
        .map(|i| format!("b{run_id:08x}-{i}"))
        .collect();
    let retries_before = script_retries(&targets).await;

    eprintln!(
        "scripted: connecting {} clients over {} node(s)",
        args.clients,
        targets.len()
    );
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let target = &targets[i % targets.len()];
        clients.push(
            conn::connect(
                target,
                common.sources().pick(i),
                Protocol::Wss,
                common.connect_timeout(),
            )
            .await?,
        );
    }
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, ws) in clients.into_iter().enumerate() {
        let key = keys[i % keys.len()].clone();
        let window = args.window;
        tasks.spawn(client(ws, key, window, duration));
    }
    let mut total = ClientResult::default();
    let mut latency = new_histogram();
    let mut survivors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (result, ws) = joined.map_err(|e| anyhow!("client task failed: {e}"))?;
        total.ok += result.ok;
        total.outstanding += result.outstanding;
        for (code, n) in result.errors {
            *total.errors.entry(code).or_default() += n;
        }
        if let Some(h) = &result.latency {
            let _ = latency.add(h);
        }
        if let Some(ws) = ws {
            survivors.push(ws);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let retries_after = script_retries(&targets).await;

    // Read every counter back through a surviving connection.
    let mut final_count = 0u64;
    let mut read_ok = false;
    if let Some(ws) = survivors.first_mut() {
        read_ok = true;
        for key in &keys {
            match read_counter(ws, key).await {
                Ok(v) => final_count += v,
                Err(e) => {
                    eprintln!("scripted: reading {key} failed: {e:#}");
                    read_ok = false;
                }
            }
        }
    }
    for mut ws in survivors {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    let exact = read_ok && final_count == total.ok;
    let events_per_s = total.ok as f64 / elapsed.max(1e-9);
    eprintln!(
        "scripted: {} ok in {elapsed:.1}s = {events_per_s:.0} events/s; errors {:?}; final count {final_count} ({})",
        total.ok,
        total.errors,
        if exact { "exact" } else { "WRONG" }
    );
    Ok(json!({
        "mode": "scripted",
        "protocol": common.protocol,
        "urls": common.url,
        "clients": args.clients,
        "window": args.window,
        "keys": args.keys,
        "duration_s": args.duration,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "acked_ok": total.ok,
        "errors": total.errors,
        "unanswered": total.outstanding,
        "events_per_s": events_per_s.round(),
        "latency": stats::summary(&latency),
        "script_retries": match (retries_before, retries_after) {
            (Some(a), Some(b)) => json!(b.saturating_sub(a)),
            _ => Value::Null,
        },
        "final_count": final_count,
        "exact": exact,
        "ok": exact && total.ok > 0,
    }))
}

/// One client: keep `window` increments in flight until `duration` passes, then collect
/// the outstanding acks (bounded wait). Returns the socket if it is still usable.
async fn client(
    mut ws: Ws,
    key: String,
    window: usize,
    duration: Duration,
) -> (ClientResult, Option<Ws>) {
    let mut result = ClientResult {
        latency: Some(new_histogram()),
        ..Default::default()
    };
    let data = format!(r#"{{"key":"{key}"}}"#);
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(window);
    let mut next_id = 1u64;
    let start = tokio::time::Instant::now();
    let stop_sending = start + duration;
    let give_up = stop_sending + Duration::from_secs(10);
    let mut healthy = true;
    loop {
        let now = tokio::time::Instant::now();
        if now < stop_sending {
            while in_flight.len() < window {
                let frame = event_frame(Protocol::Wss, INCR_EVENT, &data, Some(next_id));
                if ws.feed(Message::text(frame)).await.is_err() {
                    healthy = false;
                    break;
                }
                in_flight.insert(next_id, Instant::now());
                next_id += 1;
            }
            if !healthy || ws.flush().await.is_err() {
                healthy = false;
                break;
            }
        } else if in_flight.is_empty() {
            break;
        }
        let frame = tokio::select! {
            f = ws.next() => f,
            _ = tokio::time::sleep_until(give_up) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                healthy = false;
                break;
            }
            Some(Ok(_)) => continue,
        };
        if let Inbound::Ack { id, ok, rest } = classify(Protocol::Wss, &text, "") {
            if let Some(sent) = in_flight.remove(&id) {
                if let Some(h) = result.latency.as_mut() {
                    h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
            if ok {
                result.ok += 1;
            } else {
                *result.errors.entry(error_code(rest)).or_default() += 1;
            }
        }
    }
    result.outstanding = in_flight.len() as u64;
    (result, healthy.then_some(ws))
}

fn error_code(rest: &str) -> String {
    rest.split(r#""code":""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("unknown")
        .to_string()
}

async fn read_counter(ws: &mut Ws, key: &str) -> anyhow::Result<u64> {
    const ID: u64 = u64::MAX / 2;
    let frame = event_frame(
        Protocol::Wss,
        GET_EVENT,
        &format!(r#"{{"key":"{key}"}}"#),
        Some(ID),
    );
    ws.send(Message::text(frame)).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..10_000 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Inbound::Ack { id: ID, ok, .. } = classify(Protocol::Wss, &t, "") {
                        if !ok {
                            bail!("{GET_EVENT} failed: {t}");
                        }
                        let v: Value = serde_json::from_str(&t)?;
                        return v["data"]["value"]
                            .as_u64()
                            .ok_or_else(|| anyhow!("{GET_EVENT} answered {t}"));
                    }
                }
                Some(Ok(_)) => {}
                _ => bail!("connection closed while reading {key}"),
            }
        }
        bail!("no answer to {GET_EVENT}")
    })
    .await
    .map_err(|_| anyhow!("{GET_EVENT} timed out"))??;
    Ok(answer)
}

/// Sum of `wss_script_retries_total` over every node's `/metrics` (None if unreadable).
pub async fn script_retries(targets: &[Target]) -> Option<u64> {
    let mut total = 0u64;
    for t in targets {
        let body = http_get(t, "/metrics").await.ok()?;
        total += body
            .lines()
            .filter(|l| l.starts_with("wss_script_retries_total"))
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Some(total)
}

/// A minimal HTTP/1.1 GET (no client library needed for one Prometheus page).
async fn http_get(target: &Target, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_BODY: u64 = 16 << 20;
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(target.addr).await?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.addr
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP answer"))?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_string())
    })
    .await
    .map_err(|_| anyhow!("GET {path} timed out"))?
}
