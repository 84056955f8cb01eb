//! Deliveries between nodes, and the streams of rooms with history that publishing
//! places them in.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::BackendError;
use crate::delivery::{Ending, Envelope, HistoryPolicy, HistoryRead, StreamPosition};

/// Where a delivery to a room with history was placed in the room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub room: String,
    pub at: StreamPosition,
}

/// A random epoch for a room whose history begins now.
pub fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// Channels a node listens on only while it has a local recipient for them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(String),
    User(String),
}

/// Publish/subscribe between nodes. The memory bus hands each envelope straight to the
/// local [`crate::delivery::Sink`]; the Redis bus routes it through one channel per
/// target.
pub trait Bus: Send + Sync + 'static {
    /// Deliver to every node with matching recipients (this node included). At most
    /// once, unless the delivery goes to a room with history: then it is placed in the
    /// room's stream first (see [`HistoryStore`]), and where is returned.
    fn publish(&self, envelope: Envelope)
        -> BoxFuture<'_, Result<Option<Placement>, BackendError>>;

    /// End the connection `conn`, wherever it is, for the reason given (its session was
    /// resumed elsewhere, a backend disconnected it): the node holding it closes it
    /// with that reason's close code. At most once, like every message on the bus.
    fn end_conn(&self, conn: &str, why: Ending) -> BoxFuture<'_, Result<(), BackendError>>;

    /// A local recipient appeared for `channel`: from when this resolves, everything
    /// published to it reaches this node. Reference-counted; one `unwatch` per `watch`,
    /// failed or not (a failed watch stays wanted and is subscribed on reconnect).
    fn watch(&self, _channel: Channel) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// A local recipient of `channel` went away.
    fn unwatch(&self, _channel: Channel) {}

    /// Whether the bus is connected and every subscription is in place.
    fn is_ready(&self) -> bool {
        true
    }
}

/// The streams of rooms with history: each delivery [`Bus::publish`] (or a commit)
/// places gets the room's next offset and stays readable here for the room's policy.
pub trait HistoryStore: Send + Sync + 'static {
    /// A room's stream position (epoch, last offset); a room without one gets its
    /// epoch now, at offset 0.
    fn position(
        &self,
        room: &str,
        policy: &HistoryPolicy,
    ) -> BoxFuture<'_, Result<StreamPosition, BackendError>>;

    /// A room's deliveries after `after`, at most `limit`, with the room's position.
    ///
    /// `seen` is the epoch `after` was handed out in, if the reader knows it. A room
    /// still in that epoch but behind `after` lost its latest deliveries (a Redis
    /// failover before they replicated): it gets a new epoch, so no position of the old
    /// one is trusted again and the offsets it hands out next cannot be mistaken for
    /// ones already seen.
    fn history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        seen: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryRead, BackendError>>;
}
