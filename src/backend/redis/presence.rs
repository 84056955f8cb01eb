//! Presence in Redis: a room's member set, a connection's room set, the rooms index,
//! the node's connection registry and sessions. Joins, leaves, registrations, a node's
//! presence written again after Redis came back, and a dead node's cleanup all write
//! through these, so the sets stay in step whichever path changed them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;

use super::conn::Batch;
use super::{Names, RedisBackend};
use crate::backend::{BackendError, LiveConn, Presence, Session, Sessions};
use crate::ids::{ConnId, SessionId};

/// Presence is written in three places (a join, a leave, a whole node's presence again
/// after Redis came back) and removed by a dead node's cleanup: these keep the room's
/// member set and the connection's room set in step everywhere.
pub(super) fn add_member(batch: &mut Batch, names: &Names, room: &str, conn: &str) {
    let (room_key, rooms_key) = (names.room(room), names.conn_rooms(conn));
    batch
        .add(&room_key, redis::Cmd::sadd(&room_key, conn))
        .add(&rooms_key, redis::Cmd::sadd(&rooms_key, room));
    recount(batch, names, room);
}

pub(super) fn remove_member(batch: &mut Batch, names: &Names, room: &str, conn: &str) {
    let (room_key, rooms_key) = (names.room(room), names.conn_rooms(conn));
    batch
        .add(&room_key, redis::Cmd::srem(&room_key, conn))
        .add(&rooms_key, redis::Cmd::srem(&rooms_key, room));
    recount(batch, names, room);
}

/// Sets a room's entry in `P rooms` to its member count now (removed at 0). Each call
/// reads the set as it is when it runs, so whatever the interleaving of nodes, the last
/// change of a room's members leaves its count right.
const RECOUNT: &str = "local n = redis.call('SCARD', KEYS[1]) \
    if n > 0 then redis.call('ZADD', KEYS[2], n, ARGV[1]) \
    else redis.call('ZREM', KEYS[2], ARGV[1]) end return n";

/// After a change of `room`'s member set: its count in the rooms index. On a Redis
/// Cluster the room and the index are in different slots, which one script cannot
/// span: [`RedisBackend::recount_rooms`] does it after the batch instead.
pub(super) fn recount(batch: &mut Batch, names: &Names, room: &str) {
    if names.is_cluster() {
        return;
    }
    let (room_key, index) = (names.room(room), names.rooms_index());
    let mut eval = redis::cmd("EVAL");
    eval.arg(RECOUNT)
        .arg(2)
        .arg(&room_key)
        .arg(&index)
        .arg(room);
    batch.add(&room_key, eval);
}

/// A live connection of `node` in its registry hash, and its session (no TTL while the
/// connection lives).
pub(super) fn add_conn(
    batch: &mut Batch,
    names: &Names,
    node: &str,
    conn: &str,
    user: Option<&str>,
    session: &str,
) {
    let (conns, session_key, rooms) = (
        names.node_conns(node),
        names.session(session),
        names.conn_rooms(conn),
    );
    let info = serde_json::json!({ "user": user, "session": session }).to_string();
    batch
        .add(&conns, redis::Cmd::hset(&conns, conn, info))
        .add(
            &session_key,
            redis::Cmd::hset_multiple(
                &session_key,
                &[
                    ("user", serde_json::json!(user).to_string()),
                    ("conn", conn.to_string()),
                ],
            ),
        )
        .add(&session_key, redis::Cmd::persist(&session_key))
        .add(&rooms, redis::Cmd::persist(&rooms));
    if let Some(user) = user {
        let key = names.user(user);
        batch.add(&key, redis::Cmd::sadd(&key, conn));
    }
}

/// A connection that is gone: its session and rooms are kept for `keep`.
pub(super) fn keep_session(
    batch: &mut Batch,
    names: &Names,
    conn: &str,
    session: &str,
    keep: Duration,
) {
    let ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX).max(1);
    let (session_key, rooms) = (names.session(session), names.conn_rooms(conn));
    batch
        .add(&session_key, redis::Cmd::pexpire(&session_key, ms))
        .add(&rooms, redis::Cmd::pexpire(&rooms, ms));
}

impl RedisBackend {
    /// Redis Cluster: after a batch changed the member sets of `rooms`, their counts in
    /// the rooms index ([`recount`] does it within the batch on one Redis). The set and
    /// the index are in different slots, so each count is read, then written: a change
    /// racing on another node can leave a room's count one change behind until the
    /// room's next change.
    pub(super) async fn recount_rooms(&self, rooms: &[&str]) -> Result<(), BackendError> {
        if !self.names.is_cluster() {
            return Ok(());
        }
        let index = self.names.rooms_index();
        for &room in rooms {
            let members: u64 = self
                .query(&redis::Cmd::scard(self.names.room(room)))
                .await?;
            let write = if members > 0 {
                redis::Cmd::zadd(&index, room, members)
            } else {
                redis::Cmd::zrem(&index, room)
            };
            self.query::<()>(&write).await?;
        }
        Ok(())
    }
}

impl Presence for RedisBackend {
    fn join(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut batch = Batch::new().atomic();
        add_member(&mut batch, &self.names, room, conn);
        let room = room.to_string();
        async move {
            self.run(&batch).await?;
            self.recount_rooms(&[&room]).await
        }
        .boxed()
    }

    fn leave(&self, room: &str, conn: &ConnId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut batch = Batch::new().atomic();
        remove_member(&mut batch, &self.names, room, conn);
        let room = room.to_string();
        async move {
            self.run(&batch).await?;
            self.recount_rooms(&[&room]).await
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

    fn live_conn(&self, conn: &str) -> BoxFuture<'_, Result<Option<LiveConn>, BackendError>> {
        // The registry hash of the node the id names: no lookup table needed.
        let key = self.names.node_conns(crate::ids::node_of(conn));
        let conn = conn.to_string();
        async move {
            let info: Option<String> = self.query(&redis::Cmd::hget(&key, &conn)).await?;
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
            let mut conns: Vec<String> = self.query(&redis::Cmd::smembers(&key)).await?;
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
            let rooms: Vec<(String, f64)> = self
                .query(&redis::Cmd::zrevrange_withscores(&key, 0, stop))
                .await?;
            Ok(rooms
                .into_iter()
                .map(|(room, n)| (room, n.max(0.0) as u64))
                .collect())
        }
        .boxed()
    }
}

impl Sessions for RedisBackend {
    fn open(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut batch = Batch::new();
        add_conn(
            &mut batch,
            &self.names,
            &self.node_id,
            conn,
            user,
            session.expose(),
        );
        async move { self.run(&batch).await.map(drop) }.boxed()
    }

    fn close(
        &self,
        conn: &ConnId,
        user: Option<&str>,
        session: &SessionId,
        rooms: &[Arc<str>],
        keep: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut batch = Batch::new().atomic();
        for room in rooms {
            // Out of the room's members; the connection keeps the room in its set, for
            // a resume.
            let key = self.names.room(room);
            batch.add(&key, redis::Cmd::srem(&key, conn.as_ref()));
            recount(&mut batch, &self.names, room);
        }
        if let Some(user) = user {
            let key = self.names.user(user);
            batch.add(&key, redis::Cmd::srem(&key, conn.as_ref()));
        }
        let conns = self.names.node_conns(&self.node_id);
        batch.add(&conns, redis::Cmd::hdel(&conns, conn.as_ref()));
        keep_session(&mut batch, &self.names, conn, session.expose(), keep);
        let rooms = rooms.to_vec();
        async move {
            self.run(&batch).await?;
            let rooms: Vec<&str> = rooms.iter().map(|r| &**r).collect();
            self.recount_rooms(&rooms).await
        }
        .boxed()
    }

    fn session(&self, id: &str) -> BoxFuture<'_, Result<Option<Session>, BackendError>> {
        let key = self.names.session(id);
        async move {
            let fields: Vec<(String, String)> = self.query(&redis::Cmd::hgetall(&key)).await?;
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
            let mut rooms: Vec<String> = self
                .query(&redis::Cmd::smembers(self.names.conn_rooms(&conn)))
                .await?;
            rooms.sort();
            Ok(Some(Session { user, conn, rooms }))
        }
        .boxed()
    }
}
