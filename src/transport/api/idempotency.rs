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

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::ApiError;
use super::model::{json_response, ApiResult};
use super::request::Authed;
use super::ApiState;
use crate::backend::Idempotency as KeyStore;
use crate::engine::ErrorCode;

/// Longest `Idempotency-Key`.
pub const MAX_KEY: usize = 255;
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

fn conflict(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message)
}

/// Answers not worth keeping: running the request again may go otherwise.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::invalid(
            "/header/Idempotency-Key",
            format!("`Idempotency-Key` must be 1 to {MAX_KEY} visible ASCII characters"),
        )),
    }
}

/// A request's `Idempotency-Key` (400 when malformed), with what running its work
/// once needs: the store that holds the keys, and the API key they belong to.
pub struct Idempotency {
    store: Arc<dyn KeyStore>,
    /// The API key's name: two backends' keys cannot collide.
    scope: String,
    key: Option<String>,
}

impl FromRequestParts<ApiState> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = key_of(&parts.headers)?;
        let Authed(api_key) = Authed::from_request_parts(parts, state).await?;
        Ok(Self {
            store: state.idempotency.clone(),
            scope: api_key.name.clone(),
            key,
        })
    }
}

impl Idempotency {
    /// Run `work` once per `(API key, idempotency key)`, `request` being the
    /// [`fingerprint`] of what it answers; without an idempotency key, just run it.
    pub async fn once<T, F>(self, request: String, work: F) -> Response
    where
        T: ToSchema + Serialize + Send + 'static,
        F: Future<Output = ApiResult<T>> + Send + 'static,
    {
        let Some(key) = self.key else {
            return work.await.into_response();
        };
        let stored_key = format!("{}:{key}", self.scope);
        let marker = json!({ "state": "running", "request": request }).to_string();
        let store = self.store;
        let held = match store.claim(&stored_key, &marker, RUNNING_TTL).await {
            Ok(held) => held,
            Err(e) => return ApiError::from(e).into_response(),
        };
        if let Some(held) = held {
            return replay(&held, &request);
        }
        let finished = tokio::spawn(async move {
            let answer = work.await;
            let (status, body) = match &answer {
                Ok(success) => (StatusCode::OK, success.body()),
                Err(error) => (error.status(), error.body()),
            };
            let (value, ttl) = if retryable(status) {
                (String::new(), FREED)
            } else {
                let kept = json!({
                    "state": "done",
                    "request": request,
                    "status": status.as_u16(),
                    "body": body,
                });
                (kept.to_string(), KEEP)
            };
            if let Err(e) = store.store(&stored_key, &value, ttl).await {
                // The answer goes back all the same; a retry then finds the `running`
                // marker until it expires, and is told `conflict`.
                tracing::warn!(error = %e, "could not store the answer of an idempotent request");
            }
            answer
        });
        match finished.await {
            Ok(answer) => answer.into_response(),
            Err(e) => {
                tracing::error!(error = %e, "an idempotent request's task failed");
                ApiError::new(ErrorCode::ScriptError, "internal error").into_response()
            }
        }
    }
}

/// The answer to a repeat, from what the key holds.
fn replay(held: &str, request: &str) -> Response {
    let Ok(held) = serde_json::from_str::<Value>(held) else {
        return conflict("this Idempotency-Key holds something unreadable; use another key")
            .into_response();
    };
    if held["request"].as_str() != Some(request) {
        return conflict("this Idempotency-Key was used for another request (method, path or body) in the last 5 minutes; use a new key").into_response();
    }
    if held["state"] == "running" {
        return conflict("a request with this Idempotency-Key is still running; retry later")
            .into_response();
    }
    let status = held["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = json_response(status, &held["body"]);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::delivery::{Router, Sink};
    use crate::transport::api::model::ok;

    /// What these tests look at in an answer.
    struct Seen {
        status: StatusCode,
        body: Value,
        replayed: bool,
    }

    async fn seen(response: Response) -> Seen {
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).expect("JSON");
        Seen {
            status,
            body,
            replayed,
        }
    }

    fn with_key(store: &Arc<dyn KeyStore>, key: &str) -> Idempotency {
        Idempotency {
            store: store.clone(),
            scope: "k".into(),
            key: Some(key.into()),
        }
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_runs_is_a_conflict_then_a_replay() {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryBackend::new(Router::new() as Arc<dyn Sink>));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(with_key(&store, "id-1").once("req".into(), async move {
            let _ = released.await;
            ok(1)
        }));
        // The first has claimed the key and is waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let during = with_key(&store, "id-1")
            .once("req".into(), async { ok(2) })
            .await;
        let during = seen(during).await;
        assert_eq!(during.status, StatusCode::CONFLICT);
        assert!(during.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("still running")));
        let _ = release.send(());
        let done = seen(first.await.expect("first")).await;
        assert_eq!(done.body["data"], 1);
        let after = with_key(&store, "id-1")
            .once("req".into(), async { ok(3) })
            .await;
        let after = seen(after).await;
        assert!(after.replayed);
        assert_eq!(after.body["data"], 1);
    }

    #[tokio::test]
    async fn answers_worth_retrying_free_the_key() {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryBackend::new(Router::new() as Arc<dyn Sink>));
        let busy = with_key(&store, "id")
            .once("req".into(), async {
                ApiResult::<String>::Err(ApiError::new(ErrorCode::Unavailable, "down"))
            })
            .await;
        assert_eq!(seen(busy).await.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let retry = with_key(&store, "id")
            .once("req".into(), async { ok("ran".to_string()) })
            .await;
        let retry = seen(retry).await;
        assert!(!retry.replayed);
        assert_eq!(retry.body["data"], "ran");
    }
}
