//! The chaos soak (issue 17): Redis with AOF and three `wss-engine` nodes, each node in
//! a network namespace of its own, under a steady load of clients (room messages to
//! rooms with history, counter increments acked one by one, subscribers that resume),
//! while a schedule drawn from a seed kills, stops and cuts off nodes and restarts
//! Redis. Every op, delivery, resume, fault, readiness probe and RSS sample goes into a
//! history file; the checker (`chaos/checker/`) then proves the delivery guarantees
//! held, or names each place they did not.
//!
//! Run it with `scripts/chaos [--duration S] [--seed N] [--redis-cluster]` (root: it
//! makes network namespaces); it is `#[ignore]`d, so a plain `cargo nextest run` only
//! runs the checker's and the schedule's own tests.
//!
//! ```text
//! chaos/schedule.rs  the faults, from the seed
//! chaos/netns.rs     namespaces, veth pairs, the DROP rules
//! chaos/workload.rs  subscribers, publishers, counters; the final reads
//! chaos/history.rs   the JSON-lines history
//! chaos/checker/     the verdict (streams, counters, rooms; nodes.rs: readiness and
//!                    processes), with tests on synthetic histories
//! ```

mod support;

#[path = "chaos/checker/mod.rs"]
mod checker;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/netns.rs"]
mod netns;
#[path = "chaos/schedule.rs"]
mod schedule;
#[path = "chaos/workload.rs"]
mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use history::Recorder;
use netns::{Net, NODE_PORT, REDIS_ADDR};
use schedule::Fault;
use support::cluster::{pack, unique_prefix, Node, Redis, RedisCluster, RedisServer};
use workload::Shared;

const NODES: usize = 3;
const ROOMS: usize = 4;
const SUBSCRIBERS: usize = 6;
const PUBLISHERS: usize = 3;
const COUNTERS: usize = 3;

/// The run's settings, from the environment `scripts/chaos` sets.
struct Settings {
    seed: u64,
    duration: Duration,
    redis_cluster: bool,
    keep: bool,
    out: PathBuf,
    limits: checker::Limits,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Settings {
    fn from_env() -> Self {
        let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
        let out = std::env::var("CHAOS_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos"));
        let mut limits = checker::Limits::default();
        if let Some(mb) = env_u64("CHAOS_RSS_MB") {
            limits.rss_bound_kb = mb * 1024;
        }
        Self {
            seed,
            duration: Duration::from_secs(env_u64("CHAOS_DURATION").unwrap_or(60)),
            redis_cluster: std::env::var("CHAOS_REDIS_CLUSTER").is_ok_and(|v| v == "1"),
            keep: std::env::var("CHAOS_KEEP").is_ok_and(|v| v == "1"),
            out,
            limits,
        }
    }
}

/// One node's process and what the samplers need to know of it.
struct Slot {
    node: Option<Node>,
    /// Set by a kill fault until the node is started again: not a crash.
    expect_down: bool,
    /// A crash is reported once.
    exit_reported: bool,
}

/// Everything the fault thread acts on.
struct World {
    slots: Mutex<Vec<Slot>>,
    redis: Mutex<Redis>,
    net: Net,
    redis_url: String,
    prefix: String,
    rec: Recorder,
}

impl World {
    fn spawn_node(&self, i: usize) -> Node {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &Net::namespace(i),
            env!("CARGO_BIN_EXE_wss-engine"),
        ])
        .arg("--config")
        .arg(pack("chaos"))
        .args(["--listen", &format!("{}:{NODE_PORT}", Net::node_ip(i))])
        .args(["--redis", &self.redis_url])
        .args(["--redis-prefix", &self.prefix])
        .args(["--api-key", &format!("chaos={}", workload::API_KEY)]);
        Node::spawn_command(&format!("n{}", i + 1), cmd)
    }

    fn record_start(&self, i: usize, node: &Node, reason: &str) {
        self.rec.record(
            "node_start",
            json!({ "node": format!("n{}", i + 1), "pid": node.pid(), "reason": reason }),
        );
    }

    fn with_node<T>(&self, i: usize, f: impl FnOnce(&mut Node) -> T) -> Option<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[i].node.as_mut().map(f)
    }

    fn fault(&self, fault: &Fault) {
        let name = fault.name();
        let node = fault.node().map(|i| format!("n{}", i + 1));
        let mark = |phase: &str| {
            let mut line = json!({ "fault": name, "phase": phase });
            if let Some(node) = &node {
                line["node"] = json!(node);
            }
            self.rec.record("fault", line);
        };
        // A fault's window is when it is fully in force: `start` once it is applied,
        // `end` just before it is undone. The checker holds /readyz to "not ready"
        // inside the window, so it must not include the moments before the cut is in
        // place or after Redis is started again (while the harness still waits for it
        // to answer, nodes may rightly be ready already).
        match fault {
            Fault::Kill { node: i, down } => {
                {
                    let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    slots[*i].expect_down = true;
                    if let Some(n) = slots[*i].node.as_mut() {
                        n.sigkill();
                    }
                }
                mark("start");
                std::thread::sleep(*down);
                mark("end");
                let fresh = self.spawn_node(*i);
                self.record_start(*i, &fresh, "after_kill");
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let old = slots[*i].node.replace(fresh);
                slots[*i].expect_down = false;
                slots[*i].exit_reported = false;
                drop(slots);
                if let Some(old) = old {
                    self.save_log(*i, &old, "killed");
                }
            }
            Fault::Stop { node: i, pause } => {
                self.with_node(*i, |n| n.pause());
                mark("start");
                std::thread::sleep(*pause);
                mark("end");
                self.with_node(*i, |n| n.resume());
            }
            Fault::Drop { node: i, cut } => {
                if let Err(e) = self.net.cut(*i, true) {
                    panic!("cut n{} off Redis: {e}", i + 1);
                }
                mark("start");
                std::thread::sleep(*cut);
                mark("end");
                if let Err(e) = self.net.cut(*i, false) {
                    panic!("reconnect n{} to Redis: {e}", i + 1);
                }
            }
            Fault::RedisRestart { down } => {
                self.redis.lock().unwrap_or_else(|e| e.into_inner()).kill();
                mark("start");
                std::thread::sleep(*down);
                mark("end");
                self.redis
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .restart();
            }
            Fault::Failover => {
                mark("start");
                let redis = self.redis.lock().unwrap_or_else(|e| e.into_inner());
                let took_over = match &*redis {
                    Redis::Cluster(c) => failover(c),
                    Redis::Single(_) => None,
                };
                drop(redis);
                // Which replica, and whether it became a master within the bound.
                self.rec.record(
                    "failover",
                    json!({ "replica": took_over.map(|t| t.0), "master": took_over.map(|t| t.1) }),
                );
                mark("end");
            }
        }
    }

    fn save_log(&self, i: usize, node: &Node, tag: &str) {
        let dir = self.rec_dir();
        let path = dir.join(format!("n{}-{tag}-{}.log", i + 1, node.pid()));
        let _ = std::fs::write(path, node.log_text());
    }

    fn rec_dir(&self) -> PathBuf {
        RUN_DIR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// `CLUSTER FAILOVER` on one replica, waiting (bounded) until it is a master:
/// `(its port, whether it became one)`.
fn failover(cluster: &RedisCluster) -> Option<(u16, bool)> {
    let masters = cluster.masters();
    let replica = cluster
        .servers
        .iter()
        .find(|s| !masters.contains(&s.port))?;
    let mut conn = replica.conn();
    let _: Result<String, _> = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.masters().contains(&replica.port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((replica.port, cluster.masters().contains(&replica.port)))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// The soak itself. `scripts/chaos` runs it; see the module doc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the chaos soak: run it with scripts/chaos (root, network namespaces)"]
async fn chaos_soak() {
    if !is_root() {
        eprintln!("chaos: SKIPPED: network namespaces need root");
        return;
    }
    let missing = netns::tools_missing();
    assert!(
        missing.is_empty(),
        "chaos: missing tools {missing:?} (scripts/chaos installs them)"
    );
    let settings = Settings::from_env();
    // Namespace names are fixed: one run at a time on this machine.
    let lock = std::fs::File::create(std::env::temp_dir().join("wss-engine-chaos.lock"))
        .expect("lock file");
    lock.try_lock()
        .expect("another chaos run holds /tmp/wss-engine-chaos.lock");

    let dir = settings.out.join(format!(
        "seed-{}-{}{}",
        settings.seed,
        settings.duration.as_secs(),
        if settings.redis_cluster {
            "-cluster"
        } else {
            ""
        }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the run directory");
    *RUN_DIR.lock().unwrap() = Some(dir.clone());
    let history_path = dir.join("history.jsonl");
    let rec = Recorder::create(&history_path).expect("the history file");
    let plan = schedule::schedule(
        settings.seed,
        settings.duration,
        NODES,
        settings.redis_cluster,
    );
    println!(
        "chaos: seed {} duration {} s{}: {} faults planned; history {}",
        settings.seed,
        settings.duration.as_secs(),
        if settings.redis_cluster {
            " (Redis Cluster)"
        } else {
            ""
        },
        plan.len(),
        history_path.display()
    );
    let l = settings.limits;
    rec.record(
        "run",
        json!({
            "seed": settings.seed, "duration_s": settings.duration.as_secs(),
            "redis_cluster": settings.redis_cluster, "nodes": NODES,
            "plan": plan.iter().map(|p| json!({"at_ms": p.at.as_millis() as u64, "fault": format!("{:?}", p.fault)})).collect::<Vec<_>>(),
            "limits": { "drop_detect_ms": l.drop_detect_ms, "redis_detect_ms": l.redis_detect_ms,
                        "recover_ms": l.recover_ms, "rss_bound_kb": l.rss_bound_kb },
        }),
    );

    let net = Net::create(NODES).unwrap_or_else(|e| panic!("chaos: network setup: {e}"));
    // Redis listens on loopback (the harness) and on the address the namespaces reach;
    // AOF with fsync before each reply, so a SIGKILLed Redis keeps every acked write.
    let redis_args = [
        "--bind",
        &format!("127.0.0.1 {REDIS_ADDR}"),
        "--protected-mode",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let (redis, redis_url) = if settings.redis_cluster {
        let mut args = redis_args.to_vec();
        args.extend(["--cluster-announce-ip", REDIS_ADDR]);
        let c = RedisCluster::start_with(REDIS_ADDR, &args);
        c.wait_replicated(Duration::from_secs(30));
        let hosts: Vec<String> = c
            .servers
            .iter()
            .take(3)
            .map(|s| format!("{REDIS_ADDR}:{}", s.port))
            .collect();
        (
            Redis::Cluster(c),
            format!("redis+cluster://{}", hosts.join(",")),
        )
    } else {
        let s = RedisServer::start_with(&redis_args);
        let url = format!("redis://{REDIS_ADDR}:{}", s.port);
        (Redis::Single(s), url)
    };
    let world = Arc::new(World {
        slots: Mutex::new(Vec::new()),
        redis: Mutex::new(redis),
        net,
        redis_url,
        prefix: unique_prefix("chaos"),
        rec: rec.clone(),
    });
    for i in 0..NODES {
        let node = world.spawn_node(i);
        world.record_start(i, &node, "initial");
        world.slots.lock().unwrap().push(Slot {
            node: Some(node),
            expect_down: false,
            exit_reported: false,
        });
    }
    let shared = Arc::new(Shared {
        rec: rec.clone(),
        nodes: (0..NODES)
            .map(|i| format!("{}:{NODE_PORT}", Net::node_ip(i)))
            .collect(),
        rooms: (0..ROOMS).map(|r| format!("h:{r}")).collect(),
        stop_ops: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        positions: Mutex::new(Default::default()),
        seed: settings.seed,
    });
    for i in 0..NODES {
        wait_ready(&shared.nodes[i], Duration::from_secs(30)).await;
    }

    // Samplers: /readyz of every node every 250 ms; RSS and crashes every 2 s.
    let sampling = Arc::new(AtomicBool::new(true));
    let mut samplers = Vec::new();
    for i in 0..NODES {
        let (rec, addr, on) = (rec.clone(), shared.nodes[i].clone(), sampling.clone());
        samplers.push(tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                let sent = rec.now();
                let status = workload::http_get(&addr, "/readyz", "", Duration::from_secs(1))
                    .await
                    .map(|r| r.0);
                rec.record(
                    "readyz",
                    json!({ "node": format!("n{}", i + 1), "sent": sent, "status": status }),
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }
    {
        let (world, on) = (world.clone(), sampling.clone());
        samplers.push(tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                {
                    let mut slots = world.slots.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, slot) in slots.iter_mut().enumerate() {
                        let name = format!("n{}", i + 1);
                        let Some(node) = slot.node.as_mut() else {
                            continue;
                        };
                        if let Some(kb) = rss_kb(node.pid()) {
                            world.rec.record("rss", json!({ "node": name, "kb": kb }));
                        }
                        if !slot.expect_down && !slot.exit_reported && !node.is_running() {
                            slot.exit_reported = true;
                            world.rec.record(
                                "node_exit",
                                json!({ "node": name, "pid": node.pid(), "status": "exited" }),
                            );
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }

    // The load.
    let started = Instant::now();
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        subscribers.push(tokio::spawn(workload::subscriber(shared.clone(), i)));
    }
    let mut senders = Vec::new();
    for i in 0..PUBLISHERS {
        senders.push(tokio::spawn(workload::sender(shared.clone(), "say", i)));
    }
    for i in 0..COUNTERS {
        senders.push(tokio::spawn(workload::sender(shared.clone(), "incr", i)));
    }

    // The faults, on a thread of their own (they block: sleeps, process starts).
    let faults = {
        let world = world.clone();
        let plan = plan.clone();
        std::thread::spawn(move || {
            for p in plan {
                let wait = p.at.saturating_sub(started.elapsed());
                std::thread::sleep(wait);
                println!(
                    "chaos: {:>5.1} s {:?}",
                    started.elapsed().as_secs_f64(),
                    p.fault
                );
                world.fault(&p.fault);
            }
        })
    };
    // Progress every 10 s, so a watcher of a long run sees it move.
    while started.elapsed() < settings.duration {
        let left = settings.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        println!("chaos: {:>5.1} s", started.elapsed().as_secs_f64());
    }
    let faults_ok = tokio::task::spawn_blocking(move || faults.join())
        .await
        .expect("join")
        .is_ok();
    shared.stop_ops.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
    }
    println!(
        "chaos: load stopped at {:.1} s; settling",
        started.elapsed().as_secs_f64()
    );

    // Settle: every node ready, every subscriber at every room's head.
    for i in 0..NODES {
        let ready = try_wait_ready(&shared.nodes[i], Duration::from_secs(60)).await;
        rec.record(
            "final_ready",
            json!({ "node": format!("n{}", i + 1), "ready": ready }),
        );
    }
    let mut heads = Vec::new();
    for room in &shared.rooms {
        let mut read = Err("no node answered".to_string());
        for addr in &shared.nodes {
            read = workload::read_history(addr, room).await;
            if read.is_ok() {
                break;
            }
        }
        match read {
            Ok((epoch, head, complete, entries)) => {
                rec.record("final_history", json!({ "room": room, "epoch": epoch, "head": head, "complete": complete, "entries": entries }));
                heads.push((room.clone(), epoch, head));
            }
            Err(e) => rec.record("final_history_error", json!({ "room": room, "error": e })),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let all = shared.positions.lock().unwrap().clone();
        let behind = (0..SUBSCRIBERS).any(|i| {
            let mine = all.get(&format!("s{}", i + 1));
            heads.iter().any(|(room, epoch, head)| {
                mine.and_then(|m| m.get(room)) != Some(&(epoch.clone(), *head))
            })
        });
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.stop_all.store(true, Ordering::Relaxed);
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    for i in 0..COUNTERS {
        let c = format!("c{}", i + 1);
        let mut got = Err(String::new());
        for node in 0..NODES {
            got = workload::read_counter(&shared, node, &c).await;
            if got.is_ok() {
                break;
            }
        }
        match got {
            Ok((n, log)) => rec.record("final_counter", json!({ "client": c, "n": n, "log": log })),
            Err(e) => rec.record("final_counter_error", json!({ "client": c, "error": e })),
        }
    }
    sampling.store(false, Ordering::Relaxed);
    for s in samplers {
        let _ = s.await;
    }
    rec.flush();

    // Stop everything (and keep the nodes' logs).
    {
        let mut slots = world.slots.lock().unwrap();
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(mut node) = slot.node.take() {
                node.sigkill();
                world.save_log(i, &node, "final");
            }
        }
    }
    world.redis.lock().unwrap().kill();

    let events = history::load(&history_path).expect("read the history back");
    let verdict = checker::check(&events, &settings.limits);
    let mut report = format!(
        "chaos: seed {} duration {} s{}: {}\n",
        settings.seed,
        settings.duration.as_secs(),
        if settings.redis_cluster {
            " (Redis Cluster)"
        } else {
            ""
        },
        if verdict.passed() && faults_ok {
            "PASSED"
        } else {
            "FAILED"
        }
    );
    for (k, v) in &verdict.stats {
        report.push_str(&format!("  {k}: {v}\n"));
    }
    if !faults_ok {
        report.push_str("  the fault thread panicked (see above)\n");
    }
    for m in verdict.violations.iter().take(50) {
        report.push_str(&format!("  VIOLATION {m}\n"));
    }
    if verdict.violations.len() > 50 {
        report.push_str(&format!(
            "  … {} violations in all\n",
            verdict.violations.len()
        ));
    }
    std::fs::write(dir.join("verdict.txt"), &report).expect("write the verdict");
    print!("{report}");
    let passed = verdict.passed() && faults_ok;
    if passed && !settings.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "chaos: seed {} ; history {} ; verdict {}",
            settings.seed,
            history_path.display(),
            dir.join("verdict.txt").display()
        );
    }
    assert!(
        passed,
        "chaos soak failed: seed {}, history {}",
        settings.seed,
        history_path.display()
    );
}

async fn try_wait_ready(addr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if workload::http_get(addr, "/readyz", "", Duration::from_secs(1))
            .await
            .map(|r| r.0)
            == Some(200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_ready(addr: &str, within: Duration) {
    assert!(
        try_wait_ready(addr, within).await,
        "chaos: node {addr} not ready within {within:?}"
    );
}

/// The checker on a history file of an earlier run: `CHAOS_HISTORY=path`.
#[test]
#[ignore = "re-checks a kept history: CHAOS_HISTORY=path cargo test --test chaos -- --ignored recheck"]
fn recheck() {
    let path = std::env::var("CHAOS_HISTORY").expect("CHAOS_HISTORY=path/to/history.jsonl");
    let events = history::load(Path::new(&path)).expect("read the history");
    let limits = events
        .iter()
        .find(|e| e["kind"] == "run")
        .map(checker::Limits::from_run_line)
        .unwrap_or_default();
    let verdict = checker::check(&events, &limits);
    for (k, v) in &verdict.stats {
        println!("{k}: {v}");
    }
    for m in &verdict.violations {
        println!("VIOLATION {m}");
    }
    assert!(verdict.passed(), "{} violations", verdict.violations.len());
}
