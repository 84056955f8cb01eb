//! The nodes and their event counters (the dashboard's live view), and who a key is.

use axum::extract::State;

use super::model::{
    ok, ApiResult, Counters, NodeCounters, NodeList, NodeView, StatsView, Success, WhoAmI,
};
use super::request::{Authed, Needs, Read};
use super::ApiState;
use crate::engine::stats::StatsSnapshot;

/// The nodes
///
/// Every registered node: address, connections, the fingerprint of its pack, readiness
/// and uptime. A node whose heartbeat expired is listed `alive: false` until a survivor
/// has cleaned up after it.
#[utoipa::path(
    get,
    path = "/api/nodes",
    operation_id = "listNodes",
    tag = "nodes",
    responses((status = 200, description = "Sorted by id", body = Success<NodeList>))
)]
pub async fn nodes(State(state): State<ApiState>, _: Needs<Read>) -> ApiResult<NodeList> {
    let nodes = state.fleet.nodes().await?;
    let mut packs: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n.info.as_ref().map(|i| i.fingerprint.as_str()))
        .collect();
    packs.sort_unstable();
    packs.dedup();
    let packs = packs.len() as u64;
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let info = n.info.as_ref();
            NodeView {
                alive: n.alive,
                addr: info.map(|i| i.addr.clone()),
                connections: info.map(|i| i.connections as u64),
                pack: info.map(|i| i.fingerprint.clone()),
                ready: info.map(|i| i.ready),
                uptime: info.map(|_| n.uptime),
                version: info.map(|i| i.version.clone()),
                this: n.this,
                id: n.id,
            }
        })
        .collect();
    ok(NodeList { nodes, packs })
}

fn counters(s: StatsSnapshot) -> Counters {
    Counters {
        events_total: s.events_total,
        events_per_second: s.events_per_second,
        errors: s.errors,
    }
}

/// Event counters
///
/// Events handled per node and in total (clients and API alike), their rate over about
/// the last ten seconds, and errors by code. Other nodes' counters are as of their last
/// heartbeat (a third of `--node-ttl`).
#[utoipa::path(
    get,
    path = "/api/stats",
    operation_id = "getStats",
    tag = "nodes",
    responses((status = 200, description = "Per node and in total", body = Success<StatsView>))
)]
pub async fn stats(State(state): State<ApiState>, _: Needs<Read>) -> ApiResult<StatsView> {
    let (per_node, total) = state.fleet.stats().await?;
    ok(StatsView {
        nodes: per_node
            .into_iter()
            .map(|(node, s)| NodeCounters {
                node,
                counters: counters(s),
            })
            .collect(),
        total: counters(total),
    })
}

/// The key of this request
///
/// Its name (API events run as `api:<name>`) and scopes. Any valid key may ask.
#[utoipa::path(
    get,
    path = "/api/whoami",
    operation_id = "whoAmI",
    tag = "keys",
    responses((status = 200, description = "The key", body = Success<WhoAmI>))
)]
pub async fn whoami(Authed(key): Authed) -> ApiResult<WhoAmI> {
    ok(WhoAmI {
        key: key.name.clone(),
        scopes: key.scopes.iter().map(|s| s.as_str().to_string()).collect(),
    })
}
