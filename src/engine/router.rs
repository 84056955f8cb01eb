//! This node's connections and who is in which room: the local end of every delivery.
//!
//! A delivery arrives as one serialized frame; the router turns it into a WebSocket text
//! payload once and hands every recipient a clone of the same bytes (a reference-count
//! bump), so a room of 10k members costs 10k queue pushes and no copies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::backend::{ConnId, Envelope, Sink};
use crate::config::Target;

/// The longest queue a connection's write window may hold back.
const FLUSH_AT_MOST: usize = 64;

/// How the router reaches one connection's writer: a bounded queue of frames.
///
/// A plain deque under a mutex rather than an mpsc channel: an idle connection's queue
/// allocates nothing (a channel preallocates a block of slots per connection), and the
/// writer takes everything queued in one lock.
pub struct ConnLink {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    /// A queue this long is written at once, whatever the write window says: a fast
    /// reader must never look like a slow consumer because its frames were held.
    flush_at: usize,
    /// Set when the queue overflowed: the connection closes itself as a slow consumer.
    slow: AtomicBool,
    /// Frames were queued on an empty queue, or the queue reached `flush_at`.
    ready: Notify,
    /// `slow` was set (every waiter is woken).
    alarm: Notify,
}

impl ConnLink {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            // A quarter leaves the rest as headroom for the writer's wake-up to come
            // round while a fast producer keeps pushing.
            flush_at: (capacity / 4).clamp(1, FLUSH_AT_MOST),
            slow: AtomicBool::new(false),
            ready: Notify::new(),
            alarm: Notify::new(),
        })
    }

    /// Queue a frame; a full queue marks the connection as a slow consumer and drops it.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let mut queue = self.queue.lock();
        if queue.len() >= self.capacity {
            drop(queue);
            if !self.slow.swap(true, Ordering::Relaxed) {
                metrics::counter!("wss_slow_consumers_total").increment(1);
                self.alarm.notify_waiters();
            }
            metrics::counter!("wss_deliveries_dropped_total").increment(1);
            return false;
        }
        queue.push_back(frame);
        let len = queue.len();
        drop(queue);
        // The writer empties the queue when it writes, so only the push that finds it
        // empty needs to wake it (a stored permit covers a writer not yet waiting),
        // and the one that makes it long enough to write before its window ends.
        if len == 1 || len == self.flush_at {
            self.ready.notify_one();
        }
        true
    }

    /// Frames queued now.
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// A queue this long is written at once, whatever the write window says.
    pub fn flush_at(&self) -> usize {
        self.flush_at
    }

    /// Everything queued, oldest first.
    pub fn take_all(&self) -> VecDeque<Utf8Bytes> {
        std::mem::take(&mut *self.queue.lock())
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Resolves when frames were queued on an empty queue or the queue reached
    /// `flush_at`.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Resolves once the connection has been marked a slow consumer. Any number of
    /// waiters may wait at once (the connection loop and a stuck write both do).
    pub async fn overflowed(&self) {
        loop {
            let notified = self.alarm.notified();
            tokio::pin!(notified);
            // Registered before the flag is checked, so a flag set in between still
            // wakes this waiter.
            notified.as_mut().enable();
            if self.is_slow() {
                return;
            }
            notified.await;
        }
    }
}

struct Entry {
    link: Arc<ConnLink>,
    user: Option<Arc<str>>,
    rooms: HashSet<Arc<str>>,
}

type Members = HashMap<ConnId, Arc<ConnLink>>;

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Entry>,
    /// Members hold their link, so a delivery walks one map instead of looking every
    /// recipient up in `conns` again.
    rooms: HashMap<Arc<str>, Members>,
    users: HashMap<Arc<str>, Members>,
}

/// What a join or leave changed. The bus cares about rooms that gained their first or
/// lost their last local member (Redis subscribes/unsubscribes the room channel then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomChange {
    /// The connection already was (or was not) a member: nothing changed.
    Unchanged,
    /// The connection's membership changed; the room had other local members.
    Member,
    FirstLocal(Arc<str>),
    LastLocal(Arc<str>),
}

/// One local connection as `Router::snapshot` reports it.
pub struct ConnSnapshot {
    pub id: ConnId,
    pub user: Option<Arc<str>>,
    pub rooms: Vec<Arc<str>>,
}

#[derive(Default)]
pub struct Router {
    /// Reads (deliveries) vastly outnumber writes (joins, connects); an RwLock lets
    /// deliveries to different rooms run in parallel. Never held across an await.
    inner: RwLock<Inner>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, id: ConnId, user: Option<Arc<str>>, link: Arc<ConnLink>) {
        let mut inner = self.inner.write();
        if let Some(user) = &user {
            inner
                .users
                .entry(user.clone())
                .or_default()
                .insert(id.clone(), link.clone());
        }
        inner.conns.insert(
            id,
            Entry {
                link,
                user,
                rooms: HashSet::new(),
            },
        );
    }

    /// Forget a connection; returns the rooms it was in and which lost their last member.
    pub fn unregister(&self, id: &ConnId) -> (Vec<Arc<str>>, Vec<RoomChange>) {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.remove(id) else {
            return (Vec::new(), Vec::new());
        };
        if let Some(user) = &entry.user {
            if let Some(set) = inner.users.get_mut(user) {
                set.remove(id);
                if set.is_empty() {
                    inner.users.remove(user);
                }
            }
        }
        let mut changes = Vec::new();
        for room in &entry.rooms {
            changes.push(remove_member(&mut inner.rooms, room, id));
        }
        (entry.rooms.into_iter().collect(), changes)
    }

    pub fn join(&self, id: &ConnId, room: &str) -> RoomChange {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.get_mut(id) else {
            return RoomChange::Unchanged;
        };
        let room: Arc<str> = Arc::from(room);
        if !entry.rooms.insert(room.clone()) {
            return RoomChange::Unchanged;
        }
        let link = entry.link.clone();
        let members = inner.rooms.entry(room.clone()).or_default();
        members.insert(id.clone(), link);
        if members.len() == 1 {
            RoomChange::FirstLocal(room)
        } else {
            RoomChange::Member
        }
    }

    pub fn leave(&self, id: &ConnId, room: &str) -> RoomChange {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.get_mut(id) else {
            return RoomChange::Unchanged;
        };
        if !entry.rooms.remove(room) {
            return RoomChange::Unchanged;
        }
        remove_member(&mut inner.rooms, room, id)
    }

    pub fn rooms_of(&self, id: &ConnId) -> Vec<String> {
        let inner = self.inner.read();
        let mut rooms: Vec<String> = inner
            .conns
            .get(id)
            .map(|e| e.rooms.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    pub fn connection_count(&self) -> usize {
        self.inner.read().conns.len()
    }

    /// Every local connection with its user and rooms (to write presence again).
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        self.inner
            .read()
            .conns
            .iter()
            .map(|(id, e)| ConnSnapshot {
                id: id.clone(),
                user: e.user.clone(),
                rooms: e.rooms.iter().cloned().collect(),
            })
            .collect()
    }
}

fn remove_member(rooms: &mut HashMap<Arc<str>, Members>, room: &str, id: &ConnId) -> RoomChange {
    let Some((key, members)) = rooms.get_key_value(room).map(|(k, m)| (k.clone(), m.len())) else {
        return RoomChange::Unchanged;
    };
    if members <= 1 {
        rooms.remove(room);
        RoomChange::LastLocal(key)
    } else {
        if let Some(m) = rooms.get_mut(room) {
            m.remove(id);
        }
        RoomChange::Member
    }
}

impl Sink for Router {
    fn deliver(&self, envelope: &Envelope) {
        // One UTF-8 check per delivery per node; every recipient shares the result.
        let Ok(frame) = Utf8Bytes::try_from(envelope.frame.clone()) else {
            tracing::warn!("dropping a delivery that is not UTF-8");
            return;
        };
        let inner = self.inner.read();
        // Compared only when there is someone to exclude: most deliveries have none.
        let excluded = |id: &ConnId| envelope.exclude.as_ref().is_some_and(|x| x == id);
        let mut sent = 0u64;
        let mut send = |id: &ConnId, link: &ConnLink| {
            if !excluded(id) && link.push(frame.clone()) {
                sent += 1;
            }
        };
        match &envelope.target {
            Target::None => {}
            Target::All => {
                for (id, entry) in &inner.conns {
                    send(id, &entry.link);
                }
            }
            Target::Room(room) => {
                for (id, link) in inner.rooms.get(room.as_str()).into_iter().flatten() {
                    send(id, link);
                }
            }
            Target::User(user) => {
                for (id, link) in inner.users.get(user.as_str()).into_iter().flatten() {
                    send(id, link);
                }
            }
            Target::Conn(conn) => {
                if let Some((id, entry)) = inner.conns.get_key_value(conn.as_str()) {
                    send(id, &entry.link);
                }
            }
            // Dispatch turns `sender` into `conn:<id>` before anything is delivered.
            Target::Sender => {}
        }
        metrics::counter!("wss_frames_out_total").increment(sent);
    }
}
