//! The HTTP API through the built binary: keys from the command line and from
//! `WSS_API_KEYS_FILE`, secrets never in the log (even at trace level), bad keys refused
//! at startup, and schemathesis (all checks, negative data included) against a live
//! node serving `examples/notify`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::api::{request, Answer, Api};
use support::binary::BinaryServer;
use support::cli::run;

const FILE_SECRET: &str = "from-the-file-0123456789";
const CLI_SECRET: &str = "from-the-cli-0123456789";
const GUESS: &str = "a-wrong-guess-0123456789";

/// The binary with `args`, logging at `log` level, keys file in the environment.
fn spawn(pack: &Path, args: &[&str], log: &str, keys_file: Option<&Path>) -> BinaryServer {
    let mut cmd = support::binary::binary_command(pack, args);
    cmd.env("WSS_LOG", log);
    if let Some(file) = keys_file {
        cmd.env("WSS_API_KEYS_FILE", file);
    }
    support::binary::spawn_command("wss-engine", cmd)
}

fn notify_pack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/notify")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_file_and_the_command_line_and_never_reach_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys");
    std::fs::write(
        &file,
        format!("# the shop's backend\nshop={FILE_SECRET}:publish,read\n\n"),
    )
    .expect("write keys");
    let cli_key = format!("ops={CLI_SECRET}");
    let mut server = spawn(
        &notify_pack(),
        &["--api-key", &cli_key],
        "trace",
        Some(&file),
    );
    let shop = Api::new(server.addr, FILE_SECRET);
    let me = shop.get("/api/whoami").await;
    assert_eq!(me.body["data"]["key"], "shop", "{}", me.text);
    let sent = shop
        .post("/api/events/notify.user", r#"{"user":"alice","text":"hi"}"#)
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    assert_eq!(
        Api::new(server.addr, CLI_SECRET)
            .get("/api/whoami")
            .await
            .body["data"]["key"],
        "ops"
    );
    let guessed = Api::new(server.addr, GUESS).get("/api/nodes").await;
    assert_eq!(guessed.status, 401);
    let header = request(
        server.addr,
        "GET",
        "/api/nodes",
        &[("X-API-Key", GUESS)],
        None,
    )
    .await;
    assert_eq!(header.status, 401);

    server.signal("TERM");
    server.wait_exit(Duration::from_secs(15));
    let log = server.log_text();
    assert!(log.contains("HTTP API on"), "{log}");
    assert!(log.contains("API request refused: unknown key"), "{log}");
    for secret in [FILE_SECRET, CLI_SECRET, GUESS] {
        assert!(!log.contains(secret), "`{secret}` is in the log:\n{log}");
    }
}

#[test]
fn a_bad_key_stops_the_server_before_it_listens_without_quoting_the_secret() {
    for (arg, says) in [
        ("shop=tooshort", "at least 16 characters"),
        ("shop=long-enough-secret-123:write", "unknown scope `write`"),
    ] {
        let out = run(&[
            "--config",
            "examples/notify",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            arg,
        ]);
        assert!(!out.status.success());
        let stderr = &out.stderr;
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            !stderr.contains("tooshort") && !stderr.contains("long-enough-secret"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_follows_a_reloaded_pack() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("pack.yaml");
    let pack = |extra: &str| {
        format!("events:\n  a.ping:\n    senders: [api]\n    scope: local\n    schema: {{ type: object }}\n{extra}")
    };
    std::fs::write(&file, pack("")).expect("write");
    let key = format!("ops={CLI_SECRET}");
    let server = spawn(dir.path(), &["--api-key", &key], "info", None);
    let api = Api::new(server.addr, CLI_SECRET);
    let paths = |doc: &Answer| -> Vec<String> {
        doc.body["paths"]
            .as_object()
            .map(|p| {
                p.keys()
                    .filter(|k| k.starts_with("/api/events/"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        paths(&api.get("/api/openapi.json").await),
        ["/api/events/a.ping"]
    );
    assert_eq!(api.post("/api/events/b.ping", "{}").await.status, 404);

    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(
        &tmp,
        pack("  b.ping:\n    senders: [clients, api]\n    scope: local\n    schema: { type: object, required: [x] }\n"),
    )
    .expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = api.get("/api/openapi.json").await;
        if paths(&doc).len() == 2 {
            let schema = &doc.body["paths"]["/api/events/b.ping"]["post"]["requestBody"]["content"]
                ["application/json"]["schema"];
            assert_eq!(schema["required"], serde_json::json!(["x"]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never showed:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let invalid = api.post("/api/events/b.ping", "{}").await;
    assert_eq!((invalid.status, invalid.code()), (400, "invalid_payload"));
}

/// Where `scripts/test-deps` installs schemathesis (`WSS_SCHEMATHESIS` overrides).
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("WSS_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let target = Path::new(env!("CARGO_BIN_EXE_wss-engine"))
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in target/<profile>/");
    target.join("test-venv/bin/st")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_every_check() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: run scripts/test-deps",
        st.display()
    );
    let key = format!("st={CLI_SECRET}");
    let server = spawn(&notify_pack(), &["--api-key", &key], "info", None);
    // A live connection, so the directory and disconnect operations meet one.
    let _client = support::client::Client::connect(&server.url()).await;
    let work = tempfile::tempdir().expect("dir");
    let started = Instant::now();
    let out = Command::new(&st)
        .current_dir(work.path())
        .arg("run")
        .arg(format!("http://{}/api/openapi.json", server.addr))
        .args(["--header", &format!("Authorization: Bearer {CLI_SECRET}")])
        .args(["--checks", "all"])
        .args(["--max-examples", "40"])
        // One worker: with two, hypothesis' internal caches were seen to race (a
        // KeyError inside schemathesis, reported as a runtime error, not a finding).
        .args(["--workers", "1"])
        .args(["--seed", "20261130"])
        .args(["--request-timeout", "10"])
        .args(["--max-failures", "10"])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed ({:?} after {:?}):\n{stdout}\n{stderr}",
        out.status,
        started.elapsed()
    );
    eprintln!(
        "schemathesis: {} (in {:.1} s)",
        stdout
            .lines()
            .rev()
            .find(|l| l.contains("passed") || l.contains("generated"))
            .unwrap_or("?")
            .trim(),
        started.elapsed().as_secs_f64()
    );
}
