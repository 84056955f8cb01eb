//! The wire formats: Pub/Sub messages between nodes, and state values as Redis holds
//! them (every element JSON text, so what a script stores comes back as it went in).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use redis::Value as RedisValue;
use serde_json::Value;

use crate::backend::{BackendError, StoredValue, Versioned};
use crate::delivery::{
    ConnId, Ending, Envelope, HistoryEntry, HistoryRead, Position, StreamPosition, Target,
};

/// A message is `origin \n exclude \n target \n epoch \n offset \n frame`: the
/// origin node drops its own echo (it already delivered locally), `exclude` is the
/// sender when `exclude_sender`, `epoch` and `offset` place a delivery to a room with
/// history in its stream (both empty otherwise). The part up to the epoch is the
/// [`header`]; the stream script appends the rest for deliveries it places.
pub(super) fn header(origin: &str, envelope: &Envelope) -> String {
    let exclude = envelope.exclude.as_deref().unwrap_or("");
    format!("{origin}\n{exclude}\n{}\n", envelope.target)
}

pub(super) fn encode_message(origin: &str, envelope: &Envelope) -> Vec<u8> {
    let header = header(origin, envelope);
    let mut out = Vec::with_capacity(header.len() + envelope.frame.len() + 24);
    out.extend_from_slice(header.as_bytes());
    if let Position::At(at) = &envelope.position {
        out.extend_from_slice(at.epoch.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(at.offset.to_string().as_bytes());
        out.push(b'\n');
    } else {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(&envelope.frame);
    out
}

/// A control message to one node: end one of its connections, for a reason. The
/// target field names both: `take-over:<conn>` (its session was resumed elsewhere; the
/// form nodes have always sent), `disconnect:<conn>` (a backend asked for it).
pub(super) fn encode_end(origin: &str, conn: &str, why: Ending) -> Vec<u8> {
    format!("{origin}\n\n{}{conn}\n\n\n", end_prefix(why)).into_bytes()
}

/// The control prefix of each reason to end a connection sent between nodes. A slow
/// consumer is decided by the node that holds it; it never travels.
fn end_prefix(why: Ending) -> &'static str {
    match why {
        Ending::TakenOver | Ending::SlowConsumer => "take-over:",
        Ending::Disconnected => "disconnect:",
    }
}

const ENDINGS: [Ending; 2] = [Ending::TakenOver, Ending::Disconnected];

/// What one Pub/Sub message says.
pub(super) enum Message<'a> {
    Deliver(Envelope),
    /// End this node's connection, for this reason.
    End(&'a str, Ending),
}

/// `(origin, message)`, or `None` for a message this version cannot read.
pub(super) fn decode_message(payload: &[u8]) -> Option<(&str, Message<'_>)> {
    let mut parts = payload.splitn(6, |b| *b == b'\n');
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let exclude = std::str::from_utf8(parts.next()?).ok()?;
    let target = std::str::from_utf8(parts.next()?).ok()?;
    for why in ENDINGS {
        if let Some(conn) = target.strip_prefix(end_prefix(why)) {
            return Some((origin, Message::End(conn, why)));
        }
    }
    let target = Target::parse_resolved(target)?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?;
    let position = if offset.is_empty() {
        Position::None
    } else {
        Position::At(StreamPosition::new(Arc::from(epoch), offset.parse().ok()?))
    };
    let frame = Bytes::copy_from_slice(parts.next()?);
    Some((
        origin,
        Message::Deliver(Envelope {
            target,
            exclude: (!exclude.is_empty()).then(|| ConnId::from(exclude)),
            frame,
            position,
        }),
    ))
}

/// A history read as `history.lua` returns it.
pub(super) fn parse_history(reply: RedisValue) -> Result<HistoryRead, BackendError> {
    let bad = || BackendError::Protocol("unexpected reply to a history read".into());
    let RedisValue::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let epoch = items.next().and_then(text).ok_or_else(bad)?;
    let head = items.next().and_then(int).ok_or_else(bad)?;
    let complete = items.next().and_then(int).ok_or_else(bad)? == 1;
    let mut entries = Vec::new();
    while let (Some(offset), Some(frame)) = (items.next(), items.next()) {
        let offset = int(offset).ok_or_else(bad)?;
        let RedisValue::BulkString(frame) = frame else {
            return Err(bad());
        };
        entries.push(HistoryEntry {
            offset,
            frame: Bytes::from(frame),
        });
    }
    Ok(HistoryRead {
        head: StreamPosition::new(Arc::from(epoch), head),
        entries,
        complete,
    })
}

/// `{ epoch, offset }` as the stream script returns it.
pub(super) fn parse_placed(reply: RedisValue) -> Result<StreamPosition, BackendError> {
    let bad = || BackendError::Protocol("unexpected reply placing a delivery".into());
    let RedisValue::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let epoch = items.next().and_then(text).ok_or_else(bad)?;
    let offset = items.next().and_then(int).ok_or_else(bad)?;
    Ok(StreamPosition::new(Arc::from(epoch), offset))
}

fn int(v: RedisValue) -> Option<u64> {
    match v {
        RedisValue::Int(i) => u64::try_from(i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// One key as the read script returns it: `[version, type, items]`.
pub(super) fn parse_read(key: &str, item: RedisValue) -> Result<Versioned, BackendError> {
    let bad = || BackendError::Protocol(format!("unexpected reply reading `{key}`"));
    let RedisValue::Array(mut parts) = item else {
        return Err(bad());
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    let data = parts.pop().ok_or_else(bad)?;
    let kind = text(parts.pop().ok_or_else(bad)?).ok_or_else(bad)?;
    let version = text(parts.pop().ok_or_else(bad)?)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let RedisValue::Array(items) = data else {
        return Err(bad());
    };
    let items: Vec<String> = items.into_iter().filter_map(text).collect();
    let value = match kind.as_str() {
        "none" => None,
        "string" => items
            .into_iter()
            .next()
            .map(|s| StoredValue::Json(parse_json(&s))),
        "hash" => {
            let mut map = BTreeMap::new();
            let mut it = items.into_iter();
            while let (Some(field), Some(value)) = (it.next(), it.next()) {
                map.insert(field, parse_json(&value));
            }
            Some(StoredValue::Hash(map))
        }
        "set" => Some(StoredValue::Set(items.into_iter().collect::<BTreeSet<_>>())),
        "list" => Some(StoredValue::List(
            items.iter().map(|s| parse_json(s)).collect::<VecDeque<_>>(),
        )),
        other => {
            return Err(BackendError::WrongType {
                key: key.to_string(),
                expected: if other.is_empty() {
                    "readable"
                } else {
                    "a string, hash, set or list"
                },
            })
        }
    };
    Ok(Versioned { version, value })
}

pub(super) fn text(v: RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => String::from_utf8(b).ok(),
        RedisValue::SimpleString(s) => Some(s),
        RedisValue::Okay => Some("OK".into()),
        RedisValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Values are JSON text; anything else (set by hand with redis-cli) reads as a string.
pub(super) fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub(super) fn encode_value(value: Option<&StoredValue>) -> (&'static str, Vec<String>) {
    match value {
        None => ("del", Vec::new()),
        Some(StoredValue::Json(v)) => ("json", vec![v.to_string()]),
        Some(StoredValue::Hash(h)) => (
            "hash",
            h.iter()
                .flat_map(|(k, v)| [k.clone(), v.to_string()])
                .collect(),
        ),
        Some(StoredValue::Set(s)) => ("set", s.iter().cloned().collect()),
        Some(StoredValue::List(l)) => ("list", l.iter().map(Value::to_string).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &[u8]) -> (String, Envelope) {
        match decode_message(payload) {
            Some((origin, Message::Deliver(envelope))) => (origin.to_string(), envelope),
            _ => panic!("not a delivery: {}", String::from_utf8_lossy(payload)),
        }
    }

    #[test]
    fn messages_round_trip() {
        let mut envelope = Envelope::plain(
            Target::Room("lobby".into()),
            Some(ConnId::from("n1-1")),
            Bytes::from_static(b"{\"event\":\"x\",\"data\":\"a\\nb\"}"),
        );
        let (origin, decoded) = decode(&encode_message("n1", &envelope));
        assert_eq!(origin, "n1");
        assert_eq!(decoded.target, envelope.target);
        assert_eq!(decoded.exclude, envelope.exclude);
        assert_eq!(decoded.frame, envelope.frame);
        assert_eq!(decoded.position, Position::None);

        envelope.position = Position::At(StreamPosition::new(Arc::from("e1"), 42));
        let (_, decoded) = decode(&encode_message("n1", &envelope));
        assert_eq!(decoded.position, envelope.position);
        assert_eq!(decoded.frame, envelope.frame);
    }

    #[test]
    fn endings_name_the_connection_and_the_reason() {
        let encoded = encode_end("n1", "n2-7", Ending::TakenOver);
        // What every node has always sent for a resume, so mixed fleets agree.
        assert_eq!(encoded, b"n1\n\ntake-over:n2-7\n\n\n");
        assert!(matches!(
            decode_message(&encoded),
            Some(("n1", Message::End("n2-7", Ending::TakenOver)))
        ));
        assert!(matches!(
            decode_message(&encode_end("n1", "n2-8", Ending::Disconnected)),
            Some(("n1", Message::End("n2-8", Ending::Disconnected)))
        ));
    }
}
