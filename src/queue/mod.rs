//! The durable job queue: what turns "a ticket was assigned" into "exactly one job ran", across crashes and hosts.
//!
//! Two real backends: SQLite (the embedded default, one file in the data directory, WAL mode) and PostgreSQL
//! (selected by a `postgres://` URL, for many workers on many hosts; claims use `FOR UPDATE SKIP LOCKED`). What they
//! share is written once: the interface, four traits by who calls them ([`Intake`], [`Leases`], [`Admin`],
//! [`UsageLedger`]; [`Queue`] is all four); the state machine's decisions, as pure functions (`state.rs`); the job row
//! (`row.rs`); the schema driver (`schema.rs`, applying `migrations/<backend>` with `sqlx::migrate!`); and the
//! statements and the steps around them (`intake.rs`, `leases.rs`, `admin.rs`, expanded for each backend). Each
//! backend keeps only its connection and the SQL that differs (`dialect.rs`: the clock, locks, JSON, time spans).
//!
//! # The model
//! - **Enqueue** is idempotent twice over: a trigger carries a delivery key (the webhook delivery id, a changelog or
//!   comment id, a poll key), and a key seen before never makes a second job ([`Enqueued::Duplicate`]); and a ticket
//!   that already has an open job (queued or running) gets the trigger recorded on that job instead of a parallel
//!   one ([`Enqueued::Absorbed`]). The enqueue is committed before it returns, so a webhook is answered 2xx only
//!   once the job is durable.
//! - **Claim** hands a queued job whose `not_before` has passed to one worker, with a lease. The worker renews the
//!   lease by [`Leases::heartbeat`]; a lease that expires (the worker died) makes the job claimable again.
//! - **Finish**: [`Leases::complete`], or [`Leases::fail`] with a [`Failure`] that is either retryable (the job goes
//!   back to `queued` with exponential backoff, or the `Retry-After` the fault named, until `max_attempts`) or
//!   permanent (straight to `failed`, with the reason). [`Leases::release`] hands a job back without counting an
//!   attempt (graceful shutdown). Only the current lease holder may do any of these.
//! - **Approval**: the lease holder may park a running job in `awaiting_approval` ([`Leases::await_approval`], no
//!   attempt counted, lease cleared) with an [`ApprovalRequest`] that names what is to be approved (the ticket
//!   content's SHA-256, the repository and the base: an [`ApprovalSubject`]). [`Intake::approve`] queues it again
//!   (claimable at once) and records who approved; that record stays on the job through later claims, so the worker
//!   can see that approval was given, and for what. An approval by comment counts only if the comment was created
//!   after the request, and each comment id approves at most one job, ever ([`Approved`]). A request whose `expires_at` passes unapproved fails the job ("approval expired: ...");
//!   every claim sweeps for those, so no extra daemon is needed, and [`Admin::expire_approvals`] sweeps too and
//!   hands out (once, to one caller) the ids of jobs failed that way, for a ticket comment.
//! - **Review iterations**: [`Intake::reopen_for_review`] queues a finished (succeeded or failed) job again for its
//!   next follow-up iteration on a reviewer's comment, with its attempts reset and the comment as a trigger tagged
//!   with the iteration; the delivery key dedups as for enqueues, and the policy's cap is checked in the same
//!   transaction ([`Reopened`]).
//! - **Operators** [`Admin::cancel`] (a running job's next heartbeat reports the lease lost, and its worker stops)
//!   and [`Admin::retry`] (a failed or cancelled job is queued again).
//! - **Kill switch**: [`Admin::set_paused`] stores a [`Pause`] in the database, and while it is there every claim, by
//!   every worker of the queue, finds nothing (checked inside the claim's transaction). [`Admin::cancel_running`]
//!   cancels every running job at once.
//! - **Progress** markers ([`Leases::set_progress`]) record delivery steps (branch pushed, PR opened, ticket told) so
//!   that a retried job resumes instead of doing them twice. The job also records the hash of the policy it runs
//!   under ([`Leases::set_policy_hash`]).
//! - **Usage ledger**: model usage per call ([`UsageLedger::record_usage`]), summed per team since an instant
//!   ([`UsageLedger::usage_since`]) or per job ([`UsageLedger::job_usage`]), shared by all workers, for budgets.
//! - **Retention**: delivery keys of finished jobs are forgotten after a while ([`Admin::prune_deliveries`],
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
//!   succeeded|failed --reopen_for_review (below the cap)--> queued (next iteration)
//! ```
//! A job is *open* (it absorbs new triggers for its ticket, and there is at most one per ticket) while queued,
//! running or awaiting approval.

#[macro_use]
mod row;
#[macro_use]
mod state;
#[macro_use]
mod intake;
#[macro_use]
mod leases;
#[macro_use]
mod admin;
#[macro_use]
mod links;
mod dialect;
pub mod postgres;
mod schema;
pub mod sqlite;
mod types;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use crate::ids::{new_job_id, valid_job_id, JobId};
pub use state::{backoff, MAX_REVIEW_TRIGGERS, MAX_TRIGGERS};
pub use types::{
    Approval, ApprovalRequest, ApprovalSubject, Approved, ApprovingComment, Claim, Enqueued,
    Failure, Job, JobFilter, JobState, LedgerEntry, LinkRecorded, LinkState, LinkUpdate, NewJob,
    Pause, PendingLink, QueueError, Reopened, ReviewRef, ReviewTrigger, Trigger, UsageTotal,
};

/// Where work comes in: webhooks, the poll, the CLI and approval comments.
#[async_trait::async_trait]
pub trait Intake: Send + Sync {
    /// Adds a job, or records the trigger on an existing one (see [`Enqueued`]). Durable when it returns.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError>;
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
    /// A review comment on the pull request a job opened: a finished job (succeeded or failed) is queued again for
    /// its next iteration, with its attempts reset and the comment as a trigger tagged with that iteration; a job
    /// already queued for an iteration takes the comment into it. A delivery key seen before changes nothing; past
    /// `max_iterations` the delivery is recorded and nothing is queued. Durable when it returns.
    async fn reopen_for_review(&self, review: ReviewTrigger) -> Result<Reopened, QueueError>;
    /// After an iteration finished: if review comments came in while it ran ([`Reopened::Pending`]), the job is
    /// queued again for the next iteration (unless `max_iterations` were run, or its ticket has another open job).
    /// The iteration queued, if any.
    async fn reopen_pending(
        &self,
        job_id: &str,
        max_iterations: u32,
    ) -> Result<Option<u32>, QueueError>;
}

/// The worker's side: claiming a job and everything only its lease holder may do. `worker` is a lease token (see
/// [`Job::lease_token`]) or a bare worker id.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Claims the oldest claimable job (queued with `not_before` passed, or running with an expired lease), sets
    /// it running under `claim.worker` with a fresh lease and counts an attempt. `None` when there is none, or
    /// while the queue is paused. Sweeps first: jobs whose worker died on their last attempt, and jobs whose
    /// approval request expired, are failed.
    async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError>;
    /// Waits up to `idle` for claimable work: returns early when this process enqueued or approved a job since the
    /// last wait (other processes' jobs are found at the next claim after `idle`).
    async fn wait_for_work(&self, idle: std::time::Duration) {
        tokio::time::sleep(idle).await
    }
    /// Whether `worker` holds the job's lease right now: running, its claim, and not expired. Asked immediately
    /// before every side effect outside the queue (a push, a pull request, a ticket comment), so a worker that
    /// stalled past its lease does not deliver twice.
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
    /// [`Leases::release`]), `request` stored and any earlier approval cleared.
    async fn await_approval(
        &self,
        job_id: &str,
        worker: &str,
        request: ApprovalRequest,
    ) -> Result<(), QueueError>;
    /// Records the hash of the policy the job runs under.
    async fn set_policy_hash(
        &self,
        job_id: &str,
        worker: &str,
        hash: &str,
    ) -> Result<(), QueueError>;
    /// Sets `progress[key] = value` on the running job.
    async fn set_progress(
        &self,
        job_id: &str,
        worker: &str,
        key: &str,
        value: Value,
    ) -> Result<(), QueueError>;
}

/// Operators and housekeeping: reading jobs, cancelling, retrying, the kill switch, sweeps.
#[async_trait::async_trait]
pub trait Admin: Send + Sync {
    /// Which backend, for logs (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;
    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), QueueError>;
    /// One job.
    async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError>;
    /// Jobs, newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError>;
    /// Cancels a queued, running or awaiting job. `Ok(false)` if it was already finished.
    async fn cancel(&self, job_id: &str) -> Result<bool, QueueError>;
    /// Cancels every running job (their workers stop them at their next heartbeat); returns their ids.
    async fn cancel_running(&self) -> Result<Vec<String>, QueueError>;
    /// Queues a failed or cancelled job again with its attempts reset. `Ok(false)` if it is not in such a state, or
    /// its ticket has another open job. An approval given earlier is kept.
    async fn retry(&self, job_id: &str) -> Result<bool, QueueError>;
    /// Sets (`Some`) or lifts (`None`) the kill switch. While set, [`Leases::claim`] finds nothing, for every
    /// worker.
    async fn set_paused(&self, pause: Option<Pause>) -> Result<(), QueueError>;
    /// The kill switch's state.
    async fn paused(&self) -> Result<Option<Pause>, QueueError>;
    /// Fails every job whose approval request has expired, then returns the ids of all jobs failed that way that
    /// no earlier call returned (including those a claim's sweep failed): each id is handed out once, to one caller.
    async fn expire_approvals(&self) -> Result<Vec<String>, QueueError>;
    /// Forgets delivery keys (the dedup record of triggers) older than `older_than` whose job is finished and has
    /// not changed for `older_than` either; returns how many. Keys of open jobs are never pruned. Deletes in small
    /// batches, so claims and enqueues are not held up by a large first prune.
    async fn prune_deliveries(&self, older_than: Duration) -> Result<u64, QueueError>;
}

/// The usage ledger: model usage per call, shared by all workers, for budgets.
#[async_trait::async_trait]
pub trait UsageLedger: Send + Sync {
    /// Appends one model call to the usage ledger.
    async fn record_usage(&self, usage: &LedgerEntry) -> Result<(), QueueError>;
    /// A team's usage at or after `since`.
    async fn usage_since(&self, team: &str, since: DateTime<Utc>)
        -> Result<UsageTotal, QueueError>;
    /// One job's usage.
    async fn job_usage(&self, job_id: &str) -> Result<UsageTotal, QueueError>;
}

/// Pull request states for their remote links on the tickets, kept until Jira has been told: the webhook that says a
/// pull request was merged is not delivered again when Jira was down at the time, so the state is recorded first and
/// told with retries ([`LinkUpdates::claim_links`], [`LinkUpdates::link_told`], [`LinkUpdates::link_failed`]).
#[async_trait::async_trait]
pub trait LinkUpdates: Send + Sync {
    /// Records the job's pull request's new state as pending, its not-before `hold` from now (the caller's own first
    /// try). The same state again, anything after `merged`, or (with `only_if_changed`) a first record changes
    /// nothing ([`LinkRecorded`]). Durable when it returns.
    async fn record_link(
        &self,
        update: &LinkUpdate,
        hold: Duration,
    ) -> Result<LinkRecorded, QueueError>;
    /// Takes up to `limit` pending states whose not-before has passed, oldest first, and holds them for `hold` (so
    /// another caller, in this process or another, does not try the same at once).
    async fn claim_links(&self, limit: u32, hold: Duration)
        -> Result<Vec<PendingLink>, QueueError>;
    /// Jira shows `generation`'s state now. If a newer state was recorded meanwhile, that one is (again) pending, now:
    /// this write may have landed after it.
    async fn link_told(&self, job_id: &str, generation: i64) -> Result<(), QueueError>;
    /// Telling Jira `generation`'s state failed with `error` (scrubbed by the caller): another try after `retry_in`.
    async fn link_failed(
        &self,
        job_id: &str,
        generation: i64,
        error: &str,
        retry_in: Duration,
    ) -> Result<(), QueueError>;
}

/// The whole queue, what [`open`] returns. Every method is one transaction; see the module docs for the semantics
/// both backends share. Code that needs only one part takes that part (`&dyn Leases`, `Arc<dyn UsageLedger>`, ...).
pub trait Queue: Intake + Leases + Admin + UsageLedger + LinkUpdates {}

impl<T: Intake + Leases + Admin + UsageLedger + LinkUpdates + ?Sized> Queue for T {}

/// How often an enqueue that lost a race (a concurrent insert of the same delivery key or of an open job for the same
/// ticket, a serialization failure or a deadlock) is retried before giving up with [`QueueError::Database`]. Each
/// retry sees the winner's committed row, so one or two are enough in practice.
pub const ENQUEUE_RETRIES: u32 = 10;

/// A `u64` counter for a signed 64-bit column.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, QueueError> {
    i64::try_from(v).map_err(|_| QueueError::Database(format!("{what} {v} is out of range")))
}

/// A summed or counted column back to `u64` (sums of non-negative values are never negative).
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, QueueError> {
    u64::try_from(v).map_err(|_| QueueError::Database(format!("stored {what} {v} is out of range")))
}

/// Rows [`Admin::prune_deliveries`] deletes per transaction.
pub(crate) const PRUNE_BATCH: i64 = 1000;

/// A century, the most a stored time span needs to say (a longer retention keeps everything just the same).
pub(crate) const CENTURY: Duration = Duration::from_secs(100 * 366 * 86_400);

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

/// An enqueue attempt that did not finish: it lost a race to a concurrent enqueue (worth another try, which sees the
/// winner's committed row), or it failed.
pub(crate) enum EnqueueError {
    /// Why it lost (a unique or serialization conflict, an `ON CONFLICT DO NOTHING` that did nothing).
    Race(String),
    Queue(QueueError),
}

/// Runs an enqueue `attempt` until it finishes or has lost [`ENQUEUE_RETRIES`] races. `location` prefixes the error
/// then (`postgres at ...: `, or empty).
pub(crate) async fn retry_races<T, F, Fut>(location: &str, mut attempt: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EnqueueError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let why = match attempt().await {
            Ok(done) => return Ok(done),
            Err(EnqueueError::Queue(e)) => return Err(e),
            Err(EnqueueError::Race(why)) => why,
        };
        if tries >= ENQUEUE_RETRIES {
            return Err(QueueError::Database(format!(
                "{location}enqueue kept conflicting after {tries} tries: {why}"
            )));
        }
        tracing::debug!(%why, attempt = tries, "enqueue lost a race; retrying");
        // A short pause only after repeated losses (deadlock victims), so the winners can finish.
        if tries > 2 {
            tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
        }
    }
}

/// A team's or a job's usage sums (`tokens`, `cost`, `calls`) as the ledger queries return them.
pub(crate) fn usage_total(row: (i64, i64, i64)) -> Result<UsageTotal, QueueError> {
    Ok(UsageTotal {
        tokens: to_u64(row.0, "token sum")?,
        cost_micros: to_u64(row.1, "cost sum")?,
        calls: to_u64(row.2, "call count")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lost_races_are_tried_again_and_then_reported() {
        let mut tries = 0;
        let done = retry_races("", || {
            tries += 1;
            let outcome = if tries < 3 {
                Err(EnqueueError::Race("duplicate key".into()))
            } else {
                Ok(Enqueued::Duplicate("j1".into()))
            };
            async move { outcome }
        })
        .await;
        assert_eq!(done.unwrap(), Enqueued::Duplicate("j1".into()));
        assert_eq!(tries, 3);

        let mut tries = 0;
        let err = retry_races("postgres at u@h:5432/d: ", || {
            tries += 1;
            async { Err::<Enqueued, _>(EnqueueError::Race("deadlock detected".into())) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(tries, ENQUEUE_RETRIES);
        assert_eq!(
            err,
            "queue database: postgres at u@h:5432/d: enqueue kept conflicting after 10 tries: deadlock detected"
        );

        // A real error is not a race: reported at once.
        let mut tries = 0;
        let err = retry_races("", || {
            tries += 1;
            async {
                Err::<Enqueued, _>(EnqueueError::Queue(QueueError::Database(
                    "disk full".into(),
                )))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(
            (tries, err.to_string()),
            (1, "queue database: disk full".to_string())
        );
    }
}
