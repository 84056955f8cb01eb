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
    let typed = json!({ "properties": { "a": {} }, "additionalProperties": { "type": "string" } });
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
