//! Nothing lost across reconnects, on real nodes and a real Redis: a client that drops
//! resumes on another node and gets every delivery it missed once and in order (while
//! a publisher keeps going); history trimmed or lost (Redis restarted empty) is
//! reported, never replayed in part; a killed node's sessions resume on a survivor; a
//! node whose Pub/Sub connection was cut fills the hole from history, or says `$gap`;
//! and random drops and resumes across three nodes keep every client's stream whole.
//!
//! Every client here is a [`Tracked`] one: it checks, frame by frame, that each room's
//! offsets follow one another from its `$joined`, as the client library does.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::client::Client;
use support::cluster::{pack, serial, Cluster, Node, Tracked, WAIT};

fn say(room: &str, id: &str) -> Value {
    json!({ "room": room, "id": id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_resumes_on_another_node_with_every_message_once_and_in_order() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = Tracked::connect(n1, "a").await;
    a.join("h:r").await;
    let mut p1 = n1.connect().await;
    let mut p2 = n2.connect().await;
    p1.ok("say", say("h:r", "first")).await;
    a.catch_up(&BTreeMap::from([("h:r".to_string(), 1)]), WAIT)
        .await;

    // a's TCP connection dies without a close; 500 messages go out over both nodes.
    let session = a.client.session();
    let position = a.positions["h:r"].clone();
    let placeholder = n2.connect().await;
    std::mem::replace(&mut a.client, placeholder).drop_abruptly();
    for i in 0..250 {
        p1.emit("say", say("h:r", &format!("p1-{i}"))).await;
        p2.emit("say", say("h:r", &format!("p2-{i}"))).await;
    }
    p1.sync().await;
    p2.sync().await;

    // A publisher keeps going while a resumes on the other node.
    let during = tokio::spawn(async move {
        for i in 0..100 {
            p1.emit("say", say("h:r", &format!("live-{i}"))).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p1.sync().await;
        p1
    });
    let mut resumed = n2.connect().await;
    resumed.membership_inline = true;
    a.client = resumed;
    let ack = a
        .client
        .resume(
            &session,
            json!({ "h:r": { "epoch": position.epoch, "offset": position.offset } }),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["data"]["rooms"]["h:r"]["recovered"], true, "{ack}");
    assert!(
        ack["data"]["rooms"]["h:r"]["replayed"].as_u64() >= Some(500),
        "{ack}"
    );
    a.drain_backlog();
    let mut p1 = during.await.expect("publisher");
    p1.ok("say", say("h:r", "last")).await;
    let last = position.offset + 1 + 500 + 100;
    a.catch_up(&BTreeMap::from([("h:r".to_string(), last)]), WAIT)
        .await;

    // Exactly the messages sent, each once, in offset order (contiguity is checked
    // frame by frame); each node's own sends kept their order.
    let got = &a.got["h:r"];
    let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 1 + 500 + 100 + 1);
    let mut seen = std::collections::HashSet::new();
    assert!(
        ids.iter().all(|id| seen.insert(*id)),
        "a duplicate delivery"
    );
    for prefix in ["p1-", "p2-", "live-"] {
        let own: Vec<usize> = ids
            .iter()
            .filter_map(|id| id.strip_prefix(prefix))
            .map(|n| n.parse().expect("number"))
            .collect();
        let n = if prefix == "live-" { 100 } else { 250 };
        assert_eq!(
            own,
            (0..n).collect::<Vec<_>>(),
            "{prefix} out of order or missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_and_a_redis_restart_are_reported_not_recovered() {
    let _serial = serial();
    let mut cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    // Trimmed: the room keeps 5, the client missed 20.
    {
        let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
        let mut a = Tracked::connect(n1, "a").await;
        a.join("tiny:t").await;
        let session = a.client.session();
        let position = a.positions["tiny:t"].clone();
        let placeholder = n1.connect().await;
        std::mem::replace(&mut a.client, placeholder).drop_abruptly();
        let mut p = n1.connect().await;
        for i in 0..20 {
            p.emit("say", say("tiny:t", &i.to_string())).await;
        }
        p.sync().await;
        let mut b = n2.connect().await;
        b.membership_inline = true;
        let ack = b
            .resume(
                &session,
                json!({ "tiny:t": { "epoch": position.epoch, "offset": position.offset } }),
            )
            .await;
        assert_eq!(
            ack["data"]["rooms"]["tiny:t"],
            json!({ "recovered": false }),
            "{ack}"
        );
        let joined = b.recv_event("$joined").await;
        assert_eq!(
            joined["offset"], 20,
            "placed at the room's position: {joined}"
        );
        b.expect_silence().await;
    }

    // Redis restarted without persistence: the room's history (and epoch) is gone.
    let mut b = Tracked::connect(&cluster.nodes[1], "b").await;
    b.join("h:lost").await;
    let mut p = cluster.nodes[0].connect().await;
    p.ok("say", say("h:lost", "before")).await;
    b.catch_up(&BTreeMap::from([("h:lost".to_string(), 1)]), WAIT)
        .await;
    let before = b.positions["h:lost"].clone();
    drop(p);
    cluster.redis.kill();
    cluster.redis.restart();
    for node in &cluster.nodes {
        node.wait_ready(Duration::from_secs(20)).await;
    }
    // The live member is told (`$gap`, with the new epoch) once its node is back.
    let deadline = Instant::now() + WAIT;
    while b.flagged.is_empty() {
        assert!(Instant::now() < deadline, "no $gap after the restart");
        if let Some(frame) = b.client.try_recv(Duration::from_millis(200)).await {
            assert!(b.apply(frame).is_none());
        }
    }
    let after = b.positions["h:lost"].clone();
    assert_ne!(after.epoch, before.epoch);
    // Its session was written again by its node: a resume from the old position is
    // answered, and says the room is not recovered.
    let mut p = eventually_connect(&cluster.nodes[0]).await;
    p.ok("say", say("h:lost", "after")).await;
    b.catch_up(
        &BTreeMap::from([("h:lost".to_string(), after.offset + 1)]),
        WAIT,
    )
    .await;
    let session = b.client.session();
    // Written again by its node once it noticed Redis came back.
    let key = cluster.key(&format!("session:{session}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut cluster.redis.conn())
            .expect("EXISTS");
        if exists {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live session was not written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = cluster.nodes[0].connect().await;
    c.membership_inline = true;
    let ack = c
        .resume(
            &session,
            json!({ "h:lost": { "epoch": before.epoch, "offset": before.offset } }),
        )
        .await;
    assert_eq!(
        ack["data"]["rooms"]["h:lost"],
        json!({ "recovered": false }),
        "{ack}"
    );
}

async fn eventually_connect(node: &Node) -> Client {
    node.wait_ready(Duration::from_secs(20)).await;
    node.connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_resume_on_a_survivor() {
    let _serial = serial();
    let mut cluster = Cluster::start_pack(2, &pack("history"), &["--node-ttl", "2"]).await;
    let mut a = Tracked::connect(&cluster.nodes[0], "a").await;
    a.join("h:k").await;
    let mut p = cluster.nodes[1].connect().await;
    for i in 0..10 {
        p.ok("say", say("h:k", &format!("a{i}"))).await;
    }
    a.catch_up(&BTreeMap::from([("h:k".to_string(), 10)]), WAIT)
        .await;
    cluster.nodes[0].sigkill();
    for i in 0..10 {
        p.ok("say", say("h:k", &format!("b{i}"))).await;
    }
    let report = a.resume_on(&cluster.nodes[1]).await;
    assert_eq!(report["h:k"], json!({ "recovered": true, "replayed": 10 }));
    let survivor = &cluster.nodes[1];
    assert_eq!(survivor.metric_sum("wss_resumes_total").await, 1.0);
    assert_eq!(survivor.metric_sum("wss_replayed_total").await, 10.0);
    a.catch_up(&BTreeMap::from([("h:k".to_string(), 20)]), WAIT)
        .await;
    // After the dead node's cleanup the room still has its resumed member.
    tokio::time::sleep(Duration::from_secs(4)).await;
    p.ok("say", say("h:k", "after-cleanup")).await;
    a.catch_up(&BTreeMap::from([("h:k".to_string(), 21)]), WAIT)
        .await;
}

/// Kill every Pub/Sub connection Redis has: the nodes reconnect on their own.
fn kill_pubsub_clients(cluster: &Cluster) -> i64 {
    let mut kill = redis::cmd("CLIENT");
    kill.arg("KILL").arg("TYPE").arg("pubsub");
    cluster.redis.on_every_server::<i64>(&kill).iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_outage_loses_nothing_for_the_nodes_clients() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub = Tracked::connect(n2, "sub").await;
    sub.join("h:p").await;
    let mut publisher = n1.connect().await;
    let sent = 300;
    let publishing = tokio::spawn(async move {
        for i in 0..sent {
            publisher.emit("say", say("h:p", &i.to_string())).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        publisher.sync().await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = kill_pubsub_clients(&cluster);
    assert!(killed >= 2, "both nodes' Pub/Sub connections: {killed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_pubsub_clients(&cluster);
    publishing.await.expect("publisher");
    sub.catch_up(&BTreeMap::from([("h:p".to_string(), sent)]), WAIT)
        .await;
    assert!(
        sub.flagged.is_empty(),
        "nothing should be beyond history: {:?}",
        sub.flagged
    );
    let ids: Vec<String> = sub.got["h:p"].iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, (0..sent).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(n2.metric_sum("wss_stream_fills_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_beyond_history_is_announced_with_gap() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    let mut sub = Tracked::connect(&cluster.nodes[1], "sub").await;
    sub.join("tiny:g").await;
    let mut publisher = cluster.nodes[0].connect().await;
    publisher.ok("say", say("tiny:g", "0")).await;
    sub.catch_up(&BTreeMap::from([("tiny:g".to_string(), 1)]), WAIT)
        .await;
    // Freeze the subscriber's node, cut its Pub/Sub connection, publish past what the
    // room keeps, then let it run: it finds the hole too wide to fill.
    signal(cluster.nodes[1].pid(), "STOP");
    assert!(kill_pubsub_clients(&cluster) >= 1);
    for i in 1..=20 {
        publisher.ok("say", say("tiny:g", &i.to_string())).await;
    }
    signal(cluster.nodes[1].pid(), "CONT");
    sub.catch_up(&BTreeMap::from([("tiny:g".to_string(), 21)]), WAIT)
        .await;
    assert_eq!(sub.flagged.len(), 1, "one $gap: {:?}", sub.flagged);
    assert!(cluster.nodes[1].metric_sum("wss_gaps_total").await >= 1.0);
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A small deterministic random number generator (xorshift), seeded per run and
/// printed, so a failure can be replayed with `WSS_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_and_resumes_across_three_nodes_keep_every_stream_whole() {
    let _serial = serial();
    let seed = std::env::var("WSS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("random_drops_and_resumes: WSS_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let cluster = Cluster::start_pack(3, &pack("history"), &[]).await;
    let rooms = ["h:a", "h:b"];
    let mut clients = Vec::new();
    for i in 0..6 {
        let node = &cluster.nodes[i % 3];
        let mut c = Tracked::connect(node, &format!("c{i}")).await;
        for room in rooms {
            c.join(room).await;
        }
        clients.push(c);
    }
    let mut publishers = Vec::new();
    for node in &cluster.nodes {
        publishers.push(node.connect().await);
    }
    // Truth: what each published id got (learned from any receiver), per room.
    let mut sent: HashMap<&str, usize> = HashMap::new();
    let steps = 600;
    for step in 1..=steps {
        match rng.below(10) {
            // Mostly publishes, from a random node into a random room.
            0..=6 => {
                let room = rooms[rng.below(2) as usize];
                let p = &mut publishers[rng.below(3) as usize];
                let n = sent.entry(room).or_default();
                *n += 1;
                p.ok("say", say(room, &format!("{room}#{n}"))).await;
            }
            // A client drops and resumes on a random node.
            7 | 8 => {
                let c = rng.below(clients.len() as u64) as usize;
                let node = &cluster.nodes[rng.below(3) as usize];
                let report = clients[c].resume_on(node).await;
                for room in rooms {
                    assert_eq!(
                        report[room]["recovered"], true,
                        "{} could not recover {room} at step {step}: {report}",
                        clients[c].name
                    );
                }
            }
            // Every client reads what has arrived (none may fall behind so far that it
            // is cut off as a slow consumer).
            _ => {
                for c in &mut clients {
                    while let Some(frame) = c.client.try_recv(Duration::from_millis(2)).await {
                        assert!(c.apply(frame).is_none());
                    }
                }
            }
        }
    }
    let heads: BTreeMap<String, u64> = rooms
        .iter()
        .map(|r| (r.to_string(), *sent.get(r).unwrap_or(&0) as u64))
        .collect();
    for c in &mut clients {
        c.catch_up(&heads, Duration::from_secs(20)).await;
    }
    // Every client saw each room's offsets in order without a hole (checked as they
    // came), nobody was flagged, and all agree on which message each offset is.
    let mut truth: HashMap<(String, u64), String> = HashMap::new();
    for c in &clients {
        assert!(c.flagged.is_empty(), "{} flagged {:?}", c.name, c.flagged);
        for (room, got) in &c.got {
            for (offset, id) in got {
                let known = truth
                    .entry((room.clone(), *offset))
                    .or_insert_with(|| id.clone());
                assert_eq!(
                    known, id,
                    "{} got another message at {room}@{offset}",
                    c.name
                );
            }
        }
    }
    for room in rooms {
        let n = *sent.get(room).unwrap_or(&0);
        for i in 1..=n {
            assert!(
                truth.values().any(|id| *id == format!("{room}#{i}")),
                "{room}#{i} reached nobody (seed {seed})"
            );
        }
    }
    eprintln!("random_drops_and_resumes: {steps} steps, {sent:?} messages, seed {seed}");
}

/// A Redis failover can lose the last deliveries of a room before they replicated,
/// after members saw them: the room's offsets go back, and the next deliveries would
/// reuse offsets members already hold and be dropped as duplicates. Here the loss is
/// made by hand (position and history cut back by two), then every Pub/Sub connection
/// is cut so the nodes catch up: the room must move to a new epoch, members are told
/// (`$gap`), what comes next is delivered, and an old position resumes not recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_went_back_in_time_moves_to_a_new_epoch() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut sub = Tracked::connect(n2, "sub").await;
    sub.join("h:back").await;
    let mut p = n1.connect().await;
    for i in 1..=5 {
        p.ok("say", say("h:back", &i.to_string())).await;
    }
    sub.catch_up(&BTreeMap::from([("h:back".to_string(), 5)]), WAIT)
        .await;
    let seen = sub.positions["h:back"].clone();
    let session = sub.client.session();

    // The "failover": the last two deliveries never reached the replica, whose
    // position and history stop at offset 3.
    cut_back(&cluster, "h:back", 3);
    assert!(kill_pubsub_clients(&cluster) >= 2);

    let deadline = Instant::now() + WAIT;
    while sub.flagged.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no $gap after the room went back in time"
        );
        if let Some(frame) = sub.client.try_recv(Duration::from_millis(200)).await {
            assert!(sub.apply(frame).is_none());
        }
    }
    let now = sub.positions["h:back"].clone();
    assert_ne!(now.epoch, seen.epoch, "a new epoch");
    assert_eq!(now.offset, 3, "the stream goes on from the room's head");

    // Offset 4 again, in the new epoch: delivered, not dropped as a duplicate.
    p.ok("say", say("h:back", "after")).await;
    sub.catch_up(&BTreeMap::from([("h:back".to_string(), 4)]), WAIT)
        .await;
    assert_eq!(sub.got["h:back"].last(), Some(&(4, "after".to_string())));

    // A position of the old epoch is not trusted again.
    let mut c = n1.connect().await;
    c.membership_inline = true;
    let ack = c
        .resume(
            &session,
            json!({ "h:back": { "epoch": seen.epoch, "offset": seen.offset } }),
        )
        .await;
    assert_eq!(
        ack["data"]["rooms"]["h:back"],
        json!({ "recovered": false }),
        "{ack}"
    );
}

/// Make a room's position and history what a replica that missed everything after
/// `offset` would hold.
fn cut_back(cluster: &Cluster, room: &str, offset: u64) {
    let (pos, hist) = (
        cluster.room_key("pos:", room),
        cluster.room_key("hist:", room),
    );
    let mut redis = cluster.redis.conn();
    let kept: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&hist)
        .arg("-")
        .arg(format!("{offset}-0"))
        .query(&mut redis)
        .expect("XRANGE");
    let _: () = redis::cmd("DEL").arg(&hist).query(&mut redis).expect("DEL");
    for (id, fields) in kept {
        let mut add = redis::cmd("XADD");
        add.arg(&hist).arg(id);
        for (field, value) in fields {
            add.arg(field).arg(value);
        }
        let _: String = add.query(&mut redis).expect("XADD");
    }
    let _: () = redis::cmd("HSET")
        .arg(&pos)
        .arg("offset")
        .arg(offset)
        .query(&mut redis)
        .expect("HSET offset");
}

/// A history ahead of its position (a hand edit, a partial restore) must not make
/// every later delivery to the room fail: the room starts a new epoch there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_ahead_of_its_position_starts_a_new_epoch() {
    let _serial = serial();
    let cluster = Cluster::start_pack(1, &pack("history"), &[]).await;
    let mut sub = Tracked::connect(&cluster.nodes[0], "sub").await;
    sub.join("h:ahead").await;
    let mut p = cluster.nodes[0].connect().await;
    for i in 1..=3 {
        p.ok("say", say("h:ahead", &i.to_string())).await;
    }
    sub.catch_up(&BTreeMap::from([("h:ahead".to_string(), 3)]), WAIT)
        .await;
    let before = sub.positions["h:ahead"].clone();
    let _: () = redis::cmd("HSET")
        .arg(cluster.room_key("pos:", "h:ahead"))
        .arg("offset")
        .arg(1)
        .query(&mut cluster.redis.conn())
        .expect("HSET offset");
    p.ok("say", say("h:ahead", "next")).await;
    let deadline = Instant::now() + WAIT;
    while !sub.got["h:ahead"].iter().any(|(_, id)| id == "next") {
        assert!(Instant::now() < deadline, "`next` never arrived");
        if let Some(frame) = sub.client.try_recv(Duration::from_millis(200)).await {
            assert!(sub.apply(frame).is_none());
        }
    }
    assert_ne!(sub.positions["h:ahead"].epoch, before.epoch, "a new epoch");
    assert!(!sub.flagged.is_empty(), "members are told with $gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishers_on_one_node_give_every_member_the_same_whole_stream() {
    let _serial = serial();
    let cluster = Cluster::start_pack(2, &pack("history"), &[]).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut members = Vec::new();
    for (i, node) in [n1, n2, n1, n2].into_iter().enumerate() {
        let mut m = Tracked::connect(node, &format!("m{i}")).await;
        m.join("h:busy").await;
        members.push(m);
    }
    // 40 publishers on one node, each firing 25 messages without waiting: their
    // placements race each other to Redis and to this node's members.
    let mut publishers = Vec::new();
    for _ in 0..40 {
        publishers.push(n1.connect().await);
    }
    let sends = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut client)| async move {
            for i in 0..25 {
                client
                    .emit("say", say("h:busy", &format!("p{p}-{i}")))
                    .await;
            }
            client.sync().await;
        });
    futures_util::future::join_all(sends).await;

    let mut streams: Vec<Vec<String>> = Vec::new();
    for m in &mut members {
        m.catch_up(&BTreeMap::from([("h:busy".to_string(), 1000)]), WAIT)
            .await;
        streams.push(m.got["h:busy"].iter().map(|(_, id)| id.clone()).collect());
        let ids: Vec<&str> = m.got["h:busy"].iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids.len(), 1000, "every message once");
        for p in 0..40 {
            let own: Vec<usize> = ids
                .iter()
                .filter_map(|id| id.strip_prefix(&format!("p{p}-")))
                .map(|n| n.parse().expect("number"))
                .collect();
            assert_eq!(own, (0..25).collect::<Vec<_>>(), "p{p}'s messages in order");
        }
    }
    // One stream: the same message at every offset, on either node.
    assert!(
        streams.iter().all(|s| *s == streams[0]),
        "members disagree on which message is at which offset"
    );
}
