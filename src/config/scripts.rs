//! Scripts of a pack: inline or `{ file: … }`, compiled on the engine the server runs
//! them on, with compile errors placed at their line in the YAML or `.rhai` file.

use std::path::Path;

use super::decode::{check_keys, Loader};
use super::yaml::{Node, NodeKind, Pos};
use super::ScriptDef;

impl Loader<'_> {
    /// Compile a script; returns it with its source text.
    pub(super) fn script(
        &mut self,
        file: &Path,
        text: &str,
        node: &Node,
    ) -> Option<(ScriptDef, String)> {
        let (source, script_file, first_line, col_offset) = match &node.kind {
            NodeKind::Str(source) => {
                let (line, col) = inline_script_origin(text, source, node.pos);
                (source.clone(), file.to_path_buf(), line, col)
            }
            NodeKind::Map(_) => {
                check_keys(&mut self.diags, file, node, &["file"], &[], "script");
                let Some(path_node) = node.get("file") else {
                    self.diags.error(
                        file,
                        node.pos,
                        "`script` must be Rhai source or `{ file: path.rhai }`",
                    );
                    return None;
                };
                let rel = self.string(file, path_node, "script.file")?;
                let path = file.parent().unwrap_or(Path::new(".")).join(rel);
                match std::fs::read_to_string(&path) {
                    Ok(source) => {
                        self.fingerprint.write(source.as_bytes());
                        (source, path, 1, 0)
                    }
                    Err(e) => {
                        self.diags.error(
                            file,
                            path_node.pos,
                            format!("script file `{}`: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.diags.error(
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
        match self.runtime.compile(&source) {
            Ok(ast) => Some((
                ScriptDef {
                    ast,
                    file: script_file,
                    first_line,
                },
                source,
            )),
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
                    self.diags
                        .error(&script_file, pos, format!("script: {}{hint}", e.message));
                }
                None
            }
        }
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
