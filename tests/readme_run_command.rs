//! README's first command is the first thing a newcomer types: it must serve.
//!
//! The command is read verbatim from README.md's "Two commands" block and run through
//! `bash` in the repository root, with only `WSS_LISTEN` set (to a free port) in its
//! environment. The test waits for `/readyz`, sends one event over a real WebSocket,
//! checks its ack, and stops the command's whole process group by PID. A README edit
//! that breaks the command fails here.
//!
//! The command is a debug `cargo run`, the profile the test suite itself is built in:
//! cargo finds the binary up to date and it starts in seconds. (Built with other
//! settings than the suite's, it compiles first; the wait allows for that.)

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::client::{try_http_get, Client};
use support::free_port;

/// The `cargo run` line of README.md's "Two commands" block, without its comment.
fn readme_run_command() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## Two commands")
        .nth(1)
        .expect("README.md has a `## Two commands` section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section holds a ```sh block");
    let line = block
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo run"))
        .expect("the block has a `cargo run` line");
    line.split(" #").next().unwrap_or(line).trim().to_string()
}

/// Whether a `CARGO_*` variable is cargo configuration (what the nested `cargo run`
/// must share with the build of this test), not one cargo set for the test binary.
fn is_cargo_config(key: &str) -> bool {
    ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"].contains(&key)
        || [
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_TERM_",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTRIES_",
            "CARGO_REGISTRY_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// Kills the command's process group (cargo and the server it started) when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id();
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn the_readme_run_command_serves_the_default_pack() {
    let command = readme_run_command();
    assert!(
        command.contains("--config events"),
        "README's run command should serve the default pack: {command}"
    );
    let port = free_port();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&command)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("WSS_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("REDIS_URL")
        .env_remove("REDIS_SERVER")
        .env_remove("SERVER_PORT")
        .env_remove("WSS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: `cargo run` starts the server as a child, and both
        // must go when the test ends.
        .process_group(0);
    // The test harness runs with cargo's variables for the test binary set; a nested
    // cargo must not mistake them for its own. Its configuration stays (the target
    // directory, `CARGO_INCREMENTAL`, profile settings): with other settings than the
    // build of this test, it would compile everything again.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && !is_cargo_config(&key) {
            cmd.env_remove(key);
        }
    }
    let mut group = Group(cmd.spawn().expect("run README's command with bash"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Up to date, seconds; a debug build from scratch takes minutes on two cores.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some((200, _)) = try_http_get(addr, "/readyz", Duration::from_secs(2)).await {
                break;
            }
            if let Ok(Some(status)) = group.0.try_wait() {
                panic!("`{command}` exited with {status} instead of serving (its output is above)");
            }
            assert!(
                Instant::now() < deadline,
                "`{command}` did not serve /readyz on {addr} within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
        // The default pack's chat: join a room, and the ack says so.
        let reply = client
            .ok("chat.join", serde_json::json!({ "room": "lobby" }))
            .await;
        assert_eq!(reply["members"], 1, "{reply}");
    });
    drop(group);
}
