//! `wss-engine test`: run every event's `tests:` cases in-process on the memory backend.
//!
//! The cases are read from the pack's files by [`cases`]; each gets a fresh engine
//! whose deliveries are recorded instead of sent, so a case sees exactly the
//! deliveries, reply or error of the one message it sends.

pub mod cases;

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use crate::backend::{BackendError, Commit, StoredValue, Write};
use crate::config::{self, EventDef, Pack, Sender};
use crate::delivery::{ConnId, ConnLink, Envelope, RoomKind, Sink, Target};
use crate::engine::{Caller, Conn, Engine, ErrorCode};
use crate::ids::SessionId;
use crate::script::{ScriptLimits, ScriptRuntime};
use cases::{EventCases, TestCase};

#[derive(Default)]
struct Recorder(Mutex<Vec<Envelope>>);

impl Sink for Recorder {
    fn deliver(&self, envelope: &Envelope) {
        self.0.lock().push(envelope.clone());
    }
}

/// Run a pack's tests, print one line per failure and the `N passed, N failed` summary.
/// Returns whether every case passed.
pub async fn run_pack_tests(dir: &Path) -> anyhow::Result<bool> {
    let runtime = Arc::new(ScriptRuntime::new(&ScriptLimits::default()));
    let pack = match config::load(dir, &runtime) {
        Ok(loaded) => Arc::new(loaded.pack),
        Err(diags) => {
            print!("{diags}");
            anyhow::bail!(
                "the pack has errors; fix them first (`wss-engine check {}`)",
                dir.display()
            );
        }
    };
    let (events, diags) = cases::load(dir);
    if diags.has_errors() {
        print!("{diags}");
        anyhow::bail!(
            "the pack's tests have errors; fix them first (`wss-engine check {}`)",
            dir.display()
        );
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for EventCases { event, cases } in &events {
        let Some(def) = pack.events.get(event) else {
            continue;
        };
        for case in cases {
            match run_case(&pack, &runtime, def, case).await {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {} › {}", def.name, case.name);
                }
                Err(reason) => {
                    failed += 1;
                    println!(
                        "FAIL  {}:{}: {} › {}: {reason}",
                        case.file.display(),
                        case.line,
                        def.name,
                        case.name
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// A mapping in a case's `state` seeds a hash, a list seeds a list, anything else a
/// value. `{ $value: … }`, `{ $hash: {…} }`, `{ $set: […] }` and `{ $list: […] }` say the
/// shape explicitly (a JSON object stored as one value, a set).
fn seed_value(value: &Value) -> StoredValue {
    if let Value::Object(map) = value {
        if map.len() == 1 {
            let (tag, inner) = map
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
                .unwrap_or(("", value));
            match (tag, inner) {
                ("$value", v) => return StoredValue::Json(v.clone()),
                ("$set", Value::Array(items)) => {
                    return StoredValue::Set(items.iter().map(Value::to_string).collect())
                }
                ("$list", Value::Array(items)) => {
                    return StoredValue::List(items.iter().cloned().collect())
                }
                ("$hash", Value::Object(h)) => {
                    return StoredValue::Hash(
                        h.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                }
                _ => {}
            }
        }
    }
    match value {
        Value::Object(map) => {
            StoredValue::Hash(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        Value::Array(items) => StoredValue::List(items.iter().cloned().collect()),
        other => StoredValue::Json(other.clone()),
    }
}

/// Why a case failed, as its `FAIL` line says it.
#[derive(Debug, thiserror::Error)]
enum CaseFailure {
    #[error("seeding state: {0}")]
    Seeding(#[source] BackendError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("expected error `{expected}`, got `{}`: {message}", got.as_str())]
    OtherError {
        expected: String,
        got: ErrorCode,
        message: String,
    },
    #[error("expected error `{expected}`, but the event succeeded")]
    Succeeded { expected: String },
    #[error("failed with `{}`: {message}", code.as_str())]
    Failed { code: ErrorCode, message: String },
    #[error("reply: expected {expected}, got {got}")]
    Reply { expected: Value, got: Value },
    /// `made`: every delivery, as the case's report shows them.
    #[error("expected {expected} deliveries, got {got}: [{made}]")]
    DeliveryCount {
        expected: usize,
        got: usize,
        made: String,
    },
    #[error(
        "delivery {index}: expected {to} {event} {data}{}, got [{made}]",
        offset.map(|o| format!(" @{o}")).unwrap_or_default()
    )]
    Delivery {
        index: usize,
        to: String,
        event: String,
        data: Value,
        offset: Option<u64>,
        made: String,
    },
    #[error("a failed event must deliver nothing, but {0} deliveries were made")]
    DeliveredOnFailure(usize),
    #[error("state `{key}`: expected {expected}, got {got}")]
    State {
        key: String,
        expected: Value,
        got: Value,
    },
}

async fn run_case(
    pack: &Arc<Pack>,
    runtime: &Arc<ScriptRuntime>,
    def: &EventDef,
    case: &TestCase,
) -> Result<(), CaseFailure> {
    let recorder = Arc::new(Recorder::default());
    let engine = Engine::in_memory(
        "test",
        pack.clone(),
        runtime.clone(),
        Some(recorder.clone() as Arc<dyn Sink>),
    );
    let (router, backend) = (engine.router(), engine.backend());

    let writes = case
        .state
        .iter()
        .map(|(key, value)| Write {
            key: key.clone(),
            value: Some(seed_value(value)),
            ttl: None,
        })
        .collect();
    backend
        .state
        .commit(Commit {
            writes,
            ..Commit::default()
        })
        .await
        .map_err(CaseFailure::Seeding)?;

    let (id, outcome) = match case.sender {
        Sender::Api => {
            // As `POST /api/events/{name}` runs it (the key's rate limit aside).
            let caller = Caller::api("test");
            let outcome = engine
                .handle_for(&caller, &def.name, case.send.clone())
                .await;
            (caller.id, outcome)
        }
        Sender::Clients => {
            let id = ConnId::from(case.conn.id.clone().unwrap_or_else(|| "test-1".into()));
            let user = case.conn.user.as_deref().map(Arc::from);
            let link = ConnLink::new(1024);
            router.register(
                id.clone(),
                user.clone(),
                SessionId::from("test-session"),
                link,
            );
            for room in &case.conn.rooms {
                router.join(&id, room, RoomKind::Plain);
                backend.presence.join(room, &id).await?;
            }
            let mut conn = Conn::new(id.clone(), user, case.conn.claims.clone());
            let outcome = engine.handle(&mut conn, &def.name, case.send.clone()).await;
            (id, outcome)
        }
    };
    let deliveries: Vec<(String, String, Value, Option<u64>)> = recorder
        .0
        .lock()
        .iter()
        .map(|e| {
            let frame: Value = serde_json::from_slice(&e.frame).unwrap_or(Value::Null);
            let to = match &e.target {
                Target::Conn(c) if c.as_str() == &*id => "sender".to_string(),
                other => other.to_string(),
            };
            (
                to,
                frame["event"].as_str().unwrap_or_default().to_string(),
                frame["data"].clone(),
                frame["offset"].as_u64(),
            )
        })
        .collect();

    let expect = &case.expect;
    match (&expect.error, &outcome) {
        (Some(code), Err(f)) if f.code.as_str() == code => {}
        (Some(code), Err(f)) => {
            return Err(CaseFailure::OtherError {
                expected: code.clone(),
                got: f.code.clone(),
                message: f.message.clone(),
            })
        }
        (Some(code), Ok(_)) => {
            return Err(CaseFailure::Succeeded {
                expected: code.clone(),
            })
        }
        (None, Err(f)) => {
            return Err(CaseFailure::Failed {
                code: f.code.clone(),
                message: f.message.clone(),
            })
        }
        (None, Ok(_)) => {}
    }
    if let Some(expected) = &expect.reply {
        let got = outcome
            .as_ref()
            .ok()
            .cloned()
            .flatten()
            .unwrap_or(Value::Null);
        if &got != expected {
            return Err(CaseFailure::Reply {
                expected: expected.clone(),
                got,
            });
        }
    }
    match &expect.deliveries {
        Some(expected) => {
            let shown = || {
                deliveries
                    .iter()
                    .map(|(to, ev, data, offset)| match offset {
                        Some(o) => format!("{to} {ev} {data} @{o}"),
                        None => format!("{to} {ev} {data}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if expected.len() != deliveries.len() {
                return Err(CaseFailure::DeliveryCount {
                    expected: expected.len(),
                    got: deliveries.len(),
                    made: shown(),
                });
            }
            for (i, (want, (to, event, data, offset))) in
                expected.iter().zip(&deliveries).enumerate()
            {
                let data_matches = want.data.as_ref().is_none_or(|d| d == data);
                let offset_matches = want.offset.is_none_or(|o| Some(o) == *offset);
                if &want.to != to || &want.event != event || !data_matches || !offset_matches {
                    return Err(CaseFailure::Delivery {
                        index: i,
                        to: want.to.clone(),
                        event: want.event.clone(),
                        data: want.data.clone().unwrap_or(Value::Null),
                        offset: want.offset,
                        made: shown(),
                    });
                }
            }
        }
        None if expect.error.is_some() && !deliveries.is_empty() => {
            return Err(CaseFailure::DeliveredOnFailure(deliveries.len()));
        }
        None => {}
    }
    if !expect.state.is_empty() {
        let keys: Vec<String> = expect.state.iter().map(|(k, _)| k.clone()).collect();
        let values = backend.state.read(keys).await?;
        for ((key, want), got) in expect.state.iter().zip(values) {
            let got = got.value.map(|v| v.to_json()).unwrap_or(Value::Null);
            if &got != want {
                return Err(CaseFailure::State {
                    key: key.clone(),
                    expected: want.clone(),
                    got,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seeds_infer_or_declare_their_shape() {
        assert!(matches!(seed_value(&json!({"a": 1})), StoredValue::Hash(_)));
        assert!(matches!(seed_value(&json!([1])), StoredValue::List(_)));
        assert_eq!(
            seed_value(&json!({"$value": {"a": 1}})),
            StoredValue::Json(json!({"a": 1}))
        );
        match seed_value(&json!({"$set": ["x", "x", 2]})) {
            StoredValue::Set(s) => assert_eq!(s.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
