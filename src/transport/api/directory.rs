//! Rooms, users and connections, cluster-wide: what a backend looks up and the
//! disconnects it asks for.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::idempotency::{fingerprint, Idempotency};
use super::model::{
    ok, ApiResult, ConnRef, Disconnected, ErrorReply, HistoryPage, Position, RoomCount, RoomInfo,
    RoomList, Success, UserDisconnected, UserInfo,
};
use super::request::{query_u64, Admin, Name, Needs, Read};
use super::ApiState;
use crate::delivery::Ending;
use crate::ids::node_of;

/// Most rooms `GET /api/rooms` lists.
const MAX_ROOMS: u64 = 100;
/// Most deliveries one history page holds.
const MAX_PAGE: u64 = 1_000;
/// Largest offset a client can name: JSON numbers are exact up to 2^53 (the OpenAPI
/// document says so; utoipa's attribute cannot hold the literal).
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

impl ApiState {
    /// A room's stream position, for rooms with history.
    async fn position(&self, room: &str) -> Result<Option<Position>, ApiError> {
        let Some(policy) = self.engine.pack().rooms.history_for(room) else {
            return Ok(None);
        };
        let head = self
            .engine
            .backend()
            .history
            .position(room, &policy)
            .await?;
        Ok(Some(Position::from(head)))
    }
}

/// The busiest rooms
///
/// Rooms with the most members, cluster-wide, with their stream positions.
#[utoipa::path(
    get,
    path = "/api/rooms",
    operation_id = "listRooms",
    tag = "rooms",
    params(("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "How many rooms (default 20)")),
    responses((status = 200, description = "Most members first", body = Success<RoomList>))
)]
pub async fn list_rooms(
    State(state): State<ApiState>,
    _: Needs<Read>,
    RawQuery(query): RawQuery,
) -> ApiResult<RoomList> {
    let limit = query_u64(query.as_deref(), "limit", 20, 1, MAX_ROOMS)?;
    let busiest = state
        .engine
        .backend()
        .presence
        .busiest_rooms(limit as usize)
        .await?;
    let mut rooms = Vec::with_capacity(busiest.len());
    for (room, members) in busiest {
        let history = state.position(&room).await?;
        rooms.push(RoomCount {
            room,
            members,
            history,
        });
    }
    ok(RoomList { rooms })
}

/// A room
///
/// Its members on every node and, for a room with history, its position.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}",
    operation_id = "getRoom",
    tag = "rooms",
    params(("room" = String, Path, min_length = 1, max_length = 256)),
    responses((status = 200, description = "The room (members may be none)", body = Success<RoomInfo>))
)]
pub async fn room(
    State(state): State<ApiState>,
    Name(room): Name,
    _: Needs<Read>,
) -> ApiResult<RoomInfo> {
    let members = state.engine.backend().presence.members(&room).await?;
    let history = state.position(&room).await?;
    ok(RoomInfo {
        count: members.len() as u64,
        room,
        members,
        history,
    })
}

/// A room's history
///
/// Deliveries to a room with history after offset `since`, oldest first, as its
/// members received them (each frame with its `room` and `offset`).
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/history",
    operation_id = "getRoomHistory",
    tag = "rooms",
    params(
        ("room" = String, Path, min_length = 1, max_length = 256),
        ("since" = Option<u64>, Query, minimum = 0, description = "Deliveries after this offset (default 0: the whole history)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = Success<HistoryPage>),
        (status = 404, description = "`not_found`: the room keeps no history", body = ErrorReply),
    )
)]
pub async fn history(
    State(state): State<ApiState>,
    Name(room): Name,
    _: Needs<Read>,
    RawQuery(query): RawQuery,
) -> ApiResult<HistoryPage> {
    let since = query_u64(query.as_deref(), "since", 0, 0, MAX_OFFSET)?;
    let limit = query_u64(query.as_deref(), "limit", 100, 1, MAX_PAGE)?;
    let Some(policy) = state.engine.pack().rooms.history_for(&room) else {
        return Err(ApiError::not_found(format!(
            "room `{room}` keeps no history: no `rooms:` entry of the pack gives it one"
        )));
    };
    let read = state
        .engine
        .backend()
        .history
        .history(&room, &policy, None, since, limit as usize)
        .await?;
    let deliveries = read
        .entries
        .iter()
        .map(|e| serde_json::from_slice(&e.frame).unwrap_or(Value::Null))
        .collect();
    ok(HistoryPage {
        room,
        epoch: read.head.epoch.to_string(),
        offset: read.head.offset,
        complete: read.complete,
        deliveries,
    })
}

/// A user's connections
///
/// The live connections of a user (the `sub` of their token), on every node.
#[utoipa::path(
    get,
    path = "/api/users/{user}",
    operation_id = "getUser",
    tag = "users",
    params(("user" = String, Path, min_length = 1, max_length = 256)),
    responses((status = 200, description = "The user's connections (maybe none)", body = Success<UserInfo>))
)]
pub async fn user(
    State(state): State<ApiState>,
    Name(user): Name,
    _: Needs<Read>,
) -> ApiResult<UserInfo> {
    let connections = state
        .engine
        .backend()
        .presence
        .user_conns(&user)
        .await?
        .into_iter()
        .map(|id| ConnRef {
            node: node_of(&id).to_string(),
            id,
        })
        .collect();
    ok(UserInfo { user, connections })
}

/// Disconnect a connection
///
/// The node that holds the connection closes it with close code 4001 (`disconnected by
/// the server`); its `$disconnect` hook runs there. The client may reconnect.
#[utoipa::path(
    post,
    path = "/api/connections/{id}/disconnect",
    operation_id = "disconnectConnection",
    tag = "connections",
    params(
        ("id" = String, Path, min_length = 1, max_length = 256, description = "A connection id (`$welcome`'s `conn`)"),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    responses(
        (status = 200, description = "Asked to close", body = Success<Disconnected>),
        (status = 404, description = "`not_found`: no node holds this connection", body = ErrorReply),
    )
)]
pub async fn disconnect_conn(
    State(state): State<ApiState>,
    Name(id): Name,
    _: Needs<Admin>,
    idempotency: Idempotency,
) -> Response {
    let path = format!("/api/connections/{id}/disconnect");
    let request = fingerprint("POST", &path, &Value::Null);
    idempotency
        .once(request, async move {
            if state
                .engine
                .backend()
                .presence
                .live_conn(&id)
                .await?
                .is_none()
            {
                return Err(ApiError::not_found(format!(
                    "no node holds connection `{id}`"
                )));
            }
            state
                .engine
                .backend()
                .bus
                .end_conn(&id, Ending::Disconnected)
                .await?;
            tracing::info!(conn = %id, "disconnected through the API");
            ok(Disconnected {
                node: node_of(&id).to_string(),
                connection: id,
            })
        })
        .await
}

/// Disconnect a user
///
/// Every live connection of the user, on every node, is closed with close code 4001.
#[utoipa::path(
    post,
    path = "/api/users/{user}/disconnect",
    operation_id = "disconnectUser",
    tag = "users",
    params(
        ("user" = String, Path, min_length = 1, max_length = 256),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    responses((status = 200, description = "How many connections were asked to close", body = Success<UserDisconnected>))
)]
pub async fn disconnect_user(
    State(state): State<ApiState>,
    Name(user): Name,
    _: Needs<Admin>,
    idempotency: Idempotency,
) -> Response {
    let path = format!("/api/users/{user}/disconnect");
    let request = fingerprint("POST", &path, &Value::Null);
    idempotency
        .once(request, async move {
            let conns = state.engine.backend().presence.user_conns(&user).await?;
            for conn in &conns {
                state
                    .engine
                    .backend()
                    .bus
                    .end_conn(conn, Ending::Disconnected)
                    .await?;
            }
            tracing::info!(%user, connections = conns.len(), "user disconnected through the API");
            ok(UserDisconnected {
                user,
                disconnected: conns.len() as u64,
            })
        })
        .await
}
