//! One connection's outbound queue: the router pushes serialized frames, the
//! connection's task takes them all in one lock and writes them (see `WriteWindows` for
//! when it is woken).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::windows::WriteWindows;

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
    pub(super) window_ends: AtomicU64,
    /// Why the connection must end, once something decided it must (an [`Ending`] as
    /// a number, 0 for none): its task closes the socket with that code.
    ending: AtomicU8,
    /// There are frames for the writer to write now.
    pub(super) ready: Notify,
    /// `ending` was set (every waiter is woken).
    alarm: Notify,
}

/// Why a connection is ended from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its outbound queue overflowed: it does not read fast enough.
    SlowConsumer = 1,
    /// Its session was resumed by another connection (a client that switched networks
    /// while this socket still looked open).
    TakenOver = 2,
    /// A backend asked for it (`POST /api/connections/{id}/disconnect`, or one of the
    /// user's connections for `POST /api/users/{user}/disconnect`).
    Disconnected = 3,
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
            ending: AtomicU8::new(0),
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
            if self.end(Ending::SlowConsumer) {
                metrics::counter!("wss_slow_consumers_total").increment(1);
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

    /// Decide that the connection must end; the first reason given wins. `true` when
    /// this call decided it.
    pub fn end(&self, why: Ending) -> bool {
        let decided = self
            .ending
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if decided {
            self.alarm.notify_waiters();
        }
        decided
    }

    /// Why the connection must end, if something decided it must.
    pub fn ending(&self) -> Option<Ending> {
        match self.ending.load(Ordering::Acquire) {
            1 => Some(Ending::SlowConsumer),
            2 => Some(Ending::TakenOver),
            3 => Some(Ending::Disconnected),
            _ => None,
        }
    }

    pub fn is_slow(&self) -> bool {
        self.ending() == Some(Ending::SlowConsumer)
    }

    /// Resolves when there are frames to write now. It may also resolve with nothing
    /// queued (an answer's write took them): the writer then has nothing to do.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Resolves once the connection must end, with why. Any number of waiters may wait
    /// at once (the connection loop and a stuck write both do).
    pub async fn ended(&self) -> Ending {
        loop {
            let notified = self.alarm.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so an ending decided in between still
            // wakes this waiter.
            notified.as_mut().enable();
            if let Some(why) = self.ending() {
                return why;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

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
