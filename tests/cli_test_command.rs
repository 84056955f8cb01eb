//! `wss-engine test DIR` through the built binary: summary line, exit status, and the
//! `file:line` of a failing case.

mod support;

use std::path::Path;

use support::cli::run;

fn run_test(dir: &Path) -> (i32, String) {
    let out = run(&["test", dir.to_str().expect("a UTF-8 path")]);
    (out.status.code().unwrap_or(-1), out.stdout)
}

const PACK: &str = r#"events:
  count:
    scope: cluster
    schema: { type: object, properties: { by: { type: integer } }, additionalProperties: false }
    to: all
    script: |
      let n = state.get("n");
      if n == () { n = 0; }
      n += data.by ?? 1;
      state.set("n", n);
      data.n = n;
      reply(n);
    tests:
      - name: increments from the seeded state
        state: { n: 4 }
        send: {}
        expect:
          reply: 5
          deliveries: [{ to: all, event: count, data: { n: 5 } }]
          state: { n: 5 }
      - name: a bad payload is refused and changes nothing
        state: { n: 1 }
        send: { by: "two" }
        expect: { error: invalid_payload, state: { n: 1 } }
"#;

#[test]
fn passing_pack_exits_zero_with_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PACK).unwrap();
    let (code, stdout) = run_test(dir.path());
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "2 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn failing_case_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let failing = format!(
        "{PACK}      - name: wrong on purpose\n        send: {{ by: 2 }}\n        expect: {{ reply: 7 }}\n"
    );
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, failing).unwrap();
    let (code, stdout) = run_test(dir.path());
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "2 passed, 1 failed"),
        "{stdout}"
    );
    let expected = format!(
        "FAIL  {}:25: count › wrong on purpose: reply: expected 7, got 2",
        file.display()
    );
    assert!(
        stdout.contains(&expected),
        "missing `{expected}` in:\n{stdout}"
    );
}

#[test]
fn deliveries_must_match_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let pack = PACK.replace(
        "deliveries: [{ to: all, event: count, data: { n: 5 } }]",
        "deliveries: [{ to: \"room:x\", event: count }]",
    );
    std::fs::write(dir.path().join("p.yaml"), pack).unwrap();
    let (code, stdout) = run_test(dir.path());
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("delivery 0: expected room:x count"),
        "{stdout}"
    );
}

#[test]
fn broken_pack_is_reported_not_tested() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "events:\n  x:\n    scpoe: local\n",
    )
    .unwrap();
    let out = run(&["test", dir.path().to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = &out.stdout;
    assert!(stdout.contains("did you mean \"scope\"?"), "{stdout}");
}
