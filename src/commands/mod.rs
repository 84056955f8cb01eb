//! What each subcommand does, returning an exit code; `main` only parses and dispatches.
//!
//! ```text
//! mod.rs    check, test, schema, asyncapi, nodes; the one-line error `main` prints
//! serve.rs  serve: logging, the async runtime, arguments → `ServerConfig`, signals
//! diff.rs   diff: two packs compared, as text or JSON
//! ```

mod diff;
mod serve;
pub use diff::diff;
pub use serve::{init_tracing, serve};

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{AsyncapiArgs, CheckArgs, DocFormat, NodesArgs, OutputFormat, TestArgs};
use crate::config::{self, Diagnostics};
use crate::describe;
use crate::script::{ScriptLimits, ScriptRuntime};

/// An error and its causes on one line, as `{:#}` prints them, but without a cause
/// whose text the error it caused already ends with: the typed errors of this crate
/// quote their cause in their message and keep it as their `source()` too.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            if !text.is_empty() && previous.ends_with(&text) {
                previous = text;
                continue;
            }
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

pub fn schema() -> anyhow::Result<ExitCode> {
    print!("{}", config::PACK_SCHEMA);
    Ok(ExitCode::SUCCESS)
}

/// The AsyncAPI document of a pack; a pack with errors prints them (as `check` does)
/// and fails.
pub fn asyncapi(args: &AsyncapiArgs) -> anyhow::Result<ExitCode> {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    let pack = match config::load(&args.dir, &runtime) {
        Ok(loaded) => loaded.pack,
        Err(diags) => {
            print_diagnostics(&mut std::io::stderr().lock(), &diags)?;
            eprintln!(
                "{}: the pack has errors; run `wss-engine check {}`",
                args.dir.display(),
                args.dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let title = std::fs::canonicalize(&args.dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| args.dir.display().to_string());
    let doc = describe::asyncapi::document(&pack, &title);
    let mut out = std::io::stdout().lock();
    match args.format {
        DocFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        DocFormat::Yaml => write!(out, "{}", describe::asyncapi::to_yaml(&doc))?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = ScriptRuntime::new(&ScriptLimits::default());
    let (pack, mut diags) = match config::load(&args.dir, &runtime) {
        Ok(config::Loaded { pack, warnings }) => (Some(pack), warnings),
        Err(diags) => (None, diags),
    };
    // The `tests:` cases are checked too, though serving ignores them.
    let (_, case_diags) = crate::packtest::cases::load(&args.dir);
    let pack = if case_diags.has_errors() { None } else { pack };
    diags.0.extend(case_diags.0);
    if args.redis_cluster {
        diags.promote(config::diagnostic::CROSS_SLOT);
    }
    // A pack that loads but has errors now (promoted ones) is not ok.
    let pack = if diags.has_errors() { None } else { pack };
    diags.sort();
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            if let (true, Some(pack)) = (args.list, &pack) {
                // One array, as before rooms existed, so tools that look events up by
                // `name` keep working; `kind` tells the two sorts of entry apart.
                let events = pack.events.values().map(|e| {
                    serde_json::json!({
                        "kind": "event", "name": e.name, "scope": e.scope.as_str(),
                        "to": e.to.to_string(),
                        "senders": config::Sender::ALL.iter().filter(|s| e.senders.allows(**s)).map(|s| s.as_str()).collect::<Vec<_>>(),
                        "description": e.description,
                    })
                });
                let rooms = pack.rooms.iter().map(|r| {
                    serde_json::json!({
                        "kind": "room", "room": r.pattern,
                        "history": { "size": r.history.size, "ttl": r.history.ttl.as_secs() },
                    })
                });
                let list: Vec<_> = events.chain(rooms).collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
            } else {
                serde_json::to_writer_pretty(&mut out, &diags.0)?;
            }
            writeln!(out)?;
        }
        OutputFormat::Text => {
            print_diagnostics(&mut out, &diags)?;
            if let (true, Some(pack)) = (args.list, &pack) {
                for e in pack.events.values() {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        e.name,
                        e.scope.as_str(),
                        e.to,
                        e.senders,
                        e.description.as_deref().unwrap_or("").trim()
                    )?;
                }
                // Three columns where an event line has five: an event may be called
                // `room`, so the column count is what tells the lines apart.
                for r in pack.rooms.iter() {
                    writeln!(
                        out,
                        "room\t{}\thistory size={} ttl={}s",
                        r.pattern,
                        r.history.size,
                        r.history.ttl.as_secs()
                    )?;
                }
            }
        }
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.0.len() - errors;
    match &pack {
        Some(pack) => eprintln!(
            "{}: ok, {} events{}{}{}",
            args.dir.display(),
            pack.events.len(),
            if pack.hooks.on_connect.is_some() || pack.hooks.on_disconnect.is_some() {
                " and hooks"
            } else {
                ""
            },
            match pack.rooms.len() {
                0 => String::new(),
                n => format!(", {n} room rule(s)"),
            },
            if warnings > 0 {
                format!(", {warnings} warning(s)")
            } else {
                String::new()
            }
        ),
        None => eprintln!(
            "{}: {errors} error(s), {warnings} warning(s)",
            args.dir.display()
        ),
    }
    Ok(if pack.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_diagnostics(out: &mut impl Write, diags: &Diagnostics) -> std::io::Result<()> {
    let snippets = std::io::stdout().is_terminal();
    for d in diags.iter() {
        writeln!(out, "{d}")?;
        if snippets {
            if let Some(snippet) = d.snippet() {
                writeln!(out, "{snippet}")?;
            }
        }
    }
    Ok(())
}

pub fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(crate::packtest::run_pack_tests(&args.dir))?;
    Ok(if report {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn nodes(args: &NodesArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let nodes = runtime
        .block_on(crate::cluster::list_nodes(&args.redis, &args.redis_prefix))
        .with_context(|| format!("reading the node registry from {}", args.redis))?;
    let live: Vec<_> = nodes.iter().filter_map(|(_, info)| info.as_ref()).collect();
    let mut fingerprints: Vec<&str> = live.iter().map(|i| i.fingerprint.as_str()).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let list: Vec<_> = nodes
                .iter()
                .map(|(id, info)| serde_json::json!({ "id": id, "alive": info.is_some(), "info": info }))
                .collect();
            serde_json::to_writer_pretty(&mut out, &list)?;
            writeln!(out)?;
        }
        OutputFormat::Text => {
            writeln!(out, "NODE\tSTATE\tADDR\tCONNECTIONS\tPACK\tVERSION")?;
            for (id, info) in &nodes {
                match info {
                    Some(i) => writeln!(
                        out,
                        "{id}\tlive\t{}\t{}\t{}\t{}",
                        i.addr, i.connections, i.fingerprint, i.version
                    )?,
                    None => writeln!(out, "{id}\tdead (awaiting cleanup)\t-\t-\t-\t-")?,
                }
            }
        }
    }
    if fingerprints.len() > 1 {
        eprintln!(
            "warning: live nodes serve {} different packs ({}): deploy one pack to every node",
            fingerprints.len(),
            fingerprints.join(", ")
        );
    }
    eprintln!("{} live node(s)", live.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_quoted_is_printed_once() {
        let io = || std::io::Error::other("disk on fire");
        let quoted = crate::transport::api::keys::KeyError::ReadFile {
            path: "keys".into(),
            source: io(),
        };
        let e = anyhow::Error::new(quoted).context("starting");
        assert_eq!(
            error_line(&e),
            "starting: reading the API keys file keys: disk on fire"
        );
        let plain = anyhow::Error::new(io()).context("reading keys");
        assert_eq!(error_line(&plain), format!("{plain:#}"));
    }
}
