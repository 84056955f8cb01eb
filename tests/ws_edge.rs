//! The door of `/ws`: origins (Cross-Site WebSocket Hijacking), connection limits per
//! node, address and user (with `X-Forwarded-For` only from trusted proxies), and TLS
//! with a certificate reloaded on `SIGHUP` without dropping a socket.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use support::binary::{spawn_binary, BinaryServer};
use support::client::{token, Client};
use support::write_pack;

const PACK: &str = r#"
events:
  ping:
    scope: local
    schema: {}
    script: |
      reply("pong");
"#;

/// The HTTP status of an upgrade with `headers`, or 101.
async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = url.into_client_request().expect("a request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    match Client::open_request(request).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_own_origin_and_non_browsers_pass() {
    let pack = write_pack(PACK);
    let server = spawn_binary(pack.path(), &[]);
    let url = server.url();
    let own = format!("http://{}", server.addr);
    assert_eq!(upgrade_status(&url, &[("origin", &own)]).await, 101);
    assert_eq!(
        upgrade_status(&url, &[]).await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        upgrade_status(&url, &[("origin", "https://evil.example")]).await,
        403
    );
    let log = server.log_with(&["foreign origin", "https://evil.example"]);
    assert!(
        log.contains("foreign origin") && log.contains("https://evil.example"),
        "the refusal names the origin:\n{log}"
    );

    let server = spawn_binary(
        pack.path(),
        &[
            "--allowed-origins",
            "https://*.example.com,http://localhost:*",
        ],
    );
    let url = server.url();
    assert_eq!(
        upgrade_status(&url, &[("origin", "https://app.example.com")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&url, &[("origin", "http://localhost:5173")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&url, &[("origin", "https://example.org")]).await,
        403
    );
}

async fn metric(server: &BinaryServer, label: &str) -> f64 {
    let body = support::client::http_get(server.addr, "/metrics").await.1;
    body.lines()
        .filter(|l| l.starts_with("wss_connections_refused_total") && l.contains(label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_node_address_and_user() {
    let pack = write_pack(PACK);
    let secret = "edge-secret";
    let server = spawn_binary(
        pack.path(),
        &[
            "--max-connections",
            "8",
            "--max-connections-per-ip",
            "4",
            "--max-connections-per-user",
            "2",
            "--trusted-proxies",
            "127.0.0.1",
            "--jwt-secret",
            secret,
        ],
    );
    let url = server.url();
    let alice = format!("{url}?token={}", token(secret, "alice", 60));
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(Client::connect(&alice).await);
    }
    assert_eq!(
        upgrade_status(&alice, &[]).await,
        429,
        "alice's third socket"
    );
    // The proxy (this test, on 127.0.0.1, trusted) says which client each socket is for.
    for _ in 0..4 {
        let ws = Client::open_request(forwarded(&url, "203.0.113.1"))
            .await
            .expect("upgrade");
        open.push(Client::from_ws(ws).await);
    }
    assert_eq!(
        upgrade_status(&url, &[("x-forwarded-for", "203.0.113.1")]).await,
        429,
        "the fifth socket of one client address"
    );
    // 127.0.0.1 itself holds alice's two; two more fill the node.
    open.push(Client::connect(&url).await);
    open.push(Client::connect(&url).await);
    assert_eq!(open.len(), 8);
    assert_eq!(
        upgrade_status(&url, &[("x-forwarded-for", "198.51.100.9")]).await,
        503,
        "a full node refuses anyone"
    );
    // Places come back when sockets close.
    let first = open.remove(0);
    first.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Client::connect(&alice).await;
    assert_eq!(again.ok("ping", json!({})).await, "pong");
    assert_eq!(metric(&server, "per_user").await, 1.0);
    assert_eq!(metric(&server, "per_ip").await, 1.0);
    assert_eq!(metric(&server, "node_full").await, 1.0);
}

fn forwarded(url: &str, ip: &str) -> tungstenite::http::Request<()> {
    let mut request = url.into_client_request().expect("a request");
    request
        .headers_mut()
        .insert("x-forwarded-for", ip.parse().expect("value"));
    request
}

// ------------------------------------------------------------------------------ TLS --

/// A self-signed certificate for localhost, written as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key.pem");
    cert
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Open `wss://localhost:PORT/ws` trusting only `trusted`; reads the welcome.
async fn wss(port: u16, trusted: &rcgen::Certificate) -> Result<TlsWs, String> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(trusted.der().clone())
        .map_err(|e| e.to_string())?;
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("wss://localhost:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tls, None)
        .await
        .map_err(|e| e.to_string())?;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["event"], "$welcome");
    Ok(ws)
}

async fn next_json(ws: &mut TlsWs) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is open")
            .expect("a frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

async fn ping(ws: &mut TlsWs) -> Value {
    ws.send(Message::text(r#"{"event":"ping","id":1}"#))
        .await
        .expect("send");
    next_json(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_reloads_its_certificate_on_sighup_without_dropping_sockets() {
    let pack = write_pack(PACK);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = certificate(dir.path());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let server = spawn_binary(
        pack.path(),
        &[
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
    );
    let port = server.addr.port();
    let mut old = wss(port, &first.cert)
        .await
        .expect("wss with the first certificate");
    assert_eq!(ping(&mut old).await["data"], "pong");
    // Plain WebSocket to a TLS port gets nowhere.
    assert!(tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
    )
    .await
    .map(|r| r.is_err())
    .unwrap_or(true));

    let second = certificate(dir.path());
    server.signal("HUP");
    let mut switched = false;
    for _ in 0..50 {
        if wss(port, &second.cert).await.is_ok() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "new connections get the new certificate");
    assert!(
        wss(port, &first.cert).await.is_err(),
        "the old certificate is no longer served"
    );
    // The socket accepted with the old certificate is still open and served.
    assert_eq!(ping(&mut old).await["data"], "pong");

    // A broken certificate file is refused; the current one keeps being served.
    std::fs::write(&cert, "not a certificate").expect("break cert.pem");
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(wss(port, &second.cert).await.is_ok());
    assert!(server
        .log_with(&["TLS certificate reload refused"])
        .contains("TLS certificate reload refused"));
}
