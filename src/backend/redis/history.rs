//! Room streams in Redis: a room's position and its history, read by one script that
//! also gives a room whose history was lost a new epoch.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Value as RedisValue;

use super::wire::parse_history;
use super::RedisBackend;
use crate::backend::{new_epoch, BackendError, HistoryStore};
use crate::delivery::{HistoryPolicy, HistoryRead, StreamPosition};

impl RedisBackend {
    async fn read_history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        seen: &str,
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
            .arg(&*new_epoch())
            .arg(seen);
        let mut conn = self.conn.clone();
        let reply: RedisValue = self.call(invocation.invoke_async(&mut conn)).await?;
        parse_history(reply)
    }
}

impl HistoryStore for RedisBackend {
    fn position(
        &self,
        room: &str,
        policy: &HistoryPolicy,
    ) -> BoxFuture<'_, Result<StreamPosition, BackendError>> {
        let (room, policy) = (room.to_string(), *policy);
        async move {
            let read = self.read_history(&room, &policy, "", 0, 0).await?;
            Ok(read.head)
        }
        .boxed()
    }

    fn history(
        &self,
        room: &str,
        policy: &HistoryPolicy,
        seen: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<HistoryRead, BackendError>> {
        let (room, policy, seen) = (room.to_string(), *policy, seen.unwrap_or("").to_string());
        async move { self.read_history(&room, &policy, &seen, after, limit).await }.boxed()
    }
}

pub(super) fn ttl_ms(policy: &HistoryPolicy) -> u64 {
    u64::try_from(policy.ttl.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}
