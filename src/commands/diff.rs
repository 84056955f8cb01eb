//! `wss-engine diff OLD NEW`: load both packs, compare them (`crate::diff`), print one
//! line (or JSON object) per change.
//!
//! Exit status: 0 when every change is compatible (or there are none), 1 when any is
//! breaking, 2 when either pack does not load (its diagnostics are printed as `check`
//! prints them). A deploy pipeline can thus stop on 1 and 2 alike, or let an operator
//! override 1 while 2 always means "fix the pack first".

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::cli::{DiffArgs, OutputFormat};
use crate::config::{self, Diagnostics};
use crate::diff::{Change, Class, Site, Subject};
use crate::script::{ScriptLimits, ScriptRuntime};

/// The exit status when a pack does not load: distinct from 1 (breaking changes).
const LOAD_FAILED: u8 = 2;

pub fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    let old = config::load(&args.old, &runtime);
    let new = config::load(&args.new, &runtime);
    let (old, new) = match (old, new) {
        (Ok(old), Ok(new)) => (old.pack, new.pack),
        (old, new) => {
            let failed = [(&*args.old, old.err()), (&*args.new, new.err())];
            return print_load_errors(args.format, failed);
        }
    };
    let changes = crate::diff::diff(&old, &new);
    let breaking = changes
        .iter()
        .filter(|c| c.class == Class::Breaking)
        .count();
    let summary = match changes.len() {
        0 => "no changes".to_string(),
        n => format!(
            "{n} change(s): {breaking} breaking, {} compatible",
            n - breaking
        ),
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let list: Vec<Value> = changes.iter().map(to_json).collect();
            serde_json::to_writer_pretty(&mut out, &list)?;
            writeln!(out)?;
            // stdout stays one JSON document; the summary is for the person watching.
            eprintln!("{summary}");
        }
        OutputFormat::Text => {
            for c in &changes {
                writeln!(out, "{}", text_line(c))?;
            }
            writeln!(out, "{summary}")?;
        }
    }
    Ok(if breaking > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `breaking    chat.message: payload /text: … (old/a.yaml:9 → new/a.yaml:9)`; a side
/// without the definition shows `-`.
fn text_line(c: &Change) -> String {
    let side = |s: &Option<Site>| s.as_ref().map_or_else(|| "-".to_string(), Site::to_string);
    format!(
        "{:<10}  {}: {}  ({} → {})",
        c.class.as_str(),
        c.subject,
        c.detail,
        side(&c.old),
        side(&c.new)
    )
}

/// `{event, change, classification, detail, path?, old?, new?}`; a `rooms:` change has
/// `room` (the pattern) and `event: null`.
fn to_json(c: &Change) -> Value {
    let mut o = Map::new();
    match &c.subject {
        Subject::Event(name) => {
            o.insert("event".into(), json!(name));
        }
        Subject::Room(pattern) => {
            o.insert("event".into(), Value::Null);
            o.insert("room".into(), json!(pattern));
        }
    }
    o.insert("change".into(), json!(c.kind));
    o.insert("classification".into(), json!(c.class.as_str()));
    o.insert("detail".into(), json!(c.detail));
    if let Some(path) = &c.path {
        o.insert("path".into(), json!(path));
    }
    for (key, side) in [("old", &c.old), ("new", &c.new)] {
        if let Some(s) = side {
            o.insert(
                key.into(),
                json!({ "file": s.file.display().to_string(), "line": s.line }),
            );
        }
    }
    Value::Object(o)
}

/// Print the diagnostics of each pack that did not load, as `check` does, and return
/// [`LOAD_FAILED`]. Warnings of a pack that did load are not news here and stay quiet.
fn print_load_errors(
    format: OutputFormat,
    failed: [(&Path, Option<Diagnostics>); 2],
) -> anyhow::Result<ExitCode> {
    let mut all = Diagnostics::default();
    for (dir, diags) in failed {
        if let Some(diags) = diags {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            eprintln!(
                "{}: {errors} error(s), {} warning(s)",
                dir.display(),
                diags.0.len() - errors
            );
            all.0.extend(diags.0);
        }
    }
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &all.0)?;
            writeln!(out)?;
        }
        OutputFormat::Text => super::print_diagnostics(&mut out, &all)?,
    }
    Ok(ExitCode::from(LOAD_FAILED))
}
