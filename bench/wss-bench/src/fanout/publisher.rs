//! A fan-out publisher: one connection that sends the steps' messages on its schedule
//! (phased, Poisson or lockstep, seeded per publisher) and counts what the server
//! answers while it does.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::{Schedule, Shared, DELIVERY_EVENT, MAX_BURST, PUBLISH_EVENT};
use crate::conn::{classify, event_frame, Inbound, Ws};
use crate::stats::{self, now_us};

/// A publisher's send times within a step: seconds from the step's start.
pub(super) struct Spacing {
    schedule: Schedule,
    rng: rand::rngs::StdRng,
}

impl Spacing {
    pub(super) fn new(schedule: Schedule, seed: u64, publisher: u64) -> Self {
        use rand::SeedableRng;
        // Spread the publishers' seeds over the whole u64 space (splitmix's constant):
        // seeds 1 and 2 of neighbouring publishers must not give related streams.
        let seed = seed.wrapping_add(publisher.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Self {
            schedule,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// Time of the first message of a step at `rate` messages per second.
    fn first(&mut self, rate: f64) -> f64 {
        use rand::Rng;
        match self.schedule {
            Schedule::Lockstep => 0.0,
            // A uniform phase within one interval: the publishers' sends interleave.
            Schedule::Phased => self.rng.random::<f64>() / rate,
            // A Poisson process has no phase: its first arrival is one exponential gap.
            Schedule::Poisson => self.gap(rate),
        }
    }

    /// Time from one message to the next.
    fn gap(&mut self, rate: f64) -> f64 {
        use rand::Rng;
        match self.schedule {
            Schedule::Lockstep | Schedule::Phased => 1.0 / rate,
            Schedule::Poisson => {
                // Inverse CDF of the exponential distribution; 1 - u is in (0, 1].
                let u: f64 = self.rng.random();
                -(1.0 - u).ln() / rate
            }
        }
    }
}

/// What the coordinator asks a publisher to do.
pub(super) struct StepCmd {
    pub(super) k: usize,
    pub(super) rate: f64,
    pub(super) duration: Duration,
    pub(super) done: oneshot::Sender<()>,
}

pub(super) async fn publisher(
    mut ws: Ws,
    p: u64,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<StepCmd>,
    mut spacing: Spacing,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut seq = 0u64;
    let mut room = p as usize;
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        // Between steps: answer pings, notice errors, wait for the next step.
        let cmd = tokio::select! {
            cmd = commands.recv() => match cmd { Some(c) => c, None => break },
            frame = ws.next() => {
                handle_publisher_frame(&mut ws, &shared, None, frame).await?;
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let step = shared
            .steps
            .get(cmd.k)
            .ok_or_else(|| anyhow!("step {} out of range", cmd.k))?;
        let secs = cmd.duration.as_secs_f64();
        let start = tokio::time::Instant::now();
        // A publisher that cannot keep up stops at the step's end plus a grace second:
        // the step then fails on its send time rather than running on forever.
        let give_up = start + cmd.duration + Duration::from_secs(1);
        let (mut sent, mut expected) = (0u64, 0u64);
        // Seconds from `start` at which the next message is due; the step sends every
        // message due before its duration ends (rate × duration of them, give or take
        // one for the phase; a Poisson count for `--poisson`).
        let mut at = spacing.first(cmd.rate);
        while at < secs && tokio::time::Instant::now() < give_up {
            let elapsed = start.elapsed().as_secs_f64();
            let mut burst = 0;
            while at < secs && at <= elapsed && burst < MAX_BURST {
                seq += 1;
                room = (room + 1) % shared.rooms.len();
                let data = format!(
                    r#"{{"room":"{}","k":{},"p":{p},"seq":{seq},"ts":{},"pad":"{}"}}"#,
                    shared.rooms[room],
                    cmd.k,
                    now_us(),
                    shared.pad
                );
                ws.feed(Message::text(event_frame(
                    shared.protocol,
                    PUBLISH_EVENT,
                    &data,
                    None,
                )))
                .await?;
                sent += 1;
                burst += 1;
                expected += shared.members[room];
                at += spacing.gap(cmd.rate);
            }
            if burst > 0 {
                ws.flush().await?;
            }
            if at >= secs {
                break;
            }
            let next = start + Duration::from_secs_f64(at);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                frame = ws.next() => handle_publisher_frame(&mut ws, &shared, Some(cmd.k), frame).await?,
            }
        }
        stats::add(&step.sent, sent);
        stats::add(&step.expected, expected);
        let _ = cmd.done.send(());
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(())
}

async fn handle_publisher_frame(
    ws: &mut Ws,
    shared: &Shared,
    step: Option<usize>,
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> anyhow::Result<()> {
    let text = match frame {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(f))) => bail!("server closed a publisher: {f:?}"),
        None => bail!("publisher connection closed"),
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(_)) => return Ok(()),
    };
    match classify(shared.protocol, &text, DELIVERY_EVENT) {
        Inbound::Ping => ws.send(Message::text("3")).await?,
        Inbound::Error => {
            if let Some(step) = step.and_then(|k| shared.steps.get(k)) {
                stats::add(&step.errors, 1);
            }
            eprintln!("fanout: publisher got {text}");
        }
        _ => stats::add(&shared.other_frames, 1),
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phased_publishers_start_apart_within_one_interval_and_repeat_with_the_seed() {
        let rate = 10.0;
        let firsts: Vec<f64> = (0..50)
            .map(|p| Spacing::new(Schedule::Phased, 7, p).first(rate))
            .collect();
        assert!(firsts.iter().all(|t| (0.0..0.1).contains(t)), "{firsts:?}");
        let mut sorted = firsts.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        assert_eq!(sorted.len(), 50, "every publisher has its own phase");
        // Spread over the interval, not bunched: both halves are used.
        assert!(firsts.iter().filter(|t| **t < 0.05).count() >= 10);
        assert!(firsts.iter().filter(|t| **t >= 0.05).count() >= 10);
        let again: Vec<f64> = (0..50)
            .map(|p| Spacing::new(Schedule::Phased, 7, p).first(rate))
            .collect();
        assert_eq!(firsts, again);
        let mut one = Spacing::new(Schedule::Phased, 7, 0);
        assert_eq!(one.gap(rate), 0.1);
        assert_eq!(Spacing::new(Schedule::Lockstep, 7, 3).first(rate), 0.0);
    }

    #[test]
    fn poisson_gaps_average_one_interval() {
        let mut s = Spacing::new(Schedule::Poisson, 1, 0);
        let n = 20_000;
        let mean = (0..n).map(|_| s.gap(100.0)).sum::<f64>() / n as f64;
        assert!((mean - 0.01).abs() < 0.0005, "{mean}");
    }
}
