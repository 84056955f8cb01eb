//! An event's single fields, decoded by the [`Loader`]: `scope`, `schema`, `to`,
//! `emit_as`, the flags, `rate_limit`, `keys`, and which keys a hook may carry. Each
//! turns a problem into a diagnostic and falls back to the field's default, so the
//! rest of the event is still checked.

use std::path::Path;
use std::sync::Arc;

use super::decode::{check_keys, string_field, valid_event_name, Loader, EVENT_KEYS, HOOK_KEYS};
use super::target::{TargetSpec, Template};
use super::yaml::{Node, NodeKind, Pos};
use super::{RateLimit, Scope};
use crate::suggest::suggest;

impl Loader<'_> {
    /// A hook takes a script and a description; event fields get a message of their own.
    pub(super) fn hook_keys(&mut self, file: &Path, name: &str, def: &Node) -> Vec<&'static str> {
        for (key, _) in def.as_map().unwrap_or_default() {
            if !HOOK_KEYS.contains(&key.name.as_str()) && EVENT_KEYS.contains(&key.name.as_str()) {
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
        check_keys(
            &mut self.diags,
            file,
            def,
            HOOK_KEYS,
            EVENT_KEYS,
            &format!("hook `{name}`"),
        )
    }

    pub(super) fn scope(
        &mut self,
        file: &Path,
        name: &str,
        pos: Pos,
        def: &Node,
        misspelt: &[&str],
    ) -> Scope {
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
    }

    pub(super) fn schema(
        &mut self,
        file: &Path,
        name: &str,
        pos: Pos,
        def: &Node,
        misspelt: &[&str],
    ) -> Option<Arc<jsonschema::Validator>> {
        match def.get("schema") {
            None => {
                if !misspelt.contains(&"schema") {
                    self.diags.error(file, pos, format!("event `{name}` needs a `schema` for its payload (use `schema: {{}}` to accept anything)"));
                }
                None
            }
            Some(node) => self.schemas.compile(file, node, &mut self.diags),
        }
    }

    pub(super) fn to(&mut self, file: &Path, def: &Node) -> TargetSpec {
        let Some(node) = def.get("to") else {
            return TargetSpec::None;
        };
        match self.string(file, node, "to").map(TargetSpec::parse) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                self.diags.error(file, node.pos, format!("`to`: {e}"));
                TargetSpec::None
            }
            None => TargetSpec::None,
        }
    }

    pub(super) fn emit_as(&mut self, file: &Path, name: &str, def: &Node) -> String {
        let Some(node) = def.get("emit_as") else {
            return name.to_string();
        };
        match self.string(file, node, "emit_as") {
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
        }
    }

    /// A `true`/`false` field that defaults to false.
    pub(super) fn flag(&mut self, file: &Path, def: &Node, field: &str) -> bool {
        match def.get(field) {
            None => false,
            Some(Node {
                kind: NodeKind::Bool(b),
                ..
            }) => *b,
            Some(node) => {
                self.diags.error(
                    file,
                    node.pos,
                    format!("`{field}` must be true or false, not {}", node.type_name()),
                );
                false
            }
        }
    }

    pub(super) fn auth(&mut self, file: &Path, def: &Node) -> bool {
        let Some(node) = def.get("auth") else {
            return false;
        };
        match node.as_str() {
            Some("required") => true,
            Some("optional") => false,
            _ => {
                self.diags
                    .error(file, node.pos, "`auth` must be `required` or `optional`");
                false
            }
        }
    }

    pub(super) fn rate_limit(&mut self, file: &Path, node: &Node) -> Option<RateLimit> {
        if node.as_map().is_none() {
            self.diags.error(
                file,
                node.pos,
                "`rate_limit` must be a mapping like `{ per_second: 10, burst: 20 }`",
            );
            return None;
        }
        let misspelt = check_keys(
            &mut self.diags,
            file,
            node,
            &["per_second", "burst"],
            &[],
            "rate_limit",
        );
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

    pub(super) fn keys(&mut self, file: &Path, node: &Node) -> Vec<Template> {
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
            let Some(s) = string_field(&mut self.diags, file, item, "keys[]") else {
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
        self.check_key_slots(file, &tags);
        keys
    }
}
