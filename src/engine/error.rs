//! The error codes of the client protocol and the failure a client is told about.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadFrame,
    TooLarge,
    UnknownEvent,
    InvalidPayload,
    Unauthorized,
    RateLimited,
    ScriptError,
    Conflict,
    Unavailable,
    /// `$resume` named a session that is unknown or past its resume TTL.
    SessionExpired,
    /// A code chosen by a script with `reject(code, message)`.
    #[serde(untagged)]
    Custom(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadFrame => "bad_frame",
            Self::TooLarge => "too_large",
            Self::UnknownEvent => "unknown_event",
            Self::InvalidPayload => "invalid_payload",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::ScriptError => "script_error",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::SessionExpired => "session_expired",
            Self::Custom(code) => code,
        }
    }
}

/// One schema violation: where in `data` (JSON Pointer) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
    /// For `rate_limited`: when a token is there again (the API's `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }
}

impl From<crate::backend::BackendError> for Failure {
    /// Whatever goes wrong between the engine and its backend (unreachable, or a reply
    /// it did not expect), the client can only be told the service is unavailable.
    fn from(e: crate::backend::BackendError) -> Self {
        let code = match e {
            // The pack's mistake, not the backend's: the client learns which keys.
            crate::backend::BackendError::CrossSlot { .. } => ErrorCode::ScriptError,
            _ => ErrorCode::Unavailable,
        };
        Failure::new(code, e.to_string())
    }
}
