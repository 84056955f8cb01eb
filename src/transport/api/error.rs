//! What the API answers: `{"ok": true, "data": …}`, or `{"ok": false, "error": {"code",
//! "message", "details"?}}` with the socket's error codes and a real HTTP status.
//!
//! | status | codes |
//! | --- | --- |
//! | 400 | `bad_json` (details: line, column), `bad_frame`, `invalid_payload` (details: path, message) |
//! | 401 | `unauthorized` (no key, or an unknown one) |
//! | 403 | `forbidden` (the key lacks the scope), `unauthorized` (an event that needs a user) |
//! | 404 | `unknown_event`, `not_found` |
//! | 408 | `timeout` (a body that did not arrive within 10 s) |
//! | 409 | `conflict` (a transaction that kept conflicting; an idempotency key in use) |
//! | 413 | `too_large` |
//! | 422 | any code a script passes to `reject` |
//! | 429 | `rate_limited`, with `Retry-After` |
//! | 500 | `script_error` |
//! | 503 | `unavailable` |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::backend::BackendError;
use crate::engine::{ErrorCode, Failure};

/// One answer of the API, before it is a response: kept as JSON so an idempotency key
/// can store it and a batch can embed it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds, for `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// The stored answer to an earlier request with the same `Idempotency-Key`.
    pub replayed: bool,
}

impl Reply {
    /// `{"ok": true, "data": data}`, 200.
    pub fn ok(data: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: json!({ "ok": true, "data": data }),
            retry_after: None,
            replayed: false,
        }
    }

    /// The error body for `code`, `message` and optional details.
    pub fn error(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        details: Vec<Value>,
    ) -> Self {
        let mut error = json!({ "code": code, "message": message.into() });
        if !details.is_empty() {
            error["details"] = Value::Array(details);
        }
        Self {
            status,
            body: json!({ "ok": false, "error": error }),
            retry_after: None,
            replayed: false,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::error(StatusCode::NOT_FOUND, "not_found", message, Vec::new())
    }

    /// A request that does not fit its operation's schema (a parameter, a header).
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::error(
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            message.clone(),
            vec![json!({ "path": path, "message": message })],
        )
    }

    /// A failure of the event pipeline, with the status its code calls for.
    pub fn failure(failure: &Failure) -> Self {
        let status = match &failure.code {
            ErrorCode::BadJson | ErrorCode::BadFrame | ErrorCode::InvalidPayload => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnknownEvent | ErrorCode::SessionExpired => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ScriptError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Custom(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let details = failure
            .details
            .iter()
            .map(|d| json!({ "path": d.path, "message": d.message }))
            .collect();
        let mut reply = Self::error(
            status,
            failure.code.as_str(),
            failure.message.clone(),
            details,
        );
        reply.retry_after = failure
            .retry_after
            .map(|wait| wait.as_secs_f64().ceil().max(1.0) as u64);
        reply
    }

    pub fn backend(e: &BackendError) -> Self {
        Self::failure(&Failure::from(BackendError::Unavailable(e.to_string())))
    }

    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body.to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// Handlers answer `Reply` either way; `?` on a failed step returns its error reply.
pub type ApiResult = Result<Reply, Reply>;

impl From<BackendError> for Reply {
    fn from(e: BackendError) -> Self {
        Reply::backend(&e)
    }
}

pub fn merge(result: ApiResult) -> Reply {
    result.unwrap_or_else(|e| e)
}
