//! Group placement: deliveries to rooms with history that this node places while earlier
//! placements are on their way to Redis go together, in one script call.
//!
//! Placing a delivery (its offset, its history entry, its publish) is a Lua script, and
//! Redis spends about as much on receiving, setting up and answering one script call as
//! on the work inside it: measured on Redis 7.0, 22 µs of Redis CPU per placement sent
//! alone, 12 µs each in calls of eight. Redis is the one process every node shares, so
//! this is what bounds a cluster's deliveries to rooms with history.
//!
//! Every placement of this node joins one queue. When fewer than [`IN_FLIGHT`] calls
//! are out, the placement's own task sends the queue at once (a quiet node pays no
//! extra hop, no added latency); otherwise it waits, and the call that comes back first
//! hands the queue to a task that sends it as one call, and so on while placements
//! keep arriving. A busy node thus pays one call for many.
//!
//! Order: the sender of a batch delivers its placements to this node's members in the
//! order Redis placed them, before answering their tasks; and a connection sends its
//! next event only once its previous one was placed, so one sender's deliveries never
//! share a batch out of order.
//!
//! One Redis only (and Sentinel's primary): on a Redis Cluster the rooms of one batch
//! would live in different slots, so each placement is its own call there
//! (`publish.lua`, with its once-key).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use redis::Value as RedisValue;
use tokio::sync::oneshot;

use super::wire::{header, parse_placed};
use super::{too_late, unavailable, RedisBackend, TOO_LATE};
use crate::backend::{new_epoch, BackendError, Channel};
use crate::delivery::{Envelope, HistoryPolicy};

/// Script calls one node has out at a time; placements queue behind them.
const IN_FLIGHT: usize = 4;
/// Most placements in one call (a Lua call's arguments stay small).
const MAX_BATCH: usize = 64;

type Placed = Result<(Arc<str>, u64), BackendError>;

/// One delivery to place, and where to answer.
struct Request {
    envelope: Envelope,
    room: String,
    policy: HistoryPolicy,
    reply: oneshot::Sender<Placed>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Request>,
    in_flight: usize,
}

/// The queue placements wait in.
pub(super) struct Placer {
    queue: Mutex<Queue>,
    /// For the task that takes over the queue when a call comes back.
    backend: Weak<RedisBackend>,
}

impl Placer {
    pub(super) fn new(backend: Weak<RedisBackend>) -> Self {
        Self {
            queue: Mutex::default(),
            backend,
        }
    }

    /// Take the next batch, or give the call slot back when nothing waits.
    fn next_batch(&self) -> Option<Vec<Request>> {
        let mut queue = self.queue.lock();
        if queue.waiting.is_empty() {
            queue.in_flight -= 1;
            return None;
        }
        let n = queue.waiting.len().min(MAX_BATCH);
        Some(queue.waiting.drain(..n).collect())
    }

    /// A call came back (or its sender went away): whatever queued meanwhile goes out
    /// from a task of its own, holding the same slot.
    fn hand_off(&self) {
        {
            let mut queue = self.queue.lock();
            if queue.waiting.is_empty() {
                queue.in_flight -= 1;
                return;
            }
        }
        let (Some(backend), Ok(runtime)) = (
            self.backend.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) else {
            // Shutting down: the waiting tasks hear `unavailable` as their senders drop.
            let mut queue = self.queue.lock();
            queue.waiting.clear();
            queue.in_flight -= 1;
            return;
        };
        runtime.spawn(async move {
            while let Some(batch) = backend.placer.next_batch() {
                backend.place_batch(batch).await;
            }
        });
    }
}

/// Holds a call slot; hands the queue on when dropped, even if the task holding it is
/// cancelled mid-call.
struct Turn<'a>(&'a Placer);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.hand_off();
    }
}

impl RedisBackend {
    /// Place a delivery through the queue and deliver it here; its `(epoch, offset)`.
    pub(super) async fn place_queued(
        &self,
        envelope: &Envelope,
        room: &str,
        policy: &HistoryPolicy,
    ) -> Placed {
        let (reply, placed) = oneshot::channel();
        let lead = {
            let mut queue = self.placer.queue.lock();
            queue.waiting.push(Request {
                envelope: envelope.clone(),
                room: room.to_string(),
                policy: *policy,
                reply,
            });
            let lead = queue.in_flight < IN_FLIGHT;
            if lead {
                queue.in_flight += 1;
            }
            lead
        };
        if lead {
            let turn = Turn(&self.placer);
            let batch = {
                let mut queue = self.placer.queue.lock();
                let n = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..n).collect::<Vec<_>>()
            };
            self.place_batch(batch).await;
            drop(turn);
        }
        placed
            .await
            .map_err(|_| unavailable("the Redis backend is shutting down"))?
    }

    /// Place a batch in one call, deliver each placement here in order, and answer each
    /// of their tasks.
    async fn place_batch(&self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        metrics::histogram!("wss_redis_placement_batch").record(batch.len() as f64);
        let mut invocation = self.place_many_script.prepare_invoke();
        invocation.arg("PUBLISH").arg(self.deadlines.next());
        for request in &batch {
            invocation
                .key(self.names.position(&request.room))
                .key(self.names.history(&request.room))
                .arg(request.policy.size)
                .arg(super::store::ttl_ms(&request.policy))
                .arg(&*new_epoch())
                .arg(self.names.channel(&Channel::Room(request.room.clone())))
                .arg(header(&self.node_id, &request.envelope))
                .arg(&request.envelope.frame[..]);
        }
        let mut conn = self.conn.clone();
        let reply: Result<RedisValue, BackendError> =
            self.call(invocation.invoke_async(&mut conn)).await;
        match reply.and_then(|r| split(r, batch.len())) {
            Ok(placed) => {
                for (request, (epoch, offset)) in batch.into_iter().zip(placed) {
                    self.local
                        .deliver(&request.envelope.placed(epoch.clone(), offset));
                    let _ = request.reply.send(Ok((epoch, offset)));
                }
            }
            Err(e) => {
                for request in batch {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// `{ epoch1, offset1, epoch2, offset2, … }`, one pair per placement; -1 when the call
/// arrived after its deadline (nothing was placed).
fn split(reply: RedisValue, expected: usize) -> Result<Vec<(Arc<str>, u64)>, BackendError> {
    if reply == RedisValue::Int(TOO_LATE) {
        return Err(too_late());
    }
    let bad = || BackendError::Protocol("unexpected reply placing deliveries".into());
    let RedisValue::Array(items) = reply else {
        return Err(bad());
    };
    if items.len() != expected * 2 {
        return Err(bad());
    }
    let mut items = items.into_iter();
    let mut placed = Vec::with_capacity(expected);
    while let (Some(epoch), Some(offset)) = (items.next(), items.next()) {
        placed.push(parse_placed(RedisValue::Array(vec![epoch, offset]))?);
    }
    Ok(placed)
}
