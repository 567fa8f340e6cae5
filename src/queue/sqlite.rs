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
//! Instants are stored as integer Unix milliseconds (UTC) from SQLite's clock, which is the host's, so they compare
//! as numbers; one host means one clock. JSON columns are TEXT. Everything but this file's [`Dialect`] (the SQL that
//! differs) and the connection is shared with the PostgreSQL backend; see [`crate::queue`].

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::dialect::{is_unique_violation, Dialect, Lock};
use super::{QueueError, CENTURY};

/// How long a writer waits for another writer (in this or another process) before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per process. SQLite has one writer at a time anyway; a few connections let reads overlap a write.
const POOL_SIZE: u32 = 4;

/// The schema (`migrations/sqlite`). Public only so that the upgrade tests can build a database at an older version.
#[doc(hidden)]
pub use super::schema::SQLITE as MIGRATOR;

/// The SQLite queue. Cheap to share behind an `Arc`; all state is in the file.
pub struct SqliteQueue {
    pool: SqlitePool,
    /// See [`Dialect::wake`].
    wake: tokio::sync::Notify,
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
        let queue = SqliteQueue {
            pool,
            wake: tokio::sync::Notify::new(),
        };
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
}

impl_intake!(SqliteQueue);
impl_leases!(SqliteQueue);
impl_admin!(SqliteQueue);
impl_links!(SqliteQueue);

impl Dialect for SqliteQueue {
    type Db = Sqlite;

    const NAME: &'static str = "sqlite";
    /// Milliseconds; SQLite reads the clock once per statement.
    const NOW: &'static str = "CAST(ROUND(unixepoch('now', 'subsec') * 1000) AS INTEGER)";
    const TRUE: &'static str = "1";
    const FALSE: &'static str = "0";

    type Instant = i64;
    fn instant(t: DateTime<Utc>) -> i64 {
        t.timestamp_millis()
    }
    fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
    }

    /// Milliseconds, capped at a century so that `now + span` cannot overflow.
    type Span = i64;
    fn span(d: Duration) -> i64 {
        duration_ms(d.min(CENTURY))
    }
    fn span_sql(param: &str) -> String {
        param.to_string()
    }

    /// A JSON array (TEXT).
    type Projects = Json<Vec<String>>;
    fn projects(projects: &[String]) -> Json<Vec<String>> {
        Json(projects.to_vec())
    }
    fn not_in(column: &str, param: &str) -> String {
        format!("{column} NOT IN (SELECT value FROM json_each({param}))")
    }

    fn json_append(column: &str, param: &str) -> String {
        format!("json_insert({column}, '$[#]', json({param}))")
    }
    fn json_array(param: &str) -> String {
        format!("json_array(json({param}))")
    }
    fn json_length(column: &str) -> String {
        format!("json_array_length({column})")
    }

    /// None: every transaction that writes holds the write lock from its start (see [`SqliteQueue::begin`]).
    const OPEN_BY_AGE: &'static str = "INDEXED BY jobs_open_by_age";

    fn lock(_: Lock) -> &'static str {
        ""
    }

    /// The write lock serializes enqueues, so a unique index fires only on a bug or a foreign writer; the retry then
    /// reads their committed rows.
    fn is_race(e: &sqlx::Error) -> bool {
        is_unique_violation(e)
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn wake(&self) -> &tokio::sync::Notify {
        &self.wake
    }

    /// A transaction holding the write lock from its first statement.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, QueueError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))
    }

    fn location(&self) -> String {
        String::new()
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

/// Maps a database error to [`QueueError::Database`] with what was being done (before there is a queue).
fn db(context: &str) -> impl FnOnce(sqlx::Error) -> QueueError + '_ {
    move |e| QueueError::Database(format!("{context}: {e}"))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dialect::sql;
    use crate::queue::row::Stamp;

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
            SqliteQueue::stored(sub_ms),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap()
        );
        assert_eq!(SqliteQueue::span(Duration::MAX), duration_ms(CENTURY));
    }

    #[tokio::test]
    async fn now_is_the_hosts_clock_in_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(&dir.path().join("queue.sqlite"))
            .await
            .unwrap();
        let before = Utc::now().timestamp_millis();
        let now: i64 = sqlx::query_scalar(sql(format!("SELECT {}", SqliteQueue::NOW)))
            .fetch_one(&q.pool)
            .await
            .unwrap();
        let after = Utc::now().timestamp_millis();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
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
