//! Frame transcripts: ```` ```text frames ```` blocks, run against a server of this
//! process.
//!
//! Each line is one frame: `→ {…}` a client sends it, `← {…}` the client receives it
//! next. A name before the arrow (`A → …`, `B ← …`) says which client, when there are
//! several; each connects when it first appears. In a received frame, `"…"` stands for
//! any value and `"<name>"` for any value that is then called `name`: a later frame
//! that writes `"<name>"` must carry the same value, and a sent frame carries that
//! value there (a session id into a `$resume`). A client's `$welcome` is matched when
//! its first received line shows one, and passed over otherwise. `← …` lets any frames pass until the
//! next one shown; `→ close` closes the client's connection (its name connects anew
//! when used again). A sent line that is not JSON is sent as it is (`bad_json`).
//!
//! The server serves `events/` unless the block says `pack=DIR` (a directory of the
//! repository) or `pack=page` (the page's last ```` ```yaml pack ```` block above it).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use crate::markdown::{Block, Page};
use crate::support::client::Client;
use crate::support::inprocess::{start_dir, TestServer};
use crate::support::{root, WAIT};

/// One line of a transcript.
enum Line {
    Send(String, String),
    Close(String),
    Expect(String, Value),
    Skip(String),
}

fn parse_line(text: &str) -> Option<Result<Line, String>> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let found = ['→', '←'].iter().find_map(|arrow| {
        let (before, after) = text.split_once(*arrow)?;
        let before = before.trim();
        let named = before.is_empty() || before.chars().all(|c| c.is_alphanumeric() || c == '_');
        named.then(|| (before.to_string(), *arrow, after.trim().to_string()))
    });
    let Some((who, arrow, rest)) = found else {
        return Some(Err(format!(
            "`{text}` is not a frame line (`→ …`, `← …`, `A → …`)"
        )));
    };
    Some(Ok(match (arrow, rest.as_str()) {
        ('→', "close") => Line::Close(who),
        ('→', _) => Line::Send(who, rest),
        (_, "…") | (_, "...") => Line::Skip(who),
        _ => match serde_json::from_str(&rest) {
            Ok(frame) => Line::Expect(who, frame),
            Err(e) => return Some(Err(format!("a received frame is not JSON ({e}): {rest}"))),
        },
    }))
}

/// Whether `actual` has the shape `expected` shows; new `<name>`s go into `names`.
fn matches(expected: &Value, actual: &Value, names: &mut HashMap<String, Value>) -> bool {
    match expected {
        Value::String(s) if s == "…" => true,
        Value::String(s) if placeholder(s).is_some() => {
            let name = placeholder(s).expect("a placeholder").to_string();
            match names.get(&name) {
                Some(known) => known == actual,
                None => {
                    names.insert(name, actual.clone());
                    true
                }
            }
        }
        Value::Object(e) => actual.as_object().is_some_and(|a| {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av, names)))
        }),
        Value::Array(e) => actual.as_array().is_some_and(|a| {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| matches(ev, av, names))
        }),
        other => other == actual,
    }
}

fn placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix('<')?.strip_suffix('>')?;
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == ' ' || c == '-'))
    .then_some(name)
}

/// `"<name>"`s of a frame to send, replaced by the values they stand for.
fn fill(frame: &mut Value, names: &HashMap<String, Value>) -> Result<(), String> {
    match frame {
        Value::String(s) => {
            if let Some(name) = placeholder(s) {
                *frame = names.get(name).cloned().ok_or_else(|| {
                    format!("`<{name}>` is sent before a received frame names it")
                })?;
            }
        }
        Value::Object(map) => {
            for v in map.values_mut() {
                fill(v, names)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                fill(v, names)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A client of the transcript and the `$welcome` it has not shown yet.
struct Peer {
    client: Client,
    welcome: Option<Value>,
    skipping: bool,
}

impl Peer {
    async fn connect(server: &TestServer) -> Peer {
        let mut client = server.connect().await;
        client.membership_inline = true;
        let welcome = Some(client.welcome.clone());
        Peer {
            client,
            welcome,
            skipping: false,
        }
    }

    async fn next(&mut self) -> Option<Value> {
        match self.welcome.take() {
            Some(welcome) => Some(welcome),
            None => self.client.try_recv(WAIT).await,
        }
    }
}

/// The pack directory a block's server serves, and the scratch directory it lives in.
fn pack_of(
    page: &Page,
    blocks: &[Block],
    block: &Block,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), String> {
    match block.mark_value("pack") {
        None => Ok((root().join("events"), None)),
        Some("page") => {
            let yaml = blocks
                .iter()
                .rfind(|b| b.line < block.line && b.lang == "yaml" && b.has("pack"))
                .ok_or_else(|| {
                    format!(
                        "{}: `pack=page`, but no ```yaml pack block above it",
                        page.at(block.line)
                    )
                })?;
            let scratch = crate::write_pack_beside_schemas(&yaml.body);
            Ok((scratch.path().join("pack"), Some(scratch)))
        }
        Some(dir) => {
            let path = root().join(dir);
            if !path.is_dir() {
                return Err(format!(
                    "{}: `pack={dir}` is not a directory of the repository",
                    page.at(block.line)
                ));
            }
            Ok((path, None))
        }
    }
}

/// Play one transcript against a fresh server; the first line that does not hold, or
/// `Ok`.
pub async fn run(page: &Page, blocks: &[Block], block: &Block) -> Result<(), String> {
    let (pack, _scratch) = pack_of(page, blocks, block)?;
    let server = start_dir(Path::new(&pack), |_| {}).await;
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    let mut names: HashMap<String, Value> = HashMap::new();
    for (i, text) in block.body.lines().enumerate() {
        let at = page.at(block.body_line(i));
        let line = match parse_line(text) {
            None => continue,
            Some(Err(e)) => return Err(format!("{at}: {e}")),
            Some(Ok(line)) => line,
        };
        match line {
            Line::Close(who) => {
                if let Some(peer) = peers.remove(&who) {
                    peer.client.close().await;
                }
            }
            Line::Send(who, text) => {
                let peer = peer(&mut peers, &server, &who).await;
                let text = match serde_json::from_str::<Value>(&text) {
                    Ok(mut frame) => {
                        fill(&mut frame, &names).map_err(|e| format!("{at}: {e}"))?;
                        frame.to_string()
                    }
                    Err(_) => text,
                };
                peer.client.send_text(text).await;
            }
            Line::Skip(who) => peer(&mut peers, &server, &who).await.skipping = true,
            Line::Expect(who, expected) => {
                let peer = peer(&mut peers, &server, &who).await;
                if expected["event"] != "$welcome" {
                    // A transcript that does not show the welcome starts after it.
                    peer.welcome = None;
                }
                let mut passed = Vec::new();
                loop {
                    let Some(actual) = peer.next().await else {
                        return Err(format!(
                            "{at}: {} waited {WAIT:?} for {expected} and got nothing{}",
                            client_name(&who),
                            seen(&passed)
                        ));
                    };
                    let mut tried = names.clone();
                    if matches(&expected, &actual, &mut tried) {
                        names = tried;
                        peer.skipping = false;
                        break;
                    }
                    if !peer.skipping {
                        return Err(format!(
                            "{at}: {} expected\n  {expected}\ngot\n  {actual}",
                            client_name(&who)
                        ));
                    }
                    passed.push(actual);
                }
            }
        }
    }
    for (_, peer) in peers {
        peer.client.close().await;
    }
    drop(server);
    Ok(())
}

fn client_name(who: &str) -> String {
    if who.is_empty() {
        "the client".into()
    } else {
        format!("client {who}")
    }
}

fn seen(frames: &[Value]) -> String {
    if frames.is_empty() {
        return String::new();
    }
    let list: Vec<String> = frames.iter().map(Value::to_string).collect();
    format!(" (after {})", list.join(", "))
}

async fn peer<'a>(
    peers: &'a mut BTreeMap<String, Peer>,
    server: &TestServer,
    who: &str,
) -> &'a mut Peer {
    if !peers.contains_key(who) {
        peers.insert(who.to_string(), Peer::connect(server).await);
    }
    peers.get_mut(who).expect("just inserted")
}
