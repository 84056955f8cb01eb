//! The shapes of the API's answers: serialized to build them and described (utoipa)
//! to document them, so the OpenAPI document cannot drift from what is sent. A
//! handler answers [`ApiResult`]: [`ok`] with its data, or an [`ApiError`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::ApiError;

/// What a handler answers: its data, shaped as [`Success`], or why it failed.
pub type ApiResult<T> = Result<Success<T>, ApiError>;

/// `{"ok": true, "data": data}`, 200.
pub fn ok<T: ToSchema>(data: T) -> ApiResult<T> {
    Ok(Success { ok: true, data })
}

/// A JSON answer with `status`: every answer of the API is written here.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// Every successful answer: `{"ok": true, "data": …}`.
#[derive(Serialize, ToSchema)]
pub struct Success<T: ToSchema> {
    /// Always `true`.
    pub ok: bool,
    pub data: T,
}

impl<T: ToSchema + Serialize> Success<T> {
    /// The answer's body, as an idempotency key keeps it. Data that cannot be JSON
    /// (no type here has any) is sent as `null` rather than failing the request.
    pub fn body(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({ "ok": true, "data": null }))
    }
}

impl<T: ToSchema + Serialize> IntoResponse for Success<T> {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, &self.body())
    }
}

/// Every error: `{"ok": false, "error": {…}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorReply {
    /// Always `false`.
    pub ok: bool,
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The socket protocol's error code (`invalid_payload`, `unknown_event`, …), or
    /// `forbidden`, `not_found`, or a code a script passed to `reject`.
    pub code: String,
    pub message: String,
    /// `invalid_payload`: one entry per schema error (`path`, a JSON Pointer into the
    /// payload, and `message`); `bad_json`: where the JSON broke (`line`, `column`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<ErrorDetail>>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

/// The answer of an event: the script's `reply` (any JSON), or `null`.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Value)]
pub struct EventReply(pub Value);

/// A room's place in its stream (rooms with history): the next delivery gets
/// `offset + 1` in `epoch`.
#[derive(Serialize, ToSchema)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl From<crate::delivery::StreamPosition> for Position {
    fn from(at: crate::delivery::StreamPosition) -> Self {
        Self {
            epoch: at.epoch.to_string(),
            offset: at.offset,
        }
    }
}

/// A room, cluster-wide.
#[derive(Serialize, ToSchema)]
pub struct RoomInfo {
    pub room: String,
    /// Connection ids in the room, on every node, sorted.
    pub members: Vec<String>,
    pub count: u64,
    /// Its stream position; `null` for a room without history.
    pub history: Option<Position>,
}

/// One of the busiest rooms.
#[derive(Serialize, ToSchema)]
pub struct RoomCount {
    pub room: String,
    pub members: u64,
    pub history: Option<Position>,
}

#[derive(Serialize, ToSchema)]
pub struct RoomList {
    /// Most members first.
    pub rooms: Vec<RoomCount>,
}

/// Deliveries of a room after an offset, as its members received them.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub room: String,
    pub epoch: String,
    /// The room's last offset now.
    pub offset: u64,
    /// `false` when deliveries after `since` are missing from history (trimmed or
    /// expired): the page starts later than asked.
    pub complete: bool,
    /// Each delivery's frame: `{"event", "data", "room", "offset"}`.
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<Value>,
}

/// A live connection.
#[derive(Serialize, ToSchema)]
pub struct ConnRef {
    pub id: String,
    /// The node that holds it.
    pub node: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserInfo {
    pub user: String,
    /// The user's live connections, on every node.
    pub connections: Vec<ConnRef>,
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    /// The connection asked to close (with 4001 `disconnected by the server`).
    pub connection: String,
    pub node: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserDisconnected {
    pub user: String,
    /// How many connections were asked to close.
    pub disconnected: u64,
}

/// One node of the application.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// `false`: its heartbeat expired; a survivor cleans up after it.
    pub alive: bool,
    pub addr: Option<String>,
    pub connections: Option<u64>,
    /// The fingerprint of the pack it serves.
    pub pack: Option<String>,
    pub ready: Option<bool>,
    /// Seconds since it started.
    pub uptime: Option<u64>,
    pub version: Option<String>,
    /// The node that answered this request.
    pub this: bool,
}

#[derive(Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// How many different packs the live nodes serve (more than 1: a rollout).
    pub packs: u64,
}

/// Event counters.
#[derive(Serialize, ToSchema)]
pub struct Counters {
    /// Events handled (clients and API), whatever their outcome.
    pub events_total: u64,
    /// Averaged over about the last ten seconds.
    pub events_per_second: f64,
    /// Failed events by error code (script `reject` codes count as `rejected`).
    #[schema(value_type = Object)]
    pub errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize, ToSchema)]
pub struct NodeCounters {
    pub node: String,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Serialize, ToSchema)]
pub struct StatsView {
    /// Every live node's counters (other nodes' as of their last heartbeat).
    pub nodes: Vec<NodeCounters>,
    pub total: Counters,
}

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// The API key's name; API events run with `conn.id` = `api:<key>`.
    pub key: String,
    pub scopes: Vec<String>,
}

/// One call's answer in a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// The HTTP status the call would have had on its own.
    pub status: u16,
    /// Its body: `{"ok": true, "data": …}` or `{"ok": false, "error": …}` (`null` for
    /// an answer without one, such as a 405).
    #[schema(value_type = Value)]
    pub body: Value,
}
