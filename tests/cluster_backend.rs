//! Backend conformance: the same state and bus tests against the memory backend and the
//! Redis backend (a real `redis-server` per test, or a Redis Cluster with
//! `WSS_TEST_REDIS=cluster`; a unique key prefix), at the library level through the
//! `StateStore` and `Bus` contracts. Keys one commit touches together share a hash tag,
//! as on a Redis Cluster they must.
//!
//! Covered: versions start at 0, bump on every write and survive deletes; a commit with a
//! stale read version is a `Conflict` that writes and publishes nothing; every
//! `StoredValue` shape round-trips; a TTL write expires; join/leave/members; a publish
//! reaches the local sink once, and (Redis) another instance's sink once it watches the
//! channel, never after it stops watching.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use wss_engine::backend::memory::MemoryBackend;
use wss_engine::backend::redis::Names;
use wss_engine::backend::{
    Bus, Channel, Commit, CommitOutcome, Presence, StateStore, StoredValue, Versioned, Write,
};
use wss_engine::delivery::{ConnId, Envelope, Sink, Target};

use support::cluster::backend::{redis_instance, Recorder};
use support::cluster::{cluster_mode, unique_prefix, Redis};

/// One backend under test, seen through the contracts it is tested on.
struct Subject {
    store: Arc<dyn StateStore>,
    presence: Arc<dyn Presence>,
    bus: Arc<dyn Bus>,
    sink: Arc<Recorder>,
    /// Redis only: what the backends need to live.
    redis: Option<(Redis, String)>,
}

async fn memory() -> Subject {
    let sink = Arc::new(Recorder::default());
    let backend = Arc::new(MemoryBackend::new(sink.clone() as Arc<dyn Sink>));
    Subject {
        store: backend.clone(),
        presence: backend.clone(),
        bus: backend,
        sink,
        redis: None,
    }
}

async fn redis() -> Subject {
    let server = Redis::start();
    let prefix = unique_prefix("backend");
    let (backend, sink) = redis_instance(&server, &prefix, "na").await;
    Subject {
        store: backend.clone(),
        presence: backend.clone(),
        bus: backend,
        sink,
        redis: Some((server, prefix)),
    }
}

fn json(v: serde_json::Value) -> Option<StoredValue> {
    Some(StoredValue::Json(v))
}

fn write(key: &str, value: Option<StoredValue>) -> Write {
    Write {
        key: key.to_string(),
        value,
        ttl: None,
    }
}

fn envelope(target: Target, text: &str) -> Envelope {
    Envelope::plain(
        target,
        None,
        Bytes::from(json!({ "event": "e", "data": text }).to_string()),
    )
}

async fn read1(s: &Subject, key: &str) -> Versioned {
    let mut all = s.store.read(vec![key.to_string()]).await.expect("read");
    assert_eq!(all.len(), 1);
    all.remove(0)
}

async fn commit(
    s: &Subject,
    reads: &[(&str, u64)],
    writes: Vec<Write>,
    publish: Vec<Envelope>,
) -> CommitOutcome {
    s.store
        .commit(Commit {
            reads: reads.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            writes,
            publish,
        })
        .await
        .expect("commit")
}

// ---------------------------------------------------------------------------------------
// The cases, each run against both backends.
// ---------------------------------------------------------------------------------------

async fn versions_start_at_zero_and_bump_on_every_write(s: Subject) {
    let fresh = read1(&s, "a").await;
    assert_eq!(fresh, Versioned::default(), "a key never written");
    assert_eq!(fresh.version, 0);
    let outcome = commit(&s, &[("a", 0)], vec![write("a", json(json!(1)))], vec![]).await;
    assert_eq!(outcome, CommitOutcome::Committed(vec![]));
    assert_eq!(
        read1(&s, "a").await,
        Versioned {
            version: 1,
            value: json(json!(1))
        }
    );
    // A blind write (nothing read) also counts.
    commit(&s, &[], vec![write("a", json(json!(2)))], vec![]).await;
    assert_eq!(read1(&s, "a").await.version, 2);
    commit(&s, &[("a", 2)], vec![write("a", json(json!(3)))], vec![]).await;
    let now = read1(&s, "a").await;
    assert_eq!((now.version, now.value), (3, json(json!(3))));
    // Other keys are untouched.
    assert_eq!(read1(&s, "b").await, Versioned::default());
}

async fn versions_survive_delete(s: Subject) {
    commit(&s, &[], vec![write("k", json(json!("x")))], vec![]).await;
    let seen_before_delete = read1(&s, "k").await.version;
    assert_eq!(seen_before_delete, 1);
    commit(&s, &[("k", 1)], vec![write("k", None)], vec![]).await;
    let deleted = read1(&s, "k").await;
    assert_eq!(deleted.value, None, "deleted");
    assert_eq!(
        deleted.version, 2,
        "a delete is a write: the version survives it"
    );
    commit(&s, &[("k", 2)], vec![write("k", json(json!("x")))], vec![]).await;
    let recreated = read1(&s, "k").await;
    assert_eq!((recreated.version, recreated.value), (3, json(json!("x"))));
    // Delete + recreate of the same value must not fool a reader from before.
    let outcome = commit(
        &s,
        &[("k", seen_before_delete)],
        vec![write("k", json(json!("stale")))],
        vec![],
    )
    .await;
    assert_eq!(outcome, CommitOutcome::Conflict);
    assert_eq!(read1(&s, "k").await.value, json(json!("x")));
}

async fn stale_reads_conflict_and_nothing_is_written_or_published(s: Subject) {
    commit(&s, &[], vec![write("{ab}a", json(json!(1)))], vec![]).await;
    let before = s.sink.frames().len();
    // Read `a` at version 0 (stale), write `a` and `b`, publish: none of it may happen.
    let outcome = commit(
        &s,
        &[("{ab}a", 0)],
        vec![
            write("{ab}a", json(json!(99))),
            write("{ab}b", json(json!(5))),
        ],
        vec![
            envelope(Target::Room("r".into()), "never"),
            envelope(Target::All, "never"),
        ],
    )
    .await;
    assert_eq!(outcome, CommitOutcome::Conflict);
    let a = read1(&s, "{ab}a").await;
    assert_eq!((a.version, a.value), (1, json(json!(1))));
    assert_eq!(read1(&s, "{ab}b").await, Versioned::default());
    // A stale version of a key only read (not written) conflicts too.
    let outcome = commit(
        &s,
        &[("{ab}b", 0), ("{ab}a", 0)],
        vec![write("{ab}b", json(json!(6)))],
        vec![envelope(Target::All, "never")],
    )
    .await;
    assert_eq!(outcome, CommitOutcome::Conflict);
    assert_eq!(read1(&s, "{ab}b").await, Versioned::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.sink.frames().len(),
        before,
        "a conflict published something"
    );

    // The same commit with fresh versions lands, writes and publishes once.
    let outcome = commit(
        &s,
        &[("{ab}a", 1), ("{ab}b", 0)],
        vec![
            write("{ab}a", json(json!(2))),
            write("{ab}b", json(json!(6))),
        ],
        vec![envelope(Target::All, "landed")],
    )
    .await;
    assert_eq!(outcome, CommitOutcome::Committed(vec![]));
    assert_eq!(read1(&s, "{ab}a").await.value, json(json!(2)));
    assert_eq!(read1(&s, "{ab}b").await.value, json(json!(6)));
    let frames = s.sink.settle(before + 1).await;
    assert_eq!(frames[before..].len(), 1, "published once: {frames:?}");
    assert!(frames[before].contains("landed"));
}

async fn every_value_shape_round_trips(s: Subject) {
    let hash: BTreeMap<String, serde_json::Value> = [
        ("n".to_string(), json!(1)),
        ("s".to_string(), json!("two")),
        ("o".to_string(), json!({ "x": [1, 2.5, null, true] })),
    ]
    .into_iter()
    .collect();
    let set: BTreeSet<String> = ["\"a\"", "1", "{\"k\":\"v\"}"]
        .into_iter()
        .map(String::from)
        .collect();
    let list: VecDeque<serde_json::Value> =
        [json!(1), json!("two"), json!({ "three": 3 }), json!("two")]
            .into_iter()
            .collect();
    let values = [
        (
            "{shape}j-obj",
            json(json!({ "a": [1, { "b": "c" }], "unicode": "é✓" })),
        ),
        ("{shape}j-str", json(json!("text with\nnewline"))),
        ("{shape}j-num", json(json!(-12.5))),
        ("{shape}j-bool", json(json!(false))),
        ("{shape}j-null", json(json!(null))),
        ("{shape}hash", Some(StoredValue::Hash(hash))),
        ("{shape}set", Some(StoredValue::Set(set))),
        ("{shape}list", Some(StoredValue::List(list))),
    ];
    let writes = values.iter().map(|(k, v)| write(k, v.clone())).collect();
    assert_eq!(
        commit(&s, &[], writes, vec![]).await,
        CommitOutcome::Committed(vec![])
    );
    let keys: Vec<String> = values.iter().map(|(k, _)| k.to_string()).collect();
    let read = s.store.read(keys).await.expect("read all shapes");
    for ((key, value), got) in values.iter().zip(read) {
        assert_eq!(&got.value, value, "`{key}` did not round-trip");
        assert_eq!(got.version, 1, "`{key}`");
    }
    // A key may change shape: a hash becomes a list.
    let list: VecDeque<serde_json::Value> = [json!("x")].into_iter().collect();
    commit(
        &s,
        &[("{shape}hash", 1)],
        vec![write("{shape}hash", Some(StoredValue::List(list.clone())))],
        vec![],
    )
    .await;
    assert_eq!(
        read1(&s, "{shape}hash").await,
        Versioned {
            version: 2,
            value: Some(StoredValue::List(list))
        }
    );
}

async fn a_ttl_write_expires(s: Subject) {
    let mut w = write("{ttl}short", json(json!("soon gone")));
    w.ttl = Some(Duration::from_millis(300));
    commit(
        &s,
        &[],
        vec![w, write("{ttl}long", json(json!("stays")))],
        vec![],
    )
    .await;
    assert_eq!(
        read1(&s, "{ttl}short").await.value,
        json(json!("soon gone"))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = read1(&s, "{ttl}short").await;
        if now.value.is_none() {
            assert!(now.version >= 1, "expiry must not reset the version to 0");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 300 ms TTL key still exists after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read1(&s, "{ttl}long").await.value, json(json!("stays")));
}

async fn rooms_join_leave_members(s: Subject) {
    let (c1, c2, c3): (ConnId, ConnId, ConnId) = (
        ConnId::from("na-1"),
        ConnId::from("nb-2"),
        ConnId::from("na-3"),
    );
    assert!(s.presence.members("r").await.expect("members").is_empty());
    s.presence.join("r", &c2).await.expect("join");
    s.presence.join("r", &c1).await.expect("join");
    s.presence.join("r", &c1).await.expect("join is idempotent");
    s.presence.join("other", &c3).await.expect("join");
    assert_eq!(
        s.presence.members("r").await.expect("members"),
        vec!["na-1".to_string(), "nb-2".to_string()],
        "members are sorted and unique"
    );
    assert_eq!(
        s.presence.members("other").await.expect("members"),
        vec!["na-3".to_string()]
    );
    s.presence.leave("r", &c1).await.expect("leave");
    s.presence
        .leave("r", &c1)
        .await
        .expect("leave is idempotent");
    s.presence
        .leave("r", &c3)
        .await
        .expect("leaving a room one is not in");
    assert_eq!(
        s.presence.members("r").await.expect("members"),
        vec!["nb-2".to_string()]
    );
    s.presence.leave("r", &c2).await.expect("leave");
    assert!(s.presence.members("r").await.expect("members").is_empty());
    assert_eq!(s.presence.members("other").await.expect("members").len(), 1);
}

async fn a_publish_reaches_the_local_sink_once(s: Subject) {
    for (target, text) in [
        (Target::Room("r".into()), "room"),
        (Target::All, "all"),
        (Target::User("u".into()), "user"),
        (Target::Conn("na-1".into()), "conn"),
    ] {
        s.bus
            .publish(envelope(target, text))
            .await
            .expect("publish");
    }
    let frames = s.sink.settle(4).await;
    assert_eq!(
        frames.len(),
        4,
        "each exactly once (own echoes dropped): {frames:?}"
    );
    for text in ["room", "all", "user", "conn"] {
        assert!(
            frames.iter().any(|f| f.contains(&format!("\"{text}\""))),
            "{text} missing from {frames:?}"
        );
    }
    let exclude = ConnId::from("na-7");
    let mut e = envelope(Target::Room("r".into()), "excl");
    e.exclude = Some(exclude.clone());
    s.bus.publish(e).await.expect("publish");
    s.sink.settle(5).await;
    let last = s.sink.envelopes().pop().expect("delivered");
    assert_eq!(
        last.exclude,
        Some(exclude),
        "the exclusion reaches the sink"
    );
    assert_eq!(last.target, Target::Room("r".into()));
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::memory().await).await;
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::redis().await).await;
                }
            )*
        }
    };
}

conformance!(
    versions_start_at_zero_and_bump_on_every_write,
    versions_survive_delete,
    stale_reads_conflict_and_nothing_is_written_or_published,
    every_value_shape_round_trips,
    a_ttl_write_expires,
    rooms_join_leave_members,
    a_publish_reaches_the_local_sink_once,
);

// ---------------------------------------------------------------------------------------
// Redis only: two instances (two node ids) on one Redis and one prefix.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_instances_share_state_and_versions() {
    let s = redis().await;
    let (server, prefix) = s.redis.as_ref().expect("a Redis subject");
    let (nb, _nb_sink) = redis_instance(server, prefix, "nb").await;
    commit(&s, &[], vec![write("k", json(json!(1)))], vec![]).await;
    let seen = nb.read(vec!["k".into()]).await.expect("read")[0].clone();
    assert_eq!((seen.version, seen.value), (1, json(json!(1))));
    // `na` writes after `nb` read: `nb`'s commit conflicts.
    commit(&s, &[("k", 1)], vec![write("k", json(json!(2)))], vec![]).await;
    let outcome = nb
        .commit(Commit {
            reads: vec![("k".into(), 1)],
            writes: vec![write("k", json(json!(100)))],
            publish: vec![],
        })
        .await
        .expect("commit");
    assert_eq!(outcome, CommitOutcome::Conflict);
    assert_eq!(read1(&s, "k").await.value, json(json!(2)));
    // Native types under the prefix, JSON elements, a version key beside.
    let names = if cluster_mode() {
        Names::clustered(prefix)
    } else {
        Names::new(prefix)
    };
    let mut c = server.conn();
    let raw: String = redis::cmd("GET")
        .arg(names.state("k"))
        .query(&mut c)
        .expect("GET");
    assert_eq!(raw, "2");
    let version: u64 = redis::cmd("GET")
        .arg(names.version("k"))
        .query(&mut c)
        .expect("GET");
    assert_eq!(version, 2);
    // Rooms are shared too.
    nb.join("r", &ConnId::from("nb-1")).await.expect("join");
    assert_eq!(
        s.presence.members("r").await.expect("members"),
        vec!["nb-1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_reaches_another_instance_that_watches() {
    let s = redis().await;
    let (server, prefix) = s.redis.as_ref().expect("a Redis subject");
    let (nb, nb_sink) = redis_instance(server, prefix, "nb").await;

    // Not watched yet: a room message does not reach `nb`; `all` and `conn:` to one of
    // `nb`'s connections always do.
    s.bus
        .publish(envelope(Target::Room("r".into()), "unwatched"))
        .await
        .expect("publish");
    s.bus
        .publish(envelope(Target::All, "to all"))
        .await
        .expect("publish");
    s.bus
        .publish(envelope(Target::Conn("nb-5".into()), "to nb-5"))
        .await
        .expect("publish");
    let frames = nb_sink.settle(2).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(
        frames[0].contains("to all") && frames[1].contains("to nb-5"),
        "{frames:?}"
    );

    // Watched: from when `watch` returns, room and user messages arrive, once.
    nb.watch(Channel::Room("r".into()))
        .await
        .expect("watch room");
    nb.watch(Channel::User("u".into()))
        .await
        .expect("watch user");
    s.bus
        .publish(envelope(Target::Room("r".into()), "watched room"))
        .await
        .expect("publish");
    s.bus
        .publish(envelope(Target::User("u".into()), "watched user"))
        .await
        .expect("publish");
    let frames = nb_sink.settle(4).await;
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert!(frames[2].contains("watched room"), "{frames:?}");
    assert!(frames[3].contains("watched user"), "{frames:?}");

    // A commit's deliveries travel with it, with the exclusion, once.
    let mut e = envelope(Target::Room("r".into()), "committed");
    e.exclude = Some(ConnId::from("nb-9"));
    let outcome = commit(&s, &[], vec![write("x", json(json!(1)))], vec![e]).await;
    assert_eq!(outcome, CommitOutcome::Committed(vec![]));
    nb_sink.settle(5).await;
    let got = nb_sink.envelopes();
    assert_eq!(got.len(), 5, "{:?}", nb_sink.frames());
    assert_eq!(got[4].exclude.as_deref(), Some("nb-9"));
    assert_eq!(got[4].target, Target::Room("r".into()));
    // …and a conflicting commit's deliveries never leave.
    let outcome = commit(
        &s,
        &[("x", 0)],
        vec![write("x", json(json!(2)))],
        vec![envelope(Target::Room("r".into()), "conflicted")],
    )
    .await;
    assert_eq!(outcome, CommitOutcome::Conflict);
    assert_eq!(nb_sink.settle(6).await.len(), 5, "a conflict published");

    // The origin delivered each message to its own sink once (no echo through Redis).
    let own = s.sink.frames();
    assert_eq!(own.len(), 6, "origin sink: {own:?}");

    // Unwatched: room messages stop reaching `nb` (reference-counted: two watches, two
    // unwatches).
    nb.watch(Channel::Room("r".into()))
        .await
        .expect("watch again");
    nb.unwatch(Channel::Room("r".into()));
    s.bus
        .publish(envelope(Target::Room("r".into()), "still watched"))
        .await
        .expect("publish");
    assert_eq!(nb_sink.settle(6).await.len(), 6);
    nb.unwatch(Channel::Room("r".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Unsubscribing is asynchronous: wait until Redis reports no subscriber.
        let (names, numsub) = if cluster_mode() {
            (Names::clustered(prefix), "SHARDNUMSUB")
        } else {
            (Names::new(prefix), "NUMSUB")
        };
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg(numsub)
            .arg(names.channel(&Channel::Room("r".into())));
        let subs: Vec<Vec<(String, i64)>> = server.on_every_server(&cmd);
        if subs.iter().flatten().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`nb` still subscribed to room r after its last unwatch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.bus
        .publish(envelope(Target::Room("r".into()), "after unwatch"))
        .await
        .expect("publish");
    assert_eq!(nb_sink.settle(7).await.len(), 6, "{:?}", nb_sink.frames());
}
