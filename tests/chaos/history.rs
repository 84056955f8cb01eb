//! The operation history: one JSON object per line, written as things happen, read back
//! by the checker. Every line has `t` (milliseconds since the run started) and `kind`:
//!
//! | kind | fields | written by |
//! | --- | --- | --- |
//! | `run` | `seed`, `duration_s`, `redis_cluster`, `nodes`, `rooms`, `limits` | the run, first |
//! | `fault` | `fault` (`kill`, `stop`, `drop`, `redis_restart`, `failover`), `node`?, `phase` (`start`, `end`) | the fault thread |
//! | `node_start` | `node`, `pid`, `reason` (`initial`, `after_kill`) | the run, the fault thread |
//! | `node_exit` | `node`, `pid`, `status`: a node that died without a `kill` fault | the sampler |
//! | `readyz` | `node`, `status` (HTTP status, `null`: no answer within 1 s) | the sampler |
//! | `rss` | `node`, `kb` | the sampler |
//! | `op` | `op` (`say`, `incr`), `phase` (`invoke`, `ack`, `fail`, `unknown`), `client`, `node`, `id`, `room`?, `code`?, `value`? | publishers, counters |
//! | `connect` / `disconnect` | `client`, `node`, `why`? | every client |
//! | `session` | `client`, `why`: a fresh session, every earlier position void | subscribers |
//! | `resume` | `client`, `node`, `ok`, `rooms` (the ack's report) or `code`, `discarded` | subscribers |
//! | `joined` | `client`, `room`, `epoch`, `offset` | subscribers |
//! | `delivery` | `client`, `room`, `offset`, `id` | subscribers |
//! | `gap` | `client`, `room`, `epoch`, `offset` | subscribers |
//! | `final_history` | `room`, `epoch`, `head`, `complete`, `entries` (`[offset, id]`) | the run, at the end |
//! | `final_counter` | `client`, `n`, `log` | the run, at the end |
//! | `final_position` | `client`, `room`, `offset`? | the run, at the end |
//! | `final_ready` | `node`, `ready` | the run, at the end |
//!
//! A subscriber writes the frames of a resumed connection only once the resume was
//! acknowledged, after its `resume` line, so the checker reads each client's lines as
//! the client library would apply them.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};

/// Appends lines to the history file; cheap to clone, safe from any thread.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<BufWriter<std::fs::File>>>,
    start: Instant,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Mutex::new(BufWriter::new(std::fs::File::create(path)?))),
            start: Instant::now(),
        })
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Write one line: `fields` (a JSON object) with `t` and `kind` added.
    pub fn record(&self, kind: &str, fields: Value) {
        let mut line = Map::new();
        line.insert("t".into(), Value::from(self.now()));
        line.insert("kind".into(), Value::from(kind));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let mut out = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A history that cannot be written makes the whole run worthless: fail loudly.
        serde_json::to_writer(&mut *out, &Value::Object(line)).expect("write the history");
        out.write_all(b"\n").expect("write the history");
        // Line by line: a run killed by its time limit still leaves a readable history.
        out.flush().expect("write the history");
    }

    pub fn flush(&self) {
        let mut out = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().expect("flush the history");
    }
}

/// Read a history file back, line by line.
pub fn load(path: &Path) -> std::io::Result<Vec<Value>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    for line in file.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(serde_json::from_str(&line).map_err(std::io::Error::other)?);
    }
    Ok(events)
}
