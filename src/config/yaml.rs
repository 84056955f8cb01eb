//! A YAML document as an owned tree where every node knows its `line:col`.
//!
//! Packs are decoded by hand from this tree rather than through serde so that every
//! problem (unknown key, wrong type, bad value) can point at the exact node and the
//! loader can keep going after the first one.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own position so an unknown key can be pointed at.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// Why a YAML text could not be turned into a tree.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Deeper nesting than any sane pack needs; guards the recursive conversion below.
const MAX_DEPTH: usize = 128;

pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        pos: Pos {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: e.info().to_string(),
    })?;
    let mut docs = docs.into_iter();
    let first = docs.next();
    if let Some(second) = docs.next() {
        return Err(YamlError {
            pos: pos_of(&second),
            message: "a pack file holds one YAML document; remove the `---` separator".into(),
        });
    }
    first.map(|doc| convert(&doc, 0)).transpose()
}

fn pos_of(node: &MarkedYaml) -> Pos {
    Pos {
        line: node.span.start.line(),
        col: node.span.start.col() + 1,
    }
}

fn convert(node: &MarkedYaml, depth: usize) -> Result<Node, YamlError> {
    let pos = pos_of(node);
    let fail = |message: &str| YamlError {
        pos,
        message: message.to_string(),
    };
    if depth > MAX_DEPTH {
        return Err(fail("YAML nested too deeply"));
    }
    let kind = match &node.data {
        YamlData::Value(scalar) => match scalar {
            Scalar::Null => NodeKind::Null,
            Scalar::Boolean(b) => NodeKind::Bool(*b),
            Scalar::Integer(i) => NodeKind::Int(*i),
            Scalar::FloatingPoint(f) => NodeKind::Float(f.into_inner()),
            Scalar::String(s) => NodeKind::Str(s.to_string()),
        },
        YamlData::Representation(text, _, _) => NodeKind::Str(text.to_string()),
        YamlData::Sequence(items) => NodeKind::Seq(
            items
                .iter()
                .map(|item| convert(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (key, value) in map.iter() {
                let name = match &key.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    YamlData::Value(Scalar::Null) => "null".to_string(),
                    YamlData::Representation(text, _, _) => text.to_string(),
                    _ => {
                        return Err(YamlError {
                            pos: pos_of(key),
                            message: "mapping keys must be plain strings".into(),
                        })
                    }
                };
                entries.push((
                    Key {
                        name,
                        pos: pos_of(key),
                    },
                    convert(value, depth + 1)?,
                ));
            }
            NodeKind::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner, depth + 1),
        YamlData::Alias(_) => {
            return Err(fail("YAML aliases (`*name`) are not supported in packs"))
        }
        YamlData::BadValue => return Err(fail("unreadable YAML value")),
    };
    Ok(Node { pos, kind })
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            NodeKind::Int(i) => Some(i as f64),
            NodeKind::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The same data as JSON; YAML floats that JSON cannot hold (NaN, inf) become null.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Follow a JSON Pointer (as produced by a schema validator) to the node it names.
    pub fn at_pointer(&self, pointer: &str) -> Option<&Node> {
        let mut node = self;
        for raw in pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            node = match &node.kind {
                NodeKind::Map(_) => node.get(&token)?,
                NodeKind::Seq(items) => items.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let node = parse("a:\n  b: 1\n").unwrap().unwrap();
        let (key, value) = &node.as_map().unwrap()[0];
        assert_eq!((key.pos.line, key.pos.col), (1, 1));
        let inner = &value.as_map().unwrap()[0];
        assert_eq!((inner.0.pos.line, inner.0.pos.col), (2, 3));
    }

    /// Inline script positions rely on this (`inline_script_origin`): saphyr marks a
    /// block scalar at its first content character, not at its `|`, and keeps leading
    /// blank lines in the text.
    #[test]
    fn block_scalar_starts_at_its_first_content_character() {
        let node = parse("s: |\n  one\n  two\n").unwrap().unwrap();
        let value = node.get("s").unwrap();
        assert_eq!(value.as_str(), Some("one\ntwo\n"));
        assert_eq!((value.pos.line, value.pos.col), (2, 3));

        let node = parse("s: |\n\n  one\n").unwrap().unwrap();
        let value = node.get("s").unwrap();
        assert_eq!(value.as_str(), Some("\none\n"));
        assert_eq!((value.pos.line, value.pos.col), (3, 3));
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
    }

    #[test]
    fn pointer_lookup() {
        let node = parse("a:\n  - x: 1\n").unwrap().unwrap();
        assert_eq!(node.at_pointer("/a/0/x").unwrap().pos.line, 2);
    }
}
