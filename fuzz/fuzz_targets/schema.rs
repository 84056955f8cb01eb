//! Hostile JSON Schemas as a pack's event `schema:`: what the loader does with one
//! (meta-schema check with positions, `$ref`s to files, compilation with a retriever
//! that never fetches, the `$ref`-inlined copy for documents), then validation of a
//! few payloads, the schema itself among them.
//!
//! The input is JSON (a schema); it is written, as a YAML flow value, into
//! `events: { e: { scope: local, schema: <input> } }` next to `schemas/say.json`.
//!
//! Checked: nothing panics or hangs; a schema that loads validates payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use wss_engine::config;
use wss_engine_fuzz::pack_dir;

fuzz_target!(|bytes: &[u8]| {
    let Ok(schema) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let d = pack_dir(&["schemas/say.json"]);
    let yaml = format!("events:\n  e:\n    scope: local\n    schema: {schema}\n");
    std::fs::write(d.path.join("p.yaml"), yaml).expect("write the pack file");
    let Ok(config::Loaded { pack, .. }) = config::load(&d.path, &d.runtime) else {
        return;
    };
    let event = pack.event("e").expect("the one event");
    let validator = event.schema.as_ref().expect("a client event has a schema");
    for payload in [
        json!(null),
        json!({}),
        json!({"room": "lobby", "text": "hi"}),
        json!([1, "a", {"b": []}]),
        json!("x"),
        json!(-1.5),
        schema.clone(),
    ] {
        for error in validator.iter_errors(&payload).take(20) {
            let _ = (
                error.to_string(),
                error.instance_path().as_str().to_string(),
            );
        }
    }
});
