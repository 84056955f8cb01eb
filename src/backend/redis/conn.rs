//! The command connection, to one Redis or to a Redis Cluster, and the batches of
//! commands that may touch several keys.
//!
//! On one Redis a batch is one pipeline (atomic when asked: `MULTI`/`EXEC`). On a
//! cluster a pipeline may not cross slots, so a batch is split into one pipeline per
//! slot, each sent to its shard; the order within a slot is kept, and a batch is then
//! atomic per slot only. Callers that need more than that keep their keys in one slot
//! (one hash tag), as the stream and state scripts do.

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};

use super::sentinel::SentinelPrimary;

/// The connection commands go through.
#[derive(Clone)]
pub enum Commands {
    Single(ConnectionManager),
    /// Routes every command to the shard of its key's slot, following redirections.
    Cluster(ClusterConnection),
    /// The primary Sentinel names now (the connection is replaced when it moves).
    Sentinel(Arc<SentinelPrimary>),
}

impl Commands {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(p) => {
                let mut c = p.manager();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(p) => {
                let mut c = p.manager();
                Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(p) => p.manager().get_db(),
        }
    }
}

/// Commands to send together, each on a key (the one that decides its slot).
#[derive(Default)]
pub struct Batch {
    cmds: Vec<Queued>,
    atomic: bool,
}

/// One command of a batch.
struct Queued {
    /// The slot of its key: on a cluster, the shard the command goes to.
    slot: u16,
    cmd: Cmd,
    /// Whether `run` returns its reply.
    keep: bool,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// `MULTI`/`EXEC` on one Redis (per slot on a cluster).
    pub fn atomic(mut self) -> Self {
        self.atomic = true;
        self
    }

    /// A command whose reply the caller does not need.
    pub fn add(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        self.cmds.push(Queued {
            slot: slot(key.as_bytes()),
            cmd,
            keep: false,
        });
        self
    }

    /// A command whose reply `run` returns, in the order they were kept.
    pub fn keep(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        self.cmds.push(Queued {
            slot: slot(key.as_bytes()),
            cmd,
            keep: true,
        });
        self
    }

    /// Send the batch; the replies of the kept commands, in order.
    pub async fn run(&self, conn: &mut Commands) -> redis::RedisResult<Vec<Value>> {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !conn.is_cluster() {
            let mut pipe = redis::pipe();
            if self.atomic {
                pipe.atomic();
            }
            for queued in &self.cmds {
                pipe.add_command(queued.cmd.clone());
            }
            let replies: Vec<Value> = pipe.query_async(conn).await?;
            return Ok(self.kept(replies.into_iter().map(Some).collect()));
        }
        // One pipeline per slot; `at` remembers where each reply goes.
        let mut per_slot: BTreeMap<u16, (redis::Pipeline, Vec<usize>)> = BTreeMap::new();
        for (at, queued) in self.cmds.iter().enumerate() {
            let (pipe, ats) = per_slot.entry(queued.slot).or_insert_with(|| {
                let mut pipe = redis::pipe();
                if self.atomic {
                    pipe.atomic();
                }
                (pipe, Vec::new())
            });
            pipe.add_command(queued.cmd.clone());
            ats.push(at);
        }
        let mut replies: Vec<Option<Value>> = vec![None; self.cmds.len()];
        for (pipe, ats) in per_slot.values() {
            let got: Vec<Value> = pipe.query_async(conn).await?;
            for (at, value) in ats.iter().zip(got) {
                replies[*at] = Some(value);
            }
        }
        Ok(self.kept(replies))
    }

    fn kept(&self, replies: Vec<Option<Value>>) -> Vec<Value> {
        self.cmds
            .iter()
            .zip(replies)
            .filter(|(queued, _)| queued.keep)
            .map(|(_, v)| v.unwrap_or(Value::Nil))
            .collect()
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key
/// when it has none, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % 16384
}

/// The part between the first `{` and the next `}`, when not empty.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|b| *b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster_hash_tags() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }
}
