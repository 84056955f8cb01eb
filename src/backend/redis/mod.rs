//! The Redis backend: shared state, rooms and the bus for any number of nodes.
//!
//! Every name starts with the configured prefix `P` (default `wss:`), so applications can
//! share one Redis and operators can inspect everything with `redis-cli --scan -p 'wss:*'`.
//!
//! Keys:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P s:<key>` | string/hash/set/list | script state, every element JSON text |
//! | `P v:<key>` | string (integer) | version of `<key>`: bumped by every committed write, survives deletes |
//! | `P room:<room>` | set | connection ids in the room, cluster-wide |
//! | `P rooms` | sorted set | every room with members → its member count (the busiest rooms, in one read); rewritten from `SCARD` after each change of the room's set |
//! | `P user:<user>` | set | the user's live connections, cluster-wide |
//! | `P idem:<key>` | string, TTL | an HTTP API idempotency key (`<API key name>:<Idempotency-Key>`): `running` for up to a minute, then the first result for 5 minutes |
//! | `P connrooms:<conn>` | set, TTL once closed | rooms of one connection (cleanup after a node dies, resumes) |
//! | `P nodes` | set | ids of registered nodes |
//! | `P node:<id>` | string, TTL | the node's heartbeat: JSON `{id, addr, started, fingerprint, connections}` |
//! | `P node:<id>:conns` | hash | the node's live connections → JSON `{user, session}` |
//! | `P lease:<id>` | string, TTL | which survivor cleans up after dead node `<id>` |
//! | `P pos:<room>` | hash, TTL | a room with history: `epoch`, `offset` (the last given) |
//! | `P hist:<room>` | stream, TTL | its history: entry `<offset>-0` with `t` (ms) and `f` (the frame) |
//! | `P session:<id>` | hash, TTL once closed | `user` (JSON), `conn`; its rooms are `P connrooms:<conn>` |
//!
//! Channels (plain Pub/Sub):
//!
//! | channel | subscribed by |
//! | --- | --- |
//! | `P ch:all` | every node |
//! | `P ch:node:<id>` | node `<id>` (for `conn:` targets; a connection id starts with its node id) |
//! | `P ch:room:<room>` | nodes with at least one local member of `<room>` (reference-counted) |
//! | `P ch:user:<user>` | nodes with at least one local connection of `<user>` |
//!
//! A message is `origin \n exclude \n target \n epoch \n offset \n frame` (see `wire`);
//! `target` `take-over:<conn>` asks a node to end a connection whose session was
//! resumed elsewhere (close 4000), `disconnect:<conn>` one a backend disconnected
//! through the HTTP API (close 4001).
//!
//! Commits are one Lua script (`EVALSHA`, reloaded after a Redis restart): compare every
//! read version, then apply the writes in native types, bump versions and `PUBLISH` the
//! deliveries, all in one atomic step. A delivery to a room with history is placed in
//! the room's stream by the same step (next offset, `XADD` to the history, trimmed by
//! size, expiring by TTL), and so is one published without a commit (`publish.lua`). Reads of several keys are one Lua script too, so
//! a script's prefetched keys are a consistent snapshot.
//!
//! Connections: one multiplexed `ConnectionManager` for commands (reconnects by itself;
//! every call is bounded by a timeout so a dead Redis answers `unavailable` quickly) and
//! one Pub/Sub connection owned by a task that reconnects and resubscribes every wanted
//! channel; the bus reports ready only while that is done.
//!
//! ```text
//! keys.rs      every key and channel name
//! wire.rs      Pub/Sub messages between nodes, values as Redis holds them
//! store.rs     StateStore: reads, the commit script, rooms, live connections
//! bus.rs       Bus: publish, watches, the Pub/Sub connection task
//! registry.rs  the node registry the cluster module keeps (heartbeats, cleanup)
//! lua/         the scripts, each headed by its KEYS/ARGV layout
//! ```

mod bus;
mod keys;
mod registry;
mod store;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::watch;

use super::{BackendError, VersionCheck};
use crate::delivery::Sink;
pub use keys::{node_of, Names};
pub use registry::list_nodes;

/// Longest any single Redis call may take before the caller gets `unavailable`.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between reconnect attempts: recovery within a second of Redis' return.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub struct RedisBackend {
    node_id: Arc<str>,
    names: Names,
    conn: ConnectionManager,
    local: Arc<dyn Sink>,
    pubsub: Arc<bus::PubSubState>,
    read_script: Script,
    commit_script: Script,
    publish_script: Script,
    history_script: Script,
    version_check: VersionCheck,
    healthy: Arc<AtomicBool>,
    /// Bumped each time Redis comes back after being unreachable.
    recoveries: watch::Sender<u64>,
}

impl RedisBackend {
    /// Connect, start the Pub/Sub and health tasks, subscribe the always-on channels.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node_id: Arc<str>,
        local: Arc<dyn Sink>,
        version_check: VersionCheck,
    ) -> Result<Arc<Self>, BackendError> {
        let client = redis::Client::open(url)
            .map_err(|e| BackendError::Protocol(format!("bad Redis URL `{url}`: {e}")))?;
        // Defaults give up reconnecting after a few seconds; a node must outlive any outage.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(usize::MAX / 2)
            .set_max_delay(MAX_BACKOFF)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unavailable(format!("could not reach Redis at {url} within 5 s")))?
        .map_err(unavailable)?;
        let names = Names::new(prefix);
        let pubsub = Arc::new(bus::PubSubState::new([
            names.all_channel(),
            names.node_channel(&node_id),
        ]));
        let backend = Arc::new(Self {
            node_id,
            names,
            conn,
            local,
            pubsub,
            read_script: Script::new(include_str!("lua/read.lua")),
            commit_script: Script::new(concat!(
                include_str!("lua/stream.lua"),
                include_str!("lua/commit.lua")
            )),
            publish_script: Script::new(concat!(
                include_str!("lua/stream.lua"),
                include_str!("lua/publish.lua")
            )),
            history_script: Script::new(include_str!("lua/history.lua")),
            version_check,
            healthy: Arc::new(AtomicBool::new(true)),
            recoveries: watch::channel(0).0,
        });
        tokio::spawn(bus::pubsub_task(client, Arc::downgrade(&backend)));
        tokio::spawn(health_task(Arc::downgrade(&backend)));
        backend.pubsub.wait_ready(Duration::from_secs(5)).await;
        Ok(backend)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// Changes each time Redis comes back after an outage (the health ping failed, or
    /// the Pub/Sub connection broke): local presence is written again then.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// A bounded call that fails at once while the health check says Redis is gone, so
    /// clients hear `unavailable` immediately instead of after a timeout each.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        if !self.is_healthy() {
            return Err(unavailable("Redis is unreachable"));
        }
        bounded(fut).await
    }

    /// A command pipeline, run as one bounded call.
    async fn run<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BackendError> {
        let mut c = self.conn.clone();
        self.call(pipe.query_async(&mut c)).await
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
        {
            Err(BackendError::Protocol(e.to_string()))
        }
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("Redis did not answer in time")),
    }
}

/// Ping Redis every second: readiness follows it, and a recovery is announced so local
/// presence can be written again (Redis may have restarted empty).
async fn health_task(backend: std::sync::Weak<RedisBackend>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(this) = backend.upgrade() else {
            return;
        };
        let mut conn = this.conn.clone();
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        );
        let was = this.healthy.swap(ok, Ordering::AcqRel);
        if was && !ok {
            tracing::warn!("Redis unreachable: events that need it answer `unavailable`");
        } else if !was && ok {
            tracing::info!("Redis reachable again");
            this.recoveries.send_modify(|n| *n += 1);
        }
    }
}
