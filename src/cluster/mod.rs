//! Nodes of one application: registration with a heartbeat, the live-node list, and
//! cleanup after a node that died. The Redis side of each step is in
//! `backend::redis::registry`; this module decides when to take it.
//!
//! Every node refreshes `P node:<id>` (a TTL'd JSON heartbeat) and its entry in the
//! `P nodes` set every third of the TTL. A node whose heartbeat key expired is dead: the
//! first survivor to take the lease `P lease:<id>` (`SET NX PX`) removes each of its
//! connections from rooms and runs their `$disconnect` hooks, once. A node that finds
//! itself missing from `P nodes` (cleaned up while it was stalled, or Redis restarted
//! empty) writes its local presence again.
//!
//! A missing heartbeat proves a node dead only to a node that itself reached Redis for
//! a whole TTL: after a stall or an outage every node's heartbeat may have expired, and
//! the live ones need one TTL to beat again before anyone may reap them.
//!
//! [`Fleet`] is the registry as the HTTP API reads it: every node with its heartbeat
//! (connections, pack, readiness, event counters), this one fresh.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::redis::RedisBackend;
use crate::backend::BackendError;
use crate::engine::stats::StatsSnapshot;
use crate::engine::{Caller, Engine, Hook};
use crate::ids::ConnId;

mod fleet;
pub use fleet::{Fleet, NodeStatus};

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
    /// Whether the node could serve at its last heartbeat (`/readyz`). Absent from
    /// the entries of nodes older than the HTTP API: read as `true`.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Its event counters at its last heartbeat (`/api/stats` across nodes).
    #[serde(default)]
    pub stats: StatsSnapshot,
}

fn yes() -> bool {
    true
}

/// This node's entry in the registry, kept alive by a heartbeat, and the survivor's
/// duty of cleaning up after nodes that died.
pub struct NodeRegistry {
    backend: Arc<RedisBackend>,
    engine: Arc<Engine>,
    info: NodeInfo,
    ttl: Duration,
    /// Set after the first successful heartbeat: a later "newly added" means someone
    /// removed this node from the registry.
    registered: bool,
    /// Since when every heartbeat of this node succeeded (`None` after a failure or a
    /// Redis recovery): others are judged only once this is a TTL old.
    beating_since: Option<Instant>,
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
            ready: true,
            stats: StatsSnapshot::default(),
        }
    }
}

impl NodeRegistry {
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
            beating_since: None,
        }
    }

    /// Heartbeat and dead-node scans until `shutdown` flips.
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
                    // Redis came back: it may have restarted empty, and every heartbeat
                    // may have expired meanwhile.
                    self.beating_since = None;
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
                Err(e) => {
                    self.beating_since = None;
                    tracing::debug!(error = %e, "heartbeat failed");
                    continue;
                }
            }
            let since = *self.beating_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.ttl {
                continue;
            }
            if let Err(e) = self.reap_dead_nodes().await {
                tracing::debug!(error = %e, "dead-node scan failed");
            }
        }
    }

    /// Refresh the heartbeat. `Ok(true)` when this node had been removed from the set
    /// since its last beat.
    async fn heartbeat(&mut self) -> Result<bool, BackendError> {
        self.info.connections = self.engine.router().connection_count();
        // A reload changes it; the registry is how `wss-engine nodes` sees a mixed fleet.
        self.info.fingerprint = self.engine.pack().fingerprint.clone();
        self.info.ready = crate::backend::Bus::is_ready(&*self.backend);
        self.info.stats = self.engine.stats.snapshot();
        let info = serde_json::to_string(&self.info).unwrap_or_default();
        let added = self.backend.heartbeat(&info, self.ttl).await?;
        let was_registered = std::mem::replace(&mut self.registered, true);
        Ok(added && was_registered)
    }

    async fn reassert_presence(&self) {
        let local = self.engine.router().snapshot();
        if let Err(e) = self.backend.reassert_presence(&local).await {
            tracing::warn!(error = %e, "could not write local presence again");
        }
    }

    async fn reap_dead_nodes(&self) -> Result<(), BackendError> {
        for node in self.backend.dead_nodes().await? {
            if !self.backend.take_cleanup_lease(&node, LEASE).await? {
                continue; // another survivor is on it
            }
            tracing::warn!(dead = %node, "node heartbeat expired: cleaning up its connections");
            self.reap(&node).await?;
        }
        Ok(())
    }

    /// Run the `$disconnect` hook of every connection of a dead node, once, and remove
    /// them from rooms and the registry.
    async fn reap(&self, node: &str) -> Result<(), BackendError> {
        let orphans = self.backend.orphans(node).await?;
        let count = orphans.len();
        for orphan in orphans {
            let caller = Caller {
                id: ConnId::from(orphan.id.as_str()),
                user: orphan.user.as_deref().map(Arc::from),
                claims: serde_json::Value::Null,
                rooms: Some(orphan.rooms.clone()),
                sender: crate::config::Sender::Clients,
            };
            if let Err(f) = self.engine.run_hook(&caller, Hook::Disconnect).await {
                tracing::warn!(conn = %orphan.id, code = f.code.as_str(), error = %f.message, "$disconnect hook of a dead node's connection failed");
            }
            self.backend
                .forget_orphan(node, &orphan, self.engine.sessions.resume_ttl)
                .await?;
        }
        self.backend.forget_node(node).await?;
        tracing::info!(dead = %node, connections = count, "cleaned up after dead node");
        Ok(())
    }

    /// Remove this node from the registry (graceful shutdown, after connections closed).
    pub async fn deregister(backend: &RedisBackend) {
        let id = backend.node_id().clone();
        match backend.forget_node(&id).await {
            Ok(()) => tracing::info!(node = %id, "deregistered"),
            Err(e) => tracing::warn!(node = %id, error = %e, "could not deregister"),
        }
    }
}

/// The registered nodes as `wss-engine nodes` shows them: `(id, info if alive)`.
pub async fn list_nodes(
    url: &str,
    prefix: &str,
) -> anyhow::Result<Vec<(String, Option<NodeInfo>)>> {
    let nodes = crate::backend::redis::list_nodes(url, prefix).await?;
    Ok(nodes
        .into_iter()
        .map(|(id, info)| (id, info.and_then(|i| serde_json::from_str(&i).ok())))
        .collect())
}
