//! In-process counters of handled events, for the HTTP API's `/api/stats` and the admin
//! dashboard (Prometheus has the same numbers, but a page should not parse its text).
//!
//! Counted where `wss_events_total` is: every event a client or the API sent, by
//! outcome. Error codes form a bounded set (the protocol's codes, and `rejected` for
//! every code a script passes to `reject`), so the map cannot grow without bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The rate is averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Samples kept for the rate; snapshots are taken every few seconds, so this is plenty.
const MAX_SAMPLES: usize = 64;

#[derive(Default)]
pub struct Stats {
    events: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// `(when, events so far)`, oldest first: what the rate is computed from.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// One node's counters as `/api/stats` and the node registry carry them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Events handled since the node started, whatever their outcome.
    pub events_total: u64,
    /// Events handled per second, averaged over about the last ten seconds.
    pub events_per_second: f64,
    /// Failed events since the node started, by error code.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Count one handled event; `error` is its error code, `None` when it succeeded.
    pub fn record(&self, error: Option<&str>) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = error {
            *self.errors.lock().entry(code.to_string()).or_default() += 1;
        }
    }

    /// The counters now, with the rate since the oldest sample in the window.
    pub fn snapshot(&self) -> StatsSnapshot {
        let now = Instant::now();
        let total = self.events.load(Ordering::Relaxed);
        let rate = {
            let mut samples = self.samples.lock();
            while samples.len() > 1
                && samples
                    .get(1)
                    .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
            {
                samples.pop_front();
            }
            let rate = match samples.front() {
                Some((at, before)) if now.duration_since(*at) >= Duration::from_millis(200) => {
                    total.saturating_sub(*before) as f64 / now.duration_since(*at).as_secs_f64()
                }
                _ => 0.0,
            };
            if samples.len() >= MAX_SAMPLES {
                samples.pop_front();
            }
            samples.push_back((now, total));
            rate
        };
        StatsSnapshot {
            events_total: total,
            events_per_second: (rate * 10.0).round() / 10.0,
            errors: self.errors.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_and_errors_by_code() {
        let stats = Stats::default();
        stats.record(None);
        stats.record(Some("invalid_payload"));
        stats.record(Some("invalid_payload"));
        let snap = stats.snapshot();
        assert_eq!(snap.events_total, 3);
        assert_eq!(snap.errors.get("invalid_payload"), Some(&2));
        assert_eq!(snap.events_per_second, 0.0, "no window yet");
    }
}
