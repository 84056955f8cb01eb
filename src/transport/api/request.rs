//! Reading a request the way the API promises to, mostly as extractors a handler
//! names among its arguments: the caller's key and the scope it needs, bodies bounded
//! and parsed with the place of a JSON error, parameters checked against what the
//! OpenAPI document declares, and every refusal a JSON error (never axum's plain-text
//! rejections, which a client of a JSON API cannot parse).

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde_json::{json, Value};

use super::error::{ApiError, Code};
use super::keys::{ApiKey, Scope};
use super::ApiState;
use crate::engine::ErrorCode;

/// Longest room, user or connection name a path may carry, in characters (as the
/// OpenAPI document's `maxLength` counts them).
pub const MAX_NAME_CHARS: usize = 256;
/// How long a body may take to arrive once its head has: the head's own timeout
/// (`--header-timeout`) stops at the head, and a body trickled a byte at a time would
/// otherwise hold its connection and task without end.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The key a request was authenticated with (put there by the auth middleware).
#[derive(Clone)]
pub struct Authed(pub Arc<ApiKey>);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Authed>()
            .cloned()
            .ok_or_else(|| ApiError::new(Code::NoKey, "no API key"))
    }
}

/// A scope as a type, so that a handler names the one it needs among its arguments.
pub trait ScopeType {
    const SCOPE: Scope;
}

pub struct Publish;
pub struct Read;
pub struct Admin;

impl ScopeType for Publish {
    const SCOPE: Scope = Scope::Publish;
}
impl ScopeType for Read {
    const SCOPE: Scope = Scope::Read;
}
impl ScopeType for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// The request's key, which has the scope `S`: 403 otherwise. Extractors run in the
/// order of the handler's arguments, so where it stands decides which refusal wins.
pub struct Needs<S> {
    pub key: Arc<ApiKey>,
    scope: PhantomData<S>,
}

impl<S: ScopeType, St: Send + Sync> FromRequestParts<St> for Needs<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        let Authed(key) = Authed::from_request_parts(parts, state).await?;
        if !key.allows(S::SCOPE) {
            let message = format!(
                "API key `{}` lacks the `{}` scope",
                key.name,
                S::SCOPE.as_str()
            );
            return Err(ApiError::new(Code::Forbidden, message));
        }
        Ok(Self {
            key,
            scope: PhantomData,
        })
    }
}

/// The one path parameter of a route, percent-decoded and bounded.
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid("", format!("bad path parameter: {e}")))?;
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid(
                "",
                format!("a name in the path is 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        Ok(Name(name))
    }
}

/// The body as JSON, of at most `--max-frame-bytes`. It must not be empty: an event
/// without a payload is sent with the body `null`, so a body lost on the way is not
/// taken for one.
pub struct JsonBody(pub Value);

impl FromRequest<ApiState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, ApiError> {
        let limit = state.max_body;
        let too_large = || {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("the body exceeds the limit of {limit} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let read = axum::body::to_bytes(request.into_body(), limit);
        let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, read).await else {
            return Err(ApiError::new(
                Code::Timeout,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        };
        parse_json(&read.map_err(|_| too_large())?).map(JsonBody)
    }
}

/// JSON text to a value; `bad_json` says where it went wrong.
fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            "the body is empty: send the payload as JSON (`null` for none)",
        )
        .with_details(vec![
            json!({ "line": 1, "column": 0, "message": "empty body" }),
        ]));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadJson,
            format!("the body is not valid JSON: {e}"),
        )
        .with_details(vec![
            json!({ "line": e.line(), "column": e.column(), "message": e.to_string() }),
        ])
    })
}

/// An unsigned integer query parameter within `min..=max`, or `default` when absent.
pub fn query_u64(
    query: Option<&str>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
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
        _ => Err(ApiError::invalid(
            &format!("/query/{name}"),
            format!("`{name}` must be a whole number from {min} to {max}"),
        )),
    }
}
