//! Inputs that crashed, hung or exhausted memory under the fuzz targets (`fuzz/`, see
//! docs/development.md, "Fuzzing"), or that writing them turned up, each kept as a test with its
//! fix's clear error. Every case runs under a deadline, so a regression fails here
//! instead of hanging the suite.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use wss_engine::config::{self, Diagnostics};
use wss_engine::script::{ScriptLimits, ScriptRuntime};

/// Load the pack in `dir` on another thread; its diagnostics, or a failure after 10 s.
fn load_within_deadline(dir: &Path) -> Result<Diagnostics, String> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let runtime = ScriptRuntime::new(&ScriptLimits::default());
        let diags = match config::load(&dir, &runtime) {
            Ok(loaded) => loaded.warnings,
            Err(diags) => diags,
        };
        let _ = tx.send(diags);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the loader did not finish within 10 s".to_string())
}

fn pack(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("p.yaml"), yaml).expect("write the pack");
    dir
}

/// `script: { file: /dev/zero }` read zeros until memory ran out; `/dev/stdin` (or a
/// FIFO) blocked `check` forever. A pack reads regular files only.
#[test]
fn a_script_file_that_is_a_device_is_refused() {
    for device in ["/dev/zero", "/dev/stdin"] {
        let dir = pack(&format!(
            "events:\n  e:\n    scope: local\n    schema: {{ type: object }}\n    script: {{ file: {device} }}\n"
        ));
        let diags = load_within_deadline(dir.path()).expect(device);
        let text = diags.to_string();
        assert!(diags.has_errors(), "{device}: {text}");
        assert!(
            text.contains(&format!("script file `{device}`: not a regular file")),
            "{device}: {text}"
        );
    }
}

#[test]
fn a_schema_ref_to_a_device_or_a_fifo_is_refused() {
    let dir = pack("");
    let fifo = dir.path().join("schema.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    for target in ["/dev/zero".to_string(), fifo.display().to_string()] {
        std::fs::write(
            dir.path().join("p.yaml"),
            format!("events:\n  e:\n    scope: local\n    schema: {{ $ref: \"{target}\" }}\n"),
        )
        .unwrap();
        let diags = load_within_deadline(dir.path()).expect(&target);
        let text = diags.to_string();
        assert!(
            text.contains("cannot read schema file: not a regular file"),
            "{target}: {text}"
        );
    }
}

/// The size limit holds for files that are regular but huge.
#[test]
fn a_script_file_over_the_limit_is_refused() {
    let dir = pack(
        "events:\n  e:\n    scope: local\n    schema: { type: object }\n    script: { file: big.rhai }\n",
    );
    let big = std::fs::File::create(dir.path().join("big.rhai")).unwrap();
    big.set_len(config::MAX_FILE_BYTES + 1).unwrap();
    let diags = load_within_deadline(dir.path()).unwrap();
    assert!(
        diags.to_string().contains("larger than the limit of 8 MiB"),
        "{diags}"
    );
}

/// An engine on the memory backend, once dropped, frees its router and backend. The
/// router held the store (for history reads) and the store the router (its sink for
/// local deliveries): each engine built and dropped leaked both with every room and
/// value in them. `ws_frames`, which builds one per input, grew past 2 GiB on it;
/// `wss-engine test` builds one per case.
#[test]
fn a_dropped_engine_frees_its_router_and_backend() {
    use std::sync::{Arc, Weak};
    use wss_engine::backend::StateStore;
    use wss_engine::delivery::{ConnLink, Router};
    use wss_engine::engine::{Conn, Engine};

    let dir = pack(
        "rooms:\n  \"*\": { history: { size: 10, ttl: 60 } }\nevents:\n  say:\n    scope: local\n    schema: { type: object }\n    to: \"room:{{data.room}}\"\n    script: |\n      join(data.room);\n      state.incr(\"n\", 1);\n",
    );
    let runtime = Arc::new(ScriptRuntime::new(&ScriptLimits::default()));
    let pack = config::load(dir.path(), &runtime)
        .expect("the pack loads")
        .pack;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (router_weak, backend_weak): (Weak<Router>, Weak<dyn StateStore>) = rt.block_on(async {
        let engine = Engine::in_memory("n", Arc::new(pack), runtime.clone(), None);
        let (router, backend) = (engine.router().clone(), engine.backend().state.clone());
        let mut conn = Conn::new(engine.next_conn_id(), None, serde_json::json!({}));
        engine.connect(&mut conn, ConnLink::new(16)).await.unwrap();
        for _ in 0..3 {
            engine
                .handle(&mut conn, "say", serde_json::json!({"room": "lobby"}))
                .await
                .unwrap();
        }
        engine.disconnect(&mut conn).await;
        (Arc::downgrade(&router), Arc::downgrade(&backend))
    });
    drop(rt);
    assert!(
        router_weak.upgrade().is_none(),
        "the router outlived its engine"
    );
    assert!(
        backend_weak.upgrade().is_none(),
        "the backend outlived its engine"
    );
}
