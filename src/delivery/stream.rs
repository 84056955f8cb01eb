//! One room's stream as this node delivers it: the last offset handed to local members,
//! and what to do with a delivery that does not come next.
//!
//! Deliveries to a room with history carry offsets 1, 2, 3, … per epoch. Each reaches
//! local members exactly once, in order:
//!
//! - the next offset is released at once, then any held ones that now follow;
//! - an offset already released is a duplicate and dropped;
//! - an offset further ahead is held, and the hole before it is filled from the room's
//!   history (after a short grace: it is usually another delivery of this node still on
//!   its way out of a commit), or announced as a gap when history no longer has it;
//! - before the stream has started (the room's first local member is joining and its
//!   position is being read), everything is held.
//!
//! A stream is a plain state machine; the router owns the lock around it and the task
//! that reads history.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{HistoryRead, StreamPosition};

/// Most deliveries held while a hole is filled: past it the hole is given up on.
const MAX_HELD: usize = 10_000;

/// What a stream step lets go of, in order.
#[derive(Debug)]
pub(super) enum Release {
    /// Deliver to the members whose floor is below its offset.
    Frame { offset: u64, frame: Bytes },
    /// A hole that cannot be filled: members are told, and the stream goes on from
    /// this position.
    Gap(StreamPosition),
}

/// What the router should do after a step.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Nothing,
    /// A hole is open: read the history after `after` (up to `until`, or to the head
    /// when it is `None`).
    Fill {
        after: u64,
        until: Option<u64>,
    },
}

#[derive(Debug)]
pub(super) struct Stream {
    /// `None` until the stream has started.
    epoch: Option<Arc<str>>,
    last: u64,
    /// Deliveries ahead of the next offset, with their epoch.
    held: BTreeMap<u64, (Arc<str>, Bytes)>,
    /// A fill is scheduled or running; another is not scheduled meanwhile.
    filling: bool,
}

impl Stream {
    pub(super) fn new() -> Self {
        Self {
            epoch: None,
            last: 0,
            held: BTreeMap::new(),
            filling: false,
        }
    }

    /// The last position released, once started.
    pub(super) fn position(&self) -> Option<StreamPosition> {
        self.epoch
            .clone()
            .map(|epoch| StreamPosition::new(epoch, self.last))
    }

    /// Start at the room's position: everything up to `head` was published before this
    /// node listened, and anything held after it follows.
    pub(super) fn start(&mut self, head: StreamPosition, out: &mut Vec<Release>) -> Next {
        if self.epoch.is_some() {
            return Next::Nothing;
        }
        // Held deliveries of another epoch are of a history that is gone.
        self.held.retain(|_, (held, _)| *held == head.epoch);
        self.epoch = Some(head.epoch);
        self.last = head.offset;
        self.release_held(out)
    }

    /// A delivery at `offset` of `epoch` arrived.
    pub(super) fn offer(
        &mut self,
        epoch: &Arc<str>,
        offset: u64,
        frame: &Bytes,
        out: &mut Vec<Release>,
    ) -> Next {
        let Some(current) = &self.epoch else {
            self.held.insert(offset, (epoch.clone(), frame.clone()));
            return Next::Nothing;
        };
        if epoch != current {
            // The room's history was lost (Redis restarted empty): positions of the old
            // epoch mean nothing now. Members are told, and the new epoch goes on.
            self.held.clear();
            self.jump(
                StreamPosition::new(epoch.clone(), offset.saturating_sub(1)),
                out,
            );
        } else if offset <= self.last {
            return Next::Nothing;
        }
        if offset == self.last + 1 && self.held.is_empty() {
            self.last = offset;
            out.push(Release::Frame {
                offset,
                frame: frame.clone(),
            });
            return Next::Nothing;
        }
        self.held.insert(offset, (epoch.clone(), frame.clone()));
        self.release_held(out)
    }

    /// What a history read after `after` brought (`None`: the backend could not be
    /// read). `until` bounds what was asked for.
    pub(super) fn filled(
        &mut self,
        after: u64,
        until: Option<u64>,
        read: Option<HistoryRead>,
        out: &mut Vec<Release>,
    ) -> Next {
        self.filling = false;
        let Some(current) = self.epoch.clone() else {
            return Next::Nothing;
        };
        let Some(read) = read else {
            // Not reachable now: try again while the hole is there.
            return self.release_held(out);
        };
        if read.head.epoch != current {
            self.held.clear();
            self.jump(read.head, out);
            return Next::Nothing;
        }
        if after != self.last {
            // Released meanwhile; what was read may be stale: look again.
            return self.release_held(out);
        }
        let target = until.unwrap_or(read.head.offset);
        if read.complete {
            for entry in read.entries {
                if entry.offset == self.last + 1 && entry.offset <= target {
                    self.last = entry.offset;
                    out.push(Release::Frame {
                        offset: entry.offset,
                        frame: entry.frame,
                    });
                }
            }
        }
        if self.last < target {
            // Beyond history (trimmed, expired, or more than a fill takes).
            self.jump(StreamPosition::new(current, target), out);
        }
        self.release_held(out)
    }

    /// A fill scheduled for the hole after `after` is about to read history: the hole
    /// that is open now, which may have moved or closed during the grace (its
    /// deliveries arrived). `None`: nothing to read, and the fill ends. A catch-up
    /// (`until` = `None`) always reads.
    pub(super) fn open_hole(
        &mut self,
        after: u64,
        until: Option<u64>,
    ) -> Option<(u64, Option<u64>)> {
        if until.is_none() {
            return Some((after, until));
        }
        match self.held.first_key_value() {
            Some((&first, _)) => Some((self.last, Some(first - 1))),
            None => {
                self.filling = false;
                None
            }
        }
    }

    /// Catch up after the bus was away: read whatever came after the last release.
    pub(super) fn resync(&mut self) -> Next {
        if self.epoch.is_none() || self.filling {
            return Next::Nothing;
        }
        self.filling = true;
        Next::Fill {
            after: self.last,
            until: None,
        }
    }

    /// Skip to `to`, telling members.
    fn jump(&mut self, to: StreamPosition, out: &mut Vec<Release>) {
        self.epoch = Some(to.epoch.clone());
        self.last = to.offset;
        self.held.retain(|o, _| *o > to.offset);
        out.push(Release::Gap(to));
    }

    /// Release what follows `last` without a hole; ask for a fill when a hole remains.
    fn release_held(&mut self, out: &mut Vec<Release>) -> Next {
        let Some(epoch) = self.epoch.clone() else {
            return Next::Nothing;
        };
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset <= self.last {
                entry.remove();
            } else if offset == self.last + 1 {
                self.last = offset;
                let (_, frame) = entry.remove();
                out.push(Release::Frame { offset, frame });
            } else {
                break;
            }
        }
        let Some((&first, _)) = self.held.first_key_value() else {
            return Next::Nothing;
        };
        if self.held.len() > MAX_HELD {
            // Waiting longer would hold too much: give the hole up.
            self.jump(StreamPosition::new(epoch, first - 1), out);
            return self.release_held(out);
        }
        if self.filling {
            return Next::Nothing;
        }
        self.filling = true;
        Next::Fill {
            after: self.last,
            until: Some(first - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::HistoryEntry;
    use super::*;

    /// Offer the delivery at `offset` of `epoch` (its frame is the offset as text).
    fn offer(s: &mut Stream, epoch: &str, offset: u64, out: &mut Vec<Release>) -> Next {
        s.offer(
            &Arc::from(epoch),
            offset,
            &Bytes::from(format!("{offset}")),
            out,
        )
    }

    fn released(out: &[Release]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Release::Frame { frame, .. } => String::from_utf8_lossy(frame).to_string(),
                Release::Gap(at) => format!("gap {}@{}", at.epoch, at.offset),
            })
            .collect()
    }

    fn started(head: u64) -> Stream {
        let mut s = Stream::new();
        s.start(StreamPosition::new(Arc::from("e"), head), &mut Vec::new());
        s
    }

    #[test]
    fn a_hole_closed_during_the_grace_is_not_read_and_a_later_one_is() {
        let mut s = started(4);
        let mut out = Vec::new();
        assert_eq!(
            offer(&mut s, "e", 6, &mut out),
            Next::Fill {
                after: 4,
                until: Some(5)
            }
        );
        offer(&mut s, "e", 5, &mut out);
        assert_eq!(released(&out), ["5", "6"]);
        // The scheduled fill finds nothing missing.
        assert_eq!(s.open_hole(4, Some(5)), None);
        // The next hole gets a fill of its own.
        assert_eq!(
            offer(&mut s, "e", 8, &mut out),
            Next::Fill {
                after: 6,
                until: Some(7)
            }
        );
        // Closed and opened again further on during one grace: the fill reads the new
        // hole, not the old one.
        offer(&mut s, "e", 7, &mut out);
        offer(&mut s, "e", 10, &mut out);
        assert_eq!(s.open_hole(6, Some(7)), Some((8, Some(9))));
        // A catch-up reads whatever the stream holds.
        assert_eq!(s.open_hole(8, None), Some((8, None)));
    }

    #[test]
    fn in_order_deliveries_pass_and_duplicates_drop() {
        let mut s = started(4);
        let mut out = Vec::new();
        assert_eq!(offer(&mut s, "e", 5, &mut out), Next::Nothing);
        assert_eq!(offer(&mut s, "e", 5, &mut out), Next::Nothing);
        assert_eq!(offer(&mut s, "e", 3, &mut out), Next::Nothing);
        assert_eq!(offer(&mut s, "e", 6, &mut out), Next::Nothing);
        assert_eq!(released(&out), ["5", "6"]);
    }

    #[test]
    fn a_hole_is_held_then_filled_from_history_in_order() {
        let mut s = started(4);
        let mut out = Vec::new();
        let next = offer(&mut s, "e", 8, &mut out);
        assert_eq!(
            next,
            Next::Fill {
                after: 4,
                until: Some(7)
            }
        );
        assert!(out.is_empty());
        // The late one arrives by itself before the fill ran.
        assert_eq!(offer(&mut s, "e", 5, &mut out), Next::Nothing);
        assert_eq!(released(&out), ["5"]);
        let read = HistoryRead {
            head: StreamPosition::new(Arc::from("e"), 8),
            entries: (6..=8)
                .map(|o| HistoryEntry {
                    offset: o,
                    frame: Bytes::from(format!("{o}")),
                })
                .collect(),
            complete: true,
        };
        // Asked after 4; 5 came meanwhile: look again.
        let next = s.filled(4, Some(7), Some(read.clone()), &mut out);
        assert_eq!(
            next,
            Next::Fill {
                after: 5,
                until: Some(7)
            }
        );
        assert_eq!(s.filled(5, Some(7), Some(read), &mut out), Next::Nothing);
        assert_eq!(released(&out), ["5", "6", "7", "8"]);
    }

    #[test]
    fn a_hole_beyond_history_becomes_a_gap() {
        let mut s = started(0);
        let mut out = Vec::new();
        offer(&mut s, "e", 10, &mut out);
        let read = HistoryRead {
            head: StreamPosition::new(Arc::from("e"), 10),
            entries: Vec::new(),
            complete: false,
        };
        assert_eq!(s.filled(0, Some(9), Some(read), &mut out), Next::Nothing);
        assert_eq!(released(&out), ["gap e@9", "10"]);
    }

    #[test]
    fn before_the_start_everything_waits_and_what_preceded_it_drops() {
        let mut s = Stream::new();
        let mut out = Vec::new();
        offer(&mut s, "e", 3, &mut out);
        offer(&mut s, "e", 4, &mut out);
        offer(&mut s, "e", 5, &mut out);
        assert!(out.is_empty());
        assert_eq!(
            s.start(StreamPosition::new(Arc::from("e"), 3), &mut out),
            Next::Nothing
        );
        assert_eq!(released(&out), ["4", "5"]);
    }

    #[test]
    fn a_new_epoch_is_announced_and_followed() {
        let mut s = started(40);
        let mut out = Vec::new();
        offer(&mut s, "f", 1, &mut out);
        assert_eq!(released(&out), ["gap f@0", "1"]);
        assert_eq!(s.position(), Some(StreamPosition::new(Arc::from("f"), 1)));
    }
}
