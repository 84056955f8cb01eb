//! `POST /api/events/{name}`: an API event, run as a client's message is (schema,
//! script, commit, deliveries, the same error codes), for the caller `api:<key name>`;
//! and `POST /api/batch`: several calls in order, one answer each.

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, Request};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_service::Service;

use super::error::ApiError;
use super::idempotency::{fingerprint, Idempotency};
use super::model::{ok, ApiResult, BatchResult, ErrorReply, EventReply, Success};
use super::request::{Authed, JsonBody, Name, Needs, Publish};
use super::ApiState;
use crate::config::Sender;
use crate::engine::{Caller, ErrorCode};

/// Most calls in one batch.
pub const MAX_BATCH: usize = 100;
/// Largest answer one call of a batch may give (a long history page is the big one).
const MAX_CALL_ANSWER: usize = 4 << 20;

/// Send an API event
///
/// Runs the event exactly as a client's message: its payload is checked against the
/// event's schema, its script runs (`conn.id` is `api:<key name>`, `conn.user` is
/// null) and commits, and its deliveries go out. Answers the script's `reply` (or
/// `null`). Only events whose `senders` include `api` exist here; each one has a path
/// of its own in this document, with its payload schema.
#[utoipa::path(
    post,
    path = "/api/events/{name}",
    operation_id = "sendEvent",
    tag = "events",
    params(
        ("name" = String, Path, description = "The event's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Run at most once per key (per API key) for 5 minutes: a repeat gets the first answer back"),
    ),
    request_body(content = Object, description = "The event's payload (`data`)", content_type = "application/json"),
    responses(
        (status = 200, description = "The event ran: its reply", body = Success<EventReply>),
        (status = 400, description = "`bad_json`, or `invalid_payload` with one detail per schema error", body = ErrorReply),
    )
)]
pub async fn post_event(
    State(state): State<ApiState>,
    Name(name): Name,
    caller: Needs<Publish>,
    idempotency: Idempotency,
    JsonBody(data): JsonBody,
) -> Response {
    let request = fingerprint("POST", &format!("/api/events/{name}"), &data);
    idempotency
        .once(request, async move {
            run_event(&state, &caller.key.name, &name, data).await
        })
        .await
}

async fn run_event(state: &ApiState, key: &str, event: &str, data: Value) -> ApiResult<EventReply> {
    let engine = &state.engine;
    // Only events with a rate limit touch the key's buckets (and their lock).
    if engine
        .pack()
        .event(event)
        .is_some_and(|def| def.rate_limit.is_some())
    {
        let mut buckets = state.buckets.lock();
        let buckets = buckets.entry(key.to_string()).or_default();
        engine.take_token(buckets, Sender::Api, event)?;
    }
    let reply = engine.handle_for(&Caller::api(key), event, data).await?;
    ok(EventReply(reply.unwrap_or(Value::Null)))
}

/// The schema of a batch request, as documented and as checked (one definition).
pub static BATCH_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "type": "object",
        "required": ["calls"],
        "properties": {
            "calls": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": {
                    "type": "object",
                    "required": ["method", "path"],
                    "properties": {
                        "method": { "enum": ["GET", "POST"] },
                        "path": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 2048,
                            "description": "An API path, with its query: `/api/events/notify.user`, `/api/rooms/lobby/history?since=3`"
                        },
                        "body": { "description": "The call's JSON body (an event's payload)" }
                    },
                    "additionalProperties": false
                }
            }
        },
        "additionalProperties": false
    })
});

static BATCH_VALIDATOR: LazyLock<Option<jsonschema::Validator>> =
    LazyLock::new(|| jsonschema::validator_for(&BATCH_SCHEMA).ok());

#[derive(Deserialize)]
struct Batch {
    calls: Vec<Call>,
}

#[derive(Deserialize)]
struct Call {
    method: String,
    path: String,
    #[serde(default)]
    body: Option<Value>,
}

/// Marks a request made by a batch, so a batch cannot contain one.
#[derive(Clone)]
struct InBatch;

/// A request not made by a batch: a batch's call of `/api/batch` is refused.
pub struct Outermost;

impl<S: Send + Sync> FromRequestParts<S> for Outermost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.extensions.get::<InBatch>().is_some() {
            return Err(ApiError::invalid("/path", "a batch cannot contain a batch"));
        }
        Ok(Outermost)
    }
}

/// Run several calls
///
/// Runs each call in order, as if it were sent on its own with this request's API key
/// (each needs its own scope), and answers one result per call: its status and body.
/// A failed call does not stop the ones after it. An `Idempotency-Key` applies to the
/// batch as a whole.
#[utoipa::path(
    post,
    path = "/api/batch",
    operation_id = "batch",
    tag = "batch",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Run the batch at most once per key (per API key) for 5 minutes"),
    ),
    request_body(content = Object, description = "`{\"calls\": [{\"method\": \"POST\", \"path\": \"/api/events/x\", \"body\": {…}}, …]}`", content_type = "application/json"),
    responses(
        (status = 200, description = "One result per call, in order", body = Success<Vec<BatchResult>>),
    )
)]
pub async fn batch(
    State(state): State<ApiState>,
    authed: Authed,
    _: Outermost,
    idempotency: Idempotency,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if let Some(validator) = BATCH_VALIDATOR.as_ref() {
        let details: Vec<Value> = validator
            .iter_errors(&body)
            .take(20)
            .map(|e| json!({ "path": e.instance_path().as_str(), "message": e.to_string() }))
            .collect();
        if !details.is_empty() {
            let message = "the batch does not match its schema";
            return Err(ApiError::new(ErrorCode::InvalidPayload, message).with_details(details));
        }
    }
    let batch: Batch = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::invalid("", format!("bad batch: {e}")))?;
    let request = fingerprint("POST", "/api/batch", &body);
    let answer = idempotency.once(request, async move {
        let mut results = Vec::with_capacity(batch.calls.len());
        for call in batch.calls {
            let (status, body) = run_call(&state, &authed, call).await;
            results.push(BatchResult { status, body });
        }
        ok(results)
    });
    Ok(answer.await)
}

/// One call of a batch, through the API's own routes.
async fn run_call(state: &ApiState, authed: &Authed, call: Call) -> (u16, Value) {
    let refuse = |error: ApiError| (error.status().as_u16(), error.body());
    if !call.path.starts_with("/api/") {
        return refuse(ApiError::invalid(
            "/path",
            "a call's path starts with `/api/`",
        ));
    }
    let Some(router) = state.router.get() else {
        return refuse(ApiError::new(ErrorCode::Unavailable, "the API is starting"));
    };
    let method = if call.method == "POST" {
        Method::POST
    } else {
        Method::GET
    };
    let body = call.body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(&call.path)
        .header("content-type", "application/json")
        .body(Body::from(body));
    let mut request = match request {
        Ok(request) => request,
        Err(e) => return refuse(ApiError::invalid("/path", format!("bad path: {e}"))),
    };
    request.extensions_mut().insert(authed.clone());
    request.extensions_mut().insert(InBatch);
    let mut router = router.clone();
    let Ok(response) = router.call(request).await;
    let status = response.status().as_u16();
    let body = match axum::body::to_bytes(response.into_body(), MAX_CALL_ANSWER).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => {
            return refuse(ApiError::new(
                ErrorCode::TooLarge,
                format!("the call's answer exceeds {MAX_CALL_ANSWER} bytes; make it on its own"),
            ))
        }
    };
    (status, body)
}
