//! HTTP and WebSocket: the accept loop, the routes, and what each one serves.
//!
//! ```text
//! listener.rs  accept loop: HTTP/1 connections, request heads bounded in size and time
//! ws/          /ws: the upgrade, one task per socket, the protocol envelope
//! http.rs      /healthz, /readyz, /metrics
//! static_files.rs  `--static DIR`: a web page's files at `/`, the router's fallback
//! auth.rs      JWTs given at the upgrade
//! edge.rs      origins and connection limits at the upgrade
//! api/         /api: the HTTP API for backends (keys, events, rooms, users, nodes,
//!              batch, idempotency) and its OpenAPI document
//! admin/       /admin/: the operators' dashboard, a page embedded in the binary that
//!              reads and acts through /api
//! ```

mod admin;
pub mod api;
pub mod auth;
pub mod edge;
mod http;
pub mod listener;
pub mod static_files;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tokio::sync::watch;

use crate::delivery::WriteWindows;
use crate::engine::Engine;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Frames above this get `too_large`; the connection stays open.
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    /// Shortest time between two writes of one connection (see `--write-coalesce-ms`).
    pub write_coalesce: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            write_coalesce: Duration::from_millis(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub auth: Arc<auth::Auth>,
    /// Flips to `true` once shutdown starts: sockets close with 1001.
    pub shutdown: watch::Receiver<bool>,
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Shared by every connection's link; `None` when writes are not coalesced.
    pub windows: Option<Arc<WriteWindows>>,
    /// Origins and connection limits at the upgrade.
    pub gate: Arc<edge::Gate>,
    /// `--static DIR`: files served at `/` where no other route matches.
    pub static_files: Option<Arc<static_files::StaticFiles>>,
    /// The HTTP API (and the dashboard); off when it has no key.
    pub api: api::ApiState,
}

pub fn router(state: AppState) -> axum::Router {
    let api_on = !state.api.keys.is_empty();
    let api = api::router(state.api.clone());
    let router = axum::Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics));
    // A fallback, so every route (the API's and the dashboard's too) wins over a file of
    // the same name.
    let router = if state.static_files.is_some() {
        router.fallback(static_files::serve)
    } else {
        router
    };
    router
        .with_state(state)
        .merge(api)
        .merge(admin::router(api_on))
}
