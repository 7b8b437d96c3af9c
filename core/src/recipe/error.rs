//! Recipe errors and where they are: a checked value's key path is
//! located with [`super::locate`], a serde error's position and key are
//! read from its message.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate;

/// An error in a recipe, located in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeError {
    /// The recipe file (or `<recipe>` for text without a file).
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The key path, e.g. `terms[1].weight` (empty for syntax errors).
    pub key: String,
    /// What is wrong, what was expected and what to do.
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": '{}': {}", self.key, self.message)
        }
    }
}

impl std::error::Error for RecipeError {}

pub(super) fn syntax_error(text: &str, file: &Path, e: &yaml_serde::Error) -> RecipeError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let msg = e.to_string();
    // yaml_serde prefixes the key path ("terms[0]: unknown field ...").
    let (key, detail) = match msg.split_once(": ") {
        Some((k, rest)) if !k.contains(' ') || k.contains('[') || k.contains('.') => (k.to_string(), rest.to_string()),
        _ => (String::new(), msg.clone()),
    };
    let detail = detail.split(" at line ").next().unwrap_or(&detail).to_string();
    let (mut line, mut column, mut key) = (line, column, key);
    let quoted = |d: &str| -> Option<String> {
        let a = d.find('`')?;
        let b = d[a + 1..].find('`')?;
        Some(d[a + 1..a + 1 + b].to_string())
    };
    if detail.contains("unknown field") {
        // Name the misspelt key itself: `optimizer.lrr`, not `optimizer`.
        if let Some(field) = quoted(&detail) {
            key = if key.is_empty() { field } else { format!("{key}.{field}") };
        }
    } else if detail.contains("duplicate field") {
        // serde reports the mapping; point at the second occurrence.
        if let Some(field) = quoted(&detail) {
            let hits: Vec<(usize, usize)> = text
                .lines()
                .enumerate()
                .filter_map(|(i, l)| {
                    let t = l.trim_start();
                    let t = t.strip_prefix("- ").unwrap_or(t);
                    t.strip_prefix(field.as_str())
                        .filter(|r| r.trim_start().starts_with(':'))
                        .map(|_| (i + 1, l.len() - l.trim_start().len() + 1))
                })
                .collect();
            if let Some(&(l, c)) = hits.get(1) {
                (line, column) = (l, c);
            }
            key = if key.is_empty() { field } else { format!("{key}.{field}") };
        }
    } else if detail.contains("untagged enum RawAlpha") {
        // Untagged enums lose the path and position: it can only be `alpha`.
        key = "alpha".into();
        if let Some(at) = locate::locate(text, &locate::parse_path("alpha")) {
            (line, column) = at;
        }
    } else if detail.contains("untagged enum RawLayers") {
        key = "layers".into();
        if let Some(at) = locate::locate(text, &locate::parse_path("layers")) {
            (line, column) = at;
        }
    }
    let hint = if detail.contains("unknown field") {
        "; remove it or fix its spelling (keys are case-sensitive)"
    } else if detail.contains("missing field") {
        "; add it (see examples/recipes/ for a complete recipe)"
    } else if detail.contains("duplicate field") {
        "; a key may appear only once: remove one of them"
    } else if detail.contains("unknown variant") {
        "; use one of the values listed"
    } else if detail.contains("invalid type") || detail.contains("invalid value") {
        "; fix the value's type"
    } else if detail.contains("untagged enum RawLayers") {
        "; expected a list of layers ([0, 1, 2]) or text (coarse, medium, fine, 0-3,8)"
    } else if detail.contains("did not match any variant") {
        "; expected a number (alpha: 3) or a range (alpha: {min: -3, max: 3, min_abs: 1})"
    } else if key.is_empty() {
        "; the file is not valid YAML there"
    } else {
        ""
    };
    RecipeError { file: file.to_path_buf(), line, column, key, message: format!("{detail}{hint}") }
}
