//! A client that checks its rooms' streams frame by frame, as the client library does:
//! each room's offsets follow one another from its `$joined`, and every break is one
//! the server announced (`$gap`, a resume `recovered: false`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Node;
use crate::support::client::Client;

/// What a client knows of one room: its epoch and the last offset it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// A client that keeps its rooms' positions and every delivery it got, and fails the
/// test at the first offset that does not follow the one before.
pub struct Tracked {
    pub client: Client,
    pub name: String,
    pub positions: BTreeMap<String, Position>,
    /// Per room: `(offset, message id)` in arrival order.
    pub got: BTreeMap<String, Vec<(u64, String)>>,
    /// Rooms whose stream was broken on purpose by the server (`recovered: false`, `$gap`).
    pub flagged: Vec<(String, u64)>,
}

impl Tracked {
    pub async fn connect(node: &Node, name: &str) -> Tracked {
        let mut client = node.connect().await;
        client.membership_inline = true;
        Tracked {
            client,
            name: name.to_string(),
            positions: BTreeMap::new(),
            got: BTreeMap::new(),
            flagged: Vec::new(),
        }
    }

    /// Apply one frame; returns it when it is not one this tracker consumes.
    pub fn apply(&mut self, frame: Value) -> Option<Value> {
        match frame["event"].as_str() {
            Some("$joined") => {
                let room = frame["data"]["room"].as_str().expect("room").to_string();
                if let (Some(epoch), Some(offset)) = (
                    frame["data"]["epoch"].as_str(),
                    frame["data"]["offset"].as_u64(),
                ) {
                    self.positions.insert(
                        room,
                        Position {
                            epoch: epoch.to_string(),
                            offset,
                        },
                    );
                }
                None
            }
            Some("$gap") => {
                let room = frame["data"]["room"].as_str().expect("room").to_string();
                let offset = frame["data"]["offset"].as_u64().expect("offset");
                self.flagged.push((room.clone(), offset));
                self.positions.insert(
                    room,
                    Position {
                        epoch: frame["data"]["epoch"].as_str().expect("epoch").to_string(),
                        offset,
                    },
                );
                None
            }
            Some("say") => {
                let room = frame["room"]
                    .as_str()
                    .expect("a room with history")
                    .to_string();
                let offset = frame["offset"].as_u64().expect("an offset");
                let id = frame["data"]["id"].as_str().expect("id").to_string();
                let position = self
                    .positions
                    .get_mut(&room)
                    .unwrap_or_else(|| panic!("{}: delivery before $joined: {frame}", self.name));
                assert_eq!(
                    offset,
                    position.offset + 1,
                    "{}: room {room} went from offset {} to {offset} ({frame})",
                    self.name,
                    position.offset
                );
                position.offset = offset;
                self.got.entry(room).or_default().push((offset, id));
                None
            }
            _ => Some(frame),
        }
    }

    pub async fn join(&mut self, room: &str) {
        let ack = self.client.call("join", json!({ "room": room })).await;
        assert_eq!(ack["ok"], true, "{ack}");
        self.drain_backlog();
        assert!(
            self.positions.contains_key(room),
            "{}: no $joined for {room}",
            self.name
        );
    }

    /// Apply the frames `call`/`resume` set aside while waiting for their ack.
    pub fn drain_backlog(&mut self) {
        while let Some(frame) = self.client.take_backlog() {
            if let Some(other) = self.apply(frame.clone()) {
                panic!("{}: unexpected frame {other}", self.name);
            }
        }
    }

    /// Keep reading until every room's position reached `heads` (bounded).
    pub async fn catch_up(&mut self, heads: &BTreeMap<String, u64>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let behind: Vec<_> = heads
                .iter()
                .filter(|(room, head)| self.positions.get(*room).is_some_and(|p| p.offset < **head))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not catch up: behind in {behind:?}, at {:?}",
                self.name,
                self.positions
            );
            if let Some(frame) = self.client.try_recv(Duration::from_millis(200)).await {
                if let Some(other) = self.apply(frame) {
                    panic!("{}: unexpected frame {other}", self.name);
                }
            }
        }
    }

    /// Drop the socket without a close and resume on `node`; returns the ack's rooms.
    pub async fn resume_on(&mut self, node: &Node) -> Value {
        let session = self.client.session();
        let rooms: serde_json::Map<String, Value> = self
            .positions
            .iter()
            .map(|(room, p)| {
                (
                    room.clone(),
                    json!({ "epoch": p.epoch, "offset": p.offset }),
                )
            })
            .collect();
        let mut client = node.connect().await;
        client.membership_inline = true;
        let old = std::mem::replace(&mut self.client, client);
        old.drop_abruptly();
        let ack = self.client.resume(&session, Value::Object(rooms)).await;
        assert_eq!(ack["ok"], true, "{}: resume failed: {ack}", self.name);
        // `$joined` before the replay; a room not recovered restarts at its `$joined`.
        let report = ack["data"]["rooms"].clone();
        for (room, r) in report.as_object().expect("rooms") {
            if r["recovered"] != true {
                let at = self.positions.get(room).map_or(0, |p| p.offset);
                self.flagged.push((room.clone(), at));
            }
        }
        self.drain_backlog();
        report
    }
}
