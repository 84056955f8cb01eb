//! The node registry in Redis: heartbeats, a node's live connections, and what a
//! survivor reads and removes when it cleans up after a dead node. The cluster module
//! decides when; these say how, through the same health gate and error mapping as
//! every other call.

use std::time::Duration;

use super::conn::Batch;
use super::presence::{add_conn, add_member, keep_session, recount};
use super::{Names, RedisBackend};
use crate::backend::BackendError;
use crate::delivery::ConnSnapshot;

/// A connection of a dead node, as its registry left it.
pub struct OrphanConn {
    pub id: String,
    pub user: Option<String>,
    pub session: Option<String>,
    pub rooms: Vec<String>,
}

impl RedisBackend {
    /// Refresh this node's heartbeat (`info`, JSON, living `ttl`) and its entry in the
    /// node set. `true` when the entry was missing (cleaned up while this node stalled,
    /// or Redis restarted empty).
    pub async fn heartbeat(&self, info: &str, ttl: Duration) -> Result<bool, BackendError> {
        let (node, nodes) = (self.names.node(&self.node_id), self.names.nodes());
        let mut set = redis::cmd("SET");
        set.arg(&node)
            .arg(info)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let mut batch = Batch::new();
        batch
            .add(&node, set)
            .keep(&nodes, redis::Cmd::sadd(&nodes, &*self.node_id));
        let replies = self.run(&batch).await?;
        Ok(matches!(replies.first(), Some(redis::Value::Int(1))))
    }

    /// Write every local connection and room membership again.
    pub async fn reassert_presence(&self, local: &[ConnSnapshot]) -> Result<(), BackendError> {
        let mut batch = Batch::new();
        for conn in local {
            add_conn(
                &mut batch,
                &self.names,
                &self.node_id,
                &conn.id,
                conn.user.as_deref(),
                conn.session.expose(),
            );
            for room in &conn.rooms {
                add_member(&mut batch, &self.names, room, &conn.id);
            }
        }
        let nodes = self.names.nodes();
        batch.add(&nodes, redis::Cmd::sadd(&nodes, &*self.node_id));
        self.run(&batch).await?;
        let rooms: Vec<&str> = local
            .iter()
            .flat_map(|c| c.rooms.iter().map(|r| &**r))
            .collect();
        self.recount_rooms(&rooms).await
    }

    /// Registered nodes other than this one whose heartbeat has expired.
    pub async fn dead_nodes(&self) -> Result<Vec<String>, BackendError> {
        let nodes: Vec<String> = self
            .query(&redis::Cmd::smembers(self.names.nodes()))
            .await?;
        let others: Vec<String> = nodes.into_iter().filter(|n| **n != *self.node_id).collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut batch = Batch::new();
        for node in &others {
            let key = self.names.node(node);
            batch.keep(&key, redis::Cmd::exists(&key));
        }
        let alive: Vec<bool> = self
            .run(&batch)
            .await?
            .iter()
            .map(|v| matches!(v, redis::Value::Int(1) | redis::Value::Boolean(true)))
            .collect();
        Ok(others
            .into_iter()
            .zip(alive)
            .filter_map(|(node, alive)| (!alive).then_some(node))
            .collect())
    }

    /// Take the lease to clean up after `node` (`SET NX PX`): `false` when another
    /// survivor holds it.
    pub async fn take_cleanup_lease(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        let mut set = redis::cmd("SET");
        set.arg(self.names.lease(node))
            .arg(&*self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64);
        let taken: Option<String> = self.query(&set).await?;
        Ok(taken.is_some())
    }

    /// The connections a dead node left registered, each with its user and rooms.
    pub async fn orphans(&self, node: &str) -> Result<Vec<OrphanConn>, BackendError> {
        let conns: Vec<(String, String)> = self
            .query(&redis::Cmd::hgetall(self.names.node_conns(node)))
            .await?;
        let mut out = Vec::with_capacity(conns.len());
        for (id, info) in conns {
            let info = serde_json::from_str::<serde_json::Value>(&info).unwrap_or_default();
            let field = |name: &str| info.get(name).and_then(|u| u.as_str()).map(str::to_string);
            let rooms: Vec<String> = self
                .query(&redis::Cmd::smembers(self.names.conn_rooms(&id)))
                .await?;
            out.push(OrphanConn {
                user: field("user"),
                session: field("session"),
                id,
                rooms,
            });
        }
        Ok(out)
    }

    /// Remove one of a dead node's connections from every room's members and the
    /// registry; its session and rooms stay for `keep` (the resume TTL), so its client
    /// can resume on a survivor.
    pub async fn forget_orphan(
        &self,
        node: &str,
        conn: &OrphanConn,
        keep: Duration,
    ) -> Result<(), BackendError> {
        let mut batch = Batch::new();
        for room in &conn.rooms {
            let key = self.names.room(room);
            batch.add(&key, redis::Cmd::srem(&key, &conn.id));
            recount(&mut batch, &self.names, room);
        }
        if let Some(user) = &conn.user {
            let key = self.names.user(user);
            batch.add(&key, redis::Cmd::srem(&key, &conn.id));
        }
        let conns = self.names.node_conns(node);
        batch.add(&conns, redis::Cmd::hdel(&conns, &conn.id));
        match &conn.session {
            Some(session) => keep_session(&mut batch, &self.names, &conn.id, session, keep),
            None => {
                let rooms = self.names.conn_rooms(&conn.id);
                batch.add(&rooms, redis::Cmd::del(&rooms));
            }
        }
        self.run(&batch).await?;
        let rooms: Vec<&str> = conn.rooms.iter().map(String::as_str).collect();
        self.recount_rooms(&rooms).await
    }

    /// Remove a node from the registry: a dead one after its cleanup, or this one on a
    /// graceful shutdown (after its connections closed).
    pub async fn forget_node(&self, node: &str) -> Result<(), BackendError> {
        let (key, conns, nodes) = (
            self.names.node(node),
            self.names.node_conns(node),
            self.names.nodes(),
        );
        let mut batch = Batch::new();
        batch
            .add(&key, redis::Cmd::del(&key))
            .add(&conns, redis::Cmd::del(&conns))
            .add(&nodes, redis::Cmd::srem(&nodes, node));
        self.run(&batch).await.map(drop)
    }
}

impl RedisBackend {
    /// The registered nodes: `(id, heartbeat JSON if alive)`, sorted by id, over this
    /// backend's connection (the HTTP API's `/api/nodes`).
    pub async fn registered_nodes(&self) -> Result<Vec<(String, Option<String>)>, BackendError> {
        let mut ids: Vec<String> = self
            .query(&redis::Cmd::smembers(self.names.nodes()))
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for id in &ids {
            let key = self.names.node(id);
            batch.keep(&key, redis::Cmd::get(&key));
        }
        let infos = self.run(&batch).await?;
        Ok(ids
            .into_iter()
            .zip(infos)
            .map(|(id, info)| (id, redis::from_redis_value(info).ok().flatten()))
            .collect())
    }
}

/// The registered nodes as `wss-engine nodes` shows them: `(id, heartbeat JSON if
/// alive)`, sorted by id. Opens its own short-lived connection.
pub async fn list_nodes(url: &str, prefix: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let mut conn = super::tool_connection(url).await?;
    let names = if url.starts_with("redis+cluster://") {
        Names::clustered(prefix)
    } else {
        Names::new(prefix)
    };
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(names.nodes())
        .query_async(&mut conn)
        .await?;
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        let info: Option<String> = redis::cmd("GET")
            .arg(names.node(&id))
            .query_async(&mut conn)
            .await?;
        out.push((id, info));
    }
    Ok(out)
}
