//! PLACEHOLDER until the write-rules branch lands: the types the rest of the policy engine builds on.

use serde::Deserialize;

/// The write rules of a policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WriteRules {
    /// Globs.
    pub forbidden_paths: Vec<String>,
    /// Forbid lockfiles too.
    pub forbid_lockfiles: bool,
    /// Max files changed.
    pub max_files: Option<usize>,
    /// Max lines changed.
    pub max_lines: Option<usize>,
    /// Binary files allowed.
    pub allow_binary: bool,
}

impl Default for WriteRules {
    fn default() -> Self {
        WriteRules {
            forbidden_paths: DEFAULT_FORBIDDEN.iter().map(|s| s.to_string()).collect(),
            forbid_lockfiles: false,
            max_files: Some(100),
            max_lines: Some(5000),
            allow_binary: false,
        }
    }
}

/// Built-in forbidden globs.
pub const DEFAULT_FORBIDDEN: &[&str] = &[".github/workflows/**"];

/// A broken rule.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Rule name.
    pub rule: String,
    /// Path.
    pub path: Option<String>,
    /// Detail.
    pub detail: String,
}

/// Path check.
pub fn check_path(_rules: &WriteRules, _path: &str) -> Result<(), Violation> {
    Ok(())
}

/// Compiles the globs.
pub fn compile(_rules: &WriteRules) -> Result<(), String> {
    Ok(())
}
