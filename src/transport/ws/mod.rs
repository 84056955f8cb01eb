//! `/ws`: the upgrade, then one task per socket.
//!
//! Each socket is served by a single task that `select!`s over the client's frames, its
//! outbound queue, keepalive and shutdown. One task (not a reader and a writer) keeps
//! per-connection memory small; every branch of the select is cancel-safe.

pub mod protocol;
mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use upgrade::{Socket as WebSocket, Upgrade};

use super::AppState;
use crate::delivery::{ConnLink, Ending};
use crate::engine::{Conn, Engine, ErrorCode, Failure};

/// Close codes (RFC 6455 §7.4.1) and the reasons sent with them.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// Registered by IANA for "try again later": used for slow consumers.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Application-defined (4000–4999): the session was resumed by another connection.
    pub const TAKEN_OVER: u16 = 4000;
    /// Application-defined: a backend disconnected it through the HTTP API.
    pub const DISCONNECTED: u16 = 4001;
}

/// Frames written to the socket in one flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;

#[derive(Deserialize)]
pub(super) struct UpgradeQuery {
    token: Option<String>,
}

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<UpgradeQuery>,
    mut request: Request,
) -> Response {
    let ws = match Upgrade::from_request(&mut request) {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    if *state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    if let Err(refused) = state.gate.check_origin(request.headers(), peer.ip()) {
        return (refused.status, refused.message).into_response();
    }
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let identity = match state.auth.authenticate(query.token.as_deref().or(bearer)) {
        Ok(identity) => identity,
        Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    let ip = state.gate.client_ip(peer, request.headers());
    let admission = match state.gate.admit(ip, identity.user.as_ref()) {
        Ok(admission) => admission,
        Err(refused) => return (refused.status, refused.message).into_response(),
    };
    // tungstenite's read buffer is allocated per connection and zero-filled on every
    // read attempt (one per wake of the connection task), so it dominates idle memory
    // and shows in fan-out profiles. Client frames are small JSON; a larger one just
    // takes a few more reads. The hard cap sits above the soft limit so an oversized
    // frame can still get `too_large`.
    let hard_cap = (state.limits.max_frame_bytes * 4).max(1 << 20);
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap));
    ws.on_upgrade(config, move |socket| async move {
        // Held for as long as the socket is served: its place under the limits.
        let _admission = admission;
        serve_socket(socket, state, identity).await
    })
}

/// How long closing may take: our close frame plus the client's reply (RFC 6455
/// §7.1.1). Bounded because a client that stopped reading never replies.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// After a protocol violation, the client is taken to be done sending once nothing has
/// arrived for this long.
const LINGER_QUIET: Duration = Duration::from_millis(250);

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }))
}

const SLOW_REASON: &str = "slow consumer: outbound queue full";

/// The close a link's ending calls for.
fn ending_close(why: Ending) -> Exit {
    match why {
        Ending::SlowConsumer => Exit::Close(close::TRY_AGAIN_LATER, SLOW_REASON),
        Ending::TakenOver => Exit::Close(close::TAKEN_OVER, "resumed elsewhere"),
        Ending::Disconnected => Exit::Close(close::DISCONNECTED, "disconnected by the server"),
    }
}

enum Exit {
    /// The client went away (error, EOF): nothing more to send.
    Gone,
    /// The client sent a close frame: our reply is queued and still has to be flushed.
    ClosedByClient,
    Close(u16, &'static str),
    /// The client broke the protocol (a frame past the hard cap, invalid UTF-8, a bad
    /// opcode): tungstenite reads nothing more, but the client may still be sending.
    Violation(u16, &'static str),
}

async fn serve_socket(mut socket: WebSocket, state: AppState, identity: super::auth::Identity) {
    let engine = state.engine.clone();
    let id = engine.next_conn_id();
    let link = ConnLink::with_windows(state.limits.outbound_queue, state.windows.clone());
    let mut conn = Conn::new(id.clone(), identity.user, identity.claims);
    metrics::counter!("wss_connections_total").increment(1);
    metrics::gauge!("wss_connections").increment(1.0);
    tracing::debug!(conn = %id, "connected");

    let exit = async {
        // Registered and `$connect` run before the welcome: a client that has its
        // welcome can be reached (by conn, user, `all`) and sees the hook's effects.
        // Deliveries that arrive meanwhile wait in the link and follow the welcome.
        let connected = Box::pin(engine.connect(&mut conn, link.clone())).await;
        let welcome = protocol::welcome(
            &id,
            &engine.node_id,
            conn.session.expose(),
            engine.sessions.resume_ttl.as_secs(),
        );
        if send_text(&mut socket, welcome).await.is_err() {
            return Exit::Gone;
        }
        if let Err(failure) = connected {
            let _ = send_text(&mut socket, protocol::error_event(&failure)).await;
            return Exit::Close(close::POLICY, "connection refused by $connect");
        }
        run_loop(&mut socket, &state, &mut conn, &link).await
    }
    .await;

    match exit {
        Exit::Gone => {}
        Exit::ClosedByClient => {
            // tungstenite queued the reply to the client's close frame; it goes out on
            // the next read. Dropping the socket instead leaves the client with "reset
            // without closing handshake".
            let _ = tokio::time::timeout(CLOSE_GRACE, drain_until_closed(&mut socket)).await;
        }
        Exit::Close(code, reason) => {
            // Wait (bounded: a client that stopped reading holds nothing) for the
            // client's reply before dropping TCP. Dropping right after our close frame
            // makes any late client write (a pong) draw an RST, and an RST can destroy
            // the close frame still unread in the client's receive buffer, so the
            // client would never learn the code and reason.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                if socket.send(close_frame(code, reason)).await.is_ok() {
                    drain_until_closed(&mut socket).await;
                }
            })
            .await;
            tracing::debug!(conn = %id, code, reason, "closed by server");
        }
        Exit::Violation(code, reason) => {
            // Same reason to wait as above, but tungstenite reads no more frames after
            // an error, so the rest of what the client sends is discarded raw.
            let sent = tokio::time::timeout(CLOSE_GRACE, socket.send(close_frame(code, reason)));
            if let Ok(Ok(())) = sent.await {
                // Boxed: its read buffer would otherwise sit in every connection's task.
                Box::pin(upgrade::linger(&mut socket, LINGER_QUIET, CLOSE_GRACE)).await;
            }
            tracing::info!(conn = %id, code, reason, "closed a client that broke the protocol");
        }
    }
    drop(socket);
    Box::pin(engine.disconnect(&mut conn)).await;
    metrics::gauge!("wss_connections").decrement(1.0);
    tracing::debug!(conn = %id, "disconnected");
}

async fn run_loop(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &mut Conn,
    link: &Arc<ConnLink>,
) -> Exit {
    let engine = &state.engine;
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(state.limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut last_seen = Instant::now();
    // Built once, not per loop turn: the task wakes once per delivery, and recreating
    // (and re-registering) these futures on every wake showed in fan-out profiles.
    let ended = link.ended();
    let shut_down = async {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    tokio::pin!(ended, shut_down);
    loop {
        tokio::select! {
            inbound = socket.next() => {
                last_seen = Instant::now();
                let replied = match inbound {
                    Some(Ok(Message::Text(text))) => {
                        metrics::counter!("wss_frames_in_total").increment(1);
                        handle_text(engine, conn, link, &text, state.limits.max_frame_bytes).await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let failure = Failure::new(ErrorCode::BadFrame, "binary frames are not supported: send JSON text");
                        link.push_answer(protocol::error_event(&failure))
                    }
                    // `Frame` is never returned by a read; pings are answered by tungstenite.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) => return Exit::ClosedByClient,
                    None => return Exit::Gone,
                    Some(Err(e)) => {
                        tracing::debug!(conn = %conn.id(), error = %e, "socket error");
                        return violation(&e).unwrap_or(Exit::Gone);
                    }
                };
                // A client waiting for an answer is not made to wait for the write
                // window too: answers (and whatever queued before them) leave now.
                if replied {
                    if let Err(exit) = write_now(socket, link, state, conn).await {
                        return exit;
                    }
                }
            }
            _ = link.ready() => {
                // The link wakes us when its write window allows (see `WriteWindows`).
                if let Err(exit) = write_now(socket, link, state, conn).await {
                    return exit;
                }
            }
            why = &mut ended => {
                tracing::info!(conn = %conn.id(), reason = ?why, "closing the connection");
                return ending_close(why);
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= state.limits.idle_timeout {
                    return Exit::Close(close::GOING_AWAY, "idle timeout");
                }
                let stall = state.limits.idle_timeout;
                if let Err(exit) = guarded(link, stall, socket.send(Message::Ping(Default::default()))).await {
                    return exit;
                }
            }
            _ = &mut shut_down => {
                // Flush what is already queued so nothing acknowledged is lost; bounded,
                // or one client that stopped reading would hold up the whole shutdown.
                let drained = tokio::time::timeout(CLOSE_GRACE, write_queued(socket, link)).await;
                if let Ok(Err(_)) = drained {
                    return Exit::Gone;
                }
                return Exit::Close(close::GOING_AWAY, "server shutting down");
            }
        }
    }
}

/// Write what is queued now, closing a client that does not read (see `guarded`).
async fn write_now(
    socket: &mut WebSocket,
    link: &ConnLink,
    state: &AppState,
    conn: &Conn,
) -> Result<(), Exit> {
    let written = guarded(link, state.limits.idle_timeout, write_queued(socket, link)).await;
    match written {
        Ok(frames) => {
            if frames > 0 {
                link.wrote();
            }
            Ok(())
        }
        Err(exit) => {
            tracing::info!(conn = %conn.id(), "closing a client that does not read");
            Err(exit)
        }
    }
}

/// The close a read error calls for, if the client is still there to receive one.
fn violation(error: &WsError) -> Option<Exit> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match error {
        WsError::Capacity(_) => Some(Exit::Violation(
            close::TOO_BIG,
            "frame exceeds the hard size limit",
        )),
        WsError::Utf8(_) => Some(Exit::Violation(
            close::INVALID_DATA,
            "text frame is not valid UTF-8",
        )),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(Exit::Violation(
            close::PROTOCOL_ERROR,
            "WebSocket protocol violation",
        )),
        _ => None,
    }
}

/// Run one socket write, giving up when it cannot finish.
///
/// A write only waits when the client's receive window and our socket buffer are full,
/// i.e. the client is not reading. Waiting inside a `select!` branch blocks every other
/// branch, so without this a non-reading client would pin its task (and its rooms and
/// memory) forever: the slow-consumer flag, the idle check and the pings are all
/// behind the stuck write. So a write ends early when the outbound queue overflows (the
/// slow-consumer policy) or when it makes no progress for `stall`.
///
/// Almost every write finishes at its first poll (the socket buffer has room), so that
/// poll is made alone: only a write that must wait arms the stall timer and the other
/// branches. A timer per write (registered in the runtime's wheel, then cancelled) was
/// a per-delivery cost in fan-outs to many small rooms, where every delivery is a write.
async fn guarded<T>(
    link: &ConnLink,
    stall: Duration,
    write: impl std::future::Future<Output = Result<T, WsError>>,
) -> Result<T, Exit> {
    let mut write = std::pin::pin!(write);
    if let Some(written) = (&mut write).now_or_never() {
        return written.map_err(|_| Exit::Gone);
    }
    tokio::select! {
        written = write => written.map_err(|_| Exit::Gone),
        why = link.ended() => Err(ending_close(why)),
        _ = tokio::time::sleep(stall) => Err(Exit::Close(
            close::TRY_AGAIN_LATER,
            "slow consumer: not reading",
        )),
    }
}

/// Send one text frame outside the queue (before the connection loop runs).
async fn send_text(socket: &mut WebSocket, frame: Utf8Bytes) -> Result<(), WsError> {
    socket.send(Message::Text(frame)).await?;
    metrics::counter!("wss_frames_out_total").increment(1);
    metrics::counter!("wss_socket_flushes_total").increment(1);
    Ok(())
}

/// Read and discard until the closing handshake completes (or the stream ends).
async fn drain_until_closed(socket: &mut WebSocket) {
    while let Some(Ok(_)) = socket.next().await {}
}

/// Write everything queued (and what arrives meanwhile), flushing every few frames so a
/// backlog leaves in a few large writes rather than one syscall per frame.
/// Returns how many frames were written.
async fn write_queued(socket: &mut WebSocket, link: &ConnLink) -> Result<usize, WsError> {
    let mut written = 0;
    let mut flushes = 0;
    let result = async {
        loop {
            let frames = link.take_all();
            if frames.is_empty() {
                return Ok(());
            }
            for (i, frame) in frames.into_iter().enumerate() {
                socket.feed(Message::Text(frame)).await?;
                written += 1;
                if (i + 1) % WRITE_BATCH == 0 {
                    socket.flush().await?;
                    flushes += 1;
                }
            }
            socket.flush().await?;
            flushes += 1;
        }
    }
    .await;
    // Counted once per call, not per frame: this is the delivery hot path.
    metrics::counter!("wss_frames_out_total").increment(written as u64);
    metrics::counter!("wss_socket_flushes_total").increment(flushes);
    result.map(|()| written)
}

/// Handle one client frame; true when an answer (ack or `$error`) was queued.
///
/// Public only so the fuzz targets (`fuzz/`) drive the same path a socket's text frame
/// takes, without a socket.
#[doc(hidden)]
pub async fn handle_text(
    engine: &Arc<Engine>,
    conn: &mut Conn,
    link: &ConnLink,
    text: &str,
    max_frame_bytes: usize,
) -> bool {
    if text.len() > max_frame_bytes {
        let failure = Failure::new(
            ErrorCode::TooLarge,
            format!(
                "frame of {} bytes exceeds the limit of {max_frame_bytes}",
                text.len()
            ),
        );
        // Still answer with an ack when the frame carries an id (the frame is bounded by
        // the hard cap, so reading it once more is bounded too).
        let frame = match protocol::read_id(text) {
            Some(id) => protocol::answer(Some(&id), &Err(failure)),
            None => Some(protocol::error_event(&failure)),
        };
        return frame.is_some_and(|frame| link.push_answer(frame));
    }
    let (id, outcome) = match protocol::parse(text) {
        Ok(request) => {
            // Boxed: the dispatch future (script, commit, publish) is large and inlining
            // it would make every idle connection's task carry its size.
            let outcome = Box::pin(engine.handle(conn, &request.event, request.data)).await;
            (request.id, outcome)
        }
        Err(rejected) => {
            let (id, failure) = *rejected;
            (id, Err(failure))
        }
    };
    // Acks go through the same queue as deliveries, so a client sees an event's
    // deliveries before the ack that confirms it.
    protocol::answer(id.as_ref(), &outcome).is_some_and(|frame| link.push_answer(frame))
}
