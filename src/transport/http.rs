//! The plain HTTP endpoints beside `/ws`: liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// 200 when the node can serve, 503 otherwise; the body says why, which node this is
/// and which pack it serves (a rollout's progress, as a load balancer sees it).
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let (status, text) = if *state.shutdown.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !(state.ready)() {
        (StatusCode::SERVICE_UNAVAILABLE, "backend unavailable")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = serde_json::json!({
        "status": text,
        "node": &*state.engine.node_id,
        "pack": state.engine.pack().fingerprint,
    });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("wss_connections").set(state.engine.router().connection_count() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}
