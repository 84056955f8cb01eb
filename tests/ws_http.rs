//! The plain HTTP endpoints next to `/ws`: `/healthz`, `/readyz`, `/metrics`, and an
//! in-process graceful shutdown.

mod support;

use serde_json::json;
use support::client::{http_get, Closed};
use support::inprocess::start;

const PACK: &str = r#"
events:
  ping:
    scope: local
    schema: {}
    script: |
      reply("pong");
  echo:
    scope: local
    schema: {}
    to: sender
  failing:
    scope: local
    schema: {}
    script: |
      throw "nope";
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    let server = start(PACK).await;
    let (status, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(server.addr, "/no-such-path").await;
    assert_eq!(status, 404);
    // A plain GET on /ws without the upgrade headers is refused, not served.
    let (status, _) = http_get(server.addr, "/ws").await;
    assert!((400..500).contains(&status), "{status}");
}

/// Sends `request` raw and returns the start of the answer (status line, headers, body).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut head))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    String::from_utf8_lossy(&head[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_checks_version_and_key_and_accepts_token_lists() {
    let server = start(PACK).await;
    let addr = server.addr;
    let upgrade = |connection: &str, extra: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\
             Upgrade: websocket\r\n{extra}\r\n"
        )
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    let answer = raw_exchange(addr, &upgrade("Upgrade", "Sec-WebSocket-Version: 8\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Sec-WebSocket-Version"), "{answer}");

    let answer = raw_exchange(addr, &upgrade("Upgrade", "Sec-WebSocket-Version: 13\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Sec-WebSocket-Key"), "{answer}");

    // `Connection` may list several tokens; RFC 6455's sample key gives its sample accept.
    let both = format!("Sec-WebSocket-Version: 13\r\n{key}");
    let answer = raw_exchange(addr, &upgrade("keep-alive, Upgrade", &both)).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_named_wss() {
    let server = start(PACK).await;
    let mut c = server.connect().await;
    assert_eq!(c.ok("ping", json!({})).await, "pong");
    c.ok("echo", json!(1)).await;
    assert_eq!(c.recv_event("echo").await, 1);
    let err = c.fail("failing", json!({})).await;
    assert_eq!(err["code"], "script_error");
    c.send_text("{").await;
    c.recv_error("bad_json").await;

    let (status, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let samples: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(!samples.is_empty(), "no samples in:\n{body}");
    for line in &samples {
        assert!(line.starts_with("wss_"), "metric not named wss_*: {line}");
    }
    let has = |needle: &str| samples.iter().any(|l| l.contains(needle));
    assert!(
        has("wss_events_total{") && has("event=\"ping\"") && has("outcome=\"ok\""),
        "events by name and outcome:\n{body}"
    );
    assert!(has("outcome=\"script_error\""), "failures counted:\n{body}");
    assert!(has("wss_connections"), "connections:\n{body}");
    assert!(has("wss_frames_in_total"), "frames in:\n{body}");
    assert!(has("wss_frames_out_total"), "frames out:\n{body}");
    assert!(has("wss_script_seconds"), "script time:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_closes_clients_with_1001() {
    let server = start(PACK).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(a.ok("ping", json!({})).await, "pong");
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    for c in [&mut a, &mut b] {
        match c.recv_close().await {
            Closed::Frame(code, reason) => {
                assert_eq!(code, 1001, "{reason}");
                assert_eq!(reason, "server shutting down");
            }
            other => panic!("expected 1001, got {other:?}"),
        }
    }
    tokio::time::timeout(support::WAIT, stopping)
        .await
        .expect("server::run returns after shutdown")
        .expect("join")
        .expect("server::run returned an error");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
