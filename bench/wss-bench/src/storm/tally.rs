//! What a worker's clients count: per-client offset tracking (every offset once and
//! in order, or flagged by the server) and the shared tallies its report is made of.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::histogram_json;
use crate::stats;

/// A hole wider than this is counted without remembering each missing offset.
const MAX_TRACKED_GAP: u64 = 10_000;

/// Phases (`Ctx::phase`): 0 before the kill, then these.
pub(super) const DURING: u8 = 1;
pub(super) const AFTER: u8 = 2;

/// What the worker's clients share: the phase and everything they count.
#[derive(Default)]
pub(super) struct Ctx {
    pub(super) phase: AtomicU8,
    pub(super) finals: OnceLock<Vec<u64>>,
    pub(super) lost: AtomicU64,
    pub(super) flagged: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) not_recovered: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) resumed: AtomicU64,
    pub(super) resumed_a: AtomicU64,
    pub(super) disconnects_a: AtomicU64,
    pub(super) disconnects_b: AtomicU64,
    pub(super) attempts: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) failed_resumes: AtomicU64,
    pub(super) gave_up: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) first_disconnect_us: AtomicU64,
    pub(super) first_resume_sent_us: AtomicU64,
    /// Wall-clock µs at which each home-A client's resume was acknowledged.
    pub(super) done_a_us: Mutex<Vec<u64>>,
    /// Dial + WebSocket upgrade + `$welcome` of each reconnect that succeeded.
    pub(super) handshake: Mutex<Option<Histogram<u64>>>,
    /// `$resume` written → its ack (the replay arrives before the ack).
    pub(super) resume_ack: Mutex<Option<Histogram<u64>>>,
    /// Delivery latency of the survivors (home B, never disconnected), per phase.
    pub(super) survivors: [Mutex<Option<Histogram<u64>>>; 3],
}

pub(super) fn record(h: &Mutex<Option<Histogram<u64>>>, us: u64) {
    h.lock()
        .get_or_insert_with(stats::new_histogram)
        .saturating_record(us.clamp(1, 60_000_000));
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A client's place in its room's stream: every offset must come once and in order.
pub(super) struct Track {
    pub(super) next: u64,
    /// Offsets skipped by a later delivery: found later = out of order, else lost.
    pub(super) missing: BTreeSet<u64>,
    pub(super) lost_wide: u64,
    /// After a `$gap` the next delivery sets the position; what it skips is flagged.
    pub(super) resync: bool,
}

impl Track {
    pub(super) fn new(joined_at: u64) -> Self {
        Self {
            next: joined_at + 1,
            missing: BTreeSet::new(),
            lost_wide: 0,
            resync: false,
        }
    }

    pub(super) fn last(&self) -> u64 {
        self.next - 1
    }

    pub(super) fn see(&mut self, offset: u64, ctx: &Ctx) {
        if self.resync {
            self.resync = false;
            if offset >= self.next {
                add(&ctx.flagged, offset - self.next);
                self.next = offset + 1;
                return;
            }
        }
        if offset == self.next {
            self.next += 1;
        } else if offset > self.next {
            let gap = offset - self.next;
            if gap > MAX_TRACKED_GAP {
                self.lost_wide += gap;
            } else {
                self.missing.extend(self.next..offset);
            }
            self.next = offset + 1;
        } else if self.missing.remove(&offset) {
            add(&ctx.out_of_order, 1);
        } else {
            add(&ctx.duplicates, 1);
        }
    }

    /// The client was told it cannot recover up to `joined`: that stretch is flagged.
    pub(super) fn skip_flagged(&mut self, joined: u64, ctx: &Ctx) {
        if joined >= self.next {
            add(&ctx.flagged, joined + 1 - self.next);
            self.next = joined + 1;
        }
    }
}

pub(super) fn report(ctx: &Ctx) -> Value {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let hist = |h: &Mutex<Option<Histogram<u64>>>| h.lock().as_ref().map(histogram_json);
    json!({
        "lost": n(&ctx.lost), "flagged": n(&ctx.flagged), "duplicates": n(&ctx.duplicates),
        "out_of_order": n(&ctx.out_of_order), "gaps": n(&ctx.gaps),
        "not_recovered": n(&ctx.not_recovered), "refused": n(&ctx.refused),
        "resumed": n(&ctx.resumed), "resumed_a": n(&ctx.resumed_a),
        "disconnects_a": n(&ctx.disconnects_a), "disconnects_b": n(&ctx.disconnects_b),
        "attempts": n(&ctx.attempts), "failed_attempts": n(&ctx.failed_attempts),
        "failed_resumes": n(&ctx.failed_resumes), "gave_up": n(&ctx.gave_up),
        "received": n(&ctx.received),
        "first_disconnect_us": n(&ctx.first_disconnect_us),
        "first_resume_sent_us": n(&ctx.first_resume_sent_us),
        "done_a_us": *ctx.done_a_us.lock(),
        "handshake": hist(&ctx.handshake), "resume_ack": hist(&ctx.resume_ack),
        "survivors": [hist(&ctx.survivors[0]), hist(&ctx.survivors[1]), hist(&ctx.survivors[2])],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_late_offset_is_out_of_order_and_a_hole_that_stays_is_lost() {
        let ctx = Ctx::default();
        let mut t = Track::new(4);
        for offset in [5, 7, 6, 7, 9] {
            t.see(offset, &ctx);
        }
        assert_eq!(t.last(), 9);
        assert_eq!(n(&ctx.out_of_order), 1); // 6 after 7
        assert_eq!(n(&ctx.duplicates), 1); // 7 twice
        assert_eq!(t.missing.iter().copied().collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn what_the_server_owned_up_to_is_flagged_not_lost() {
        let ctx = Ctx::default();
        let mut t = Track::new(10);
        // `recovered: false` with the room at 15: 11..=15 are flagged.
        t.skip_flagged(15, &ctx);
        t.see(16, &ctx);
        // `$gap`, then the stream goes on at 20: 17..=19 are flagged.
        t.resync = true;
        t.see(20, &ctx);
        assert_eq!(n(&ctx.flagged), 8);
        assert!(t.missing.is_empty());
        assert_eq!(t.last(), 20);
    }
}
