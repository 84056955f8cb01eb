//! Client frames over `/ws`, as a socket's task handles them: the envelope parse
//! (`transport::ws::protocol`), the size limit, then the engine (event lookup, auth,
//! rate limits, schemas, scripts, commits, deliveries, `$resume`).
//!
//! The input is UTF-8 text, one frame per line, sent by one connection. Two lines are
//! directives: `~reconnect` closes the connection and opens another (the user alternates
//! between anonymous and `alice`); in any frame, `@session` stands for the session of
//! the connection closed last and `@epoch` for the epoch of room `lobby`, which a
//! fuzzer could never guess (both are random).
//!
//! Checked: nothing panics; every frame the server sends is a well-formed JSON object
//! (`check_server_frame`); a frame with a readable `id` gets an ack with that id; a
//! parsed envelope rendered again parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use wss_engine::transport::ws::protocol;
use wss_engine_fuzz::{runtime, World, MAX_FRAME_BYTES};

/// More frames than this in one input add nothing but time.
const MAX_FRAMES: usize = 64;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return; // a socket refuses non-UTF-8 text frames before any parsing
    };
    runtime().block_on(run(text));
});

async fn run(text: &str) {
    let world = World::new();
    let mut client = world.connect(None).await;
    let mut session = String::new();
    let mut alice = false;
    for line in text.split('\n').take(MAX_FRAMES) {
        if line == "~reconnect" {
            session = client.conn.session.expose().to_string();
            world.close(client).await;
            alice = !alice;
            client = world.connect(alice.then_some("alice")).await;
            continue;
        }
        let epoch = world
            .router
            .stream_position("lobby")
            .map(|at| at.epoch.to_string())
            .unwrap_or_default();
        let frame = line.replace("@session", &session).replace("@epoch", &epoch);
        let expected_id = if frame.len() > MAX_FRAME_BYTES {
            protocol::read_id(&frame)
        } else {
            round_trip(&frame)
        };
        let answers = world.send(&mut client, &frame).await;
        if let Some(id) = expected_id {
            assert!(
                answers.iter().any(|a| a.get("ack") == Some(&id)),
                "frame with id {id} got no ack: {frame:?} → {answers:?}"
            );
        }
    }
    world.close(client).await;
}

/// Parse the envelope; a request renders back to a frame that parses the same. Returns
/// the id an ack must carry.
fn round_trip(frame: &str) -> Option<Value> {
    match protocol::parse(frame) {
        Ok(request) => {
            let mut again = json!({ "event": request.event, "data": request.data });
            if let Some(id) = &request.id {
                again["id"] = id.clone();
            }
            let reparsed = protocol::parse(&again.to_string()).expect("a rendered request parses");
            assert_eq!(reparsed.event, request.event);
            assert_eq!(reparsed.data, request.data);
            assert_eq!(reparsed.id, request.id);
            request.id
        }
        Err(rejected) => rejected.0,
    }
}
