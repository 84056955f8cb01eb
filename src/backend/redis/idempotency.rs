//! Idempotency keys of the HTTP API in Redis: `P idem:<key>`, claimed with `SET NX`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Value as RedisValue;

use super::conn::Batch;
use super::RedisBackend;
use crate::backend::{BackendError, Idempotency};

impl Idempotency for RedisBackend {
    fn claim(
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
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(&marker).arg("NX").arg("PX").arg(ms);
            let mut batch = Batch::new().atomic();
            batch.keep(&key, set).keep(&key, redis::Cmd::get(&key));
            let replies = self.run(&batch).await?;
            let claimed = !matches!(replies.first(), Some(RedisValue::Nil) | None);
            let held: Option<String> = match replies.get(1) {
                Some(v) => redis::from_redis_value_ref(v)
                    .map_err(|e| BackendError::Protocol(e.to_string()))?,
                None => None,
            };
            Ok(if claimed { None } else { held })
        }
        .boxed()
    }

    fn store(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let key = self.names.idempotency(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("PX").arg(ms);
        async move { self.query::<()>(&set).await }.boxed()
    }
}
