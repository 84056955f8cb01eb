//! Delivery: what a delivery is, where it goes, and the node-local path from a
//! serialized frame to every recipient's socket.
//!
//! - [`Envelope`]: a delivery on its way, its frame serialized once ([`frame`]); the
//!   same bytes travel between nodes and reach every local recipient.
//! - [`Target`]: a resolved target (`room:lobby`, `user:alice`, …).
//! - [`Sink`]: the local end of the bus; [`Router`] is the one that serves sockets.
//! - [`Router`]: this node's connections and rooms; [`ConnLink`]: one connection's
//!   bounded outbound queue; [`WriteWindows`]: write coalescing across connections.
//!
//! This module knows nothing of events, scripts or backends: the engine decides what
//! to deliver, backends carry envelopes between nodes, and the router hands them out.

mod link;
mod router;
pub mod target;
mod windows;

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

pub use link::ConnLink;
pub use router::{ConnSnapshot, RoomChange, Router};
pub use target::{Target, TargetKind, TargetSyntaxError};
pub use windows::WriteWindows;

/// Connection ids embed the id of the node that holds them, so a `conn:` delivery can be
/// routed to that node's channel without a lookup.
pub type ConnId = Arc<str>;

/// A delivery on its way to every node: who gets it and the frame, serialized once.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub target: Target,
    /// The sender, when it must not receive its own delivery (`exclude_sender`).
    pub exclude: Option<ConnId>,
    pub frame: Bytes,
}

/// The local end of the bus: whatever delivers envelopes to this node's sockets.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, envelope: &Envelope);
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
