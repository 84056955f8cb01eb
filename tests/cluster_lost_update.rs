//! The lost-update test: 3 nodes × 30 clients × 100 read-modify-write increments of one
//! key (`state.get` + `state.set`, no `incr`), every client waiting for each ack.
//!
//! With version-checked commits the counter must end at exactly the number of
//! successful acks (9,000: a `conflict` ack is retried by the client), and the replies,
//! each the value the script wrote, must be exactly 1..=9,000. The same workload with
//! `--unsafe-skip-version-check` must end *below* the number of successful acks: proof
//! that this test catches lost updates.
//!
//! Figures (elapsed, commits/s, client and server retries) are printed; see them with
//! `cargo test --test cluster_lost_update -- --nocapture`. The size can be lowered for a
//! quick local run with `WSS_LOST_UPDATE_CLIENTS` (per node) and
//! `WSS_LOST_UPDATE_INCREMENTS` (per client); it defaults to the full size.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{serial, Cluster};

const NODES: usize = 3;
const CLIENTS_PER_NODE: usize = 30;
const INCREMENTS_PER_CLIENT: usize = 100;
/// The whole workload must finish within this (a debug build takes a fraction of it).
const WORKLOAD_LIMIT: Duration = Duration::from_secs(240);

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Figures {
    /// Successful acks: increments the server claims it committed.
    committed: u64,
    /// `conflict` acks the clients got (and retried).
    conflicts: u64,
    /// Every successful ack's reply (the value the script wrote), sorted.
    replies: Vec<u64>,
    elapsed: Duration,
    /// The counter in Redis afterwards.
    final_value: u64,
    /// `wss_script_retries_total`, summed over the nodes.
    server_retries: f64,
}

async fn run_workload(cluster: &Cluster, event: &'static str, key: &str, label: &str) -> Figures {
    let clients_per_node = size("WSS_LOST_UPDATE_CLIENTS", CLIENTS_PER_NODE);
    let increments = size("WSS_LOST_UPDATE_INCREMENTS", INCREMENTS_PER_CLIENT);
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        for _ in 0..clients_per_node {
            clients.push(node.connect().await);
        }
    }
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::with_capacity(increments);
            for _ in 0..increments {
                loop {
                    let ack = client.call(event, json!({})).await;
                    if ack["ok"] == true {
                        let n = ack["data"]
                            .as_u64()
                            .unwrap_or_else(|| panic!("the reply is the new value: {ack}"));
                        replies.push(n);
                        break;
                    }
                    assert_eq!(
                        ack["error"]["code"], "conflict",
                        "only `conflict` may fail an increment: {ack}"
                    );
                    conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            (client, replies)
        }));
    }
    let mut replies = Vec::new();
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(WORKLOAD_LIMIT, all)
        .await
        .unwrap_or_else(|_| panic!("{label}: the workload did not finish in {WORKLOAD_LIMIT:?}"));
    let elapsed = started.elapsed();
    for result in results {
        let (client, mine) = result.expect("a client task panicked");
        replies.extend(mine);
        client.close().await;
    }
    replies.sort_unstable();
    let final_value = cluster
        .state_json(key)
        .and_then(|v| v.as_u64())
        .expect("the counter exists and is a number");
    let mut server_retries = 0.0;
    for node in &cluster.nodes {
        server_retries += node.metric_sum("wss_script_retries_total").await;
    }
    let figures = Figures {
        committed: replies.len() as u64,
        conflicts: conflicts.load(std::sync::atomic::Ordering::Relaxed),
        replies,
        elapsed,
        final_value,
        server_retries,
    };
    println!(
        "lost-update [{label}]: {NODES} nodes x {clients_per_node} clients x {increments} increments: \
         acks ok {}, final value {}, elapsed {:.2} s, {:.0} commits/s, \
         conflict acks retried by clients {}, server retries (wss_script_retries_total) {}",
        figures.committed,
        figures.final_value,
        figures.elapsed.as_secs_f64(),
        figures.committed as f64 / figures.elapsed.as_secs_f64(),
        figures.conflicts,
        figures.server_retries,
    );
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loses_no_update() {
    let _serial = serial();
    let cluster = Cluster::start(NODES, &[]).await;
    let expected = (NODES
        * size("WSS_LOST_UPDATE_CLIENTS", CLIENTS_PER_NODE)
        * size("WSS_LOST_UPDATE_INCREMENTS", INCREMENTS_PER_CLIENT)) as u64;
    let figures = run_workload(&cluster, "counter.bump", "n", "version-checked").await;
    check_exact(&cluster, &figures, "n", expected);
}

/// The same with the key declared (`keys: [m]`): prefetched in one round trip and
/// locked node-locally before the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_keys_lose_no_update_either() {
    let _serial = serial();
    let cluster = Cluster::start(NODES, &[]).await;
    let expected = (NODES
        * size("WSS_LOST_UPDATE_CLIENTS", CLIENTS_PER_NODE)
        * size("WSS_LOST_UPDATE_INCREMENTS", INCREMENTS_PER_CLIENT)) as u64;
    let figures = run_workload(
        &cluster,
        "counter.bump.declared",
        "m",
        "version-checked, declared keys",
    )
    .await;
    check_exact(&cluster, &figures, "m", expected);
}

fn check_exact(cluster: &Cluster, figures: &Figures, key: &str, expected: u64) {
    assert_eq!(
        figures.committed, expected,
        "every increment eventually succeeds"
    );
    assert_eq!(
        figures.final_value, figures.committed,
        "the counter must equal the number of successful acks (lost updates otherwise)"
    );
    // Serializable: each commit saw the previous one, so the values written are 1..=N.
    let duplicates = figures.replies.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "two increments wrote the same value");
    assert_eq!(figures.replies.first(), Some(&1));
    assert_eq!(figures.replies.last(), Some(&expected));
    // 90 clients on one key across 3 nodes must have collided at least once; a zero
    // would mean the version check never ran.
    assert!(
        figures.server_retries > 0.0,
        "no server-side retry under cross-node contention: is the version check on?"
    );
    // The version of `n` counts commits. Runs queued on one node's key lock share a
    // commit (group commit), so there are at most as many commits as increments, and
    // at least one.
    let version: u64 = redis::cmd("GET")
        .arg(cluster.state_key("v:", key))
        .query(&mut cluster.redis.conn())
        .expect("read the version key");
    assert!(
        (1..=expected).contains(&version),
        "version {version} outside 1..={expected}: commits and versions disagree"
    );
    println!("lost-update: {expected} increments in {version} commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_version_check_the_same_test_detects_lost_updates() {
    let _serial = serial();
    let cluster = Cluster::start(NODES, &["--unsafe-skip-version-check"]).await;
    let figures = run_workload(&cluster, "counter.bump", "n", "unsafe-skip-version-check").await;
    let duplicates = figures.replies.windows(2).filter(|w| w[0] == w[1]).count();
    println!(
        "lost-update [unsafe-skip-version-check]: {} updates lost, {duplicates} duplicate replies",
        figures.committed.saturating_sub(figures.final_value)
    );
    assert!(
        figures.final_value < figures.committed,
        "with blind commits the counter ({}) should end below the successful acks ({}): \
         the lost-update test would not catch the bug",
        figures.final_value,
        figures.committed
    );
    assert!(duplicates > 0, "lost updates show as repeated replies");
}
