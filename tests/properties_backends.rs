//! Property: a pack behaves the same on the memory backend and on Redis.
//!
//! Each case is a random script of state operations (get/set/del/incr, hashes, sets,
//! lists, on a few colliding keys, so types clash and lists go empty), cut into
//! messages; each message runs as one event (one transaction) through the engine on
//! both backends, and every answer must be equal: the script's reply (every
//! operation's result), or the same error code and message. A last message reads every
//! key back. Redis is our own `redis-server` on a free port; every case uses a fresh key
//! prefix.
//!
//! Cases: 24 by default (a few seconds); `PROPTEST_CASES=N` for a long run.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use wss_engine::backend::redis::RedisBackend;
use wss_engine::backend::{Backend, VersionCheck};
use wss_engine::config::{self, Pack};
use wss_engine::delivery::{ConnLink, Router, Sink};
use wss_engine::engine::{Conn, Engine, EngineParts, SessionConfig};
use wss_engine::script::{ScriptLimits, ScriptRuntime};

use support::cluster::{unique_prefix, RedisServer};

const PACK: &str = r#"
events:
  ops:
    scope: cluster
    schema: { type: object }
    script: |
      let out = [];
      for o in data.ops {
          let k = o.k;
          let r = switch o.op {
              "get" => state.get(k),
              "set" => state.set(k, o.v),
              "setex" => state.set(k, o.v, o.ttl),
              "del" => state.del(k),
              "incr" => state.incr(k, o.by),
              "hget" => state.hget(k, o.f),
              "hset" => state.hset(k, o.f, o.v),
              "hdel" => state.hdel(k, o.f),
              "hgetall" => state.hgetall(k),
              "sadd" => state.sadd(k, o.v),
              "srem" => state.srem(k, o.v),
              "smembers" => state.smembers(k),
              "scard" => state.scard(k),
              "lpush" => state.lpush(k, o.v),
              "rpush" => state.rpush(k, o.v),
              "lrange" => state.lrange(k, o.start, o.stop),
              "ltrim" => state.ltrim(k, o.start, o.stop),
              _ => throw "unknown op " + o.op
          };
          out.push(r);
      }
      reply(out);
"#;

const KEYS: [&str; 3] = ["a", "b", "{t}c"];

/// Values as scripts store them: small, colliding, of every JSON kind.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(1i64 << 53)].prop_map(Value::from),
        prop_oneof![Just(0.5), Just(-0.0), Just(1e300), Just(0.1)].prop_map(Value::from),
        "[ab\"é]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[ab]{1,2}", inner), 0..3)
                .prop_map(|e| Value::Object(e.into_iter().collect())),
        ]
    })
}

fn op() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(&KEYS[..]);
    let field = prop::sample::select(&["f", "g", "é"][..]);
    let index = prop_oneof![-4i64..5, Just(i64::MIN), Just(i64::MAX)];
    prop_oneof![
        key.clone().prop_map(|k| json!({"op": "get", "k": k})),
        (key.clone(), value()).prop_map(|(k, v)| json!({"op": "set", "k": k, "v": v})),
        (key.clone(), value(), 100i64..10_000)
            .prop_map(|(k, v, ttl)| json!({"op": "setex", "k": k, "v": v, "ttl": ttl})),
        key.clone().prop_map(|k| json!({"op": "del", "k": k})),
        (
            key.clone(),
            prop_oneof![
                (-3i64..4).prop_map(Value::from),
                Just(Value::from(i64::MAX)),
                Just(Value::from(0.25))
            ]
        )
            .prop_map(|(k, by)| json!({"op": "incr", "k": k, "by": by})),
        (key.clone(), field.clone()).prop_map(|(k, f)| json!({"op": "hget", "k": k, "f": f})),
        (key.clone(), field.clone(), value())
            .prop_map(|(k, f, v)| json!({"op": "hset", "k": k, "f": f, "v": v})),
        (key.clone(), field).prop_map(|(k, f)| json!({"op": "hdel", "k": k, "f": f})),
        key.clone().prop_map(|k| json!({"op": "hgetall", "k": k})),
        (key.clone(), value()).prop_map(|(k, v)| json!({"op": "sadd", "k": k, "v": v})),
        (key.clone(), value()).prop_map(|(k, v)| json!({"op": "srem", "k": k, "v": v})),
        key.clone().prop_map(|k| json!({"op": "smembers", "k": k})),
        key.clone().prop_map(|k| json!({"op": "scard", "k": k})),
        (key.clone(), value()).prop_map(|(k, v)| json!({"op": "lpush", "k": k, "v": v})),
        (key.clone(), value()).prop_map(|(k, v)| json!({"op": "rpush", "k": k, "v": v})),
        (key.clone(), index.clone(), index.clone())
            .prop_map(|(k, a, b)| json!({"op": "lrange", "k": k, "start": a, "stop": b})),
        (key, index.clone(), index)
            .prop_map(|(k, a, b)| json!({"op": "ltrim", "k": k, "start": a, "stop": b})),
    ]
}

/// A script: 1 to 8 messages of 1 to 4 operations each.
fn script() -> impl Strategy<Value = Vec<Vec<Value>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..5), 1..9)
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    redis: RedisServer,
    pack: Arc<Pack>,
    scripts: Arc<ScriptRuntime>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("p.yaml"), PACK).expect("write the pack");
        let scripts = Arc::new(ScriptRuntime::new(&ScriptLimits::default()));
        let pack = config::load(dir.path(), &scripts)
            .expect("the pack loads")
            .pack;
        Fixture {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime"),
            redis: RedisServer::start(),
            pack: Arc::new(pack),
            scripts,
            _dir: dir,
        }
    })
}

fn engine(f: &Fixture, backend: Backend, router: Arc<Router>) -> Arc<Engine> {
    Engine::new(EngineParts {
        pack: f.pack.clone(),
        node_id: Arc::from("n1"),
        scripts: f.scripts.clone(),
        backend,
        router: router.clone(),
        sink: router as Arc<dyn Sink>,
        script_concurrency: 1,
        sessions: SessionConfig::default(),
    })
}

/// Every message's answer: the reply, or `error code: message`.
async fn run(engine: Arc<Engine>, messages: &[Vec<Value>]) -> Vec<Result<Value, String>> {
    let id = wss_engine::ids::ConnId::from("n1-1");
    engine.router().register(
        id.clone(),
        None,
        wss_engine::ids::SessionId::from("s"),
        ConnLink::new(64),
    );
    let mut conn = Conn::new(id, None, json!({}));
    let mut answers = Vec::new();
    let read_back: Vec<Value> = KEYS.iter().map(|k| json!({"op": "get", "k": k})).collect();
    for ops in messages.iter().chain([&read_back]) {
        let outcome = engine.handle(&mut conn, "ops", json!({ "ops": ops })).await;
        answers.push(match outcome {
            Ok(reply) => Ok(reply.unwrap_or(Value::Null)),
            Err(f) => Err(format!("{}: {}", f.code.as_str(), f.message)),
        });
    }
    answers
}

async fn both(
    f: &Fixture,
    messages: &[Vec<Value>],
) -> (Vec<Result<Value, String>>, Vec<Result<Value, String>>) {
    let memory = Engine::in_memory("n1", f.pack.clone(), f.scripts.clone(), None);
    let on_memory = run(memory, messages).await;

    let router = Router::new();
    let redis = tokio::time::timeout(
        Duration::from_secs(10),
        RedisBackend::connect(
            &f.redis.url(),
            &unique_prefix("prop"),
            Arc::from("n1"),
            router.clone() as Arc<dyn Sink>,
            VersionCheck::Enforce,
        ),
    )
    .await
    .expect("connecting took more than 10 s")
    .expect("connect the Redis backend");
    let on_redis = run(engine(f, Backend::of(redis), router), messages).await;
    (on_memory, on_redis)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_and_redis_answer_alike(messages in script()) {
        let f = fixture();
        let (on_memory, on_redis) = f.rt.block_on(both(f, &messages));
        // The read-back only gets: it must succeed, or the script itself is broken.
        prop_assert!(on_memory.last().is_some_and(Result::is_ok), "{:?}", on_memory);
        for (i, (m, r)) in on_memory.iter().zip(&on_redis).enumerate() {
            prop_assert_eq!(m, r, "message {} of {:?}", i, messages);
        }
    }
}
