//! `senders:` and `sender: api` as `wss-engine check` sees them (through the binary), and
//! as the pack-format schema editors use does.

mod support;

use serde_json::Value;
use support::cli::run;
use support::write_pack;

fn check(pack: &str) -> (Option<i32>, String) {
    let dir = write_pack(pack);
    let out = run(&["check", dir.path().to_str().expect("a UTF-8 path")]);
    let text = out
        .stdout
        .replace(&format!("{}/", dir.path().display()), "");
    (out.status.code(), text)
}

fn schema_errors(pack: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("schemas/event-pack.schema.json")).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("JSON");
    let validator = jsonschema::draft202012::new(&schema).expect("compiles");
    let node = wss_engine::config::yaml::parse(pack)
        .expect("YAML")
        .expect("a document");
    validator
        .iter_errors(&node.to_json())
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

#[test]
fn an_unknown_sender_is_an_error_with_a_suggestion_where_it_is() {
    let pack = "events:\n  ping:\n    scope: local\n    schema: {}\n    senders: [clients, apis]\n";
    let (code, out) = check(pack);
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "pack.yaml:5:24: error: unknown sender `apis` in `senders`, did you mean `api`?"
    );
    let errors = schema_errors(pack);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/events/ping/senders/1: \"apis\" is not one of")),
        "{errors:?}"
    );
}

#[test]
fn senders_must_be_a_non_empty_list_and_hooks_have_none() {
    for (fields, says) in [
        ("senders: api", "5:14: error: `senders` must be a list: `[clients]`, `[api]` or `[clients, api]`, not a string"),
        ("senders: []", "5:14: error: `senders` is empty, so nobody may send this event"),
    ] {
        let pack = format!("events:\n  ping:\n    scope: local\n    schema: {{}}\n    {fields}\n");
        let (code, out) = check(&pack);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(says), "{fields}: {out}");
        assert!(!schema_errors(&pack).is_empty(), "{fields}");
    }
    let hook = "events:\n  $connect:\n    senders: [api]\n    script: 'let a = 1;'\n";
    let (code, out) = check(hook);
    assert_eq!(code, Some(1));
    assert!(out.contains("hook `$connect` takes only a script"), "{out}");
}

#[test]
fn fields_that_cannot_work_for_api_only_events_are_warned_about() {
    let pack = r#"events:
  a:
    senders: [api]
    scope: local
    schema: {}
    to: sender
    auth: required
  b:
    senders: [api]
    scope: local
    schema: {}
    to: "user:{{conn.user}}"
    exclude_sender: true
  c:
    senders: [clients, api]
    scope: local
    schema: {}
    to: sender
"#;
    let (code, out) = check(pack);
    assert_eq!(code, Some(0), "warnings only: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("pack.yaml:6:9: warning: `to: sender` on an event only the API sends delivers to nobody"), "{out}");
    assert!(
        lines[1].starts_with("pack.yaml:7:11: warning: `auth: required` has no effect"),
        "{out}"
    );
    assert!(
        lines[2].starts_with(
            "pack.yaml:12:9: warning: `to` reads `{{conn.user}}`, but an API call has no user"
        ),
        "{out}"
    );
    assert!(
        lines[3].starts_with("pack.yaml:13:21: warning: `exclude_sender` has no effect"),
        "{out}"
    );
    assert!(schema_errors(pack).is_empty());
}

#[test]
fn a_test_case_names_its_sender() {
    let pack = r#"events:
  ping:
    senders: [api]
    scope: local
    schema: {}
    tests:
      - name: misspelt
        sender: apii
        expect: {}
      - name: an API call has no connection
        sender: api
        conn: { user: alice }
        expect: {}
"#;
    let (code, out) = check(pack);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("pack.yaml:8:17: error: unknown `sender`, did you mean `api`?"),
        "{out}"
    );
    assert!(
        out.contains("pack.yaml:12:15: error: a case sent by the API has no connection"),
        "{out}"
    );
}
