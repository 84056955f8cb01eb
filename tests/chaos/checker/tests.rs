//! The checker against synthetic histories: a clean one passes, and each kind of
//! violation is named.

use super::*;
use serde_json::json;

/// A small history that passes: one subscriber, one publisher, one counter, a drop
/// fault the node noticed in time, and the final reads.
fn clean() -> Vec<Value> {
    vec![
        json!({"t": 0, "kind": "node_start", "node": "n1", "pid": 10, "reason": "initial"}),
        json!({"t": 1, "kind": "readyz", "node": "n1", "status": 200}),
        json!({"t": 5, "kind": "joined", "client": "s1", "room": "h:0", "epoch": "E", "offset": 0}),
        json!({"t": 10, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-1"}),
        json!({"t": 11, "kind": "op", "op": "say", "phase": "ack", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-1"}),
        json!({"t": 12, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 1, "id": "p1-1"}),
        json!({"t": 20, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-1"}),
        json!({"t": 21, "kind": "op", "op": "incr", "phase": "ack", "client": "c1", "node": "n1", "id": "c1-1", "value": 1}),
        json!({"t": 22, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-2"}),
        json!({"t": 30, "kind": "op", "op": "incr", "phase": "unknown", "client": "c1", "node": "n1", "id": "c1-2"}),
        json!({"t": 1000, "kind": "fault", "fault": "drop", "node": "n1", "phase": "start"}),
        json!({"t": 3000, "kind": "readyz", "node": "n1", "sent": 2990, "status": 200}),
        json!({"t": 9500, "kind": "readyz", "node": "n1", "sent": 9400, "status": 503}),
        json!({"t": 21000, "kind": "fault", "fault": "drop", "node": "n1", "phase": "end"}),
        json!({"t": 22000, "kind": "readyz", "node": "n1", "status": 200}),
        json!({"t": 23000, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-2"}),
        json!({"t": 23001, "kind": "op", "op": "say", "phase": "ack", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-2"}),
        json!({"t": 23002, "kind": "resume", "client": "s1", "node": "n1", "ok": true, "rooms": {"h:0": {"recovered": true, "replayed": 1}}}),
        json!({"t": 23003, "kind": "joined", "client": "s1", "room": "h:0", "epoch": "E", "offset": 1}),
        json!({"t": 23004, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 2, "id": "p1-2"}),
        json!({"t": 23005, "kind": "rss", "node": "n1", "kb": 50000}),
        json!({"t": 24000, "kind": "final_history", "room": "h:0", "epoch": "E", "head": 2, "complete": true, "entries": [[1, "p1-1"], [2, "p1-2"]]}),
        // c1-2's outcome is unknown: applied or not, both pass.
        json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 2, "log": ["c1-1", "c1-2"]}),
        json!({"t": 24002, "kind": "final_ready", "node": "n1", "ready": true}),
    ]
}

fn verdict(events: &[Value]) -> Verdict {
    check(events, &Limits::default())
}

fn with(mut events: Vec<Value>, extra: Value) -> Vec<Value> {
    events.push(extra);
    events.sort_by_key(t);
    events
}

fn assert_caught(events: &[Value], needle: &str) {
    let v = verdict(events);
    assert!(
        v.violations.iter().any(|m| m.contains(needle)),
        "expected a violation containing {needle:?}, got {:?}",
        v.violations
    );
}

#[test]
fn a_clean_history_passes() {
    let v = verdict(&clean());
    assert!(v.passed(), "{:?}", v.violations);
    assert_eq!(v.stats["deliveries"], 2);
    assert_eq!(v.stats["ops.incr.ack"], 1);
    assert_eq!(v.stats["faults.drop"], 1);
}

#[test]
fn an_unknown_increment_may_also_be_missing() {
    let mut events = clean();
    let fin = events
        .iter_mut()
        .find(|e| e["kind"] == "final_counter")
        .unwrap();
    *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 1, "log": ["c1-1"]});
    let v = verdict(&events);
    assert!(v.passed(), "{:?}", v.violations);
}

#[test]
fn catches_a_duplicate_delivery() {
    let events = with(
        clean(),
        json!({"t": 23010, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 2, "id": "p1-2"}),
    );
    assert_caught(&events, "duplicate delivery: offset 2");
}

#[test]
fn catches_a_hole() {
    // Offset 1 never arrives, and nothing announced it: the stream goes 0, 2.
    let mut events = clean();
    events.retain(|e| {
        !(e["kind"] == "delivery" && e["offset"] == 1)
            && e["kind"] != "resume"
            && !(e["kind"] == "joined" && e["offset"] == 1)
    });
    assert_caught(
        &events,
        "hole: offsets 1..=1 never delivered (got 2 after 0)",
    );
}

#[test]
fn a_resume_not_recovered_allows_the_jump() {
    let mut events = clean();
    events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 1));
    for e in &mut events {
        if e["kind"] == "resume" {
            e["rooms"] = json!({"h:0": {"recovered": false}});
        }
    }
    assert!(verdict(&events).passed());
    // … and so does a `$gap`.
    let mut events = clean();
    events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 1));
    events.retain(|e| e["kind"] != "resume" && !(e["kind"] == "joined" && e["offset"] == 1));
    let events = with(
        events,
        json!({"t": 23003, "kind": "gap", "client": "s1", "room": "h:0", "epoch": "E", "offset": 1}),
    );
    let v = verdict(&events);
    assert!(v.passed(), "{:?}", v.violations);
}

#[test]
fn catches_a_recovered_resume_that_jumps() {
    let mut events = clean();
    for e in &mut events {
        if e["kind"] == "joined" && e["offset"] == 1 {
            e["offset"] = json!(0);
        }
    }
    assert_caught(&events, "a resume reported recovered, yet $joined moved");
}

#[test]
fn catches_a_lost_acked_increment() {
    let mut events = clean();
    let fin = events
        .iter_mut()
        .find(|e| e["kind"] == "final_counter")
        .unwrap();
    *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 1, "log": ["c1-2"]});
    // The count alone looks fine (c1-2 may have been applied); the log tells.
    assert_caught(&events, "acked increment c1-1 is lost");
    let fin = events
        .iter_mut()
        .find(|e| e["kind"] == "final_counter")
        .unwrap();
    *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 0, "log": []});
    assert_caught(
        &events,
        "counter is 0, outside [1 acked, 2 acked + unknown]",
    );
}

#[test]
fn catches_an_increment_applied_twice_or_after_an_error() {
    let mut events = clean();
    let fin = events
        .iter_mut()
        .find(|e| e["kind"] == "final_counter")
        .unwrap();
    *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 3, "log": ["c1-1", "c1-1", "c1-2"]});
    assert_caught(&events, "increment c1-1 applied 2 times");
    assert_caught(&events, "counter is 3, outside");
    // A failure other than `unavailable` must have changed nothing.
    let mut events = clean();
    for e in &mut events {
        if e["id"] == "c1-2" && e["phase"] == "unknown" {
            e["phase"] = json!("fail");
            e["code"] = json!("conflict");
        }
    }
    assert_caught(
        &events,
        "counter c1: c1-2 was answered `conflict` at 30 ms, yet applied",
    );
    // `unavailable` may have been applied as it failed (Redis ran it, then the
    // connection broke before the reply) …
    for e in &mut events {
        if e["id"] == "c1-2" && e["phase"] == "fail" {
            e["code"] = json!("unavailable");
        }
    }
    let v = verdict(&events);
    assert!(v.passed(), "{:?}", v.violations);
    assert_eq!(v.stats["ops.unavailable_but_applied"], 1);
    // … but not after something sent once its failure was answered.
    let events = with(
        events,
        json!({"t": 40, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-3"}),
    );
    let mut events = with(
        events,
        json!({"t": 41, "kind": "op", "op": "incr", "phase": "ack", "client": "c1", "node": "n1", "id": "c1-3"}),
    );
    let fin = events
        .iter_mut()
        .find(|e| e["kind"] == "final_counter")
        .unwrap();
    *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 3, "log": ["c1-1", "c1-3", "c1-2"]});
    assert_caught(
        &events,
        "counter c1: c1-2 was answered `unavailable` at 30 ms, yet applied after c1-3, sent at 40 ms",
    );
}

#[test]
fn catches_a_lost_acked_message() {
    let mut events = clean();
    let h = events
        .iter_mut()
        .find(|e| e["kind"] == "final_history")
        .unwrap();
    h["entries"] = json!([[1, "p1-1"], [2, "p1-9"]]);
    assert_caught(
        &events,
        "acked message p1-2 of p1 (sent at 23000 ms) is lost",
    );
    assert_caught(&events, "offset 2 holds p1-9, never sent");
    assert_caught(&events, "s1 h:0: got p1-2 at offset 2, history holds p1-9");
}

#[test]
fn catches_a_message_published_after_its_failure() {
    // p1-9 failed with `unavailable` at 15 ms, and is in the stream after p1-2,
    // which was sent at 23000 ms: it ran late (the seed 1 finding).
    let mut events = clean();
    events.push(json!({"t": 14, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-9"}));
    events.push(json!({"t": 15, "kind": "op", "op": "say", "phase": "fail", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-9", "code": "unavailable"}));
    events.sort_by_key(t);
    for e in &mut events {
        if e["kind"] == "final_history" {
            e["head"] = json!(3);
            e["entries"] = json!([[1, "p1-1"], [2, "p1-2"], [3, "p1-9"]]);
        }
    }
    assert_caught(
        &events,
        "room h:0 offset 3: p1-9 was answered `unavailable` at 15 ms, yet applied after p1-2, sent at 23000 ms",
    );
}

#[test]
fn catches_a_subscriber_left_behind() {
    let mut events = clean();
    events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 2));
    assert_caught(&events, "s1 h:0: ended at E/1, the room is at E/2");
}

#[test]
fn catches_readyz_true_during_an_outage() {
    let events = with(
        clean(),
        json!({"t": 12000, "kind": "readyz", "node": "n1", "sent": 11990, "status": 200}),
    );
    assert_caught(
        &events,
        "n1: /readyz 200 at 11990 ms (1 samples) during drop 1000..21000 ms",
    );
    // Within the detection delay it may still say ready (see `clean`); a Redis
    // restart concerns every node.
    let events = with(
        clean(),
        json!({"t": 30000, "kind": "fault", "fault": "redis_restart", "phase": "start"}),
    );
    let events = with(
        events,
        json!({"t": 36000, "kind": "readyz", "node": "n1", "status": 200}),
    );
    let events = with(
        events,
        json!({"t": 40000, "kind": "fault", "fault": "redis_restart", "phase": "end"}),
    );
    let events = with(
        events,
        json!({"t": 40500, "kind": "readyz", "node": "n1", "status": 200}),
    );
    assert_caught(&events, "during redis_restart 30000..40000 ms");
}

#[test]
fn catches_a_node_that_does_not_recover() {
    let mut events = clean();
    events.retain(|e| !(e["kind"] == "readyz" && e["t"] == 22000));
    let events = with(
        events,
        json!({"t": 60000, "kind": "readyz", "node": "n1", "status": 503}),
    );
    assert_caught(
        &events,
        "n1: never ready again after drop ended at 21000 ms",
    );
}

#[test]
fn catches_a_restart_by_hand_and_a_crash() {
    let events = with(
        clean(),
        json!({"t": 22500, "kind": "node_start", "node": "n1", "pid": 11, "reason": "after_kill"}),
    );
    assert_caught(
        &events,
        "n1: started again at 22500 ms (after_kill) without a kill fault",
    );
    let events = with(
        events,
        json!({"t": 22400, "kind": "fault", "fault": "kill", "node": "n1", "phase": "start"}),
    );
    assert!(
        verdict(&events).passed(),
        "{:?}",
        verdict(&events).violations
    );
    let events = with(
        clean(),
        json!({"t": 22500, "kind": "node_exit", "node": "n1", "pid": 10, "status": "signal: 6"}),
    );
    assert_caught(&events, "n1: exited by itself at 22500 ms");
}

#[test]
fn catches_memory_above_the_bound() {
    let events = with(
        clean(),
        json!({"t": 23500, "kind": "rss", "node": "n1", "kb": 900_000}),
    );
    assert_caught(&events, "n1: RSS reached 900000 KiB");
}
