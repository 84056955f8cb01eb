//! The built binary: serving on port 0, its logs, and graceful shutdown on signals.

mod support;

use std::time::Duration;

use serde_json::json;
use support::binary::spawn_binary;
use support::cli::run;
use support::client::{Client, Closed};
use support::write_pack;

const PACK: &str = r#"
events:
  hello:
    scope: local
    schema: { type: object, required: [name] }
    script: |
      reply("hello " + data.name);
  shout:
    scope: cluster
    schema: {}
    to: all
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_pack_on_an_ephemeral_port_and_says_so() {
    let pack = write_pack(PACK);
    let server = spawn_binary(pack.path(), &[]);
    assert_ne!(server.addr.port(), 0, "the log names the real port");
    let mut c = Client::connect(&server.url()).await;
    assert_eq!(c.ok("hello", json!({ "name": "bin" })).await, "hello bin");
    let err = c.fail("hello", json!({})).await;
    assert_eq!(err["code"], "invalid_payload");
    let (status, body) = support::client::http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let log = server.log_text();
    assert!(
        log.to_lowercase().contains("memory backend"),
        "the log says which backend runs:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let pack = write_pack(PACK);
    let mut server = spawn_binary(pack.path(), &[]);
    let mut a = Client::connect(&server.url()).await;
    let mut b = Client::connect(&server.url()).await;
    a.ok("shout", json!({ "n": 1 })).await;
    assert_eq!(a.recv_event("shout").await, json!({ "n": 1 }));
    assert_eq!(b.recv_event("shout").await, json!({ "n": 1 }));

    server.signal("TERM");
    for c in [&mut a, &mut b] {
        match c.recv_close().await {
            Closed::Frame(code, reason) => {
                assert_eq!(code, 1001, "{reason}");
                assert_eq!(reason, "server shutting down");
            }
            other => panic!(
                "expected close 1001, got {other:?}; log:\n{}",
                server.log_text()
            ),
        }
    }
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    // No longer listening.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_gracefully_too() {
    let pack = write_pack(PACK);
    let mut server = spawn_binary(pack.path(), &[]);
    let mut c = Client::connect(&server.url()).await;
    server.signal("INT");
    assert_eq!(
        c.recv_close().await,
        Closed::Frame(1001, "server shutting down".into())
    );
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_client_that_stopped_reading_still_exits_in_time() {
    let pack = write_pack(PACK);
    let mut server = spawn_binary(pack.path(), &["--shutdown-timeout", "3"]);
    let mut reader = Client::connect(&server.url()).await;
    let _sleeper = Client::connect(&server.url()).await; // never read again
                                                         // Fill the sleeper's socket a little so its connection has unsent data.
    let big = "x".repeat(16 * 1024);
    for _ in 0..400 {
        reader.emit("shout", json!({ "p": big })).await;
    }
    reader.sync().await;
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let pack = write_pack(PACK);
    let mut server = spawn_binary(pack.path(), &["--log-format", "json"]);
    let _c = Client::connect(&server.url()).await;
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[test]
fn a_broken_pack_fails_to_start_with_a_message() {
    let pack = write_pack(
        r#"
events:
  broken:
    scpoe: local
    schema: {}
"#,
    );
    let dir = pack.path().to_str().expect("a UTF-8 path");
    let out = run(&["--config", dir, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "a broken pack must not be served");
    let stderr = &out.stderr;
    assert!(stderr.contains("scpoe"), "{stderr}");
    assert!(stderr.contains("pack.yaml"), "names the file: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_runtime_threads() {
    let pack = write_pack(PACK);
    let server = spawn_binary(pack.path(), &["--workers", "1"]);
    let mut c = Client::connect(&server.url()).await;
    assert_eq!(c.ok("hello", json!({ "name": "one" })).await, "hello one");
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("async runtime started") && l.contains("workers=1")),
        "the log names the worker count:\n{log}"
    );

    let stderr = refused(&["--workers", "0"]);
    assert!(stderr.contains("--workers"), "{stderr}");
}

/// Runs the binary with `args`, asserts it refuses to start, returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = run(&[args, &["--listen", "127.0.0.1:0"]].concat());
    assert!(!out.status.success(), "{args:?} is refused");
    out.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalesce_ms_reaches_the_connections_and_is_bounded() {
    let pack = write_pack(PACK);
    let server = spawn_binary(pack.path(), &["--write-coalesce-ms", "1000"]);
    let mut c = Client::connect(&server.url()).await;
    // The welcome was this connection's last write: let its window pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.emit("shout", json!({ "n": 1 })).await;
    assert_eq!(c.recv_event("shout").await["n"], 1);
    let first = std::time::Instant::now();
    c.emit("shout", json!({ "n": 2 })).await;
    assert_eq!(c.recv_event("shout").await["n"], 2);
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "the second delivery waited for the 1 s window: {waited:?}"
    );

    let stderr = refused(&["--write-coalesce-ms", "5000"]);
    assert!(stderr.contains("--write-coalesce-ms"), "{stderr}");
}
