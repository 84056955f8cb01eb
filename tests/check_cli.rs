//! `wss-engine check` and `wss-engine schema`, run through the built binary.
//!
//! Every directory under `tests/fixtures/broken/` is a pack with one mistake (one,
//! `many-mistakes`, has three: the loader must report all of them). Each is listed in
//! [`BROKEN`] with the exact diagnostics `check` must print — file, line, column and a
//! piece of the message — and no others, in text and in `--format json`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use support::cli::run;
use support::{example_packs, root};

const BROKEN_DIR: &str = "tests/fixtures/broken";

#[path = "check_cli/broken.rs"]
mod broken;
use broken::{at, Expected, BROKEN, UNKNOWN_CALLS};

/// A diagnostic line `path:line:col: severity: message`, split up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    file: String,
    line: usize,
    col: usize,
    severity: String,
    message: String,
}

fn parse_line(raw: &str) -> Line {
    // The message may itself contain `: `; the path holds no `:` in these fixtures.
    let mut parts = raw.splitn(5, ':');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("not a diagnostic line: {raw}"))
    };
    let file = next().to_string();
    let line = next()
        .parse()
        .unwrap_or_else(|_| panic!("bad line number: {raw}"));
    let col = next()
        .parse()
        .unwrap_or_else(|_| panic!("bad column: {raw}"));
    let severity = next().trim().to_string();
    let message = next().trim_start().to_string();
    Line {
        file,
        line,
        col,
        severity,
        message,
    }
}

fn json_lines(stdout: &str) -> Vec<Line> {
    let value: Value = serde_json::from_str(stdout).expect("--format json prints JSON");
    value
        .as_array()
        .expect("a JSON array of diagnostics")
        .iter()
        .map(|d| {
            let keys: BTreeSet<&str> = d
                .as_object()
                .expect("a diagnostic is an object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["severity", "file", "line", "col", "message"]),
                "{d}"
            );
            Line {
                file: d["file"].as_str().expect("file").to_string(),
                line: d["line"].as_u64().expect("line") as usize,
                col: d["col"].as_u64().expect("col") as usize,
                severity: d["severity"].as_str().expect("severity").to_string(),
                message: d["message"].as_str().expect("message").to_string(),
            }
        })
        .collect()
}

/// Check one fixture: exit 1, exactly the expected errors, same list in JSON.
fn assert_fixture(name: &str, expected: &[Expected]) -> Result<(), String> {
    let dir = format!("{BROKEN_DIR}/{name}");
    let out = run(&["check", &dir]);
    let stdout = out.stdout;
    let stderr = out.stderr;
    if out.status.code() != Some(1) {
        return Err(format!(
            "{name}: exit {:?}, want 1\n{stdout}{stderr}",
            out.status.code()
        ));
    }
    let lines: Vec<Line> = stdout.lines().map(parse_line).collect();
    let errors: Vec<&Line> = lines.iter().filter(|l| l.severity == "error").collect();
    for want in expected {
        let file = if want.file.is_empty() {
            dir.clone()
        } else {
            format!("{dir}/{}", want.file)
        };
        let found = errors.iter().any(|l| {
            l.file.trim_end_matches('/') == file
                && l.line == want.line
                && l.col == want.col
                && l.message.contains(want.message)
        });
        if !found {
            return Err(format!(
                "{name}: no error `{file}:{}:{}: ... {}`; got:\n{stdout}",
                want.line, want.col, want.message
            ));
        }
    }
    if errors.len() != expected.len() {
        return Err(format!(
            "{name}: {} errors, want {}:\n{stdout}",
            errors.len(),
            expected.len()
        ));
    }
    let summary = format!("{} error(s)", errors.len());
    if !stderr.contains(&summary) {
        return Err(format!("{name}: stderr lacks `{summary}`: {stderr}"));
    }

    let json = run(&["check", &dir, "--format", "json"]);
    if json.status.code() != Some(1) {
        return Err(format!(
            "{name}: --format json exit {:?}",
            json.status.code()
        ));
    }
    let json_lines = json_lines(&json.stdout);
    if json_lines != lines {
        return Err(format!(
            "{name}: --format json differs from text:\n{json_lines:#?}\n{lines:#?}"
        ));
    }
    Ok(())
}

#[test]
fn every_broken_fixture_reports_its_mistake_where_it_is() {
    let failures: Vec<String> = BROKEN
        .iter()
        .filter_map(|(name, expected)| assert_fixture(name, expected).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        BROKEN.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_corpus_is_complete_and_every_fixture_is_asserted() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join(BROKEN_DIR))
        .expect("read fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = BROKEN
        .iter()
        .chain(UNKNOWN_CALLS)
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        on_disk, listed,
        "every fixture directory needs expectations"
    );
    assert!(
        BROKEN.len() >= 25,
        "the corpus has {} fixtures",
        BROKEN.len()
    );
}

/// An unknown function must be reported wherever the call stands: a walk that looked
/// only at `Expr::FnCall` once let a call used as a statement (`Stmt::FnCall`) or a
/// method call on `state` through `check`, to fail only at run time.
#[test]
fn unknown_functions_are_found_in_every_position() {
    let failures: Vec<String> = UNKNOWN_CALLS
        .iter()
        .filter_map(|(name, expected)| assert_fixture(name, expected).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn packs() -> Vec<PathBuf> {
    let mut packs = vec![PathBuf::from("events")];
    let examples = example_packs();
    assert!(examples.len() >= 4, "at least four example packs");
    packs.extend(examples);
    packs
}

#[test]
fn every_example_and_the_default_pack_pass_quietly() {
    for pack in packs() {
        let dir = pack.to_str().expect("utf-8 path");
        let out = run(&["check", dir]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{dir}: {}{}",
            out.stdout,
            out.stderr
        );
        // Not even a warning: examples are what operators copy.
        assert_eq!(out.stdout, "", "{dir} printed diagnostics");
        assert!(out.stderr.contains(": ok, "), "{dir}: {}", out.stderr);

        let json = run(&["check", dir, "--format", "json"]);
        assert_eq!(json.status.code(), Some(0));
        assert_eq!(json_lines(&json.stdout), Vec::new());
    }
}

#[test]
fn list_prints_the_events_of_a_valid_pack() {
    let out = run(&["check", "--list", "examples/chat"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = out.stdout;
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    // Event lines have five columns, rooms rules three (an event may be called `room`).
    let (rows, rooms): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.len() == 5);
    assert_eq!(
        rooms,
        [vec!["room", "*", "history size=100 ttl=3600s"]],
        "{stdout}"
    );
    assert!(
        stdout.ends_with("history size=100 ttl=3600s\n"),
        "rooms come last: {stdout}"
    );
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        names,
        [
            "chat.history",
            "chat.join",
            "chat.leave",
            "chat.message",
            "chat.typing"
        ]
    );
    let message = rows.iter().find(|r| r[0] == "chat.message").expect("row");
    assert_eq!(message[1], "cluster");
    assert_eq!(message[2], "room:{{data.room}}");
    assert_eq!(message[3], "clients", "who may send it");
    assert!(message[4].starts_with("Post a message"), "{message:?}");
    let typing = rows.iter().find(|r| r[0] == "chat.typing").expect("row");
    assert_eq!(typing[1], "local");

    let json = run(&["check", "--list", "--format", "json", "examples/counter"]);
    assert_eq!(json.status.code(), Some(0));
    let events: Value = serde_json::from_str(&json.stdout).expect("JSON");
    let add = events
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["name"] == "counter.add")
        .expect("counter.add listed");
    assert_eq!(add["kind"], "event");
    assert_eq!(add["scope"], "cluster");
    assert_eq!(add["to"], "all");
}

#[test]
fn a_file_may_hold_only_rooms_and_list_shows_the_rules_in_file_order() {
    let dir = "tests/fixtures/valid/rooms-only-file";
    let out = run(&["check", dir]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // `archive:*` is reached by no `to:`, but a script's target is computed: no warning.
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(": ok, 1 events, 2 room rule(s)"),
        "{}",
        out.stderr
    );

    let out = run(&["check", "--list", dir]);
    assert_eq!(
        out.stdout,
        "doc.open\tcluster\tnone\tclients\t\n\
         room\tdoc:*\thistory size=1000 ttl=3600s\n\
         room\tarchive:*\thistory size=10 ttl=60s\n"
    );

    // One array as before rooms existed: events first, then the rules, told apart by `kind`.
    let json = run(&["check", "--list", "--format", "json", dir]);
    let list: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(
        list,
        serde_json::json!([
            {"kind": "event", "name": "doc.open", "scope": "cluster", "to": "none", "senders": ["clients"], "description": null},
            {"kind": "room", "room": "doc:*", "history": {"size": 1000, "ttl": 3600}},
            {"kind": "room", "room": "archive:*", "history": {"size": 10, "ttl": 60}},
        ])
    );
}

#[test]
fn list_of_a_broken_pack_prints_only_its_errors() {
    let out = run(&["check", "--list", "tests/fixtures/broken/bad-scope"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = out.stdout;
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(": error: `scope` must be"), "{stdout}");
}

/// Packs that load, with the warnings `check` must print (and nothing else).
const WARNINGS: &[(&str, &[Expected])] = &[
    (
        "split-keys",
        &[
            at(
                "pack.yaml",
                5,
                3,
                "hook `$connect` has no script and does nothing",
            ),
            // The first key outside the first key's hash slot.
            at(
                "pack.yaml",
                13,
                9,
                "these keys do not share one `{hash tag}`",
            ),
        ],
    ),
    (
        // Keys a script names, in two slots; the event whose keys share a tag is quiet.
        "script-split-keys",
        &[at(
            "pack.yaml",
            6,
            7,
            "the script's state keys (`balance:…`, `{ledger}`) do not share one `{hash tag}`",
        )],
    ),
    (
        "optional-target-field",
        &[at(
            "pack.yaml",
            10,
            9,
            "`to` reads `data.room`, which the schema does not require",
        )],
    ),
    (
        "rooms-unreachable",
        &[at(
            "pack.yaml",
            16,
            3,
            "rooms pattern `chat:*` matches no room any event delivers to (`to:` or `emit`): its history is never used",
        )],
    ),
    (
        "rooms-shadowed",
        &[at(
            "pack.yaml",
            8,
            3,
            "rooms pattern `lobby` never applies: `*` at tests/fixtures/warnings/rooms-shadowed/pack.yaml:7 comes first",
        )],
    ),
    (
        "rooms-local-scope",
        &[at(
            "pack.yaml",
            5,
            9,
            "event `chat.typing` has `scope: local`, but room `lobby` keeps history (rooms pattern `lob*` at tests/fixtures/warnings/rooms-local-scope/pack.yaml:12): a `local` event's deliveries stay on this node, carry no offset and are not kept",
        )],
    ),
    (
        "pointless-fields",
        &[
            at("pack.yaml", 5, 14, "`emit_as` has no effect without `to`"),
            at(
                "pack.yaml",
                10,
                21,
                "`to: sender` with `exclude_sender: true` delivers nothing",
            ),
        ],
    ),
];

#[test]
fn warnings_are_printed_but_do_not_fail_the_check() {
    for (name, expected) in WARNINGS {
        let dir = format!("tests/fixtures/warnings/{name}");
        let out = run(&["check", &dir]);
        let stdout = out.stdout;
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}{}", out.stderr);
        let lines: Vec<Line> = stdout.lines().map(parse_line).collect();
        assert_eq!(lines.len(), expected.len(), "{name}: {stdout}");
        for (got, want) in lines.iter().zip(expected.iter()) {
            assert_eq!(
                (got.file.as_str(), got.line, got.col, got.severity.as_str()),
                (
                    format!("{dir}/{}", want.file).as_str(),
                    want.line,
                    want.col,
                    "warning"
                ),
                "{name}: {stdout}"
            );
            assert!(got.message.contains(want.message), "{name}: {stdout}");
        }
        let summary = format!("{} warning(s)", expected.len());
        assert!(out.stderr.contains(&summary), "{name}: {}", out.stderr);
        let json = run(&["check", &dir, "--format", "json"]);
        assert_eq!(json_lines(&json.stdout), lines, "{name}");
    }
}

/// `--redis-cluster`: keys that may sit in different slots fail the check, in text and
/// JSON; other warnings stay warnings.
#[test]
fn redis_cluster_makes_slot_warnings_errors() {
    for (name, slot_line) in [("split-keys", 13), ("script-split-keys", 6)] {
        let dir = format!("tests/fixtures/warnings/{name}");
        let out = run(&["check", "--redis-cluster", &dir]);
        let stdout = out.stdout;
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}");
        for line in stdout.lines().map(parse_line) {
            let expected = if line.line == slot_line {
                "error"
            } else {
                "warning"
            };
            assert_eq!(line.severity, expected, "{name}: {stdout}");
        }
        assert!(
            stdout.lines().any(|l| parse_line(l).line == slot_line),
            "{name}: {stdout}"
        );
        let json = run(&["check", "--redis-cluster", &dir, "--format", "json"]);
        let diags: Value = serde_json::from_str(&json.stdout).expect("JSON diagnostics");
        let slot = diags
            .as_array()
            .expect("an array")
            .iter()
            .find(|d| d["line"] == slot_line)
            .unwrap_or_else(|| panic!("{name}: {diags}"));
        assert_eq!(slot["severity"], "error", "{name}: {slot}");
    }
    // Without anything that depends on slots, the flag changes nothing.
    let out = run(&["check", "--redis-cluster", "events"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout);
}

#[test]
fn a_target_field_set_by_the_script_is_not_a_mistake() {
    let out = run(&["check", "tests/fixtures/valid/script-sets-target"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "");
}

#[test]
fn a_missing_directory_is_an_error_not_a_crash() {
    let out = run(&["check", "tests/fixtures/no-such-pack"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = out.stdout;
    assert!(
        stdout.starts_with("tests/fixtures/no-such-pack:1:1: error: cannot read pack directory"),
        "{stdout}"
    );
}

#[test]
fn schema_prints_the_committed_pack_schema() {
    let out = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed =
        std::fs::read(root().join("schemas/event-pack.schema.json")).expect("committed schema");
    assert_eq!(
        out.stdout.as_bytes(),
        committed,
        "`wss-engine schema` differs from the file"
    );
    let schema: Value = serde_json::from_str(&out.stdout).expect("the schema is JSON");
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the pack schema is itself a valid JSON Schema"
    );
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}
