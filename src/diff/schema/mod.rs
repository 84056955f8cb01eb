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
//! Schemas are compared as [`EventDef::schema_json`](crate::config::EventDef::schema_json) holds
//! them: every `$ref` already replaced by what it points to, so a change inside a
//! referenced file is found where it is used. `$defs` are therefore not compared on
//! their own: what changed in them shows at each place that used them.
//!
//! `values.rs` compares the keywords on a value (type, enum, const, bounds, pattern,
//! format, uniqueItems); `structure.rs` those on its parts (required, properties,
//! items, allOf, anyOf).

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
}

mod structure;
mod values;

#[cfg(test)]
mod tests;
