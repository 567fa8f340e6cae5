//! What the backends' SQL does not share: one [`Dialect`] impl per backend. Everything else is written once, in
//! `intake.rs`, `leases.rs` and `admin.rs`, as statements with numbered parameters (`$1`: PostgreSQL's form, which
//! sqlx's SQLite driver binds by number too) into which a statement splices its dialect's pieces (`{now}`, a lock,
//! a JSON function).
//!
//! The shared code is macros (`impl_intake!`, `impl_leases!`, `impl_admin!`) that each backend expands for its own
//! queue type, rather than functions generic over `sqlx::Database`: those would need a higher-ranked bound for every
//! type they bind or decode, and their futures would not be provably `Send` (see `schema.rs`). Expanded per backend,
//! the one text is checked against that backend's concrete types.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Pool, Transaction};

use super::QueueError;

/// Row locks a statement may need. PostgreSQL takes them; SQLite needs none, since each of its writing transactions
/// holds the database's one write lock from its first statement (`BEGIN IMMEDIATE`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lock {
    /// `FOR UPDATE`: the rows read are about to be changed on what was read.
    Update,
    /// `FOR UPDATE SKIP LOCKED`: claims and sweeps, where a row another transaction holds is being handled by it.
    SkipLocked,
    /// `FOR SHARE`: the kill switch, so that `set_paused` waits for claims in flight.
    Share,
    /// `FOR SHARE OF j`: the jobs (`j`) whose deliveries a prune deletes, so a concurrent `retry` waits or is seen.
    ShareJobs,
}

/// One backend's SQL where it differs from the other's, and its connection. Implemented by each queue type; the
/// shared macros use nothing else of it (and its `pool` field).
pub(crate) trait Dialect: Sync {
    type Db: sqlx::Database;

    /// The backend's name (`Admin::backend`).
    const NAME: &'static str;
    /// SQL for the current instant, in the form instants are stored.
    const NOW: &'static str;
    /// SQL booleans as the schema spells them (partial indexes match them only in that spelling).
    const TRUE: &'static str;
    const FALSE: &'static str;

    /// An instant as bound for an instant column.
    type Instant;
    fn instant(t: DateTime<Utc>) -> Self::Instant;
    /// `t` as the backend stores it, for comparing with a stored instant.
    fn stored(t: DateTime<Utc>) -> DateTime<Utc>;

    /// A duration as bound for [`Dialect::span_sql`].
    type Span;
    fn span(d: Duration) -> Self::Span;
    /// SQL for the duration bound at `param`, to add to or take from [`Dialect::NOW`].
    fn span_sql(param: &str) -> String;

    /// A list of projects as bound for [`Dialect::not_in`].
    type Projects;
    fn projects(projects: &[String]) -> Self::Projects;
    /// SQL: `column` is none of the projects bound at `param`.
    fn not_in(column: &str, param: &str) -> String;

    /// SQL: the JSON array `column` with the JSON value bound at `param` appended.
    fn json_append(column: &str, param: &str) -> String;
    /// SQL: a JSON array of the one JSON value bound at `param`.
    fn json_array(param: &str) -> String;
    /// SQL: the length of the JSON array `column`.
    fn json_length(column: &str) -> String;

    /// SQL after `FROM jobs` in the claim's search for the oldest open job: SQLite, without statistics, otherwise
    /// sorts every queued job at every claim (about 1 ms per claim with 2,000 queued); walking
    /// `jobs_open_by_age` oldest first stops at the first claimable one.
    const OPEN_BY_AGE: &'static str;

    /// SQL for `lock` at the end of a `SELECT` (empty where the backend needs none).
    fn lock(lock: Lock) -> &'static str;

    /// Whether `e` means a concurrent transaction got there first, so an enqueue is worth trying again.
    fn is_race(e: &sqlx::Error) -> bool;

    fn pool(&self) -> &Pool<Self::Db>;
    /// Woken when this process adds claimable work (an enqueue, an approval), so its idle pool claims at once
    /// instead of at its next poll.
    fn wake(&self) -> &tokio::sync::Notify;
    /// Tells the idle workers that claimable work was added (an enqueue, an approval, a retry, a resume): this
    /// process's through [`Dialect::wake`], and on a backend several processes share, theirs too (PostgreSQL:
    /// `NOTIFY`). Best effort: a worker that misses it claims at its next poll.
    fn announce(&self) -> impl Future<Output = ()> + Send {
        self.wake().notify_one();
        std::future::ready(())
    }
    /// Makes sure other processes' announcements reach [`Dialect::wake`] (PostgreSQL: a `LISTEN` connection,
    /// opened by this process's first wait for work). Nothing for a backend one process owns.
    fn listen(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// A transaction for a method that reads and then writes.
    fn begin(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, QueueError>> + Send;

    /// What an error message starts with: where the database is (empty for SQLite, whose caller knows).
    fn location(&self) -> String;
    /// `message` with any secret of the connection removed.
    fn scrub(&self, message: String) -> String {
        message
    }

    /// An error naming the database, scrubbed.
    fn error(&self, message: String) -> QueueError {
        QueueError::Database(self.scrub(format!("{}{message}", self.location())))
    }

    /// Maps a database error to [`QueueError::Database`] with what was being done.
    fn db<'a>(&'a self, context: &'a str) -> impl FnOnce(sqlx::Error) -> QueueError + 'a {
        move |e| self.error(format!("{context}: {e}"))
    }
}

/// A statement assembled from this crate's literals and a [`Dialect`]'s pieces, never from input: safe to run.
pub(crate) fn sql(text: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(text)
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
