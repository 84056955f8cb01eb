//! Deliveries between nodes: the `Bus` side of Redis, and the task that owns the
//! Pub/Sub connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubSink;
use redis::Value as RedisValue;

use super::store::unplaced;
use super::subscriptions::{Subscriptions, Want};
use super::wire::{decode_message, encode_end, encode_message, Message};
use std::sync::Arc;

use super::{bounded, PrimarySource, RedisBackend, Subscriber, MAX_BACKOFF, OP_TIMEOUT};
use crate::backend::{BackendError, Bus, Channel, Placement};
use crate::delivery::{Ending, Envelope};

pub(super) struct PubSubState {
    /// What is wanted (the connection task subscribes all of it after every reconnect)
    /// and what the live connection confirmed.
    subscriptions: Subscriptions,
    /// Channels no longer wanted, waiting for one batched UNSUBSCRIBE.
    leaving: parking_lot::Mutex<Vec<String>>,
    /// The live connection's command half; `None` while disconnected. The connection
    /// pipelines commands, so watchers only clone it and send concurrently (a reconnect
    /// storm subscribes thousands of user channels a second). The lock is held across
    /// an await only where a command must be ordered against every later SUBSCRIBE:
    /// the reconnect (subscribes everything wanted) and the unsubscriber (checks
    /// `wanted`, then unsubscribes).
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    ready: AtomicBool,
}

impl PubSubState {
    /// Wanting the always-on channels from the start.
    pub(super) fn new(always: impl IntoIterator<Item = String>) -> Self {
        Self {
            subscriptions: Subscriptions::new(always),
            leaving: parking_lot::Mutex::new(Vec::new()),
            sink: tokio::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn live_sink(&self) -> Option<PubSubSink> {
        self.sink.lock().await.clone()
    }
}

impl Bus for RedisBackend {
    fn publish(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Option<Placement>, BackendError>> {
        async move {
            if let Some((room, policy)) = unplaced(&envelope) {
                // A delivery to a room with history is a write (its offset and entry).
                let placement = self.place(&envelope, room, policy).await?;
                self.replicated().await?;
                return Ok(Some(placement));
            }
            self.publish_plain(&envelope).await.map(|()| None)
        }
        .boxed()
    }

    fn end_conn(&self, conn: &str, why: Ending) -> BoxFuture<'_, Result<(), BackendError>> {
        let conn = conn.to_string();
        async move {
            let node = crate::ids::node_of(&conn);
            if node == &*self.node_id {
                self.local.end_conn(&conn, why);
                return Ok(());
            }
            let mut cmd = redis::cmd(self.publish_command());
            cmd.arg(self.names.node_channel(node))
                .arg(encode_end(&self.node_id, &conn, why));
            self.query::<i64>(&cmd).await?;
            Ok(())
        }
        .boxed()
    }

    fn watch(&self, channel: Channel) -> BoxFuture<'_, Result<(), BackendError>> {
        let name = self.names.channel(&channel);
        async move {
            match &self.subscriber {
                Subscriber::Single(state) => state.watch(name).await,
                Subscriber::Cluster(shards) => shards.watch(name).await,
            }
        }
        .boxed()
    }

    fn unwatch(&self, channel: Channel) {
        let name = self.names.channel(&channel);
        match &self.subscriber {
            Subscriber::Single(state) => state.unwatch(name),
            Subscriber::Cluster(shards) => shards.unwatch(name),
        }
    }

    fn is_ready(&self) -> bool {
        self.is_healthy() && self.subscribed()
    }
}

impl RedisBackend {
    /// `PUBLISH`, or `SPUBLISH` (the channel's shard only) on a Redis Cluster.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.names.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Publish a delivery without a place in a stream, and deliver it here.
    pub(super) async fn publish_plain(&self, envelope: &Envelope) -> Result<(), BackendError> {
        if self.needs_publish(envelope) {
            if let Some(channel) = self.names.target_channel(&envelope.target) {
                let mut cmd = redis::cmd(self.publish_command());
                cmd.arg(&channel)
                    .arg(encode_message(&self.node_id, envelope));
                self.query::<i64>(&cmd).await?;
                metrics::counter!("wss_bus_published_total").increment(1);
            }
        }
        // Local recipients are served directly; this node drops its own echo.
        self.local.deliver(envelope);
        Ok(())
    }
}

impl PubSubState {
    /// A local recipient appeared for `channel`; resolves once subscribed.
    pub(super) async fn watch(&self, name: String) -> Result<(), BackendError> {
        if self.subscriptions.want(&name) == Want::Held {
            return Ok(());
        }
        // `wanted` was counted before taking the lock, so an unsubscriber that runs
        // first has either seen it and skipped the channel, or finished its
        // UNSUBSCRIBE before this SUBSCRIBE goes out.
        // On failure the channel stays wanted: the reconnect loop subscribes every
        // wanted channel, and the caller balances with `unwatch` if it gives up.
        let Some(mut sink) = self.live_sink().await else {
            return Err(BackendError::unavailable(
                "Pub/Sub connection to Redis is down",
            ));
        };
        bounded(sink.subscribe(&name)).await?;
        self.subscriptions.confirm([name]);
        Ok(())
    }

    pub(super) fn unwatch(self: &Arc<Self>, name: String) {
        if !self.subscriptions.unwant(&name) {
            return;
        }
        // The first channel to leave schedules the UNSUBSCRIBE; the ones that follow
        // while it waits for the lock go in the same command.
        let schedule = {
            let mut leaving = self.leaving.lock();
            leaving.push(name);
            leaving.len() == 1
        };
        if schedule {
            let pubsub = self.clone();
            tokio::spawn(async move { pubsub.unsubscribe_leaving().await });
        }
    }

    async fn unsubscribe_leaving(&self) {
        let mut sink = self.sink.lock().await;
        let mut names = std::mem::take(&mut *self.leaving.lock());
        // A join may have wanted one again while we waited for the lock.
        names.retain(|name| !self.subscriptions.is_wanted(name));
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return;
        }
        self.subscriptions.unconfirm(&names);
        if let Some(s) = sink.as_mut() {
            let _ = tokio::time::timeout(OP_TIMEOUT, s.unsubscribe(&names)).await;
        }
    }
}

/// Owns the Pub/Sub connection: connect, subscribe everything wanted, forward messages,
/// and on any failure start over. Ends when the backend is dropped.
pub(super) async fn pubsub_task(source: PrimarySource, backend: std::sync::Weak<RedisBackend>) {
    let mut switches = source.switches();
    let mut backoff = Duration::from_millis(50);
    let mut reconnected = false;
    loop {
        let Some(this) = backend.upgrade() else {
            return;
        };
        let Subscriber::Single(state) = &this.subscriber else {
            return;
        };
        let state = state.clone();
        let client = match source.client() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "no Redis to subscribe to");
                drop(this);
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        let connected =
            tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            _ => {
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut guard = state.sink.lock().await;
        let channels = state.subscriptions.wanted();
        let subscribed = bounded(sink.subscribe(&channels)).await;
        if subscribed.is_err() {
            drop(guard);
            drop(this);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        *guard = Some(sink);
        state.subscriptions.confirm(channels.iter().cloned());
        drop(guard);
        state.ready.store(true, Ordering::Release);
        tracing::info!(channels = channels.len(), "Redis Pub/Sub subscribed");
        if std::mem::replace(&mut reconnected, true) {
            // Whatever was published while this node was away never arrives: rooms
            // with history read it back. And Redis may have restarted empty between
            // two health pings: presence and sessions are written again.
            this.local.resync();
            this.recoveries.send_modify(|n| *n += 1);
        }
        backoff = Duration::from_millis(50);
        let node_id = this.node_id.clone();
        let local = this.local.clone();
        drop(this);

        // Forward messages until the connection ends. A ping every few seconds notices a
        // connection that died without closing.
        let mut ping = tokio::time::interval(Duration::from_secs(3));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    match decode_message(msg.get_payload_bytes()) {
                        Some((origin, _)) if origin == &*node_id => {}
                        Some((_, Message::Deliver(envelope))) => local.deliver(&envelope),
                        Some((_, Message::End(conn, why))) => {
                            local.end_conn(conn, why);
                        }
                        None => tracing::warn!(channel = msg.get_channel_name(), "unreadable Pub/Sub message"),
                    }
                }
                // The primary moved (Sentinel): this connection goes to a replica now.
                Ok(()) = async {
                    match switches.as_mut() {
                        Some(s) => s.changed().await.map_err(drop),
                        None => std::future::pending().await,
                    }
                } => break,
                _ = ping.tick() => {
                    // Not under the lock: the ping waits its turn in the pipeline, and
                    // watchers must not wait for it.
                    // In subscribed mode PING answers `["pong", ""]`, not a string: any
                    // answer proves the connection alive; only errors and timeouts don't.
                    let alive = match state.live_sink().await.as_mut() {
                        Some(s) => matches!(tokio::time::timeout(OP_TIMEOUT, s.ping::<RedisValue>()).await, Ok(Ok(_))),
                        None => false,
                    };
                    if !alive {
                        break;
                    }
                }
            }
        }
        state.ready.store(false, Ordering::Release);
        *state.sink.lock().await = None;
        state.subscriptions.unconfirm_all();
        tracing::warn!("Redis Pub/Sub connection lost; reconnecting");
    }
}
