//! Shared state, rooms and live connections: the `StateStore` side of Redis.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Value as RedisValue;
use serde_json::Value;

use super::history::ttl_ms;
use super::wire::{encode_message, encode_value, header, parse_placed, parse_read};
use super::{too_late, RedisBackend, TOO_LATE};
use crate::backend::{
    new_epoch, BackendError, Channel, Commit, CommitOutcome, Placement, StateStore, VersionCheck,
    Versioned,
};
use crate::delivery::{Envelope, HistoryPolicy, Position, StreamPosition, Target};

/// Lua's `unpack` has a stack limit; spread long argument lists over several calls.
const LUA_CHUNK: usize = 1000;

/// How long a cluster commit's or placement's once-key lives: far longer than the
/// cluster client's retries of one command take.
const ONCE_TTL_MS: u64 = 60_000;

impl RedisBackend {
    /// Whether a delivery has recipients on other nodes at all.
    pub(super) fn needs_publish(&self, envelope: &Envelope) -> bool {
        match &envelope.target {
            crate::delivery::Target::Conn(c) => crate::ids::node_of(c) != &*self.node_id,
            crate::delivery::Target::None => false,
            _ => true,
        }
    }

    async fn commit_inner(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        let outcome = if self.names.is_cluster() {
            self.commit_then_publish(commit).await?
        } else {
            self.commit_state(commit).await?
        };
        if matches!(outcome, CommitOutcome::Committed(_)) {
            self.replicated().await?;
        }
        Ok(outcome)
    }

    /// The commit script: versions checked, writes applied and (on one Redis) the
    /// deliveries placed and published, in one atomic step.
    async fn commit_state(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        let mut keys: Vec<String> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        // KEYS holds `v:<key>`, `s:<key>` pairs; Lua indexes are 1-based.
        for key in commit
            .reads
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(commit.writes.iter().map(|w| w.key.as_str()))
        {
            if !index.contains_key(key) {
                index.insert(key, keys.len() + 1);
                keys.push(self.names.version(key));
                keys.push(self.names.state(key));
            }
        }
        let reads: Vec<Value> = commit
            .reads
            .iter()
            .map(|(k, v)| serde_json::json!([index[k.as_str()], v]))
            .collect();
        let writes: Vec<Value> = commit
            .writes
            .iter()
            .map(|w| {
                let i = index[w.key.as_str()];
                let (kind, items) = encode_value(w.value.as_ref());
                let ttl = w.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                serde_json::json!([i, i + 1, kind, items, ttl])
            })
            .collect();
        let mut publish: Vec<Value> = Vec::new();
        let mut streams: Vec<Value> = Vec::new();
        // (index into commit.publish, room) of each delivery the script places.
        let mut placing: Vec<(usize, &str)> = Vec::new();
        for (n, envelope) in commit.publish.iter().enumerate() {
            if let Some((room, policy)) = unplaced(envelope) {
                let at = keys.len() + 1;
                keys.push(self.names.position(room));
                keys.push(self.names.history(room));
                streams.push(serde_json::json!([
                    at,
                    at + 1,
                    policy.size,
                    ttl_ms(policy),
                    &*new_epoch(),
                    self.names.channel(&Channel::Room(room.to_string())),
                    header(&self.node_id, envelope),
                    String::from_utf8_lossy(&envelope.frame),
                ]));
                placing.push((n, room));
            } else if self.needs_publish(envelope) {
                if let Some(channel) = self.names.target_channel(&envelope.target) {
                    let message = String::from_utf8_lossy(&encode_message(&self.node_id, envelope))
                        .into_owned();
                    publish.push(serde_json::json!([channel, message]));
                }
            }
        }
        let spec =
            serde_json::json!({ "r": reads, "w": writes, "p": publish, "s": streams }).to_string();
        let mut invocation = self.commit_script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let skip_check = self.version_check == VersionCheck::Skip;
        // A cluster commit writes state only, all in one slot: its once-key joins it.
        let once = match keys.get(1) {
            Some(state_key) if self.names.is_cluster() => {
                invocation.key(self.names.once(state_key, &self.next_once_id()));
                keys.len() + 1
            }
            _ => 0,
        };
        invocation
            .arg(spec)
            .arg(LUA_CHUNK)
            .arg(if skip_check { "1" } else { "0" })
            .arg(once)
            .arg(ONCE_TTL_MS)
            .arg(self.deadlines.next());
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        if reply == RedisValue::Int(TOO_LATE) {
            return Err(too_late());
        }
        let RedisValue::Array(items) = reply else {
            return Ok(CommitOutcome::Conflict);
        };
        metrics::counter!("wss_bus_published_total")
            .increment((publish.len() + streams.len()) as u64);
        let mut placed = Vec::with_capacity(placing.len());
        let mut positions = items.into_iter().skip(1);
        let mut at: HashMap<usize, StreamPosition> = HashMap::new();
        for (n, room) in placing {
            let position = parse_placed(positions.next().unwrap_or(RedisValue::Nil))?;
            placed.push(Placement {
                room: room.to_string(),
                at: position.clone(),
            });
            at.insert(n, position);
        }
        for (n, envelope) in commit.publish.iter().enumerate() {
            match at.remove(&n) {
                Some(position) => self.local.deliver(&envelope.placed(position)),
                None => self.local.deliver(envelope),
            }
        }
        Ok(CommitOutcome::Committed(placed))
    }

    /// A commit on a Redis Cluster. A script's state keys share one slot, but the rooms
    /// and users it delivers to live in slots of their own, which one atomic script
    /// cannot reach. So the state is committed first (version check and writes, in the
    /// state keys' slot), and the deliveries are published after it, each in its own
    /// slot (a room's placement and `SPUBLISH` still one step). A node that dies
    /// between the two keeps the writes and loses those deliveries; its client got no
    /// ack (docs/protocol.md, "Delivery guarantees").
    async fn commit_then_publish(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        let keys: Vec<&str> = commit
            .reads
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(commit.writes.iter().map(|w| w.key.as_str()))
            .collect();
        self.one_slot(&keys)?;
        let publish = commit.publish.clone();
        let state_only = Commit {
            publish: Vec::new(),
            ..commit
        };
        if self.commit_state(state_only).await? == CommitOutcome::Conflict {
            return Ok(CommitOutcome::Conflict);
        }
        if !publish.is_empty() && abort_after_commit() {
            tracing::error!(
                "WSS_TEST_ABORT_AFTER_COMMIT: aborting between a commit and its deliveries"
            );
            std::process::abort();
        }
        // The commit stands: every delivery is tried (twice), whatever the others do.
        let mut placed = Vec::new();
        let (mut failed, mut cause) = (0, String::new());
        for envelope in &publish {
            let mut outcome = self.deliver_committed(envelope).await;
            if outcome.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                outcome = self.deliver_committed(envelope).await;
            }
            match outcome {
                Ok(Some(placement)) => placed.push(placement),
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    cause = e.to_string();
                }
            }
        }
        if failed > 0 {
            metrics::counter!("wss_deliveries_undelivered_total").increment(failed as u64);
            tracing::error!(failed, %cause, "deliveries of a committed state change could not be published");
            return Err(BackendError::Undelivered { failed, cause });
        }
        Ok(CommitOutcome::Committed(placed))
    }

    /// Place (history room) or publish one delivery of a commit already made.
    async fn deliver_committed(
        &self,
        envelope: &Envelope,
    ) -> Result<Option<Placement>, BackendError> {
        match unplaced(envelope) {
            Some((room, policy)) => self.place(envelope, room, policy).await.map(Some),
            None => self.publish_plain(envelope).await.map(|()| None),
        }
    }

    /// The state keys of one script must share a Redis Cluster slot.
    pub(super) fn one_slot(&self, keys: &[&str]) -> Result<(), BackendError> {
        let mut slots = keys
            .iter()
            .map(|k| super::conn::slot(self.names.state(k).as_bytes()));
        let Some(first) = slots.next() else {
            return Ok(());
        };
        if slots.all(|s| s == first) {
            return Ok(());
        }
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys.dedup();
        Err(BackendError::CrossSlot { keys })
    }

    /// Place one delivery in its room's stream and publish it.
    pub(super) async fn place(
        &self,
        envelope: &Envelope,
        room: &str,
        policy: &HistoryPolicy,
    ) -> Result<Placement, BackendError> {
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(self.names.position(room))
            .key(self.names.history(room))
            .arg(policy.size)
            .arg(ttl_ms(policy))
            .arg(&*new_epoch())
            .arg(if self.names.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .arg(self.names.channel(&Channel::Room(room.to_string())))
            .arg(header(&self.node_id, envelope))
            .arg(&envelope.frame[..])
            .arg(ONCE_TTL_MS)
            .arg(self.deadlines.next());
        if self.names.is_cluster() {
            invocation.key(
                self.names
                    .once(&self.names.position(room), &self.next_once_id()),
            );
        }
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        if reply == RedisValue::Int(TOO_LATE) {
            return Err(too_late());
        }
        let at = parse_placed(reply)?;
        metrics::counter!("wss_bus_published_total").increment(1);
        self.local.deliver(&envelope.placed(at.clone()));
        Ok(Placement {
            room: room.to_string(),
            at,
        })
    }
}

/// `WSS_TEST_ABORT_AFTER_COMMIT=1`: abort the process between a Redis Cluster commit
/// and its deliveries. Fault injection for the test that shows what that window costs;
/// never set in production.
fn abort_after_commit() -> bool {
    static ABORT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ABORT.get_or_init(|| std::env::var_os("WSS_TEST_ABORT_AFTER_COMMIT").is_some())
}

/// The room and policy of a delivery that still needs its place in a stream.
pub(super) fn unplaced(envelope: &Envelope) -> Option<(&str, &HistoryPolicy)> {
    match (&envelope.target, &envelope.position) {
        (Target::Room(room), Position::Unplaced(policy)) => Some((room, policy)),
        _ => None,
    }
}

impl StateStore for RedisBackend {
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>> {
        async move {
            if self.names.is_cluster() {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.one_slot(&refs)?;
            }
            let mut invocation = self.read_script.prepare_invoke();
            for key in &keys {
                invocation
                    .key(self.names.version(key))
                    .key(self.names.state(key));
            }
            let mut conn = self.conn.clone();
            let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
            let RedisValue::Array(items) = reply else {
                return Err(BackendError::Protocol(
                    "unexpected reply to a state read".into(),
                ));
            };
            if items.len() != keys.len() {
                return Err(BackendError::Protocol(
                    "state read returned the wrong number of keys".into(),
                ));
            }
            keys.iter()
                .zip(items)
                .map(|(k, item)| parse_read(k, item))
                .collect()
        }
        .boxed()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        self.commit_inner(commit).boxed()
    }
}
