//! Payload schemas: inline or `$ref`'d files, preloaded from disk and compiled once.
//!
//! A pack must never make the server fetch anything: every `$ref` to another file is
//! resolved relative to the file that holds it, read and parsed here (with positions, so
//! a mistake inside a schema file is reported in that file), and handed to the validator
//! through a retriever that knows only those preloaded documents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

use super::diagnostic::Diagnostics;
use super::yaml::{self, Node, NodeKind, Pos};
use crate::suggest::suggest;

/// Schema files parsed so far in this load, shared by every event that refers to them.
#[derive(Default)]
pub struct SchemaFiles {
    docs: HashMap<PathBuf, Option<Arc<Node>>>,
    /// Every schema file read, with its text: part of the pack's fingerprint and of
    /// what a `--watch` reload watches.
    pub(super) read: std::collections::BTreeMap<PathBuf, String>,
}

struct Preloaded(HashMap<String, Value>);

impl Retrieve for Preloaded {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let key = uri.as_str().split('#').next().unwrap_or_default();
        self.0.get(key).cloned().ok_or_else(|| {
            format!(
                "`{key}` is not a file of this pack; packs never fetch schemas from the network"
            )
            .into()
        })
    }
}

/// A `file://` URI for an absolute path. Every byte outside the unreserved set is
/// percent-encoded: a pack under `/srv/my packs/` must still have valid schema URIs.
pub fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                uri.push(char::from(*byte))
            }
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri
}

impl SchemaFiles {
    fn remember(&mut self, canonical: &Path, text: String) -> String {
        self.read.insert(canonical.to_path_buf(), text.clone());
        text
    }

    /// Parse a schema file once; report its problems once. `canonical` identifies the
    /// file; `path` is how the pack names it, which is what the operator should read.
    fn load(
        &mut self,
        canonical: &Path,
        path: &Path,
        diags: &mut Diagnostics,
    ) -> Option<Arc<Node>> {
        if let Some(doc) = self.docs.get(canonical) {
            return doc.clone();
        }
        let doc = match super::files::read_text(canonical) {
            Err(e) => {
                diags.error(
                    path,
                    Pos::default(),
                    format!("cannot read schema file: {e}"),
                );
                None
            }
            // JSON is YAML, so one parser gives positions for both kinds of schema file.
            Ok(text) => match yaml::parse(&self.remember(canonical, text)) {
                Ok(Some(node)) => Some(Arc::new(node)),
                Ok(None) => {
                    diags.error(path, Pos::default(), "schema file is empty");
                    None
                }
                Err(e) => {
                    diags.error(
                        path,
                        e.pos,
                        format!("schema file is not valid JSON/YAML: {}", e.message),
                    );
                    None
                }
            },
        };
        if let Some(node) = &doc {
            check_meta(path, node, diags);
        }
        self.docs.insert(canonical.to_path_buf(), doc.clone());
        doc
    }

    /// The loaded document a schema that is only `{ $ref: file }` stands for.
    pub fn referenced_root(&self, file: &Path, node: &Node) -> Option<Arc<Node>> {
        if node.as_map()?.len() != 1 {
            return None;
        }
        let reference = node.get("$ref")?.as_str()?;
        let (target, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        if target.is_empty() || !fragment.is_empty() {
            return None;
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let canonical = base.join(target).canonicalize().ok()?;
        self.docs.get(&canonical)?.clone()
    }

    /// Compile one event's schema. `node` is the `schema:` value, found in `file`.
    pub fn compile(
        &mut self,
        file: &Path,
        node: &Node,
        diags: &mut Diagnostics,
    ) -> Option<Arc<Validator>> {
        let errors_before = diags.0.len();
        let mut preloaded = HashMap::new();
        if node.as_map().is_none() && !matches!(node.kind, NodeKind::Bool(_)) {
            diags.error(
                file,
                node.pos,
                format!(
                    "`schema` must be a JSON Schema mapping or `{{ $ref: path }}`, not {}",
                    node.type_name()
                ),
            );
            return None;
        }
        // An inline schema that is only `{ $ref: file }` is checked in that file instead.
        let only_ref = node.as_map().is_some_and(|m| m.len() == 1) && node.get("$ref").is_some();
        if !only_ref {
            check_meta(file, node, diags);
        }
        self.collect_refs(file, node, &mut preloaded, diags, 0);
        if diags.0.len() > errors_before {
            return None;
        }
        let schema = node.to_json();
        let absolute = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let result = jsonschema::options()
            .with_base_uri(file_uri(&absolute))
            .with_retriever(Preloaded(preloaded))
            .build(&schema);
        match result {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                // The error's path is a pointer into the schema (e.g. to a bad `$ref`):
                // point there when it resolves, else at the schema as a whole.
                let pos = node
                    .at_pointer(e.instance_path().as_str())
                    .map_or(node.pos, |n| n.pos);
                diags.error(file, pos, format!("schema does not compile: {e}"));
                None
            }
        }
    }

    /// The schema of `node` (found in `file`) as one self-contained JSON value: every
    /// `$ref` to a file of the pack, into one (`file.json#/$defs/x`) or within one
    /// (`#/$defs/x`) replaced by what it points to. For documents that must stand on
    /// their own (`wss-engine asyncapi`); validation keeps the references. Call it after
    /// [`compile`](Self::compile) succeeded, so every referenced file is loaded.
    ///
    /// Keywords beside a `$ref` are merged into its target (under `allOf` when both
    /// have the same keyword). An inlined file loses `$schema` and `$id`, which would
    /// mean something else inside another schema. A reference back into a schema still
    /// being expanded (a recursive schema) cannot be inlined: it becomes `{}` (anything)
    /// with a `$comment` saying so.
    pub fn inlined(&self, file: &Path, node: &Node) -> Value {
        let root = node.to_json();
        let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        Inliner {
            files: self,
            expanding: Vec::new(),
        }
        .value(&root, &file, &root)
    }

    fn collect_refs(
        &mut self,
        file: &Path,
        node: &Node,
        preloaded: &mut HashMap<String, Value>,
        diags: &mut Diagnostics,
        depth: usize,
    ) {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (key, value) in entries {
                    if key.name == "$ref" {
                        if let Some(reference) = value.as_str() {
                            self.follow_ref(file, reference, value.pos, preloaded, diags, depth);
                        }
                    } else {
                        self.collect_refs(file, value, preloaded, diags, depth);
                    }
                }
            }
            NodeKind::Seq(items) => {
                for item in items {
                    self.collect_refs(file, item, preloaded, diags, depth);
                }
            }
            _ => {}
        }
    }

    fn follow_ref(
        &mut self,
        file: &Path,
        reference: &str,
        pos: Pos,
        preloaded: &mut HashMap<String, Value>,
        diags: &mut Diagnostics,
        depth: usize,
    ) {
        let target = reference.split('#').next().unwrap_or_default();
        if target.is_empty() {
            return; // a pointer into the same document
        }
        if target.contains("://") || target.starts_with("urn:") {
            diags.error(
                file,
                pos,
                format!("`$ref: {reference}` points outside the pack; packs never fetch schemas from the network: copy the schema into a file and refer to it by relative path"),
            );
            return;
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let joined = base.join(target);
        // Diagnostics name the file relative to the pack as given on the command line,
        // like the YAML files, not by the absolute path used to recognise it.
        let shown = normalize(&joined);
        let canonical = match joined.canonicalize() {
            Ok(p) => p,
            Err(_) => {
                diags.error(
                    file,
                    pos,
                    format!("`$ref: {reference}`: no such file `{}`", shown.display()),
                );
                return;
            }
        };
        let uri = file_uri(&canonical);
        if preloaded.contains_key(&uri) || depth > 32 {
            return;
        }
        if let Some(doc) = self.load(&canonical, &shown, diags) {
            preloaded.insert(uri, doc.to_json());
            self.collect_refs(&shown, &doc, preloaded, diags, depth + 1);
        }
    }
}

/// Expands `$ref`s for [`SchemaFiles::inlined`].
struct Inliner<'a> {
    files: &'a SchemaFiles,
    /// The references being expanded (file and pointer), to stop at recursion.
    expanding: Vec<(PathBuf, String)>,
}

/// How deep references may nest before the rest are left unexpanded.
const MAX_INLINE_DEPTH: usize = 32;

impl Inliner<'_> {
    /// `value`, found in the document `doc` of `file`, with its references expanded.
    fn value(&mut self, value: &Value, file: &Path, doc: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let expanded: serde_json::Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| k.as_str() != "$ref")
                    .map(|(k, v)| (k.clone(), self.value(v, file, doc)))
                    .collect();
                match map.get("$ref") {
                    Some(Value::String(reference)) => {
                        let target = self.reference(reference, file, doc);
                        merge_beside_ref(target, expanded)
                    }
                    _ => Value::Object(expanded),
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.value(item, file, doc))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn reference(&mut self, reference: &str, file: &Path, doc: &Value) -> Value {
        let not_inlined = |why: &str| serde_json::json!({ "$comment": format!("`$ref: {reference}` not inlined: {why}") });
        let (target, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let (target_file, target_doc) = if target.is_empty() {
            (file.to_path_buf(), doc.clone())
        } else {
            let base = file.parent().unwrap_or(Path::new("."));
            let loaded = base
                .join(target)
                .canonicalize()
                .ok()
                .and_then(|p| Some((self.files.docs.get(&p)?.clone()?, p)));
            match loaded {
                Some((node, path)) => (path, node.to_json()),
                None => return not_inlined("not a schema file of this pack"),
            }
        };
        let key = (target_file.clone(), fragment.to_string());
        if self.expanding.contains(&key) {
            return not_inlined("the schema is recursive");
        }
        if self.expanding.len() >= MAX_INLINE_DEPTH {
            return not_inlined("references nest too deep");
        }
        // Only JSON Pointers (or nothing): an `$anchor` fragment is left to validation.
        let Some(found) = (if fragment.is_empty() || fragment.starts_with('/') {
            target_doc.pointer(fragment)
        } else {
            None
        }) else {
            return not_inlined("the fragment is not a JSON Pointer into the file");
        };
        self.expanding.push(key);
        let mut out = self.value(found, &target_file, &target_doc);
        self.expanding.pop();
        if let Value::Object(map) = &mut out {
            map.remove("$schema");
            map.remove("$id");
        }
        out
    }
}

/// A `$ref`'s target with the keywords written beside the `$ref`.
fn merge_beside_ref(target: Value, beside: serde_json::Map<String, Value>) -> Value {
    if beside.is_empty() {
        return target;
    }
    match target {
        Value::Object(mut map) if beside.keys().all(|k| !map.contains_key(k)) => {
            map.extend(beside);
            Value::Object(map)
        }
        target => {
            let mut out = serde_json::Map::new();
            out.insert(
                "allOf".into(),
                Value::Array(vec![target, Value::Object(beside)]),
            );
            Value::Object(out)
        }
    }
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Check a schema against its meta-schema and point at the offending node.
fn check_meta(file: &Path, node: &Node, diags: &mut Diagnostics) {
    let json = node.to_json();
    let Ok(validator) = jsonschema::meta::validator_for(&json) else {
        let pos = node.get("$schema").map_or(node.pos, |n| n.pos);
        diags.error(
            file,
            pos,
            "unknown `$schema` dialect: use draft 2020-12 (the default), 2019-09, 7, 6 or 4",
        );
        return;
    };
    for error in validator.iter_errors(&json) {
        let pointer = error.instance_path().as_str().to_string();
        let at = node.at_pointer(&pointer);
        let pos = at.map_or(node.pos, |n| n.pos);
        let place = if pointer.is_empty() {
            String::new()
        } else {
            format!(" at `{pointer}`")
        };
        // The meta-schema's own wording for a misspelt type ("not valid under any of the
        // schemas listed in the 'anyOf' keyword") does not say what would be valid.
        let message = match (pointer.ends_with("/type"), at.and_then(Node::as_str)) {
            (true, Some(word)) => {
                let hint = suggest(word, JSON_TYPES)
                    .map(|s| format!(", did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!(" (use one of {})", JSON_TYPES.join(", ")));
                format!("unknown type \"{word}\"{hint}")
            }
            _ => error.to_string(),
        };
        diags.error(file, pos, format!("invalid JSON Schema{place}: {message}"));
    }
}

const JSON_TYPES: [&str; 7] = [
    "string", "number", "integer", "object", "array", "boolean", "null",
];
