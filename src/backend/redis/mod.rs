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
//! On a Redis Cluster (`redis+cluster://`) the per-room names carry the room as hash
//! tag (`P room:{<room>}`, `P pos:{<room>}`, `P hist:{<room>}`, `P ch:room:{<room>}`),
//! state keys their own tag or `{<key>}`, and node and user channels `{<id>}`: what one
//! script touches is in one slot (see `keys`).
//!
//! Channels (plain Pub/Sub; sharded, `SSUBSCRIBE`/`SPUBLISH`, on a Redis Cluster):
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
//! deliveries, all in one atomic step. Each carries a deadline in Redis' clock (see
//! [`Deadlines`]): a commit that reaches Redis after its node stopped waiting, and told
//! its client `unavailable`, changes nothing. A delivery to a room with history is placed in
//! the room's stream by the same step (next offset, `XADD` to the history, trimmed by
//! size, expiring by TTL), and so is one published without a commit (`publish.lua`).
//! Reads of several keys are one Lua script too, so a script's prefetched keys are a
//! consistent snapshot. On a Redis Cluster the commit script writes state only, in its
//! keys' slot; each delivery is then placed and published by `publish.lua` on its
//! room's shard (`store::commit_then_publish`).
//!
//! Connections: one multiplexed `ConnectionManager` for commands (reconnects by itself;
//! every call is bounded by a timeout so a dead Redis answers `unavailable` quickly) and
//! one Pub/Sub connection owned by a task that reconnects and resubscribes every wanted
//! channel; the bus reports ready only while that is done. With Sentinel the primary
//! both go to is followed across failovers (`sentinel`); on a Redis Cluster one cluster
//! connection carries commands and sharded subscriptions (`shards`).
//!
//! ```text
//! keys.rs      every key and channel name
//! conn.rs      the command connection (one Redis, a cluster, Sentinel's primary) and
//!              batches that split per slot
//! wire.rs      Pub/Sub messages between nodes, values as Redis holds them
//! store.rs     StateStore: reads, the commit script, placing deliveries in streams
//! presence.rs  Presence and Sessions: member sets, the rooms index, the registry
//! history.rs   HistoryStore: a room's position and history
//! idempotency.rs  Idempotency: the HTTP API's keys
//! bus.rs       Bus: publish, watches, the Pub/Sub connection task
//! shards.rs    sharded Pub/Sub on a Redis Cluster: per-channel subscriptions, probes
//! subscriptions.rs  wanted and confirmed channels, shared by bus.rs and shards.rs
//! sentinel.rs  following the primary Sentinel names
//! registry.rs  the node registry the cluster module keeps (heartbeats, cleanup)
//! lua/         the scripts, each headed by its KEYS/ARGV layout
//! ```

mod bus;
mod conn;
mod history;
mod idempotency;
mod keys;
mod presence;
mod registry;
mod sentinel;
mod shards;
mod store;
mod subscriptions;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::watch;

use super::{BackendError, VersionCheck};
use crate::delivery::Sink;
use conn::{Batch, Commands};
pub use keys::Names;
pub use registry::list_nodes;

use sentinel::SentinelPrimary;
use shards::{ShardPushes, Shards};

/// Longest any single Redis call may take before the caller gets `unavailable`.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between reconnect attempts: recovery within a second of Redis' return.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A commit must run this long before its caller's [`OP_TIMEOUT`], so that its reply
/// has time to come back: one that runs later is refused by the script instead.
const DEADLINE_MARGIN: Duration = Duration::from_millis(300);
/// A clock sample whose round trip took longer than this is too vague to keep.
const CLOCK_SAMPLE_MAX_RTT: Duration = Duration::from_millis(100);

/// Deadlines for commits, in Redis' clock.
///
/// A command whose answer did not come within [`OP_TIMEOUT`] is reported `unavailable`,
/// yet its bytes may still reach Redis: they sit in a stalled server's socket buffer,
/// or in the kernel's retransmission queue while packets are dropped, and run when the
/// server or the network comes back, seconds later. For a commit that would be a write
/// (and a delivery) its client was told never happened. So each commit script gets a
/// deadline in Redis' own time (`TIME`) and, arriving later, changes nothing. The node
/// learns how far Redis' clock is from its own on every health ping (`TIME`, kept only
/// from quick round trips), so clock skew between machines does not matter; until the
/// first sample there is no deadline. What is left is a commit that ran just before
/// its deadline and whose reply was then lost: its outcome is unknown, as when a
/// connection drops before its ack.
pub(crate) struct Deadlines {
    /// Redis' clock minus this node's, in ms; `i64::MIN` until measured.
    offset_ms: AtomicI64,
}

impl Deadlines {
    fn new() -> Self {
        Self {
            offset_ms: AtomicI64::new(i64::MIN),
        }
    }

    fn local_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// Record one `TIME` answer (`secs`, `micros`) read between `sent` and `got` (local ms).
    fn sample(&self, secs: i64, micros: i64, sent: i64, got: i64) {
        if got - sent > CLOCK_SAMPLE_MAX_RTT.as_millis() as i64 {
            return;
        }
        let redis_ms = secs * 1000 + micros / 1000;
        self.offset_ms
            .store(redis_ms - (sent + got) / 2, Ordering::Relaxed);
    }

    /// The deadline (Redis' ms) for a commit sent now, `0` (none) before the first sample.
    pub(crate) fn next(&self) -> i64 {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return 0;
        }
        Self::local_ms() + offset + (OP_TIMEOUT - DEADLINE_MARGIN).as_millis() as i64
    }
}

/// What the commit and publish scripts answer when they arrived after their deadline.
const TOO_LATE: i64 = -1;

/// The error of a commit refused for arriving after its deadline.
fn too_late() -> BackendError {
    BackendError::unavailable("Redis received the commit after its deadline: nothing was written")
}

pub struct RedisBackend {
    node_id: Arc<str>,
    names: Names,
    conn: Commands,
    local: Arc<dyn Sink>,
    subscriber: Subscriber,
    read_script: Script,
    commit_script: Script,
    publish_script: Script,
    history_script: Script,
    version_check: VersionCheck,
    durability: Durability,
    healthy: Arc<AtomicBool>,
    /// Commit deadlines in Redis' clock, kept by the health task.
    deadlines: Deadlines,
    /// Bumped each time Redis comes back after being unreachable.
    recoveries: watch::Sender<u64>,
    /// Numbers this node's script attempts on a Redis Cluster (see `Names::once`).
    once_seq: AtomicU64,
}

impl RedisBackend {
    /// Connect, start the Pub/Sub and health tasks, subscribe the always-on channels.
    /// `url` is `redis://…` (one Redis) or `redis+cluster://h1:p1,h2:p2,…` (a Redis
    /// Cluster: any of its nodes; the rest is discovered).
    pub async fn connect(
        url: &str,
        prefix: &str,
        node_id: Arc<str>,
        local: Arc<dyn Sink>,
        version_check: VersionCheck,
    ) -> Result<Arc<Self>, BackendError> {
        let durability = Durability::default();
        Self::connect_with(url, prefix, node_id, local, version_check, durability).await
    }

    /// [`RedisBackend::connect`], acknowledging writes only once `durability` holds.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        node_id: Arc<str>,
        local: Arc<dyn Sink>,
        version_check: VersionCheck,
        durability: Durability,
    ) -> Result<Arc<Self>, BackendError> {
        let cluster = cluster_nodes(url);
        let names = match cluster {
            Some(_) if prefix.contains(['{', '}']) => {
                return Err(BackendError::Protocol(format!(
                    "--redis-prefix `{prefix}` holds a brace: on a Redis Cluster braces are hash tags, which the prefix must not decide"
                )))
            }
            Some(_) => Names::clustered(prefix),
            None => Names::new(prefix),
        };
        let always = [names.all_channel(), names.node_channel(&node_id)];
        let (conn, subscriber, source) = match cluster {
            None => match sentinel::parse(url) {
                Some(parsed) => {
                    let (sentinels, master) = parsed?;
                    let primary = SentinelPrimary::connect(sentinels, master).await?;
                    let state = Arc::new(bus::PubSubState::new(always));
                    let conn = Commands::Sentinel(primary.clone());
                    (
                        conn,
                        Subscriber::Single(state),
                        Some(PrimarySource::Sentinel(primary)),
                    )
                }
                None => {
                    let client = redis::Client::open(url).map_err(|e| {
                        BackendError::Protocol(format!("bad Redis URL `{url}`: {e}"))
                    })?;
                    let conn = single_connection(&client, url).await?;
                    let state = Arc::new(bus::PubSubState::new(always));
                    (
                        conn,
                        Subscriber::Single(state),
                        Some(PrimarySource::Fixed(client)),
                    )
                }
            },
            Some(nodes) => {
                let shards = Shards::new(node_id.clone(), names.clone(), local.clone(), always);
                let conn = cluster_connection(nodes, Some(&shards)).await?;
                let Commands::Cluster(cluster_conn) = &conn else {
                    return Err(BackendError::Protocol(
                        "expected a cluster connection".into(),
                    ));
                };
                shards.attach(cluster_conn.clone());
                shards.resubscribe_all().await;
                (conn, Subscriber::Cluster(shards), None)
            }
        };
        let backend = Arc::new(Self {
            node_id,
            names,
            conn,
            local,
            subscriber,
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
            durability,
            healthy: Arc::new(AtomicBool::new(true)),
            deadlines: Deadlines::new(),
            recoveries: watch::channel(0).0,
            once_seq: AtomicU64::new(0),
        });
        if let Some(source) = source {
            if let PrimarySource::Sentinel(primary) = &source {
                tokio::spawn(sentinel::follow_task(
                    primary.clone(),
                    Arc::downgrade(&backend),
                ));
            }
            tokio::spawn(bus::pubsub_task(source, Arc::downgrade(&backend)));
        }
        tokio::spawn(health_task(Arc::downgrade(&backend)));
        // Wait (bounded) for the first subscriptions, so a fresh node misses nothing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !backend.subscribed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(backend)
    }

    /// Whether every wanted subscription is in place.
    fn subscribed(&self) -> bool {
        match &self.subscriber {
            Subscriber::Single(state) => state.is_ready(),
            Subscriber::Cluster(shards) => shards.is_ready(),
        }
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
            return Err(BackendError::unavailable("Redis is unreachable"));
        }
        bounded(fut).await
    }

    /// A batch of commands, run as one bounded call; the kept replies.
    async fn run(&self, batch: &Batch) -> Result<Vec<redis::Value>, BackendError> {
        let mut c = self.conn.clone();
        self.call(batch.run(&mut c)).await
    }

    /// `--redis-wait-replicas`: after a write this node is about to acknowledge, wait
    /// until that many replicas hold it. `WAIT` covers every write sent before it on the
    /// connection, ours included; on a cluster it goes to every master (the smallest
    /// count wins). Too few in time: the write stands on the primary, but the caller
    /// must not be told it is safe.
    pub(super) async fn replicated(&self) -> Result<(), BackendError> {
        let wanted = self.durability.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(WAIT_TIMEOUT.as_millis() as u64);
        let reached: i64 = self.query(&wait).await?;
        if reached >= i64::from(wanted) {
            return Ok(());
        }
        metrics::counter!("wss_redis_wait_shortfalls_total").increment(1);
        Err(BackendError::Unreplicated {
            reached: reached.max(0) as u32,
            wanted,
        })
    }

    /// A name for one script attempt, unique across nodes (a node id is new at every
    /// start).
    fn next_once_id(&self) -> String {
        let n = self.once_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.node_id)
    }

    /// One command, as one bounded call.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackendError> {
        let mut c = self.conn.clone();
        self.call(cmd.query_async(&mut c)).await
    }
}

/// What an acknowledgement waits for besides the primary's write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Durability {
    /// Replicas that must hold a write (`WAIT`) before it is acknowledged; 0: none.
    pub wait_replicas: u32,
}

/// How long an acknowledgement waits for replicas before it says they did not answer.
const WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the Pub/Sub connection of one Redis goes: a fixed address, or the primary the
/// Sentinels name now.
pub(super) enum PrimarySource {
    Fixed(redis::Client),
    Sentinel(Arc<SentinelPrimary>),
}

impl PrimarySource {
    fn client(&self) -> Result<redis::Client, BackendError> {
        match self {
            Self::Fixed(client) => Ok(client.clone()),
            Self::Sentinel(primary) => primary.client(),
        }
    }

    /// Changes when the primary moved: a Pub/Sub connection to the old one must go.
    fn switches(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Self::Fixed(_) => None,
            Self::Sentinel(primary) => Some(primary.switches()),
        }
    }
}

/// How deliveries reach this node: one Pub/Sub connection, or sharded subscriptions.
enum Subscriber {
    Single(Arc<bus::PubSubState>),
    Cluster(Arc<Shards>),
}

/// The nodes of a `redis+cluster://h1:p1,h2:p2` URL, as `redis://` URLs.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let hosts = rest.split(['/', '?']).next().unwrap_or(rest);
    Some(
        hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| format!("redis://{}", h.trim()))
            .collect(),
    )
}

/// One Redis, reconnecting by itself: the defaults give up after a few seconds, and a
/// node must outlive any outage.
async fn single_connection(client: &redis::Client, url: &str) -> Result<Commands, BackendError> {
    connection_manager(client, url).await.map(Commands::Single)
}

async fn connection_manager(
    client: &redis::Client,
    url: &str,
) -> Result<ConnectionManager, BackendError> {
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
    .map_err(|_| BackendError::unavailable(format!("could not reach Redis at {url} within 5 s")))?
    .map_err(BackendError::unavailable_because)?;
    Ok(conn)
}

/// A Redis Cluster connection (one per shard, following slots and failovers). With
/// `shards`, RESP3 pushes (sharded Pub/Sub) go to it.
async fn cluster_connection(
    nodes: Vec<String>,
    shards: Option<&Arc<Shards>>,
) -> Result<Commands, BackendError> {
    if nodes.is_empty() {
        return Err(BackendError::Protocol(
            "redis+cluster:// needs at least one host:port".into(),
        ));
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
        .retries(6)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(OP_TIMEOUT);
    if let Some(shards) = shards {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(ShardPushes(Arc::downgrade(shards)));
    }
    let client = builder
        .build()
        .map_err(|e| BackendError::Protocol(format!("bad Redis Cluster nodes {nodes:?}: {e}")))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
        .await
        .map_err(|_| {
            BackendError::unavailable(format!(
                "could not reach the Redis Cluster at {nodes:?} within 5 s"
            ))
        })?
        .map_err(BackendError::unavailable_because)?;
    Ok(Commands::Cluster(conn))
}

/// A command connection for a one-off tool (`wss-engine nodes`).
pub(super) async fn tool_connection(url: &str) -> Result<Commands, BackendError> {
    if let Some(parsed) = sentinel::parse(url) {
        let (sentinels, master) = parsed?;
        return Ok(Commands::Sentinel(
            SentinelPrimary::connect(sentinels, master).await?,
        ));
    }
    match cluster_nodes(url) {
        Some(nodes) => cluster_connection(nodes, None).await,
        None => {
            let client = redis::Client::open(url)
                .map_err(|e| BackendError::Protocol(format!("bad Redis URL `{url}`: {e}")))?;
            single_connection(&client, url).await
        }
    }
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
        Ok(Err(e)) => Err(BackendError::unavailable_because(e)),
        Err(_) => Err(BackendError::unavailable("Redis did not answer in time")),
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
        // `TIME` rather than `PING`: the same proof of life, and a clock sample.
        let sent = Deadlines::local_ms();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("TIME").query_async::<(i64, i64)>(&mut conn),
        )
        .await;
        let ok = match answer {
            Ok(Ok((secs, micros))) => {
                this.deadlines
                    .sample(secs, micros, sent, Deadlines::local_ms());
                true
            }
            _ => false,
        };
        let was = this.healthy.swap(ok, Ordering::AcqRel);
        if was && !ok {
            tracing::warn!("Redis unreachable: events that need it answer `unavailable`");
        } else if !was && ok {
            tracing::info!("Redis reachable again");
            this.recoveries.send_modify(|n| *n += 1);
        }
    }
}
