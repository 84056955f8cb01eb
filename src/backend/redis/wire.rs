//! The wire formats: Pub/Sub messages between nodes, and state values as Redis holds
//! them (every element JSON text, so what a script stores comes back as it went in).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use redis::Value as RedisValue;
use serde_json::Value;

use crate::backend::{BackendError, StoredValue, Versioned};
use crate::delivery::{Envelope, Target};

/// A message is `origin \n exclude \n target \n frame`: the origin node drops its own
/// echo (it already delivered locally), `exclude` is the sender when `exclude_sender`.
pub(super) fn encode_message(origin: &str, envelope: &Envelope) -> Vec<u8> {
    let target = envelope.target.to_string();
    let exclude = envelope.exclude.as_deref().unwrap_or("");
    let mut out =
        Vec::with_capacity(origin.len() + exclude.len() + target.len() + envelope.frame.len() + 3);
    for part in [origin.as_bytes(), exclude.as_bytes(), target.as_bytes()] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out.extend_from_slice(&envelope.frame);
    out
}

/// `(origin, envelope)`, or `None` for a message this version cannot read.
pub(super) fn decode_message(payload: &[u8]) -> Option<(&str, Envelope)> {
    let mut parts = payload.splitn(4, |b| *b == b'\n');
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let exclude = std::str::from_utf8(parts.next()?).ok()?;
    let target = Target::parse_resolved(std::str::from_utf8(parts.next()?).ok()?)?;
    let frame = Bytes::copy_from_slice(parts.next()?);
    Some((
        origin,
        Envelope {
            target,
            exclude: (!exclude.is_empty()).then(|| Arc::from(exclude)),
            frame,
        },
    ))
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

    #[test]
    fn messages_round_trip() {
        let envelope = Envelope {
            target: Target::Room("lobby".into()),
            exclude: Some(Arc::from("n1-1")),
            frame: Bytes::from_static(b"{\"event\":\"x\",\"data\":\"a\\nb\"}"),
        };
        let encoded = encode_message("n1", &envelope);
        let (origin, decoded) = decode_message(&encoded).unwrap();
        assert_eq!(origin, "n1");
        assert_eq!(decoded.target, envelope.target);
        assert_eq!(decoded.exclude, envelope.exclude);
        assert_eq!(decoded.frame, envelope.frame);
    }
}
