//! The checker: reads an operation history (see `history`) and lists every way the run
//! broke the delivery guarantees (docs/protocol.md, "Delivery guarantees") or the
//! cluster model (docs/operations/cluster.md, "How the cluster works"): each violation is
//! one line naming the client, node, room or op and the time, so a failed run can be read from the history file without a debugger.
//!
//! What it proves:
//!
//! - **State changes**: per counter client, every acked increment is in the applied log
//!   exactly once, no increment that failed (`ok: false`) was applied, none was applied
//!   twice or without being sent, and the counter equals the log's length; so the
//!   counter lies between the acked increments and those plus the ones whose outcome is
//!   unknown (timed out, connection lost).
//! - **Room streams**: per subscriber and room, offsets follow one another from its
//!   `$joined`; a break is allowed only where the server announced it (`$gap`, a resume's
//!   `recovered: false`, a new session). An offset at or below the last one is a
//!   duplicate, one above the next a hole. Every offset carries one message id for
//!   every client, and matches the room's history read at the end.
//! - **Room messages**: every acked `say` is in its room's history exactly once, no
//!   failed one is, nothing in it was never sent; every subscriber reached the head.
//! - **Readiness**: while a node cannot reach Redis (its packets dropped, Redis down)
//!   `/readyz` is not 200 once the detection delay has passed; after every fault each
//!   node is ready again within the recovery bound, by itself.
//! - **Processes**: a node started again only after a `kill` fault of that node; no
//!   node died any other way; every node was ready at the end; RSS stayed below the bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

mod nodes;
use nodes::{check_processes, check_readiness};

/// The bounds a run is judged by (written into the history's `run` line).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a node whose packets to Redis are dropped (no RST, no FIN) may still say
    /// ready: its health ping times out after 1 s and the Pub/Sub ping runs every 3 s
    /// with a 2 s timeout, so up to ~6 s (`cluster_redis_stall`), plus slack for a
    /// debug build on a shared 2-core machine.
    pub drop_detect_ms: u64,
    /// The same while Redis is down (connections refused: noticed at once, or at the
    /// next health check).
    pub redis_detect_ms: u64,
    /// How long after a fault ends every node must be ready again.
    pub recover_ms: u64,
    /// Highest RSS a node may reach, in KiB.
    pub rss_bound_kb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            drop_detect_ms: 8_000,
            redis_detect_ms: 5_000,
            recover_ms: 30_000,
            rss_bound_kb: 512 * 1024,
        }
    }
}

impl Limits {
    pub fn from_run_line(run: &Value) -> Self {
        let d = Self::default();
        let l = &run["limits"];
        let get = |k: &str, default: u64| l[k].as_u64().unwrap_or(default);
        Self {
            drop_detect_ms: get("drop_detect_ms", d.drop_detect_ms),
            redis_detect_ms: get("redis_detect_ms", d.redis_detect_ms),
            recover_ms: get("recover_ms", d.recover_ms),
            rss_bound_kb: get("rss_bound_kb", d.rss_bound_kb),
        }
    }
}

/// What the checker found: the violations (empty: the run passed) and counts.
#[derive(Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    pub stats: BTreeMap<String, u64>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn bump(&mut self, what: &str, by: u64) {
        *self.stats.entry(what.to_string()).or_default() += by;
    }

    fn fail(&mut self, message: String) {
        self.violations.push(message);
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn t(e: &Value) -> u64 {
    e["t"].as_u64().unwrap_or(0)
}

pub fn check(events: &[Value], limits: &Limits) -> Verdict {
    let mut v = Verdict::default();
    for e in events {
        match s(&e["kind"]) {
            "fault" if e["phase"] == "start" => v.bump(&format!("faults.{}", s(&e["fault"])), 1),
            "delivery" => v.bump("deliveries", 1),
            "resume" if e["ok"] == true => {
                v.bump("resumes.ok", 1);
                for r in e["rooms"].as_object().into_iter().flat_map(|m| m.values()) {
                    let which = if r["recovered"] == true {
                        "recovered"
                    } else {
                        "not_recovered"
                    };
                    v.bump(&format!("resumes.rooms_{which}"), 1);
                }
            }
            "resume" => v.bump("resumes.failed", 1),
            "gap" => v.bump("gaps", 1),
            "failover" if e["master"] == true => v.bump("failovers_taken_over", 1),
            "session" => v.bump("sessions_reset", 1),
            "op" => v.bump(&format!("ops.{}.{}", s(&e["op"]), s(&e["phase"])), 1),
            _ => {}
        }
    }
    check_counters(events, &mut v);
    let positions = check_streams(events, &mut v);
    check_rooms(events, &positions, &mut v);
    check_readiness(events, limits, &mut v);
    check_processes(events, limits, &mut v);
    v
}

/// What one op became, from its client's lines.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Pending,
    Acked,
    Failed,
    Unknown,
}

/// Every op of kind `op`: id → (client, room, outcome, invoke time).
fn outcomes<'a>(
    events: &'a [Value],
    op: &str,
) -> BTreeMap<&'a str, (&'a str, &'a str, Outcome, u64)> {
    let mut ops = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "op" && e["op"] == op) {
        let id = s(&e["id"]);
        match s(&e["phase"]) {
            "invoke" => {
                ops.insert(
                    id,
                    (
                        s(&e["client"]),
                        e["room"].as_str().unwrap_or(""),
                        Outcome::Pending,
                        t(e),
                    ),
                );
            }
            phase => {
                if let Some(entry) = ops.get_mut(id) {
                    entry.2 = match phase {
                        "ack" => Outcome::Acked,
                        "fail" => Outcome::Failed,
                        _ => Outcome::Unknown,
                    };
                }
            }
        }
    }
    ops
}

/// When each failed op of kind `op` was answered, and with which code.
fn failures<'a>(events: &'a [Value], op: &str) -> HashMap<&'a str, (u64, &'a str)> {
    events
        .iter()
        .filter(|e| e["kind"] == "op" && e["op"] == op && e["phase"] == "fail")
        .map(|e| (s(&e["id"]), (t(e), s(&e["code"]))))
        .collect()
}

/// A failed op that was applied. Only `unavailable` may be, and only at the moment it
/// failed: Redis ran it and the connection broke before the reply came (Redis killed
/// right after, a reply lost just before the commit's deadline), which the node cannot
/// tell from "never arrived", so its outcome is unknown. Applied after an op that was
/// sent once its failure had been answered, it ran late (from a stalled server's
/// socket buffer, or retransmitted after a partition): the client was told it failed
/// long before it took effect. `after` is such an op applied before it, if any.
fn judge_applied_failure(
    what: &str,
    id: &str,
    (failed_at, code): (u64, &str),
    after: Option<(&str, u64)>,
    v: &mut Verdict,
) -> bool {
    if code != "unavailable" {
        v.fail(format!(
            "{what}: {id} was answered `{code}` at {failed_at} ms, yet applied"
        ));
        return false;
    }
    if let Some((other, sent)) = after {
        v.fail(format!(
            "{what}: {id} was answered `unavailable` at {failed_at} ms, yet applied after {other}, sent at {sent} ms"
        ));
        return false;
    }
    v.bump("ops.unavailable_but_applied", 1);
    true
}

fn check_counters(events: &[Value], v: &mut Verdict) {
    let failed = failures(events, "incr");
    let ops = outcomes(events, "incr");
    let mut clients: BTreeSet<&str> = ops.values().map(|o| o.0).collect();
    let finals: HashMap<&str, &Value> = events
        .iter()
        .filter(|e| e["kind"] == "final_counter")
        .map(|e| (s(&e["client"]), e))
        .collect();
    clients.extend(finals.keys().copied());
    for client in clients {
        let mine: Vec<(&str, Outcome)> = ops
            .iter()
            .filter(|(_, o)| o.0 == client)
            .map(|(id, o)| (*id, o.2))
            .collect();
        let acked = mine.iter().filter(|o| o.1 == Outcome::Acked).count() as u64;
        let unknown = mine
            .iter()
            .filter(|o| matches!(o.1, Outcome::Unknown | Outcome::Pending))
            .count() as u64;
        let Some(fin) = finals.get(client) else {
            v.fail(format!(
                "counter {client}: never read at the end ({acked} acked increments)"
            ));
            continue;
        };
        let n = fin["n"].as_u64().unwrap_or(0);
        let log: Vec<&str> = fin["log"]
            .as_array()
            .map_or(Vec::new(), |l| l.iter().map(s).collect());
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for id in &log {
            *seen.entry(id).or_default() += 1;
        }
        // Failed increments applied at the moment they failed: unknown, not wrong.
        let mut excused = 0;
        for (i, id) in log.iter().enumerate() {
            let Some(&(failed_at, code)) = failed.get(id) else {
                continue;
            };
            let after = log[..i]
                .iter()
                .filter_map(|other| Some((*other, ops.get(other)?.3)))
                .find(|(_, sent)| *sent > failed_at);
            let what = format!("counter {client}");
            if judge_applied_failure(&what, id, (failed_at, code), after, v) {
                excused += 1;
            }
        }
        for (id, times) in &seen {
            if *times > 1 {
                v.fail(format!(
                    "counter {client}: increment {id} applied {times} times"
                ));
            }
            if !ops.contains_key(id) {
                v.fail(format!(
                    "counter {client}: increment {id} applied but never sent"
                ));
            }
        }
        for (id, outcome) in &mine {
            if *outcome == Outcome::Acked && !seen.contains_key(id) {
                v.fail(format!("counter {client}: acked increment {id} is lost"));
            }
        }
        if n != log.len() as u64 {
            v.fail(format!(
                "counter {client}: counter is {n} but {} increments were applied",
                log.len()
            ));
        }
        if n < acked || n > acked + unknown + excused {
            v.fail(format!(
                "counter {client}: counter is {n}, outside [{acked} acked, {} acked + unknown]",
                acked + unknown + excused
            ));
        }
        v.bump("counters.applied", n);
    }
}

/// Each client's last position per room: client → room → (epoch, offset).
type Positions = BTreeMap<String, BTreeMap<String, (String, u64)>>;

fn check_streams(events: &[Value], v: &mut Verdict) -> Positions {
    let mut positions: Positions = BTreeMap::new();
    // Rooms a resume reported recovered, whose `$joined` is still to come.
    let mut pending: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // (room, epoch, offset) → (message id, first client to get it).
    let mut at: HashMap<(String, String, u64), (String, String)> = HashMap::new();
    for e in events {
        let kind = s(&e["kind"]);
        if !matches!(kind, "session" | "resume" | "joined" | "delivery" | "gap") {
            continue;
        }
        let client = s(&e["client"]).to_string();
        let time = t(e);
        let mine = positions.entry(client.clone()).or_default();
        let waiting = pending.entry(client.clone()).or_default();
        match kind {
            "session" => {
                mine.clear();
                waiting.clear();
            }
            "resume" if e["ok"] == true => {
                // A room the report leaves out was not restored: the client knows.
                let report = &e["rooms"];
                mine.retain(|room, _| report.get(room).is_some());
                waiting.clear();
                for (room, r) in report.as_object().into_iter().flatten() {
                    if r["recovered"] == true {
                        waiting.insert(room.clone());
                    } else {
                        mine.remove(room);
                        waiting.remove(room);
                    }
                }
            }
            "resume" => {}
            "joined" => {
                let room = s(&e["room"]).to_string();
                let now = (
                    s(&e["epoch"]).to_string(),
                    e["offset"].as_u64().unwrap_or(0),
                );
                let was_pending = waiting.remove(&room);
                if let Some(before) = mine.get(&room) {
                    if *before != now {
                        let why = if was_pending {
                            "a resume reported recovered, yet $joined moved"
                        } else {
                            "$joined moved without a resume saying recovered: false"
                        };
                        v.fail(format!(
                            "{client} {room} at {time} ms: {why} from {}/{} to {}/{}",
                            before.0, before.1, now.0, now.1
                        ));
                    }
                } else if was_pending {
                    v.fail(format!(
                        "{client} {room} at {time} ms: a resume reported recovered a room it had no position in"
                    ));
                }
                mine.insert(room, now);
            }
            "gap" => {
                let room = s(&e["room"]).to_string();
                mine.insert(
                    room,
                    (
                        s(&e["epoch"]).to_string(),
                        e["offset"].as_u64().unwrap_or(0),
                    ),
                );
            }
            "delivery" => {
                let room = s(&e["room"]).to_string();
                let offset = e["offset"].as_u64().unwrap_or(0);
                let id = s(&e["id"]).to_string();
                let Some((epoch, last)) = mine.get(&room).cloned() else {
                    v.fail(format!(
                        "{client} {room} at {time} ms: delivery {offset} ({id}) before any $joined"
                    ));
                    continue;
                };
                if offset <= last {
                    v.fail(format!(
                        "{client} {room} at {time} ms: duplicate delivery: offset {offset} ({id}) after {last}"
                    ));
                } else if offset > last + 1 {
                    v.fail(format!(
                        "{client} {room} at {time} ms: hole: offsets {}..={} never delivered (got {offset} after {last}), no $gap or recovered: false",
                        last + 1,
                        offset - 1
                    ));
                }
                match at.get(&(room.clone(), epoch.clone(), offset)) {
                    Some((other, who)) if *other != id => v.fail(format!(
                        "{client} {room} at {time} ms: offset {offset} of epoch {epoch} is {id} here, {other} for {who}"
                    )),
                    Some(_) => {}
                    None => {
                        at.insert((room.clone(), epoch.clone(), offset), (id, client.clone()));
                    }
                }
                if offset > last {
                    mine.insert(room, (epoch, offset));
                }
            }
            _ => {}
        }
    }
    positions
}

fn check_rooms(events: &[Value], positions: &Positions, v: &mut Verdict) {
    let ops = outcomes(events, "say");
    let failed = failures(events, "say");
    let mut in_history: HashMap<&str, usize> = HashMap::new();
    let mut complete_rooms = BTreeSet::new();
    for h in events.iter().filter(|e| e["kind"] == "final_history") {
        let room = s(&h["room"]);
        let epoch = s(&h["epoch"]);
        let head = h["head"].as_u64().unwrap_or(0);
        let entries: Vec<(u64, &str)> = h["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pair| (pair[0].as_u64().unwrap_or(0), s(&pair[1])))
            .collect();
        if h["complete"] == true {
            complete_rooms.insert(room);
            if entries.first().is_some_and(|(o, _)| *o != 1) {
                v.fail(format!(
                    "room {room}: complete history starts at {}",
                    entries[0].0
                ));
            }
        }
        for pair in entries.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                v.fail(format!(
                    "room {room}: history skips from {} to {}",
                    pair[0].0, pair[1].0
                ));
            }
        }
        if entries.last().is_some_and(|(o, _)| *o != head) {
            v.fail(format!(
                "room {room}: history ends at {:?}, head is {head}",
                entries.last()
            ));
        }
        for (i, (offset, id)) in entries.iter().enumerate() {
            *in_history.entry(id).or_default() += 1;
            if let Some(&(failed_at, code)) = failed.get(id) {
                let after = entries[..i]
                    .iter()
                    .filter_map(|(_, other)| Some((*other, ops.get(other)?.3)))
                    .find(|(_, sent)| *sent > failed_at);
                let what = format!("room {room} offset {offset}");
                judge_applied_failure(&what, id, (failed_at, code), after, v);
            }
            match ops.get(id) {
                None => v.fail(format!(
                    "room {room}: offset {offset} holds {id}, never sent"
                )),
                Some((_, sent_to, _, _)) if *sent_to != room => v.fail(format!(
                    "room {room}: offset {offset} holds {id}, sent to {sent_to}"
                )),
                _ => {}
            }
        }
        v.bump("history.entries", entries.len() as u64);
        // Every subscriber reached the head, and got what history holds.
        for (client, rooms) in positions {
            match rooms.get(room) {
                Some((e, o)) if e == epoch && *o == head => {}
                Some((e, o)) => v.fail(format!(
                    "{client} {room}: ended at {e}/{o}, the room is at {epoch}/{head}"
                )),
                None => v.fail(format!("{client} {room}: no position at the end")),
            }
        }
    }
    let by_offset: HashMap<(&str, &str, u64), &str> = events
        .iter()
        .filter(|e| e["kind"] == "final_history")
        .flat_map(|h| {
            let room = s(&h["room"]);
            let epoch = s(&h["epoch"]);
            h["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |p| ((room, epoch, p[0].as_u64().unwrap_or(0)), s(&p[1])))
        })
        .collect();
    // A delivery of the final epoch must be what history holds at its offset.
    let mut epoch_of: HashMap<(&str, &str), String> = HashMap::new();
    for e in events {
        match s(&e["kind"]) {
            "joined" | "gap" => {
                epoch_of.insert((s(&e["client"]), s(&e["room"])), s(&e["epoch"]).to_string());
            }
            "delivery" => {
                let (client, room) = (s(&e["client"]), s(&e["room"]));
                let Some(epoch) = epoch_of.get(&(client, room)) else {
                    continue;
                };
                let offset = e["offset"].as_u64().unwrap_or(0);
                if let Some(id) = by_offset.get(&(room, epoch.as_str(), offset)) {
                    if *id != s(&e["id"]) {
                        v.fail(format!(
                            "{client} {room}: got {} at offset {offset}, history holds {id}",
                            s(&e["id"])
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    for (id, (client, room, outcome, sent)) in &ops {
        let times = in_history.get(id).copied().unwrap_or(0);
        if times > 1 {
            v.fail(format!(
                "room {room}: message {id} of {client} is in history {times} times"
            ));
        }
        if *outcome == Outcome::Acked && times == 0 && complete_rooms.contains(room) {
            v.fail(format!(
                "room {room}: acked message {id} of {client} (sent at {sent} ms) is lost"
            ));
        }
    }
}

#[cfg(test)]
mod tests;
