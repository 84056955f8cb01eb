//! Scripts of a pack: inline or `{ file: … }`, compiled on the engine the server runs
//! them on, with compile errors placed at their line in the YAML or `.rhai` file.

use std::path::Path;

use rhai::{ASTNode, Expr, Stmt, AST};

use super::diagnostic::Diagnostics;
use super::fields::{check_keys, string_field};
use super::files::{read_text, Sources};
use super::target::{placeholder, KeySlot, OPAQUE};
use super::yaml::{Node, NodeKind, Pos};
use super::ScriptDef;
use crate::delivery::target::{split, TargetKind};
use crate::script::ScriptRuntime;

/// Compile the `script:` of an event found in `file` (whose text is `text`); a script
/// file it names is read and counted in `sources`.
pub(super) fn script(
    runtime: &ScriptRuntime,
    diags: &mut Diagnostics,
    sources: &mut Sources,
    file: &Path,
    text: &str,
    node: &Node,
) -> Option<ScriptDef> {
    let (source, script_file, first_line, col_offset) = match &node.kind {
        NodeKind::Str(source) => {
            let (line, col) = inline_script_origin(text, source, node.pos);
            (source.clone(), file.to_path_buf(), line, col)
        }
        NodeKind::Map(_) => {
            check_keys(diags, file, node, &["file"], &[], "script");
            let Some(path_node) = node.get("file") else {
                diags.error(
                    file,
                    node.pos,
                    "`script` must be Rhai source or `{ file: path.rhai }`",
                );
                return None;
            };
            let rel = string_field(diags, file, path_node, "script.file")?;
            let path = file.parent().unwrap_or(Path::new(".")).join(rel);
            match read_text(&path) {
                Ok(source) => {
                    // Only its text counts: the pack file that names it is counted too.
                    sources.record(&path, &[], &source);
                    (source, path, 1, 0)
                }
                Err(e) => {
                    diags.error(
                        file,
                        path_node.pos,
                        format!("script file `{}`: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
        _ => {
            diags.error(
                file,
                node.pos,
                format!(
                    "`script` must be Rhai source or `{{ file: path.rhai }}`, not {}",
                    node.type_name()
                ),
            );
            return None;
        }
    };
    match runtime.compile(&source) {
        Ok(ast) => Some(ScriptDef {
            ast,
            file: script_file,
            first_line,
            source,
        }),
        Err(errors) => {
            for e in errors {
                let hint = if e.message.starts_with("Undefined variable") {
                    " (a script sees `data`, `conn`, `event`, `state` and its own `let`s)"
                } else {
                    ""
                };
                // Every line of an inline script is indented alike, so one
                // column offset holds for all of them.
                let pos = Pos {
                    line: first_line + e.line.saturating_sub(1),
                    col: col_offset + e.col,
                };
                diags.error(&script_file, pos, format!("script: {}{hint}", e.message));
            }
            None
        }
    }
}

/// The rooms a script's `emit` calls may deliver to, as globs (`*` any run, as in
/// `rooms:` patterns); `None` when the source does not tell.
///
/// A target is read from its leading string literal: `"room:lobby"` is the room
/// `lobby`, `"room:doc:" + data.id` any room `doc:*`, `"user:" + conn.user` no room at
/// all. A target without one (a variable, `data.target`, `` `room:${r}` ``), a leading
/// literal too short to tell (`"ro" + rest`), `emit` called as a method, and calls
/// through a function pointer (`call`, `curry`: `emit` in disguise, perhaps) make the
/// answer `None`. Read from the compiled AST, so comments and strings that merely
/// contain `emit(` do not count, and function bodies and closures do.
pub(super) fn emitted_rooms(ast: &AST) -> Option<Vec<String>> {
    let mut rooms = Vec::new();
    let mut known = true;
    ast.walk(&mut |path| {
        let (call, as_method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _)) | ASTNode::Stmt(Stmt::FnCall(call, _))) => {
                (call, false)
            }
            Some(ASTNode::Expr(Expr::MethodCall(call, _))) => (call, true),
            _ => return true,
        };
        match call.name.as_str() {
            "call" | "curry" => known = false,
            "emit" if as_method => known = false,
            "emit" => match call.args.first().map(emit_target) {
                Some(EmitTarget::Rooms(glob)) => rooms.push(glob),
                Some(EmitTarget::NotARoom) => {}
                Some(EmitTarget::Unknown) | None => known = false,
            },
            _ => {}
        }
        // Once one target is unknown, the rest do not matter.
        known
    });
    known.then_some(rooms)
}

/// The state functions whose first argument is a key.
const STATE_FNS: &[&str] = &[
    "get", "set", "del", "incr", "hget", "hset", "hdel", "hgetall", "sadd", "srem", "smembers",
    "scard", "lpush", "rpush", "lrange", "ltrim",
];

/// Where the state keys a script names (`state.get(k)`, `state.set(k, v)` …) land on a
/// Redis Cluster, each once, in order; keys nothing can be said about are left out.
pub(super) fn state_key_slots(ast: &AST) -> Vec<KeySlot> {
    let mut slots: Vec<KeySlot> = Vec::new();
    ast.walk(&mut |path| {
        let [.., ASTNode::Expr(Expr::Dot(dot, ..)), ASTNode::Expr(Expr::MethodCall(call, _))] =
            path
        else {
            return true;
        };
        let on_state = matches!(&dot.lhs, Expr::Variable(var, ..) if var.1 == "state");
        if !on_state || !STATE_FNS.contains(&call.name.as_str()) {
            return true;
        }
        let slot = call
            .args
            .first()
            .and_then(|key| KeySlot::of_skeleton(&skeleton(key)));
        if let Some(slot) = slot {
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        true
    });
    slots
}

/// A key expression as a template skeleton: literals as text, `data.x` / `conn.id`
/// and such as placeholders, anything else opaque; `a + b` is both, in order.
fn skeleton(expr: &Expr) -> String {
    if let Expr::FnCall(call, _) = expr {
        if call.op_token.is_some() && call.name == "+" && call.args.len() == 2 {
            return call.args.iter().map(skeleton).collect();
        }
    }
    if let Some(text) = string_constant(expr) {
        return text;
    }
    variable_path(expr).map_or_else(|| OPAQUE.to_string(), |path| placeholder(&path))
}

/// `data.room`, `conn.id`: a variable and its properties.
fn variable_path(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Variable(var, ..) => Some(var.1.to_string()),
        Expr::Dot(dot, ..) => match &dot.rhs {
            Expr::Property(prop, _) => Some(format!("{}.{}", variable_path(&dot.lhs)?, prop.2)),
            _ => None,
        },
        _ => None,
    }
}

enum EmitTarget {
    /// Rooms matching this glob.
    Rooms(String),
    NotARoom,
    Unknown,
}

/// What the first argument of an `emit` call can name.
fn emit_target(expr: &Expr) -> EmitTarget {
    // `a + b + c` is `(a + b) + c`: the leftmost operand leads the string.
    let mut lead = expr;
    let mut concatenated = false;
    while let Expr::FnCall(call, _) = lead {
        match call.args.first() {
            Some(left) if call.op_token.is_some() && call.name == "+" && call.args.len() == 2 => {
                lead = left;
                concatenated = true;
            }
            _ => break,
        }
    }
    let Some(text) = string_constant(lead) else {
        return EmitTarget::Unknown;
    };
    if !concatenated {
        // A target that does not parse fails at run time; it names no room.
        return match split(&text) {
            Ok((TargetKind::Room, room)) => EmitTarget::Rooms(room.to_string()),
            _ => EmitTarget::NotARoom,
        };
    }
    match text.strip_prefix("room:") {
        Some(room) => EmitTarget::Rooms(format!("{room}*")),
        None if "room:".starts_with(text.as_str()) => EmitTarget::Unknown,
        None => EmitTarget::NotARoom,
    }
}

/// A string the compiler knows: a literal, or one Rhai's optimizer folded
/// (`"room:" + "lobby"`).
fn string_constant(expr: &Expr) -> Option<String> {
    match expr {
        Expr::StringConstant(s, _) => Some(s.to_string()),
        Expr::DynamicConstant(value, _) if value.is_string() => {
            value.as_ref().clone().into_string().ok()
        }
        _ => None,
    }
}

/// Where line 1, column 1 of an inline script sits in its YAML file, as (line, columns
/// before the script's first column).
///
/// saphyr places a quoted scalar at its opening quote, a plain scalar at its first
/// character, and a block scalar (`|`, `>`) at its first content character, past any
/// leading blank lines, which the script text keeps as `\n`s (the yaml tests pin this).
fn inline_script_origin(text: &str, source: &str, pos: Pos) -> (usize, usize) {
    let first = text
        .lines()
        .nth(pos.line.saturating_sub(1))
        .and_then(|l| l.chars().nth(pos.col.saturating_sub(1)));
    match first {
        Some('"' | '\'') => (pos.line, pos.col),
        _ => {
            let blank_lines = source.chars().take_while(|c| *c == '\n').count();
            (
                pos.line.saturating_sub(blank_lines).max(1),
                pos.col.saturating_sub(1),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{ScriptLimits, ScriptRuntime};

    fn compiled(source: &str) -> AST {
        ScriptRuntime::new(&ScriptLimits::default())
            .compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e:?}"))
    }

    fn rooms(source: &str) -> Option<Vec<String>> {
        emitted_rooms(&compiled(source))
    }

    fn slots(source: &str) -> Vec<String> {
        state_key_slots(&compiled(source))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn state_keys_are_placed_by_their_hash_tags() {
        // Literal keys are their own tag; a tag inside wins.
        assert_eq!(
            slots(r#"state.set("left", 1); state.get("right"); state.incr("left", 1);"#),
            ["`{left}`", "`{right}`"]
        );
        assert_eq!(
            slots(r#"state.set("{stats}:a", 1); state.incr("{stats}:b", 1);"#),
            ["`{stats}`"]
        );
        // Computed keys: a tag around `data.x` is one slot for any payload.
        assert_eq!(
            slots(
                r#"state.incr("count:{" + data.room + "}", 1);
                   state.rpush("list:{" + data.room + "}", conn.id);"#
            ),
            ["`{<data.room>}`"]
        );
        // Without a tag, keys of one family may be one key; two families are not.
        assert_eq!(
            slots(r#"let n = state.get("n:" + data.r); state.set("n:" + data.r, n);"#),
            ["`n:…`"]
        );
        assert_eq!(
            slots(r#"state.get("a:" + data.r); state.hset("b:" + data.r, "f", 1);"#),
            ["`a:…`", "`b:…`"]
        );
        // Keys nothing can be said about, and other objects' methods, are left out.
        assert_eq!(
            slots(r#"let k = data.key; state.get(k); state.get("x" + k); let m = [1]; m.get(0);"#),
            ["`x…`"]
        );
        assert!(slots(r#"state.get(data.key + ":x")"#).is_empty());
    }

    #[test]
    fn literal_targets_name_their_rooms() {
        assert_eq!(
            rooms(r#"emit("room:lobby", "e", 1); emit("all", "e", 2); emit("user:ann", "e", 3);"#),
            Some(vec!["lobby".to_string()])
        );
        assert_eq!(rooms("reply(1);"), Some(vec![]));
        // Mentions that are not calls do not count.
        assert_eq!(
            rooms("// emit(x, \"e\", 1)\nlet s = \"emit(y)\"; reply(s);"),
            Some(vec![])
        );
    }

    #[test]
    fn computed_targets_are_read_from_their_leading_literal() {
        assert_eq!(
            rooms(r#"emit("room:doc:" + data.id + ":v", "e", 1);"#),
            Some(vec!["doc:*".to_string()])
        );
        assert_eq!(
            rooms(r#"emit("room:" + data.room, "e", 1);"#),
            Some(vec!["*".to_string()])
        );
        assert_eq!(rooms(r#"emit("user:" + conn.user, "e", 1);"#), Some(vec![]));
        // Too short to tell whether it is a room.
        assert_eq!(rooms(r#"emit("ro" + data.rest, "e", 1);"#), None);
    }

    #[test]
    fn targets_the_source_does_not_tell_make_rooms_unknown() {
        for source in [
            r#"let t = "room:" + data.room; emit(t, "e", 1);"#,
            r#"emit(data.target, "e", 1);"#,
            r#"emit(`room:${data.room}`, "e", 1);"#,
            r#"fn send(r) { emit(r, "e", 1) } send("room:a");"#,
            r#"let f = Fn("emit"); f.call("room:a", "e", 1);"#,
            r#"call(Fn("emit"), "room:a", "e", 1);"#,
            r#""room:a".emit("e", 1);"#,
        ] {
            assert_eq!(rooms(source), None, "{source}");
        }
    }
}
