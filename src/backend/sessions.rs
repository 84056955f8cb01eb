//! A connection's life as the cluster knows it, and what it leaves for a resume.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::BackendError;
use crate::ids::{ConnId, SessionId};

/// What a closed connection left for a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user it was authenticated as; `None` for an anonymous connection.
    pub user: Option<String>,
    /// The connection that held the session last.
    pub conn: String,
    /// Its rooms, sorted.
    pub rooms: Vec<String>,
}

/// Connections opening and closing, and their sessions.
pub trait Sessions: Send + Sync + 'static {
    /// Record a live connection of this node and its session (so a survivor can clean
    /// up after it if this node dies, and a resume can find it).
    fn open(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// A connection closed: out of its rooms' member sets, its user's connections and
    /// the live registry; its session and its rooms are kept for `keep` (the resume TTL).
    fn close(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
        rooms: &[Arc<str>],
        keep: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The session `id`, if it is live or still within its resume TTL.
    fn session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, BackendError>>;
}
