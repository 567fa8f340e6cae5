//! The durable job queue: what turns "a ticket was assigned" into "exactly one job ran", across crashes and hosts.
//!
//! One trait, [`Queue`], with two real backends: SQLite (the embedded default, one file in the data directory, WAL
//! mode) and PostgreSQL (selected by a `postgres://` URL, for many workers on many hosts; claims use
//! `FOR UPDATE SKIP LOCKED`). Each backend creates and migrates its own schema.
//!
//! # The model
//! - **Enqueue** is idempotent twice over: a trigger carries a delivery key (the webhook delivery id, a changelog or
//!   comment id, a poll key), and a key seen before never makes a second job ([`Enqueued::Duplicate`]); and a ticket
//!   that already has an open job (queued or running) gets the trigger recorded on that job instead of a parallel
//!   one ([`Enqueued::Absorbed`]). The enqueue is committed before it returns, so a webhook is answered 2xx only
//!   once the job is durable.
//! - **Claim** hands a queued job whose `not_before` has passed to one worker, with a lease. The worker renews the
//!   lease by [`Queue::heartbeat`]; a lease that expires (the worker died) makes the job claimable again.
//! - **Finish**: [`Queue::complete`], or [`Queue::fail`] with a [`Failure`] that is either retryable (the job goes
//!   back to `queued` with exponential backoff, or the `Retry-After` the fault named, until `max_attempts`) or
//!   permanent (straight to `failed`, with the reason). [`Queue::release`] hands a job back without counting an
//!   attempt (graceful shutdown). Only the current lease holder may do any of these.
//! - **Approval**: the lease holder may park a running job in `awaiting_approval` ([`Queue::await_approval`], no
//!   attempt counted, lease cleared) with an [`ApprovalRequest`] that names what is to be approved (the ticket
//!   content's SHA-256, the repository and the base: an [`ApprovalSubject`]). [`Queue::approve`] queues it again
//!   (claimable at once) and records who approved; that record stays on the job through later claims, so the worker
//!   can see that approval was given, and for what. An approval by comment counts only if the comment was created
//!   after the request, and each comment id approves at most one job, ever ([`Approved`]). A request whose `expires_at` passes unapproved fails the job ("approval expired: ...");
//!   every claim sweeps for those, so no extra daemon is needed, and [`Queue::expire_approvals`] sweeps too and
//!   hands out (once, to one caller) the ids of jobs failed that way, for a ticket comment.
//! - **Operators** [`Queue::cancel`] (a running job's next heartbeat reports the lease lost, and its worker stops)
//!   and [`Queue::retry`] (a failed or cancelled job is queued again).
//! - **Kill switch**: [`Queue::set_paused`] stores a [`Pause`] in the database, and while it is there every claim, by
//!   every worker of the queue, finds nothing (checked inside the claim's transaction). [`Queue::cancel_running`]
//!   cancels every running job at once.
//! - **Progress** markers ([`Queue::set_progress`]) record delivery steps (branch pushed, PR opened, ticket told) so
//!   that a retried job resumes instead of doing them twice. The job also records the hash of the policy it runs
//!   under ([`Queue::set_policy_hash`]).
//! - **Usage ledger**: model usage per call ([`Queue::record_usage`]), summed per team since an instant
//!   ([`Queue::usage_since`]) or per job ([`Queue::job_usage`]), shared by all workers, for budgets.
//! - **Retention**: delivery keys of finished jobs are forgotten after a while ([`Queue::prune_deliveries`],
//!   `serve.delivery_retention_days`); those of open jobs never are.
//!
//! States and transitions (also in ARCHITECTURE.md):
//! ```text
//!   enqueue -> queued --claim--> running --complete--> succeeded
//!                ^                 |  |--fail(permanent or attempts exhausted)--> failed --retry--> queued
//!                |--fail(retryable, backoff) / release / lease expired--|
//!                |                 '--await_approval--> awaiting_approval --expired--> failed
//!                '--approve------------------------------------'
//!   queued|running|awaiting_approval --cancel--> cancelled --retry--> queued
//! ```
//! A job is *open* (it absorbs new triggers for its ticket, and there is at most one per ticket) while queued,
//! running or awaiting approval.

#[macro_use]
mod row;
pub mod postgres;
mod schema;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be claimed (possibly not before `not_before`, after a retryable failure).
    Queued,
    /// Claimed by a worker that holds a lease.
    Running,
    /// Parked until an approver approves it (then queued) or its request expires (then failed).
    AwaitingApproval,
    /// Finished: a draft PR was opened, or nothing needed changing.
    Succeeded,
    /// Finished with a permanent failure, or out of attempts.
    Failed,
    /// Stopped by an operator.
    Cancelled,
}

impl JobState {
    /// The lower-case name stored in the database and shown by `drafter jobs`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::AwaitingApproval => "awaiting_approval",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "awaiting_approval" => JobState::AwaitingApproval,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether a job in this state is still open (absorbs new triggers for its ticket).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::AwaitingApproval
        )
    }

    /// Every state, in lifecycle order (for help texts and tests).
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::AwaitingApproval,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];
}

/// Why a job exists: one webhook delivery, one poll hit, one CLI request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The dedup key: the event's own id where it has one (`changelog:<id>`, `created:<issue id>`,
    /// `comment:<id>`: the same whether the event arrives by webhook, by a Jira retry, or by the poll), else
    /// `delivery:<X-Atlassian-Webhook-Identifier>`, else a hash of the body. See [`crate::intake`].
    pub delivery: String,
    /// Where it came from, e.g. `webhook:jira:issue_updated`, `webhook:comment_created`, `poll`, `cli`.
    pub source: String,
    /// Who triggered it (the changelog's `user` or the comment's author: account id or name), when known.
    pub triggered_by: Option<String>,
    /// What they said (the comment text), when there was anything.
    pub text: Option<String>,
    /// When the trigger was received.
    pub at: DateTime<Utc>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The Jira issue key.
    pub ticket: String,
    /// Its project key (for per-project caps).
    pub project: String,
    /// What caused it.
    pub trigger: Trigger,
    /// Attempts allowed for retryable failures.
    pub max_attempts: u32,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job was created.
    Created(String),
    /// This delivery was seen before; nothing changed. Carries the job it made (or was absorbed into).
    Duplicate(String),
    /// An open job for the same ticket took the trigger.
    Absorbed(String),
    /// An open job for the same ticket already keeps [`MAX_TRIGGERS`] triggers: the delivery is recorded (so it is
    /// not redelivered into a new job) but the trigger is not kept.
    Overflow(String),
}

impl Enqueued {
    /// The job id in every case.
    pub fn job_id(&self) -> &str {
        match self {
            Enqueued::Created(id)
            | Enqueued::Duplicate(id)
            | Enqueued::Absorbed(id)
            | Enqueued::Overflow(id) => id,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Unique id (also the job directory's name and the sandbox container's label).
    pub id: String,
    /// The Jira issue key.
    pub ticket: String,
    /// The Jira project key.
    pub project: String,
    /// Current state.
    pub state: JobState,
    /// Attempts started so far (claims that were not released).
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Not claimable before this instant (backoff).
    pub not_before: DateTime<Utc>,
    /// The worker holding the lease, while running.
    pub lease_owner: Option<String>,
    /// When the lease runs out, while running.
    pub lease_expires: Option<DateTime<Utc>>,
    /// The fencing token: how many times the job has been claimed. Each claim gets the next number, so a worker
    /// that stalled past its lease holds an older one than whoever took the job over, even in the same process.
    pub lease_gen: u64,
    /// Every trigger, the first one first.
    pub triggers: Vec<Trigger>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The outcome recorded by [`Queue::complete`].
    pub outcome: Option<Value>,
    /// Delivery step markers (see [`Queue::set_progress`]); a JSON object.
    pub progress: Value,
    /// The hash of the policy the job runs under (see [`Queue::set_policy_hash`]).
    pub policy_hash: Option<String>,
    /// The last approval requested for the job, and whether (and by whom) it was given.
    pub approval: Option<Approval>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the job last changed.
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// The lease holder's token for the lease-holder methods (`worker#generation`), while the job is running.
    pub fn lease_token(&self) -> Option<String> {
        self.lease_owner
            .as_ref()
            .map(|owner| format!("{owner}#{}", self.lease_gen))
    }
}

/// Who calls a lease-holder method: `worker#generation` (a claim's [`Job::lease_token`], which only that claim
/// matches), or a bare worker id (matches whatever claim that worker holds; for tools and tests that act as the
/// owner). Worker ids contain no `#`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub owner: &'a str,
    pub gen: Option<i64>,
}

pub(crate) fn holder(token: &str) -> Holder<'_> {
    match token.rsplit_once('#') {
        Some((owner, gen)) => match gen.parse::<i64>() {
            Ok(gen) => Holder {
                owner,
                gen: Some(gen),
            },
            // Not a generation: the whole token is the id, which then matches nothing a claim wrote.
            Err(_) => Holder {
                owner: token,
                gen: None,
            },
        },
        None => Holder {
            owner: token,
            gen: None,
        },
    }
}

/// What an approval is for: the job as it would run. An approval holds only while all three stay the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSubject {
    /// SHA-256 (hex) of the ticket's canonical JSON, as the run statement records it.
    pub ticket_sha256: String,
    /// `owner/name` of the repository the policy chose.
    pub repo: String,
    /// The base branch the policy chose.
    pub base: String,
}

impl ApprovalSubject {
    /// What differs in `now` from this (approved) subject, in words for a ticket comment; empty when nothing does.
    pub fn changes(&self, now: &ApprovalSubject) -> Vec<String> {
        let mut changed = Vec::new();
        if self.ticket_sha256 != now.ticket_sha256 {
            changed.push(
                "the ticket's content (summary, description, labels, comments, acceptance criteria, links \
                 or attachments)"
                    .to_string(),
            );
        }
        if self.repo != now.repo {
            changed.push(format!("the repository ({} -> {})", self.repo, now.repo));
        }
        if self.base != now.base {
            changed.push(format!("the base branch ({} -> {})", self.base, now.base));
        }
        changed
    }
}

/// What a worker asks for when a job needs a human's approval before it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Why approval is needed (e.g. the policy rule), shown to approvers and in the expiry reason.
    pub reason: String,
    /// Who may approve (as the policy names them); recorded for display, checked by the caller of
    /// [`Queue::approve`], not by the queue.
    pub approvers: Vec<String>,
    /// When approval was requested (before the ticket is asked): only comments created after it can approve.
    pub requested_at: DateTime<Utc>,
    /// When the request lapses: an unapproved job is failed after this instant.
    pub expires_at: DateTime<Utc>,
    /// What is to be approved.
    pub subject: ApprovalSubject,
}

/// The Jira comment an approval came in (`drafter approve`). CLI approvals have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovingComment {
    /// The comment's id: it approves at most one job.
    pub id: String,
    /// When Jira says it was created: it must be after the request.
    pub created: DateTime<Utc>,
}

/// What [`Queue::approve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approved {
    /// The job is queued again, approved.
    Yes,
    /// The job is not awaiting approval (or its request expired): nothing changed.
    NotAwaiting,
    /// The comment was created before the request (an approval of something earlier): nothing changed.
    CommentBeforeRequest,
    /// The comment already approved a job: nothing changed.
    CommentAlreadyUsed,
}

impl Approved {
    /// Why nothing changed, for logs and webhook replies (`None` for [`Approved::Yes`]).
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Approved::Yes => None,
            Approved::NotAwaiting => Some("the job is no longer waiting for approval"),
            Approved::CommentBeforeRequest => {
                Some("the comment was written before drafter asked for this approval")
            }
            Approved::CommentAlreadyUsed => Some("this comment has already approved a job"),
        }
    }
}

/// A job's approval record: the request, and the approval if one was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Why approval is needed.
    pub reason: String,
    /// Who may approve.
    pub approvers: Vec<String>,
    /// When approval was requested.
    pub requested_at: DateTime<Utc>,
    /// When the request lapses.
    pub expires_at: DateTime<Utc>,
    /// Who approved, once someone has.
    pub approved_by: Option<String>,
    /// When they approved.
    pub approved_at: Option<DateTime<Utc>>,
    /// What was (or is to be) approved; `None` on requests stored before approvals were bound to it.
    pub subject: Option<ApprovalSubject>,
    /// The comment that approved it, when an approval came by comment.
    pub comment_id: Option<String>,
}

impl Approval {
    /// Whether the job was approved (and has not asked again since).
    pub fn is_approved(&self) -> bool {
        self.approved_by.is_some()
    }
}

/// The kill switch's state: who paused the queue, why and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused it (`cli:<user>`, or an approver's name).
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One model call's usage, for budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The job that made the call.
    pub job_id: String,
    /// The team (policy) the job is charged to.
    pub team: String,
    /// The model called.
    pub model: String,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Cost in millionths of a US dollar.
    pub cost_micros: u64,
    /// When the call was made.
    pub at: DateTime<Utc>,
}

/// Usage summed over calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotal {
    /// Input plus output tokens.
    pub tokens: u64,
    /// Cost in millionths of a US dollar.
    pub cost_micros: u64,
    /// How many calls.
    pub calls: u64,
}

/// A worker's request for work.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The worker's id (host, pid and a random part).
    pub worker: String,
    /// How long the lease lasts without a heartbeat.
    pub lease: Duration,
    /// Projects the worker is at its per-project cap for: skip their jobs.
    pub exclude_projects: Vec<String>,
}

/// How a job attempt failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Could succeed later (network, 5xx, 429): back to `queued` with backoff, unless attempts are exhausted.
    Retryable {
        /// The reason (already scrubbed of secrets).
        error: String,
        /// Wait at least this long (a `Retry-After`), instead of the computed backoff if longer.
        retry_after: Option<Duration>,
    },
    /// Will not succeed by trying again (a refusal, a model that never finished): straight to `failed`.
    Permanent {
        /// The reason (already scrubbed of secrets).
        error: String,
    },
}

/// Filter for [`Queue::list`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs for this ticket.
    pub ticket: Option<String>,
    /// At most this many, newest first (0 means 100).
    pub limit: u32,
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database could not be opened, reached or migrated.
    #[error("queue database: {0}")]
    Database(String),
    /// The caller no longer holds the job's lease (it expired and was reclaimed, or the job was cancelled).
    #[error("job {0}: this worker no longer holds its lease")]
    LeaseLost(String),
    /// No such job.
    #[error("no job {0}")]
    NotFound(String),
    /// A queue URL or path that names no backend. Holds the location as shown: credentials redacted.
    #[error("queue location `{0}`: expected a path (SQLite) or a postgres:// URL")]
    BadLocation(String),
}

/// Backoff after the `attempt`-th failed attempt (1-based): 30 s, 60 s, 120 s, ... capped at 30 minutes. A
/// `Retry-After` longer than that wins.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = Duration::from_secs(30u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)))
        .min(Duration::from_secs(30 * 60));
    match retry_after {
        Some(r) if r > exp => r.min(Duration::from_secs(6 * 3600)),
        _ => exp,
    }
}

/// The most triggers one job keeps (its first plus later ones absorbed while it is open). Anyone who can comment
/// on a ticket can add one, so an open job must not grow without bound.
pub const MAX_TRIGGERS: usize = 20;

/// How often an enqueue that lost a race (a concurrent insert of the same delivery key or of an open job for the same
/// ticket, a serialization failure or a deadlock) is retried before giving up with [`QueueError::Database`]. Each
/// retry sees the winner's committed row, so one or two are enough in practice.
pub const ENQUEUE_RETRIES: u32 = 10;

/// `last_error` of a job that failed for good: the attempt's reason and how many attempts were made. Shared so both
/// backends word it identically.
pub(crate) fn gave_up(error: &str, attempts: u32) -> String {
    format!("{error} (gave up after {attempts} attempts)")
}

/// `last_error` of a job whose lease expired (its worker died) on its last allowed attempt: it is failed instead of
/// run again, because a job that keeps killing its worker should not take the next one down too.
pub(crate) fn worker_lost(attempts: u32, max_attempts: u32) -> String {
    gave_up(
        &format!("worker lost: the lease expired during attempt {attempts} of {max_attempts}"),
        attempts,
    )
}

/// `last_error` of a job whose approval request lapsed. Shared so both backends word it identically.
pub(crate) fn approval_expired(reason: &str, expires_at: DateTime<Utc>) -> String {
    format!(
        "approval expired: nobody approved by {} ({reason})",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// A `u64` counter for a signed 64-bit column.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, QueueError> {
    i64::try_from(v).map_err(|_| QueueError::Database(format!("{what} {v} is out of range")))
}

/// A summed or counted column back to `u64` (sums of non-negative values are never negative).
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, QueueError> {
    u64::try_from(v).map_err(|_| QueueError::Database(format!("stored {what} {v} is out of range")))
}

/// A new job id: time-ordered and unique (`j20261123T101500-1a2b3c4d`).
pub fn new_job_id() -> String {
    let mut rnd = [0u8; 4];
    // A failed random read only makes ids less unique; the timestamp still orders them.
    let _ = getrandom::fill(&mut rnd);
    format!(
        "j{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S"),
        hex::encode(rnd)
    )
}

/// Whether `id` looks like a job id (letters, digits, `-`; so it is safe as a directory name).
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The queue. Every method is one transaction; see the module docs for the semantics both backends share.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Which backend, for logs (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;
    /// Adds a job, or records the trigger on an existing one (see [`Enqueued`]). Durable when it returns.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError>;
    /// Claims the oldest claimable job (queued with `not_before` passed, or running with an expired lease), sets
    /// it running under `claim.worker` with a fresh lease and counts an attempt. `None` when there is none, or
    /// while the queue is paused. Sweeps first: jobs whose worker died on their last attempt, and jobs whose
    /// approval request expired, are failed.
    async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError>;
    /// Whether `worker` (a lease token, see [`Job::lease_token`]) holds the job's lease right now: running, its
    /// claim, and not expired. Asked immediately before every side effect outside the queue (a push, a pull
    /// request, a ticket comment), so a worker that stalled past its lease does not deliver twice.
    async fn holds(&self, job_id: &str, worker: &str) -> Result<bool, QueueError>;
    /// Renews the lease. `Ok(false)` when the worker no longer holds it (expired and reclaimed, or cancelled).
    async fn heartbeat(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError>;
    /// Marks the job succeeded with its outcome.
    async fn complete(&self, job_id: &str, worker: &str, outcome: Value) -> Result<(), QueueError>;
    /// Records a failed attempt; returns the new state (`queued` for a scheduled retry, or `failed`).
    async fn fail(
        &self,
        job_id: &str,
        worker: &str,
        failure: Failure,
    ) -> Result<JobState, QueueError>;
    /// Hands the job back (queued, claimable now) without counting the attempt: graceful shutdown.
    async fn release(&self, job_id: &str, worker: &str) -> Result<(), QueueError>;
    /// Parks a running job until it is approved: `awaiting_approval`, lease cleared, the attempt not counted (like
    /// [`Queue::release`]), `request` stored and any earlier approval cleared. Only for the lease holder.
    async fn await_approval(
        &self,
        job_id: &str,
        worker: &str,
        request: ApprovalRequest,
    ) -> Result<(), QueueError>;
    /// Approves a job awaiting approval: queued (claimable now), with `by`, the time and the comment recorded on its
    /// [`Approval`]. Nothing changes ([`Approved`] says why) if it is not awaiting approval (or its request has
    /// expired), if `comment` was created before the request, or if `comment`'s id already approved a job. Whether
    /// `by` may approve is the caller's decision.
    async fn approve(
        &self,
        job_id: &str,
        by: &str,
        comment: Option<&ApprovingComment>,
    ) -> Result<Approved, QueueError>;
    /// Fails every job whose approval request has expired, then returns the ids of all jobs failed that way that
    /// no earlier call returned (including those a claim's sweep failed): each id is handed out once, to one caller.
    async fn expire_approvals(&self) -> Result<Vec<String>, QueueError>;
    /// Records the hash of the policy the job runs under. Only for the lease holder of a running job.
    async fn set_policy_hash(
        &self,
        job_id: &str,
        worker: &str,
        hash: &str,
    ) -> Result<(), QueueError>;
    /// Cancels a queued, running or awaiting job. `Ok(false)` if it was already finished.
    async fn cancel(&self, job_id: &str) -> Result<bool, QueueError>;
    /// Cancels every running job (their workers stop them at their next heartbeat); returns their ids.
    async fn cancel_running(&self) -> Result<Vec<String>, QueueError>;
    /// Sets (`Some`) or lifts (`None`) the kill switch. While set, [`Queue::claim`] finds nothing, for every worker.
    async fn set_paused(&self, pause: Option<Pause>) -> Result<(), QueueError>;
    /// The kill switch's state.
    async fn paused(&self) -> Result<Option<Pause>, QueueError>;
    /// Appends one model call to the usage ledger.
    async fn record_usage(&self, usage: &Usage) -> Result<(), QueueError>;
    /// A team's usage at or after `since`.
    async fn usage_since(&self, team: &str, since: DateTime<Utc>)
        -> Result<UsageTotal, QueueError>;
    /// One job's usage.
    async fn job_usage(&self, job_id: &str) -> Result<UsageTotal, QueueError>;
    /// Queues a failed or cancelled job again with its attempts reset. `Ok(false)` if it is not in such a state, or
    /// its ticket has another open job. An approval given earlier is kept.
    async fn retry(&self, job_id: &str) -> Result<bool, QueueError>;
    /// One job.
    async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError>;
    /// Jobs, newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError>;
    /// Sets `progress[key] = value` on a running job, only for the lease holder.
    async fn set_progress(
        &self,
        job_id: &str,
        worker: &str,
        key: &str,
        value: Value,
    ) -> Result<(), QueueError>;
    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), QueueError>;
    /// Forgets delivery keys (the dedup record of triggers) older than `older_than` whose job is finished and has
    /// not changed for `older_than` either; returns how many. Keys of open jobs are never pruned. Deletes in small
    /// batches, so claims and enqueues are not held up by a large first prune.
    async fn prune_deliveries(&self, older_than: Duration) -> Result<u64, QueueError>;
}

/// Rows [`Queue::prune_deliveries`] deletes per transaction.
pub(crate) const PRUNE_BATCH: i64 = 1000;

/// A retention as milliseconds for SQL, capped at a century (a larger one keeps everything just the same).
pub(crate) fn retention_ms(older_than: Duration) -> i64 {
    const CENTURY_MS: u128 = 100 * 366 * 86_400 * 1000;
    i64::try_from(older_than.as_millis().min(CENTURY_MS)).unwrap_or(i64::MAX)
}

/// Opens the queue at `location`: a `postgres://` (or `postgresql://`) URL, or a SQLite file path (created if
/// missing). Creates or migrates the schema.
pub async fn open(location: &str) -> Result<Arc<dyn Queue>, QueueError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgQueue::connect(location).await?))
    } else if location.is_empty() || location.contains("://") {
        // A mistyped URL still carries its password: never echo it.
        Err(QueueError::BadLocation(crate::config::redact_url(location)))
    } else {
        Ok(Arc::new(
            sqlite::SqliteQueue::open(std::path::Path::new(location)).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, None), Duration::from_secs(30));
        assert_eq!(backoff(2, None), Duration::from_secs(60));
        assert_eq!(backoff(3, None), Duration::from_secs(120));
        assert_eq!(backoff(40, None), Duration::from_secs(1800));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        assert_eq!(
            backoff(3, Some(Duration::from_secs(5))),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert!(JobState::AwaitingApproval.is_open());
        assert!(!JobState::Failed.is_open());
    }

    #[test]
    fn expiry_reason_names_the_deadline_and_the_reason() {
        let at = DateTime::from_timestamp(1_767_261_600, 0).unwrap();
        assert_eq!(
            approval_expired("label needs-approval", at),
            "approval expired: nobody approved by 2026-01-01T10:00:00Z (label needs-approval)"
        );
    }
}
