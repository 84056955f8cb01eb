//! The plain HTTP endpoints beside `/ws`: liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if *state.shutdown.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !(state.ready)() {
        (StatusCode::SERVICE_UNAVAILABLE, "backend unavailable").into_response()
    } else {
        "ready".into_response()
    }
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
