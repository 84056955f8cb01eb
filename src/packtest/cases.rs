//! Pack test cases (`tests:` under an event), read from the pack's files.
//!
//! Only `wss-engine check` and `wss-engine test` read them: a served pack carries none.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::yaml::{self, Node, NodeKind};
use crate::config::{check_keys, pack_files, string_field, Diagnostics, Sender};
use crate::suggest::suggest;

/// A case of `wss-engine test`, as written under an event's `tests:`.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub state: Vec<(String, Value)>,
    /// Who sends: a client's connection (`conn`), or the API (`sender: api`).
    pub sender: Sender,
    pub conn: TestConn,
    pub send: Value,
    pub expect: Expectation,
}

#[derive(Debug, Clone, Default)]
pub struct TestConn {
    pub id: Option<String>,
    pub user: Option<String>,
    pub rooms: Vec<String>,
    pub claims: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub deliveries: Option<Vec<ExpectedDelivery>>,
    pub error: Option<String>,
    pub reply: Option<Value>,
    pub state: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
pub struct ExpectedDelivery {
    pub to: String,
    pub event: String,
    pub data: Option<Value>,
    /// The offset the delivery got in its room's stream (rooms with history only).
    pub offset: Option<u64>,
}

/// The cases of one event, in file order.
pub struct EventCases {
    pub event: String,
    pub cases: Vec<TestCase>,
}

/// Every `tests:` case of a pack, and every problem with them. Files that do not parse
/// are skipped: the pack's own diagnostics already name them.
pub fn load(dir: &Path) -> (Vec<EventCases>, Diagnostics) {
    let mut reader = Reader {
        diags: Diagnostics::default(),
    };
    let mut out = Vec::new();
    for file in pack_files(dir).unwrap_or_default() {
        let Ok(text) = crate::config::read_pack_file(&file) else {
            continue;
        };
        let Ok(Some(root)) = yaml::parse(&text) else {
            continue;
        };
        let Some(events) = root.get("events").and_then(Node::as_map) else {
            continue;
        };
        for (key, def) in events {
            if let Some(tests) = def.get("tests") {
                out.push(EventCases {
                    event: key.name.clone(),
                    cases: reader.tests(&file, tests),
                });
            }
        }
    }
    reader.diags.sort();
    (out, reader.diags)
}

struct Reader {
    diags: Diagnostics,
}

impl Reader {
    fn tests(&mut self, file: &Path, node: &Node) -> Vec<TestCase> {
        let NodeKind::Seq(items) = &node.kind else {
            self.diags
                .error(file, node.pos, "`tests` must be a list of cases");
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.test_case(file, item))
            .collect()
    }

    fn test_case(&mut self, file: &Path, node: &Node) -> Option<TestCase> {
        if node.as_map().is_none() {
            self.diags.error(
                file,
                node.pos,
                "a test case is a mapping with `name`, `send` and `expect`",
            );
            return None;
        }
        let misspelt = check_keys(
            &mut self.diags,
            file,
            node,
            &["name", "sender", "state", "conn", "send", "expect"],
            &[],
            "test case",
        );
        let name = match node.get("name") {
            Some(n) => string_field(&mut self.diags, file, n, "name")?.to_string(),
            None => {
                if !misspelt.contains(&"name") {
                    self.diags.error(file, node.pos, "test case needs a `name`");
                }
                return None;
            }
        };
        let state = node
            .get("state")
            .map(|n| self.state_map(file, n))
            .unwrap_or_default();
        let sender = node
            .get("sender")
            .map_or(Sender::Clients, |n| self.sender(file, n));
        let conn = node
            .get("conn")
            .map(|n| self.test_conn(file, n))
            .unwrap_or_default();
        if let (Sender::Api, Some(n)) = (sender, node.get("conn")) {
            self.diags.error(
                file,
                n.pos,
                "a case sent by the API has no connection (`conn.id` is `api:test`, no user, no rooms): remove `conn`",
            );
        }
        let send = node
            .get("send")
            .map(Node::to_json)
            .unwrap_or(Value::Object(Default::default()));
        let expect = match node.get("expect") {
            Some(n) => self.expectation(file, n)?,
            None => {
                if !misspelt.contains(&"expect") {
                    self.diags
                        .error(file, node.pos, format!("test `{name}` needs an `expect`"));
                }
                return None;
            }
        };
        Some(TestCase {
            name,
            file: file.to_path_buf(),
            line: node.pos.line,
            state,
            sender,
            conn,
            send,
            expect,
        })
    }

    fn sender(&mut self, file: &Path, node: &Node) -> Sender {
        match node.as_str() {
            Some("clients") => Sender::Clients,
            Some("api") => Sender::Api,
            other => {
                let hint = other
                    .and_then(|s| suggest(s, Sender::ALL.map(Sender::as_str)))
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_else(|| " (use `clients` or `api`)".into());
                self.diags
                    .error(file, node.pos, format!("unknown `sender`{hint}"));
                Sender::Clients
            }
        }
    }

    fn state_map(&mut self, file: &Path, node: &Node) -> Vec<(String, Value)> {
        match node.as_map() {
            Some(entries) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect(),
            None => {
                self.diags
                    .error(file, node.pos, "`state` must map keys to values");
                Vec::new()
            }
        }
    }

    fn test_conn(&mut self, file: &Path, node: &Node) -> TestConn {
        check_keys(
            &mut self.diags,
            file,
            node,
            &["id", "user", "rooms", "claims"],
            &[],
            "test conn",
        );
        let text = |n: Option<&Node>| n.and_then(Node::as_str).map(str::to_string);
        let rooms = match node.get("rooms").map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                self.diags
                    .error(file, node.pos, "`conn.rooms` must be a list of room names");
                Vec::new()
            }
            None => Vec::new(),
        };
        TestConn {
            id: text(node.get("id")),
            user: text(node.get("user")),
            rooms,
            claims: node
                .get("claims")
                .map_or(Value::Object(Default::default()), Node::to_json),
        }
    }

    fn expectation(&mut self, file: &Path, node: &Node) -> Option<Expectation> {
        if node.as_map().is_none() {
            self.diags
                .error(file, node.pos, "`expect` must be a mapping");
            return None;
        }
        check_keys(
            &mut self.diags,
            file,
            node,
            &["deliveries", "error", "reply", "state"],
            &[],
            "expect",
        );
        let deliveries = match node.get("deliveries") {
            None => None,
            Some(Node {
                kind: NodeKind::Seq(items),
                ..
            }) => {
                let mut out = Vec::new();
                for item in items {
                    check_keys(
                        &mut self.diags,
                        file,
                        item,
                        &["to", "event", "data", "offset"],
                        &[],
                        "expected delivery",
                    );
                    let offset = match item.get("offset") {
                        None => None,
                        Some(n) => match n.as_f64() {
                            Some(v) if v >= 0.0 && v.fract() == 0.0 => Some(v as u64),
                            _ => {
                                self.diags.error(
                                    file,
                                    n.pos,
                                    "`offset` is the delivery's position in its room's stream: a whole number (1 for a fresh room's first delivery)",
                                );
                                None
                            }
                        },
                    };
                    let (Some(to), Some(event)) = (
                        item.get("to").and_then(Node::as_str),
                        item.get("event").and_then(Node::as_str),
                    ) else {
                        self.diags.error(
                            file,
                            item.pos,
                            "an expected delivery needs `to` and `event`",
                        );
                        continue;
                    };
                    out.push(ExpectedDelivery {
                        to: to.into(),
                        event: event.into(),
                        data: item.get("data").map(Node::to_json),
                        offset,
                    });
                }
                Some(out)
            }
            Some(other) => {
                self.diags
                    .error(file, other.pos, "`deliveries` must be a list");
                None
            }
        };
        Some(Expectation {
            deliveries,
            error: node
                .get("error")
                .and_then(|n| string_field(&mut self.diags, file, n, "error"))
                .map(str::to_string),
            reply: node.get("reply").map(Node::to_json),
            state: node
                .get("state")
                .map(|n| self.state_map(file, n))
                .unwrap_or_default(),
        })
    }
}
