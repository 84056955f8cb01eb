//! The embedded backend: one node, state in this process, the bus a function call.
//!
//! Same semantics as Redis for a single node: versioned optimistic commits, deliveries
//! published inside the commit's critical section (so subscribers see them in commit
//! order), rooms shared by every connection of the process. Nothing survives a restart
//! and nothing is shared with other processes: run with `--redis` for more than one node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{ready, BoxFuture};
use futures_util::FutureExt;
use parking_lot::Mutex;

use super::{
    BackendError, Bus, Commit, CommitOutcome, StateStore, StoredValue, VersionCheck, Versioned,
};
use crate::delivery::{ConnId, Envelope, Sink};

#[derive(Default)]
struct Entry {
    version: u64,
    value: Option<StoredValue>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live_value(&self, now: Instant) -> Option<&StoredValue> {
        match self.expires_at {
            Some(at) if at <= now => None,
            _ => self.value.as_ref(),
        }
    }
}

pub struct MemoryBackend {
    /// A plain mutex: every critical section is a few map operations with no await
    /// inside, so an async mutex would only add cost.
    state: Mutex<HashMap<String, Entry>>,
    rooms: Mutex<HashMap<String, BTreeSet<String>>>,
    sink: Arc<dyn Sink>,
    version_check: VersionCheck,
}

impl MemoryBackend {
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self::with_version_check(sink, VersionCheck::Enforce)
    }

    pub fn with_version_check(sink: Arc<dyn Sink>, version_check: VersionCheck) -> Self {
        Self {
            state: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            sink,
            version_check,
        }
    }

    fn read_now(&self, keys: Vec<String>) -> Vec<Versioned> {
        let now = Instant::now();
        let state = self.state.lock();
        keys.iter()
            .map(|key| match state.get(key) {
                Some(entry) => Versioned {
                    version: entry.version,
                    value: entry.live_value(now).cloned(),
                },
                None => Versioned::default(),
            })
            .collect()
    }

    fn commit_now(&self, commit: Commit) -> CommitOutcome {
        let mut state = self.state.lock();
        let unchanged = self.version_check == VersionCheck::Skip
            || commit
                .reads
                .iter()
                .all(|(key, version)| state.get(key).map_or(0, |e| e.version) == *version);
        if !unchanged {
            return CommitOutcome::Conflict;
        }
        let now = Instant::now();
        for write in commit.writes {
            let entry = state.entry(write.key).or_default();
            entry.version += 1;
            entry.value = write.value;
            entry.expires_at = write.ttl.map(|ttl| now + ttl);
        }
        // Still under the lock: deliveries leave in commit order.
        for envelope in &commit.publish {
            self.sink.deliver(envelope);
        }
        CommitOutcome::Committed
    }
}

impl StateStore for MemoryBackend {
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>> {
        ready(Ok(self.read_now(keys))).boxed()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        ready(Ok(self.commit_now(commit))).boxed()
    }

    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        self.rooms
            .lock()
            .entry(room.to_string())
            .or_default()
            .insert(conn.to_string());
        ready(Ok(())).boxed()
    }

    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut rooms = self.rooms.lock();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(conn.as_ref());
            if members.is_empty() {
                rooms.remove(room);
            }
        }
        ready(Ok(())).boxed()
    }

    fn members(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let members = self
            .rooms
            .lock()
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        ready(Ok(members)).boxed()
    }
}

impl Bus for MemoryBackend {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BackendError>> {
        self.sink.deliver(&envelope);
        ready(Ok(())).boxed()
    }
}
