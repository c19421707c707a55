//! Config errors: every one names the file, the key (as a dotted path like `providers.s3.bucket`) and what was
//! expected; TOML syntax errors also carry line and column.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `providers.s3.bucket` or `routes[2].pattern`; empty for whole-file problems.
    pub key: String,
    /// 1-based line and column, known for syntax errors.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Turns serde's wording into the config's: "unknown field `x`, expected one of `a`, `b`" becomes
/// ("<path>.x", "unknown key; expected one of: a, b").
pub fn describe_serde_error(path: &str, message: &str) -> (String, String) {
    let join = |parent: &str, child: &str| {
        if parent.is_empty() || parent == "." {
            child.to_string()
        } else {
            format!("{parent}.{child}")
        }
    };
    // toml appends "in `key`" to messages of custom errors; the key is reported separately.
    let message = message.split("\nin `").next().unwrap_or(message).trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(", ").replace('`', "");
        let expected = if let Some(list) = expected.strip_prefix("expected one of ") {
            format!("expected one of: {list}")
        } else if let Some(one) = expected.strip_prefix("expected ") {
            format!("expected: {one}")
        } else {
            "no keys are expected here".to_string()
        };
        // A deserializer that tracks the path may already have stepped into the unknown key.
        let key = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_string()
        } else {
            join(path, name)
        };
        return (key, format!("unknown key; {expected}"));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        let key = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_string()
        } else {
            join(path, name)
        };
        return (key, "missing required key".to_string());
    }
    let path = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    // serde calls enum values "variants", which reads like image variants here.
    let message = match message.strip_prefix("unknown variant `") {
        Some(rest) => format!(
            "unknown value `{}",
            rest.replace("`, expected", "`; expected")
        ),
        None => message.replace("invalid type: ", "wrong type: "),
    };
    (path, message)
}
