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
//! | `P connrooms:<conn>` | set | rooms of one connection (cleanup after a node dies) |
//! | `P nodes` | set | ids of registered nodes |
//! | `P node:<id>` | string, TTL | the node's heartbeat: JSON `{id, addr, started, fingerprint, connections}` |
//! | `P node:<id>:conns` | hash | the node's live connections → JSON `{user}` |
//! | `P lease:<id>` | string, TTL | which survivor cleans up after dead node `<id>` |
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
//! A message is `origin \n exclude \n target \n frame`: the origin node drops its own
//! echo (it already delivered locally), `exclude` is the sender when `exclude_sender`.
//!
//! Commits are one Lua script (`EVALSHA`, reloaded after a Redis restart): compare every
//! read version, then apply the writes in native types, bump versions and `PUBLISH` the
//! deliveries, all in one atomic step. Reads of several keys are one Lua script too, so
//! a script's prefetched keys are a consistent snapshot.
//!
//! Connections: one multiplexed `ConnectionManager` for commands (reconnects by itself;
//! every call is bounded by a timeout so a dead Redis answers `unavailable` quickly) and
//! one Pub/Sub connection owned by a task that reconnects and resubscribes every wanted
//! channel; the bus reports ready only while that is done.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Script, Value as RedisValue};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    BackendError, Bus, Channel, Commit, CommitOutcome, ConnId, Envelope, Sink, StateStore,
    StoredValue, Versioned,
};
use crate::config::Target;

/// Longest any single Redis call may take before the caller gets `unavailable`.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between reconnect attempts: recovery within a second of Redis' return.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Lua's `unpack` has a stack limit; spread long argument lists over several calls.
const LUA_CHUNK: usize = 1000;

const READ_LUA: &str = r#"
local out = {}
for i = 1, #KEYS, 2 do
  local version = redis.call('GET', KEYS[i]) or '0'
  local key = KEYS[i + 1]
  local kind = redis.call('TYPE', key)['ok']
  local data
  if kind == 'string' then data = { redis.call('GET', key) }
  elseif kind == 'hash' then data = redis.call('HGETALL', key)
  elseif kind == 'set' then data = redis.call('SMEMBERS', key)
  elseif kind == 'list' then data = redis.call('LRANGE', key, 0, -1)
  else data = {} end
  out[#out + 1] = { version, kind, data }
end
return out
"#;

const COMMIT_LUA: &str = r#"
local spec = cjson.decode(ARGV[1])
if ARGV[3] ~= '1' then
  for _, r in ipairs(spec.r) do
    if tonumber(redis.call('GET', KEYS[r[1]]) or '0') ~= r[2] then return 0 end
  end
end
local chunk = tonumber(ARGV[2])
local function each_chunk(items, f)
  for i = 1, #items, chunk do f(unpack(items, i, math.min(i + chunk - 1, #items))) end
end
for _, w in ipairs(spec.w) do
  redis.call('INCR', KEYS[w[1]])
  local key, kind, items, ttl = KEYS[w[2]], w[3], w[4], w[5]
  redis.call('DEL', key)
  if kind == 'json' then redis.call('SET', key, items[1])
  elseif kind == 'hash' then each_chunk(items, function(...) redis.call('HSET', key, ...) end)
  elseif kind == 'set' then each_chunk(items, function(...) redis.call('SADD', key, ...) end)
  elseif kind == 'list' then each_chunk(items, function(...) redis.call('RPUSH', key, ...) end)
  end
  if ttl > 0 and kind ~= 'del' then redis.call('PEXPIRE', key, ttl) end
end
for _, p in ipairs(spec.p) do redis.call('PUBLISH', p[1], p[2]) end
return 1
"#;

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
            Target::None | Target::Sender => None,
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

fn encode_message(origin: &str, envelope: &Envelope) -> Vec<u8> {
    let target = envelope.target.to_string();
    let exclude = envelope.exclude.as_deref().unwrap_or("");
    let mut out =
        Vec::with_capacity(origin.len() + exclude.len() + target.len() + envelope.frame.len() + 3);
    for part in [origin.as_bytes(), exclude.as_bytes(), target.as_bytes()] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out.extend_from_slice(&envelope.frame);
    out
}

/// `(origin, envelope)`, or `None` for a message this version cannot read.
fn decode_message(payload: &[u8]) -> Option<(&str, Envelope)> {
    let mut parts = payload.splitn(4, |b| *b == b'\n');
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let exclude = std::str::from_utf8(parts.next()?).ok()?;
    let target = Target::parse(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    let frame = Bytes::copy_from_slice(parts.next()?);
    Some((
        origin,
        Envelope {
            target,
            exclude: (!exclude.is_empty()).then(|| Arc::from(exclude)),
            frame,
        },
    ))
}

struct PubSubState {
    /// Channel → local reasons to listen. The connection task subscribes all of them
    /// after every reconnect.
    wanted: parking_lot::Mutex<HashMap<String, usize>>,
    /// The live connection's command half; `None` while disconnected. An async mutex:
    /// subscribe calls await the server's confirmation while holding it.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    ready: AtomicBool,
}

pub struct RedisBackend {
    node_id: Arc<str>,
    names: Names,
    conn: ConnectionManager,
    local: Arc<dyn Sink>,
    pubsub: Arc<PubSubState>,
    read_script: Script,
    commit_script: Script,
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
        let pubsub = Arc::new(PubSubState {
            wanted: parking_lot::Mutex::new(HashMap::new()),
            sink: tokio::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
        });
        {
            let mut wanted = pubsub.wanted.lock();
            wanted.insert(names.all_channel(), 1);
            wanted.insert(names.node_channel(&node_id), 1);
        }
        let backend = Arc::new(Self {
            node_id,
            names,
            conn,
            local,
            pubsub,
            read_script: Script::new(READ_LUA),
            commit_script: Script::new(COMMIT_LUA),
            healthy: Arc::new(AtomicBool::new(true)),
            recoveries: watch::channel(0).0,
        });
        tokio::spawn(pubsub_task(client, Arc::downgrade(&backend)));
        tokio::spawn(health_task(Arc::downgrade(&backend)));
        // Wait (bounded) for the first subscription so a fresh node does not miss events.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !backend.pubsub.ready.load(Ordering::Acquire)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(backend)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A command connection for the cluster module (heartbeats, cleanup).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Changes each time Redis comes back after an outage: local presence is re-asserted then.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn parse_read(key: &str, item: RedisValue) -> Result<Versioned, BackendError> {
        let bad = || BackendError::Protocol(format!("unexpected reply reading `{key}`"));
        let RedisValue::Array(mut parts) = item else {
            return Err(bad());
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let data = parts.pop().ok_or_else(bad)?;
        let kind = text(parts.pop().ok_or_else(bad)?).ok_or_else(bad)?;
        let version = text(parts.pop().ok_or_else(bad)?)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(bad)?;
        let RedisValue::Array(items) = data else {
            return Err(bad());
        };
        let items: Vec<String> = items.into_iter().filter_map(text).collect();
        let value = match kind.as_str() {
            "none" => None,
            "string" => items
                .into_iter()
                .next()
                .map(|s| StoredValue::Json(parse_json(&s))),
            "hash" => {
                let mut map = BTreeMap::new();
                let mut it = items.into_iter();
                while let (Some(field), Some(value)) = (it.next(), it.next()) {
                    map.insert(field, parse_json(&value));
                }
                Some(StoredValue::Hash(map))
            }
            "set" => Some(StoredValue::Set(items.into_iter().collect::<BTreeSet<_>>())),
            "list" => Some(StoredValue::List(
                items.iter().map(|s| parse_json(s)).collect::<VecDeque<_>>(),
            )),
            other => {
                return Err(BackendError::WrongType {
                    key: key.to_string(),
                    expected: if other.is_empty() {
                        "readable"
                    } else {
                        "a string, hash, set or list"
                    },
                })
            }
        };
        Ok(Versioned { version, value })
    }

    fn deliver_locally(&self, envelope: &Envelope) {
        self.local.deliver(envelope);
    }

    /// Whether a delivery has recipients on other nodes at all.
    fn needs_publish(&self, envelope: &Envelope) -> bool {
        match &envelope.target {
            Target::Conn(c) => node_of(c) != &*self.node_id,
            Target::None | Target::Sender => false,
            _ => true,
        }
    }

    async fn commit_inner(&self, commit: Commit) -> Result<CommitOutcome, BackendError> {
        let mut keys: Vec<String> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        // KEYS holds `v:<key>`, `s:<key>` pairs; Lua indexes are 1-based.
        for key in commit
            .reads
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(commit.writes.iter().map(|w| w.key.as_str()))
        {
            if !index.contains_key(key) {
                index.insert(key, keys.len() + 1);
                keys.push(self.names.version(key));
                keys.push(self.names.state(key));
            }
        }
        let reads: Vec<Value> = commit
            .reads
            .iter()
            .map(|(k, v)| serde_json::json!([index[k.as_str()], v]))
            .collect();
        let writes: Vec<Value> = commit
            .writes
            .iter()
            .map(|w| {
                let i = index[w.key.as_str()];
                let (kind, items) = encode_value(w.value.as_ref());
                let ttl = w.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                serde_json::json!([i, i + 1, kind, items, ttl])
            })
            .collect();
        let remote: Vec<&Envelope> = commit
            .publish
            .iter()
            .filter(|e| self.needs_publish(e))
            .collect();
        let publish: Vec<Value> = remote
            .iter()
            .filter_map(|e| {
                let channel = self.names.target_channel(&e.target)?;
                let message = String::from_utf8(encode_message(&self.node_id, e)).ok()?;
                Some(serde_json::json!([channel, message]))
            })
            .collect();
        let spec = serde_json::json!({ "r": reads, "w": writes, "p": publish }).to_string();
        let mut invocation = self.commit_script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let skip_check = super::UNSAFE_SKIP_VERSION_CHECK.load(Ordering::Relaxed);
        invocation
            .arg(spec)
            .arg(LUA_CHUNK)
            .arg(if skip_check { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let applied: i64 = self.call(invocation.invoke_async(&mut conn)).await?;
        if applied == 1 {
            metrics::counter!("wss_bus_published_total").increment(publish.len() as u64);
            for envelope in &commit.publish {
                self.deliver_locally(envelope);
            }
            Ok(CommitOutcome::Committed)
        } else {
            Ok(CommitOutcome::Conflict)
        }
    }
}

fn text(v: RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => String::from_utf8(b).ok(),
        RedisValue::SimpleString(s) => Some(s),
        RedisValue::Okay => Some("OK".into()),
        RedisValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Values are JSON text; anything else (set by hand with redis-cli) reads as a string.
fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn encode_value(value: Option<&StoredValue>) -> (&'static str, Vec<String>) {
    match value {
        None => ("del", Vec::new()),
        Some(StoredValue::Json(v)) => ("json", vec![v.to_string()]),
        Some(StoredValue::Hash(h)) => (
            "hash",
            h.iter()
                .flat_map(|(k, v)| [k.clone(), v.to_string()])
                .collect(),
        ),
        Some(StoredValue::Set(s)) => ("set", s.iter().cloned().collect()),
        Some(StoredValue::List(l)) => ("list", l.iter().map(Value::to_string).collect()),
    }
}

impl StateStore for RedisBackend {
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>> {
        async move {
            let mut invocation = self.read_script.prepare_invoke();
            for key in &keys {
                invocation
                    .key(self.names.version(key))
                    .key(self.names.state(key));
            }
            let mut conn = self.conn.clone();
            let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
            let RedisValue::Array(items) = reply else {
                return Err(BackendError::Protocol(
                    "unexpected reply to a state read".into(),
                ));
            };
            if items.len() != keys.len() {
                return Err(BackendError::Protocol(
                    "state read returned the wrong number of keys".into(),
                ));
            }
            keys.iter()
                .zip(items)
                .map(|(k, item)| Self::parse_read(k, item))
                .collect()
        }
        .boxed()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        self.commit_inner(commit).boxed()
    }

    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let (room_key, conn_key) = (self.names.room(room), self.names.conn_rooms(conn));
        let (room, conn) = (room.to_string(), conn.to_string());
        async move {
            let mut c = self.conn.clone();
            self.call(
                redis::pipe()
                    .atomic()
                    .sadd(&room_key, &conn)
                    .ignore()
                    .sadd(&conn_key, &room)
                    .ignore()
                    .query_async::<()>(&mut c),
            )
            .await
        }
        .boxed()
    }

    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let (room_key, conn_key) = (self.names.room(room), self.names.conn_rooms(conn));
        let (room, conn) = (room.to_string(), conn.to_string());
        async move {
            let mut c = self.conn.clone();
            self.call(
                redis::pipe()
                    .atomic()
                    .srem(&room_key, &conn)
                    .ignore()
                    .srem(&conn_key, &room)
                    .ignore()
                    .query_async::<()>(&mut c),
            )
            .await
        }
        .boxed()
    }

    fn members(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let key = self.names.room(room);
        async move {
            let mut c = self.conn.clone();
            let mut members: Vec<String> = self
                .call(redis::cmd("SMEMBERS").arg(&key).query_async(&mut c))
                .await?;
            members.sort();
            Ok(members)
        }
        .boxed()
    }

    fn register_conn(
        &self,
        conn: &ConnId,
        user: Option<&str>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let key = self.names.node_conns(&self.node_id);
        let (conn, info) = (
            conn.to_string(),
            serde_json::json!({ "user": user }).to_string(),
        );
        async move {
            let mut c = self.conn.clone();
            self.call(
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&conn)
                    .arg(&info)
                    .query_async::<()>(&mut c),
            )
            .await
        }
        .boxed()
    }

    fn unregister_conn(&self, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let key = self.names.node_conns(&self.node_id);
        let rooms = self.names.conn_rooms(conn);
        let conn = conn.to_string();
        async move {
            let mut c = self.conn.clone();
            self.call(
                redis::pipe()
                    .atomic()
                    .hdel(&key, &conn)
                    .ignore()
                    .del(&rooms)
                    .ignore()
                    .query_async::<()>(&mut c),
            )
            .await
        }
        .boxed()
    }
}

impl Bus for RedisBackend {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            if self.needs_publish(&envelope) {
                if let Some(channel) = self.names.target_channel(&envelope.target) {
                    let message = encode_message(&self.node_id, &envelope);
                    let mut c = self.conn.clone();
                    self.call(
                        redis::cmd("PUBLISH")
                            .arg(&channel)
                            .arg(message)
                            .query_async::<i64>(&mut c),
                    )
                    .await?;
                    metrics::counter!("wss_bus_published_total").increment(1);
                }
            }
            // Local recipients are served directly; this node drops its own echo.
            self.deliver_locally(&envelope);
            Ok(())
        }
        .boxed()
    }

    fn watch(&self, channel: Channel) -> BoxFuture<'_, Result<(), BackendError>> {
        let name = self.names.channel(&channel);
        async move {
            // Counted under the sink lock, so a second watcher cannot return (and its
            // client be told "joined") while the first one's SUBSCRIBE is still in flight.
            let mut sink = self.pubsub.sink.lock().await;
            let first = {
                let mut wanted = self.pubsub.wanted.lock();
                let count = wanted.entry(name.clone()).or_insert(0);
                *count += 1;
                *count == 1
            };
            if !first {
                return Ok(());
            }
            let result = match sink.as_mut() {
                Some(s) => bounded(s.subscribe(&name)).await,
                None => Err(unavailable("Pub/Sub connection to Redis is down")),
            };
            // On failure the channel stays wanted: the reconnect loop subscribes every
            // wanted channel, and the caller balances with `unwatch` if it gives up.
            result
        }
        .boxed()
    }

    fn unwatch(&self, channel: Channel) {
        let name = self.names.channel(&channel);
        self.unwatch_name(&name);
    }

    fn is_ready(&self) -> bool {
        self.is_healthy() && self.pubsub.ready.load(Ordering::Acquire)
    }
}

impl RedisBackend {
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

    fn unwatch_name(&self, name: &str) {
        let last = {
            let mut wanted = self.pubsub.wanted.lock();
            match wanted.get_mut(name) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    wanted.remove(name);
                    true
                }
                None => false,
            }
        };
        if last {
            let pubsub = self.pubsub.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let mut sink = pubsub.sink.lock().await;
                // Re-check: a join may have wanted it again while we waited for the lock.
                if pubsub.wanted.lock().contains_key(&name) {
                    return;
                }
                if let Some(s) = sink.as_mut() {
                    let _ = tokio::time::timeout(OP_TIMEOUT, s.unsubscribe(&name)).await;
                }
            });
        }
    }
}

/// Owns the Pub/Sub connection: connect, subscribe everything wanted, forward messages,
/// and on any failure start over. Ends when the backend is dropped.
async fn pubsub_task(client: redis::Client, backend: std::sync::Weak<RedisBackend>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(this) = backend.upgrade() else {
            return;
        };
        let connected =
            tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            _ => {
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut guard = this.pubsub.sink.lock().await;
        let channels: Vec<String> = this.pubsub.wanted.lock().keys().cloned().collect();
        let subscribed = bounded(sink.subscribe(&channels)).await;
        if subscribed.is_err() {
            drop(guard);
            drop(this);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        *guard = Some(sink);
        drop(guard);
        this.pubsub.ready.store(true, Ordering::Release);
        tracing::info!(channels = channels.len(), "Redis Pub/Sub subscribed");
        backoff = Duration::from_millis(50);
        let node_id = this.node_id.clone();
        let local = this.local.clone();
        let state = this.pubsub.clone();
        drop(this);

        // Forward messages until the connection ends. A ping every few seconds notices a
        // connection that died without closing.
        let mut ping = tokio::time::interval(Duration::from_secs(3));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    match decode_message(msg.get_payload_bytes()) {
                        Some((origin, _)) if origin == &*node_id => {}
                        Some((_, envelope)) => local.deliver(&envelope),
                        None => tracing::warn!(channel = msg.get_channel_name(), "unreadable Pub/Sub message"),
                    }
                }
                _ = ping.tick() => {
                    let mut sink = state.sink.lock().await;
                    // In subscribed mode PING answers `["pong", ""]`, not a string: any
                    // answer proves the connection alive; only errors and timeouts don't.
                    let alive = match sink.as_mut() {
                        Some(s) => matches!(tokio::time::timeout(OP_TIMEOUT, s.ping::<RedisValue>()).await, Ok(Ok(_))),
                        None => false,
                    };
                    if !alive {
                        break;
                    }
                }
            }
        }
        state.ready.store(false, Ordering::Release);
        *state.sink.lock().await = None;
        tracing::warn!("Redis Pub/Sub connection lost; reconnecting");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let envelope = Envelope {
            target: Target::Room("lobby".into()),
            exclude: Some(Arc::from("n1-1")),
            frame: Bytes::from_static(b"{\"event\":\"x\",\"data\":\"a\\nb\"}"),
        };
        let encoded = encode_message("n1", &envelope);
        let (origin, decoded) = decode_message(&encoded).unwrap();
        assert_eq!(origin, "n1");
        assert_eq!(decoded.target, envelope.target);
        assert_eq!(decoded.exclude, envelope.exclude);
        assert_eq!(decoded.frame, envelope.frame);
    }

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
