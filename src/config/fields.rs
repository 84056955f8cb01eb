//! An event's single fields: `scope`, `schema`, `to`, `emit_as`, the flags,
//! `rate_limit`, `keys`, and which keys an event or a hook may carry. Each turns a
//! problem into a diagnostic and falls back to the field's default, so the rest of the
//! event is still checked. Also the helpers every reader of a pack file uses:
//! [`check_keys`] for misspelt fields, [`string_field`].

use std::path::Path;
use std::sync::Arc;

use super::diagnostic::{Diagnostic, Diagnostics, CROSS_SLOT};
use super::schema::SchemaFiles;
use super::target::{TargetSpec, Template};
use super::yaml::{Node, NodeKind, Pos};
use super::{RateLimit, Scope};
use crate::suggest::suggest;

pub(super) const MAX_EVENT_NAME: usize = 128;
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
const HOOK_KEYS: &[&str] = &["description", "script"];

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

/// A hook takes a script and a description; event fields get a message of their own.
pub(super) fn hook_keys(
    diags: &mut Diagnostics,
    file: &Path,
    name: &str,
    def: &Node,
) -> Vec<&'static str> {
    for (key, _) in def.as_map().unwrap_or_default() {
        if !HOOK_KEYS.contains(&key.name.as_str()) && EVENT_KEYS.contains(&key.name.as_str()) {
            diags.error(
                file,
                key.pos,
                format!(
                    "hook `{name}` takes only a script (and description); remove \"{}\"",
                    key.name
                ),
            );
        }
    }
    check_keys(
        diags,
        file,
        def,
        HOOK_KEYS,
        EVENT_KEYS,
        &format!("hook `{name}`"),
    )
}

pub(super) fn scope(
    diags: &mut Diagnostics,
    file: &Path,
    name: &str,
    pos: Pos,
    def: &Node,
    misspelt: &[&str],
) -> Scope {
    match def.get("scope") {
        None => {
            if !misspelt.contains(&"scope") {
                diags.error(
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
                diags.error(
                    file,
                    node.pos,
                    format!("`scope` must be `local` or `cluster`{hint}"),
                );
                Scope::Local
            }
        },
    }
}

pub(super) fn schema(
    diags: &mut Diagnostics,
    schemas: &mut SchemaFiles,
    file: &Path,
    name: &str,
    pos: Pos,
    def: &Node,
    misspelt: &[&str],
) -> Option<Arc<jsonschema::Validator>> {
    match def.get("schema") {
        None => {
            if !misspelt.contains(&"schema") {
                diags.error(file, pos, format!("event `{name}` needs a `schema` for its payload (use `schema: {{}}` to accept anything)"));
            }
            None
        }
        Some(node) => schemas.compile(file, node, diags),
    }
}

pub(super) fn to(diags: &mut Diagnostics, file: &Path, def: &Node) -> TargetSpec {
    let Some(node) = def.get("to") else {
        return TargetSpec::None;
    };
    match string_field(diags, file, node, "to").map(TargetSpec::parse) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            diags.error(file, node.pos, format!("`to`: {e}"));
            TargetSpec::None
        }
        None => TargetSpec::None,
    }
}

pub(super) fn emit_as(diags: &mut Diagnostics, file: &Path, name: &str, def: &Node) -> String {
    let Some(node) = def.get("emit_as") else {
        return name.to_string();
    };
    match string_field(diags, file, node, "emit_as") {
        Some(s) if valid_event_name(s) => s.to_string(),
        Some(s) => {
            diags.error(
                file,
                node.pos,
                format!("`emit_as`: invalid event name `{s}`"),
            );
            name.to_string()
        }
        None => name.to_string(),
    }
}

/// A `true`/`false` field that defaults to false.
pub(super) fn flag(diags: &mut Diagnostics, file: &Path, def: &Node, field: &str) -> bool {
    match def.get(field) {
        None => false,
        Some(Node {
            kind: NodeKind::Bool(b),
            ..
        }) => *b,
        Some(node) => {
            diags.error(
                file,
                node.pos,
                format!("`{field}` must be true or false, not {}", node.type_name()),
            );
            false
        }
    }
}

pub(super) fn auth(diags: &mut Diagnostics, file: &Path, def: &Node) -> bool {
    let Some(node) = def.get("auth") else {
        return false;
    };
    match node.as_str() {
        Some("required") => true,
        Some("optional") => false,
        _ => {
            diags.error(file, node.pos, "`auth` must be `required` or `optional`");
            false
        }
    }
}

pub(super) fn rate_limit(diags: &mut Diagnostics, file: &Path, node: &Node) -> Option<RateLimit> {
    if node.as_map().is_none() {
        diags.error(
            file,
            node.pos,
            "`rate_limit` must be a mapping like `{ per_second: 10, burst: 20 }`",
        );
        return None;
    }
    let misspelt = check_keys(
        diags,
        file,
        node,
        &["per_second", "burst"],
        &[],
        "rate_limit",
    );
    let per_second = match node.get("per_second") {
        None => {
            if !misspelt.contains(&"per_second") {
                diags.error(file, node.pos, "`rate_limit` needs `per_second`");
            }
            return None;
        }
        Some(n) => match n.as_f64() {
            Some(v) if v > 0.0 && v.is_finite() => v,
            _ => {
                diags.error(
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
                diags.error(
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

pub(super) fn keys(diags: &mut Diagnostics, file: &Path, node: &Node) -> Vec<Template> {
    let NodeKind::Seq(items) = &node.kind else {
        diags.error(
            file,
            node.pos,
            "`keys` must be a list of state-key templates",
        );
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut tags = Vec::new();
    for item in items {
        let Some(s) = string_field(diags, file, item, "keys[]") else {
            continue;
        };
        match Template::parse(s) {
            Ok(t) => {
                tags.push((t.hash_tag(), item.pos));
                keys.push(t);
            }
            Err(e) => diags.error(file, item.pos, format!("`keys`: {e}")),
        }
    }
    check_key_slots(diags, file, &tags);
    keys
}

/// The declared keys of one script must share a Redis Cluster hash slot. Points at
/// the first key that would land in another slot than the first one.
fn check_key_slots(diags: &mut Diagnostics, file: &Path, tags: &[(Option<String>, Pos)]) {
    let stray = tags.first().and_then(|(first, _)| {
        tags.iter()
            .skip(1)
            .find(|(tag, _)| first.is_none() || tag != first)
    });
    if let Some((_, pos)) = stray {
        diags.push(
            Diagnostic::warning(
                file,
                *pos,
                "these keys do not share one `{hash tag}`, so on Redis Cluster they may sit in different slots and the script fails there; put the common part in braces, e.g. `poll:{{{data.id}}}` and `poll:{{{data.id}}}:votes`",
            )
            .with_code(CROSS_SLOT),
        );
    }
}
