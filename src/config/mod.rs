//! Event packs: finding the files, decoding them, compiling schemas and scripts.
//!
//! Raw YAML → [`yaml::Node`] tree (positions kept) → validated [`Pack`]. The loader
//! collects every problem as a [`Diagnostic`] with `file:line:col` and keeps going, so
//! `wss-engine check` shows an operator all mistakes at once. Nothing here touches the
//! network or starts a runtime.

pub mod diagnostic;
mod schema;
pub mod target;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use crate::engine::script::ScriptRuntime;

pub use diagnostic::{suggest, Diagnostic, Diagnostics, Severity};
pub use target::{Target, TargetError, TargetSpec, Template, TemplateContext};
use yaml::{Node, NodeKind, Pos};

/// The JSON Schema of the pack format, as printed by `wss-engine schema`.
pub const PACK_SCHEMA: &str = include_str!("../../schemas/event-pack.schema.json");

pub const CONNECT_HOOK: &str = "$connect";
pub const DISCONNECT_HOOK: &str = "$disconnect";
const MAX_EVENT_NAME: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Deliveries reach only clients of the receiving node.
    Local,
    /// Deliveries are published to every node.
    Cluster,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A compiled script and where its source starts, for error positions.
pub struct ScriptDef {
    pub ast: rhai::AST,
    pub file: PathBuf,
    /// Line of the script's first line in `file`.
    pub first_line: usize,
}

impl std::fmt::Debug for ScriptDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScriptDef({}:{})", self.file.display(), self.first_line)
    }
}

/// One client event (or lifecycle hook) ready to serve.
#[derive(Debug)]
pub struct EventDef {
    pub name: String,
    pub scope: Scope,
    /// `None` only for hooks, which take no payload.
    pub schema: Option<Arc<Validator>>,
    pub to: TargetSpec,
    /// The name deliveries carry.
    pub emit_as: String,
    pub exclude_sender: bool,
    pub script: Option<ScriptDef>,
    pub rate_limit: Option<RateLimit>,
    pub auth_required: bool,
    pub keys: Vec<Template>,
    pub description: Option<String>,
    pub tests: Vec<TestCase>,
    pub file: PathBuf,
    pub line: usize,
}

/// A case of `wss-engine test`, as written under an event's `tests:`.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub state: Vec<(String, Value)>,
    pub conn: TestConn,
    pub send: Value,
    pub expect: Expectation,
}

#[derive(Debug, Clone, Default)]
pub struct TestConn {
    pub id: Option<String>,
    pub user: Option<String>,
    pub rooms: Vec<String>,
    pub claims: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub deliveries: Option<Vec<ExpectedDelivery>>,
    pub error: Option<String>,
    pub reply: Option<Value>,
    pub state: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
pub struct ExpectedDelivery {
    pub to: String,
    pub event: String,
    pub data: Option<Value>,
}

#[derive(Debug)]
pub struct Pack {
    pub root: PathBuf,
    pub events: BTreeMap<String, Arc<EventDef>>,
    pub on_connect: Option<Arc<EventDef>>,
    pub on_disconnect: Option<Arc<EventDef>>,
    /// Hash of every file of the pack: nodes compare it to spot mixed deployments.
    pub fingerprint: String,
}

impl Pack {
    pub fn event(&self, name: &str) -> Option<&Arc<EventDef>> {
        self.events.get(name)
    }
}

/// Load a pack; `Err` carries every problem found (warnings included).
pub fn load(dir: &Path, runtime: &ScriptRuntime) -> Result<(Pack, Diagnostics), Diagnostics> {
    let mut loader = Loader {
        runtime,
        diags: Diagnostics::default(),
        schemas: schema::SchemaFiles::default(),
        events: BTreeMap::new(),
        hooks: [None, None],
        fingerprint: Fnv::new(),
    };
    loader.load_dir(dir);
    let mut diags = loader.diags;
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    let [on_connect, on_disconnect] = loader.hooks;
    Ok((
        Pack {
            root: dir.to_path_buf(),
            events: loader.events,
            on_connect,
            on_disconnect,
            fingerprint: format!("{:016x}", loader.fingerprint.0),
        },
        diags,
    ))
}

/// The pack files of a directory: `*.yaml`/`*.yml` in it and in its `events/`, sorted.
pub fn pack_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for d in [dir.to_path_buf(), dir.join("events")] {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d != dir && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let is_yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

struct Loader<'a> {
    runtime: &'a ScriptRuntime,
    diags: Diagnostics,
    schemas: schema::SchemaFiles,
    events: BTreeMap<String, Arc<EventDef>>,
    hooks: [Option<Arc<EventDef>>; 2],
    fingerprint: Fnv,
}

const TOP_KEYS: &[&str] = &["events"];
const EVENT_KEYS: &[&str] = &[
    "description",
    "scope",
    "schema",
    "to",
    "emit_as",
    "exclude_sender",
    "script",
    "rate_limit",
    "auth",
    "keys",
    "tests",
];
const HOOK_KEYS: &[&str] = &["description", "script"];

impl Loader<'_> {
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
        let mut defined: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
        for file in files {
            self.load_file(&file, &mut defined);
        }
    }

    fn load_file(&mut self, file: &Path, defined: &mut BTreeMap<String, (PathBuf, usize)>) {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                self.diags
                    .error(file, Pos::default(), format!("cannot read file: {e}"));
                return;
            }
        };
        self.fingerprint.write(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        self.fingerprint.write(text.as_bytes());
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
                self.diags
                    .error(file, e.pos, format!("invalid YAML: {}", e.message));
                return;
            }
        };
        if root.as_map().is_none() {
            self.diags.error(
                file,
                root.pos,
                format!(
                    "a pack file is a mapping with `events:`, not {}",
                    root.type_name()
                ),
            );
            return;
        }
        let misspelt = self.check_keys(file, &root, TOP_KEYS, "pack file");
        let Some(events) = root.get("events") else {
            if !misspelt.contains(&"events") {
                self.diags.error(file, root.pos, "missing `events:` map");
            }
            return;
        };
        let Some(entries) = events.as_map() else {
            if !matches!(events.kind, NodeKind::Null) {
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
            if let Some((other_file, other_line)) = defined.get(&key.name) {
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
            defined.insert(key.name.clone(), (file.to_path_buf(), key.pos.line));
            self.load_event(file, &text, &key.name, key.pos, def);
        }
    }

    /// Report keys of `node` that are not in `allowed`. Returns the fields suggested
    /// instead, so the caller does not also say such a field is missing: `scpoe` gets
    /// one message ("did you mean scope?"), not two.
    fn check_keys<'k>(
        &mut self,
        file: &Path,
        node: &Node,
        allowed: &[&'k str],
        what: &str,
    ) -> Vec<&'k str> {
        let mut suggested = Vec::new();
        let Some(entries) = node.as_map() else {
            return suggested;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                let guess = suggest(&key.name, allowed.iter().copied());
                suggested.extend(guess);
                let hint = guess
                    .map(|s| format!(", did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!(" (allowed: {})", allowed.join(", ")));
                self.diags.error(
                    file,
                    key.pos,
                    format!("unknown field \"{}\" in {what}{hint}", key.name),
                );
            }
        }
        suggested
    }

    fn string<'n>(&mut self, file: &Path, node: &'n Node, field: &str) -> Option<&'n str> {
        let s = node.as_str();
        if s.is_none() {
            self.diags.error(
                file,
                node.pos,
                format!("`{field}` must be a string, not {}", node.type_name()),
            );
        }
        s
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
        let errors_before = self.diags.0.iter().filter(|d| d.is_error()).count();

        let misspelt = if is_hook {
            for (key, _) in def.as_map().unwrap_or_default() {
                if !HOOK_KEYS.contains(&key.name.as_str())
                    && EVENT_KEYS.contains(&key.name.as_str())
                {
                    self.diags.error(
                        file,
                        key.pos,
                        format!(
                            "hook `{name}` takes only a script (and description); remove \"{}\"",
                            key.name
                        ),
                    );
                }
            }
            self.check_keys_excluding(file, def, HOOK_KEYS, EVENT_KEYS, &format!("hook `{name}`"))
        } else {
            self.check_keys(file, def, EVENT_KEYS, &format!("event `{name}`"))
        };

        let description = def
            .get("description")
            .and_then(|n| self.string(file, n, "description"))
            .map(str::to_string);
        // A hook has no `scope:` field, but what it emits (a `$disconnect` telling the
        // rooms someone left, possibly run for a dead node's connection on a survivor)
        // must reach members on every node, so hooks deliver cluster-wide.
        let scope = if is_hook {
            Scope::Cluster
        } else {
            match def.get("scope") {
                None => {
                    if !misspelt.contains(&"scope") {
                        self.diags.error(
                            file,
                            pos,
                            format!("event `{name}` needs `scope: local` or `scope: cluster`"),
                        );
                    }
                    Scope::Local
                }
                Some(node) => match node.as_str() {
                    Some("local") => Scope::Local,
                    Some("cluster") => Scope::Cluster,
                    other => {
                        let hint = other
                            .and_then(|s| suggest(s, ["local", "cluster"]))
                            .map(|s| format!(", did you mean `{s}`?"))
                            .unwrap_or_default();
                        self.diags.error(
                            file,
                            node.pos,
                            format!("`scope` must be `local` or `cluster`{hint}"),
                        );
                        Scope::Local
                    }
                },
            }
        };
        let schema = if is_hook {
            None
        } else {
            match def.get("schema") {
                None => {
                    if !misspelt.contains(&"schema") {
                        self.diags.error(file, pos, format!("event `{name}` needs a `schema` for its payload (use `schema: {{}}` to accept anything)"));
                    }
                    None
                }
                Some(node) => self.schemas.compile(file, node, &mut self.diags),
            }
        };
        let to = match def.get("to") {
            None => TargetSpec::None,
            Some(node) => match self.string(file, node, "to").map(TargetSpec::parse) {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    self.diags.error(file, node.pos, format!("`to`: {e}"));
                    TargetSpec::None
                }
                None => TargetSpec::None,
            },
        };
        let emit_as = match def.get("emit_as") {
            None => name.to_string(),
            Some(node) => match self.string(file, node, "emit_as") {
                Some(s) if valid_event_name(s) => s.to_string(),
                Some(s) => {
                    self.diags.error(
                        file,
                        node.pos,
                        format!("`emit_as`: invalid event name `{s}`"),
                    );
                    name.to_string()
                }
                None => name.to_string(),
            },
        };
        let exclude_sender = match def.get("exclude_sender") {
            None => false,
            Some(Node {
                kind: NodeKind::Bool(b),
                ..
            }) => *b,
            Some(node) => {
                self.diags.error(
                    file,
                    node.pos,
                    format!(
                        "`exclude_sender` must be true or false, not {}",
                        node.type_name()
                    ),
                );
                false
            }
        };
        let auth_required = match def.get("auth") {
            None => false,
            Some(node) => match node.as_str() {
                Some("required") => true,
                Some("optional") => false,
                _ => {
                    self.diags
                        .error(file, node.pos, "`auth` must be `required` or `optional`");
                    false
                }
            },
        };
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
        let tests = def
            .get("tests")
            .map(|n| self.tests(file, n))
            .unwrap_or_default();
        if let (Some(node), Some(_)) = (def.get("schema"), &schema) {
            self.cross_check_targets(file, def, node, &to, script_source.as_deref());
        }
        self.check_pointless_fields(file, def, &to, exclude_sender);

        let errors_after = self.diags.0.iter().filter(|d| d.is_error()).count();
        if errors_after > errors_before {
            return;
        }
        let event = Arc::new(EventDef {
            name: name.to_string(),
            scope,
            schema,
            to,
            emit_as,
            exclude_sender,
            script,
            rate_limit,
            auth_required,
            keys,
            description,
            tests,
            file: file.to_path_buf(),
            line: pos.line,
        });
        match name {
            CONNECT_HOOK => self.hooks[0] = Some(event),
            DISCONNECT_HOOK => self.hooks[1] = Some(event),
            _ => {
                self.events.insert(name.to_string(), event);
            }
        }
    }

    /// Unknown keys of a hook that are not event fields either (those get their own message).
    fn check_keys_excluding<'k>(
        &mut self,
        file: &Path,
        node: &Node,
        allowed: &[&'k str],
        skip: &[&str],
        what: &str,
    ) -> Vec<&'k str> {
        let mut suggested = Vec::new();
        let Some(entries) = node.as_map() else {
            return suggested;
        };
        for (key, _) in entries {
            let k = key.name.as_str();
            if !allowed.contains(&k) && !skip.contains(&k) {
                let guess = suggest(k, allowed.iter().copied());
                suggested.extend(guess);
                let hint = guess
                    .map(|s| format!(", did you mean \"{s}\"?"))
                    .unwrap_or_default();
                self.diags.error(
                    file,
                    key.pos,
                    format!("unknown field \"{k}\" in {what}{hint}"),
                );
            }
        }
        suggested
    }

    /// `{{data.x}}` in `to` must name a property the schema lets through, and should
    /// name one it requires: a payload without it cannot be routed. Fields the script may
    /// set itself (`data.x = …`) are exempt, as `to` is resolved after the script.
    fn cross_check_targets(
        &mut self,
        file: &Path,
        def: &Node,
        schema: &Node,
        to: &TargetSpec,
        script: Option<&str>,
    ) {
        // A `{ $ref: file }` schema is checked through the file it names.
        let referenced = self.schemas.referenced_root(file, schema);
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
                    self.diags.error(file, pos, format!("`to` reads `data.{first}`, but the schema allows no property `{first}`{hint}"));
                }
            } else if !required.contains(&first.as_str()) {
                self.diags.warning(file, pos, format!("`to` reads `data.{first}`, which the schema does not require: a payload without it cannot be routed and is refused; add `{first}` to `required`"));
            }
        }
    }

    /// Fields that are valid but have no effect: almost always a mistake.
    fn check_pointless_fields(
        &mut self,
        file: &Path,
        def: &Node,
        to: &TargetSpec,
        exclude_sender: bool,
    ) {
        if *to == TargetSpec::None {
            if let Some(node) = def.get("emit_as") {
                self.diags.warning(file, node.pos, "`emit_as` has no effect without `to`: nothing is delivered under this event's name");
            }
        }
        if *to == TargetSpec::Sender && exclude_sender {
            if let Some(node) = def.get("exclude_sender") {
                self.diags.warning(
                    file,
                    node.pos,
                    "`to: sender` with `exclude_sender: true` delivers nothing",
                );
            }
        }
    }

    fn rate_limit(&mut self, file: &Path, node: &Node) -> Option<RateLimit> {
        if node.as_map().is_none() {
            self.diags.error(
                file,
                node.pos,
                "`rate_limit` must be a mapping like `{ per_second: 10, burst: 20 }`",
            );
            return None;
        }
        let misspelt = self.check_keys(file, node, &["per_second", "burst"], "rate_limit");
        let per_second = match node.get("per_second") {
            None => {
                if !misspelt.contains(&"per_second") {
                    self.diags
                        .error(file, node.pos, "`rate_limit` needs `per_second`");
                }
                return None;
            }
            Some(n) => match n.as_f64() {
                Some(v) if v > 0.0 && v.is_finite() => v,
                _ => {
                    self.diags.error(
                        file,
                        n.pos,
                        "`rate_limit.per_second` must be a number greater than 0",
                    );
                    return None;
                }
            },
        };
        let burst = match node.get("burst") {
            None => per_second.ceil(),
            Some(n) => match n.as_f64() {
                Some(v) if v >= 1.0 && v.is_finite() => v,
                _ => {
                    self.diags.error(
                        file,
                        n.pos,
                        "`rate_limit.burst` must be a number of at least 1",
                    );
                    return None;
                }
            },
        };
        Some(RateLimit { per_second, burst })
    }

    fn keys(&mut self, file: &Path, node: &Node) -> Vec<Template> {
        let NodeKind::Seq(items) = &node.kind else {
            self.diags.error(
                file,
                node.pos,
                "`keys` must be a list of state-key templates",
            );
            return Vec::new();
        };
        let mut keys = Vec::new();
        let mut tags = Vec::new();
        for item in items {
            let Some(s) = self.string(file, item, "keys[]") else {
                continue;
            };
            match Template::parse(s) {
                Ok(t) => {
                    tags.push((t.hash_tag(), item.pos));
                    keys.push(t);
                }
                Err(e) => self.diags.error(file, item.pos, format!("`keys`: {e}")),
            }
        }
        // Point at the first key that would land in another slot than the first one.
        let stray = tags.first().and_then(|(first, _)| {
            tags.iter()
                .skip(1)
                .find(|(tag, _)| first.is_none() || tag != first)
        });
        if let Some((_, pos)) = stray {
            self.diags.warning(
                file,
                *pos,
                "these keys do not share one `{hash tag}`, so on Redis Cluster they may sit in different slots and the script fails there; put the common part in braces, e.g. `poll:{{{data.id}}}` and `poll:{{{data.id}}}:votes`",
            );
        }
        keys
    }

    /// Compile a script; returns it with its source text.
    fn script(&mut self, file: &Path, text: &str, node: &Node) -> Option<(ScriptDef, String)> {
        let (source, script_file, first_line, col_offset) = match &node.kind {
            NodeKind::Str(source) => {
                let (line, col) = inline_script_origin(text, source, node.pos);
                (source.clone(), file.to_path_buf(), line, col)
            }
            NodeKind::Map(_) => {
                self.check_keys(file, node, &["file"], "script");
                let Some(path_node) = node.get("file") else {
                    self.diags.error(
                        file,
                        node.pos,
                        "`script` must be Rhai source or `{ file: path.rhai }`",
                    );
                    return None;
                };
                let rel = self.string(file, path_node, "script.file")?;
                let path = file.parent().unwrap_or(Path::new(".")).join(rel);
                match std::fs::read_to_string(&path) {
                    Ok(source) => {
                        self.fingerprint.write(source.as_bytes());
                        (source, path, 1, 0)
                    }
                    Err(e) => {
                        self.diags.error(
                            file,
                            path_node.pos,
                            format!("script file `{}`: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.diags.error(
                    file,
                    node.pos,
                    format!(
                        "`script` must be Rhai source or `{{ file: path.rhai }}`, not {}",
                        node.type_name()
                    ),
                );
                return None;
            }
        };
        match self.runtime.compile(&source) {
            Ok(ast) => Some((
                ScriptDef {
                    ast,
                    file: script_file,
                    first_line,
                },
                source,
            )),
            Err(errors) => {
                for e in errors {
                    let hint = if e.message.starts_with("Undefined variable") {
                        " (a script sees `data`, `conn`, `event`, `state` and its own `let`s)"
                    } else {
                        ""
                    };
                    // Every line of an inline script is indented alike, so one
                    // column offset holds for all of them.
                    let pos = Pos {
                        line: first_line + e.line.saturating_sub(1),
                        col: col_offset + e.col,
                    };
                    self.diags
                        .error(&script_file, pos, format!("script: {}{hint}", e.message));
                }
                None
            }
        }
    }

    fn tests(&mut self, file: &Path, node: &Node) -> Vec<TestCase> {
        let NodeKind::Seq(items) = &node.kind else {
            self.diags
                .error(file, node.pos, "`tests` must be a list of cases");
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.test_case(file, item))
            .collect()
    }

    fn test_case(&mut self, file: &Path, node: &Node) -> Option<TestCase> {
        if node.as_map().is_none() {
            self.diags.error(
                file,
                node.pos,
                "a test case is a mapping with `name`, `send` and `expect`",
            );
            return None;
        }
        let misspelt = self.check_keys(
            file,
            node,
            &["name", "state", "conn", "send", "expect"],
            "test case",
        );
        let name = match node.get("name") {
            Some(n) => self.string(file, n, "name")?.to_string(),
            None => {
                if !misspelt.contains(&"name") {
                    self.diags.error(file, node.pos, "test case needs a `name`");
                }
                return None;
            }
        };
        let state = node
            .get("state")
            .map(|n| self.state_map(file, n))
            .unwrap_or_default();
        let conn = node
            .get("conn")
            .map(|n| self.test_conn(file, n))
            .unwrap_or_default();
        let send = node
            .get("send")
            .map(Node::to_json)
            .unwrap_or(Value::Object(Default::default()));
        let expect = match node.get("expect") {
            Some(n) => self.expectation(file, n)?,
            None => {
                if !misspelt.contains(&"expect") {
                    self.diags
                        .error(file, node.pos, format!("test `{name}` needs an `expect`"));
                }
                return None;
            }
        };
        Some(TestCase {
            name,
            file: file.to_path_buf(),
            line: node.pos.line,
            state,
            conn,
            send,
            expect,
        })
    }

    fn state_map(&mut self, file: &Path, node: &Node) -> Vec<(String, Value)> {
        match node.as_map() {
            Some(entries) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect(),
            None => {
                self.diags
                    .error(file, node.pos, "`state` must map keys to values");
                Vec::new()
            }
        }
    }

    fn test_conn(&mut self, file: &Path, node: &Node) -> TestConn {
        self.check_keys(file, node, &["id", "user", "rooms", "claims"], "test conn");
        let text = |n: Option<&Node>| n.and_then(Node::as_str).map(str::to_string);
        let rooms = match node.get("rooms").map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                self.diags
                    .error(file, node.pos, "`conn.rooms` must be a list of room names");
                Vec::new()
            }
            None => Vec::new(),
        };
        TestConn {
            id: text(node.get("id")),
            user: text(node.get("user")),
            rooms,
            claims: node
                .get("claims")
                .map_or(Value::Object(Default::default()), Node::to_json),
        }
    }

    fn expectation(&mut self, file: &Path, node: &Node) -> Option<Expectation> {
        if node.as_map().is_none() {
            self.diags
                .error(file, node.pos, "`expect` must be a mapping");
            return None;
        }
        self.check_keys(
            file,
            node,
            &["deliveries", "error", "reply", "state"],
            "expect",
        );
        let deliveries = match node.get("deliveries") {
            None => None,
            Some(Node {
                kind: NodeKind::Seq(items),
                ..
            }) => {
                let mut out = Vec::new();
                for item in items {
                    self.check_keys(file, item, &["to", "event", "data"], "expected delivery");
                    let (Some(to), Some(event)) = (
                        item.get("to").and_then(Node::as_str),
                        item.get("event").and_then(Node::as_str),
                    ) else {
                        self.diags.error(
                            file,
                            item.pos,
                            "an expected delivery needs `to` and `event`",
                        );
                        continue;
                    };
                    out.push(ExpectedDelivery {
                        to: to.into(),
                        event: event.into(),
                        data: item.get("data").map(Node::to_json),
                    });
                }
                Some(out)
            }
            Some(other) => {
                self.diags
                    .error(file, other.pos, "`deliveries` must be a list");
                None
            }
        };
        Some(Expectation {
            deliveries,
            error: node
                .get("error")
                .and_then(|n| self.string(file, n, "error"))
                .map(str::to_string),
            reply: node.get("reply").map(Node::to_json),
            state: node
                .get("state")
                .map(|n| self.state_map(file, n))
                .unwrap_or_default(),
        })
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

fn valid_event_name(name: &str) -> bool {
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

/// Where line 1, column 1 of an inline script sits in its YAML file, as (line, columns
/// before the script's first column).
///
/// saphyr places a quoted scalar at its opening quote, a plain scalar at its first
/// character, and a block scalar (`|`, `>`) at its first content character, past any
/// leading blank lines, which the script text keeps as `\n`s (the yaml tests pin this).
fn inline_script_origin(text: &str, source: &str, pos: Pos) -> (usize, usize) {
    let first = text
        .lines()
        .nth(pos.line.saturating_sub(1))
        .and_then(|l| l.chars().nth(pos.col.saturating_sub(1)));
    match first {
        Some('"' | '\'') => (pos.line, pos.col),
        _ => {
            let blank_lines = source.chars().take_while(|c| *c == '\n').count();
            (
                pos.line.saturating_sub(blank_lines).max(1),
                pos.col.saturating_sub(1),
            )
        }
    }
}
