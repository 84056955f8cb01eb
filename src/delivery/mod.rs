//! Delivery: what a delivery is, where it goes, and the node-local path from a
//! serialized frame to every recipient's socket.
//!
//! - [`Envelope`]: a delivery on its way, its frame serialized once ([`frame`]); the
//!   same bytes travel between nodes and reach every local recipient. A delivery to a
//!   room with history also has a [`Position`] in the room's stream.
//! - [`Target`]: a resolved target (`room:lobby`, `user:alice`, …).
//! - [`Sink`]: the local end of the bus; [`Router`] is the one that serves sockets.
//! - [`Router`]: this node's connections and rooms; [`ConnLink`]: one connection's
//!   bounded outbound queue; [`WriteWindows`]: write coalescing across connections.
//!
//! This module knows nothing of events, scripts or backends: the engine decides what
//! to deliver, backends carry envelopes between nodes, and the router hands them out.

mod link;
mod router;
mod stream;
pub mod target;
mod windows;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

pub use link::{ConnLink, Ending};
pub use router::{Activated, ConnSnapshot, RoomChange, RoomKind, Router};
pub use target::{Target, TargetKind, TargetSyntaxError};
pub use windows::WriteWindows;

pub use crate::ids::ConnId;

/// A delivery on its way to every node: who gets it and the frame, serialized once.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub target: Target,
    /// The sender, when it must not receive its own delivery (`exclude_sender`).
    pub exclude: Option<ConnId>,
    /// The frame as clients receive it; while the position is [`Position::Unplaced`],
    /// the frame without its offset (see [`place`]).
    pub frame: Bytes,
    pub position: Position,
}

/// How much of a room's deliveries its stream keeps (a pack's `rooms:` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Deliveries kept, newest last.
    pub size: usize,
    /// How long a delivery stays in the history.
    pub ttl: Duration,
}

/// A place in a room's stream: its epoch, a random id that changes when the room's
/// history is lost (so no offset of an older one is trusted), and an offset in that
/// epoch (1, 2, 3, … per delivery; 0 before the first). History, resumes, gap repair,
/// the HTTP API and the client frames all speak of positions in this one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl StreamPosition {
    pub fn new(epoch: Arc<str>, offset: u64) -> Self {
        Self { epoch, offset }
    }
}

/// Where a delivery stands in its room's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// Not to a room with history: at most once, no offset.
    None,
    /// To a room with history, not placed yet: the backend that publishes it gives it
    /// the room's next offset, appends it to the history and completes the frame, all
    /// in one atomic step.
    Unplaced(HistoryPolicy),
    /// Placed at this position of the room's stream.
    At(StreamPosition),
}

impl Envelope {
    /// A delivery with no place in a stream.
    pub fn plain(target: Target, exclude: Option<ConnId>, frame: Bytes) -> Self {
        Self {
            target,
            exclude,
            frame,
            position: Position::None,
        }
    }

    /// This (unplaced) envelope placed `at` its room's next position: the frame
    /// completed with the offset.
    pub fn placed(&self, at: StreamPosition) -> Self {
        Self {
            target: self.target.clone(),
            exclude: self.exclude.clone(),
            frame: place(&self.frame, at.offset),
            position: Position::At(at),
        }
    }

    /// The room and position of a placed delivery.
    pub fn stream_position(&self) -> Option<(&str, &StreamPosition)> {
        match (&self.target, &self.position) {
            (Target::Room(room), Position::At(at)) => Some((room, at)),
            _ => None,
        }
    }
}

/// The local end of the bus: whatever delivers envelopes to this node's sockets.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, envelope: &Envelope);

    /// End a local connection, for the reason given (its session was taken over, a
    /// backend disconnected it). `true` when the connection is on this node.
    fn end_conn(&self, _conn: &str, _why: Ending) -> bool {
        false
    }

    /// The bus was disconnected and is back: what it published meanwhile never arrived,
    /// so rooms with history catch up from their history.
    fn resync(&self) {}
}

/// One delivery as a room's history holds it.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub offset: u64,
    /// The complete frame, offset included.
    pub frame: Bytes,
}

/// A read of a room's history after some offset.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// The room's position now: its epoch and last offset (0 for a room nothing was
    /// delivered to yet).
    pub head: StreamPosition,
    /// Every delivery after the offset asked for, oldest first, up to the limit asked
    /// for. Complete means: from the offset asked for up to `head`, nothing is missing.
    pub entries: Vec<HistoryEntry>,
    pub complete: bool,
}

/// Where a room's deliveries can be read again: the backend's history, as the router
/// needs it to fill a hole in a room's stream.
pub trait History: Send + Sync + 'static {
    /// Deliveries of `room` after `after` of `epoch` (see `HistoryStore::history`), at
    /// most `limit`.
    fn read(
        &self,
        room: &str,
        epoch: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Option<HistoryRead>>;
}

#[derive(Serialize)]
struct DeliveryFrame<'a> {
    event: &'a str,
    data: &'a Value,
}

/// Serialize a delivery once; every recipient on every node gets these bytes.
pub fn frame(event: &str, data: &Value) -> Bytes {
    serde_json::to_vec(&DeliveryFrame { event, data })
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"event\":\"$error\",\"data\":null}"))
}

#[derive(Serialize)]
struct StreamFrame<'a> {
    event: &'a str,
    data: &'a Value,
    room: &'a str,
}

/// The frame of a delivery to a room with history, up to its offset:
/// `{"event":…,"data":…,"room":…,"offset":` — [`place`] completes it.
pub fn unplaced_frame(event: &str, data: &Value, room: &str) -> Bytes {
    let mut out = serde_json::to_vec(&StreamFrame { event, data, room })
        .unwrap_or_else(|_| b"{\"event\":\"$error\",\"data\":null}".to_vec());
    // Replace the closing brace with the start of the offset field.
    out.pop();
    out.extend_from_slice(b",\"offset\":");
    Bytes::from(out)
}

/// Complete an unplaced frame with its offset.
pub fn place(unplaced: &[u8], offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(unplaced.len() + 21);
    out.put_slice(unplaced);
    out.put_slice(offset.to_string().as_bytes());
    out.put_u8(b'}');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placed_frame_carries_room_and_offset() {
        let data = serde_json::json!({ "text": "hi" });
        let framed = place(&unplaced_frame("chat.message", &data, "lobby"), 42);
        let value: Value = serde_json::from_slice(&framed).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"event": "chat.message", "data": {"text": "hi"}, "room": "lobby", "offset": 42})
        );
        assert_eq!(
            std::str::from_utf8(&framed).expect("UTF-8"),
            r#"{"event":"chat.message","data":{"text":"hi"},"room":"lobby","offset":42}"#
        );
    }
}
