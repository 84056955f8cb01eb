//! How long `wss-engine check` takes on a large pack: 200 events over 10 files, with
//! inline and `$ref`'d schemas, inline and file scripts, templated targets, rate limits,
//! declared keys and test cases — every part of the loader does real work.
//!
//! `cargo bench --bench check`

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use wss_engine::config;
use wss_engine::script::{ScriptLimits, ScriptRuntime};

const EVENTS: usize = 200;
const FILES: usize = 10;

/// Write the pack into `dir`: `events/pack-N.yaml`, `schemas/*.json`, `scripts/*.rhai`.
fn generate(dir: &Path) -> std::io::Result<()> {
    for sub in ["events", "schemas", "scripts"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(
        dir.join("schemas/room.json"),
        r#"{ "type": "string", "pattern": "^[a-z0-9_-]{1,64}$" }"#,
    )?;
    std::fs::write(
        dir.join("schemas/message.json"),
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["room", "text"],
  "properties": {
    "room": { "$ref": "room.json" },
    "text": { "type": "string", "minLength": 1, "maxLength": 2000 },
    "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 10 }
  },
  "additionalProperties": false
}"#,
    )?;
    std::fs::write(
        dir.join("scripts/count.rhai"),
        r#"let key = "count:" + data.room;
let n = state.get(key);
if n == () { n = 0; }
if n > 1000000 { reject("full", "too many"); }
state.set(key, n + 1);
data.n = n + 1;
reply(#{ n: n + 1 });
"#,
    )?;
    let per_file = EVENTS / FILES;
    for f in 0..FILES {
        let mut yaml = String::from(
            "# yaml-language-server: $schema=../../schemas/event-pack.schema.json\nevents:\n",
        );
        for i in 0..per_file {
            let n = f * per_file + i;
            match n % 4 {
                // Inline schema with a $ref into a file, templated target, inline script.
                0 => write!(
                    yaml,
                    r#"  app.join{n}:
    description: Join room family {n}.
    scope: cluster
    schema:
      type: object
      required: [room]
      properties:
        room: {{ $ref: ../schemas/room.json }}
        note: {{ type: string, maxLength: 100 }}
      additionalProperties: false
    to: "room:{{{{data.room}}}}"
    exclude_sender: true
    script: |
      if conn.rooms.contains(data.room) {{
        reject("already", "already in " + data.room);
      }}
      join(data.room);
      emit("room:" + data.room, "app.joined{n}", #{{ conn: conn.id }});
      reply(#{{ members: presence(data.room).len() }});
"#
                ),
                // Schema file, rate limit, keys, file script, tests.
                1 => write!(
                    yaml,
                    r#"  app.message{n}:
    scope: cluster
    schema: {{ $ref: ../schemas/message.json }}
    to: "room:{{{{data.room}}}}"
    emit_as: app.msg{n}
    rate_limit: {{ per_second: 20, burst: 40 }}
    keys: ["count:{{{{data.room}}}}"]
    script: {{ file: ../scripts/count.rhai }}
    tests:
      - name: counts
        conn: {{ rooms: [lobby] }}
        state: {{ "count:lobby": 1 }}
        send: {{ room: lobby, text: hi }}
        expect:
          reply: {{ n: 2 }}
          state: {{ "count:lobby": 2 }}
      - name: refuses empty text
        send: {{ room: lobby, text: "" }}
        expect: {{ error: invalid_payload }}
"#
                ),
                // Hash and list state, user target, auth.
                2 => write!(
                    yaml,
                    r#"  app.score{n}:
    scope: cluster
    auth: required
    schema:
      type: object
      required: [board, points]
      properties:
        board: {{ type: string, pattern: "^[a-z]+$" }}
        points: {{ type: integer, minimum: 1, maximum: 100 }}
      additionalProperties: false
    to: "user:{{{{conn.user}}}}"
    script: |
      let key = "board:" + data.board;
      let current = state.hget(key, conn.user);
      let total = if current == () {{ data.points }} else {{ current + data.points }};
      state.hset(key, conn.user, total);
      state.lpush(key + ":log", #{{ user: conn.user, points: data.points }});
      state.ltrim(key + ":log", 0, 99);
      data.total = total;
"#
                ),
                // Local event without script.
                _ => write!(
                    yaml,
                    r#"  app.ping{n}:
    scope: local
    schema: {{ type: object, properties: {{ t: {{ type: number }} }} }}
    to: sender
"#
                ),
            }
            .map_err(std::io::Error::other)?;
        }
        std::fs::write(dir.join(format!("events/pack-{f}.yaml")), yaml)?;
    }
    Ok(())
}

fn bench_check(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path()).expect("write the generated pack");
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    // The generated pack must be valid, or the benchmark would time error paths.
    match config::load(dir.path(), &runtime) {
        Ok(config::Loaded { pack, warnings }) => {
            assert_eq!(pack.events.len(), EVENTS, "{warnings}");
        }
        Err(diags) => panic!("generated pack does not load:\n{diags}"),
    }

    let mut group = c.benchmark_group("check");
    group.bench_function("load 200-event pack", |b| {
        b.iter(|| black_box(config::load(black_box(dir.path()), &runtime)).is_ok())
    });
    // What `wss-engine check` does per run: build the script engine, then load.
    group.bench_function("runtime + load 200-event pack", |b| {
        b.iter(|| {
            let runtime = ScriptRuntime::new(&ScriptLimits::default());
            black_box(config::load(black_box(dir.path()), &runtime)).is_ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
