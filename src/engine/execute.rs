//! Running scripts: optimistic transactions, node-local key locks, and group commit.
//!
//! A script run reads through a [`Txn`], buffers its writes and commits them with a
//! version check. Runs that touch no locked key go straight to an optimistic attempt.
//! Runs whose keys are known (declared in `keys:`, or found hot by an earlier conflict)
//! queue on the node-local locks of those keys; whoever gets the locks takes every run
//! queued for the same locks and executes them one after another in *one* transaction,
//! each script seeing the writes of the ones before it, then commits once. On a hot key
//! this turns N round trips into one (group commit), and cross-node conflicts retry a
//! batch instead of every message.
//!
//! A script that fails inside a batch is rolled back to the savepoint before it and
//! answered on its own; the others still commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use super::effects::{Committed, Effects, RoomOp};
use super::host::{ConnView, Host};
use super::txn::{Txn, TxnError};
use super::{Engine, ErrorCode, Failure, MAX_ATTEMPTS};
use crate::backend::{BackendError, CommitOutcome};
use crate::config::{EventDef, Scope, TemplateContext};
use crate::delivery::Envelope;
use crate::script::{ScriptFailure, ScriptInput};

/// Most runs one commit takes: bounds the work (and the retry) of one batch.
const MAX_BATCH: usize = 256;

/// One script run waiting for, or taken into, a batch.
pub(super) struct Pending {
    def: Arc<EventDef>,
    conn: ConnView,
    conn_json: Value,
    data: Value,
    /// Declared keys, rendered: prefetched in one round trip.
    declared: Vec<String>,
    result: Mutex<Option<Result<Committed, Failure>>>,
}

impl Pending {
    fn finish(&self, result: Result<Committed, Failure>) {
        *self.result.lock() = Some(result);
    }

    fn take(&self) -> Option<Result<Committed, Failure>> {
        self.result.lock().take()
    }
}

/// Runs queued per set of lock stripes.
#[derive(Default)]
pub(super) struct Batches(Mutex<HashMap<Vec<usize>, Vec<Arc<Pending>>>>);

/// What one attempt at a batch came to.
enum Attempt {
    /// Every run has its answer (committed, failed on its own, or needed no commit).
    Done(Vec<Result<Committed, Failure>>),
    /// The commit found a read version changed; nothing was written. The keys involved.
    Conflict(Vec<String>),
    /// The runs of this batch touch keys in different Redis Cluster slots, which one
    /// commit cannot span (they met on a lock stripe): each goes on its own.
    Split,
}

impl Engine {
    /// The blocking half of an event with a script: run it, commit, retry on conflict.
    pub(super) fn run_script(
        &self,
        def: Arc<EventDef>,
        conn: ConnView,
        data: Value,
        runtime: tokio::runtime::Handle,
    ) -> Result<Committed, Failure> {
        let declared: Vec<String> = {
            let cx = TemplateContext {
                data: &data,
                conn_id: &conn.id,
                conn_user: conn.user.as_deref(),
            };
            def.keys.iter().filter_map(|k| k.render(&cx).ok()).collect()
        };
        let mut lock_keys = declared.clone();
        for key in self.key_locks.hot_keys(&def.name) {
            if !lock_keys.contains(&key) {
                lock_keys.push(key);
            }
        }
        let pending = Arc::new(Pending {
            conn_json: conn.to_json(),
            def,
            conn,
            data,
            declared,
            result: Mutex::new(None),
        });
        if lock_keys.is_empty() {
            // Nothing known to be contended: one optimistic attempt without locks.
            match self.attempt(std::slice::from_ref(&pending), &runtime)? {
                Attempt::Done(mut results) => {
                    return results.pop().unwrap_or_else(|| Err(lost()));
                }
                Attempt::Conflict(touched) => {
                    self.conflicted(&pending.def, &touched);
                    lock_keys = touched;
                }
                // A lone run is never split (its own cross-slot keys are its error).
                Attempt::Split => return Err(lost()),
            }
        }
        self.run_locked(pending, &lock_keys, &runtime)
    }

    /// Queue on the locks of `lock_keys`; the run that gets them executes the queue.
    fn run_locked(
        &self,
        pending: Arc<Pending>,
        lock_keys: &[String],
        runtime: &tokio::runtime::Handle,
    ) -> Result<Committed, Failure> {
        let stripes = self.key_locks.stripes(lock_keys);
        self.batches
            .0
            .lock()
            .entry(stripes.clone())
            .or_default()
            .push(pending.clone());
        let _guards = self.key_locks.lock(&stripes);
        // Another run may have taken ours into its batch while we waited.
        if let Some(result) = pending.take() {
            return result;
        }
        let batch: Vec<Arc<Pending>> = {
            let mut queues = self.batches.0.lock();
            let queue = queues.entry(stripes.clone()).or_default();
            let mut taken: Vec<Arc<Pending>> = queue.drain(..queue.len().min(MAX_BATCH)).collect();
            // Ours must be answered by this batch, even if it sits further down an
            // over-full queue; taking it out keeps anyone else from running it again.
            if !taken.iter().any(|p| Arc::ptr_eq(p, &pending)) {
                queue.retain(|p| !Arc::ptr_eq(p, &pending));
                taken.push(pending.clone());
            }
            if queue.is_empty() {
                queues.remove(&stripes);
            }
            taken
        };
        self.execute_batch(&batch, runtime);
        pending.take().unwrap_or_else(|| Err(lost()))
    }

    /// Attempt a batch until it commits (or gives up), answering every run in it.
    fn execute_batch(&self, batch: &[Arc<Pending>], runtime: &tokio::runtime::Handle) {
        if batch.is_empty() {
            return;
        }
        let mut rng = rand::rng();
        for attempt in 0..MAX_ATTEMPTS {
            match self.attempt(batch, runtime) {
                Err(failure) => {
                    for p in batch {
                        p.finish(Err(failure.clone()));
                    }
                    return;
                }
                Ok(Attempt::Done(results)) => {
                    for (p, r) in batch.iter().zip(results) {
                        p.finish(r);
                    }
                    return;
                }
                Ok(Attempt::Split) => {
                    for p in batch {
                        self.execute_batch(std::slice::from_ref(p), runtime);
                    }
                    return;
                }
                Ok(Attempt::Conflict(touched)) => {
                    for p in batch {
                        self.conflicted(&p.def, &touched);
                    }
                    // Jittered backoff so contenders on other nodes stop colliding in
                    // lockstep.
                    let ceiling = 1 + u64::from(attempt) * 2;
                    std::thread::sleep(Duration::from_micros(rand::Rng::random_range(
                        &mut rng,
                        0..=ceiling * 200,
                    )));
                }
            }
        }
        for p in batch {
            p.finish(Err(Failure::new(
                ErrorCode::Conflict,
                format!(
                    "`{}` kept conflicting with concurrent updates; try again",
                    p.def.name
                ),
            )));
        }
    }

    fn conflicted(&self, def: &EventDef, touched: &[String]) {
        metrics::counter!("wss_script_retries_total", "event" => def.name.clone()).increment(1);
        self.key_locks.remember_hot(&def.name, touched);
    }

    /// Run every script of the batch in one transaction and commit it once.
    fn attempt(
        &self,
        batch: &[Arc<Pending>],
        runtime: &tokio::runtime::Handle,
    ) -> Result<Attempt, Failure> {
        let mut txn = Txn::new(self.backend.state.clone(), runtime.clone());
        let mut prefetch: Vec<String> = Vec::new();
        for p in batch {
            for key in &p.declared {
                if !prefetch.contains(key) {
                    prefetch.push(key.clone());
                }
            }
        }
        if !prefetch.is_empty() {
            match txn.prefetch(prefetch) {
                Err(TxnError::Backend(BackendError::CrossSlot { .. })) if batch.len() > 1 => {
                    return Ok(Attempt::Split)
                }
                other => other?,
            }
        }

        // Each run: its outcome, and on success the deliveries it makes.
        let mut outcomes: Vec<Result<(Effects, Vec<Envelope>), Failure>> =
            Vec::with_capacity(batch.len());
        for p in batch {
            let Some(script) = &p.def.script else {
                let deliveries = self.deliveries(&p.def, &p.conn, &p.data, &Effects::default());
                outcomes.push(deliveries.map(|d| (Effects::default(), d)));
                continue;
            };
            let savepoint = txn.savepoint();
            let started = Instant::now();
            let mut host = Host {
                engine: self,
                runtime,
                txn,
                effects: Effects::default(),
                conn: &p.conn,
                event: &p.def.name,
            };
            let result = self.scripts.run(
                &script.ast,
                ScriptInput {
                    event: &p.def.name,
                    conn: p.conn_json.clone(),
                    data: p.data.clone(),
                },
                &mut host,
            );
            metrics::histogram!("wss_script_seconds").record(started.elapsed().as_secs_f64());
            let Host {
                txn: back, effects, ..
            } = host;
            txn = back;
            let outcome = result
                .map_err(|f| self.script_failure(&p.def, &p.conn, f))
                .and_then(|data| {
                    let deliveries = self.deliveries(&p.def, &p.conn, &data, &effects)?;
                    Ok((effects, deliveries))
                });
            if outcome.is_err() {
                txn.rollback_to(savepoint);
            }
            outcomes.push(outcome);
        }

        // Room changes must be in place before deliveries published by the commit
        // reach this node; undone if the commit does not land.
        let mut applied = Vec::with_capacity(batch.len());
        for (p, outcome) in batch.iter().zip(&outcomes) {
            let ops: &[RoomOp] = match outcome {
                Ok((effects, _)) => &effects.room_ops,
                Err(_) => &[],
            };
            match runtime.block_on(self.apply_room_ops(&p.conn.id, ops)) {
                Ok(changes) => applied.push(changes),
                Err(failure) => {
                    self.undo_all(batch, applied, runtime);
                    return Err(failure);
                }
            }
        }

        // No shared state involved, or nothing succeeded: nothing to commit, and the
        // deliveries go out from the async half.
        let commits = !txn.is_empty() && outcomes.iter().any(Result::is_ok);
        let mut publish = Vec::new();
        let committed: Vec<Result<Committed, Failure>> = outcomes
            .into_iter()
            .zip(batch)
            .map(|(outcome, p)| {
                outcome.map(|(effects, deliveries)| {
                    // A committing run's cluster deliveries go out with its writes.
                    let unsent = if commits && p.def.scope == Scope::Cluster {
                        publish.extend(deliveries);
                        Vec::new()
                    } else {
                        deliveries
                    };
                    Committed {
                        reply: effects.reply,
                        room_ops: effects.room_ops,
                        unsent,
                        placed: Vec::new(),
                    }
                })
            })
            .collect();
        if !commits {
            return Ok(Attempt::Done(committed));
        }
        let touched = txn.keys();
        let mut commit = txn.into_commit();
        commit.publish = publish;
        match runtime.block_on(self.backend.state.commit(commit)) {
            Ok(CommitOutcome::Committed(placed)) => Ok(Attempt::Done(
                committed
                    .into_iter()
                    .map(|run| {
                        run.map(|mut run| {
                            run.placed = placed.clone();
                            run
                        })
                    })
                    .collect(),
            )),
            Ok(CommitOutcome::Conflict) => {
                self.undo_all(batch, applied, runtime);
                Ok(Attempt::Conflict(touched))
            }
            Err(BackendError::CrossSlot { .. }) if batch.len() > 1 => {
                self.undo_all(batch, applied, runtime);
                Ok(Attempt::Split)
            }
            // Committed: its room changes stand with it.
            Err(e) if e.committed() => Err(e.into()),
            Err(e) => {
                self.undo_all(batch, applied, runtime);
                Err(e.into())
            }
        }
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

    fn undo_all(
        &self,
        batch: &[Arc<Pending>],
        applied: Vec<Vec<RoomOp>>,
        runtime: &tokio::runtime::Handle,
    ) {
        for (p, changes) in batch.iter().zip(applied).rev() {
            runtime.block_on(self.undo_room_ops(&p.conn.id, changes));
        }
    }
}

/// A run that left a batch without an answer: a bug, reported rather than hung on.
fn lost() -> Failure {
    Failure::new(ErrorCode::ScriptError, "internal error: script result lost")
}
