//! `/api`: the HTTP API for backends and operators, and its OpenAPI document.
//!
//! ```text
//! keys.rs         API keys and scopes; secrets compared as digests in constant time
//! request.rs      extractors: the key (`Authed`) and a scope it must have (`Needs<S>`),
//!                 a path name, a bounded JSON body; checked query parameters
//! error.rs        ApiError: the one place an error code gets its status and headers
//! idempotency.rs  the `Idempotency` extractor: first answer kept cluster-wide 5 minutes
//! events.rs       POST /api/events/{name}, POST /api/batch
//! directory.rs    rooms, histories, users; disconnects
//! fleet.rs        nodes, stats, whoami
//! model.rs        the answers' shapes, serialized and documented from one definition;
//!                 `ok()` and `ApiResult<T>`, what every handler returns
//! openapi.rs      GET /api/openapi.json: utoipa's document + the pack's API events
//! ```
//!
//! A handler takes what it needs as extractors, in the order its refusals are checked
//! (path, scope, `Idempotency-Key`, body), and answers `ApiResult<T>` with `?`; one
//! that takes an `Idempotency-Key` runs its body through `Idempotency::once`.
//!
//! Off unless a key is configured: with none, nothing is routed under `/api` (404),
//! so no deployment opens it by accident. Every request needs a key
//! (`Authorization: Bearer` or `X-API-Key`): 401 without one or with an unknown one;
//! each operation needs a scope of it (403 otherwise). The API reaches the rest of the
//! server through the engine (events run through [`Engine::handle_for`], the same
//! pipeline as a socket's), the store and bus behind it, and the node registry
//! ([`Fleet`]).

mod directory;
pub mod error;
mod events;
mod fleet;
mod idempotency;
pub mod keys;
mod model;
pub mod openapi;
pub mod request;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use parking_lot::Mutex;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::Idempotency;
use crate::cluster::Fleet;
use crate::engine::{Engine, RateBuckets};
use error::{ApiError, Code};
use keys::ApiKeys;
use request::Authed;

/// Everything the API's handlers share, cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub keys: Arc<ApiKeys>,
    pub fleet: Arc<Fleet>,
    /// Where `Idempotency-Key`s and their answers are kept, cluster-wide.
    pub idempotency: Arc<dyn Idempotency>,
    /// Largest request body (`--max-frame-bytes`, as for a socket's frame).
    pub max_body: usize,
    /// Token buckets of rate-limited events, per API key: at most one per key and
    /// event, so bounded by the configuration.
    buckets: Arc<Mutex<HashMap<String, RateBuckets>>>,
    /// The API's own routes, for the calls of a batch (set once they exist).
    router: Arc<OnceLock<axum::Router>>,
    /// The generated part of the OpenAPI document (set with the routes it describes).
    openapi: Arc<OnceLock<Value>>,
}

impl ApiState {
    pub fn new(
        engine: Arc<Engine>,
        keys: Arc<ApiKeys>,
        fleet: Arc<Fleet>,
        idempotency: Arc<dyn Idempotency>,
        max_body: usize,
    ) -> Self {
        Self {
            engine,
            keys,
            fleet,
            idempotency,
            max_body,
            buckets: Arc::default(),
            router: Arc::default(),
            openapi: Arc::default(),
        }
    }
}

/// The `/api` routes, or an empty router when no key is configured.
pub fn router(state: ApiState) -> axum::Router {
    if state.keys.is_empty() {
        return axum::Router::new();
    }
    let (routes, doc) =
        OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
            .routes(routes!(events::post_event))
            .routes(routes!(events::batch))
            .routes(routes!(directory::list_rooms))
            .routes(routes!(directory::room))
            .routes(routes!(directory::history))
            .routes(routes!(directory::user))
            .routes(routes!(directory::disconnect_conn))
            .routes(routes!(directory::disconnect_user))
            .routes(routes!(fleet::nodes))
            .routes(routes!(fleet::stats))
            .routes(routes!(fleet::whoami))
            .routes(routes!(openapi::document))
            .split_for_parts();
    let _ = state.openapi.set(openapi::base(doc));
    let app = routes
        .route("/api", any(not_found))
        // `{*rest}` needs at least one character: without this, `/api/` fell through
        // to axum's empty 404, not JSON (found by the `api_body` fuzz target).
        .route("/api/", any(not_found))
        .route("/api/{*rest}", any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state.clone());
    let _ = state.router.set(app.clone());
    app
}

/// Any other path under `/api`: a JSON 404.
async fn not_found() -> ApiError {
    ApiError::not_found("no such API operation: see /api/openapi.json")
}

/// A path of the API with a method it does not take: a JSON 405, where axum's own has
/// an empty body (found by the `api_body` fuzz target: `POST /api/users/{user}`).
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        "this API path does not take this method: see /api/openapi.json",
    )
}

/// Who is calling: the key from `Authorization: Bearer` or `X-API-Key`. 401 without a
/// known key. Calls of a batch already carry the batch's key.
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    if request.extensions().get::<Authed>().is_some() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let refuse = |message: &str| ApiError::new(Code::NoKey, message).into_response();
    let Some(presented) = presented else {
        return refuse(
            "an API key is required: `Authorization: Bearer <secret>` or `X-API-Key: <secret>`",
        );
    };
    let Some(key) = state.keys.find(presented) else {
        // Never the presented value: it may be a real secret sent to the wrong server.
        tracing::info!(path = %request.uri().path(), "API request refused: unknown key");
        metrics::counter!("wss_api_requests_total", "outcome" => "unauthorized").increment(1);
        return refuse("unknown API key");
    };
    request.extensions_mut().insert(Authed(key));
    let response = next.run(request).await;
    let outcome = if response.status().is_success() {
        "ok"
    } else {
        "error"
    };
    metrics::counter!("wss_api_requests_total", "outcome" => outcome).increment(1);
    response
}
