//! `--redis redis+sentinel://…/mymaster`: nodes follow the primary Sentinel names,
//! for commands and Pub/Sub, across a forced failover (`SENTINEL FAILOVER`), without a
//! restart. Real processes: a primary, a replica, three Sentinels (quorum 2), two nodes.
//!
//! After the failover the old primary is a replica: a node still writing to it gets
//! `READONLY`, and one still subscribed there hears nothing published on the new one.
//! Both are checked.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::cluster::{
    pack, serial, unique_prefix, Node, RedisServer, Sentinel, SENTINEL_MASTER, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_sentinel_failover_for_commands_and_pubsub() {
    let _serial = serial();
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
    // A failover needs the replica known and a quorum of Sentinels that know each other.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sentinels.iter().all(|s| {
        let (replicas, others) = s.known();
        replicas >= 1 && others >= 2
    }) {
        assert!(
            Instant::now() < deadline,
            "the Sentinels did not find the replica and each other"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let url = format!(
        "redis+sentinel://{}/{SENTINEL_MASTER}",
        sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let prefix = unique_prefix("sentinel");
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|name| Node::spawn(name, &pack("basic"), &url, &prefix, &[]))
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    for c in [&mut a, &mut b] {
        c.ok("room.join", json!({ "room": "r" })).await;
    }
    a.ok("state.put", json!({ "key": "k", "value": 1 })).await;
    a.ok("say.room", json!({ "room": "r", "text": "before" }))
        .await;
    let got = b.recv_event("say.room").await;
    assert_eq!(got["text"], "before");

    // Forced failover: the replica becomes the primary, the primary its replica.
    let asked = Instant::now();
    let reply: String = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(SENTINEL_MASTER)
        .query(&mut sentinels[0].conn().expect("a sentinel"))
        .expect("SENTINEL FAILOVER");
    assert_eq!(reply, "OK");
    while sentinels[0].primary_port() != Some(replica.port) {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the failover did not happen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let switched = asked.elapsed();

    // Both nodes write to the new primary and hear what is published there, within a
    // few seconds of the switch, by themselves. (Until the old primary is told it is a
    // replica it still takes writes, which its resync then drops: Redis's own window,
    // which `--redis-wait-replicas` closes. So a write counts once the new one holds it.)
    let deadline = Instant::now() + WAIT;
    let mut value = 1;
    let followed = loop {
        value += 1;
        let ack = a
            .call("state.put", json!({ "key": "k", "value": value }))
            .await;
        let held: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}s:k"))
            .query(&mut replica.conn())
            .expect("GET on the new primary");
        if ack["ok"] == true && held == Some(value.to_string()) {
            break asked.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no write reached the new primary: {ack}, it holds {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for node in &nodes {
        node.wait_ready(WAIT).await;
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let text = format!("after from n{}", from + 1);
        let (sender, receiver) = if from == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let deadline = Instant::now() + WAIT;
        // The receiver's node may take a moment to resubscribe: resend until heard.
        loop {
            sender
                .ok("say.room", json!({ "room": "r", "text": text }))
                .await;
            if let Some(frame) = receiver.try_recv(Duration::from_millis(500)).await {
                if frame["data"]["text"] == text.as_str() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "n{} did not hear n{} after the failover",
                to + 1,
                from + 1
            );
        }
    }
    println!(
        "sentinel failover: switched in {:.2} s, first write on the new primary {:.2} s after SENTINEL FAILOVER",
        switched.as_secs_f64(),
        followed.as_secs_f64()
    );
    drop(primary);
}
