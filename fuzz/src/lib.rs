//! What the fuzz targets share: an engine on the memory backend serving
//! `packs/engine/`, connections that speak to it as a socket's task does (through
//! `transport::ws::handle_text`), the HTTP API's router, and the invariants every
//! answer must hold.
//!
//! Each input gets a fresh engine and backend (the pack and the script runtime are
//! loaded once), so a crash reproduces from its input alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use wss_engine::backend::memory::MemoryBackend;
use wss_engine::cluster::{Fleet, NodeInfo};
use wss_engine::config::{self, Pack};
use wss_engine::delivery::{ConnLink, Router, Sink};
use wss_engine::engine::{Conn, Engine};
use wss_engine::script::{ScriptLimits, ScriptRuntime};
use wss_engine::transport::api::keys::ApiKeys;
use wss_engine::transport::api::{self, ApiState};
use wss_engine::transport::ws::handle_text;

/// Frames (and API bodies) above this many bytes are `too_large`: small, so inputs of
/// libFuzzer's default length (4 KiB) reach that branch as well as the parser.
pub const MAX_FRAME_BYTES: usize = 2048;

/// The secret of the one API key (`fuzz`, every scope).
pub const API_SECRET: &str = "fuzz-secret-0123456789abcdef";

/// One runtime for the whole fuzzing process: a worker for the engine's tasks and a
/// couple of blocking threads for scripts, as the server has (only smaller).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// A directory of this crate (`packs/…`).
pub fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn scripts() -> &'static Arc<ScriptRuntime> {
    static S: OnceLock<Arc<ScriptRuntime>> = OnceLock::new();
    S.get_or_init(|| Arc::new(ScriptRuntime::new(&ScriptLimits::default())))
}

/// `packs/engine`, loaded once.
pub fn engine_pack() -> Arc<Pack> {
    static P: OnceLock<Arc<Pack>> = OnceLock::new();
    P.get_or_init(|| {
        let dir = here("packs/engine");
        match config::load(&dir, scripts()) {
            Ok(loaded) => Arc::new(loaded.pack),
            Err(diags) => panic!("the fuzz pack does not load:\n{diags}"),
        }
    })
    .clone()
}

/// A fresh engine on a fresh memory backend.
pub struct World {
    pub engine: Arc<Engine>,
    pub router: Arc<Router>,
}

/// A connection as the engine sees it, and the queue its frames go to.
pub struct Client {
    pub conn: Conn,
    pub link: Arc<ConnLink>,
}

impl World {
    pub fn new() -> Self {
        let engine = Engine::in_memory("fz", engine_pack(), scripts().clone(), None);
        let router = engine.router().clone();
        Self { engine, router }
    }

    /// Connect as a socket does after the upgrade (router, registry, `$connect`).
    pub async fn connect(&self, user: Option<&str>) -> Client {
        let id = self.engine.next_conn_id();
        let mut conn = Conn::new(id, user.map(Arc::from), Value::Object(Default::default()));
        let link = ConnLink::new(4096);
        // `$connect` only counts; it cannot fail on the memory backend.
        let _ = self.engine.connect(&mut conn, link.clone()).await;
        Client { conn, link }
    }

    /// One text frame, handled as the socket's task handles it; returns every frame
    /// queued for the client since the last call, each checked.
    pub async fn send(&self, client: &mut Client, text: &str) -> Vec<Value> {
        handle_text(
            &self.engine,
            &mut client.conn,
            &client.link,
            text,
            MAX_FRAME_BYTES,
        )
        .await;
        drain(&client.link)
    }

    pub async fn close(&self, mut client: Client) {
        self.engine.disconnect(&mut client.conn).await;
    }

    /// The HTTP API's router for this engine, with the one key `fuzz` (every scope).
    pub fn api(&self) -> axum::Router {
        let keys = ApiKeys::load(
            &[format!("fuzz={API_SECRET}").parse().expect("a key spec")],
            None,
        )
        .expect("the fuzz API key");
        let pack = self.engine.pack();
        let fleet = Fleet::new(
            None,
            self.engine.clone(),
            NodeInfo::new("fz", "127.0.0.1:0".into(), &pack.fingerprint),
            Arc::new(|| true),
        );
        api::router(ApiState::new(
            self.engine.clone(),
            Arc::new(keys),
            Arc::new(fleet),
            // Idempotency keys are the API's own: a store of their own serves them.
            Arc::new(MemoryBackend::new(self.router.clone() as Arc<dyn Sink>)),
            MAX_FRAME_BYTES,
        ))
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Every frame queued on `link`, each checked with [`check_server_frame`].
pub fn drain(link: &ConnLink) -> Vec<Value> {
    link.take_all()
        .iter()
        .map(|frame| check_server_frame(frame.as_str()))
        .collect()
}

/// What the server sends is a JSON object: a delivery or system event (`event` a
/// string, with `data`) or an ack (`ack` a string or number, `ok` a boolean, and an
/// `error` with a `code` and a `message` when not ok).
pub fn check_server_frame(text: &str) -> Value {
    let frame: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("the server sent a frame that is not JSON ({e}): {text}"));
    let obj = frame
        .as_object()
        .unwrap_or_else(|| panic!("the server sent a frame that is not an object: {text}"));
    if let Some(ack) = obj.get("ack") {
        assert!(ack.is_string() || ack.is_number(), "bad ack id: {text}");
        match obj.get("ok") {
            Some(Value::Bool(true)) => assert!(obj.contains_key("data"), "{text}"),
            Some(Value::Bool(false)) => check_error(&obj["error"], text),
            _ => panic!("an ack without `ok`: {text}"),
        }
    } else {
        assert!(obj.get("event").is_some_and(Value::is_string), "{text}");
        if obj["event"] == "$error" {
            check_error(&obj["data"], text);
        }
    }
    frame
}

fn check_error(error: &Value, text: &str) {
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {text}"));
    assert!(!code.is_empty(), "empty error code: {text}");
    assert!(error["message"].is_string(), "no message: {text}");
    if let Some(details) = error.get("details") {
        assert!(details.is_array(), "details not a list: {text}");
    }
}

/// A scratch pack directory for one input file, holding `files` copied from
/// `packs/engine` (so an input's `$ref`s and script files resolve), and the script
/// runtime loads use. Made once per process (each target is a process of its own).
pub struct PackDir {
    _tmp: tempfile::TempDir,
    pub path: PathBuf,
    pub runtime: ScriptRuntime,
}

pub fn pack_dir(files: &[&str]) -> &'static PackDir {
    static DIR: OnceLock<PackDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let path = tmp.path().to_path_buf();
        for file in files {
            let to = path.join(file);
            std::fs::create_dir_all(to.parent().expect("a file in a folder")).expect("its folder");
            std::fs::copy(here("packs/engine").join(file), to).expect("copy from packs/engine");
        }
        PackDir {
            _tmp: tmp,
            path,
            runtime: ScriptRuntime::new(&ScriptLimits::default()),
        }
    })
}
