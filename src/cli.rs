//! The command line: `serve` (the default), `check`, `test`, `schema`, `asyncapi`, `nodes`, `diff`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::transport::api::keys::KeySpec;

#[derive(Debug, Parser)]
#[command(
    name = "wss-engine",
    version,
    about = "A horizontally scalable WebSocket server configured by event packs",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at startup; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a pack over WebSocket (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Validate a pack and print every problem as `file:line:col: severity: message`.
    Check(CheckArgs),
    /// Run the `tests:` cases of a pack in-process on the embedded backend.
    Test(TestArgs),
    /// Print the JSON Schema of the pack format.
    Schema,
    /// Print the AsyncAPI 3.0 document of a pack: what a client sends and receives.
    Asyncapi(AsyncapiArgs),
    /// List the live nodes of a Redis cluster; warns when their packs differ.
    Nodes(NodesArgs),
    /// List what changed between two packs, each change breaking or compatible for
    /// connected clients; exit 1 if any is breaking, 2 if a pack does not load.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The pack deployed now.
    pub old: PathBuf,
    /// The pack about to replace it.
    pub new: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[arg(long, env = "REDIS_URL")]
    pub redis: String,
    #[arg(long, env = "WSS_REDIS_PREFIX", default_value = "wss:")]
    pub redis_prefix: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pack directory.
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Print the events of a valid pack (name, scope, to, description).
    #[arg(long)]
    pub list: bool,
    /// The pack will run on a Redis Cluster: keys one script touches that may sit in
    /// different slots are errors, not warnings.
    #[arg(long)]
    pub redis_cluster: bool,
}

#[derive(Debug, Args)]
pub struct AsyncapiArgs {
    /// The pack directory.
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "json")]
    pub format: DocFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DocFormat {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The pack directory.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The pack directory.
    #[arg(long, env = "WSS_CONFIG", default_value = "events")]
    pub config: PathBuf,
    /// Reload the pack when its files change (also on SIGHUP, always). The new pack is
    /// checked in full first; one with errors leaves the served pack as it is.
    #[arg(long, env = "WSS_WATCH")]
    pub watch: bool,
    /// Address to listen on; port 0 picks a free port (the log says which).
    /// `SERVER_PORT` (a bare port) is honoured for compatibility.
    #[arg(long, env = "WSS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Redis URL: state, rooms and the bus go to Redis, so many nodes serve one app.
    /// `redis://host:port`, `redis+cluster://h1:p1,h2:p2,…` (a Redis Cluster: sharded
    /// Pub/Sub) or `redis+sentinel://h1:26379,…/mymaster` (the primary Sentinel names,
    /// followed across failovers). Without it one node runs on the embedded memory
    /// backend.
    /// `REDIS_SERVER` is honoured for compatibility.
    #[arg(long, env = "REDIS_URL")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel, so applications can share one Redis.
    #[arg(long, env = "WSS_REDIS_PREFIX", default_value = "wss:")]
    pub redis_prefix: String,
    /// Acknowledge a state change (or a delivery to a room with history) only once this
    /// many replicas hold it (`WAIT`), so it survives a failover. 0: replication is
    /// asynchronous and a failover may lose the last acknowledged writes.
    #[arg(long, env = "WSS_REDIS_WAIT_REPLICAS", default_value = "0")]
    pub redis_wait_replicas: u32,
    /// Seconds a node's heartbeat lives: a node silent this long is cleaned up after.
    #[arg(long, env = "WSS_NODE_TTL", default_value = "10", value_parser = parse_secs)]
    pub node_ttl: Duration,
    #[arg(long, env = "WSS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Runtime worker threads; default: the CPUs available to the process (cgroup
    /// quotas included). Set it to the node's CPU share when several nodes share a host.
    #[arg(long, env = "WSS_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Largest accepted text frame; larger ones get `too_large` (the connection stays).
    #[arg(long, env = "WSS_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Deliveries queued for one connection before it is cut off as a slow consumer.
    #[arg(long, env = "WSS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Shortest time between two socket writes of one connection, in milliseconds.
    /// Frames that arrive sooner wait and leave together in one write: a connection
    /// fed faster than this gets batches, one fed slower gets every frame at once.
    /// 0 writes every frame as soon as it is queued.
    #[arg(long, env = "WSS_WRITE_COALESCE_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub write_coalesce_ms: u64,
    /// Largest HTTP request head (request line and headers) in bytes; larger: 431.
    #[arg(long, env = "WSS_MAX_HEADER_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u64).range(8192..=1 << 20).map(|v| v as usize))]
    pub max_header_bytes: usize,
    /// Largest single HTTP header (name and value) in bytes; larger: 431.
    #[arg(long, env = "WSS_MAX_HEADER_LINE_BYTES", default_value_t = 8 * 1024,
          value_parser = clap::value_parser!(u64).range(256..=1 << 20).map(|v| v as usize))]
    pub max_header_line_bytes: usize,
    /// Seconds a client has to send a complete HTTP request head before its
    /// connection is closed (slowloris protection; also idle keep-alive connections).
    #[arg(long, env = "WSS_HEADER_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub header_timeout: Duration,
    /// Origins (globs, comma-separated: `https://*.example.com`, or `*`) whose pages may
    /// open sockets; default: the server's own origin only. Requests without an
    /// `Origin` header (non-browser clients) always pass.
    #[arg(long, env = "WSS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Sockets this node holds at most; more are refused with 503.
    #[arg(long, env = "WSS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Sockets one client address may hold on this node; more are refused with 429.
    #[arg(long, env = "WSS_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Sockets one authenticated user may hold on this node; more are refused with 429.
    #[arg(long, env = "WSS_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Proxies (addresses or blocks, comma-separated) whose `X-Forwarded-For` gives the
    /// client's address for the per-address limit.
    #[arg(long, env = "WSS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::transport::edge::Cidr>,
    /// TLS certificate chain (PEM): serve `wss://` without a proxy. Reloaded on SIGHUP.
    #[arg(long, env = "WSS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "WSS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a closed connection's session stays resumable (`$resume`).
    #[arg(long, env = "WSS_RESUME_TTL", default_value = "120", value_parser = parse_secs)]
    pub resume_ttl: Duration,
    /// Most deliveries a resume replays per room; a room further behind is reported
    /// `recovered: false`.
    #[arg(long, env = "WSS_RESUME_MAX_REPLAY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|v| v as usize))]
    pub resume_max_replay: usize,
    /// Seconds between server pings.
    #[arg(long, env = "WSS_PING_INTERVAL", default_value = "20", value_parser = parse_secs)]
    pub ping_interval: Duration,
    /// Seconds without any frame from a client before it is closed.
    #[arg(long, env = "WSS_IDLE_TIMEOUT", default_value = "60", value_parser = parse_secs)]
    pub idle_timeout: Duration,
    /// Seconds a graceful shutdown waits for connections to drain.
    #[arg(long, env = "WSS_SHUTDOWN_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub shutdown_timeout: Duration,
    /// Scripts running at once (each on a blocking thread).
    #[arg(long, env = "WSS_SCRIPT_CONCURRENCY", default_value_t = 64)]
    pub script_concurrency: usize,
    /// Rhai operations one script run may take.
    #[arg(long, env = "WSS_SCRIPT_MAX_OPERATIONS", default_value_t = 100_000)]
    pub script_max_operations: u64,
    /// Wall-clock budget of one script run, in milliseconds.
    #[arg(long, env = "WSS_SCRIPT_TIMEOUT_MS", default_value_t = 250)]
    pub script_timeout_ms: u64,
    /// Nested function calls one script run may make.
    #[arg(long, env = "WSS_SCRIPT_MAX_CALL_DEPTH", default_value_t = 32)]
    pub script_max_call_depth: usize,
    /// Longest string a script may build, in bytes.
    #[arg(long, env = "WSS_SCRIPT_MAX_STRING_BYTES", default_value_t = 256 * 1024)]
    pub script_max_string_bytes: usize,
    /// Most elements of one array or map a script may build.
    #[arg(long, env = "WSS_SCRIPT_MAX_COLLECTION_LEN", default_value_t = 10_000)]
    pub script_max_collection_len: usize,
    /// Reject connections without a valid token (needs a JWT key).
    #[arg(long, env = "WSS_AUTH_REQUIRED")]
    pub auth_required: bool,
    /// Demonstration only: commit without checking read versions (lost updates).
    #[arg(long, hide = true)]
    pub unsafe_skip_version_check: bool,
    /// Serve the files of this directory at `/` (a web page for the pack); `/ws`,
    /// `/healthz`, `/readyz` and `/metrics` keep their meaning.
    #[arg(long = "static", env = "WSS_STATIC", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,
    /// HS256 secret for verifying client JWTs.
    #[arg(long, env = "WSS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256 or ES256 public key (PEM file) for verifying client JWTs.
    #[arg(long, env = "WSS_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,
    /// An HTTP API key, `NAME=SECRET[:scope,scope]` (scopes: publish, read, admin;
    /// default all); repeatable. Prefer the keys file: arguments show in `ps`.
    #[arg(long = "api-key", value_name = "NAME=SECRET[:SCOPES]")]
    pub api_key: Vec<KeySpec>,
    /// A file of HTTP API keys, one `NAME=SECRET[:scopes]` per line, `#` comments.
    #[arg(long, env = "WSS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
}

/// A value of the command line or its environment that does not mean anything; clap
/// quotes these after the flag's name.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("`{0}` is not a number of seconds")]
    NotSeconds(String),
    #[error("must be greater than 0")]
    NotPositive,
    #[error("SERVER_PORT=`{0}` is not a port number")]
    ServerPort(String),
}

fn parse_secs(s: &str) -> Result<Duration, ArgError> {
    let secs: f64 = s.parse().map_err(|_| ArgError::NotSeconds(s.into()))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(ArgError::NotPositive);
    }
    Ok(Duration::from_secs_f64(secs))
}

impl ServeArgs {
    /// The listen address after the compatibility variables are applied.
    pub fn listen_addr(&self) -> Result<SocketAddr, ArgError> {
        if let Some(addr) = self.listen {
            return Ok(addr);
        }
        match std::env::var("SERVER_PORT") {
            Ok(port) => port
                .trim()
                .parse::<u16>()
                .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
                .map_err(|_| ArgError::ServerPort(port)),
            Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 3000))),
        }
    }

    /// The Redis URL after `REDIS_SERVER` (`host:port` or a URL) is applied.
    pub fn redis_url(&self) -> Option<String> {
        if let Some(url) = &self.redis {
            return Some(url.clone());
        }
        let server = std::env::var("REDIS_SERVER").ok()?;
        let server = server.trim();
        if server.is_empty() {
            None
        } else if server.contains("://") {
            Some(server.to_string())
        } else {
            Some(format!("redis://{server}"))
        }
    }
}
