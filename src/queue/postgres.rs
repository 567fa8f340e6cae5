//! The PostgreSQL backend: one database shared by many workers on many hosts.
//!
//! How it stays correct with many writers at once:
//! - **Clock**: every instant (`not_before`, leases, timestamps) comes from the database's `now()`, so workers on
//!   hosts with skewed clocks still agree on whose lease has expired.
//! - **Enqueue** runs in READ COMMITTED and lets unique indexes decide races: the delivery key is the primary key
//!   of `deliveries`, and a partial unique index allows one open job per ticket. Inserts use
//!   `ON CONFLICT DO NOTHING`; when one finds a conflict (a concurrent enqueue committed first), the transaction is
//!   rolled back and tried again, and the retry sees the winner's row (and so answers `Duplicate` or `Absorbed`).
//!   Absorbing locks the open job (`FOR UPDATE`) and appends to its `triggers` in SQL, so concurrent absorbs queue
//!   up instead of overwriting each other. Serialization failures and deadlocks are retried the same way.
//! - **Claim** picks the oldest claimable row with `FOR UPDATE SKIP LOCKED` inside the claiming `UPDATE`, so
//!   concurrent claimers never wait on, nor take, the same job.
//! - **Migrations** run in one transaction under `pg_advisory_xact_lock` (the key every drafter version takes), so
//!   workers starting together against a fresh or an old database take turns instead of racing on `CREATE TABLE`.
//! - **Secrets**: the URL's password never appears in an error; messages name the user, host, port and database.
//!
//! What is not SQL (decisions, the job row, the schema driver) is shared with the SQLite backend; see
//! [`crate::queue`].

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use super::row::{count, JobRow};
use super::state::{self, holder};
use super::{
    to_i64, usage_total, ApprovalRequest, Approved, ApprovingComment, Claim, EnqueueError,
    Enqueued, Failure, Job, JobFilter, JobId, JobState, NewJob, Pause, QueueError, Usage,
    UsageTotal,
};
use crate::config::Secret;

/// Connections per process.
pub const POOL_SIZE: u32 = 8;

/// The advisory lock key migrations hold (arbitrary, fixed: "drafter" in ASCII). Every drafter version takes it.
const MIGRATION_LOCK: i64 = 0x0064_7261_6674_6572;

/// The schema (`migrations/postgres`). Public only so that the upgrade tests can build a database at an older version.
#[doc(hidden)]
pub use super::schema::POSTGRES as MIGRATOR;

/// The PostgreSQL queue. Cheap to share behind an `Arc`.
pub struct PgQueue {
    pool: PgPool,
    /// `user@host:port/database`, for error messages.
    location: String,
    /// The URL's password (raw and percent-decoded), only to scrub it from error messages.
    secrets: Vec<Secret>,
}

impl PgQueue {
    /// Connects to `url` (`postgres://user:password@host:port/database?...`), with a pool of [`POOL_SIZE`], and
    /// creates or migrates the schema. Errors name the host, never the password.
    pub async fn connect(url: &str) -> Result<PgQueue, QueueError> {
        // Parse it ourselves first: url's errors never echo the input, and we learn the password to scrub.
        let parsed = url::Url::parse(url)
            .map_err(|e| QueueError::Database(format!("invalid postgres URL: {e}")))?;
        let mut secrets = Vec::new();
        if let Some(raw) = parsed.password().filter(|p| !p.is_empty()) {
            secrets.push(Secret::new(raw));
            if let Ok(decoded) = percent_decode(raw) {
                if decoded != raw {
                    secrets.push(Secret::new(decoded));
                }
            }
        }
        let scrub = |m: String| scrub_with(&secrets, m);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| QueueError::Database(scrub(format!("invalid postgres URL: {e}"))))?;
        let location = format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let options = options.application_name("drafter");
        // One direct connection first: the pool would retry a refused connection until its timeout and then
        // report only "pool timed out", where the operator needs "connection refused" or "no such database".
        let mut first = PgConnection::connect_with(&options).await.map_err(|e| {
            QueueError::Database(scrub(format!(
                "cannot connect to postgres at {location}: {e}"
            )))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(15))
            .connect_lazy_with(options);
        let queue = PgQueue {
            pool,
            location,
            secrets,
        };
        let migrated = queue.migrate(&mut first).await;
        let _ = first.close().await;
        migrated?;
        tracing::debug!(location = %queue.location, "postgres queue open");
        Ok(queue)
    }

    /// Maps a database error to [`QueueError::Database`] naming the server and what was being done.
    fn db<'a>(&'a self, context: &'a str) -> impl FnOnce(sqlx::Error) -> QueueError + 'a {
        move |e| self.error(format!("{context}: {e}"))
    }

    /// An error naming the server, with the password scrubbed.
    fn error(&self, message: String) -> QueueError {
        QueueError::Database(scrub_with(
            &self.secrets,
            format!("postgres at {}: {message}", self.location),
        ))
    }

    /// Brings the schema up to date on `conn` (a connection of its own: sqlx's migrator also takes a session-level
    /// lock, which closing the connection is sure to release), under the advisory lock that drafter has always
    /// taken for this, so workers starting at once, of this version or an older one, take turns.
    async fn migrate(&self, conn: &mut PgConnection) -> Result<(), QueueError> {
        let mut tx = conn
            .begin()
            .await
            .map_err(self.db("starting a transaction"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(self.db("taking the migration lock"))?;
        super::schema::migrate(&mut *tx, &MIGRATOR)
            .await
            .map_err(|e| self.error(e))?;
        tx.commit()
            .await
            .map_err(self.db("committing the migration"))
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, QueueError> {
        self.pool
            .begin()
            .await
            .map_err(self.db("starting a transaction"))
    }

    async fn exists(&self, job_id: &str) -> Result<bool, QueueError> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db("looking up a job"))?;
        Ok(found.is_some())
    }

    /// `Ok` when the lease holder's update touched its job (`affected` rows), else why not.
    async fn held(&self, affected: u64, job_id: &str) -> Result<(), QueueError> {
        if affected == 1 {
            Ok(())
        } else {
            Err(state::not_held(job_id, self.exists(job_id).await?))
        }
    }

    async fn try_enqueue(
        &self,
        job: &NewJob,
        trigger: &Json<Value>,
    ) -> Result<Enqueued, EnqueueError> {
        let step = |context: &'static str| {
            move |e: sqlx::Error| {
                if is_race(&e) {
                    EnqueueError::Race(scrub_with(&self.secrets, e.to_string()))
                } else {
                    EnqueueError::Queue(self.db(context)(e))
                }
            }
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(step("starting a transaction"))?;
        let seen: Option<String> =
            sqlx::query_scalar("SELECT job_id FROM deliveries WHERE key = $1")
                .bind(&job.trigger.delivery)
                .fetch_optional(&mut *tx)
                .await
                .map_err(step("looking up the delivery"))?;
        if let Some(id) = seen {
            return Ok(Enqueued::Duplicate(id));
        }
        // Lock the open job so concurrent absorbs append one after another, and a concurrent finish either happens
        // before (then the row no longer matches and a new job is made) or after this commits.
        let open: Option<String> = sqlx::query_scalar(concat!(
            "SELECT id FROM jobs WHERE ticket = $1 AND state IN ",
            open_states!(),
            " FOR UPDATE"
        ))
        .bind(&job.ticket)
        .fetch_optional(&mut *tx)
        .await
        .map_err(step("looking up an open job"))?;
        let outcome = match open {
            Some(id) => {
                let kept = sqlx::query(
                    "UPDATE jobs SET triggers = triggers || jsonb_build_array($1::jsonb), updated_at = now() \
                     WHERE id = $2 AND jsonb_array_length(triggers) < $3",
                )
                .bind(trigger)
                .bind(&id)
                .bind(state::MAX_TRIGGERS as i32)
                .execute(&mut *tx)
                .await
                .map_err(step("recording the trigger"))?
                .rows_affected();
                if kept == 1 {
                    Enqueued::Absorbed(id)
                } else {
                    Enqueued::Overflow(id)
                }
            }
            None => {
                let id = String::from(JobId::mint());
                // The conflict target is `jobs_one_open_per_ticket`: its predicate, word for word.
                let inserted: Option<String> = sqlx::query_scalar(concat!(
                    "INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, \
                     progress, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'queued', 0, $4, now(), jsonb_build_array($5::jsonb), '{}', now(), now()) \
                     ON CONFLICT (ticket) WHERE state IN ",
                    open_states!(),
                    " DO NOTHING RETURNING id"
                ))
                .bind(&id)
                .bind(&job.ticket)
                .bind(&job.project)
                .bind(i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
                .bind(trigger)
                .fetch_optional(&mut *tx)
                .await
                .map_err(step("inserting the job"))?;
                if inserted.is_none() {
                    return Err(EnqueueError::Race(
                        "another enqueue opened a job for the ticket".into(),
                    ));
                }
                Enqueued::Created(id)
            }
        };
        let recorded: Option<String> = sqlx::query_scalar(
            "INSERT INTO deliveries (key, job_id) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING key",
        )
        .bind(&job.trigger.delivery)
        .bind(outcome.job_id())
        .fetch_optional(&mut *tx)
        .await
        .map_err(step("recording the delivery"))?;
        if recorded.is_none() {
            // Rolls back the job or trigger above: the other enqueue of this delivery won.
            return Err(EnqueueError::Race(
                "another enqueue recorded the same delivery".into(),
            ));
        }
        tx.commit().await.map_err(step("committing the enqueue"))?;
        Ok(outcome)
    }
}

/// SQLSTATEs that mean "a concurrent transaction got there first; try again": unique_violation,
/// serialization_failure, deadlock_detected.
fn is_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if matches!(d.code().as_deref(), Some("23505" | "40001" | "40P01")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn scrub_with(secrets: &[Secret], mut message: String) -> String {
    for s in secrets {
        if !s.expose().is_empty() {
            message = message.replace(s.expose(), "***");
        }
    }
    message
}

/// Percent-decodes a URL component (what the server is actually sent as the password).
fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// The lease or backoff as the float seconds `make_interval(secs => ...)` takes.
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Fails the jobs whose approval request has lapsed (marking them for
/// [`Admin::expire_approvals`](super::Admin::expire_approvals) to hand out); returns their ids. SKIP LOCKED: a
/// concurrent sweeper handling the same rows is doing the same thing.
async fn expire_lapsed(
    q: &PgQueue,
    tx: &mut Transaction<'static, Postgres>,
) -> Result<Vec<String>, QueueError> {
    let lapsed: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, approval_reason, approval_expires_at FROM jobs \
         WHERE state = 'awaiting_approval' AND approval_expires_at <= now() \
         FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(q.db("finding lapsed approval requests"))?;
    let mut ids = Vec::with_capacity(lapsed.len());
    for (id, reason, expires_at) in lapsed {
        let error = state::approval_expired(reason.as_deref().unwrap_or(""), expires_at);
        sqlx::query(
            "UPDATE jobs SET state = 'failed', last_error = $1, approval_expiry_unreported = true, \
             updated_at = now() WHERE id = $2",
        )
        .bind(&error)
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(q.db("failing a job whose approval expired"))?;
        tracing::warn!(job = %id, %error, "job failed: approval expired");
        ids.push(id);
    }
    Ok(ids)
}

#[async_trait::async_trait]
impl super::Intake for PgQueue {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let trigger = Json(
            serde_json::to_value(&job.trigger)
                .map_err(|e| QueueError::Database(format!("encoding the trigger: {e}")))?,
        );
        let location = format!("postgres at {}: ", self.location);
        super::retry_races(&location, || self.try_enqueue(&job, &trigger)).await
    }

    async fn approve(
        &self,
        job_id: &str,
        by: &str,
        comment: Option<&ApprovingComment>,
    ) -> Result<Approved, QueueError> {
        // The job's row is locked, so the checks and the comment's use are one decision; a concurrent use of the
        // same comment id waits on the primary key and then finds it taken.
        let mut tx = self.begin().await?;
        let row: Option<(String, Option<DateTime<Utc>>, bool)> = sqlx::query_as(
            "SELECT state, approval_requested_at, COALESCE(approval_expires_at > now(), false) \
             FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db("reading a job to approve"))?;
        let Some((job_state, requested_at, live)) = row else {
            tx.rollback()
                .await
                .map_err(self.db("ending a transaction"))?;
            return Err(QueueError::NotFound(job_id.to_string()));
        };
        if let Err(refused) = state::may_approve(
            JobState::parse(&job_state),
            live,
            requested_at,
            comment.map(|c| c.created),
        ) {
            // Ended now, not when the pool next uses the connection: the row lock must not linger (claims skip
            // locked rows).
            tx.rollback()
                .await
                .map_err(self.db("ending a transaction"))?;
            return Ok(refused);
        }
        if let Some(c) = comment {
            let fresh = sqlx::query(
                "INSERT INTO approval_comments (comment_id, job_id) VALUES ($1, $2) \
                 ON CONFLICT (comment_id) DO NOTHING",
            )
            .bind(&c.id)
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(self.db("recording the approving comment"))?;
            if fresh.rows_affected() != 1 {
                tx.rollback()
                    .await
                    .map_err(self.db("ending a transaction"))?;
                return Ok(Approved::CommentAlreadyUsed);
            }
        }
        sqlx::query(
            "UPDATE jobs SET state = 'queued', not_before = now(), approved_by = $1, approved_at = now(), \
             approval_comment_id = $2, updated_at = now() WHERE id = $3",
        )
        .bind(by)
        .bind(comment.map(|c| c.id.as_str()))
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(self.db("approving a job"))?;
        tx.commit()
            .await
            .map_err(self.db("committing an approval"))?;
        Ok(Approved::Yes)
    }
}

#[async_trait::async_trait]
impl super::Leases for PgQueue {
    async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError> {
        let mut tx = self.begin().await?;
        // Jobs whose worker died on their last allowed attempt are failed, not run a further time. SKIP LOCKED: a
        // concurrent claimer handling the same rows is doing the same thing.
        let dead: Vec<(String, i32, i32)> = sqlx::query_as(
            "SELECT id, attempts, max_attempts FROM jobs \
             WHERE state = 'running' AND lease_expires < now() AND attempts >= max_attempts \
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(self.db("finding jobs whose worker was lost"))?;
        for (id, attempts, max_attempts) in dead {
            let attempts = count(attempts, "attempts")?;
            sqlx::query(
                "UPDATE jobs SET state = 'failed', last_error = $1, lease_owner = NULL, lease_expires = NULL, \
                 updated_at = now() WHERE id = $2",
            )
            .bind(state::worker_lost(
                attempts,
                count(max_attempts, "max_attempts")?,
            ))
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(self.db("failing a job whose worker was lost"))?;
            tracing::warn!(job = %id, attempts, "job failed: its worker was lost on the last attempt");
        }
        expire_lapsed(self, &mut tx).await?;
        // The kill switch. FOR SHARE: claims do not block each other, but `set_paused` waits for claims in flight,
        // so once a pause has committed no claim can still succeed without having seen it.
        let pause: Option<Option<Value>> =
            sqlx::query_scalar("SELECT value FROM control WHERE name = 'pause' FOR SHARE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(self.db("reading the pause switch"))?;
        if pause.flatten().is_some_and(|v| !v.is_null()) {
            tx.commit().await.map_err(self.db("committing a claim"))?;
            return Ok(None);
        }
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, \
             lease_expires = now() + make_interval(secs => $2), attempts = attempts + 1, \
             lease_gen = lease_gen + 1, updated_at = now() \
             WHERE id = (SELECT id FROM jobs \
                 WHERE state IN ('queued', 'running') AND ((state = 'queued' AND not_before <= now()) \
                        OR (state = 'running' AND lease_expires < now() AND attempts < max_attempts)) \
                   AND NOT (project = ANY($3)) \
                 ORDER BY created_at, seq LIMIT 1 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING ",
            job_columns!()
        ))
        .bind(&claim.worker)
        .bind(seconds(claim.lease))
        .bind(&claim.exclude_projects)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db("claiming a job"))?;
        let job = row.map(Job::try_from).transpose()?;
        tx.commit().await.map_err(self.db("committing a claim"))?;
        Ok(job)
    }

    async fn holds(&self, job_id: &str, worker: &str) -> Result<bool, QueueError> {
        let h = holder(worker);
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' AND lease_expires > now() \
             AND lease_owner = $2 AND lease_gen = COALESCE($3::bigint, lease_gen)",
        )
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("checking a lease"))?;
        Ok(held.is_some())
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires = now() + make_interval(secs => $1), updated_at = now() \
             WHERE id = $2 AND state = 'running' AND lease_owner = $3 AND lease_gen = COALESCE($4::bigint, lease_gen)",
        )
        .bind(seconds(lease))
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("renewing a lease"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(&self, job_id: &str, worker: &str, outcome: Value) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', outcome = $1, lease_owner = NULL, lease_expires = NULL, \
             updated_at = now() WHERE id = $2 AND state = 'running' AND lease_owner = $3 AND lease_gen = COALESCE($4::bigint, lease_gen)",
        )
        .bind(&outcome)
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("completing a job"))?;
        self.held(done.rows_affected(), job_id).await
    }

    async fn fail(
        &self,
        job_id: &str,
        worker: &str,
        failure: Failure,
    ) -> Result<JobState, QueueError> {
        let h = holder(worker);
        let mut tx = self.begin().await?;
        let row: Option<(i32, i32)> = sqlx::query_as(
            "SELECT attempts, max_attempts FROM jobs WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND lease_gen = COALESCE($3::bigint, lease_gen) \
             FOR UPDATE",
        )
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db("reading a job"))?;
        let Some((attempts, max_attempts)) = row else {
            drop(tx);
            return Err(state::not_held(job_id, self.exists(job_id).await?));
        };
        let next = state::after_failure(
            count(attempts, "attempts")?,
            count(max_attempts, "max_attempts")?,
            failure,
        );
        sqlx::query(
            "UPDATE jobs SET state = $1, last_error = $2, not_before = now() + make_interval(secs => $3), \
             lease_owner = NULL, lease_expires = NULL, updated_at = now() WHERE id = $4",
        )
        .bind(next.state.as_str())
        .bind(&next.error)
        .bind(seconds(next.wait))
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(self.db("recording a failure"))?;
        tx.commit().await.map_err(self.db("committing a failure"))?;
        Ok(next.state)
    }

    async fn release(&self, job_id: &str, worker: &str) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', not_before = now(), lease_owner = NULL, lease_expires = NULL, \
             attempts = GREATEST(attempts - 1, 0), updated_at = now() \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND lease_gen = COALESCE($3::bigint, lease_gen)",
        )
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("releasing a job"))?;
        self.held(done.rows_affected(), job_id).await
    }

    async fn await_approval(
        &self,
        job_id: &str,
        worker: &str,
        request: ApprovalRequest,
    ) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'awaiting_approval', lease_owner = NULL, lease_expires = NULL, \
             attempts = GREATEST(attempts - 1, 0), approval_reason = $1, approval_approvers = $2, \
             approval_requested_at = $3, approval_expires_at = $4, approved_by = NULL, approved_at = NULL, \
             approval_ticket_sha256 = $7, approval_repo = $8, approval_base = $9, approval_comment_id = NULL, \
             updated_at = now() WHERE id = $5 AND state = 'running' AND lease_owner = $6 AND lease_gen = COALESCE($10::bigint, lease_gen)",
        )
        .bind(&request.reason)
        .bind(Json(&request.approvers))
        .bind(request.requested_at)
        .bind(request.expires_at)
        .bind(job_id)
        .bind(h.owner)
        .bind(&request.subject.ticket_sha256)
        .bind(&request.subject.repo)
        .bind(&request.subject.base)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("parking a job for approval"))?;
        self.held(done.rows_affected(), job_id).await
    }

    async fn set_policy_hash(
        &self,
        job_id: &str,
        worker: &str,
        hash: &str,
    ) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET policy_hash = $1, updated_at = now() \
             WHERE id = $2 AND state = 'running' AND lease_owner = $3 AND lease_gen = COALESCE($4::bigint, lease_gen)",
        )
        .bind(hash)
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("recording the policy hash"))?;
        self.held(done.rows_affected(), job_id).await
    }

    async fn set_progress(
        &self,
        job_id: &str,
        worker: &str,
        key: &str,
        value: Value,
    ) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET progress = progress || jsonb_build_object($1::text, $2::jsonb), updated_at = now() \
             WHERE id = $3 AND state = 'running' AND lease_owner = $4 AND lease_gen = COALESCE($5::bigint, lease_gen)",
        )
        .bind(key)
        .bind(&value)
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(self.db("recording progress"))?;
        self.held(done.rows_affected(), job_id).await
    }
}

#[async_trait::async_trait]
impl super::Admin for PgQueue {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(self.db("ping"))?;
        Ok(())
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("reading a job"))?;
        row.map(Job::try_from).transpose()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR ticket = $2) \
             ORDER BY created_at DESC, seq DESC LIMIT $3"
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.ticket.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db("listing jobs"))?;
        rows.into_iter().map(Job::try_from).collect()
    }

    async fn cancel(&self, job_id: &str) -> Result<bool, QueueError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, updated_at = now() \
             WHERE id = $1 AND state IN ",
            open_states!()
        ))
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(self.db("cancelling a job"))?;
        if done.rows_affected() == 1 {
            Ok(true)
        } else {
            state::unchanged(job_id, self.exists(job_id).await?)
        }
    }

    async fn cancel_running(&self) -> Result<Vec<String>, QueueError> {
        let mut ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, updated_at = now() \
             WHERE state = 'running' RETURNING id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db("cancelling running jobs"))?;
        ids.sort();
        Ok(ids)
    }

    async fn retry(&self, job_id: &str) -> Result<bool, QueueError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = 'queued', attempts = 0, not_before = now(), lease_owner = NULL, \
             lease_expires = NULL, approval_expiry_unreported = false, updated_at = now() \
             WHERE id = $1 AND state IN ",
            reopenable_states!(),
            " AND NOT EXISTS (SELECT 1 FROM jobs AS open WHERE open.ticket = jobs.ticket AND open.state IN ",
            open_states!(),
            ")"
        ))
        .bind(job_id)
        .execute(&self.pool)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 1 => Ok(true),
            // The one-open-job-per-ticket index: another job for the ticket opened concurrently.
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(self.db("retrying a job")(e)),
            Ok(_) => state::unchanged(job_id, self.exists(job_id).await?),
        }
    }

    async fn set_paused(&self, pause: Option<Pause>) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO control (name, value, updated_at) VALUES ('pause', $1, now()) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        )
        .bind(pause.as_ref().map(Json))
        .execute(&self.pool)
        .await
        .map_err(self.db("setting the pause switch"))?;
        Ok(())
    }

    async fn paused(&self) -> Result<Option<Pause>, QueueError> {
        let value: Option<Option<Value>> =
            sqlx::query_scalar("SELECT value FROM control WHERE name = 'pause'")
                .fetch_optional(&self.pool)
                .await
                .map_err(self.db("reading the pause switch"))?;
        value
            .flatten()
            .filter(|v| !v.is_null())
            .map(serde_json::from_value::<Pause>)
            .transpose()
            .map_err(|e| QueueError::Database(format!("stored pause is malformed: {e}")))
    }

    async fn expire_approvals(&self) -> Result<Vec<String>, QueueError> {
        let mut tx = self.begin().await?;
        expire_lapsed(self, &mut tx).await?;
        let mut ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET approval_expiry_unreported = false \
             WHERE id IN (SELECT id FROM jobs WHERE approval_expiry_unreported FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(self.db("handing out expired approvals"))?;
        tx.commit()
            .await
            .map_err(self.db("committing expired approvals"))?;
        ids.sort();
        Ok(ids)
    }

    async fn prune_deliveries(&self, older_than: Duration) -> Result<u64, QueueError> {
        let mut pruned = 0;
        loop {
            // The database's clock, as for every other instant it stores. The job rows are share-locked, so a
            // concurrent `retry` reopening one either waits for this batch or is seen (the row is re-checked).
            let n = sqlx::query(concat!(
                "DELETE FROM deliveries WHERE key IN ( \
                     SELECT d.key FROM deliveries d JOIN jobs j ON j.id = d.job_id \
                     WHERE d.created_at < now() - $1::float8 * interval '1 millisecond' \
                       AND j.updated_at < now() - $1::float8 * interval '1 millisecond' \
                       AND j.state NOT IN ",
                open_states!(),
                " LIMIT $2 FOR SHARE OF j)"
            ))
            .bind(super::retention_ms(older_than))
            .bind(super::PRUNE_BATCH)
            .execute(&self.pool)
            .await
            .map_err(self.db("pruning old deliveries"))?
            .rows_affected();
            pruned += n;
            if n < super::PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait::async_trait]
impl super::UsageLedger for PgQueue {
    async fn record_usage(&self, usage: &Usage) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO usage_ledger (job_id, team, model, input_tokens, output_tokens, cost_micros, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&usage.job_id)
        .bind(&usage.team)
        .bind(&usage.model)
        .bind(to_i64(usage.input_tokens, "input_tokens")?)
        .bind(to_i64(usage.output_tokens, "output_tokens")?)
        .bind(to_i64(usage.cost_micros, "cost_micros")?)
        .bind(usage.at)
        .execute(&self.pool)
        .await
        .map_err(self.db("recording usage"))?;
        Ok(())
    }

    async fn usage_since(
        &self,
        team: &str,
        since: DateTime<Utc>,
    ) -> Result<UsageTotal, QueueError> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0)::bigint, \
             COALESCE(SUM(cost_micros), 0)::bigint, COUNT(*) \
             FROM usage_ledger WHERE team = $1 AND at >= $2",
        )
        .bind(team)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(self.db("summing a team's usage"))?;
        usage_total(row)
    }

    async fn job_usage(&self, job_id: &str) -> Result<UsageTotal, QueueError> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0)::bigint, \
             COALESCE(SUM(cost_micros), 0)::bigint, COUNT(*) \
             FROM usage_ledger WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await
        .map_err(self.db("summing a job's usage"))?;
        usage_total(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_passwords() {
        assert_eq!(percent_decode("p%40ss%2Fw").unwrap(), "p@ss/w");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert_eq!(percent_decode("trailing%4").unwrap(), "trailing%4");
    }

    #[test]
    fn scrubbing_removes_every_form_of_the_password() {
        let secrets = vec![Secret::new("p%40ss"), Secret::new("p@ss")];
        let m = scrub_with(&secrets, "auth failed for p@ss and p%40ss".into());
        assert_eq!(m, "auth failed for *** and ***");
    }

    #[tokio::test]
    async fn a_bad_url_names_no_password() {
        let err = PgQueue::connect("postgres://u:hunter2@[::1")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = PgQueue::connect("postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
