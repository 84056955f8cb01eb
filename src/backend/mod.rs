//! Where shared state lives and how deliveries cross nodes.
//!
//! Two narrow contracts, each with a memory implementation (one node, the default) and
//! a Redis one (any number of nodes):
//!
//! - [`StateStore`]: versioned key/value state in native shapes (values, hashes, sets,
//!   lists) plus room membership. Scripts read through it and commit with
//!   [`StateStore::commit`], an optimistic compare-and-apply: the commit succeeds only if
//!   every key the script read still has the version it read, and then applies the
//!   buffered writes *and* publishes the resulting deliveries in one atomic step.
//! - [`Bus`]: publish/subscribe of already-serialized deliveries between nodes. At most
//!   once: a message published while a node is unsubscribed is not replayed to it.
//!   Deliveries to a room with history are the exception: publishing one places it in
//!   the room's stream (next offset, appended to the history) in the same atomic step,
//!   so what a node missed can be read back ([`StateStore::history`]).
//! - Sessions: what a closed connection leaves behind for a resume (its user and rooms),
//!   kept for the resume TTL.
//! - Directory reads for the HTTP API: live connections, each user's connections, the
//!   busiest rooms, and idempotency keys (a claim, then the stored result).
//!
//! Backends know nothing of events, schemas or scripts. Only the composition root
//! (`crate::server`) chooses which implementation runs.

pub mod memory;
pub mod redis;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::delivery::{ConnId, Ending, Envelope, HistoryPolicy, HistoryRead};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `reason` says what failed; `source`, when there is one, is the error that did
    /// (its text is in `reason` already).
    #[error("state backend unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("stored value of `{key}` is not {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// Keys one script touches are in different Redis Cluster slots.
    #[error("state keys {} are in different Redis Cluster slots, which one script cannot span: give them one hash tag, e.g. `{{room1}}:count` and `{{room1}}:list` (or declare `keys:` so `check --redis-cluster` finds it)", keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))]
    CrossSlot { keys: Vec<String> },
    /// Redis Cluster: the state change was committed, then some of its deliveries could
    /// not be published (their shard did not answer). Nothing may be undone or retried.
    #[error("the state change was committed, but {failed} of its deliveries could not be published ({cause}); retrying would apply it twice")]
    Undelivered { failed: usize, cause: String },
    /// `--redis-wait-replicas`: the write was made on the primary, but fewer replicas
    /// than required acknowledged it in time; a failover now may lose it.
    #[error("the change was committed on the Redis primary, but only {reached} of the {wanted} replicas required acknowledged it in time; a failover may lose it, and retrying would apply it twice")]
    Unreplicated { reached: u32, wanted: u32 },
}

impl BackendError {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }

    /// Unavailable because of `cause`, which reads as the reason and stays the source.
    pub fn unavailable_because(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable {
            reason: cause.to_string(),
            source: Some(Box::new(cause)),
        }
    }

    /// The write happened, though not all that should follow it did: nothing may be
    /// undone or retried.
    pub fn committed(&self) -> bool {
        matches!(self, Self::Undelivered { .. } | Self::Unreplicated { .. })
    }
}

/// One key's value in its native shape. Every element is JSON text in Redis, so the
/// numbers, strings and objects a script stores come back as they went in.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    Json(Value),
    Hash(BTreeMap<String, Value>),
    /// Members are kept as their JSON text: Redis sets hold strings, and equal JSON values
    /// must be one member.
    Set(BTreeSet<String>),
    List(VecDeque<Value>),
}

impl StoredValue {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) => "a value",
            Self::Hash(_) => "a hash",
            Self::Set(_) => "a set",
            Self::List(_) => "a list",
        }
    }

    /// The value as a script or a pack test sees it.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Json(v) => v.clone(),
            Self::Hash(h) => Value::Object(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Self::Set(s) => Value::Array(
                s.iter()
                    .map(|m| serde_json::from_str(m).unwrap_or_else(|_| Value::String(m.clone())))
                    .collect(),
            ),
            Self::List(l) => Value::Array(l.iter().cloned().collect()),
        }
    }
}

/// A key as read inside a transaction. `version` counts every committed write to the
/// key, survives deletes (or a delete + recreate would fool the check) and is 0 for a
/// key never written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Versioned {
    pub version: u64,
    pub value: Option<StoredValue>,
}

/// A buffered write: the key's whole new value (or its deletion) and an optional TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: String,
    pub value: Option<StoredValue>,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Commit {
    /// Every key the script read, with the version it saw.
    pub reads: Vec<(String, u64)>,
    pub writes: Vec<Write>,
    /// Deliveries published together with the writes (cluster-scope events, and every
    /// delivery to a room with history).
    pub publish: Vec<Envelope>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// Written and published; where each delivery to a room with history was placed.
    Committed(Vec<Placement>),
    /// Some key changed since it was read: nothing was written or published.
    Conflict,
}

/// Where a delivery to a room with history was placed in the room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub room: String,
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// What a closed connection left for a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user it was authenticated as; `None` for an anonymous connection.
    pub user: Option<String>,
    /// The connection that held the session last.
    pub conn: String,
    /// Its rooms, sorted.
    pub rooms: Vec<String>,
}

/// A connection some node holds, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConn {
    pub id: String,
    pub user: Option<String>,
}

/// A random epoch for a room whose history begins now.
pub fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// Shared state. Every method may be awaited from any task; scripts call them from
/// blocking threads through `Handle::block_on`.
pub trait StateStore: Send + Sync + 'static {
    /// The current value and version of each key, read together.
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>>;

    /// Atomically: if every read version is unchanged, apply the writes, bump their
    /// versions and publish the envelopes; otherwise change nothing.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>>;

    /// Add a connection to a room, cluster-wide. Idempotent.
    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Remove a connection from a room. Idempotent.
    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Every connection id in a room, on every node, sorted.
    fn members(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// Record a live connection of this node and its session (so a survivor can clean
    /// up after it if this node dies, and a resume can find it).
    fn register_conn(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &str,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// A connection closed: out of its rooms' member sets, its user's connections and
    /// the live registry; its session and its rooms are kept for `keep` (the resume TTL).
    fn close_conn(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &str,
        rooms: &[Arc<str>],
        keep: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// A live connection, on any node: `None` when no node holds it.
    fn live_conn(&self, conn: &str) -> BoxFuture<'_, Result<Option<LiveConn>, BackendError>>;

    /// The live connections of `user`, on every node, sorted.
    fn user_conns(&self, user: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// The rooms with the most members, cluster-wide, most first: `(room, members)`,
    /// at most `limit`. Kept up to date by every membership change, so this is one
    /// cheap read, not a scan.
    fn busiest_rooms(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, BackendError>>;

    /// Claim an idempotency key for a request about to run: `Ok(None)` when it was
    /// free (it now holds `marker` for `ttl`), else what it holds (the marker of a
    /// request still running, or a stored result). Cluster-wide and atomic: of two
    /// nodes claiming one key at once, one gets it.
    fn idempotency_claim(
        &self,
        key: &str,
        marker: &str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>>;

    /// Keep `value` under a claimed idempotency key for `ttl` (replacing the marker).
    fn idempotency_store(
        &self,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The session `id`, if it is live or still within its resume TTL.
    fn session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, BackendError>>;

    /// A room's stream position (epoch, last offset); a room without one gets its
    /// epoch now, at offset 0.
    fn position(
        &self,
        room: &str,
        policy: &HistoryPolicy,
    ) -> BoxFuture<'_, Result<(Arc<str>, u64), BackendError>>;

    /// A room's deliveries after `after`, at most `limit`, with the room's position.
    ///
    /// `seen` is the epoch `after` was handed out in, if the reader knows it. A room
    /// still in that epoch but behind `after` lost its latest deliveries (a Redis
    /// failover before they replicated): it gets a new epoch, so no position of the old
    /// one is trusted again and the offsets it hands out next cannot be mistaken for
    /// ones already seen.
    fn history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        seen: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryRead, BackendError>>;
}

/// Channels a node listens on only while it has a local recipient for them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(String),
    User(String),
}

/// Publish/subscribe between nodes. The memory bus hands each envelope straight to the
/// local [`Sink`]; the Redis bus routes it through one channel per target.
pub trait Bus: Send + Sync + 'static {
    /// Deliver to every node with matching recipients (this node included). At most
    /// once, unless the delivery goes to a room with history: then it is placed in the
    /// room's stream first, and where is returned.
    fn publish(&self, envelope: Envelope)
        -> BoxFuture<'_, Result<Option<Placement>, BackendError>>;

    /// End the connection `conn`, wherever it is, for the reason given (its session was
    /// resumed elsewhere, a backend disconnected it): the node holding it closes it
    /// with that reason's close code. At most once, like every message on the bus.
    fn end_conn(&self, conn: &str, why: Ending) -> BoxFuture<'_, Result<(), BackendError>>;

    /// A local recipient appeared for `channel`: from when this resolves, everything
    /// published to it reaches this node. Reference-counted; one `unwatch` per `watch`,
    /// failed or not (a failed watch stays wanted and is subscribed on reconnect).
    fn watch(&self, _channel: Channel) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// A local recipient of `channel` went away.
    fn unwatch(&self, _channel: Channel) {}

    /// Whether the bus is connected and every subscription is in place.
    fn is_ready(&self) -> bool {
        true
    }
}

/// Whether commits check read versions. `Skip` turns them into blind writes: it exists
/// only to demonstrate, with the real binary, the lost updates the check prevents
/// (`--unsafe-skip-version-check`, hidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionCheck {
    #[default]
    Enforce,
    Skip,
}

/// Keys, rooms and targets are operator-visible names; keep them readable and bounded.
pub const MAX_NAME_LEN: usize = 256;
