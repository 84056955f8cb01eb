//! What a run asks for (deliveries, room changes, a reply) and how it is carried out.
//!
//! A run's deliveries are built once, by [`Engine::deliveries`], whether a commit
//! carries them or not. Room changes reach this node's router before the commit (so the
//! deliveries the commit publishes find the new member) and are undone if it fails;
//! [`Engine::finish`] then does the rest for every run alike: cluster-wide presence and
//! the deliveries the commit did not carry.

use std::time::Duration;

use serde_json::Value;

use super::host::ConnView;
use super::{Detail, Engine, ErrorCode, Failure, Outcome};
use crate::backend::{Channel, Placement};
use crate::config::{EventDef, Scope, TargetError, TargetSpec, TemplateContext};
use crate::delivery::{
    self, Activated, ConnId, Envelope, HistoryPolicy, Position, RoomChange, RoomKind, Target,
};

/// How long a joiner of a room with history waits for another joiner of this node to
/// start the room's stream.
const STREAM_START_WAIT: Duration = Duration::from_secs(5);
/// How long an event's ack waits for its own deliveries to rooms with history to reach
/// this node's members (they can be held a moment behind an earlier offset).
const RELEASE_WAIT: Duration = Duration::from_secs(1);

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
    /// Where the commit placed deliveries to rooms with history.
    pub(super) placed: Vec<Placement>,
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
            let exclude = def.exclude_sender.then(|| conn.id.clone());
            out.push(self.envelope(def.scope, target, exclude, &def.emit_as, data));
        }
        for emit in &effects.emits {
            out.push(self.envelope(
                def.scope,
                emit.target.clone(),
                None,
                &emit.event,
                &emit.data,
            ));
        }
        Ok(out)
    }

    /// One delivery, serialized. A `cluster` delivery to a room with history is left
    /// unplaced, for the backend to give it its offset; every member receives it, the
    /// sender included, whatever `exclude_sender` says: a member's offsets must follow
    /// one another. A `local` one stays ephemeral: no offset, not kept.
    fn envelope(
        &self,
        scope: Scope,
        target: Target,
        exclude: Option<ConnId>,
        event: &str,
        data: &Value,
    ) -> Envelope {
        if let (Target::Room(room), Scope::Cluster) = (&target, scope) {
            if let Some(policy) = self.pack.load().rooms.history_for(room) {
                return Envelope {
                    frame: delivery::unplaced_frame(event, data, room),
                    target,
                    exclude: None,
                    position: Position::Unplaced(policy),
                };
            }
        }
        Envelope::plain(target, exclude, delivery::frame(event, data))
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
            placed: Vec::new(),
        })
    }

    /// The async half of every event: cluster-wide presence for the room changes, then
    /// the deliveries no commit carried. The ack waits (briefly) until this node's members have every such
    /// delivery, so a client sees them before the ack of the event that made them.
    pub(super) async fn finish(&self, conn: &ConnId, def: &EventDef, run: Committed) -> Outcome {
        // Idempotent, so replaying every requested change (not only the effective ones)
        // is harmless.
        for op in &run.room_ops {
            let stored = match op {
                RoomOp::Join(room) => self.backend.presence.join(room, conn).await,
                RoomOp::Leave(room) => self.backend.presence.leave(room, conn).await,
            };
            stored?;
        }
        let mut placed = run.placed;
        for envelope in run.unsent {
            match def.scope {
                Scope::Local => self.sink.deliver(&envelope),
                Scope::Cluster => placed.extend(self.backend.bus.publish(envelope).await?),
            }
        }
        for placement in &placed {
            if !self
                .router
                .reached(&placement.room, placement.at.offset, RELEASE_WAIT)
                .await
            {
                tracing::debug!(room = %placement.room, offset = placement.at.offset, "ack sent before its delivery reached this node's members");
            }
        }
        Ok(run.reply)
    }

    /// Apply room changes to this node's router, watching room channels as rooms gain
    /// their first local member and placing members of rooms with history in the
    /// room's stream. Returns the changes that changed something, to undo.
    pub(super) async fn apply_room_ops(
        &self,
        conn: &ConnId,
        ops: &[RoomOp],
    ) -> Result<Vec<RoomOp>, Failure> {
        let mut applied = Vec::new();
        for op in ops {
            let result = match op {
                RoomOp::Join(room) => self.enter(conn, room).await,
                RoomOp::Leave(room) => Ok(self.exit(conn, room)),
            };
            match result {
                Ok(true) => applied.push(op.clone()),
                Ok(false) => {}
                Err(failure) => {
                    self.undo_room_ops(conn, applied).await;
                    return Err(failure);
                }
            }
        }
        Ok(applied)
    }

    pub(super) async fn undo_room_ops(&self, conn: &ConnId, applied: Vec<RoomOp>) {
        for op in applied.iter().rev() {
            match op {
                RoomOp::Join(room) => {
                    self.exit(conn, room);
                }
                // Best effort: re-entering a room we just left; the reconnect loop
                // resubscribes every wanted channel if this fails.
                RoomOp::Leave(room) => {
                    let _ = self.enter(conn, room).await;
                }
            }
        }
    }

    /// Put a connection in a room, announced by `$joined`. `Ok(false)`: it already was.
    pub(super) async fn enter(&self, conn: &ConnId, room: &str) -> Result<bool, Failure> {
        let policy = self.pack.load().rooms.history_for(room);
        let change = self.router.join(conn, room, RoomKind::of(policy.as_ref()));
        if change == RoomChange::Unchanged {
            return Ok(false);
        }
        let first = matches!(change, RoomChange::FirstLocal(_));
        if let Err(failure) = self.watch_and_start(room, first, policy.as_ref()).await {
            self.exit(conn, room);
            return Err(failure);
        }
        if policy.is_some() {
            match self.router.activate(conn, room, None) {
                Activated::At { .. } | Activated::Plain => {}
                other => {
                    self.exit(conn, room);
                    return Err(Failure::new(
                        ErrorCode::Unavailable,
                        format!("could not join `{room}`: {other:?}"),
                    ));
                }
            }
        }
        Ok(true)
    }

    /// After a join: the room's channel watched (for its first local member), and for a
    /// room with history the stream started at the room's position (read after the
    /// subscription, so nothing published in between is missed).
    pub(super) async fn watch_and_start(
        &self,
        room: &str,
        first: bool,
        policy: Option<&HistoryPolicy>,
    ) -> Result<(), Failure> {
        if first {
            let channel = Channel::Room(room.to_string());
            if let Err(e) = self.backend.bus.watch(channel.clone()).await {
                // `exit` unwatches once the room loses its last member.
                return Err(e.into());
            }
        }
        let Some(policy) = policy else {
            return Ok(());
        };
        if self.router.stream_position(room).is_some() {
            return Ok(());
        }
        if first {
            let head = self.backend.history.position(room, policy).await?;
            self.router.start_stream(room, head);
            Ok(())
        } else if self.router.started(room, STREAM_START_WAIT).await {
            Ok(())
        } else {
            Err(Failure::new(
                ErrorCode::Unavailable,
                format!("the stream of room `{room}` did not start"),
            ))
        }
    }

    /// Take a connection out of a room, announced by `$left`. `false`: it was not in it.
    pub(super) fn exit(&self, conn: &ConnId, room: &str) -> bool {
        match self.router.leave(conn, room) {
            RoomChange::Unchanged => false,
            RoomChange::LastLocal(_) => {
                self.backend.bus.unwatch(Channel::Room(room.to_string()));
                true
            }
            RoomChange::Member | RoomChange::FirstLocal(_) => true,
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
