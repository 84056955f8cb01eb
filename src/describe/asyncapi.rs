//! The AsyncAPI 3.0 document of a pack (`wss-engine asyncapi DIR`), written from the
//! point of view of a client: `send` operations are the events a client may send (each
//! with its payload schema and its reply, the ack), `receive` operations the events it
//! may be delivered, and the protocol's own `$` events beside them. One channel: the
//! WebSocket at `/ws`.
//!
//! Client events are exact: their schemas are the pack's, with `$ref`s inlined
//! ([`EventDef::schema_json`](crate::config::EventDef::schema_json)). What is delivered
//! is read from the pack as far as it tells: an event with `to:` delivers its payload as
//! the script leaves it, and scripts `emit` events whose names are string literals; the
//! payloads and replies scripts build are inferred from their source by
//! [`shapes`](super::shapes), best effort (`{}` where the source does not tell). Events
//! a script emits under a computed name cannot be listed; the document's description
//! says which scripts do that.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::shapes::{any_of, ScriptShapes};
use crate::config::{Pack, TargetSpec};

/// The protocol's error codes an ack can carry for any client event (docs/protocol.md,
/// "Error codes"); scripts add their own with `reject`.
const EVENT_ERROR_CODES: &[&str] = &[
    "bad_frame",
    "too_large",
    "unknown_event",
    "invalid_payload",
    "unauthorized",
    "rate_limited",
    "script_error",
    "conflict",
    "unavailable",
];

const CHANNEL: &str = "ws";

/// Where a delivered event comes from, for its description and payload.
struct Delivery {
    source: String,
    payload: Value,
}

/// The document of `pack`, titled `title` (the pack's directory name, usually).
pub fn document(pack: &Pack, title: &str) -> Value {
    let mut messages = Map::new();
    let mut operations = Map::new();
    let mut delivered: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    let mut unknown_emitters = Vec::new();

    for event in pack.events.values() {
        let input = event.schema_json.clone().unwrap_or_else(|| json!({}));
        let shapes = event
            .script
            .as_ref()
            .map(|s| ScriptShapes::read(&s.ast, Some(&input)));
        let reply = shapes
            .as_ref()
            .map_or_else(|| json!({ "type": "null" }), ScriptShapes::reply);
        let codes = shapes
            .as_ref()
            .map_or_else(|| Some(BTreeSet::new()), |s| s.reject_codes.clone());
        send_operation(
            &mut messages,
            &mut operations,
            &event.name,
            event.description.as_deref(),
            input.clone(),
            reply,
            error_codes(codes, EVENT_ERROR_CODES),
        );
        if !matches!(event.to, TargetSpec::None) {
            let payload = match &shapes {
                Some(s) => s.delivered(&input),
                None => input.clone(),
            };
            delivered
                .entry(event.emit_as.clone())
                .or_default()
                .push(Delivery {
                    source: format!("`{}` (to `{}`)", event.name, event.to),
                    payload,
                });
        }
        if let Some(s) = &shapes {
            note_emits(s, &event.name, &mut delivered, &mut unknown_emitters);
        }
    }
    for hook in [&pack.hooks.on_connect, &pack.hooks.on_disconnect]
        .into_iter()
        .flatten()
    {
        if let Some(script) = &hook.script {
            let s = ScriptShapes::read(&script.ast, None);
            note_emits(&s, &hook.name, &mut delivered, &mut unknown_emitters);
        }
    }
    for (name, deliveries) in &delivered {
        receive_operation(&mut messages, &mut operations, name, deliveries);
    }
    system_events(&mut messages, &mut operations);

    let mut description = String::from(
        "The events of this pack as a client sees them: `send` operations are what a \
         client may send (payload: the frame `{event, data, id}`, reply: the ack), \
         `receive` operations what it may be delivered (`{event, data, room?, offset?}`), \
         and the `$` events are the protocol's own. Payloads of client events are the \
         pack's schemas; what scripts deliver, emit and reply is inferred from their \
         source, best effort (`{}`: not known).",
    );
    if !unknown_emitters.is_empty() {
        description.push_str(&format!(
            " The scripts of {} also emit events under names computed at run time, not listed here.",
            unknown_emitters.join(", ")
        ));
    }
    if !pack.rooms.is_empty() {
        let rooms: Vec<String> = pack
            .rooms
            .iter()
            .map(|r| format!("`{}` (last {})", r.pattern, r.history.size))
            .collect();
        description.push_str(&format!(
            " Rooms with history (deliveries carry `room` and `offset`, sessions resume): {}.",
            rooms.join(", ")
        ));
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            // The pack's fingerprint: two documents of the same pack have the same version.
            "version": pack.fingerprint.chars().take(12).collect::<String>(),
            "description": description,
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "WebSocket",
                "description": "JSON text frames over one WebSocket. A token, when the server \
                                checks them, goes in `?token=` or `Authorization: Bearer`.",
                "messages": messages,
                "bindings": { "ws": { "method": "GET", "bindingVersion": "0.1.0" } },
            }
        },
        "operations": operations,
    })
}

fn note_emits(
    shapes: &ScriptShapes,
    owner: &str,
    delivered: &mut BTreeMap<String, Vec<Delivery>>,
    unknown: &mut Vec<String>,
) {
    for (name, payload) in &shapes.emits {
        delivered.entry(name.clone()).or_default().push(Delivery {
            source: format!("`emit` in the script of `{owner}`"),
            payload: payload.clone(),
        });
    }
    if shapes.unknown_emits {
        unknown.push(format!("`{owner}`"));
    }
}

/// The codes an ack's error may carry: the protocol's and, when every `reject` of the
/// script names a literal code, those; `None` (any string) when one does not.
fn error_codes(script: Option<BTreeSet<String>>, protocol: &[&str]) -> Value {
    match script {
        Some(codes) => {
            let mut all: Vec<String> = protocol.iter().map(|c| c.to_string()).collect();
            all.extend(
                codes
                    .into_iter()
                    .filter(|c| !protocol.contains(&c.as_str())),
            );
            json!({ "type": "string", "enum": all })
        }
        None => json!({
            "type": "string",
            "description": format!("one of {} or a code the script computes", protocol.join(", ")),
        }),
    }
}

fn message_ref(id: &str) -> Value {
    json!({ "$ref": format!("#/channels/{CHANNEL}/messages/{}", pointer_escape(id)) })
}

fn channel_ref() -> Value {
    json!({ "$ref": format!("#/channels/{CHANNEL}") })
}

/// A JSON Pointer token: `~` → `~0`, `/` → `~1`.
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The answer to an event with an `id`: `{"ack", "ok", <field>}`, where `ok` says which
/// of the two answers it is and `field` (`data` or `error`) carries the rest.
fn ack_message(name: String, summary: String, (field, ok, schema): (&str, bool, Value)) -> Value {
    json!({
        "name": name,
        "summary": summary,
        "payload": {
            "type": "object",
            "required": ["ack", "ok", field],
            "properties": {
                "ack": id_schema(),
                "ok": { "const": ok },
                field: schema,
            },
            "additionalProperties": false,
        },
        "correlationId": { "location": "$message.payload#/ack" },
    })
}

fn id_schema() -> Value {
    json!({
        "type": ["string", "number"],
        "description": "Chosen by the client; the ack carries it back. Without it, no ack (errors come as `$error`).",
    })
}

#[allow(clippy::too_many_arguments)]
fn send_operation(
    messages: &mut Map<String, Value>,
    operations: &mut Map<String, Value>,
    name: &str,
    description: Option<&str>,
    data: Value,
    reply: Value,
    codes: Value,
) {
    let (send_id, ok_id, error_id) = (
        format!("send.{name}"),
        format!("ack.{name}"),
        format!("error.{name}"),
    );
    let mut message = json!({
        "name": name,
        "title": name,
        "payload": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": { "const": name },
                "data": data,
                "id": id_schema(),
            },
            "additionalProperties": false,
        },
        "correlationId": { "location": "$message.payload#/id" },
    });
    if let Some(d) = description {
        message["summary"] = json!(d.trim());
    }
    messages.insert(send_id.clone(), message);
    messages.insert(
        ok_id.clone(),
        ack_message(
            format!("{name} ack"),
            format!("`{name}` was handled: `data` is the script's reply (`null` without one)."),
            ("data", true, reply),
        ),
    );
    messages.insert(
        error_id.clone(),
        ack_message(
            format!("{name} error"),
            format!("`{name}` failed: nothing was written or delivered."),
            ("error", false, error_schema(codes)),
        ),
    );
    let mut operation = json!({
        "action": "send",
        "channel": channel_ref(),
        "title": format!("Send {name}"),
        "messages": [message_ref(&send_id)],
        "reply": {
            "channel": channel_ref(),
            "messages": [message_ref(&ok_id), message_ref(&error_id)],
        },
    });
    if let Some(d) = description {
        operation["summary"] = json!(d.trim());
    }
    operations.insert(send_id, operation);
}

fn error_schema(codes: Value) -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": codes,
            "message": { "type": "string" },
            "details": {
                "type": "array",
                "description": "With `invalid_payload`: one entry per schema violation.",
                "items": {
                    "type": "object",
                    "required": ["path", "message"],
                    "properties": {
                        "path": { "type": "string", "description": "JSON Pointer into `data`." },
                        "message": { "type": "string" },
                    },
                },
            },
        },
    })
}

fn receive_operation(
    messages: &mut Map<String, Value>,
    operations: &mut Map<String, Value>,
    name: &str,
    deliveries: &[Delivery],
) {
    let id = format!("receive.{name}");
    let sources: Vec<&str> = deliveries.iter().map(|d| d.source.as_str()).collect();
    let summary = format!("Delivered by {}.", sources.join("; "));
    let data = any_of(deliveries.iter().map(|d| d.payload.clone()).collect());
    messages.insert(
        id.clone(),
        json!({
            "name": name,
            "title": name,
            "summary": summary,
            "payload": delivery_payload(name, data),
        }),
    );
    operations.insert(
        id.clone(),
        json!({
            "action": "receive",
            "channel": channel_ref(),
            "title": format!("Receive {name}"),
            "summary": summary,
            "messages": [message_ref(&id)],
        }),
    );
}

fn delivery_payload(name: &str, data: Value) -> Value {
    json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": { "const": name },
            "data": data,
            "room": { "type": "string", "description": "For a delivery to a room with history." },
            "offset": { "type": "integer", "minimum": 1, "description": "The delivery's position in the room's stream." },
        },
        "additionalProperties": false,
    })
}

/// `$welcome`, `$error`, `$joined`, `$left`, `$gap` (received) and `$resume` (sent).
fn system_events(messages: &mut Map<String, Value>, operations: &mut Map<String, Value>) {
    let string = json!({ "type": "string" });
    let position = json!({
        "room": string,
        "epoch": { "type": "string", "description": "Only for rooms with history." },
        "offset": { "type": "integer", "minimum": 0, "description": "Only for rooms with history." },
    });
    let received = [
        (
            "$welcome",
            "The first frame of every connection.",
            json!({
                "type": "object",
                "required": ["conn", "node", "session", "resume_ttl"],
                "properties": {
                    "conn": string, "node": string,
                    "session": { "type": "string", "description": "Give it to `$resume` on a later connection." },
                    "resume_ttl": { "type": "integer", "description": "Seconds the session stays resumable after the connection ends." },
                },
            }),
        ),
        (
            "$error",
            "An error about a frame that had no `id`.",
            json!({
                "type": "object",
                "required": ["code", "message"],
                "properties": { "code": string, "message": string },
            }),
        ),
        (
            "$joined",
            "The connection joined a room (before the ack of the event that caused it).",
            json!({ "type": "object", "required": ["room"], "properties": position }),
        ),
        (
            "$left",
            "The connection left a room (before the ack of the event that caused it).",
            json!({ "type": "object", "required": ["room"], "properties": { "room": string } }),
        ),
        (
            "$gap",
            "Deliveries to the room were lost and cannot be recovered; the stream goes on from `offset`.",
            json!({ "type": "object", "required": ["room"], "properties": position }),
        ),
    ];
    for (name, summary, data) in received {
        let id = format!("receive.{name}");
        messages.insert(
            id.clone(),
            json!({ "name": name, "title": name, "summary": summary, "payload": delivery_payload(name, data) }),
        );
        operations.insert(
            id.clone(),
            json!({
                "action": "receive",
                "channel": channel_ref(),
                "title": format!("Receive {name}"),
                "summary": summary,
                "messages": [message_ref(&id)],
            }),
        );
    }
    let resume = json!({
        "type": "object",
        "required": ["session", "rooms"],
        "properties": {
            "session": { "type": "string", "description": "From an earlier connection's `$welcome`." },
            "rooms": {
                "type": "object",
                "description": "The position held in each room.",
                "additionalProperties": {
                    "type": "object",
                    "properties": { "epoch": string, "offset": { "type": "integer", "minimum": 0 } },
                },
            },
        },
    });
    let reply = json!({
        "type": "object",
        "required": ["rooms"],
        "properties": {
            "rooms": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["recovered"],
                    "properties": {
                        "recovered": { "type": "boolean", "description": "Every missed delivery was replayed, in order." },
                        "replayed": { "type": "integer", "minimum": 0 },
                    },
                },
            },
        },
    });
    send_operation(
        messages,
        operations,
        "$resume",
        Some("Resume a session: the first frame of a new connection, to get back its rooms and what was missed."),
        resume,
        reply,
        json!({
            "type": "string",
            "enum": ["session_expired", "unauthorized", "invalid_payload", "bad_frame", "unavailable"],
        }),
    );
}

/// The document as YAML: block style, every string double-quoted (JSON's escapes are
/// YAML's), so what a YAML reader gets back is exactly the JSON document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(&mut out, value, 0);
    out
}

fn write_yaml(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&format!("{pad}{}:", Value::String(k.clone())));
                write_yaml_child(out, v, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                out.push_str(&format!("{pad}-"));
                write_yaml_child(out, v, indent);
            }
        }
        scalar => out.push_str(&format!("{pad}{scalar}\n")),
    }
}

fn write_yaml_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_yaml(out, value, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_yaml(out, value, indent + 2);
        }
        scalar => out.push_str(&format!(" {scalar}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_same_json() {
        let value = json!({
            "a": { "b": [1, "two: x", { "c": null, "d": [] }, [true, 2.5]], "e": {} },
            "quote\"d": "line\nbreak #",
            "$ref": "#/x",
        });
        let yaml = to_yaml(&value);
        let back = crate::config::yaml::parse(&yaml)
            .expect("valid YAML")
            .expect("not empty")
            .to_json();
        assert_eq!(back, value, "{yaml}");
    }

    #[test]
    fn error_codes_list_the_scripts_literal_codes() {
        let codes = error_codes(
            Some(BTreeSet::from(["not_member".to_string()])),
            &["conflict"],
        );
        assert_eq!(codes["enum"], json!(["conflict", "not_member"]));
        assert!(error_codes(None, &["conflict"]).get("enum").is_none());
    }
}
