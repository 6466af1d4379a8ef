//! What `validate` returns: every problem found, with its severity and stable kind.

use std::path::Path;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub path: String,
    pub severity: Severity,
    /// Stable machine-readable category (e.g. `missing_tensor`, `bad_header`).
    pub kind: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub root: String,
    pub deep: bool,
    pub variant_dirs: usize,
    pub personas: usize,
    pub files_checked: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }

    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn problem(
    path: &Path,
    severity: Severity,
    kind: &'static str,
    message: impl Into<String>,
) -> Problem {
    Problem {
        path: path.display().to_string(),
        severity,
        kind,
        message: message.into(),
    }
}

pub(super) fn error(path: &Path, kind: &'static str, message: impl Into<String>) -> Problem {
    problem(path, Severity::Error, kind, message)
}

pub(super) fn warning(path: &Path, kind: &'static str, message: impl Into<String>) -> Problem {
    problem(path, Severity::Warning, kind, message)
}
