//! What only a Redis Cluster brings, on a real one (six `redis-server`s, three masters
//! with a replica each, made by `redis-cli --cluster create`) and real nodes:
//!
//! - a script whose keys cross slots fails with `script_error` naming the keys, and
//!   writes nothing;
//! - a node that dies between a commit and its deliveries (the two are separate steps
//!   when the state and the room live on different shards) leaves the state change
//!   exactly once and no phantom or hole in the room's stream;
//! - a manual failover and a killed master under traffic: every node is ready again
//!   within node-timeout + 5 s without a restart, and each subscriber's stream is whole
//!   or flagged (`$gap`);
//! - a thousand rooms' channels spread over the three masters within ±20%.
//!
//! These run on a Redis Cluster whatever `WSS_TEST_REDIS` says.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::client::{Client, Closed};
use support::cluster::{
    pack, serial, Cluster, Redis, RedisCluster, Tracked, NODE_TIMEOUT_MS, QUIET, WAIT,
};

async fn start(n: usize) -> Cluster {
    Cluster::start_on(
        Redis::Cluster(RedisCluster::start()),
        n,
        &pack("sharded"),
        &[],
    )
    .await
}

fn redis_cluster(cluster: &mut Cluster) -> &mut RedisCluster {
    match &mut cluster.redis {
        Redis::Cluster(c) => c,
        Redis::Single(_) => unreachable!("these tests start a Redis Cluster"),
    }
}

fn say(room: &str, id: &str) -> Value {
    json!({ "room": room, "id": id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_keys_cross_slots_fails_with_script_error_naming_them() {
    let _serial = serial();
    let cluster = start(1).await;
    let mut c = cluster.nodes[0].connect().await;
    let ack = c.call("swap", json!({})).await;
    assert_eq!(ack["error"]["code"], "script_error", "{ack}");
    let message = ack["error"]["message"].as_str().expect("a message");
    for part in ["`left`", "`right`", "hash tag"] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    assert_eq!(cluster.state_json("left"), None, "nothing written");
    assert_eq!(cluster.state_json("right"), None, "nothing written");
}

/// The commit of `tally` (its counter, in the counter's slot) and its delivery (placed
/// in the room's slot) are two steps. A node killed between them: the counter moved
/// once, the sender got no ack (its outcome is unknown to it, as with any lost ack),
/// and the room's members get neither the delivery nor a hole: the next delivery
/// takes the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_between_commit_and_delivery_leaves_the_change_once_and_no_hole() {
    let _serial = serial();
    let mut cluster = start(1).await;
    cluster
        .add_node_with_env(None, &[("WSS_TEST_ABORT_AFTER_COMMIT", "1")])
        .await;
    let room = "h:tally";
    let mut member = Tracked::connect(&cluster.nodes[0], "member").await;
    member.join(room).await;
    let mut survivor = cluster.nodes[0].connect().await;
    survivor.ok("tally", say(room, "first")).await;
    member
        .catch_up(&BTreeMap::from([(room.to_string(), 1)]), WAIT)
        .await;

    let mut doomed = cluster.nodes[1].connect().await;
    doomed.emit("tally", say(room, "lost")).await;
    if let Closed::Frame(code, _) = doomed.recv_close_within(WAIT).await.0 {
        panic!("a clean close ({code}) from an aborted node");
    }
    let status = cluster.nodes[1].wait_exit(WAIT);
    assert!(!status.success(), "the node aborted: {status}");
    assert!(
        cluster.nodes[1]
            .log_text()
            .contains("aborting between a commit and its deliveries"),
        "the abort happened where this test means it to"
    );

    // Committed once: 1 before, 1 by the dead node.
    assert_eq!(cluster.state_json(&format!("tally:{room}")), Some(json!(2)));
    if let Some(frame) = member.client.try_recv(QUIET).await {
        panic!("the member got {frame} from a delivery that was never published");
    }
    // No hole: the next delivery is offset 2, right after the last one delivered.
    survivor.ok("tally", say(room, "next")).await;
    member
        .catch_up(&BTreeMap::from([(room.to_string(), 2)]), WAIT)
        .await;
    assert_eq!(
        member.got[room],
        vec![(1, "first".to_string()), (2, "next".to_string())]
    );
    assert!(member.flagged.is_empty(), "{:?}", member.flagged);
    assert_eq!(cluster.state_json(&format!("tally:{room}")), Some(json!(3)));
}

/// What a publisher and a subscriber saw during a failover.
struct Traffic {
    acked: Vec<String>,
    refused: usize,
}

/// Publish `say` to `room` every 20 ms until `stop`; keep the ids that were acked.
fn publish_until(
    mut publisher: Client,
    room: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Traffic> {
    tokio::spawn(async move {
        let mut traffic = Traffic {
            acked: Vec::new(),
            refused: 0,
        };
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            i += 1;
            let id = i.to_string();
            let ack = publisher
                .call_within("say", say(room, &id), Duration::from_secs(10))
                .await;
            if ack["ok"] == true {
                traffic.acked.push(id);
            } else {
                traffic.refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        traffic
    })
}

/// Poll `/readyz` of every node until `stop`: per node, the moments it was not ready.
fn watch_readiness(
    addrs: Vec<std::net::SocketAddr>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Vec<Instant>>> {
    tokio::spawn(async move {
        let mut not_ready = vec![Vec::new(); addrs.len()];
        while !stop.load(Ordering::Acquire) {
            for (i, addr) in addrs.iter().enumerate() {
                let status =
                    support::client::try_http_get(*addr, "/readyz", Duration::from_secs(2))
                        .await
                        .map(|(s, _)| s);
                if status != Some(200) {
                    not_ready[i].push(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        not_ready
    })
}

/// Run traffic through `room` while `fault` acts on the cluster; then check every node
/// came back within node-timeout + 5 s and the subscriber's stream is whole, or
/// flagged when `may_lose` (a killed master may take unreplicated writes with it).
async fn failover_under_traffic(
    cluster: &mut Cluster,
    room: &'static str,
    may_lose: bool,
    fault: impl FnOnce(&mut RedisCluster, &str) -> String,
) {
    redis_cluster(cluster).wait_replicated(Duration::from_secs(30));
    let mut sub = Tracked::connect(&cluster.nodes[1], "sub").await;
    sub.join(room).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until(cluster.nodes[0].connect().await, room, stop.clone());
    let readiness = watch_readiness(cluster.nodes.iter().map(|n| n.addr).collect(), stop.clone());

    // Traffic first, then the fault, then traffic until well after recovery.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if let Some(frame) = sub.client.try_recv(Duration::from_millis(100)).await {
            assert!(sub.apply(frame).is_none());
        }
    }
    let channel = format!("{}ch:room:{{{room}}}", cluster.prefix);
    let what = fault(redis_cluster(cluster), &channel);
    let faulted = Instant::now();
    let limit = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    while faulted.elapsed() < limit + Duration::from_secs(2) {
        if let Some(frame) = sub.client.try_recv(Duration::from_millis(100)).await {
            assert!(sub.apply(frame).is_none());
        }
    }
    stop.store(true, Ordering::Release);
    let traffic = publisher.await.expect("the publisher");
    let not_ready = readiness.await.expect("the readiness watch");
    let last_acked = traffic.acked.last().cloned().expect("something was acked");
    let deadline = Instant::now() + WAIT;
    while !sub.got[room].iter().any(|(_, id)| *id == last_acked) && Instant::now() < deadline {
        if let Some(frame) = sub.client.try_recv(Duration::from_millis(100)).await {
            assert!(sub.apply(frame).is_none());
        }
    }

    for (node, moments) in cluster.nodes.iter().zip(&not_ready) {
        if let Some(last) = moments.last() {
            let back = last.saturating_duration_since(faulted);
            assert!(
                back <= limit,
                "{what}: {} was still not ready {back:?} after the fault (limit {limit:?})",
                node.name
            );
        }
    }
    let received: Vec<&String> = sub.got[room].iter().map(|(_, id)| id).collect();
    let missing: Vec<&String> = traffic
        .acked
        .iter()
        .filter(|id| !received.contains(id))
        .collect();
    println!(
        "{what}: {} acked, {} refused, {} received, {} missing, flagged {:?}, not ready: {}",
        traffic.acked.len(),
        traffic.refused,
        received.len(),
        missing.len(),
        sub.flagged,
        cluster
            .nodes
            .iter()
            .zip(&not_ready)
            .map(|(n, m)| format!("{} {} polls", n.name, m.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if may_lose && !sub.flagged.is_empty() {
        return;
    }
    assert!(
        missing.is_empty(),
        "{what}: acked but never delivered (and not flagged): {missing:?}"
    );
    assert!(sub.flagged.is_empty(), "{what}: flagged {:?}", sub.flagged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_traffic_loses_nothing() {
    let _serial = serial();
    let mut cluster = start(2).await;
    failover_under_traffic(&mut cluster, "h:failover", false, |redis, channel| {
        let (master, replicas) = redis.owner_of(channel);
        let replica = replicas[0];
        let reply: String = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut redis.server(replica).conn())
            .expect("CLUSTER FAILOVER");
        assert_eq!(reply, "OK");
        format!("CLUSTER FAILOVER of {master} to {replica}")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_under_traffic_is_survived_without_a_restart() {
    let _serial = serial();
    let mut cluster = start(2).await;
    failover_under_traffic(&mut cluster, "h:killed", true, |redis, channel| {
        let (master, _) = redis.owner_of(channel);
        redis.server(master).kill();
        format!("SIGKILL of master {master}")
    })
    .await;
}

/// Sharded Pub/Sub keeps each room's channel on its slot's shard: with a thousand
/// rooms joined, each master carries about a third of the subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rooms_spread_their_channels_over_the_three_masters() {
    let _serial = serial();
    let mut cluster = start(1).await;
    let mut c = cluster.nodes[0].connect().await;
    for i in 0..1000 {
        c.ok("join", json!({ "room": format!("r{i}") })).await;
    }
    let prefix = format!("{}ch:room:", cluster.prefix);
    let redis = redis_cluster(&mut cluster);
    let masters = redis.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let counts: Vec<usize> = masters
        .iter()
        .map(|port| {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg(format!("{prefix}*"))
                .query(&mut redis.server(*port).conn())
                .expect("PUBSUB SHARDCHANNELS");
            channels.len()
        })
        .collect();
    println!("room channels per master: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 1000, "{counts:?}");
    for n in &counts {
        assert!(
            (267..=400).contains(n),
            "a master carries {n} of 1000 room channels (expected 333 ± 20%): {counts:?}"
        );
    }
}
