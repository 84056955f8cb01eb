//! `POST /api/events/{name}`: an API event, run as a client's message is (schema,
//! script, commit, deliveries, the same error codes), for the caller `api:<key name>`;
//! and `POST /api/batch`: several calls in order, one answer each.

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_service::Service;

use super::error::Reply;
use super::idempotency::{self, fingerprint};
use super::keys::Scope;
use super::model::{BatchResult, ErrorReply, EventReply, Success};
use super::request::{idempotency_key, json_body, Authed, Name};
use super::ApiState;
use crate::config::Sender;
use crate::engine::Caller;

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
    authed: Authed,
    Name(name): Name,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    if let Err(reply) = authed.require(Scope::Publish) {
        return reply;
    }
    let idem = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let data = match json_body(&headers, body, state.max_body).await {
        Ok(data) => data,
        Err(reply) => return reply,
    };
    let request = fingerprint("POST", &format!("/api/events/{name}"), &data);
    let store = state.engine.store().clone();
    let key = authed.0.name.clone();
    idempotency::once(store, &key.clone(), idem, request, async move {
        run_event(&state, &key, &name, data).await
    })
    .await
}

async fn run_event(state: &ApiState, key: &str, event: &str, data: Value) -> Reply {
    let engine = &state.engine;
    // Only events with a rate limit touch the key's buckets (and their lock).
    if engine
        .pack()
        .event(event)
        .is_some_and(|def| def.rate_limit.is_some())
    {
        let mut buckets = state.buckets.lock();
        let buckets = buckets.entry(key.to_string()).or_default();
        if let Err(failure) = engine.take_token(buckets, Sender::Api, event) {
            return Reply::failure(&failure);
        }
    }
    let caller = Caller::api(key);
    match engine.handle_for(&caller, event, data).await {
        Ok(reply) => Reply::ok(reply.unwrap_or(Value::Null)),
        Err(failure) => Reply::failure(&failure),
    }
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
    headers: HeaderMap,
    request: Request<Body>,
) -> Reply {
    if request.extensions().get::<InBatch>().is_some() {
        return Reply::invalid("/path", "a batch cannot contain a batch");
    }
    let idem = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let body = match json_body(&headers, request.into_body(), state.max_body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    if let Some(validator) = BATCH_VALIDATOR.as_ref() {
        let details: Vec<Value> = validator
            .iter_errors(&body)
            .take(20)
            .map(|e| json!({ "path": e.instance_path().as_str(), "message": e.to_string() }))
            .collect();
        if !details.is_empty() {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "invalid_payload",
                "the batch does not match its schema",
                details,
            );
        }
    }
    let batch: Batch = match serde_json::from_value(body.clone()) {
        Ok(batch) => batch,
        Err(e) => return Reply::invalid("", format!("bad batch: {e}")),
    };
    let request = fingerprint("POST", "/api/batch", &body);
    let store = state.engine.store().clone();
    let key = authed.0.name.clone();
    idempotency::once(store, &key, idem, request, async move {
        let mut results = Vec::with_capacity(batch.calls.len());
        for call in batch.calls {
            let (status, body) = run_call(&state, &authed, call).await;
            results.push(BatchResult { status, body });
        }
        Reply::ok(serde_json::to_value(&results).unwrap_or(Value::Null))
    })
    .await
}

/// One call of a batch, through the API's own routes.
async fn run_call(state: &ApiState, authed: &Authed, call: Call) -> (u16, Value) {
    let refuse = |reply: Reply| (reply.status.as_u16(), reply.body);
    if !call.path.starts_with("/api/") {
        return refuse(Reply::invalid("/path", "a call's path starts with `/api/`"));
    }
    let Some(router) = state.router.get() else {
        return refuse(Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the API is starting",
            Vec::new(),
        ));
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
        Err(e) => return refuse(Reply::invalid("/path", format!("bad path: {e}"))),
    };
    request.extensions_mut().insert(authed.clone());
    request.extensions_mut().insert(InBatch);
    let mut router = router.clone();
    let Ok(response) = router.call(request).await;
    let status = response.status().as_u16();
    let body = match axum::body::to_bytes(response.into_body(), MAX_CALL_ANSWER).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => {
            return refuse(Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the call's answer exceeds {MAX_CALL_ANSWER} bytes; make it on its own"),
                Vec::new(),
            ))
        }
    };
    (status, body)
}
