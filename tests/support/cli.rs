//! The binary's subcommands (`check`, `diff`, `test`, `asyncapi`, `nodes` …, or a
//! server that must refuse to start) run to completion from the crate root, with none
//! of the tester's engine environment; their output as text.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::binary::{wait_child, without_engine_env};
use super::root;

/// How long one run may take: every subcommand the tests run finishes in seconds.
const CLI_WAIT: Duration = Duration::from_secs(120);

/// The outcome of one run.
#[derive(Debug)]
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `wss-engine ARGS…` to completion (bounded), from the crate root, so paths in
/// its output are the relative ones given.
pub fn run(args: &[&str]) -> CliRun {
    run_within(args, CLI_WAIT)
}

/// [`run`], bounded by `within`.
pub fn run_within(args: &[&str], within: Duration) -> CliRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wss-engine"));
    cmd.args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_engine_env(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the wss-engine binary");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8(bytes).expect("utf-8 output")
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = wait_child(&mut child, within) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`wss-engine {}` did not finish within {within:?}",
            args.join(" ")
        );
    };
    CliRun {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
