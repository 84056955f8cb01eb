//! This node's connections and who is in which room: the local end of every delivery.
//!
//! A delivery arrives as one serialized frame; the router turns it into a WebSocket text
//! payload once and hands every recipient a clone of the same bytes (a reference-count
//! bump), so a room of 10k members costs 10k queue pushes and no copies.

use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

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
    /// `None` when writes are not coalesced (`--write-coalesce-ms 0`).
    windows: Option<Arc<WriteWindows>>,
    /// When this connection's write window ends (`WriteWindows` clock).
    window_ends: AtomicU64,
    /// Set when the queue overflowed: the connection closes itself as a slow consumer.
    slow: AtomicBool,
    /// There are frames for the writer to write now.
    ready: Notify,
    /// `slow` was set (every waiter is woken).
    alarm: Notify,
}

impl ConnLink {
    /// A link whose writer is woken for every frame queued on an empty queue.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_windows(capacity, None)
    }

    /// A link whose deliveries wait for the end of its write window (see `WriteWindows`).
    pub fn with_windows(capacity: usize, windows: Option<Arc<WriteWindows>>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            // A quarter leaves the rest as headroom for the writer's wake-up to come
            // round while a fast producer keeps pushing.
            flush_at: (capacity / 4).clamp(1, FLUSH_AT_MOST),
            windows,
            window_ends: AtomicU64::new(0),
            slow: AtomicBool::new(false),
            ready: Notify::new(),
            alarm: Notify::new(),
        })
    }

    /// Queue a delivery; a full queue marks the connection as a slow consumer and drops it.
    ///
    /// The writer empties the queue when it writes, so only the push that finds it empty
    /// needs to arrange a wake-up: now, or at the end of the write window when the last
    /// write was recent. The push that makes the queue `flush_at` long wakes it at once.
    pub fn push(self: &Arc<Self>, frame: Utf8Bytes) -> bool {
        let Some(len) = self.enqueue(frame) else {
            return false;
        };
        if len == 1 {
            if let Some(windows) = &self.windows {
                let ends = self.window_ends.load(Ordering::Relaxed);
                if ends > windows.now() {
                    windows.hold(self.clone(), ends);
                    return true;
                }
            }
            self.ready.notify_one();
        } else if len == self.flush_at {
            self.ready.notify_one();
        }
        true
    }

    /// Queue an answer to the client's own frame. Nobody is woken: the caller writes the
    /// queue right away, so a waiting client is not made to wait for the window too.
    pub fn push_answer(&self, frame: Utf8Bytes) -> bool {
        self.enqueue(frame).is_some()
    }

    /// The queue's new length, or `None` when it was full.
    fn enqueue(&self, frame: Utf8Bytes) -> Option<usize> {
        let mut queue = self.queue.lock();
        if queue.len() >= self.capacity {
            drop(queue);
            if !self.slow.swap(true, Ordering::Relaxed) {
                metrics::counter!("wss_slow_consumers_total").increment(1);
                self.alarm.notify_waiters();
            }
            metrics::counter!("wss_deliveries_dropped_total").increment(1);
            return None;
        }
        queue.push_back(frame);
        Some(queue.len())
    }

    /// The writer wrote: its next write window starts now.
    pub fn wrote(&self) {
        if let Some(windows) = &self.windows {
            self.window_ends
                .store(windows.now() + windows.window_us, Ordering::Relaxed);
        }
    }

    /// Everything queued, oldest first.
    pub fn take_all(&self) -> VecDeque<Utf8Bytes> {
        std::mem::take(&mut *self.queue.lock())
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Resolves when there are frames to write now. It may also resolve with nothing
    /// queued (an answer's write took them): the writer then has nothing to do.
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

/// Write coalescing (`--write-coalesce-ms`): a connection writes at most once per
/// window, so a connection fed faster than that gets its frames in batches, one write
/// (and one system call, most of a delivery's cost) per window instead of one per frame.
///
/// One node-wide release task instead of a timer per connection: a held connection is
/// woken once, when its window ends, not once for the frame and again for its timer.
/// Frames for a connection that has not written for a window go out at once.
pub struct WriteWindows {
    window_us: u64,
    epoch: Instant,
    /// Connections holding frames, soonest window end first.
    held: Mutex<BinaryHeap<Held>>,
    /// A connection was held whose window ends before any other's (or the last handle
    /// went away): the release task re-reads the heap.
    sooner: Arc<Notify>,
}

struct Held {
    ends: u64,
    link: Arc<ConnLink>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.ends == other.ends
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed: `BinaryHeap` is a max-heap and the soonest end comes first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.ends.cmp(&self.ends)
    }
}

impl WriteWindows {
    /// `None` for a zero window: every frame is written as it comes. Starts the release
    /// task, which ends once the last handle is gone.
    pub fn start(window: Duration) -> Option<Arc<Self>> {
        if window.is_zero() {
            return None;
        }
        let windows = Arc::new(Self {
            window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX / 2),
            epoch: Instant::now(),
            held: Mutex::new(BinaryHeap::new()),
            sooner: Arc::new(Notify::new()),
        });
        tokio::spawn(release(Arc::downgrade(&windows)));
        Some(windows)
    }

    /// Microseconds since this node's windows started.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX / 2)
    }

    fn hold(&self, link: Arc<ConnLink>, ends: u64) {
        let mut held = self.held.lock();
        let sooner = held.peek().is_none_or(|first| ends < first.ends);
        held.push(Held { ends, link });
        drop(held);
        if sooner {
            self.sooner.notify_one();
        }
    }
}

impl Drop for WriteWindows {
    fn drop(&mut self) {
        self.sooner.notify_one();
    }
}

/// Wake every held connection whose window has ended; sleep until the next one ends.
///
/// A wake-up may find the queue already written (by an answer, or by a full batch):
/// the writer then writes what came since, or nothing. Either is harmless, and never
/// skipping a wake-up is what guarantees no queued frame is left behind.
async fn release(windows: Weak<WriteWindows>) {
    let mut due = Vec::new();
    loop {
        let Some(this) = windows.upgrade() else {
            return;
        };
        let next = {
            let mut held = this.held.lock();
            let now = this.now();
            while let Some(first) = held.peek_mut() {
                if first.ends > now {
                    break;
                }
                due.push(PeekMut::pop(first).link);
            }
            held.peek().map(|first| first.ends)
        };
        for link in due.drain(..) {
            link.ready.notify_one();
        }
        let sooner = this.sooner.clone();
        match next {
            // Held links keep `this` alive, so waiting with it is bounded by one window.
            Some(ends) => {
                let at = this.epoch + Duration::from_micros(ends);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = sooner.notified() => {}
                }
            }
            None => {
                drop(this);
                sooner.notified().await;
            }
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
            // Dispatch turns `sender` into `conn:<id>` before anything is delivered.
            Target::Sender => {}
        }
        // Frames sent are counted when written (`wss_frames_out_total`); this counts
        // what was queued for local recipients, dropped ones excluded.
        metrics::counter!("wss_deliveries_total").increment(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Utf8Bytes {
        Utf8Bytes::from_static("{}")
    }

    /// A link on its own windows that has just written: its next frame is held.
    fn just_wrote(window: Duration, capacity: usize) -> Arc<ConnLink> {
        let link = ConnLink::with_windows(capacity, WriteWindows::start(window));
        link.wrote();
        link
    }

    /// Resolves when the link's writer would be woken, or fails after `within`.
    async fn woken_within(link: &ConnLink, within: Duration) -> bool {
        tokio::time::timeout(within, link.ready()).await.is_ok()
    }

    #[tokio::test]
    async fn a_link_that_has_not_written_is_woken_at_once() {
        let windows = WriteWindows::start(Duration::from_millis(200));
        let link = ConnLink::with_windows(16, windows);
        assert!(link.push(frame()));
        assert!(woken_within(&link, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_link_that_just_wrote_is_woken_when_its_window_ends() {
        let link = just_wrote(Duration::from_millis(150), 16);
        let pushed = Instant::now();
        assert!(link.push(frame()));
        assert!(link.push(frame()), "a second frame joins the held batch");
        assert!(!woken_within(&link, Duration::from_millis(100)).await);
        assert!(woken_within(&link, Duration::from_millis(500)).await);
        assert!(pushed.elapsed() >= Duration::from_millis(140));
        assert_eq!(link.take_all().len(), 2);
    }

    #[tokio::test]
    async fn a_window_ending_sooner_is_not_kept_waiting_behind_a_later_one() {
        let windows = WriteWindows::start(Duration::from_millis(400));
        let late = ConnLink::with_windows(16, windows.clone());
        late.wrote();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // `soon`'s window ends 300 ms before `late`'s, though it is held after it.
        let soon = ConnLink::with_windows(16, windows.clone());
        soon.wrote();
        soon.window_ends.fetch_sub(300_000, Ordering::Relaxed);
        assert!(late.push(frame()));
        assert!(soon.push(frame()));
        assert!(woken_within(&soon, Duration::from_millis(250)).await);
        assert!(woken_within(&late, Duration::from_millis(600)).await);
    }

    #[tokio::test]
    async fn a_full_batch_wakes_the_writer_inside_its_window() {
        let link = just_wrote(Duration::from_secs(10), 8);
        for _ in 0..link.flush_at {
            assert!(link.push(frame()));
        }
        assert!(woken_within(&link, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn the_release_task_ends_with_the_last_handle() {
        let windows = WriteWindows::start(Duration::from_millis(5));
        let weak = Arc::downgrade(windows.as_ref().expect("a window"));
        let link = ConnLink::with_windows(16, windows);
        link.wrote();
        assert!(link.push(frame()));
        assert!(woken_within(&link, Duration::from_millis(500)).await);
        drop(link);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_zero_window_coalesces_nothing() {
        assert!(WriteWindows::start(Duration::ZERO).is_none());
    }
}
