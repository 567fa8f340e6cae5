//! The statement and its three predicates, as written and as read back, and the totals over a bundle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about; never empty.
    pub subject: Vec<Subject>,
    /// Which predicate follows.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate, parsed per `predicate_type` by [`Predicate::parse`].
    pub predicate: Value,
}

/// One subject: a name and a digest set (`sha256`, `sha1`, ...: lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// What the digest is of.
    pub name: String,
    /// Algorithm to lowercase hex digest.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub(super) fn sha256(name: impl Into<String>, hex: &str) -> Subject {
        Subject {
            name: name.into(),
            digest: BTreeMap::from([("sha256".to_string(), hex.to_string())]),
        }
    }
}

/// Where a statement sits in its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// 0-based position in the bundle.
    pub seq: u64,
    /// Hex SHA-256 of the previous line (without its `\n`), or [`ZERO_HASH`].
    pub prev: String,
    /// The job.
    pub job_id: String,
    /// The Jira issue key.
    pub ticket: String,
    /// Hex Ed25519 public key that signed this statement.
    pub signer: String,
}

/// Token counts. The cache fields are left out when 0, so bundles written before prompt caching read and
/// re-encode unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptUsage {
    /// Input (prompt) tokens the provider reported, not counting the cache fields below.
    pub input_tokens: u64,
    /// Output tokens the provider reported.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ReceiptUsage {
    fn add(&mut self, o: &ReceiptUsage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
    }
}

/// The predicate of a [`MODEL_CALL`] statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCall {
    /// Position in the bundle.
    pub chain: Chain,
    /// The policy the job ran under.
    pub policy_hash: String,
    /// `anthropic` or `openai`.
    pub provider: String,
    /// Model name as sent.
    pub model: String,
    /// URL path of the call (no host, no query, no credentials).
    pub endpoint: String,
    /// HTTP status, or 0 when no response arrived.
    pub http_status: u16,
    /// Tokens reported.
    pub usage: ReceiptUsage,
    /// The provider reported no usage: `usage` is estimated from the bytes exchanged (absent when false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub usage_estimated: bool,
    /// Cost in millionths of a US dollar, when the policy has a price for the model.
    pub cost_micros: Option<u64>,
    /// Wall time of the exchange.
    pub latency_ms: u64,
    /// When the request started, RFC 3339 UTC.
    pub started_at: String,
}

/// The predicate of a [`TOOL_CALL`] statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Position in the bundle.
    pub chain: Chain,
    /// The policy the job ran under.
    pub policy_hash: String,
    /// The model turn (1-based) whose answer asked for this call.
    pub turn: u32,
    /// Tool name as the model called it.
    pub name: String,
    /// Whether it succeeded (for `run`: exit code 0, no timeout).
    pub ok: bool,
    /// A command's exit code, when there was one.
    pub exit_code: Option<i64>,
    /// The policy rule that refused the call before it ran, if one did.
    pub refused_by: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// Bytes of the full output.
    pub output_bytes: u64,
    /// Bytes of what the model was shown (the output, cut to the result limit).
    pub shown_bytes: u64,
    /// SHA-256 of what the model was shown.
    pub shown_sha256: String,
    /// When the call started, RFC 3339 UTC.
    pub started_at: String,
}

/// Who and what set the job off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerInfo {
    /// `jira user <account>` or `operator <name>`.
    pub by: String,
    /// The triggering event: its source and delivery id (`webhook:jira:issue_updated changelog:10401`, `cli`).
    pub event: String,
    /// Who approved the job, when the policy asked for approval.
    pub approved_by: Option<String>,
}

/// The runner that did the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerInfo {
    /// The worker id (host, pid, random part).
    pub id: String,
    /// drafter's version.
    pub version: String,
    /// The signing key's id.
    pub key_id: String,
}

/// The change a job pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The base commit the change is against (hex sha1).
    pub base_commit: String,
    /// The pushed commit (hex sha1).
    pub commit: String,
    /// SHA-256 of the diff base..commit (see [`super::format::diff_digest`]).
    pub diff_sha256: String,
    /// Files changed.
    pub files: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// `pull_request`, `no_changes`, `refused`, `failed` or `awaiting_approval`.
    pub result: String,
    /// For `refused` (and policy stops): the rule.
    pub rule: Option<String>,
    /// Why it did not succeed, scrubbed of secrets.
    pub reason: Option<String>,
    /// Whether a later attempt may succeed.
    pub retryable: bool,
    /// The draft pull request's URL.
    pub pr_url: Option<String>,
    /// Its number.
    pub pr_number: Option<u64>,
}

/// The predicate of a [`RUN`] statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Position in the bundle.
    pub chain: Chain,
    /// The policy the job ran under.
    pub policy_hash: String,
    /// The policy team that matched, when one did.
    pub team: Option<String>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The trigger.
    pub trigger: TriggerInfo,
    /// The worker.
    pub worker: WorkerInfo,
    /// The repository, when one was chosen.
    pub repo: Option<String>,
    /// Its base branch.
    pub base: Option<String>,
    /// The job's branch.
    pub branch: Option<String>,
    /// The pushed change.
    pub change: Option<Change>,
    /// The sandbox image name.
    pub sandbox_image: Option<String>,
    /// The sandbox image's content digest (Docker image id, `sha256:...`).
    pub sandbox_image_digest: Option<String>,
    /// Model calls in the bundle so far (all attempts).
    pub model_calls: u64,
    /// Tool calls in the bundle so far.
    pub tool_calls: u64,
    /// Tokens over all model calls in the bundle.
    pub usage: ReceiptUsage,
    /// Cost over all priced model calls, micro-dollars.
    pub cost_micros: u64,
    /// When the attempt started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: String,
    /// Its wall time.
    pub duration_ms: u64,
    /// What the policy decided, in order.
    pub decisions: Vec<Decision>,
    /// The retention the bodies are under.
    pub retention: Retention,
    /// The sandbox's network, when it had one (`allowlist:` jobs): every request through the egress proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRecord>,
    /// The forge credential the attempt used, when it got that far (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRecord>,
    /// Fork mode: the fork (`owner/name`) the branch was pushed to; the pull request goes from it into `repo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
}

/// What kind of forge credential an attempt used, and for a GitHub App token its scope and expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRecord {
    /// `github-app` (a per-job installation token) or `personal-token`.
    pub kind: String,
    /// The App's installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_id: Option<u64>,
    /// The one repository the token was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Its numeric id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<u64>,
    /// The permissions GitHub granted the token.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub permissions: std::collections::BTreeMap<String, String>,
    /// When the token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The sandbox's network in one attempt and what went through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    /// As the policy wrote it (`allowlist:NAME`).
    pub mode: String,
    /// Every request the egress proxy saw, allowed or denied (host, port, method, bytes, rule; never paths).
    pub connections: Vec<crate::sandboxd::egress::ConnRecord>,
    /// Requests over the per-job record cap, counted but not listed.
    pub dropped: u64,
}

/// A statement's predicate, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// A model call.
    ModelCall(ModelCall),
    /// A tool call.
    ToolCall(ToolCall),
    /// The end of an attempt.
    Run(Box<Run>),
}

impl Predicate {
    /// Parses `value` as the predicate `predicate_type` names; unknown types and fields are errors.
    pub fn parse(predicate_type: &str, value: &Value) -> Result<Predicate, String> {
        let err = |e: serde_json::Error| e.to_string();
        Ok(match predicate_type {
            MODEL_CALL => Predicate::ModelCall(ModelCall::deserialize(value).map_err(err)?),
            TOOL_CALL => Predicate::ToolCall(ToolCall::deserialize(value).map_err(err)?),
            RUN => Predicate::Run(Box::new(Run::deserialize(value).map_err(err)?)),
            other => return Err(format!("unknown predicate type `{other}`")),
        })
    }

    /// The chain link every predicate has.
    pub fn chain(&self) -> &Chain {
        match self {
            Predicate::ModelCall(p) => &p.chain,
            Predicate::ToolCall(p) => &p.chain,
            Predicate::Run(p) => &p.chain,
        }
    }

    /// The policy hash every predicate has.
    pub fn policy_hash(&self) -> &str {
        match self {
            Predicate::ModelCall(p) => &p.policy_hash,
            Predicate::ToolCall(p) => &p.policy_hash,
            Predicate::Run(p) => &p.policy_hash,
        }
    }
}

/// Totals over a bundle's model and tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Model-call statements.
    pub model_calls: u64,
    /// Tool-call statements.
    pub tool_calls: u64,
    /// Tokens.
    pub usage: ReceiptUsage,
    /// Cost of the priced calls.
    pub cost_micros: u64,
    /// Model calls whose usage was estimated (the provider reported none).
    pub estimated_calls: u64,
}

impl Totals {
    /// Adds one statement.
    pub fn add(&mut self, p: &Predicate) {
        match p {
            Predicate::ModelCall(m) => self.add_model_call(m),
            Predicate::ToolCall(_) => self.tool_calls += 1,
            Predicate::Run(_) => {}
        }
    }

    pub(super) fn add_model_call(&mut self, m: &ModelCall) {
        self.model_calls += 1;
        self.usage.add(&m.usage);
        self.estimated_calls += u64::from(m.usage_estimated);
        self.cost_micros += m.cost_micros.unwrap_or(0);
    }
}
