//! One node of a cluster test: the built binary with `--redis` (a process of
//! [`binary`](crate::support::binary), which it derefs to), and the clients and HTTP
//! requests that reach it with the cluster's bounds.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::binary::{binary_command, spawn_command, BinaryServer};
use crate::support::client::{http_get_within, token, try_http_get, Client};

use super::{BOUNDS, JWT_SECRET, WAIT};

/// One `wss-engine` process of a cluster.
pub struct Node(BinaryServer);

impl Deref for Node {
    type Target = BinaryServer;

    fn deref(&self) -> &BinaryServer {
        &self.0
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut BinaryServer {
        &mut self.0
    }
}

impl Node {
    /// `wss-engine --config PACK --listen 127.0.0.1:0 --redis URL --redis-prefix P ARGS…`;
    /// returns once it logged its address (bounded). It may not be ready yet: see
    /// [`Node::wait_ready`].
    pub fn spawn(name: &str, pack: &Path, redis_url: &str, prefix: &str, args: &[&str]) -> Node {
        Self::spawn_with_env(name, pack, redis_url, prefix, args, &[])
    }

    /// [`Node::spawn`] with more environment variables (fault-injection hooks).
    pub fn spawn_with_env(
        name: &str,
        pack: &Path,
        redis_url: &str,
        prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let mut cmd = binary_command(pack, &[]);
        cmd.args(["--redis", redis_url])
            .args(["--redis-prefix", prefix])
            .args(args)
            .envs(env.iter().copied());
        Self::spawn_command(name, cmd)
    }

    /// A node from a command the caller built (see [`spawn_command`]).
    pub fn spawn_command(name: &str, cmd: Command) -> Node {
        Node(spawn_command(name, cmd))
    }

    pub fn url_with_token(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect_bounded(&self.url(), BOUNDS).await
    }

    /// Connect authenticated as `user` (HS256 token with [`JWT_SECRET`]).
    pub async fn connect_as(&self, user: &str) -> Client {
        let url = self.url_with_token(&token(JWT_SECRET, user, 3600));
        Client::connect_bounded(&url, BOUNDS).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get_within(self.addr, path, WAIT).await
    }

    /// The HTTP status of `path`, or `None` if the node does not answer in time.
    pub async fn status(&self, path: &str) -> Option<u16> {
        try_http_get(self.addr, path, Duration::from_secs(2))
            .await
            .map(|(s, _)| s)
    }

    /// Wait (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.status("/readyz").await == Some(200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} was not ready within {within:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of every sample of a Prometheus metric on this node (0 if absent).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics on {}", self.name);
        metric_sum(&body, name)
    }
}

/// Sum the samples of `name` (any labels) in a Prometheus text exposition.
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
