//! The docs hold: README.md and every page under docs/ are checked against the code and
//! the binary, so what they say stays true as the code changes.
//!
//! - Every fenced block carries a known mark (docs/development.md, "The docs test"):
//!   ```` ```sh test ```` and ```` ```console test ```` blocks run
//!   (`tests/docs/shell.rs`); ```` ```yaml pack ```` blocks pass `wss-engine check`
//!   (and `test`, when they have `tests:`; with `file=PATH` they are also written there
//!   for the page's scratch-directory blocks); ```` ```yaml fragment ```` blocks are
//!   parts of a pack, skipped; ```` ```text frames ```` transcripts are played against
//!   a server (`tests/docs/frames.rs`). A block that shows protocol frames must be a
//!   transcript.
//! - Completeness (`tests/docs/complete.rs`): every option of every `--help`, every
//!   field of the pack schema, every metric, counted limit, script function, error and
//!   close code and HTTP route is named in its page; the failure lists each one
//!   missing and what to add where.
//! - Every relative link and anchor resolves, and every page is in docs/SUMMARY.md.
//!
//! README's `cargo run` command is served by `tests/readme_run_command.rs`.

mod support;

#[path = "docs/complete.rs"]
mod complete;
#[path = "docs/frames.rs"]
mod frames;
#[path = "docs/markdown.rs"]
mod markdown;
#[path = "docs/shell.rs"]
mod shell;

use std::path::Path;

use markdown::{pages, Block, Page};
use support::root;

/// Fail with every problem found, one per line.
fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what} ({}):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// A scratch directory holding `pack/pack.yaml` (the snippet) beside a copy of the
/// repository's `schemas/`, so that `$ref: ../schemas/…` resolves as in `events/`.
pub fn write_pack_beside_schemas(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("scratch directory");
    std::fs::create_dir_all(dir.path().join("pack")).expect("create pack/");
    std::fs::create_dir_all(dir.path().join("schemas")).expect("create schemas/");
    for entry in std::fs::read_dir(root().join("schemas")).expect("read schemas/") {
        let entry = entry.expect("entry");
        std::fs::copy(
            entry.path(),
            dir.path().join("schemas").join(entry.file_name()),
        )
        .expect("copy a schema");
    }
    std::fs::write(dir.path().join("pack/pack.yaml"), yaml).expect("write pack.yaml");
    dir
}

/// Every block's mark is one this test knows; a typo would otherwise leave a block
/// unchecked without anyone noticing.
fn mark_problem(block: &Block) -> Option<String> {
    let marks: Vec<&str> = block.marks.iter().map(String::as_str).collect();
    let frames_like = block.body.contains("{\"event\"") || block.body.contains("{\"ack\"");
    match block.lang.as_str() {
        "sh" | "bash" | "console" => {
            let known = marks
                .iter()
                .all(|m| ["test", "tmp"].contains(m) || m.strip_prefix("exit=").is_some());
            if !known {
                return Some(format!("unknown marks {marks:?} (known: `test`, `tmp`, `exit=N`)"));
            }
            if !marks.is_empty() && !marks.contains(&"test") {
                return Some("`tmp` and `exit=N` go with `test`".into());
            }
            None
        }
        "yaml" => match marks.as_slice() {
            ["pack"] | ["fragment"] => None,
            ["pack", file] if file.strip_prefix("file=").is_some_and(|f| !f.is_empty() && !f.contains("..")) => None,
            _ => Some(format!(
                "a yaml block is `yaml pack` (checked with `wss-engine check`; `file=PATH` also writes it there for the page's `tmp` blocks) or `yaml fragment` (part of a pack, not checked), not {marks:?}"
            )),
        },
        "text" if marks.first() == Some(&"frames") => {
            let known = marks[1..].iter().all(|m| m.strip_prefix("pack=").is_some());
            (!known).then(|| format!("unknown marks {marks:?} (a transcript takes `pack=DIR` or `pack=page`)"))
        }
        "text" | "json" | "" if frames_like => Some(
            "this block shows protocol frames: write it as a ```text frames transcript, which the test plays against a server".into(),
        ),
        _ if !marks.is_empty() => Some(format!("unknown marks {marks:?}")),
        _ => None,
    }
}

#[test]
fn every_code_block_has_a_known_mark() {
    let mut problems = Vec::new();
    for page in pages() {
        for block in page.blocks() {
            if let Some(problem) = mark_problem(&block) {
                problems.push(format!("{}: {problem}", page.at(block.line)));
            }
        }
    }
    report("code blocks with marks this test does not know", problems);
}

#[test]
fn runnable_shell_blocks_run() {
    let bin = shell::BinDir::new();
    let mut problems = Vec::new();
    let mut ran = 0;
    for page in pages() {
        let blocks = page.blocks();
        for block in blocks.iter().filter(|b| b.has("test")) {
            let result = match block.lang.as_str() {
                "console" => shell::run_console(&bin, &page, &blocks, block),
                _ => shell::run_sh(&bin, &page, &blocks, block),
            };
            ran += 1;
            if let Err(e) = result {
                problems.push(e);
            }
        }
    }
    assert!(ran > 0, "no runnable shell block found: the marks changed?");
    report("shell blocks that do not run as shown", problems);
}

#[test]
fn pack_snippets_pass_check() {
    let mut problems = Vec::new();
    for page in pages() {
        for block in page
            .blocks()
            .iter()
            .filter(|b| b.lang == "yaml" && b.has("pack"))
        {
            let scratch = write_pack_beside_schemas(&block.body);
            let dir = scratch.path().join("pack");
            let dir = dir.to_str().expect("a UTF-8 path");
            let check = support::cli::run(&["check", dir]);
            let said = format!("{}{}", check.stdout, check.stderr);
            if !check.status.success() || said.contains(": warning:") {
                problems.push(format!(
                    "{}: `wss-engine check` says:\n{said}",
                    page.at(block.line)
                ));
                continue;
            }
            if block.body.contains("tests:") {
                let test = support::cli::run(&["test", dir]);
                if !test.status.success() {
                    problems.push(format!(
                        "{}: `wss-engine test` says:\n{}{}",
                        page.at(block.line),
                        test.stdout,
                        test.stderr
                    ));
                }
            }
        }
    }
    report("pack snippets that do not pass", problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_transcripts_hold_against_a_server() {
    let mut problems = Vec::new();
    let mut played = 0;
    for page in pages() {
        let blocks = page.blocks();
        for block in blocks
            .iter()
            .filter(|b| b.lang == "text" && b.has("frames"))
        {
            played += 1;
            if let Err(e) = frames::run(&page, &blocks, block).await {
                problems.push(e);
            }
        }
    }
    for required in ["docs/protocol.md", "docs/packs.md"] {
        let page = Page::read(required);
        if !page.blocks().iter().any(|b| b.has("frames")) {
            problems.push(format!(
                "{required}: no frame transcript: its examples are transcripts"
            ));
        }
    }
    assert!(played > 0, "no frame transcript found");
    report("frame transcripts that do not hold", problems);
}

#[test]
fn the_docs_name_everything_the_code_defines() {
    let mut missing = Vec::new();
    missing.extend(complete::cli_flags());
    missing.extend(complete::pack_fields());
    missing.extend(complete::metrics());
    missing.extend(complete::limit_names());
    missing.extend(complete::script_functions());
    missing.extend(complete::protocol_codes());
    missing.extend(complete::http_routes());
    missing.extend(complete::summary());
    missing.extend(complete::source_tree());
    report("what the docs do not name yet", missing);
}

#[test]
fn every_relative_link_resolves() {
    let all = pages();
    let mut problems = Vec::new();
    for page in &all {
        for (line, target) in page.links() {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let dir = page.path.parent().unwrap_or(Path::new(""));
            let resolved = if file.is_empty() {
                page.path.clone()
            } else {
                normalize(&dir.join(file))
            };
            if !root().join(&resolved).exists() {
                problems.push(format!(
                    "{}: `{target}`: {} does not exist",
                    page.at(line),
                    resolved.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if resolved.extension().is_some_and(|e| e == "md")
                    && !Page::read(&resolved).anchors().iter().any(|a| a == anchor)
                {
                    problems.push(format!(
                        "{}: `{target}`: {} has no heading with the anchor `#{anchor}`",
                        page.at(line),
                        resolved.display()
                    ));
                }
            }
        }
    }
    report("links that lead nowhere", problems);
}

/// `docs/../README.md` → `README.md`, without touching the file system.
fn normalize(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn console_output_matching_allows_elisions() {
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    assert!(shell::lines_match(
        &lines("a\n...\nd"),
        &["a", "b", "c", "d"]
    ));
    assert!(shell::lines_match(&lines("a\n…"), &["a", "b"]));
    assert!(!shell::lines_match(&lines("a\nd"), &["a", "b", "d"]));
    assert!(shell::lines_match(&lines("\na\n"), &["a", ""]));
}
