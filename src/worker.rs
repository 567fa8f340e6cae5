//! One job's lifecycle: ticket in, draft pull request (or a clear refusal) out.
//!
//! The pipeline is a straight line of stages: fetch the ticket, resolve the repository against the allowlist, prove
//! the service account cannot merge, clone, start the sandbox, run the agent, bring the workspace back, commit,
//! push, open the draft PR, report on the ticket. It emits typed [`Event`]s; the CLI's progress output is a
//! listener, not code in here. Every stage that can fail ends in a [`JobError`] that says whether trying again
//! could help, and every failure is reported on the ticket with a reason that has been scrubbed of secrets.
//!
//! The job directory (`<data_dir>/jobs/<job_id>/`) holds `receipts.jsonl` (the signed model-call chain) and
//! `job.json` (what happened), which together are the run's proof record.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::agent::{self, AgentError, AgentEvent, AgentOutcome, Task, ToolCallRecord};
use crate::config::{Config, JiraAuth, RepoConfig};
use crate::forge::{ForgeError, GitHub, PullRequest};
use crate::jira::{self, JiraClient, JiraError, Notice, Ticket};
use crate::model::{ModelClient, ModelError};
use crate::proof::{self, ProofError, ReceiptLog, RunnerKey};
use crate::repo::{self, RepoError};
use crate::sandbox::{Sandbox, SandboxError};

pub mod pool;

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
        /// Where the receipts are.
        receipts: PathBuf,
        /// SHA-256 of the last receipt line (commits to the whole chain).
        receipts_digest: String,
    },
    /// The model changed nothing, so no pull request was opened.
    NoChanges {
        /// The model's summary.
        summary: String,
        /// Where the receipts are.
        receipts: PathBuf,
    },
}

/// Why a job failed. `Refused` means the runner would not do it (policy); the others are faults.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The ticket asked for something the configuration does not allow. Not retryable.
    #[error("refused: {0}")]
    Refused(String),
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
            JobError::Refused(_) | JobError::Proof(_) | JobError::Io { .. } => false,
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

/// Which allowlisted repository a ticket names: a label `repo:owner/name`, or a line `repo: owner/name` in the
/// description. `Ok(None)` when it names none (the project's first repository is used).
pub fn named_repo(ticket: &Ticket) -> Option<String> {
    for label in &ticket.labels {
        if let Some(r) = label.strip_prefix("repo:") {
            return Some(r.trim().to_string());
        }
    }
    for line in ticket.description.lines() {
        let l = line
            .trim()
            .trim_start_matches(['*', '_', '`', '>', '-', ' ']);
        let lower = l.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("repo:") {
            let start = l.len() - rest.len();
            let name = l[start..].trim().trim_matches(['`', '*', '_', ' ']);
            if !name.is_empty() {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// Picks the repository for a ticket from the allowlist, or explains the refusal.
pub fn resolve_repo(config: &Config, ticket: &Ticket) -> Result<RepoConfig, String> {
    let project = config.project(&ticket.project).ok_or_else(|| {
        format!(
            "project {} is not in drafter's allowlist; an admin must add it to the runner configuration",
            ticket.project
        )
    })?;
    match named_repo(ticket) {
        None => project
            .repos
            .first()
            .cloned()
            .ok_or_else(|| format!("project {} lists no repository", ticket.project)),
        Some(name) => project
            .repos
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(&name))
            .cloned()
            .ok_or_else(|| {
                let allowed: Vec<&str> = project.repos.iter().map(|r| r.name.as_str()).collect();
                format!(
                    "repository `{}` is not allowlisted for project {} (allowed: {})",
                    cap(&name, 100),
                    ticket.project,
                    allowed.join(", ")
                )
            }),
    }
}

fn cap(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Replaces every configured secret value in `text` with `[redacted]`. Errors should never carry secrets; this is
/// the second line of defence before anything leaves the process (a ticket comment, a log line, `job.json`).
pub fn scrub(config: &Config, text: &str) -> String {
    let mut secrets: Vec<&str> = vec![config.github.token.expose()];
    match &config.jira.auth {
        JiraAuth::Basic { token, .. } | JiraAuth::Bearer { token } => secrets.push(token.expose()),
    }
    if let Some(k) = &config.model.api_key {
        secrets.push(k.expose());
    }
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
    receipts_digest: Option<&'a str>,
    receipts_signer: Option<String>,
    turns: Option<u32>,
    tokens: Option<u64>,
    tool_calls: Vec<String>,
}

/// Mutable facts the pipeline learns, kept for `job.json` even when a later stage fails.
#[derive(Default)]
struct Progress {
    repo: Option<String>,
    branch: Option<String>,
    digest: Option<String>,
    agent: Option<AgentOutcome>,
    tool_calls: Vec<ToolCallRecord>,
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
        !e.is_retryable() || self.number >= self.max
    }
}

/// What to run: which ticket, as which job and attempt, with what people asked for.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The Jira issue key.
    pub ticket: String,
    /// The job id (job directory, container label, commit trailer).
    pub job_id: String,
    /// Which attempt this is.
    pub attempt: Attempt,
    /// What people asked of the bot on the ticket (the triggering comments), as `who: text`; given to the model
    /// as untrusted data alongside the ticket.
    pub requests: Vec<String>,
}

impl JobSpec {
    /// A fresh single-attempt job for a ticket (`drafter run`).
    pub fn new(ticket: &str) -> JobSpec {
        JobSpec {
            ticket: ticket.to_string(),
            job_id: crate::queue::new_job_id(),
            attempt: Attempt::ONLY,
            requests: Vec::new(),
        }
    }
}

/// Runs one job to the end. Events go to `events` (if the receiver is gone they are dropped). Final failures are
/// commented on the ticket before this returns.
pub async fn run_job(
    config: Arc<Config>,
    spec: &JobSpec,
    events: UnboundedSender<Event>,
) -> Result<JobOutcome, JobError> {
    let (ticket_key, job_id, attempt) = (spec.ticket.as_str(), spec.job_id.as_str(), spec.attempt);
    let span = tracing::info_span!("job", job_id = %job_id, ticket = %ticket_key);
    async move {
        let started_at = chrono::Utc::now().to_rfc3339();
        let dir = job_dir(&config.data_dir, job_id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let jira = JiraClient::new(&config.jira)?;
        let mut progress = Progress::default();
        let result = pipeline(&config, &jira, spec, &dir, &events, &mut progress).await;

        // Report final failures on the ticket; a retry is coming for the others.
        if let Err(e) = &result {
            let reason = scrub(&config, &e.to_string());
            if !attempt.is_final_for(e) {
                tracing::warn!(error = %reason, attempt = attempt.number, max = attempt.max,
                    "attempt failed; it will be retried");
            } else {
                tracing::error!(error = %reason, retryable = e.is_retryable(), "job failed");
                let notice = match e {
                    JobError::Refused(r) => Notice::Refused { reason: scrub(&config, r) },
                    _ => Notice::Failed { job_id: job_id.to_string(), reason },
                };
                if let Err(ce) = jira.comment(ticket_key, notice.to_adf()).await {
                    tracing::warn!(error = %scrub(&config, &ce.to_string()), "could not report the failure on the ticket");
                }
            }
        }

        let record = JobRecord {
            job_id,
            attempt: attempt.number,
            ticket: ticket_key,
            repo: progress.repo.as_deref(),
            branch: progress.branch.as_deref(),
            started_at,
            finished_at: chrono::Utc::now().to_rfc3339(),
            outcome: result.as_ref().ok(),
            error: result.as_ref().err().map(|e| scrub(&config, &e.to_string())),
            retryable: result.as_ref().err().map(JobError::is_retryable).unwrap_or(false),
            receipts_digest: progress.digest.as_deref(),
            receipts_signer: std::fs::read_to_string(config.data_dir.join(proof::PUB_FILE))
                .ok()
                .map(|k| k.trim().to_string()),
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
        return Err(JobError::Refused(format!(
            "`{}` is not a Jira issue key (expected e.g. PROJ-123)",
            cap(ticket_key, 40)
        )));
    }
    let ticket = jira.issue(ticket_key).await?;

    // Check: allowlist first (nothing is cloned for a refused repository), then the forge's merge rules.
    let repo_cfg = resolve_repo(config, &ticket).map_err(JobError::Refused)?;
    progress.repo = Some(repo_cfg.name.clone());
    stage(events, Stage::Check, repo_cfg.name.as_str());
    let github = GitHub::new(&config.github)?;
    github
        .check_cannot_merge(&repo_cfg.name, &repo_cfg.base)
        .await
        .map_err(|e| match e {
            ForgeError::CanMerge { .. } => JobError::Refused(e.to_string()),
            other => JobError::Forge(other),
        })?;

    let sandbox = Sandbox::connect(&config.sandbox).await?;
    sandbox.ensure_image().await?;
    // One "started" comment per job, not per attempt: a retried job finds its own id already on the ticket.
    if !ticket_mentions(jira, ticket_key, job_id).await? {
        jira.comment(
            ticket_key,
            Notice::Started {
                job_id: job_id.to_string(),
                repo: repo_cfg.name.clone(),
            }
            .to_adf(),
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
    let (git_repo, branch, reused) = {
        let (url, ws, base, token, job) = (
            url.clone(),
            ws.clone(),
            repo_cfg.base.clone(),
            config.github.token.clone(),
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
        .await?
    };
    progress.branch = Some(branch.clone());

    let (outcome, digest, changed) = if reused {
        // An earlier attempt of this job already pushed its work: deliver that instead of running the model again.
        stage(
            events,
            Stage::Push,
            format!("{branch} (already pushed by an earlier attempt)"),
        );
        let (branch2, base2) = (branch.clone(), repo_cfg.base.clone());
        let (message, changed) = blocking(move || {
            let remote = repo::remote_branch(&git_repo, &branch2)?;
            let changed = repo::changed_files(&git_repo, &base2)?;
            Ok((remote.map(|b| b.message).unwrap_or_default(), changed))
        })
        .await?;
        let (summary, digest) = summary_and_digest(&message);
        let outcome = AgentOutcome {
            summary,
            turns: 0,
            tool_calls: Vec::new(),
            tokens: 0,
        };
        (outcome, digest, changed)
    } else {
        let (outcome, digest) = run_agent(
            config, spec, &ticket, &repo_cfg, dir, &sandbox, &ws, events, progress,
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
            ],
        );
        let (identity, token) = (config.commit.clone(), config.github.token.clone());
        let (url2, branch2, base2) = (url.clone(), branch.clone(), repo_cfg.base.clone());
        let committed = blocking(move || {
            let r = git_repo;
            let oid = repo::commit_all(&r, &identity, &message)?;
            if oid.is_none() {
                return Ok(None);
            }
            let changed = repo::changed_files(&r, &base2)?;
            repo::push(&r, &url2, &branch2, &token)?;
            Ok(Some(changed))
        })
        .await?;
        let Some(changed) = committed else {
            stage(events, Stage::Report, "no changes");
            let receipts = dir.join(proof::RECEIPTS_FILE);
            jira.comment(
                ticket_key,
                Notice::NoChanges {
                    summary: outcome.summary.clone(),
                }
                .to_adf(),
            )
            .await?;
            return Ok(JobOutcome::NoChanges {
                summary: outcome.summary,
                receipts,
            });
        };
        (outcome, digest, changed)
    };

    // Draft pull request: one per branch. A retried job finds the one it opened and refreshes it.
    stage(
        events,
        Stage::PullRequest,
        format!("{} <- {}", repo_cfg.base, branch),
    );
    let title = format!("[{}] {}", ticket.key, cap(ticket.summary.trim(), 200));
    let pr: PullRequest = match github.find_open_pr(&repo_cfg.name, &branch).await? {
        Some(existing) => {
            if !reused {
                let body = pr_body(&ticket, job_id, &outcome, &changed, &digest);
                github
                    .update_pr(
                        &repo_cfg.name,
                        existing.number,
                        &title,
                        &scrub(config, &body),
                    )
                    .await?;
            }
            existing
        }
        None => {
            let body = pr_body(&ticket, job_id, &outcome, &changed, &digest);
            github
                .open_draft_pr(
                    &repo_cfg.name,
                    &branch,
                    &repo_cfg.base,
                    &title,
                    &scrub(config, &body),
                )
                .await?
        }
    };

    // One "PR opened" comment per PR, however many attempts it took.
    stage(events, Stage::Report, ticket_key);
    if !ticket_mentions(jira, ticket_key, &pr.html_url).await? {
        jira.comment(
            ticket_key,
            Notice::PrOpened {
                url: pr.html_url.clone(),
                repo: repo_cfg.name.clone(),
                number: pr.number,
                branch: branch.clone(),
            }
            .to_adf(),
        )
        .await?;
    }
    Ok(JobOutcome::PullRequest {
        url: pr.html_url,
        number: pr.number,
        branch,
        repo: repo_cfg.name,
        receipts: dir.join(proof::RECEIPTS_FILE),
        receipts_digest: digest,
    })
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

/// Whether any comment on the ticket already contains `needle` (a job id, a PR URL).
async fn ticket_mentions(jira: &JiraClient, key: &str, needle: &str) -> Result<bool, JobError> {
    let comments = jira.comments(key).await?;
    Ok(comments.iter().any(|c| {
        let body = &c["body"];
        let text = match body {
            serde_json::Value::String(s) => s.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        text.contains(needle)
    }))
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
    sandbox: &Sandbox,
    ws: &Path,
    events: &UnboundedSender<Event>,
    progress: &mut Progress,
) -> Result<(AgentOutcome, String), JobError> {
    let job_id = spec.job_id.as_str();
    stage(events, Stage::Sandbox, config.sandbox.image.as_str());
    let container = sandbox.start(job_id, &ticket.key).await?;
    let agent_result = async {
        container.upload_dir(ws).await?;
        stage(
            events,
            Stage::Agent,
            format!("{} {}", config.model.provider.as_str(), config.model.model),
        );
        let key = Arc::new(RunnerKey::load_or_create(&config.data_dir)?);
        let path = dir.join(proof::RECEIPTS_FILE);
        // A retried job on the same host continues its chain; elsewhere it starts one in its own job directory.
        let receipts = if path.exists() {
            ReceiptLog::resume(&path, key, job_id, &ticket.key)?
        } else {
            ReceiptLog::create(&path, key, job_id, &ticket.key)?
        };
        let mut model = ModelClient::new(&config.model, receipts)?;
        let task = Task {
            ticket,
            repo: repo_cfg,
            limits: &config.agent,
            command_timeout: Duration::from_secs(config.sandbox.command_timeout_secs),
            requests: &spec.requests,
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
        let digest = model.receipts().head();
        Ok::<_, JobError>((outcome, digest, calls))
    }
    .await;
    let result = match agent_result {
        Ok((outcome, digest, calls)) => {
            progress.digest = Some(digest.clone());
            progress.tool_calls = calls;
            match outcome {
                // Bring the model's work back before the container goes.
                Ok(o) => container
                    .download_workspace(ws)
                    .await
                    .map(|_| (o, digest))
                    .map_err(JobError::from),
                Err(e) => Err(JobError::from(e)),
            }
        }
        Err(e) => Err(e),
    };
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
    digest: &str,
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
        "\n</details>\n\n---\nJob `{job_id}` · {turns} model calls · {tokens} tokens · receipts digest `sha256:{digest}` \
         (check with `drafter verify`)\n",
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
        }
    }

    #[test]
    fn repo_named_by_label_or_line() {
        assert_eq!(
            named_repo(&ticket("", &["repo:acme/api"])).as_deref(),
            Some("acme/api")
        );
        assert_eq!(
            named_repo(&ticket("Fix it.\n\nRepo: `acme/web`\n", &[])).as_deref(),
            Some("acme/web")
        );
        assert_eq!(named_repo(&ticket("no repo here", &["bug"])), None);
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
        };
        let body = pr_body(&t, "j1", &outcome, &["a.py".into()], "ab12");
        assert!(body.contains("[DEMO-1](u)"), "{body}");
        assert!(!body.contains('@'), "{body}");
        assert!(body.contains("- `a.py`"));
        assert!(body.contains("(failed)"));
        assert!(body.contains("sha256:ab12"));
        assert!(body.contains("3 model calls"));
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

    #[test]
    fn allowlist_decides_the_repository() {
        let c = config();
        assert_eq!(resolve_repo(&c, &ticket("", &[])).unwrap().name, "acme/web");
        let api = resolve_repo(&c, &ticket("", &["repo:ACME/api"])).unwrap();
        assert_eq!(
            (api.name.as_str(), api.base.as_str()),
            ("acme/api", "develop")
        );
        let refused = resolve_repo(&c, &ticket("repo: evil/repo", &[])).unwrap_err();
        assert!(
            refused.contains("`evil/repo` is not allowlisted"),
            "{refused}"
        );
        assert!(refused.contains("acme/web, acme/api"), "{refused}");
        let mut other = ticket("", &[]);
        other.project = "OPS".into();
        assert!(resolve_repo(&c, &other)
            .unwrap_err()
            .contains("OPS is not in drafter's allowlist"));
    }

    #[test]
    fn scrub_removes_every_configured_secret() {
        let c = config();
        let s = scrub(&c, "auth failed for ghp_secret_456 and jira-secret-123");
        assert_eq!(s, "auth failed for [redacted] and [redacted]");
    }

    #[test]
    fn job_ids_are_unique_and_safe() {
        let a = crate::queue::new_job_id();
        let b = crate::queue::new_job_id();
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
