//! `wss-engine diff`: every change between two loaded packs, each classified
//! **breaking** or **compatible** for the clients already connected (and the backends
//! that send API events) when the new pack replaces the old one.
//!
//! ```text
//! mod.rs     events (removed, added, renamed, each field), hooks, `rooms:` rules
//! schema/    payload schemas: does the new one still accept what the old one did?
//! ```
//!
//! The question asked of every change is the same: can a client that worked against
//! the old pack, and does not change, now be refused something it was allowed, or stop
//! receiving something it received? If so, breaking. Where the answer depends on what a
//! script does, or on two things this module cannot compare (two regular expressions,
//! two `oneOf` lists), the change is listed and classified on the safe side, except for
//! script changes, which are listed as compatible ("behaviour may differ"): scripts
//! change with almost every release, and reading one is the reviewer's job.
//!
//! Pure comparison of two [`Pack`]s as `config` loaded them (`config` does not know this
//! module): no I/O; `crate::commands` prints the result.

mod schema;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use schema::{compare as compare_schemas, SchemaChange};

use crate::config::{
    EventDef, HistoryPolicy, Pack, RateLimit, RoomRule, RoomRules, Scope, TargetSpec,
};

/// Whether a change can break a client written against the old pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Breaking,
    Compatible,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Breaking => "breaking",
            Class::Compatible => "compatible",
        }
    }
}

/// What a change is about. Events (hooks included, `$connect` and `$disconnect`)
/// sort before `rooms:` rules, each by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Event(String),
    /// A `rooms:` pattern.
    Room(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Event(name) => f.write_str(name),
            Subject::Room(pattern) => write!(f, "rooms \"{pattern}\""),
        }
    }
}

/// Where a definition is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One difference between two packs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub subject: Subject,
    /// A stable name for the kind of change (`event_removed`, `schema_type_narrowed`, …):
    /// what tools and the test corpus match on.
    pub kind: &'static str,
    pub class: Class,
    /// What changed and why it is classified so, for a person.
    pub detail: String,
    /// For a payload schema change: where in the payload, as a JSON Pointer (`*` for
    /// any item or unlisted property; empty for the payload itself).
    pub path: Option<String>,
    /// The definition in the old pack, if there is one.
    pub old: Option<Site>,
    /// The definition in the new pack, if there is one.
    pub new: Option<Site>,
}

/// Every change from `old` to `new`, sorted by subject (stable: the changes of one
/// event keep the order they are found in: fields, then the schema, then the script).
pub fn diff(old: &Pack, new: &Pack) -> Vec<Change> {
    let mut d = Differ::default();
    d.events(old, new);
    d.hook(
        old.hooks.on_connect.as_deref(),
        new.hooks.on_connect.as_deref(),
    );
    d.hook(
        old.hooks.on_disconnect.as_deref(),
        new.hooks.on_disconnect.as_deref(),
    );
    d.rooms(&old.rooms, &new.rooms);
    d.changes.sort_by(|a, b| a.subject.cmp(&b.subject));
    d.changes
}

fn site(e: &EventDef) -> Site {
    Site {
        file: e.file.clone(),
        line: e.line,
    }
}

fn rule_site(r: &RoomRule) -> Site {
    Site {
        file: r.file.clone(),
        line: r.line,
    }
}

/// A script's source with what cannot change its behaviour taken out: trailing spaces
/// and blank lines around it (a YAML block scalar and a `.rhai` file end differently).
fn normalized(source: &str) -> String {
    let lines: Vec<&str> = source.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_string()
}

fn same_script(a: &EventDef, b: &EventDef) -> bool {
    match (&a.script, &b.script) {
        (None, None) => true,
        (Some(a), Some(b)) => normalized(&a.source) == normalized(&b.source),
        _ => false,
    }
}

/// `emit_as` left at its default is the event's own name, which a rename changes with
/// it: both default, or both the same name, count as the same definition.
fn same_emit_as(a: &EventDef, b: &EventDef) -> bool {
    (a.emit_as == a.name && b.emit_as == b.name) || a.emit_as == b.emit_as
}

/// Two events that behave alike under different names: a rename candidate. The
/// description does not count (a rename often rewords it; the change is listed).
fn same_definition(a: &EventDef, b: &EventDef) -> bool {
    a.scope == b.scope
        && a.schema_json == b.schema_json
        && a.to.same_recipients(&b.to)
        && same_emit_as(a, b)
        && a.exclude_sender == b.exclude_sender
        && a.auth_required == b.auth_required
        && a.rate_limit == b.rate_limit
        && a.keys == b.keys
        && same_script(a, b)
}

fn show_rate(r: Option<RateLimit>) -> String {
    match r {
        None => "none".to_string(),
        Some(r) => format!("{}/s burst {}", r.per_second, r.burst),
    }
}

fn show_history(h: HistoryPolicy) -> String {
    format!("size {}, ttl {}s", h.size, h.ttl.as_secs())
}

#[derive(Default)]
struct Differ {
    changes: Vec<Change>,
}

impl Differ {
    fn push(
        &mut self,
        subject: &Subject,
        kind: &'static str,
        class: Class,
        detail: impl Into<String>,
        old: Option<Site>,
        new: Option<Site>,
    ) {
        self.changes.push(Change {
            subject: subject.clone(),
            kind,
            class,
            detail: detail.into(),
            path: None,
            old,
            new,
        });
    }

    fn events(&mut self, old: &Pack, new: &Pack) {
        let removed: Vec<&EventDef> = old
            .events
            .values()
            .filter(|e| !new.events.contains_key(&e.name))
            .map(|e| &**e)
            .collect();
        let added: Vec<&EventDef> = new
            .events
            .values()
            .filter(|e| !old.events.contains_key(&e.name))
            .map(|e| &**e)
            .collect();
        // A rename is a removed event and an added one with the same definition, each
        // the other's only match: with two look-alikes on either side there is no
        // telling which became which, so they stay a removal and an addition.
        let renames: Vec<(&EventDef, &EventDef)> = removed
            .iter()
            .filter_map(|r| {
                let mut matches = added.iter().filter(|a| same_definition(r, a));
                let a = matches.next()?;
                if matches.next().is_some() {
                    return None;
                }
                let rivals = removed.iter().filter(|r2| same_definition(r2, a)).count();
                (rivals == 1).then_some((*r, *a))
            })
            .collect();

        for (name, o) in &old.events {
            if let Some(n) = new.events.get(name) {
                self.event(&Subject::Event(name.clone()), o, n);
            }
        }
        for r in &removed {
            let subject = Subject::Event(r.name.clone());
            if let Some((_, a)) = renames.iter().find(|(r2, _)| r2.name == r.name) {
                self.push(
                    &subject,
                    "event_renamed",
                    Class::Breaking,
                    format!(
                        "renamed to `{}`: clients sending `{}` now get `unknown_event`",
                        a.name, r.name
                    ),
                    Some(site(r)),
                    Some(site(a)),
                );
                // What else differs: the delivered name when both defaulted to their
                // own, the description.
                self.event(&subject, r, a);
                continue;
            }
            let delivered = if matches!(r.to, TargetSpec::None) {
                String::new()
            } else {
                format!(", and listeners of `{}` stop receiving it", r.emit_as)
            };
            self.push(
                &subject,
                "event_removed",
                Class::Breaking,
                format!("event removed: clients sending it now get `unknown_event`{delivered}"),
                Some(site(r)),
                None,
            );
        }
        for a in &added {
            if renames.iter().any(|(_, a2)| a2.name == a.name) {
                continue;
            }
            self.push(
                &Subject::Event(a.name.clone()),
                "event_added",
                Class::Compatible,
                format!("event added (scope {}, to {})", a.scope.as_str(), a.to),
                None,
                Some(site(a)),
            );
        }
    }

    fn hook(&mut self, old: Option<&EventDef>, new: Option<&EventDef>) {
        match (old, new) {
            (None, None) => {}
            (Some(o), None) => self.push(
                &Subject::Event(o.name.clone()),
                "hook_removed",
                Class::Compatible,
                "hook removed: its script no longer runs (behaviour may differ)",
                Some(site(o)),
                None,
            ),
            (None, Some(n)) => self.push(
                &Subject::Event(n.name.clone()),
                "hook_added",
                Class::Compatible,
                "hook added: its script now runs (behaviour may differ)",
                None,
                Some(site(n)),
            ),
            (Some(o), Some(n)) => self.event(&Subject::Event(o.name.clone()), o, n),
        }
    }

    /// Every difference between two definitions of one event (or hook, or the two
    /// sides of a rename).
    fn event(&mut self, subject: &Subject, o: &EventDef, n: &EventDef) {
        let sites = || (Some(site(o)), Some(site(n)));
        let push = |d: &mut Self, kind: &'static str, class: Class, detail: String| {
            let (a, b) = sites();
            d.push(subject, kind, class, detail, a, b);
        };
        let delivered_before = !matches!(o.to, TargetSpec::None);

        if o.scope != n.scope {
            let detail = match n.scope {
                Scope::Cluster => "scope local → cluster: deliveries now reach clients on every node, and a client's messages are ordered with every node's",
                Scope::Local => "scope cluster → local: clients on other nodes stop receiving its deliveries",
            };
            push(self, "scope_changed", Class::Breaking, detail.to_string());
        }

        if !o.to.same_recipients(&n.to) {
            let change = format!("to `{}` → `{}`", o.to, n.to);
            let (class, why) = match (&o.to, &n.to) {
                (TargetSpec::None, _) => (Class::Compatible, "deliveries added"),
                (_, TargetSpec::None) => (
                    Class::Breaking,
                    "deliveries stop: clients that received it no longer do",
                ),
                (_, TargetSpec::All) => (
                    Class::Compatible,
                    "every connected client now receives it, including those that did",
                ),
                (a, b) if a.kind() != b.kind() => (
                    Class::Breaking,
                    "the recipients are another kind: clients that received it may stop",
                ),
                _ => (
                    Class::Breaking,
                    "the recipients are computed differently: clients of the old rooms, users or connections may stop receiving it",
                ),
            };
            push(self, "to_changed", class, format!("{change}: {why}"));
        }

        // Both at their default, on an event that delivered nothing: the name merely
        // followed a rename and reached no one, before or after.
        let renamed_quietly = o.emit_as == o.name && n.emit_as == n.name && !delivered_before;
        if o.emit_as != n.emit_as && !renamed_quietly {
            let change = format!("emit_as `{}` → `{}`", o.emit_as, n.emit_as);
            if delivered_before {
                push(
                    self,
                    "emit_as_changed",
                    Class::Breaking,
                    format!("{change}: listeners of `{}` stop hearing it", o.emit_as),
                );
            } else {
                push(
                    self,
                    "emit_as_changed",
                    Class::Compatible,
                    format!("{change}: nothing was delivered under the old name (`to: none`)"),
                );
            }
        }

        if o.exclude_sender != n.exclude_sender {
            let (kind, class, detail) = match (n.exclude_sender, delivered_before) {
                (_, false) => (
                    if n.exclude_sender { "exclude_sender_enabled" } else { "exclude_sender_disabled" },
                    Class::Compatible,
                    "exclude_sender changed with no effect before: the event delivered nothing (`to: none`)",
                ),
                (true, true) => (
                    "exclude_sender_enabled",
                    Class::Breaking,
                    "exclude_sender enabled: the sender stops receiving its own delivery (clients that wait for the echo miss it)",
                ),
                (false, true) => (
                    "exclude_sender_disabled",
                    Class::Compatible,
                    "exclude_sender disabled: the sender now also receives its own delivery (clients that show their message at once may show it twice)",
                ),
            };
            push(self, kind, class, detail.to_string());
        }

        match (o.auth_required, n.auth_required) {
            (false, true) => push(
                self,
                "auth_required_added",
                Class::Breaking,
                "`auth: required` added: anonymous connections now get `unauthorized`".into(),
            ),
            (true, false) => push(
                self,
                "auth_required_removed",
                Class::Compatible,
                "`auth: required` removed: anonymous connections may now send it".into(),
            ),
            _ => {}
        }

        if o.rate_limit != n.rate_limit {
            let change = format!(
                "rate limit {} → {}",
                show_rate(o.rate_limit),
                show_rate(n.rate_limit)
            );
            let (kind, class) = match (o.rate_limit, n.rate_limit) {
                (None, _) => ("rate_limit_added", Class::Breaking),
                (_, None) => ("rate_limit_removed", Class::Compatible),
                (Some(a), Some(b)) if b.per_second < a.per_second || b.burst < a.burst => {
                    ("rate_limit_tightened", Class::Breaking)
                }
                _ => ("rate_limit_loosened", Class::Compatible),
            };
            let why = match class {
                Class::Breaking => ": clients sending at the old rate may now get `rate_limited`",
                Class::Compatible => "",
            };
            push(self, kind, class, format!("{change}{why}"));
        }

        if let (Some(os), Some(ns)) = (&o.schema_json, &n.schema_json) {
            for c in compare_schemas(os, ns) {
                let place = if c.path.is_empty() {
                    String::new()
                } else {
                    format!(" {}", c.path)
                };
                let (a, b) = sites();
                self.changes.push(Change {
                    subject: subject.clone(),
                    kind: c.kind,
                    class: c.class,
                    detail: format!("payload{place}: {}", c.detail),
                    path: Some(c.path),
                    old: a,
                    new: b,
                });
            }
        }

        if !same_script(o, n) {
            let (kind, what) = match (&o.script, &n.script) {
                (None, _) => ("script_added", "script added"),
                (_, None) => ("script_removed", "script removed"),
                _ => ("script_changed", "script changed"),
            };
            push(
                self,
                kind,
                Class::Compatible,
                format!("{what} (behaviour may differ)"),
            );
        }

        if o.keys != n.keys {
            push(
                self,
                "keys_changed",
                Class::Compatible,
                "`keys` changed (which state is prefetched; clients see no difference)".into(),
            );
        }

        if o.description != n.description {
            push(
                self,
                "description_changed",
                Class::Compatible,
                "description changed".into(),
            );
        }
    }

    /// `rooms:` rules, compared by what they decide. A room's history comes from the
    /// first rule that matches it, so a rule's effect depends on the others: removing
    /// `lobby` under a later `"*"` hands `lobby` to `"*"`. Each pattern is therefore
    /// taken as a probe room name (a glob stands for the rooms it names: its `*` matches
    /// itself) and its history looked up in both packs; what resuming clients can
    /// recover is what changed. A room that only some of a glob's rooms share with
    /// another rule is not examined on its own.
    fn rooms(&mut self, old: &RoomRules, new: &RoomRules) {
        let patterns: BTreeSet<&str> = old
            .iter()
            .chain(new.iter())
            .map(|r| r.pattern.as_str())
            .collect();
        for pattern in patterns {
            let own_old = old.iter().find(|r| r.pattern == pattern);
            let own_new = new.iter().find(|r| r.pattern == pattern);
            let (was, now) = (old.rule_for(pattern), new.rule_for(pattern));
            let by = |rule: Option<&RoomRule>| match rule {
                Some(r) if r.pattern != pattern => format!(" (from rule \"{}\")", r.pattern),
                _ => String::new(),
            };
            let effect = match (was.map(|r| r.history), now.map(|r| r.history)) {
                (None, None) => Effect::Same,
                (None, Some(_)) => Effect::Gained,
                (Some(_), None) => Effect::Lost,
                (Some(a), Some(b)) if a == b => Effect::Same,
                (Some(a), Some(b)) if b.size < a.size || b.ttl < a.ttl => Effect::Reduced,
                _ => Effect::Increased,
            };
            let before = was.map_or_else(
                || "no history".to_string(),
                |r| format!("{}{}", show_history(r.history), by(was)),
            );
            let after = now.map_or_else(
                || "no history".to_string(),
                |r| format!("{}{}", show_history(r.history), by(now)),
            );
            let class = match effect {
                Effect::Reduced | Effect::Lost => Class::Breaking,
                _ => Class::Compatible,
            };
            let consequence = match effect {
                Effect::Reduced => {
                    ": resuming clients may find less to replay and get `recovered: false`"
                }
                Effect::Lost => {
                    ": rooms lose their stream; resuming clients get `recovered: false`"
                }
                _ => "",
            };
            let kind = match (own_old, own_new, effect) {
                (None, _, _) => "room_rule_added",
                (_, None, _) => "room_rule_removed",
                (_, _, Effect::Same) => continue,
                (_, _, Effect::Reduced | Effect::Lost) => "room_history_reduced",
                (_, _, Effect::Increased | Effect::Gained) => "room_history_increased",
            };
            let what = match kind {
                "room_rule_added" => "rule added",
                "room_rule_removed" => "rule removed",
                _ => "history changed",
            };
            self.push(
                &Subject::Room(pattern.to_string()),
                kind,
                class,
                format!("{what}: {before} → {after}{consequence}"),
                own_old.or(was).map(rule_site),
                own_new.or(now).map(rule_site),
            );
        }
    }
}

/// What a change of rules does to the history of one probe room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Same,
    Gained,
    Lost,
    Reduced,
    Increased,
}
