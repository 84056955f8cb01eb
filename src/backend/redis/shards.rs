//! Sharded Pub/Sub on a Redis Cluster: each channel is subscribed (`SSUBSCRIBE`) on the
//! shard that owns its slot, so a message reaches only the shard of its channel and the
//! nodes listening there, instead of flooding every shard as classic Pub/Sub does.
//!
//! The cluster connection (one per shard, kept by the redis crate) carries commands and
//! subscriptions; pushes arrive at [`ShardPushes`]. Subscriptions are made one channel
//! (so one slot) at a time. Three things can silently take a subscription away, and each
//! is handled here:
//!
//! - a slot migrates or its shard fails over: the server sends `sunsubscribe`, and the
//!   channel is subscribed again (the connection follows the slot to its new owner);
//! - a connection breaks: every wanted channel is subscribed again once it is back;
//! - a shard stops delivering without telling anyone: every few seconds this node
//!   publishes a probe on a channel of each shard and expects it back; a shard whose
//!   probe does not return has its channels subscribed again.
//!
//! The node is ready only while every wanted channel is confirmed and every probe came
//! back; what was published while a subscription was missing is caught up by the room
//! streams' history after [`Sink::resync`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};

use super::conn::slot;
use super::subscriptions::{Subscriptions, Want};
use super::wire::{decode_message, Message};
use super::{bounded, Names, OP_TIMEOUT};
use crate::backend::BackendError;
use crate::delivery::Sink;

/// How often each shard is probed.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe not back within this is a shard that stopped delivering.
const PROBE_WITHIN: Duration = Duration::from_secs(3);

/// Subscription state shared by the push handler, the watchers and the probe task.
pub(super) struct Shards {
    node_id: Arc<str>,
    names: Names,
    local: Arc<dyn Sink>,
    /// What is wanted, and what the shards confirmed (`ssubscribe`) and have not taken
    /// back.
    subscriptions: Subscriptions,
    /// Probe channel → when its last probe was sent and whether it came back.
    probes: Mutex<HashMap<String, Probe>>,
    /// A subscription was lost: rooms with history must catch up.
    lost: AtomicBool,
    /// Set once the connection exists.
    conn: Mutex<Option<ClusterConnection>>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    sent: Option<Instant>,
    back: bool,
    /// A probe of this shard went unanswered; cleared when one comes back.
    late: bool,
}

/// The redis crate hands every push of the cluster connection to this, on the
/// connection's own task: it must not block.
pub(super) struct ShardPushes(pub(super) Weak<Shards>);

impl redis::aio::AsyncPushSender for ShardPushes {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match self.0.upgrade() {
            Some(shards) => {
                shards.push(info);
                Ok(())
            }
            None => Err(redis::aio::SendError),
        }
    }
}

fn channel_of(data: &[Value]) -> Option<String> {
    match data.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Shards {
    pub(super) fn new(
        node_id: Arc<str>,
        names: Names,
        local: Arc<dyn Sink>,
        always: impl IntoIterator<Item = String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            names,
            local,
            subscriptions: Subscriptions::new(always),
            probes: Mutex::new(HashMap::new()),
            lost: AtomicBool::new(false),
            conn: Mutex::new(None),
        })
    }

    pub(super) fn attach(self: &Arc<Self>, conn: ClusterConnection) {
        *self.conn.lock() = Some(conn);
        tokio::spawn(probe_task(Arc::downgrade(self)));
    }

    fn conn(&self) -> Option<ClusterConnection> {
        self.conn.lock().clone()
    }

    fn push(self: &Arc<Self>, info: PushInfo) {
        match info.kind {
            PushKind::SMessage | PushKind::Message => {
                let (Some(channel), Some(Value::BulkString(payload))) =
                    (channel_of(&info.data), info.data.get(1))
                else {
                    return;
                };
                if let Some(probe) = self.probes.lock().get_mut(&channel) {
                    probe.back = true;
                    probe.late = false;
                    return;
                }
                match decode_message(payload) {
                    Some((origin, _)) if origin == &*self.node_id => {}
                    Some((_, Message::Deliver(envelope))) => self.local.deliver(&envelope),
                    Some((_, Message::End(conn, why))) => {
                        self.local.end_conn(conn, why);
                    }
                    None => tracing::warn!(channel, "unreadable sharded Pub/Sub message"),
                }
            }
            PushKind::SSubscribe => {
                if let Some(channel) = channel_of(&info.data) {
                    self.subscriptions.confirm([channel]);
                }
            }
            PushKind::SUnsubscribe => {
                // Ours (an unwatch) or the server's (slot migrated, shard failed over):
                // a channel still wanted is subscribed again, on its slot's owner now.
                let Some(channel) = channel_of(&info.data) else {
                    return;
                };
                self.subscriptions.unconfirm([&channel]);
                let still_wanted = self.subscriptions.is_wanted(&channel)
                    || self.probes.lock().contains_key(&channel);
                if still_wanted {
                    tracing::info!(channel, "a shard dropped a subscription; subscribing again");
                    self.lost.store(true, Ordering::Release);
                    let this = self.clone();
                    tokio::spawn(async move { this.resubscribe(vec![channel]).await });
                }
            }
            PushKind::Disconnection => {
                // Which shard is not said: everything is confirmed again.
                tracing::warn!("a Redis Cluster connection broke; subscribing every channel again");
                self.subscriptions.unconfirm_all();
                self.lost.store(true, Ordering::Release);
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    this.resubscribe_all().await;
                });
            }
            _ => {}
        }
    }

    /// Subscribe every wanted channel (and the probes) again, one channel at a time.
    pub(super) async fn resubscribe_all(&self) {
        let mut channels = self.subscriptions.wanted();
        channels.extend(self.probes.lock().keys().cloned());
        self.resubscribe(channels).await;
    }

    async fn resubscribe(&self, channels: Vec<String>) {
        let Some(mut conn) = self.conn() else {
            return;
        };
        for channel in channels {
            if let Err(e) = bounded(conn.ssubscribe(&channel)).await {
                tracing::debug!(channel, error = %e, "sharded resubscribe failed; retried by the probe");
            }
        }
    }

    /// A local recipient appeared for `channel`; resolves once the shard confirmed.
    pub(super) async fn watch(&self, channel: String) -> Result<(), BackendError> {
        if self.subscriptions.want(&channel) == Want::Held {
            return Ok(());
        }
        let Some(mut conn) = self.conn() else {
            return Err(BackendError::unavailable("Redis Cluster is not connected"));
        };
        // One channel per command: a sharded subscription may not cross slots.
        bounded(conn.ssubscribe(&channel)).await?;
        self.subscriptions.confirm([channel]);
        Ok(())
    }

    pub(super) fn unwatch(self: &Arc<Self>, channel: String) {
        if !self.subscriptions.unwant(&channel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if this.subscriptions.is_wanted(&channel) {
                return;
            }
            if let Some(mut conn) = this.conn() {
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.sunsubscribe(&channel)).await;
            }
        });
    }

    /// Every wanted channel confirmed, and every shard's probe came back in time.
    pub(super) fn is_ready(&self) -> bool {
        if self.conn.lock().is_none() {
            return false;
        }
        let all_confirmed = self.subscriptions.all_confirmed();
        let probes = self.probes.lock();
        let probes_ok = !probes.is_empty()
            && probes.values().all(|p| {
                !p.late && (p.back || p.sent.is_none_or(|at| at.elapsed() < PROBE_WITHIN))
            });
        all_confirmed && probes_ok
    }

    /// Pick, for each master, a probe channel of this node in one of its slots.
    async fn probe_channels(&self) -> Result<Vec<String>, BackendError> {
        let Some(mut conn) = self.conn() else {
            return Ok(Vec::new());
        };
        let slots: Value =
            bounded(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn)).await?;
        let Value::Array(ranges) = slots else {
            return Ok(Vec::new());
        };
        // One range per master is enough to reach it; masters with several ranges
        // are probed through the first.
        let mut masters: HashMap<String, (u16, u16)> = HashMap::new();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let addr = match (master.first(), master.get(1)) {
                (Some(Value::BulkString(h)), Some(Value::Int(p))) => {
                    format!("{}:{p}", String::from_utf8_lossy(h))
                }
                _ => continue,
            };
            masters.entry(addr).or_insert((*start as u16, *end as u16));
        }
        let mut channels = Vec::new();
        for (start, end) in masters.values() {
            let found = (0u32..100_000).find_map(|i| {
                let channel = format!("{}probe:{{{}-{i}}}", self.names.prefix(), self.node_id);
                let s = slot(channel.as_bytes());
                (s >= *start && s <= *end).then_some(channel)
            });
            channels.extend(found);
        }
        Ok(channels)
    }

    /// After a subscription was lost, what was published meanwhile never arrived.
    fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }
}

/// Probe every shard every [`PROBE_EVERY`]; a silent one has its channels subscribed
/// again. The probe channels are chosen again each round, so a topology change (a new
/// master) is followed. Ends with the backend.
async fn probe_task(shards: Weak<Shards>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(this) = shards.upgrade() else {
            return;
        };
        let silent: Vec<String> = this
            .probes
            .lock()
            .iter_mut()
            .filter(|(_, p)| !p.back && p.sent.is_some_and(|at| at.elapsed() >= PROBE_WITHIN))
            .map(|(c, p)| {
                p.late = true;
                c.clone()
            })
            .collect();
        let unconfirmed = !this.subscriptions.all_confirmed();
        if !silent.is_empty() || unconfirmed {
            if !silent.is_empty() {
                tracing::warn!(probes = ?silent, "a Redis Cluster shard stopped delivering; subscribing again");
            }
            this.lost.store(true, Ordering::Release);
            this.resubscribe_all().await;
        } else if this.take_lost() {
            // Every subscription is back: catch up what went missing.
            this.local.resync();
        }
        let channels = match this.probe_channels().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the cluster's slots");
                continue;
            }
        };
        let Some(mut conn) = this.conn() else {
            continue;
        };
        // Probes of ranges no master owns any more (resharding) are dropped.
        let gone: Vec<String> = {
            let mut probes = this.probes.lock();
            let gone = probes
                .keys()
                .filter(|c| !channels.contains(c))
                .cloned()
                .collect::<Vec<_>>();
            probes.retain(|c, _| channels.contains(c));
            gone
        };
        for channel in gone {
            let _ = bounded(conn.sunsubscribe(&channel)).await;
        }
        for channel in channels {
            let known = this.probes.lock().get(&channel).copied();
            match known {
                // Still in flight and not yet late: wait for it rather than resend, or
                // a shard that stopped delivering would never be caught.
                Some(p) if !p.back && p.sent.is_some_and(|at| at.elapsed() < PROBE_WITHIN) => {
                    continue;
                }
                Some(_) => {}
                None => {
                    if bounded(conn.ssubscribe(&channel)).await.is_err() {
                        continue;
                    }
                }
            }
            this.probes
                .lock()
                .entry(channel.clone())
                .and_modify(|p| {
                    p.sent = Some(Instant::now());
                    p.back = false;
                })
                .or_insert(Probe {
                    sent: Some(Instant::now()),
                    back: false,
                    late: false,
                });
            let _ = bounded(
                redis::cmd("SPUBLISH")
                    .arg(&channel)
                    .arg("probe")
                    .query_async::<i64>(&mut conn),
            )
            .await;
        }
    }
}
