//! Runnable shell blocks: ```` ```sh test ```` runs the block as one bash script,
//! ```` ```console test ```` runs each `$ ` line and compares what it prints with the
//! lines shown under it. `wss-engine` is the binary under test (first on `PATH`).
//!
//! Marks after `test`: `tmp` runs the block in a scratch directory holding a copy of
//! the repository's `events/`, `examples/` and `schemas/` (for blocks that write files),
//! instead of the repository root, and there every ```` ```yaml pack file=PATH ````
//! block above it on the page is written to PATH; `exit=N` expects exit status N (of
//! the whole script for `sh`, of the last command for `console`; every other command
//! must exit 0). A console command may span lines: a line ending with `\`, or a
//! here-document (`cat > f <<'EOF'` … `EOF`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::markdown::{Block, Page};
use crate::support::binary::{wait_child, without_engine_env};
use crate::support::root;

/// How long one block may run: its commands are the binary's own subcommands.
const BLOCK_WAIT: Duration = Duration::from_secs(60);

/// A directory whose only file is `wss-engine`, a link to the binary under test.
pub struct BinDir(tempfile::TempDir);

impl BinDir {
    pub fn new() -> BinDir {
        let dir = tempfile::tempdir().expect("temporary bin directory");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_wss-engine"),
            dir.path().join("wss-engine"),
        )
        .expect("link wss-engine");
        BinDir(dir)
    }

    fn path_var(&self) -> std::ffi::OsString {
        let mut paths = vec![self.0.path().to_path_buf()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(paths).expect("PATH")
    }
}

/// Where a block runs: the repository root, or a scratch copy (`tmp`) with the page's
/// `file=PATH` blocks above it written in.
fn workdir(blocks: &[Block], block: &Block) -> (PathBuf, Option<tempfile::TempDir>) {
    if !block.has("tmp") {
        return (root().to_path_buf(), None);
    }
    let scratch = tempfile::tempdir().expect("scratch directory");
    for dir in ["events", "examples", "schemas"] {
        copy_dir(&root().join(dir), &scratch.path().join(dir));
    }
    for earlier in blocks.iter().filter(|b| b.line < block.line) {
        if let Some(path) = earlier.mark_value("file") {
            let target = scratch.path().join(path);
            std::fs::create_dir_all(target.parent().expect("a file in a directory"))
                .expect("create the file's directory");
            std::fs::write(&target, format!("{}\n", earlier.body)).expect("write a file= block");
        }
    }
    (scratch.path().to_path_buf(), Some(scratch))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory of the scratch copy");
    for entry in std::fs::read_dir(from).expect("read a directory to copy") {
        let entry = entry.expect("directory entry");
        let kind = entry.file_type().expect("file type");
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            if entry.file_name() != "node_modules" {
                copy_dir(&entry.path(), &target);
            }
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Run `script` with bash in `dir`, stderr merged into stdout; (exit status, output).
fn bash(bin: &BinDir, script: &str, dir: &Path) -> Result<(i32, String), String> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("exec 2>&1\n{script}"))
        .current_dir(dir)
        .env("PATH", bin.path_var())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so a block that starts processes leaves none behind.
        .process_group(0);
    without_engine_env(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("spawn bash: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let status = wait_child(&mut child, BLOCK_WAIT);
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let output = reader.join().expect("output reader");
    match status {
        Some(status) => Ok((status.code().unwrap_or(-1), output)),
        None => Err(format!(
            "did not finish within {BLOCK_WAIT:?}; output:\n{output}"
        )),
    }
}

fn expected_exit(page: &Page, block: &Block) -> Result<i32, String> {
    match block.mark_value("exit") {
        None => Ok(0),
        Some(n) => n
            .parse()
            .map_err(|_| format!("{}: `exit={n}` is not a number", page.at(block.line))),
    }
}

/// Run one `sh test` block; the failure says where and what it printed.
pub fn run_sh(bin: &BinDir, page: &Page, blocks: &[Block], block: &Block) -> Result<(), String> {
    let want = expected_exit(page, block)?;
    let (dir, _scratch) = workdir(blocks, block);
    let script = format!("set -euo pipefail\n{}\n", block.body);
    let (code, output) =
        bash(bin, &script, &dir).map_err(|e| format!("{}: {e}", page.at(block.line)))?;
    if code != want {
        return Err(format!(
            "{}: the block exited with {code}, not {want}; it printed:\n{output}",
            page.at(block.line)
        ));
    }
    Ok(())
}

/// One `$ ` command of a console block and the lines shown under it.
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn steps(page: &Page, block: &Block) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    // A command goes on while its line ends with `\`, or until the end word of a
    // here-document it opened (`cat > f <<'EOF'` … `EOF`).
    let mut continued = false;
    let mut heredoc: Option<String> = None;
    for (i, line) in block.body.lines().enumerate() {
        if continued || heredoc.is_some() {
            let step = steps.last_mut().expect("a step to continue");
            step.command.push('\n');
            step.command.push_str(line);
            if heredoc.as_deref() == Some(line.trim()) {
                heredoc = None;
            } else if heredoc.is_none() {
                continued = line.ends_with('\\');
                heredoc = heredoc_end(line);
            }
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: block.body_line(i),
                command: command.to_string(),
                expected: Vec::new(),
            });
            continued = command.ends_with('\\');
            heredoc = heredoc_end(command);
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.trim_end().to_string());
        } else if !line.trim().is_empty() {
            return Err(format!(
                "{}: a console block starts with a `$ ` command",
                page.at(block.body_line(i))
            ));
        }
    }
    if let Some(word) = heredoc {
        return Err(format!(
            "{}: a here-document is not closed by `{word}`",
            page.at(block.line)
        ));
    }
    Ok(steps)
}

/// The end word of a here-document a command line opens (`<<'EOF'`, `<<EOF`).
fn heredoc_end(line: &str) -> Option<String> {
    let rest = line
        .split_once("<<")?
        .1
        .trim_start_matches('-')
        .trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// Whether `actual` is what `expected` shows: line for line, where a line `...` (or
/// `…`) stands for any number of lines. Blank lines at either end do not count.
pub fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    fn trim<T: AsRef<str>>(lines: &[T]) -> &[T] {
        let start = lines
            .iter()
            .position(|l| !l.as_ref().trim().is_empty())
            .unwrap_or(lines.len());
        let end = lines
            .iter()
            .rposition(|l| !l.as_ref().trim().is_empty())
            .map_or(start, |e| e + 1);
        &lines[start..end]
    }
    fn go(e: &[String], a: &[&str]) -> bool {
        match e.split_first() {
            None => a.is_empty(),
            Some((first, rest)) if first == "..." || first == "…" => {
                (0..=a.len()).any(|skip| go(rest, &a[skip..]))
            }
            Some((first, rest)) => a
                .split_first()
                .is_some_and(|(line, more)| line.trim_end() == first && go(rest, more)),
        }
    }
    go(trim(expected), trim(actual))
}

/// Run one `console test` block.
pub fn run_console(
    bin: &BinDir,
    page: &Page,
    blocks: &[Block],
    block: &Block,
) -> Result<(), String> {
    let want_last = expected_exit(page, block)?;
    let (dir, _scratch) = workdir(blocks, block);
    let steps = steps(page, block)?;
    if steps.is_empty() {
        return Err(format!(
            "{}: a console block without a `$ ` command",
            page.at(block.line)
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        let want = if i + 1 == steps.len() { want_last } else { 0 };
        let (code, output) = bash(bin, &step.command, &dir)
            .map_err(|e| format!("{}: `{}` {e}", page.at(step.line), step.command))?;
        if code != want {
            return Err(format!(
                "{}: `{}` exited with {code}, not {want}; it printed:\n{output}",
                page.at(step.line),
                step.command
            ));
        }
        let actual: Vec<&str> = output.lines().collect();
        if !step.expected.iter().all(|l| l.trim().is_empty())
            && !lines_match(&step.expected, &actual)
        {
            return Err(format!(
                "{}: `{}` printed\n{output}\nwhere the page shows\n{}",
                page.at(step.line),
                step.command,
                step.expected.join("\n")
            ));
        }
    }
    Ok(())
}
