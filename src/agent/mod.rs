//! The tool-use loop: the model proposes tool calls, the runner checks and executes them in the sandbox, and the
//! results go back to the model until it calls `finish` or a limit is hit.
//!
//! Why the limits live here and not in the prompt: the model is not trusted to stop. Turns, tokens and wall time are
//! counted by this loop and end the job when exceeded; tool arguments are validated before anything runs; every
//! path stays under the workspace. Tool failures come in two kinds (after codex-rs): [`ToolFailure::Respond`] is
//! told to the model so it can correct itself; [`ToolFailure::Fatal`] ends the job.
//!
//! How a turn ends depends on the provider's stop reason: tool calls are run and answered; `pause_turn` is
//! continued by resending the conversation with the paused turn last; `max_tokens` without tool calls asks the model
//! to go on, and with tool calls answers each call with an error instead of running arguments that may be cut off;
//! a refusal ends the job with the provider's words. Retryable provider errors (429, 529, 5xx) are retried, waiting
//! as long as `Retry-After` says (at most a minute).
//!
//! The conversation is resent every turn; when its estimate (4 bytes a token) passes `agent.context_budget_tokens`,
//! the oldest tool outputs are replaced by a one-line summary with the output's SHA-256 (the digest its tool-call
//! statement holds), down to two thirds of the budget, so the cached prefix then stays stable for several turns.
//!
//! The ticket reaches the model as quoted, untrusted data inside `<ticket>` markers, never as instructions.
//! The loop never touches Docker: it works through a [`crate::sandbox::Workspace`]'s file and exec calls (a
//! container's, or in tests one over an in-memory executor).
//!
//! `finish` ends the loop the way a careful developer ends a change: the write rules are run on what would be
//! committed ([`FinishCheck`], the worker's, since only it knows git), and a violation goes back to the model as the
//! tool's result, once. A second `finish` that still breaks the rules, or running out of turns after being told,
//! ends the job with [`AgentError::Unfixed`]. The paths the write and edit tools wrote are kept
//! ([`AgentOutcome::written`]): those are never left out of the commit as build products.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{AgentLimits, RepoConfig};
use crate::jira::Ticket;
use crate::model::{
    Block, Message, ModelClient, ModelError, ModelRequest, ModelResponse, Role, StopReason,
    TokenUsage, ToolSpec,
};
use crate::policy::write::{self, Violation, WriteRules};
use crate::proof::format::Tool;
use crate::proof::{ProofError, ToolCallInput};
use crate::sandbox::{Limit, SandboxError, Workspace};

mod context;
mod finish;
mod prompt;
mod tools;

use context::*;
use finish::*;
pub use finish::{FinishCheck, FinishReport};
use prompt::*;
pub use prompt::{ticket_prompt, MAX_REVIEW_BYTES, MAX_REVIEW_COMMENTS};
use tools::*;
pub use tools::{check_path, replace_once, tool_specs};

/// Single-quotes a string for bash.
pub use crate::sandbox::shell_quote;

/// Largest file the model may read in one call; larger files are refused with a hint to search instead.
const MAX_READ_BYTES: usize = 256 * 1024;
/// Largest file the model may write.
const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// Characters of a tool result sent back to the model; the rest is cut and the cut is marked.
const MAX_RESULT_CHARS: usize = 48 * 1024;
/// Attempts per model call when the provider answers with a retryable error (5xx, 429, transport).
const MODEL_ATTEMPTS: u32 = 3;
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// Tool outputs shorter than this are never elided: the summary would not be much shorter.
const MIN_ELIDED_CHARS: usize = 512;

/// Why the loop ended without a `finish` call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The model used every allowed turn without calling `finish`.
    #[error("the model did not finish within the limit of {0} turns")]
    MaxTurns(u32),
    /// The token budget for the job is spent.
    #[error("the model used {used} tokens, over the job budget of {limit}")]
    TokenBudget {
        /// Tokens used so far.
        used: u64,
        /// The configured budget.
        limit: u64,
    },
    /// The wall-clock limit for the loop passed.
    #[error("the agent loop ran past its wall-time limit of {0} s")]
    WallTime(u64),
    /// The model endpoint failed (after retries, where retrying made sense).
    #[error("model call failed: {0}")]
    Model(#[from] ModelError),
    /// The sandbox failed in a way the model cannot fix (Docker gone, container dead).
    #[error("sandbox failed: {0}")]
    Sandbox(SandboxError),
    /// The policy's budget does not allow another model call.
    #[error("{0}")]
    Budget(GateRefusal),
    /// A tool call could not be recorded in the proof bundle: the job stops, since its record would be incomplete.
    #[error("cannot record a tool call in the proof bundle: {0}")]
    Proof(#[from] ProofError),
    /// The workspace could not be checked when the model called `finish` (git failed on the host).
    #[error("checking the workspace at finish failed: {0}")]
    Workspace(String),
    /// The model was told at `finish` that its change breaks these write rules, and finished again (or ran out of
    /// turns) without fixing them. Not empty.
    #[error("the change breaks the write rules after the model was told: {}", .0.first().map(|v| v.detail.as_str()).unwrap_or(""))]
    Unfixed(Vec<Violation>),
    /// The model declined the task; holds the provider's answer.
    #[error("the model refused the task ({0})")]
    Refused(String),
}

/// Why a [`CallGate`] stopped a model call: the policy rule that said no (`budget.daily_tokens`, ...) and why. Not
/// retryable: the budget is spent (or cannot be counted) for this job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GateRefusal {
    /// The policy rule.
    pub rule: String,
    /// What the job is told.
    pub message: String,
}

/// Asked before and told after every model call: the policy's budgets live behind this, outside the model.
#[async_trait::async_trait]
pub trait CallGate: Send + Sync {
    /// An `Err` stops the job before the call is made.
    async fn before_call(&self) -> Result<(), GateRefusal>;
    /// Records what a call used.
    async fn after_call(&self, usage: &TokenUsage);
}

/// What the policy lets this job's agent do, checked by the loop on every call.
pub struct Permissions<'a> {
    /// The policy's hash, for the decision log.
    pub policy_hash: &'a str,
    /// The tools the model gets (`finish` is always added). Calls to any other tool are refused.
    pub tools: &'a [Tool],
    /// Paths `write_file` and `edit_file` may not touch (the whole diff is checked again before push).
    pub write: &'a WriteRules,
    /// The budget gate, if the policy sets budgets.
    pub gate: Option<&'a dyn CallGate>,
    /// The write rules' check on the whole change when the model calls `finish`; `None` skips it (the diff is
    /// still checked before push).
    pub finish_check: Option<&'a dyn FinishCheck>,
}

impl AgentError {
    /// Whether running the job again could succeed (the model endpoint was down, not the model misbehaving).
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Model(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// What happened during the loop, for progress output and the PR body.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A model call is about to be made.
    Turn {
        /// 1-based turn number.
        turn: u32,
        /// The configured maximum.
        max: u32,
    },
    /// A tool call was executed (or refused).
    ToolCall(ToolCallRecord),
}

/// One tool call as the runner saw it.
#[derive(Debug, Clone)]
pub struct ToolCallRecord {
    /// Tool name as the model called it.
    pub name: String,
    /// A one-line description: the path, the command, the pattern.
    pub detail: String,
    /// Whether it succeeded (for `run`: exit status 0 and no timeout).
    pub ok: bool,
}

/// How the loop ended successfully.
#[derive(Debug, Clone)]
pub struct AgentOutcome {
    /// The model's summary of what it did (from `finish`, or its final text).
    pub summary: String,
    /// Model calls made.
    pub turns: u32,
    /// Every tool call, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Tokens used (input + output, summed).
    pub tokens: u64,
    /// Workspace-relative paths the write and edit tools wrote (normalised: no `./`, no empty components).
    pub written: BTreeSet<String>,
    /// How many `finish` calls the write rules turned back.
    pub finish_refusals: u32,
}

/// A tool call that did not succeed.
#[derive(Debug)]
pub enum ToolFailure {
    /// Tell the model what was wrong and carry on.
    Respond(String),
    /// The policy refused the call before it ran: `rule`, and what the model is told.
    Refused(String, String),
    /// Stop the job.
    Fatal(SandboxError),
}

/// What a tool produced.
#[derive(Debug)]
struct Executed {
    /// The full output.
    text: String,
    /// Whether it succeeded.
    ok: bool,
    /// A command's exit code.
    exit_code: Option<i64>,
}

impl Executed {
    fn new((text, ok): (String, bool)) -> Executed {
        Executed {
            text,
            ok,
            exit_code: None,
        }
    }
}

/// Everything the loop needs besides the model and the sandbox.
pub struct Task<'a> {
    /// The ticket being worked on.
    pub ticket: &'a Ticket,
    /// The repository checked out in the sandbox.
    pub repo: &'a RepoConfig,
    /// Turn, token and time limits.
    pub limits: &'a AgentLimits,
    /// Per-command timeout for `run`.
    pub command_timeout: Duration,
    /// What people asked of the bot on the ticket (the comments that triggered the job), as `who: text`.
    pub requests: &'a [String],
    /// The policy's tool list, write rules and budget gate.
    pub permissions: Permissions<'a>,
    /// A follow-up iteration's review: the pull request's diff so far and the comments to address.
    pub review: Option<&'a ReviewContext>,
}

/// What a follow-up iteration adds to the prompt: the pull request's diff so far and the review comments, quoted as
/// untrusted data like the ticket.
#[derive(Debug, Clone, Default)]
pub struct ReviewContext {
    /// Which follow-up this is (1 for the first).
    pub iteration: u32,
    /// The pull request's diff against its base (unified, possibly cut: see `diff_cut`).
    pub diff: String,
    /// Whether `diff` was cut to fit.
    pub diff_cut: bool,
    /// The comments, oldest first.
    pub comments: Vec<ReviewNote>,
}

/// One review comment for the model.
#[derive(Debug, Clone)]
pub struct ReviewNote {
    /// Its author's forge login.
    pub author: String,
    /// `line`, `review` or `conversation`.
    pub kind: String,
    /// A line comment's file.
    pub path: Option<String>,
    /// A line comment's line.
    pub line: Option<u64>,
    /// What it says.
    pub text: String,
}

/// Runs the loop to completion, its tools acting on `workspace` (a [`crate::sandbox::Container`] converts). `on_event`
/// is called for each turn and tool call.
pub async fn run<'w>(
    task: &Task<'_>,
    model: &mut ModelClient,
    workspace: impl Into<Workspace<'w>>,
    on_event: &mut (dyn FnMut(AgentEvent) + Send),
) -> Result<AgentOutcome, AgentError> {
    let workspace = workspace.into();
    let wall = Duration::from_secs(task.limits.wall_time_secs);
    let result = match tokio::time::timeout(wall, run_inner(task, model, workspace, on_event)).await
    {
        Ok(result) => result,
        Err(_) => Err(AgentError::WallTime(task.limits.wall_time_secs)),
    };
    // The last turn's statements (`finish` and the calls beside it) are durable before the worker acts on the
    // outcome: a push, a PR, a comment.
    let synced = model.bundle_mut().sync().await;
    match (result, synced) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Ok(_), Err(e)) => Err(AgentError::Proof(e)),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(sync)) => {
            // The run's own error says more; the run statement will fail on the poisoned bundle anyway.
            tracing::warn!(error = %sync, "could not sync the proof bundle");
            Err(e)
        }
    }
}

async fn run_inner(
    task: &Task<'_>,
    model: &mut ModelClient,
    workspace: Workspace<'_>,
    on_event: &mut (dyn FnMut(AgentEvent) + Send),
) -> Result<AgentOutcome, AgentError> {
    // One request for the whole loop: each turn appends to its conversation in place rather than copying the
    // conversation and the tool schemas into a new request.
    let messages = vec![Message {
        role: Role::User,
        content: vec![Block::Text(ticket_prompt(
            task.ticket,
            task.repo,
            task.requests,
            task.review,
        ))],
    }];
    let tools: Vec<ToolSpec> = tool_specs()
        .into_iter()
        .filter(|t| match t.name.parse::<Tool>() {
            Ok(tool) => tool == Tool::Finish || task.permissions.tools.contains(&tool),
            Err(_) => false,
        })
        .collect();
    let mut outcome = AgentOutcome {
        summary: String::new(),
        turns: 0,
        tool_calls: Vec::new(),
        tokens: 0,
        written: BTreeSet::new(),
        finish_refusals: 0,
    };
    // What the last turned-back `finish` was told: a model that runs out of turns after it is refused under it.
    let mut told: Vec<Violation> = Vec::new();
    // What each tool call's output can shrink to when the context budget needs room: summary line and digest.
    let mut elidable: HashMap<String, Elidable> = HashMap::new();
    let fixed_tokens = estimate_tokens(SYSTEM_PROMPT.len())
        + tools
            .iter()
            .map(|t| estimate_tokens(t.description.len() + t.input_schema.to_string().len()))
            .sum::<u64>();

    let mut request = ModelRequest {
        system: SYSTEM_PROMPT.to_string(),
        messages,
        tools,
    };
    loop {
        if outcome.turns >= task.limits.max_turns {
            // Told at `finish` and out of turns: refused under the rules it still breaks, if it still does.
            if let (false, Some(check)) = (told.is_empty(), task.permissions.finish_check) {
                let report = check.check(&outcome.written).await?;
                if !report.violations.is_empty() {
                    return Err(AgentError::Unfixed(report.violations));
                }
            }
            return Err(AgentError::MaxTurns(task.limits.max_turns));
        }
        outcome.turns += 1;
        on_event(AgentEvent::Turn {
            turn: outcome.turns,
            max: task.limits.max_turns,
        });
        let elided = fit_context(
            &mut request.messages,
            fixed_tokens,
            task.limits.context_budget_tokens,
            &elidable,
        );
        if elided > 0 {
            tracing::info!(
                elided,
                budget = task.limits.context_budget_tokens,
                "old tool outputs elided to stay within the context budget"
            );
        }
        if let Some(gate) = task.permissions.gate {
            gate.before_call().await.map_err(AgentError::Budget)?;
        }
        let response = call_model(model, &request).await?;
        if let Some(gate) = task.permissions.gate {
            gate.after_call(&response.usage).await;
        }
        outcome.tokens += response.usage.total();
        if outcome.tokens > task.limits.max_total_tokens {
            return Err(AgentError::TokenBudget {
                used: outcome.tokens,
                limit: task.limits.max_total_tokens,
            });
        }

        let calls: Vec<(String, String, Value)> = response
            .content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { id, name, input } => {
                    Some((id.clone(), name.clone(), input.clone()))
                }
                _ => None,
            })
            .collect();
        let text: String = response
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        if let StopReason::Refusal(said) = &response.stop {
            if calls.is_empty() {
                return Err(AgentError::Refused(cap_chars(said, 1000)));
            }
        }
        request.messages.push(Message {
            role: Role::Assistant,
            content: response.content,
        });

        if calls.is_empty() && response.stop == StopReason::PauseTurn {
            // The API continues a paused turn when it gets the conversation back with that turn last.
            continue;
        }
        if !calls.is_empty() && response.stop == StopReason::MaxTokens {
            // A call cut off by the token limit may be missing arguments: run none of them, say why.
            let results = calls
                .into_iter()
                .map(|(id, name, _)| Block::ToolResult {
                    id,
                    content: format!(
                        "not run: your reply hit the output token limit (max_tokens) while writing this `{name}` \
                         call, so its arguments may be incomplete. Call it again with shorter arguments (for a large \
                         file, write it in parts or use edit_file)."
                    ),
                    is_error: true,
                })
                .collect();
            request.messages.push(Message {
                role: Role::User,
                content: results,
            });
            continue;
        }

        if calls.is_empty() {
            // A model that ends its turn with prose has finished; one cut off by max_tokens is asked to go on.
            if matches!(response.stop, StopReason::MaxTokens) {
                request.messages.push(Message {
                    role: Role::User,
                    content: vec![Block::Text(
                        "Your reply was cut off by the token limit. Continue, using the tools; call `finish` when done."
                            .into(),
                    )],
                });
                continue;
            }
            outcome.summary = cap_chars(text.trim(), 4000);
            return Ok(outcome);
        }

        let mut results = Vec::with_capacity(calls.len());
        let mut finished: Option<String> = None;
        for (id, name, input) in calls {
            if finished.is_some() {
                results.push(Block::ToolResult {
                    id,
                    content: "not run: `finish` was already called".into(),
                    is_error: true,
                });
                continue;
            }
            let started_at = chrono::Utc::now();
            let t0 = Instant::now();
            let arguments = serde_json::to_vec(&input).unwrap_or_default();
            let tool = name.parse::<Tool>().ok();
            if tool == Some(Tool::Finish) {
                let (content, ok, refused_by) = match input.get("summary").and_then(Value::as_str) {
                    Some(s) if !s.trim().is_empty() => {
                        let report = match task.permissions.finish_check {
                            Some(check) => check.check(&outcome.written).await?,
                            None => FinishReport::default(),
                        };
                        let summary = cap_chars(s.trim(), 4000);
                        for v in &report.violations {
                            crate::policy::log_decision(
                                task.permissions.policy_hash,
                                &task.ticket.key,
                                &v.rule,
                                false,
                                format!("at finish: {}", v.detail),
                            );
                        }
                        match report.violations.first().map(|v| v.rule.clone()) {
                            None => {
                                finished = Some(summary);
                                (finish_ok_text(&report), true, None)
                            }
                            Some(rule) if told.is_empty() => {
                                outcome.finish_refusals += 1;
                                let text = violation_text(&report);
                                told = report.violations;
                                (text, false, Some(rule))
                            }
                            Some(rule) => {
                                // Told once already: the job ends here, refused under the rule.
                                outcome.finish_refusals += 1;
                                let text = format!(
                                    "refused: the change still breaks the write rules, so the job ends without \
                                     delivering it.\n{}",
                                    violation_lines(&report.violations)
                                );
                                told = report.violations;
                                (text, false, Some(rule))
                            }
                        }
                    }
                    _ => (
                        "`finish` needs a non-empty string `summary`".to_string(),
                        false,
                        None,
                    ),
                };
                let shown = cap_chars(&content, MAX_RESULT_CHARS);
                model.bundle_mut().tool_call(ToolCallInput {
                    turn: outcome.turns,
                    name: &name,
                    arguments: &arguments,
                    output: content.as_bytes(),
                    shown: shown.as_bytes(),
                    ok,
                    exit_code: None,
                    refused_by: refused_by.clone(),
                    duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
                    started_at,
                })?;
                if let Some(rule) = &refused_by {
                    let record = ToolCallRecord {
                        name: name.clone(),
                        detail: format!("refused: {rule}"),
                        ok: false,
                    };
                    outcome.tool_calls.push(record.clone());
                    on_event(AgentEvent::ToolCall(record));
                    if finished.is_none() && outcome.finish_refusals > 1 {
                        return Err(AgentError::Unfixed(told));
                    }
                }
                results.push(Block::ToolResult {
                    id,
                    content: shown,
                    is_error: !ok,
                });
                continue;
            }
            let detail = describe_call(&name, &input);
            let allowed = permit(&task.permissions, &task.ticket.key, &name, &input);
            let executed = match allowed {
                Ok(()) => execute(&name, &input, workspace, task.command_timeout).await,
                Err(refusal) => Err(refusal),
            };
            let mut refused_by = None;
            let (result, fatal) = match executed {
                Ok(x) => {
                    if tool.is_some_and(Tool::writes) {
                        if let Some(p) = input.get("path").and_then(Value::as_str) {
                            outcome.written.insert(repo_path(p));
                        }
                    }
                    (x, None)
                }
                Err(ToolFailure::Respond(msg)) => {
                    (Executed::new((format!("error: {msg}"), false)), None)
                }
                Err(ToolFailure::Refused(rule, msg)) => {
                    refused_by = Some(rule);
                    (Executed::new((format!("error: {msg}"), false)), None)
                }
                Err(ToolFailure::Fatal(e)) => (
                    Executed::new((format!("sandbox failed: {e}"), false)),
                    Some(e),
                ),
            };
            let shown = cap_chars(&result.text, MAX_RESULT_CHARS);
            elidable.insert(
                id.clone(),
                Elidable {
                    summary: format!(
                        "{name}{}{} ({})",
                        if detail.is_empty() { "" } else { " " },
                        detail,
                        if result.ok { "ok" } else { "failed" }
                    ),
                    sha256: crate::proof::sha256_hex(result.text.as_bytes()),
                    bytes: result.text.len(),
                },
            );
            // Recorded before the model sees the result, so the chain orders this call before the next model call.
            model.bundle_mut().tool_call(ToolCallInput {
                turn: outcome.turns,
                name: &name,
                arguments: &arguments,
                output: result.text.as_bytes(),
                shown: shown.as_bytes(),
                ok: result.ok,
                exit_code: result.exit_code,
                refused_by,
                duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
                started_at,
            })?;
            let record = ToolCallRecord {
                name,
                detail,
                ok: result.ok,
            };
            outcome.tool_calls.push(record.clone());
            on_event(AgentEvent::ToolCall(record));
            if let Some(e) = fatal {
                return Err(AgentError::Sandbox(e));
            }
            results.push(Block::ToolResult {
                id,
                content: shown,
                is_error: !result.ok,
            });
        }
        request.messages.push(Message {
            role: Role::User,
            content: results,
        });
        if let Some(summary) = finished {
            outcome.summary = summary;
            return Ok(outcome);
        }
    }
}

/// A path as git names it: `./a//b/` is `a/b`. Used to match the write tools' paths against the work tree.
fn repo_path(p: &str) -> String {
    let p = p.trim();
    let p = p.strip_prefix("/workspace/").unwrap_or(p);
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// One model call with retries: transport failures, 429, 529 and 5xx are tried again (at most
/// [`MODEL_ATTEMPTS`] times), after the provider's `Retry-After` when it sent one (capped at a minute), else after
/// 2 s, then 4 s. Every attempt is its own receipt.
pub async fn call_model(
    model: &mut ModelClient,
    request: &ModelRequest,
) -> Result<ModelResponse, ModelError> {
    let mut attempt = 1;
    loop {
        match model.call(request).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && attempt < MODEL_ATTEMPTS => {
                let wait = e
                    .retry_after()
                    .unwrap_or(Duration::from_secs(1 << attempt))
                    .min(MAX_RETRY_WAIT);
                tracing::warn!(attempt, error = %e, wait_ms = wait.as_millis() as u64, "model call failed, retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
