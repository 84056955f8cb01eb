//! Where shared state lives and how deliveries cross nodes.
//!
//! Small contracts, one per concern, each with a memory implementation (one node, the
//! default) and a Redis one (any number of nodes):
//!
//! ```text
//! state.rs        StateStore: versioned keys in native shapes (values, hashes, sets,
//!                 lists); read, then commit, an optimistic compare-and-apply that
//!                 succeeds only if every key read still has the version read, and then
//!                 applies the buffered writes *and* publishes the deliveries atomically
//! streams.rs      Bus: publish/subscribe of serialized deliveries between nodes, at most
//!                 once, except to a room with history, whose deliveries publishing places
//!                 in the room's stream; HistoryStore: reading those streams back
//! presence.rs     Presence: room membership and the directory of live connections
//! sessions.rs     Sessions: connections opening and closing, and what a closed one keeps
//!                 for a resume
//! idempotency.rs  Idempotency: the HTTP API's idempotency keys (a claim, then the result)
//! memory.rs       all of them for one node, in this process
//! redis/          all of them on Redis, for any number of nodes
//! ```
//!
//! [`Backend`] bundles them as the composition root (`crate::server`), the only place
//! that chooses an implementation, hands them out; each user takes the contracts it
//! needs. Backends know nothing of events, schemas or scripts.

mod idempotency;
pub mod memory;
mod presence;
pub mod redis;
mod sessions;
mod state;
mod streams;

use std::sync::Arc;

pub use idempotency::Idempotency;
pub use presence::{LiveConn, Presence};
pub use sessions::{Session, Sessions};
pub use state::{Commit, CommitOutcome, StateStore, StoredValue, Versioned, Write};
pub use streams::{new_epoch, Bus, Channel, HistoryStore, Placement};

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

/// The contracts the engine runs on, from one backend.
#[derive(Clone)]
pub struct Backend {
    pub state: Arc<dyn StateStore>,
    pub presence: Arc<dyn Presence>,
    pub sessions: Arc<dyn Sessions>,
    pub history: Arc<dyn HistoryStore>,
    pub bus: Arc<dyn Bus>,
}

impl Backend {
    /// Every contract from one implementation.
    pub fn of<B>(backend: Arc<B>) -> Self
    where
        B: StateStore + Presence + Sessions + HistoryStore + Bus,
    {
        Self {
            state: backend.clone(),
            presence: backend.clone(),
            sessions: backend.clone(),
            history: backend.clone(),
            bus: backend,
        }
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
