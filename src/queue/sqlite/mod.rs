//! The SQLite backend: one file in the data directory, for one host.
//!
//! Several `drafter` processes on the host may open the same file, so the database itself is what serializes them:
//! - every statement that writes runs inside `BEGIN IMMEDIATE`, which takes SQLite's single write lock up front.
//!   Reads and the decision based on them (is this delivery known? is there an open job for the ticket? which job is
//!   the oldest claimable?) therefore happen under the same lock as the write, so two connections (in one process
//!   or in two) can never both create a job for one ticket or claim the same job. A deferred transaction would
//!   instead fail with `SQLITE_BUSY` when it upgrades to a writer, which `busy_timeout` cannot wait out in WAL mode;
//! - a partial unique index (`jobs(ticket)` over the open states) is the backstop for the one-open-job-per-ticket
//!   rule;
//! - WAL mode lets readers (`drafter jobs`, `/readyz`) proceed while a writer holds the lock, `busy_timeout` makes
//!   writers wait for each other instead of failing, and `synchronous=FULL` makes a commit survive a power cut (a
//!   webhook is answered 2xx only after the enqueue committed).
//!
//! Instants are stored as integer Unix milliseconds (UTC) from the process clock, so they compare as numbers; one
//! host means one clock. JSON columns are TEXT. What is not SQL (decisions, the job row, the schema driver) is shared
//! with the PostgreSQL backend; see [`crate::queue`].

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::row::Stamp;
use super::state;
use super::{
    Approved, ApprovingComment, EnqueueError, Enqueued, JobId, JobState, NewJob, Pause, QueueError,
};

/// How long a writer waits for another writer (in this or another process) before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per process. SQLite has one writer at a time anyway; a few connections let reads overlap a write.
const POOL_SIZE: u32 = 4;

/// The schema (`migrations/sqlite`). Public only so that the upgrade tests can build a database at an older version.
#[doc(hidden)]
pub use super::schema::SQLITE as MIGRATOR;

mod admin;
mod leases;

/// The SQLite queue. Cheap to share behind an `Arc`; all state is in the file.
pub struct SqliteQueue {
    pool: SqlitePool,
}

impl SqliteQueue {
    /// Opens (creating the file and its parent directories if missing) and migrates the queue at `path`.
    pub async fn open(path: &Path) -> Result<SqliteQueue, QueueError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| QueueError::Database(format!("creating {}: {e}", parent.display())))?;
        }
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full);
        enable_wal(&options, &shown).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(db(&format!("opening {shown}")))?;
        let queue = SqliteQueue { pool };
        queue.migrate().await.map_err(|e| match e {
            QueueError::Database(m) => QueueError::Database(format!("{shown}: {m}")),
            other => other,
        })?;
        tracing::debug!(path = %shown, "sqlite queue open");
        Ok(queue)
    }

    /// Brings the schema up to date under the write lock, so processes opening the file at once take turns.
    async fn migrate(&self) -> Result<(), QueueError> {
        let mut tx = self.begin().await?;
        super::schema::migrate(&mut *tx, &MIGRATOR)
            .await
            .map_err(QueueError::Database)?;
        tx.commit().await.map_err(db("committing the migration"))
    }

    /// A transaction holding the write lock from its first statement.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, QueueError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))
    }

    /// `Ok` when the lease holder's update touched its job (`affected` rows), else why not.
    async fn held(&self, affected: u64, job_id: &str) -> Result<(), QueueError> {
        if affected == 1 {
            Ok(())
        } else {
            Err(state::not_held(job_id, self.exists(job_id).await?))
        }
    }

    async fn exists(&self, job_id: &str) -> Result<bool, QueueError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("looking up a job"))?;
        Ok(found.is_some())
    }
}

/// Switches the file to WAL mode. Changing the journal mode needs an exclusive lock that `busy_timeout` does not
/// wait for, so when another process holds the file (typically while it is doing the same), retry for a while.
/// WAL mode is a property of the file, so the pool's connections need not set it again.
async fn enable_wal(options: &SqliteConnectOptions, shown: &str) -> Result<(), QueueError> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let attempt = async {
            let mut conn = SqliteConnection::connect_with(options).await?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<String, sqlx::Error>(mode)
        }
        .await;
        match attempt {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(QueueError::Database(format!(
                    "{shown}: could not switch to WAL mode (journal mode is {mode})"
                )))
            }
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(db(&format!("opening {shown}"))(e)),
        }
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes (primary code in the low byte).
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Maps a database error to [`QueueError::Database`] with what was being done.
fn db(context: &str) -> impl FnOnce(sqlx::Error) -> QueueError + '_ {
    move |e| QueueError::Database(format!("{context}: {e}"))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `t` as this backend stores it (milliseconds), for comparing with a stored instant.
fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Fails the jobs whose approval request lapsed by `now` (marking them for
/// [`Admin::expire_approvals`](super::Admin::expire_approvals) to hand out); returns their ids.
async fn expire_lapsed(
    tx: &mut Transaction<'static, Sqlite>,
    now: i64,
) -> Result<Vec<String>, QueueError> {
    let lapsed: Vec<(String, Option<String>, Stamp)> = sqlx::query_as(
        "SELECT id, approval_reason, approval_expires_at FROM jobs \
         WHERE state = 'awaiting_approval' AND approval_expires_at <= ?",
    )
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db("finding lapsed approval requests"))?;
    let mut ids = Vec::with_capacity(lapsed.len());
    for (id, reason, expires_at) in lapsed {
        let error = state::approval_expired(reason.as_deref().unwrap_or(""), expires_at.0);
        sqlx::query(
            "UPDATE jobs SET state = 'failed', last_error = ?, approval_expiry_unreported = 1, updated_at = ? \
             WHERE id = ?",
        )
        .bind(&error)
        .bind(now)
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(db("failing a job whose approval expired"))?;
        tracing::warn!(job = %id, %error, "job failed: approval expired");
        ids.push(id);
    }
    Ok(ids)
}

/// Reads the kill switch.
async fn read_pause<'c, E>(executor: E) -> Result<Option<Pause>, QueueError>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let value: Option<Option<Json<Pause>>> =
        sqlx::query_scalar("SELECT value FROM control WHERE name = 'pause'")
            .fetch_optional(executor)
            .await
            .map_err(db("reading the pause switch"))?;
    Ok(value.flatten().map(|p| p.0))
}

#[async_trait::async_trait]
impl super::Intake for SqliteQueue {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let trigger = serde_json::to_string(&job.trigger)
            .map_err(|e| QueueError::Database(format!("encoding the trigger: {e}")))?;
        // The write lock serializes enqueues; the unique indexes only fire on a bug or a foreign writer, and then the
        // retry re-reads their committed rows.
        super::retry_races("", || self.try_enqueue(&job, &trigger)).await
    }

    async fn approve(
        &self,
        job_id: &str,
        by: &str,
        comment: Option<&ApprovingComment>,
    ) -> Result<Approved, QueueError> {
        let now = now_ms();
        // Under the write lock: the checks and the comment's use are one decision.
        let mut tx = self.begin().await?;
        let row: Option<(String, Option<Stamp>, Option<i64>)> = sqlx::query_as(
            "SELECT state, approval_requested_at, approval_expires_at FROM jobs WHERE id = ?",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a job to approve"))?;
        let Some((job_state, requested_at, expires_at)) = row else {
            tx.rollback().await.map_err(db("ending a transaction"))?;
            return Err(QueueError::NotFound(job_id.to_string()));
        };
        if let Err(refused) = state::may_approve(
            JobState::parse(&job_state),
            expires_at.is_some_and(|e| e > now),
            requested_at.map(|r| r.0),
            comment.map(|c| stored(c.created)),
        ) {
            // Ended now, not when the pool next uses the connection: the write lock must not linger.
            tx.rollback().await.map_err(db("ending a transaction"))?;
            return Ok(refused);
        }
        if let Some(c) = comment {
            let fresh = sqlx::query(
                "INSERT INTO approval_comments (comment_id, job_id, used_at) VALUES (?, ?, ?) \
                 ON CONFLICT (comment_id) DO NOTHING",
            )
            .bind(&c.id)
            .bind(job_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db("recording the approving comment"))?;
            if fresh.rows_affected() != 1 {
                tx.rollback().await.map_err(db("ending a transaction"))?;
                return Ok(Approved::CommentAlreadyUsed);
            }
        }
        sqlx::query(
            "UPDATE jobs SET state = 'queued', not_before = ?1, approved_by = ?2, approved_at = ?1, \
             approval_comment_id = ?3, updated_at = ?1 WHERE id = ?4",
        )
        .bind(now)
        .bind(by)
        .bind(comment.map(|c| c.id.as_str()))
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(db("approving a job"))?;
        tx.commit().await.map_err(db("committing an approval"))?;
        Ok(Approved::Yes)
    }
}

impl SqliteQueue {
    async fn try_enqueue(&self, job: &NewJob, trigger: &str) -> Result<Enqueued, EnqueueError> {
        let step = |context: &'static str| {
            move |e: sqlx::Error| {
                if is_unique_violation(&e) {
                    EnqueueError::Race(e.to_string())
                } else {
                    EnqueueError::Queue(db(context)(e))
                }
            }
        };
        let now = now_ms();
        let mut tx = self.begin().await.map_err(EnqueueError::Queue)?;
        let seen: Option<String> =
            sqlx::query_scalar("SELECT job_id FROM deliveries WHERE key = ?")
                .bind(&job.trigger.delivery)
                .fetch_optional(&mut *tx)
                .await
                .map_err(step("looking up the delivery"))?;
        if let Some(id) = seen {
            return Ok(Enqueued::Duplicate(id));
        }
        let open: Option<String> = sqlx::query_scalar(concat!(
            "SELECT id FROM jobs WHERE ticket = ? AND state IN ",
            open_states!()
        ))
        .bind(&job.ticket)
        .fetch_optional(&mut *tx)
        .await
        .map_err(step("looking up an open job"))?;
        let outcome = match open {
            Some(id) => {
                let kept = sqlx::query(
                    "UPDATE jobs SET triggers = json_insert(triggers, '$[#]', json(?)), updated_at = ? \
                     WHERE id = ? AND json_array_length(triggers) < ?",
                )
                .bind(trigger)
                .bind(now)
                .bind(&id)
                .bind(state::MAX_TRIGGERS as i64)
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
                sqlx::query(
                    "INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, \
                     progress, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, json_array(json(?6)), '{}', ?5, ?5)",
                )
                .bind(&id)
                .bind(&job.ticket)
                .bind(&job.project)
                .bind(i64::from(job.max_attempts))
                .bind(now)
                .bind(trigger)
                .execute(&mut *tx)
                .await
                .map_err(step("inserting the job"))?;
                Enqueued::Created(id)
            }
        };
        sqlx::query("INSERT INTO deliveries (key, job_id, created_at) VALUES (?, ?, ?)")
            .bind(&job.trigger.delivery)
            .bind(outcome.job_id())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(step("recording the delivery"))?;
        tx.commit()
            .await
            .map_err(|e| EnqueueError::Queue(db("committing the enqueue")(e)))?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instants_round_trip_through_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(&dir.path().join("queue.sqlite"))
            .await
            .unwrap();
        let t: Stamp = sqlx::query_scalar("SELECT 1700000000123")
            .fetch_one(&q.pool)
            .await
            .unwrap();
        assert_eq!(t.0.timestamp_millis(), 1_700_000_000_123);
        let err = sqlx::query_scalar::<_, Stamp>("SELECT 9223372036854775807")
            .fetch_one(&q.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a valid instant"), "{err}");
        assert_eq!(duration_ms(Duration::from_secs(u64::MAX)), i64::MAX);
        let sub_ms = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(
            stored(sub_ms),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap()
        );
    }

    #[tokio::test]
    async fn open_creates_parent_directories_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/queue.sqlite");
        let q = SqliteQueue::open(&path).await.unwrap();
        drop(q);
        // A second open finds the schema current and leaves it alone.
        let q = SqliteQueue::open(&path).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version")
            .fetch_all(&q.pool)
            .await
            .unwrap();
        let all = (1..=MIGRATOR.iter().count() as i64).collect::<Vec<_>>();
        assert_eq!(versions, all);
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&q.pool)
        .await
        .unwrap();
        assert_eq!(applied, all);
    }

    #[tokio::test]
    async fn an_applied_version_this_drafter_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        let q = SqliteQueue::open(&path).await.unwrap();
        // What a newer drafter would leave behind if it recorded its version only where sqlx looks.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'future', 1, x'00', 0)",
        )
        .execute(&q.pool)
        .await
        .unwrap();
        drop(q);
        let err = SqliteQueue::open(&path).await.err().unwrap().to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }

    #[tokio::test]
    async fn an_edited_released_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        let q = SqliteQueue::open(&path).await.unwrap();
        sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 3")
            .execute(&q.pool)
            .await
            .unwrap();
        drop(q);
        let err = SqliteQueue::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("schema version 3") && err.contains("checksum"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        let q = SqliteQueue::open(&path).await.unwrap();
        sqlx::query("INSERT INTO schema_version (version) VALUES (99)")
            .execute(&q.pool)
            .await
            .unwrap();
        drop(q);
        let err = SqliteQueue::open(&path).await.err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
