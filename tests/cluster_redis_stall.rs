//! Redis stalls (SIGSTOP) for longer than the node TTL and then resumes with its data:
//! every heartbeat key expired meanwhile, yet every node is alive and kept its
//! connections. No node may then treat the others as dead: no live connection's
//! `$disconnect` hook runs, nobody is told a live member left, presence stays whole.
//! While it is stalled (bytes accepted, nothing answered) `/readyz` turns non-200 and a
//! state event answers `unavailable` within the bound, with `/healthz` still 200.
//!
//! (A node that really died during the stall is still cleaned up: that is covered by
//! `cluster_node_crash`; this test is about the nodes that did not.)

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{serial, Cluster};

const NODE_TTL_SECS: u64 = 3;
/// Health pings time out after 1 s, Pub/Sub pings every 3 s after 2 s.
const NOTICE_LIMIT: Duration = Duration::from_secs(6);
/// "An event needing state answers `unavailable` within ~3 s" (2 s Redis timeout).
const UNAVAILABLE_LIMIT: Duration = Duration::from_millis(3500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_the_node_ttl_disconnects_no_live_connection() {
    let _serial = serial();
    let ttl = NODE_TTL_SECS.to_string();
    let cluster = Cluster::start(2, &["--node-ttl", &ttl, "--idle-timeout", "300"]).await;
    let mut a = cluster.nodes[0].connect().await;
    let mut b = cluster.nodes[1].connect().await;
    a.ok("room.join", json!({ "room": "r" })).await;
    b.ok("room.join", json!({ "room": "r" })).await;
    let mut both = vec![a.conn.clone(), b.conn.clone()];
    both.sort();

    let paused = Instant::now();
    cluster.redis.pause();
    // A stalled Redis accepts bytes and answers nothing: the bounded timeouts, not a
    // closed socket, must notice it.
    let mut not_ready = Vec::new();
    for node in &cluster.nodes {
        loop {
            if node.status("/readyz").await != Some(200) {
                not_ready.push(paused.elapsed());
                break;
            }
            assert!(
                paused.elapsed() < NOTICE_LIMIT,
                "/readyz of {} still 200 {NOTICE_LIMIT:?} into the stall",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(node.status("/healthz").await, Some(200));
    }
    let asked = Instant::now();
    let ack = a
        .call_within("state.read", json!({ "key": "k" }), Duration::from_secs(10))
        .await;
    let took = asked.elapsed();
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        took <= UNAVAILABLE_LIMIT,
        "`unavailable` took {took:?} during a stall"
    );
    let stall = Duration::from_secs(2 * NODE_TTL_SECS + 1);
    tokio::time::sleep(stall.saturating_sub(paused.elapsed())).await;
    let resumed = Instant::now();
    cluster.redis.resume();
    for node in &cluster.nodes {
        node.wait_ready(Duration::from_secs(15)).await;
    }
    println!(
        "redis stall (SIGSTOP) of {:.1} s: /readyz non-200 after {:.2} s / {:.2} s, \
         state read answered `unavailable` in {:.2} s, both nodes ready {:.2} s after SIGCONT",
        stall.as_secs_f64(),
        not_ready[0].as_secs_f64(),
        not_ready[1].as_secs_f64(),
        took.as_secs_f64(),
        resumed.elapsed().as_secs_f64()
    );
    // Give every node several heartbeat and dead-node scan periods after the return.
    tokio::time::sleep(Duration::from_secs(2 * NODE_TTL_SECS)).await;

    for c in [&a, &b] {
        assert_eq!(
            cluster.state_json(&format!("gone:{}", c.conn)),
            None,
            "$disconnect ran for {}, a live connection of a live node",
            c.conn
        );
    }
    for c in [&mut a, &mut b] {
        if let Some(frame) = c.try_recv(Duration::from_millis(500)).await {
            panic!("{} was told something after the stall: {frame}", c.conn);
        }
    }
    let reply = a.ok("room.presence", json!({ "room": "r" })).await;
    let mut ids: Vec<String> = reply
        .as_array()
        .expect("presence is a list")
        .iter()
        .map(|v| v.as_str().expect("ids").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, both, "presence after the stall");
    // State works and is shared (no reply of the stalled era is handed to a new call).
    a.ok("state.put", json!({ "key": "k", "value": "after" }))
        .await;
    assert_eq!(b.ok("state.read", json!({ "key": "k" })).await, "after");
    // And delivery still works both ways.
    a.ok("say.room", json!({ "room": "r", "text": "after stall" }))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_event("say.room").await["text"], "after stall");
    }
}

/// An event answered `unavailable` because Redis did not answer in time must not take
/// effect later: the commands it sent sit in the stalled Redis' socket buffer (or in a
/// TCP retransmission queue, when packets are dropped) and would otherwise run when
/// Redis resumes, long after the client was told nothing happened. Found by the chaos
/// soak (seed 1): a `say` answered `unavailable` during a 20 s packet drop was in the
/// room's stream 20 s later, delivered to every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_unavailable_during_a_stall_never_takes_effect_later() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &support::cluster::pack("chaos"), &[]).await;
    let mut member = cluster.nodes[1].connect().await;
    member.ok("join", json!({ "room": "h:late" })).await;
    let mut a = cluster.nodes[0].connect().await;
    a.ok("put", json!({ "c": "x", "n": 5 })).await;
    a.ok("say", json!({ "room": "h:late", "id": "before" }))
        .await;
    let first = member.recv().await;
    assert_eq!(first["data"]["id"], "before", "{first}");
    let offset = first["offset"].as_u64().expect("an offset");

    // One stall per event: after the first timeout the health check fails fast.
    for (event, data) in [
        ("say", json!({ "room": "h:late", "id": "stalled" })),
        ("put", json!({ "c": "x", "n": 99 })),
    ] {
        cluster.redis.pause();
        let ack = a.call_within(event, data, Duration::from_secs(10)).await;
        assert_eq!(ack["error"]["code"], "unavailable", "{event}: {ack}");
        cluster.redis.resume();
        for node in &cluster.nodes {
            node.wait_ready(Duration::from_secs(15)).await;
        }
    }
    // Whatever Redis still had queued from the stall has run by now.
    a.ok("say", json!({ "room": "h:late", "id": "after" }))
        .await;
    let next = member.recv().await;
    assert_eq!(
        (next["data"]["id"].as_str(), next["offset"].as_u64()),
        (Some("after"), Some(offset + 1)),
        "a delivery answered `unavailable` reached the room: {next}"
    );
    let read = a.ok("read", json!({ "c": "x" })).await;
    assert_eq!(
        read["n"], 5,
        "a write answered `unavailable` took effect: {read}"
    );
}
