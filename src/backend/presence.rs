//! Who is where, cluster-wide: room membership and the directory of live connections.

use futures_util::future::BoxFuture;

use super::BackendError;
use crate::ids::ConnId;

/// A connection some node holds, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConn {
    pub id: String,
    pub user: Option<String>,
}

/// Room membership and the live-connection directory, on every node. Written by the
/// engine (joins, leaves) and by [`super::Sessions`] (connections opening and closing);
/// read by scripts (`presence()`) and the HTTP API.
pub trait Presence: Send + Sync + 'static {
    /// Add a connection to a room, cluster-wide. Idempotent.
    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Remove a connection from a room. Idempotent.
    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Every connection id in a room, on every node, sorted.
    fn members(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// A live connection, on any node: `None` when no node holds it.
    fn live_conn(&self, conn: &str) -> BoxFuture<'_, Result<Option<LiveConn>, BackendError>>;

    /// The live connections of `user`, on every node, sorted.
    fn user_conns(&self, user: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// The rooms with the most members, cluster-wide, most first: `(room, members)`,
    /// at most `limit`. Kept up to date by every membership change, so this is one
    /// cheap read, not a scan.
    fn busiest_rooms(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, BackendError>>;
}
