//! Nodes of one application: registration with a heartbeat, the live-node list, and
//! cleanup after a node that died.
//!
//! Every node refreshes `P node:<id>` (a TTL'd JSON heartbeat) and its entry in the
//! `P nodes` set every third of the TTL. A node whose heartbeat key expired is dead: the
//! first survivor to take the lease `P lease:<id>` (`SET NX PX`) removes each of its
//! connections from rooms and runs their `$disconnect` hooks, once. A node that finds
//! itself missing from `P nodes` (cleaned up while it was stalled, or Redis restarted
//! empty) writes its local presence again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::redis::{Names, RedisBackend};
use crate::backend::ConnId;
use crate::engine::{Conn, Engine};

/// How long a dead node's connections stay in presence, at most (plus one scan period).
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);
/// How long one survivor may take to clean up before another may try.
const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub addr: String,
    /// Unix seconds.
    pub started: u64,
    pub fingerprint: String,
    pub connections: usize,
    pub version: String,
}

pub struct Membership {
    backend: Arc<RedisBackend>,
    engine: Arc<Engine>,
    info: NodeInfo,
    ttl: Duration,
    /// Set after the first successful heartbeat: a later "newly added" means someone
    /// removed this node from the registry.
    registered: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl NodeInfo {
    pub fn new(id: &str, addr: String, fingerprint: &str) -> Self {
        Self {
            id: id.to_string(),
            addr,
            started: now_secs(),
            fingerprint: fingerprint.to_string(),
            connections: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl Membership {
    pub fn new(
        backend: Arc<RedisBackend>,
        engine: Arc<Engine>,
        info: NodeInfo,
        ttl: Duration,
    ) -> Self {
        Self {
            backend,
            engine,
            info,
            ttl,
            registered: false,
        }
    }

    /// Heartbeat and dead-node scans until `shutdown` flips, then deregister.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut recoveries = self.backend.recoveries();
        let period = (self.ttl / 3).max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = recoveries.changed() => {
                    if changed.is_err() { return; }
                    // Redis came back: it may have restarted empty.
                    self.reassert_presence().await;
                }
                _ = async { let _ = shutdown.wait_for(|down| *down).await; } => break,
            }
            match self.heartbeat().await {
                Ok(true) => {
                    tracing::warn!(node = %self.info.id, "this node was missing from the registry; writing its presence again");
                    self.reassert_presence().await;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
            if let Err(e) = self.reap_dead_nodes().await {
                tracing::debug!(error = %e, "dead-node scan failed");
            }
        }
    }

    fn names(&self) -> &Names {
        self.backend.names()
    }

    /// Refresh the heartbeat. `Ok(true)` when this node had been removed from the set
    /// since its last beat.
    async fn heartbeat(&mut self) -> redis::RedisResult<bool> {
        self.info.connections = self.engine.router().connection_count();
        let info = serde_json::to_string(&self.info).unwrap_or_default();
        let mut conn = self.backend.connection();
        let (added,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(self.names().node(&self.info.id))
            .arg(info)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .ignore()
            .sadd(self.names().nodes(), &self.info.id)
            .query_async(&mut conn)
            .await?;
        let was_registered = std::mem::replace(&mut self.registered, true);
        Ok(added == 1 && was_registered)
    }

    /// Write every local connection and room membership again.
    async fn reassert_presence(&self) {
        let router = self.engine.router();
        let mut conn = self.backend.connection();
        let mut pipe = redis::pipe();
        for crate::engine::router::ConnSnapshot { id, user, rooms } in router.snapshot() {
            pipe.hset(
                self.names().node_conns(&self.info.id),
                &*id,
                serde_json::json!({ "user": user.as_deref() }).to_string(),
            )
            .ignore();
            for room in rooms {
                pipe.sadd(self.names().room(&room), &*id).ignore();
                pipe.sadd(self.names().conn_rooms(&id), &*room).ignore();
            }
        }
        pipe.sadd(self.names().nodes(), &self.info.id).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "could not write local presence again");
        }
    }

    async fn reap_dead_nodes(&self) -> redis::RedisResult<()> {
        let mut conn = self.backend.connection();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.names().nodes())
            .query_async(&mut conn)
            .await?;
        for node in nodes.into_iter().filter(|n| *n != self.info.id) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.names().node(&node))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            let lease: Option<String> = redis::cmd("SET")
                .arg(self.names().lease(&node))
                .arg(&self.info.id)
                .arg("NX")
                .arg("PX")
                .arg(LEASE.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if lease.is_none() {
                continue; // another survivor is on it
            }
            tracing::warn!(dead = %node, "node heartbeat expired: cleaning up its connections");
            self.reap(&mut conn, &node).await?;
        }
        Ok(())
    }

    async fn reap(&self, conn: &mut ConnectionManager, node: &str) -> redis::RedisResult<()> {
        let names = self.names().clone();
        let conns: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(names.node_conns(node))
            .query_async(conn)
            .await?;
        let count = conns.len();
        for (id, info) in conns {
            let user = serde_json::from_str::<serde_json::Value>(&info)
                .ok()
                .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_string));
            let rooms: Vec<String> = redis::cmd("SMEMBERS")
                .arg(names.conn_rooms(&id))
                .query_async(conn)
                .await?;
            let conn_id: ConnId = Arc::from(id.as_str());
            let mut orphan = Conn::new(
                conn_id,
                user.as_deref().map(Arc::from),
                serde_json::Value::Null,
            );
            orphan.set_orphan_rooms(rooms.clone());
            if let Err(f) = self
                .engine
                .run_hook(&mut orphan, &self.engine.pack.on_disconnect.clone())
                .await
            {
                tracing::warn!(conn = %id, code = f.code.as_str(), error = %f.message, "$disconnect hook of a dead node's connection failed");
            }
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.srem(names.room(room), &id).ignore();
            }
            pipe.del(names.conn_rooms(&id))
                .ignore()
                .hdel(names.node_conns(node), &id)
                .ignore();
            pipe.query_async::<()>(conn).await?;
        }
        redis::pipe()
            .srem(names.nodes(), node)
            .ignore()
            .del(names.node_conns(node))
            .ignore()
            .query_async::<()>(conn)
            .await?;
        tracing::info!(dead = %node, connections = count, "cleaned up after dead node");
        Ok(())
    }

    /// Remove this node from the registry (graceful shutdown, after connections closed).
    pub async fn deregister(backend: &RedisBackend, id: &str) {
        let names = backend.names();
        let mut conn = backend.connection();
        let result = redis::pipe()
            .del(names.node(id))
            .ignore()
            .del(names.node_conns(id))
            .ignore()
            .srem(names.nodes(), id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        match result {
            Ok(()) => tracing::info!(node = id, "deregistered"),
            Err(e) => tracing::warn!(node = id, error = %e, "could not deregister"),
        }
    }
}

/// The registered nodes as `wss-engine nodes` shows them: `(id, info if alive)`.
pub async fn list_nodes(
    url: &str,
    prefix: &str,
) -> anyhow::Result<Vec<(String, Option<NodeInfo>)>> {
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
        out.push((id, info.and_then(|i| serde_json::from_str(&i).ok())));
    }
    Ok(out)
}
