//! A server in this process on `127.0.0.1:0`, started through `server::run` with an
//! inline pack, stopped through its shutdown signal.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use wss_engine::script::{ScriptLimits, ScriptRuntime};
use wss_engine::server::{self, ServerConfig};

use super::client::Client;
use super::write_pack;

/// Load a pack directory the way the server does, failing the test with every
/// diagnostic if the pack has errors.
pub fn load_pack(dir: &Path) -> wss_engine::config::Pack {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    match wss_engine::config::load(dir, &runtime) {
        Ok(loaded) => loaded.pack,
        Err(diags) => {
            let all: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            panic!("test pack does not load:\n{}", all.join("\n"));
        }
    }
}

/// A server running in this process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The inline pack's directory, removed with the server (none for [`start_dir`]).
    _pack: Option<tempfile::TempDir>,
}

/// Start a server for an inline pack with default limits.
pub async fn start(yaml: &str) -> TestServer {
    start_with(yaml, |_| {}).await
}

/// Start a server for an inline pack, letting the test adjust limits, auth, etc.
pub async fn start_with(yaml: &str, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = write_pack(yaml);
    let mut server = start_dir(dir.path(), adjust).await;
    server._pack = Some(dir);
    server
}

/// Start a server for a pack directory that exists (`events/`, an example, a pack of
/// several files), letting the test adjust limits, auth, etc.
pub async fn start_dir(dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    if std::env::var_os("WSS_TEST_LOG").is_some() {
        wss_engine::commands::init_tracing(wss_engine::cli::LogFormat::Text);
    }
    let mut config = ServerConfig::new(load_pack(dir));
    // Tests that do not shut down explicitly must not keep the runtime busy for long.
    config.shutdown_timeout = Duration::from_secs(2);
    adjust(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("listener address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task: Some(task),
        _pack: None,
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Start the graceful shutdown; returns once `server::run` returned (bounded).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(joined) => joined?,
            Err(_) => anyhow::bail!("server did not stop within 10 s of shutdown"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
