//! The checker: reads an operation history (see `history`) and lists every way the run
//! broke the delivery guarantees (README, "Delivery guarantees") or the cluster model
//! (DESIGN.md): each violation is one line naming the client, node, room or op and the
//! time, so a failed run can be read from the history file without a debugger.
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

/// `(start, end)` of each fault, with its node (`None`: every node).
fn fault_windows(events: &[Value]) -> Vec<(String, Option<String>, u64, u64)> {
    let end_of_run = events.iter().map(t).max().unwrap_or(0);
    let mut open: Vec<(String, Option<String>, u64)> = Vec::new();
    let mut windows = Vec::new();
    for e in events.iter().filter(|e| e["kind"] == "fault") {
        let fault = s(&e["fault"]).to_string();
        let node = e["node"].as_str().map(str::to_string);
        if e["phase"] == "start" {
            open.push((fault, node, t(e)));
        } else if let Some(i) = open.iter().position(|o| o.0 == fault && o.1 == node) {
            let (fault, node, start) = open.remove(i);
            windows.push((fault, node, start, t(e)));
        }
    }
    windows.extend(
        open.into_iter()
            .map(|(f, n, start)| (f, n, start, end_of_run)),
    );
    windows
}

fn check_readiness(events: &[Value], limits: &Limits, v: &mut Verdict) {
    let samples: Vec<(&str, u64, u64, Option<u64>)> = events
        .iter()
        .filter(|e| e["kind"] == "readyz")
        .map(|e| {
            (
                s(&e["node"]),
                e["sent"].as_u64().unwrap_or(t(e)),
                t(e),
                e["status"].as_u64(),
            )
        })
        .collect();
    let nodes: BTreeSet<&str> = samples.iter().map(|x| x.0).collect();
    for (fault, node, start, end) in fault_windows(events) {
        let detect = match fault.as_str() {
            "drop" => limits.drop_detect_ms,
            "redis_restart" => limits.redis_detect_ms,
            _ => u64::MAX,
        };
        if detect != u64::MAX {
            let from = start + detect;
            for target in nodes
                .iter()
                .filter(|n| node.as_deref().is_none_or(|x| x == **n))
            {
                let bad: Vec<u64> = samples
                    .iter()
                    .filter(|x| x.0 == *target && x.3 == Some(200) && x.1 >= from && x.2 <= end)
                    .map(|x| x.1)
                    .collect();
                // How long the node took to say so (the figure the delay is set by).
                let noticed = samples
                    .iter()
                    .find(|x| x.0 == *target && x.1 >= start && x.3 != Some(200))
                    .map(|x| x.2.saturating_sub(start));
                if let Some(ms) = noticed {
                    let key = format!("readyz.noticed_ms_max.{fault}");
                    let max = v.stats.entry(key).or_default();
                    *max = (*max).max(ms);
                }
                if let Some(first) = bad.first() {
                    v.fail(format!(
                        "{target}: /readyz 200 at {first} ms ({} samples) during {fault} {start}..{end} ms, past the {detect} ms detection delay",
                        bad.len()
                    ));
                }
            }
        }
        // Every node serves again, by itself, within the recovery bound.
        for target in &nodes {
            let back = samples
                .iter()
                .find(|x| x.0 == *target && x.1 >= end && x.3 == Some(200))
                .map(|x| x.2);
            let last_sample = samples
                .iter()
                .filter(|x| x.0 == *target)
                .map(|x| x.2)
                .max()
                .unwrap_or(0);
            if let Some(at) = back {
                let max = v
                    .stats
                    .entry(format!("readyz.ready_again_ms_max.{fault}"))
                    .or_default();
                *max = (*max).max(at - end);
            }
            match back {
                Some(at) if at - end <= limits.recover_ms => {}
                Some(at) => v.fail(format!(
                    "{target}: ready again {} ms after {fault} ended at {end} ms (bound {} ms)",
                    at - end,
                    limits.recover_ms
                )),
                None if last_sample > end + limits.recover_ms => v.fail(format!(
                    "{target}: never ready again after {fault} ended at {end} ms"
                )),
                None => {}
            }
        }
    }
}

fn check_processes(events: &[Value], limits: &Limits, v: &mut Verdict) {
    let mut killed: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut rss: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        let node = s(&e["node"]).to_string();
        match s(&e["kind"]) {
            "fault" if e["fault"] == "kill" && e["phase"] == "start" => {
                killed.insert(node);
            }
            "node_start" => {
                let first = started.insert(node.clone());
                let reason = s(&e["reason"]);
                if !(first && reason == "initial" || killed.remove(&node)) {
                    v.fail(format!(
                        "{node}: started again at {} ms ({reason}) without a kill fault",
                        t(e)
                    ));
                }
            }
            "node_exit" => v.fail(format!(
                "{node}: exited by itself at {} ms (pid {}, {})",
                t(e),
                e["pid"],
                s(&e["status"])
            )),
            "final_ready" if e["ready"] != true => {
                v.fail(format!("{node}: not ready at the end of the run"))
            }
            "rss" => {
                let kb = e["kb"].as_u64().unwrap_or(0);
                let max = rss.entry(s(&e["node"])).or_default();
                *max = (*max).max(kb);
            }
            _ => {}
        }
    }
    for (node, kb) in rss {
        v.bump(&format!("rss_max_kb.{node}"), kb);
        if kb > limits.rss_bound_kb {
            v.fail(format!(
                "{node}: RSS reached {kb} KiB, above the {} KiB bound",
                limits.rss_bound_kb
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small history that passes: one subscriber, one publisher, one counter, a drop
    /// fault the node noticed in time, and the final reads.
    fn clean() -> Vec<Value> {
        vec![
            json!({"t": 0, "kind": "node_start", "node": "n1", "pid": 10, "reason": "initial"}),
            json!({"t": 1, "kind": "readyz", "node": "n1", "status": 200}),
            json!({"t": 5, "kind": "joined", "client": "s1", "room": "h:0", "epoch": "E", "offset": 0}),
            json!({"t": 10, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-1"}),
            json!({"t": 11, "kind": "op", "op": "say", "phase": "ack", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-1"}),
            json!({"t": 12, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 1, "id": "p1-1"}),
            json!({"t": 20, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-1"}),
            json!({"t": 21, "kind": "op", "op": "incr", "phase": "ack", "client": "c1", "node": "n1", "id": "c1-1", "value": 1}),
            json!({"t": 22, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-2"}),
            json!({"t": 30, "kind": "op", "op": "incr", "phase": "unknown", "client": "c1", "node": "n1", "id": "c1-2"}),
            json!({"t": 1000, "kind": "fault", "fault": "drop", "node": "n1", "phase": "start"}),
            json!({"t": 3000, "kind": "readyz", "node": "n1", "sent": 2990, "status": 200}),
            json!({"t": 9500, "kind": "readyz", "node": "n1", "sent": 9400, "status": 503}),
            json!({"t": 21000, "kind": "fault", "fault": "drop", "node": "n1", "phase": "end"}),
            json!({"t": 22000, "kind": "readyz", "node": "n1", "status": 200}),
            json!({"t": 23000, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-2"}),
            json!({"t": 23001, "kind": "op", "op": "say", "phase": "ack", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-2"}),
            json!({"t": 23002, "kind": "resume", "client": "s1", "node": "n1", "ok": true, "rooms": {"h:0": {"recovered": true, "replayed": 1}}}),
            json!({"t": 23003, "kind": "joined", "client": "s1", "room": "h:0", "epoch": "E", "offset": 1}),
            json!({"t": 23004, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 2, "id": "p1-2"}),
            json!({"t": 23005, "kind": "rss", "node": "n1", "kb": 50000}),
            json!({"t": 24000, "kind": "final_history", "room": "h:0", "epoch": "E", "head": 2, "complete": true, "entries": [[1, "p1-1"], [2, "p1-2"]]}),
            // c1-2's outcome is unknown: applied or not, both pass.
            json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 2, "log": ["c1-1", "c1-2"]}),
            json!({"t": 24002, "kind": "final_ready", "node": "n1", "ready": true}),
        ]
    }

    fn verdict(events: &[Value]) -> Verdict {
        check(events, &Limits::default())
    }

    fn with(mut events: Vec<Value>, extra: Value) -> Vec<Value> {
        events.push(extra);
        events.sort_by_key(t);
        events
    }

    fn assert_caught(events: &[Value], needle: &str) {
        let v = verdict(events);
        assert!(
            v.violations.iter().any(|m| m.contains(needle)),
            "expected a violation containing {needle:?}, got {:?}",
            v.violations
        );
    }

    #[test]
    fn a_clean_history_passes() {
        let v = verdict(&clean());
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!(v.stats["deliveries"], 2);
        assert_eq!(v.stats["ops.incr.ack"], 1);
        assert_eq!(v.stats["faults.drop"], 1);
    }

    #[test]
    fn an_unknown_increment_may_also_be_missing() {
        let mut events = clean();
        let fin = events
            .iter_mut()
            .find(|e| e["kind"] == "final_counter")
            .unwrap();
        *fin =
            json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 1, "log": ["c1-1"]});
        let v = verdict(&events);
        assert!(v.passed(), "{:?}", v.violations);
    }

    #[test]
    fn catches_a_duplicate_delivery() {
        let events = with(
            clean(),
            json!({"t": 23010, "kind": "delivery", "client": "s1", "room": "h:0", "offset": 2, "id": "p1-2"}),
        );
        assert_caught(&events, "duplicate delivery: offset 2");
    }

    #[test]
    fn catches_a_hole() {
        // Offset 1 never arrives, and nothing announced it: the stream goes 0, 2.
        let mut events = clean();
        events.retain(|e| {
            !(e["kind"] == "delivery" && e["offset"] == 1)
                && e["kind"] != "resume"
                && !(e["kind"] == "joined" && e["offset"] == 1)
        });
        assert_caught(
            &events,
            "hole: offsets 1..=1 never delivered (got 2 after 0)",
        );
    }

    #[test]
    fn a_resume_not_recovered_allows_the_jump() {
        let mut events = clean();
        events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 1));
        for e in &mut events {
            if e["kind"] == "resume" {
                e["rooms"] = json!({"h:0": {"recovered": false}});
            }
        }
        assert!(verdict(&events).passed());
        // … and so does a `$gap`.
        let mut events = clean();
        events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 1));
        events.retain(|e| e["kind"] != "resume" && !(e["kind"] == "joined" && e["offset"] == 1));
        let events = with(
            events,
            json!({"t": 23003, "kind": "gap", "client": "s1", "room": "h:0", "epoch": "E", "offset": 1}),
        );
        let v = verdict(&events);
        assert!(v.passed(), "{:?}", v.violations);
    }

    #[test]
    fn catches_a_recovered_resume_that_jumps() {
        let mut events = clean();
        for e in &mut events {
            if e["kind"] == "joined" && e["offset"] == 1 {
                e["offset"] = json!(0);
            }
        }
        assert_caught(&events, "a resume reported recovered, yet $joined moved");
    }

    #[test]
    fn catches_a_lost_acked_increment() {
        let mut events = clean();
        let fin = events
            .iter_mut()
            .find(|e| e["kind"] == "final_counter")
            .unwrap();
        *fin =
            json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 1, "log": ["c1-2"]});
        // The count alone looks fine (c1-2 may have been applied); the log tells.
        assert_caught(&events, "acked increment c1-1 is lost");
        let fin = events
            .iter_mut()
            .find(|e| e["kind"] == "final_counter")
            .unwrap();
        *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 0, "log": []});
        assert_caught(
            &events,
            "counter is 0, outside [1 acked, 2 acked + unknown]",
        );
    }

    #[test]
    fn catches_an_increment_applied_twice_or_after_an_error() {
        let mut events = clean();
        let fin = events
            .iter_mut()
            .find(|e| e["kind"] == "final_counter")
            .unwrap();
        *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 3, "log": ["c1-1", "c1-1", "c1-2"]});
        assert_caught(&events, "increment c1-1 applied 2 times");
        assert_caught(&events, "counter is 3, outside");
        // A failure other than `unavailable` must have changed nothing.
        let mut events = clean();
        for e in &mut events {
            if e["id"] == "c1-2" && e["phase"] == "unknown" {
                e["phase"] = json!("fail");
                e["code"] = json!("conflict");
            }
        }
        assert_caught(
            &events,
            "counter c1: c1-2 was answered `conflict` at 30 ms, yet applied",
        );
        // `unavailable` may have been applied as it failed (Redis ran it, then the
        // connection broke before the reply) …
        for e in &mut events {
            if e["id"] == "c1-2" && e["phase"] == "fail" {
                e["code"] = json!("unavailable");
            }
        }
        let v = verdict(&events);
        assert!(v.passed(), "{:?}", v.violations);
        assert_eq!(v.stats["ops.unavailable_but_applied"], 1);
        // … but not after something sent once its failure was answered.
        let events = with(
            events,
            json!({"t": 40, "kind": "op", "op": "incr", "phase": "invoke", "client": "c1", "node": "n1", "id": "c1-3"}),
        );
        let mut events = with(
            events,
            json!({"t": 41, "kind": "op", "op": "incr", "phase": "ack", "client": "c1", "node": "n1", "id": "c1-3"}),
        );
        let fin = events
            .iter_mut()
            .find(|e| e["kind"] == "final_counter")
            .unwrap();
        *fin = json!({"t": 24001, "kind": "final_counter", "client": "c1", "n": 3, "log": ["c1-1", "c1-3", "c1-2"]});
        assert_caught(
            &events,
            "counter c1: c1-2 was answered `unavailable` at 30 ms, yet applied after c1-3, sent at 40 ms",
        );
    }

    #[test]
    fn catches_a_lost_acked_message() {
        let mut events = clean();
        let h = events
            .iter_mut()
            .find(|e| e["kind"] == "final_history")
            .unwrap();
        h["entries"] = json!([[1, "p1-1"], [2, "p1-9"]]);
        assert_caught(
            &events,
            "acked message p1-2 of p1 (sent at 23000 ms) is lost",
        );
        assert_caught(&events, "offset 2 holds p1-9, never sent");
        assert_caught(&events, "s1 h:0: got p1-2 at offset 2, history holds p1-9");
    }

    #[test]
    fn catches_a_message_published_after_its_failure() {
        // p1-9 failed with `unavailable` at 15 ms, and is in the stream after p1-2,
        // which was sent at 23000 ms: it ran late (the seed 1 finding).
        let mut events = clean();
        events.push(json!({"t": 14, "kind": "op", "op": "say", "phase": "invoke", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-9"}));
        events.push(json!({"t": 15, "kind": "op", "op": "say", "phase": "fail", "client": "p1", "node": "n1", "room": "h:0", "id": "p1-9", "code": "unavailable"}));
        events.sort_by_key(t);
        for e in &mut events {
            if e["kind"] == "final_history" {
                e["head"] = json!(3);
                e["entries"] = json!([[1, "p1-1"], [2, "p1-2"], [3, "p1-9"]]);
            }
        }
        assert_caught(
            &events,
            "room h:0 offset 3: p1-9 was answered `unavailable` at 15 ms, yet applied after p1-2, sent at 23000 ms",
        );
    }

    #[test]
    fn catches_a_subscriber_left_behind() {
        let mut events = clean();
        events.retain(|e| !(e["kind"] == "delivery" && e["offset"] == 2));
        assert_caught(&events, "s1 h:0: ended at E/1, the room is at E/2");
    }

    #[test]
    fn catches_readyz_true_during_an_outage() {
        let events = with(
            clean(),
            json!({"t": 12000, "kind": "readyz", "node": "n1", "sent": 11990, "status": 200}),
        );
        assert_caught(
            &events,
            "n1: /readyz 200 at 11990 ms (1 samples) during drop 1000..21000 ms",
        );
        // Within the detection delay it may still say ready (see `clean`); a Redis
        // restart concerns every node.
        let events = with(
            clean(),
            json!({"t": 30000, "kind": "fault", "fault": "redis_restart", "phase": "start"}),
        );
        let events = with(
            events,
            json!({"t": 36000, "kind": "readyz", "node": "n1", "status": 200}),
        );
        let events = with(
            events,
            json!({"t": 40000, "kind": "fault", "fault": "redis_restart", "phase": "end"}),
        );
        let events = with(
            events,
            json!({"t": 40500, "kind": "readyz", "node": "n1", "status": 200}),
        );
        assert_caught(&events, "during redis_restart 30000..40000 ms");
    }

    #[test]
    fn catches_a_node_that_does_not_recover() {
        let mut events = clean();
        events.retain(|e| !(e["kind"] == "readyz" && e["t"] == 22000));
        let events = with(
            events,
            json!({"t": 60000, "kind": "readyz", "node": "n1", "status": 503}),
        );
        assert_caught(
            &events,
            "n1: never ready again after drop ended at 21000 ms",
        );
    }

    #[test]
    fn catches_a_restart_by_hand_and_a_crash() {
        let events = with(
            clean(),
            json!({"t": 22500, "kind": "node_start", "node": "n1", "pid": 11, "reason": "after_kill"}),
        );
        assert_caught(
            &events,
            "n1: started again at 22500 ms (after_kill) without a kill fault",
        );
        let events = with(
            events,
            json!({"t": 22400, "kind": "fault", "fault": "kill", "node": "n1", "phase": "start"}),
        );
        assert!(
            verdict(&events).passed(),
            "{:?}",
            verdict(&events).violations
        );
        let events = with(
            clean(),
            json!({"t": 22500, "kind": "node_exit", "node": "n1", "pid": 10, "status": "signal: 6"}),
        );
        assert_caught(&events, "n1: exited by itself at 22500 ms");
    }

    #[test]
    fn catches_memory_above_the_bound() {
        let events = with(
            clean(),
            json!({"t": 23500, "kind": "rss", "node": "n1", "kb": 900_000}),
        );
        assert_caught(&events, "n1: RSS reached 900000 KiB");
    }
}
