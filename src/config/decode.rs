//! The decoder: a pack file's YAML tree into event definitions, one field at a time.
//! Every problem becomes a diagnostic and decoding goes on, so one `check` run lists
//! them all; an event with an error is left out of the pack. The single fields are
//! decoded in `fields`, `senders` and `scripts`, the `rooms:` rules in `rooms`, what
//! spans events in `checks`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::{pack_files, Fingerprint};
use super::rooms::RoomRules;
use super::schema::SchemaFiles;
use super::target::TargetSpec;
use super::yaml::{self, Node, NodeKind, Pos};
use super::{Diagnostics, EventDef, Hooks, Scope};
use crate::script::ScriptRuntime;
use crate::suggest::suggest;

pub const CONNECT_HOOK: &str = "$connect";
pub const DISCONNECT_HOOK: &str = "$disconnect";
const MAX_EVENT_NAME: usize = 128;

const TOP_KEYS: &[&str] = &["events", "rooms"];
pub(super) const EVENT_KEYS: &[&str] = &[
    "description",
    "scope",
    "schema",
    "to",
    "emit_as",
    "exclude_sender",
    "script",
    "rate_limit",
    "senders",
    "auth",
    "keys",
    "tests",
];
pub(super) const HOOK_KEYS: &[&str] = &["description", "script"];

pub(super) struct Loader<'a> {
    pub(super) runtime: &'a ScriptRuntime,
    pub(super) diags: Diagnostics,
    pub(super) schemas: SchemaFiles,
    pub(super) events: BTreeMap<String, Arc<EventDef>>,
    pub(super) hooks: Hooks,
    pub(super) rooms: RoomRules,
    /// What the rooms checks need to know about the pack's deliveries.
    pub(super) deliveries: RoomDeliveries,
    pub(super) fingerprint: Fingerprint,
    /// Every file read (pack files, scripts; schemas are in `schemas.read`).
    pub(super) sources: std::collections::BTreeSet<PathBuf>,
}

/// The rooms the pack's events deliver to, gathered while decoding them, for the
/// checks of `rooms:` patterns once every file is read (a pattern may come in an
/// earlier or a later file than the events that reach it).
pub(super) struct RoomDeliveries {
    /// Every room a `to:` or an `emit` may name, as a glob (`{{…}}` → `*`); `None` once
    /// a script emits to a target computed at run time, which could be any room.
    pub(super) reached: Option<Vec<String>>,
    /// `scope: local` events whose `to:` is one fixed room: (file, `to:` position,
    /// event, room).
    pub(super) local_fixed: Vec<(PathBuf, Pos, String, String)>,
}

/// What the files read so far declare, to refuse a name declared twice and to notice
/// a pack without events.
#[derive(Default)]
struct Defined {
    /// Event (and hook) names, valid or not, to where they first appear.
    events: BTreeMap<String, (PathBuf, usize)>,
    /// `rooms:` patterns, valid or not, to where they first appear.
    rooms: HashMap<String, (PathBuf, usize)>,
    /// A file's top level could not be read (unreadable, not YAML, not a mapping, a
    /// misspelt key; each already reported): it may be the one meant to hold events.
    broken_file: bool,
}

/// Report keys of `node` that are not in `allowed` (nor in `reported_elsewhere`, keys
/// the caller has its own message for). Returns the fields suggested instead, so the
/// caller does not also say such a field is missing: `scpoe` gets one message ("did you
/// mean scope?"), not two.
pub fn check_keys<'k>(
    diags: &mut Diagnostics,
    file: &Path,
    node: &Node,
    allowed: &[&'k str],
    reported_elsewhere: &[&str],
    what: &str,
) -> Vec<&'k str> {
    let mut suggested = Vec::new();
    let Some(entries) = node.as_map() else {
        return suggested;
    };
    for (key, _) in entries {
        let k = key.name.as_str();
        if allowed.contains(&k) || reported_elsewhere.contains(&k) {
            continue;
        }
        let guess = suggest(k, allowed.iter().copied());
        suggested.extend(guess);
        let hint = guess
            .map(|s| format!(", did you mean \"{s}\"?"))
            .unwrap_or_else(|| format!(" (allowed: {})", allowed.join(", ")));
        diags.error(
            file,
            key.pos,
            format!("unknown field \"{k}\" in {what}{hint}"),
        );
    }
    suggested
}

/// A string field, or an error naming the field and what it got instead.
pub fn string_field<'n>(
    diags: &mut Diagnostics,
    file: &Path,
    node: &'n Node,
    field: &str,
) -> Option<&'n str> {
    let s = node.as_str();
    if s.is_none() {
        diags.error(
            file,
            node.pos,
            format!("`{field}` must be a string, not {}", node.type_name()),
        );
    }
    s
}

impl<'a> Loader<'a> {
    pub(super) fn new(runtime: &'a ScriptRuntime) -> Self {
        Self {
            runtime,
            diags: Diagnostics::default(),
            schemas: SchemaFiles::default(),
            events: BTreeMap::new(),
            hooks: Hooks::default(),
            rooms: RoomRules::default(),
            deliveries: RoomDeliveries {
                reached: Some(Vec::new()),
                local_fixed: Vec::new(),
            },
            fingerprint: Fingerprint::new(),
            sources: std::collections::BTreeSet::new(),
        }
    }

    pub(super) fn load_dir(&mut self, dir: &Path) {
        let files = match pack_files(dir) {
            Ok(files) => files,
            Err(e) => {
                self.diags.error(
                    dir,
                    Pos::default(),
                    format!("cannot read pack directory: {e}"),
                );
                return;
            }
        };
        if files.is_empty() {
            self.diags.error(
                dir,
                Pos::default(),
                "no pack files: put *.yaml files with an `events:` map in this directory or in its events/",
            );
            return;
        }
        let mut defined = Defined::default();
        for file in files {
            self.load_file(&file, &mut defined);
        }
        // A file may hold only `rooms:`, but a pack serves events. Not said after a
        // broken file: its events may be what is missing, and that is reported.
        if defined.events.is_empty() && !defined.broken_file {
            self.diags.error(
                dir,
                Pos::default(),
                "the pack defines no events: add an `events:` map to one of its files (a file may hold `events:`, `rooms:` or both)",
            );
        }
        self.check_rooms();
    }

    fn load_file(&mut self, file: &Path, defined: &mut Defined) {
        let text = match super::files::read_text(file) {
            Ok(t) => t,
            Err(e) => {
                self.diags
                    .error(file, Pos::default(), format!("cannot read file: {e}"));
                defined.broken_file = true;
                return;
            }
        };
        self.fingerprint.write(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        self.fingerprint.write(text.as_bytes());
        self.sources.insert(file.to_path_buf());
        let root = match yaml::parse(&text) {
            Ok(Some(root)) => root,
            Ok(None) => {
                self.diags.warning(
                    file,
                    Pos { line: 1, col: 1 },
                    "file is empty: it defines no events",
                );
                return;
            }
            Err(e) => {
                // `*: …` under `rooms:` is the natural thing to write, and YAML reads
                // it as an alias, which its own message leaves the reader to work out.
                let hint = if e.message.contains("anchor") {
                    "; a key or value starting with `*` must be quoted, as in `\"*\": …`"
                } else {
                    ""
                };
                self.diags
                    .error(file, e.pos, format!("invalid YAML: {}{hint}", e.message));
                defined.broken_file = true;
                return;
            }
        };
        if root.as_map().is_none() {
            self.diags.error(
                file,
                root.pos,
                format!(
                    "a pack file is a mapping with `events:` and/or `rooms:`, not {}",
                    root.type_name()
                ),
            );
            defined.broken_file = true;
            return;
        }
        let misspelt = check_keys(&mut self.diags, file, &root, TOP_KEYS, &[], "pack file");
        if !misspelt.is_empty() {
            // `evnets:` has its "did you mean"; "no events" on top of it says nothing new.
            defined.broken_file = true;
        }
        if let Some(rooms) = root.get("rooms") {
            self.load_rooms(file, rooms, &mut defined.rooms);
        }
        let Some(events) = root.get("events") else {
            if misspelt.is_empty() && root.get("rooms").is_none() {
                self.diags.error(
                    file,
                    root.pos,
                    "a pack file needs an `events:` map, a `rooms:` map or both",
                );
                defined.broken_file = true;
            }
            return;
        };
        let Some(entries) = events.as_map() else {
            if !matches!(events.kind, NodeKind::Null) {
                defined.broken_file = true;
                self.diags.error(
                    file,
                    events.pos,
                    format!(
                        "`events` must be a mapping of event names to definitions, not {}",
                        events.type_name()
                    ),
                );
            }
            return;
        };
        for (key, def) in entries {
            if let Some((other_file, other_line)) = defined.events.get(&key.name) {
                self.diags.error(
                    file,
                    key.pos,
                    format!(
                        "event `{}` is already defined at {}:{}",
                        key.name,
                        other_file.display(),
                        other_line
                    ),
                );
                continue;
            }
            defined
                .events
                .insert(key.name.clone(), (file.to_path_buf(), key.pos.line));
            self.load_event(file, &text, &key.name, key.pos, def);
        }
    }

    pub(super) fn string<'n>(
        &mut self,
        file: &Path,
        node: &'n Node,
        field: &str,
    ) -> Option<&'n str> {
        string_field(&mut self.diags, file, node, field)
    }

    fn load_event(&mut self, file: &Path, text: &str, name: &str, pos: Pos, def: &Node) {
        let is_hook = name == CONNECT_HOOK || name == DISCONNECT_HOOK;
        if name.starts_with('$') && !is_hook {
            self.diags.error(file, pos, format!("`{name}`: names starting with `$` are reserved; the hooks are `$connect` and `$disconnect`"));
            return;
        }
        if !is_hook && !valid_event_name(name) {
            self.diags.error(file, pos, format!("invalid event name `{name}`: use 1 to {MAX_EVENT_NAME} letters, digits, `.`, `_`, `-` or `:`, starting with a letter or digit"));
            return;
        }
        let empty = Node {
            pos: def.pos,
            kind: NodeKind::Map(Vec::new()),
        };
        let def = match &def.kind {
            NodeKind::Map(_) => def,
            NodeKind::Null => &empty,
            _ => {
                self.diags.error(
                    file,
                    def.pos,
                    format!(
                        "event `{name}` must be a mapping of fields, not {}",
                        def.type_name()
                    ),
                );
                return;
            }
        };
        let errors_before = self.diags.error_count();
        let misspelt = if is_hook {
            self.hook_keys(file, name, def)
        } else {
            check_keys(
                &mut self.diags,
                file,
                def,
                EVENT_KEYS,
                &[],
                &format!("event `{name}`"),
            )
        };
        // A hook has no `scope:` field, but what it emits (a `$disconnect` telling the
        // rooms someone left, possibly run for a dead node's connection on a survivor)
        // must reach members on every node, so hooks deliver cluster-wide.
        let (scope, schema) = if is_hook {
            (Scope::Cluster, None)
        } else {
            (
                self.scope(file, name, pos, def, &misspelt),
                self.schema(file, name, pos, def, &misspelt),
            )
        };
        let description = def
            .get("description")
            .and_then(|n| self.string(file, n, "description"))
            .map(str::to_string);
        let to = self.to(file, def);
        let emit_as = self.emit_as(file, name, def);
        let exclude_sender = self.flag(file, def, "exclude_sender");
        let auth_required = self.auth(file, def);
        let senders = self.senders(file, def);
        let rate_limit = def.get("rate_limit").and_then(|n| self.rate_limit(file, n));
        let keys = def
            .get("keys")
            .map(|n| self.keys(file, n))
            .unwrap_or_default();
        let (script, script_source) =
            match def.get("script").and_then(|n| self.script(file, text, n)) {
                Some((script, source)) => (Some(script), Some(source)),
                None => (None, None),
            };
        if let (Some(script), Some(node)) = (&script, def.get("script")) {
            self.check_script_slots(file, node.pos, &script.ast, &keys);
        }
        if is_hook
            && script.is_none()
            && def.get("script").is_none()
            && !misspelt.contains(&"script")
        {
            self.diags.warning(
                file,
                pos,
                format!("hook `{name}` has no script and does nothing"),
            );
        }
        if let (Some(node), Some(_)) = (def.get("schema"), &schema) {
            self.cross_check_targets(file, def, node, &to, script_source.as_deref());
        }
        self.check_pointless_fields(file, def, &to, exclude_sender);
        if !is_hook {
            self.check_api_fields(file, def, senders, &to, &keys);
        }

        if self.diags.error_count() > errors_before {
            return;
        }
        let schema_json = match (&schema, def.get("schema")) {
            (Some(_), Some(node)) => Some(self.schemas.inlined(file, node)),
            _ => None,
        };
        let to_pos = def.get("to").map_or(pos, |n| n.pos);
        let event = Arc::new(EventDef {
            name: name.to_string(),
            scope,
            schema,
            schema_json,
            to,
            emit_as,
            exclude_sender,
            script,
            rate_limit,
            senders,
            auth_required,
            keys,
            description,
            file: file.to_path_buf(),
            line: pos.line,
        });
        self.note_room_deliveries(&event, to_pos);
        match name {
            CONNECT_HOOK => self.hooks.on_connect = Some(event),
            DISCONNECT_HOOK => self.hooks.on_disconnect = Some(event),
            _ => {
                self.events.insert(name.to_string(), event);
            }
        }
    }

    /// Remember the rooms `event` delivers to, for the checks of `rooms:` patterns.
    fn note_room_deliveries(&mut self, event: &EventDef, to_pos: Pos) {
        let deliveries = &mut self.deliveries;
        if let TargetSpec::Room(template) = &event.to {
            if let Some(reached) = deliveries.reached.as_mut() {
                reached.push(template.glob());
            }
            if let (Scope::Local, Some(room)) = (event.scope, template.literal()) {
                deliveries.local_fixed.push((
                    event.file.clone(),
                    to_pos,
                    event.name.clone(),
                    room.to_string(),
                ));
            }
        }
        if let Some(script) = &event.script {
            match super::scripts::emitted_rooms(&script.ast) {
                Some(rooms) => {
                    if let Some(reached) = deliveries.reached.as_mut() {
                        reached.extend(rooms);
                    }
                }
                None => deliveries.reached = None,
            }
        }
    }
}

pub(super) fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}
