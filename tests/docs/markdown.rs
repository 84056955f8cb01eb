//! Just enough Markdown for the docs test: the pages, their fenced code blocks with
//! their info strings, their headings (as GitHub makes anchors of them) and their links.

use std::path::{Path, PathBuf};

use crate::support::root;

/// One Markdown file of the docs, its path relative to the repository root.
pub struct Page {
    pub path: PathBuf,
    pub text: String,
}

impl Page {
    pub fn read(path: impl Into<PathBuf>) -> Page {
        let path = path.into();
        let text = std::fs::read_to_string(root().join(&path))
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Page { path, text }
    }

    /// `page:line`, for messages.
    pub fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }

    /// Lines outside fenced code blocks, numbered from 1.
    pub fn prose(&self) -> Vec<(usize, &str)> {
        let mut fence: Option<(String, usize)> = None;
        let mut out = Vec::new();
        for (i, line) in self.text.lines().enumerate() {
            match &fence {
                Some((marker, _)) => {
                    if line.trim() == marker.as_str() {
                        fence = None;
                    }
                }
                None => match opening_fence(line) {
                    Some((marker, _, _)) => fence = Some((marker, i)),
                    None => out.push((i + 1, line)),
                },
            }
        }
        out
    }

    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        let mut open: Option<(String, usize, usize, String)> = None;
        let mut body = Vec::new();
        for (i, line) in self.text.lines().enumerate() {
            match &open {
                Some((marker, indent, start, info)) => {
                    if line.trim() == marker.as_str() {
                        let mut words = info.split_whitespace().map(str::to_string);
                        blocks.push(Block {
                            line: *start,
                            lang: words.next().unwrap_or_default(),
                            marks: words.collect(),
                            body: body.join("\n"),
                        });
                        body.clear();
                        open = None;
                    } else {
                        let cut = line.len() - line.trim_start().len();
                        body.push(line[cut.min(*indent)..].to_string());
                    }
                }
                None => {
                    if let Some((marker, indent, info)) = opening_fence(line) {
                        open = Some((marker, indent, i + 1, info));
                    }
                }
            }
        }
        assert!(
            open.is_none(),
            "{}: a code block is never closed",
            self.path.display()
        );
        blocks
    }

    /// The anchors GitHub gives this page's headings (`## Two commands` → `two-commands`).
    pub fn anchors(&self) -> Vec<String> {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut anchors = Vec::new();
        for (_, line) in self.prose() {
            let level = line.len() - line.trim_start_matches('#').len();
            if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
                continue;
            }
            let base = slug(line[level..].trim());
            let count = seen.entry(base.clone()).or_default();
            anchors.push(match *count {
                0 => base,
                n => format!("{base}-{n}"),
            });
            *count += 1;
        }
        anchors
    }

    /// Every link target in the prose (inline `[text](target)` and `[label]: target`),
    /// with its line; inline code spans are skipped.
    pub fn links(&self) -> Vec<(usize, String)> {
        let mut links = Vec::new();
        for (n, line) in self.prose() {
            let line = without_code_spans(line);
            if let Some(rest) = line.trim_start().strip_prefix('[') {
                if let Some((_, target)) = rest.split_once("]: ") {
                    links.push((
                        n,
                        target.split_whitespace().next().unwrap_or("").to_string(),
                    ));
                    continue;
                }
            }
            let mut from = 0;
            while let Some(at) = line[from..].find("](") {
                let start = from + at + 2;
                let end = line[start..]
                    .find([')', ' '])
                    .map_or(line.len(), |e| start + e);
                links.push((n, line[start..end].to_string()));
                from = end;
            }
        }
        links
    }
}

/// A fenced code block: its first line in the page, the language (first word of the
/// info string) and the marks after it (`sh test tmp` → `sh`, [`test`, `tmp`]).
pub struct Block {
    pub line: usize,
    pub lang: String,
    pub marks: Vec<String>,
    pub body: String,
}

impl Block {
    pub fn has(&self, mark: &str) -> bool {
        self.marks.iter().any(|m| m == mark)
    }

    /// The value of a `key=value` mark.
    pub fn mark_value(&self, key: &str) -> Option<&str> {
        self.marks
            .iter()
            .find_map(|m| m.strip_prefix(key)?.strip_prefix('='))
    }

    /// The page line of the body's `i`-th line (0-based).
    pub fn body_line(&self, i: usize) -> usize {
        self.line + 1 + i
    }
}

/// ```` ```info ```` (possibly indented, as in a list): the closing marker, the indent,
/// the info string.
fn opening_fence(line: &str) -> Option<(String, usize, String)> {
    let trimmed = line.trim_start();
    let ticks = trimmed.len() - trimmed.trim_start_matches('`').len();
    if ticks < 3 {
        return None;
    }
    let info = trimmed[ticks..].trim();
    if info.contains('`') {
        return None;
    }
    Some((
        "`".repeat(ticks),
        line.len() - trimmed.len(),
        info.to_string(),
    ))
}

fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in line.chars() {
        if c == '`' {
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// GitHub's heading anchor: lowercase; letters, digits, `-` and `_` kept, spaces to `-`,
/// everything else dropped.
pub fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// README.md and every page under docs/, sorted.
pub fn pages() -> Vec<Page> {
    let mut paths = vec![PathBuf::from("README.md")];
    paths.extend(markdown_under(Path::new("docs")));
    paths.into_iter().map(Page::read).collect()
}

/// Markdown files under `dir` (relative to the root), recursively, sorted.
pub fn markdown_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(root().join(&dir))
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = dir.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
