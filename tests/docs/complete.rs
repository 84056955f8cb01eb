//! What the code defines that the docs must name: each check returns one line per thing
//! missing, saying what to add and where.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::markdown::{markdown_under, Page};
use crate::support::{cli, root};

/// Every `.rs` file under `src/`, with its path.
fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                let rel = path.strip_prefix(root()).expect("under the root");
                files.push((rel.display().to_string(), text));
            }
        }
    }
    files.sort();
    files
}

fn source(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The first cell of every table row of `text`, as written.
fn first_cells(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('|'))
        .filter_map(|rest| rest.split('|').next())
        .map(str::trim)
        .collect()
}

/// Backticked spans of `text` (`` `a` and `b` `` → `a`, `b`).
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

// ---- the command line -----------------------------------------------------------

/// One option of a `--help`: its long name, env var and default.
#[derive(Debug)]
pub struct Flag {
    pub name: String,
    pub env: Option<String>,
    pub default: Option<String>,
}

fn help(args: &[&str]) -> String {
    let run = cli::run(args);
    assert!(
        run.status.success(),
        "wss-engine {}: {}",
        args.join(" "),
        run.stderr
    );
    run.stdout
}

fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// The subcommands `wss-engine --help` lists (`help` aside).
pub fn subcommands() -> Vec<String> {
    section(&help(&["--help"]), "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The options a `--help` lists (`--help` and `--version` aside).
pub fn flags(help: &str) -> Vec<Flag> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in section(help, "Options:") {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent <= 6 {
            let long = trimmed
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| w.starts_with("--"))
                .unwrap_or_default()
                .to_string();
            blocks.push((long, trimmed.to_string()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    let bracket = |text: &str, key: &str| {
        let start = text.find(&format!("[{key}: "))? + key.len() + 3;
        let end = start + text[start..].find(']')?;
        Some(
            text[start..end]
                .trim_end_matches('=')
                .split('=')
                .next()?
                .to_string(),
        )
    };
    blocks
        .into_iter()
        .filter(|(name, _)| !name.is_empty() && name != "--help" && name != "--version")
        .map(|(name, text)| Flag {
            env: bracket(&text, "env"),
            default: bracket(&text, "default"),
            name,
        })
        .collect()
}

/// The lines of `page` under the heading that names `wss-engine SUB`, to the next
/// heading of the same or a higher level.
fn cli_section<'a>(page: &'a Page, sub: &str) -> Option<Vec<&'a str>> {
    let needle = format!("wss-engine {sub}");
    let prose = page.prose();
    let heading_level = |line: &str| {
        let level = line.len() - line.trim_start_matches('#').len();
        ((1..=6).contains(&level) && line[level..].starts_with(' ')).then_some(level)
    };
    let start = prose.iter().position(|(_, line)| {
        heading_level(line).is_some()
            && line.match_indices(&needle).any(|(at, _)| {
                !line[at + needle.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
            })
    })?;
    let level = heading_level(prose[start].1).expect("a heading");
    Some(
        prose[start + 1..]
            .iter()
            .map(|(_, line)| *line)
            .take_while(|line| heading_level(line).is_none_or(|l| l > level))
            .collect(),
    )
}

fn names_flag(line: &str, flag: &str) -> bool {
    line.match_indices(flag).any(|(at, _)| {
        !line[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Every subcommand has a section of docs/cli.md, and every option of its `--help` a
/// line there naming it with its env var and default; no line names an option that
/// is gone.
pub fn cli_flags() -> Vec<String> {
    let page = Page::read("docs/cli.md");
    let mut missing = Vec::new();
    let mut subs = subcommands();
    subs.sort();
    for sub in &subs {
        let Some(lines) = cli_section(&page, sub) else {
            missing.push(format!(
                "docs/cli.md: no heading names `wss-engine {sub}`: add a section for it (`wss-engine {sub} --help` lists its options)"
            ));
            continue;
        };
        let mut helps = vec![help(&[sub.as_str(), "--help"])];
        if sub == "serve" {
            // Options given without a subcommand are serve's.
            helps.push(help(&["--help"]));
        }
        let mut known = BTreeSet::new();
        for text in &helps {
            for flag in flags(text) {
                known.insert(flag.name.clone());
                let env = flag.env.as_deref().map(|e| format!("`{e}`"));
                let default = flag.default.as_deref().map(|d| format!("`{d}`"));
                let ok = lines.iter().any(|line| {
                    names_flag(line, &flag.name)
                        && env.as_deref().is_none_or(|e| line.contains(e))
                        && default.as_deref().is_none_or(|d| line.contains(d))
                });
                if !ok {
                    let row = format!(
                        "| `{}` | {} | {} | what it does |",
                        flag.name,
                        env.as_deref().unwrap_or("—"),
                        default.as_deref().unwrap_or("none")
                    );
                    let entry = format!("docs/cli.md § `wss-engine {sub}`: `{}` is not listed with its env var and default; add the row {row}", flag.name);
                    if !missing.contains(&entry) {
                        missing.push(entry);
                    }
                }
            }
        }
        for cell in lines.iter().flat_map(|l| first_cells(l)) {
            for span in code_spans(cell) {
                let Some(name) = span
                    .split_whitespace()
                    .next()
                    .filter(|n| n.starts_with("--"))
                else {
                    continue;
                };
                if !known.contains(name) {
                    missing.push(format!(
                        "docs/cli.md § `wss-engine {sub}`: a row names `{name}`, which `wss-engine {sub} --help` does not list: remove or rename it"
                    ));
                }
            }
        }
    }
    if !page.text.contains("--version") {
        missing.push("docs/cli.md: `--version` is not named".to_string());
    }
    missing
}

// ---- the pack format ------------------------------------------------------------

/// Every property of the pack schema: (its path in a pack, its name).
pub fn schema_fields(schema: &Value) -> Vec<(String, String)> {
    fn walk(
        node: &Value,
        path: &str,
        schema: &Value,
        depth: usize,
        out: &mut Vec<(String, String)>,
    ) {
        if depth > 16 {
            return;
        }
        if let Some(target) = node.get("$ref").and_then(Value::as_str) {
            let def = target.strip_prefix("#/$defs/").expect("local $refs only");
            walk(&schema["$defs"][def], path, schema, depth + 1, out);
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let here = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                out.push((here.clone(), name.clone()));
                walk(sub, &here, schema, depth + 1, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), schema, depth + 1, out);
        }
        if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
            walk(extra, &format!("{path}.<name>"), schema, depth + 1, out);
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for sub in node
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                walk(sub, path, schema, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", schema, 0, &mut out);
    out.sort();
    out.dedup();
    out
}

/// Every property of `wss-engine schema` has a row in a table of docs/packs.md whose
/// first cell is its name, or a dotted path ending in it (`rate_limit.per_second`).
pub fn pack_fields() -> Vec<String> {
    let schema: Value = serde_json::from_str(&cli::run(&["schema"]).stdout)
        .expect("`wss-engine schema` prints JSON");
    let page = Page::read("docs/packs.md");
    let documented: BTreeSet<String> = first_cells(&page.text)
        .iter()
        .flat_map(|cell| code_spans(cell))
        .map(|span| {
            let last = span.rsplit('.').next().unwrap_or(span);
            last.trim_end_matches("[]").to_string()
        })
        .collect();
    let mut missing = Vec::new();
    for (path, name) in schema_fields(&schema) {
        if !documented.contains(&name) {
            missing.push(format!(
                "docs/packs.md: the pack field `{path}` has no table row: add one to the table of its section, its first cell `{name}` or a dotted path ending in it (`rate_limit.burst`)"
            ));
        }
    }
    missing
}

// ---- metrics, limits, script functions, protocol codes, routes -----------------------

/// Each `wss_*` metric a metrics macro in `src/` records, with its label names.
pub fn code_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, text) in sources() {
        for kind in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(kind) {
                let args = macro_args(&text[at + kind.len()..]);
                let Some(name) = args
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|rest| rest.split('"').next())
                    .filter(|n| n.starts_with("wss_"))
                else {
                    continue;
                };
                let labels = metrics.entry(name.to_string()).or_default();
                for (i, _) in args.match_indices("=>") {
                    let before = args[..i].trim_end();
                    if let Some(label) = before.strip_suffix('"').and_then(|b| b.rsplit('"').next())
                    {
                        labels.insert(label.to_string());
                    }
                }
            }
        }
    }
    metrics
}

/// The text up to the `)` that closes a macro call.
fn macro_args(text: &str) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return &text[..i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    text
}

/// Every metric is named in docs/operations/metrics.md with all its labels
/// (`wss_events_total{event,outcome}`), and every metric named in a row there exists.
pub fn metrics() -> Vec<String> {
    let page = Page::read("docs/operations/metrics.md");
    let code = code_metrics();
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for span in code_spans(&page.text) {
        let Some(rest) = span.strip_prefix("wss_") else {
            continue;
        };
        let name_len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = format!("wss_{}", &rest[..name_len]);
        let labels = documented.entry(name).or_default();
        if let Some(inner) = rest[name_len..]
            .strip_prefix('{')
            .and_then(|r| r.split('}').next())
        {
            for label in inner.split(',') {
                let label = label.split('=').next().unwrap_or("").trim();
                if !label.is_empty() {
                    labels.insert(label.to_string());
                }
            }
        }
    }
    let mut missing = Vec::new();
    for (name, labels) in &code {
        let shown = if labels.is_empty() {
            format!("`{name}`")
        } else {
            format!(
                "`{name}{{{}}}`",
                labels.iter().cloned().collect::<Vec<_>>().join(",")
            )
        };
        match documented.get(name) {
            None => missing.push(format!(
                "docs/operations/metrics.md: the metric {shown} is not named: add a row `| {shown} | type | what it counts |`"
            )),
            Some(have) if !labels.is_subset(have) => missing.push(format!(
                "docs/operations/metrics.md: the metric `{name}` is named without all its labels: write it {shown} and say what each label holds"
            )),
            Some(_) => {}
        }
    }
    for cell in first_cells(&page.text) {
        for span in code_spans(cell) {
            let name = span.split('{').next().unwrap_or(span);
            if name.starts_with("wss_") && !code.contains_key(name) {
                missing.push(format!(
                    "docs/operations/metrics.md: a row names `{name}`, which no metrics macro in src/ records: remove or rename it"
                ));
            }
        }
    }
    missing
}

/// Every limit counted by `limits::hit("NAME")` is named in docs/operations/limits.md.
pub fn limit_names() -> Vec<String> {
    let page = Page::read("docs/operations/limits.md");
    let mut missing = Vec::new();
    for (file, text) in sources() {
        for (at, _) in text.match_indices("limits::hit(") {
            let args = macro_args(&text[at + "limits::hit(".len()..]);
            let Some(name) = args
                .trim()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            if !page.text.contains(&format!("`{name}`")) {
                missing.push(format!(
                    "docs/operations/limits.md: the limit `{name}` ({file} counts it in `wss_limit_hits_total{{limit}}`) is not named: add it, with its flag, default and what a client sees"
                ));
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

/// Every function src/script/api.rs registers is shown called in docs/scripts.md
/// (`` `emit(` `` or `` `state.get(` ``).
pub fn script_functions() -> Vec<String> {
    let page = Page::read("docs/scripts.md");
    let api = source("src/script/api.rs");
    // name → whether it is a method of `state` (its closure takes the `StateApi`).
    let mut names: BTreeMap<&str, bool> = BTreeMap::new();
    for (at, _) in api.match_indices("register_fn(") {
        let call = macro_args(&api[at + "register_fn(".len()..]);
        if let Some(name) = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
        {
            *names.entry(name).or_default() |= call.contains("StateApi");
        }
    }
    names
        .into_iter()
        .filter(|(name, _)| !page.text.contains(&format!("`{name}(")) && !page.text.contains(&format!("`state.{name}(")))
        .map(|(name, method)| {
            let call = if method { format!("state.{name}(…)") } else { format!("{name}(…)") };
            format!("docs/scripts.md: the script function `{name}` (src/script/api.rs) is not documented: add a row `| `{call}` | … |`")
        })
        .collect()
}

/// Every error code of the protocol and every close code the server sends are in
/// docs/protocol.md.
pub fn protocol_codes() -> Vec<String> {
    let page = Page::read("docs/protocol.md");
    let mut missing = Vec::new();
    let errors = source("src/engine/error.rs");
    for line in errors.lines() {
        let Some((_, code)) = line.split_once("=> \"") else {
            continue;
        };
        let code = code.split('"').next().unwrap_or_default();
        if !page.text.contains(&format!("`{code}`")) {
            missing.push(format!("docs/protocol.md: the error code `{code}` (src/engine/error.rs) is not named: add a row to the table of error codes"));
        }
    }
    let ws = source("src/transport/ws/mod.rs");
    let cells = first_cells(&page.text);
    for line in ws.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": u16 = ") else {
            continue;
        };
        let value = value.trim_end_matches(';');
        if !cells.iter().any(|c| c.contains(value)) {
            missing.push(format!("docs/protocol.md: the close code {value} (`{name}` in src/transport/ws/mod.rs) has no row in the table of close codes"));
        }
    }
    missing
}

/// Every HTTP route is named in docs/http-api.md: the API's as `` `GET /api/…` ``, the
/// others as `` `/path` ``; and every API route a row names exists.
pub fn http_routes() -> Vec<String> {
    let page = Page::read("docs/http-api.md");
    let mut api = BTreeSet::new();
    let mut plain = BTreeSet::new();
    for (file, text) in sources()
        .into_iter()
        .filter(|(f, _)| f.starts_with("src/transport"))
    {
        for (at, _) in text.match_indices("#[utoipa::path(") {
            let args = macro_args(&text[at + "#[utoipa::path(".len()..]);
            let method = args
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_uppercase();
            if let Some(path) = args
                .split_once("path = \"")
                .and_then(|(_, r)| r.split('"').next())
            {
                api.insert((format!("{method} {path}"), file.clone()));
            }
        }
        for (at, _) in text.match_indices(".route(\"") {
            let path = text[at + ".route(\"".len()..]
                .split('"')
                .next()
                .unwrap_or_default();
            let skip = path.contains("{*")
                || path == "/api"
                || path == "/api/"
                || path.ends_with(".js")
                || path.ends_with(".css");
            if !skip {
                plain.insert((path.to_string(), file.clone()));
            }
        }
    }
    let mut missing = Vec::new();
    for (route, file) in &api {
        if !page.text.contains(&format!("`{route}")) {
            missing.push(format!("docs/http-api.md: the route `{route}` ({file}) is not documented: add a row `| `{route}` | scope | answers |`"));
        }
    }
    for (path, file) in &plain {
        if !page.text.contains(&format!("`{path}`")) {
            missing.push(format!(
                "docs/http-api.md: the route `{path}` ({file}) is not named"
            ));
        }
    }
    for cell in first_cells(&page.text) {
        for span in code_spans(cell) {
            let mut words = span.split_whitespace();
            let (Some(method), Some(path)) = (words.next(), words.next()) else {
                continue;
            };
            if ["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method)
                && path.starts_with("/api/")
            {
                let path = path.split('?').next().unwrap_or(path);
                let route = format!("{method} {path}");
                if !api.iter().any(|(r, _)| *r == route) {
                    missing.push(format!("docs/http-api.md: a row names `{route}`, which no handler in src/transport serves: remove or rename it"));
                }
            }
        }
    }
    missing
}

/// Every page under docs/ is in docs/SUMMARY.md (mdBook shows only those).
pub fn summary() -> Vec<String> {
    let summary = Page::read("docs/SUMMARY.md");
    let linked: BTreeSet<std::path::PathBuf> = summary
        .links()
        .into_iter()
        .map(|(_, target)| Path::new("docs").join(target.split('#').next().unwrap_or_default()))
        .collect();
    markdown_under(Path::new("docs"))
        .into_iter()
        .filter(|p| p != Path::new("docs/SUMMARY.md") && !linked.contains(p))
        .map(|p| {
            format!(
                "docs/SUMMARY.md: `{}` is not in the book: add a link to it",
                p.display()
            )
        })
        .collect()
}

/// docs/development.md's source tree names every top-level entry of `src/` (`src/x.rs`,
/// `src/y/`), and every `src/…` path any page names exists.
pub fn source_tree() -> Vec<String> {
    let mut missing = Vec::new();
    let page = Page::read("docs/development.md");
    let mut entries: Vec<String> = std::fs::read_dir(root().join("src"))
        .expect("read src/")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().expect("file type").is_dir() {
                format!("src/{name}/")
            } else {
                format!("src/{name}")
            }
        })
        .collect();
    entries.sort();
    for entry in entries {
        let named = page.text.match_indices(&entry).any(|(at, _)| {
            !page.text[at + entry.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        });
        if !named {
            missing.push(format!(
                "docs/development.md: the source tree does not name `{entry}`: add a line saying what it holds"
            ));
        }
    }
    let is_path_char = |c: char| c.is_alphanumeric() || "_./-".contains(c);
    // The benchmark history names files as they were then.
    let current = crate::markdown::pages()
        .into_iter()
        .filter(|p| p.path != Path::new("docs/benchmark-history.md"));
    for page in current {
        for (at, _) in page.text.match_indices("src/") {
            if page.text[..at]
                .chars()
                .next_back()
                .is_some_and(is_path_char)
            {
                continue;
            }
            let path: String = page.text[at..]
                .chars()
                .take_while(|c| is_path_char(*c))
                .collect();
            let path = path.trim_end_matches(['.', ',']);
            if !root().join(path).exists() {
                missing.push(format!(
                    "{}: names `{path}`, which does not exist",
                    page.path.display()
                ));
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}
