//! The HTTP API on one node (memory backend, in-process): keys and scopes, API events
//! run as a client's message, real statuses with the socket's codes, idempotency, the
//! directory, disconnects, batch, the OpenAPI document and the dashboard's assets.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::api::{request, Api};
use support::client::{token, Client};
use support::inprocess::{start_with, TestServer};
use wss_engine::server::ServerConfig;
use wss_engine::transport::api::keys::ApiKeys;
use wss_engine::transport::auth::Auth;

const JWT: &str = "test-secret-of-reasonable-length";
const ALL: &str = "all-scopes-secret-0001";
const READ: &str = "read-only-secret-00002";
const PUBLISH: &str = "publish-only-secret-03";

const PACK: &str = r#"
rooms:
  "feed": { history: { size: 10, ttl: 60 } }
events:
  room.join:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string } } }
    script: |
      join(data.room);
  notify.user:
    description: Tell a user something.
    senders: [api]
    scope: cluster
    schema:
      type: object
      required: [user, text]
      properties: { user: { type: string }, text: { type: string, minLength: 1 } }
      additionalProperties: false
    to: "user:{{data.user}}"
  feed.post:
    senders: [clients, api]
    scope: cluster
    schema: { type: object, required: [text], properties: { text: { type: string } } }
    to: "room:feed"
  client.only:
    scope: local
    schema: {}
  limited:
    senders: [api]
    scope: local
    schema: {}
    rate_limit: { per_second: 0.5, burst: 2 }
  counter.add:
    senders: [api]
    scope: local
    schema: { type: object }
    keys: ["n"]
    script: |
      let n = state.incr("n", 1);
      reply(#{ n: n, conn: conn.id, user: conn.user });
  api.join:
    senders: [api]
    scope: local
    schema: {}
    script: |
      join("x");
  refuse:
    senders: [api]
    scope: local
    schema: {}
    script: |
      reject("out_of_stock", "no more");
"#;

fn keys() -> ApiKeys {
    let specs = [
        format!("ops={ALL}"),
        format!("reader={READ}:read"),
        format!("publisher={PUBLISH}:publish"),
    ];
    let specs: Vec<_> = specs.iter().map(|s| s.parse().expect("a key")).collect();
    ApiKeys::load(&specs, None).expect("keys")
}

async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_with(PACK, |config| {
        config.api_keys = keys();
        config.auth = Auth::new(Some(JWT), false);
        adjust(config);
    })
    .await
}

async fn connect_as(server: &TestServer, user: &str) -> Client {
    Client::connect(&format!("{}?token={}", server.url(), token(JWT, user, 300))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_configured_nothing_is_open() {
    let server = start_with(PACK, |_| {}).await;
    for (method, path) in [
        ("GET", "/api/whoami"),
        ("GET", "/api/openapi.json"),
        ("POST", "/api/events/notify.user"),
        ("GET", "/admin/"),
    ] {
        let answer = request(server.addr, method, path, &[("X-API-Key", ALL)], None).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_scopes_enforced() {
    let server = start(|_| {}).await;
    let none = request(server.addr, "GET", "/api/whoami", &[], None).await;
    assert_eq!(none.status, 401, "{}", none.text);
    assert_eq!(none.code(), "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = request(
        server.addr,
        "GET",
        "/api/whoami",
        &[("Authorization", "Bearer all-scopes-secret-0002")],
        None,
    )
    .await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized"));
    // A known secret under another scheme is not a key either.
    let basic = request(
        server.addr,
        "GET",
        "/api/whoami",
        &[("Authorization", &format!("Basic {ALL}"))],
        None,
    )
    .await;
    assert_eq!(basic.status, 401);

    let me = request(
        server.addr,
        "GET",
        "/api/whoami",
        &[("X-API-Key", READ)],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(
        me.body["data"],
        json!({"key": "reader", "scopes": ["read"]})
    );

    let reader = Api::new(server.addr, READ);
    let denied = reader
        .post("/api/events/notify.user", r#"{"user":"a","text":"b"}"#)
        .await;
    assert_eq!(
        (denied.status, denied.code()),
        (403, "forbidden"),
        "{}",
        denied.text
    );
    assert_eq!(reader.get("/api/nodes").await.status, 200);
    let kick = reader.post("/api/users/alice/disconnect", "null").await;
    assert_eq!(kick.status, 403);

    let publisher = Api::new(server.addr, PUBLISH);
    assert_eq!(publisher.get("/api/rooms/feed").await.status, 403);
    let sent = publisher
        .post("/api/events/notify.user", r#"{"user":"a","text":"b"}"#)
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_event_runs_like_a_clients_and_only_its_senders_see_it() {
    let server = start(|_| {}).await;
    let api = Api::new(server.addr, ALL);
    let mut alice = connect_as(&server, "alice").await;

    assert_eq!(
        api.send("notify.user", json!({"user": "alice", "text": "shipped"}))
            .await,
        Value::Null
    );
    let got = alice.recv_event("notify.user").await;
    assert_eq!(got, json!({"user": "alice", "text": "shipped"}));

    // Clients do not learn that an API-only event exists.
    let err = alice
        .fail("notify.user", json!({"user": "alice", "text": "x"}))
        .await;
    assert_eq!(err["code"], "unknown_event", "{err}");
    assert_eq!(err["message"], "unknown event `notify.user`");
    let misspelt = alice.fail("notify.usr", json!({})).await;
    assert_eq!(misspelt["message"], "unknown event `notify.usr`");

    // And the API refuses a clients-only event as unknown.
    let refused = api.post("/api/events/client.only", "{}").await;
    assert_eq!((refused.status, refused.code()), (404, "unknown_event"));

    // Scripts see `api:<key>` and no user.
    let reply = api.send("counter.add", json!({})).await;
    assert_eq!(reply, json!({"n": 1, "conn": "api:ops", "user": null}));

    // An event both may send reaches the room from either.
    alice.ok("room.join", json!({"room": "feed"})).await;
    api.send("feed.post", json!({"text": "from the API"})).await;
    let post = alice.recv().await;
    assert_eq!(post["event"], "feed.post");
    assert_eq!(post["data"]["text"], "from the API");
    assert_eq!(post["offset"], 1);
    alice.ok("feed.post", json!({"text": "from alice"})).await;
    let own = alice.recv().await;
    assert_eq!(
        (&own["data"]["text"], &own["offset"]),
        (&json!("from alice"), &json!(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_real_statuses_and_the_sockets_codes() {
    let server = start(|config| config.limits.max_frame_bytes = 1024).await;
    let api = Api::new(server.addr, ALL);

    let bad = api
        .post(
            "/api/events/notify.user",
            "{\n  \"user\": \"a\",\n  oops\n}",
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "bad_json"), "{}", bad.text);
    assert_eq!(bad.body["error"]["details"][0]["line"], 3);
    assert_eq!(bad.body["error"]["details"][0]["column"], 3);

    let invalid = api
        .post("/api/events/notify.user", r#"{"user": 7, "text": ""}"#)
        .await;
    assert_eq!((invalid.status, invalid.code()), (400, "invalid_payload"));
    let paths: Vec<&str> = invalid.body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(paths, ["/user", "/text"], "{}", invalid.text);

    let empty = api.post("/api/events/notify.user", "").await;
    assert_eq!((empty.status, empty.code()), (400, "bad_json"));

    let big = format!(r#"{{"user": "a", "text": "{}"}}"#, "x".repeat(2000));
    let too_large = api.post("/api/events/notify.user", &big).await;
    assert_eq!((too_large.status, too_large.code()), (413, "too_large"));

    let unknown = api.post("/api/events/nope", "{}").await;
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_event"));
    let no_route = api.get("/api/nothing/here").await;
    assert_eq!((no_route.status, no_route.code()), (404, "not_found"));
    // Found by the `api_body` fuzz target: `/api/` answered an empty 404, not JSON.
    for answer in [
        api.post("/api/", "{}").await,
        api.get("/api/").await,
        api.get("/api").await,
    ] {
        assert_eq!(
            (answer.status, answer.code()),
            (404, "not_found"),
            "{}",
            answer.text
        );
    }
    // Found by `api_body` too: a path with a method it does not take answered an empty 405.
    let wrong_method = api.post("/api/users/someone", "{}").await;
    assert_eq!(
        (wrong_method.status, wrong_method.code()),
        (405, "method_not_allowed"),
        "{}",
        wrong_method.text
    );

    let rejected = api.post("/api/events/refuse", "{}").await;
    assert_eq!((rejected.status, rejected.code()), (422, "out_of_stock"));

    // join/leave have no connection to act on: a clear script error.
    let join = api.post("/api/events/api.join", "{}").await;
    assert_eq!((join.status, join.code()), (500, "script_error"));
    assert!(
        join.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("API call, which has no connection")),
        "{}",
        join.text
    );

    // The event's rate limit applies per API key: two in a burst, then 429.
    for _ in 0..2 {
        assert_eq!(api.post("/api/events/limited", "{}").await.status, 200);
    }
    let limited = api.post("/api/events/limited", "{}").await;
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    let wait: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Another key has its own bucket.
    let other = Api::new(server.addr, PUBLISH);
    assert_eq!(other.post("/api/events/limited", "{}").await.status, 200);

    let bad_query = api.get("/api/rooms/feed/history?limit=0").await;
    assert_eq!(
        (bad_query.status, bad_query.code()),
        (400, "invalid_payload")
    );
    let long = format!("/api/rooms/{}", "r".repeat(257));
    assert_eq!(api.get(&long).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_runs_a_request_once() {
    let server = start(|_| {}).await;
    let api = Api::new(server.addr, ALL);
    let once = [("Idempotency-Key", "order-7")];
    let first = api.post_with("/api/events/counter.add", &once, "{}").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = api.post_with("/api/events/counter.add", &once, "{}").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the first answer, not a second run");
    assert_eq!(api.send("counter.add", json!({})).await["n"], 2);

    let other_body = api
        .post_with("/api/events/counter.add", &once, r#"{"x": 1}"#)
        .await;
    assert_eq!((other_body.status, other_body.code()), (409, "conflict"));
    // Keys are per API key: another key's `order-7` is its own.
    let other_key = Api::new(server.addr, PUBLISH)
        .post_with("/api/events/counter.add", &once, "{}")
        .await;
    assert_eq!(other_key.header("idempotent-replayed"), None);
    assert_eq!(other_key.body["data"]["n"], 3);

    // Errors are kept too, except those worth retrying.
    let bad = [("Idempotency-Key", "bad-1")];
    let invalid = api.post_with("/api/events/notify.user", &bad, "{}").await;
    let replay = api.post_with("/api/events/notify.user", &bad, "{}").await;
    assert_eq!((invalid.status, replay.status), (400, 400));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    let malformed = api
        .post_with(
            "/api/events/counter.add",
            &[("Idempotency-Key", &"k".repeat(256))],
            "{}",
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (400, "invalid_payload")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_history_users_and_disconnects() {
    let server = start(|_| {}).await;
    let api = Api::new(server.addr, ALL);
    let mut alice = connect_as(&server, "alice").await;
    let mut alice2 = connect_as(&server, "alice").await;
    let mut bob = connect_as(&server, "bob").await;
    alice.ok("room.join", json!({"room": "feed"})).await;
    bob.ok("room.join", json!({"room": "feed"})).await;
    bob.ok("room.join", json!({"room": "plain"})).await;

    let room = api.get("/api/rooms/feed").await;
    assert_eq!(room.status, 200, "{}", room.text);
    let mut members = vec![alice.conn.clone(), bob.conn.clone()];
    members.sort();
    assert_eq!(room.body["data"]["members"], json!(members));
    assert_eq!(room.body["data"]["count"], 2);
    assert_eq!(room.body["data"]["history"]["offset"], 0);
    let plain = api.get("/api/rooms/plain").await;
    assert_eq!(plain.body["data"]["history"], Value::Null);

    for text in ["one", "two", "three"] {
        api.send("feed.post", json!({ "text": text })).await;
    }
    let page = api.get("/api/rooms/feed/history?since=1&limit=5").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let data = &page.body["data"];
    assert_eq!(data["offset"], 3);
    assert_eq!(data["complete"], true);
    let texts: Vec<&str> = data["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["data"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, ["two", "three"]);
    assert_eq!(
        data["deliveries"][0],
        json!({"event": "feed.post", "data": {"text": "two"}, "room": "feed", "offset": 2}),
        "as the members received it"
    );
    let none = api.get("/api/rooms/plain/history").await;
    assert_eq!((none.status, none.code()), (404, "not_found"));

    let busiest = api.get("/api/rooms?limit=1").await;
    assert_eq!(
        busiest.body["data"]["rooms"],
        json!([{"room": "feed", "members": 2, "history": {"epoch": data["epoch"], "offset": 3}}])
    );

    let user = api.get("/api/users/alice").await;
    let conns: Vec<&str> = user.body["data"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or(""))
        .collect();
    let mut expected = vec![alice.conn.as_str(), alice2.conn.as_str()];
    expected.sort();
    assert_eq!(conns, expected);
    assert_eq!(
        api.get("/api/users/nobody").await.body["data"]["connections"],
        json!([])
    );

    let kicked = api
        .post(&format!("/api/connections/{}/disconnect", bob.conn), "null")
        .await;
    assert_eq!(kicked.status, 200, "{}", kicked.text);
    assert_eq!(
        bob.recv_close_code(4001).await,
        "disconnected by the server"
    );
    let gone = api
        .post(&format!("/api/connections/{}/disconnect", bob.conn), "null")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gone = if gone.status == 200 {
        // The close may still have been in progress; by now it is done.
        api.post(&format!("/api/connections/{}/disconnect", bob.conn), "null")
            .await
    } else {
        gone
    };
    assert_eq!((gone.status, gone.code()), (404, "not_found"));

    let all = api.post("/api/users/alice/disconnect", "null").await;
    assert_eq!(
        all.body["data"],
        json!({"user": "alice", "disconnected": 2})
    );
    alice.recv_close_code(4001).await;
    alice2.recv_close_code(4001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_calls_in_order_with_one_result_each() {
    let server = start(|_| {}).await;
    let api = Api::new(server.addr, ALL);
    let batch = json!({"calls": [
        {"method": "POST", "path": "/api/events/counter.add", "body": {}},
        {"method": "POST", "path": "/api/events/notify.user", "body": {"user": 1}},
        {"method": "GET", "path": "/api/rooms/feed/history?since=0"},
        {"method": "POST", "path": "/api/events/counter.add", "body": {}},
        {"method": "POST", "path": "/api/batch", "body": {"calls": []}},
    ]});
    let answer = api.post("/api/batch", &batch.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let results = answer.body["data"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 400, 200, 200, 400]);
    assert_eq!(results[0]["body"]["data"]["n"], 1);
    assert_eq!(results[1]["body"]["error"]["code"], "invalid_payload");
    assert_eq!(results[3]["body"]["data"]["n"], 2);

    // Each call needs its own scope.
    let reader = Api::new(server.addr, READ);
    let mixed = reader
        .post(
            "/api/batch",
            &json!({"calls": [
                {"method": "GET", "path": "/api/rooms/feed"},
                {"method": "POST", "path": "/api/events/counter.add", "body": {}},
            ]})
            .to_string(),
        )
        .await;
    let statuses: Vec<u64> = mixed.body["data"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [200, 403]);

    let calls: Vec<Value> = (0..101)
        .map(|_| json!({"method": "GET", "path": "/api/whoami"}))
        .collect();
    let too_many = api
        .post("/api/batch", &json!({ "calls": calls }).to_string())
        .await;
    assert_eq!((too_many.status, too_many.code()), (400, "invalid_payload"));
    let wrong = api
        .post(
            "/api/batch",
            r#"{"calls": [{"method": "DELETE", "path": "/api/x"}]}"#,
        )
        .await;
    assert_eq!(wrong.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_has_a_path_for_each_api_event() {
    let server = start(|_| {}).await;
    let doc = Api::new(server.addr, READ).get("/api/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let doc = doc.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for event in [
        "notify.user",
        "feed.post",
        "counter.add",
        "limited",
        "refuse",
    ] {
        assert!(
            paths.contains_key(&format!("/api/events/{event}")),
            "{event}"
        );
    }
    for absent in [
        "/api/events/client.only",
        "/api/events/room.join",
        "/api/events/{name}",
    ] {
        assert!(!paths.contains_key(absent), "{absent}");
    }
    let notify = &paths["/api/events/notify.user"]["post"];
    assert_eq!(
        notify["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["user", "text"])
    );
    assert!(notify["description"]
        .as_str()
        .is_some_and(|d| d.starts_with("Tell a user something.")));
    assert_eq!(
        notify["responses"]["429"]["headers"]["Retry-After"]["required"],
        true
    );
    for path in [
        "/api/rooms",
        "/api/rooms/{room}",
        "/api/rooms/{room}/history",
        "/api/users/{user}",
        "/api/users/{user}/disconnect",
        "/api/connections/{id}/disconnect",
        "/api/nodes",
        "/api/stats",
        "/api/batch",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let server = start(|_| {}).await;
    let page = request(server.addr, "GET", "/admin/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("<script src=\"/admin/admin.js\""));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    for asset in ["/admin/admin.js", "/admin/admin.css"] {
        assert_eq!(
            request(server.addr, "GET", asset, &[], None).await.status,
            200
        );
    }
    let redirect = request(server.addr, "GET", "/admin", &[], None).await;
    assert_eq!(redirect.status, 308);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_nodes_for_the_dashboard() {
    let server = start(|_| {}).await;
    let api = Api::new(server.addr, ALL);
    api.send("counter.add", json!({})).await;
    api.post("/api/events/notify.user", "{}").await;
    let stats = api.get("/api/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.text);
    let total = &stats.body["data"]["total"];
    assert!(total["events_total"].as_u64() >= Some(2), "{total}");
    assert!(
        total["errors"]["invalid_payload"].as_u64() >= Some(1),
        "{total}"
    );
    let nodes = api.get("/api/nodes").await;
    let node = &nodes.body["data"]["nodes"][0];
    assert_eq!(node["this"], true);
    assert_eq!(node["ready"], true);
    assert_eq!(node["addr"], server.addr.to_string());
    assert_eq!(nodes.body["data"]["packs"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_answered_with_a_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/events/counter.add HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALL}\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 20 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
}
