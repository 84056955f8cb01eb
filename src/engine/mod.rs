//! Dispatch: one client message from validated frame to deliveries.
//!
//! ```text
//! frame ─► event lookup ─► auth ─► rate limit ─► schema ─► script (blocking pool)
//!        ─► commit (optimistic, retried, batched per key lock) ─► memberships
//!        ─► deliveries ─► ack
//! ```
//!
//! Scripts run on blocking threads (Rhai is synchronous), bounded by a semaphore; they
//! reach shared state through a [`txn::Txn`] that buffers writes until the commit. A
//! script's effects (deliveries, joins, the reply) are applied only once its
//! transaction committed, so a retried script never delivers twice.

pub mod error;
mod execute;
mod host;
pub mod locks;
pub mod router;
pub mod script;
pub mod testing;
pub mod txn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::backend::{Bus, Channel, ConnId, Envelope, Sink, StateStore};
use crate::config::{EventDef, Pack, RateLimit, Scope, Target, TemplateContext};
pub use error::{Detail, ErrorCode, Failure};
use host::ConnView;
use router::{RoomChange, Router};
use script::{ScriptFailure, ScriptRuntime};

/// Attempts of one script under contention before the client gets `conflict`.
const MAX_ATTEMPTS: u32 = 16;
/// Schema errors listed in one `invalid_payload`; the rest would only bloat the frame.
const MAX_DETAILS: usize = 20;
/// Emits one script run may make: bounds the memory one message can claim.
const MAX_EMITS: usize = 1_000;

/// What an event handler answers: the ack's `data`, or why it failed.
pub type Outcome = Result<Option<Value>, Failure>;

/// One connection as the engine sees it. Owned by its connection task.
pub struct Conn {
    pub id: ConnId,
    pub user: Option<Arc<str>>,
    pub claims: Value,
    /// Token buckets of rate-limited events, created on first use.
    buckets: HashMap<String, TokenBucket>,
    /// Whether this connection holds a watch on its user's channel.
    watching_user: bool,
    /// Rooms of a connection of a dead node, whose `$disconnect` a survivor runs: it is
    /// in no local router, so its rooms come from Redis.
    orphan_rooms: Option<Vec<String>>,
}

impl Conn {
    pub fn new(id: ConnId, user: Option<Arc<str>>, claims: Value) -> Self {
        Self {
            id,
            user,
            claims,
            buckets: HashMap::new(),
            watching_user: false,
            orphan_rooms: None,
        }
    }

    pub fn set_orphan_rooms(&mut self, rooms: Vec<String>) {
        self.orphan_rooms = Some(rooms);
    }
}

struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn take(&mut self, limit: &RateLimit) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Serialize)]
struct DeliveryFrame<'a> {
    event: &'a str,
    data: &'a Value,
}

/// Serialize a delivery once; every recipient on every node gets these bytes.
pub fn delivery_frame(event: &str, data: &Value) -> Bytes {
    serde_json::to_vec(&DeliveryFrame { event, data })
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"event\":\"$error\",\"data\":null}"))
}

/// A delivery a script asked for, before serialization.
#[derive(Debug, Clone)]
struct Emit {
    target: Target,
    event: String,
    data: Value,
    exclude: Option<ConnId>,
}

#[derive(Default)]
struct Effects {
    reply: Option<Value>,
    emits: Vec<Emit>,
    dropped: bool,
    /// Joins (`true`) and leaves (`false`) in the order the script made them.
    memberships: Vec<(bool, String)>,
}

pub struct Engine {
    pub pack: Arc<Pack>,
    pub node_id: Arc<str>,
    scripts: Arc<ScriptRuntime>,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn Bus>,
    router: Arc<Router>,
    /// Where `local` deliveries go: the router, or a recorder in `wss-engine test`.
    sink: Arc<dyn Sink>,
    permits: Arc<Semaphore>,
    key_locks: locks::KeyLocks,
    /// Script runs waiting for the same node-local key locks; whoever gets the locks
    /// runs them all in one transaction (see `execute`).
    batches: execute::Batches,
    conn_seq: AtomicU64,
}

pub struct EngineParts {
    pub pack: Arc<Pack>,
    pub node_id: Arc<str>,
    pub scripts: Arc<ScriptRuntime>,
    pub store: Arc<dyn StateStore>,
    pub bus: Arc<dyn Bus>,
    pub router: Arc<Router>,
    pub sink: Arc<dyn Sink>,
    pub script_concurrency: usize,
}

impl Engine {
    pub fn new(parts: EngineParts) -> Arc<Self> {
        Arc::new(Self {
            pack: parts.pack,
            node_id: parts.node_id,
            scripts: parts.scripts,
            store: parts.store,
            bus: parts.bus,
            router: parts.router,
            sink: parts.sink,
            permits: Arc::new(Semaphore::new(parts.script_concurrency.max(1))),
            key_locks: locks::KeyLocks::new(256),
            batches: execute::Batches::default(),
            conn_seq: AtomicU64::new(0),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// A new connection id: `<node>-<n>`, unique in the cluster and routable to its node.
    pub fn next_conn_id(&self) -> ConnId {
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::from(format!("{}-{n:x}", self.node_id))
    }

    /// Handle one client event. The caller parsed the frame; this does the rest.
    pub async fn handle(self: &Arc<Self>, conn: &mut Conn, event: &str, data: Value) -> Outcome {
        let started = Instant::now();
        let outcome = self.handle_inner(conn, event, data).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(f) => match f.code {
                ErrorCode::Custom(_) => "rejected",
                ref code => code.as_str(),
            },
        };
        // Unknown names would let a client create unbounded label sets.
        let event_label = if self.pack.events.contains_key(event) {
            event.to_string()
        } else {
            "<unknown>".into()
        };
        metrics::counter!("wss_events_total", "event" => event_label.clone(), "outcome" => label.to_string()).increment(1);
        metrics::histogram!("wss_event_seconds", "event" => event_label)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn handle_inner(self: &Arc<Self>, conn: &mut Conn, event: &str, data: Value) -> Outcome {
        let Some(def) = self.pack.event(event).cloned() else {
            return Err(Failure::new(
                ErrorCode::UnknownEvent,
                format!("unknown event `{event}`"),
            ));
        };
        if def.auth_required && conn.user.is_none() {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                format!("`{event}` requires an authenticated connection"),
            ));
        }
        if let Some(limit) = &def.rate_limit {
            let bucket = conn
                .buckets
                .entry(def.name.clone())
                .or_insert_with(|| TokenBucket {
                    tokens: limit.burst,
                    updated: Instant::now(),
                });
            if !bucket.take(limit) {
                return Err(Failure::new(
                    ErrorCode::RateLimited,
                    format!("`{event}` is limited to {} per second", limit.per_second),
                ));
            }
        }
        if let Some(schema) = &def.schema {
            let details: Vec<Detail> = schema
                .iter_errors(&data)
                .take(MAX_DETAILS)
                .map(|e| Detail {
                    path: e.instance_path().as_str().to_string(),
                    message: e.to_string(),
                })
                .collect();
            if !details.is_empty() {
                let mut failure = Failure::new(
                    ErrorCode::InvalidPayload,
                    format!("payload of `{event}` does not match its schema"),
                );
                failure.details = details;
                return Err(failure);
            }
        }
        self.execute(conn, def, data).await
    }

    /// Run a hook (`$connect`/`$disconnect`) for a connection, if the pack has one.
    pub async fn run_hook(
        self: &Arc<Self>,
        conn: &mut Conn,
        hook: &Option<Arc<EventDef>>,
    ) -> Outcome {
        match hook {
            Some(def) if def.script.is_some() => self.execute(conn, def.clone(), Value::Null).await,
            _ => Ok(None),
        }
    }

    async fn execute(
        self: &Arc<Self>,
        conn: &mut Conn,
        def: Arc<EventDef>,
        data: Value,
    ) -> Outcome {
        let run =
            if def.script.is_some() {
                let permit =
                    self.permits.clone().acquire_owned().await.map_err(|_| {
                        Failure::new(ErrorCode::Unavailable, "server is shutting down")
                    })?;
                let engine = self.clone();
                let conn_view = ConnView::of(conn, &self.router, &self.node_id);
                let task_def = def.clone();
                let runtime = tokio::runtime::Handle::current();
                let result = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    engine.run_script(task_def, conn_view, data, runtime)
                })
                .await;
                match result {
                    Ok(r) => r?,
                    Err(e) => {
                        tracing::error!(event = %def.name, error = %e, "script task failed");
                        return Err(Failure::new(ErrorCode::ScriptError, "script failed"));
                    }
                }
            } else {
                ScriptRun {
                    effects: Effects::default(),
                    data,
                    published: false,
                    memberships_applied: None,
                }
            };
        self.apply(conn, &def, run).await
    }

    fn script_failure(&self, def: &EventDef, conn: &ConnView, failure: ScriptFailure) -> Failure {
        match failure {
            ScriptFailure::Rejected { code, message } => {
                Failure::new(ErrorCode::Custom(code), message)
            }
            ScriptFailure::Unavailable(message) => Failure::new(ErrorCode::Unavailable, message),
            ScriptFailure::Error(message) => {
                tracing::info!(event = %def.name, conn = %conn.id, error = %message, "script failed");
                Failure::new(ErrorCode::ScriptError, message)
            }
        }
    }

    /// Apply joins and leaves to this node's router, watching room channels as rooms gain
    /// their first local member. Returns the changes that changed something, to undo.
    async fn apply_memberships(
        &self,
        conn: &ConnId,
        changes: &[(bool, String)],
    ) -> Result<Vec<(bool, String)>, Failure> {
        let mut applied = Vec::new();
        for (join, room) in changes {
            let change = if *join {
                self.router.join(conn, room)
            } else {
                self.router.leave(conn, room)
            };
            match change {
                RoomChange::Unchanged => continue,
                RoomChange::Member => {}
                RoomChange::FirstLocal(_) => {
                    if let Err(e) = self.bus.watch(Channel::Room(room.clone())).await {
                        self.router.leave(conn, room);
                        self.bus.unwatch(Channel::Room(room.clone()));
                        self.undo_memberships(conn, applied).await;
                        return Err(Failure::new(ErrorCode::Unavailable, e.to_string()));
                    }
                }
                RoomChange::LastLocal(_) => self.bus.unwatch(Channel::Room(room.clone())),
            }
            applied.push((*join, room.clone()));
        }
        Ok(applied)
    }

    async fn undo_memberships(&self, conn: &ConnId, applied: Vec<(bool, String)>) {
        for (join, room) in applied.into_iter().rev() {
            let change = if join {
                self.router.leave(conn, &room)
            } else {
                self.router.join(conn, &room)
            };
            match change {
                RoomChange::LastLocal(_) => self.bus.unwatch(Channel::Room(room)),
                // Best effort: re-watching a room we just left; the reconnect loop
                // resubscribes every wanted channel if this fails.
                RoomChange::FirstLocal(_) => {
                    let _ = self.bus.watch(Channel::Room(room)).await;
                }
                RoomChange::Unchanged | RoomChange::Member => {}
            }
        }
    }

    /// The async half: memberships, deliveries that were not published by the commit.
    async fn apply(&self, conn: &mut Conn, def: &EventDef, run: ScriptRun) -> Outcome {
        let ScriptRun {
            effects,
            data,
            published,
            memberships_applied,
        } = run;
        if memberships_applied.is_none() {
            self.apply_memberships(&conn.id, &effects.memberships)
                .await?;
        }
        // Cluster-wide presence follows the local change; idempotent, so replaying every
        // requested change (not only the effective ones) is harmless.
        for (join, room) in &effects.memberships {
            let stored = if *join {
                self.store.join(room, &conn.id).await
            } else {
                self.store.leave(room, &conn.id).await
            };
            if let Err(e) = stored {
                return Err(Failure::new(ErrorCode::Unavailable, e.to_string()));
            }
        }
        if !published {
            let envelopes = self.envelopes(def, &conn.id, conn.user.as_deref(), &data, &effects)?;
            for envelope in envelopes {
                match def.scope {
                    Scope::Local => self.sink.deliver(&envelope),
                    Scope::Cluster => self
                        .bus
                        .publish(envelope)
                        .await
                        .map_err(|e| Failure::new(ErrorCode::Unavailable, e.to_string()))?,
                }
            }
        }
        Ok(effects.reply)
    }

    /// Every delivery of one handled event, serialized.
    fn envelopes(
        &self,
        def: &EventDef,
        conn_id: &ConnId,
        user: Option<&str>,
        data: &Value,
        effects: &Effects,
    ) -> Result<Vec<Envelope>, Failure> {
        let mut out = Vec::with_capacity(effects.emits.len() + 1);
        if !effects.dropped && def.to != crate::config::TargetSpec::None {
            let cx = TemplateContext {
                data,
                conn_id,
                conn_user: user,
            };
            let target = def.to.resolve(&cx).map_err(|e| {
                // An anonymous sender cannot be addressed by user: that is an auth
                // problem, not a payload problem.
                let code = match e {
                    crate::config::TargetError::NoUser => ErrorCode::Unauthorized,
                    _ => ErrorCode::InvalidPayload,
                };
                let mut f = Failure::new(code, format!("cannot resolve `to: {}`: {e}", def.to));
                if let crate::config::TargetError::MissingData { path } = &e {
                    f.details.push(Detail {
                        path: format!("/{}", path.trim_start_matches("data.").replace('.', "/")),
                        message: e.to_string(),
                    });
                }
                f
            })?;
            out.push(self.envelope(
                target,
                conn_id,
                &def.emit_as,
                data,
                def.exclude_sender.then(|| conn_id.clone()),
            ));
        }
        for emit in &effects.emits {
            out.push(self.envelope(
                emit.target.clone(),
                conn_id,
                &emit.event,
                &emit.data,
                emit.exclude.clone(),
            ));
        }
        Ok(out)
    }

    fn envelope(
        &self,
        target: Target,
        conn_id: &ConnId,
        event: &str,
        data: &Value,
        exclude: Option<ConnId>,
    ) -> Envelope {
        let target = match target {
            Target::Sender => Target::Conn(conn_id.to_string()),
            other => other,
        };
        Envelope {
            target,
            exclude,
            frame: delivery_frame(event, data),
        }
    }

    /// Register a new connection: router, cluster-wide registry, user channel, then
    /// `$connect`. On `Err` the connection must be closed (and `disconnect` still called).
    pub async fn connect(
        self: &Arc<Self>,
        conn: &mut Conn,
        link: Arc<router::ConnLink>,
    ) -> Outcome {
        self.router
            .register(conn.id.clone(), conn.user.clone(), link);
        // Neither failure refuses the connection: during a Redis outage the node keeps
        // serving what needs no shared state, and on recovery it writes its presence
        // again and resubscribes every wanted channel.
        if let Err(e) = self
            .store
            .register_conn(&conn.id, conn.user.as_deref())
            .await
        {
            tracing::warn!(conn = %conn.id, error = %e, "could not register connection cluster-wide");
        }
        if let Some(user) = &conn.user {
            conn.watching_user = true;
            if let Err(e) = self.bus.watch(Channel::User(user.to_string())).await {
                tracing::warn!(conn = %conn.id, error = %e, "user channel not subscribed yet");
            }
        }
        let hook = self.pack.on_connect.clone();
        self.run_hook(conn, &hook).await
    }

    /// Forget a connection that closed: run `$disconnect`, leave every room.
    pub async fn disconnect(self: &Arc<Self>, conn: &mut Conn) {
        let hook = self.pack.on_disconnect.clone();
        if let Err(f) = self.run_hook(conn, &hook).await {
            tracing::warn!(conn = %conn.id, code = f.code.as_str(), error = %f.message, "$disconnect hook failed");
        }
        let (rooms, changes) = self.router.unregister(&conn.id);
        for change in changes {
            if let RoomChange::LastLocal(room) = change {
                self.bus.unwatch(Channel::Room(room.to_string()));
            }
        }
        if let (Some(user), true) = (&conn.user, conn.watching_user) {
            self.bus.unwatch(Channel::User(user.to_string()));
        }
        for room in rooms {
            if let Err(e) = self.store.leave(&room, &conn.id).await {
                tracing::warn!(conn = %conn.id, room = %room, error = %e, "could not remove connection from room");
            }
        }
        if let Err(e) = self.store.unregister_conn(&conn.id).await {
            tracing::warn!(conn = %conn.id, error = %e, "could not unregister connection");
        }
    }
}

/// What a finished script run hands to the async half.
struct ScriptRun {
    effects: Effects,
    data: Value,
    /// The commit already published the deliveries (cluster scope with state writes).
    published: bool,
    /// Joins and leaves already applied to the router (before a commit), if any.
    memberships_applied: Option<Vec<(bool, String)>>,
}
