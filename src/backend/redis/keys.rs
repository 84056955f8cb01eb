//! Every key and channel name the Redis backend uses (listed in the module doc of
//! `backend::redis`), in one place.
//!
//! On a Redis Cluster the names carry hash tags, so what one script touches lives in
//! one slot: a room's position, history, member set and channel share `{<room>}`, and a
//! state key's value and version share the key's own hash tag (or `{<key>}` when it has
//! none; keys a script uses together need one tag of their own, as `check` says).

use super::conn::hash_tag;
use crate::backend::Channel;
use crate::delivery::Target;

/// Names of keys and channels under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    /// Redis Cluster: names with hash tags, and sharded channels.
    cluster: bool,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            cluster: false,
        }
    }

    /// Names for a Redis Cluster.
    pub fn clustered(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            cluster: true,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{name}` on a cluster: what follows a kind of key decides its slot.
    fn tagged(&self, kind: &str, name: &str) -> String {
        if self.cluster {
            format!("{}{kind}{{{name}}}", self.prefix)
        } else {
            format!("{}{kind}{name}", self.prefix)
        }
    }

    /// A state key keeps its own hash tag; one without gets `{key}` on a cluster.
    fn state_tagged(&self, kind: &str, key: &str) -> String {
        if self.cluster && hash_tag(key.as_bytes()).is_none() {
            format!("{}{kind}{{{key}}}", self.prefix)
        } else {
            format!("{}{kind}{key}", self.prefix)
        }
    }

    pub fn state(&self, key: &str) -> String {
        self.state_tagged("s:", key)
    }
    pub fn version(&self, key: &str) -> String {
        self.state_tagged("v:", key)
    }
    pub fn room(&self, room: &str) -> String {
        self.tagged("room:", room)
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
        self.tagged("pos:", room)
    }
    /// A room's history: a stream, one entry per delivery.
    pub fn history(&self, room: &str) -> String {
        self.tagged("hist:", room)
    }
    /// A once-key beside `key` (same hash tag, so same slot): marks that attempt `id`
    /// of a script already ran.
    pub fn once(&self, key: &str, id: &str) -> String {
        format!("{key}:once:{id}")
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
        self.tagged("ch:node:", id)
    }
    pub fn channel(&self, channel: &Channel) -> String {
        match channel {
            Channel::Room(r) => self.tagged("ch:room:", r),
            Channel::User(u) => self.tagged("ch:user:", u),
        }
    }
    /// The channel a delivery to `target` travels on.
    pub fn target_channel(&self, target: &Target) -> Option<String> {
        match target {
            Target::None => None,
            Target::All => Some(self.all_channel()),
            Target::Room(r) => Some(self.channel(&Channel::Room(r.clone()))),
            Target::User(u) => Some(self.channel(&Channel::User(u.clone()))),
            Target::Conn(c) => Some(self.node_channel(crate::ids::node_of(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_name_their_node() {
        let names = Names::new("wss:");
        assert_eq!(
            names
                .target_channel(&Target::Conn("ab12cd34-1f".into()))
                .unwrap(),
            "wss:ch:node:ab12cd34"
        );
    }

    #[test]
    fn cluster_names_keep_what_one_script_touches_in_one_slot() {
        use super::super::conn::slot;
        let names = Names::clustered("wss:");
        let room = "doc:{x}y";
        let channel = names.channel(&Channel::Room(room.into()));
        for key in [names.position(room), names.history(room), names.room(room)] {
            assert_eq!(slot(key.as_bytes()), slot(channel.as_bytes()), "{key}");
        }
        assert_eq!(
            slot(names.state("counter").as_bytes()),
            slot(names.version("counter").as_bytes())
        );
        assert_eq!(names.state("poll:{42}:votes"), "wss:s:poll:{42}:votes");
        assert_eq!(
            slot(names.state("poll:{42}:votes").as_bytes()),
            slot(names.version("poll:{42}").as_bytes())
        );
        assert_eq!(Names::new("wss:").room("lobby"), "wss:room:lobby");
    }
}
