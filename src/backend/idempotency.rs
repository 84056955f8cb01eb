//! Idempotency keys of the HTTP API: a claim, then the stored result.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::BackendError;

/// Cluster-wide idempotency keys: all that `Idempotency-Key` needs.
pub trait Idempotency: Send + Sync + 'static {
    /// Claim a key for a request about to run: `Ok(None)` when it was free (it now
    /// holds `marker` for `ttl`), else what it holds (the marker of a request still
    /// running, or a stored result). Atomic: of two nodes claiming one key at once, one
    /// gets it.
    fn claim(
        &self,
        key: &str,
        marker: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<String>, BackendError>>;

    /// Keep `value` under a claimed key for `ttl` (replacing the marker).
    fn store(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BackendError>>;
}
