//! Cluster tests: real `redis-server` and `wss-engine` processes.
//!
//! - [`RedisServer`] (`redis_server`): our own `redis-server` on a free port (never
//!   the machine's shared one), killed by PID when dropped; it can be SIGKILLed,
//!   paused and restarted on the same port.
//! - `topology`: the Redis a cluster runs on: one server, or a Redis Cluster of six
//!   ([`RedisCluster`], `WSS_TEST_REDIS=cluster`), behind one [`Redis`]; a [`Sentinel`].
//! - [`Node`] (`node`): the built binary with `--redis`, a unique key prefix per test,
//!   killed when dropped (its log is printed if the test panicked).
//! - [`Cluster`]: one Redis plus N nodes, the usual starting point.
//! - [`Tracked`] (`tracked`): a client that checks its rooms' streams frame by frame.
//! - [`backend`]: a `RedisBackend` on a test's Redis, for the library-level suites.
//! - [`serial`]: a cross-process lock, so tests that start nodes run one at a time even
//!   under `cargo nextest` (one process per test) on a 2-core machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::Bounds;

pub mod backend;
mod node;
mod redis_server;
mod topology;
mod tracked;

pub use node::Node;
pub use redis_server::RedisServer;
// A test binary that uses none of these would be told they are unused.
#[allow(unused_imports)]
pub use topology::{
    cluster_mode, AnyConnection, Redis, RedisCluster, Sentinel, NODE_TIMEOUT_MS, SENTINEL_MASTER,
};
#[allow(unused_imports)]
pub use tracked::{Position, Tracked};

/// How long one expected frame may take to arrive, across nodes, in a debug build on a
/// loaded 2-core machine. A passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for: long enough for a delivery already in
/// flight through Redis to show up on loopback.
pub const QUIET: Duration = Duration::from_millis(500);

/// The bounds of the clients a [`Node`] connects.
pub const BOUNDS: Bounds = Bounds {
    wait: WAIT,
    quiet: QUIET,
};

/// The HS256 secret nodes started by [`Cluster::start_with_jwt`] verify tokens with.
pub const JWT_SECRET: &str = "cluster-test-secret";

/// A pack under `tests/packs/cluster/`.
pub fn pack(name: &str) -> PathBuf {
    super::root().join("tests/packs/cluster").join(name)
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix(tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t{}-{nanos:x}-{}-{tag}:",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Held for the whole of a test that starts nodes: tests run one at a time, across test
/// threads and across processes, so at most one cluster (≤ 3 nodes) runs at once.
pub struct SerialGuard {
    _file: std::fs::File,
}

pub fn serial() -> SerialGuard {
    let path = std::env::temp_dir().join("wss-engine-cluster-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the cluster test lock file");
    // Bounded: the longest cluster test takes about a minute; many queued ones more.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        match file.try_lock() {
            Ok(()) => return SerialGuard { _file: file },
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("could not take {} : {e}", path.display()),
        }
    }
}

/// One Redis and N nodes of the same pack under a prefix of their own.
pub struct Cluster {
    // Field order is drop order: nodes go before the Redis they talk to.
    pub nodes: Vec<Node>,
    pub redis: Redis,
    pub prefix: String,
    pub pack: PathBuf,
    pub args: Vec<String>,
}

impl Cluster {
    /// `n` nodes serving `tests/packs/cluster/basic`, each ready (bounded).
    pub async fn start(n: usize, args: &[&str]) -> Cluster {
        Self::start_pack(n, &pack("basic"), args).await
    }

    /// Like [`Cluster::start`], the nodes verifying JWTs signed with [`JWT_SECRET`].
    pub async fn start_with_jwt(n: usize) -> Cluster {
        Self::start(n, &["--jwt-secret", JWT_SECRET]).await
    }

    pub async fn start_pack(n: usize, pack: &Path, args: &[&str]) -> Cluster {
        Self::start_on(Redis::start(), n, pack, args).await
    }

    /// [`Cluster::start_pack`] on a Redis of the caller's choice.
    pub async fn start_on(redis: Redis, n: usize, pack: &Path, args: &[&str]) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            prefix: unique_prefix("c"),
            redis,
            pack: pack.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            cluster.add_node(None).await;
        }
        cluster
    }

    /// Start one more node (optionally with another pack) and wait until it is ready.
    pub async fn add_node(&mut self, pack: Option<&Path>) -> &Node {
        self.add_node_with_env(pack, &[]).await
    }

    /// [`Cluster::add_node`] with more environment variables.
    pub async fn add_node_with_env(&mut self, pack: Option<&Path>, env: &[(&str, &str)]) -> &Node {
        let name = format!("n{}", self.nodes.len() + 1);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let node = Node::spawn_with_env(
            &name,
            pack.unwrap_or(&self.pack),
            &self.redis.url(),
            &self.prefix,
            &args,
            env,
        );
        node.wait_ready(Duration::from_secs(20)).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// A prefixed key or channel name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A per-room key (`room:`, `pos:`, `hist:`) as the backend names it: on a Redis
    /// Cluster the room is the hash tag.
    pub fn room_key(&self, kind: &str, room: &str) -> String {
        if self.redis.is_cluster() {
            format!("{}{kind}{{{room}}}", self.prefix)
        } else {
            format!("{}{kind}{room}", self.prefix)
        }
    }

    /// A state key's value (`s:`) or version (`v:`) key as the backend names it: on a
    /// Redis Cluster a key without a hash tag of its own is its own tag.
    pub fn state_key(&self, kind: &str, key: &str) -> String {
        let has_tag = key
            .split_once('{')
            .is_some_and(|(_, rest)| rest.find('}').is_some_and(|end| end > 0));
        if self.redis.is_cluster() && !has_tag {
            format!("{}{kind}{{{key}}}", self.prefix)
        } else {
            format!("{}{kind}{key}", self.prefix)
        }
    }

    /// The current JSON value of state key `key`, read straight from Redis.
    pub fn state_json(&self, key: &str) -> Option<Value> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.state_key("s:", key))
            .query(&mut self.redis.conn())
            .expect("GET a state key");
        raw.map(|s| serde_json::from_str(&s).expect("state values are JSON"))
    }
}
