//! Delivery across real nodes: every target kind (`room:`, `user:`, `conn:`, `all`,
//! `sender`), `exclude_sender`, `local` versus `cluster` scope, cluster-wide presence,
//! and "a join is effective when its ack arrives".
//!
//! Each test starts its own `redis-server` and 2–3 `wss-engine` processes serving
//! `tests/packs/cluster/basic`; recipients must get a delivery exactly once.

mod support;

use serde_json::{json, Value};
use support::client::Client;
use support::cluster::{serial, Cluster};

/// Expect exactly one delivery of `event` with `text`, then nothing more.
async fn gets_once(client: &mut Client, event: &str, text: &str) {
    let data = client.recv_event(event).await;
    assert_eq!(data["text"], text, "{}: wrong delivery {data}", client.conn);
    client.expect_silence().await;
}

async fn join(client: &mut Client, room: &str) -> Value {
    client.ok("room.join", json!({ "room": room })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivery_reaches_members_on_every_node_once() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut a2 = n1.connect().await;
    let mut b = n2.connect().await;
    let mut outsider = n2.connect().await;
    assert_ne!(a.node, b.node, "the two clients must be on different nodes");
    for c in [&mut a, &mut a2, &mut b] {
        join(c, "lobby").await;
    }

    a.ok("say.room", json!({ "room": "lobby", "text": "from n1" }))
        .await;
    for c in [&mut a, &mut a2, &mut b] {
        gets_once(c, "say.room", "from n1").await;
    }
    outsider.expect_silence().await;

    b.ok("say.room", json!({ "room": "lobby", "text": "from n2" }))
        .await;
    for c in [&mut a, &mut a2, &mut b] {
        gets_once(c, "say.room", "from n2").await;
    }
    outsider.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_sender_skips_only_the_sender_on_every_node() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut a2 = n1.connect().await;
    let mut b = n2.connect().await;
    for c in [&mut a, &mut a2, &mut b] {
        join(c, "lobby").await;
    }
    a.ok("say.room.others", json!({ "room": "lobby", "text": "hi" }))
        .await;
    gets_once(&mut a2, "say.room.others", "hi").await;
    gets_once(&mut b, "say.room.others", "hi").await;
    a.expect_silence().await;

    // The same from the other node: the exclusion travels with the message.
    b.ok(
        "say.room.others",
        json!({ "room": "lobby", "text": "back" }),
    )
    .await;
    gets_once(&mut a, "say.room.others", "back").await;
    gets_once(&mut a2, "say.room.others", "back").await;
    b.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_delivery_reaches_every_connection_of_the_user_on_every_node() {
    let _serial = serial();
    let cluster = Cluster::start_with_jwt(2).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice1 = n1.connect_as("alice").await;
    let mut alice2 = n2.connect_as("alice").await;
    let mut bob = n2.connect_as("bob").await;
    let mut anon = n1.connect().await;

    // From the node where alice has one connection, and from the other one.
    bob.ok("say.user", json!({ "user": "alice", "text": "for alice" }))
        .await;
    gets_once(&mut alice1, "say.user", "for alice").await;
    gets_once(&mut alice2, "say.user", "for alice").await;
    bob.expect_silence().await;
    anon.expect_silence().await;

    anon.ok("say.user", json!({ "user": "bob", "text": "for bob" }))
        .await;
    gets_once(&mut bob, "say.user", "for bob").await;
    alice1.expect_silence().await;
    alice2.expect_silence().await;
    anon.expect_silence().await;

    // A user's channel stays until their last connection on a node closes.
    alice2.close().await;
    bob.ok("say.user", json!({ "user": "alice", "text": "again" }))
        .await;
    gets_once(&mut alice1, "say.user", "again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_delivery_reaches_one_connection_on_another_node() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut a2 = n1.connect().await;
    let mut b = n2.connect().await;
    let mut b2 = n2.connect().await;

    let target = b.conn.clone();
    a.ok("say.conn", json!({ "conn": target, "text": "just you" }))
        .await;
    gets_once(&mut b, "say.conn", "just you").await;
    for c in [&mut a, &mut a2, &mut b2] {
        c.expect_silence().await;
    }

    // And the other way, plus a connection of the sender's own node.
    let (to_a2, to_b2) = (a2.conn.clone(), b2.conn.clone());
    b.ok("say.conn", json!({ "conn": to_a2, "text": "over" }))
        .await;
    b.ok("say.conn", json!({ "conn": to_b2, "text": "next door" }))
        .await;
    gets_once(&mut a2, "say.conn", "over").await;
    gets_once(&mut b2, "say.conn", "next door").await;
    a.expect_silence().await;
    b.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reaches_every_connection_on_every_node() {
    let _serial = serial();
    let cluster = Cluster::start(3, &[]).await;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(node.connect().await);
        clients.push(node.connect().await);
    }
    clients[2]
        .ok("say.all", json!({ "text": "everyone" }))
        .await;
    for c in &mut clients {
        gets_once(c, "say.all", "everyone").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_target_returns_to_the_sender_only() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut a2 = n1.connect().await;
    let mut b = n2.connect().await;
    a.ok("say.sender", json!({ "text": "me" })).await;
    gets_once(&mut a, "say.sender", "me").await;
    a2.expect_silence().await;
    b.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scope_stays_on_the_node_while_cluster_scope_crosses() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut a2 = n1.connect().await;
    let mut b = n2.connect().await;
    for c in [&mut a, &mut a2, &mut b] {
        join(c, "lobby").await;
    }

    a.ok(
        "say.room.local",
        json!({ "room": "lobby", "text": "local" }),
    )
    .await;
    gets_once(&mut a, "say.room.local", "local").await;
    gets_once(&mut a2, "say.room.local", "local").await;
    b.expect_silence().await;

    a.ok("say.all.local", json!({ "text": "local all" })).await;
    gets_once(&mut a, "say.all.local", "local all").await;
    gets_once(&mut a2, "say.all.local", "local all").await;
    b.expect_silence().await;

    // The same room, cluster scope: it crosses.
    a.ok("say.room", json!({ "room": "lobby", "text": "cluster" }))
        .await;
    for c in [&mut a, &mut a2, &mut b] {
        gets_once(c, "say.room", "cluster").await;
    }
    a.ok("say.all", json!({ "text": "cluster all" })).await;
    for c in [&mut a, &mut a2, &mut b] {
        gets_once(c, "say.all", "cluster all").await;
    }
}

fn ids(reply: &Value) -> Vec<String> {
    let mut ids: Vec<String> = reply
        .as_array()
        .unwrap_or_else(|| panic!("presence is a list: {reply}"))
        .iter()
        .map(|v| v.as_str().expect("connection ids are strings").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_of_every_node() {
    let _serial = serial();
    let cluster = Cluster::start(3, &[]).await;
    let mut a = cluster.nodes[0].connect().await;
    let mut b = cluster.nodes[1].connect().await;
    let mut c = cluster.nodes[2].connect().await;
    let mut observer = cluster.nodes[2].connect().await;

    join(&mut a, "lobby").await;
    let reply = join(&mut b, "lobby").await;
    let mut both = vec![a.conn.clone(), b.conn.clone()];
    both.sort();
    assert_eq!(ids(&reply), both, "the joiner's reply sees the other node");

    // Seen from each node, including one with no member of the room.
    for client in [&mut a, &mut b, &mut observer] {
        let reply = client.ok("room.presence", json!({ "room": "lobby" })).await;
        assert_eq!(ids(&reply), both, "presence seen from {}", client.node);
    }

    // A leave and a closed connection disappear everywhere.
    join(&mut c, "lobby").await;
    b.ok("room.leave", json!({ "room": "lobby" })).await;
    let c_conn = c.conn.clone();
    let mut expected = vec![a.conn.clone(), c_conn];
    expected.sort();
    let reply = a.ok("room.presence", json!({ "room": "lobby" })).await;
    assert_eq!(ids(&reply), expected, "after a leave on another node");
    c.close().await;
    let a_conn = a.conn.clone();
    let deadline = std::time::Instant::now() + support::cluster::WAIT;
    loop {
        let reply = observer
            .ok("room.presence", json!({ "room": "lobby" }))
            .await;
        if ids(&reply) == vec![a_conn.clone()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection stays in presence: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_effective_when_its_ack_arrives() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let mut sender = cluster.nodes[0].connect().await;
    // Fresh rooms each round: the joiner's node subscribes to the room channel for the
    // first time, the case where a late subscription would lose the message.
    for round in 0..20 {
        let mut joiner = cluster.nodes[1].connect().await;
        let room = format!("fresh-{round}");
        join(&mut joiner, &room).await;
        sender
            .ok(
                "say.room",
                json!({ "room": room, "text": format!("r{round}") }),
            )
            .await;
        let data = joiner.recv_event("say.room").await;
        assert_eq!(data["text"], format!("r{round}"), "round {round}");
        joiner.close().await;
    }
    // And a joiner on the sender's node hears a message published by the other node.
    let mut other = cluster.nodes[1].connect().await;
    for round in 0..10 {
        let room = format!("back-{round}");
        join(&mut sender, &room).await;
        other
            .ok("say.room", json!({ "room": room, "text": "b" }))
            .await;
        assert_eq!(sender.recv_event("say.room").await["text"], "b");
    }
}

/// A steady stream across nodes for longer than the Pub/Sub liveness check period:
/// nothing may be lost, and an idle-but-healthy subscription must never be torn down
/// (it once was, every 3 s, because PING in subscribed mode answers an array).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_across_nodes_loses_nothing_over_several_liveness_checks() {
    let _serial = serial();
    let cluster = Cluster::start(2, &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = n1.connect().await;
    let mut b = n2.connect().await;
    join(&mut a, "steady").await;
    join(&mut b, "steady").await;

    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        a.ok(
            "say.room",
            json!({ "room": "steady", "text": format!("m{sent}") }),
        )
        .await;
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    for i in 0..sent {
        let data = b.recv_event("say.room").await;
        assert_eq!(
            data["text"],
            format!("m{i}"),
            "message {i} of {sent} lost or reordered"
        );
    }
    b.expect_silence().await;
    for node in &cluster.nodes {
        let log = node.log_text();
        assert!(
            !log.contains("Pub/Sub connection lost"),
            "a healthy Pub/Sub connection was dropped:\n{}",
            node.log_tail(20)
        );
    }
}
