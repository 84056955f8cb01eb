//! The `rooms:` section of a pack: per-room settings chosen by a glob on the room name.
//! Today the only setting is `history` (how many deliveries a room keeps, for how long),
//! which gives a room a stream with offsets that clients can resume from.
//!
//! ```yaml
//! rooms:
//!   "lobby": { history: { size: 200, ttl: 600 } }
//!   "doc:*": { history: { size: 1000, ttl: 3600 } }
//! ```
//!
//! A pattern is literal except for `*`, which matches any run of characters (`:`
//! included, none at all included). The first pattern in declaration order (files
//! sorted, then order within a file) that matches a room decides its policy.
//!
//! This module owns the rules, their lookup ([`RoomRules::history_for`], called for
//! every delivery to a room) and their reading from a pack file. Matching a pattern, and
//! telling how two patterns relate (what `checks.rs` needs to find patterns that no
//! delivery can reach), are `crate::glob`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diagnostic::Diagnostics;
use super::fields::check_keys;
use super::yaml::{Node, NodeKind, Pos};
use crate::glob::Glob;

/// Longest pattern accepted: room names are short, and the check-time glob algebra
/// is quadratic in pattern length.
pub(super) const MAX_PATTERN_BYTES: usize = 256;
/// Upper bound of `history.size`: a replay of a full history must stay a bounded
/// amount of work for a node and of memory for the backend.
pub(super) const MAX_HISTORY_SIZE: i64 = 100_000;
/// Upper bound of `history.ttl` in seconds (30 days): history is for reconnects, not
/// an archive.
pub(super) const MAX_HISTORY_TTL_SECS: i64 = 30 * 24 * 3600;
/// The glob characters other tools give a meaning that this one does not: refused
/// rather than taken literally, so `doc:[0-9]*` cannot silently match nothing.
const UNSUPPORTED_GLOB_CHARS: &[char] = &['?', '[', ']', '{', '}'];

const ROOM_KEYS: &[&str] = &["history"];
const HISTORY_KEYS: &[&str] = &["size", "ttl"];

/// What a room with history keeps: its last `size` deliveries, each for `ttl`. The
/// type belongs to delivery (backends trim by it); a pack is where it is written.
pub use crate::delivery::HistoryPolicy;

/// One entry of `rooms:`, with where it was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRule {
    /// The pattern as written: literal characters and `*`.
    pub pattern: String,
    pub history: HistoryPolicy,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// The `rooms:` entries of a pack, in declaration order, indexed for lookup.
#[derive(Debug, Clone, Default)]
pub struct RoomRules {
    /// Declaration order: what `iter` yields and what decides between two matches.
    rules: Vec<RoomRule>,
    /// Patterns without `*`, to their index in `rules`: most rooms with history are
    /// named outright, and a hash lookup is the cheapest test there is.
    literals: HashMap<String, usize>,
    /// Patterns with `*`, with their index in `rules`, in declaration order.
    globs: Vec<(usize, Glob)>,
}

impl RoomRules {
    /// The history policy of a room: the first pattern (in declaration order) that
    /// matches. Allocates nothing: it runs for every delivery to a room.
    pub fn history_for(&self, room: &str) -> Option<HistoryPolicy> {
        self.rule_for(room).map(|r| r.history)
    }

    /// The rule that decides a room's settings: the first that matches.
    pub fn rule_for(&self, room: &str) -> Option<&RoomRule> {
        let literal = self.literals.get(room).copied();
        // A glob declared before a matching literal still comes first; globs declared
        // after it cannot win, so the scan stops there.
        let before = literal.unwrap_or(usize::MAX);
        let index = self
            .globs
            .iter()
            .take_while(|(i, _)| *i < before)
            .find(|(_, glob)| glob.matches(room))
            .map(|(i, _)| *i)
            .or(literal)?;
        self.rules.get(index)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Every rule in declaration order, for `check --list` and docs.
    pub fn iter(&self) -> impl Iterator<Item = &RoomRule> {
        self.rules.iter()
    }

    /// Add a rule after the others. The loader has refused duplicates and unsupported
    /// syntax by then; a repeated pattern would simply never apply.
    pub(crate) fn push(&mut self, rule: RoomRule) {
        let index = self.rules.len();
        if rule.pattern.contains('*') {
            self.globs.push((index, Glob::new(&rule.pattern)));
        } else {
            self.literals.entry(rule.pattern.clone()).or_insert(index);
        }
        self.rules.push(rule);
    }
}

/// What is wrong with a pattern, as the end of a sentence about it.
fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("a rooms pattern is empty: name a room (`lobby`) or use `*` for any run of characters (`doc:*`)".into());
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        let start: String = pattern.chars().take(24).collect();
        return Some(format!(
            "rooms pattern `{start}…` is {} bytes long; the limit is {MAX_PATTERN_BYTES}: shorten it or use `*`",
            pattern.len()
        ));
    }
    let bad = pattern
        .chars()
        .find(|c| UNSUPPORTED_GLOB_CHARS.contains(c))?;
    Some(format!(
        "rooms pattern `{pattern}` uses `{bad}`, which is not supported: `*` (any run of characters, `:` included) is the only wildcard and every other character is literal; write one entry per room or use `*`"
    ))
}

/// The `rooms:` map of one pack file. `defined` holds every pattern seen in earlier
/// files (and this one), valid or not, to name the first place of a repeat.
pub(super) fn load_rooms(
    diags: &mut Diagnostics,
    rules: &mut RoomRules,
    file: &Path,
    rooms: &Node,
    defined: &mut HashMap<String, (PathBuf, usize)>,
) {
    let Some(entries) = rooms.as_map() else {
        if !matches!(rooms.kind, NodeKind::Null) {
            diags.error(
                file,
                rooms.pos,
                format!(
                    "`rooms` must be a mapping of room patterns to settings, like `\"doc:*\": {{ history: {{ size: 1000, ttl: 3600 }} }}`, not {}",
                    rooms.type_name()
                ),
            );
        }
        return;
    };
    for (key, def) in entries {
        let pattern = key.name.as_str();
        if let Some(problem) = pattern_problem(pattern) {
            diags.error(file, key.pos, problem);
            continue;
        }
        if let Some((other_file, other_line)) = defined.get(pattern) {
            diags.error(
                file,
                key.pos,
                format!(
                    "rooms pattern `{pattern}` is already declared at {}:{}: keep one entry",
                    other_file.display(),
                    other_line
                ),
            );
            continue;
        }
        defined.insert(pattern.to_string(), (file.to_path_buf(), key.pos.line));
        if let Some(history) = room(diags, file, pattern, key.pos, def) {
            rules.push(RoomRule {
                pattern: pattern.to_string(),
                history,
                file: file.to_path_buf(),
                line: key.pos.line,
                col: key.pos.col,
            });
        }
    }
}

/// One entry's settings: `{ history: { size, ttl } }`.
fn room(
    diags: &mut Diagnostics,
    file: &Path,
    pattern: &str,
    pos: Pos,
    def: &Node,
) -> Option<HistoryPolicy> {
    let what = format!("rooms pattern `{pattern}`");
    if def.as_map().is_none() && !matches!(def.kind, NodeKind::Null) {
        diags.error(
            file,
            def.pos,
            format!(
                "{what} must be a mapping like `{{ history: {{ size: 100, ttl: 3600 }} }}`, not {}",
                def.type_name()
            ),
        );
        return None;
    }
    let misspelt = check_keys(diags, file, def, ROOM_KEYS, &[], &what);
    let Some(history) = def.get("history") else {
        if !misspelt.contains(&"history") {
            // A null entry (`"lobby":`) sits at its key; point there either way.
            let at = if def.as_map().is_some() { def.pos } else { pos };
            diags.error(
                file,
                at,
                format!("{what} needs `history: {{ size: <deliveries kept>, ttl: <seconds> }}`"),
            );
        }
        return None;
    };
    if history.as_map().is_none() {
        diags.error(
            file,
            history.pos,
            format!(
                "`history` of {what} must be a mapping like `{{ size: 100, ttl: 3600 }}`, not {}",
                history.type_name()
            ),
        );
        return None;
    }
    let misspelt = check_keys(
        diags,
        file,
        history,
        HISTORY_KEYS,
        &[],
        &format!("history of {what}"),
    );
    let size = bounded_int(
        diags,
        file,
        history,
        "size",
        &what,
        &misspelt,
        MAX_HISTORY_SIZE,
        "deliveries kept",
    );
    let ttl = bounded_int(
        diags,
        file,
        history,
        "ttl",
        &what,
        &misspelt,
        MAX_HISTORY_TTL_SECS,
        "seconds; 30 days",
    );
    Some(HistoryPolicy {
        size: usize::try_from(size?).ok()?,
        ttl: Duration::from_secs(u64::try_from(ttl?).ok()?),
    })
}

/// A required whole number in `1..=max` under `history`.
#[allow(clippy::too_many_arguments)]
fn bounded_int(
    diags: &mut Diagnostics,
    file: &Path,
    history: &Node,
    field: &str,
    what: &str,
    misspelt: &[&str],
    max: i64,
    unit: &str,
) -> Option<i64> {
    let Some(node) = history.get(field) else {
        if !misspelt.contains(&field) {
            diags.error(
                file,
                history.pos,
                format!(
                    "`history` of {what} needs `{field}`: a whole number from 1 to {max} ({unit})"
                ),
            );
        }
        return None;
    };
    let got = match &node.kind {
        NodeKind::Int(v) if (1..=max).contains(v) => return Some(*v),
        NodeKind::Int(v) => v.to_string(),
        // `{:?}` keeps the `.0` of `600.0`, which is what makes it not whole.
        NodeKind::Float(v) => format!("{v:?}"),
        _ => node.type_name().to_string(),
    };
    diags.error(
        file,
        node.pos,
        format!("`history.{field}` of {what} must be a whole number from 1 to {max} ({unit}), not {got}"),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, size: usize) -> RoomRule {
        RoomRule {
            pattern: pattern.into(),
            history: HistoryPolicy {
                size,
                ttl: Duration::from_secs(60),
            },
            file: PathBuf::from("pack.yaml"),
            line: size,
            col: 3,
        }
    }

    fn rules(patterns: &[&str]) -> RoomRules {
        let mut rules = RoomRules::default();
        for (i, p) in patterns.iter().enumerate() {
            rules.push(rule(p, i + 1));
        }
        rules
    }

    fn size_for(rules: &RoomRules, room: &str) -> Option<usize> {
        rules.history_for(room).map(|h| h.size)
    }

    #[test]
    fn other_glob_characters_are_refused_with_what_is_supported() {
        for pattern in ["doc:?", "doc:[0-9]", "a]", "{a,b}", "x}"] {
            let problem = pattern_problem(pattern).expect("refused");
            assert!(problem.contains("is not supported"), "{problem}");
            assert!(problem.contains("`*`"), "{problem}");
        }
        assert!(pattern_problem("").is_some());
        assert!(pattern_problem(&"a".repeat(MAX_PATTERN_BYTES)).is_none());
        assert!(pattern_problem(&"a".repeat(MAX_PATTERN_BYTES + 1)).is_some());
        // Bytes, not characters: 129 two-byte characters are 258 bytes.
        assert!(pattern_problem(&"é".repeat(129)).is_some());
        assert!(pattern_problem("doc:*:v*").is_none());
    }

    #[test]
    fn history_for_returns_the_first_matching_rule() {
        let r = rules(&["lobby", "doc:*", "*", "doc:1", "other"]);
        assert_eq!(size_for(&r, "lobby"), Some(1));
        assert_eq!(
            size_for(&r, "doc:1"),
            Some(2),
            "doc:* is declared before doc:1"
        );
        assert_eq!(size_for(&r, "doc:"), Some(2));
        assert_eq!(size_for(&r, "other"), Some(3), "* is declared before other");
        assert_eq!(size_for(&r, "x"), Some(3));

        let r = rules(&["doc:1", "doc:*", "lobby"]);
        assert_eq!(
            size_for(&r, "doc:1"),
            Some(1),
            "a literal declared first wins"
        );
        assert_eq!(size_for(&r, "doc:2"), Some(2));
        assert_eq!(size_for(&r, "lobby"), Some(3));
        assert_eq!(size_for(&r, "lobby2"), None);
        assert_eq!(size_for(&r, "doc"), None);

        assert_eq!(RoomRules::default().history_for("lobby"), None);
        assert!(RoomRules::default().is_empty());
        let order: Vec<&str> = r.iter().map(|r| r.pattern.as_str()).collect();
        assert_eq!(order, ["doc:1", "doc:*", "lobby"]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::glob::glob_matches;
    use crate::proptest_support::config;
    use proptest::prelude::*;

    fn rule(pattern: &str, size: usize) -> RoomRule {
        RoomRule {
            pattern: pattern.into(),
            history: HistoryPolicy {
                size,
                ttl: Duration::from_secs(1),
            },
            file: PathBuf::from("p.yaml"),
            line: 1,
            col: 1,
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        /// The indexed lookup (literals hashed, globs scanned up to the first literal
        /// match) picks what the plain rule does: the first pattern in declaration
        /// order that matches.
        #[test]
        fn rule_lookup_is_the_first_match(patterns in prop::collection::vec("[ab:*]{0,4}", 0..6),
                                          room in "[ab:]{0,5}") {
            let mut rules = RoomRules::default();
            for (i, p) in patterns.iter().enumerate() {
                rules.push(rule(p, i + 1));
            }
            let expected = patterns.iter().position(|p| glob_matches(p, &room)).map(|i| i + 1);
            prop_assert_eq!(rules.history_for(&room).map(|h| h.size), expected);
        }
    }
}
