//! Pack rollout on a running node: `SIGHUP`, and `--watch` on the pack's files.
//!
//! A reload loads and checks the whole pack first, with the same script limits the node
//! runs; any error leaves the served pack as it is (the diagnostics go to the log and
//! `wss_pack_reloads_total{outcome="invalid"}`). A valid pack is swapped in atomically:
//! messages already being handled finish on the pack they started with, new ones use
//! the new one, and connections, rooms, sessions and state are not touched. A pack
//! whose fingerprint did not change is left alone.
//!
//! The watch is on directories, not files: an editor's rename-save replaces the file
//! (a watch on it would be left on the old inode), and a Kubernetes ConfigMap update
//! swaps the `..data` symlink of the mounted directory. Bursts of events (a save is
//! several) are debounced into one reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{self, Pack};
use crate::engine::Engine;
use crate::transport::listener::Tls;

/// Quiet time after the last file event before a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// A burst of file events longer than this reloads anyway.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// What one reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new pack is served.
    Swapped { from: String, to: String },
    /// The files changed nothing the pack is made of.
    Unchanged,
    /// The new pack has errors; the old one is still served.
    Invalid,
}

impl Reloaded {
    fn label(&self) -> &'static str {
        match self {
            Self::Swapped { .. } => "ok",
            Self::Unchanged => "unchanged",
            Self::Invalid => "invalid",
        }
    }
}

/// Publish which pack a node serves (`wss_pack_info{fingerprint} 1`).
pub fn record_pack(old: Option<&str>, new: &str) {
    if let Some(old) = old {
        metrics::gauge!("wss_pack_info", "fingerprint" => old.to_string()).set(0.0);
    }
    metrics::gauge!("wss_pack_info", "fingerprint" => new.to_string()).set(1.0);
}

/// What makes a running server load its pack again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadTriggers {
    /// `SIGHUP`, which reloads the TLS certificate too (the binary; in-process servers
    /// leave the signal be).
    pub sighup: bool,
    /// A change to the pack's files (`--watch`).
    pub file_changes: bool,
}

impl ReloadTriggers {
    pub fn any(self) -> bool {
        self.sighup || self.file_changes
    }
}

/// Load the pack at `dir` and serve it if it is valid and different.
pub async fn reload(engine: &Arc<Engine>, dir: &Path) -> Reloaded {
    let started = Instant::now();
    let runtime = engine.scripts().clone();
    let path = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path, &runtime)).await;
    let outcome = match loaded {
        Ok(Ok(config::Loaded { pack, warnings })) => {
            for w in warnings.iter() {
                tracing::warn!("{w}");
            }
            let current = engine.pack();
            if pack.fingerprint == current.fingerprint {
                Reloaded::Unchanged
            } else {
                let to = pack.fingerprint.clone();
                let events = pack.events.len();
                let old = engine.replace_pack(Arc::new(pack));
                record_pack(Some(&old.fingerprint), &to);
                tracing::info!(
                    pack = %dir.display(),
                    from = %old.fingerprint,
                    to = %to,
                    events,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "pack reloaded"
                );
                Reloaded::Swapped {
                    from: old.fingerprint.clone(),
                    to,
                }
            }
        }
        Ok(Err(diags)) => {
            for d in diags.iter() {
                tracing::error!("{d}");
            }
            tracing::error!(
                pack = %dir.display(),
                errors = diags.error_count(),
                "pack reload refused: the new pack has errors; still serving {}",
                engine.pack().fingerprint
            );
            Reloaded::Invalid
        }
        Err(e) => {
            tracing::error!(error = %e, "pack reload failed");
            Reloaded::Invalid
        }
    };
    if outcome == Reloaded::Unchanged {
        tracing::info!(pack = %dir.display(), "pack reload: nothing changed");
    }
    metrics::counter!("wss_pack_reloads_total", "outcome" => outcome.label()).increment(1);
    metrics::histogram!("wss_pack_reload_seconds").record(started.elapsed().as_secs_f64());
    outcome
}

/// Reload on what `triggers` names (on `SIGHUP`, the TLS certificate too) until
/// `shutdown` flips.
pub async fn run(
    engine: Arc<Engine>,
    dir: PathBuf,
    tls: Option<Arc<Tls>>,
    triggers: ReloadTriggers,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hangups = if triggers.sighup {
        hangup_signals()
    } else {
        None
    };
    let (tx, mut changes) = mpsc::channel::<()>(64);
    let mut watcher = None;
    if triggers.file_changes {
        watcher = watch_pack(&engine.pack(), &dir, tx.clone());
    }
    let shut_down = async move {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    tokio::pin!(shut_down);
    loop {
        tokio::select! {
            () = &mut shut_down => return,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("SIGHUP: reloading the pack");
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate reload refused: the old one is still served"),
                    }
                }
            }
            Some(()) = changes.recv() => {
                debounce(&mut changes).await;
                tracing::info!("pack files changed: reloading the pack");
            }
        }
        reload(&engine, &dir).await;
        if triggers.file_changes {
            // The pack may read other files now: watch what it is made of today.
            drop(watcher.take());
            watcher = watch_pack(&engine.pack(), &dir, tx.clone());
        }
    }
}

fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload by signal is off");
            None
        }
    }
}

/// Wait until file events stop for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`]).
async fn debounce(changes: &mut mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::Instant::now() + DEBOUNCE;
        match tokio::time::timeout_at(quiet.min(deadline), changes.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Watch the pack's directory (recursively: `events/`, a ConfigMap's `..data`) and the
/// directory of every other file it was read from (schemas shared with other packs).
fn watch_pack(pack: &Pack, dir: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => !matches!(e.kind, notify::EventKind::Access(_)),
            Err(_) => true,
        };
        // A full channel already holds a wake-up: one is enough.
        if relevant {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the pack: --watch is off");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
        tracing::error!(pack = %dir.display(), error = %e, "cannot watch the pack directory");
        return None;
    }
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let outside: BTreeSet<PathBuf> = pack
        .sources
        .iter()
        .filter_map(|f| f.canonicalize().ok())
        .filter(|f| !f.starts_with(&root))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for extra in outside {
        if let Err(e) = watcher.watch(&extra, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %extra.display(), error = %e, "cannot watch a directory the pack reads from");
        }
    }
    Some(watcher)
}
