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

use super::state;
use super::{
    Approved, ApprovingComment, EnqueueError, Enqueued, JobId, JobState, NewJob, QueueError,
};
use crate::config::Secret;

/// Connections per process.
pub const POOL_SIZE: u32 = 8;

/// The advisory lock key migrations hold (arbitrary, fixed: "drafter" in ASCII). Every drafter version takes it.
const MIGRATION_LOCK: i64 = 0x0064_7261_6674_6572;

/// The schema (`migrations/postgres`). Public only so that the upgrade tests can build a database at an older version.
#[doc(hidden)]
pub use super::schema::POSTGRES as MIGRATOR;

mod admin;
mod leases;

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
