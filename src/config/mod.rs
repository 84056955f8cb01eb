//! Event packs, loaded: finding the files, decoding them, compiling schemas and scripts,
//! checking what they say together. What is made of a loaded [`Pack`] lives elsewhere:
//! its AsyncAPI document in `crate::describe`, two packs compared in `crate::diff`.
//!
//! ```text
//! load.rs       the loader: directory → files → events → Pack; runs each step below
//! files.rs      the pack's files, what a load read and its fingerprint
//! yaml.rs       YAML → Node tree with positions
//! fields.rs     an event's single fields; `check_keys` and `string_field` for all steps
//! senders.rs    `senders:`: clients, the HTTP API, or both
//! scripts.rs    Rhai sources compiled on the engine the server runs them on, and what
//!               their source tells (rooms they emit to, state keys they name)
//! schema.rs     JSON Schemas, `$ref`s preloaded from disk
//! rooms.rs      `rooms:` patterns, their settings and the lookup deliveries use
//! checks.rs     checks across fields (`to` against the schema, fields with no effect)
//!               and across the pack (`rooms:` patterns against the rooms events reach)
//! target.rs     `to:` and `keys:` templates
//! diagnostic.rs a problem at `file:line:col`
//! ```
//!
//! Only `load.rs` knows the loader; each step takes what it needs (the diagnostics, the
//! node it reads) and returns what it built, so the files depend on each other one way:
//! load → checks → scripts/rooms → fields → schema/target/yaml/diagnostic.
//!
//! The loader collects every problem as a [`Diagnostic`] with `file:line:col` and keeps
//! going, so `wss-engine check` shows an operator all mistakes at once. Nothing here
//! touches the network or starts a runtime. `tests:` cases are the business of
//! `crate::packtest`, which reads them from the same files.

mod checks;
pub mod diagnostic;
mod fields;
mod files;
mod load;
mod rooms;
mod schema;
mod scripts;
mod senders;
pub mod target;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use jsonschema::Validator;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use fields::{check_keys, string_field};
pub use files::{pack_files, read_text as read_pack_file, MAX_FILE_BYTES};
pub use load::{load, Loaded, CONNECT_HOOK, DISCONNECT_HOOK};
pub use rooms::{HistoryPolicy, RoomRule, RoomRules};
pub use target::{TargetError, TargetSpec, Template, TemplateContext};

/// The JSON Schema of the pack format, as printed by `wss-engine schema`.
pub const PACK_SCHEMA: &str = include_str!("../../schemas/event-pack.schema.json");

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

/// Who sends an event: a client over its socket, or a backend over the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Clients,
    Api,
}

impl Sender {
    pub const ALL: [Sender; 2] = [Sender::Clients, Sender::Api];

    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Clients => "clients",
            Sender::Api => "api",
        }
    }
}

/// Who may send an event (`senders:`; default clients only). An event its caller may
/// not send does not exist for that caller: it gets `unknown_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Senders {
    pub clients: bool,
    pub api: bool,
}

impl Default for Senders {
    fn default() -> Self {
        Self {
            clients: true,
            api: false,
        }
    }
}

impl Senders {
    pub fn allows(self, sender: Sender) -> bool {
        match sender {
            Sender::Clients => self.clients,
            Sender::Api => self.api,
        }
    }

    /// Only backends may send it.
    pub fn api_only(self) -> bool {
        self.api && !self.clients
    }
}

impl std::fmt::Display for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Sender::ALL
            .iter()
            .filter(|s| self.allows(**s))
            .map(|s| s.as_str())
            .collect();
        write!(f, "{}", names.join(","))
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
    /// The source as written, so `wss-engine diff` can tell whether a script changed
    /// (a compiled AST cannot be compared).
    pub source: String,
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
    /// The schema as written, with every `$ref` into the pack's files inlined: what
    /// documents of the pack show (`wss-engine asyncapi`). `None` only for hooks.
    pub schema_json: Option<serde_json::Value>,
    pub to: TargetSpec,
    /// The name deliveries carry.
    pub emit_as: String,
    pub exclude_sender: bool,
    pub script: Option<ScriptDef>,
    pub rate_limit: Option<RateLimit>,
    /// Who may send it: clients, the HTTP API, or both.
    pub senders: Senders,
    pub auth_required: bool,
    pub keys: Vec<Template>,
    pub description: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// The lifecycle hooks of a pack, each optional.
#[derive(Debug, Default)]
pub struct Hooks {
    /// `$connect`: runs before a new connection is welcomed.
    pub on_connect: Option<Arc<EventDef>>,
    /// `$disconnect`: runs when a connection closes (on a survivor, for a dead node's).
    pub on_disconnect: Option<Arc<EventDef>>,
}

#[derive(Debug)]
pub struct Pack {
    pub root: PathBuf,
    pub events: BTreeMap<String, Arc<EventDef>>,
    pub hooks: Hooks,
    /// The `rooms:` entries of every file, in file order: which rooms keep history.
    pub rooms: RoomRules,
    /// Hash of every file of the pack: nodes compare it to spot mixed deployments.
    pub fingerprint: String,
    /// Every file the pack was read from (pack files, scripts, schemas): what a
    /// `--watch` reload watches.
    pub sources: Vec<PathBuf>,
}

impl Pack {
    pub fn event(&self, name: &str) -> Option<&Arc<EventDef>> {
        self.events.get(name)
    }
}
