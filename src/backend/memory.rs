//! The embedded backend: one node, state in this process, the bus a function call.
//!
//! Same semantics as Redis for a single node: versioned optimistic commits, deliveries
//! published inside the commit's critical section (so subscribers see them in commit
//! order), room streams with offsets and history, sessions kept for the resume TTL,
//! rooms shared by every connection of the process. Nothing survives a restart (every
//! room gets a new epoch) and nothing is shared with other processes: run with
//! `--redis` for more than one node.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{ready, BoxFuture};
use futures_util::FutureExt;
use parking_lot::Mutex;

use super::{
    new_epoch, BackendError, Bus, Commit, CommitOutcome, HistoryStore, Idempotency, LiveConn,
    Placement, Presence, Session, Sessions, StateStore, StoredValue, VersionCheck, Versioned,
};
use crate::delivery::{
    ConnId, Ending, Envelope, HistoryEntry, HistoryPolicy, HistoryRead, Position, Sink,
    StreamPosition, Target,
};
use crate::ids::SessionId;

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

/// One room's stream: its position (epoch, last offset) and the deliveries its history
/// keeps.
struct Log {
    head: StreamPosition,
    /// `(offset, appended at, frame)`, oldest first.
    entries: VecDeque<(u64, Instant, Bytes)>,
}

impl Log {
    fn new() -> Self {
        Self {
            head: StreamPosition::new(new_epoch(), 0),
            entries: VecDeque::new(),
        }
    }

    /// Drop what the policy no longer keeps.
    fn trim(&mut self, policy: &HistoryPolicy, now: Instant) {
        while self.entries.len() > policy.size {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) >= policy.ttl)
        {
            self.entries.pop_front();
        }
    }
}

/// Everything a commit changes, under one lock: its deliveries leave in commit order.
#[derive(Default)]
struct State {
    keys: HashMap<String, Entry>,
    logs: HashMap<String, Log>,
}

struct SessionEntry {
    user: Option<String>,
    conn: String,
    /// `None` while the connection is live.
    expires_at: Option<Instant>,
}

#[derive(Default)]
struct Directory {
    rooms: HashMap<String, BTreeSet<String>>,
    /// Each connection's rooms; kept with its session after it closes.
    conn_rooms: HashMap<String, BTreeSet<String>>,
    sessions: HashMap<String, SessionEntry>,
    /// Live connections and their users.
    live: HashMap<String, Option<String>>,
    /// Each user's live connections.
    users: HashMap<String, BTreeSet<String>>,
}

/// Most idempotency keys kept at once. Each lives five minutes, so this is a budget
/// of ~300 keyed requests a second; past it new keys are refused (`unavailable`)
/// rather than memory growing without bound.
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// Idempotency keys and what they hold, each until its deadline.
#[derive(Default)]
struct Remembered(HashMap<String, (String, Instant)>);

impl Remembered {
    fn sweep(&mut self, now: Instant) {
        self.0.retain(|_, (_, until)| *until > now);
    }
}

impl Directory {
    /// Forget sessions (and their rooms) past their resume TTL.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<(String, String)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at <= now))
            .map(|(id, s)| (id.clone(), s.conn.clone()))
            .collect();
        for (id, conn) in expired {
            self.sessions.remove(&id);
            self.conn_rooms.remove(&conn);
        }
    }
}

pub struct MemoryBackend {
    /// A plain mutex: every critical section is a few map operations with no await
    /// inside, so an async mutex would only add cost.
    state: Mutex<State>,
    presence: Mutex<Directory>,
    remembered: Mutex<Remembered>,
    sink: Arc<dyn Sink>,
    version_check: VersionCheck,
}

impl MemoryBackend {
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self::with_version_check(sink, VersionCheck::Enforce)
    }

    pub fn with_version_check(sink: Arc<dyn Sink>, version_check: VersionCheck) -> Self {
        Self {
            state: Mutex::new(State::default()),
            presence: Mutex::new(Directory::default()),
            remembered: Mutex::new(Remembered::default()),
            sink,
            version_check,
        }
    }

    fn read_now(&self, keys: Vec<String>) -> Vec<Versioned> {
        let now = Instant::now();
        let state = self.state.lock();
        keys.iter()
            .map(|key| match state.keys.get(key) {
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
                .all(|(key, version)| state.keys.get(key).map_or(0, |e| e.version) == *version);
        if !unchanged {
            return CommitOutcome::Conflict;
        }
        let now = Instant::now();
        for write in commit.writes {
            let entry = state.keys.entry(write.key).or_default();
            entry.version += 1;
            entry.value = write.value;
            entry.expires_at = write.ttl.map(|ttl| now + ttl);
        }
        // Still under the lock: deliveries leave in commit order.
        let placed = commit
            .publish
            .iter()
            .filter_map(|envelope| self.publish_locked(&mut state, envelope, now))
            .collect();
        CommitOutcome::Committed(placed)
    }

    /// Place a delivery in its room's stream if it goes to one, and deliver it.
    fn publish_locked(
        &self,
        state: &mut State,
        envelope: &Envelope,
        now: Instant,
    ) -> Option<Placement> {
        let (Target::Room(room), Position::Unplaced(policy)) =
            (&envelope.target, &envelope.position)
        else {
            self.sink.deliver(envelope);
            return None;
        };
        let log = state.logs.entry(room.clone()).or_insert_with(Log::new);
        log.head.offset += 1;
        let placed = envelope.placed(log.head.clone());
        log.entries
            .push_back((log.head.offset, now, placed.frame.clone()));
        log.trim(policy, now);
        let placement = Placement {
            room: room.clone(),
            at: log.head.clone(),
        };
        self.sink.deliver(&placed);
        Some(placement)
    }
}

impl StateStore for MemoryBackend {
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>> {
        ready(Ok(self.read_now(keys))).boxed()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        ready(Ok(self.commit_now(commit))).boxed()
    }
}

impl Presence for MemoryBackend {
    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut presence = self.presence.lock();
        presence
            .rooms
            .entry(room.to_string())
            .or_default()
            .insert(conn.to_string());
        presence
            .conn_rooms
            .entry(conn.to_string())
            .or_default()
            .insert(room.to_string());
        ready(Ok(())).boxed()
    }

    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut presence = self.presence.lock();
        if let Some(members) = presence.rooms.get_mut(room) {
            members.remove(conn.as_ref());
            if members.is_empty() {
                presence.rooms.remove(room);
            }
        }
        if let Some(rooms) = presence.conn_rooms.get_mut(conn.as_ref()) {
            rooms.remove(room);
        }
        ready(Ok(())).boxed()
    }

    fn members(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let members = self
            .presence
            .lock()
            .rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        ready(Ok(members)).boxed()
    }

    fn live_conn(&self, conn: &str) -> BoxFuture<'_, Result<Option<LiveConn>, BackendError>> {
        let live = self.presence.lock().live.get(conn).map(|user| LiveConn {
            id: conn.to_string(),
            user: user.clone(),
        });
        ready(Ok(live)).boxed()
    }

    fn user_conns(&self, user: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let conns = self
            .presence
            .lock()
            .users
            .get(user)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        ready(Ok(conns)).boxed()
    }

    fn busiest_rooms(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, BackendError>> {
        // One node's rooms: a scan is as cheap as keeping a sorted index up to date.
        let mut rooms: Vec<(String, u64)> = self
            .presence
            .lock()
            .rooms
            .iter()
            .map(|(room, members)| (room.clone(), members.len() as u64))
            .collect();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(limit);
        ready(Ok(rooms)).boxed()
    }
}

impl Sessions for MemoryBackend {
    fn open(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut presence = self.presence.lock();
        presence.sessions.insert(
            session.expose().to_string(),
            SessionEntry {
                user: user.map(str::to_string),
                conn: conn.to_string(),
                expires_at: None,
            },
        );
        presence
            .live
            .insert(conn.to_string(), user.map(str::to_string));
        if let Some(user) = user {
            presence
                .users
                .entry(user.to_string())
                .or_default()
                .insert(conn.to_string());
        }
        ready(Ok(())).boxed()
    }

    fn close(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
        rooms: &[Arc<str>],
        keep: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let now = Instant::now();
        let mut presence = self.presence.lock();
        presence.live.remove(conn.as_ref());
        if let Some(user) = user {
            if let Some(conns) = presence.users.get_mut(user) {
                conns.remove(conn.as_ref());
                if conns.is_empty() {
                    presence.users.remove(user);
                }
            }
        }
        for room in rooms {
            if let Some(members) = presence.rooms.get_mut(room.as_ref()) {
                members.remove(conn.as_ref());
                if members.is_empty() {
                    presence.rooms.remove(room.as_ref());
                }
            }
        }
        if let Some(entry) = presence.sessions.get_mut(session.expose()) {
            entry.expires_at = Some(now + keep);
        }
        presence.sweep(now);
        ready(Ok(())).boxed()
    }

    fn session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, BackendError>> {
        let now = Instant::now();
        let mut presence = self.presence.lock();
        presence.sweep(now);
        let session = presence.sessions.get(id).map(|s| Session {
            user: s.user.clone(),
            conn: s.conn.clone(),
            rooms: presence
                .conn_rooms
                .get(&s.conn)
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
        });
        ready(Ok(session)).boxed()
    }
}

impl HistoryStore for MemoryBackend {
    fn position(
        &self,
        room: &str,
        _policy: &HistoryPolicy,
    ) -> BoxFuture<'_, Result<StreamPosition, BackendError>> {
        let mut state = self.state.lock();
        let log = state.logs.entry(room.to_string()).or_insert_with(Log::new);
        ready(Ok(log.head.clone())).boxed()
    }

    fn history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        // Memory never loses what it handed out while the process lives.
        _seen: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryRead, BackendError>> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let log = state.logs.entry(room.to_string()).or_insert_with(Log::new);
        log.trim(policy, now);
        let entries: Vec<HistoryEntry> = log
            .entries
            .iter()
            .filter(|(offset, _, _)| *offset > after)
            .take(limit)
            .map(|(offset, _, frame)| HistoryEntry {
                offset: *offset,
                frame: frame.clone(),
            })
            .collect();
        let complete =
            after >= log.head.offset || entries.first().is_some_and(|e| e.offset == after + 1);
        ready(Ok(HistoryRead {
            head: log.head.clone(),
            entries,
            complete,
        }))
        .boxed()
    }
}

impl Idempotency for MemoryBackend {
    fn claim(
        &self,
        key: &str,
        marker: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        let now = Instant::now();
        let mut remembered = self.remembered.lock();
        if let Some((value, until)) = remembered.0.get(key) {
            if *until > now {
                return ready(Ok(Some(value.clone()))).boxed();
            }
        }
        if remembered.0.len() >= MAX_IDEMPOTENCY_KEYS {
            remembered.sweep(now);
            if remembered.0.len() >= MAX_IDEMPOTENCY_KEYS {
                return ready(Err(BackendError::unavailable(format!(
                    "more than {MAX_IDEMPOTENCY_KEYS} idempotency keys within their 5 minutes"
                ))))
                .boxed();
            }
        }
        remembered
            .0
            .insert(key.to_string(), (marker.to_string(), now + ttl));
        ready(Ok(None)).boxed()
    }

    fn store(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        self.remembered
            .lock()
            .0
            .insert(key.to_string(), (value.to_string(), Instant::now() + ttl));
        ready(Ok(())).boxed()
    }
}

impl Bus for MemoryBackend {
    fn publish(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Option<Placement>, BackendError>> {
        let mut state = self.state.lock();
        let placed = self.publish_locked(&mut state, &envelope, Instant::now());
        ready(Ok(placed)).boxed()
    }

    fn end_conn(&self, conn: &str, why: Ending) -> BoxFuture<'_, Result<(), BackendError>> {
        self.sink.end_conn(conn, why);
        ready(Ok(())).boxed()
    }
}
