//! API keys: who may call `/api`, and with which scopes.
//!
//! A key is configured as `NAME=SECRET[:scope,scope]` (`--api-key`, repeatable, or one
//! per line of the file `WSS_API_KEYS_FILE`, `#` starting a comment). Scopes are
//! `publish` (send API events), `read` (rooms, users, nodes, history, stats) and `admin`
//! (disconnects; the dashboard); without any, a key has all three.
//!
//! Secrets are never kept or compared as they are: each is hashed (SHA-256) when it is
//! configured, a presented secret is hashed the same way, and the digests are compared
//! in constant time against every key (no early exit), so response timing tells an
//! attacker neither which bytes of a guess were right nor how long a secret is. Nothing
//! here prints a secret: [`ApiKey`]'s `Debug` shows its name and scopes only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Publish,
    Read,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Publish, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Shortest secret accepted: shorter ones can be guessed.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest key name: it becomes `conn.id` (`api:<name>`) and a Redis key part.
const MAX_NAME_LEN: usize = 64;
/// Most keys one server takes (each request is compared against all of them).
const MAX_KEYS: usize = 1_000;

/// One configured key: its name, scopes and the digest of its secret.
pub struct ApiKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    digest: [u8; 32],
}

impl ApiKey {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A `--api-key` value as given on the command line, secret included: its `Debug`
/// shows the name only, so printing the parsed arguments prints no secret.
#[derive(Clone)]
pub struct KeySpec(String);

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.split_once('=').map_or("?", |(name, _)| name);
        write!(f, "KeySpec({name}=…)")
    }
}

impl std::str::FromStr for KeySpec {
    type Err = std::convert::Infallible;
    /// Checked later, by [`ApiKeys::load`]: the argument parser would quote the whole
    /// value (secret included) in its error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(KeySpec(s.to_string()))
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Why configured keys are refused. No message quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("an API key is NAME=SECRET[:scope,scope]")]
    Syntax,
    #[error("API key name `{0}`: use 1 to {max} letters, digits, `_`, `-` or `.`", max = MAX_NAME_LEN)]
    Name(String),
    #[error("API key `{name}`: unknown scope `{scope}` (scopes are publish, read, admin; a secret cannot contain `:`)")]
    Scope { name: String, scope: String },
    #[error("API key `{0}`: the secret must be at least {min} characters (e.g. `openssl rand -hex 24`)", min = MIN_SECRET_LEN)]
    ShortSecret(String),
    #[error("API key `{0}`: the secret cannot contain spaces or control characters")]
    SecretCharacters(String),
    #[error("reading the API keys file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the keys file (counted from 1) that is refused.
    #[error("{}:{line}: {source}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        source: Box<KeyError>,
    },
    #[error("more than {max} API keys", max = MAX_KEYS)]
    TooMany,
    /// `from`: `--api-key` or `file:line`.
    #[error("{from}: API key name `{name}` is used twice")]
    NameTwice { from: String, name: String },
    #[error("{from}: API key `{name}` has the same secret as another key")]
    SecretTwice { from: String, name: String },
}

/// `NAME=SECRET[:scope,scope]`. Errors never quote the secret.
fn parse_entry(entry: &str) -> Result<ApiKey, KeyError> {
    let (name, rest) = entry.split_once('=').ok_or(KeyError::Syntax)?;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(KeyError::Name(name.into()));
    }
    let (secret, scopes) = match rest.rsplit_once(':') {
        Some((secret, scopes)) => {
            let mut parsed = Vec::new();
            for word in scopes.split(',').map(str::trim) {
                let scope = Scope::parse(word).ok_or_else(|| KeyError::Scope {
                    name: name.into(),
                    scope: word.into(),
                })?;
                if !parsed.contains(&scope) {
                    parsed.push(scope);
                }
            }
            (secret, parsed)
        }
        None => (rest, Scope::ALL.to_vec()),
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::ShortSecret(name.into()));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::SecretCharacters(name.into()));
    }
    let mut scopes = scopes;
    scopes.sort();
    Ok(ApiKey {
        name: name.to_string(),
        scopes,
        digest: digest(secret.as_bytes()),
    })
}

/// Every configured key. Empty: the API is off (`/api` answers 404).
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<Arc<ApiKey>>,
}

impl ApiKeys {
    /// Keys from the command line and, if given, a keys file. Names must be unique, and
    /// so must secrets (a request must name one key).
    pub fn load(specs: &[KeySpec], file: Option<&Path>) -> Result<Self, KeyError> {
        let mut entries: Vec<(String, ApiKey)> = Vec::new();
        for spec in specs {
            entries.push(("--api-key".into(), parse_entry(&spec.0)?));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::ReadFile {
                path: path.to_path_buf(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = parse_entry(line).map_err(|e| KeyError::Line {
                    path: path.to_path_buf(),
                    line: n + 1,
                    source: Box::new(e),
                })?;
                entries.push((format!("{}:{}", path.display(), n + 1), key));
            }
        }
        if entries.len() > MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        let mut keys: Vec<Arc<ApiKey>> = Vec::with_capacity(entries.len());
        for (from, key) in entries {
            if keys.iter().any(|k| k.name == key.name) {
                return Err(KeyError::NameTwice {
                    from,
                    name: key.name,
                });
            }
            if keys.iter().any(|k| bool::from(k.digest.ct_eq(&key.digest))) {
                return Err(KeyError::SecretTwice {
                    from,
                    name: key.name,
                });
            }
            keys.push(Arc::new(key));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key whose secret this is. Every key is compared, whatever matched earlier.
    pub fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(key.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> KeySpec {
        s.parse().expect("a valid key")
    }

    #[test]
    fn entries_name_scopes_and_default_to_all() {
        let keys = ApiKeys::load(
            &[
                spec("backend=0123456789abcdef0123"),
                spec("ops=fedcba9876543210fedc:read,admin"),
            ],
            None,
        )
        .expect("keys");
        let backend = keys.find("0123456789abcdef0123").expect("found");
        assert_eq!(backend.name, "backend");
        assert_eq!(backend.scopes, Scope::ALL);
        let ops = keys.find("fedcba9876543210fedc").expect("found");
        assert_eq!(ops.scopes, [Scope::Read, Scope::Admin]);
        assert!(keys.find("fedcba9876543210fedd").is_none());
        assert!(keys.find("").is_none());
    }

    #[test]
    fn bad_entries_are_refused_without_quoting_the_secret() {
        for (entry, says) in [
            ("noequals", "NAME=SECRET"),
            ("a b=0123456789abcdef0", "name"),
            ("k=short", "at least 16"),
            ("k=0123456789abcdef0:write", "unknown scope `write`"),
        ] {
            let err = ApiKeys::load(&[spec(entry)], None)
                .expect_err(entry)
                .to_string();
            assert!(err.contains(says), "{entry}: {err}");
            assert!(!err.contains("0123456789abcdef0"), "{err}");
        }
        let twice = ApiKeys::load(
            &[spec("a=0123456789abcdef0"), spec("b=0123456789abcdef0")],
            None,
        );
        assert!(twice
            .expect_err("same secret")
            .to_string()
            .contains("same secret"));
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let keys = ApiKeys::load(&[spec("k=0123456789abcdef0123:read")], None).expect("keys");
        let shown = format!("{keys:?} {:?}", spec("k=0123456789abcdef0123:read"));
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(shown.contains("\"k\""), "{shown}");
    }

    #[test]
    fn a_keys_file_has_comments_and_line_numbers() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# backends\nbackend=0123456789abcdef0123:publish\n\nbad=short\n",
        )
        .expect("write");
        let err = ApiKeys::load(&[], Some(&path))
            .expect_err("bad line")
            .to_string();
        assert!(err.ends_with(":4: API key `bad`: the secret must be at least 16 characters (e.g. `openssl rand -hex 24`)"), "{err}");
        std::fs::write(&path, "# backends\nbackend=0123456789abcdef0123:publish\n").expect("write");
        let keys = ApiKeys::load(&[], Some(&path)).expect("keys");
        assert_eq!(keys.len(), 1);
    }
}
