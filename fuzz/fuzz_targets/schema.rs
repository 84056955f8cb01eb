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

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use wss_engine::config;
use wss_engine::script::{ScriptLimits, ScriptRuntime};
use wss_engine_fuzz::here;

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    runtime: ScriptRuntime,
}

fn dir() -> &'static Dir {
    static D: OnceLock<Dir> = OnceLock::new();
    D.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let path = tmp.path().to_path_buf();
        std::fs::create_dir_all(path.join("schemas")).unwrap();
        std::fs::copy(
            here("packs/engine/schemas/say.json"),
            path.join("schemas/say.json"),
        )
        .unwrap();
        Dir {
            _tmp: tmp,
            path,
            runtime: ScriptRuntime::new(&ScriptLimits::default()),
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(schema) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let d = dir();
    let yaml = format!("events:\n  e:\n    scope: local\n    schema: {schema}\n");
    std::fs::write(d.path.join("p.yaml"), yaml).expect("write the pack file");
    let Ok((pack, _)) = config::load(&d.path, &d.runtime) else {
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
