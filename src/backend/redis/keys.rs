//! Every key and channel name the Redis backend uses (listed in the module doc of
//! `backend::redis`), in one place.

use crate::backend::Channel;
use crate::delivery::Target;

/// Names of keys and channels under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub fn state(&self, key: &str) -> String {
        format!("{}s:{key}", self.prefix)
    }
    pub fn version(&self, key: &str) -> String {
        format!("{}v:{key}", self.prefix)
    }
    pub fn room(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }
    /// Rooms by member count (a sorted set), for the busiest rooms.
    pub fn rooms_index(&self) -> String {
        format!("{}rooms", self.prefix)
    }
    /// A user's live connections (a set).
    pub fn user(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }
    /// An idempotency key of the HTTP API: a running marker, then the stored result.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }
    pub fn conn_rooms(&self, conn: &str) -> String {
        format!("{}connrooms:{conn}", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }
    pub fn node_conns(&self, id: &str) -> String {
        format!("{}node:{id}:conns", self.prefix)
    }
    /// A room's stream position: hash `epoch`, `offset`.
    pub fn position(&self, room: &str) -> String {
        format!("{}pos:{room}", self.prefix)
    }
    /// A room's history: a stream, one entry per delivery.
    pub fn history(&self, room: &str) -> String {
        format!("{}hist:{room}", self.prefix)
    }
    /// A session: hash `user` (JSON), `conn`.
    pub fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }
    pub fn lease(&self, id: &str) -> String {
        format!("{}lease:{id}", self.prefix)
    }
    pub fn all_channel(&self) -> String {
        format!("{}ch:all", self.prefix)
    }
    pub fn node_channel(&self, id: &str) -> String {
        format!("{}ch:node:{id}", self.prefix)
    }
    pub fn channel(&self, channel: &Channel) -> String {
        match channel {
            Channel::Room(r) => format!("{}ch:room:{r}", self.prefix),
            Channel::User(u) => format!("{}ch:user:{u}", self.prefix),
        }
    }
    /// The channel a delivery to `target` travels on.
    pub fn target_channel(&self, target: &Target) -> Option<String> {
        match target {
            Target::None => None,
            Target::All => Some(self.all_channel()),
            Target::Room(r) => Some(self.channel(&Channel::Room(r.clone()))),
            Target::User(u) => Some(self.channel(&Channel::User(u.clone()))),
            Target::Conn(c) => Some(self.node_channel(node_of(c))),
        }
    }
}

/// Connection ids are `<node>-<n>`.
pub fn node_of(conn: &str) -> &str {
    conn.rsplit_once('-').map_or(conn, |(node, _)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_name_their_node() {
        assert_eq!(node_of("ab12cd34-1f"), "ab12cd34");
        let names = Names::new("wss:");
        assert_eq!(
            names
                .target_channel(&Target::Conn("ab12cd34-1f".into()))
                .unwrap(),
            "wss:ch:node:ab12cd34"
        );
    }
}
