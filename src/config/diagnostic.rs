//! Problems found in a pack, each pinned to `file:line:col`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file that holds the mistake: the YAML file, a `.rhai` file or a schema file.
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// What kind of problem, for those a flag can make stricter (`cross-slot`: keys one
    /// script touches that a Redis Cluster may keep in different slots). Not printed:
    /// the JSON form of a diagnostic keeps the fields tools already read.
    #[serde(skip)]
    pub code: Option<&'static str>,
}

/// Keys one script touches that may sit in different Redis Cluster slots: a warning,
/// an error under `check --redis-cluster`.
pub const CROSS_SLOT: &str = "cross-slot";

impl Diagnostic {
    pub fn error(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, file, pos, message)
    }

    pub fn warning(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, file, pos, message)
    }

    fn new(severity: Severity, file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            severity,
            file: file.to_path_buf(),
            line: pos.line.max(1),
            col: pos.col.max(1),
            message: message.into(),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The offending source line with a caret under the column, for humans at a terminal.
    pub fn snippet(&self) -> Option<String> {
        let text = super::files::read_text(&self.file).ok()?;
        let line = text.lines().nth(self.line.checked_sub(1)?)?;
        let gutter = self.line.to_string().len();
        let caret_pad: String = line
            .chars()
            .take(self.col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        Some(format!(
            "{:gutter$} |\n{} | {}\n{:gutter$} | {}^",
            "", self.line, line, "", caret_pad
        ))
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            severity,
            self.message
        )
    }
}

/// Every problem of one load, in the order they were found.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn error(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(Diagnostic::error(file, pos, message));
    }

    pub fn warning(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(Diagnostic::warning(file, pos, message));
    }

    /// `--redis-cluster`: what could only fail on a Redis Cluster is an error.
    pub fn promote(&mut self, code: &str) {
        for d in self.0.iter_mut().filter(|d| d.code == Some(code)) {
            d.severity = Severity::Error;
        }
    }

    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Files in name order, then position: the order an operator reads them in.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        // A schema file shared by several events is checked once, but keep the list
        // free of repeats whatever path led to one.
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
