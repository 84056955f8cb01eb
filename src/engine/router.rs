//! This node's connections and who is in which room: the local end of every delivery.
//!
//! A delivery arrives as one serialized payload; the router frames it as a WebSocket
//! text frame once and writes the same bytes to every recipient's socket, so a room of
//! 10k members costs 10k `write` calls and no copies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::backend::{ConnId, Envelope, Sink};
use crate::config::Target;

/// One server-to-client WebSocket frame, header included, encoded once.
///
/// Server frames are never masked (RFC 6455 §5.1), so the very same bytes are correct
/// on every connection: a delivery is framed once per node and every recipient gets a
/// reference-count bump, not a copy.
#[derive(Clone, Debug)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// A text frame; `payload` must be UTF-8 (the caller's serializer guarantees it).
    pub fn text(payload: &[u8]) -> Self {
        const FIN_TEXT: u8 = 0x81;
        let len = payload.len();
        let mut frame = BytesMut::with_capacity(len + 10);
        frame.put_u8(FIN_TEXT);
        match len {
            0..=125 => frame.put_u8(len as u8),
            126..=0xffff => {
                frame.put_u8(126);
                frame.put_u16(len as u16);
            }
            _ => {
                frame.put_u8(127);
                frame.put_u64(len as u64);
            }
        }
        frame.put_slice(payload);
        Self(frame.freeze())
    }

    /// An empty ping (keepalive).
    pub fn ping() -> Self {
        Self(Bytes::from_static(&[0x89, 0x00]))
    }

    /// The text after the header.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        let header = match self.0[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&self.0[header..]).unwrap_or("")
    }
}

#[cfg(test)]
mod wire_frame_tests {
    use super::WireFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    #[test]
    fn text_frames_match_tungstenite_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            let ours = WireFrame::text(payload.as_bytes());
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap_or_else(|e| panic!("tungstenite cannot format {len}: {e}"));
            assert_eq!(&ours.0[..], &theirs[..], "length {len}");
            assert_eq!(ours.as_str(), payload);
        }
    }
}

/// How the router reaches one connection: its socket, and a bounded queue for what the
/// socket could not take at once.
///
/// The common case costs one `write` syscall: a frame that finds the queue empty is
/// written straight to the socket by whoever delivers it, without waking the
/// connection's task. Only what the kernel does not accept (the client reads slower
/// than we send) is queued, and the connection's task writes that when the socket is
/// writable again. Every write happens under the queue's lock, so frames never
/// interleave and leave in order.
///
/// A plain deque under a mutex rather than an mpsc channel: an idle connection's queue
/// allocates nothing.
pub struct ConnLink {
    queue: Mutex<VecDeque<Bytes>>,
    /// `None` for in-process connections (`wss-engine test`): frames only queue.
    socket: Option<Arc<TcpStream>>,
    capacity: usize,
    /// Set when the queue overflowed: the connection closes itself as a slow consumer.
    slow: AtomicBool,
    /// Frames were queued on an empty queue.
    ready: Notify,
    /// `slow` was set (every waiter is woken).
    alarm: Notify,
}

/// Queued frames handed to the kernel in one `writev`.
const WRITE_BATCH: usize = 64;

impl ConnLink {
    /// A link whose frames only queue (nothing reads them): in-process connections.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::build(capacity, None)
    }

    /// A link that writes to `socket`.
    pub fn with_socket(capacity: usize, socket: Arc<TcpStream>) -> Arc<Self> {
        Self::build(capacity, Some(socket))
    }

    fn build(capacity: usize, socket: Option<Arc<TcpStream>>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            socket,
            capacity: capacity.max(1),
            slow: AtomicBool::new(false),
            ready: Notify::new(),
            alarm: Notify::new(),
        })
    }

    /// Send or queue a frame; a full queue marks the connection as a slow consumer and
    /// drops the frame.
    pub fn push(&self, frame: &WireFrame) -> bool {
        self.enqueue(frame.0.clone(), true)
    }

    /// Bytes tungstenite writes itself (pong replies, the close handshake): never
    /// dropped, they are a few bytes each.
    pub fn push_control(&self, bytes: Bytes) {
        self.enqueue(bytes, false);
    }

    fn enqueue(&self, mut bytes: Bytes, bounded: bool) -> bool {
        let mut queue = self.queue.lock();
        if queue.is_empty() {
            if let Some(socket) = &self.socket {
                match socket.try_write(&bytes) {
                    Ok(n) if n == bytes.len() => return true,
                    Ok(n) => bytes.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The connection's task learns of a dead socket from its read side.
                    Err(_) => return false,
                }
            }
        } else if bounded && queue.len() >= self.capacity {
            drop(queue);
            if !self.slow.swap(true, Ordering::Relaxed) {
                metrics::counter!("wss_slow_consumers_total").increment(1);
                self.alarm.notify_waiters();
            }
            metrics::counter!("wss_deliveries_dropped_total").increment(1);
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(bytes);
        drop(queue);
        // The writer empties the queue before it waits again, so only the push that
        // finds it empty needs to wake it (a stored permit covers a writer not yet
        // waiting).
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Write everything queued, waiting for the socket as needed (the connection's task
    /// calls this when woken by [`ready`](Self::ready)).
    pub async fn flush(&self) -> std::io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        loop {
            {
                let mut queue = self.queue.lock();
                if queue.is_empty() {
                    return Ok(());
                }
                let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(queue.iter()) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                match socket.try_write_vectored(&slices[..count]) {
                    Ok(mut written) => {
                        while written > 0 {
                            let Some(front) = queue.front_mut() else {
                                break;
                            };
                            if written >= front.len() {
                                written -= front.len();
                                queue.pop_front();
                            } else {
                                front.advance(written);
                                written = 0;
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            socket.writable().await?;
        }
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Resolves when frames were queued on an empty queue.
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
        // One UTF-8 check and one framing per delivery per node; every recipient
        // shares the result.
        if std::str::from_utf8(&envelope.frame).is_err() {
            tracing::warn!("dropping a delivery that is not UTF-8");
            return;
        }
        let frame = WireFrame::text(&envelope.frame);
        let inner = self.inner.read();
        // Compared only when there is someone to exclude: most deliveries have none.
        let excluded = |id: &ConnId| envelope.exclude.as_ref().is_some_and(|x| x == id);
        let mut sent = 0u64;
        let mut send = |id: &ConnId, link: &ConnLink| {
            if !excluded(id) && link.push(&frame) {
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
