//! The node registry in Redis: heartbeats, a node's live connections, and what a
//! survivor reads and removes when it cleans up after a dead node. The cluster module
//! decides when; these say how, through the same health gate and error mapping as
//! every other call.

use std::time::Duration;

use super::store::{add_conn, add_member, keep_session, recount};
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
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.names.node(&self.node_id))
            .arg(info)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .sadd(self.names.nodes(), &*self.node_id);
        let (added,): (i64,) = self.run(&pipe).await?;
        Ok(added == 1)
    }

    /// Write every local connection and room membership again.
    pub async fn reassert_presence(&self, local: &[ConnSnapshot]) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        for conn in local {
            add_conn(
                &mut pipe,
                &self.names,
                &self.node_id,
                &conn.id,
                conn.user.as_deref(),
                &conn.session,
            );
            for room in &conn.rooms {
                add_member(&mut pipe, &self.names, room, &conn.id);
            }
        }
        pipe.sadd(self.names.nodes(), &*self.node_id).ignore();
        self.run(&pipe).await
    }

    /// Registered nodes other than this one whose heartbeat has expired.
    pub async fn dead_nodes(&self) -> Result<Vec<String>, BackendError> {
        let nodes: Vec<String> = self
            .run(redis::pipe().smembers(self.names.nodes()))
            .await
            .map(|(nodes,): (Vec<String>,)| nodes)?;
        let others: Vec<String> = nodes.into_iter().filter(|n| **n != *self.node_id).collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.exists(self.names.node(node));
        }
        let alive: Vec<bool> = self.run(&pipe).await?;
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
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.names.lease(node))
            .arg(&*self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64);
        let (taken,): (Option<String>,) = self.run(&pipe).await?;
        Ok(taken.is_some())
    }

    /// The connections a dead node left registered, each with its user and rooms.
    pub async fn orphans(&self, node: &str) -> Result<Vec<OrphanConn>, BackendError> {
        let (conns,): (Vec<(String, String)>,) = self
            .run(redis::pipe().hgetall(self.names.node_conns(node)))
            .await?;
        let mut out = Vec::with_capacity(conns.len());
        for (id, info) in conns {
            let info = serde_json::from_str::<serde_json::Value>(&info).unwrap_or_default();
            let field = |name: &str| info.get(name).and_then(|u| u.as_str()).map(str::to_string);
            let (rooms,): (Vec<String>,) = self
                .run(redis::pipe().smembers(self.names.conn_rooms(&id)))
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
        let mut pipe = redis::pipe();
        for room in &conn.rooms {
            pipe.srem(self.names.room(room), &conn.id).ignore();
            recount(&mut pipe, &self.names, room);
        }
        if let Some(user) = &conn.user {
            pipe.srem(self.names.user(user), &conn.id).ignore();
        }
        pipe.hdel(self.names.node_conns(node), &conn.id).ignore();
        match &conn.session {
            Some(session) => keep_session(&mut pipe, &self.names, &conn.id, session, keep),
            None => {
                pipe.del(self.names.conn_rooms(&conn.id)).ignore();
            }
        }
        self.run(&pipe).await
    }

    /// Remove a node from the registry: a dead one after its cleanup, or this one on a
    /// graceful shutdown (after its connections closed).
    pub async fn forget_node(&self, node: &str) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        pipe.del(self.names.node(node))
            .ignore()
            .del(self.names.node_conns(node))
            .ignore()
            .srem(self.names.nodes(), node)
            .ignore();
        self.run(&pipe).await
    }
}

impl RedisBackend {
    /// The registered nodes: `(id, heartbeat JSON if alive)`, sorted by id, over this
    /// backend's connection (the HTTP API's `/api/nodes`).
    pub async fn registered_nodes(&self) -> Result<Vec<(String, Option<String>)>, BackendError> {
        let (mut ids,): (Vec<String>,) =
            self.run(redis::pipe().smembers(self.names.nodes())).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.get(self.names.node(id));
        }
        let infos: Vec<Option<String>> = self.run(&pipe).await?;
        Ok(ids.into_iter().zip(infos).collect())
    }
}

/// The registered nodes as `wss-engine nodes` shows them: `(id, heartbeat JSON if
/// alive)`, sorted by id. Opens its own short-lived connection.
pub async fn list_nodes(url: &str, prefix: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    let names = Names::new(prefix);
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
