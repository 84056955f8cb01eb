//! Payload schemas compared: does the new schema still accept every payload the old one
//! accepted?
//!
//! Deciding that in general is as hard as comparing two programs, so this compares
//! keyword by keyword. Most of a schema object is a conjunction of its keywords: a
//! payload passes when it passes each. If every keyword of the new schema accepts at
//! least what the same keyword accepted before, so does the whole; a keyword that now
//! accepts less is reported as breaking even where another keyword happened to reject
//! those payloads anyway (the safe side). The keywords that depend on each other
//! (`properties` with `additionalProperties`) are compared together.
//!
//! What this understands: `type`, `enum`, `const`, numeric and length bounds,
//! `multipleOf`, `pattern`, `format`, `uniqueItems`, `required`, `properties` with
//! `additionalProperties`, `items`/`prefixItems` (recursing), `allOf` member by member,
//! and `anyOf` grown by new alternatives. Any other assertion that changed (`oneOf`,
//! `not`, `if`, `patternProperties`, …) is reported as "changed, cannot tell" and
//! classified breaking. Annotations (`title`, `description`, `examples`, …) are
//! listed as compatible.
//!
//! Schemas are compared as [`EventDef::schema_json`](crate::config::EventDef) holds
//! them: every `$ref` already replaced by what it points to, so a change inside a
//! referenced file is found where it is used. `$defs` are therefore not compared on
//! their own: what changed in them shows at each place that used them.

use serde_json::{Map, Value};

use super::Class;

/// One difference between two payload schemas.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaChange {
    /// Where in the payload, as a JSON Pointer; `*` stands for any array item or any
    /// property not listed in `properties`. Empty for the payload itself.
    pub path: String,
    /// A stable name for the kind of change, e.g. `schema_required_added`.
    pub kind: &'static str,
    pub class: Class,
    /// What changed, for a person: the path is not repeated here.
    pub detail: String,
}

/// Every difference between `old` and `new`, in the order met (depth first, keywords in
/// the order written in the new schema, then those only the old one has).
pub fn compare(old: &Value, new: &Value) -> Vec<SchemaChange> {
    let mut cmp = Comparer {
        changes: Vec::new(),
        old_asserts_formats: asserts_formats(old),
        new_asserts_formats: asserts_formats(new),
    };
    cmp.schema(old, new, "");
    cmp.changes
}

/// Keywords that only annotate: a change to them changes no validation result.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "examples",
    "default",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
    "contentEncoding",
    "contentSchema",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$vocabulary",
];

/// Keywords whose effect shows elsewhere: definitions matter only where a `$ref` used
/// them, and every `$ref` into them has been inlined.
const SILENT: &[&str] = &["$defs", "definitions"];

/// Assertions compared only for equality: when they differ, this module cannot tell
/// whether the new schema accepts less, and says so.
const OPAQUE: &[&str] = &[
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "patternProperties",
    "propertyNames",
    "contains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "$recursiveAnchor",
    "$schema",
];

/// Lower bounds: a larger value accepts less.
const LOWER_BOUNDS: &[&str] = &[
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
    "minContains",
];

/// Upper bounds: a smaller value accepts less.
const UPPER_BOUNDS: &[&str] = &[
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
    "maxContains",
];

/// `format` validates only in drafts 4, 6 and 7 (the `jsonschema` crate's default, as
/// the specifications say); in 2019-09 and 2020-12, the default dialect, it annotates.
fn asserts_formats(schema: &Value) -> bool {
    let Some(dialect) = schema.get("$schema").and_then(Value::as_str) else {
        return false;
    };
    ["draft-04", "draft-06", "draft-07"]
        .iter()
        .any(|d| dialect.contains(d))
}

/// A schema as the comparison sees it.
enum Shape<'a> {
    /// `false`: accepts nothing.
    Nothing,
    /// An object (`true` is the empty object: accepts anything).
    Object(&'a Map<String, Value>),
    /// Not a schema at all (the loader refuses these; here only for completeness).
    Invalid,
}

fn shape(value: &Value) -> Shape<'_> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match value {
        Value::Bool(false) => Shape::Nothing,
        Value::Bool(true) => Shape::Object(EMPTY.get_or_init(Map::new)),
        Value::Object(map) => Shape::Object(map),
        _ => Shape::Invalid,
    }
}

/// What a property not listed in `properties` must satisfy.
enum Fallback<'a> {
    /// `additionalProperties` absent or `true`.
    Anything,
    /// `additionalProperties: false`.
    Nothing,
    /// `additionalProperties: {schema}`.
    Schema(&'a Value),
    /// `patternProperties` may claim it: which schema applies depends on the name.
    Unknown,
}

fn fallback(map: &Map<String, Value>) -> Fallback<'_> {
    if map.contains_key("patternProperties") {
        return Fallback::Unknown;
    }
    match map.get("additionalProperties") {
        None | Some(Value::Bool(true)) => Fallback::Anything,
        Some(Value::Bool(false)) => Fallback::Nothing,
        Some(schema) => Fallback::Schema(schema),
    }
}

/// A JSON value in one short line, for details.
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn child(path: &str, segment: &str) -> String {
    // JSON Pointer escaping, so a property named `a/b` is not read as two levels.
    format!("{path}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

struct Comparer {
    changes: Vec<SchemaChange>,
    old_asserts_formats: bool,
    new_asserts_formats: bool,
}

impl Comparer {
    fn push(&mut self, path: &str, kind: &'static str, class: Class, detail: impl Into<String>) {
        self.changes.push(SchemaChange {
            path: path.to_string(),
            kind,
            class,
            detail: detail.into(),
        });
    }

    fn cannot_tell(&mut self, path: &str, keyword: &str, old: Option<&Value>, new: Option<&Value>) {
        let what = match (old, new) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ => "changed",
        };
        self.push(
            path,
            "schema_changed_cannot_tell",
            Class::Breaking,
            format!(
                "`{keyword}` {what}, cannot tell whether payloads accepted before are still accepted (classified breaking to be safe)"
            ),
        );
    }

    fn schema(&mut self, old: &Value, new: &Value, path: &str) {
        if old == new {
            return;
        }
        match (shape(old), shape(new)) {
            (Shape::Nothing, Shape::Nothing) => {}
            (_, Shape::Nothing) => self.push(
                path,
                "schema_rejects_everything",
                Class::Breaking,
                "the schema is now `false`: every value is rejected",
            ),
            (Shape::Nothing, _) => self.push(
                path,
                "schema_accepts_more",
                Class::Compatible,
                "the schema was `false` (rejected every value) and now accepts some",
            ),
            (Shape::Object(o), Shape::Object(n)) => self.object(o, n, path),
            _ => self.cannot_tell(path, "schema", Some(old), Some(new)),
        }
    }

    fn object(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        // Keywords in the order the new schema writes them, then the ones it dropped.
        let mut keys: Vec<&str> = new.keys().map(String::as_str).collect();
        keys.extend(
            old.keys()
                .map(String::as_str)
                .filter(|k| !new.contains_key(*k)),
        );
        for key in keys {
            let (o, n) = (old.get(key), new.get(key));
            if o == n {
                continue;
            }
            match key {
                "type" => self.types(o, n, path),
                "enum" => self.enumeration(o, n, path),
                "const" => self.constant(o, n, path),
                "multipleOf" => self.multiple_of(o, n, path),
                "pattern" => self.pattern(o, n, path),
                "format" => self.format(o, n, path),
                "uniqueItems" => self.unique_items(o, n, path),
                "required" => self.required(o, n, path),
                // Each pair depends on its other half: compared together below.
                "properties" | "additionalProperties" | "items" | "prefixItems" => {}
                "allOf" => self.all_of(o, n, path),
                "anyOf" => self.any_of(o, n, path),
                k if LOWER_BOUNDS.contains(&k) => self.bound(k, o, n, path, true),
                k if UPPER_BOUNDS.contains(&k) => self.bound(k, o, n, path, false),
                k if SILENT.contains(&k) => {}
                k if ANNOTATIONS.contains(&k) => self.push(
                    path,
                    "schema_annotation_changed",
                    Class::Compatible,
                    format!("annotation `{k}` changed (validation is unaffected)"),
                ),
                k if OPAQUE.contains(&k) => self.cannot_tell(path, k, o, n),
                k => self.push(
                    path,
                    "schema_annotation_changed",
                    Class::Compatible,
                    format!("unknown keyword `{k}` changed (validators ignore it)"),
                ),
            }
        }
        self.properties(old, new, path);
        self.items(old, new, path);
    }

    fn types(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        // `None`: no `type` keyword, every type accepted.
        fn set(v: Option<&Value>) -> Option<Vec<&str>> {
            match v? {
                Value::String(s) => Some(vec![s.as_str()]),
                Value::Array(items) => Some(items.iter().filter_map(Value::as_str).collect()),
                _ => Some(Vec::new()),
            }
        }
        fn written(v: Option<&Value>) -> String {
            v.map_or_else(|| "any type".to_string(), show)
        }
        let accepts = |set: &Option<Vec<&str>>, t: &str| match set {
            None => true,
            Some(types) => types.contains(&t) || (t == "integer" && types.contains(&"number")),
        };
        let (old_set, new_set) = (set(old), set(new));
        // Whether some type accepted by `from` is not accepted by `to`; no `type` at
        // all accepts every type, so any `type` narrows it.
        let loses = |from: &Option<Vec<&str>>, to: &Option<Vec<&str>>| match from {
            None => to.is_some(),
            Some(types) => types.iter().any(|t| !accepts(to, t)),
        };
        let change = format!("type {} → {}", written(old), written(new));
        if loses(&old_set, &new_set) {
            self.push(path, "schema_type_narrowed", Class::Breaking, change);
        } else if loses(&new_set, &old_set) {
            self.push(path, "schema_type_widened", Class::Compatible, change);
        }
        // Neither: the same types, written in another order.
    }

    fn enumeration(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        match (old, new) {
            (None, Some(n)) => self.push(
                path,
                "schema_enum_added",
                Class::Breaking,
                format!("values now limited to {}", show(n)),
            ),
            (Some(o), None) => self.push(
                path,
                "schema_enum_removed",
                Class::Compatible,
                format!("values no longer limited to {}", show(o)),
            ),
            (Some(o), Some(n)) => {
                let (o, n) = (list(o), list(n));
                let removed: Vec<Value> = o.iter().filter(|v| !n.contains(v)).cloned().collect();
                let added: Vec<Value> = n.iter().filter(|v| !o.contains(v)).cloned().collect();
                if !removed.is_empty() {
                    self.push(
                        path,
                        "schema_enum_shrunk",
                        Class::Breaking,
                        format!("enum values removed: {}", show(&Value::Array(removed))),
                    );
                }
                if !added.is_empty() {
                    self.push(
                        path,
                        "schema_enum_grown",
                        Class::Compatible,
                        format!("enum values added: {}", show(&Value::Array(added))),
                    );
                }
            }
            (None, None) => {}
        }
    }

    fn constant(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        match (old, new) {
            (None, Some(n)) => self.push(
                path,
                "schema_const_added",
                Class::Breaking,
                format!("value must now be {}", show(n)),
            ),
            (Some(o), None) => self.push(
                path,
                "schema_const_removed",
                Class::Compatible,
                format!("value no longer has to be {}", show(o)),
            ),
            (Some(o), Some(n)) => self.push(
                path,
                "schema_const_changed",
                Class::Breaking,
                format!("const {} → {}", show(o), show(n)),
            ),
            (None, None) => {}
        }
    }

    /// `lower`: the keyword is a lower bound (raising it accepts less).
    fn bound(
        &mut self,
        key: &str,
        old: Option<&Value>,
        new: Option<&Value>,
        path: &str,
        lower: bool,
    ) {
        let written = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), show);
        let change = format!("`{key}` {} → {}", written(old), written(new));
        let tightened = match (old.map(Value::as_f64), new.map(Value::as_f64)) {
            (None, Some(Some(_))) => true,
            (Some(Some(_)), None) => false,
            (Some(Some(o)), Some(Some(n))) => {
                if lower {
                    n > o
                } else {
                    n < o
                }
            }
            // Draft 4's boolean `exclusiveMinimum`, or something unreadable.
            _ => return self.cannot_tell(path, key, old, new),
        };
        if tightened {
            self.push(path, "schema_bound_tightened", Class::Breaking, change);
        } else {
            self.push(path, "schema_bound_loosened", Class::Compatible, change);
        }
    }

    fn multiple_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let written = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), show);
        let change = format!("`multipleOf` {} → {}", written(old), written(new));
        // Every multiple of `n` is a multiple of `d` when `n / d` is a whole number.
        let divides = |d: f64, n: f64| {
            let q = n / d;
            q.is_finite() && (q - q.round()).abs() < 1e-9
        };
        let loosened = match (old.map(Value::as_f64), new.map(Value::as_f64)) {
            (Some(Some(_)), None) => true,
            (Some(Some(o)), Some(Some(n))) => divides(n, o),
            (None, Some(Some(_))) => false,
            _ => return self.cannot_tell(path, "multipleOf", old, new),
        };
        if loosened {
            self.push(path, "schema_bound_loosened", Class::Compatible, change);
        } else {
            self.push(path, "schema_bound_tightened", Class::Breaking, change);
        }
    }

    fn pattern(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        match (old, new) {
            (None, Some(n)) => self.push(
                path,
                "schema_pattern_added",
                Class::Breaking,
                format!("strings must now match {}", show(n)),
            ),
            (Some(o), None) => self.push(
                path,
                "schema_pattern_removed",
                Class::Compatible,
                format!("strings no longer have to match {}", show(o)),
            ),
            (Some(o), Some(n)) => self.push(
                path,
                "schema_pattern_changed",
                Class::Breaking,
                format!(
                    "pattern {} → {}: possibly breaking (two regular expressions cannot be compared here, so classified breaking)",
                    show(o),
                    show(n)
                ),
            ),
            (None, None) => {}
        }
    }

    fn format(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let written = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), show);
        let change = format!("`format` {} → {}", written(old), written(new));
        if !self.old_asserts_formats && !self.new_asserts_formats {
            return self.push(
                path,
                "schema_annotation_changed",
                Class::Compatible,
                format!("{change} (an annotation in this dialect: not validated)"),
            );
        }
        if new.is_none() {
            self.push(path, "schema_format_removed", Class::Compatible, change);
        } else {
            self.push(path, "schema_format_changed", Class::Breaking, change);
        }
    }

    fn unique_items(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let on = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
        match (on(old), on(new)) {
            (false, true) => self.push(
                path,
                "schema_unique_items_added",
                Class::Breaking,
                "array items must now be unique",
            ),
            (true, false) => self.push(
                path,
                "schema_unique_items_removed",
                Class::Compatible,
                "array items no longer have to be unique",
            ),
            _ => {}
        }
    }

    fn required(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let names = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (old, new) = (names(old), names(new));
        for name in new.iter().filter(|n| !old.contains(n)) {
            self.push(
                &child(path, name),
                "schema_required_added",
                Class::Breaking,
                format!("property `{name}` is now required"),
            );
        }
        for name in old.iter().filter(|n| !new.contains(n)) {
            self.push(
                &child(path, name),
                "schema_required_removed",
                Class::Compatible,
                format!("property `{name}` is no longer required"),
            );
        }
    }

    /// `properties` and `additionalProperties` together: a property's values are
    /// checked by its own schema if listed, else by `additionalProperties`, so a
    /// property leaving the list is checked by the other.
    fn properties(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let empty = Map::new();
        let old_props = old
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let new_props = new
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let (old_rest, new_rest) = (fallback(old), fallback(new));

        for (name, new_schema) in new_props {
            let at = child(path, name);
            match old_props.get(name) {
                Some(old_schema) => self.schema(old_schema, new_schema, &at),
                None => {
                    match &old_rest {
                        Fallback::Nothing => self.push(
                            &at,
                            "schema_property_added",
                            Class::Compatible,
                            format!("property `{name}` added (it was refused before)"),
                        ),
                        // A new optional property of an open schema is compatible: the
                        // old schema said nothing about it, so no client was told to send
                        // it. Payloads that did carry it, unchecked, may now be refused;
                        // that is the bet every API makes when it adds a field.
                        Fallback::Anything => self.push(
                            &at,
                            "schema_property_added",
                            Class::Compatible,
                            format!("property `{name}` added"),
                        ),
                        Fallback::Schema(rest) => {
                            self.push(
                            &at,
                            "schema_property_added",
                            Class::Compatible,
                            format!("property `{name}` added (was checked by `additionalProperties`)"),
                        );
                            self.schema(rest, new_schema, &at);
                        }
                        Fallback::Unknown => {
                            self.cannot_tell(&at, "properties", None, Some(new_schema))
                        }
                    }
                }
            }
        }
        for (name, old_schema) in old_props {
            if new_props.contains_key(name) {
                continue;
            }
            let at = child(path, name);
            match &new_rest {
                Fallback::Nothing => {
                    // Never accepted in the first place: nothing is lost.
                    if old_schema == &Value::Bool(false) {
                        continue;
                    }
                    self.push(
                        &at,
                        "schema_property_removed",
                        Class::Breaking,
                        format!("property `{name}` removed under `additionalProperties: false`: payloads that carry it are now rejected"),
                    );
                }
                Fallback::Anything => self.push(
                    &at,
                    "schema_property_removed",
                    Class::Compatible,
                    format!(
                        "property `{name}` removed from `properties`: any value is now accepted"
                    ),
                ),
                Fallback::Schema(rest) => {
                    self.push(
                        &at,
                        "schema_property_removed",
                        Class::Compatible,
                        format!("property `{name}` removed from `properties`: now checked by `additionalProperties`"),
                    );
                    self.schema(old_schema, rest, &at);
                }
                Fallback::Unknown => self.cannot_tell(&at, "properties", Some(old_schema), None),
            }
        }

        let (o, n) = (
            old.get("additionalProperties"),
            new.get("additionalProperties"),
        );
        if o == n {
            return;
        }
        let at = child(path, "*");
        let anything = Value::Bool(true);
        match (&old_rest, &new_rest) {
            (Fallback::Unknown, _) | (_, Fallback::Unknown) => {
                self.cannot_tell(path, "additionalProperties", o, n)
            }
            (Fallback::Nothing, Fallback::Nothing) | (Fallback::Anything, Fallback::Anything) => {}
            (_, Fallback::Nothing) => self.push(
                path,
                "schema_additional_properties_restricted",
                Class::Breaking,
                "`additionalProperties` turned false: properties not listed are now rejected",
            ),
            (Fallback::Nothing, _) => self.push(
                path,
                "schema_additional_properties_relaxed",
                Class::Compatible,
                "`additionalProperties` no longer false: properties not listed are accepted",
            ),
            (Fallback::Anything, Fallback::Schema(s)) => self.schema(&anything, s, &at),
            (Fallback::Schema(s), Fallback::Anything) => self.schema(s, &anything, &at),
            (Fallback::Schema(a), Fallback::Schema(b)) => self.schema(a, b, &at),
        }
    }

    /// `items` (one schema for every item, or draft 7's list of per-position schemas)
    /// and `prefixItems` (per position, 2020-12).
    fn items(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let anything = Value::Bool(true);
        let (o, n) = (old.get("items"), new.get("items"));
        if o != n {
            match (o, n) {
                (Some(Value::Array(a)), Some(Value::Array(b))) => {
                    self.positions(a, b, path, "items")
                }
                (Some(Value::Array(_)), _) | (_, Some(Value::Array(_))) => {
                    self.cannot_tell(path, "items", o, n)
                }
                (o, n) => self.schema(
                    o.unwrap_or(&anything),
                    n.unwrap_or(&anything),
                    &child(path, "*"),
                ),
            }
        }
        let (o, n) = (old.get("prefixItems"), new.get("prefixItems"));
        if o != n {
            match (o, n) {
                (Some(Value::Array(a)), Some(Value::Array(b))) => {
                    self.positions(a, b, path, "prefixItems")
                }
                _ => self.cannot_tell(path, "prefixItems", o, n),
            }
        }
    }

    /// Per-position item schemas: compared position by position when there are as many
    /// as before; otherwise items move between these and `items`, which is not followed.
    fn positions(&mut self, old: &[Value], new: &[Value], path: &str, keyword: &str) {
        if old.len() != new.len() {
            return self.cannot_tell(
                path,
                keyword,
                Some(&Value::Array(old.to_vec())),
                Some(&Value::Array(new.to_vec())),
            );
        }
        for (i, (o, n)) in old.iter().zip(new).enumerate() {
            self.schema(o, n, &child(path, &i.to_string()));
        }
    }

    /// Every member must hold: comparing member by member is exact for a member that
    /// stayed in place (an inlined `$ref` with keywords beside it becomes such a pair).
    fn all_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        match (old.and_then(Value::as_array), new.and_then(Value::as_array)) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                for (o, n) in a.iter().zip(b) {
                    self.schema(o, n, path);
                }
            }
            _ => self.cannot_tell(path, "allOf", old, new),
        }
    }

    /// One member must hold: keeping every old member and adding more accepts more.
    fn any_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        match (old.and_then(Value::as_array), new.and_then(Value::as_array)) {
            (Some(a), Some(b)) if a.iter().all(|m| b.contains(m)) => self.push(
                path,
                "schema_any_of_grown",
                Class::Compatible,
                format!("`anyOf` gained {} alternative(s)", b.len() - a.len()),
            ),
            (Some(_), None) => self.push(
                path,
                "schema_any_of_removed",
                Class::Compatible,
                "`anyOf` removed: values no longer have to match one of its alternatives",
            ),
            _ => self.cannot_tell(path, "anyOf", old, new),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// (path, kind, class) of every change, for short assertions.
    fn changes(old: Value, new: Value) -> Vec<(String, &'static str, Class)> {
        compare(&old, &new)
            .into_iter()
            .map(|c| (c.path, c.kind, c.class))
            .collect()
    }

    fn one(old: Value, new: Value) -> (String, &'static str, Class) {
        let mut all = changes(old, new);
        assert_eq!(all.len(), 1, "expected one change, got {all:?}");
        all.remove(0)
    }

    use Class::{Breaking as B, Compatible as C};

    #[test]
    fn equal_schemas_have_no_changes() {
        let s = json!({ "type": "object", "properties": { "a": { "type": "string" } } });
        assert!(changes(s.clone(), s).is_empty());
        assert!(changes(json!(true), json!({})).is_empty());
    }

    #[test]
    fn newly_required_is_breaking_and_the_reverse_is_not() {
        let old = json!({ "type": "object", "required": ["a"] });
        let new = json!({ "type": "object", "required": ["a", "b"] });
        assert_eq!(
            one(old.clone(), new.clone()),
            ("/b".into(), "schema_required_added", B)
        );
        assert_eq!(one(new, old), ("/b".into(), "schema_required_removed", C));
        // From no `required` at all.
        assert_eq!(
            one(json!({}), json!({ "required": ["x"] })),
            ("/x".into(), "schema_required_added", B)
        );
    }

    #[test]
    fn a_property_removed_under_additional_properties_false_is_breaking() {
        let old = json!({ "properties": { "a": {}, "b": {} }, "additionalProperties": false });
        let new = json!({ "properties": { "a": {} }, "additionalProperties": false });
        assert_eq!(
            one(old.clone(), new.clone()),
            ("/b".into(), "schema_property_removed", B)
        );
        assert_eq!(one(new, old), ("/b".into(), "schema_property_added", C));
    }

    #[test]
    fn a_property_removed_from_an_open_schema_is_compatible() {
        let old = json!({ "properties": { "a": {}, "b": { "type": "string" } } });
        let new = json!({ "properties": { "a": {} } });
        assert_eq!(
            one(old.clone(), new.clone()),
            ("/b".into(), "schema_property_removed", C)
        );
        assert_eq!(one(new, old), ("/b".into(), "schema_property_added", C));
    }

    #[test]
    fn a_property_left_to_an_additional_properties_schema_is_compared_with_it() {
        let old = json!({ "properties": { "n": { "type": "number" } }, "additionalProperties": { "type": "integer" } });
        let new = json!({ "additionalProperties": { "type": "integer" } });
        assert_eq!(
            changes(old, new),
            vec![
                ("/n".into(), "schema_property_removed", C),
                ("/n".into(), "schema_type_narrowed", B),
            ]
        );
    }

    #[test]
    fn additional_properties_turned_false_and_back() {
        let open = json!({ "properties": { "a": {} } });
        let closed = json!({ "properties": { "a": {} }, "additionalProperties": false });
        assert_eq!(
            one(open.clone(), closed.clone()),
            ("".into(), "schema_additional_properties_restricted", B)
        );
        assert_eq!(
            one(closed, open.clone()),
            ("".into(), "schema_additional_properties_relaxed", C)
        );
        // An explicit `true` is the same as none.
        let explicit = json!({ "properties": { "a": {} }, "additionalProperties": true });
        assert!(changes(open.clone(), explicit).is_empty());
        // A schema for the rest narrows what was anything.
        let typed =
            json!({ "properties": { "a": {} }, "additionalProperties": { "type": "string" } });
        assert_eq!(
            one(open.clone(), typed.clone()),
            ("/*".into(), "schema_type_narrowed", B)
        );
        assert_eq!(one(typed, open), ("/*".into(), "schema_type_widened", C));
    }

    #[test]
    fn types_narrow_and_widen() {
        let cases = [
            (
                json!(["string", "null"]),
                json!("string"),
                "schema_type_narrowed",
                B,
            ),
            (
                json!("string"),
                json!(["string", "null"]),
                "schema_type_widened",
                C,
            ),
            (json!("number"), json!("integer"), "schema_type_narrowed", B),
            (json!("integer"), json!("number"), "schema_type_widened", C),
            (json!("string"), json!("integer"), "schema_type_narrowed", B),
        ];
        for (old, new, kind, class) in cases {
            let got = one(json!({ "type": old }), json!({ "type": new }));
            assert_eq!((got.1, got.2), (kind, class), "{old} → {new}");
        }
        // Reordering a type list changes nothing it accepts.
        assert!(changes(
            json!({ "type": ["null", "string"] }),
            json!({ "type": ["string", "null"] })
        )
        .is_empty());
        assert_eq!(
            one(json!({}), json!({ "type": "string" })).1,
            "schema_type_narrowed"
        );
        assert_eq!(
            one(json!({ "type": "string" }), json!({})).1,
            "schema_type_widened"
        );
    }

    #[test]
    fn enums_shrink_grow_appear_and_vanish() {
        let abc = json!({ "enum": ["a", "b", "c"] });
        let ab = json!({ "enum": ["a", "b"] });
        assert_eq!(one(abc.clone(), ab.clone()).1, "schema_enum_shrunk");
        assert_eq!(one(ab.clone(), abc).1, "schema_enum_grown");
        // One removed and one added: both said.
        let ad = json!({ "enum": ["a", "d"] });
        let both = changes(ab.clone(), ad);
        assert_eq!(
            both.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
            vec![("schema_enum_shrunk", B), ("schema_enum_grown", C)]
        );
        assert_eq!(
            one(json!({}), ab.clone()),
            ("".into(), "schema_enum_added", B)
        );
        assert_eq!(one(ab, json!({})), ("".into(), "schema_enum_removed", C));
    }

    #[test]
    fn const_changes() {
        assert_eq!(
            one(json!({ "const": 1 }), json!({ "const": 2 })).1,
            "schema_const_changed"
        );
        assert_eq!(one(json!({}), json!({ "const": 2 })).2, B);
        assert_eq!(
            one(json!({ "const": 2 }), json!({})),
            ("".into(), "schema_const_removed", C)
        );
    }

    #[test]
    fn bounds_tighten_and_loosen() {
        let cases = [
            ("minimum", 1, 2, B),
            ("minimum", 2, 1, C),
            ("exclusiveMinimum", 0, 5, B),
            ("maximum", 10, 5, B),
            ("maximum", 5, 10, C),
            ("exclusiveMaximum", 10, 9, B),
            ("minLength", 1, 3, B),
            ("maxLength", 100, 50, B),
            ("maxLength", 50, 100, C),
            ("minItems", 0, 1, B),
            ("maxItems", 5, 3, B),
            ("maxItems", 3, 5, C),
        ];
        for (key, old, new, class) in cases {
            let got = one(json!({ key: old }), json!({ key: new }));
            assert_eq!(got.2, class, "{key}: {old} → {new}");
        }
        assert_eq!(
            one(json!({}), json!({ "maxLength": 5 })).1,
            "schema_bound_tightened"
        );
        assert_eq!(
            one(json!({ "minimum": 5 }), json!({})).1,
            "schema_bound_loosened"
        );
    }

    #[test]
    fn multiple_of_follows_divisibility() {
        assert_eq!(
            one(json!({ "multipleOf": 2 }), json!({ "multipleOf": 4 })).2,
            B
        );
        assert_eq!(
            one(json!({ "multipleOf": 4 }), json!({ "multipleOf": 2 })).2,
            C
        );
        assert_eq!(
            one(json!({ "multipleOf": 2 }), json!({ "multipleOf": 3 })).2,
            B
        );
        assert_eq!(
            one(json!({ "multipleOf": 0.5 }), json!({ "multipleOf": 0.25 })).2,
            C
        );
        assert_eq!(one(json!({}), json!({ "multipleOf": 3 })).2, B);
    }

    #[test]
    fn a_changed_pattern_is_possibly_breaking() {
        let got = compare(&json!({ "pattern": "^a" }), &json!({ "pattern": "^[ab]" }));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind, got[0].class), ("schema_pattern_changed", B));
        assert!(
            got[0].detail.contains("possibly breaking"),
            "{}",
            got[0].detail
        );
        assert_eq!(
            one(json!({}), json!({ "pattern": "x" })).1,
            "schema_pattern_added"
        );
        assert_eq!(one(json!({ "pattern": "x" }), json!({})).2, C);
    }

    #[test]
    fn format_is_an_annotation_unless_the_dialect_asserts_it() {
        assert_eq!(
            one(json!({}), json!({ "format": "email" })),
            ("".into(), "schema_annotation_changed", C)
        );
        let d7 = "http://json-schema.org/draft-07/schema#";
        assert_eq!(
            one(
                json!({ "$schema": d7 }),
                json!({ "$schema": d7, "format": "email" })
            ),
            ("".into(), "schema_format_changed", B)
        );
        assert_eq!(
            one(
                json!({ "$schema": d7, "format": "email" }),
                json!({ "$schema": d7 })
            )
            .2,
            C
        );
    }

    #[test]
    fn unique_items_both_ways() {
        assert_eq!(one(json!({}), json!({ "uniqueItems": true })).2, B);
        assert_eq!(
            one(
                json!({ "uniqueItems": true }),
                json!({ "uniqueItems": false })
            )
            .2,
            C
        );
    }

    #[test]
    fn nested_properties_and_items_are_compared_with_their_paths() {
        let old = json!({ "properties": { "user": { "properties": { "tags": {
            "type": "array", "items": { "type": "string", "maxLength": 10 } } } } } });
        let new = json!({ "properties": { "user": { "required": ["id"], "properties": { "tags": {
            "type": "array", "items": { "type": "string", "maxLength": 5 } } } } } });
        assert_eq!(
            changes(old.clone(), new.clone()),
            vec![
                ("/user/id".into(), "schema_required_added", B),
                ("/user/tags/*".into(), "schema_bound_tightened", B),
            ]
        );
        assert_eq!(
            changes(new, old),
            vec![
                ("/user/id".into(), "schema_required_removed", C),
                ("/user/tags/*".into(), "schema_bound_loosened", C),
            ]
        );
        // Items gaining a schema narrows what was anything.
        assert_eq!(
            one(
                json!({ "type": "array" }),
                json!({ "type": "array", "items": { "type": "integer" } })
            ),
            ("/*".into(), "schema_type_narrowed", B)
        );
    }

    #[test]
    fn per_position_items_are_compared_by_position() {
        let old = json!({ "prefixItems": [{ "type": "string" }, { "type": "number" }] });
        let new = json!({ "prefixItems": [{ "type": "string" }, { "type": "integer" }] });
        assert_eq!(one(old, new), ("/1".into(), "schema_type_narrowed", B));
        let longer = json!({ "prefixItems": [{}, {}, {}] });
        assert_eq!(
            one(json!({ "prefixItems": [{}, {}] }), longer).1,
            "schema_changed_cannot_tell"
        );
    }

    #[test]
    fn what_cannot_be_judged_is_breaking_and_says_so() {
        let old = json!({ "oneOf": [{ "type": "string" }, { "type": "integer" }] });
        let new = json!({ "oneOf": [{ "type": "string" }, { "type": "number" }] });
        let got = compare(&old, &new);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].kind, got[0].class),
            ("schema_changed_cannot_tell", B)
        );
        assert!(got[0].detail.contains("cannot tell"));
        assert_eq!(one(json!({}), json!({ "not": { "type": "null" } })).2, B);
        // Once `patternProperties` is there, a removed property may fall to it.
        let old = json!({ "properties": { "a": {} }, "patternProperties": { "^x": {} } });
        let new = json!({ "patternProperties": { "^x": {} } });
        assert_eq!(
            one(old, new),
            ("/a".into(), "schema_changed_cannot_tell", B)
        );
    }

    #[test]
    fn all_of_member_by_member_and_any_of_grown() {
        let old = json!({ "allOf": [{ "type": "object" }, { "required": ["a"] }] });
        let new = json!({ "allOf": [{ "type": "object" }, { "required": ["a", "b"] }] });
        assert_eq!(one(old, new), ("/b".into(), "schema_required_added", B));
        let old = json!({ "anyOf": [{ "type": "string" }] });
        let new = json!({ "anyOf": [{ "type": "string" }, { "type": "null" }] });
        assert_eq!(one(old.clone(), new.clone()).1, "schema_any_of_grown");
        assert_eq!(one(new, old).1, "schema_changed_cannot_tell");
    }

    #[test]
    fn false_schemas() {
        assert_eq!(
            one(json!({}), json!(false)),
            ("".into(), "schema_rejects_everything", B)
        );
        assert_eq!(one(json!(false), json!({ "type": "string" })).2, C);
        // A property that was `false` under `additionalProperties: false` was never
        // accepted: removing it loses nothing.
        let old = json!({ "properties": { "a": false }, "additionalProperties": false });
        assert!(changes(old, json!({ "additionalProperties": false })).is_empty());
    }

    #[test]
    fn annotations_are_compatible_and_defs_are_silent() {
        let old = json!({ "description": "a", "$defs": { "x": { "type": "string" } } });
        let new = json!({ "description": "b", "$defs": { "x": { "type": "integer" } } });
        assert_eq!(one(old, new), ("".into(), "schema_annotation_changed", C));
    }

    #[test]
    fn pointer_segments_are_escaped() {
        let old = json!({ "properties": { "a/b": { "type": "string" } } });
        let new = json!({ "properties": { "a/b": { "type": "integer" } } });
        assert_eq!(one(old, new).0, "/a~1b");
    }
}
