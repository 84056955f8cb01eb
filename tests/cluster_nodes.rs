//! `wss-engine nodes` against a live cluster: it lists every live node (text and
//! `--format json`) and warns on stderr when the nodes serve different packs.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cli::{run_within, CliRun};
use support::cluster::{pack, serial, Cluster};

fn nodes(cluster: &Cluster, json: bool) -> CliRun {
    let url = cluster.redis.url();
    let mut args = vec!["nodes", "--redis", &url, "--redis-prefix", &cluster.prefix];
    if json {
        args.extend(["--format", "json"]);
    }
    let run = run_within(&args, Duration::from_secs(20));
    assert!(run.status.success(), "`wss-engine nodes` failed: {run:?}");
    run
}

/// The `nodes --format json` list as `(id, alive, info)`.
fn listed(run: &CliRun) -> Vec<(String, bool, Value)> {
    let list: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("`nodes --format json` prints JSON ({e}): {}", run.stdout));
    list.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {list}"))
        .iter()
        .map(|n| {
            (
                n["id"].as_str().expect("an id").to_string(),
                n["alive"].as_bool().expect("alive is a boolean"),
                n["info"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_live_nodes_and_warns_when_packs_differ() {
    let _serial = serial();
    let mut cluster = Cluster::start(2, &[]).await;
    // The ids the nodes announce to their clients are the ones in the registry.
    for node in &cluster.nodes {
        let client = node.connect().await;
        assert_eq!(client.node, node.id, "node id in $welcome and in the log");
        client.close().await;
    }

    let text = nodes(&cluster, false);
    for node in &cluster.nodes {
        let line = text
            .stdout
            .lines()
            .find(|l| l.starts_with(&node.id))
            .unwrap_or_else(|| panic!("node {} missing from:\n{}", node.id, text.stdout));
        assert!(line.contains("live"), "{line}");
        assert!(line.contains(&node.addr.to_string()), "{line}");
    }
    assert!(
        !text.stderr.contains("warning"),
        "one pack, no warning: {}",
        text.stderr
    );
    assert!(text.stderr.contains("2 live node(s)"), "{}", text.stderr);

    let json = nodes(&cluster, true);
    let list = listed(&json);
    assert_eq!(list.len(), 2, "{list:?}");
    for node in &cluster.nodes {
        let (_, alive, info) = list
            .iter()
            .find(|(id, _, _)| *id == node.id)
            .unwrap_or_else(|| panic!("node {} missing from {list:?}", node.id));
        assert!(alive, "{info}");
        assert_eq!(info["addr"], node.addr.to_string(), "{info}");
    }
    assert_eq!(list[0].2["fingerprint"], list[1].2["fingerprint"]);
    assert!(!json.stderr.contains("warning"), "{}", json.stderr);

    // A third node with another pack: listed, and the difference is called out.
    cluster.add_node(Some(&pack("other"))).await;
    let text = nodes(&cluster, false);
    for node in &cluster.nodes {
        assert!(
            text.stdout
                .lines()
                .any(|l| l.starts_with(&node.id) && l.contains("live")),
            "node {} missing from:\n{}",
            node.id,
            text.stdout
        );
    }
    assert!(
        text.stderr.contains("warning") && text.stderr.contains("different packs"),
        "differing fingerprints must be warned about: {}",
        text.stderr
    );
    let json = nodes(&cluster, true);
    let list = listed(&json);
    assert_eq!(list.len(), 3, "{list:?}");
    let mut prints: Vec<String> = list
        .iter()
        .map(|(_, _, info)| {
            info["fingerprint"]
                .as_str()
                .expect("a fingerprint")
                .to_string()
        })
        .collect();
    prints.sort();
    prints.dedup();
    assert_eq!(prints.len(), 2, "two packs, two fingerprints: {list:?}");
    assert!(json.stderr.contains("warning"), "{}", json.stderr);

    // A node that stopped gracefully is no longer listed.
    let mut third = cluster.nodes.pop().expect("three nodes");
    third.signal("TERM");
    assert!(third.wait_exit(Duration::from_secs(15)).success());
    let list = listed(&nodes(&cluster, true));
    assert!(
        list.iter().all(|(id, _, _)| *id != third.id),
        "a deregistered node is still listed: {list:?}"
    );
    assert_eq!(list.len(), 2, "{list:?}");
}

/// Copy `tests/packs/cluster/basic` to a fresh directory a node can be reloaded from.
fn own_pack() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(pack("basic").join("pack.yaml")).expect("read the pack");
    std::fs::write(dir.path().join("pack.yaml"), text).expect("copy the pack");
    dir
}

/// Whether `nodes` warns that the live nodes serve different packs.
fn mixed(cluster: &Cluster) -> bool {
    nodes(cluster, false).stderr.contains("different packs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_shows_a_mixed_fleet_then_agreement() {
    let _serial = serial();
    let (one, two) = (own_pack(), own_pack());
    let mut cluster = Cluster::start_pack(0, &pack("basic"), &["--node-ttl", "1"]).await;
    cluster.add_node(Some(one.path())).await;
    cluster.add_node(Some(two.path())).await;
    let settle = || tokio::time::sleep(Duration::from_millis(900));
    settle().await;
    assert!(
        !mixed(&cluster),
        "identical packs in two places are one pack"
    );

    let extra = "\n  rollout.marker:\n    scope: local\n    schema: {}\n";
    for (dir, node) in [(&one, 0), (&two, 1)] {
        let file = dir.path().join("pack.yaml");
        let mut text = std::fs::read_to_string(&file).expect("read");
        text.push_str(extra);
        std::fs::write(&file, text).expect("write");
        cluster.nodes[node].signal("HUP");
        settle().await;
        let fingerprints: Vec<String> = listed(&nodes(&cluster, true))
            .iter()
            .map(|(_, _, info)| info["fingerprint"].as_str().unwrap_or_default().to_string())
            .collect();
        if node == 0 {
            assert!(mixed(&cluster), "one node reloaded: {fingerprints:?}");
        } else {
            assert!(!mixed(&cluster), "both reloaded: {fingerprints:?}");
        }
    }
}
