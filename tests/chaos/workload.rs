//! The clients of a chaos run, each a task that never panics on what the system under
//! test does: every failure becomes a line of the history and the client carries on,
//! as a real client would.
//!
//! - **Subscribers** join every room, record each `$joined`, delivery and `$gap`, and
//!   keep their positions. When their node stops answering (a probe — an unknown event,
//!   answered without Redis — unanswered for 4 s) or their socket breaks, they move to
//!   the next node and `$resume` with their positions, as the client library does. The
//!   frames that arrive before the resume's ack are written only once it succeeded.
//! - **Publishers** send `say` to a random room, one at a time, each with an id.
//! - **Counters** send `incr` (their own counter), one at a time.
//!
//! An op's outcome is `ack` (`ok: true`), `fail` (`ok: false`: it must have changed
//! nothing) or `unknown` (no ack within the bound, or the socket broke first): then it
//! may or may not have been applied, and the client moves to another node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::history::Recorder;
use crate::support::client::client_config;

/// How long an op may wait for its ack before its outcome is unknown: past the engine's
/// own 2 s Redis timeout and a commit's retries.
const OP_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a subscriber's probe may go unanswered before it leaves the node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
/// The API key every node of a run accepts (the final history read).
pub const API_KEY: &str = "chaos-soak-history-reader";

/// Where a subscriber is: room → (epoch, last offset).
pub type Rooms = BTreeMap<String, (String, u64)>;

/// What the clients share with the run.
pub struct Shared {
    pub rec: Recorder,
    /// `ip:port` of each node (fixed: a restarted node comes back on the same address).
    pub nodes: Vec<String>,
    pub rooms: Vec<String>,
    /// Publishers and counters stop sending.
    pub stop_ops: AtomicBool,
    /// Subscribers stop.
    pub stop_all: AtomicBool,
    /// Each subscriber's positions, for the run's final catch-up wait.
    pub positions: Mutex<BTreeMap<String, Rooms>>,
    pub seed: u64,
}

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// One WebSocket connection to a node.
struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    node: usize,
    welcome: Value,
    next_id: u64,
}

impl Ws {
    async fn open(shared: &Shared, node: usize) -> Result<Ws, String> {
        let url = format!("ws://{}/ws", shared.nodes[node]);
        let (ws, _) = timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async_with_config(&url, Some(client_config()), false),
        )
        .await
        .map_err(|_| "upgrade timed out".to_string())?
        .map_err(|e| format!("upgrade: {e}"))?;
        let mut ws = Ws {
            ws,
            node,
            welcome: Value::Null,
            next_id: 0,
        };
        match ws
            .recv_until(Instant::now() + Duration::from_secs(3))
            .await?
        {
            Some(w) if w["event"] == "$welcome" => ws.welcome = w,
            other => return Err(format!("first frame not $welcome: {other:?}")),
        }
        Ok(ws)
    }

    fn session(&self) -> String {
        self.welcome["data"]["session"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn conn(&self) -> &str {
        self.welcome["data"]["conn"].as_str().unwrap_or("")
    }

    async fn send(&mut self, frame: Value) -> Result<(), String> {
        timeout(
            Duration::from_secs(3),
            self.ws.send(Message::text(frame.to_string())),
        )
        .await
        .map_err(|_| "send timed out".to_string())?
        .map_err(|e| format!("send: {e}"))
    }

    /// The next JSON frame; `Ok(None)` at the deadline, `Err` when the socket ended.
    async fn recv_until(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .map_err(|e| format!("bad JSON from the server: {e}"))
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("stream ended".into()),
            }
        }
    }

    /// Send `event` with a fresh id; the ack, or why there is none. Frames before the
    /// ack go to `aside`.
    async fn call(
        &mut self,
        event: &str,
        data: Value,
        within: Duration,
        aside: &mut Vec<Value>,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = json!(format!("q{}", self.next_id));
        self.send(json!({ "event": event, "data": data, "id": id }))
            .await?;
        let deadline = Instant::now() + within;
        loop {
            match self.recv_until(deadline).await? {
                None => return Err(format!("no ack within {within:?}")),
                Some(frame) if frame.get("ack") == Some(&id) => return Ok(frame),
                Some(frame) => aside.push(frame),
            }
        }
    }
}

fn code(ack: &Value) -> String {
    ack["error"]["code"].as_str().unwrap_or("?").to_string()
}

/// Connect to node `*node` or the ones after it, waiting between rounds; `None` once
/// `stop` is set.
async fn connect_somewhere(
    shared: &Shared,
    client: &str,
    node: &mut usize,
    stop: &AtomicBool,
) -> Option<Ws> {
    let mut pause = Duration::from_millis(100);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        match Ws::open(shared, *node).await {
            Ok(ws) => {
                shared.rec.record(
                    "connect",
                    json!({ "client": client, "node": node_name(*node), "conn": ws.conn() }),
                );
                return Some(ws);
            }
            Err(_) => {
                *node = (*node + 1) % shared.nodes.len();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A publisher (`say`) or a counter (`incr`): one op at a time until `stop_ops`.
pub async fn sender(shared: Arc<Shared>, op: &'static str, index: usize) {
    let prefix = if op == "say" { "p" } else { "c" };
    let client = format!("{prefix}{}", index + 1);
    let mut rng = StdRng::seed_from_u64(shared.seed ^ ((index as u64 + 1) << 32) ^ op.len() as u64);
    let mut node = index % shared.nodes.len();
    let mut seq = 0u64;
    let mut ws: Option<Ws> = None;
    while !shared.stop_ops.load(Ordering::Relaxed) {
        if ws.is_none() {
            ws = connect_somewhere(&shared, &client, &mut node, &shared.stop_ops).await;
        }
        let Some(conn) = ws.as_mut() else { break };
        seq += 1;
        let id = format!("{client}-{seq}");
        let (data, room) = if op == "say" {
            let room = shared.rooms[rng.random_range(0..shared.rooms.len())].clone();
            (json!({ "room": room, "id": id }), Some(room))
        } else {
            (json!({ "c": client, "op": id }), None)
        };
        let here = node_name(conn.node);
        let line = |phase: &str, extra: Value| {
            let mut v =
                json!({ "op": op, "phase": phase, "client": client, "node": here, "id": id });
            if let Some(room) = &room {
                v["room"] = json!(room);
            }
            if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
                v.extend(extra);
            }
            v
        };
        shared.rec.record("op", line("invoke", json!({})));
        match conn.call(op, data, OP_TIMEOUT, &mut Vec::new()).await {
            Ok(ack) if ack["ok"] == true => {
                shared
                    .rec
                    .record("op", line("ack", json!({ "value": ack["data"] })));
            }
            Ok(ack) => {
                shared
                    .rec
                    .record("op", line("fail", json!({ "code": code(&ack) })));
                // Redis is out of reach from this node: try another one.
                if code(&ack) == "unavailable" {
                    ws = None;
                    node = (node + 1) % shared.nodes.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Err(why) => {
                shared
                    .rec
                    .record("op", line("unknown", json!({ "why": why })));
                shared.rec.record(
                    "disconnect",
                    json!({ "client": client, "node": here, "why": why }),
                );
                ws = None;
                node = (node + 1) % shared.nodes.len();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(60..160))).await;
    }
}

/// A subscriber's view of its rooms, kept as the client library keeps it.
struct Subscriber {
    shared: Arc<Shared>,
    client: String,
    /// The session that holds the rooms (the last connection that joined or resumed).
    session: Option<String>,
    positions: Rooms,
    /// Rooms the session holds.
    joined: BTreeSet<String>,
}

impl Subscriber {
    /// Record one frame and move the positions; returns whether it was one of ours.
    fn apply(&mut self, frame: &Value) -> bool {
        let rec = &self.shared.rec;
        let room = frame["data"]["room"].as_str().unwrap_or("").to_string();
        match frame["event"].as_str() {
            Some("$joined") | Some("$gap") => {
                let epoch = frame["data"]["epoch"].as_str().unwrap_or("").to_string();
                let offset = frame["data"]["offset"].as_u64().unwrap_or(0);
                let kind = if frame["event"] == "$joined" {
                    "joined"
                } else {
                    "gap"
                };
                rec.record(kind, json!({ "client": self.client, "room": room, "epoch": epoch, "offset": offset }));
                self.positions.insert(room, (epoch, offset));
            }
            Some("say") => {
                let room = frame["room"].as_str().unwrap_or("").to_string();
                let offset = frame["offset"].as_u64().unwrap_or(0);
                let id = frame["data"]["id"].as_str().unwrap_or("");
                rec.record(
                    "delivery",
                    json!({ "client": self.client, "room": room, "offset": offset, "id": id }),
                );
                if let Some(p) = self.positions.get_mut(&room) {
                    p.1 = p.1.max(offset);
                }
            }
            _ => return false,
        }
        true
    }

    fn publish_positions(&self) {
        let mut all = self
            .shared
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.insert(self.client.clone(), self.positions.clone());
    }

    /// Resume (or start a session), join what is missing, then read until the node
    /// stalls, the socket breaks or the run stops. Returns why it ended.
    async fn serve(&mut self, ws: &mut Ws) -> String {
        let rec = self.shared.rec.clone();
        let here = node_name(ws.node);
        if let Some(session) = self.session.clone() {
            let rooms: serde_json::Map<String, Value> = self
                .positions
                .iter()
                .map(|(r, (e, o))| (r.clone(), json!({ "epoch": e, "offset": o })))
                .collect();
            let mut aside = Vec::new();
            let ack = ws
                .call(
                    "$resume",
                    json!({ "session": session, "rooms": rooms }),
                    OP_TIMEOUT,
                    &mut aside,
                )
                .await;
            match ack {
                Ok(ack) if ack["ok"] == true => {
                    let report = ack["data"]["rooms"].clone();
                    rec.record(
                        "resume",
                        json!({ "client": self.client, "node": here, "ok": true, "rooms": report }),
                    );
                    self.session = Some(ws.session());
                    self.joined.clear();
                    for (room, r) in report.as_object().into_iter().flatten() {
                        self.joined.insert(room.clone());
                        if r["recovered"] != true {
                            self.positions.remove(room);
                        }
                    }
                    // Rooms the report leaves out were not restored either.
                    self.positions.retain(|room, _| report.get(room).is_some());
                    for frame in &aside {
                        self.apply(frame);
                    }
                }
                Ok(ack) => {
                    let code = code(&ack);
                    rec.record("resume", json!({ "client": self.client, "node": here, "ok": false, "code": code, "discarded": aside.len() }));
                    if code != "session_expired" {
                        return format!("resume failed: {code}");
                    }
                    rec.record(
                        "session",
                        json!({ "client": self.client, "why": "session_expired" }),
                    );
                    self.session = None;
                    self.positions.clear();
                }
                Err(why) => {
                    rec.record("resume", json!({ "client": self.client, "node": here, "ok": false, "code": "no_ack", "why": why, "discarded": aside.len() }));
                    return why;
                }
            }
        }
        if self.session.is_none() {
            self.session = Some(ws.session());
            self.joined.clear();
        }
        for room in self.shared.rooms.clone() {
            if self.joined.contains(&room) {
                continue;
            }
            let mut aside = Vec::new();
            let ack = ws
                .call("join", json!({ "room": room }), OP_TIMEOUT, &mut aside)
                .await;
            for frame in &aside {
                self.apply(frame);
            }
            match ack {
                Ok(ack) if ack["ok"] == true => {
                    self.joined.insert(room);
                }
                Ok(ack) => return format!("join failed: {}", code(&ack)),
                Err(why) => return why,
            }
        }
        self.publish_positions();
        // Steady state: deliveries, and a probe a second.
        let mut probe: Option<(Value, Instant)> = None;
        let mut next_probe = Instant::now();
        loop {
            if self.shared.stop_all.load(Ordering::Relaxed) {
                return "run stopped".into();
            }
            let now = Instant::now();
            if let Some((_, sent)) = &probe {
                if now.duration_since(*sent) > PROBE_TIMEOUT {
                    return format!("probe unanswered for {PROBE_TIMEOUT:?}");
                }
            } else if now >= next_probe {
                ws.next_id += 1;
                let id = json!(format!("probe{}", ws.next_id));
                if let Err(e) = ws
                    .send(json!({ "event": "zz.probe", "data": null, "id": id }))
                    .await
                {
                    return e;
                }
                probe = Some((id, now));
                next_probe = now + Duration::from_secs(1);
            }
            match ws
                .recv_until(Instant::now() + Duration::from_millis(200))
                .await
            {
                Err(e) => return e,
                Ok(None) => {}
                Ok(Some(frame)) => {
                    if probe
                        .as_ref()
                        .is_some_and(|(id, _)| frame.get("ack") == Some(id))
                    {
                        probe = None;
                    } else if self.apply(&frame) {
                        self.publish_positions();
                    }
                }
            }
        }
    }
}

/// A subscriber: until `stop_all`, connected somewhere and in every room.
pub async fn subscriber(shared: Arc<Shared>, index: usize) {
    let client = format!("s{}", index + 1);
    let mut me = Subscriber {
        shared: shared.clone(),
        client: client.clone(),
        session: None,
        positions: BTreeMap::new(),
        joined: BTreeSet::new(),
    };
    let mut node = index % shared.nodes.len();
    while let Some(mut ws) = connect_somewhere(&shared, &client, &mut node, &shared.stop_all).await
    {
        let why = me.serve(&mut ws).await;
        shared.rec.record(
            "disconnect",
            json!({ "client": client, "node": node_name(ws.node), "why": why }),
        );
        if shared.stop_all.load(Ordering::Relaxed) {
            let _ = ws.ws.close(None).await;
            break;
        }
        // Drop the socket without a close (a client that lost its network) and go on
        // at the next node.
        drop(ws);
        node = (node + 1) % shared.nodes.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Read counter `c` through node `node` (the final read): `(n, log)`.
pub async fn read_counter(
    shared: &Shared,
    node: usize,
    c: &str,
) -> Result<(u64, Vec<String>), String> {
    let mut ws = Ws::open(shared, node).await?;
    let ack = ws
        .call("read", json!({ "c": c }), OP_TIMEOUT, &mut Vec::new())
        .await?;
    if ack["ok"] != true {
        return Err(format!("read {c}: {ack}"));
    }
    let n = ack["data"]["n"].as_u64().unwrap_or(0);
    let log = ack["data"]["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((n, log))
}

/// `GET path` with optional headers: `(status, body)`, `None` if no answer in `within`.
pub async fn http_get(
    addr: &str,
    path: &str,
    headers: &str,
    within: Duration,
) -> Option<(u16, String)> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    timeout(within, fetch).await.ok().flatten()
}

/// A room's whole history through the HTTP API: `(epoch, head, complete, [(offset, id)])`.
pub async fn read_history(
    addr: &str,
    room: &str,
) -> Result<(String, u64, bool, Vec<(u64, String)>), String> {
    let auth = format!("Authorization: Bearer {API_KEY}\r\n");
    let mut since = 0;
    let mut entries = Vec::new();
    let mut first: Option<(String, u64, bool)> = None;
    loop {
        let path = format!("/api/rooms/{room}/history?since={since}&limit=1000");
        let (status, body) = http_get(addr, &path, &auth, Duration::from_secs(10))
            .await
            .ok_or_else(|| format!("no answer to {path}"))?;
        if status != 200 {
            return Err(format!("{path}: {status} {body}"));
        }
        let page: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
        let data = &page["data"];
        let epoch = data["epoch"].as_str().unwrap_or("").to_string();
        let head = data["offset"].as_u64().unwrap_or(0);
        if first.is_none() {
            first = Some((epoch.clone(), head, data["complete"] == true));
        }
        let got = data["deliveries"].as_array().cloned().unwrap_or_default();
        for d in &got {
            let offset = d["offset"].as_u64().unwrap_or(0);
            entries.push((offset, d["data"]["id"].as_str().unwrap_or("").to_string()));
            since = offset;
        }
        let (e, h, c) = first.clone().expect("set above");
        if got.is_empty() || since >= h {
            if epoch != e {
                return Err(format!(
                    "room {room} changed epoch while its history was read"
                ));
            }
            return Ok((e, h, c, entries));
        }
    }
}
