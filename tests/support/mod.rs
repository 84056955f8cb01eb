//! What the integration tests share, one module per role. A test file says
//! `mod support;` and uses the modules it needs:
//!
//! - [`inprocess`]: a server in this process on `127.0.0.1:0` (`server::run`), for an
//!   inline pack or a pack directory.
//! - [`binary`]: the built binary as a process: spawned with none of the tester's
//!   engine environment, its log collected, signalled and stopped by PID.
//! - [`cluster`]: `redis-server`s (one, a Redis Cluster, a Sentinel), `wss-engine`
//!   nodes on them, and the lock that runs cluster tests one at a time.
//! - [`client`]: the WebSocket client (`$welcome`, acks, deliveries, closes), a tiny
//!   HTTP GET, tokens and bounded polling.
//! - [`api`]: the HTTP API client.
//! - [`cli`]: the binary's subcommands (`check`, `diff`, `test`, `asyncapi`, `nodes`…)
//!   run to completion, their output as text.
//!
//! Every test starts its own servers on free ports, so tests run in parallel, and
//! every wait is bounded: a test that does not get what it expects fails with a
//! message instead of hanging. Cluster tests wait longer (see [`cluster::WAIT`]).

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod api;
pub mod binary;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod inprocess;

use std::path::{Path, PathBuf};
use std::time::Duration;

use client::Bounds;

/// How long any single expected frame may take from a server of this process or a
/// lone binary. Generous for a loaded 2-core machine in a debug build; a passing test
/// never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long "nothing arrives" is watched for. Long enough that a delivery already in
/// flight would show up on loopback, short enough to keep tests quick.
pub const QUIET: Duration = Duration::from_millis(300);

/// The bounds of a [`client::Client`] connected with `Client::connect`.
pub const BOUNDS: Bounds = Bounds {
    wait: WAIT,
    quiet: QUIET,
};

/// A port nobody listens on right now (bound and released; the short race is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The crate root: tests run the binary from here, so paths in its output are the
/// relative ones given.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every directory of `examples/`, relative to the crate root, sorted.
pub fn example_packs() -> Vec<PathBuf> {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the crate")
                .to_path_buf()
        })
        .collect();
    examples.sort();
    examples
}

/// Write a pack (one `pack.yaml` holding `yaml`) to a fresh temporary directory.
pub fn write_pack(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create a temporary pack directory");
    std::fs::write(dir.path().join("pack.yaml"), yaml).expect("write pack.yaml");
    dir
}
