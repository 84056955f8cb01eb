//! Authentication at the upgrade (HS256 JWT via `?token=` or `Authorization: Bearer`)
//! and `auth: required` events.

mod support;

use serde_json::json;
use support::client::{token, Client};
use support::inprocess::start_with;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wss_engine::transport::auth::Auth;

const SECRET: &str = "test-secret-of-reasonable-length";

const PACK: &str = r#"
events:
  whoami:
    scope: local
    schema: {}
    script: |
      reply(#{ id: conn.id, user: conn.user, claims: conn.claims });
  members.only:
    scope: local
    schema: {}
    auth: required
    script: |
      reply(conn.user);
  to.me:
    description: delivers to every connection of the sender's user
    scope: local
    schema: {}
    to: "user:{{conn.user}}"
"#;

/// The HTTP status of a refused upgrade, failing if the upgrade succeeded.
async fn refused_status(request: impl IntoClientRequest + Unpin) -> u16 {
    match Client::open_request(request).await {
        Ok(_) => panic!("the upgrade should have been refused"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required_event_refuses_anonymous_and_accepts_a_token() {
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;

    let mut anon = server.connect().await;
    let err = anon.fail("members.only", json!({})).await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    anon.emit("members.only", json!({})).await;
    anon.recv_error("unauthorized").await;
    let me = anon.ok("whoami", json!({})).await;
    assert_eq!(me["user"], json!(null), "anonymous has no user: {me}");
    assert_eq!(me["id"], anon.conn.as_str());

    let url = format!("{}?token={}", server.url(), token(SECRET, "alice", 300));
    let mut alice = Client::connect(&url).await;
    assert_eq!(alice.ok("members.only", json!({})).await, "alice");
    let me = alice.ok("whoami", json!({})).await;
    assert_eq!(me["user"], "alice", "{me}");
    assert_eq!(me["claims"]["sub"], "alice", "{me}");
    assert_eq!(
        me["claims"]["role"], "tester",
        "claims are the token's: {me}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_authenticates_too() {
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    let mut request = server.url().into_client_request().expect("request");
    let value = format!("Bearer {}", token(SECRET, "bob", 300));
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&value).expect("header value"),
    );
    let ws = Client::open_request(request).await.expect("upgrade");
    let mut bob = Client::from_ws(ws).await;
    assert_eq!(bob.ok("members.only", json!({})).await, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_expired_tokens_get_401_at_the_upgrade() {
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    let base = server.url();
    let wrong_key = token("another-secret-entirely", "mallory", 300);
    let expired = token(SECRET, "alice", -600);
    for (what, tok) in [
        ("wrong signature", wrong_key.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not.a.jwt"),
        ("one segment", "abc"),
    ] {
        let status = refused_status(format!("{base}?token={tok}")).await;
        assert_eq!(status, 401, "{what}");
    }
    let mut request = base.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {expired}")).expect("header"),
    );
    assert_eq!(refused_status(request).await, 401, "expired bearer");

    // The server is unaffected.
    let mut ok = server.connect().await;
    assert_eq!(ok.ok("whoami", json!({})).await["user"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_auth_required_refuses_anonymous_upgrades() {
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), true)).await;
    assert_eq!(refused_status(server.url()).await, 401);
    let url = format!("{}?token={}", server.url(), token(SECRET, "carol", 300));
    let mut carol = Client::connect(&url).await;
    assert_eq!(carol.ok("members.only", json!({})).await, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_targets_reach_every_connection_of_that_user_only() {
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    let alice_url = format!("{}?token={}", server.url(), token(SECRET, "alice", 300));
    let bob_url = format!("{}?token={}", server.url(), token(SECRET, "bob", 300));
    let mut alice1 = Client::connect(&alice_url).await;
    let mut alice2 = Client::connect(&alice_url).await;
    let mut bob = Client::connect(&bob_url).await;

    alice1.ok("to.me", json!({ "n": 1 })).await;
    assert_eq!(alice1.recv_event("to.me").await, json!({ "n": 1 }));
    assert_eq!(alice2.recv_event("to.me").await, json!({ "n": 1 }));
    bob.expect_silence().await;

    // An anonymous sender has no user to resolve: the event fails, nothing is delivered.
    let mut anon = server.connect().await;
    let err = anon.fail("to.me", json!({})).await;
    assert_ne!(err["code"], json!(null), "{err}");
    alice1.expect_silence().await;
    drop(anon);

    // When alice's last connection closes, user:alice reaches nobody (no error either).
    alice2.close().await;
    alice1.ok("to.me", json!({ "n": 2 })).await;
    assert_eq!(alice1.recv_event("to.me").await, json!({ "n": 2 }));
    bob.expect_silence().await;
}
