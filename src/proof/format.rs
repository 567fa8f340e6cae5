//! The vocabulary statements share with the policy: a rule's decision as recorded, a model's price (the cost a
//! model-call statement carries), and the agent's tools (which a policy switches on and a tool-call statement
//! names). Defined here, below both, so the proof never depends on the policy: the policy re-exports them.

use serde::{Deserialize, Serialize};

use super::bundle::ReceiptUsage;

/// One of the agent's tools. [`Tool::as_str`] is its wire name: what the model is offered and calls, what a policy
/// lists and what a tool-call statement records (which keeps the name as the model sent it, known or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    /// `list_files`: a directory listing.
    ListFiles,
    /// `read_file`: one text file.
    ReadFile,
    /// `write_file`: create or overwrite a file.
    WriteFile,
    /// `edit_file`: replace one exact occurrence in a file.
    EditFile,
    /// `search`: a regular expression over file contents.
    Search,
    /// `run`: a shell command in the sandbox.
    Run,
    /// `finish`: ends the task (always available: it only ends the job).
    Finish,
}

impl Tool {
    /// Every tool, in the order the model is offered them.
    pub const ALL: [Tool; 7] = [
        Tool::ListFiles,
        Tool::ReadFile,
        Tool::WriteFile,
        Tool::EditFile,
        Tool::Search,
        Tool::Run,
        Tool::Finish,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tool::ListFiles => "list_files",
            Tool::ReadFile => "read_file",
            Tool::WriteFile => "write_file",
            Tool::EditFile => "edit_file",
            Tool::Search => "search",
            Tool::Run => "run",
            Tool::Finish => "finish",
        }
    }

    /// Whether the tool writes a file (its path is checked against the write rules before it runs).
    pub const fn writes(self) -> bool {
        matches!(self, Tool::WriteFile | Tool::EditFile)
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool name that is none of drafter's tools (from the model, or in a policy file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool `{0}`")]
pub struct UnknownTool(pub String);

impl std::str::FromStr for Tool {
    type Err = UnknownTool;

    fn from_str(name: &str) -> Result<Tool, UnknownTool> {
        Tool::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| UnknownTool(name.to_string()))
    }
}

/// A model's price, in US dollars per million tokens.
///
/// Prompt-cache prices are optional. Unset, they follow Anthropic's documented multipliers of the input price
/// (<https://docs.anthropic.com/en/docs/about-claude/pricing>: a 5-minute cache write costs 1.25x, a cache read
/// 0.1x); OpenAI discounts cached input differently per model, so set `cache_read_usd_per_mtok` for it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input_usd_per_mtok: f64,
    /// Output (completion) tokens.
    pub output_usd_per_mtok: f64,
    /// Prompt tokens read from the cache (default: 0.1x input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_usd_per_mtok: Option<f64>,
    /// Prompt tokens written to the cache (default: 1.25x input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_usd_per_mtok: Option<f64>,
}

/// Anthropic's cache-read price as a multiple of the input price.
pub const CACHE_READ_MULTIPLIER: f64 = 0.1;
/// Anthropic's 5-minute cache-write price as a multiple of the input price.
pub const CACHE_WRITE_MULTIPLIER: f64 = 1.25;

impl Price {
    /// Input and output at these prices, no cache prices (the defaults apply).
    pub const fn new(input_usd_per_mtok: f64, output_usd_per_mtok: f64) -> Price {
        Price {
            input_usd_per_mtok,
            output_usd_per_mtok,
            cache_read_usd_per_mtok: None,
            cache_write_usd_per_mtok: None,
        }
    }

    /// Cost of one call in millionths of a dollar, rounded up (a budget should not be beaten by rounding).
    pub fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        self.cost_micros_of(&ReceiptUsage {
            input_tokens,
            output_tokens,
            ..Default::default()
        })
    }

    /// Cost of one call's usage, cache reads and writes included, in millionths of a dollar, rounded up.
    pub fn cost_micros_of(&self, u: &ReceiptUsage) -> u64 {
        let read = self
            .cache_read_usd_per_mtok
            .unwrap_or(self.input_usd_per_mtok * CACHE_READ_MULTIPLIER);
        let write = self
            .cache_write_usd_per_mtok
            .unwrap_or(self.input_usd_per_mtok * CACHE_WRITE_MULTIPLIER);
        let c = u.input_tokens as f64 * self.input_usd_per_mtok
            + u.output_tokens as f64 * self.output_usd_per_mtok
            + u.cache_read_tokens as f64 * read
            + u.cache_write_tokens as f64 * write;
        c.max(0.0).ceil() as u64
    }
}

/// One allow or deny, as logged and recorded on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The rule, e.g. `trigger`, `repo`, `labels.approval`, `write.forbidden_paths`, `budget.daily_tokens`.
    pub rule: String,
    /// Allowed or not.
    pub allowed: bool,
    /// Why, in one sentence without secrets or internal paths.
    pub detail: String,
}

/// SHA-256 (hex) of the patch from `base` to `commit`: what a run statement records as the change's `diff`
/// digest and `drafter verify --repo` recomputes. Part of the format because a verifier must compute it the same
/// way: libgit2's unified patch with full 40-character object ids, binary contents included, no rename detection
/// and three lines of context, so the same two commits give the same bytes on any host.
pub fn diff_digest(
    repo: &git2::Repository,
    base: git2::Oid,
    commit: git2::Oid,
) -> Result<String, git2::Error> {
    use sha2::Digest as _;
    let tree = |oid: git2::Oid| repo.find_commit(oid).and_then(|c| c.tree());
    let (old, new) = (tree(base)?, tree(commit)?);
    let mut opts = git2::DiffOptions::new();
    opts.show_binary(true).id_abbrev(40).context_lines(3);
    let diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
    let mut hasher = sha2::Sha256::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        // Content lines come without their origin marker; header lines carry their own text.
        if matches!(line.origin(), '+' | '-' | ' ') {
            hasher.update([line.origin() as u8]);
        }
        hasher.update(line.content());
        true
    })?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tool_tests {
    use super::Tool;

    /// The wire names are what models, policies and bundles already use: they must not drift.
    #[test]
    fn wire_names_round_trip() {
        let names: Vec<&str> = Tool::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "list_files",
                "read_file",
                "write_file",
                "edit_file",
                "search",
                "run",
                "finish"
            ]
        );
        for t in Tool::ALL {
            assert_eq!(t.as_str().parse::<Tool>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let err = "curl".parse::<Tool>().unwrap_err();
        assert_eq!(err.to_string(), "unknown tool `curl`");
    }
}
