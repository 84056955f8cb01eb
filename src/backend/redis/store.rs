//! Shared state, rooms and live connections: the `StateStore` side of Redis.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Value as RedisValue;
use serde_json::Value;

use super::wire::{encode_message, encode_value, parse_read};
use super::{Names, RedisBackend};
use crate::backend::{BackendError, Commit, CommitOutcome, StateStore, VersionCheck, Versioned};
use crate::delivery::{ConnId, Envelope};

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
}

pub(super) fn remove_member(pipe: &mut redis::Pipeline, names: &Names, room: &str, conn: &str) {
    pipe.srem(names.room(room), conn)
        .ignore()
        .srem(names.conn_rooms(conn), room)
        .ignore();
}

/// A live connection of `node` in its registry hash.
pub(super) fn add_conn(
    pipe: &mut redis::Pipeline,
    names: &Names,
    node: &str,
    conn: &str,
    user: Option<&str>,
) {
    pipe.hset(
        names.node_conns(node),
        conn,
        serde_json::json!({ "user": user }).to_string(),
    )
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
        let skip_check = self.version_check == VersionCheck::Skip;
        invocation
            .arg(spec)
            .arg(LUA_CHUNK)
            .arg(if skip_check { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let applied: i64 = self.call(invocation.invoke_async(&mut conn)).await?;
        if applied == 1 {
            metrics::counter!("wss_bus_published_total").increment(publish.len() as u64);
            for envelope in &commit.publish {
                self.local.deliver(envelope);
            }
            Ok(CommitOutcome::Committed)
        } else {
            Ok(CommitOutcome::Conflict)
        }
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
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        add_conn(&mut pipe, &self.names, &self.node_id, conn, user);
        async move { self.run(&pipe).await }.boxed()
    }

    fn unregister_conn(&self, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.names.node_conns(&self.node_id), conn.as_ref())
            .ignore()
            .del(self.names.conn_rooms(conn))
            .ignore();
        async move { self.run(&pipe).await }.boxed()
    }
}
