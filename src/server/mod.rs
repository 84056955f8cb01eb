//! The composition root: from a [`ServerConfig`], picks the backend, builds the engine,
//! serves until shutdown, reloading the pack on what [`ReloadTriggers`] names
//! ([`reload`]). It knows nothing of the command line: `crate::commands` fills the
//! config from the arguments, and owns logging, the runtime and the process's signals.

pub mod reload;

pub use reload::ReloadTriggers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{Durability, RedisBackend};
use crate::backend::{Backend, Idempotency, VersionCheck};
use crate::cluster::{Fleet, NodeInfo, NodeRegistry};
use crate::config::Pack;
use crate::delivery::{Router, Sink, WriteWindows};
use crate::engine::{Engine, EngineParts, SessionConfig};
use crate::script::{ScriptLimits, ScriptRuntime};
use crate::transport::api::keys::ApiKeys;
use crate::transport::api::ApiState;
use crate::transport::edge::EdgeConfig;
use crate::transport::listener::{HttpLimits, Tls, TlsFiles};
use crate::transport::static_files::StaticFiles;
use crate::transport::{self, auth::Auth, AppState, Limits};

/// The process-wide metrics recorder; installed once even when tests start many servers.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A short random id for this node: unique enough to tell replicas apart in logs.
pub fn new_node_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Everything a server needs besides its listener and its shutdown signal.
pub struct ServerConfig {
    pub pack: Pack,
    /// `None`: the embedded memory backend (one node).
    pub redis: Option<RedisConfig>,
    pub limits: Limits,
    /// Bounds on HTTP request heads (size, time), before any handler runs.
    pub http: HttpLimits,
    pub script_limits: ScriptLimits,
    pub script_concurrency: usize,
    pub auth: Auth,
    /// Keys of the HTTP API; none: `/api` and `/admin/` answer 404.
    pub api_keys: ApiKeys,
    pub shutdown_timeout: Duration,
    /// `Skip` only for the lost-update demonstration (`--unsafe-skip-version-check`).
    pub version_check: VersionCheck,
    pub sessions: SessionConfig,
    /// What reloads the pack; nothing by default.
    pub reload: ReloadTriggers,
    /// Origins and connection limits at the upgrade.
    pub edge: EdgeConfig,
    /// Serve TLS (`wss://`) from these files.
    pub tls: Option<TlsFiles>,
    /// `--static DIR`: a web page served at `/`.
    pub static_files: Option<StaticFiles>,
}

impl ServerConfig {
    pub fn new(pack: Pack) -> Self {
        Self {
            pack,
            redis: None,
            limits: Limits::default(),
            http: HttpLimits::default(),
            script_limits: ScriptLimits::default(),
            script_concurrency: 64,
            auth: Auth::disabled(),
            api_keys: ApiKeys::default(),
            shutdown_timeout: Duration::from_secs(10),
            version_check: VersionCheck::Enforce,
            sessions: SessionConfig::default(),
            reload: ReloadTriggers::default(),
            edge: EdgeConfig::default(),
            tls: None,
            static_files: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    /// Replicas an acknowledged write must have reached (`WAIT`); 0 for none.
    pub wait_replicas: u32,
    /// Heartbeat TTL: a node silent this long is dead and cleaned up after.
    pub node_ttl: Duration,
}

/// Serve on an already-bound listener until `shutdown` resolves, then close every socket
/// with 1001 and wait (bounded) for them to drain.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    let node_id: Arc<str> = Arc::from(new_node_id());
    let router = Router::new();
    let addr = listener.local_addr()?;
    let pack = Arc::new(config.pack);
    let (backend, idempotency, redis): (Backend, Arc<dyn Idempotency>, _) = match &config.redis {
        None => {
            let backend = Arc::new(MemoryBackend::with_version_check(
                router.clone() as Arc<dyn Sink>,
                config.version_check,
            ));
            tracing::info!(node = %node_id, "embedded memory backend: single node, state is lost on exit (use --redis for a cluster)");
            (Backend::of(backend.clone()), backend, None)
        }
        Some(redis) => {
            let backend = RedisBackend::connect_with(
                &redis.url,
                &redis.prefix,
                node_id.clone(),
                router.clone() as Arc<dyn Sink>,
                config.version_check,
                Durability {
                    wait_replicas: redis.wait_replicas,
                },
            )
            .await
            .with_context(|| format!("connecting to Redis at {}", redis.url))?;
            tracing::info!(node = %node_id, prefix = %redis.prefix, "Redis backend: state, rooms and events shared with every node");
            (
                Backend::of(backend.clone()),
                backend.clone(),
                Some((backend, redis.node_ttl)),
            )
        }
    };
    let engine = Engine::new(EngineParts {
        pack: pack.clone(),
        node_id: node_id.clone(),
        scripts: Arc::new(ScriptRuntime::new(&config.script_limits)),
        backend: backend.clone(),
        router: router.clone(),
        sink: router.clone() as Arc<dyn Sink>,
        script_concurrency: config.script_concurrency,
        sessions: config.sessions,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = redis.as_ref().map(|(backend, ttl)| {
        let info = NodeInfo::new(&node_id, addr.to_string(), &pack.fingerprint);
        let task = NodeRegistry::new(backend.clone(), engine.clone(), info, *ttl);
        tokio::spawn(task.run(shutdown_rx.clone()))
    });
    reload::record_pack(None, &pack.fingerprint);
    if config.reload.any() {
        tokio::spawn(reload::run(
            engine.clone(),
            pack.root.clone(),
            tls.clone().filter(|_| config.reload.sighup),
            config.reload,
            shutdown_rx.clone(),
        ));
    }
    let ready_bus = backend.bus.clone();
    let ready: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || ready_bus.is_ready());
    let windows = WriteWindows::start(config.limits.write_coalesce);
    let fleet = Fleet::new(
        redis.as_ref().map(|(backend, _)| backend.clone()),
        engine.clone(),
        NodeInfo::new(&node_id, addr.to_string(), &pack.fingerprint),
        ready.clone(),
    );
    if !config.api_keys.is_empty() {
        tracing::info!(
            keys = config.api_keys.len(),
            "HTTP API on: /api, dashboard at /admin/"
        );
    }
    let api = ApiState::new(
        engine.clone(),
        Arc::new(config.api_keys),
        Arc::new(fleet),
        idempotency,
        config.limits.max_frame_bytes,
    );
    let state = AppState {
        engine,
        limits: config.limits,
        auth: Arc::new(config.auth),
        shutdown: shutdown_rx,
        ready,
        metrics: metrics_handle(),
        windows,
        gate: transport::edge::Gate::new(config.edge),
        static_files: config.static_files.map(Arc::new),
        api,
    };
    if tls.is_some() {
        tracing::info!(%addr, node = %node_id, "listening: wss://{addr}/ws");
    } else {
        tracing::info!(%addr, node = %node_id, "listening: ws://{addr}/ws");
    }

    let app = transport::router(state);
    let server = tokio::spawn(transport::listener::serve(
        listener,
        app,
        config.http,
        tls,
        shutdown_tx.subscribe(),
    ));

    shutdown.await;
    tracing::info!("shutting down: closing connections with 1001");
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let _ = tokio::time::timeout_at(deadline, router.until_empty()).await;
    let left = router.connection_count();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown deadline reached with connections still open"
        );
    }
    if let (Some((backend, _)), Some(task)) = (&redis, registry) {
        let _ = task.await;
        NodeRegistry::deregister(backend).await;
    }
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), server).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => return Err(e).context("HTTP accept loop failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Connections the kernel may queue for `accept`. tokio's `TcpListener::bind` asks for
/// 1,024: when a node dies its clients come back to the survivors at once (W5 in
/// bench/run: ~10,000 within 100 ms), a full queue drops their SYNs, and each client's
/// kernel resends only after 1 s, then 3 s, so most of the reconnect time was spent
/// waiting for retransmits while the node had capacity. The kernel caps the value at
/// `net.core.somaxconn` (4,096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 65_535;

/// Bind the listener with [`LISTEN_BACKLOG`].
pub fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's and tokio's own `bind` do on Unix: a restarted node takes its port back
    // while the old connections are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(LISTEN_BACKLOG)
}
