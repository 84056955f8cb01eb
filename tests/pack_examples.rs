//! The shipped packs (`events/` and every `examples/*`) as an operator meets them: valid
//! against the pack-format schema their editors use, documented, tested, and passing
//! their own `tests:` under `wss-engine test`. Broken fixtures must fail that schema too,
//! so an editor flags the common mistakes while typing.

mod support;

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::Value;
use support::cli::run;
use support::{example_packs, root};
use wss_engine::config;
use wss_engine::script::{ScriptLimits, ScriptRuntime};

/// `events/` and every directory of `examples/`, relative to the crate root.
fn packs() -> Vec<PathBuf> {
    let examples = example_packs();
    let names: Vec<String> = examples
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for required in ["chat", "counter", "presence"] {
        assert!(
            names.iter().any(|n| n == required),
            "examples/{required} is missing"
        );
    }
    assert!(examples.len() >= 4, "a fourth example of our own design");
    let mut packs = vec![PathBuf::from("events")];
    packs.extend(examples);
    packs
}

fn pack_schema() -> Validator {
    let text = std::fs::read_to_string(root().join("schemas/event-pack.schema.json"))
        .expect("the pack schema");
    let schema: Value = serde_json::from_str(&text).expect("pack schema is JSON");
    jsonschema::draft202012::new(&schema).expect("pack schema compiles")
}

/// A pack file as the JSON an editor validates: the loader's own YAML reader.
fn yaml_as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read pack file");
    config::yaml::parse(&text)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .unwrap_or_else(|| panic!("{} is empty", path.display()))
        .to_json()
}

fn errors_of(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

#[test]
fn every_pack_file_validates_against_the_pack_schema_and_names_it() {
    let validator = pack_schema();
    for pack in packs() {
        let files = config::pack_files(&root().join(&pack)).expect("list pack files");
        assert!(!files.is_empty(), "{} has no pack files", pack.display());
        for file in files {
            let errors = errors_of(&validator, &yaml_as_json(&file));
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());

            // The first line tells yaml-language-server where the schema is; the path
            // must lead to the real file from where this file sits.
            let text = std::fs::read_to_string(&file).expect("read");
            let first = text.lines().next().unwrap_or_default();
            let rel = first
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| panic!("{}: first line is `{first}`", file.display()));
            let target = file.parent().expect("parent").join(rel);
            assert_eq!(
                target.canonicalize().ok(),
                root()
                    .join("schemas/event-pack.schema.json")
                    .canonicalize()
                    .ok(),
                "{}: `$schema={rel}` does not lead to schemas/event-pack.schema.json",
                file.display()
            );
        }
    }
}

#[test]
fn common_mistakes_fail_the_pack_schema_where_they_are() {
    let validator = pack_schema();
    // Fixture, and a piece of the schema error (instance path first) an editor shows.
    let cases = [
        ("unknown-event-field", "/events/ping: Additional properties are not allowed ('scpoe'"),
        ("missing-scope", "/events/ping: \"scope\" is a required property"),
        ("missing-schema", "/events/ping: \"schema\" is a required property"),
        ("bad-scope", "/events/ping/scope: \"clustr\" is not one of"),
        ("auth-bad-value", "/events/admin.kick/auth: \"always\" is not one of"),
        ("exclude-sender-not-bool", "/events/chat.typing/exclude_sender: \"yes\" is not of type \"boolean\""),
        ("rate-limit-zero", "/events/chat.message/rate_limit/per_second: 0 is less than or equal to the minimum of 0"),
        ("rate-limit-burst", "/events/chat.message/rate_limit/burst: 0.5 is less than the minimum of 1"),
        ("rate-limit-unknown-key", "/events/chat.message/rate_limit: Additional properties are not allowed ('brust'"),
        ("emit-as-invalid", "/events/chat.message/emit_as: \"chat message\" does not match"),
        ("bad-to-kind", "/events/chat.message/to: \"rooms:lobby\" does not match"),
        ("hook-with-scope", "/events/$connect: Additional properties are not allowed ('scope'"),
        ("hook-unknown-field", "/events/$disconnect: Additional properties are not allowed ('scirpt'"),
        ("reserved-name", "/events: \"$join\" does not match"),
        ("invalid-event-name", "/events: \"chat message!\" does not match"),
        ("unknown-top-key", ": Additional properties are not allowed ('version'"),
        ("misspelt-top-key", ": Additional properties are not allowed ('evnets'"),
        ("events-not-a-map", "/events: [\"chat.join\",\"chat.leave\"] is not of types"),
        ("script-wrong-type", "/events/ping/script: 42 is not valid under any of the schemas"),
        ("keys-not-a-list", "/events/counter.add/keys: \"counter:{{data.name}}\" is not of type \"array\""),
        ("test-missing-expect", "/events/ping/tests/0: \"expect\" is a required property"),
        ("test-unknown-key", "/events/ping/tests/0: Additional properties are not allowed ('expcet'"),
        ("rooms-bad-glob", "/rooms: \"doc:[0-9]*\" does not match"),
        ("rooms-empty-pattern", "/rooms: \"\" is shorter than 1 character"),
        ("rooms-size-zero", "/rooms/lobby/history/size: 0 is less than the minimum of 1"),
        ("rooms-size-too-large", "/rooms/lobby/history/size: 100001 is greater than the maximum of 100000"),
        ("rooms-ttl-negative", "/rooms/lobby/history/ttl: -5 is less than the minimum of 1"),
        ("rooms-ttl-float", "/rooms/lobby/history/ttl: 1.5 is not of type \"integer\""),
        ("rooms-missing-history", "/rooms/lobby: \"history\" is a required property"),
        ("rooms-unknown-key", "/rooms/lobby: Additional properties are not allowed ('histroy'"),
        ("rooms-history-unknown-key", "/rooms/lobby/history: Additional properties are not allowed ('tll'"),
        ("rooms-not-a-map", "/rooms: [\"lobby\"] is not of types"),
    ];
    let mut failures = Vec::new();
    for (fixture, want) in cases {
        let dir = root().join("tests/fixtures/broken").join(fixture);
        let errors: Vec<String> = config::pack_files(&dir)
            .expect("fixture files")
            .iter()
            .flat_map(|f| errors_of(&validator, &yaml_as_json(f)))
            .collect();
        if !errors
            .iter()
            .any(|e| e.starts_with(want) || e.contains(want))
        {
            failures.push(format!("{fixture}: want `{want}`, got {errors:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_file_may_hold_events_rooms_or_both_but_not_neither() {
    let validator = pack_schema();
    let dir = root().join("tests/fixtures/valid/rooms-only-file");
    for file in config::pack_files(&dir).expect("fixture files") {
        let errors = errors_of(&validator, &yaml_as_json(&file));
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
    assert!(!validator.is_valid(&serde_json::json!({})));
    assert!(validator.is_valid(&serde_json::json!({"rooms": null})));
}

#[test]
fn every_client_event_ships_tests_and_a_documented_frame() {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    for pack in packs() {
        let loaded = config::load(&root().join(&pack), &runtime)
            .unwrap_or_else(|d| panic!("{}:\n{d}", pack.display()))
            .pack;
        let readme = std::fs::read_to_string(root().join(&pack).join("README.md"))
            .unwrap_or_else(|_| panic!("{}/README.md is missing", pack.display()));
        let sent = client_frames(&readme).unwrap_or_else(|| {
            panic!(
                "{}/README.md: no \"Frames a client sends\" JSON block",
                pack.display()
            )
        });
        // Events only backends send are documented as calls of the HTTP API instead.
        let called = backend_calls(&readme).unwrap_or_default();
        let (cases, _) = wss_engine::packtest::cases::load(&root().join(&pack));
        for (name, def) in &loaded.events {
            assert!(
                cases
                    .iter()
                    .any(|c| &c.event == name && !c.cases.is_empty()),
                "{}: event `{name}` has no tests",
                pack.display()
            );
            if def.senders.clients {
                assert!(
                    sent.iter().any(|f| f["event"] == name.as_str()),
                    "{}/README.md shows no frame a client sends for `{name}`",
                    pack.display()
                );
            } else {
                assert!(
                    called.iter().any(|(event, _)| event == name),
                    "{}/README.md shows no call a backend makes for `{name}`",
                    pack.display()
                );
            }
        }
        for (name, body) in &called {
            let event = loaded
                .events
                .get(name)
                .filter(|e| e.senders.api)
                .unwrap_or_else(|| {
                    panic!("{}/README.md: `{name}` is not an API event", pack.display())
                });
            if let Some(schema) = &event.schema {
                assert!(
                    schema.is_valid(body),
                    "{}/README.md: `{body}` is refused by the schema of `{name}`",
                    pack.display()
                );
            }
        }
        // Each documented frame is one the server accepts: a known event whose schema
        // takes the documented payload.
        for frame in &sent {
            let name = frame["event"].as_str().expect("`event` is a string");
            let event = loaded.events.get(name).unwrap_or_else(|| {
                panic!(
                    "{}/README.md: `{name}` is not an event of the pack",
                    pack.display()
                )
            });
            let data = frame.get("data").expect("frames carry `data`");
            if let Some(schema) = &event.schema {
                assert!(
                    schema.is_valid(data),
                    "{}/README.md: `{frame}` is refused by the schema of `{name}`",
                    pack.display()
                );
            }
        }
    }
}

/// `(event, body)` of each `{"post": "/api/events/<event>", "body": …}` line of the
/// first ```json block after "Calls a backend makes".
fn backend_calls(readme: &str) -> Option<Vec<(String, Value)>> {
    let section = &readme[readme.find("Calls a backend makes")?..];
    let block = &section[section.find("```json")? + "```json".len()..];
    let block = &block[..block.find("```")?];
    Some(
        block
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let call: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}"));
                let event = call["post"]
                    .as_str()
                    .and_then(|p| p.strip_prefix("/api/events/"))
                    .unwrap_or_else(|| panic!("`{l}`: `post` is not /api/events/<name>"));
                (event.to_string(), call["body"].clone())
            })
            .collect(),
    )
}

/// The JSON lines of the first ```json block after "Frames a client sends".
fn client_frames(readme: &str) -> Option<Vec<Value>> {
    let section = &readme[readme.find("Frames a client sends")?..];
    let block = &section[section.find("```json")? + "```json".len()..];
    let block = &block[..block.find("```")?];
    Some(
        block
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
            .collect(),
    )
}

#[test]
fn every_pack_passes_its_own_tests() {
    for pack in packs() {
        let dir = pack.to_str().expect("utf-8 path");
        let out = run(&["test", dir]);
        let stdout = &out.stdout;
        assert_eq!(out.status.code(), Some(0), "{dir}:\n{stdout}{}", out.stderr);
        let summary = stdout
            .lines()
            .find(|l| l.ends_with(" failed"))
            .unwrap_or_else(|| panic!("{dir}: no `N passed, N failed` line:\n{stdout}"));
        let passed: usize = summary
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{dir}: `{summary}`"));
        assert!(passed > 0, "{dir}: no test ran");
        assert!(summary.ends_with(" 0 failed"), "{dir}: {summary}");
    }
}
