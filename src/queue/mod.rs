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
//! - **Operators** [`Queue::cancel`] (a running job's next heartbeat reports the lease lost, and its worker stops)
//!   and [`Queue::retry`] (a failed or cancelled job is queued again).
//! - **Progress** markers ([`Queue::set_progress`]) record delivery steps (branch pushed, PR opened, ticket told) so
//!   that a retried job resumes instead of doing them twice.
//!
//! States and transitions (also in ARCHITECTURE.md):
//! ```text
//!   enqueue -> queued --claim--> running --complete--> succeeded
//!                ^                 |  |--fail(permanent or attempts exhausted)--> failed --retry--> queued
//!                |--fail(retryable, backoff) / release / lease expired--|
//!   queued|running --cancel--> cancelled --retry--> queued
//! ```

pub mod postgres;
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
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether a job in this state is still open (absorbs new triggers for its ticket).
    pub fn is_open(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
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
}

impl Enqueued {
    /// The job id in every case.
    pub fn job_id(&self) -> &str {
        match self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) | Enqueued::Absorbed(id) => id,
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
    /// Every trigger, the first one first.
    pub triggers: Vec<Trigger>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The outcome recorded by [`Queue::complete`].
    pub outcome: Option<Value>,
    /// Delivery step markers (see [`Queue::set_progress`]); a JSON object.
    pub progress: Value,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the job last changed.
    pub updated_at: DateTime<Utc>,
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
    /// A queue URL or path that names no backend.
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

/// The queue. Every method is one transaction; see the module docs for the semantics both backends share.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Which backend, for logs (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;
    /// Adds a job, or records the trigger on an existing one (see [`Enqueued`]). Durable when it returns.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError>;
    /// Claims the oldest claimable job (queued with `not_before` passed, or running with an expired lease), sets
    /// it running under `claim.worker` with a fresh lease and counts an attempt. `None` when there is none.
    async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError>;
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
    /// Cancels a queued or running job. `Ok(false)` if it was already finished.
    async fn cancel(&self, job_id: &str) -> Result<bool, QueueError>;
    /// Queues a failed or cancelled job again with its attempts reset. `Ok(false)` if it is not in such a state.
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
}

/// Opens the queue at `location`: a `postgres://` (or `postgresql://`) URL, or a SQLite file path (created if
/// missing). Creates or migrates the schema.
pub async fn open(location: &str) -> Result<Arc<dyn Queue>, QueueError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgQueue::connect(location).await?))
    } else if location.is_empty() || location.contains("://") {
        Err(QueueError::BadLocation(location.to_string()))
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
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }
}
