//! Request heads are bounded before any handler runs: oversized heads get 431, and a
//! connection that does not finish its head in time (silent, or a slowloris trickle) is
//! closed and counted. Every exchange is raw TCP, as an attacker would speak it. And the
//! accept queue is as deep as the kernel allows.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::binary::spawn_binary;
use support::client::{http_get, Client};
use support::inprocess::start_with;
use support::{write_pack, WAIT};

const PACK: &str = r#"
events:
  ping:
    scope: local
    schema: {}
    script: |
      reply("pong");
"#;

fn upgrade_head(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Everything the server sends until it closes (or `within` passes), as text. A reset
/// after the answer still yields what arrived before it.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> String {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&raw).to_string()
}

/// Whether the server closed the connection: EOF or reset within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kib_header_line_gets_431_not_an_upgrade() {
    let server = start_with(PACK, |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let big = format!("X-Padding: {}\r\n", "a".repeat(64 * 1024));
    // The server may answer (and close) before it has read all of this.
    let _ = stream
        .write_all(upgrade_head(server.addr, &big).as_bytes())
        .await;
    let answer = read_answer(&mut stream, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_header_over_the_line_limit_gets_431_naming_it() {
    let server = start_with(PACK, |_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // 12 KiB: under the 32 KiB head limit, over the 8 KiB line limit.
    let line = format!("Cookie: {}\r\n", "c".repeat(12 * 1024));
    stream
        .write_all(upgrade_head(server.addr, &line).as_bytes())
        .await
        .expect("send the head");
    let answer = read_answer(&mut stream, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // Many modest headers that add up past the head limit are refused too.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let many: String = (0..40)
        .map(|i| format!("X-H{i}: {}\r\n", "m".repeat(1000)))
        .collect();
    let _ = stream
        .write_all(upgrade_head(server.addr, &many).as_bytes())
        .await;
    let answer = read_answer(&mut stream, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");

    // An ordinary upgrade with a few KiB of headers still works.
    let fine = format!("Cookie: {}\r\n", "c".repeat(4 * 1024));
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(upgrade_head(server.addr, &fine).as_bytes())
        .await
        .expect("send the head");
    let answer = read_answer(&mut stream, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer:.200}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_trickles_past_the_limit_gets_431() {
    let server = start_with(PACK, |c| {
        c.http.max_head_bytes = 8 * 1024;
        c.http.max_header_line_bytes = 4 * 1024;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = upgrade_head(server.addr, "");
    let head = head.trim_end_matches("\r\n");
    stream
        .write_all(format!("{head}\r\nX-Slow: ").as_bytes())
        .await
        .expect("send the start");
    // 1 KiB every 50 ms: the head passes 8 KiB after about half a second, long before
    // the head timeout.
    let started = Instant::now();
    let mut answer = String::new();
    for _ in 0..32 {
        if stream.write_all(&[b'z'; 1024]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).to_string();
            break;
        }
    }
    if answer.is_empty() {
        answer = read_answer(&mut stream, WAIT).await;
    }
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed_at_the_head_timeout() {
    let server = start_with(PACK, |c| {
        c.http.head_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = server.addr;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let started = Instant::now();
    // Ten slowloris clients: a valid head, one byte every 200 ms (it would take ~40 s).
    let head = upgrade_head(addr, "").into_bytes();
    let mut trickles = Vec::new();
    for _ in 0..10 {
        let head = head.clone();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        trickles.push(tokio::spawn(async move {
            for byte in head {
                if stream.write_all(&[byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut buf = [0u8; 64];
                if let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
                {
                    if matches!(r, Ok(0) | Err(_)) {
                        return true;
                    }
                }
            }
            false
        }));
    }
    for mut stream in silent {
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "a silent connection is still open {:?} after it was made",
            started.elapsed()
        );
    }
    for trickle in trickles {
        let closed = tokio::time::timeout(Duration::from_secs(10), trickle)
            .await
            .expect("a slowloris client finishes within 10 s")
            .expect("join");
        assert!(closed, "a slowloris connection got its whole head through");
    }
    // Real clients are unaffected: a WebSocket outlives the head timeout.
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.ok("ping", serde_json::json!({})).await, "pong");
}

/// Runs the real binary so its metrics are its own: the counters of this process would
/// include every other test's servers.
#[test]
fn timeouts_are_counted_and_frames_out_counts_every_frame_sent() {
    let pack = write_pack(
        r#"
events:
  join:
    scope: local
    schema: {}
    script: |
      join("r");
      emit("room:r", "joined", #{ who: conn.id });
  say:
    scope: local
    schema: {}
    to: "room:r"
"#,
    );
    let server = spawn_binary(pack.path(), &["--header-timeout", "1"]);
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let silent = TcpStream::connect(addr).await.expect("connect");
        let mut a = Client::connect(&server.url()).await;
        let mut b = Client::connect(&server.url()).await;
        a.ok("join", serde_json::json!({})).await;
        a.recv_event("joined").await;
        b.ok("join", serde_json::json!({})).await;
        a.recv_event("joined").await;
        b.recv_event("joined").await;
        a.ok("say", serde_json::json!("hi")).await;
        a.recv_event("say").await;
        b.recv_event("say").await;
        // Every text frame each client received, welcome included.
        let received = a.frames_received() + b.frames_received();
        assert!(received >= 10, "{received}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(silent);
        let metrics = http_get(addr, "/metrics").await.1;
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no `{name}` in:\n{metrics}"))
        };
        assert_eq!(value("wss_frames_out_total"), received as f64, "{metrics}");
        assert!(value("wss_socket_flushes_total") >= 1.0);
        assert_eq!(value("wss_http_head_timeouts_total"), 1.0, "{metrics}");
    });
}

/// The accept queue is as deep as the kernel allows (`net.core.somaxconn`), not tokio's
/// default 1,024: when a node dies, its clients come back to the survivors within
/// milliseconds, and a full queue drops their SYNs for a second or more.
#[test]
fn the_listen_queue_is_as_deep_as_the_kernel_allows() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read net.core.somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number");
    let pack = write_pack(PACK);
    let server = spawn_binary(pack.path(), &[]);
    // For a listening socket, `ss` shows the backlog as Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", server.addr.port())])
        .output()
        .expect("run ss (iproute2)");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let backlog: u32 = line
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket in `ss` output: {line:?}"));
    assert_eq!(backlog, somaxconn.min(65_535), "ss: {line}");
}
