//! Presence in Redis: a room's member set, a connection's room set, the rooms index,
//! the node's connection registry and sessions. Joins, leaves, registrations, a node's
//! presence written again after Redis came back, and a dead node's cleanup all write
//! through these, so the sets stay in step whichever path changed them.

use std::time::Duration;

use super::conn::Batch;
use super::{Names, RedisBackend};
use crate::backend::BackendError;

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
