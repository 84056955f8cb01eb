//! Read-modify-write under concurrency on the embedded backend, through the engine
//! itself (no sockets): the version check must make every acknowledged increment count,
//! and turning it off must lose some, which shows the test can see the bug.

use std::sync::Arc;

use serde_json::{json, Value};
use wss_engine::backend::memory::MemoryBackend;
use wss_engine::backend::{Backend, StateStore, VersionCheck};
use wss_engine::config;
use wss_engine::delivery::{ConnId, ConnLink, Router, Sink};
use wss_engine::engine::{Conn, Engine, EngineParts, SessionConfig};
use wss_engine::script::{ScriptLimits, ScriptRuntime};

const TASKS: usize = 16;
const INCREMENTS: usize = 200;

fn build(version_check: VersionCheck) -> (Arc<Engine>, Arc<MemoryBackend>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        r#"events:
  bump:
    scope: local
    schema: { type: object }
    script: |
      let n = state.get("n");
      if n == () { n = 0; }
      state.set("n", n + 1);
      reply(n + 1);
"#,
    )
    .unwrap();
    let runtime = Arc::new(ScriptRuntime::new(&ScriptLimits::default()));
    let pack = config::load(dir.path(), &runtime).unwrap().pack;
    let router = Router::new();
    let backend = Arc::new(MemoryBackend::with_version_check(
        router.clone() as Arc<dyn Sink>,
        version_check,
    ));
    let engine = Engine::new(EngineParts {
        pack: Arc::new(pack),
        node_id: Arc::from("n1"),
        scripts: runtime,
        backend: Backend::of(backend.clone()),
        router: router.clone(),
        sink: router as Arc<dyn Sink>,
        script_concurrency: TASKS,
        sessions: SessionConfig::default(),
    });
    (engine, backend)
}

/// Run the workload; returns (acknowledged increments, final counter).
async fn hammer(engine: Arc<Engine>, backend: Arc<MemoryBackend>) -> (usize, i64) {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let id = ConnId::from(format!("n1-{t}"));
            let link = ConnLink::new(16);
            engine.router().register(
                id.clone(),
                None,
                wss_engine::ids::SessionId::from("s"),
                link,
            );
            let mut conn = Conn::new(id, None, json!({}));
            let mut acked = 0;
            for _ in 0..INCREMENTS {
                if engine.handle(&mut conn, "bump", json!({})).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    let value = backend
        .read(vec!["n".into()])
        .await
        .unwrap()
        .remove(0)
        .value;
    let total = value
        .map(|v| v.to_json())
        .unwrap_or(Value::Null)
        .as_i64()
        .unwrap_or(0);
    (acked, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_check_keeps_every_acknowledged_increment_and_its_absence_loses_some() {
    let (engine, backend) = build(VersionCheck::Enforce);
    let (acked, total) = hammer(engine, backend).await;
    assert_eq!(
        acked,
        TASKS * INCREMENTS,
        "every increment should commit (with retries)"
    );
    assert_eq!(total as usize, acked, "committed increments were lost");

    let mut lost_somewhere = false;
    // Races are probabilistic; a few bounded rounds make a false pass very unlikely.
    for _ in 0..5 {
        let (engine, backend) = build(VersionCheck::Skip);
        let (acked, total) = hammer(engine, backend).await;
        if (total as usize) < acked {
            lost_somewhere = true;
            break;
        }
    }
    assert!(
        lost_somewhere,
        "without the version check concurrent increments should be lost"
    );
}
