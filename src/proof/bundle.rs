//! The bundle format, and the writer that appends to it.
//!
//! # Format
//! `bundle.jsonl` holds one line per statement, each ending in `\n`. A line is a DSSE v1 JSON envelope, compact,
//! members in the order `payload`, `payloadType`, `signatures`:
//!
//! ```text
//! {"payload":"<base64>","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"<key id>","sig":"<base64>"}]}
//! ```
//!
//! - `payload` is standard padded base64 of an in-toto Statement v1 written as canonical JSON (object keys sorted
//!   by byte, no whitespace, integers only), so every statement has exactly one valid spelling.
//! - `sig` is the Ed25519 signature over DSSE's `PAE(payloadType, payload)`, made with the runner key. `keyid` is
//!   the key's id (the first 16 hex characters of the SHA-256 of the public key; see [`super::key_id`]), and the
//!   statement's `predicate.chain.signer` carries the whole public key, so a verifier knows which key to use and an
//!   auditor can pin it; a rotated key keeps its id, so old bundles still verify against it.
//! - Three predicate types, all with a `chain` object (`seq` from 0, `prev` = hex SHA-256 of the previous line's
//!   bytes without its `\n`, or 64 zeros; `job_id`; `ticket`; `signer`) and the job's `policy_hash`:
//!   - [`MODEL_CALL`]: subjects `request` and `response` (SHA-256 of the exact body bytes sent and received);
//!     provider, model, endpoint, HTTP status, token usage, cost (micro-dollars, when the policy prices the model),
//!     latency, start time.
//!   - [`TOOL_CALL`]: subjects `arguments` (SHA-256 of the arguments' JSON as the model sent them) and `output`
//!     (SHA-256 of the tool's full output); tool name, model turn, exit code, whether it succeeded or the policy
//!     refused it (and by which rule), duration, output size, and the size and SHA-256 of the part shown to the
//!     model (which is cut at 48 KiB).
//!   - [`RUN`]: one per attempt, last in the file. Subjects: the `policy`, the `ticket:<KEY>` as fetched (SHA-256
//!     of its canonical JSON), the `chain` head before it (when there is one), and for a pushed change the
//!     `commit` (`sha1`) and its `diff` against the base (`sha256`). The predicate names the trigger (who and which
//!     event, who approved), the worker (id, version, key id), the sandbox image digest, the repository, base and
//!     branch, timings, counts and usage over the whole bundle, the retention, every policy decision, and the
//!     outcome (`pull_request` with its URL, `no_changes`, `refused` with the rule, `failed`, `awaiting_approval`).
//!
//! The *bundle digest* printed in the pull request and on the ticket is the SHA-256 of the whole file
//! (`sha256sum bundle.jsonl`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{Decision, Price};
use super::retention::{self, Retention, BODIES_DIR};
use super::{sha256_hex, ProofError, RunnerKey};

/// The bundle file's name inside a job directory.
pub const BUNDLE_FILE: &str = "bundle.jsonl";

/// The DSSE payload type of every envelope.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The in-toto Statement v1 `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// Predicate type of a model-call statement.
pub const MODEL_CALL: &str = "https://drafter.dev/attestation/model-call/v1";

/// Predicate type of a tool-call statement.
pub const TOOL_CALL: &str = "https://drafter.dev/attestation/tool-call/v1";

/// Predicate type of a run statement.
pub const RUN: &str = "https://drafter.dev/attestation/run/v1";

/// `chain.prev` of the first statement.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical JSON: object keys sorted by their bytes, no whitespace, strings as `serde_json` escapes them. Floats
/// are refused (no statement has one), so the encoding is the same in every implementation.
pub fn canonical_json(v: &Value) -> Result<Vec<u8>, String> {
    fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => {
                if n.is_f64() {
                    return Err(format!("number {n} is not an integer"));
                }
                out.extend_from_slice(n.to_string().as_bytes());
            }
            Value::String(s) => out.extend_from_slice(
                serde_json::to_string(s)
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            ),
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out)?;
                }
                out.push(b']');
            }
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(
                        serde_json::to_string(k)
                            .map_err(|e| e.to_string())?
                            .as_bytes(),
                    );
                    out.push(b':');
                    write(&m[k], out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    write(v, &mut out)?;
    Ok(out)
}

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
    fn sha256(name: impl Into<String>, hex: &str) -> Subject {
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
pub struct Usage {
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

impl Usage {
    fn add(&mut self, o: &Usage) {
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
    pub usage: Usage,
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
    pub usage: Usage,
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
    /// How it ended.
    pub outcome: Outcome,
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

/// One model HTTP exchange, as the model client saw it.
#[derive(Debug, Clone)]
pub struct ModelCallInput<'a> {
    /// `anthropic` or `openai`.
    pub provider: &'a str,
    /// Model name as sent.
    pub model: &'a str,
    /// URL path.
    pub endpoint: &'a str,
    /// HTTP status, 0 when no response arrived.
    pub http_status: u16,
    /// The exact request body sent.
    pub request: &'a [u8],
    /// The exact response body received.
    pub response: &'a [u8],
    /// Reported usage.
    pub usage: Usage,
    /// Whether `usage` is an estimate (the provider reported none).
    pub usage_estimated: bool,
    /// Wall time.
    pub latency_ms: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// One tool call, as the agent loop ran it.
#[derive(Debug, Clone)]
pub struct ToolCallInput<'a> {
    /// The model turn that asked for it.
    pub turn: u32,
    /// Tool name.
    pub name: &'a str,
    /// The arguments' JSON, as sent by the model.
    pub arguments: &'a [u8],
    /// The full output.
    pub output: &'a [u8],
    /// What the model was shown.
    pub shown: &'a [u8],
    /// Whether it succeeded.
    pub ok: bool,
    /// Exit code of a command.
    pub exit_code: Option<i64>,
    /// The rule that refused it, if the policy did.
    pub refused_by: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// What the worker knows at the end of an attempt; the writer adds the chain, counts and usage.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The policy team.
    pub team: Option<String>,
    /// Attempt number.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// SHA-256 of the ticket's canonical JSON, when it was fetched.
    pub ticket_sha256: Option<String>,
    /// The trigger.
    pub trigger: TriggerInfo,
    /// The worker id.
    pub worker_id: String,
    /// Repository, base, branch.
    pub repo: Option<String>,
    /// Base branch.
    pub base: Option<String>,
    /// Job branch.
    pub branch: Option<String>,
    /// The pushed change.
    pub change: Option<Change>,
    /// Sandbox image name.
    pub sandbox_image: Option<String>,
    /// Sandbox image digest.
    pub sandbox_image_digest: Option<String>,
    /// Start of the attempt.
    pub started_at: DateTime<Utc>,
    /// End of the attempt.
    pub finished_at: DateTime<Utc>,
    /// Policy decisions.
    pub decisions: Vec<Decision>,
    /// The sandbox's network and its connections, for `allowlist:` jobs.
    pub network: Option<NetworkRecord>,
    /// The outcome.
    pub outcome: Outcome,
}

/// Totals over a bundle's model and tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Model-call statements.
    pub model_calls: u64,
    /// Tool-call statements.
    pub tool_calls: u64,
    /// Tokens.
    pub usage: Usage,
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

    fn add_model_call(&mut self, m: &ModelCall) {
        self.model_calls += 1;
        self.usage.add(&m.usage);
        self.estimated_calls += u64::from(m.usage_estimated);
        self.cost_micros += m.cost_micros.unwrap_or(0);
    }
}

/// RFC 3339 UTC with milliseconds, as every statement writes times.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An append-only, signed, chained bundle for one job.
#[derive(Debug)]
pub struct BundleWriter {
    path: PathBuf,
    file: File,
    key: Arc<RunnerKey>,
    signer: String,
    key_id: String,
    job_id: String,
    ticket: String,
    policy_hash: String,
    retention: Retention,
    price: Option<Price>,
    count: u64,
    head: String,
    totals: Totals,
    /// Set when a write failed part-way: the file may end in a torn line, so nothing more may be chained to it.
    poisoned: bool,
}

impl BundleWriter {
    /// Opens `<dir>/bundle.jsonl` for this job: creates it, or continues it (a retried job on the same host, or the
    /// run statement after the model client is gone) after verifying what is there. A bundle signed by an earlier,
    /// rotated key is continued with the current key; the verifier follows each statement's signer.
    pub fn open(
        dir: &Path,
        key: Arc<RunnerKey>,
        job_id: &str,
        ticket: &str,
        policy_hash: &str,
    ) -> Result<BundleWriter, ProofError> {
        let path = dir.join(BUNDLE_FILE);
        let io = |source| ProofError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let (count, head, totals) = if len == 0 {
            (0, ZERO_HASH.to_string(), Totals::default())
        } else {
            // A rotated runner key continues the bundle with the new key, so the signer may change here.
            let pins = super::verify::Pins {
                allow_signer_change: true,
                ..super::verify::Pins::default()
            };
            let s = super::verify::verify_unfinished(&path, &pins).map_err(Box::new)?;
            if s.job_id != job_id || s.ticket != ticket {
                return Err(ProofError::WrongJob {
                    path,
                    found_job: s.job_id,
                    found_ticket: s.ticket,
                    job: job_id.to_string(),
                    ticket: ticket.to_string(),
                });
            }
            (s.count, s.head, s.totals)
        };
        Ok(BundleWriter {
            path,
            file,
            signer: key.public_hex(),
            key_id: key.key_id(),
            key,
            job_id: job_id.to_string(),
            ticket: ticket.to_string(),
            policy_hash: policy_hash.to_string(),
            retention: Retention::default(),
            price: None,
            count,
            head,
            totals,
            poisoned: false,
        })
    }

    /// Sets what is kept besides the statements (default: digests only).
    pub fn with_retention(mut self, retention: Retention) -> BundleWriter {
        self.retention = retention;
        self
    }

    /// Sets the model's price, so model-call statements carry their cost.
    pub fn with_price(mut self, price: Option<Price>) -> BundleWriter {
        self.price = price;
        self
    }

    /// Keeps `bytes` under `bodies/` when retention is `full`; returns its digest either way.
    fn body(&self, bytes: &[u8]) -> Result<String, ProofError> {
        match self.retention.bodies {
            retention::Bodies::Full => retention::store(&self.bodies_dir(), bytes),
            retention::Bodies::Digests => Ok(sha256_hex(bytes)),
        }
    }

    fn bodies_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(|d| d.join(BODIES_DIR))
            .unwrap_or_else(|| PathBuf::from(BODIES_DIR))
    }

    fn chain(&self) -> Chain {
        Chain {
            seq: self.count,
            prev: self.head.clone(),
            job_id: self.job_id.clone(),
            ticket: self.ticket.clone(),
            signer: self.signer.clone(),
        }
    }

    /// Records one model exchange (also failed ones).
    pub fn model_call(&mut self, call: ModelCallInput<'_>) -> Result<ModelCall, ProofError> {
        let request = self.body(call.request)?;
        let response = self.body(call.response)?;
        let predicate = ModelCall {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            provider: call.provider.to_string(),
            model: call.model.to_string(),
            endpoint: call.endpoint.to_string(),
            http_status: call.http_status,
            usage: call.usage,
            usage_estimated: call.usage_estimated,
            cost_micros: self.price.map(|p| p.cost_micros_of(&call.usage)),
            latency_ms: call.latency_ms,
            started_at: time(call.started_at),
        };
        let subject = vec![
            Subject::sha256("request", &request),
            Subject::sha256("response", &response),
        ];
        self.append(subject, MODEL_CALL, &predicate)?;
        self.totals.add_model_call(&predicate);
        Ok(predicate)
    }

    /// Records one tool call (also refused and failed ones).
    pub fn tool_call(&mut self, call: ToolCallInput<'_>) -> Result<ToolCall, ProofError> {
        let arguments = self.body(call.arguments)?;
        let output = self.body(call.output)?;
        let shown = self.body(call.shown)?;
        let predicate = ToolCall {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            turn: call.turn,
            name: call.name.to_string(),
            ok: call.ok,
            exit_code: call.exit_code,
            refused_by: call.refused_by,
            duration_ms: call.duration_ms,
            output_bytes: call.output.len() as u64,
            shown_bytes: call.shown.len() as u64,
            shown_sha256: shown,
            started_at: time(call.started_at),
        };
        let subject = vec![
            Subject::sha256("arguments", &arguments),
            Subject::sha256("output", &output),
        ];
        self.append(subject, TOOL_CALL, &predicate)?;
        self.totals.tool_calls += 1;
        Ok(predicate)
    }

    /// Keeps the ticket as fetched (its canonical JSON) under the retention; returns its digest.
    pub fn ticket_body(&self, canonical: &[u8]) -> Result<String, ProofError> {
        self.body(canonical)
    }

    /// Writes the run statement that ends an attempt; returns the bundle digest (SHA-256 of the whole file).
    pub fn run(&mut self, run: RunInput) -> Result<String, ProofError> {
        let mut subject = vec![Subject::sha256(
            "policy",
            self.policy_hash
                .strip_prefix("sha256:")
                .unwrap_or(&self.policy_hash),
        )];
        if let Some(t) = &run.ticket_sha256 {
            subject.push(Subject::sha256(format!("ticket:{}", self.ticket), t));
        }
        if self.count > 0 {
            subject.push(Subject::sha256("chain", &self.head));
        }
        if let Some(c) = &run.change {
            subject.push(Subject {
                name: "commit".into(),
                digest: BTreeMap::from([("sha1".to_string(), c.commit.clone())]),
            });
            subject.push(Subject::sha256("diff", &c.diff_sha256));
        }
        let duration = run.finished_at.signed_duration_since(run.started_at);
        let predicate = Run {
            chain: self.chain(),
            policy_hash: self.policy_hash.clone(),
            team: run.team,
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            trigger: run.trigger,
            worker: WorkerInfo {
                id: run.worker_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                key_id: self.key_id.clone(),
            },
            repo: run.repo,
            base: run.base,
            branch: run.branch,
            change: run.change,
            sandbox_image: run.sandbox_image,
            sandbox_image_digest: run.sandbox_image_digest,
            model_calls: self.totals.model_calls,
            tool_calls: self.totals.tool_calls,
            usage: self.totals.usage,
            cost_micros: self.totals.cost_micros,
            started_at: time(run.started_at),
            finished_at: time(run.finished_at),
            duration_ms: u64::try_from(duration.num_milliseconds()).unwrap_or(0),
            decisions: run.decisions,
            retention: self.retention,
            network: run.network,
            outcome: run.outcome,
        };
        self.append(subject, RUN, &predicate)?;
        let bytes = std::fs::read(&self.path).map_err(|source| ProofError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(sha256_hex(&bytes))
    }

    fn append(
        &mut self,
        subject: Vec<Subject>,
        predicate_type: &str,
        predicate: &impl Serialize,
    ) -> Result<(), ProofError> {
        if self.poisoned {
            return Err(ProofError::Poisoned {
                path: self.path.clone(),
            });
        }
        let line = envelope_line(&self.key, &self.key_id, subject, predicate_type, predicate)?;
        let hash = sha256_hex(&line);
        let mut out = line;
        out.push(b'\n');
        // One write call for the whole line keeps concurrent readers from seeing a torn line in practice; the
        // verifier reports a torn final line anyway.
        let written = self
            .file
            .write_all(&out)
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            self.poisoned = true;
            return Err(ProofError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.count += 1;
        self.head = hash;
        Ok(())
    }

    /// Hex SHA-256 of the last line, which commits to the whole bundle; [`ZERO_HASH`] when empty.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Statements written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Model and tool call totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The bundle file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }
}

/// Signs one statement and returns its envelope line (without `\n`).
pub(crate) fn envelope_line(
    key: &RunnerKey,
    key_id: &str,
    subject: Vec<Subject>,
    predicate_type: &str,
    predicate: &impl Serialize,
) -> Result<Vec<u8>, ProofError> {
    let enc = |e: String| ProofError::Encode(e);
    let statement = Statement {
        type_: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: predicate_type.to_string(),
        predicate: serde_json::to_value(predicate).map_err(|e| enc(e.to_string()))?,
    };
    let value = serde_json::to_value(&statement).map_err(|e| enc(e.to_string()))?;
    let payload = canonical_json(&value).map_err(enc)?;
    let signer = Signer { key, key_id };
    let envelope = dsse::sign(PAYLOAD_TYPE, &payload, &signer).map_err(|e| enc(e.to_string()))?;
    envelope.to_json().map_err(|e| enc(e.to_string()))
}

/// The runner key as a DSSE signer.
struct Signer<'a> {
    key: &'a RunnerKey,
    key_id: &'a str,
}

impl dsse::Signer for Signer<'_> {
    fn sign(&self, message: &[u8]) -> dsse::Result<Vec<u8>> {
        Ok(self.key.sign(message).to_bytes().to_vec())
    }

    fn key_id(&self) -> Option<String> {
        Some(self.key_id.to_string())
    }
}

/// Standard padded base64, as every envelope member is written.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every statement of a bundle with its parsed predicate, read without verifying (for tests and listings; use
/// [`super::verify`] before trusting any of it).
pub fn read_statements(bytes: &[u8]) -> Result<Vec<(Statement, Predicate)>, String> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(read_line)
        .collect()
}

/// One envelope line's statement and predicate, unverified.
fn read_line(line: &[u8]) -> Result<(Statement, Predicate), String> {
    let envelope = dsse::Envelope::from_json(line).map_err(|e| e.to_string())?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .map_err(|e| e.to_string())?;
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    let predicate = Predicate::parse(&statement.predicate_type, &statement.predicate)?;
    Ok((statement, predicate))
}

/// The last run statement of a bundle, read without verifying (for housekeeping such as [`super::retention::purge`]
/// and listings); `None` when the bundle is empty or does not end with one.
pub fn last_run(path: &Path) -> Result<Option<Run>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let Some(line) = bytes.split(|&b| b == b'\n').rev().find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    match read_line(line)?.1 {
        Predicate::Run(r) => Ok(Some(*r)),
        _ => Ok(None),
    }
}
