//! The client protocol (docs/protocol.md) over real sockets: `$welcome`, acks, and every
//! error code a frame can earn, each followed by proof that the connection survived.

mod support;

use serde_json::{json, Value};
use support::inprocess::{start, start_with};
use support::QUIET;

const PACK: &str = r#"
events:
  echo:
    scope: local
    schema: {}
    to: sender
  quiet:
    description: succeeds with no reply and no delivery
    scope: local
    schema: {}
  answer:
    scope: local
    schema: { type: object }
    script: |
      reply(#{ got: data, n: 42 });
  typed:
    scope: local
    schema:
      type: object
      required: [room, n]
      properties:
        room: { type: string, pattern: "^[a-z]+$" }
        n: { type: integer, minimum: 0 }
        user:
          type: object
          properties:
            age: { type: integer }
        tags: { type: array, items: { type: string } }
      additionalProperties: false
  boom:
    scope: local
    schema: {}
    script: |
      throw "it went boom";
  picky:
    scope: local
    schema: {}
    script: |
      reject("not_allowed", "picky says no");
  runaway:
    scope: local
    schema: {}
    script: |
      let x = 0;
      loop { x += 1; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_is_the_first_frame_and_names_conn_and_node() {
    let server = start(PACK).await;
    let a = server.connect().await;
    let b = server.connect().await;
    for c in [&a, &b] {
        let data = &c.welcome["data"];
        assert!(
            data["conn"].as_str().is_some_and(|s| !s.is_empty()),
            "{data}"
        );
        assert!(
            data["node"].as_str().is_some_and(|s| !s.is_empty()),
            "{data}"
        );
    }
    assert_ne!(a.conn, b.conn, "connection ids are unique");
    assert_eq!(
        a.welcome["data"]["node"], b.welcome["data"]["node"],
        "one node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_echo_the_id_and_carry_the_reply_or_null() {
    let server = start(PACK).await;
    let mut c = server.connect().await;

    // A script reply is the ack's data.
    let reply = c.ok("answer", json!({ "x": 1 })).await;
    assert_eq!(reply, json!({ "got": { "x": 1 }, "n": 42 }));

    // No reply: data is present and null, exactly.
    c.send_text(r#"{"event":"quiet","data":{},"id":"q1"}"#)
        .await;
    let ack = c.recv().await;
    assert_eq!(ack, json!({ "ack": "q1", "ok": true, "data": null }));

    // Numeric ids come back as numbers.
    c.send_text(r#"{"event":"quiet","data":{},"id":7}"#).await;
    assert_eq!(
        c.recv().await,
        json!({ "ack": 7, "ok": true, "data": null })
    );

    // Without an id a success is silent.
    c.emit("quiet", json!({})).await;
    c.expect_silence().await;

    // `data` may be omitted: it is null.
    c.send_text(r#"{"event":"quiet","id":"nodata"}"#).await;
    assert_eq!(c.recv().await["ack"], "nodata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_the_sender_arrives_before_its_ack() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    c.send_text(r#"{"event":"echo","data":{"hi":1},"id":"e1"}"#)
        .await;
    assert_eq!(
        c.recv().await,
        json!({ "event": "echo", "data": { "hi": 1 } })
    );
    assert_eq!(
        c.recv().await,
        json!({ "ack": "e1", "ok": true, "data": null })
    );
}

/// Send something bad, check the answer, then prove the connection still works.
async fn still_alive(c: &mut support::client::Client) {
    let reply = c.ok("answer", json!({ "alive": true })).await;
    assert_eq!(reply["got"], json!({ "alive": true }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_is_an_error_event_and_the_connection_stays() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    for text in [
        "{",
        "not json at all",
        r#"{"event":"echo","data":}"#,
        "",
        "{\"event\":\"echo\"} trailing",
    ] {
        c.send_text(text).await;
        c.recv_error("bad_json").await;
    }
    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_covers_binary_non_objects_and_missing_event() {
    let server = start(PACK).await;
    let mut c = server.connect().await;

    c.send_binary(b"{\"event\":\"echo\",\"data\":{}}".to_vec())
        .await;
    c.recv_error("bad_frame").await;
    c.send_binary(vec![0, 159, 146, 150]).await;
    c.recv_error("bad_frame").await;

    for text in [
        "[1,2]",
        "\"echo\"",
        "42",
        "null",
        r#"{"data":{}}"#,
        r#"{"event":5,"data":{}}"#,
        r#"{"event":null}"#,
        r#"{"event":"echo","id":{"nested":1}}"#,
        r#"{"event":"echo","id":[1]}"#,
        r#"{"event":"echo","id":true}"#,
    ] {
        c.send_text(text).await;
        let data = c.recv_error("bad_frame").await;
        assert!(data.get("details").is_none(), "{text}: {data}");
    }

    // With a readable id, the failure is an ack instead of `$error`.
    c.send_text(r#"{"id":"m1","data":{}}"#).await;
    let ack = c.recv().await;
    assert_eq!(ack["ack"], "m1");
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "bad_frame");
    assert!(ack.get("data").is_none());
    c.send_text(r#"{"id":9,"event":["x"]}"#).await;
    let ack = c.recv().await;
    assert_eq!(
        (ack["ack"].clone(), ack["ok"].clone()),
        (json!(9), json!(false))
    );
    assert_eq!(ack["error"]["code"], "bad_frame");

    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_an_error_and_the_connection_stays() {
    let server = start_with(PACK, |cfg| cfg.limits.max_frame_bytes = 1024).await;
    let mut c = server.connect().await;

    // Just at the limit is fine.
    let pad = "x".repeat(1024 - r#"{"event":"answer","data":{"p":""},"id":"ok"}"#.len());
    let at_limit = format!(r#"{{"event":"answer","data":{{"p":"{pad}"}},"id":"ok"}}"#);
    assert_eq!(at_limit.len(), 1024);
    c.send_text(at_limit).await;
    let ack = c.recv().await;
    assert_eq!(
        (ack["ack"].clone(), ack["ok"].clone()),
        (json!("ok"), json!(true))
    );

    // One byte more is too large; its id still gets a failed ack.
    let over = format!(r#"{{"event":"answer","data":{{"p":"{pad}x"}},"id":"big"}}"#);
    c.send_text(over).await;
    let ack = c.recv().await;
    assert_eq!(
        (
            ack["ack"].clone(),
            ack["ok"].clone(),
            ack["error"]["code"].clone()
        ),
        (json!("big"), json!(false), json!("too_large")),
        "{ack}"
    );
    assert!(
        ack["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("1024"),
        "{ack}"
    );

    // Well past the soft limit but under the hard cap: still just an error.
    c.send_text("y".repeat(200 * 1024)).await;
    c.recv_error("too_large").await;
    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_past_the_hard_cap_closes_with_1009() {
    // The hard cap is max(4 × max_frame_bytes, 1 MiB): abuse past it closes.
    let server = start_with(PACK, |cfg| cfg.limits.max_frame_bytes = 1024).await;
    let mut c = server.connect().await;
    c.send_text("z".repeat((1 << 20) + 1024)).await;
    let reason = c.recv_close_code(1009).await;
    assert!(!reason.is_empty(), "a close carries a reason");
    // The server is fine for everyone else.
    let mut other = server.connect().await;
    still_alive(&mut other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_past_the_hard_cap_is_read_to_its_end_before_the_close() {
    // 16 MiB is more than loopback socket buffers hold, so the client is still sending
    // when the server refuses the frame from its header. Closing the TCP socket then
    // would reset the connection: the client's send fails and it never sees the 1009.
    let server = start_with(PACK, |cfg| cfg.limits.max_frame_bytes = 1024).await;
    let mut c = server.connect().await;
    c.send_text("z".repeat(16 << 20)).await;
    c.recv_close_code(1009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;

    let server = start(PACK).await;
    let mut c = server.connect().await;
    let not_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(not_utf8))
        .await
        .expect("send a raw frame");
    c.recv_close_code(1007).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_as_ack_and_as_error_event() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    let err = c.fail("no.such.event", json!({})).await;
    assert_eq!(err["code"], "unknown_event");
    assert!(err["message"]
        .as_str()
        .unwrap_or("")
        .contains("no.such.event"));
    c.emit("no.such.event", json!({})).await;
    c.recv_error("unknown_event").await;
    // Hooks are not client events.
    c.emit("$connect", Value::Null).await;
    c.recv_error("unknown_event").await;
    c.emit("$disconnect", Value::Null).await;
    c.recv_error("unknown_event").await;
    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payload_lists_one_detail_per_schema_error() {
    let server = start(PACK).await;
    let mut c = server.connect().await;

    // Two wrong types: exactly two details, at the right JSON Pointers.
    let err = c.fail("typed", json!({ "room": 5, "n": "x" })).await;
    assert_eq!(err["code"], "invalid_payload", "{err}");
    let details = err["details"].as_array().expect("details array");
    let mut paths: Vec<&str> = details
        .iter()
        .map(|d| d["path"].as_str().expect("path is a string"))
        .collect();
    paths.sort();
    assert_eq!(paths, ["/n", "/room"], "{err}");
    for d in details {
        assert!(
            d["message"].as_str().is_some_and(|m| !m.is_empty()),
            "every detail has a message: {d}"
        );
        assert_eq!(
            d.as_object().map(|o| o.len()),
            Some(2),
            "a detail is {{path, message}}: {d}"
        );
    }

    // Nested objects and array items.
    let err = c
        .fail(
            "typed",
            json!({ "room": "ok", "n": 1, "user": { "age": "old" }, "tags": ["a", 2] }),
        )
        .await;
    let mut paths: Vec<String> = err["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["path"].as_str().unwrap_or("?").to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/tags/1", "/user/age"], "{err}");

    // Pattern, minimum, and an unexpected property.
    let err = c
        .fail("typed", json!({ "room": "UPPER", "n": -1, "extra": true }))
        .await;
    let details = err["details"].as_array().expect("details");
    assert_eq!(details.len(), 3, "{err}");
    let paths: Vec<&str> = details
        .iter()
        .map(|d| d["path"].as_str().unwrap_or("?"))
        .collect();
    assert!(paths.contains(&"/room") && paths.contains(&"/n"), "{err}");

    // A missing required field is reported at the root ("" is the whole document).
    let err = c.fail("typed", json!({ "room": "ok" })).await;
    let details = err["details"].as_array().expect("details");
    assert_eq!(details.len(), 1, "{err}");
    assert_eq!(details[0]["path"], "", "{err}");
    assert!(
        details[0]["message"].as_str().unwrap_or("").contains('n'),
        "{err}"
    );

    // Without an id: `$error` with the same details.
    c.emit("typed", json!({ "room": 1, "n": 1 })).await;
    let data = c.recv_error("invalid_payload").await;
    assert_eq!(data["details"][0]["path"], "/room", "{data}");

    // A payload-less frame for an object schema is invalid too.
    let err = c.fail("typed", Value::Null).await;
    assert_eq!(err["code"], "invalid_payload");
    assert_eq!(err["details"][0]["path"], "");
    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_errors_and_custom_reject_codes() {
    let server = start(PACK).await;
    let mut c = server.connect().await;

    let err = c.fail("boom", json!({})).await;
    assert_eq!(err["code"], "script_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("it went boom"),
        "{err}"
    );

    let err = c.fail("picky", json!({})).await;
    assert_eq!(
        err,
        json!({ "code": "not_allowed", "message": "picky says no" })
    );

    // A script that never ends is stopped by its limits: script_error, not a hang.
    let err = c.fail("runaway", json!({})).await;
    assert_eq!(err["code"], "script_error", "{err}");

    // The same failures without an id are `$error` events.
    c.emit("boom", json!({})).await;
    c.recv_error("script_error").await;
    c.emit("picky", json!({})).await;
    let data = c.recv_error("not_allowed").await;
    assert_eq!(data["message"], "picky says no");
    still_alive(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_successes_keep_their_order() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    // Pipeline a mix without waiting; the answers come back in the order sent.
    c.send_text(r#"{"event":"quiet","id":1}"#).await;
    c.send_text("{").await;
    c.send_text(r#"{"event":"nope","id":2}"#).await;
    c.send_text(r#"{"event":"echo","data":"e","id":3}"#).await;
    c.send_text(r#"{"event":"typed","data":{},"id":4}"#).await;
    assert_eq!(c.recv().await["ack"], 1);
    assert_eq!(c.recv().await["data"]["code"], "bad_json");
    assert_eq!(c.recv().await["error"]["code"], "unknown_event");
    assert_eq!(c.recv().await, json!({ "event": "echo", "data": "e" }));
    assert_eq!(c.recv().await["ack"], 3);
    assert_eq!(c.recv().await["error"]["code"], "invalid_payload");
    c.expect_silence_for(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_gets_the_close_handshake_reply() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let server = start(PACK).await;
    let mut c = server.connect().await;
    still_alive(&mut c).await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    tokio::time::timeout(support::WAIT, c.ws.send(Message::Close(Some(frame))))
        .await
        .expect("close send stalled")
        .expect("send close");
    // RFC 6455 §5.5.1: the server answers a Close with a Close, then the stream ends.
    let reply = tokio::time::timeout(support::WAIT, c.ws.next())
        .await
        .expect("no close reply within the wait");
    match reply {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected the server's Close reply, got {other:?}"),
    }
    let end = tokio::time::timeout(support::WAIT, c.ws.next())
        .await
        .expect("stream did not end");
    assert!(
        end.is_none(),
        "after the handshake the stream ends: {end:?}"
    );
}
