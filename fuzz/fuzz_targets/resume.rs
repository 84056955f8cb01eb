//! `$resume` payloads against a real session: a connection joins `lobby` (history),
//! `doc:1` (history) and `plain` (none), posts to them and closes; a second connection
//! then sends `{"event": "$resume", "data": <input>, "id": "r"}`, after which it must
//! still be able to post. In the input, `@session` stands for the closed connection's
//! session and `@epoch` for `lobby`'s epoch (both random, so unguessable).
//!
//! Checked: nothing panics; the ack is well-formed; a successful resume reports only
//! rooms the session held, each with `recovered` and, when recovered, `replayed`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wss_engine_fuzz::{runtime, World};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    runtime().block_on(run(text));
});

async fn run(payload: &str) {
    let world = World::new();
    let mut first = world.connect(None).await;
    for room in ["lobby", "doc:1", "plain"] {
        world
            .send(
                &mut first,
                &format!(r#"{{"event":"join","data":{{"room":"{room}"}}}}"#),
            )
            .await;
        for i in 0..3 {
            world
                .send(
                    &mut first,
                    &format!(r#"{{"event":"say","data":{{"room":"{room}","text":"m{i}"}}}}"#),
                )
                .await;
        }
    }
    let session = first.conn.session.expose().to_string();
    world.close(first).await;
    // One more message each, which the closed connection missed.
    let mut other = world.connect(None).await;
    for room in ["lobby", "doc:1"] {
        world
            .send(
                &mut other,
                &format!(r#"{{"event":"join","data":{{"room":"{room}"}}}}"#),
            )
            .await;
        world
            .send(
                &mut other,
                &format!(r#"{{"event":"say","data":{{"room":"{room}","text":"late"}}}}"#),
            )
            .await;
    }

    let epoch = world
        .router
        .stream_position("lobby")
        .map(|at| at.epoch.to_string())
        .unwrap_or_default();
    let data = payload
        .replace("@session", &session)
        .replace("@epoch", &epoch);
    let mut second = world.connect(None).await;
    let frame = format!(r#"{{"event":"$resume","id":"r","data":{data}}}"#);
    let answers = world.send(&mut second, &frame).await;
    if let Some(ack) = answers.iter().find(|a| a["ack"] == "r") {
        if ack["ok"] == true {
            let rooms = ack["data"]["rooms"]
                .as_object()
                .unwrap_or_else(|| panic!("a resume ack without rooms: {ack}"));
            for (room, report) in rooms {
                assert!(
                    ["lobby", "doc:1", "plain"].contains(&room.as_str()),
                    "{ack}"
                );
                match report["recovered"] {
                    Value::Bool(true) => assert!(report["replayed"].is_u64(), "{ack}"),
                    Value::Bool(false) => {}
                    _ => panic!("no `recovered` for {room}: {ack}"),
                }
            }
        }
    }
    world
        .send(
            &mut second,
            r#"{"event":"say","id":1,"data":{"room":"lobby","text":"after"}}"#,
        )
        .await;
    world.close(second).await;
    world.close(other).await;
}
