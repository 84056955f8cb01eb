//! Pub/Sub subscriptions under concurrency, at the library level (`Bus::watch` and
//! `unwatch` of a real `RedisBackend`; a Redis Cluster with `WSS_TEST_REDIS=cluster`).
//!
//! A reconnect storm makes thousands of connections watch their channels at once, so
//! subscribing runs concurrently. What must hold regardless:
//! - a watcher returns only once its channel is subscribed, even when another watcher
//!   of the same channel sent the first SUBSCRIBE and it is still in flight;
//! - joins and leaves of one channel racing each other end subscribed exactly when a
//!   watcher remains, even a leave followed at once by a join;
//! - a burst of leaves is unsubscribed in a few commands, not one per channel.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use wss_engine::backend::redis::{Names, RedisBackend};
use wss_engine::backend::{Bus, Channel};
use wss_engine::delivery::{Envelope, Target};

use support::cluster::backend::{redis_instance, Recorder};
use support::cluster::{cluster_mode, unique_prefix, Redis};

fn envelope(target: Target, text: &str) -> Envelope {
    Envelope::plain(
        target,
        None,
        Bytes::from(json!({ "event": "e", "data": text }).to_string()),
    )
}

fn names(prefix: &str) -> Names {
    if cluster_mode() {
        Names::clustered(prefix)
    } else {
        Names::new(prefix)
    }
}

/// Subscribers of `channel` across every server (0 or 1 here: one watching node).
fn subscribers(server: &Redis, prefix: &str, channel: &Channel) -> i64 {
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg(if cluster_mode() {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    })
    .arg(names(prefix).channel(channel));
    let counts: Vec<Vec<(String, i64)>> = server.on_every_server(&cmd);
    counts.iter().flatten().map(|(_, n)| n).sum()
}

/// Wait (bounded) until Redis reports `want` subscribers of `channel`.
async fn await_subscribers(server: &Redis, prefix: &str, channel: &Channel, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = subscribers(server, prefix, channel);
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel:?}: {got} subscribers, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Pair {
    server: Redis,
    prefix: String,
    /// Publishes.
    na: Arc<RedisBackend>,
    /// Watches.
    nb: Arc<RedisBackend>,
    nb_sink: Arc<Recorder>,
}

async fn pair() -> Pair {
    let server = Redis::start();
    let prefix = unique_prefix("subs");
    let (na, _) = redis_instance(&server, &prefix, "na").await;
    let (nb, nb_sink) = redis_instance(&server, &prefix, "nb").await;
    Pair {
        server,
        prefix,
        na,
        nb,
        nb_sink,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_concurrent_watcher_hears_what_is_published_after_it_returns() {
    let p = pair().await;
    // A burst of leaves first, so that the first SUBSCRIBE below waits behind their
    // UNSUBSCRIBE: the window in which a wrong watcher would return too early.
    let leaving: Vec<Channel> = (0..3000)
        .map(|i| Channel::User(format!("gone{i}")))
        .collect();
    for channel in &leaving {
        p.nb.watch(channel.clone()).await.expect("watch");
    }
    for channel in leaving {
        p.nb.unwatch(channel);
    }
    // 64 watchers of one fresh room (one of them sends the first SUBSCRIBE; the others
    // may return while it is in flight only if they are wrong) and 64 of a user channel
    // each. Each publishes the moment its watch returns: a watcher that returned before
    // its channel held loses its message.
    let mut tasks = Vec::new();
    for i in 0..128 {
        let (na, nb) = (p.na.clone(), p.nb.clone());
        tasks.push(tokio::spawn(async move {
            let (channel, target) = if i % 2 == 0 {
                (Channel::Room("fresh".into()), Target::Room("fresh".into()))
            } else {
                let user = format!("u{i}");
                (Channel::User(user.clone()), Target::User(user))
            };
            nb.watch(channel).await.expect("watch");
            na.publish(envelope(target, &format!("m{i}")))
                .await
                .expect("publish");
        }));
    }
    for task in tasks {
        task.await.expect("watcher task");
    }
    let frames = p.nb_sink.settle(128).await;
    let heard: BTreeSet<String> = frames
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_str(f).expect("a JSON frame");
            v["data"].as_str().expect("data").to_string()
        })
        .collect();
    let missing: Vec<usize> = (0..128)
        .filter(|i| !heard.contains(&format!("m{i}")))
        .collect();
    assert!(missing.is_empty(), "never heard: {missing:?}");
    assert_eq!(frames.len(), 128, "a message arrived twice: {frames:?}");
    // One subscription per channel, however many watchers sent SUBSCRIBE.
    assert_eq!(
        subscribers(&p.server, &p.prefix, &Channel::Room("fresh".into())),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joins_and_leaves_end_subscribed_exactly_while_a_watcher_remains() {
    let p = pair().await;
    let kept = Channel::Room("kept".into());
    let dropped = Channel::Room("dropped".into());
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..60u64 {
            let nb = p.nb.clone();
            let (kept, dropped) = (kept.clone(), dropped.clone());
            tasks.push(tokio::spawn(async move {
                // Staggered so leaves of early watchers interleave with later joins.
                tokio::time::sleep(Duration::from_millis(i % 7)).await;
                let channel = if i % 2 == 0 { kept } else { dropped };
                nb.watch(channel.clone()).await.expect("watch");
                tokio::time::sleep(Duration::from_millis(i % 3)).await;
                // Of `kept`, every tenth watcher stays; every `dropped` watcher leaves.
                if i % 10 != 0 {
                    nb.unwatch(channel);
                }
            }));
        }
        for task in tasks {
            task.await.expect("churn task");
        }
        await_subscribers(&p.server, &p.prefix, &kept, 1).await;
        await_subscribers(&p.server, &p.prefix, &dropped, 0).await;
        // `kept` still delivers, once; `dropped` delivers nothing.
        let before = p.nb_sink.frames().len();
        p.na.publish(envelope(
            Target::Room("kept".into()),
            &format!("kept {round}"),
        ))
        .await
        .expect("publish");
        p.na.publish(envelope(Target::Room("dropped".into()), "dropped"))
            .await
            .expect("publish");
        let frames = p.nb_sink.settle(before + 1).await;
        assert_eq!(frames[before..].len(), 1, "round {round}: {frames:?}");
        assert!(frames[before].contains(&format!("kept {round}")));
    }
    // The 30 kept watchers leave: the subscription goes with the last one.
    for _ in 0..30 {
        p.nb.unwatch(kept.clone());
    }
    await_subscribers(&p.server, &p.prefix, &kept, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_left_and_joined_again_at_once_stays_subscribed() {
    let p = pair().await;
    // The leave's UNSUBSCRIBE is sent later, by a task; the join in between must win
    // whichever of the two reaches Redis first.
    let channels: Vec<Channel> = (0..50)
        .map(|k| Channel::Room(format!("again{k}")))
        .collect();
    for channel in &channels {
        p.nb.watch(channel.clone()).await.expect("watch");
        p.nb.unwatch(channel.clone());
        p.nb.watch(channel.clone()).await.expect("watch again");
    }
    // Let every scheduled UNSUBSCRIBE run before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unsubscribed: Vec<&Channel> = channels
        .iter()
        .filter(|c| subscribers(&p.server, &p.prefix, c) != 1)
        .collect();
    assert!(
        unsubscribed.is_empty(),
        "wanted but not subscribed: {unsubscribed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_leaves_is_unsubscribed_in_a_few_commands() {
    if cluster_mode() {
        // A sharded unsubscribe may not cross slots: one command per channel there.
        eprintln!("skipped on a Redis Cluster: SUNSUBSCRIBE is sent per channel");
        return;
    }
    let p = pair().await;
    let channels: Vec<Channel> = (0..200).map(|i| Channel::User(format!("u{i}"))).collect();
    for channel in &channels {
        p.nb.watch(channel.clone()).await.expect("watch");
    }
    let _: Vec<()> = p
        .server
        .on_every_server(redis::cmd("CONFIG").arg("RESETSTAT"));
    for channel in &channels {
        p.nb.unwatch(channel.clone());
    }
    for channel in &channels {
        await_subscribers(&p.server, &p.prefix, channel, 0).await;
    }
    let info: Vec<String> = p
        .server
        .on_every_server(redis::cmd("INFO").arg("commandstats"));
    let calls: u64 = info
        .iter()
        .flat_map(|i| i.lines())
        .find_map(|line| line.strip_prefix("cmdstat_unsubscribe:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("INFO commandstats counts UNSUBSCRIBE");
    assert!(
        calls <= 10,
        "200 leaves took {calls} UNSUBSCRIBE commands; they should share a few"
    );
}
