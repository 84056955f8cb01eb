//! What a run asks for (deliveries, room changes, a reply) and how it is carried out.
//!
//! A run's deliveries are built once, by [`Engine::deliveries`], whether a commit
//! carries them or not. Room changes reach this node's router before the commit (so the
//! deliveries the commit publishes find the new member) and are undone if it fails;
//! [`Engine::finish`] then does the rest for every run alike: cluster-wide presence and
//! the deliveries the commit did not carry.

use serde_json::Value;

use super::host::ConnView;
use super::{Detail, Engine, ErrorCode, Failure, Outcome};
use crate::backend::Channel;
use crate::config::{EventDef, Scope, TargetError, TargetSpec, TemplateContext};
use crate::delivery::{self, ConnId, Envelope, RoomChange, Target};

/// A change of the caller's room membership, in the order the script made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RoomOp {
    Join(String),
    Leave(String),
}

impl RoomOp {
    pub(super) fn room(&self) -> &str {
        match self {
            Self::Join(room) | Self::Leave(room) => room,
        }
    }

    fn inverse(&self) -> Self {
        match self {
            Self::Join(room) => Self::Leave(room.clone()),
            Self::Leave(room) => Self::Join(room.clone()),
        }
    }
}

/// A delivery a script asked for, before serialization.
#[derive(Debug, Clone)]
pub(super) struct Emit {
    pub(super) target: Target,
    pub(super) event: String,
    pub(super) data: Value,
}

/// Everything one script run asked for.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) reply: Option<Value>,
    pub(super) emits: Vec<Emit>,
    /// `drop()`: nothing goes to the event's `to`.
    pub(super) dropped: bool,
    pub(super) room_ops: Vec<RoomOp>,
}

/// A run that committed (or needed no commit), with what is left to do.
pub(super) struct Committed {
    pub(super) reply: Option<Value>,
    /// Already applied to the router; cluster-wide presence follows in `finish`.
    pub(super) room_ops: Vec<RoomOp>,
    /// Deliveries no commit carried: every one of a run without a commit, and the
    /// `local` ones of a committed run.
    pub(super) unsent: Vec<Envelope>,
}

impl Engine {
    /// Every delivery of one handled event, serialized once.
    pub(super) fn deliveries(
        &self,
        def: &EventDef,
        conn: &ConnView,
        data: &Value,
        effects: &Effects,
    ) -> Result<Vec<Envelope>, Failure> {
        let mut out = Vec::with_capacity(effects.emits.len() + 1);
        if !effects.dropped && def.to != TargetSpec::None {
            let cx = TemplateContext {
                data,
                conn_id: &conn.id,
                conn_user: conn.user.as_deref(),
            };
            let target = def.to.resolve(&cx).map_err(|e| unresolved(def, e))?;
            out.push(Envelope {
                target,
                exclude: def.exclude_sender.then(|| conn.id.clone()),
                frame: delivery::frame(&def.emit_as, data),
            });
        }
        for emit in &effects.emits {
            out.push(Envelope {
                target: emit.target.clone(),
                exclude: None,
                frame: delivery::frame(&emit.event, &emit.data),
            });
        }
        Ok(out)
    }

    /// An event without a script: its one delivery, nothing else.
    pub(super) fn scriptless(
        &self,
        def: &EventDef,
        conn: &ConnView,
        data: Value,
    ) -> Result<Committed, Failure> {
        Ok(Committed {
            reply: None,
            room_ops: Vec::new(),
            unsent: self.deliveries(def, conn, &data, &Effects::default())?,
        })
    }

    /// The async half of every event: cluster-wide presence for the room changes, then
    /// the deliveries no commit carried.
    pub(super) async fn finish(&self, conn: &ConnId, def: &EventDef, run: Committed) -> Outcome {
        // Idempotent, so replaying every requested change (not only the effective ones)
        // is harmless.
        for op in &run.room_ops {
            let stored = match op {
                RoomOp::Join(room) => self.store.join(room, conn).await,
                RoomOp::Leave(room) => self.store.leave(room, conn).await,
            };
            stored?;
        }
        for envelope in run.unsent {
            match def.scope {
                Scope::Local => self.sink.deliver(&envelope),
                Scope::Cluster => self.bus.publish(envelope).await?,
            }
        }
        Ok(run.reply)
    }

    /// Apply room changes to this node's router, watching room channels as rooms gain
    /// their first local member. Returns the changes that changed something, to undo.
    pub(super) async fn apply_room_ops(
        &self,
        conn: &ConnId,
        ops: &[RoomOp],
    ) -> Result<Vec<RoomOp>, Failure> {
        let mut applied = Vec::new();
        for op in ops {
            match self.route(conn, op) {
                RoomChange::Unchanged => continue,
                RoomChange::Member => {}
                RoomChange::FirstLocal(_) => {
                    let channel = Channel::Room(op.room().to_string());
                    if let Err(e) = self.bus.watch(channel.clone()).await {
                        self.route(conn, &op.inverse());
                        self.bus.unwatch(channel);
                        self.undo_room_ops(conn, applied).await;
                        return Err(e.into());
                    }
                }
                RoomChange::LastLocal(_) => self.bus.unwatch(Channel::Room(op.room().to_string())),
            }
            applied.push(op.clone());
        }
        Ok(applied)
    }

    pub(super) async fn undo_room_ops(&self, conn: &ConnId, applied: Vec<RoomOp>) {
        for op in applied.iter().rev() {
            match self.route(conn, &op.inverse()) {
                RoomChange::LastLocal(room) => self.bus.unwatch(Channel::Room(room.to_string())),
                // Best effort: re-watching a room we just left; the reconnect loop
                // resubscribes every wanted channel if this fails.
                RoomChange::FirstLocal(room) => {
                    let _ = self.bus.watch(Channel::Room(room.to_string())).await;
                }
                RoomChange::Unchanged | RoomChange::Member => {}
            }
        }
    }

    fn route(&self, conn: &ConnId, op: &RoomOp) -> RoomChange {
        match op {
            RoomOp::Join(room) => self.router.join(conn, room),
            RoomOp::Leave(room) => self.router.leave(conn, room),
        }
    }
}

/// The failure of a `to:` that cannot be resolved for this payload.
fn unresolved(def: &EventDef, e: TargetError) -> Failure {
    // An anonymous sender cannot be addressed by user: that is an auth problem, not a
    // payload problem.
    let code = match e {
        TargetError::NoUser => ErrorCode::Unauthorized,
        _ => ErrorCode::InvalidPayload,
    };
    let mut failure = Failure::new(code, format!("cannot resolve `to: {}`: {e}", def.to));
    if let TargetError::MissingData { path } = &e {
        failure.details.push(Detail {
            path: format!("/{}", path.trim_start_matches("data.").replace('.', "/")),
            message: e.to_string(),
        });
    }
    failure
}
