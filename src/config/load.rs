//! The loader: a pack directory into a [`Pack`], file by file and event by event. It
//! owns the order of the steps and what they build; each step is a function of its own
//! room that takes what it needs: an event's single fields in `fields` and `senders`,
//! scripts in `scripts`, schemas in `schema`, the `rooms:` rules in `rooms`, what spans
//! fields or events in `checks`. Every problem becomes a diagnostic and loading goes
//! on, so one `check` run lists them all; an event with an error is left out of the pack.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checks::{self, RoomDeliveries};
use super::fields::{self, check_keys, string_field, valid_event_name};
use super::fields::{EVENT_KEYS, MAX_EVENT_NAME};
use super::files::{pack_files, read_text, Sources};
use super::rooms::{self, RoomRules};
use super::schema::SchemaFiles;
use super::yaml::{self, Node, NodeKind, Pos};
use super::{scripts, senders};
use super::{Diagnostics, EventDef, Hooks, Pack, Scope};
use crate::script::ScriptRuntime;

pub const CONNECT_HOOK: &str = "$connect";
pub const DISCONNECT_HOOK: &str = "$disconnect";

const TOP_KEYS: &[&str] = &["events", "rooms"];

/// A pack that loaded, and what was found wrong with it that does not stop it.
#[derive(Debug)]
pub struct Loaded {
    pub pack: Pack,
    pub warnings: Diagnostics,
}

/// Load a pack; `Err` carries every problem found (warnings included).
pub fn load(dir: &Path, runtime: &ScriptRuntime) -> Result<Loaded, Diagnostics> {
    let mut loader = Loader::new(runtime);
    loader.load_dir(dir);
    let Loader {
        mut diags,
        events,
        hooks,
        rooms,
        mut sources,
        schemas,
        ..
    } = loader;
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    // Schema files count too (in path order, so the hash does not depend on the order
    // events referred to them): a changed schema is a changed pack.
    // Named relative to the pack (or by file name), so the fingerprint does not depend
    // on where on disk a node keeps the pack.
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for (path, text) in &schemas.read {
        let name = path
            .strip_prefix(&root)
            .ok()
            .map(Path::as_os_str)
            .or_else(|| path.file_name())
            .unwrap_or_default();
        sources.record(path, name.as_encoded_bytes(), text);
    }
    Ok(Loaded {
        pack: Pack {
            root: dir.to_path_buf(),
            events,
            hooks,
            rooms,
            fingerprint: sources.fingerprint(),
            sources: sources.paths.into_iter().collect(),
        },
        warnings: diags,
    })
}

/// What one load builds, step by step.
struct Loader<'a> {
    runtime: &'a ScriptRuntime,
    diags: Diagnostics,
    schemas: SchemaFiles,
    events: BTreeMap<String, Arc<EventDef>>,
    hooks: Hooks,
    rooms: RoomRules,
    /// What the rooms checks need to know about the pack's deliveries.
    deliveries: RoomDeliveries,
    /// Every file read (pack files, scripts; schemas are in `schemas.read` until the
    /// end) and the fingerprint of their content.
    sources: Sources,
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

impl<'a> Loader<'a> {
    fn new(runtime: &'a ScriptRuntime) -> Self {
        Self {
            runtime,
            diags: Diagnostics::default(),
            schemas: SchemaFiles::default(),
            events: BTreeMap::new(),
            hooks: Hooks::default(),
            rooms: RoomRules::default(),
            deliveries: RoomDeliveries::default(),
            sources: Sources::new(),
        }
    }

    fn load_dir(&mut self, dir: &Path) {
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
        checks::check_rooms(&mut self.diags, &self.rooms, &mut self.deliveries);
    }

    fn load_file(&mut self, file: &Path, defined: &mut Defined) {
        let text = match read_text(file) {
            Ok(t) => t,
            Err(e) => {
                self.diags
                    .error(file, Pos::default(), format!("cannot read file: {e}"));
                defined.broken_file = true;
                return;
            }
        };
        let name = file.file_name().map(|n| n.as_encoded_bytes());
        self.sources.record(file, name.unwrap_or_default(), &text);
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
            rooms::load_rooms(
                &mut self.diags,
                &mut self.rooms,
                file,
                rooms,
                &mut defined.rooms,
            );
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
        let diags = &mut self.diags;
        let errors_before = diags.error_count();
        let misspelt = if is_hook {
            fields::hook_keys(diags, file, name, def)
        } else {
            check_keys(
                diags,
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
                fields::scope(diags, file, name, pos, def, &misspelt),
                fields::schema(diags, &mut self.schemas, file, name, pos, def, &misspelt),
            )
        };
        let description = def
            .get("description")
            .and_then(|n| string_field(diags, file, n, "description"))
            .map(str::to_string);
        let to = fields::to(diags, file, def);
        let emit_as = fields::emit_as(diags, file, name, def);
        let exclude_sender = fields::flag(diags, file, def, "exclude_sender");
        let auth_required = fields::auth(diags, file, def);
        let senders = senders::senders(diags, file, def);
        let rate_limit = def
            .get("rate_limit")
            .and_then(|n| fields::rate_limit(diags, file, n));
        let keys = def
            .get("keys")
            .map(|n| fields::keys(diags, file, n))
            .unwrap_or_default();
        let script = def
            .get("script")
            .and_then(|n| scripts::script(self.runtime, diags, &mut self.sources, file, text, n));
        if let (Some(script), Some(node)) = (&script, def.get("script")) {
            checks::check_script_slots(diags, file, node.pos, &script.ast, &keys);
        }
        if is_hook
            && script.is_none()
            && def.get("script").is_none()
            && !misspelt.contains(&"script")
        {
            diags.warning(
                file,
                pos,
                format!("hook `{name}` has no script and does nothing"),
            );
        }
        if let (Some(node), Some(_)) = (def.get("schema"), &schema) {
            let source = script.as_ref().map(|s| s.source.as_str());
            checks::cross_check_targets(diags, &self.schemas, file, def, node, &to, source);
        }
        checks::check_pointless_fields(diags, file, def, &to, exclude_sender);
        if !is_hook {
            checks::check_api_fields(diags, file, def, senders, &to, &keys);
        }

        if diags.error_count() > errors_before {
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
        self.deliveries.note(&event, to_pos);
        match name {
            CONNECT_HOOK => self.hooks.on_connect = Some(event),
            DISCONNECT_HOOK => self.hooks.on_disconnect = Some(event),
            _ => {
                self.events.insert(name.to_string(), event);
            }
        }
    }
}
