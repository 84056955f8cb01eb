//! What a script sends, read from its source: the events it `emit`s, the shape of what
//! it `reply`s and of what it leaves in `data`, the codes it `reject`s with. For
//! documents of a pack (`wss-engine asyncapi`), never for serving.
//!
//! Best effort, and says so: a shape is a JSON Schema built from the expressions the
//! compiler sees. Literals, map literals (`#{ room: data.room }`), `data.x` (looked up
//! in the event's own schema), `conn.id`/`conn.user`/`conn.rooms`, `presence(…)`,
//! `….len()`, comparisons and string concatenation have known shapes; anything else
//! (a variable, `state.get(…)`, a function's result) is `{}`: any JSON value.

use std::collections::BTreeSet;

use rhai::{ASTNode, Expr, Stmt, AST};
use serde_json::{json, Map, Value};

/// What the source of one script tells about its output.
#[derive(Debug, Default)]
pub struct ScriptShapes {
    /// `emit(target, "name", payload)` calls whose name is a string literal.
    pub emits: Vec<(String, Value)>,
    /// Some `emit` names its event with something other than a literal.
    pub unknown_emits: bool,
    /// One shape per `reply(value)` call.
    pub replies: Vec<Value>,
    /// Some `reply` call is inside a condition, a loop or a function: a run may end
    /// without one (the ack's `data` is then `null`).
    pub conditional_reply: bool,
    /// `data = …` assignments: one shape each.
    pub data_replaced: Vec<Value>,
    /// `data.p = …` assignments: property, shape, and whether it is a statement of
    /// the script's top level (so every run that delivers has set it).
    pub data_props: Vec<(String, Value, bool)>,
    /// `data` is changed in a way not modelled here (`data.a.b = …`, `data += …`,
    /// `data.remove(…)`): its delivered shape is unknown.
    pub data_unknown: bool,
    /// Codes of `reject(code, message)`; `None` when one is not a literal.
    pub reject_codes: Option<BTreeSet<String>>,
}

impl ScriptShapes {
    /// Read `ast`; `input` is the event's payload schema (what `data` holds on entry).
    pub fn read(ast: &AST, input: Option<&Value>) -> Self {
        let top: Vec<*const Stmt> = ast.statements().iter().map(|s| s as *const _).collect();
        let mut shapes = ScriptShapes {
            reject_codes: Some(BTreeSet::new()),
            ..Self::default()
        };
        ast.walk(&mut |path| {
            let at_top = path.len() == 1
                && matches!(path[0], ASTNode::Stmt(s) if top.contains(&(s as *const _)));
            match path.last() {
                Some(
                    ASTNode::Stmt(Stmt::FnCall(call, _)) | ASTNode::Expr(Expr::FnCall(call, _)),
                ) => {
                    let args = &call.args;
                    match (call.name.as_str(), args.len()) {
                        ("emit", 3) => match string_literal(&args[1]) {
                            Some(name) => shapes.emits.push((name, shape(&args[2], input))),
                            None => shapes.unknown_emits = true,
                        },
                        ("reply", 1) => {
                            shapes.replies.push(shape(&args[0], input));
                            shapes.conditional_reply |= !at_top;
                        }
                        ("reject", 2) => match (string_literal(&args[0]), &mut shapes.reject_codes)
                        {
                            (Some(code), Some(codes)) => {
                                codes.insert(code);
                            }
                            _ => shapes.reject_codes = None,
                        },
                        // `call(Fn("emit"), …)`: a call the source does not name.
                        ("call" | "curry", _) => shapes.unknown_emits = true,
                        _ => {}
                    }
                }
                Some(ASTNode::Stmt(Stmt::Assignment(assignment))) => {
                    let (op, target) = &**assignment;
                    match chain(&target.lhs) {
                        Some((root, segments)) if root == "data" => {
                            match (op.is_op_assignment(), segments.as_slice()) {
                                (false, []) => shapes.data_replaced.push(shape(&target.rhs, input)),
                                (false, [Segment::Property(p)]) => shapes.data_props.push((
                                    p.clone(),
                                    shape(&target.rhs, input),
                                    at_top,
                                )),
                                _ => shapes.data_unknown = true,
                            }
                        }
                        Some(_) => {}
                        // `data[k] = …` and the like.
                        None => shapes.data_unknown |= mentions_data(&target.lhs),
                    }
                }
                Some(ASTNode::Expr(expr @ Expr::Dot(..))) => {
                    if let Some((root, segments)) = chain(expr) {
                        let mutating = segments.iter().any(|s| match s {
                            Segment::Method(m) => !READ_ONLY_METHODS.contains(&m.as_str()),
                            _ => false,
                        });
                        shapes.data_unknown |= root == "data" && mutating;
                    }
                }
                _ => {}
            }
            true
        });
        shapes
    }

    /// What the script leaves in `data` (delivered to `to:`), given what it received.
    pub fn delivered(&self, input: &Value) -> Value {
        if self.data_unknown {
            return json!({});
        }
        let bases: Vec<Value> = if self.data_replaced.is_empty() {
            vec![input.clone()]
        } else {
            self.data_replaced.clone()
        };
        let bases = bases
            .into_iter()
            .map(|base| with_properties(base, &self.data_props))
            .collect();
        any_of(bases)
    }

    /// The ack's `data`: `null` when the script never replies.
    pub fn reply(&self) -> Value {
        let mut shapes = self.replies.clone();
        if shapes.is_empty() || self.conditional_reply {
            shapes.push(json!({ "type": "null" }));
        }
        any_of(shapes)
    }
}

/// Methods that read a map or array without changing it.
const READ_ONLY_METHODS: &[&str] = &[
    "contains",
    "len",
    "is_empty",
    "keys",
    "values",
    "get",
    "to_json",
    "type_of",
    "index_of",
    "to_string",
    "to_upper",
    "to_lower",
    "trim",
    "starts_with",
    "ends_with",
    "sub_string",
    "split",
    "filter",
    "map",
    "reduce",
    "some",
    "all",
    "find",
];

/// One schema standing for several: itself when alone, `{}` when any is `{}` (anything
/// absorbs the rest), else `anyOf` of the distinct ones.
pub fn any_of(shapes: Vec<Value>) -> Value {
    let mut distinct: Vec<Value> = Vec::new();
    for s in shapes {
        if s == json!({}) {
            return s;
        }
        if !distinct.contains(&s) {
            distinct.push(s);
        }
    }
    match distinct.len() {
        0 => json!({}),
        1 => distinct.remove(0),
        _ => json!({ "anyOf": distinct }),
    }
}

/// `base` with properties a script sets on it. Only an object schema with `properties`
/// (or `type: object`) can say so; any other is left as it is, unless a property is
/// set, which makes it unknown (`{}`).
fn with_properties(base: Value, props: &[(String, Value, bool)]) -> Value {
    if props.is_empty() {
        return base;
    }
    let Value::Object(mut map) = base else {
        return json!({});
    };
    if !(map.contains_key("properties") || map.get("type") == Some(&json!("object"))) {
        return json!({});
    }
    let mut set: Vec<(String, Value, bool)> = Vec::new();
    for (name, shape, always) in props {
        match set.iter_mut().find(|(n, ..)| n == name) {
            Some(entry) => {
                entry.1 = any_of(vec![entry.1.clone(), shape.clone()]);
                entry.2 |= always;
            }
            None => set.push((name.clone(), shape.clone(), *always)),
        }
    }
    let properties = map
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(properties) = properties {
        for (name, shape, _) in &set {
            // What the script writes replaces what the client sent.
            properties.insert(name.clone(), shape.clone());
        }
    }
    let required: Vec<&String> = set.iter().filter(|(.., a)| *a).map(|(n, ..)| n).collect();
    if !required.is_empty() {
        let list = map.entry("required").or_insert_with(|| json!([]));
        if let Value::Array(list) = list {
            for name in required {
                if !list.contains(&json!(name)) {
                    list.push(json!(name));
                }
            }
        }
    }
    Value::Object(map)
}

enum Segment {
    Property(String),
    Method(String),
    Other,
}

/// `root.a.b.m()` as (`root`, [a, b, m()]); `None` when the chain does not start at a
/// variable.
fn chain(expr: &Expr) -> Option<(String, Vec<Segment>)> {
    let Expr::Dot(bin, ..) = expr else {
        return match expr {
            Expr::Variable(v, ..) => Some((v.1.to_string(), Vec::new())),
            _ => None,
        };
    };
    let Expr::Variable(v, ..) = &bin.lhs else {
        return None;
    };
    let mut segments = Vec::new();
    let mut rest = &bin.rhs;
    loop {
        let (head, next) = match rest {
            Expr::Dot(b, ..) => (&b.lhs, Some(&b.rhs)),
            other => (other, None),
        };
        segments.push(match head {
            Expr::Property(p, _) => Segment::Property(p.2.to_string()),
            Expr::MethodCall(call, _) => Segment::Method(call.name.to_string()),
            _ => Segment::Other,
        });
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Some((v.1.to_string(), segments))
}

/// `m` of `x.y.m(…)`, whatever `x` is.
fn last_method(expr: &Expr) -> Option<&str> {
    let mut at = expr;
    while let Expr::Dot(bin, ..) = at {
        at = &bin.rhs;
    }
    match at {
        Expr::MethodCall(call, _) if !std::ptr::eq(at, expr) => Some(call.name.as_str()),
        _ => None,
    }
}

fn mentions_data(expr: &Expr) -> bool {
    let mut found = false;
    expr.walk(&mut Vec::new(), &mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::Variable(v, ..))) = path.last() {
            found |= v.1.as_str() == "data";
        }
        !found
    });
    found
}

fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::StringConstant(s, _) => Some(s.to_string()),
        Expr::DynamicConstant(value, _) if value.is_string() => {
            value.as_ref().clone().into_string().ok()
        }
        _ => None,
    }
}

/// The shape of what `expr` evaluates to; `input` is the schema of `data`.
pub fn shape(expr: &Expr, input: Option<&Value>) -> Value {
    match expr {
        Expr::StringConstant(..) | Expr::InterpolatedString(..) | Expr::CharConstant(..) => {
            json!({ "type": "string" })
        }
        Expr::IntegerConstant(..) => json!({ "type": "integer" }),
        Expr::FloatConstant(..) => json!({ "type": "number" }),
        Expr::BoolConstant(..) | Expr::And(..) | Expr::Or(..) => json!({ "type": "boolean" }),
        Expr::Unit(..) => json!({ "type": "null" }),
        Expr::DynamicConstant(value, _) => match rhai::serde::from_dynamic::<Value>(value) {
            Ok(v) => value_shape(&v),
            Err(_) => json!({}),
        },
        Expr::Array(..) => json!({ "type": "array" }),
        Expr::Map(entries, _) => {
            let mut properties = Map::new();
            for (name, value) in &entries.0 {
                properties.insert(name.name.to_string(), shape(value, input));
            }
            let required: Vec<&String> = properties.keys().collect();
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            })
        }
        Expr::FnCall(call, _) => match (call.name.as_str(), call.args.len()) {
            ("presence", 1) => json!({ "type": "array", "items": { "type": "string" } }),
            ("==" | "!=" | "<" | ">" | "<=" | ">=" | "!", _) if call.op_token.is_some() => {
                json!({ "type": "boolean" })
            }
            ("+", 2) if call.op_token.is_some() => {
                let string = json!({ "type": "string" });
                if call.args.iter().any(|a| shape(a, input) == string) {
                    string
                } else {
                    json!({})
                }
            }
            _ => json!({}),
        },
        Expr::Variable(..) | Expr::Dot(..) => {
            if let Some(method) = last_method(expr) {
                return match method {
                    "len" => json!({ "type": "integer" }),
                    "contains" | "is_empty" => json!({ "type": "boolean" }),
                    _ => json!({}),
                };
            }
            let Some((root, segments)) = chain(expr) else {
                return json!({});
            };
            let props: Option<Vec<&str>> = segments
                .iter()
                .map(|s| match s {
                    Segment::Property(p) => Some(p.as_str()),
                    _ => None,
                })
                .collect();
            match (root.as_str(), props.as_deref()) {
                ("data", Some(path)) => input
                    .and_then(|schema| property_schema(schema, path))
                    .unwrap_or_else(|| json!({})),
                ("conn", Some(["id" | "node"])) => json!({ "type": "string" }),
                ("conn", Some(["user"])) => json!({ "type": ["string", "null"] }),
                ("conn", Some(["rooms"])) => {
                    json!({ "type": "array", "items": { "type": "string" } })
                }
                ("conn", Some(["claims"])) => json!({ "type": "object" }),
                ("event", Some([])) => json!({ "type": "string" }),
                _ => json!({}),
            }
        }
        _ => json!({}),
    }
}

/// The schema of `data.a.b` in `schema` (through `properties` only). A property that
/// is not `required` may be absent, which a script reads as `()`: `null` when sent on.
fn property_schema(schema: &Value, path: &[&str]) -> Option<Value> {
    let mut at = schema;
    let mut optional = false;
    for p in path {
        let required = at
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.contains(&json!(p)));
        optional |= !required;
        at = at.get("properties")?.get(*p)?;
    }
    Some(if optional {
        json!({ "anyOf": [at, { "type": "null" }] })
    } else {
        at.clone()
    })
}

/// The shape of a constant.
fn value_shape(value: &Value) -> Value {
    match value {
        Value::Null => json!({ "type": "null" }),
        Value::Bool(_) => json!({ "type": "boolean" }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "type": "integer" }),
        Value::Number(_) => json!({ "type": "number" }),
        Value::String(_) => json!({ "type": "string" }),
        Value::Array(_) => json!({ "type": "array" }),
        Value::Object(map) => {
            let properties: Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), value_shape(v)))
                .collect();
            let required: Vec<&String> = map.keys().collect();
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{ScriptLimits, ScriptRuntime};

    fn read(source: &str, input: Value) -> ScriptShapes {
        let runtime = ScriptRuntime::new(&ScriptLimits::default());
        let ast = runtime
            .compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e:?}"));
        ScriptShapes::read(&ast, Some(&input))
    }

    fn room_schema() -> Value {
        json!({
            "type": "object",
            "required": ["room"],
            "properties": { "room": { "type": "string", "pattern": "^[a-z]+$" } },
            "additionalProperties": false
        })
    }

    #[test]
    fn emits_and_replies_of_map_literals_have_their_fields() {
        let s = read(
            r#"join(data.room);
               emit("room:" + data.room, "chat.joined", #{ room: data.room, conn: conn.id, user: conn.user });
               reply(#{ members: presence(data.room).len() });"#,
            room_schema(),
        );
        assert_eq!(s.emits.len(), 1);
        let (name, payload) = &s.emits[0];
        assert_eq!(name, "chat.joined");
        assert_eq!(
            payload["properties"]["room"],
            json!({ "type": "string", "pattern": "^[a-z]+$" })
        );
        assert_eq!(payload["properties"]["conn"], json!({ "type": "string" }));
        assert_eq!(
            payload["properties"]["user"],
            json!({ "type": ["string", "null"] })
        );
        assert_eq!(payload["required"], json!(["room", "conn", "user"]));
        assert_eq!(
            s.reply()["properties"]["members"],
            json!({ "type": "integer" })
        );
        assert!(!s.unknown_emits);
    }

    #[test]
    fn properties_set_on_data_are_delivered() {
        let s = read(
            r#"if data.room == "x" { reject("nope", "no"); }
               data.from = conn.id;
               if data.room == "b" { data.extra = 1; }"#,
            room_schema(),
        );
        let delivered = s.delivered(&room_schema());
        assert_eq!(delivered["properties"]["from"], json!({ "type": "string" }));
        assert_eq!(
            delivered["properties"]["extra"],
            json!({ "type": "integer" })
        );
        // Set on every run at the top level: required; in a branch: optional.
        assert_eq!(delivered["required"], json!(["room", "from"]));
        assert_eq!(s.reply(), json!({ "type": "null" }));
        assert_eq!(s.reject_codes, Some(BTreeSet::from(["nope".to_string()])));
    }

    #[test]
    fn replaced_data_and_unknowns() {
        let s = read(
            "let n = 1; data = #{ name: data.room, value: n };",
            room_schema(),
        );
        let delivered = s.delivered(&room_schema());
        assert_eq!(delivered["properties"]["value"], json!({}));
        assert_eq!(delivered["required"], json!(["name", "value"]));

        for source in [
            "data.tags.push(1);",
            "data.a.b = 1;",
            "data += #{ x: 1 };",
            "data[\"x\"] = 1;",
            "data.remove(\"room\");",
        ] {
            let s = read(source, room_schema());
            assert!(s.data_unknown, "{source}");
            assert_eq!(s.delivered(&room_schema()), json!({}), "{source}");
        }
        let s = read(
            r#"let name = "x"; emit("all", name, 1); reject(data.room, "m"); if data.room == "a" { reply(1); }"#,
            room_schema(),
        );
        assert!(s.unknown_emits);
        assert_eq!(s.reject_codes, None);
        assert_eq!(
            s.reply(),
            json!({ "anyOf": [{ "type": "integer" }, { "type": "null" }] })
        );
    }
}
