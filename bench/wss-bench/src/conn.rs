//! One client connection: TCP (optionally bound to a chosen 127.0.0.x source address),
//! the WebSocket handshake with small buffers, and the two wire protocols the generator
//! speaks: wss-engine's JSON envelope and the Socket.IO v5 / Engine.IO v4 text protocol.
//!
//! Socket.IO is spoken here in Rust (not through Node's `socket.io-client`) so both
//! servers face the very same client: same runtime, same parser cost, same timestamps.
//! A Node load generator would be the bottleneck on this 2-core machine long before
//! either server, and would measure itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Frames read while waiting for one expected frame (welcome, ack) before giving up.
const MAX_SKIPPED_FRAMES: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// wss-engine's JSON envelope (`{"event", "data", "id"}`).
    Wss,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only.
    Socketio,
}

/// Where to connect: the URL for the handshake and the socket address to dial.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Resolve a `ws://host:port/path` URL. For Socket.IO an empty path becomes the
    /// Engine.IO endpoint (`/socket.io/?EIO=4&transport=websocket`).
    pub async fn resolve(url: &str, protocol: Protocol) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("`{url}`: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let url = match (protocol, path) {
            (Protocol::Socketio, "" | "/") => {
                format!("ws://{authority}/socket.io/?EIO=4&transport=websocket")
            }
            (Protocol::Wss, "" | "/") => format!("ws://{authority}/ws"),
            _ => url.to_string(),
        };
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority} resolves to no address"))?;
        Ok(Self { url, addr })
    }
}

/// Source addresses to spread connections over (ephemeral ports are per source
/// address, so 8 addresses give 8× the ~28k ports of one). Loopback targets only.
#[derive(Debug, Clone)]
pub struct Sources {
    ips: Vec<IpAddr>,
}

impl Sources {
    /// `n` addresses 127.0.0.1 ..= 127.0.0.n; `0` lets the kernel choose.
    pub fn loopback(n: u8) -> Self {
        Self {
            ips: (1..=n).map(|i| IpAddr::from([127, 0, 0, i])).collect(),
        }
    }

    pub fn pick(&self, i: usize) -> Option<IpAddr> {
        if self.ips.is_empty() {
            None
        } else {
            Some(self.ips[i % self.ips.len()])
        }
    }
}

/// Small buffers: tungstenite's defaults (128 KiB read buffer, zero-filled on every read)
/// cost more CPU than the whole JSON handling of a benchmark frame.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Dial and upgrade, then finish the protocol's own handshake.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    protocol: Protocol,
    timeout: Duration,
) -> anyhow::Result<Ws> {
    connect_welcomed(target, source, protocol, timeout)
        .await
        .map(|(ws, _)| ws)
}

/// [`connect`], also returning the server's first frame (wss-engine's `$welcome`, which
/// holds the session a resume needs; Engine.IO's open packet).
pub async fn connect_welcomed(
    target: &Target,
    source: Option<IpAddr>,
    protocol: Protocol,
    timeout: Duration,
) -> anyhow::Result<(Ws, String)> {
    tokio::time::timeout(timeout, async {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            if target.addr.ip().is_loopback() && ip.is_loopback() {
                // Reuse ports still in TIME_WAIT from a previous run.
                socket.set_reuseaddr(true)?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("binding a client socket to {ip}"))?;
            }
        }
        let stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            target.url.as_str(),
            stream,
            Some(ws_config()),
        )
        .await
        .with_context(|| format!("WebSocket handshake with {}", target.url))?;
        let welcome = match protocol {
            Protocol::Wss => {
                expect(&mut ws, protocol, |t| {
                    t.starts_with("{\"event\":\"$welcome\"")
                })
                .await?
            }
            Protocol::Socketio => {
                let open = expect(&mut ws, protocol, |t| t.starts_with('0')).await?;
                ws.send(Message::text("40")).await?;
                expect(&mut ws, protocol, |t| {
                    t.starts_with("40") || t.starts_with("44")
                })
                .await
                .and_then(|t| {
                    if t.starts_with("44") {
                        bail!("Socket.IO connect refused: {t}")
                    }
                    Ok(t)
                })?;
                open
            }
        };
        Ok((ws, welcome))
    })
    .await
    .map_err(|_| anyhow!("connecting to {} timed out", target.url))?
}

/// Join a room and wait for the server to confirm (a join is effective at its ack).
pub async fn join(
    ws: &mut Ws,
    protocol: Protocol,
    room: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (frame, is_ack): (String, fn(&str) -> bool) = match protocol {
        Protocol::Wss => (
            format!(r#"{{"event":"bench.join","data":{{"room":"{room}"}},"id":"join"}}"#),
            |t| t.starts_with(r#"{"ack":"join""#),
        ),
        Protocol::Socketio => (format!(r#"421["join",{{"room":"{room}"}}]"#), |t| {
            t.starts_with("431[")
        }),
    };
    tokio::time::timeout(timeout, async {
        ws.send(Message::text(frame)).await?;
        let ack = expect(ws, protocol, is_ack).await?;
        if protocol == Protocol::Wss && !ack.contains(r#""ok":true"#) {
            bail!("join refused: {ack}");
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow!("join of room {room} timed out"))?
}

/// Read until a text frame matching `want` arrives (answering Engine.IO pings).
async fn expect(
    ws: &mut Ws,
    protocol: Protocol,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    for _ in 0..MAX_SKIPPED_FRAMES {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if want(&text) {
                    return Ok(text.to_string());
                }
                if protocol == Protocol::Socketio && text.as_str() == "2" {
                    ws.send(Message::text("3")).await?;
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("server closed the connection: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
    bail!("the expected frame did not come within {MAX_SKIPPED_FRAMES} frames")
}

/// Wrap an event for the wire: `{"event":E,"data":D}` or `42["E",D]` (with an ack id
/// when `id` is given).
pub fn event_frame(protocol: Protocol, event: &str, data: &str, id: Option<u64>) -> String {
    match (protocol, id) {
        (Protocol::Wss, None) => format!(r#"{{"event":"{event}","data":{data}}}"#),
        (Protocol::Wss, Some(id)) => format!(r#"{{"event":"{event}","data":{data},"id":{id}}}"#),
        (Protocol::Socketio, None) => format!(r#"42["{event}",{data}]"#),
        (Protocol::Socketio, Some(id)) => format!(r#"42{id}["{event}",{data}]"#),
    }
}

/// What an inbound text frame is, as far as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A delivery of the benchmark event: its data object, unparsed.
    Delivery(&'a str),
    /// An Engine.IO ping that must be answered with `3`.
    Ping,
    /// A wss-engine `$error` event (a publisher sent something the server refused).
    Error,
    /// An ack: id, ok, the raw rest of the frame.
    Ack {
        id: u64,
        ok: bool,
        rest: &'a str,
    },
    Other,
}

/// Classify a frame by its prefix: cheap enough for hundreds of thousands per second.
pub fn classify<'a>(protocol: Protocol, text: &'a str, delivery_event: &str) -> Inbound<'a> {
    match protocol {
        Protocol::Wss => {
            if let Some(rest) = text.strip_prefix(r#"{"event":""#) {
                if let Some(rest) = rest.strip_prefix(delivery_event) {
                    if let Some(data) = rest.strip_prefix(r#"","data":"#) {
                        return Inbound::Delivery(data);
                    }
                }
                if rest.starts_with("$error\"") {
                    return Inbound::Error;
                }
                return Inbound::Other;
            }
            if let Some(rest) = text.strip_prefix(r#"{"ack":"#) {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if let Ok(id) = rest[..digits].parse::<u64>() {
                    let rest = &rest[digits..];
                    return Inbound::Ack {
                        id,
                        ok: rest.starts_with(r#","ok":true"#),
                        rest,
                    };
                }
            }
            Inbound::Other
        }
        Protocol::Socketio => {
            if text == "2" {
                return Inbound::Ping;
            }
            if let Some(rest) = text.strip_prefix("42[\"") {
                if let Some(rest) = rest.strip_prefix(delivery_event) {
                    if let Some(data) = rest.strip_prefix("\",") {
                        return Inbound::Delivery(data);
                    }
                }
                return Inbound::Other;
            }
            if let Some(rest) = text.strip_prefix("43") {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if let Ok(id) = rest[..digits].parse::<u64>() {
                    return Inbound::Ack {
                        id,
                        ok: true,
                        rest: &rest[digits..],
                    };
                }
            }
            Inbound::Other
        }
    }
}

/// The unsigned integers under `keys` in a flat JSON object, in one pass and without
/// parsing the rest (four separate searches showed as ~8% of the generator's CPU).
/// String values are skipped whole, so a key's name inside one does not match.
/// Benchmark payloads are written by this generator: no escaped quotes in keys. It
/// stops once every key is found, so padding written after them is never scanned.
pub fn fields_u64<const N: usize>(json: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut found = [None; N];
    let mut missing = N;
    let bytes = json.as_bytes();
    let mut at = 0;
    while missing > 0 {
        let Some(open) = json[at..].find('"') else {
            break;
        };
        let start = at + open + 1;
        let Some(close) = closing_quote(&bytes[start..]) else {
            break;
        };
        let end = start + close;
        at = end + 1;
        if bytes.get(at) != Some(&b':') {
            continue; // a string value
        }
        at += 1;
        if let Some(slot) = keys.iter().position(|k| *k == &json[start..end]) {
            let digits = bytes[at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if found[slot].is_none() {
                found[slot] = json[at..at + digits].parse().ok();
                missing -= usize::from(found[slot].is_some());
            }
            at += digits;
        }
    }
    found
}

/// Index of the quote that ends a string starting at `bytes[0]` (escapes skipped).
fn closing_quote(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_one_pass_and_not_from_inside_strings() {
        let data = r#"{"room":"\"p\":9","k":3,"p":1,"seq":17,"ts":1234567,"pad":"\"seq\":5"}"#;
        assert_eq!(
            fields_u64(data, ["k", "p", "seq", "ts"]),
            [Some(3), Some(1), Some(17), Some(1234567)]
        );
        assert_eq!(fields_u64(r#"{"p":"x"}"#, ["p", "ts"]), [None, None]);
        assert_eq!(fields_u64(r#"{"p":4"#, ["p"]), [Some(4)]);
    }

    #[test]
    fn classifies_both_protocols() {
        let d = r#"{"event":"bench.msg","data":{"room":"r","p":1,"seq":7,"ts":99}}"#;
        assert_eq!(
            classify(Protocol::Wss, d, "bench.msg"),
            Inbound::Delivery(r#"{"room":"r","p":1,"seq":7,"ts":99}}"#)
        );
        assert_eq!(
            classify(
                Protocol::Socketio,
                r#"42["bench.msg",{"p":1}]"#,
                "bench.msg"
            ),
            Inbound::Delivery(r#"{"p":1}]"#)
        );
        assert_eq!(
            classify(Protocol::Socketio, "2", "bench.msg"),
            Inbound::Ping
        );
        assert!(matches!(
            classify(Protocol::Wss, r#"{"ack":12,"ok":true,"data":3}"#, "x"),
            Inbound::Ack {
                id: 12,
                ok: true,
                ..
            }
        ));
        assert!(matches!(
            classify(Protocol::Wss, r#"{"ack":12,"ok":false,"error":{}}"#, "x"),
            Inbound::Ack {
                id: 12,
                ok: false,
                ..
            }
        ));
        assert_eq!(
            classify(Protocol::Wss, r#"{"event":"$error","data":{}}"#, "x"),
            Inbound::Error
        );
    }

    #[test]
    fn reads_fields() {
        let data = r#"{"room":"r","p":3,"seq":12,"ts":1700000000123456,"pad":"xx"}"#;
        assert_eq!(
            fields_u64(data, ["p", "seq", "ts", "nope"]),
            [Some(3), Some(12), Some(1_700_000_000_123_456), None]
        );
    }
}
