//! One job's lifecycle: ticket in, draft pull request (or a clear refusal) out.
//!
//! The pipeline is a straight line of stages: fetch the ticket, resolve the repository against the allowlist, prove
//! the service account cannot merge, clone, start the sandbox, run the agent, bring the workspace back, commit,
//! push, open the draft PR, report on the ticket. It emits typed [`Event`]s; the CLI's progress output is a
//! listener, not code in here. Every stage that can fail ends in a [`JobError`] that says whether trying again
//! could help, and every failure is reported on the ticket with a reason that has been scrubbed of secrets.
//!
//! The job directory (`<data_dir>/jobs/<job_id>/`) holds `bundle.jsonl` (the signed proof bundle: one statement per
//! model call and tool call, and a run statement at the end of every attempt, see [`crate::proof`]), `bodies/` when
//! the policy retains them, and `job.json` (what happened, for people and the CLI).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::agent::{
    self, AgentError, AgentEvent, AgentOutcome, FinishCheck, FinishReport, Permissions, Task,
    ToolCallRecord,
};
use crate::config::{AgentLimits, Config, RepoConfig, SandboxConfig};
use crate::forge::{ForgeError, GitHub, PullRequest};
use crate::jira::{self, JiraClient, JiraError, Notice, Ticket};
use crate::model::{ModelClient, ModelError};
use crate::policy::{self, write, Approval, Decision, Grant, Network, Policy, Request, Who};
use crate::proof::bundle::{Change, NetworkRecord, Outcome, TriggerInfo};
use crate::proof::{self, BundleWriter, ProofError, Retention, RunInput, RunnerKey};
use crate::queue::ApprovalSubject;
use crate::repo::{self, RepoError};
use crate::sandbox::{Container, Sandbox, SandboxError};
use crate::sandboxd::egress::EgressRules;

pub mod explain;
pub mod meter;
pub mod pool;

use meter::{Ledger, Meter};

/// A stage of the pipeline, for progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the ticket from Jira.
    Fetch,
    /// Checking the repository against the allowlist and the forge's merge rules.
    Check,
    /// Cloning the repository.
    Clone,
    /// Starting the sandbox container and copying the workspace in.
    Sandbox,
    /// The model loop.
    Agent,
    /// Committing and pushing the branch.
    Push,
    /// Opening the draft pull request.
    PullRequest,
    /// Reporting back on the ticket.
    Report,
}

impl Stage {
    /// Lower-case name for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Check => "check",
            Stage::Clone => "clone",
            Stage::Sandbox => "sandbox",
            Stage::Agent => "agent",
            Stage::Push => "push",
            Stage::PullRequest => "pr",
            Stage::Report => "report",
        }
    }
}

/// What the pipeline tells its listeners.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage began; `detail` says on what (the ticket, the repository, the branch).
    Stage {
        /// Which stage.
        stage: Stage,
        /// What it works on.
        detail: String,
    },
    /// Something from inside the agent loop.
    Agent(AgentEvent),
    /// The job ended.
    Done(JobOutcome),
}

/// How a job ended when it did not fail.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JobOutcome {
    /// A draft pull request was opened.
    PullRequest {
        /// Its web URL.
        url: String,
        /// Its number.
        number: u64,
        /// The pushed branch.
        branch: String,
        /// The repository.
        repo: String,
        /// The proof bundle.
        bundle: PathBuf,
        /// SHA-256 of the bundle file after this attempt's run statement.
        bundle_digest: String,
    },
    /// The model changed nothing, so no pull request was opened.
    NoChanges {
        /// The model's summary.
        summary: String,
        /// The proof bundle.
        bundle: PathBuf,
        /// SHA-256 of the bundle file after this attempt's run statement.
        bundle_digest: String,
    },
}

/// Why a job failed. `Refused` means the runner would not do it (policy); the others are faults.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The ticket asked for something the configuration or the policy does not allow. Not retryable.
    #[error("refused: {message}")]
    Refused {
        /// The rule that refused it (a policy rule such as `repo` or `budget.daily_tokens`, or `ticket_key`,
        /// `forge.merge_rights`), as recorded in the run statement.
        rule: String,
        /// What the ticket is told.
        message: String,
    },
    /// The policy wants a person to approve the job first: not a failure; the job waits (`drafter serve`) or the
    /// operator approves it (`drafter run --approved-by`).
    #[error("awaiting approval: {reason} (approvers: {approvers})")]
    AwaitingApproval {
        /// Which rule asks for approval.
        reason: String,
        /// Who may approve.
        approvers: String,
        /// How long the job may wait.
        ttl_hours: u64,
        /// When approval was asked for (before the ticket is told): only comments created later can approve.
        requested_at: chrono::DateTime<chrono::Utc>,
        /// What is to be approved: the ticket content, repository and base this attempt would have run with.
        subject: ApprovalSubject,
        /// Set when an earlier approval no longer holds: who gave it, and what changed since (in words).
        outdated: Option<(String, Vec<String>)>,
    },
    /// Jira failed.
    #[error("jira: {0}")]
    Jira(#[from] JiraError),
    /// Git failed.
    #[error("git: {0}")]
    Repo(#[from] RepoError),
    /// GitHub failed.
    #[error("github: {0}")]
    Forge(#[from] ForgeError),
    /// Docker failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The model loop failed or hit a limit.
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    /// The model client could not be set up.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// Receipts or the runner key failed.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    /// This attempt no longer holds the job's lease (another worker took it over after this one stalled, or an
    /// operator cancelled it): it stopped before `before` instead of doing it twice. Not a failure of the job.
    #[error("lease lost before {before}: another worker holds the job now, or it was cancelled")]
    LeaseLost {
        /// The side effect that was not done.
        before: String,
    },
    /// Local I/O (job directory, workspace).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl JobError {
    /// How long the failing service asked us to wait (`Retry-After`), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JobError::Jira(e) => e.retry_after(),
            JobError::Model(e) | JobError::Agent(AgentError::Model(e)) => e.retry_after(),
            JobError::Forge(ForgeError::RateLimited {
                retry_after_secs, ..
            }) => retry_after_secs.map(Duration::from_secs),
            _ => None,
        }
    }

    /// Whether running the job again could succeed (a network fault, not a refusal or a model that would not stop).
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Refused { .. }
            | JobError::AwaitingApproval { .. }
            | JobError::Proof(_)
            | JobError::LeaseLost { .. }
            | JobError::Io { .. } => false,
            JobError::Jira(e) => e.is_retryable(),
            JobError::Repo(e) => e.is_retryable(),
            JobError::Forge(e) => e.is_retryable(),
            JobError::Sandbox(_) => false,
            JobError::Agent(e) => e.is_retryable(),
            JobError::Model(e) => e.is_retryable(),
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Io { context, source }
}

/// Where a job keeps its proof record.
pub fn job_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("jobs").join(job_id)
}

fn cap(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Replaces every configured secret value in `text` with `[redacted]`. Errors should never carry secrets; this is
/// the second line of defence before anything leaves the process (a ticket comment, a log line, `job.json`).
pub fn scrub(config: &Config, text: &str) -> String {
    // Only what this command read: a secret never read cannot be in any text. The Jira one is a token or a
    // password, whichever [jira] configures.
    let secrets: Vec<&str> = [
        Some(&config.github.token),
        Some(config.jira.auth.secret()),
        config.model.api_key.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|c| c.value().ok())
    .map(|s| s.expose())
    .collect();
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

/// What `job.json` records.
#[derive(Serialize)]
struct JobRecord<'a> {
    job_id: &'a str,
    attempt: u32,
    ticket: &'a str,
    repo: Option<&'a str>,
    branch: Option<&'a str>,
    started_at: String,
    finished_at: String,
    outcome: Option<&'a JobOutcome>,
    error: Option<String>,
    retryable: bool,
    bundle_digest: Option<&'a str>,
    bundle_signer: Option<String>,
    policy_hash: &'a str,
    policy_team: Option<&'a str>,
    triggered_by: String,
    approved_by: Option<&'a str>,
    decisions: &'a [Decision],
    turns: Option<u32>,
    tokens: Option<u64>,
    tool_calls: Vec<String>,
}

/// Mutable facts the pipeline learns, kept for the run statement and `job.json` even when a later stage fails.
#[derive(Default)]
struct Progress {
    team: Option<String>,
    decisions: Vec<Decision>,
    retention: Retention,
    ticket_sha256: Option<String>,
    repo: Option<String>,
    base: Option<String>,
    branch: Option<String>,
    change: Option<Change>,
    /// The sandbox image's name and content digest.
    image: Option<(String, String)>,
    agent: Option<AgentOutcome>,
    tool_calls: Vec<ToolCallRecord>,
    /// The pull request's title and body without the proof footer, to be completed once the bundle is sealed.
    pr_text: Option<(String, String)>,
    /// The bundle writer the model client used, when the agent ran.
    bundle: Option<BundleWriter>,
    /// The sandbox's network and what the egress proxy recorded (`allowlist:` jobs).
    network: Option<NetworkRecord>,
}

/// Which attempt of a job this is. The ticket hears about a failure only when it is final: not retryable, or the
/// last attempt; a retryable failure with attempts left is logged and retried quietly.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// 1-based attempt number.
    pub number: u32,
    /// Attempts allowed.
    pub max: u32,
}

impl Attempt {
    /// The single attempt of a foreground `drafter run`.
    pub const ONLY: Attempt = Attempt { number: 1, max: 1 };

    fn is_final_for(&self, e: &JobError) -> bool {
        // A lost lease is not this job's end: whoever holds it now reports the outcome.
        !matches!(e, JobError::LeaseLost { .. }) && (!e.is_retryable() || self.number >= self.max)
    }
}

/// Who set a job off, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An operator on the runner host (`drafter run`), by name.
    Operator(String),
    /// A Jira user (account id, or Data Center name); `None` when it could not be established.
    Jira(Option<String>),
}

impl Origin {
    /// For `job.json` and logs.
    pub fn describe(&self) -> String {
        match self {
            Origin::Operator(n) => format!("operator {n}"),
            Origin::Jira(Some(a)) => format!("jira user {a}"),
            Origin::Jira(None) => "jira (unknown user)".into(),
        }
    }
}

/// A triggering comment's text and who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// Who asked (a Jira account id or Data Center name, or an operator's name); `None` when unknown.
    pub by: Option<String>,
    /// Whether an operator on the runner host asked (`drafter` CLI), rather than a Jira user.
    pub operator: bool,
    /// Whether it came with the trigger that created the job (whose author the policy's decision already checked).
    pub first: bool,
    /// What they said.
    pub text: String,
}

/// At most this many requests go to the model; later ones are recorded as dropped.
pub const MAX_REQUESTS: usize = 10;
/// At most this many bytes of request text, all requests together, go to the model.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What to run: which ticket, as which job and attempt, with what people asked for, under which policy.
#[derive(Clone)]
pub struct JobSpec {
    /// The Jira issue key.
    pub ticket: String,
    /// The job id (job directory, container label, commit trailer).
    pub job_id: String,
    /// Which attempt this is.
    pub attempt: Attempt,
    /// What people asked of the bot on the ticket (the triggering comments), in trigger order. Each one's author
    /// must pass the policy's `triggers` rule before its text goes to the model, as untrusted data beside the
    /// ticket.
    pub requests: Vec<Ask>,
    /// Who triggered the job.
    pub origin: Origin,
    /// The triggering event: its source and delivery id (`webhook:jira:issue_updated changelog:10401`, `cli`).
    pub event: String,
    /// Who approved it, when the policy asked for approval and someone gave it.
    pub approved_by: Option<String>,
    /// What that approval was given for (`drafter serve`; `None` for an operator's `drafter run --approved-by`). The
    /// job runs only while the ticket content, repository and base are still these; otherwise it asks again.
    pub approved: Option<ApprovalSubject>,
    /// The policy the job runs under (fixed for the job: a reload applies to new jobs only).
    pub policy: Arc<Policy>,
    /// Where team budgets are counted (the queue database), if anywhere.
    pub ledger: Option<Arc<dyn Ledger>>,
    /// The worker's per-repository slots (`concurrency.repo`), when running under `drafter serve`.
    pub slots: Option<Arc<RepoSlots>>,
    /// The lease check asked immediately before each side effect outside the runner (push, pull request, ticket
    /// comment), when the job came from a shared queue.
    pub fence: Option<Arc<dyn Fence>>,
}

/// Whether this attempt still holds its job: asked immediately before each push, pull request and ticket comment,
/// so a worker that stalled past its lease (SIGSTOP, a long GC pause of the host, a hung blocking call) and the
/// worker that took the job over never both deliver.
#[async_trait::async_trait]
pub trait Fence: Send + Sync {
    /// `Ok(true)` while this attempt holds the lease.
    async fn holds(&self) -> Result<bool, String>;
}

/// Asks the job's fence before `what`; [`JobError::LeaseLost`] when the lease is gone. A fence that cannot be
/// asked (the database is away) also stops the side effect: doing it twice is worse than doing it on a retry.
async fn fence(spec: &JobSpec, what: &str) -> Result<(), JobError> {
    let Some(f) = &spec.fence else {
        return Ok(());
    };
    match f.holds().await {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(before = what, "lease lost: not doing it");
            Err(JobError::LeaseLost {
                before: what.to_string(),
            })
        }
        Err(e) => {
            tracing::warn!(before = what, error = %e, "could not check the lease: not doing it");
            Err(JobError::LeaseLost {
                before: what.to_string(),
            })
        }
    }
}

/// Per-repository job slots of one worker process: a job whose repository is at its policy cap waits here (holding
/// its lease) until a job on that repository ends.
#[derive(Debug, Default)]
pub struct RepoSlots {
    busy: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    freed: tokio::sync::Notify,
}

/// A held slot; dropping it frees the slot.
pub struct RepoSlot {
    slots: Arc<RepoSlots>,
    repo: String,
}

impl RepoSlots {
    /// Waits for a slot on `repo` with at most `cap` jobs at once.
    pub async fn acquire(self: &Arc<Self>, repo: &str, cap: usize) -> RepoSlot {
        loop {
            let freed = self.freed.notified();
            {
                let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
                let n = busy.entry(repo.to_string()).or_default();
                if *n < cap {
                    *n += 1;
                    return RepoSlot {
                        slots: self.clone(),
                        repo: repo.to_string(),
                    };
                }
            }
            freed.await;
        }
    }

    /// Jobs holding a slot on `repo` now.
    pub fn busy(&self, repo: &str) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(repo).copied().unwrap_or(0)
    }
}

impl Drop for RepoSlot {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.repo) {
            *n = n.saturating_sub(1);
        }
        drop(busy);
        self.slots.freed.notify_waiters();
    }
}

impl JobSpec {
    /// A fresh single-attempt job for a ticket, started by an operator (`drafter run`).
    pub fn new(ticket: &str, policy: Arc<Policy>, operator: &str) -> JobSpec {
        JobSpec {
            ticket: ticket.to_string(),
            job_id: crate::queue::new_job_id(),
            attempt: Attempt::ONLY,
            requests: Vec::new(),
            origin: Origin::Operator(operator.to_string()),
            event: "cli".into(),
            approved_by: None,
            approved: None,
            policy,
            ledger: None,
            slots: None,
            fence: None,
        }
    }
}

/// Runs one job to the end. Events go to `events` (if the receiver is gone they are dropped). Every attempt ends
/// with a run statement in the job's proof bundle, whatever the outcome; final failures are commented on the
/// ticket (with the bundle digest) before this returns.
pub async fn run_job(
    config: Arc<Config>,
    spec: &JobSpec,
    events: UnboundedSender<Event>,
) -> Result<JobOutcome, JobError> {
    let (ticket_key, job_id, attempt) = (spec.ticket.as_str(), spec.job_id.as_str(), spec.attempt);
    let span = tracing::info_span!("job", job_id = %job_id, ticket = %ticket_key);
    async move {
        let started = chrono::Utc::now();
        let dir = job_dir(&config.data_dir, job_id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let jira = JiraClient::new(&config.jira)?;
        let mut progress = Progress::default();
        let mut result = pipeline(&config, &jira, spec, &dir, &events, &mut progress).await;

        // The run statement ends the attempt's record; its digest goes to the PR and the ticket.
        let sealed = seal(&config, spec, &dir, &mut progress, &result, started);
        let digest = match sealed {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "could not write the run statement");
                if result.is_ok() {
                    result = Err(JobError::Proof(e));
                }
                None
            }
        };
        if let (Ok(outcome), Some(d)) = (&mut result, &digest) {
            match outcome {
                JobOutcome::PullRequest { bundle_digest, .. }
                | JobOutcome::NoChanges { bundle_digest, .. } => *bundle_digest = d.clone(),
            }
            if let Err(e) = deliver(&config, &jira, spec, &progress, outcome, d, &events).await {
                result = Err(e);
            }
        }

        // Report final failures on the ticket; a retry is coming for the others.
        if let Err(JobError::AwaitingApproval {
            reason,
            approvers,
            ttl_hours,
            outdated,
            ..
        }) = &result
        {
            if let Some((approved_by, changed)) = outdated {
                // Each time an approval stops holding, the approvers must look again: say what changed.
                let notice = Notice::ApprovalOutdated {
                    job_id: job_id.to_string(),
                    approved_by: approved_by.clone(),
                    changed: changed.clone(),
                    approvers: approvers.clone(),
                    ttl_hours: *ttl_hours,
                };
                if let Err(ce) = jira.notify(ticket_key, &notice).await {
                    tracing::warn!(error = %scrub(&config, &ce.to_string()), "could not ask for approval again on the ticket");
                }
            }
            // One request per job, however often it is looked at.
            let asked = if outdated.is_some() {
                Ok(true)
            } else {
                jira.has_notice(ticket_key, &jira::DedupKey::approval(job_id)).await
            };
            if !matches!(asked, Ok(true)) && fence(spec, "asking for approval").await.is_ok() {
                let notice = Notice::ApprovalNeeded {
                    job_id: job_id.to_string(),
                    reason: reason.clone(),
                    approvers: approvers.clone(),
                    ttl_hours: *ttl_hours,
                };
                if let Err(ce) = jira.notify(ticket_key, &notice).await {
                    tracing::warn!(error = %scrub(&config, &ce.to_string()), "could not ask for approval on the ticket");
                }
            }
        } else if let Err(e) = &result {
            let reason = scrub(&config, &e.to_string());
            if !attempt.is_final_for(e) {
                tracing::warn!(error = %reason, attempt = attempt.number, max = attempt.max,
                    "attempt failed; it will be retried");
            } else {
                tracing::error!(error = %reason, retryable = e.is_retryable(), "job failed");
                let proof = digest.clone().map(|d| jira::ProofRef {
                    job_id: job_id.to_string(),
                    digest: d,
                });
                let notice = match e {
                    JobError::Refused { message, .. } => Notice::Refused {
                        reason: scrub(&config, message),
                        proof,
                    },
                    _ => Notice::Failed {
                        job_id: job_id.to_string(),
                        reason,
                        proof,
                    },
                };
                if fence(spec, "reporting the failure").await.is_ok() {
                    if let Err(ce) = jira.notify(ticket_key, &notice).await {
                        tracing::warn!(error = %scrub(&config, &ce.to_string()), "could not report the failure on the ticket");
                    }
                }
            }
        }

        let record = JobRecord {
            job_id,
            attempt: attempt.number,
            ticket: ticket_key,
            repo: progress.repo.as_deref(),
            branch: progress.branch.as_deref(),
            started_at: started.to_rfc3339(),
            finished_at: chrono::Utc::now().to_rfc3339(),
            outcome: result.as_ref().ok(),
            error: result.as_ref().err().map(|e| scrub(&config, &e.to_string())),
            retryable: result.as_ref().err().map(JobError::is_retryable).unwrap_or(false),
            bundle_digest: digest.as_deref(),
            bundle_signer: std::fs::read_to_string(config.data_dir.join(proof::PUB_FILE))
                .ok()
                .map(|k| k.trim().to_string()),
            policy_hash: &spec.policy.hash,
            policy_team: progress.team.as_deref(),
            triggered_by: spec.origin.describe(),
            approved_by: spec.approved_by.as_deref(),
            decisions: &progress.decisions,
            turns: progress.agent.as_ref().map(|a| a.turns),
            tokens: progress.agent.as_ref().map(|a| a.tokens),
            tool_calls: progress
                .tool_calls
                .iter()
                .map(|c| format!("{} {}{}", c.name, c.detail, if c.ok { "" } else { " (failed)" }))
                .collect(),
        };
        match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => {
                if let Err(e) = std::fs::write(dir.join("job.json"), bytes) {
                    tracing::warn!(error = %e, "could not write job.json");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode job.json"),
        }
        if let Ok(outcome) = &result {
            let _ = events.send(Event::Done(outcome.clone()));
        }
        result
    }
    .instrument(span)
    .await
}

/// Writes the attempt's run statement; returns the bundle digest.
fn seal(
    config: &Config,
    spec: &JobSpec,
    dir: &Path,
    progress: &mut Progress,
    result: &Result<JobOutcome, JobError>,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<String, ProofError> {
    let mut bundle = match progress.bundle.take() {
        Some(b) => b,
        // The agent did not run (a refusal, an earlier failure, a reused branch): open the job's bundle.
        None => {
            let key = Arc::new(RunnerKey::load_or_create(&config.data_dir)?);
            BundleWriter::open(dir, key, &spec.job_id, &spec.ticket, &spec.policy.hash)?
                .with_retention(progress.retention)
        }
    };
    let outcome = match result {
        Ok(JobOutcome::PullRequest { url, number, .. }) => Outcome {
            result: "pull_request".into(),
            rule: None,
            reason: None,
            retryable: false,
            pr_url: Some(url.clone()),
            pr_number: Some(*number),
        },
        Ok(JobOutcome::NoChanges { .. }) => Outcome {
            result: "no_changes".into(),
            rule: None,
            reason: None,
            retryable: false,
            pr_url: None,
            pr_number: None,
        },
        Err(e) => Outcome {
            result: match e {
                JobError::Refused { .. } => "refused",
                JobError::AwaitingApproval { .. } => "awaiting_approval",
                _ => "failed",
            }
            .into(),
            rule: match e {
                JobError::Refused { rule, .. } => Some(rule.clone()),
                JobError::AwaitingApproval { .. } => Some("approval".into()),
                _ => None,
            },
            reason: Some(scrub(config, &e.to_string())),
            retryable: e.is_retryable(),
            pr_url: None,
            pr_number: None,
        },
    };
    bundle.run(RunInput {
        team: progress.team.clone(),
        attempt: spec.attempt.number,
        max_attempts: spec.attempt.max,
        ticket_sha256: progress.ticket_sha256.clone(),
        trigger: TriggerInfo {
            by: spec.origin.describe(),
            event: spec.event.clone(),
            approved_by: spec.approved_by.clone(),
        },
        worker_id: pool::worker_id(),
        repo: progress.repo.clone(),
        base: progress.base.clone(),
        branch: progress.branch.clone(),
        change: progress.change.clone(),
        sandbox_image: progress.image.as_ref().map(|i| i.0.clone()),
        sandbox_image_digest: progress.image.as_ref().map(|i| i.1.clone()),
        started_at: started,
        finished_at: chrono::Utc::now(),
        decisions: progress.decisions.clone(),
        network: progress.network.clone(),
        outcome,
    })
}

/// Ends the record of a job whose approval request expired, so it never ran again: a run statement with outcome
/// `failed` (rule `approval`), when this host holds the job's bundle. Returns the new bundle digest.
pub(crate) fn seal_expired(
    config: &Config,
    job: &crate::queue::Job,
    reason: &str,
) -> Option<String> {
    let dir = job_dir(&config.data_dir, &job.id);
    let last = proof::bundle::last_run(&dir.join(proof::BUNDLE_FILE))
        .ok()
        .flatten()?;
    let key = Arc::new(RunnerKey::load_or_create(&config.data_dir).ok()?);
    let mut bundle = BundleWriter::open(&dir, key, &job.id, &job.ticket, &last.policy_hash)
        .ok()?
        .with_retention(last.retention);
    let now = chrono::Utc::now();
    let written = bundle.run(RunInput {
        team: last.team,
        attempt: last.attempt,
        max_attempts: last.max_attempts,
        ticket_sha256: None,
        trigger: last.trigger,
        worker_id: pool::worker_id(),
        repo: last.repo,
        base: last.base,
        branch: None,
        change: None,
        sandbox_image: None,
        sandbox_image_digest: None,
        started_at: now,
        finished_at: now,
        decisions: last.decisions,
        network: None,
        outcome: Outcome {
            result: "failed".into(),
            rule: Some("approval".into()),
            reason: Some(reason.to_string()),
            retryable: false,
            pr_url: None,
            pr_number: None,
        },
    });
    match written {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not end the expired job's bundle");
            None
        }
    }
}

/// After the run statement: the PR body gets the bundle digest, and the ticket hears the result with it.
async fn deliver(
    config: &Config,
    jira: &JiraClient,
    spec: &JobSpec,
    progress: &Progress,
    outcome: &JobOutcome,
    digest: &str,
    events: &UnboundedSender<Event>,
) -> Result<(), JobError> {
    let ticket_key = spec.ticket.as_str();
    let proof = Some(jira::ProofRef {
        job_id: spec.job_id.clone(),
        digest: digest.to_string(),
    });
    match outcome {
        JobOutcome::PullRequest {
            url,
            number,
            branch,
            repo,
            ..
        } => {
            if let Some((title, body)) = &progress.pr_text {
                let github = GitHub::new(&config.github)?;
                let body = format!("{body}{}", proof_footer(&spec.job_id, Some(digest)));
                fence(spec, "updating the pull request").await?;
                github
                    .update_pr(repo, *number, title, &scrub(config, &body))
                    .await?;
            }
            // One "PR opened" comment per PR, however many attempts it took.
            stage(events, Stage::Report, ticket_key);
            if !jira
                .has_notice(
                    ticket_key,
                    &jira::DedupKey::pr_opened(&spec.job_id, *number),
                )
                .await?
            {
                fence(spec, "commenting on the ticket").await?;
                jira.notify(
                    ticket_key,
                    &Notice::PrOpened {
                        url: url.clone(),
                        repo: repo.clone(),
                        number: *number,
                        branch: branch.clone(),
                        proof,
                    },
                )
                .await?;
            }
        }
        JobOutcome::NoChanges { summary, .. } => {
            stage(events, Stage::Report, "no changes");
            fence(spec, "commenting on the ticket").await?;
            jira.notify(
                ticket_key,
                &Notice::NoChanges {
                    summary: summary.clone(),
                    proof,
                },
            )
            .await?;
        }
    }
    Ok(())
}

fn stage(events: &UnboundedSender<Event>, stage: Stage, detail: impl Into<String>) {
    let detail = detail.into();
    tracing::info!(stage = stage.as_str(), %detail, "stage");
    let _ = events.send(Event::Stage { stage, detail });
}

async fn pipeline(
    config: &Arc<Config>,
    jira: &JiraClient,
    spec: &JobSpec,
    dir: &Path,
    events: &UnboundedSender<Event>,
    progress: &mut Progress,
) -> Result<JobOutcome, JobError> {
    let (ticket_key, job_id) = (spec.ticket.as_str(), spec.job_id.as_str());
    // Fetch.
    stage(events, Stage::Fetch, ticket_key);
    if !jira::valid_issue_key(ticket_key) {
        return Err(JobError::Refused {
            rule: "ticket_key".into(),
            message: format!(
                "`{}` is not a Jira issue key (expected e.g. PROJ-123)",
                cap(ticket_key, 40)
            ),
        });
    }
    let ticket = jira.issue(ticket_key).await?;
    let ticket_json = ticket_canonical(&ticket);
    progress.ticket_sha256 = Some(proof::sha256_hex(&ticket_json));

    // Check: the policy first (nothing is cloned for a refused ticket), then the forge's merge rules.
    let grant = decide(spec, &ticket, jira, progress).await?;
    let requests = admit_requests(spec, &ticket, jira, progress).await;
    let repo_cfg = grant.repo.clone();
    progress.repo = Some(repo_cfg.name.clone());
    progress.base = Some(repo_cfg.base.clone());
    let meter = Meter::new(
        &spec.policy.hash,
        &ticket.key,
        job_id,
        &grant.team,
        &config.model.model,
        spec.policy.prices.get(&config.model.model).copied(),
        grant.rules.budget.clone(),
        spec.ledger.clone(),
    );
    if grant.rules.budget.has_cost_caps() && !spec.policy.prices.contains_key(&config.model.model) {
        return Err(refused(
            "budget",
            format!(
                "the policy sets cost budgets but has no price for the model `{}`",
                config.model.model
            ),
        ));
    }
    // A team already over its budget is told before anything is cloned.
    meter
        .check_rule()
        .await
        .map_err(|(rule, message)| JobError::Refused { rule, message })?;
    let (limits, sandbox_cfg) = effective_limits(config, &grant);
    // The repository cap: wait for a slot before cloning (the slot is held until the job ends).
    let _slot = match (&spec.slots, grant.rules.concurrency.repo) {
        (Some(slots), Some(cap)) => {
            if slots.busy(&repo_cfg.name) >= cap {
                tracing::info!(repo = %repo_cfg.name, cap, "repository at its concurrency cap; waiting");
            }
            Some(slots.acquire(&repo_cfg.name, cap).await)
        }
        _ => None,
    };
    stage(events, Stage::Check, repo_cfg.name.as_str());
    let github = GitHub::new(&config.github)?;
    github
        .check_cannot_merge(&repo_cfg.name, &repo_cfg.base)
        .await
        .map_err(|e| match e {
            ForgeError::CanMerge { .. } => JobError::Refused {
                rule: "forge.merge_rights".into(),
                message: e.to_string(),
            },
            other => JobError::Forge(other),
        })?;

    let sandbox = Sandbox::connect(&sandbox_cfg).await?;
    let image_digest = sandbox.ensure_image().await?;
    progress.image = Some((sandbox_cfg.image.clone(), image_digest));
    // One "started" comment per job, not per attempt: a retried job finds its own id already on the ticket.
    if !jira
        .has_notice(ticket_key, &jira::DedupKey::started(job_id))
        .await?
    {
        fence(spec, "commenting on the ticket").await?;
        jira.notify(
            ticket_key,
            &Notice::Started {
                job_id: job_id.to_string(),
                repo: repo_cfg.name.clone(),
            },
        )
        .await?;
    }

    // Clone into a scratch directory that disappears with the job.
    let scratch = tempfile::Builder::new()
        .prefix("drafter-ws-")
        .tempdir()
        .map_err(io("creating the workspace directory"))?;
    let ws = scratch.path().join("repo");
    let url = config.github.clone_url(&repo_cfg.name);
    let preferred = repo::branch_name(&ticket.key, &ticket.summary);
    stage(
        events,
        Stage::Clone,
        format!("{} ({})", repo_cfg.name, repo_cfg.base),
    );
    // The sandbox starts while the repository clones: the two are independent, and each is a good part of a job's
    // start-up. If the clone fails, or an earlier attempt already pushed (no agent run), the container goes again.
    let egress = egress_rules(config, spec, &grant);
    let cloning = {
        let (url, ws, base, token, job) = (
            url.clone(),
            ws.clone(),
            repo_cfg.base.clone(),
            github.token().clone(),
            job_id.to_string(),
        );
        blocking(move || {
            let r = repo::clone(&url, &ws, &base, &token)?;
            let (branch, reused) = choose_branch(&r, &preferred, &job)?;
            if reused {
                repo::checkout_remote_branch(&r, &branch)?;
            } else {
                repo::create_branch(&r, &branch)?;
            }
            Ok((r, branch, reused))
        })
    };
    let (cloned, started) = tokio::join!(
        cloning,
        sandbox.start_with_network(job_id, &ticket.key, egress.as_ref())
    );
    let (git_repo, branch, reused) = match cloned {
        Ok(c) => c,
        Err(e) => {
            if let Ok(container) = started {
                let _ = container.remove().await;
            }
            return Err(e);
        }
    };
    let container = match (reused, started) {
        (false, started) => Some(started?),
        (true, Ok(container)) => {
            let _ = container.remove().await;
            None
        }
        (true, Err(_)) => None,
    };
    progress.branch = Some(branch.clone());

    let (outcome, digest, changed, left_out) = if reused {
        // An earlier attempt of this job already pushed its work: deliver that instead of running the model again.
        stage(
            events,
            Stage::Push,
            format!("{branch} (already pushed by an earlier attempt)"),
        );
        let (branch2, base2) = (branch.clone(), repo_cfg.base.clone());
        let write = grant.rules.write.clone();
        let (message, changed, change, violations) = blocking(move || {
            let remote = repo::remote_branch(&git_repo, &branch2)?.ok_or_else(|| {
                RepoError::PushRejected {
                    branch: branch2.clone(),
                    message: "the branch an earlier attempt pushed is gone".into(),
                }
            })?;
            // The pushed tip is checked like a fresh change, under this attempt's policy: it may have been
            // checked under an older policy, or pushed by someone who forged the job's trailer.
            let base = repo::remote_base(&git_repo, &base2)?;
            let summary = repo::diff::summarize(&git_repo, base, remote.tip)
                .map_err(|e| repo::git_error("diffing the pushed change", e))?;
            let violations = write::check(&summary, &write);
            let changed = repo::changed_files(&git_repo, &base2)?;
            let change = change_of(&git_repo, &base2, remote.tip, changed.len())?;
            Ok((remote.message, changed, change, violations))
        })
        .await?;
        if !violations.is_empty() {
            return Err(refuse_violations(
                spec,
                &ticket.key,
                progress,
                &violations,
                "the branch an earlier attempt pushed is not delivered",
            ));
        }
        let committed_under = message
            .lines()
            .find_map(|l| l.strip_prefix("Drafter-Policy:"))
            .map(str::trim)
            .unwrap_or("unknown");
        progress.decisions.push(policy::log_decision(
            &spec.policy.hash,
            &ticket.key,
            "write",
            true,
            format!(
                "the change an earlier attempt pushed (committed under policy {committed_under}) passes the \
                 write rules of policy {}",
                spec.policy.hash
            ),
        ));
        progress.change = Some(change);
        let (summary, digest) = summary_and_digest(&message);
        let outcome = AgentOutcome {
            summary,
            turns: 0,
            tool_calls: Vec::new(),
            tokens: 0,
            written: BTreeSet::new(),
            finish_refusals: 0,
        };
        (outcome, digest, changed, Vec::new())
    } else {
        let run = AgentRun {
            grant: &grant,
            requests: &requests,
            limits: &limits,
            command_timeout: Duration::from_secs(sandbox_cfg.command_timeout_secs),
            meter: &meter,
        };
        let container = container.ok_or_else(|| {
            JobError::Sandbox(SandboxError::Exec(
                "the sandbox container was not started".into(),
            ))
        })?;
        let (outcome, digest) = run_agent(
            config, spec, &ticket, &repo_cfg, dir, container, &ws, events, progress, &run,
        )
        .await?;

        // Commit and push.
        stage(events, Stage::Push, branch.as_str());
        let message = repo::message_with_trailers(
            &format!("[{}] {}", ticket.key, cap(ticket.summary.trim(), 60)),
            &outcome.summary,
            &[
                ("Drafter-Ticket", ticket.key.as_str()),
                ("Drafter-Job", job_id),
                ("Drafter-Receipts", &format!("sha256:{digest}")),
                ("Drafter-Policy", &spec.policy.hash),
            ],
        );
        let (identity, token) = (config.commit.clone(), github.token().clone());
        let (url2, branch2, base2) = (url.clone(), branch.clone(), repo_cfg.base.clone());
        let write = grant.rules.write.clone();
        let write2 = write.clone();
        let base3 = base2.clone();
        let mut leave = LeaveOut::new(&write, &outcome.written).map_err(|e| *e)?;
        let committed = blocking(move || {
            let r = git_repo;
            // Build products the agent's commands left behind stay out (and are listed in the PR body).
            let (head, left_out) =
                repo::commit_all_except(&r, &identity, &message, &mut |p, t| leave.decide(p, t))?;
            if !left_out.is_empty() {
                tracing::info!(
                    files = left_out.len(),
                    "build products left out of the commit"
                );
            }
            let left_out = leave.lines();
            let Some(head) = head else {
                return Ok(Committed::Nothing);
            };
            // The write rules see exactly what would be pushed: base tree against the new commit.
            let base = repo::remote_base(&r, &base2)?;
            let summary = repo::diff::summarize(&r, base, head)
                .map_err(|e| repo::git_error("diffing the change", e))?;
            let violations = write::check(&summary, &write);
            if !violations.is_empty() {
                return Ok(Committed::Refused(violations));
            }
            let changed = repo::changed_files(&r, &base2)?;
            let change = change_of(&r, &base2, head, changed.len())?;
            Ok(Committed::Ready(r, changed, change, left_out))
        })
        .await?;
        let changed = match committed {
            Committed::Ready(r, changed, change, left_out) => {
                fence(spec, "pushing the branch").await?;
                let job = job_id.to_string();
                let (changed, change) = blocking(move || {
                    match repo::push(&r, &url2, &branch2, &token) {
                        Ok(()) => Ok((changed, change)),
                        // Refused by the server (non-fast-forward), or by libgit2 before sending (the remote ref
                        // has commits it lacks): either way, ask the remote what the branch holds now.
                        Err(e @ (RepoError::PushRejected { .. } | RepoError::Git { .. })) => {
                            // Another worker running this same job (this one stalled past its lease) may have
                            // pushed first: the branch then holds this job's work, which is delivered, not failed.
                            match repo::refresh_remote_branch(&r, &url2, &branch2, &token)? {
                                Some(b) if b.job.as_deref() == Some(job.as_str()) => {
                                    tracing::warn!(branch = %branch2,
                                        "the branch already holds this job's commit (pushed by another worker)");
                                    // Like any path to a PR, the commit that will be delivered passes the rules.
                                    let base = repo::remote_base(&r, &base3)?;
                                    let summary = repo::diff::summarize(&r, base, b.tip)
                                        .map_err(|e| repo::git_error("diffing the pushed change", e))?;
                                    if let Some(v) = write::check(&summary, &write2).first() {
                                        return Err(RepoError::PushRejected {
                                            branch: branch2.clone(),
                                            message: format!(
                                                "the branch holds a commit naming this job that breaks {}: {}",
                                                v.rule, v.detail
                                            ),
                                        });
                                    }
                                    let changed = repo::changed_files_at(&r, &base3, b.tip)?;
                                    let change = change_of(&r, &base3, b.tip, changed.len())?;
                                    Ok((changed, change))
                                }
                                _ => Err(e),
                            }
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
                progress.change = Some(change);
                Some((changed, left_out))
            }
            Committed::Nothing => None,
            Committed::Refused(violations) => {
                return Err(refuse_violations(
                    spec,
                    &ticket.key,
                    progress,
                    &violations,
                    "the change was not pushed",
                ));
            }
        };
        let Some((changed, left_out)) = changed else {
            // The ticket hears about it once the run statement is written (see `deliver`).
            return Ok(JobOutcome::NoChanges {
                summary: outcome.summary,
                bundle: dir.join(proof::BUNDLE_FILE),
                bundle_digest: String::new(),
            });
        };
        (outcome, digest, changed, left_out)
    };

    // Draft pull request: one per branch. A retried job finds the one it opened and refreshes it.
    stage(
        events,
        Stage::PullRequest,
        format!("{} <- {}", repo_cfg.base, branch),
    );
    let title = format!("[{}] {}", ticket.key, cap(ticket.summary.trim(), 200));
    let body = pr_body(
        &ticket,
        job_id,
        &outcome,
        &changed,
        &left_out,
        &digest,
        &spec.policy.hash,
    );
    // The PR opens with a placeholder footer; `deliver` puts the sealed bundle's digest there.
    let opening = format!("{body}{}", proof_footer(job_id, None));
    let pr: PullRequest = match github.find_open_pr(&repo_cfg.name, &branch).await? {
        Some(existing) => {
            // An earlier attempt opened it. If the model ran again, its new description replaces the old one;
            // if not, the old description stays and only the proof footer is refreshed.
            progress.pr_text = if reused {
                existing
                    .body
                    .as_deref()
                    .map(|b| (title.clone(), strip_proof_footer(b).to_string()))
            } else {
                Some((title.clone(), body))
            };
            existing
        }
        None => {
            fence(spec, "opening the pull request").await?;
            let pr = github
                .open_draft_pr(
                    &repo_cfg.name,
                    &branch,
                    &repo_cfg.base,
                    &title,
                    &scrub(config, &opening),
                )
                .await?;
            progress.pr_text = Some((title.clone(), body));
            pr
        }
    };
    Ok(JobOutcome::PullRequest {
        url: pr.html_url,
        number: pr.number,
        branch,
        repo: repo_cfg.name,
        bundle: dir.join(proof::BUNDLE_FILE),
        bundle_digest: String::new(),
    })
}

/// The ticket as the job saw it, in canonical JSON: its SHA-256 is the ticket's content digest in the run statement.
fn ticket_canonical(ticket: &Ticket) -> Vec<u8> {
    serde_json::to_value(ticket)
        .ok()
        .and_then(|v| proof::bundle::canonical_json(&v).ok())
        .unwrap_or_default()
}

/// The change `commit` makes against the remote base, for the run statement.
fn change_of(
    r: &git2::Repository,
    base: &str,
    commit: git2::Oid,
    files: usize,
) -> Result<Change, RepoError> {
    let base = repo::remote_base(r, base)?;
    Ok(Change {
        base_commit: base.to_string(),
        commit: commit.to_string(),
        diff_sha256: repo::diff_digest(r, base, commit)?,
        files: files as u64,
    })
}

/// Marks where the proof footer of a PR body starts.
const PROOF_MARKER: &str = "<!-- drafter:proof -->";

/// The PR body's last lines: the bundle digest and how to check it (`None`: not sealed yet).
pub fn proof_footer(job_id: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d) => format!(
            "\n{PROOF_MARKER}\nProof bundle `sha256:{d}`: fetch it with `drafter jobs bundle {job_id}` and check it with \
             `drafter verify` (see the README's \"Auditing a run\").\n"
        ),
        None => format!("\n{PROOF_MARKER}\nProof bundle: written when the job ends.\n"),
    }
}

/// `body` without its proof footer.
fn strip_proof_footer(body: &str) -> &str {
    match body.find(PROOF_MARKER) {
        Some(i) => body[..i].trim_end_matches('\n'),
        None => body,
    }
}

/// Identities and group membership for the policy's trigger and approver rules, from Jira (cached by the client).
#[async_trait::async_trait]
impl policy::Directory for JiraClient {
    async fn groups(&self, account: &str) -> Result<Vec<String>, String> {
        self.user_groups(account).await.map_err(|e| e.to_string())
    }

    async fn identities(&self, account: &str) -> Result<Vec<String>, String> {
        JiraClient::identities(self, account)
            .await
            .map_err(|e| e.to_string())
    }

    fn same_identity(&self, listed: &str, account: &str) -> bool {
        self.dialect().same_user(listed, account)
    }
}

/// What committing the agent's work came to.
enum Committed {
    /// Nothing changed.
    Nothing,
    /// The change broke write rules and was not pushed.
    Refused(Vec<write::Violation>),
    /// Committed and checked, ready to push: the repository, the changed paths, the change and the build products
    /// left out (as listed in the PR body).
    Ready(git2::Repository, Vec<String>, Change, Vec<String>),
}

/// Which untracked files are build products left out of the commit (and of the check at `finish`): those matching
/// the policy's exclusions, unless the agent's write or edit tools wrote them. Counts what it left out per listed
/// entry (a directory such as `__pycache__/`, or a file).
struct LeaveOut {
    exclusions: write::Exclusions,
    written: BTreeSet<String>,
    listed: BTreeMap<String, usize>,
}

impl LeaveOut {
    /// A policy whose exclusions do not compile (checked when it is parsed, so only a hand-made grant) is refused.
    fn new(
        write: &write::WriteRules,
        written: &BTreeSet<String>,
    ) -> Result<LeaveOut, Box<JobError>> {
        let exclusions = write.exclusions().map_err(|e| {
            Box::new(refused(
                "write.exclude",
                format!("`{}` is not a valid glob: {}", e.glob, e.reason),
            ))
        })?;
        Ok(LeaveOut {
            exclusions,
            written: written.clone(),
            listed: BTreeMap::new(),
        })
    }

    /// `true` to leave the untracked `path` out.
    fn decide(&mut self, path: &str, tracked: &repo::Tracked) -> bool {
        if self.written.contains(path) {
            return false;
        }
        match self.exclusions.matches(path, &|d| tracked.has_dir(d)) {
            Some(entry) => {
                *self.listed.entry(entry).or_default() += 1;
                true
            }
            None => false,
        }
    }

    /// One line per listed entry, safe inside Markdown code spans: "`__pycache__/` (2 files)", "`.coverage`".
    fn lines(&self) -> Vec<String> {
        self.listed
            .iter()
            .map(|(entry, n)| {
                let shown: String = entry
                    .chars()
                    .map(|c| if c == '`' || c.is_control() { '?' } else { c })
                    .collect();
                if entry.ends_with('/') {
                    let files = if *n == 1 { "file" } else { "files" };
                    format!("`{shown}` ({n} {files})")
                } else {
                    format!("`{shown}`")
                }
            })
            .collect()
    }
}

/// The write rules on the workspace as the model leaves it at `finish`: the workspace comes out of the container
/// into the job's clone (as it does after the loop), is staged there without touching the index file, and the
/// staged tree is checked against the base like the commit will be.
struct WorkspaceCheck<'a> {
    container: &'a Container,
    ws: &'a Path,
    base: String,
    write: write::WriteRules,
    exclusions: write::Exclusions,
}

#[async_trait::async_trait]
impl FinishCheck for WorkspaceCheck<'_> {
    async fn check(&self, written: &BTreeSet<String>) -> Result<FinishReport, AgentError> {
        self.container
            .download_workspace(self.ws)
            .await
            .map_err(AgentError::Sandbox)?;
        let (ws, base, write) = (self.ws.to_path_buf(), self.base.clone(), self.write.clone());
        let mut leave = LeaveOut {
            exclusions: self.exclusions.clone(),
            written: written.clone(),
            listed: BTreeMap::new(),
        };
        let checked = tokio::task::spawn_blocking(move || -> Result<_, RepoError> {
            let r = repo::open(&ws)?;
            let staged = repo::stage_all(&r, &mut |p, t| leave.decide(p, t), false)?;
            let base = repo::remote_base(&r, &base)?;
            let summary = repo::diff::summarize(&r, base, staged.tree)
                .map_err(|e| repo::git_error("diffing the workspace", e))?;
            Ok((write::check(&summary, &write), leave.lines()))
        })
        .await;
        let (violations, left_out) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(AgentError::Workspace(e.to_string())),
            Err(e) => return Err(AgentError::Workspace(format!("git task: {e}"))),
        };
        Ok(FinishReport {
            violations,
            allowed: self.write.describe(),
            left_out,
        })
    }
}

/// The requests whose authors pass the policy's `triggers` rule, as `who: text` for the model. The first trigger's
/// author was checked by [`decide`]; every later one (a mention or assignment absorbed by the open job) is checked
/// here the same way, and a refused one is recorded as a decision (who, why) and never reaches the model. Past
/// [`MAX_REQUESTS`] or [`MAX_REQUEST_BYTES`] the rest are dropped, and that is recorded too.
async fn admit_requests(
    spec: &JobSpec,
    ticket: &Ticket,
    dir: &dyn policy::Directory,
    progress: &mut Progress,
) -> Vec<String> {
    let mut admitted = Vec::new();
    let mut bytes = 0usize;
    let mut note = |allowed: bool, detail: String| {
        progress.decisions.push(policy::log_decision(
            &spec.policy.hash,
            &ticket.key,
            "trigger",
            allowed,
            detail,
        ));
    };
    for ask in &spec.requests {
        let text = ask.text.trim();
        if text.is_empty() {
            continue;
        }
        let who_name = ask.by.as_deref().unwrap_or("someone");
        if !ask.first {
            let who = if ask.operator {
                Who::Operator(who_name)
            } else {
                Who::Jira(ask.by.as_deref())
            };
            if let Err(why) = spec.policy.may_trigger(&ticket.project, who, dir).await {
                note(
                    false,
                    format!("a later request by {who_name} was not given to the model: {why}"),
                );
                continue;
            }
        }
        let line = format!("{who_name}: {text}");
        if admitted.len() >= MAX_REQUESTS || bytes + line.len() > MAX_REQUEST_BYTES {
            note(
                false,
                format!(
                    "a request by {who_name} was not given to the model: the job keeps at most {MAX_REQUESTS} \
                     requests and {MAX_REQUEST_BYTES} bytes of request text"
                ),
            );
            continue;
        }
        bytes += line.len();
        admitted.push(line);
    }
    admitted
}

/// Records each write-rule violation as a decision and refuses the job with the first. `violations` is not empty.
fn refuse_violations(
    spec: &JobSpec,
    ticket: &str,
    progress: &mut Progress,
    violations: &[write::Violation],
    consequence: &str,
) -> JobError {
    for v in violations {
        progress.decisions.push(policy::log_decision(
            &spec.policy.hash,
            ticket,
            &v.rule,
            false,
            v.detail.clone(),
        ));
    }
    let Some(first) = violations.first() else {
        return refused("write", "the change broke a write rule".into());
    };
    let more = if violations.len() > 1 {
        format!(" (and {} more)", violations.len() - 1)
    } else {
        String::new()
    };
    refused(
        &first.rule,
        format!("{consequence}: {}{more}", first.detail),
    )
}

fn refused(rule: &str, reason: String) -> JobError {
    JobError::Refused {
        rule: rule.to_string(),
        message: format!("policy rule `{rule}`: {reason}"),
    }
}

/// Asks the policy about this ticket and trigger; records every decision on the job.
async fn decide(
    spec: &JobSpec,
    ticket: &Ticket,
    jira: &JiraClient,
    progress: &mut Progress,
) -> Result<Grant, JobError> {
    let who = match &spec.origin {
        Origin::Operator(name) => Who::Operator(name),
        Origin::Jira(account) => Who::Jira(account.as_deref()),
    };
    let req = Request {
        ticket,
        who,
        approved_by: spec.approved_by.as_deref(),
    };
    let grant = match spec.policy.decide(&req, jira).await {
        Ok(g) => g,
        Err(denial) => {
            progress.decisions = denial.decisions;
            return Err(refused(&denial.rule, denial.reason));
        }
    };
    progress.decisions = grant.decisions.clone();
    progress.team = Some(grant.team.clone());
    progress.retention = grant.rules.retention;
    let subject = ApprovalSubject {
        ticket_sha256: progress.ticket_sha256.clone().unwrap_or_default(),
        repo: grant.repo.name.clone(),
        base: grant.repo.base.clone(),
    };
    if let Approval::Required {
        reason,
        approvers,
        ttl_hours,
    } = &grant.approval
    {
        return Err(JobError::AwaitingApproval {
            reason: reason.clone(),
            approvers: approvers.clone(),
            ttl_hours: *ttl_hours,
            requested_at: chrono::Utc::now(),
            subject,
            outdated: None,
        });
    }
    // An approval holds for what was approved only, whether or not the policy still asks for one now (dropping the
    // label is itself a change of the ticket).
    if let (Some(by), Some(approved)) = (&spec.approved_by, &spec.approved) {
        let changed = approved.changes(&subject);
        if !changed.is_empty() {
            let reason = format!("{} changed after {by} approved the job", changed.join(", "));
            progress.decisions.push(policy::log_decision(
                &spec.policy.hash,
                &ticket.key,
                "approval",
                false,
                format!("{reason}; asking again"),
            ));
            let team = spec.policy.team_for(&ticket.project);
            return Err(JobError::AwaitingApproval {
                reason,
                approvers: team.map(|t| t.approvers.describe()).unwrap_or_default(),
                ttl_hours: grant.rules.approval_ttl_hours,
                requested_at: chrono::Utc::now(),
                subject,
                outdated: Some((by.clone(), changed)),
            });
        }
    }
    if let Network::Allowlist(name) = &grant.rules.network {
        // Fail closed: a name the policy does not define gets no network at all, not some other one.
        let detail = match spec.policy.egress.get(name) {
            Some(e) => Ok(format!(
                "network allowlist:{name}: {} (plain HTTP methods: {})",
                e.hosts.join(", "),
                if e.methods.is_empty() {
                    "any".to_string()
                } else {
                    e.methods.join(", ")
                }
            )),
            None => Err(format!(
                "network allowlist:{name}: no [egress.{name}] in the policy"
            )),
        };
        let allowed = detail.is_ok();
        let text = detail.unwrap_or_else(|e| e);
        progress.decisions.push(policy::log_decision(
            &spec.policy.hash,
            &ticket.key,
            "network",
            allowed,
            text.clone(),
        ));
        if !allowed {
            return Err(refused("network", text));
        }
    }
    Ok(grant)
}

/// The egress allowlist the policy grants the job's sandbox, if any (`decide` has already refused a name the policy
/// does not define).
fn egress_rules(config: &Config, spec: &JobSpec, grant: &Grant) -> Option<EgressRules> {
    match &grant.rules.network {
        Network::Allowlist(name) => spec.policy.egress.get(name).map(|e| EgressRules {
            name: name.clone(),
            hosts: e.hosts.clone(),
            methods: e.methods.clone(),
            allow_addresses: config.sandbox.egress_allow_addresses.clone(),
        }),
        Network::None => None,
    }
}

/// The runner's limits tightened by the policy's: the stricter value of each wins.
fn effective_limits(config: &Config, grant: &Grant) -> (AgentLimits, SandboxConfig) {
    let l = &grant.rules.limits;
    let min = |a: u64, b: Option<u64>| b.map_or(a, |b| a.min(b));
    // `budget.job_tokens` is not folded in here: the meter enforces it before each call, naming the budget rule.
    let tokens = min(config.agent.max_total_tokens, l.max_total_tokens);
    let limits = AgentLimits {
        max_turns: l
            .max_turns
            .map_or(config.agent.max_turns, |t| config.agent.max_turns.min(t)),
        max_total_tokens: tokens,
        wall_time_secs: min(config.agent.wall_time_secs, l.wall_time_secs),
        context_budget_tokens: config.agent.context_budget_tokens,
    };
    let mut sandbox = config.sandbox.clone();
    sandbox.memory_mb = min(sandbox.memory_mb, l.memory_mb);
    sandbox.command_timeout_secs = min(sandbox.command_timeout_secs, l.command_timeout_secs);
    if let Some(c) = l.cpus {
        sandbox.cpus = sandbox.cpus.min(c);
    }
    if let Some(p) = l.pids_limit {
        sandbox.pids_limit = sandbox.pids_limit.min(p);
    }
    (limits, sandbox)
}

/// What the policy granted the agent stage.
struct AgentRun<'a> {
    grant: &'a Grant,
    /// The requests the policy let through, as `who: text`.
    requests: &'a [String],
    limits: &'a AgentLimits,
    command_timeout: Duration,
    meter: &'a Meter,
}

/// The branch for this job: the ticket's usual `drafter/<KEY>-<slug>`, unless the remote already has it from a
/// different job (an earlier assignment of the same ticket, whose PR may still be under review): then the job's
/// own `drafter/<KEY>-<slug>-<job suffix>`, never overwriting anyone's branch. `true` when the chosen branch
/// already holds this job's pushed work (an earlier attempt got that far).
fn choose_branch(
    r: &git2::Repository,
    preferred: &str,
    job_id: &str,
) -> Result<(String, bool), RepoError> {
    let suffix = job_id.rsplit('-').next().unwrap_or(job_id);
    for candidate in [preferred.to_string(), format!("{preferred}-{suffix}")] {
        match repo::remote_branch(r, &candidate)? {
            None => return Ok((candidate, false)),
            Some(b) if b.job.as_deref() == Some(job_id) => return Ok((candidate, true)),
            Some(_) => continue,
        }
    }
    Err(RepoError::PushRejected {
        branch: format!("{preferred}-{suffix}"),
        message: "the remote already has this branch from another job".into(),
    })
}

/// The model's summary and the receipts digest from a commit message made by this pipeline.
fn summary_and_digest(message: &str) -> (String, String) {
    let digest = message
        .lines()
        .find_map(|l| l.strip_prefix("Drafter-Receipts: sha256:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let body: Vec<&str> = message
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("Drafter-"))
        .collect();
    (body.join("\n").trim().to_string(), digest)
}

/// Sandbox, model loop, workspace back. The container is removed on every path out of here (its guard covers
/// panics and cancellation).
#[allow(clippy::too_many_arguments)]
async fn run_agent(
    config: &Arc<Config>,
    spec: &JobSpec,
    ticket: &Ticket,
    repo_cfg: &RepoConfig,
    dir: &Path,
    container: Container,
    ws: &Path,
    events: &UnboundedSender<Event>,
    progress: &mut Progress,
    run: &AgentRun<'_>,
) -> Result<(AgentOutcome, String), JobError> {
    let job_id = spec.job_id.as_str();
    stage(events, Stage::Sandbox, config.sandbox.image.as_str());
    let agent_result = async {
        container.upload_dir(ws).await?;
        stage(
            events,
            Stage::Agent,
            format!("{} {}", config.model.provider.as_str(), config.model.model),
        );
        let key = Arc::new(RunnerKey::load_or_create(&config.data_dir)?);
        // A retried job on the same host continues its bundle; elsewhere it starts one in its own job directory.
        let bundle = BundleWriter::open(dir, key, job_id, &spec.ticket, &spec.policy.hash)?
            .with_retention(run.grant.rules.retention)
            .with_price(spec.policy.prices.get(&config.model.model).copied());
        // With full retention the ticket as the model got it is kept too (its digest is in the run statement).
        bundle.ticket_body(&ticket_canonical(ticket))?;
        let mut model = ModelClient::new(&config.model, bundle)?;
        let finish_check = WorkspaceCheck {
            container: &container,
            ws,
            base: repo_cfg.base.clone(),
            write: run.grant.rules.write.clone(),
            exclusions: LeaveOut::new(&run.grant.rules.write, &BTreeSet::new())
                .map_err(|e| *e)?
                .exclusions,
        };
        let task = Task {
            ticket,
            repo: repo_cfg,
            limits: run.limits,
            command_timeout: run.command_timeout,
            requests: run.requests,
            permissions: Permissions {
                policy_hash: &spec.policy.hash,
                tools: &run.grant.rules.tools,
                write: &run.grant.rules.write,
                gate: Some(run.meter),
                finish_check: Some(&finish_check),
            },
        };
        let mut calls = Vec::new();
        let ev = events.clone();
        let mut on_event = |e: AgentEvent| {
            if let AgentEvent::ToolCall(c) = &e {
                calls.push(c.clone());
            }
            let _ = ev.send(Event::Agent(e));
        };
        let outcome = agent::run(&task, &mut model, &container, &mut on_event).await;
        let digest = model.bundle().head().to_string();
        Ok::<_, JobError>((outcome, digest, calls, model.into_bundle()))
    }
    .await;
    let result = match agent_result {
        Ok((outcome, digest, calls, bundle)) => {
            progress.tool_calls = calls;
            // The run statement continues this writer rather than reopening (and re-verifying) the file.
            progress.bundle = Some(bundle);
            match outcome {
                // Bring the model's work back before the container goes.
                Ok(o) => container
                    .download_workspace(ws)
                    .await
                    .map(|_| (o, digest))
                    .map_err(JobError::from),
                // Told at `finish`, and finished again (or ran out of turns) without fixing it.
                Err(AgentError::Unfixed(violations)) => Err(refuse_violations(
                    spec,
                    &ticket.key,
                    progress,
                    &violations,
                    "the change was not pushed (the model was told when it called finish, and did not fix it)",
                )),
                Err(e) => Err(JobError::from(e)),
            }
        }
        Err(e) => Err(e),
    };
    if let Network::Allowlist(name) = &run.grant.rules.network {
        let (connections, dropped) = container.egress_records();
        progress.network = Some(NetworkRecord {
            mode: format!("allowlist:{name}"),
            connections,
            dropped,
        });
    }
    if let Err(e) = container.remove().await {
        tracing::warn!(error = %e, "could not remove the sandbox container");
    }
    let (outcome, digest) = result?;
    progress.agent = Some(outcome.clone());
    Ok((outcome, digest))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, JobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(JobError::from),
        Err(e) => Err(JobError::Io {
            context: "git task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Text from the model or the ticket must not ping people or teams on the forge: `@` becomes an HTML entity, which
/// GitHub renders as `@` without a mention.
fn no_mentions(text: &str) -> String {
    text.replace('@', "&#64;")
}

/// The draft PR's description: where it came from, what the model said and did, and the proof digest.
pub fn pr_body(
    ticket: &Ticket,
    job_id: &str,
    outcome: &AgentOutcome,
    changed: &[String],
    left_out: &[String],
    digest: &str,
    policy_hash: &str,
) -> String {
    let reporter = ticket
        .reporter
        .as_deref()
        .map(|r| {
            format!(
                " (reported by {})",
                no_mentions(&r.replace(['[', ']', '<', '>'], ""))
            )
        })
        .unwrap_or_default();
    let mut b = format!(
        "Draft opened by drafter for [{key}]({url}){reporter}. **A human must review this change; drafter cannot \
         merge.**\n\n### Summary from the model\n\n{summary}\n\n### Files changed\n\n",
        key = ticket.key,
        url = ticket.url,
        summary = no_mentions(&outcome.summary.replace("\n#", "\n\\#")),
    );
    for f in changed.iter().take(100) {
        b.push_str(&format!("- `{f}`\n"));
    }
    if !left_out.is_empty() {
        b.push_str(
            "\n### Left out\n\nBuild products the agent's commands created, not committed (the policy's \
             `write.exclude` and the built-in list):\n\n",
        );
        for l in left_out.iter().take(100) {
            b.push_str(&format!("- {}\n", no_mentions(l)));
        }
        if left_out.len() > 100 {
            b.push_str(&format!("- ... and {} more\n", left_out.len() - 100));
        }
    }
    b.push_str("\n<details><summary>Tool calls</summary>\n\n");
    for c in outcome.tool_calls.iter().take(200) {
        b.push_str(&format!(
            "- `{}` {}{}\n",
            c.name,
            no_mentions(&c.detail.replace('`', "'")),
            if c.ok { "" } else { " (failed)" }
        ));
    }
    b.push_str(&format!(
        "\n</details>\n\n---\nJob `{job_id}` · {turns} model calls · {tokens} tokens · chain head at commit `sha256:{digest}` \
         · policy `{policy_hash}`\n",
        turns = outcome.turns,
        tokens = outcome.tokens,
    ));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(desc: &str, labels: &[&str]) -> Ticket {
        Ticket {
            key: "DEMO-1".into(),
            project: "DEMO".into(),
            summary: "s".into(),
            description: desc.into(),
            reporter: None,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            issue_type: None,
            url: "u".into(),
            ..Ticket::default()
        }
    }

    #[test]
    fn pr_body_links_the_ticket_and_pings_nobody() {
        let mut t = ticket("", &[]);
        t.reporter = Some("Ada @admins".into());
        let outcome = AgentOutcome {
            summary: "Fixed it. cc @org/everyone".into(),
            turns: 3,
            tool_calls: vec![ToolCallRecord {
                name: "run".into(),
                detail: "echo `@x`".into(),
                ok: false,
            }],
            tokens: 120,
            written: BTreeSet::new(),
            finish_refusals: 0,
        };
        let body = pr_body(
            &t,
            "j1",
            &outcome,
            &["a.py".into()],
            &[],
            "ab12",
            "sha256:p0",
        );
        assert!(!body.contains("Left out"), "{body}");
        let mut leave = LeaveOut::new(&write::WriteRules::default(), &BTreeSet::new()).unwrap();
        leave.listed.insert("__pycache__/".into(), 2);
        leave.listed.insert("@team`x`.pyc".into(), 1);
        let left = leave.lines();
        assert_eq!(left, ["`@team?x?.pyc`", "`__pycache__/` (2 files)"]);
        let body = pr_body(
            &t,
            "j1",
            &outcome,
            &["a.py".into()],
            &left,
            "ab12",
            "sha256:p0",
        );
        assert!(body.contains("### Left out"), "{body}");
        assert!(body.contains("- `__pycache__/` (2 files)\n"), "{body}");
        assert!(body.contains("[DEMO-1](u)"), "{body}");
        assert!(!body.contains('@'), "{body}");
        assert!(body.contains("- `a.py`"));
        assert!(body.contains("(failed)"));
        assert!(body.contains("sha256:ab12"));
        assert!(body.contains("3 model calls"));
        assert!(body.contains("policy `sha256:p0`"));
    }

    fn config() -> Config {
        let text = r#"
[jira]
base_url = "https://j.example"
bot_account_id = "bot"
token_env = "T"
[github]
token_env = "G"
[model]
provider = "openai"
base_url = "http://m.example"
model = "m"
[projects.DEMO]
repos = [{ name = "acme/web" }, { name = "acme/api", base = "develop" }]
"#;
        let env = |n: &str| match n {
            "T" => Some("jira-secret-123".to_string()),
            "G" => Some("ghp_secret_456".to_string()),
            _ => None,
        };
        Config::from_toml(text, Path::new("t.toml"), &env).unwrap()
    }

    #[tokio::test]
    async fn repository_slots_hold_the_cap_and_free_on_drop() {
        let slots = Arc::new(RepoSlots::default());
        let a = slots.acquire("acme/web", 1).await;
        assert_eq!(slots.busy("acme/web"), 1);
        // Another repository is not held up.
        let other = slots.acquire("acme/api", 1).await;
        // A second job on the same repository waits until the first slot is dropped.
        let s2 = slots.clone();
        let waiter = tokio::spawn(async move { s2.acquire("acme/web", 1).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the cap of 1 was exceeded");
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("freed slot is taken")
            .expect("task");
        assert_eq!(slots.busy("acme/web"), 1);
        drop((b, other));
        assert_eq!((slots.busy("acme/web"), slots.busy("acme/api")), (0, 0));
    }

    #[tokio::test]
    async fn later_requests_are_capped_in_number_and_bytes() {
        let c = config();
        let mut spec = JobSpec::new("DEMO-1", Arc::new(Policy::derived(&c)), "ops");
        let ask = |i: usize, text: String| Ask {
            by: Some(format!("dev{i}")),
            operator: false,
            first: i == 0,
            text,
        };
        spec.requests = (0..MAX_REQUESTS + 5)
            .map(|i| ask(i, format!("request {i}")))
            .collect();
        let mut progress = Progress::default();
        let t = ticket("", &[]);
        let admitted = admit_requests(&spec, &t, &policy::NoGroups, &mut progress).await;
        assert_eq!(admitted.len(), MAX_REQUESTS);
        assert_eq!(admitted[0], "dev0: request 0");
        let dropped = progress.decisions.iter().filter(|d| !d.allowed).count();
        assert_eq!(dropped, 5);

        spec.requests = vec![
            ask(0, "x".repeat(MAX_REQUEST_BYTES - 100)),
            ask(1, "y".repeat(200)),
            ask(2, "short".into()),
        ];
        let mut progress = Progress::default();
        let admitted = admit_requests(&spec, &t, &policy::NoGroups, &mut progress).await;
        assert_eq!(
            admitted.len(),
            2,
            "the oversized one is dropped, later small ones fit"
        );
        assert!(admitted.iter().map(String::len).sum::<usize>() <= MAX_REQUEST_BYTES);
        assert_eq!(admitted[1], "dev2: short");
    }

    #[tokio::test]
    async fn without_a_policy_file_the_allowlist_is_the_policy() {
        let c = config();
        let p = Policy::derived(&c);
        assert!(p.hash.starts_with("sha256:"), "{}", p.hash);
        let decide = |t: Ticket| {
            let p = p.clone();
            async move {
                let req = Request {
                    ticket: &t,
                    who: Who::Jira(Some("anyone-at-all")),
                    approved_by: None,
                };
                p.decide(&req, &policy::NoGroups).await
            }
        };
        assert_eq!(decide(ticket("", &[])).await.unwrap().repo.name, "acme/web");
        let api = decide(ticket("", &["repo:ACME/api"])).await.unwrap().repo;
        assert_eq!(
            (api.name.as_str(), api.base.as_str()),
            ("acme/api", "develop")
        );
        let refused = decide(ticket("repo: evil/repo", &[])).await.unwrap_err();
        assert_eq!(refused.rule, "repo");
        assert!(
            refused.reason.contains("acme/web, acme/api"),
            "{}",
            refused.reason
        );
        let mut other = ticket("", &[]);
        other.project = "OPS".into();
        assert_eq!(decide(other).await.unwrap_err().rule, "project");
        // The derived policy still keeps CI definitions out of reach.
        let g = decide(ticket("", &[])).await.unwrap();
        assert!(write::check_path(&g.rules.write, ".github/workflows/ci.yml").is_err());
    }

    #[test]
    fn scrub_removes_every_configured_secret() {
        let c = config();
        let s = scrub(&c, "auth failed for ghp_secret_456 and jira-secret-123");
        assert_eq!(s, "auth failed for [redacted] and [redacted]");
    }

    #[test]
    fn scrub_removes_a_data_center_password() {
        let text = r#"
[jira]
base_url = "https://jira.example.com"
flavor = "datacenter"
bot_username = "drafter-bot"
username = "drafter-bot"
password_env = "P"
[github]
token_env = "G"
[model]
provider = "openai"
base_url = "http://m.example"
model = "m"
[projects.DEMO]
repos = [{ name = "acme/web" }]
"#;
        let env = |n: &str| match n {
            "P" => Some("hunter2-password".to_string()),
            "G" => Some("ghp_secret_456".to_string()),
            _ => None,
        };
        let run = crate::config::Purpose::Run;
        let c = Config::from_toml_for(text, Path::new("t.toml"), &env, run).unwrap();
        let s = scrub(&c, "401 for drafter-bot:hunter2-password");
        assert_eq!(s, "401 for drafter-bot:[redacted]");
    }

    #[test]
    fn job_ids_are_unique_and_safe() {
        let a = crate::queue::new_job_id();
        let b = crate::queue::new_job_id();
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
