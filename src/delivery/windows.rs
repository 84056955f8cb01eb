//! Write coalescing: one node-wide task that wakes each held connection when its write
//! window ends.

use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::link::ConnLink;

/// Write coalescing (`--write-coalesce-ms`): a connection writes at most once per
/// window, so a connection fed faster than that gets its frames in batches, one write
/// (and one system call, most of a delivery's cost) per window instead of one per frame.
///
/// One node-wide release task instead of a timer per connection: a held connection is
/// woken once, when its window ends, not once for the frame and again for its timer.
/// Frames for a connection that has not written for a window go out at once.
pub struct WriteWindows {
    pub(super) window_us: u64,
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
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX / 2)
    }

    pub(super) fn hold(&self, link: Arc<ConnLink>, ends: u64) {
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
