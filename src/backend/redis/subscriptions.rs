//! Which channels a node wants and which the server confirmed: the bookkeeping the
//! Pub/Sub connection (`bus`) and the sharded subscriptions (`shards`) share.
//!
//! A channel is wanted while it has local reasons to listen (a count: the first member
//! of a room subscribes, the last one to leave unsubscribes). Confirmation is tracked
//! apart, so a second watcher of a confirmed channel needs no command of its own and
//! the node can tell when every wanted channel is in place (readiness).

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

/// What a new reason to listen asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// The channel is wanted and confirmed already.
    Held,
    /// Send the subscribe (the first reason, or one whose first is still in flight:
    /// idempotent, and its watcher must not be told it holds before it does).
    Subscribe,
}

pub(super) struct Subscriptions {
    /// Channel → local reasons to listen. Everything here is subscribed again after a
    /// reconnect.
    wanted: Mutex<HashMap<String, usize>>,
    /// Channels the server confirmed and has not taken back.
    confirmed: Mutex<HashSet<String>>,
}

impl Subscriptions {
    /// Wanting the always-on channels from the start.
    pub(super) fn new(always: impl IntoIterator<Item = String>) -> Self {
        Self {
            wanted: Mutex::new(always.into_iter().map(|c| (c, 1)).collect()),
            confirmed: Mutex::new(HashSet::new()),
        }
    }

    /// One more reason to listen on `channel`.
    pub(super) fn want(&self, channel: &str) -> Want {
        let first = {
            let mut wanted = self.wanted.lock();
            let count = wanted.entry(channel.to_string()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if !first && self.confirmed.lock().contains(channel) {
            Want::Held
        } else {
            Want::Subscribe
        }
    }

    /// One reason fewer; `true` when it was the last, and the channel is no longer
    /// wanted.
    pub(super) fn unwant(&self, channel: &str) -> bool {
        let mut wanted = self.wanted.lock();
        match wanted.get_mut(channel) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                wanted.remove(channel);
                true
            }
            None => false,
        }
    }

    pub(super) fn is_wanted(&self, channel: &str) -> bool {
        self.wanted.lock().contains_key(channel)
    }

    /// Every wanted channel, for a resubscribe.
    pub(super) fn wanted(&self) -> Vec<String> {
        self.wanted.lock().keys().cloned().collect()
    }

    pub(super) fn confirm(&self, channels: impl IntoIterator<Item = String>) {
        self.confirmed.lock().extend(channels);
    }

    /// The server no longer holds these (an unsubscribe, ours or its own).
    pub(super) fn unconfirm<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        let mut confirmed = self.confirmed.lock();
        for channel in channels {
            confirmed.remove(channel);
        }
    }

    /// The connection is gone: nothing is held until confirmed again.
    pub(super) fn unconfirm_all(&self) {
        self.confirmed.lock().clear();
    }

    /// Whether every wanted channel is confirmed.
    pub(super) fn all_confirmed(&self) -> bool {
        let confirmed = self.confirmed.lock();
        self.wanted.lock().keys().all(|c| confirmed.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_wanted_until_its_last_reason_goes() {
        let subs = Subscriptions::new(["always".to_string()]);
        assert_eq!(subs.want("room"), Want::Subscribe);
        // Not confirmed yet: the second watcher subscribes too.
        assert_eq!(subs.want("room"), Want::Subscribe);
        subs.confirm(["room".to_string(), "always".to_string()]);
        assert_eq!(subs.want("room"), Want::Held);
        assert!(subs.all_confirmed());
        assert!(!subs.unwant("room"));
        assert!(!subs.unwant("room"));
        assert!(subs.unwant("room"));
        assert!(!subs.is_wanted("room"));
        assert!(!subs.unwant("room"), "an extra unwant is no last one");
        subs.unconfirm_all();
        assert!(
            !subs.all_confirmed(),
            "the always-on channel needs confirming again"
        );
    }
}
