//! Abuse past limits: per-event rate limits, the bounded outbound queue (slow
//! consumers), keepalive/idle timeout, and a flood of malformed frames.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::client::{Client, Closed};
use support::inprocess::{start, start_with};
use support::WAIT;
use tokio_tungstenite::tungstenite::Message;

const PACK: &str = r#"
events:
  limited:
    scope: local
    schema: {}
    rate_limit: { per_second: 2, burst: 3 }
  free:
    scope: local
    schema: {}
    script: |
      reply(data);
  join:
    scope: local
    schema: { type: object, required: [room] }
    script: |
      join(data.room);
  flood:
    scope: local
    schema: { type: object, required: [room] }
    to: "room:{{data.room}}"
  typed:
    scope: local
    schema:
      type: object
      required: [n]
      properties: { n: { type: integer } }
  scripted:
    scope: cluster
    schema: {}
    script: |
      if type_of(data) == "map" && data.contains("k") { state.incr("fuzz", 1); }
      reply(type_of(data));
  $disconnect:
    script: |
      emit("room:observers", "gone", #{ conn: conn.id });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_a_token_bucket_per_connection_and_event() {
    let server = start(PACK).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;

    for _ in 0..3 {
        a.ok("limited", json!({})).await;
    }
    let err = a.fail("limited", json!({})).await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    a.emit("limited", json!({})).await;
    a.recv_error("rate_limited").await;

    // Other events and other connections are unaffected.
    assert_eq!(a.ok("free", json!(1)).await, 1);
    for _ in 0..3 {
        b.ok("limited", json!({})).await;
    }

    // Tokens come back at per_second.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.ok("limited", json!({})).await;
    let err = a.fail("limited", json!({})).await;
    assert_eq!(err["code"], "rate_limited", "{err}");
}

/// Start a flood producer: sends `count` room deliveries of `size` bytes each (no ids,
/// so it needs to read nothing back), then one ack'd event as a barrier.
async fn flood(producer: &mut Client, room: &str, count: usize, size: usize) {
    let payload = "p".repeat(size);
    let frame = json!({ "event": "flood", "data": { "room": room, "p": payload } }).to_string();
    for _ in 0..count {
        tokio::time::timeout(WAIT, producer.ws.feed(Message::text(frame.clone())))
            .await
            .expect("producer write stalled")
            .expect("producer write");
    }
    tokio::time::timeout(WAIT, producer.ws.flush())
        .await
        .expect("producer flush stalled")
        .expect("producer flush");
    producer.ok("free", json!("barrier")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_cut_off_without_its_help() {
    let server = start_with(PACK, |cfg| cfg.limits.outbound_queue = 16).await;
    let mut observer = server.connect().await;
    observer.ok("join", json!({ "room": "observers" })).await;
    let mut sleeper = server.connect().await;
    sleeper.ok("join", json!({ "room": "firehose" })).await;
    let sleeper_conn = sleeper.conn.clone();
    let mut producer = server.connect().await;

    // 12 MiB: more than loopback socket buffers absorb, so the queue must fill.
    flood(&mut producer, "firehose", 768, 16 * 1024).await;

    // The sleeper never reads, yet the server lets it go ($disconnect runs) promptly.
    let gone = observer
        .try_recv(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("a client that stopped reading was never disconnected"));
    assert_eq!(
        gone,
        json!({ "event": "gone", "data": { "conn": sleeper_conn } })
    );

    // The server stays healthy for everyone else.
    assert_eq!(producer.ok("free", json!(2)).await, 2);

    // What the sleeper eventually reads is bounded and ends the connection.
    let (how, frames) = sleeper.recv_close_within(Duration::from_secs(10)).await;
    assert!(
        frames < 768,
        "the whole flood was queued for a non-reader: {frames}"
    );
    match how {
        Closed::Frame(code, _) => assert_eq!(code, 1013),
        Closed::Dropped(_) => {} // the close frame could not be written to a full socket
        Closed::NoCode => panic!("close without a code"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_1013_and_a_reason() {
    let server = start_with(PACK, |cfg| cfg.limits.outbound_queue = 16).await;
    let mut slow = server.connect().await;
    slow.ok("join", json!({ "room": "firehose" })).await;
    let mut producer = server.connect().await;

    // A reader, but a slow one: ~100 frames a second against a flood the server takes in
    // far faster. It reads all along, so it is there to read the close frame within the
    // server's close grace however long the flood takes on a loaded machine (a client
    // that waited for the flood to end could come back after the grace, to a dropped
    // socket; that case is the non-reader's test above).
    let (_, (how, frames)) = tokio::join!(
        flood(&mut producer, "firehose", 768, 16 * 1024),
        slow.recv_close_pacing(Duration::from_secs(30), Duration::from_millis(10)),
    );
    match how {
        Closed::Frame(code, reason) => {
            assert_eq!(code, 1013, "{reason}");
            assert!(reason.contains("slow"), "the reason says why: {reason}");
        }
        other => panic!("expected close 1013 after {frames} frames, got {other:?}"),
    }
    assert!(frames < 768, "{frames}");
    assert_eq!(producer.ok("free", json!(3)).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_reader_in_the_same_flood_is_not_cut_off() {
    let server = start_with(PACK, |cfg| cfg.limits.outbound_queue = 64).await;
    let mut reader = server.connect().await;
    reader.ok("join", json!({ "room": "steady" })).await;
    let mut producer = server.connect().await;
    let url = server.url();
    // A producer that waits for each ack cannot outrun a reader that keeps reading.
    let send = tokio::spawn(async move {
        for i in 0..300 {
            producer
                .ok("flood", json!({ "room": "steady", "i": i }))
                .await;
        }
        drop(url);
    });
    for i in 0..300 {
        assert_eq!(reader.recv_event("flood").await["i"], i);
    }
    tokio::time::timeout(WAIT, send)
        .await
        .expect("producer finished")
        .expect("producer task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_that_does_not_answer_pings_is_closed() {
    let server = start_with(PACK, |cfg| {
        cfg.limits.ping_interval = Duration::from_millis(200);
        cfg.limits.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let mut idle = server.connect().await;
    // Not polling the socket means tungstenite never answers the server's pings.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match idle.recv_close().await {
        Closed::Frame(code, reason) => {
            assert_eq!(code, 1001, "{reason}");
            assert!(reason.contains("idle"), "{reason}");
        }
        other => panic!("expected an idle close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_stays_connected_through_pings() {
    let server = start_with(PACK, |cfg| {
        cfg.limits.ping_interval = Duration::from_millis(200);
        cfg.limits.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let mut live = server.connect().await;
    // Reading answers pings (tungstenite queues the pong and flushes it on the next
    // read); no data frames arrive, so this is silence for three idle timeouts.
    live.expect_silence_for(Duration::from_millis(1800)).await;
    assert_eq!(live.ok("free", json!("still here")).await, "still here");
}

/// A deterministic xorshift, so a failing fuzz run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One malformed frame, and whether the server owes an answer for it. Every frame is
/// either broken or carries an id, so each is answered exactly once.
fn fuzz_frame(rng: &mut Rng, i: usize) -> Message {
    let valid = json!({ "event": "scripted", "data": { "k": i }, "id": i }).to_string();
    match rng.below(12) {
        // Random bytes as a text frame.
        0 => {
            let len = rng.below(200) as usize;
            Message::text(String::from_utf8_lossy(&rng.bytes(len)).to_string())
        }
        // Random bytes as a binary frame.
        1 => {
            let len = rng.below(300) as usize;
            Message::binary(rng.bytes(len))
        }
        // Truncated valid JSON.
        2 => {
            let cut = rng.below(valid.len() as u64 - 1) as usize;
            Message::text(valid[..cut].to_string())
        }
        // Wrong types in the envelope.
        3 => {
            let wrong = [
                json!({ "event": 1 }),
                json!({ "event": ["typed"] }),
                json!({ "event": "typed", "id": { "x": 1 } }),
                json!({ "event": "typed", "id": [i] }),
                json!({ "data": { "n": 1 } }),
                json!([{ "event": "typed" }]),
                json!("typed"),
                json!(i),
                json!(null),
            ];
            Message::text(wrong[rng.below(wrong.len() as u64) as usize].to_string())
        }
        // Wrong payload types for a schema.
        4 => {
            let bad = [
                json!("x"),
                json!(1.5),
                json!([1]),
                json!({ "n": "1" }),
                json!({}),
                json!(null),
            ];
            let data = bad[rng.below(bad.len() as u64) as usize].clone();
            Message::text(json!({ "event": "typed", "data": data, "id": i }).to_string())
        }
        // Unknown events, including hook names and odd characters.
        5 => {
            let names = [
                "nope",
                "$connect",
                "$disconnect",
                "",
                "typed ",
                "TYPED",
                "\u{0}",
                "é",
            ];
            let name = names[rng.below(names.len() as u64) as usize];
            Message::text(json!({ "event": name, "data": {} }).to_string())
        }
        // Deep nesting that still parses (serde_json stops at 128 levels).
        6 => {
            let depth = 1 + rng.below(100) as usize;
            let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            Message::text(format!(r#"{{"event":"scripted","data":{data},"id":{i}}}"#))
        }
        // Nesting past the parser's limit.
        7 => {
            let depth = 200 + rng.below(2000) as usize;
            Message::text(format!(
                r#"{{"event":"typed","data":{}}}"#,
                "{\"a\":".repeat(depth)
            ))
        }
        // Valid JSON events with arbitrary data to a script (answered: they carry ids).
        8 => {
            let data = match rng.below(5) {
                0 => json!({ "k": rng.next() as i64 }),
                1 => json!(String::from_utf8_lossy(&rng.bytes(20))),
                2 => json!([1, "two", null, { "three": 3.0 }]),
                3 => json!(rng.next() as f64 / 3.0),
                _ => Value::Null,
            };
            Message::text(json!({ "event": "scripted", "data": data, "id": i }).to_string())
        }
        // Structural junk.
        9 => {
            let junk = [
                "{}",
                "{",
                "}",
                "[]",
                "\"",
                "{\"event\":",
                "{\"event\":\"typed\",}",
                "\u{feff}{}",
                " ",
            ];
            Message::text(junk[rng.below(junk.len() as u64) as usize].to_string())
        }
        // Duplicate keys and strange but valid JSON.
        10 => Message::text(format!(
            r#"{{"event":"typed","event":"nope","data":{{"n":1e400}},"id":"{i}"}}"#
        )),
        // Invalid escapes and surrogates.
        _ => Message::text(r#"{"event":"typed","data":{"n":"\ud800"},"id":"\q"}"#.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_frames_then_a_valid_event_still_works() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    const FRAMES: usize = 10_000;
    // Batches smaller than the outbound queue: a client that reads its answers is never
    // a slow consumer, so only the server's handling of the frames is under test.
    const BATCH: usize = 200;
    let mut answered = 0usize;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for start in (0..FRAMES).step_by(BATCH) {
        for i in start..(start + BATCH).min(FRAMES) {
            let frame = fuzz_frame(&mut rng, i);
            tokio::time::timeout(WAIT, c.ws.feed(frame))
                .await
                .expect("write stalled")
                .expect("the server closed the connection during the fuzz");
        }
        tokio::time::timeout(WAIT, c.ws.flush())
            .await
            .expect("flush stalled")
            .expect("flush");
        for _ in start..(start + BATCH).min(FRAMES) {
            let answer = c.recv().await;
            answered += 1;
            let code = if let Some(err) = answer.get("error") {
                err["code"].as_str().unwrap_or("?").to_string()
            } else if answer["event"] == "$error" {
                answer["data"]["code"].as_str().unwrap_or("?").to_string()
            } else if answer["ok"] == true {
                "ok".to_string()
            } else {
                panic!("unexpected answer {answer}")
            };
            *codes.entry(code).or_default() += 1;
        }
    }
    assert_eq!(answered, FRAMES, "every frame answered exactly once");
    c.expect_silence().await;
    eprintln!("fuzz outcomes: {codes:?}");
    for code in codes.keys() {
        assert!(
            [
                "ok",
                "bad_json",
                "bad_frame",
                "unknown_event",
                "invalid_payload",
                "script_error"
            ]
            .contains(&code.as_str()),
            "unexpected code {code}"
        );
    }

    // Same connection, then a fresh one: correct answers.
    assert_eq!(
        c.ok("free", json!({ "after": "fuzz" })).await,
        json!({ "after": "fuzz" })
    );
    let err = c.fail("typed", json!({ "n": "x" })).await;
    assert_eq!(err["details"][0]["path"], "/n", "{err}");
    let mut fresh = server.connect().await;
    assert_eq!(fresh.ok("free", json!([1, 2])).await, json!([1, 2]));
    assert_eq!(fresh.ok("scripted", json!({ "k": 1 })).await, "map");
}
