//! Why a request failed, and the one place that turns it into an answer:
//! `{"ok": false, "error": {"code", "message", "details"?}}` with the socket's error
//! codes, a real HTTP status and the headers that status calls for.
//!
//! | status | codes |
//! | --- | --- |
//! | 400 | `bad_json` (details: line, column), `bad_frame`, `invalid_payload` (details: path, message) |
//! | 401 | `unauthorized` (no key, or an unknown one), with `WWW-Authenticate` |
//! | 403 | `forbidden` (the key lacks the scope), `unauthorized` (an event that needs a user) |
//! | 404 | `unknown_event`, `not_found` |
//! | 405 | `method_not_allowed` |
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

use super::model::json_response;
use crate::backend::BackendError;
use crate::engine::{ErrorCode, Failure};

/// An error's code: the event pipeline's, or one only the API gives.
#[derive(Debug)]
pub enum Code {
    Engine(ErrorCode),
    /// `unauthorized` for the request itself (no key, or an unknown one): 401, where
    /// the engine's `unauthorized` (an event that needs a user) is 403.
    NoKey,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Timeout,
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        Code::Engine(code)
    }
}

impl Code {
    fn as_str(&self) -> &str {
        match self {
            Code::Engine(code) => code.as_str(),
            Code::NoKey => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Timeout => "timeout",
        }
    }
}

/// A failed request; handlers return it with `?`.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
    details: Vec<Value>,
    /// Seconds until a retry may succeed (`rate_limited`).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = details;
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// A request that does not fit its operation's schema (a parameter, a header).
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let detail = json!({ "path": path, "message": message });
        Self::new(ErrorCode::InvalidPayload, message).with_details(vec![detail])
    }

    pub fn status(&self) -> StatusCode {
        match &self.code {
            Code::NoKey => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Timeout => StatusCode::REQUEST_TIMEOUT,
            Code::Engine(code) => match code {
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
            },
        }
    }

    /// The answer's body, as a batch embeds it and an idempotency key keeps it.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "ok": false, "error": error })
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        let details = failure
            .details
            .iter()
            .map(|d| json!({ "path": d.path, "message": d.message }))
            .collect();
        let mut error = Self::new(failure.code, failure.message).with_details(details);
        error.retry_after = failure
            .retry_after
            .map(|wait| wait.as_secs_f64().ceil().max(1.0) as u64);
        error
    }
}

impl From<BackendError> for ApiError {
    /// Whatever the backend's error, the caller can only be told it is unavailable.
    fn from(e: BackendError) -> Self {
        Failure::from(BackendError::unavailable_because(e)).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status(), &self.body());
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self.code, Code::NoKey) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
