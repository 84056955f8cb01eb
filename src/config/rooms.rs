//! Placeholder until the `rooms:` decoder lands (branch pack-rooms).

use crate::delivery::HistoryPolicy;

#[derive(Debug, Clone, Default)]
pub struct RoomRules {
    rules: Vec<(String, HistoryPolicy)>,
}

impl RoomRules {
    pub fn history_for(&self, room: &str) -> Option<HistoryPolicy> {
        self.rules
            .iter()
            .find(|(p, _)| p == room || p == "*")
            .map(|(_, h)| *h)
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
