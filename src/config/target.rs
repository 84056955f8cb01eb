//! Targets as a pack writes them (`to:`, `keys:`), with `{{…}}` templates filled in per
//! message into a [`Target`].

use std::fmt;

use serde_json::Value;

use crate::delivery::target::{split, TargetKind, TargetSyntaxError};
use crate::delivery::Target;

/// A target as written in a pack: the kind is fixed, the name may hold templates.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    None,
    Sender,
    All,
    Room(Template),
    User(Template),
    Conn(Template),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

/// A computed part of a key in a skeleton: what it reads, between `\u{1}`s.
pub fn placeholder(path: &str) -> String {
    format!("\u{1}{path}\u{1}")
}

/// A computed part nothing is known about.
pub const OPAQUE: &str = "\u{1}?\u{1}";

/// Where a state key lands on a Redis Cluster, as far as its skeleton (a template's, or
/// a script's key expression's) tells.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeySlot {
    /// The slot of this hash tag: the key's `{tag}` (placeholders standing for
    /// themselves), or a whole literal key, which is its own tag without one.
    Tag(String),
    /// Computed without a tag, led by this literal: keys of one such family may be
    /// one key; keys of two families, or of a family and a tag, are not.
    Family(String),
}

impl KeySlot {
    /// `None` when nothing can be said: a tag or a lead that is computed.
    pub fn of_skeleton(skeleton: &str) -> Option<Self> {
        if let Some(start) = skeleton.find('{') {
            let rest = &skeleton[start + 1..];
            if let Some(end) = rest.find('}').filter(|end| *end > 0) {
                let tag = &rest[..end];
                return (!tag.contains(OPAQUE)).then(|| Self::Tag(tag.to_string()));
            }
        }
        match skeleton.find('\u{1}') {
            None => Some(Self::Tag(skeleton.to_string())),
            Some(0) => None,
            Some(lead) => Some(Self::Family(skeleton[..lead].to_string())),
        }
    }
}

impl fmt::Display for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let readable = |s: &str| {
            s.split('\u{1}')
                .enumerate()
                .map(|(i, part)| {
                    if i % 2 == 1 {
                        format!("<{part}>")
                    } else {
                        part.to_string()
                    }
                })
                .collect::<String>()
        };
        match self {
            Self::Tag(tag) => write!(f, "`{{{}}}`", readable(tag)),
            Self::Family(lead) => write!(f, "`{}…`", readable(lead)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Data(Vec<String>),
    ConnId,
    ConnUser,
}

/// What a template may read at delivery time.
pub struct TemplateContext<'a> {
    pub data: &'a Value,
    pub conn_id: &'a str,
    pub conn_user: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Syntax(#[from] TargetSyntaxError),
    #[error("unclosed `{{{{` in `{0}`")]
    Unclosed(String),
    #[error("unknown template `{{{{{0}}}}}`: use {{{{data.<field>}}}}, {{{{conn.id}}}} or {{{{conn.user}}}}")]
    UnknownField(String),
    #[error("`{path}` is missing from the payload, so the target cannot be resolved")]
    MissingData { path: String },
    #[error("`{path}` must be a string or number to name a target")]
    NotScalar { path: String },
    #[error("the connection has no user, so `{{{{conn.user}}}}` cannot be resolved")]
    NoUser,
}

impl TargetSpec {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        Ok(match split(text)? {
            (TargetKind::None, _) => Self::None,
            (TargetKind::Sender, _) => Self::Sender,
            (TargetKind::All, _) => Self::All,
            (TargetKind::Room, name) => Self::Room(Template::parse(name)?),
            (TargetKind::User, name) => Self::User(Template::parse(name)?),
            (TargetKind::Conn, name) => Self::Conn(Template::parse(name)?),
        })
    }

    /// The target for one message; `sender` becomes the sender's connection.
    pub fn resolve(&self, cx: &TemplateContext<'_>) -> Result<Target, TargetError> {
        Ok(match self {
            Self::None => Target::None,
            Self::Sender => Target::Conn(cx.conn_id.to_string()),
            Self::All => Target::All,
            Self::Room(t) => Target::Room(t.render(cx)?),
            Self::User(t) => Target::User(t.render(cx)?),
            Self::Conn(t) => Target::Conn(t.render(cx)?),
        })
    }

    /// The kind of recipient, as written before the `:`: what `wss-engine diff` compares
    /// first (a message for a room going to a user instead reaches someone else).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sender => "sender",
            Self::All => "all",
            Self::Room(_) => "room",
            Self::User(_) => "user",
            Self::Conn(_) => "conn",
        }
    }

    /// Whether two targets reach the same recipients for every message: spacing inside
    /// `{{ … }}` does not count, and `sender` is `conn:{{conn.id}}`.
    pub fn same_recipients(&self, other: &TargetSpec) -> bool {
        let is_sender = |t: &TargetSpec| match t {
            Self::Sender => true,
            Self::Conn(t) => t.parts == [Part::ConnId],
            _ => false,
        };
        match (self, other) {
            (Self::Room(a), Self::Room(b))
            | (Self::User(a), Self::User(b))
            | (Self::Conn(a), Self::Conn(b)) => a.parts == b.parts,
            (a, b) if is_sender(a) && is_sender(b) => true,
            (a, b) => a == b,
        }
    }

    /// Whether the target reads `{{conn.user}}`.
    pub fn reads_conn_user(&self) -> bool {
        match self {
            Self::Room(t) | Self::User(t) | Self::Conn(t) => t.reads_conn_user(),
            _ => false,
        }
    }

    /// Every `{{data.…}}` path the target reads, for cross-checks against the schema.
    pub fn data_paths(&self) -> Vec<&[String]> {
        match self {
            Self::Room(t) | Self::User(t) | Self::Conn(t) => t.data_paths(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Sender => f.write_str("sender"),
            Self::All => f.write_str("all"),
            Self::Room(t) => write!(f, "room:{}", t.source),
            Self::User(t) => write!(f, "user:{}", t.source),
            Self::Conn(t) => write!(f, "conn:{}", t.source),
        }
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(mut start) = rest.find("{{") {
            // `{{{data.x}}}` is a literal `{` then a template: how a Redis Cluster hash
            // tag (`poll:{{{data.id}}}:votes` → `poll:{42}:votes`) is written.
            while rest[start + 2..].starts_with('{') {
                start += 1;
            }
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TargetError::Unclosed(text.into()))?;
            let expr = after[..end].trim();
            parts.push(parse_field(expr)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self {
            parts,
            source: text.to_string(),
        })
    }

    pub fn render(&self, cx: &TemplateContext<'_>) -> Result<String, TargetError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ConnId => out.push_str(cx.conn_id),
                Part::ConnUser => out.push_str(cx.conn_user.ok_or(TargetError::NoUser)?),
                Part::Data(path) => {
                    let dotted = || format!("data.{}", path.join("."));
                    let mut value = cx.data;
                    for segment in path {
                        value = match value {
                            Value::Object(map) => map.get(segment),
                            Value::Array(items) => {
                                segment.parse::<usize>().ok().and_then(|i| items.get(i))
                            }
                            _ => None,
                        }
                        .ok_or_else(|| TargetError::MissingData { path: dotted() })?;
                    }
                    match value {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        _ => return Err(TargetError::NotScalar { path: dotted() }),
                    }
                }
            }
        }
        Ok(out)
    }

    /// The Redis Cluster hash tag of the keys this template renders to, with each
    /// `{{…}}` standing for itself: two templates with equal tags land in one slot for
    /// any payload. `None` when the key has no tag (it hashes as a whole).
    pub fn hash_tag(&self) -> Option<String> {
        let skeleton = self.skeleton();
        let start = skeleton.find('{')?;
        let rest = &skeleton[start + 1..];
        let end = rest.find('}')?;
        (end > 0).then(|| rest[..end].to_string())
    }

    /// The template with each `{{…}}` a brace-free placeholder (`\u{1}data.id\u{1}`), so
    /// only literal braces count as hash tags.
    pub fn skeleton(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.clone(),
                Part::Data(path) => placeholder(&format!("data.{}", path.join("."))),
                Part::ConnId => placeholder("conn.id"),
                Part::ConnUser => placeholder("conn.user"),
            })
            .collect()
    }

    /// Every name the template can render, as a `rooms:`-style glob: each `{{…}}` is
    /// `*`. A literal `*` stays `*`, which only widens the set (the checks that use
    /// this then warn less, never wrongly).
    pub fn glob(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                Part::Data(_) | Part::ConnId | Part::ConnUser => "*",
            })
            .collect()
    }

    /// The one name the template renders when it has no `{{…}}`.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether it reads `{{conn.user}}` (which an anonymous or API caller lacks).
    pub fn reads_conn_user(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::ConnUser))
    }

    pub fn data_paths(&self) -> Vec<&[String]> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Data(path) => Some(path.as_slice()),
                _ => None,
            })
            .collect()
    }
}

fn parse_field(expr: &str) -> Result<Part, TargetError> {
    match expr {
        "conn.id" => return Ok(Part::ConnId),
        "conn.user" => return Ok(Part::ConnUser),
        _ => {}
    }
    match expr.strip_prefix("data.") {
        Some(path)
            if !path.is_empty()
                && path.split('.').all(|s| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                }) =>
        {
            Ok(Part::Data(path.split('.').map(str::to_string).collect()))
        }
        _ => Err(TargetError::UnknownField(expr.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cx(data: &Value) -> TemplateContext<'_> {
        TemplateContext {
            data,
            conn_id: "c1",
            conn_user: Some("alice"),
        }
    }

    #[test]
    fn renders_data_and_conn_fields() {
        let spec = TargetSpec::parse("room:{{data.room}}-{{conn.user}}").unwrap();
        let data = json!({"room": "lobby"});
        assert_eq!(
            spec.resolve(&cx(&data)).unwrap(),
            Target::Room("lobby-alice".into())
        );
    }

    #[test]
    fn rejects_unknown_roots_and_kinds() {
        assert_eq!(
            TargetSpec::parse("room:{{date.room}}"),
            Err(TargetError::UnknownField("date.room".into()))
        );
        assert!(matches!(
            TargetSpec::parse("rooms:x"),
            Err(TargetError::Syntax(TargetSyntaxError::UnknownKind(_)))
        ));
        assert!(matches!(
            TargetSpec::parse("room:{{data.x"),
            Err(TargetError::Unclosed(_))
        ));
    }

    #[test]
    fn triple_braces_are_a_literal_brace_around_a_template() {
        let t = Template::parse("poll:{{{data.id}}}:votes").unwrap();
        let data = json!({"id": 42});
        assert_eq!(t.render(&cx(&data)).unwrap(), "poll:{42}:votes");
        assert_eq!(t.hash_tag().as_deref(), Some("\u{1}data.id\u{1}"));
        assert_eq!(
            Template::parse("poll:{{{data.id}}}").unwrap().hash_tag(),
            t.hash_tag()
        );
        assert_eq!(
            Template::parse("poll:{{data.id}}").unwrap().hash_tag(),
            None
        );
        assert_eq!(
            Template::parse("{fixed}:{{data.id}}")
                .unwrap()
                .hash_tag()
                .as_deref(),
            Some("fixed")
        );
    }

    #[test]
    fn glob_and_literal_of_a_template() {
        let t = Template::parse("doc:{{data.id}}:{{conn.user}}").unwrap();
        assert_eq!(t.glob(), "doc:*:*");
        assert_eq!(t.literal(), None);
        let t = Template::parse("lobby").unwrap();
        assert_eq!(t.glob(), "lobby");
        assert_eq!(t.literal(), Some("lobby"));
    }

    #[test]
    fn missing_data_is_an_error_not_an_empty_name() {
        let spec = TargetSpec::parse("room:{{data.room}}").unwrap();
        assert!(matches!(
            spec.resolve(&cx(&json!({}))),
            Err(TargetError::MissingData { .. })
        ));
    }
}
