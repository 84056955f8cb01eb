//! Nodes that go away. SIGKILL: within heartbeat TTL + 5 s the survivors remove the dead
//! node's connections from presence and run each one's `$disconnect` hook exactly once
//! (two survivors, one lease). SIGTERM: the node's clients get close 1001, the node
//! deregisters and exits 0, and a client reconnecting to another node finds the shared
//! state written before intact.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{Client, Closed};
use support::cluster::{serial, Cluster};

const NODE_TTL_SECS: u64 = 3;
/// The issue's bound for a dead node's cleanup.
const CLEANUP_LIMIT: Duration = Duration::from_secs(NODE_TTL_SECS + 5);

fn ids(reply: &Value) -> Vec<String> {
    let mut ids: Vec<String> = reply
        .as_array()
        .unwrap_or_else(|| panic!("presence is a list: {reply}"))
        .iter()
        .map(|v| v.as_str().expect("ids are strings").to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Collect `member.gone` deliveries until `want` distinct `(conn, room)` pairs arrived
/// (bounded by `deadline`), then check nothing more comes.
async fn gone_events(client: &mut Client, want: usize, deadline: Instant) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = client.try_recv(left).await else {
            panic!(
                "{}: only {seen:?} of {want} `member.gone` deliveries by the deadline",
                client.conn
            );
        };
        assert_eq!(frame["event"], "member.gone", "{}: {frame}", client.conn);
        seen.push((
            frame["data"]["conn"].as_str().expect("conn").to_string(),
            frame["data"]["room"].as_str().expect("room").to_string(),
        ));
    }
    seen.sort();
    seen
}

fn counter(cluster: &Cluster, key: &str) -> Option<Value> {
    cluster.state_json(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_clean_up_after_a_killed_node_exactly_once() {
    let _serial = serial();
    let ttl = NODE_TTL_SECS.to_string();
    let mut cluster = Cluster::start(3, &["--node-ttl", &ttl]).await;
    let mut a = cluster.nodes[0].connect().await;
    let mut a2 = cluster.nodes[0].connect().await;
    let mut b = cluster.nodes[1].connect().await;
    let mut k1 = cluster.nodes[2].connect().await;
    let mut k2 = cluster.nodes[2].connect().await;
    for c in [&mut a, &mut b, &mut k1, &mut k2] {
        c.ok("room.join", json!({ "room": "r" })).await;
    }
    for c in [&mut a2, &mut k2] {
        c.ok("room.join", json!({ "room": "s" })).await;
    }
    let reply = a.ok("room.presence", json!({ "room": "r" })).await;
    assert_eq!(
        ids(&reply),
        sorted(vec![
            a.conn.clone(),
            b.conn.clone(),
            k1.conn.clone(),
            k2.conn.clone()
        ])
    );
    let dead_id = cluster.nodes[2].id.clone();
    let (k1_id, k2_id) = (k1.conn.clone(), k2.conn.clone());

    let killed = Instant::now();
    cluster.nodes[2].sigkill();
    let deadline = killed + CLEANUP_LIMIT;

    // Presence, seen from either survivor, loses the dead node's connections in time.
    let survivors_view = sorted(vec![a.conn.clone(), b.conn.clone()]);
    let mut cleaned_after = Duration::ZERO;
    for i in 0..2 {
        let node = &cluster.nodes[i];
        let mut probe = node.connect().await;
        let took = loop {
            let reply = probe.ok("room.presence", json!({ "room": "r" })).await;
            if ids(&reply) == survivors_view {
                break killed.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "presence of `r` seen from {} still lists the dead node's connections \
                 {CLEANUP_LIMIT:?} after the kill: {reply}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        cleaned_after = cleaned_after.max(took);
        let reply = probe.ok("room.presence", json!({ "room": "s" })).await;
        assert_eq!(
            ids(&reply),
            vec![a2.conn.clone()],
            "room `s` from {}",
            node.name
        );
        probe.close().await;
    }

    // The hooks' emits reach the room members on both survivors, once per connection.
    let expect_r = sorted(vec![k1_id.clone(), k2_id.clone()]);
    for c in [&mut a, &mut b] {
        let seen = gone_events(c, 2, deadline).await;
        let conns: Vec<String> = seen.iter().map(|(conn, _)| conn.clone()).collect();
        assert_eq!(conns, expect_r, "{}: {seen:?}", c.conn);
        assert!(seen.iter().all(|(_, room)| room == "r"), "{seen:?}");
    }
    let seen = gone_events(&mut a2, 1, deadline).await;
    assert_eq!(seen, vec![(k2_id.clone(), "s".to_string())]);
    println!(
        "node SIGKILL (--node-ttl {NODE_TTL_SECS}): presence clean on both survivors after {:.2} s, \
         $disconnect deliveries by {:.2} s",
        cleaned_after.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );

    // Exactly once, even with two survivors scanning: wait more than a TTL (several scan
    // periods) and look again.
    tokio::time::sleep(Duration::from_secs(NODE_TTL_SECS + 1)).await;
    for conn in [&k1_id, &k2_id] {
        assert_eq!(
            counter(&cluster, &format!("gone:{conn}")),
            Some(json!(1)),
            "$disconnect of {conn} must have run exactly once"
        );
    }
    for c in [&mut a, &mut a2, &mut b] {
        c.expect_silence().await;
    }

    // The registry forgot the dead node.
    let mut redis = cluster.redis.conn();
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(cluster.key("nodes"))
        .query(&mut redis)
        .expect("SMEMBERS nodes");
    assert!(
        !nodes.contains(&dead_id),
        "dead node still registered: {nodes:?}"
    );
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let conns: i64 = redis::cmd("EXISTS")
        .arg(cluster.key(&format!("node:{dead_id}:conns")))
        .query(&mut redis)
        .expect("EXISTS");
    assert_eq!(conns, 0, "the dead node's connection list is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_and_state_survives_on_another_node() {
    let _serial = serial();
    let ttl = NODE_TTL_SECS.to_string();
    let mut cluster = Cluster::start(2, &["--node-ttl", &ttl]).await;
    let mut a = cluster.nodes[0].connect().await;
    let mut a2 = cluster.nodes[0].connect().await;
    let mut b = cluster.nodes[1].connect().await;
    a.ok("room.join", json!({ "room": "r" })).await;
    b.ok("room.join", json!({ "room": "r" })).await;
    // Shared state written through the node that is about to stop.
    a.ok(
        "state.put",
        json!({ "key": "doc", "value": { "v": 42, "by": "a" } }),
    )
    .await;
    for _ in 0..5 {
        a2.ok("counter.bump", json!({})).await;
    }
    let (a_id, a2_id) = (a.conn.clone(), a2.conn.clone());
    let stopped_id = cluster.nodes[0].id.clone();

    cluster.nodes[0].signal("TERM");
    for c in [&mut a, &mut a2] {
        match c.recv_close_within(Duration::from_secs(10)).await.0 {
            Closed::Frame(code, _) => assert_eq!(code, 1001, "{}: close code", c.conn),
            other => panic!("{}: expected close 1001, got {other:?}", c.conn),
        }
    }
    let status = cluster.nodes[0].wait_exit(Duration::from_secs(15));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // The stopped node deregistered itself.
    let mut redis = cluster.redis.conn();
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(cluster.key("nodes"))
        .query(&mut redis)
        .expect("SMEMBERS nodes");
    assert!(!nodes.contains(&stopped_id), "still registered: {nodes:?}");
    let beat: i64 = redis::cmd("EXISTS")
        .arg(cluster.key(&format!("node:{stopped_id}")))
        .query(&mut redis)
        .expect("EXISTS");
    assert_eq!(beat, 0, "the heartbeat key is removed on shutdown");

    // The client reconnects to the other node: the state is intact.
    let mut again = cluster.nodes[1].connect().await;
    assert_eq!(
        again.ok("state.read", json!({ "key": "doc" })).await,
        json!({ "v": 42, "by": "a" })
    );
    assert_eq!(again.ok("counter.bump", json!({})).await, 6);
    // The room no longer lists the stopped node's connections.
    let reply = again.ok("room.presence", json!({ "room": "r" })).await;
    assert_eq!(ids(&reply), vec![b.conn.clone()]);

    // The stopped node's `$disconnect` ran for its connections, once: the survivor must
    // not run them again after the TTL (the node deregistered, it did not die).
    tokio::time::sleep(Duration::from_secs(NODE_TTL_SECS + 2)).await;
    for conn in [&a_id, &a2_id] {
        assert_eq!(
            cluster.state_json(&format!("gone:{conn}")),
            Some(json!(1)),
            "$disconnect of {conn} must have run exactly once"
        );
    }
    let gone = gone_events(&mut b, 1, Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(gone, vec![(a_id.clone(), "r".to_string())]);
    b.expect_silence().await;
}
