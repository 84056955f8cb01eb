//! Reading a request the way the API promises to: bodies bounded and parsed with the
//! place of a JSON error, parameters checked against what the OpenAPI document
//! declares, and every refusal a JSON error (never axum's plain-text rejections,
//! which a client of a JSON API cannot parse).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::error::Reply;
use super::keys::{ApiKey, Scope};

/// Longest room, user or connection name a path may carry, in characters (as the
/// OpenAPI document's `maxLength` counts them).
pub const MAX_NAME_CHARS: usize = 256;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// How long a body may take to arrive once its head has: the head's own timeout
/// (`--header-timeout`) stops at the head, and a body trickled a byte at a time would
/// otherwise hold its connection and task without end.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The key a request was authenticated with (put there by the auth middleware).
#[derive(Clone)]
pub struct Authed(pub Arc<ApiKey>);

impl Authed {
    /// 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Reply> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(Reply::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "API key `{}` lacks the `{}` scope",
                    self.0.name,
                    scope.as_str()
                ),
                Vec::new(),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Reply> {
        parts.extensions.get::<Authed>().cloned().ok_or_else(|| {
            Reply::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no API key",
                Vec::new(),
            )
        })
    }
}

/// The one path parameter of a route, percent-decoded and bounded.
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Reply> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Reply::invalid("", format!("bad path parameter: {e}")))?;
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(Reply::invalid(
                "",
                format!("a name in the path is 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        Ok(Name(name))
    }
}

/// Read a body of at most `limit` bytes as JSON. It must not be empty: an event
/// without a payload is sent with the body `null`, so a body lost on the way is not
/// taken for one.
pub async fn json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, Reply> {
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds the limit of {limit} bytes"),
            Vec::new(),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| too_large())?,
        Err(_) => {
            return Err(Reply::error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
                Vec::new(),
            ))
        }
    };
    parse_json(&bytes)
}

/// JSON text to a value; `bad_json` says where it went wrong.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Reply> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body is empty: send the payload as JSON (`null` for none)",
            vec![json!({ "line": 1, "column": 0, "message": "empty body" })],
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not valid JSON: {e}"),
            vec![json!({ "line": e.line(), "column": e.column(), "message": e.to_string() })],
        )
    })
}

/// An unsigned integer query parameter within `min..=max`, or `default` when absent.
pub fn query_u64(
    query: Option<&str>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, Reply> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            found = Some(value);
        }
    }
    let Some(text) = found else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Reply::invalid(
            &format!("/query/{name}"),
            format!("`{name}` must be a whole number from {min} to {max}"),
        )),
    }
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Reply> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_string()))
        }
        _ => Err(Reply::invalid(
            "/header/Idempotency-Key",
            format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ),
        )),
    }
}
