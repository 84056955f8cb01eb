//! `$resume`: a new connection takes over the rooms of a session whose connection
//! dropped, and gets, per room with history, every delivery it missed.
//!
//! ```text
//! {"event": "$resume", "data": {"session": "…", "rooms": {"lobby": {"epoch": "…", "offset": 41}}}, "id": "r1"}
//! ```
//!
//! The session must exist (live, or closed within the resume TTL) and belong to the
//! same user (an anonymous one resumes only anonymously). Its old connection, if it
//! still looks open (a phone that switched networks), is ended with 4000 wherever it
//! is. Then each of its rooms is joined (announced by `$joined`, no script runs) and,
//! for a room with history whose epoch matches the client's, the deliveries after the
//! client's offset are replayed before the live ones, exactly once and in order: the
//! new member's place in the stream is set under the same lock that orders live
//! deliveries, after a history read that covers everything up to there. A room that
//! cannot be replayed whole (history trimmed or expired, more than the replay limit, a
//! new epoch) is joined at its current position and reported `recovered: false`:
//! never a partial replay.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Conn, Detail, Engine, ErrorCode, Failure, Outcome};
use crate::delivery::{
    Activated, ConnId, Ending, HistoryEntry, HistoryPolicy, RoomChange, RoomKind, StreamPosition,
};

/// The event name of a resume request.
pub(super) const RESUME: &str = "$resume";
/// Most rooms one resume request may describe.
const MAX_ROOMS: usize = 1_000;
/// How many reads a replay may take to catch up with live deliveries that keep
/// overtaking it (each reads only what the previous ones did not reach).
const REPLAY_ATTEMPTS: usize = 16;

/// A parsed `$resume` payload: the session, and where the client says it is in each
/// room (`None` for a room without history).
#[derive(Debug)]
struct Request {
    session: String,
    rooms: BTreeMap<String, Option<StreamPosition>>,
}

/// What became of one room.
enum Restored {
    Recovered { replayed: usize },
    NotRecovered,
}

/// What became of every room of a resumed session.
struct Resumed {
    rooms: BTreeMap<String, Restored>,
}

impl Resumed {
    fn all_recovered(&self) -> bool {
        self.rooms
            .values()
            .all(|r| matches!(r, Restored::Recovered { .. }))
    }

    /// The ack's `data`: `{"rooms": {room: {"recovered": …, "replayed"?: …}}}`.
    fn report(&self) -> Value {
        let rooms: Map<String, Value> = self
            .rooms
            .iter()
            .map(|(room, restored)| {
                let entry = match restored {
                    Restored::Recovered { replayed } => {
                        json!({ "recovered": true, "replayed": replayed })
                    }
                    Restored::NotRecovered => json!({ "recovered": false }),
                };
                (room.clone(), entry)
            })
            .collect();
        json!({ "rooms": rooms })
    }
}

impl Engine {
    pub(super) async fn resume(self: &Arc<Self>, conn: &mut Conn, data: Value) -> Outcome {
        let outcome = self.resume_inner(conn, data).await;
        let label = match &outcome {
            Ok(resumed) if resumed.all_recovered() => "recovered",
            Ok(_) => "partial",
            Err(f) => match f.code {
                ErrorCode::SessionExpired => "expired",
                ErrorCode::Unauthorized => "refused",
                ErrorCode::InvalidPayload | ErrorCode::BadFrame => "invalid",
                _ => "failed",
            },
        };
        metrics::counter!("wss_resumes_total", "outcome" => label).increment(1);
        outcome.map(|resumed| Some(resumed.report()))
    }

    async fn resume_inner(
        self: &Arc<Self>,
        conn: &mut Conn,
        data: Value,
    ) -> Result<Resumed, Failure> {
        if !conn.may_resume {
            return Err(Failure::new(
                ErrorCode::BadFrame,
                "`$resume` is accepted only before a connection's first other event",
            ));
        }
        let request = parse(&data)?;
        let Some(session) = self.backend.sessions.session(&request.session).await? else {
            return Err(Failure::new(
                ErrorCode::SessionExpired,
                "unknown or expired session: join your rooms again",
            ));
        };
        if session.user.as_deref() != conn.caller.user.as_deref() {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                "the session belongs to another user",
            ));
        }
        let me = conn.caller.id.clone();
        if session.conn != *me {
            // The old connection may still look open (a phone that switched networks):
            // end it wherever it is. Best effort: a node that is gone ends it anyway.
            if let Err(e) = self
                .backend
                .bus
                .end_conn(&session.conn, Ending::TakenOver)
                .await
            {
                tracing::info!(conn = %me, old = %session.conn, error = %e, "could not reach the resumed session's old connection");
            }
        }
        let mut rooms = BTreeMap::new();
        for room in session.rooms.iter().take(MAX_ROOMS) {
            let claim = request.rooms.get(room).cloned().flatten();
            let restored = self.restore(&me, room, claim).await?;
            if let Restored::Recovered { replayed } = restored {
                metrics::counter!("wss_replayed_total").increment(replayed as u64);
            }
            rooms.insert(room.clone(), restored);
            self.backend.presence.join(room, &me).await?;
        }
        conn.may_resume = false;
        tracing::debug!(conn = %me, old = %session.conn, rooms = rooms.len(), "session resumed");
        Ok(Resumed { rooms })
    }

    /// Join one room of the session; for a room with history, replay what the client
    /// missed since `claim`, or place it at the room's position.
    async fn restore(
        &self,
        conn: &ConnId,
        room: &str,
        claim: Option<StreamPosition>,
    ) -> Result<Restored, Failure> {
        let policy = self.pack.load().rooms.history_for(room);
        let change = self.router.join(conn, room, RoomKind::of(policy.as_ref()));
        if change == RoomChange::Unchanged {
            // Already joined (its `$connect` hook put it there): its `$joined` stands.
            return Ok(Restored::NotRecovered);
        }
        let first = matches!(change, RoomChange::FirstLocal(_));
        if let Err(failure) = self.watch_and_start(room, first, policy.as_ref()).await {
            self.exit(conn, room);
            return Err(failure);
        }
        let Some(policy) = policy else {
            return Ok(Restored::NotRecovered);
        };
        if let Some(claim) = claim {
            if let Some(replayed) = self.replay(conn, room, &policy, &claim).await? {
                return Ok(Restored::Recovered { replayed });
            }
        }
        match self.router.activate(conn, room, None) {
            Activated::At { .. } | Activated::Plain => Ok(Restored::NotRecovered),
            other => {
                self.exit(conn, room);
                Err(Failure::new(
                    ErrorCode::Unavailable,
                    format!("could not rejoin `{room}`: {other:?}"),
                ))
            }
        }
    }

    /// Place `conn` at the client's offset with everything since replayed; `None` when
    /// that cannot be done whole.
    ///
    /// Live deliveries keep moving the stream while history is read, so each attempt
    /// reads only the tail the previous reads did not reach: a busy room converges in a
    /// few short reads instead of racing one long read against every new delivery.
    async fn replay(
        &self,
        conn: &ConnId,
        room: &str,
        policy: &HistoryPolicy,
        claim: &StreamPosition,
    ) -> Result<Option<usize>, Failure> {
        let mut replay: Vec<HistoryEntry> = Vec::new();
        // `replay` holds every delivery in (claim.offset, covered], in order.
        let mut covered = claim.offset;
        for _ in 0..REPLAY_ATTEMPTS {
            let Some(head) = self.router.stream_position(room) else {
                return Ok(None);
            };
            if head.epoch != claim.epoch {
                return Ok(None);
            }
            let last = head.offset;
            if claim.offset > last {
                // The client saw more than this node did: it is on its way here, or the
                // room lost it (then the read moves the room to a new epoch).
                let read = self
                    .backend
                    .history
                    .history(room, policy, Some(&claim.epoch), claim.offset, 0)
                    .await?;
                if read.head.epoch != claim.epoch {
                    return Ok(None);
                }
            }
            if last.saturating_sub(claim.offset) > self.sessions.max_replay as u64 {
                return Ok(None);
            }
            if last > covered {
                let read = self
                    .backend
                    .history
                    .history(
                        room,
                        policy,
                        Some(&claim.epoch),
                        covered,
                        self.sessions.max_replay - replay.len(),
                    )
                    .await?;
                if read.head.epoch != claim.epoch || !read.complete {
                    return Ok(None);
                }
                for entry in read.entries {
                    if entry.offset == covered + 1 {
                        covered = entry.offset;
                        replay.push(entry);
                    }
                }
            }
            match self
                .router
                .activate(conn, room, Some((claim.offset, &replay)))
            {
                Activated::Replayed { replayed, .. } => return Ok(Some(replayed)),
                // Live deliveries moved the stream past what was read: read the rest.
                Activated::NeedsHistory { .. } => continue,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// Check and read a `$resume` payload; every problem becomes a detail.
fn parse(data: &Value) -> Result<Request, Failure> {
    let mut details = Vec::new();
    let mut detail = |path: &str, message: &str| {
        details.push(Detail {
            path: path.to_string(),
            message: message.to_string(),
        })
    };
    let Some(object) = data.as_object() else {
        detail("", "`$resume` data is an object with `session` and `rooms`");
        return Err(invalid(details));
    };
    for key in object.keys() {
        if key != "session" && key != "rooms" {
            detail(
                &format!("/{key}"),
                "unknown field: `$resume` takes `session` and `rooms`",
            );
        }
    }
    let session = match object.get("session") {
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            s.clone()
        }
        Some(_) => {
            detail(
                "/session",
                "`session` is the session id from `$welcome` (letters and digits)",
            );
            String::new()
        }
        None => {
            detail("", "`session` is required");
            String::new()
        }
    };
    let mut rooms = BTreeMap::new();
    match object.get("rooms") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) if map.len() <= MAX_ROOMS => {
            for (room, position) in map {
                let path = format!("/rooms/{}", room.replace('~', "~0").replace('/', "~1"));
                rooms.insert(room.clone(), claim(position, &path, &mut detail));
            }
        }
        Some(Value::Object(_)) => {
            detail("/rooms", &format!("at most {MAX_ROOMS} rooms"));
        }
        Some(_) => detail("/rooms", "`rooms` maps room names to `{epoch, offset}`"),
    }
    if !details.is_empty() {
        return Err(invalid(details));
    }
    Ok(Request { session, rooms })
}

/// One room's `{epoch, offset}`; `{}` (a room without history) is no claim.
fn claim(
    position: &Value,
    path: &str,
    detail: &mut impl FnMut(&str, &str),
) -> Option<StreamPosition> {
    let Some(map) = position.as_object() else {
        detail(path, "a room's position is `{epoch, offset}`, or `{}`");
        return None;
    };
    match (map.get("epoch"), map.get("offset")) {
        (None, None) => None,
        (Some(Value::String(epoch)), Some(offset)) => match offset.as_u64() {
            Some(offset) if epoch.len() <= 64 => {
                Some(StreamPosition::new(Arc::from(epoch.as_str()), offset))
            }
            _ => {
                detail(
                    &format!("{path}/offset"),
                    "`offset` is a non-negative integer from `$joined` or a delivery",
                );
                None
            }
        },
        _ => {
            detail(
                path,
                "a room's position has both `epoch` (a string) and `offset`",
            );
            None
        }
    }
}

fn invalid(details: Vec<Detail>) -> Failure {
    let mut failure = Failure::new(ErrorCode::InvalidPayload, "malformed `$resume`");
    failure.details = details;
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_payloads_are_checked_field_by_field() {
        let ok = parse(&json!({
            "session": "ab12",
            "rooms": { "lobby": { "epoch": "e", "offset": 4 }, "plain": {} }
        }))
        .expect("valid");
        assert_eq!(ok.session, "ab12");
        assert_eq!(
            ok.rooms["lobby"],
            Some(StreamPosition::new(Arc::from("e"), 4))
        );
        assert_eq!(ok.rooms["plain"], None);

        let bad = parse(&json!({
            "session": 7,
            "rooms": { "a/b": { "epoch": "e", "offset": -1 }, "c": 3 },
            "extra": true
        }))
        .expect_err("invalid");
        assert_eq!(bad.code, ErrorCode::InvalidPayload);
        let paths: Vec<&str> = bad.details.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/extra", "/session", "/rooms/a~1b/offset", "/rooms/c"]
        );
        assert!(parse(&json!("x")).is_err());
        assert!(parse(&json!({})).is_err());
    }
}
