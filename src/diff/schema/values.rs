//! Keywords on a value itself: `type`, `enum`, `const`, bounds, `multipleOf`,
//! `pattern`, `format`, `uniqueItems`.

use serde_json::Value;

use super::{show, Class, Comparer};

impl Comparer {
    pub(super) fn types(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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

    pub(super) fn enumeration(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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

    pub(super) fn constant(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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
    pub(super) fn bound(
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

    pub(super) fn multiple_of(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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

    pub(super) fn pattern(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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

    pub(super) fn format(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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

    pub(super) fn unique_items(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
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
}
