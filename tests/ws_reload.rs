//! Pack rollout on a running binary: `SIGHUP` and `--watch` swap a valid pack without
//! dropping a socket, refuse an invalid one (the old one keeps serving), survive an
//! editor's rename-save and a ConfigMap's `..data` symlink swap, and debounce bursts.
//! Under 200 clients sending all the time, 50 reloads (valid and invalid in turn) drop
//! nobody, fail nothing, and every client sees pack versions only go forward.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::binary::{spawn_binary, BinaryServer};
use support::client::{eventually, http_get, Client};

/// A pack whose `stamp` event replies with `version`, and `broken` text when asked.
fn pack_text(version: u64) -> String {
    format!(
        r#"
rooms:
  "h:*": {{ history: {{ size: 100, ttl: 600 }} }}
events:
  stamp:
    scope: local
    schema: {{}}
    script: |
      reply(#{{ version: {version} }});
  join:
    scope: cluster
    schema: {{ type: object, required: [room], properties: {{ room: {{ type: string }} }} }}
    script: |
      join(data.room);
"#
    )
}

const BROKEN: &str = "events:\n  stamp:\n    scpoe: local\n";

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write the new pack file");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

async fn version(c: &mut Client) -> u64 {
    c.ok("stamp", json!({})).await["version"]
        .as_u64()
        .expect("a version")
}

/// Ask until the served pack is at `want` (bounded).
async fn until_version(c: &mut Client, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if version(c).await == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(server: &BinaryServer, name: &str, label: &str) -> f64 {
    let body = http_get(server.addr, "/metrics").await.1;
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

async fn ready_pack(server: &BinaryServer) -> String {
    let (status, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("/readyz is JSON");
    assert_eq!(v["status"], "ready");
    v["pack"].as_str().expect("pack").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_a_valid_pack_and_refuses_an_invalid_one_without_dropping_anyone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pack.yaml");
    std::fs::write(&file, pack_text(1)).expect("write v1");
    let server = spawn_binary(dir.path(), &[]);
    let mut c = Client::connect(&server.url()).await;
    c.ok("join", json!({ "room": "h:1" })).await;
    assert_eq!(version(&mut c).await, 1);
    let first = ready_pack(&server).await;

    write_atomically(&file, &pack_text(2));
    server.signal("HUP");
    until_version(&mut c, 2, "the new pack is served").await;
    let second = ready_pack(&server).await;
    assert_ne!(first, second, "/readyz names the pack served");

    write_atomically(&file, BROKEN);
    server.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the refused reload is counted",
        || {
            let server = &server;
            async move {
                (metric(server, "wss_pack_reloads_total", "invalid").await >= 1.0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(version(&mut c).await, 2, "the old pack keeps serving");
    assert_eq!(ready_pack(&server).await, second);
    let log = server.log_text();
    assert!(
        log.contains("unknown field \"scpoe\""),
        "diagnostics are logged:\n{log}"
    );
    assert!(log.contains("pack reload refused"), "{log}");
    assert_eq!(
        metric(&server, "wss_pack_reloads_total", "\"ok\"").await,
        1.0
    );
    assert_eq!(metric(&server, "wss_pack_info", &second).await, 1.0);
    assert_eq!(metric(&server, "wss_pack_info", &first).await, 0.0);

    // The socket, its room and its session went through all of it.
    let mut d = Client::connect(&server.url()).await;
    d.ok("join", json!({ "room": "h:1" })).await;
    assert_eq!(version(&mut d).await, 2);
    assert_eq!(version(&mut c).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_rename_saves_and_configmap_symlink_swaps_and_debounces_bursts() {
    // A ConfigMap volume: `pack.yaml -> ..data/pack.yaml`, `..data -> ..<timestamp>`.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01")).expect("mkdir");
    std::fs::write(root.join("..2026_01/pack.yaml"), pack_text(1)).expect("write");
    std::os::unix::fs::symlink("..2026_01", root.join("..data")).expect("symlink ..data");
    std::os::unix::fs::symlink("..data/pack.yaml", root.join("pack.yaml")).expect("symlink");
    let server = spawn_binary(root, &["--watch"]);
    let mut c = Client::connect(&server.url()).await;
    assert_eq!(version(&mut c).await, 1);

    // The kubelet's update: a new timestamped directory, then `..data` swapped to it
    // with one rename.
    std::fs::create_dir(root.join("..2026_02")).expect("mkdir");
    std::fs::write(root.join("..2026_02/pack.yaml"), pack_text(2)).expect("write");
    std::os::unix::fs::symlink("..2026_02", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(root.join("..2026_01")).expect("old data goes");
    until_version(&mut c, 2, "the ConfigMap update is served").await;

    // An editor's save: a new file renamed over the old one (here over the symlink).
    write_atomically(&root.join("pack.yaml"), &pack_text(3));
    until_version(&mut c, 3, "the rename-save is served").await;

    // A burst of 20 writes within ~200 ms is one reload (or two), not twenty.
    let before = metric(&server, "wss_pack_reloads_total", "").await;
    for i in 0..20 {
        std::fs::write(root.join("pack.yaml"), pack_text(100 + i)).expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_version(&mut c, 119, "the burst's last version is served").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reloads = metric(&server, "wss_pack_reloads_total", "").await - before;
    assert!(
        (1.0..=3.0).contains(&reloads),
        "{reloads} reloads for one burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_200_busy_clients_drop_nobody_and_versions_only_go_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pack.yaml");
    std::fs::write(&file, pack_text(0)).expect("write v0");
    let server = spawn_binary(dir.path(), &[]);
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let ack = c.call("stamp", json!({})).await;
                assert_eq!(ack["ok"], true, "only the packs' own outcomes: {ack}");
                let v = ack["data"]["version"].as_u64().expect("version");
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
            }
            // Still connected, still served.
            let v = version(&mut c).await;
            (seen, v)
        }));
    }
    let started = Instant::now();
    let mut last_valid = 0;
    for i in 1..=50u64 {
        if i % 2 == 1 {
            last_valid = i;
            write_atomically(&file, &pack_text(i));
        } else {
            write_atomically(&file, BROKEN);
        }
        server.signal("HUP");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // Let the last reload land, then stop.
    write_atomically(&file, &pack_text(last_valid));
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    for client in clients {
        let (seen, now) = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("a client finished")
            .expect("a client task");
        versions.extend(seen.iter().copied());
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "versions went backwards on one connection: {seen:?}"
        );
        assert_eq!(now, last_valid);
    }
    assert!(
        versions.len() >= 10,
        "clients saw the packs change under them: {versions:?}"
    );
    eprintln!(
        "50 reloads under 200 clients in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(metric(&server, "wss_pack_reloads_total", "invalid").await >= 20.0);
}
