//! The queue's vocabulary: jobs, their states, triggers, approvals, usage, and the errors, shared by both backends
//! and by every caller.

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
    /// A review comment on the job's pull request (a follow-up iteration's trigger), when it is one. Absent on
    /// Jira triggers, and on triggers stored before reviews existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Box<ReviewRef>>,
}

/// Where a review trigger's comment sits on the forge, so the iteration can answer it in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRef {
    /// The iteration this comment is for (1 is the first follow-up after the job's first PR).
    pub iteration: u32,
    /// `owner/name` of the pull request's repository.
    pub repo: String,
    /// The pull request's number.
    pub pr: u64,
    /// `line` (a review comment on a line of the diff), `review` (a review's body) or `conversation` (a comment
    /// on the PR's conversation).
    pub kind: String,
    /// The comment's (or review's) id on the forge: a line comment's thread is answered by replying to it.
    pub comment_id: u64,
    /// The forge login of its author.
    pub author: String,
    /// The file a line comment is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The line a line comment is on (in the file as the PR's head has it), when the forge says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
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

/// What [`Intake::enqueue`] did.
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

/// A review comment for a finished job's pull request ([`Intake::reopen_for_review`](super::Intake::reopen_for_review)).
#[derive(Debug, Clone)]
pub struct ReviewTrigger {
    /// The job that opened the pull request.
    pub job_id: String,
    /// The comment, as a trigger (its `review` set; its `delivery` the forge's delivery or comment key).
    pub trigger: Trigger,
    /// Iterations allowed per pull request (the policy's cap).
    pub max_iterations: u32,
    /// Attempts the iteration gets for retryable failures.
    pub max_attempts: u32,
}

/// What [`Intake::reopen_for_review`](super::Intake::reopen_for_review) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopened {
    /// The finished job is queued again for iteration `n`, with the comment as its trigger.
    Iteration(u32),
    /// The job is already queued for an iteration: the comment joins it.
    Joined(u32),
    /// The job is running an iteration: the comment waits for the next one, which
    /// [`Intake::reopen_pending`](super::Intake::reopen_pending) starts once this one has finished.
    Pending(u32),
    /// This delivery was seen before: nothing changed.
    Duplicate,
    /// The job already ran its `max_iterations`: the delivery is recorded, nothing is queued.
    CapReached(u32),
    /// The job is running its first run, waiting for approval, cancelled, or its ticket has another open job: nothing
    /// changed.
    Busy(JobState),
    /// The job keeps [`MAX_REVIEW_TRIGGERS`](super::MAX_REVIEW_TRIGGERS) triggers already: recorded, not kept.
    Overflow,
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
    /// Follow-up iterations on review comments started so far (0: only the first run).
    pub iterations: u32,
    /// Every trigger, the first one first.
    pub triggers: Vec<Trigger>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The outcome recorded by [`Leases::complete`].
    pub outcome: Option<Value>,
    /// Delivery step markers (see [`Leases::set_progress`]); a JSON object.
    pub progress: Value,
    /// The hash of the policy the job runs under (see [`Leases::set_policy_hash`]).
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
    /// [`Intake::approve`], not by the queue.
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

/// What [`Intake::approve`] did.
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

/// One model call's usage, for budgets: a row of the usage ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
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

/// Usage summed over calls ([`LedgerEntry`]s).
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

/// Filter for [`Admin::list`].
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

/// Where a job's pull request stands, as its remote link on the ticket shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Open (or reopened).
    Open,
    /// Merged: final, nothing changes it back.
    Merged,
    /// Closed without merging (it may be reopened).
    Closed,
}

impl LinkState {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Open => "open",
            LinkState::Merged => "merged",
            LinkState::Closed => "closed",
        }
    }

    /// From [`LinkState::as_str`].
    pub fn parse(s: &str) -> Option<LinkState> {
        match s {
            "open" => Some(LinkState::Open),
            "merged" => Some(LinkState::Merged),
            "closed" => Some(LinkState::Closed),
            _ => None,
        }
    }
}

/// A pull request's new state, for [`LinkUpdates::record_link`](super::LinkUpdates::record_link).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkUpdate {
    /// The job that opened the pull request (one pull request per job).
    pub job_id: String,
    /// Its ticket.
    pub ticket: String,
    /// The new state.
    pub state: LinkState,
    /// What the link shows besides the state (repository, number, URL, title), as the caller reads it back.
    pub link: Value,
    /// Record only if another state is recorded already: an open pull request the poll sees is news only after it
    /// was recorded closed; the link was posted open when the pull request was opened.
    pub only_if_changed: bool,
}

/// What [`LinkUpdates::record_link`](super::LinkUpdates::record_link) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRecorded {
    /// Recorded as generation `n`, pending, held by the caller for its own first try (until the `hold` passed).
    New(i64),
    /// That state is recorded already (told to Jira or pending): nothing changed.
    Duplicate,
    /// The pull request is recorded merged, which nothing undoes: nothing changed.
    Final,
    /// `only_if_changed`, and nothing is recorded for the job: nothing changed.
    Unrecorded,
}

/// A recorded state not yet told to Jira.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingLink {
    /// The job.
    pub job_id: String,
    /// Its ticket.
    pub ticket: String,
    /// The state to show.
    pub state: LinkState,
    /// As recorded ([`LinkUpdate::link`]).
    pub link: Value,
    /// Which recording this is: telling Jira counts only for the generation told.
    pub generation: i64,
    /// Failed tries so far.
    pub attempts: u32,
}
