//! Where a delivery goes, once every template is filled in, and the target grammar that
//! packs (`to:`) and scripts (`emit(target, …)`) share.

use std::fmt;

/// A resolved target, as deliveries travel between nodes. `sender` is not among them:
/// it is resolved to the sender's `conn:` when the delivery is made, so what travels
/// means the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    None,
    All,
    Room(String),
    User(String),
    Conn(String),
}

/// The kind a target text names, and the name after its colon (empty for the kinds
/// that take none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    None,
    Sender,
    All,
    Room,
    User,
    Conn,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetSyntaxError {
    #[error("unknown target `{0}`: use sender, all, none, room:<name>, user:<id> or conn:<id>")]
    UnknownKind(String),
    #[error("target `{0}` needs a name after the colon")]
    EmptyName(String),
}

/// The grammar shared by pack targets and script targets: `none`, `sender`, `all`, or
/// `room:`/`user:`/`conn:` followed by a non-empty name.
pub fn split(text: &str) -> Result<(TargetKind, &str), TargetSyntaxError> {
    let (kind, name) = match text.split_once(':') {
        None => {
            return match text {
                "none" => Ok((TargetKind::None, "")),
                "sender" => Ok((TargetKind::Sender, "")),
                "all" => Ok((TargetKind::All, "")),
                "room" | "user" | "conn" => Err(TargetSyntaxError::EmptyName(text.into())),
                _ => Err(TargetSyntaxError::UnknownKind(text.into())),
            };
        }
        Some(split) => split,
    };
    let kind = match kind {
        "room" => TargetKind::Room,
        "user" => TargetKind::User,
        "conn" => TargetKind::Conn,
        _ => return Err(TargetSyntaxError::UnknownKind(text.into())),
    };
    if name.is_empty() {
        return Err(TargetSyntaxError::EmptyName(text.into()));
    }
    Ok((kind, name))
}

impl Target {
    /// A target of a kind with its name; `sender` becomes the sender's connection.
    pub fn of(kind: TargetKind, name: String, sender: &str) -> Self {
        match kind {
            TargetKind::None => Self::None,
            TargetKind::Sender => Self::Conn(sender.to_string()),
            TargetKind::All => Self::All,
            TargetKind::Room => Self::Room(name),
            TargetKind::User => Self::User(name),
            TargetKind::Conn => Self::Conn(name),
        }
    }

    /// A target a script computed (`emit("room:" + r, …)`): no templates, just a name.
    pub fn parse(text: &str, sender: &str) -> Result<Self, TargetSyntaxError> {
        let (kind, name) = split(text)?;
        Ok(Self::of(kind, name.to_string(), sender))
    }

    /// A target read back from the wire, where `sender` never appears.
    pub fn parse_resolved(text: &str) -> Option<Self> {
        match split(text).ok()? {
            (TargetKind::Sender, _) => None,
            (kind, name) => Some(Self::of(kind, name.to_string(), "")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::All => f.write_str("all"),
            Self::Room(n) => write!(f, "room:{n}"),
            Self::User(n) => write!(f, "user:{n}"),
            Self::Conn(n) => write!(f, "conn:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_resolves_to_the_senders_connection_and_never_travels() {
        let me = "n1-7";
        assert_eq!(
            Target::parse("sender", me).unwrap(),
            Target::Conn("n1-7".into())
        );
        assert_eq!(Target::parse_resolved("sender"), None);
        assert_eq!(
            Target::parse_resolved("room:a:b"),
            Some(Target::Room("a:b".into()))
        );
        assert!(matches!(
            Target::parse("rooms:x", me),
            Err(TargetSyntaxError::UnknownKind(_))
        ));
        assert!(matches!(
            Target::parse("room:", me),
            Err(TargetSyntaxError::EmptyName(_))
        ));
    }
}
