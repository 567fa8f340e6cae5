//! A job: what to run ([`JobSpec`]) and what one attempt carries through its phases ([`Job`]): the spec, the job
//! directory, the worker's id, what it has learnt so far ([`Progress`]) and the listeners its events go to.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::agent::{AgentOutcome, ToolCallRecord};
use crate::policy::{self, write, Decision, Policy, Who};
use crate::proof::bundle::{Change, CredentialRecord, NetworkRecord};
use crate::proof::{BundleWriter, Retention, RunnerKey};
use crate::queue::ApprovalSubject;

use super::error::{refused, JobError};
use super::events::{Event, Listener, Stage};
use super::fence::Fence;

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

    pub(crate) fn is_final_for(&self, e: &JobError) -> bool {
        // A lost lease is not this job's end: whoever holds it now reports the outcome.
        !matches!(e, JobError::LeaseLost { .. }) && (!e.is_retryable() || self.number >= self.max)
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
    pub origin: Who,
    /// The triggering event: its source and delivery id (`webhook:jira:issue_updated changelog:10401`, `cli`).
    pub event: String,
    /// Who approved it, when the policy asked for approval and someone gave it.
    pub approved_by: Option<String>,
    /// What that approval was given for (`drafter serve`; `None` for an operator's `drafter run --approved-by`). The
    /// job runs only while the ticket content, repository and base are still these; otherwise it asks again.
    pub approved: Option<ApprovalSubject>,
    /// The policy the job runs under (fixed for the job: a reload applies to new jobs only).
    pub policy: Arc<Policy>,
    /// The lease check asked immediately before each side effect outside the runner (push, pull request, ticket
    /// comment), when the job came from a shared queue.
    pub fence: Option<Arc<dyn Fence>>,
    /// A follow-up iteration on review comments of the pull request the job opened (`drafter serve`), else `None`.
    pub review: Option<ReviewIteration>,
}

/// A follow-up iteration: the review comments it answers (their authors passed the policy's `reviewers` rule when
/// they came in).
#[derive(Debug, Clone)]
pub struct ReviewIteration {
    /// Which follow-up (1 for the first).
    pub iteration: u32,
    /// The comments, in the order they came.
    pub comments: Vec<ReviewAsk>,
}

/// One review comment of an iteration.
#[derive(Debug, Clone)]
pub struct ReviewAsk {
    /// Where it sits on the forge (repository, pull request, thread, file and line) and who wrote it.
    pub at: crate::queue::ReviewRef,
    /// What it says (capped when it came in).
    pub text: String,
}

impl JobSpec {
    /// A fresh single-attempt job for a ticket, started by an operator (`drafter run`).
    pub fn new(ticket: &str, policy: Arc<Policy>, operator: &str) -> JobSpec {
        JobSpec {
            ticket: ticket.to_string(),
            job_id: crate::queue::new_job_id(),
            attempt: Attempt::ONLY,
            requests: Vec::new(),
            origin: Who::Operator(operator.to_string()),
            event: "cli".into(),
            approved_by: None,
            approved: None,
            policy,
            fence: None,
            review: None,
        }
    }
}

/// Mutable facts the phases learn, kept for the run statement and `job.json` even when a later phase fails.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) team: Option<String>,
    pub(crate) decisions: Vec<Decision>,
    pub(crate) retention: Retention,
    pub(crate) ticket_sha256: Option<String>,
    pub(crate) repo: Option<String>,
    pub(crate) base: Option<String>,
    pub(crate) branch: Option<String>,
    pub(crate) change: Option<Change>,
    /// The sandbox image's name and content digest.
    pub(crate) image: Option<(String, String)>,
    pub(crate) agent: Option<AgentOutcome>,
    pub(crate) tool_calls: Vec<ToolCallRecord>,
    /// The pull request's title and body without the proof footer, to be completed once the bundle is sealed.
    pub(crate) pr_text: Option<(String, String)>,
    /// The bundle writer the model client used, when the agent ran.
    pub(crate) bundle: Option<BundleWriter>,
    /// The sandbox's network and what the egress proxy recorded (`allowlist:` jobs).
    pub(crate) network: Option<NetworkRecord>,
    /// The forge credential, once the job has one (kind, scope, expiry; never the token).
    pub(crate) credential: Option<CredentialRecord>,
    /// Fork mode: the fork the branch goes to.
    pub(crate) fork: Option<String>,
}

/// One attempt of a job as its phases see it.
pub(crate) struct Job<'a> {
    pub(crate) spec: &'a JobSpec,
    /// `<data_dir>/jobs/<job_id>/`.
    pub(crate) dir: PathBuf,
    /// The worker running it: the queue's lease owner under `drafter serve`, the process's own id for `drafter run`.
    pub(crate) worker_id: &'a str,
    /// The runner key this attempt signs with, read from disk when it started.
    pub(crate) key: Arc<RunnerKey>,
    pub(crate) started: chrono::DateTime<chrono::Utc>,
    pub(crate) progress: Progress,
    /// What went wrong on the side without failing the job (a ticket link Jira refused), for `job.json`.
    pub(crate) notes: std::sync::Mutex<Vec<String>>,
    /// In-process listeners, called in order and awaited: each has finished before the job goes on.
    listeners: Vec<Box<dyn Listener + 'a>>,
    /// Everyone else (the CLI's progress lines): told after the listeners.
    events: UnboundedSender<Event>,
    /// Container removals under way beside delivery: awaited before the attempt reports its end, so a finished job
    /// has no container left (and a slot is not given back while its container still exists).
    removals: Vec<tokio::task::JoinHandle<()>>,
}

impl<'a> Job<'a> {
    pub(crate) fn new(
        spec: &'a JobSpec,
        dir: PathBuf,
        worker_id: &'a str,
        key: Arc<RunnerKey>,
        listeners: Vec<Box<dyn Listener + 'a>>,
        events: UnboundedSender<Event>,
    ) -> Job<'a> {
        Job {
            spec,
            dir,
            worker_id,
            key,
            started: chrono::Utc::now(),
            progress: Progress::default(),
            notes: std::sync::Mutex::default(),
            listeners,
            events,
            removals: Vec::new(),
        }
    }

    /// Removes `container` in the background, so that the push and the PR need not wait for Docker (a removal
    /// takes hundreds of milliseconds); [`Job::removed`] waits for it. A task dropped mid-way still finishes it.
    pub(crate) fn remove_later(&mut self, container: crate::sandbox::Container) {
        self.removals.push(tokio::spawn(
            async move {
                if let Err(e) = container.remove().await {
                    tracing::warn!(error = %e, "could not remove the sandbox container");
                }
            }
            .in_current_span(),
        ));
    }

    /// Waits for every removal [`Job::remove_later`] started.
    pub(crate) async fn removed(&mut self) {
        for removal in std::mem::take(&mut self.removals) {
            if let Err(e) = removal.await {
                tracing::warn!(error = %e, "a container removal task failed");
            }
        }
    }

    pub(crate) fn id(&self) -> &'a str {
        &self.spec.job_id
    }

    pub(crate) fn ticket(&self) -> &'a str {
        &self.spec.ticket
    }

    /// Tells every listener, in order; the first that fails stops the job with its error (a "started" or "PR
    /// opened" comment that could not be posted). Then the channel, whose receivers may be gone.
    pub(crate) async fn emit(&self, event: Event) -> Result<(), JobError> {
        for l in &self.listeners {
            l.on(self, &event).await?;
        }
        let _ = self.events.send(event);
        Ok(())
    }

    /// A stage begins: logged, then told like any event (under `drafter serve` the queue's progress marker is
    /// written before the stage starts).
    pub(crate) async fn stage(
        &self,
        stage: Stage,
        detail: impl Into<String>,
    ) -> Result<(), JobError> {
        let detail = detail.into();
        tracing::info!(stage = stage.as_str(), %detail, "stage");
        self.emit(Event::Stage { stage, detail }).await
    }

    /// Notes a side effect that failed without failing the job (logged by the caller); `job.json` lists them.
    pub(crate) fn note(&self, text: String) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(text);
        }
    }

    /// A copy of the channel, for the agent loop's events.
    pub(crate) fn channel(&self) -> UnboundedSender<Event> {
        self.events.clone()
    }

    /// Asks the job's fence before `what`; [`JobError::LeaseLost`] when the lease is gone. A fence that cannot be
    /// asked (the database is away) also stops the side effect: doing it twice is worse than doing it on a retry.
    pub(crate) async fn fence(&self, what: &str) -> Result<(), JobError> {
        super::fence::check(self.spec.fence.as_deref(), what).await
    }

    /// Records a policy decision on the job.
    pub(crate) fn decision(&mut self, ticket: &str, rule: &str, allowed: bool, detail: String) {
        self.progress.decisions.push(policy::log_decision(
            &self.spec.policy.hash,
            ticket,
            rule,
            allowed,
            detail,
        ));
    }

    /// Records each write-rule violation as a decision and refuses the job with the first. `violations` is not
    /// empty.
    pub(crate) fn refuse_violations(
        &mut self,
        ticket: &str,
        violations: &[write::Violation],
        consequence: &str,
    ) -> JobError {
        for v in violations {
            self.decision(ticket, &v.rule, false, v.detail.clone());
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
}
