//! Dispatch: one event from a validated payload to its committed effects.
//!
//! ```text
//! event lookup ─► auth ─► rate limit ─► schema ─► script (blocking pool)
//!   ─► commit (optimistic, retried, batched per key lock) ─► rooms ─► deliveries ─► ack
//! ```
//!
//! Two doors lead in: [`Engine::handle`] for a client's socket (rate limits apply) and
//! [`Engine::handle_for`] for a caller that is not a socket of this node (a backend over
//! HTTP, whose rate limits are kept per API key by the caller with [`RateBuckets`]).
//! Both run the same pipeline. An event exists only for the senders it names
//! (`senders:`): to anyone else it is `unknown_event`.
//!
//! Scripts run on blocking threads (Rhai is synchronous), bounded by a semaphore; they
//! reach shared state through a [`txn::Txn`] that buffers writes until the commit. A
//! script's effects (deliveries, joins, the reply) are applied only once its
//! transaction committed, so a retried script never delivers twice (`effects`).

mod effects;
pub mod error;
mod execute;
mod host;
pub mod locks;
mod resume;
pub mod stats;
pub mod txn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, Channel, HistoryStore};
use crate::config::{EventDef, Pack, RateLimit, Sender};
use crate::delivery::{ConnId, ConnLink, History, HistoryRead, RoomChange, Router, Sink};
use crate::ids::SessionId;
use crate::script::ScriptRuntime;
pub use error::{Detail, ErrorCode, Failure};
use futures_util::future::BoxFuture;
use host::ConnView;

/// Attempts of one script under contention before the client gets `conflict`.
const MAX_ATTEMPTS: u32 = 16;
/// Schema errors listed in one `invalid_payload`; the rest would only bloat the frame.
const MAX_DETAILS: usize = 20;
/// Emits one script run may make: bounds the memory one message can claim.
const MAX_EMITS: usize = 1_000;

/// What an event handler answers: the ack's `data`, or why it failed.
pub type Outcome = Result<Option<Value>, Failure>;

/// Who an event runs for: `conn` in a script, the sender of its deliveries.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: ConnId,
    pub user: Option<Arc<str>>,
    pub claims: Value,
    /// The caller's rooms when this node's router does not know them (a dead node's
    /// connection, whose rooms come from Redis); `None`: ask the router.
    pub rooms: Option<Vec<String>>,
    /// A client's connection, or a backend calling through the HTTP API: which events
    /// exist for it (`senders:`), and whether it has a connection to join rooms with.
    pub sender: Sender,
}

impl Caller {
    pub fn new(id: ConnId, user: Option<Arc<str>>, claims: Value) -> Self {
        Self {
            id,
            user,
            claims,
            rooms: None,
            sender: Sender::Clients,
        }
    }

    /// A backend calling with the API key `key`: `conn.id` is `api:<key>`, no user, no
    /// rooms, no connection (its `to: sender` deliveries reach nobody).
    pub fn api(key: &str) -> Self {
        Self {
            id: ConnId::api(key),
            user: None,
            claims: Value::Object(Default::default()),
            rooms: Some(Vec::new()),
            sender: Sender::Api,
        }
    }
}

/// One client connection as the engine sees it. Owned by its connection task.
pub struct Conn {
    pub caller: Caller,
    /// The session a later connection may resume (given in `$welcome`).
    pub session: SessionId,
    buckets: Buckets,
    /// Whether this connection holds a watch on its user's channel.
    watching_user: bool,
    /// A connection may resume a session until it sends any other event.
    may_resume: bool,
}

impl Conn {
    pub fn new(id: ConnId, user: Option<Arc<str>>, claims: Value) -> Self {
        Self {
            caller: Caller::new(id, user, claims),
            session: SessionId::random(),
            buckets: HashMap::new(),
            watching_user: false,
            may_resume: true,
        }
    }

    pub fn id(&self) -> &ConnId {
        &self.caller.id
    }
}

/// How long sessions outlive their connection, and how much a resume may replay.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// A closed connection's session (its rooms) stays resumable this long.
    pub resume_ttl: Duration,
    /// Most deliveries replayed per room; a room further behind is not recovered.
    pub max_replay: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            resume_ttl: Duration::from_secs(120),
            max_replay: 1_000,
        }
    }
}

/// Token buckets of one sender's rate-limited events (a connection's, or an API
/// key's), created on first use: at most one per event of the pack.
pub type RateBuckets = HashMap<String, TokenBucket>;
type Buckets = RateBuckets;

pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// Take a token, or say how long until one is there.
    fn take(&mut self, limit: &RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / limit.per_second).min(3600.0),
            ))
        }
    }
}

pub struct Engine {
    /// The pack being served. A reload swaps it whole; a message being handled keeps
    /// the pack it started with (its event definition is an `Arc` of that pack's).
    pack: Arc<ArcSwap<Pack>>,
    pub node_id: Arc<str>,
    scripts: Arc<ScriptRuntime>,
    backend: Backend,
    router: Arc<Router>,
    /// Where `local` deliveries go: the router, or a recorder in `wss-engine test`.
    sink: Arc<dyn Sink>,
    permits: Arc<Semaphore>,
    key_locks: locks::KeyLocks,
    /// Script runs waiting for the same node-local key locks; whoever gets the locks
    /// runs them all in one transaction (see `execute`).
    batches: execute::Batches,
    conn_seq: AtomicU64,
    pub sessions: SessionConfig,
    /// Events handled and errors by code, for `/api/stats`.
    pub stats: stats::Stats,
}

pub struct EngineParts {
    pub pack: Arc<Pack>,
    pub node_id: Arc<str>,
    pub scripts: Arc<ScriptRuntime>,
    pub backend: Backend,
    pub router: Arc<Router>,
    pub sink: Arc<dyn Sink>,
    pub script_concurrency: usize,
    pub sessions: SessionConfig,
}

/// The backend's room histories, as the router reads them to fill a hole in a stream.
///
/// It holds the store weakly: the store's sink is the router (local deliveries), and
/// the router holds this, so a strong reference would make router and store keep each
/// other alive after the engine is gone, leaking both with all their rooms, streams and
/// state for every engine built and dropped (`wss-engine test` builds one per case; the
/// `ws_frames` fuzz target, one per input, ran out of memory on it). The engine holds
/// the store for as long as there is anything to read.
struct StoreHistory {
    store: std::sync::Weak<dyn HistoryStore>,
    pack: Arc<ArcSwap<Pack>>,
}

impl History for StoreHistory {
    fn read(
        &self,
        room: &str,
        epoch: Option<&str>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Option<HistoryRead>> {
        let Some(policy) = self.pack.load().rooms.history_for(room) else {
            return Box::pin(std::future::ready(None));
        };
        let Some(store) = self.store.upgrade() else {
            return Box::pin(std::future::ready(None));
        };
        let (room, epoch) = (room.to_string(), epoch.map(str::to_string));
        Box::pin(async move {
            match store
                .history(&room, &policy, epoch.as_deref(), after, limit)
                .await
            {
                Ok(read) => Some(read),
                Err(e) => {
                    tracing::debug!(room, error = %e, "could not read a room's history");
                    None
                }
            }
        })
    }
}

/// Which lifecycle hook to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Disconnect,
}

impl Engine {
    pub fn new(parts: EngineParts) -> Arc<Self> {
        let pack = Arc::new(ArcSwap::new(parts.pack));
        parts.router.set_history(Arc::new(StoreHistory {
            store: Arc::downgrade(&parts.backend.history),
            pack: pack.clone(),
        }));
        Arc::new(Self {
            pack,
            node_id: parts.node_id,
            scripts: parts.scripts,
            backend: parts.backend,
            router: parts.router,
            sink: parts.sink,
            permits: Arc::new(Semaphore::new(parts.script_concurrency.max(1))),
            key_locks: locks::KeyLocks::new(256),
            batches: execute::Batches::default(),
            conn_seq: AtomicU64::new(0),
            sessions: parts.sessions,
            stats: stats::Stats::default(),
        })
    }

    /// One node on the memory backend with a router of its own, as `wss-engine test`,
    /// the fuzz targets and the tests build one per case or input: default sessions,
    /// one script at a time (they send one event at a time). Its local deliveries go to
    /// `sink` (`wss-engine test` records them), or to the router as a server's do. The
    /// backend is its [`Engine::backend`].
    pub fn in_memory(
        node_id: &str,
        pack: Arc<Pack>,
        scripts: Arc<ScriptRuntime>,
        sink: Option<Arc<dyn Sink>>,
    ) -> Arc<Self> {
        let router = Router::new();
        let sink = sink.unwrap_or_else(|| router.clone() as Arc<dyn Sink>);
        let backend = Arc::new(MemoryBackend::new(sink.clone()));
        Self::new(EngineParts {
            pack,
            node_id: Arc::from(node_id),
            scripts,
            backend: Backend::of(backend),
            router,
            sink,
            script_concurrency: 1,
            sessions: SessionConfig::default(),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The backend's contracts: presence, streams and the bus, which the HTTP API reads
    /// and disconnects through.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The pack served now.
    pub fn pack(&self) -> Arc<Pack> {
        self.pack.load_full()
    }

    /// Serve `pack` from now on; returns the one it replaces. Messages already being
    /// handled finish on the old one.
    pub fn replace_pack(&self, pack: Arc<Pack>) -> Arc<Pack> {
        self.pack.swap(pack)
    }

    /// The script runtime, to compile a new pack with the same limits.
    pub fn scripts(&self) -> &Arc<ScriptRuntime> {
        &self.scripts
    }

    /// A new connection id: `<node>-<n>`, unique in the cluster and routable to its node.
    pub fn next_conn_id(&self) -> ConnId {
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        ConnId::new(&self.node_id, n)
    }

    /// Handle one event a client sent on its socket. The caller parsed the frame.
    pub async fn handle(self: &Arc<Self>, conn: &mut Conn, event: &str, data: Value) -> Outcome {
        if event == resume::RESUME {
            return self.resume(conn, data).await;
        }
        conn.may_resume = false;
        let started = Instant::now();
        let outcome = self
            .dispatch(&conn.caller, Some(&mut conn.buckets), event, data)
            .await;
        self.count(event, &outcome, started);
        outcome
    }

    /// Handle one event for a caller that is not a socket of this node. No rate limits
    /// apply here: the API takes its tokens first ([`Engine::take_token`]).
    pub async fn handle_for(
        self: &Arc<Self>,
        caller: &Caller,
        event: &str,
        data: Value,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = self.dispatch(caller, None, event, data).await;
        self.count(event, &outcome, started);
        outcome
    }

    /// Take a token from `buckets` for `event`, if it is rate-limited and exists for
    /// `sender` (anything else is for the pipeline to refuse). A caller outside the
    /// engine (an API key) keeps its own buckets.
    pub fn take_token(
        &self,
        buckets: &mut RateBuckets,
        sender: Sender,
        event: &str,
    ) -> Result<(), Failure> {
        let Some(def) = self.pack.load().event(event).cloned() else {
            return Ok(());
        };
        if !def.senders.allows(sender) {
            return Ok(());
        }
        Self::rate_limit(buckets, &def)
    }

    fn count(&self, event: &str, outcome: &Outcome, started: Instant) {
        let label = match outcome {
            Ok(_) => "ok",
            Err(f) => match f.code {
                ErrorCode::Custom(_) => "rejected",
                ref code => code.as_str(),
            },
        };
        self.stats.record((label != "ok").then_some(label));
        // Unknown names would let a client create unbounded label sets.
        let event_label = if self.pack.load().events.contains_key(event) {
            event.to_string()
        } else {
            "<unknown>".into()
        };
        metrics::counter!("wss_events_total", "event" => event_label.clone(), "outcome" => label.to_string()).increment(1);
        metrics::histogram!("wss_event_seconds", "event" => event_label)
            .record(started.elapsed().as_secs_f64());
    }

    fn rate_limit(buckets: &mut Buckets, def: &EventDef) -> Result<(), Failure> {
        let Some(limit) = def.rate_limit else {
            return Ok(());
        };
        let event = &def.name;
        let bucket = buckets
            .entry(event.to_string())
            .or_insert_with(|| TokenBucket {
                tokens: limit.burst,
                updated: Instant::now(),
            });
        bucket.take(&limit).map_err(|wait| {
            let mut failure = Failure::new(
                ErrorCode::RateLimited,
                format!("`{event}` is limited to {} per second", limit.per_second),
            );
            failure.retry_after = Some(wait);
            failure
        })
    }

    async fn dispatch(
        self: &Arc<Self>,
        caller: &Caller,
        buckets: Option<&mut Buckets>,
        event: &str,
        data: Value,
    ) -> Outcome {
        // An event this caller may not send is as unknown to it as a misspelt one: a
        // client must not learn which events only backends may send.
        let Some(def) = self
            .pack
            .load()
            .event(event)
            .filter(|def| def.senders.allows(caller.sender))
            .cloned()
        else {
            return Err(Failure::new(
                ErrorCode::UnknownEvent,
                format!("unknown event `{event}`"),
            ));
        };
        // An API call is authenticated by its key: `auth:` is about connections.
        if def.auth_required && caller.user.is_none() && caller.sender == Sender::Clients {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                format!("`{event}` requires an authenticated connection"),
            ));
        }
        if let Some(buckets) = buckets {
            Self::rate_limit(buckets, &def)?;
        }
        // `is_valid` first: it stops at the first failure and builds no error, where
        // `iter_errors` walks every keyword through boxed iterators even for a valid
        // payload, the common case on the delivery hot path.
        if let Some(schema) = def.schema.as_ref().filter(|s| !s.is_valid(&data)) {
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
        self.execute(caller, def, data).await
    }

    /// Run a lifecycle hook for a caller, if the pack has one with a script.
    pub async fn run_hook(self: &Arc<Self>, caller: &Caller, hook: Hook) -> Outcome {
        let def = {
            let pack = self.pack.load();
            match hook {
                Hook::Connect => pack.hooks.on_connect.clone(),
                Hook::Disconnect => pack.hooks.on_disconnect.clone(),
            }
        };
        match def {
            Some(def) if def.script.is_some() => self.execute(caller, def, Value::Null).await,
            _ => Ok(None),
        }
    }

    async fn execute(
        self: &Arc<Self>,
        caller: &Caller,
        def: Arc<EventDef>,
        data: Value,
    ) -> Outcome {
        let conn = ConnView::of(caller, &self.router, &self.node_id);
        let run =
            if def.script.is_some() {
                let permit =
                    self.permits.clone().acquire_owned().await.map_err(|_| {
                        Failure::new(ErrorCode::Unavailable, "server is shutting down")
                    })?;
                let engine = self.clone();
                let task_def = def.clone();
                let runtime = tokio::runtime::Handle::current();
                let result = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    engine.run_script(task_def, conn, data, runtime)
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
                self.scriptless(&def, &conn, data)?
            };
        self.finish(&caller.id, &def, run).await
    }

    /// Register a new connection: router, cluster-wide registry, user channel, then
    /// `$connect`. On `Err` the connection must be closed (and `disconnect` still called).
    pub async fn connect(self: &Arc<Self>, conn: &mut Conn, link: Arc<ConnLink>) -> Outcome {
        let caller = &conn.caller;
        self.router.register(
            caller.id.clone(),
            caller.user.clone(),
            conn.session.clone(),
            link,
        );
        // Neither failure refuses the connection: during a Redis outage the node keeps
        // serving what needs no shared state, and on recovery it writes its presence
        // again and resubscribes every wanted channel.
        if let Err(e) = self
            .backend
            .sessions
            .open(&caller.id, caller.user.as_deref(), &conn.session)
            .await
        {
            tracing::warn!(conn = %caller.id, error = %e, "could not register connection cluster-wide");
        }
        if let Some(user) = &caller.user {
            conn.watching_user = true;
            if let Err(e) = self
                .backend
                .bus
                .watch(Channel::User(user.to_string()))
                .await
            {
                tracing::warn!(conn = %conn.caller.id, error = %e, "user channel not subscribed yet");
            }
        }
        self.run_hook(&conn.caller, Hook::Connect).await
    }

    /// Forget a connection that closed: run `$disconnect`, leave every room (its
    /// session keeps them for a resume).
    pub async fn disconnect(self: &Arc<Self>, conn: &mut Conn) {
        let caller = &conn.caller;
        if let Err(f) = self.run_hook(caller, Hook::Disconnect).await {
            tracing::warn!(conn = %caller.id, code = f.code.as_str(), error = %f.message, "$disconnect hook failed");
        }
        let (rooms, changes) = self.router.unregister(&caller.id);
        for change in changes {
            if let RoomChange::LastLocal(room) = change {
                self.backend.bus.unwatch(Channel::Room(room.to_string()));
            }
        }
        if let (Some(user), true) = (&caller.user, conn.watching_user) {
            self.backend.bus.unwatch(Channel::User(user.to_string()));
        }
        let keep = self.sessions.resume_ttl;
        if let Err(e) = self
            .backend
            .sessions
            .close(
                &caller.id,
                caller.user.as_deref(),
                &conn.session,
                &rooms,
                keep,
            )
            .await
        {
            tracing::warn!(conn = %caller.id, error = %e, "could not remove a closed connection from its rooms");
        }
    }
}
