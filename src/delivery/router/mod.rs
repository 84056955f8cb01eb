//! This node's connections and who is in which room: the local end of every delivery.
//!
//! A delivery arrives as one serialized frame; the router turns it into a WebSocket text
//! payload once and hands every recipient a clone of the same bytes (a reference-count
//! bump), so a room of 10k members costs 10k queue pushes and no copies.
//!
//! Rooms with history go through their [`Stream`]: each delivery reaches local members
//! once and in offset order, holes are filled from the backend's [`History`], and a
//! member receives the offsets after the one its `$joined` announced. Membership is
//! pushed to the member itself (`$joined`, `$left`), in the same queue as deliveries,
//! so a client sees its rooms change exactly where its deliveries do.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

mod streams;

use super::link::{ConnLink, Ending};
use super::stream::{Next, Release, Stream};
use crate::ids::SessionId;

use super::{ConnId, Envelope, History, Sink, StreamPosition, Target};

struct Entry {
    link: Arc<ConnLink>,
    user: Option<Arc<str>>,
    session: SessionId,
    rooms: HashSet<Arc<str>>,
}

/// A connection receiving a room's deliveries.
struct Member {
    link: Arc<ConnLink>,
    /// Deliveries at or below this offset are not for this member: its `$joined` (or
    /// its replay) already placed it past them.
    floor: u64,
}

struct Room {
    /// Local connections in the room, receiving yet or not (a member of a room with
    /// history receives from its activation on).
    joined: HashSet<ConnId>,
    members: HashMap<ConnId, Member>,
    stream: Option<Stream>,
    /// Woken whenever the stream starts or moves on.
    progress: Arc<Notify>,
}

/// Whether a room keeps a stream on this node: a room whose pack entry gives it
/// history numbers its deliveries, and members are placed in it by offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Plain,
    WithHistory,
}

impl RoomKind {
    /// The kind of a room with this history policy (`None`: no `history:` for it).
    pub fn of(policy: Option<&super::HistoryPolicy>) -> Self {
        match policy {
            Some(_) => Self::WithHistory,
            None => Self::Plain,
        }
    }
}

impl Room {
    fn new(kind: RoomKind) -> Self {
        Self {
            joined: HashSet::new(),
            members: HashMap::new(),
            stream: (kind == RoomKind::WithHistory).then(Stream::new),
            progress: Arc::new(Notify::new()),
        }
    }

    /// Push every release to the members it is for.
    fn release(&mut self, room: &str, releases: Vec<Release>) -> u64 {
        let mut sent = 0;
        for release in releases {
            match release {
                Release::Frame { offset, frame } => {
                    let Ok(frame) = Utf8Bytes::try_from(frame) else {
                        continue;
                    };
                    for member in self.members.values() {
                        if member.floor < offset && member.link.push(frame.clone()) {
                            sent += 1;
                        }
                    }
                }
                Release::Gap(at) => {
                    metrics::counter!("wss_gaps_total").increment(1);
                    tracing::warn!(room, epoch = %at.epoch, offset = at.offset, "deliveries of a room could not be recovered: members told with $gap");
                    let gap = system_frame(
                        "$gap",
                        json!({ "room": room, "epoch": &*at.epoch, "offset": at.offset }),
                    );
                    for member in self.members.values_mut() {
                        member.floor = member.floor.max(at.offset);
                        member.link.push(gap.clone());
                    }
                }
            }
        }
        self.progress.notify_waiters();
        sent
    }
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

/// How a member of a room with history was placed in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activated {
    /// A room without history: the member receives from its join on.
    Plain,
    /// Announced at the stream's position: deliveries after it follow.
    At(StreamPosition),
    /// Announced at the position asked for, with the deliveries since then replayed.
    Replayed {
        from: StreamPosition,
        replayed: usize,
    },
    /// The replay given does not reach the stream's position `last`: read more.
    NeedsHistory { last: u64 },
    /// The stream has not started yet.
    NotStarted,
    /// The connection is not in the room (it left meanwhile).
    NotJoined,
}

/// One local connection as `Router::snapshot` reports it.
pub struct ConnSnapshot {
    pub id: ConnId,
    pub user: Option<Arc<str>>,
    pub session: SessionId,
    pub rooms: Vec<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Entry>,
    /// A room's lock is taken under the router's (read or write) lock, never the other
    /// way round; deliveries to different rooms run in parallel.
    rooms: HashMap<Arc<str>, Mutex<Room>>,
    users: HashMap<Arc<str>, HashMap<ConnId, Arc<ConnLink>>>,
}

pub struct Router {
    /// Reads (deliveries) vastly outnumber writes (joins, connects); an RwLock lets
    /// deliveries to different rooms run in parallel. Never held across an await.
    inner: RwLock<Inner>,
    /// The last connection went away (a shutdown waits for this).
    emptied: Notify,
    /// Where holes in streams are filled from; set once the backend exists.
    history: OnceLock<Arc<dyn History>>,
    /// For the fill tasks a delivery may start.
    this: Weak<Router>,
}

fn system_frame(event: &str, data: serde_json::Value) -> Utf8Bytes {
    Utf8Bytes::from(json!({ "event": event, "data": data }).to_string())
}

/// `$joined` for a room, with its position when it has history.
fn joined_frame(room: &str, position: Option<&StreamPosition>) -> Utf8Bytes {
    match position {
        Some(at) => system_frame(
            "$joined",
            json!({ "room": room, "epoch": &*at.epoch, "offset": at.offset }),
        ),
        None => system_frame("$joined", json!({ "room": room })),
    }
}

impl Router {
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            inner: RwLock::default(),
            emptied: Notify::new(),
            history: OnceLock::new(),
            this: this.clone(),
        })
    }

    /// Where holes in room streams are filled from (the backend, once it exists).
    pub fn set_history(&self, history: Arc<dyn History>) {
        let _ = self.history.set(history);
    }

    pub fn register(
        &self,
        id: ConnId,
        user: Option<Arc<str>>,
        session: SessionId,
        link: Arc<ConnLink>,
    ) {
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
                session,
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
        let changes = entry
            .rooms
            .iter()
            .map(|room| remove_joined(&mut inner.rooms, room, id, false))
            .collect();
        (entry.rooms.into_iter().collect(), changes)
    }

    /// Put a connection in a room. In a room without history it receives at once and
    /// is told `$joined`; in a room with history it receives once [`Self::activate`]
    /// placed it in the stream.
    pub fn join(&self, id: &ConnId, room: &str, kind: RoomKind) -> RoomChange {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.get_mut(id) else {
            return RoomChange::Unchanged;
        };
        let name: Arc<str> = Arc::from(room);
        if !entry.rooms.insert(name.clone()) {
            return RoomChange::Unchanged;
        }
        let link = entry.link.clone();
        let slot = inner
            .rooms
            .entry(name.clone())
            .or_insert_with(|| Mutex::new(Room::new(kind)));
        let mut state = slot.lock();
        state.joined.insert(id.clone());
        if state.stream.is_none() {
            link.push(joined_frame(room, None));
            state.members.insert(id.clone(), Member { link, floor: 0 });
        }
        if state.joined.len() == 1 {
            RoomChange::FirstLocal(name)
        } else {
            RoomChange::Member
        }
    }

    /// Take a connection out of a room; it is told `$left` if it was receiving.
    pub fn leave(&self, id: &ConnId, room: &str) -> RoomChange {
        let mut inner = self.inner.write();
        let Some(entry) = inner.conns.get_mut(id) else {
            return RoomChange::Unchanged;
        };
        if !entry.rooms.remove(room) {
            return RoomChange::Unchanged;
        }
        remove_joined(&mut inner.rooms, room, id, true)
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

    /// Whether a connection is registered on this node.
    pub fn has(&self, id: &str) -> bool {
        self.inner.read().conns.contains_key(id)
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

    /// Every local connection with its user, session and rooms (to write presence again).
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        self.inner
            .read()
            .conns
            .iter()
            .map(|(id, e)| ConnSnapshot {
                id: id.clone(),
                user: e.user.clone(),
                session: e.session.clone(),
                rooms: e.rooms.iter().cloned().collect(),
            })
            .collect()
    }
}

/// Take `id` out of a room's joined set (and its members); `tell` pushes `$left`.
fn remove_joined(
    rooms: &mut HashMap<Arc<str>, Mutex<Room>>,
    room: &str,
    id: &ConnId,
    tell: bool,
) -> RoomChange {
    let Some((key, slot)) = rooms.get_key_value(room) else {
        return RoomChange::Unchanged;
    };
    let key = key.clone();
    let empty = {
        let mut state = slot.lock();
        state.joined.remove(id);
        if let Some(member) = state.members.remove(id) {
            if tell {
                member
                    .link
                    .push(system_frame("$left", json!({ "room": room })));
            }
        }
        state.joined.is_empty()
    };
    if empty {
        if let Some(slot) = rooms.remove(room) {
            slot.lock().progress.notify_waiters();
        }
        RoomChange::LastLocal(key)
    } else {
        RoomChange::Member
    }
}

impl Sink for Router {
    fn deliver(&self, envelope: &Envelope) {
        if let Some((room, at)) = envelope.stream_position() {
            let stepped = self.step(room, |stream, out| {
                stream.offer(&at.epoch, at.offset, &envelope.frame, out)
            });
            // A room this node keeps no stream for (its pack gives it no history) takes
            // the delivery as a plain one.
            if let Some(sent) = stepped {
                metrics::counter!("wss_deliveries_total").increment(sent);
                return;
            }
        }
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
                if let Some(slot) = inner.rooms.get(room.as_str()) {
                    for (id, member) in &slot.lock().members {
                        send(id, &member.link);
                    }
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

    fn end_conn(&self, conn: &str, why: Ending) -> bool {
        match self.inner.read().conns.get(conn) {
            Some(entry) => {
                entry.link.end(why);
                true
            }
            None => false,
        }
    }

    fn resync(&self) {
        let rooms: Vec<Arc<str>> = self.inner.read().rooms.keys().cloned().collect();
        for room in rooms {
            let mut next = Next::Nothing;
            self.step(&room, |stream, _| {
                next = stream.resync();
                Next::Nothing
            });
            if let Next::Fill { after, until } = next {
                self.schedule_fill(&room, after, until, Duration::ZERO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::HistoryEntry;
    use super::*;

    fn frames(link: &ConnLink) -> Vec<serde_json::Value> {
        link.take_all()
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).expect("JSON"))
            .collect()
    }

    fn placed(room: &str, epoch: &str, offset: u64) -> Envelope {
        let unplaced = super::super::unplaced_frame("m", &serde_json::json!(offset), room);
        Envelope {
            target: Target::Room(room.into()),
            exclude: None,
            frame: Bytes::from(super::super::place(&unplaced, offset).to_vec()),
            position: super::super::Position::At(StreamPosition::new(Arc::from(epoch), offset)),
        }
    }

    #[tokio::test]
    async fn plain_rooms_announce_joins_and_leaves_in_the_delivery_queue() {
        let router = Router::new();
        let id = ConnId::from("n-1");
        let link = ConnLink::new(16);
        router.register(id.clone(), None, SessionId::from("s"), link.clone());
        assert!(matches!(
            router.join(&id, "lobby", RoomKind::Plain),
            RoomChange::FirstLocal(_)
        ));
        router.deliver(&Envelope::plain(
            Target::Room("lobby".into()),
            None,
            Bytes::from_static(b"{\"event\":\"x\",\"data\":1}"),
        ));
        assert!(matches!(
            router.leave(&id, "lobby"),
            RoomChange::LastLocal(_)
        ));
        let got = frames(&link);
        assert_eq!(
            got[0],
            json!({"event": "$joined", "data": {"room": "lobby"}})
        );
        assert_eq!(got[1]["event"], "x");
        assert_eq!(got[2], json!({"event": "$left", "data": {"room": "lobby"}}));
    }

    #[tokio::test]
    async fn a_member_of_a_room_with_history_receives_after_its_joined_offset() {
        let router = Router::new();
        let (a, b) = (ConnId::from("n-1"), ConnId::from("n-2"));
        let (la, lb) = (ConnLink::new(64), ConnLink::new(64));
        router.register(a.clone(), None, SessionId::from("s1"), la.clone());
        router.register(b.clone(), None, SessionId::from("s2"), lb.clone());
        router.join(&a, "doc", RoomKind::WithHistory);
        // Before the stream starts, deliveries wait.
        router.deliver(&placed("doc", "e", 4));
        assert_eq!(router.activate(&a, "doc", None), Activated::NotStarted);
        router.start_stream("doc", StreamPosition::new(Arc::from("e"), 3));
        assert_eq!(
            router.activate(&a, "doc", None),
            Activated::At(StreamPosition::new(Arc::from("e"), 4))
        );
        router.deliver(&placed("doc", "e", 5));
        // b resumes from 2 with a replay of 3..=5.
        router.join(&b, "doc", RoomKind::WithHistory);
        let replay: Vec<HistoryEntry> = (3..=5)
            .map(|o| HistoryEntry {
                offset: o,
                frame: super::super::place(&super::super::unplaced_frame("m", &json!(o), "doc"), o),
            })
            .collect();
        assert_eq!(
            router.activate(&b, "doc", Some((2, &replay[..1]))),
            Activated::NeedsHistory { last: 5 }
        );
        assert_eq!(
            router.activate(&b, "doc", Some((2, &replay))),
            Activated::Replayed {
                from: StreamPosition::new(Arc::from("e"), 2),
                replayed: 3
            }
        );
        router.deliver(&placed("doc", "e", 6));
        let offsets = |frames: Vec<serde_json::Value>| -> Vec<String> {
            frames
                .iter()
                .map(|f| match f["event"].as_str() {
                    Some("$joined") => format!("joined@{}", f["data"]["offset"]),
                    _ => f["offset"].to_string(),
                })
                .collect()
        };
        assert_eq!(offsets(frames(&la)), ["joined@4", "5", "6"]);
        assert_eq!(offsets(frames(&lb)), ["joined@2", "3", "4", "5", "6"]);
    }

    #[tokio::test]
    async fn take_over_ends_the_connection() {
        let router = Router::new();
        let link = ConnLink::new(4);
        router.register(
            ConnId::from("n-1"),
            None,
            SessionId::from("s"),
            link.clone(),
        );
        assert!(router.end_conn("n-1", Ending::TakenOver));
        assert_eq!(link.ending(), Some(Ending::TakenOver));
        assert!(!router.end_conn("n-2", Ending::Disconnected));
    }
}
