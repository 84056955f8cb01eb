//! This node's connections and who is in which room: the local end of every delivery.
//!
//! A delivery arrives as one serialized frame; the router turns it into a WebSocket text
//! payload once and hands every recipient a clone of the same bytes (a reference-count
//! bump), so a room of 10k members costs 10k queue pushes and no copies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::link::ConnLink;
use super::{ConnId, Envelope, Sink, Target};

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
    /// The last connection went away (a shutdown waits for this).
    emptied: Notify,
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
        if inner.conns.is_empty() {
            self.emptied.notify_waiters();
        }
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

    /// Resolves once no connection is registered.
    pub async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the count is read, so an unregister in between still
            // wakes this waiter.
            emptied.as_mut().enable();
            if self.connection_count() == 0 {
                return;
            }
            emptied.await;
        }
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
        let mut send = |id: &ConnId, link: &Arc<ConnLink>| {
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
        }
        // Frames sent are counted when written (`wss_frames_out_total`); this counts
        // what was queued for local recipients, dropped ones excluded.
        metrics::counter!("wss_deliveries_total").increment(sent);
    }
}
