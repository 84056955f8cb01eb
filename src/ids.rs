//! Identities that travel between modules and nodes: a connection's id and a session's.
//!
//! Each is formatted in one place and read back in one place, so the node a connection
//! lives on is never parsed out of a string by hand, and a session id (a credential)
//! never reaches a log by accident.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// A connection's id, `<node>-<n>` with `n` in hex: unique in the cluster, and routable
/// to the node that holds it (`conn:` deliveries go to that node's channel without a
/// lookup). A backend calling through the HTTP API runs events as `api:<key name>`.
///
/// Cheap to clone (one `Arc`); reads as a `str` wherever a name is wanted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(Arc<str>);

impl ConnId {
    /// The `n`th connection of `node`.
    pub fn new(node: &str, n: u64) -> Self {
        Self(Arc::from(format!("{node}-{n:x}")))
    }

    /// The caller id of an HTTP API key: `conn.id` in the scripts it runs.
    pub fn api(key: &str) -> Self {
        Self(Arc::from(format!("api:{key}")))
    }

    /// The node holding this connection.
    pub fn node(&self) -> &str {
        node_of(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The node part of a connection id given as text (a `conn:` target, an API path): all
/// before the last `-`, or the whole text when it has none. Routing such a name to a
/// node that does not exist delivers to nobody, as a wrong id should.
pub fn node_of(conn: &str) -> &str {
    conn.rsplit_once('-').map_or(conn, |(node, _)| node)
}

impl From<&str> for ConnId {
    fn from(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl From<String> for ConnId {
    fn from(id: String) -> Self {
        Self(Arc::from(id))
    }
}

impl FromStr for ConnId {
    type Err = std::convert::Infallible;

    /// Any text names a connection (one no node holds is simply not found).
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(id))
    }
}

impl Deref for ConnId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ConnId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ConnId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for ConnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A session id: 128 random bits as hex, given to the client in `$welcome` and shown
/// back in `$resume`. Whoever holds it can take over the session's rooms, so it is a
/// credential: `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A new unguessable id (the thread RNG is a CSPRNG seeded from the OS).
    pub fn random() -> Self {
        Self(Arc::from(format!("{:032x}", rand::random::<u128>())))
    }

    /// The id as the client and the backend hold it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionId {
    fn from(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conn_id_names_its_node() {
        let id = ConnId::new("ab12cd34", 31);
        assert_eq!(id.as_str(), "ab12cd34-1f");
        assert_eq!(id.node(), "ab12cd34");
        assert_eq!(node_of("no-dash-at-all-"), "no-dash-at-all");
        assert_eq!(node_of("plain"), "plain");
        let parsed: ConnId = "ab12cd34-1f".parse().unwrap_or_else(|e| match e {});
        assert_eq!(parsed, id);
    }

    #[test]
    fn a_session_id_is_not_printed_by_debug() {
        let id = SessionId::random();
        assert_eq!(id.expose().len(), 32);
        assert!(!format!("{id:?}").contains(id.expose()));
    }
}
