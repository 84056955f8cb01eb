//! The HTTP API across nodes on a real Redis: a user's connections and disconnects
//! reach whichever node holds the sockets, idempotency keys hold cluster-wide, and
//! nodes, rooms and counters are the whole fleet's.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::api::Api;
use support::client::eventually;
use support::cluster::{pack, serial, Cluster, JWT_SECRET, WAIT};

const SECRET: &str = "cluster-api-secret-0123";

async fn start() -> Cluster {
    let key = format!("ops={SECRET}");
    Cluster::start_pack(
        2,
        &pack("api"),
        &[
            "--jwt-secret",
            JWT_SECRET,
            "--api-key",
            &key,
            "--node-ttl",
            "2",
        ],
    )
    .await
}

fn conn_ids(user: &Value) -> Vec<String> {
    user["data"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_are_found_and_disconnected_on_every_node() {
    let _serial = serial();
    let cluster = start().await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let api = Api::new(n1.addr, SECRET);
    let mut alice1 = n1.connect_as("alice").await;
    let mut alice2 = n2.connect_as("alice").await;
    let mut bob = n2.connect_as("bob").await;

    let user = api.get("/api/users/alice").await;
    let mut expected = vec![alice1.conn.clone(), alice2.conn.clone()];
    expected.sort();
    assert_eq!(conn_ids(&user.body), expected, "{}", user.text);
    let nodes: Vec<&str> = user.body["data"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["node"].as_str().unwrap_or(""))
        .collect();
    assert!(
        nodes.contains(&n1.id.as_str()) && nodes.contains(&n2.id.as_str()),
        "{nodes:?}"
    );

    // An API event from node 1 reaches the user's socket on node 2.
    api.send("notify.user", json!({"user": "alice", "text": "hi"}))
        .await;
    assert_eq!(alice2.recv_event("notify.user").await["text"], "hi");
    assert_eq!(alice1.recv_event("notify.user").await["text"], "hi");

    let kicked = api.post("/api/users/alice/disconnect", "null").await;
    assert_eq!(kicked.body["data"]["disconnected"], 2, "{}", kicked.text);
    assert_eq!(
        alice1.recv_close_code(4001).await,
        "disconnected by the server"
    );
    assert_eq!(
        alice2.recv_close_code(4001).await,
        "disconnected by the server"
    );
    eventually(
        WAIT,
        "alice's connections are gone from the registry",
        || async {
            conn_ids(&api.get("/api/users/alice").await.body)
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // One connection, held by the other node, asked of this one.
    let one = api
        .post(&format!("/api/connections/{}/disconnect", bob.conn), "null")
        .await;
    assert_eq!(one.body["data"]["node"], n2.id, "{}", one.text);
    bob.recv_close_code(4001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_nodes() {
    let _serial = serial();
    let cluster = start().await;
    let on1 = Api::new(cluster.nodes[0].addr, SECRET);
    let on2 = Api::new(cluster.nodes[1].addr, SECRET);
    let key = [("Idempotency-Key", "payment-42")];
    let first = on1.post_with("/api/events/counter.add", &key, "{}").await;
    assert_eq!(first.body["data"], json!({"n": 1}), "{}", first.text);
    let repeat = on2.post_with("/api/events/counter.add", &key, "{}").await;
    assert_eq!(
        repeat.header("idempotent-replayed"),
        Some("true"),
        "{}",
        repeat.text
    );
    assert_eq!(repeat.body, first.body);
    assert_eq!(cluster.state_json("n"), Some(json!(1)), "ran once");
    let reused = on2
        .post_with("/api/events/counter.add", &key, r#"{"other": true}"#)
        .await;
    assert_eq!((reused.status, reused.code()), (409, "conflict"));

    // Two nodes racing for one key: exactly one runs it.
    let race = [("Idempotency-Key", "race-1")];
    let (a, b) = tokio::join!(
        on1.post_with("/api/events/counter.add", &race, "{}"),
        on2.post_with("/api/events/counter.add", &race, "{}"),
    );
    let ran = [&a, &b]
        .iter()
        .filter(|r| r.status == 200 && r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(ran, 1, "{} / {}", a.text, b.text);
    assert_eq!(cluster.state_json("n"), Some(json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_rooms_and_counters_are_the_fleets() {
    let _serial = serial();
    let mut cluster = start().await;
    let api = Api::new(cluster.nodes[1].addr, SECRET);
    let mut a = cluster.nodes[0].connect_as("carol").await;
    let mut b = cluster.nodes[1].connect().await;
    a.ok("room.join", json!({"room": "hist"})).await;
    b.ok("room.join", json!({"room": "hist"})).await;
    b.ok("room.join", json!({"room": "quiet"})).await;
    api.send("hist.post", json!({"text": "one"})).await;
    assert_eq!(a.recv().await["offset"], 1);

    let nodes = api.get("/api/nodes").await;
    let list = nodes.body["data"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(list.len(), 2, "{}", nodes.text);
    assert!(list
        .iter()
        .all(|n| n["alive"] == true && n["ready"] == true));
    assert_eq!(list.iter().filter(|n| n["this"] == true).count(), 1);
    assert_eq!(nodes.body["data"]["packs"], 1);

    let rooms = api.get("/api/rooms").await;
    let busiest = &rooms.body["data"]["rooms"];
    assert_eq!(busiest[0]["room"], "hist", "{}", rooms.text);
    assert_eq!(busiest[0]["members"], 2);
    assert_eq!(busiest[0]["history"]["offset"], 1);
    assert_eq!(
        busiest[1],
        json!({"room": "quiet", "members": 1, "history": null})
    );
    let room = api.get("/api/rooms/hist").await;
    let mut members = vec![a.conn.clone(), b.conn.clone()];
    members.sort();
    assert_eq!(room.body["data"]["members"], json!(members));

    // Counters: this node's at once, the other's with its next heartbeat.
    eventually(
        Duration::from_secs(10),
        "both nodes' counters are summed",
        || async {
            let stats = api.get("/api/stats").await;
            let total = stats.body["data"]["total"]["events_total"]
                .as_u64()
                .unwrap_or(0);
            // Three joins and one post; the joins were handled on both nodes.
            (total >= 4).then_some(())
        },
    )
    .await;

    // A node that dies: its connections leave rooms, users and the index.
    cluster.nodes[0].sigkill();
    eventually(
        Duration::from_secs(20),
        "the dead node's connection is cleaned up",
        || async {
            let users = api.get("/api/users/carol").await;
            let rooms = api.get("/api/rooms").await;
            let hist = rooms.body["data"]["rooms"][0].clone();
            (conn_ids(&users.body).is_empty() && hist["members"] == 1).then_some(())
        },
    )
    .await;
    drop(a);
}
