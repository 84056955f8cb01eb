//! Redis stalls (SIGSTOP) for longer than the node TTL and then resumes with its data:
//! every heartbeat key expired meanwhile, yet every node is alive and kept its
//! connections. No node may then treat the others as dead: no live connection's
//! `$disconnect` hook runs, nobody is told a live member left, presence stays whole.
//!
//! (A node that really died during the stall is still cleaned up: that is covered by
//! `cluster_node_crash`; this test is about the nodes that did not.)

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{serial, Cluster};
use serde_json::json;

const NODE_TTL_SECS: u64 = 3;

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

    cluster.redis.pause();
    tokio::time::sleep(Duration::from_secs(2 * NODE_TTL_SECS + 1)).await;
    let resumed = Instant::now();
    cluster.redis.resume();
    for node in &cluster.nodes {
        node.wait_ready(Duration::from_secs(15)).await;
    }
    println!(
        "redis stall of {} s: both nodes ready {:.2} s after SIGCONT",
        2 * NODE_TTL_SECS + 1,
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
    // And delivery still works both ways.
    a.ok("say.room", json!({ "room": "r", "text": "after stall" }))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_event("say.room").await["text"], "after stall");
    }
}
