//! `/admin/`: the operators' dashboard. A plain page (HTML, CSS, JS) compiled into the
//! binary: nothing to deploy beside it, nothing fetched from elsewhere (its Content
//! Security Policy allows this origin only). It holds no data of its own: it signs in
//! with an `admin` key, which it keeps in the tab's `sessionStorage` (never a cookie,
//! so no other site can make the browser send it), and reads and acts through `/api`.
//!
//! Served only when the API has a key: without one it could do nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("admin.js");
const STYLE: &str = include_str!("admin.css");

pub fn router(enabled: bool) -> axum::Router {
    if !enabled {
        return axum::Router::new();
    }
    axum::Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/admin/admin.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/admin/admin.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // This origin only, no inline script, and never inside another site's frame (the
    // page can disconnect users: clickjacking is the threat).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
