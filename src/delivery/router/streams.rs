//! The router's side of room streams: starting them, positions, placing a member at
//! an offset (with a resume's replay), and filling holes from history.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::super::stream::{Next, Release, Stream};
use super::super::HistoryEntry;
use super::{joined_frame, Activated, Member, Router};
use crate::delivery::{ConnId, StreamPosition};

/// How long a hole in a stream waits for its deliveries before history is read: they
/// are usually another commit's of this node, a moment from being delivered.
const FILL_GRACE: Duration = Duration::from_millis(100);
/// Most deliveries one history read asks for when catching up.
const MAX_FILL: usize = 10_000;
/// How long a fill keeps retrying a backend it cannot reach before giving the hole up.
const FILL_PATIENCE: Duration = Duration::from_secs(10);

impl Router {
    /// Start a room's stream at its position (the room's first local member joined and
    /// the position was read after this node subscribed).
    pub fn start_stream(&self, room: &str, head: StreamPosition) {
        self.step(room, |stream, out| stream.start(head, out));
    }

    /// The stream position of a room with history, once started.
    pub fn stream_position(&self, room: &str) -> Option<StreamPosition> {
        let inner = self.inner.read();
        let state = inner.rooms.get(room)?.lock();
        state.stream.as_ref()?.position()
    }

    /// Wait (at most `within`) until the room's stream has started. `false` when it did
    /// not (or the room has no local member left).
    pub async fn started(&self, room: &str, within: Duration) -> bool {
        self.until(room, within, |_| true).await
    }

    /// Wait (at most `within`) until the room's stream has released `offset`.
    pub async fn reached(&self, room: &str, offset: u64, within: Duration) -> bool {
        self.until(room, within, |last| last >= offset).await
    }

    async fn until(&self, room: &str, within: Duration, done: impl Fn(u64) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let progress = {
                let inner = self.inner.read();
                let Some(slot) = inner.rooms.get(room) else {
                    return false;
                };
                let state = slot.lock();
                match state.stream.as_ref() {
                    None => return true,
                    Some(stream) => match stream.position() {
                        Some(at) if done(at.offset) => return true,
                        _ => state.progress.clone(),
                    },
                }
            };
            let notified = progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Looked again after registering, so progress made in between is not missed.
            if let Some(at) = self.stream_position(room) {
                if done(at.offset) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Place a joined connection in its room's stream and tell it `$joined`.
    ///
    /// Without `from` it receives from the stream's position on. With `from` (a resume)
    /// it is announced at that offset and `replay` (deliveries after it, as read from
    /// history) fills it in up to the stream's position; from then on it receives live.
    pub fn activate(
        &self,
        id: &ConnId,
        room: &str,
        from: Option<(u64, &[HistoryEntry])>,
    ) -> Activated {
        let inner = self.inner.read();
        let (Some(entry), Some(slot)) = (inner.conns.get(id), inner.rooms.get(room)) else {
            return Activated::NotJoined;
        };
        let mut state = slot.lock();
        if !state.joined.contains(id) {
            return Activated::NotJoined;
        }
        let Some(stream) = state.stream.as_ref() else {
            return Activated::Plain;
        };
        let Some(head) = stream.position() else {
            return Activated::NotStarted;
        };
        let last = head.offset;
        let link = entry.link.clone();
        let activated = match from {
            None => {
                link.push(joined_frame(room, Some(&head)));
                state
                    .members
                    .insert(id.clone(), Member { link, floor: last });
                Activated::At(head)
            }
            Some((offset, replay)) => {
                let wanted: Vec<&HistoryEntry> = replay
                    .iter()
                    .filter(|e| e.offset > offset && e.offset <= last)
                    .collect();
                let covered = wanted.len() as u64 == last.saturating_sub(offset)
                    && wanted
                        .iter()
                        .zip(offset + 1..)
                        .all(|(e, expected)| e.offset == expected);
                if !covered {
                    return Activated::NeedsHistory { last };
                }
                let from = StreamPosition::new(head.epoch, offset);
                link.push(joined_frame(room, Some(&from)));
                for entry in &wanted {
                    if let Ok(frame) = Utf8Bytes::try_from(entry.frame.clone()) {
                        link.push(frame);
                    }
                }
                // A client ahead of this node's stream (it came from a node that had
                // delivered more) skips what it already has.
                let floor = last.max(offset);
                state.members.insert(id.clone(), Member { link, floor });
                Activated::Replayed {
                    from,
                    replayed: wanted.len(),
                }
            }
        };
        activated
    }

    /// Run one step of a room's stream and release what it lets go of; schedule a fill
    /// when it leaves a hole. Returns how many frames were queued, or `None` when the
    /// room has local members but no stream here.
    pub(super) fn step(
        &self,
        room: &str,
        f: impl FnOnce(&mut Stream, &mut Vec<Release>) -> Next,
    ) -> Option<u64> {
        let inner = self.inner.read();
        let Some(slot) = inner.rooms.get(room) else {
            return Some(0);
        };
        let mut state = slot.lock();
        let stream = state.stream.as_mut()?;
        let mut out = Vec::new();
        let next = f(stream, &mut out);
        let sent = state.release(room, out);
        drop(state);
        drop(inner);
        if let Next::Fill { after, until } = next {
            self.schedule_fill(room, after, until, FILL_GRACE);
        }
        Some(sent)
    }

    pub(super) fn schedule_fill(
        &self,
        room: &str,
        after: u64,
        until: Option<u64>,
        grace: Duration,
    ) {
        let Some(router) = self.this.upgrade() else {
            return;
        };
        let room = room.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            router.fill(room, after, until).await;
        });
    }

    /// Read what a room's stream misses from history and release it (or announce the
    /// gap); repeat while the stream asks for more.
    async fn fill(&self, room: String, after: u64, until: Option<u64>) {
        let mut open = None;
        self.step(&room, |stream, _| {
            open = stream.open_hole(after, until);
            Next::Nothing
        });
        // Most holes close during the grace: nothing left to read.
        let Some((mut after, mut until)) = open else {
            return;
        };
        let started = tokio::time::Instant::now();
        loop {
            let limit = until.map_or(MAX_FILL, |u| {
                usize::try_from(u.saturating_sub(after)).unwrap_or(MAX_FILL)
            });
            let epoch = self.stream_position(&room).map(|at| at.epoch);
            let read = match self.history.get() {
                Some(history) => {
                    history
                        .read(&room, epoch.as_deref(), after, limit.min(MAX_FILL))
                        .await
                }
                None => None,
            };
            if read.is_none() && started.elapsed() < FILL_PATIENCE {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let read = read.or_else(|| {
                // Give the hole up: history is out of reach.
                self.stream_position(&room)
                    .map(|at| crate::delivery::HistoryRead {
                        head: StreamPosition::new(at.epoch, until.unwrap_or(after)),
                        entries: Vec::new(),
                        complete: false,
                    })
            });
            metrics::counter!("wss_stream_fills_total").increment(1);
            let mut next = Next::Nothing;
            self.step(&room, |stream, out| {
                next = stream.filled(after, until, read, out);
                Next::Nothing
            });
            match next {
                Next::Fill { after: a, until: u } => {
                    after = a;
                    until = u;
                }
                Next::Nothing => return,
            }
        }
    }
}
