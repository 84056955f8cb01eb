//! `wss-engine diff OLD NEW`, run through the built binary over the corpus in
//! `tests/diff/`.
//!
//! Every directory there is one case: `old/` and `new/` packs and `expected.json`
//! with the exit status and every change `diff --format json` must report (subject,
//! `change`, `classification`, and `path` for payload schema changes), no more and no
//! fewer; or, for a pack that does not load, the diagnostics it must print. The text
//! output of each case is checked against its JSON (same changes, same order, exit
//! status), and [`REQUIRED`] lists the rules the corpus must cover, both ways.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::cli::run;
use support::root;

const CORPUS: &str = "tests/diff";

/// Every (change, classification) the corpus must show at least once: each rule of
/// docs/operations/rollout.md's "What `diff` calls breaking", in each direction it has.
const REQUIRED: &[(&str, &str)] = &[
    ("event_removed", "breaking"),
    ("event_added", "compatible"),
    ("event_renamed", "breaking"),
    ("emit_as_changed", "breaking"),
    ("emit_as_changed", "compatible"),
    ("scope_changed", "breaking"),
    ("to_changed", "breaking"),
    ("to_changed", "compatible"),
    ("auth_required_added", "breaking"),
    ("auth_required_removed", "compatible"),
    ("rate_limit_added", "breaking"),
    ("rate_limit_tightened", "breaking"),
    ("rate_limit_loosened", "compatible"),
    ("rate_limit_removed", "compatible"),
    ("exclude_sender_enabled", "breaking"),
    ("exclude_sender_disabled", "compatible"),
    ("script_added", "compatible"),
    ("script_removed", "compatible"),
    ("script_changed", "compatible"),
    ("description_changed", "compatible"),
    ("keys_changed", "compatible"),
    ("hook_added", "compatible"),
    ("hook_removed", "compatible"),
    ("room_rule_added", "breaking"),
    ("room_rule_added", "compatible"),
    ("room_rule_removed", "breaking"),
    ("room_rule_removed", "compatible"),
    ("room_history_reduced", "breaking"),
    ("room_history_increased", "compatible"),
    ("schema_required_added", "breaking"),
    ("schema_required_removed", "compatible"),
    ("schema_property_removed", "breaking"),
    ("schema_property_removed", "compatible"),
    ("schema_property_added", "compatible"),
    ("schema_additional_properties_restricted", "breaking"),
    ("schema_additional_properties_relaxed", "compatible"),
    ("schema_type_narrowed", "breaking"),
    ("schema_type_widened", "compatible"),
    ("schema_enum_shrunk", "breaking"),
    ("schema_enum_grown", "compatible"),
    ("schema_enum_added", "breaking"),
    ("schema_enum_removed", "compatible"),
    ("schema_const_changed", "breaking"),
    ("schema_const_removed", "compatible"),
    ("schema_bound_tightened", "breaking"),
    ("schema_bound_loosened", "compatible"),
    ("schema_pattern_changed", "breaking"),
    ("schema_pattern_removed", "compatible"),
    ("schema_changed_cannot_tell", "breaking"),
    ("schema_annotation_changed", "compatible"),
];

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join(CORPUS))
        .expect("tests/diff exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "the corpus is empty");
    dirs
}

fn expected(case: &Path) -> Value {
    let raw = std::fs::read_to_string(case.join("expected.json"))
        .unwrap_or_else(|e| panic!("{}: expected.json: {e}", case.display()));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{}: expected.json: {e}", case.display()))
}

/// What a change is about, as the text output names it.
fn subject(change: &Value) -> String {
    match (change.get("event"), change.get("room")) {
        (_, Some(Value::String(room))) => format!("rooms \"{room}\""),
        (Some(Value::String(event)), _) => event.clone(),
        _ => "?".into(),
    }
}

/// What a change is matched on: subject, kind, classification, and the payload path.
fn key(change: &Value) -> String {
    let subject = subject(change);
    let path = change
        .get("path")
        .and_then(Value::as_str)
        .map(|p| format!(" at `{p}`"))
        .unwrap_or_default();
    format!(
        "{subject}: {} {}{path}",
        change["classification"].as_str().unwrap_or("?"),
        change["change"].as_str().unwrap_or("?"),
    )
}

/// The relative argument of a case's side, as the binary is run from the crate root.
fn side(case: &Path, which: &str) -> String {
    let name = case.file_name().expect("case name").to_string_lossy();
    format!("{CORPUS}/{name}/{which}")
}

/// Everything wrong with one case, or nothing.
fn check_case(case: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let want = expected(case);
    let (old, new) = (side(case, "old"), side(case, "new"));
    let want_exit = want["exit"].as_i64().expect("`exit` in expected.json");

    let json = run(&["diff", &old, &new, "--format", "json"]);
    let got_exit = json.status.code().map_or(-1, i64::from);
    if got_exit != want_exit {
        problems.push(format!(
            "exit {got_exit}, expected {want_exit}; stderr: {}",
            json.stderr
        ));
    }
    let out: Value = match serde_json::from_str(&json.stdout) {
        Ok(v) => v,
        Err(e) => return vec![format!("stdout is not JSON ({e}): {}", json.stdout)],
    };
    let Some(list) = out.as_array() else {
        return vec![format!("stdout is not a JSON array: {out}")];
    };

    if want_exit == 2 {
        // A pack that does not load: the diagnostics, as `check --format json` has them.
        for d in want["diagnostics"].as_array().expect("`diagnostics`") {
            let file = format!(
                "{CORPUS}/{}/{}",
                case.file_name().unwrap_or_default().to_string_lossy(),
                d["file"].as_str().unwrap_or("")
            );
            let found = list.iter().any(|g| {
                g["file"].as_str() == Some(&file)
                    && g["line"] == d["line"]
                    && g["col"] == d["col"]
                    && g["message"]
                        .as_str()
                        .zip(d["message"].as_str())
                        .is_some_and(|(g, d)| g.contains(d))
            });
            if !found {
                problems.push(format!("diagnostic {d} not printed; got {out}"));
            }
        }
        let plain = run(&["diff", &old, &new]);
        let first = plain.stdout;
        if plain.status.code() != Some(2) || !first.contains(": error: ") {
            problems.push(format!(
                "text mode: exit {:?}, stdout {first}",
                plain.status.code()
            ));
        }
        return problems;
    }

    let mut got: Vec<String> = list.iter().map(key).collect();
    let mut wanted: Vec<String> = want["changes"]
        .as_array()
        .expect("`changes` in expected.json")
        .iter()
        .map(key)
        .collect();
    got.sort();
    wanted.sort();
    for w in &wanted {
        if !got.contains(w) {
            problems.push(format!("missing: {w}"));
        }
    }
    for g in &got {
        if !wanted.contains(g) {
            problems.push(format!("unexpected: {g}"));
        }
    }

    // Each object: a detail, and the sides that exist.
    for c in list {
        let kind = c["change"].as_str().unwrap_or("");
        if c["detail"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no detail: {c}"));
        }
        // Some(true): must be there; Some(false): must not; None: either (a rooms
        // rule added or removed shows the rule that decided before or after, if any).
        let (old_side, new_side) = match kind {
            "event_added" | "hook_added" => (Some(false), Some(true)),
            "event_removed" | "hook_removed" => (Some(true), Some(false)),
            "room_rule_added" => (None, Some(true)),
            "room_rule_removed" => (Some(true), None),
            _ => (Some(true), Some(true)),
        };
        for (field, want) in [("old", old_side), ("new", new_side)] {
            let ok = match (c.get(field), want) {
                (Some(s), Some(true) | None) => {
                    s["file"].as_str().is_some_and(|f| f.starts_with(CORPUS))
                        && s["line"].as_u64().is_some_and(|l| l > 0)
                }
                (None, Some(false) | None) => true,
                _ => false,
            };
            if !ok {
                problems.push(format!("`{field}` wrong: {c}"));
            }
        }
    }

    // The text output: one line per change in the same order, then the summary.
    let plain = run(&["diff", &old, &new]);
    if plain.status.code() != json.status.code() {
        problems.push(format!(
            "text mode exits {:?}, JSON mode {:?}",
            plain.status.code(),
            json.status.code()
        ));
    }
    let stdout = plain.stdout;
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.len() != list.len() + 1 {
        problems.push(format!(
            "text output has {} lines for {} changes:\n{stdout}",
            lines.len(),
            list.len()
        ));
    } else {
        for (line, c) in lines.iter().zip(list) {
            let subject = subject(c);
            let class = c["classification"].as_str().unwrap_or("?");
            let start = format!("{class:<10}  {subject}: ");
            if !line.starts_with(&start) || !line.contains(" → ") {
                problems.push(format!("text line `{line}` does not match {c}"));
            }
        }
        let summary = lines.last().copied().unwrap_or("");
        let breaking = list
            .iter()
            .filter(|c| c["classification"] == "breaking")
            .count();
        let want_summary = if list.is_empty() {
            "no changes".to_string()
        } else {
            format!(
                "{} change(s): {breaking} breaking, {} compatible",
                list.len(),
                list.len() - breaking
            )
        };
        if summary != want_summary {
            problems.push(format!("summary `{summary}`, expected `{want_summary}`"));
        }
    }
    // Sorted by subject: events (hooks included), then rooms rules.
    let subjects: Vec<(bool, String)> = list
        .iter()
        .map(|c| match c.get("room").and_then(Value::as_str) {
            Some(room) => (true, room.to_string()),
            None => (false, c["event"].as_str().unwrap_or("").to_string()),
        })
        .collect();
    if subjects.windows(2).any(|w| w[0] > w[1]) {
        problems.push(format!("changes are not sorted by subject: {subjects:?}"));
    }
    problems
}

#[test]
fn every_case_of_the_corpus_is_classified_as_expected() {
    let mut failures = Vec::new();
    for case in cases() {
        for p in check_case(&case) {
            failures.push(format!("{}: {p}", case.display()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_corpus_covers_every_rule_both_ways() {
    let mut seen = Vec::new();
    for case in cases() {
        let want = expected(&case);
        assert!(
            want["why"].as_str().is_some_and(|w| !w.is_empty()),
            "{}: say in `why` what the case shows",
            case.display()
        );
        for c in want["changes"].as_array().into_iter().flatten() {
            seen.push((
                c["change"].as_str().unwrap_or("").to_string(),
                c["classification"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|(k, c)| !seen.iter().any(|(sk, sc)| sk == k && sc == c))
        .collect();
    assert!(missing.is_empty(), "no case shows {missing:?}");
}

#[test]
fn a_pack_compared_with_itself_has_no_changes() {
    // The real packs: `$ref`s into files, scripts in files, hooks, rooms rules.
    let mut packs = vec![PathBuf::from("events")];
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            packs.push(PathBuf::from("examples").join(path.file_name().expect("name")));
        }
    }
    for pack in packs {
        let pack = pack.to_string_lossy();
        let out = run(&["diff", &pack, &pack]);
        assert_eq!(
            (out.status.code(), out.stdout.as_str()),
            (Some(0), "no changes\n"),
            "{pack}: {}",
            out.stderr
        );
    }
}

#[test]
fn renamed_and_removed_events_print_both_sides_in_text() {
    let out = run(&[
        "diff",
        "tests/diff/event-removed/old",
        "tests/diff/event-removed/new",
    ]);
    let stdout = out.stdout;
    let first = stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with(
            "breaking    chat.typing: event removed: clients sending it now get `unknown_event`"
        ) && first.ends_with("(tests/diff/event-removed/old/pack.yaml:7 → -)"),
        "{stdout}"
    );
    let out = run(&[
        "diff",
        "tests/diff/event-renamed/old",
        "tests/diff/event-renamed/new",
    ]);
    let stdout = out.stdout;
    assert!(
        stdout.lines().any(|l| l.starts_with("breaking    chat.msg: renamed to `chat.message`")
            && l.ends_with("(tests/diff/event-renamed/old/pack.yaml:3 → tests/diff/event-renamed/new/pack.yaml:3)")),
        "{stdout}"
    );
}

#[test]
fn json_objects_have_the_documented_fields() {
    let out = run(&[
        "diff",
        "tests/diff/schema-ref-file/old",
        "tests/diff/schema-ref-file/new",
        "--format",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let first = &list[0];
    let mut fields: Vec<&str> = first
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "change",
            "classification",
            "detail",
            "event",
            "new",
            "old",
            "path"
        ],
        "{first}"
    );
    assert_eq!(
        first["old"]["file"],
        "tests/diff/schema-ref-file/old/pack.yaml"
    );
    assert_eq!(first["old"]["line"], 3);
    // A rooms rule names its pattern and has no event.
    let out = run(&[
        "diff",
        "tests/diff/rooms-reduced/old",
        "tests/diff/rooms-reduced/new",
        "--format",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(list[0]["event"], Value::Null);
    assert_eq!(list[0]["room"], "doc:*");
    // The summary goes to stderr, so stdout stays one JSON document.
    assert_eq!(out.stderr, "4 change(s): 4 breaking, 0 compatible\n");
}

#[test]
fn a_missing_or_broken_pack_exits_2_whichever_side_it_is() {
    let out = run(&[
        "diff",
        "tests/diff/no-such-pack",
        "tests/diff/identical/new",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stdout.contains("cannot read pack directory"));
    assert!(out.stderr.contains("tests/diff/no-such-pack: 1 error(s)"));
    // Broken on the old side, and on both: every pack's errors are printed.
    let broken = "tests/diff/broken-new/new";
    let out = run(&["diff", broken, "tests/diff/broken-new/old"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["diff", broken, "tests/diff/no-such-pack"]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = out.stdout;
    assert!(
        stdout.contains("must be `local` or `cluster`")
            && stdout.contains("cannot read pack directory"),
        "{stdout}"
    );
}
