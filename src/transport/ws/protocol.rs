//! The JSON envelope of the client protocol: parsing inbound frames, rendering outbound.
//!
//! ```text
//! client → server  {"event": "chat.message", "data": {...}, "id": "c1"}
//! server → client  {"event": "chat.message", "data": {...}}
//! server → client  {"ack": "c1", "ok": true, "data": <reply or null>}
//! server → client  {"ack": "c1", "ok": false, "error": {"code", "message", "details"?}}
//! server → client  {"event": "$error", "data": {"code", "message"}}
//! server → client  {"event": "$welcome", "data": {"conn", "node", "session", "resume_ttl"}}
//! ```

use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::engine::{ErrorCode, Failure, Outcome};

/// A parsed client frame.
#[derive(Debug)]
pub struct Request {
    pub id: Option<Value>,
    pub event: String,
    pub data: Value,
}

/// A frame that could not become a request: its id (if readable) and why.
pub type Rejected = Box<(Option<Value>, Failure)>;

fn rejected(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Rejected {
    Box::new((id, Failure::new(code, message)))
}

/// Parse a text frame. On failure the id (if one could be read) comes back with it, so
/// the error can be an ack rather than a `$error`.
pub fn parse(text: &str) -> Result<Request, Rejected> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        rejected(
            None,
            ErrorCode::BadJson,
            format!("frame is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(rejected(
            None,
            ErrorCode::BadFrame,
            "a frame is a JSON object with `event` and `data`",
        ));
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Err(rejected(
                None,
                ErrorCode::BadFrame,
                "`id` must be a string or a number",
            ))
        }
    };
    let event = match map.remove("event") {
        Some(Value::String(event)) => event,
        Some(_) => {
            return Err(rejected(
                id,
                ErrorCode::BadFrame,
                "`event` must be a string",
            ))
        }
        None => return Err(rejected(id, ErrorCode::BadFrame, "frame has no `event`")),
    };
    let data = map.remove("data").unwrap_or(Value::Null);
    Ok(Request { id, event, data })
}

/// Only the `id` of a frame, skipping everything else (for frames too large to handle).
pub fn read_id(text: &str) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    match serde_json::from_str::<IdOnly>(text).ok()?.id? {
        id @ (Value::String(_) | Value::Number(_)) => Some(id),
        _ => None,
    }
}

#[derive(Serialize)]
struct Ack<'a> {
    ack: &'a Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Failure>,
}

#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    event: &'a str,
    data: T,
}

fn to_frame(value: &impl Serialize) -> Utf8Bytes {
    serde_json::to_string(value)
        .unwrap_or_else(|_| {
            r#"{"event":"$error","data":{"code":"bad_frame","message":"unserializable"}}"#.into()
        })
        .into()
}

/// The answer to a request: an ack when it had an id, a `$error` event when it failed
/// without one, nothing when it succeeded without one.
pub fn answer(id: Option<&Value>, outcome: &Outcome) -> Option<Utf8Bytes> {
    match (id, outcome) {
        (Some(id), Ok(reply)) => Some(to_frame(&Ack {
            ack: id,
            ok: true,
            data: Some(reply.as_ref().unwrap_or(&Value::Null)),
            error: None,
        })),
        (Some(id), Err(failure)) => Some(to_frame(&Ack {
            ack: id,
            ok: false,
            data: None,
            error: Some(failure),
        })),
        (None, Ok(_)) => None,
        (None, Err(failure)) => Some(error_event(failure)),
    }
}

pub fn error_event(failure: &Failure) -> Utf8Bytes {
    to_frame(&Event {
        event: "$error",
        data: failure,
    })
}

pub fn welcome(conn: &str, node: &str, session: &str, resume_ttl_secs: u64) -> Utf8Bytes {
    to_frame(&Event {
        event: "$welcome",
        data: serde_json::json!({
            "conn": conn,
            "node": node,
            "session": session,
            "resume_ttl": resume_ttl_secs,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_classifies_bad_frames() {
        assert_eq!(parse("{").unwrap_err().1.code, ErrorCode::BadJson);
        assert_eq!(parse("[1]").unwrap_err().1.code, ErrorCode::BadFrame);
        let (id, f) = *parse(r#"{"id":"x","data":1}"#).unwrap_err();
        assert_eq!((id, f.code), (Some(Value::from("x")), ErrorCode::BadFrame));
        let ok = parse(r#"{"event":"a","id":7}"#).unwrap();
        assert_eq!(
            (ok.event.as_str(), ok.data, ok.id),
            ("a", Value::Null, Some(Value::from(7)))
        );
    }

    #[test]
    fn acks_carry_null_data_without_reply() {
        let frame = answer(Some(&Value::from("c1")), &Ok(None)).unwrap();
        assert_eq!(frame.as_str(), r#"{"ack":"c1","ok":true,"data":null}"#);
        assert!(answer(None, &Ok(None)).is_none());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::proptest_support::{config, json, text};
    use proptest::prelude::*;
    use serde_json::json;

    fn id() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            text().prop_map(|s| Some(Value::from(s))),
            any::<i64>().prop_map(|n| Some(Value::from(n))),
            any::<u64>().prop_map(|n| Some(Value::from(n))),
            (-1e9f64..1e9).prop_map(|f| Some(Value::from(f))),
        ]
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any text: never a panic, and the failure says which kind.
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            if let Err(rejected) = parse(&text) {
                let code = rejected.1.code;
                prop_assert!(code == ErrorCode::BadJson || code == ErrorCode::BadFrame);
            }
            let _ = read_id(&text);
        }

        /// Any JSON value: an object with a string `event` (and an id, when present, a
        /// string or number) is a request; everything else a `bad_frame`.
        #[test]
        fn any_json_is_classified(value in json()) {
            let text = value.to_string();
            let valid = value.as_object().is_some_and(|o| {
                o.get("event").is_some_and(Value::is_string)
                    && o.get("id").is_none_or(|id| id.is_null() || id.is_string() || id.is_number())
            });
            match parse(&text) {
                Ok(request) => {
                    prop_assert!(valid, "accepted {}", text);
                    prop_assert_eq!(&Value::from(request.event), &value["event"]);
                }
                Err(rejected) => {
                    prop_assert!(!valid, "refused {}", text);
                    prop_assert_eq!(rejected.1.code, ErrorCode::BadFrame);
                }
            }
        }

        /// A valid envelope, in any key order and with unknown keys, parses to what it
        /// holds; `read_id` (the path for oversized frames) finds the same id; and an
        /// ack for it carries the id back unchanged.
        #[test]
        fn valid_envelopes_round_trip(event in text(), data in json(), id in id(),
                                      extra in json(), data_first in any::<bool>()) {
            let mut frame = serde_json::Map::new();
            if data_first {
                frame.insert("data".into(), data.clone());
                frame.insert("extra".into(), extra.clone());
            }
            frame.insert("event".into(), Value::from(event.clone()));
            if let Some(id) = &id {
                frame.insert("id".into(), id.clone());
            }
            if !data_first {
                frame.insert("extra".into(), extra.clone());
                frame.insert("data".into(), data.clone());
            }
            let text = Value::Object(frame).to_string();
            let request = parse(&text).expect("a valid envelope");
            prop_assert_eq!(&request.event, &event);
            prop_assert_eq!(&request.data, &data);
            prop_assert_eq!(&request.id, &id);
            prop_assert_eq!(read_id(&text), id.clone());
            if let Some(id) = &id {
                let ack = answer(Some(id), &Ok(Some(json!(1)))).expect("an ack");
                let ack: Value = serde_json::from_str(ack.as_str()).expect("JSON");
                prop_assert_eq!(&ack["ack"], id);
            }
        }
    }
}
