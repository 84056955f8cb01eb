//! Checks across fields of one event, and of `rooms:` patterns against every event of
//! the pack: what no single field's decoder can see. [`RoomDeliveries`] gathers what
//! the rooms checks need from each event as it is loaded, as a pattern may come in an
//! earlier or a later file than the events that reach it.

use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, Diagnostics, CROSS_SLOT};
use super::rooms::RoomRules;
use super::schema::SchemaFiles;
use super::scripts::{emitted_rooms, state_key_slots};
use super::target::{KeySlot, TargetSpec, Template};
use super::yaml::{Node, NodeKind, Pos};
use super::{EventDef, Scope, Senders};
use crate::glob::{glob_covers, globs_intersect};
use crate::suggest::suggest;

/// `{{data.x}}` in `to` must name a property the schema lets through, and should
/// name one it requires: a payload without it cannot be routed. Fields the script may
/// set itself (`data.x = …`) are exempt, as `to` is resolved after the script.
pub(super) fn cross_check_targets(
    diags: &mut Diagnostics,
    schemas: &SchemaFiles,
    file: &Path,
    def: &Node,
    schema: &Node,
    to: &TargetSpec,
    script: Option<&str>,
) {
    // A `{ $ref: file }` schema is checked through the file it names.
    let referenced = schemas.referenced_root(file, schema);
    let schema = referenced.as_deref().unwrap_or(schema);
    let Some(props) = schema.get("properties").and_then(Node::as_map) else {
        return;
    };
    let closed = matches!(
        schema.get("additionalProperties"),
        Some(Node {
            kind: NodeKind::Bool(false),
            ..
        })
    );
    let required: Vec<&str> = match schema.get("required").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items.iter().filter_map(Node::as_str).collect(),
        _ => Vec::new(),
    };
    let pos = def.get("to").map_or(def.pos, |n| n.pos);
    for path in to.data_paths() {
        let Some(first) = path.first() else { continue };
        if script.is_some_and(|source| script_may_set(source, first)) {
            continue;
        }
        if !props.iter().any(|(k, _)| &k.name == first) {
            if closed {
                let hint = suggest(first, props.iter().map(|(k, _)| k.name.as_str()))
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_default();
                diags.error(file, pos, format!("`to` reads `data.{first}`, but the schema allows no property `{first}`{hint}"));
            }
        } else if !required.contains(&first.as_str()) {
            diags.warning(file, pos, format!("`to` reads `data.{first}`, which the schema does not require: a payload without it cannot be routed and is refused; add `{first}` to `required`"));
        }
    }
}

/// Fields that are valid but have no effect: almost always a mistake.
pub(super) fn check_pointless_fields(
    diags: &mut Diagnostics,
    file: &Path,
    def: &Node,
    to: &TargetSpec,
    exclude_sender: bool,
) {
    if *to == TargetSpec::None {
        if let Some(node) = def.get("emit_as") {
            diags.warning(file, node.pos, "`emit_as` has no effect without `to`: nothing is delivered under this event's name");
        }
    }
    if *to == TargetSpec::Sender && exclude_sender {
        if let Some(node) = def.get("exclude_sender") {
            diags.warning(
                file,
                node.pos,
                "`to: sender` with `exclude_sender: true` delivers nothing",
            );
        }
    }
}

/// Fields that cannot work for an event only backends send: an API call has no
/// connection of its own (`conn.id` is `api:<key name>`) and no user.
pub(super) fn check_api_fields(
    diags: &mut Diagnostics,
    file: &Path,
    def: &Node,
    senders: Senders,
    to: &TargetSpec,
    keys: &[Template],
) {
    if !senders.api_only() {
        return;
    }
    let to_pos = def.get("to").map_or(def.pos, |n| n.pos);
    if *to == TargetSpec::Sender {
        diags.warning(file, to_pos, "`to: sender` on an event only the API sends delivers to nobody: an API call has no connection");
    }
    if to.reads_conn_user() {
        diags.warning(file, to_pos, "`to` reads `{{conn.user}}`, but an API call has no user: every call would fail with `unauthorized`; take the user from `data`");
    }
    if let Some(node) = def.get("keys") {
        if keys.iter().any(Template::reads_conn_user) {
            diags.warning(file, node.pos, "`keys` read `{{conn.user}}`, but an API call has no user; take the user from `data`");
        }
    }
    if let Some(node) = def.get("auth") {
        if node.as_str() == Some("required") {
            diags.warning(file, node.pos, "`auth: required` has no effect on an event only the API sends: API calls are authenticated by their key");
        }
    }
    if let Some(node) = def.get("exclude_sender") {
        if matches!(node.kind, NodeKind::Bool(true)) {
            diags.warning(file, node.pos, "`exclude_sender` has no effect on an event only the API sends: an API call receives no deliveries");
        }
    }
}

/// The state keys a script names, and those it declares, must share a Redis
/// Cluster slot too: literal keys with different hash tags, or computed ones led by
/// different literals, do not. (Declared keys alone are `check_key_slots`'.)
pub(super) fn check_script_slots(
    diags: &mut Diagnostics,
    file: &Path,
    pos: Pos,
    ast: &rhai::AST,
    declared: &[Template],
) {
    let mut slots: Vec<KeySlot> = declared
        .iter()
        .filter_map(|t| KeySlot::of_skeleton(&t.skeleton()))
        .collect();
    slots.sort();
    slots.dedup();
    if slots.len() > 1 {
        return;
    }
    for slot in state_key_slots(ast) {
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    if slots.len() < 2 {
        return;
    }
    let named: Vec<String> = slots.iter().map(ToString::to_string).collect();
    diags.push(
        Diagnostic::warning(
            file,
            pos,
            format!(
                "the script's state keys ({}) do not share one `{{hash tag}}`, so on Redis Cluster they may sit in different slots and the script fails there with `script_error`; give them one tag, e.g. `\"count:{{\" + data.room + \"}}\"` and `\"list:{{\" + data.room + \"}}\"`",
                named.join(", ")
            ),
        )
        .with_code(CROSS_SLOT),
    );
}

/// The rooms the pack's events deliver to, gathered while loading them, for the
/// checks of `rooms:` patterns once every file is read.
pub(super) struct RoomDeliveries {
    /// Every room a `to:` or an `emit` may name, as a glob (`{{…}}` → `*`); `None` once
    /// a script emits to a target computed at run time, which could be any room.
    reached: Option<Vec<String>>,
    /// `scope: local` events whose `to:` is one fixed room: (file, `to:` position,
    /// event, room).
    local_fixed: Vec<(PathBuf, Pos, String, String)>,
}

impl Default for RoomDeliveries {
    fn default() -> Self {
        Self {
            reached: Some(Vec::new()),
            local_fixed: Vec::new(),
        }
    }
}

impl RoomDeliveries {
    /// Remember the rooms `event` delivers to, for the checks of `rooms:` patterns.
    pub(super) fn note(&mut self, event: &EventDef, to_pos: Pos) {
        if let TargetSpec::Room(template) = &event.to {
            if let Some(reached) = self.reached.as_mut() {
                reached.push(template.glob());
            }
            if let (Scope::Local, Some(room)) = (event.scope, template.literal()) {
                self.local_fixed.push((
                    event.file.clone(),
                    to_pos,
                    event.name.clone(),
                    room.to_string(),
                ));
            }
        }
        if let Some(script) = &event.script {
            match emitted_rooms(&script.ast) {
                Some(rooms) => {
                    if let Some(reached) = self.reached.as_mut() {
                        reached.extend(rooms);
                    }
                }
                None => self.reached = None,
            }
        }
    }
}

/// `rooms:` patterns against the pack's deliveries, once every file is read.
pub(super) fn check_rooms(
    diags: &mut Diagnostics,
    rooms: &RoomRules,
    deliveries: &mut RoomDeliveries,
) {
    for (file, pos, event, room) in &deliveries.local_fixed {
        if let Some(rule) = rooms.rule_for(room) {
            diags.warning(
                file,
                *pos,
                format!(
                    "event `{event}` has `scope: local`, but room `{room}` keeps history (rooms pattern `{}` at {}:{}): a `local` event's deliveries stay on this node, carry no offset and are not kept in the room's history (nor replayed on a resume); say `scope: cluster` if they belong in it",
                    rule.pattern,
                    rule.file.display(),
                    rule.line
                ),
            );
        }
    }

    let rules: Vec<_> = rooms.iter().collect();
    let mut shadowed = vec![false; rules.len()];
    for (j, later) in rules.iter().enumerate() {
        let Some(earlier) = rules[..j]
            .iter()
            .find(|earlier| glob_covers(&earlier.pattern, &later.pattern))
        else {
            continue;
        };
        shadowed[j] = true;
        diags.warning(
            &later.file,
            Pos { line: later.line, col: later.col },
            format!(
                "rooms pattern `{}` never applies: `{}` at {}:{} comes first and matches every room it does; move this entry above it or remove it",
                later.pattern,
                earlier.pattern,
                earlier.file.display(),
                earlier.line
            ),
        );
    }

    // Which rooms are reached is knowable only when every event was decoded and no
    // script computes a target at run time.
    let Some(mut reached) = deliveries.reached.take() else {
        return;
    };
    if diags.has_errors() {
        return;
    }
    // Many events deliver to the same rooms (`room:{{data.room}}` is `*`).
    reached.sort_unstable();
    reached.dedup();
    for (rule, shadowed) in rules.iter().zip(shadowed) {
        if shadowed
            || reached
                .iter()
                .any(|room| globs_intersect(&rule.pattern, room))
        {
            continue;
        }
        diags.warning(
            &rule.file,
            Pos { line: rule.line, col: rule.col },
            format!(
                "rooms pattern `{}` matches no room any event delivers to (`to:` or `emit`): its history is never used; correct the pattern or remove the entry",
                rule.pattern
            ),
        );
    }
}

/// Whether a script may give `data` the field `field`: `data.field = …`, or `data = …`
/// / `data[…] = …` which may set anything. A text scan, so it errs towards "may".
fn script_may_set(source: &str, field: &str) -> bool {
    let assigns = |lhs: &str| {
        source.match_indices(lhs).any(|(i, _)| {
            let before = source[..i].chars().next_back();
            let after = source[i + lhs.len()..].trim_start();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                && after.starts_with('=')
                && !after.starts_with("==")
        })
    };
    assigns(&format!("data.{field}")) || assigns("data") || source.contains("data[")
}
