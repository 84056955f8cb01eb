//! Shared state, rooms and live connections: the `StateStore` side of Redis.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Value as RedisValue;
use serde_json::Value;

use std::sync::Arc;
use std::time::Duration;

use super::wire::{encode_message, encode_value, header, parse_history, parse_placed, parse_read};
use super::{Names, RedisBackend};
use crate::backend::{
    new_epoch, BackendError, Channel, Commit, CommitOutcome, LiveConn, Placement, Session,
    StateStore, VersionCheck, Versioned,
};
use crate::delivery::{ConnId, Envelope, HistoryPolicy, HistoryRead, Position, Target};

/// Lua's `unpack` has a stack limit; spread long argument lists over several calls.
const LUA_CHUNK: usize = 1000;

/// Presence is written in three places (a join, a leave, a whole node's presence again
/// after Redis came back) and removed by a dead node's cleanup: these keep the room's
/// member set and the connection's room set in step everywhere.
pub(super) fn add_member(pipe: &mut redis::Pipeline, names: &Names, room: &str, conn: &str) {
    pipe.sadd(names.room(room), conn)
        .ignore()
        .sadd(names.conn_rooms(conn), room)
        .ignore();
    recount(pipe, names, room);
}

pub(super) fn remove_member(pipe: &mut redis::Pipeline, names: &Names, room: &str, conn: &str) {
    pipe.srem(names.room(room), conn)
        .ignore()
        .srem(names.conn_rooms(conn), room)
        .ignore();
    recount(pipe, names, room);
}

/// Sets a room's entry in `P rooms` to its member count now (removed at 0). Each call
/// reads the set as it is when it runs, so whatever the interleaving of nodes, the last
/// change of a room's members leaves its count right.
const RECOUNT: &str = "local n = redis.call('SCARD', KEYS[1]) \
    if n > 0 then redis.call('ZADD', KEYS[2], n, ARGV[1]) \
    else redis.call('ZREM', KEYS[2], ARGV[1]) end return n";

/// After a change of `room`'s member set: its count in the rooms index.
pub(super) fn recount(pipe: &mut redis::Pipeline, names: &Names, room: &str) {
    pipe.cmd("EVAL")
        .arg(RECOUNT)
        .arg(2)
        .arg(names.room(room))
        .arg(names.rooms_index())
        .arg(room)
        .ignore();
}

/// A live connection of `node` in its registry hash, and its session (no TTL while the
/// connection lives).
pub(super) fn add_conn(
    pipe: &mut redis::Pipeline,
    names: &Names,
    node: &str,
    conn: &str,
    user: Option<&str>,
    session: &str,
) {
    pipe.hset(
        names.node_conns(node),
        conn,
        serde_json::json!({ "user": user, "session": session }).to_string(),
    )
    .ignore()
    .hset_multiple(
        names.session(session),
        &[
            ("user", serde_json::json!(user).to_string()),
            ("conn", conn.to_string()),
        ],
    )
    .ignore()
    .persist(names.session(session))
    .ignore()
    .persist(names.conn_rooms(conn))
    .ignore();
    if let Some(user) = user {
        pipe.sadd(names.user(user), conn).ignore();
    }
}

/// A connection that is gone: its session and rooms are kept for `keep`.
pub(super) fn keep_session(
    pipe: &mut redis::Pipeline,
    names: &Names,
    conn: &str,
    session: &str,
    keep: Duration,
) {
    let ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX).max(1);
    pipe.pexpire(names.session(session), ms)
        .ignore()
        .pexpire(names.conn_rooms(conn), ms)
        .ignore();
}

impl RedisBackend {
    /// Whether a delivery has recipients on other nodes at all.
    pub(super) fn needs_publish(&self, envelope: &Envelope) -> bool {
        match &envelope.target {
            crate::delivery::Target::Conn(c) => super::node_of(c) != &*self.node_id,
            crate::delivery::Target::None => false,
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
        let mut publish: Vec<Value> = Vec::new();
        let mut streams: Vec<Value> = Vec::new();
        // (index into commit.publish, room) of each delivery the script places.
        let mut placing: Vec<(usize, &str)> = Vec::new();
        for (n, envelope) in commit.publish.iter().enumerate() {
            if let Some((room, policy)) = unplaced(envelope) {
                let at = keys.len() + 1;
                keys.push(self.names.position(room));
                keys.push(self.names.history(room));
                streams.push(serde_json::json!([
                    at,
                    at + 1,
                    policy.size,
                    ttl_ms(policy),
                    &*new_epoch(),
                    self.names.channel(&Channel::Room(room.to_string())),
                    header(&self.node_id, envelope),
                    String::from_utf8_lossy(&envelope.frame),
                ]));
                placing.push((n, room));
            } else if self.needs_publish(envelope) {
                if let Some(channel) = self.names.target_channel(&envelope.target) {
                    let message = String::from_utf8_lossy(&encode_message(&self.node_id, envelope))
                        .into_owned();
                    publish.push(serde_json::json!([channel, message]));
                }
            }
        }
        let spec =
            serde_json::json!({ "r": reads, "w": writes, "p": publish, "s": streams }).to_string();
        let mut invocation = self.commit_script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let skip_check = self.version_check == VersionCheck::Skip;
        invocation
            .arg(spec)
            .arg(LUA_CHUNK)
            .arg(if skip_check { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        let RedisValue::Array(items) = reply else {
            return Ok(CommitOutcome::Conflict);
        };
        metrics::counter!("wss_bus_published_total")
            .increment((publish.len() + streams.len()) as u64);
        let mut placed = Vec::with_capacity(placing.len());
        let mut positions = items.into_iter().skip(1);
        let mut at: HashMap<usize, (Arc<str>, u64)> = HashMap::new();
        for (n, room) in placing {
            let (epoch, offset) = parse_placed(positions.next().unwrap_or(RedisValue::Nil))?;
            placed.push(Placement {
                room: room.to_string(),
                epoch: epoch.clone(),
                offset,
            });
            at.insert(n, (epoch, offset));
        }
        for (n, envelope) in commit.publish.iter().enumerate() {
            match at.remove(&n) {
                Some((epoch, offset)) => self.local.deliver(&envelope.placed(epoch, offset)),
                None => self.local.deliver(envelope),
            }
        }
        Ok(CommitOutcome::Committed(placed))
    }

    /// Place one delivery in its room's stream and publish it.
    pub(super) async fn place(
        &self,
        envelope: &Envelope,
        room: &str,
        policy: &HistoryPolicy,
    ) -> Result<Placement, BackendError> {
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(self.names.position(room))
            .key(self.names.history(room))
            .arg(policy.size)
            .arg(ttl_ms(policy))
            .arg(&*new_epoch())
            .arg(self.names.channel(&Channel::Room(room.to_string())))
            .arg(header(&self.node_id, envelope))
            .arg(&envelope.frame[..]);
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        let (epoch, offset) = parse_placed(reply)?;
        metrics::counter!("wss_bus_published_total").increment(1);
        self.local.deliver(&envelope.placed(epoch.clone(), offset));
        Ok(Placement {
            room: room.to_string(),
            epoch,
            offset,
        })
    }

    async fn read_history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BackendError> {
        let mut invocation = self.history_script.prepare_invoke();
        invocation
            .key(self.names.position(room))
            .key(self.names.history(room))
            .arg(after)
            .arg(limit)
            .arg(ttl_ms(policy))
            .arg(&*new_epoch());
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        parse_history(reply)
    }
}

/// The room and policy of a delivery that still needs its place in a stream.
pub(super) fn unplaced(envelope: &Envelope) -> Option<(&str, &HistoryPolicy)> {
    match (&envelope.target, &envelope.position) {
        (Target::Room(room), Position::Unplaced(policy)) => Some((room, policy)),
        _ => None,
    }
}

fn ttl_ms(policy: &HistoryPolicy) -> u64 {
    u64::try_from(policy.ttl.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1)
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
                .map(|(k, item)| parse_read(k, item))
                .collect()
        }
        .boxed()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        self.commit_inner(commit).boxed()
    }

    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        add_member(pipe.atomic(), &self.names, room, conn);
        async move { self.run(&pipe).await }.boxed()
    }

    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        remove_member(pipe.atomic(), &self.names, room, conn);
        async move { self.run(&pipe).await }.boxed()
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
        session: &str,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        add_conn(&mut pipe, &self.names, &self.node_id, conn, user, session);
        async move { self.run(&pipe).await }.boxed()
    }

    fn close_conn(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &str,
        rooms: &[Arc<str>],
        keep: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for room in rooms {
            // Out of the room's members; the connection keeps the room in its set, for
            // a resume.
            pipe.srem(self.names.room(room), conn.as_ref()).ignore();
            recount(&mut pipe, &self.names, room);
        }
        if let Some(user) = user {
            pipe.srem(self.names.user(user), conn.as_ref()).ignore();
        }
        pipe.hdel(self.names.node_conns(&self.node_id), conn.as_ref())
            .ignore();
        keep_session(&mut pipe, &self.names, conn, session, keep);
        async move { self.run(&pipe).await }.boxed()
    }

    fn live_conn(&self, conn: &str) -> BoxFuture<'_, Result<Option<LiveConn>, BackendError>> {
        // The registry hash of the node the id names: no lookup table needed.
        let key = self.names.node_conns(super::node_of(conn));
        let conn = conn.to_string();
        async move {
            let (info,): (Option<String>,) = self.run(redis::pipe().hget(&key, &conn)).await?;
            Ok(info.map(|info| {
                let info = serde_json::from_str::<Value>(&info).unwrap_or_default();
                LiveConn {
                    user: info.get("user").and_then(Value::as_str).map(str::to_string),
                    id: conn,
                }
            }))
        }
        .boxed()
    }

    fn user_conns(&self, user: &str) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let key = self.names.user(user);
        async move {
            let (mut conns,): (Vec<String>,) = self.run(redis::pipe().smembers(&key)).await?;
            conns.sort();
            Ok(conns)
        }
        .boxed()
    }

    fn busiest_rooms(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(String, u64)>, BackendError>> {
        let key = self.names.rooms_index();
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let stop = isize::try_from(limit - 1).unwrap_or(isize::MAX);
            let (rooms,): (Vec<(String, f64)>,) = self
                .run(redis::pipe().zrevrange_withscores(&key, 0, stop))
                .await?;
            Ok(rooms
                .into_iter()
                .map(|(room, n)| (room, n.max(0.0) as u64))
                .collect())
        }
        .boxed()
    }

    fn idempotency_claim(
        &self,
        key: &str,
        marker: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>> {
        let key = self.names.idempotency(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let marker = marker.to_string();
        async move {
            // `SET NX GET` would do it in one command, but only from Redis 7.0 on;
            // a MULTI of `SET NX` and `GET` is as atomic and works on 6.x too.
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&marker)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .get(&key);
            let (claimed, held): (Option<String>, Option<String>) = self.run(&pipe).await?;
            Ok(if claimed.is_some() { None } else { held })
        }
        .boxed()
    }

    fn idempotency_store(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let key = self.names.idempotency(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ms)
            .ignore();
        async move { self.run(&pipe).await }.boxed()
    }

    fn session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, BackendError>> {
        let key = self.names.session(id);
        async move {
            let (fields,): (Vec<(String, String)>,) = self.run(redis::pipe().hgetall(&key)).await?;
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let Some(conn) = field("conn") else {
                return Ok(None);
            };
            let user = field("user")
                .and_then(|u| serde_json::from_str::<Option<String>>(&u).ok())
                .flatten();
            let (mut rooms,): (Vec<String>,) = self
                .run(redis::pipe().smembers(self.names.conn_rooms(&conn)))
                .await?;
            rooms.sort();
            Ok(Some(Session { user, conn, rooms }))
        }
        .boxed()
    }

    fn position(
        &self,
        room: &str,
        policy: &HistoryPolicy,
    ) -> BoxFuture<'_, Result<(Arc<str>, u64), BackendError>> {
        let (room, policy) = (room.to_string(), *policy);
        async move {
            let read = self.read_history(&room, &policy, 0, 0).await?;
            Ok((read.epoch, read.head))
        }
        .boxed()
    }

    fn history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryRead, BackendError>> {
        let (room, policy) = (room.to_string(), *policy);
        async move { self.read_history(&room, &policy, after, limit).await }.boxed()
    }
}
