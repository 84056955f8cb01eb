//! Where a handled event goes: every `to` target (with templates), `exclude_sender`,
//! `emit_as`, and the `$connect`/`$disconnect` hooks.

mod support;

use std::time::Duration;

use serde_json::json;
use support::client::{token, Client};
use support::inprocess::{start, start_with};
use wss_engine::transport::auth::Auth;

const PACK: &str = r#"
events:
  join:
    scope: local
    schema: { type: object, required: [room] }
    script: |
      join(data.room);
  to.room:
    scope: local
    schema: { type: object, required: [room] }
    to: "room:{{data.room}}"
  to.room.cluster:
    scope: cluster
    schema: { type: object, required: [room] }
    to: "room:{{data.room}}"
  to.room.others:
    scope: local
    schema: { type: object, required: [room] }
    to: "room:{{data.room}}"
    exclude_sender: true
  to.all:
    scope: local
    schema: {}
    to: all
  to.all.others:
    scope: cluster
    schema: {}
    to: all
    exclude_sender: true
  to.sender:
    scope: local
    schema: {}
    to: sender
  to.sender.excluded:
    description: excluding the only recipient delivers nothing
    scope: local
    schema: {}
    to: sender
    exclude_sender: true
  to.conn:
    scope: local
    schema: { type: object, required: [conn] }
    to: "conn:{{data.conn}}"
  to.user:
    scope: local
    schema: { type: object, required: [user] }
    to: "user:{{data.user}}"
  to.nested:
    scope: local
    schema: {}
    to: "room:{{data.where.room}}-x"
  to.none:
    scope: local
    schema: {}
    to: none
  renamed:
    scope: local
    schema: {}
    to: "room:{{data.room}}"
    emit_as: chat.renamed
  cluster.with.state:
    description: cluster scope whose deliveries travel inside the commit
    scope: cluster
    schema: { type: object, required: [room] }
    to: "room:{{data.room}}"
    script: |
      data.seq = state.incr("seq", 1);
  online:
    scope: local
    schema: {}
    script: |
      reply(state.get("online"));
"#;

/// Three clients: `a` and `b` in room `r`, `c` outside.
async fn three(server: &support::inprocess::TestServer) -> (Client, Client, Client) {
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let c = server.connect().await;
    a.ok("join", json!({ "room": "r" })).await;
    b.ok("join", json!({ "room": "r" })).await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_targets_with_and_without_the_sender() {
    let server = start(PACK).await;
    let (mut a, mut b, mut c) = three(&server).await;

    for event in ["to.room", "to.room.cluster", "cluster.with.state"] {
        a.ok(event, json!({ "room": "r", "t": event })).await;
        let got_a = a.recv_event(event).await;
        let got_b = b.recv_event(event).await;
        assert_eq!(got_a["t"], event);
        assert_eq!(got_a, got_b, "every member gets the same data");
        c.expect_silence().await;
    }

    // exclude_sender: the other member only.
    a.ok("to.room.others", json!({ "room": "r" })).await;
    assert_eq!(b.recv_event("to.room.others").await, json!({ "room": "r" }));
    a.expect_silence().await;
    c.expect_silence().await;

    // A non-member may send to a room (the pack decides who may; this one lets anyone).
    c.ok("to.room", json!({ "room": "r", "from": "c" })).await;
    assert_eq!(a.recv_event("to.room").await["from"], "c");
    assert_eq!(b.recv_event("to.room").await["from"], "c");
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sender_conn_none_targets() {
    let server = start(PACK).await;
    let (mut a, mut b, mut c) = three(&server).await;

    a.ok("to.all", json!({ "n": 1 })).await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.recv_event("to.all").await, json!({ "n": 1 }));
    }
    a.ok("to.all.others", json!({ "n": 2 })).await;
    assert_eq!(b.recv_event("to.all.others").await, json!({ "n": 2 }));
    assert_eq!(c.recv_event("to.all.others").await, json!({ "n": 2 }));
    a.expect_silence().await;

    b.ok("to.sender", json!({ "n": 3 })).await;
    assert_eq!(b.recv_event("to.sender").await, json!({ "n": 3 }));
    b.ok("to.sender.excluded", json!({})).await;
    for x in [&mut a, &mut b, &mut c] {
        x.expect_silence().await;
    }

    let target = c.conn.clone();
    a.ok("to.conn", json!({ "conn": target })).await;
    assert_eq!(c.recv_event("to.conn").await["conn"], target);
    a.ok("to.none", json!({})).await;
    for x in [&mut a, &mut b, &mut c] {
        x.expect_silence().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_read_nested_data_and_missing_fields_are_invalid() {
    let server = start(PACK).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    b.ok("join", json!({ "room": "deep-x" })).await;
    a.ok("to.nested", json!({ "where": { "room": "deep" } }))
        .await;
    assert_eq!(
        b.recv_event("to.nested").await,
        json!({ "where": { "room": "deep" } })
    );

    // The target cannot be resolved without the field: the client is told, nothing sent.
    let err = a.fail("to.nested", json!({ "elsewhere": 1 })).await;
    assert_eq!(err["code"], "invalid_payload", "{err}");
    assert_eq!(err["details"][0]["path"], "/where/room", "{err}");
    b.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_template_target() {
    const SECRET: &str = "delivery-test-secret";
    let server = start_with(PACK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    let mut dana = Client::connect(&format!(
        "{}?token={}",
        server.url(),
        token(SECRET, "dana", 60)
    ))
    .await;
    let mut anon = server.connect().await;
    anon.ok("to.user", json!({ "user": "dana", "hi": true }))
        .await;
    assert_eq!(dana.recv_event("to.user").await["hi"], true);
    anon.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_as_renames_the_delivery() {
    let server = start(PACK).await;
    let (mut a, mut b, _c) = three(&server).await;
    a.ok("renamed", json!({ "room": "r", "x": 1 })).await;
    for x in [&mut a, &mut b] {
        let frame = x.recv().await;
        assert_eq!(
            frame,
            json!({ "event": "chat.renamed", "data": { "room": "r", "x": 1 } })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_deliveries_keep_commit_order() {
    // Deliveries published inside the commit reach members in commit order.
    let server = start(PACK).await;
    let (mut a, mut b, _c) = three(&server).await;
    for _ in 0..20 {
        a.emit("cluster.with.state", json!({ "room": "r" })).await;
    }
    let mut last = 0;
    for _ in 0..20 {
        let seq = b.recv_event("cluster.with.state").await["seq"]
            .as_i64()
            .expect("seq");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    assert_eq!(last, 20);
    for _ in 0..20 {
        a.recv_event("cluster.with.state").await;
    }
}

const HOOKS: &str = r#"
events:
  online:
    scope: local
    schema: {}
    script: |
      reply(#{ online: state.get("online"), seen: state.scard("seen"), rooms: conn.rooms });
  $connect:
    script: |
      state.incr("online", 1);
      state.sadd("seen", conn.id);
      join("everyone");
      emit("room:everyone", "arrived", #{ conn: conn.id });
  $disconnect:
    script: |
      state.incr("online", -1);
      emit("room:everyone", "left", #{ conn: conn.id });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_hooks() {
    let server = start(HOOKS).await;
    let mut a = server.connect().await;
    // $connect joined the room, then its emit reached the new member itself.
    assert_eq!(a.recv_event("arrived").await, json!({ "conn": a.conn }));
    let status = a.ok("online", json!({})).await;
    assert_eq!(
        status,
        json!({ "online": 1, "seen": 1, "rooms": ["everyone"] })
    );

    let mut b = server.connect().await;
    assert_eq!(a.recv_event("arrived").await, json!({ "conn": b.conn }));
    assert_eq!(b.recv_event("arrived").await, json!({ "conn": b.conn }));
    assert_eq!(a.ok("online", json!({})).await["online"], 2);

    let b_conn = b.conn.clone();
    b.close().await;
    assert_eq!(a.recv_event("left").await, json!({ "conn": b_conn }));
    assert_eq!(a.ok("online", json!({})).await["online"], 1);

    // A connection that just vanishes (no close frame) runs $disconnect too.
    let c = server.connect().await;
    let c_conn = c.conn.clone();
    assert_eq!(a.recv_event("arrived").await, json!({ "conn": c_conn }));
    drop(c);
    assert_eq!(a.recv_event("left").await, json!({ "conn": c_conn }));
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let status = a.ok("online", json!({})).await;
        if status["online"] == 1 {
            assert_eq!(status["seen"], 3);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SLOW_HOOK: &str = r#"
events:
  online:
    scope: local
    schema: {}
    script: |
      reply(state.get("online"));
  to.user:
    scope: local
    schema: { type: object, required: [user] }
    to: "user:{{data.user}}"
  $connect:
    script: |
      if conn.user == "slow" {
        let spin = 0;
        while spin < 8000 { spin += 1; }
      }
      state.incr("online", 1);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcomed_connection_is_registered_and_its_connect_hook_has_run() {
    // Without `sync()`: the welcome itself must mean "ready". A slow hook widens the
    // window in which a welcome sent too early would be visible.
    const SECRET: &str = "welcome-secret";
    let server = start_with(SLOW_HOOK, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    let mut other = server.connect().await;
    for round in 0..3 {
        let url = format!("{}?token={}", server.url(), token(SECRET, "slow", 60));
        let mut slow = Client::connect(&url).await;
        assert_eq!(
            other.ok("online", json!({})).await,
            json!(round + 2),
            "the slow connection's $connect has not run yet"
        );
        other
            .ok("to.user", json!({ "user": "slow", "round": round }))
            .await;
        assert_eq!(slow.recv_event("to.user").await["round"], round);
    }
}

const REFUSING: &str = r#"
events:
  hello:
    scope: local
    schema: {}
    script: |
      reply("hello");
  $connect:
    script: |
      if conn.user == "banned" { reject("banned", "you are banned"); }
      if conn.user == "crasher" { throw "hook crashed"; }
      state.incr("connected", 1);
  $disconnect:
    script: |
      state.incr("disconnected", 1);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connect_hook_refuses_the_connection() {
    const SECRET: &str = "hook-secret";
    let server = start_with(REFUSING, |cfg| cfg.auth = Auth::new(Some(SECRET), false)).await;
    for (user, code) in [("banned", "banned"), ("crasher", "script_error")] {
        let url = format!("{}?token={}", server.url(), token(SECRET, user, 60));
        let mut c = Client::connect(&url).await;
        let data = c.recv_error(code).await;
        assert!(!data["message"].as_str().unwrap_or("").is_empty());
        match c.recv_close().await {
            support::client::Closed::Frame(code, reason) => {
                assert_eq!(code, 1008, "{reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{user}: expected close 1008, got {other:?}"),
        }
    }
    let mut ok = server.connect().await;
    assert_eq!(ok.ok("hello", json!({})).await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_target_of_an_anonymous_sender_is_unauthorized() {
    let server = start(
        r#"events:
  note.self:
    scope: cluster
    schema: { type: object }
    to: "user:{{conn.user}}"
"#,
    )
    .await;
    let mut c = server.connect().await;
    let err = c.fail("note.self", json!({})).await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    c.expect_silence().await;
}

/// Write coalescing: a frame that follows the connection's last write by less than the
/// window waits for the window's end and leaves with whatever queued meanwhile; a frame
/// after a quiet spell leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_inside_the_write_window_leave_together_at_its_end() {
    let window = Duration::from_secs(1);
    let server = start_with(PACK, |cfg| cfg.limits.write_coalesce = window).await;
    let mut member = server.connect().await;
    member.ok("join", json!({ "room": "r" })).await;
    let mut sender = server.connect().await;
    // The join ack was the member's last write: let the window pass.
    tokio::time::sleep(window + Duration::from_millis(200)).await;

    let sent = std::time::Instant::now();
    sender.emit("to.room", json!({ "room": "r", "n": 1 })).await;
    assert_eq!(member.recv_event("to.room").await["n"], 1);
    let first = sent.elapsed();
    assert!(
        first < window / 2,
        "after a quiet spell a frame is not held back: {first:?}"
    );

    sender.emit("to.room", json!({ "room": "r", "n": 2 })).await;
    sender.emit("to.room", json!({ "room": "r", "n": 3 })).await;
    assert_eq!(member.recv_event("to.room").await["n"], 2);
    let second = sent.elapsed();
    assert_eq!(member.recv_event("to.room").await["n"], 3);
    let third = sent.elapsed();
    assert!(
        second >= first + window * 8 / 10,
        "a frame inside the window waits for its end: first {first:?}, second {second:?}"
    );
    assert!(
        third - second < Duration::from_millis(300),
        "frames queued inside one window leave together: {second:?}, then {third:?}"
    );
}

/// While a connection's deliveries wait for its write window, its frames are still read
/// and handled: a busy client is not throttled to one request per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_for_its_write_window_keeps_reading() {
    let window = Duration::from_secs(1);
    let server = start_with(PACK, |cfg| cfg.limits.write_coalesce = window).await;
    let mut sender = server.connect().await;
    let mut observer = server.connect().await;
    let mut other = server.connect().await;
    sender.ok("join", json!({ "room": "w" })).await;
    observer.ok("join", json!({ "room": "w" })).await;
    tokio::time::sleep(window + Duration::from_millis(200)).await;

    // A delivery to itself opens the sender's window (no ids: no answer is due)...
    sender.emit("to.sender", json!({ "n": 1 })).await;
    assert_eq!(sender.recv_event("to.sender").await["n"], 1);
    // ...so its copy of this one waits, while the quiet observer's leaves at once, which
    // also says the server has handled it.
    sender.emit("to.room", json!({ "room": "w", "n": 2 })).await;
    assert_eq!(observer.recv_event("to.room").await["n"], 2);
    let sent = std::time::Instant::now();
    sender
        .emit("to.conn", json!({ "conn": other.conn, "n": 3 }))
        .await;
    assert_eq!(other.recv_event("to.conn").await["n"], 3);
    let handled = sent.elapsed();
    assert!(
        handled < window / 2,
        "the sender's next frame was handled while its delivery waited: {handled:?}"
    );
    assert_eq!(sender.recv_event("to.room").await["n"], 2);
}

/// An answer is not held for the write window: a client that waits for its ack before
/// sending again would otherwise make one request per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_leave_at_once_even_inside_the_write_window() {
    let window = Duration::from_secs(1);
    let server = start_with(PACK, |cfg| cfg.limits.write_coalesce = window).await;
    let mut client = server.connect().await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        client.ok("to.sender", json!({})).await;
        client.recv_event("to.sender").await;
    }
    let took = started.elapsed();
    assert!(took < window / 2, "five calls took {took:?}");
}

/// A quarter of the queue (at most 64 frames) does not wait for the write window: a fast reader is
/// never cut off as a slow consumer for frames the server itself held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_leaves_before_the_write_window_ends() {
    let window = Duration::from_secs(2);
    let server = start_with(PACK, |cfg| {
        cfg.limits.write_coalesce = window;
        cfg.limits.outbound_queue = 256;
    })
    .await;
    let mut reader = server.connect().await;
    reader.ok("join", json!({ "room": "r" })).await;
    let mut producer = server.connect().await;
    let started = std::time::Instant::now();
    let send = tokio::spawn(async move {
        for i in 0..200 {
            producer.ok("to.room", json!({ "room": "r", "i": i })).await;
        }
    });
    // Every full batch of 64 leaves at once; only the last 8 wait for a window's end.
    for i in 0..192 {
        assert_eq!(reader.recv_event("to.room").await["i"], i);
    }
    let took = started.elapsed();
    assert!(took < window / 2, "192 frames took {took:?}");
    for i in 192..200 {
        assert_eq!(reader.recv_event("to.room").await["i"], i);
    }
    send.await.expect("producer");
}
