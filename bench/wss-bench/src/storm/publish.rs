//! The storm's publishers: each sends its share of the rate to its rooms on node B,
//! every message with an id, and counts the acks (an ack = committed = has its offset).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{stopped, PUB_WINDOW};
use crate::conn::{self, classify, Inbound, Protocol, Target};
use crate::stats::{self, now_us};

/// What the publisher did: acknowledged publishes per room (= each room's last offset,
/// the rooms being fresh), and what did not go as planned.
pub(super) struct Published {
    pub finals: Vec<u64>,
    /// Publish → ack latency (commit on B, through Redis), before and during the storm.
    pub ack: [Histogram<u64>; 2],
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
}

impl Published {
    pub fn new(rooms: usize) -> Self {
        Self {
            finals: vec![0; rooms],
            ack: [stats::new_histogram(), stats::new_histogram()],
            sent: 0,
            acked: 0,
            refused: 0,
        }
    }
}

/// Publish at `rate` msg/s round-robin over `mine` (index, name) until `stop`, then
/// wait for every outstanding ack (committed = has its offset).
pub(super) async fn publish(
    target: Target,
    mine: Vec<(usize, String)>,
    rooms: usize,
    rate: f64,
    mut stop: watch::Receiver<bool>,
    storming: Arc<AtomicBool>,
    timeout: Duration,
) -> anyhow::Result<Published> {
    let mut ws = conn::connect(&target, None, Protocol::Wss, timeout).await?;
    let mut out = Published::new(rooms);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut sent_at: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    loop {
        if let Some(deadline) = stopping {
            if out.acked + out.refused == out.sent || tokio::time::Instant::now() > deadline {
                break;
            }
        }
        tokio::select! {
            frame = ws.next() => {
                let Some(frame) = frame else { bail!("the publisher's connection closed") };
                let Message::Text(text) = frame? else { continue };
                match classify(Protocol::Wss, &text, "bench.msg") {
                    Inbound::Ack { id, ok: true, .. } => {
                        out.acked += 1;
                        if let Some(at) = sent_at.remove(&id) {
                            let during = usize::from(storming.load(Ordering::Relaxed));
                            out.ack[during].saturating_record(at.elapsed().as_micros().max(1) as u64);
                        }
                        out.finals[mine[id as usize % mine.len()].0] += 1;
                    }
                    Inbound::Ack { ok: false, .. } | Inbound::Error => out.refused += 1,
                    _ => {}
                }
            }
            _ = tick.tick(), if stopping.is_none() => {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while out.sent < due && out.sent - out.acked - out.refused < PUB_WINDOW {
                    let n = out.sent;
                    ws.feed(Message::text(format!(
                        r#"{{"event":"bench.pub","data":{{"room":"{}","k":0,"p":0,"seq":{},"ts":{}}},"id":{n}}}"#,
                        mine[n as usize % mine.len()].1, n + 1, now_us()
                    ))).await?;
                    sent_at.insert(n, Instant::now());
                    out.sent += 1;
                }
                ws.flush().await?;
            }
            _ = stopped(&mut stop), if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now() + Duration::from_secs(15));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping.is_some() => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(out)
}
