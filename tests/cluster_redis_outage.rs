//! Redis dies (SIGKILL) and comes back empty on the same port after 30 s with no client
//! traffic at all: the nodes stay up, `/healthz` stays 200, `/readyz` turns non-200,
//! events that need Redis answer `unavailable` quickly, and after the restart every node
//! becomes ready again on its own, with its subscriptions restored (rooms joined before
//! the outage deliver again), new joins, presence and state working — no node restart.
//!
//! The timeline (seconds until `/readyz` non-200, until 200 again per node) is printed:
//! `cargo test --test cluster_redis_outage -- --nocapture`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::Client;
use support::cluster::{serial, Cluster, Node};

/// The idle outage: long enough for a default `ConnectionManager` to give up.
const OUTAGE: Duration = Duration::from_secs(30);
/// Health checks notice a dead Redis within about a second; allow for a loaded machine.
const NOTICE_LIMIT: Duration = Duration::from_secs(5);
/// Reconnect back-off is capped at 1 s; allow for a loaded machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// "An event needing state answers `unavailable` within ~3 s" (2 s Redis timeout).
const UNAVAILABLE_LIMIT: Duration = Duration::from_millis(3500);

async fn gets_once(client: &mut Client, event: &str, text: &str) {
    let data = client.recv_event(event).await;
    assert_eq!(data["text"], text, "{}: {data}", client.conn);
    client.expect_silence().await;
}

/// Send one event and time its ack, which must arrive within [`UNAVAILABLE_LIMIT`].
async fn timed_call(client: &mut Client, event: &str, data: Value) -> (Value, Duration) {
    let started = Instant::now();
    let ack = client
        .call_within(event, data, UNAVAILABLE_LIMIT + Duration::from_secs(5))
        .await;
    (ack, started.elapsed())
}

/// Subscribers of a channel. On a Redis Cluster every channel is a sharded one, and
/// those of rooms and nodes are named with a hash tag.
fn numsub(cluster: &Cluster, kind: &str, name: &str) -> i64 {
    let (sub, channel) = if cluster.redis.is_cluster() {
        let channel = if name.is_empty() {
            cluster.key(kind)
        } else {
            cluster.room_key(kind, name)
        };
        ("SHARDNUMSUB", channel)
    } else {
        ("NUMSUB", cluster.key(&format!("{kind}{name}")))
    };
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg(sub).arg(&channel);
    let replies: Vec<Vec<(String, i64)>> = cluster.redis.on_every_server(&cmd);
    replies.iter().flatten().map(|(_, n)| n).sum()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ids(reply: &Value) -> Vec<String> {
    sorted(
        reply
            .as_array()
            .unwrap_or_else(|| panic!("presence is a list: {reply}"))
            .iter()
            .map(|v| v.as_str().expect("ids are strings").to_string())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_from_a_redis_restart_after_an_idle_outage() {
    let _serial = serial();
    // The idle clients do not answer pings while the test is not reading: keep the
    // server's idle timeout well above the outage.
    let mut cluster = Cluster::start(
        2,
        &[
            "--idle-timeout",
            "300",
            "--jwt-secret",
            support::cluster::JWT_SECRET,
        ],
    )
    .await;
    let mut a = cluster.nodes[0].connect().await;
    let mut b = cluster.nodes[1].connect().await;
    // A user connection on the second node: its user channel must come back too.
    let mut alice = cluster.nodes[1].connect_as("alice").await;
    a.ok("room.join", json!({ "room": "before" })).await;
    b.ok("room.join", json!({ "room": "before" })).await;
    a.ok("say.room", json!({ "room": "before", "text": "pre" }))
        .await;
    gets_once(&mut a, "say.room", "pre").await;
    gets_once(&mut b, "say.room", "pre").await;
    a.ok("state.put", json!({ "key": "k", "value": "pre" }))
        .await;

    // --- Redis dies -------------------------------------------------------------------
    let killed = Instant::now();
    cluster.redis.kill();
    let mut not_ready = Vec::new();
    for node in &cluster.nodes {
        not_ready
            .push(wait_status(node, killed, NOTICE_LIMIT, |s| s != Some(200), "non-200").await);
    }

    // 30 s with no client traffic: only the orchestrator's probes.
    while killed.elapsed() < OUTAGE {
        for node in &cluster.nodes {
            assert_eq!(
                node.status("/healthz").await,
                Some(200),
                "/healthz of {} must stay 200 while Redis is down",
                node.name
            );
            assert_ne!(
                node.status("/readyz").await,
                Some(200),
                "/readyz of {} must stay non-200 while Redis is down",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for node in &mut cluster.nodes {
        assert!(node.is_running(), "node {} died with Redis", node.name);
    }

    // Still down: state answers `unavailable` quickly, local stateless events still work.
    let (ack, took_read) = timed_call(&mut a, "state.read", json!({ "key": "k" })).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        took_read <= UNAVAILABLE_LIMIT,
        "`unavailable` took {took_read:?}"
    );
    let (ack, took_write) =
        timed_call(&mut b, "state.put", json!({ "key": "k", "value": "x" })).await;
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        took_write <= UNAVAILABLE_LIMIT,
        "`unavailable` took {took_write:?}"
    );
    let (ack, took_join) = timed_call(&mut a, "room.join", json!({ "room": "during" })).await;
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert!(
        took_join <= UNAVAILABLE_LIMIT,
        "`unavailable` took {took_join:?}"
    );
    a.ok("echo.local", json!({ "text": "still here" })).await;
    gets_once(&mut a, "echo.local", "still here").await;
    for node in &cluster.nodes {
        assert_eq!(node.status("/healthz").await, Some(200));
    }

    // --- Redis returns, empty, on the same port ---------------------------------------
    let restarted = Instant::now();
    cluster.redis.restart();
    let mut ready_again = Vec::new();
    for i in 0..cluster.nodes.len() {
        let node = &cluster.nodes[i];
        let took = wait_status(node, restarted, RECOVERY_LIMIT, |s| s == Some(200), "200").await;
        // Ready means subscribed: its node channel has a subscriber right now.
        assert!(
            numsub(&cluster, "ch:node:", &node.id) >= 1,
            "{} reports ready before resubscribing its node channel",
            node.name
        );
        ready_again.push(took);
    }
    println!(
        "redis outage timeline: kill -> /readyz non-200: {}; outage {:.1} s idle; \
         state event while down answered `unavailable` in {:.2} s (read), {:.2} s (write), {:.2} s (join); \
         restart -> /readyz 200: {}",
        fmt_each(&cluster.nodes, &not_ready),
        OUTAGE.as_secs_f64(),
        took_read.as_secs_f64(),
        took_write.as_secs_f64(),
        took_join.as_secs_f64(),
        fmt_each(&cluster.nodes, &ready_again),
    );
    assert_eq!(
        numsub(&cluster, "ch:all", ""),
        2,
        "both nodes resubscribed the `all` channel"
    );
    assert_eq!(
        numsub(&cluster, "ch:room:", "before"),
        2,
        "both nodes resubscribed the room joined before the outage"
    );

    // The room joined before the outage delivers again, both ways, exactly once.
    a.ok("say.room", json!({ "room": "before", "text": "post-a" }))
        .await;
    gets_once(&mut a, "say.room", "post-a").await;
    gets_once(&mut b, "say.room", "post-a").await;
    b.ok("say.room", json!({ "room": "before", "text": "post-b" }))
        .await;
    gets_once(&mut a, "say.room", "post-b").await;
    gets_once(&mut b, "say.room", "post-b").await;
    // Presence was written again by the nodes (Redis came back empty).
    let members = support::client::eventually(
        Duration::from_secs(10),
        "presence of the pre-outage room rewritten",
        || {
            let cluster = &cluster;
            async move {
                let mut c = cluster.redis.conn();
                let members: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(cluster.room_key("room:", "before"))
                    .query(&mut c)
                    .ok()?;
                (members.len() == 2).then_some(members)
            }
        },
    )
    .await;
    assert_eq!(
        sorted(members),
        sorted(vec![a.conn.clone(), b.conn.clone()])
    );
    let reply = b.ok("room.presence", json!({ "room": "before" })).await;
    assert_eq!(ids(&reply), sorted(vec![a.conn.clone(), b.conn.clone()]));

    // Every other channel kind is back as well: `all`, `conn:` (node channel), `user:`.
    b.ok("say.all", json!({ "text": "all again" })).await;
    for c in [&mut a, &mut b, &mut alice] {
        gets_once(c, "say.all", "all again").await;
    }
    let b_conn = b.conn.clone();
    a.ok("say.conn", json!({ "conn": b_conn, "text": "conn again" }))
        .await;
    gets_once(&mut b, "say.conn", "conn again").await;
    a.ok("say.user", json!({ "user": "alice", "text": "user again" }))
        .await;
    gets_once(&mut alice, "say.user", "user again").await;
    a.expect_silence().await;

    // The join refused during the outage left nothing behind.
    b.ok("say.room", json!({ "room": "during", "text": "nobody" }))
        .await;
    a.expect_silence().await;
    let reply = b.ok("room.presence", json!({ "room": "during" })).await;
    assert_eq!(
        ids(&reply),
        Vec::<String>::new(),
        "a refused join is not half-written"
    );

    // Both nodes registered themselves again in the (empty) registry.
    let expected_nodes = sorted(cluster.nodes.iter().map(|n| n.id.clone()).collect());
    support::client::eventually(Duration::from_secs(10), "both nodes re-registered", || {
        let cluster = &cluster;
        let expected = expected_nodes.clone();
        async move {
            let mut c = cluster.redis.conn();
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(cluster.key("nodes"))
                .query(&mut c)
                .ok()?;
            let beats: i64 = redis::cmd("EXISTS")
                .arg(
                    expected
                        .iter()
                        .map(|id| cluster.key(&format!("node:{id}")))
                        .collect::<Vec<_>>(),
                )
                .query(&mut c)
                .ok()?;
            (sorted(nodes) == expected && beats == 2).then_some(())
        }
    })
    .await;

    // A new join on one node hears a message published on the other.
    let mut c = cluster.nodes[1].connect().await;
    c.ok("room.join", json!({ "room": "after" })).await;
    a.ok("say.room", json!({ "room": "after", "text": "new room" }))
        .await;
    gets_once(&mut c, "say.room", "new room").await;

    // State writes work and are shared; the old value went with the old Redis.
    assert_eq!(a.ok("state.read", json!({ "key": "k" })).await, Value::Null);
    a.ok("state.put", json!({ "key": "k", "value": "post" }))
        .await;
    assert_eq!(b.ok("state.read", json!({ "key": "k" })).await, "post");
    assert_eq!(c.ok("counter.bump", json!({})).await, 1);
    assert_eq!(a.ok("counter.bump", json!({})).await, 2);

    // No node was restarted to get here.
    for node in &mut cluster.nodes {
        assert!(
            node.is_running(),
            "node {} is not the original process",
            node.name
        );
    }
}

/// Poll `/readyz` of `node` every 25 ms until `want(status)`; the time since `since`.
async fn wait_status(
    node: &Node,
    since: Instant,
    limit: Duration,
    want: impl Fn(Option<u16>) -> bool,
    what: &str,
) -> Duration {
    loop {
        let status = node.status("/readyz").await;
        if want(status) {
            return since.elapsed();
        }
        if since.elapsed() > limit {
            panic!(
                "/readyz of {} did not turn {what} within {limit:?} (last: {status:?}); log:\n{}",
                node.name,
                node.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fmt_each(nodes: &[Node], times: &[Duration]) -> String {
    nodes
        .iter()
        .zip(times)
        .map(|(n, t)| format!("{} {:.2} s", n.name, t.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}
