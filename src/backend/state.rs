//! Shared state: versioned keys in native shapes, read together and changed by one
//! optimistic commit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{BackendError, Placement};
use crate::delivery::Envelope;

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

/// Versioned key/value state. Every method may be awaited from any task; scripts call
/// them from blocking threads through `Handle::block_on`.
pub trait StateStore: Send + Sync + 'static {
    /// The current value and version of each key, read together.
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>>;

    /// Atomically: if every read version is unchanged, apply the writes, bump their
    /// versions and publish the envelopes; otherwise change nothing.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>>;
}
