//! Group commit: runs queued on the same node-local key locks execute in one transaction
//! and commit once; a script that fails inside a batch is answered on its own and leaves
//! no trace, while the others still commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};
use wss_engine::backend::memory::MemoryBackend;
use wss_engine::backend::{Backend, BackendError, Commit, CommitOutcome, StateStore, Versioned};
use wss_engine::config;
use wss_engine::delivery::{ConnId, ConnLink, Router, Sink};
use wss_engine::engine::{Conn, Engine, EngineParts, SessionConfig};
use wss_engine::script::{ScriptLimits, ScriptRuntime};

/// The memory backend with slow commits (so runs pile up behind the lock) that counts
/// how many commits it was asked for.
struct SlowCommits {
    inner: Arc<MemoryBackend>,
    commits: AtomicUsize,
}

impl StateStore for SlowCommits {
    fn read(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Vec<Versioned>, BackendError>> {
        self.inner.read(keys)
    }
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<CommitOutcome, BackendError>> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.inner.commit(commit).await
        }
        .boxed()
    }
}

const RUNS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_runs_share_one_commit_and_failures_stay_their_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        r#"events:
  bump:
    scope: local
    schema: { type: object }
    keys: ["n"]
    script: |
      let n = state.get("n") ?? 0;
      state.set("n", n + 1);
      if data.fail == true { throw "boom"; }
      reply(n + 1);
"#,
    )
    .unwrap();
    let runtime = Arc::new(ScriptRuntime::new(&ScriptLimits::default()));
    let pack = config::load(dir.path(), &runtime).unwrap().pack;
    let router = Router::new();
    let memory = Arc::new(MemoryBackend::new(router.clone() as Arc<dyn Sink>));
    let store = Arc::new(SlowCommits {
        inner: memory.clone(),
        commits: AtomicUsize::new(0),
    });
    let engine = Engine::new(EngineParts {
        pack: Arc::new(pack),
        node_id: Arc::from("n1"),
        scripts: runtime,
        // Only commits are slowed and counted; everything else is the memory backend's.
        backend: Backend {
            state: store.clone(),
            ..Backend::of(memory.clone())
        },
        router: router.clone(),
        sink: router as Arc<dyn Sink>,
        script_concurrency: RUNS,
        sessions: SessionConfig::default(),
    });

    let mut tasks = Vec::new();
    for i in 0..RUNS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let id = ConnId::from(format!("n1-{i}"));
            let link = ConnLink::new(16);
            engine.router().register(
                id.clone(),
                None,
                wss_engine::ids::SessionId::from("s"),
                link,
            );
            let mut conn = Conn::new(id, None, json!({}));
            engine
                .handle(&mut conn, "bump", json!({ "fail": i % 2 == 1 }))
                .await
        }));
    }
    let mut replies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(reply) => replies.push(reply.unwrap_or(Value::Null).as_i64().unwrap()),
            Err(f) => {
                assert_eq!(f.code.as_str(), "script_error", "{f:?}");
                failures += 1;
            }
        }
    }
    replies.sort_unstable();
    let expected: Vec<i64> = (1..=(RUNS / 2) as i64).collect();
    assert_eq!(failures, RUNS / 2);
    assert_eq!(
        replies, expected,
        "every successful run saw the ones before it"
    );
    let stored = memory.read(vec!["n".into()]).await.unwrap().remove(0).value;
    assert_eq!(
        stored.map(|v| v.to_json()),
        Some(json!(RUNS / 2)),
        "failed runs must not have written"
    );
    let commits = store.commits.load(Ordering::SeqCst);
    assert!(
        commits <= RUNS / 4,
        "{commits} commits for {} successful runs: runs queued on the lock were not batched",
        RUNS / 2
    );
}
