//! Rooms with history on one node (the embedded backend): positions on deliveries,
//! `$joined`/`$left` before the ack, `$welcome`'s session, and `$resume` — replay in
//! order exactly once, all or nothing per room, and every way a resume is refused.

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::client::{token, Client, Closed};
use support::inprocess::{start_with, TestServer};
use wss_engine::engine::SessionConfig;
use wss_engine::transport::auth::Auth;

const PACK: &str = r#"
rooms:
  "h:*": { history: { size: 50, ttl: 600 } }
  "tiny": { history: { size: 3, ttl: 600 } }
events:
  join:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string } } }
    script: |
      join(data.room);
  leave:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string } } }
    script: |
      leave(data.room);
  say:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string }, n: {} } }
    to: "room:{{data.room}}"
  say.others:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string }, n: {} } }
    to: "room:{{data.room}}"
    exclude_sender: true
  say.local:
    scope: local
    schema: { type: object, required: [room], properties: { room: { type: string }, n: {} } }
    to: "room:{{data.room}}"
  count:
    scope: cluster
    schema: { type: object, required: [room], properties: { room: { type: string } } }
    script: |
      let n = state.incr("n", 1);
      emit("room:" + data.room, "counted", #{ n: n });
"#;

const SECRET: &str = "history-secret";

async fn server() -> TestServer {
    start_with(PACK, |c| c.auth = Auth::new(Some(SECRET), false)).await
}

/// A client that sees `$joined`/`$left` in order with everything else.
async fn inline(server: &TestServer) -> Client {
    let mut c = server.connect().await;
    c.membership_inline = true;
    c
}

/// The next frame, which must be a delivery of `event` to `room`; returns its offset.
async fn recv_at(c: &mut Client, event: &str, room: &str) -> u64 {
    let frame = c.recv().await;
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(frame["room"], room, "{frame}");
    frame["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {frame}"))
}

/// The next frame, which must be `$joined` for `room`; returns its data.
async fn recv_joined(c: &mut Client, room: &str) -> Value {
    let data = c.recv_event("$joined").await;
    assert_eq!(data["room"], room, "{data}");
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_rooms_with_history_carry_room_and_offset_and_joins_are_announced() {
    let server = server().await;
    let mut a = inline(&server).await;
    assert!(a.welcome["data"]["session"]
        .as_str()
        .is_some_and(|s| s.len() == 32));
    assert_eq!(a.welcome["data"]["resume_ttl"], 120);

    // `$joined` (a fresh room: offset 0) comes before the join's ack.
    a.send_json(json!({"event": "join", "data": {"room": "h:1"}, "id": "j"}))
        .await;
    let joined = recv_joined(&mut a, "h:1").await;
    assert_eq!(joined["offset"], 0, "{joined}");
    let epoch = joined["epoch"].as_str().expect("an epoch").to_string();
    assert_eq!(a.recv().await["ack"], "j");

    a.ok("say", json!({"room": "h:1", "n": 1})).await;
    assert_eq!(recv_at(&mut a, "say", "h:1").await, 1);
    a.ok("say", json!({"room": "h:1", "n": 2})).await;
    let frame = a.recv().await;
    assert_eq!(
        frame,
        json!({"event": "say", "data": {"room": "h:1", "n": 2}, "room": "h:1", "offset": 2})
    );

    // A second member is placed after what came before it, in the same epoch.
    let mut b = inline(&server).await;
    b.send_json(json!({"event": "join", "data": {"room": "h:1"}, "id": "j"}))
        .await;
    let joined = recv_joined(&mut b, "h:1").await;
    assert_eq!(
        (joined["epoch"].as_str(), joined["offset"].as_u64()),
        (Some(&*epoch), Some(2))
    );
    assert_eq!(b.recv().await["ack"], "j");

    // Rooms without history: `$joined` without a position, deliveries without one.
    a.send_json(json!({"event": "join", "data": {"room": "plain"}, "id": "p"}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"event": "$joined", "data": {"room": "plain"}})
    );
    assert_eq!(a.recv().await["ack"], "p");
    a.ok("say", json!({"room": "plain", "n": 3})).await;
    assert_eq!(
        a.recv().await,
        json!({"event": "say", "data": {"room": "plain", "n": 3}})
    );

    // `$left` before the leave's ack; nothing of the room after it.
    a.send_json(json!({"event": "leave", "data": {"room": "h:1"}, "id": "l"}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"event": "$left", "data": {"room": "h:1"}})
    );
    assert_eq!(a.recv().await["ack"], "l");
    b.ok("say", json!({"room": "h:1", "n": 4})).await;
    assert_eq!(recv_at(&mut b, "say", "h:1").await, 3);
    a.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_events_stay_ephemeral_and_exclude_sender_cannot_break_a_members_offsets() {
    let server = server().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.ok("join", json!({"room": "h:x"})).await;
    b.ok("join", json!({"room": "h:x"})).await;
    // A local event's delivery has no position and takes no offset.
    a.ok("say.local", json!({"room": "h:x", "n": 1})).await;
    for c in [&mut a, &mut b] {
        let frame = c.recv().await;
        assert_eq!(
            frame,
            json!({"event": "say.local", "data": {"room": "h:x", "n": 1}})
        );
    }
    // In a room with history every member gets every offset, the sender too.
    a.ok("say.others", json!({"room": "h:x", "n": 2})).await;
    assert_eq!(recv_at(&mut a, "say.others", "h:x").await, 1);
    assert_eq!(recv_at(&mut b, "say.others", "h:x").await, 1);
    // Emits of scripts that commit state are placed by the commit.
    a.ok("count", json!({"room": "h:x"})).await;
    assert_eq!(recv_at(&mut a, "counted", "h:x").await, 2);
    assert_eq!(recv_at(&mut b, "counted", "h:x").await, 2);
}

/// Join `room` and return `(session, epoch, offset)` as a client would keep them.
async fn joined_position(c: &mut Client, room: &str) -> (String, String, u64) {
    c.ok("join", json!({ "room": room })).await;
    let joined = c
        .memberships
        .pop_back()
        .unwrap_or_else(|| panic!("no $joined for {room}"));
    assert_eq!(joined["event"], "$joined");
    (
        c.session(),
        joined["data"]["epoch"].as_str().expect("epoch").to_string(),
        joined["data"]["offset"].as_u64().expect("offset"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_what_was_missed_once_in_order_then_goes_live() {
    let server = server().await;
    let mut a = server.connect().await;
    let (session, epoch, _) = joined_position(&mut a, "h:r").await;
    a.ok("join", json!({ "room": "plain" })).await;
    let mut publisher = server.connect().await;
    publisher.ok("say", json!({"room": "h:r", "n": 1})).await;
    assert_eq!(recv_at(&mut a, "say", "h:r").await, 1);
    a.drop_abruptly();

    for n in 2..=31 {
        publisher.emit("say", json!({"room": "h:r", "n": n})).await;
    }
    publisher.sync().await;

    let mut a2 = inline(&server).await;
    let ack = a2
        .resume(
            &session,
            json!({"h:r": {"epoch": epoch, "offset": 1}, "plain": {}}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        ack["data"]["rooms"],
        json!({"h:r": {"recovered": true, "replayed": 30}, "plain": {"recovered": false}}),
        "{ack}"
    );
    // Before the ack: `$joined` for each room (at the client's offset), then the 30.
    let mut got = Vec::new();
    let mut joined = Vec::new();
    while let Some(frame) = a2.try_recv(Duration::from_millis(200)).await {
        match frame["event"].as_str() {
            Some("$joined") => joined.push(frame["data"].clone()),
            Some("say") => got.push((frame["offset"].as_u64(), frame["data"]["n"].as_u64())),
            _ => panic!("unexpected {frame}"),
        }
    }
    joined.sort_by_key(|d| d["room"].as_str().map(str::to_string));
    assert_eq!(
        joined,
        [
            json!({"room": "h:r", "epoch": epoch, "offset": 1}),
            json!({"room": "plain"})
        ]
    );
    let want: Vec<(Option<u64>, Option<u64>)> = (2..=31).map(|n| (Some(n), Some(n))).collect();
    assert_eq!(got, want);
    // Live traffic follows without a hole.
    publisher.ok("say", json!({"room": "h:r", "n": 32})).await;
    assert_eq!(recv_at(&mut a2, "say", "h:r").await, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_beyond_its_history_or_in_another_epoch_is_not_recovered_nor_partly_replayed() {
    let server = server().await;
    let mut a = server.connect().await;
    let (session, epoch, _) = joined_position(&mut a, "tiny").await;
    a.drop_abruptly();
    let mut publisher = server.connect().await;
    for n in 1..=5 {
        publisher.emit("say", json!({"room": "tiny", "n": n})).await;
    }
    publisher.sync().await;

    // History keeps 3: offsets 1 and 2 are gone, so nothing is replayed.
    let mut a2 = inline(&server).await;
    let ack = a2
        .resume(&session, json!({"tiny": {"epoch": epoch, "offset": 0}}))
        .await;
    assert_eq!(
        ack["data"]["rooms"],
        json!({"tiny": {"recovered": false}}),
        "{ack}"
    );
    let joined = a2.recv_event("$joined").await;
    assert_eq!(joined, json!({"room": "tiny", "epoch": epoch, "offset": 5}));
    a2.expect_silence().await;

    // Within history, but the epoch is not the room's: not recovered either.
    let session2 = a2.session();
    a2.drop_abruptly();
    let mut a3 = inline(&server).await;
    let ack = a3
        .resume(
            &session2,
            json!({"tiny": {"epoch": "0000000000000000", "offset": 4}}),
        )
        .await;
    assert_eq!(
        ack["data"]["rooms"],
        json!({"tiny": {"recovered": false}}),
        "{ack}"
    );
    assert_eq!(a3.recv_event("$joined").await["offset"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_are_refused_for_unknown_foreign_or_garbage_sessions_and_the_connection_stays() {
    let server = server().await;
    let mut alice = Client::connect(&format!(
        "{}?token={}",
        server.url(),
        token(SECRET, "alice", 60)
    ))
    .await;
    alice.ok("join", json!({"room": "h:a"})).await;
    let alice_session = alice.session();

    let mut c = server.connect().await;
    // Garbage: every problem named, and the connection goes on.
    let ack = c
        .resume("not a session!", json!({"h:a": {"epoch": 1}}))
        .await;
    assert_eq!(ack["error"]["code"], "invalid_payload", "{ack}");
    let paths: Vec<&str> = ack["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert_eq!(paths, ["/session", "/rooms/h:a"], "{ack}");
    c.send_text("{\"event\":\"$resume\",\"data\":[1,2],\"id\":\"g\"}")
        .await;
    assert_eq!(c.ack(&json!("g")).await["error"]["code"], "invalid_payload");

    // Unknown: session_expired.
    let ack = c.resume(&"0".repeat(32), json!({})).await;
    assert_eq!(ack["error"]["code"], "session_expired", "{ack}");
    // Another user's (an anonymous client presenting alice's): refused.
    let ack = c.resume(&alice_session, json!({})).await;
    assert_eq!(ack["error"]["code"], "unauthorized", "{ack}");
    // Still usable, and once it sent another event it can no longer resume.
    c.ok("join", json!({"room": "h:b"})).await;
    let ack = c.resume(&alice_session, json!({})).await;
    assert_eq!(ack["error"]["code"], "bad_frame", "{ack}");
    // Alice herself may.
    let mut alice2 = Client::connect(&format!(
        "{}?token={}",
        server.url(),
        token(SECRET, "alice", 60)
    ))
    .await;
    let ack = alice2.resume(&alice_session, json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_the_old_socket_looks_open_closes_it_with_4000() {
    let server = server().await;
    let mut old = server.connect().await;
    let (session, epoch, offset) = joined_position(&mut old, "h:phone").await;
    let mut new = inline(&server).await;
    let ack = new
        .resume(
            &session,
            json!({"h:phone": {"epoch": epoch, "offset": offset}}),
        )
        .await;
    assert_eq!(ack["data"]["rooms"]["h:phone"]["recovered"], true, "{ack}");
    match old.recv_close().await {
        Closed::Frame(code, reason) => {
            assert_eq!((code, reason.as_str()), (4000, "resumed elsewhere"))
        }
        other => panic!("expected 4000, got {other:?}"),
    }
    // The new connection has the room; the old one's departure does not take it away.
    let mut publisher = server.connect().await;
    publisher
        .ok("say", json!({"room": "h:phone", "n": 1}))
        .await;
    let frame = new.recv().await;
    assert_eq!(frame["event"], "$joined");
    assert_eq!(recv_at(&mut new, "say", "h:phone").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_after_its_resume_ttl() {
    let server = start_with(PACK, |c| {
        c.sessions = SessionConfig {
            resume_ttl: Duration::from_secs(1),
            ..SessionConfig::default()
        }
    })
    .await;
    let mut a = server.connect().await;
    assert_eq!(a.welcome["data"]["resume_ttl"], 1);
    let (session, _, _) = joined_position(&mut a, "h:t").await;
    a.close().await;
    let mut quick = server.connect().await;
    assert_eq!(quick.resume(&session, json!({})).await["ok"], true);
    quick.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut late = server.connect().await;
    let ack = late.resume(&session, json!({})).await;
    assert_eq!(ack["error"]["code"], "session_expired", "{ack}");
}
