//! HTTP API requests through the API's own router (auth, routes, bounded bodies, the
//! batch schema, events through the engine): `POST /api/events/{name}` and
//! `POST /api/batch`, whose calls reach every other route (rooms, history, users,
//! disconnects, nodes) with the paths and queries the fuzzer writes.
//!
//! The input's first line is the request path (anything not starting with `/api/` is
//! sent to `/api/batch`), the rest is the body.
//!
//! Unlike the other engine targets, one engine and API serve the whole process, as in
//! the server: the API's router holds its own state (a batch calls back into it), a
//! cycle that lives as long as the process, so a router per input would leak. State
//! thus accumulates across inputs; a crash almost always reproduces from its input
//! alone, and the assertions below hold for any state.
//!
//! Checked: nothing panics; no answer is a 500 but a script's failure; every answer is JSON `{"ok": …}`, with an
//! `error.code` when not ok.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_service::Service;
use wss_engine_fuzz::{runtime, World, API_SECRET};

fuzz_target!(|bytes: &[u8]| {
    let (path, body) = match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&b""[..], bytes),
    };
    let path = match std::str::from_utf8(path) {
        Ok(p) if p.starts_with("/api/") => p,
        _ => "/api/batch",
    };
    runtime().block_on(run(path, body.to_vec()));
});

fn api() -> axum::Router {
    static API: OnceLock<(World, axum::Router)> = OnceLock::new();
    API.get_or_init(|| {
        let world = World::new();
        let api = world.api();
        (world, api)
    })
    .1
    .clone()
}

async fn run(path: &str, body: Vec<u8>) {
    let mut api = api();
    let Ok(request) = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {API_SECRET}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
    else {
        return; // not a URI at all: hyper would have refused the request line
    };
    let Ok(response) = api.call(request).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("an answer's body");
    let text = String::from_utf8_lossy(&bytes);
    let answer: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {text}"));
    // A 500 is a bug, except `script_error`: the pack's script failed (here: a state
    // key over 256 bytes built from the payload), which the API reports as the server's.
    if status.as_u16() == 500 {
        assert_eq!(answer["error"]["code"], "script_error", "{path}: {text}");
    }
    match answer["ok"] {
        Value::Bool(true) => {}
        Value::Bool(false) => assert!(answer["error"]["code"].is_string(), "{path}: {text}"),
        _ => panic!("{path} answered {status} without `ok`: {text}"),
    }
}
