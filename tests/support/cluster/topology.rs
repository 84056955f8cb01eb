//! The Redis a cluster test runs on: one `redis-server`, or a Redis Cluster of six
//! (3 masters, 3 replicas) made with `redis-cli --cluster create`, all on free ports and
//! stopped by PID. `WSS_TEST_REDIS=cluster` runs the cluster suites on the latter.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Cmd, ConnectionLike, RedisResult, Value};

use super::RedisServer;

/// Whether this test run uses a Redis Cluster (`WSS_TEST_REDIS=cluster`).
pub fn cluster_mode() -> bool {
    std::env::var("WSS_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// Six `redis-server`s with `--cluster-enabled yes`, joined into one cluster.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

/// How long a shard may be silent before its replica takes over (the tests wait for
/// failovers, so keep it short).
pub const NODE_TIMEOUT_MS: u64 = 2000;

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with("127.0.0.1", &[])
    }

    /// [`RedisCluster::start`] with more `redis-server` arguments for every server, the
    /// cluster made on `host` (an address the servers also bind, e.g. one that nodes in
    /// other network namespaces reach; see `--bind` and `--cluster-announce-ip`).
    pub fn start_with(host: &str, extra: &[&str]) -> Self {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
        ];
        args.extend_from_slice(extra);
        let servers: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_with(&args)).collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("{host}:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { servers };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// Wait (bounded) until every node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        self.wait_states_ok(Instant::now() + within, within);
    }

    /// Wait (bounded) until every slot range has a replica too: right after `create`
    /// they take seconds to attach, and a failover needs one.
    pub fn wait_replicated(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let slots: Option<Vec<Value>> = self.servers.iter().find_map(|s| {
                let mut c = s.try_conn()?;
                redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()
            });
            let replicated = slots.is_some_and(|ranges| {
                ranges.len() >= 3
                    && ranges
                        .iter()
                        .all(|r| matches!(r, Value::Array(parts) if parts.len() >= 4))
            });
            if replicated {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster's replicas did not show within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_states_ok(&self, deadline: Instant, within: Duration) {
        for server in &self.servers {
            loop {
                let info: Option<String> = server
                    .try_conn()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok());
                if info.is_some_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster on {} is not ok within {within:?}",
                    server.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `redis+cluster://` with the first three nodes (the rest is discovered).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .take(3)
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// A connection that routes by slot, for inspecting keys.
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        let nodes: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect();
        redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("a cluster client")
            .get_connection()
            .expect("connect to the Redis Cluster")
    }

    /// `(master, replicas)` by port, of the slot `key` hashes to, as the cluster says now.
    pub fn owner_of(&self, key: &str) -> (u16, Vec<u16>) {
        let mut conn = self
            .servers
            .iter()
            .find_map(RedisServer::try_conn)
            .expect("a reachable cluster node");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("CLUSTER SLOTS");
        let port = |node: &Value| match node {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Int(p)) => *p as u16,
                other => panic!("CLUSTER SLOTS node port: {other:?}"),
            },
            other => panic!("CLUSTER SLOTS node: {other:?}"),
        };
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end))) = (parts.first(), parts.get(1))
            else {
                continue;
            };
            if (*start..=*end).contains(&slot) {
                return (port(&parts[2]), parts[3..].iter().map(port).collect());
            }
        }
        panic!("no owner of slot {slot} in CLUSTER SLOTS");
    }

    /// The server on `port`.
    pub fn server(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of this cluster")
    }

    /// The servers that are masters now, by port.
    pub fn masters(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| {
                s.try_conn()
                    .and_then(|mut c| redis::cmd("ROLE").query::<Vec<Value>>(&mut c).ok())
                    .is_some_and(
                        |role| matches!(role.first(), Some(Value::BulkString(b)) if b == b"master"),
                    )
            })
            .map(|s| s.port)
            .collect()
    }
}

/// The Redis of a [`super::Cluster`]: its tests call the same methods either way.
pub enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn start() -> Self {
        if cluster_mode() {
            Self::Cluster(RedisCluster::start())
        } else {
            Self::Single(RedisServer::start())
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    pub fn url(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    pub fn conn(&self) -> AnyConnection {
        match self {
            Self::Single(s) => AnyConnection::Single(s.conn()),
            Self::Cluster(c) => AnyConnection::Cluster(Box::new(c.conn())),
        }
    }

    fn servers(&mut self) -> Vec<&mut RedisServer> {
        match self {
            Self::Single(s) => vec![s],
            Self::Cluster(c) => c.servers.iter_mut().collect(),
        }
    }

    /// Run `cmd` on every server (`CLIENT KILL`, `PUBSUB SHARDNUMSUB` …); each must answer.
    pub fn on_every_server<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Vec<T> {
        let servers: Vec<&RedisServer> = match self {
            Self::Single(s) => vec![s],
            Self::Cluster(c) => c.servers.iter().collect(),
        };
        servers
            .into_iter()
            .map(|s| {
                cmd.query(&mut s.conn())
                    .unwrap_or_else(|e| panic!("{cmd:?} on redis-server {}: {e}", s.port))
            })
            .collect()
    }

    /// SIGKILL every server.
    pub fn kill(&mut self) {
        for s in self.servers() {
            s.kill();
        }
    }

    /// Start every server again on its port. A cluster's nodes keep their identity
    /// (`nodes.conf`) and slots, with their data gone.
    pub fn restart(&mut self) {
        for s in self.servers() {
            s.restart();
        }
        if let Self::Cluster(c) = self {
            c.wait_ok(Duration::from_secs(30));
        }
    }

    /// SIGSTOP every server.
    pub fn pause(&self) {
        match self {
            Self::Single(s) => s.pause(),
            Self::Cluster(c) => c.servers.iter().for_each(RedisServer::pause),
        }
    }

    /// SIGCONT every server.
    pub fn resume(&self) {
        match self {
            Self::Single(s) => s.resume(),
            Self::Cluster(c) => c.servers.iter().for_each(RedisServer::resume),
        }
    }
}

/// A plain connection to one Redis, or one that routes by slot to a cluster.
pub enum AnyConnection {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(c) => c.req_command(cmd),
            Self::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Single(c) => c.check_connection(),
            Self::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Single(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }
}

/// A `redis-server --sentinel` on a free port watching one primary as `mymaster`
/// (quorum 2, down after 1 s), killed by PID when dropped.
pub struct Sentinel {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// The master name the tests' Sentinels use.
pub const SENTINEL_MASTER: &str = "mymaster";

impl Sentinel {
    pub fn start(primary_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a directory for the sentinel");
        let port = crate::support::free_port();
        // Sentinel rewrites its config file: it must be its own, writable.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                dir = dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let sentinel = Self {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel.conn().is_none() {
            assert!(
                Instant::now() < deadline,
                "sentinel on {port} never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    pub fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// The primary's port as this Sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .query(&mut self.conn()?)
            .ok()?;
        named.map(|(_, port)| port)
    }

    /// How many replicas and other Sentinels this one knows of.
    pub fn known(&self) -> (usize, usize) {
        let count = |what: &str| -> usize {
            self.conn()
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg(SENTINEL_MASTER)
                        .query::<Vec<Value>>(&mut c)
                        .ok()
                })
                .map_or(0, |v| v.len())
        };
        (count("replicas"), count("sentinels"))
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
