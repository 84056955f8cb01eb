//! Keywords on a value's parts: `required`, `properties` with `additionalProperties`,
//! `items`/`prefixItems`, `allOf`, `anyOf`.

use serde_json::{Map, Value};

use super::{child, fallback, Class, Comparer, Fallback};

impl Comparer {
    pub(super) fn required(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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
    pub(super) fn properties(
        &mut self,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        path: &str,
    ) {
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
    pub(super) fn items(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
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
    pub(super) fn positions(&mut self, old: &[Value], new: &[Value], path: &str, keyword: &str) {
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
    pub(super) fn all_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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
    pub(super) fn any_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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
