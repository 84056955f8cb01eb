//! `wss-engine serve`: the process around a server. Logging and the async runtime are
//! set up here, the arguments become a [`ServerConfig`], and signals end it; the server
//! itself is composed in `crate::server`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::backend::VersionCheck;
use crate::cli::{LogFormat, ServeArgs};
use crate::config;
use crate::engine::SessionConfig;
use crate::script::{ScriptLimits, ScriptRuntime};
use crate::server::{self, RedisConfig, ReloadTriggers, ServerConfig};
use crate::transport::api::keys::ApiKeys;
use crate::transport::auth::Auth;
use crate::transport::edge::EdgeConfig;
use crate::transport::listener::{HttpLimits, TlsFiles};
use crate::transport::static_files::StaticFiles;
use crate::transport::Limits;

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(usize::from(workers));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tracing::info!(
        workers = runtime.metrics().num_workers(),
        "async runtime started"
    );
    runtime.block_on(run_from_args(args))?;
    Ok(ExitCode::SUCCESS)
}

/// Log to stderr, filtered by `WSS_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WSS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Turn the arguments into a server: load the pack, read the keys and files they name,
/// bind, and serve until SIGTERM or ctrl-c.
async fn run_from_args(args: ServeArgs) -> anyhow::Result<()> {
    let script_limits = ScriptLimits {
        max_operations: args.script_max_operations,
        timeout: Duration::from_millis(args.script_timeout_ms),
        max_call_levels: args.script_max_call_depth,
        max_string_size: args.script_max_string_bytes,
        max_array_size: args.script_max_collection_len,
        max_map_size: args.script_max_collection_len,
        ..ScriptLimits::default()
    };
    let runtime = ScriptRuntime::new(&script_limits);
    let pack = match config::load(&args.config, &runtime) {
        Ok(config::Loaded { pack, warnings }) => {
            for w in warnings.iter() {
                tracing::warn!("{w}");
            }
            pack
        }
        Err(diags) => {
            for d in diags.iter() {
                tracing::error!("{d}");
            }
            anyhow::bail!(
                "pack {} has errors: run `wss-engine check {}`",
                args.config.display(),
                args.config.display()
            );
        }
    };
    tracing::info!(pack = %args.config.display(), events = pack.events.len(), fingerprint = %pack.fingerprint, "pack loaded");
    if args.auth_required && args.jwt_secret.is_none() && args.jwt_public_key.is_none() {
        anyhow::bail!("--auth-required needs --jwt-secret or --jwt-public-key to verify tokens");
    }
    let mut auth = Auth::new(args.jwt_secret.as_deref(), args.auth_required);
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        auth = auth.with_public_key(&pem)?;
    }
    let api_keys = ApiKeys::load(&args.api_key, args.api_keys_file.as_deref())?;
    let version_check = if args.unsafe_skip_version_check {
        tracing::warn!(
            "--unsafe-skip-version-check: commits no longer detect conflicts; updates WILL be lost"
        );
        VersionCheck::Skip
    } else {
        VersionCheck::Enforce
    };
    let static_files = match &args.static_dir {
        Some(dir) => {
            let files = StaticFiles::new(dir)
                .with_context(|| format!("--static {}: not a readable directory", dir.display()))?;
            tracing::info!(dir = %files.root().display(), "serving static files at /");
            Some(files)
        }
        None => None,
    };
    let listen = args.listen_addr()?;
    let listener = server::bind(listen).with_context(|| format!("binding {listen}"))?;
    let config = ServerConfig {
        pack,
        redis: args.redis_url().map(|url| RedisConfig {
            url,
            prefix: args.redis_prefix.clone(),
            wait_replicas: args.redis_wait_replicas,
            node_ttl: args.node_ttl,
        }),
        limits: Limits {
            max_frame_bytes: args.max_frame_bytes,
            outbound_queue: args.outbound_queue,
            write_coalesce: Duration::from_millis(args.write_coalesce_ms),
            ping_interval: args.ping_interval,
            idle_timeout: args.idle_timeout,
        },
        http: HttpLimits {
            max_head_bytes: args.max_header_bytes,
            max_header_line_bytes: args.max_header_line_bytes,
            head_timeout: args.header_timeout,
        },
        script_limits,
        script_concurrency: args.script_concurrency,
        auth,
        api_keys,
        shutdown_timeout: args.shutdown_timeout,
        version_check,
        sessions: SessionConfig {
            resume_ttl: args.resume_ttl,
            max_replay: args.resume_max_replay,
        },
        reload: ReloadTriggers {
            sighup: true,
            file_changes: args.watch,
        },
        edge: EdgeConfig {
            allowed_origins: args.allowed_origins.clone(),
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            max_connections_per_user: args.max_connections_per_user,
            trusted_proxies: args.trusted_proxies.clone(),
        },
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        },
        static_files,
    };
    server::run(listener, config, shutdown_signal()).await
}

/// SIGTERM (orchestrators) or ctrl-c (humans).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
