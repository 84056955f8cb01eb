//! Script limits: a runaway script fails with `script_error` quickly, leaves no trace,
//! and the connection and server go on serving.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::inprocess::start_with;
use support::write_pack;

const PACK: &str = r#"events:
  spin:
    scope: local
    schema: { type: object }
    script: |
      state.set("touched", true);
      let i = 0;
      loop { i += 1; }
  slow:
    scope: local
    schema: { type: object }
    script: |
      let i = 0;
      while true { i += 1; if i > 1000000000 { break; } }
  recurse:
    scope: local
    schema: { type: object }
    script: |
      fn down(n) { down(n + 1) }
      down(0);
  grow:
    scope: local
    schema: { type: object }
    script: |
      let s = "x";
      loop { s += s; }
  many:
    scope: local
    schema: { type: object }
    script: |
      let a = [];
      loop { a.push(1); }
  touched:
    scope: local
    schema: { type: object }
    script: reply(state.get("touched"));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_ends_a_runaway_script_with_script_error() {
    let server = start_with(PACK, |cfg| {
        cfg.script_limits.max_operations = 50_000;
        cfg.script_limits.timeout = Duration::from_millis(200);
        cfg.script_limits.max_string_size = 10_000;
        cfg.script_limits.max_array_size = 1_000;
    })
    .await;
    let mut c = server.connect().await;
    for event in ["spin", "recurse", "grow", "many"] {
        let started = Instant::now();
        let err = c.fail(event, json!({})).await;
        assert_eq!(err["code"], "script_error", "{event}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{event} took {:?}",
            started.elapsed()
        );
    }
    // The failed `spin` wrote nothing.
    assert_eq!(c.ok("touched", json!({})).await, json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_budget_stops_a_script_the_operation_limit_allows() {
    let server = start_with(PACK, |cfg| {
        cfg.script_limits.max_operations = u64::MAX / 2;
        cfg.script_limits.timeout = Duration::from_millis(100);
    })
    .await;
    let mut c = server.connect().await;
    let started = Instant::now();
    let err = c.fail("slow", json!({})).await;
    assert_eq!(err["code"], "script_error", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("time budget"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The server still answers on the same connection.
    assert_eq!(c.ok("touched", json!({})).await, json!(null));
}

#[test]
fn eval_is_not_available_to_packs() {
    let dir = write_pack(
        r#"events:
  e:
    scope: local
    schema: { type: object }
    script: eval("1 + 1");
"#,
    );
    let runtime = wss_engine::script::ScriptRuntime::new(&Default::default());
    let diags = wss_engine::config::load(dir.path(), &runtime).unwrap_err();
    assert!(diags.iter().any(|d| d.message.contains("eval")), "{diags}");
}
