//! The nodes of the application as the HTTP API shows them (`/api/nodes`,
//! `/api/stats`, the admin dashboard): the registry's heartbeats, with this node's own
//! entry fresh rather than as of its last beat. On the memory backend, this node alone.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::NodeInfo;
use crate::backend::redis::RedisBackend;
use crate::backend::BackendError;
use crate::engine::stats::StatsSnapshot;
use crate::engine::Engine;

/// One node as `/api/nodes` reports it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: String,
    /// Whether its heartbeat is alive; a dead node awaits cleanup and has no info.
    pub alive: bool,
    pub info: Option<NodeInfo>,
    /// Seconds since it started (from its heartbeat's `started`).
    pub uptime: u64,
    /// The node answering the request.
    pub this: bool,
}

pub struct Fleet {
    redis: Option<Arc<RedisBackend>>,
    engine: Arc<Engine>,
    /// This node's entry, refreshed on every read.
    local: NodeInfo,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Fleet {
    pub fn new(
        redis: Option<Arc<RedisBackend>>,
        engine: Arc<Engine>,
        local: NodeInfo,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Self {
            redis,
            engine,
            local,
            ready,
        }
    }

    /// This node as it is now.
    fn here(&self) -> NodeInfo {
        let mut info = self.local.clone();
        info.connections = self.engine.router().connection_count();
        info.fingerprint = self.engine.pack().fingerprint.clone();
        info.ready = (self.ready)();
        info.stats = self.engine.stats.snapshot();
        info
    }

    /// Every registered node, sorted by id (this one first on the memory backend,
    /// where it is the only one).
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, BackendError> {
        let now = now_secs();
        let status = |info: NodeInfo, this: bool| NodeStatus {
            id: info.id.clone(),
            alive: true,
            uptime: now.saturating_sub(info.started),
            info: Some(info),
            this,
        };
        let Some(redis) = &self.redis else {
            return Ok(vec![status(self.here(), true)]);
        };
        let registered = redis.registered_nodes().await?;
        let mut out = Vec::with_capacity(registered.len() + 1);
        let mut seen_here = false;
        for (id, heartbeat) in registered {
            if id == self.local.id {
                seen_here = true;
                out.push(status(self.here(), true));
                continue;
            }
            match heartbeat.and_then(|h| serde_json::from_str::<NodeInfo>(&h).ok()) {
                Some(info) => out.push(status(info, false)),
                None => out.push(NodeStatus {
                    id,
                    alive: false,
                    info: None,
                    uptime: 0,
                    this: false,
                }),
            }
        }
        // Before its first heartbeat (or while Redis lost it) this node is still here.
        if !seen_here {
            out.push(status(self.here(), true));
            out.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(out)
    }

    /// The event counters of every live node, and their sum (rates add up too).
    pub async fn stats(
        &self,
    ) -> Result<(Vec<(String, StatsSnapshot)>, StatsSnapshot), BackendError> {
        let nodes = self.nodes().await?;
        let mut total = StatsSnapshot::default();
        let mut per_node = Vec::with_capacity(nodes.len());
        for node in nodes {
            let Some(info) = node.info else { continue };
            total.events_total += info.stats.events_total;
            total.events_per_second += info.stats.events_per_second;
            for (code, n) in &info.stats.errors {
                *total.errors.entry(code.clone()).or_default() += n;
            }
            per_node.push((node.id, info.stats));
        }
        total.events_per_second = (total.events_per_second * 10.0).round() / 10.0;
        Ok((per_node, total))
    }
}
