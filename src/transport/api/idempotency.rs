//! `Idempotency-Key`: a repeated request gets the first one's answer instead of running
//! again, on whichever node it lands, for 5 minutes.
//!
//! The first request claims the key cluster-wide (Redis `SET NX PX`; a map with expiry
//! on the memory backend) with a `running` marker, runs, and stores its answer under
//! the key. A repeat finds the answer and gets it back (`Idempotent-Replayed: true`); a
//! repeat while the first still runs gets 409 `conflict`; the same key with another
//! method, path or body is refused with 409 too (a client bug: it would get the answer
//! to a request it did not send).
//!
//! The work runs in a task of its own, so a client that hangs up does not cancel it
//! half-way: its answer is still stored for the retry. Answers worth running again
//! (409 `conflict`, 429, 5xx: the retry may succeed) are not kept; the key is freed.
//! Keys are per API key: two backends cannot collide.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::Reply;
use crate::backend::StateStore;

/// How long a `running` marker holds a key: longer than any request runs (script
/// limits, bounded commit retries, 2 s Redis timeouts), short enough that a node that
/// died mid-request does not block the key for the full 5 minutes.
const RUNNING_TTL: Duration = Duration::from_secs(60);
/// How long an answer is kept.
pub const KEEP: Duration = Duration::from_secs(300);
/// A key freed for a retry is overwritten with an entry that expires at once.
const FREED: Duration = Duration::from_millis(1);

/// What identifies a request, so a key reused for another one is caught.
pub fn fingerprint(method: &str, path: &str, body: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update(b" ");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body.to_string().as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn conflict(message: &str) -> Reply {
    Reply::error(StatusCode::CONFLICT, "conflict", message, Vec::new())
}

/// Answers not worth keeping: running the request again may go otherwise.
fn retryable(reply: &Reply) -> bool {
    reply.status == StatusCode::CONFLICT
        || reply.status == StatusCode::TOO_MANY_REQUESTS
        || reply.status.is_server_error()
}

/// Run `work` once per `(api key, idempotency key)`; without an idempotency key, just
/// run it.
pub async fn once<F>(
    store: Arc<dyn StateStore>,
    scope: &str,
    key: Option<String>,
    request: String,
    work: F,
) -> Reply
where
    F: Future<Output = Reply> + Send + 'static,
{
    let Some(key) = key else {
        return work.await;
    };
    let stored_key = format!("{scope}:{key}");
    let marker = json!({ "state": "running", "request": request }).to_string();
    let held = match store
        .idempotency_claim(&stored_key, &marker, RUNNING_TTL)
        .await
    {
        Ok(held) => held,
        Err(e) => return Reply::backend(&e),
    };
    if let Some(held) = held {
        return replay(&held, &request);
    }
    let finished = tokio::spawn(async move {
        let reply = work.await;
        let (value, ttl) = if retryable(&reply) {
            (String::new(), FREED)
        } else {
            let kept = json!({
                "state": "done",
                "request": request,
                "status": reply.status.as_u16(),
                "body": reply.body,
            });
            (kept.to_string(), KEEP)
        };
        if let Err(e) = store.idempotency_store(&stored_key, &value, ttl).await {
            // The answer goes back all the same; a retry then finds the `running`
            // marker until it expires, and is told `conflict`.
            tracing::warn!(error = %e, "could not store the answer of an idempotent request");
        }
        reply
    });
    finished.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "an idempotent request's task failed");
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "script_error",
            "internal error",
            Vec::new(),
        )
    })
}

/// The answer to a repeat, from what the key holds.
fn replay(held: &str, request: &str) -> Reply {
    let Ok(held) = serde_json::from_str::<Value>(held) else {
        return conflict("this Idempotency-Key holds something unreadable; use another key");
    };
    if held["request"].as_str() != Some(request) {
        return conflict("this Idempotency-Key was used for another request (method, path or body) in the last 5 minutes; use a new key");
    }
    if held["state"] == "running" {
        return conflict("a request with this Idempotency-Key is still running; retry later");
    }
    let status = held["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    Reply {
        status,
        body: held["body"].clone(),
        retry_after: None,
        replayed: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::delivery::{Router, Sink};

    #[tokio::test]
    async fn a_repeat_while_the_first_runs_is_a_conflict_then_a_replay() {
        let store: Arc<dyn StateStore> =
            Arc::new(MemoryBackend::new(Router::new() as Arc<dyn Sink>));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(once(
            store.clone(),
            "k",
            Some("id-1".into()),
            "req".into(),
            async move {
                let _ = released.await;
                Reply::ok(json!(1))
            },
        ));
        // The first has claimed the key and is waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let during = once(
            store.clone(),
            "k",
            Some("id-1".into()),
            "req".into(),
            async { Reply::ok(json!(2)) },
        )
        .await;
        assert_eq!(during.status, StatusCode::CONFLICT);
        assert!(during.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("still running")));
        let _ = release.send(());
        let done = first.await.expect("first");
        assert_eq!(done.body["data"], 1);
        let after = once(
            store.clone(),
            "k",
            Some("id-1".into()),
            "req".into(),
            async { Reply::ok(json!(3)) },
        )
        .await;
        assert!(after.replayed);
        assert_eq!(after.body["data"], 1);
    }

    #[tokio::test]
    async fn answers_worth_retrying_free_the_key() {
        let store: Arc<dyn StateStore> =
            Arc::new(MemoryBackend::new(Router::new() as Arc<dyn Sink>));
        let busy = once(store.clone(), "k", Some("id".into()), "req".into(), async {
            Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "down",
                Vec::new(),
            )
        })
        .await;
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let retry = once(store, "k", Some("id".into()), "req".into(), async {
            Reply::ok(json!("ran"))
        })
        .await;
        assert!(!retry.replayed);
        assert_eq!(retry.body["data"], "ran");
    }
}
