//! A script run's view of the world: the connection it runs for ([`ConnView`]) and the
//! [`ScriptHost`] that turns its calls into buffered state operations and effects.

use std::sync::Arc;

use serde_json::Value;

use super::effects::{Effects, Emit, RoomOp};
use super::txn::{Txn, TxnError};
use super::{Caller, Engine, ErrorCode, Failure, MAX_EMITS};
use crate::backend::{BackendError, MAX_NAME_LEN};
use crate::config::Sender;
use crate::delivery::{ConnId, Router, Target};
use crate::script::{HostError, LogLevel, ScriptHost, StateOp};

/// The connection as a script sees it; `Send`, for the blocking pool.
pub(super) struct ConnView {
    pub(super) id: ConnId,
    pub(super) user: Option<Arc<str>>,
    pub(super) claims: Value,
    pub(super) rooms: Vec<String>,
    pub(super) node: Arc<str>,
    pub(super) sender: Sender,
}

impl ConnView {
    pub(super) fn of(caller: &Caller, router: &Router, node: &Arc<str>) -> Self {
        Self {
            id: caller.id.clone(),
            user: caller.user.clone(),
            claims: caller.claims.clone(),
            rooms: caller
                .rooms
                .clone()
                .unwrap_or_else(|| router.rooms_of(&caller.id)),
            node: node.clone(),
            sender: caller.sender,
        }
    }

    pub(super) fn to_json(&self) -> Value {
        serde_json::json!({
            "id": &*self.id,
            "user": self.user.as_deref(),
            "claims": self.claims,
            "rooms": self.rooms,
            "node": &*self.node,
        })
    }
}

impl From<TxnError> for Failure {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Backend(BackendError::Unavailable { reason, .. }) => {
                Failure::new(ErrorCode::Unavailable, reason)
            }
            other => Failure::new(ErrorCode::ScriptError, other.to_string()),
        }
    }
}

impl From<TxnError> for HostError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Backend(BackendError::Unavailable { reason, .. }) => {
                HostError::Unavailable(reason)
            }
            other => HostError::Invalid(other.to_string()),
        }
    }
}

pub(super) struct Host<'a> {
    pub(super) engine: &'a Engine,
    pub(super) runtime: &'a tokio::runtime::Handle,
    pub(super) txn: Txn,
    pub(super) effects: Effects,
    pub(super) conn: &'a ConnView,
    pub(super) event: &'a str,
}

fn check_name(kind: &str, name: &str) -> Result<(), HostError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(HostError::Invalid(format!(
            "{kind} names must be 1 to {MAX_NAME_LEN} bytes long"
        )));
    }
    Ok(())
}

impl Host<'_> {
    /// `join`/`leave` change the sender's own rooms; an API call has none. Refused
    /// (rather than ignored) so a pack author finds out at the first call, not when
    /// nobody receives the room's deliveries.
    fn has_connection(&self, function: &str) -> Result<(), HostError> {
        match self.conn.sender {
            Sender::Clients => Ok(()),
            Sender::Api => Err(HostError::Invalid(format!(
                "{function}: `{}` is an API call, which has no connection to put in or take out of a room",
                self.conn.id
            ))),
        }
    }
}

impl ScriptHost for Host<'_> {
    fn emit(&mut self, target: &str, event: &str, data: Value) -> Result<(), HostError> {
        let target = Target::parse(target, &self.conn.id)
            .map_err(|e| HostError::Invalid(format!("emit: {e}")))?;
        check_name("event", event)?;
        if self.effects.emits.len() >= MAX_EMITS {
            return Err(HostError::Invalid(format!(
                "emit: more than {MAX_EMITS} deliveries from one message"
            )));
        }
        self.effects.emits.push(Emit {
            target,
            event: event.to_string(),
            data,
        });
        Ok(())
    }

    fn reply(&mut self, value: Value) {
        self.effects.reply = Some(value);
    }

    fn join(&mut self, room: &str) -> Result<(), HostError> {
        check_name("room", room)?;
        self.has_connection("join")?;
        self.effects.room_ops.push(RoomOp::Join(room.to_string()));
        Ok(())
    }

    fn leave(&mut self, room: &str) -> Result<(), HostError> {
        check_name("room", room)?;
        self.has_connection("leave")?;
        self.effects.room_ops.push(RoomOp::Leave(room.to_string()));
        Ok(())
    }

    fn presence(&mut self, room: &str) -> Result<Vec<String>, HostError> {
        let mut members = self
            .runtime
            .block_on(self.engine.backend.presence.members(room))
            .map_err(|e| HostError::Unavailable(e.to_string()))?;
        // The script's own joins and leaves count, though they apply after the commit.
        let me = self.conn.id.to_string();
        for op in &self.effects.room_ops {
            if op.room() == room {
                members.retain(|m| m != &me);
                if matches!(op, RoomOp::Join(_)) {
                    members.push(me.clone());
                }
            }
        }
        members.sort();
        Ok(members)
    }

    fn drop_delivery(&mut self) {
        self.effects.dropped = true;
    }

    fn state(&mut self, op: StateOp) -> Result<Value, HostError> {
        Ok(self.txn.apply(op)?)
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        match level {
            LogLevel::Print => {
                tracing::info!(event = self.event, conn = %self.conn.id, "script: {message}")
            }
            LogLevel::Debug => {
                tracing::debug!(event = self.event, conn = %self.conn.id, "script: {message}")
            }
        }
    }
}
