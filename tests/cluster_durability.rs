//! `--redis-wait-replicas N`: an acknowledged state change has reached N replicas, so it
//! survives the primary's death; without it, replication is asynchronous and a failover
//! can lose an acknowledged write (docs/operations/cluster.md, "Failovers and
//! durability", says so; the last test shows it happen).
//!
//! Each test runs one primary and one replica (`--replicaof`), real processes on free
//! ports, and "fails over" by hand: SIGKILL the primary, `REPLICAOF NO ONE` on the
//! replica, and read what the replica holds.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::cluster::{pack, serial, unique_prefix, Node, RedisServer};

/// A primary and a replica whose link is up.
fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .expect("INFO replication");
        if info.contains("master_link_status:up") {
            return (primary, replica);
        }
        assert!(
            Instant::now() < deadline,
            "the replica never linked: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kill the primary (if it still runs), promote the replica, and read `key` there.
fn fail_over_and_read(
    primary: &mut RedisServer,
    replica: &RedisServer,
    key: &str,
) -> Option<String> {
    primary.kill();
    let mut conn = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut conn)
        .expect("REPLICAOF NO ONE");
    redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
}

async fn node(primary: &RedisServer, prefix: &str, args: &[&str]) -> Node {
    let node = Node::spawn("n1", &pack("basic"), &primary.url(), prefix, args);
    node.wait_ready(Duration::from_secs(20)).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_an_acked_write_survives_the_primarys_death() {
    let _serial = serial();
    let (mut primary, replica) = primary_and_replica();
    let prefix = unique_prefix("durable");
    let node = node(&primary, &prefix, &["--redis-wait-replicas", "1"]).await;
    let mut c = node.connect().await;
    c.ok("state.put", json!({ "key": "k", "value": 42 })).await;
    // No pause between the ack and the kill: the ack itself is the promise.
    let value = fail_over_and_read(&mut primary, &replica, &format!("{prefix}s:k"));
    assert_eq!(value.as_deref(), Some("42"));
}

/// The replica is frozen: the write is made on the primary but cannot reach a replica,
/// and the sender is told so rather than acknowledged. (With `WAIT` left out, this is
/// the test that fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_write_no_replica_holds_is_not_acknowledged() {
    let _serial = serial();
    let (primary, replica) = primary_and_replica();
    let prefix = unique_prefix("durable");
    let node = node(&primary, &prefix, &["--redis-wait-replicas", "1"]).await;
    let mut c = node.connect().await;
    replica.pause();
    let asked = Instant::now();
    let ack = c
        .call_within(
            "state.put",
            json!({ "key": "k", "value": 1 }),
            Duration::from_secs(10),
        )
        .await;
    replica.resume();
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    let message = ack["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("0 of the 1 replicas"),
        "the error says what happened: {message}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "the wait is bounded: {:?}",
        asked.elapsed()
    );
    assert!(node.metric_sum("wss_redis_wait_shortfalls_total").await >= 1.0);
}

/// What docs/operations/cluster.md's "Failovers and durability" warns about, shown: without the flag an ack
/// does not wait for replicas, and the primary's death takes the write with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_replicas_a_failover_can_lose_an_acked_write() {
    let _serial = serial();
    let (mut primary, replica) = primary_and_replica();
    let prefix = unique_prefix("durable");
    let node = node(&primary, &prefix, &[]).await;
    let mut c = node.connect().await;
    // The replica falls behind: frozen, and its link cut, so not even the socket buffer
    // holds what the primary writes next.
    replica.pause();
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut primary.conn())
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(cut, 1);
    c.ok("state.put", json!({ "key": "k", "value": 7 })).await;
    primary.kill();
    replica.resume();
    let value = fail_over_and_read(&mut primary, &replica, &format!("{prefix}s:k"));
    assert_eq!(
        value, None,
        "the acknowledged write was lost with the primary"
    );
}
