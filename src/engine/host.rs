//! A script run's view of the world: the connection it runs for ([`ConnView`]) and the
//! [`ScriptHost`] that turns its calls into buffered state operations and effects.

use std::sync::Arc;

use serde_json::Value;

use super::router::Router;
use super::script::{self, LogLevel, ScriptHost, StateOp};
use super::txn::{Txn, TxnError};
use super::Conn;
use super::{Effects, Emit, Engine, ErrorCode, Failure, MAX_EMITS};
use crate::backend::{ConnId, MAX_NAME_LEN};
use crate::config::Target;

/// The connection as a script sees it; `Send`, for the blocking pool.
pub(super) struct ConnView {
    pub(super) id: ConnId,
    pub(super) user: Option<Arc<str>>,
    pub(super) claims: Value,
    pub(super) rooms: Vec<String>,
    pub(super) node: Arc<str>,
}

impl ConnView {
    pub(super) fn of(conn: &Conn, router: &Router, node: &Arc<str>) -> Self {
        Self {
            id: conn.id.clone(),
            user: conn.user.clone(),
            claims: conn.claims.clone(),
            rooms: conn
                .orphan_rooms
                .clone()
                .unwrap_or_else(|| router.rooms_of(&conn.id)),
            node: node.clone(),
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

pub(super) fn txn_failure(e: TxnError) -> Failure {
    match e {
        TxnError::Backend(crate::backend::BackendError::Unavailable(m)) => {
            Failure::new(ErrorCode::Unavailable, m)
        }
        other => Failure::new(ErrorCode::ScriptError, other.to_string()),
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

fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} names must be 1 to {MAX_NAME_LEN} bytes long"
        ));
    }
    Ok(())
}

impl ScriptHost for Host<'_> {
    fn emit(&mut self, target: &str, event: &str, data: Value) -> Result<(), String> {
        let target = Target::parse(target).map_err(|e| format!("emit: {e}"))?;
        check_name("event", event)?;
        if self.effects.emits.len() >= MAX_EMITS {
            return Err(format!(
                "emit: more than {MAX_EMITS} deliveries from one message"
            ));
        }
        self.effects.emits.push(Emit {
            target,
            event: event.to_string(),
            data,
            exclude: None,
        });
        Ok(())
    }

    fn reply(&mut self, value: Value) {
        self.effects.reply = Some(value);
    }

    fn join(&mut self, room: &str) -> Result<(), String> {
        check_name("room", room)?;
        self.effects.memberships.push((true, room.to_string()));
        Ok(())
    }

    fn leave(&mut self, room: &str) -> Result<(), String> {
        check_name("room", room)?;
        self.effects.memberships.push((false, room.to_string()));
        Ok(())
    }

    fn presence(&mut self, room: &str) -> Result<Vec<String>, String> {
        let mut members = self
            .runtime
            .block_on(self.engine.store.members(room))
            .map_err(|e| script::unavailable_message(&e.to_string()))?;
        // The script's own joins and leaves count, though they apply after the commit.
        let me = self.conn.id.to_string();
        for (join, r) in &self.effects.memberships {
            if r == room {
                members.retain(|m| m != &me);
                if *join {
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

    fn state(&mut self, op: StateOp) -> Result<Value, String> {
        self.txn.apply(op).map_err(|e| match e {
            TxnError::Backend(crate::backend::BackendError::Unavailable(m)) => {
                script::unavailable_message(&m)
            }
            other => other.to_string(),
        })
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
