//! `wss-engine asyncapi DIR`, run through the built binary: one send operation per
//! client event with its schema (references inlined) and its replies, one receive
//! operation per delivered name, the protocol's `$` events. (The documents of the
//! shipped packs are also validated with the AsyncAPI parser, in clients/js.)

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::cli::{run, CliRun};

fn asyncapi(dir: &Path, extra: &[&str]) -> CliRun {
    let mut args = vec!["asyncapi", dir.to_str().expect("a UTF-8 path")];
    args.extend_from_slice(extra);
    run(&args)
}

fn document(dir: &Path) -> Value {
    let out = asyncapi(dir, &[]);
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("JSON on stdout")
}

fn message<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["channels"]["ws"]["messages"]
        .get(id)
        .unwrap_or_else(|| panic!("no message {id}"))
}

/// Every `$ref` in `value`, with where it is.
fn refs(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(format!("{at}: {v}"));
                }
                refs(v, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_chat_example_has_an_operation_per_event_and_inlined_schemas() {
    let root = support::root();
    let doc = document(&root.join("examples/chat"));
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "chat");
    assert_eq!(doc["channels"]["ws"]["address"], "/ws");

    let mut ops: Vec<(String, String)> = doc["operations"]
        .as_object()
        .expect("operations")
        .iter()
        .map(|(k, v)| (k.clone(), v["action"].as_str().expect("action").to_string()))
        .collect();
    ops.sort();
    let expected: Vec<(String, String)> = [
        ("receive.$error", "receive"),
        ("receive.$gap", "receive"),
        ("receive.$joined", "receive"),
        ("receive.$left", "receive"),
        ("receive.$welcome", "receive"),
        ("receive.chat.joined", "receive"),
        ("receive.chat.left", "receive"),
        ("receive.chat.message", "receive"),
        ("receive.chat.typing", "receive"),
        ("send.$resume", "send"),
        ("send.chat.history", "send"),
        ("send.chat.join", "send"),
        ("send.chat.leave", "send"),
        ("send.chat.message", "send"),
        ("send.chat.typing", "send"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(ops, expected);

    // The only references left are the document's own (operations → channel messages):
    // every schema reference into the pack's files is inlined.
    let mut found = Vec::new();
    refs(&doc["channels"], "", &mut found);
    assert!(found.is_empty(), "references left in schemas: {found:#?}");

    // chat.message: schemas/message.json, whose `room` is schemas/room.json.
    let data = &message(&doc, "send.chat.message")["payload"]["properties"]["data"];
    assert_eq!(data["required"], json!(["room", "text"]));
    assert_eq!(data["properties"]["room"]["pattern"], "^[a-z0-9_-]{1,64}$");
    assert!(data.get("$schema").is_none(), "{data}");

    // Its reply: the script has no `reply`, so the ack's data is null; its errors list
    // the script's `reject` code beside the protocol's.
    let op = &doc["operations"]["send.chat.message"];
    assert_eq!(op["reply"]["messages"].as_array().map(Vec::len), Some(2));
    let ack = &message(&doc, "ack.chat.message")["payload"]["properties"];
    assert_eq!(ack["data"], json!({ "type": "null" }));
    assert_eq!(ack["ok"], json!({ "const": true }));
    let codes = &message(&doc, "error.chat.message")["payload"]["properties"]["error"]
        ["properties"]["code"]["enum"];
    for code in ["invalid_payload", "rate_limited", "not_member"] {
        assert!(codes.as_array().unwrap().contains(&json!(code)), "{codes}");
    }

    // Delivered as the script leaves it: the payload plus `from` and `user`.
    let delivered = &message(&doc, "receive.chat.message")["payload"]["properties"]["data"];
    assert_eq!(
        delivered["required"],
        json!(["room", "text", "from", "user"])
    );
    assert_eq!(delivered["properties"]["from"], json!({ "type": "string" }));

    // Emitted by a script: the map literal's fields, `room` typed from the payload.
    let joined = &message(&doc, "receive.chat.joined")["payload"]["properties"]["data"];
    assert_eq!(joined["required"], json!(["room", "conn", "user", "name"]));
    assert_eq!(joined["properties"]["room"]["type"], "string");
    // `name` is optional in the payload: absent, the script sends null on.
    assert_eq!(
        joined["properties"]["name"]["anyOf"][1],
        json!({ "type": "null" })
    );
    let reply = &message(&doc, "ack.chat.join")["payload"]["properties"]["data"];
    assert_eq!(reply["properties"]["members"], json!({ "type": "integer" }));

    // `--format yaml` is the same document.
    let yaml = asyncapi(&root.join("examples/chat"), &["--format", "yaml"]);
    assert!(yaml.status.success());
    let back = wss_engine::config::yaml::parse(&yaml.stdout)
        .expect("YAML")
        .expect("a document")
        .to_json();
    assert_eq!(back, doc);
}

#[test]
fn local_and_fragment_references_are_inlined_and_recursion_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/defs.json"),
        r##"{
          "$schema": "https://json-schema.org/draft/2020-12/schema",
          "$defs": {
            "name": { "type": "string", "minLength": 1 },
            "tree": { "type": "object", "properties": { "children": { "type": "array", "items": { "$ref": "#/$defs/tree" } } } }
          }
        }"##,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pack.yaml"),
        r##"events:
  doc.add:
    scope: local
    to: sender
    schema:
      type: object
      required: [name]
      properties:
        name: { $ref: "schemas/defs.json#/$defs/name", description: a name }
        alias: { $ref: "#/$defs/alias" }
        tree: { $ref: "schemas/defs.json#/$defs/tree" }
      $defs:
        alias: { type: string, maxLength: 8 }
"##,
    )
    .unwrap();
    let doc = document(dir.path());
    let data = &message(&doc, "send.doc.add")["payload"]["properties"]["data"];
    assert_eq!(
        data["properties"]["name"],
        json!({ "type": "string", "minLength": 1, "description": "a name" })
    );
    assert_eq!(
        data["properties"]["alias"],
        json!({ "type": "string", "maxLength": 8 })
    );
    let children = &data["properties"]["tree"]["properties"]["children"]["items"];
    assert!(
        children["$comment"]
            .as_str()
            .is_some_and(|c| c.contains("recursive")),
        "{children}"
    );
    // No script: delivered as sent.
    assert_eq!(
        message(&doc, "receive.doc.add")["payload"]["properties"]["data"],
        *data
    );
}

#[test]
fn a_pack_with_errors_prints_them_and_fails() {
    let root = support::root();
    let out = asyncapi(&root.join("tests/fixtures/broken/bad-scope"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = &out.stderr;
    assert!(stderr.contains("pack.yaml:"), "{stderr}");
    assert!(stderr.contains("wss-engine check"), "{stderr}");
}
