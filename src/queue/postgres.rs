//! The PostgreSQL backend: one database shared by many workers on many hosts.
//!
//! How it stays correct with many writers at once:
//! - **Clock**: every instant (`not_before`, leases, timestamps) comes from the database's `now()`, so workers on
//!   hosts with skewed clocks still agree on whose lease has expired.
//! - **Enqueue** runs in READ COMMITTED and lets unique indexes decide races (see `intake.rs`); serialization
//!   failures and deadlocks are retried the same way.
//! - **Claim** picks the oldest claimable row with `FOR UPDATE SKIP LOCKED` inside the claiming `UPDATE`, so
//!   concurrent claimers never wait on, nor take, the same job.
//! - **Migrations** run in one transaction under `pg_advisory_xact_lock` (the key every drafter version takes), so
//!   workers starting together against a fresh or an old database take turns instead of racing on `CREATE TABLE`.
//! - **Secrets**: the URL's password never appears in an error; messages name the user, host, port and database.
//! - **Wake-ups**: an enqueue, an approval, a retry or a resume sends `NOTIFY drafter_work`; every process whose
//!   workers have waited for work holds one `LISTEN` connection (outside the pool) and wakes its idle workers, so a
//!   job on a shared queue is claimed at once, not at the next `serve.idle_poll_ms`. A lost notification (the
//!   listener reconnecting) costs one poll interval, never a job.
//!
//! Everything but this file's [`Dialect`] (the SQL that differs) and the connection is shared with the SQLite
//! backend; see [`crate::queue`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use super::dialect::{Dialect, Lock};
use super::QueueError;
use crate::config::Secret;

/// Connections per process.
pub const POOL_SIZE: u32 = 8;

/// The advisory lock key migrations hold (arbitrary, fixed: "drafter" in ASCII). Every drafter version takes it.
const MIGRATION_LOCK: i64 = 0x0064_7261_6674_6572;

/// The schema (`migrations/postgres`). Public only so that the upgrade tests can build a database at an older version.
#[doc(hidden)]
pub use super::schema::POSTGRES as MIGRATOR;

/// The channel announcements of new work go on (`NOTIFY`/`LISTEN`), per database.
const CHANNEL: &str = "drafter_work";

/// The task relaying `drafter_work` notifications into the queue's wake-up; stopped with the queue.
struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The PostgreSQL queue. Cheap to share behind an `Arc`.
pub struct PgQueue {
    pool: PgPool,
    /// See [`Dialect::wake`]; shared with the listening task.
    wake: Arc<tokio::sync::Notify>,
    /// Where the `LISTEN` connection goes (the pool's own options).
    options: PgConnectOptions,
    /// Started by the first wait for work (a CLI command that never waits opens no listening connection).
    listening: tokio::sync::OnceCell<Listening>,
    /// The payload of this queue handle's announcements: its own come back to its listener, and are not news.
    me: String,
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
            .connect_lazy_with(options.clone());
        let queue = PgQueue {
            wake: Arc::new(tokio::sync::Notify::new()),
            options,
            listening: tokio::sync::OnceCell::new(),
            me: {
                let mut id = [0u8; 8];
                // Only told apart from other handles' ids; a failed draw (all zeros) just wakes this one too.
                let _ = getrandom::fill(&mut id);
                hex::encode(id)
            },
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
}

impl_intake!(PgQueue);
impl_leases!(PgQueue);
impl_admin!(PgQueue);
impl_links!(PgQueue);

impl Dialect for PgQueue {
    type Db = Postgres;

    const NAME: &'static str = "postgres";
    /// The transaction's start, by the database's clock.
    const NOW: &'static str = "now()";
    const TRUE: &'static str = "true";
    const FALSE: &'static str = "false";

    type Instant = DateTime<Utc>;
    fn instant(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }
    fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    /// Float seconds, as `make_interval(secs => ...)` takes them.
    type Span = f64;
    fn span(d: Duration) -> f64 {
        d.as_secs_f64()
    }
    fn span_sql(param: &str) -> String {
        format!("make_interval(secs => {param})")
    }

    /// A `text[]`.
    type Projects = Vec<String>;
    fn projects(projects: &[String]) -> Vec<String> {
        projects.to_vec()
    }
    // `NOT IN (SELECT unnest(..))`, not `NOT (column = ANY(..))`: for a prepared statement's generic plan
    // PostgreSQL guesses that `<> ALL` of an unknown array keeps almost no rows, and that plan reads and sorts every
    // open job (10 ms with 10,000 queued) where walking `jobs_open_by_age` stops at the first claimable one (0.1 ms).
    fn not_in(column: &str, param: &str) -> String {
        format!("{column} NOT IN (SELECT unnest({param}::text[]))")
    }

    fn json_append(column: &str, param: &str) -> String {
        format!("{column} || jsonb_build_array({param}::jsonb)")
    }
    fn json_array(param: &str) -> String {
        format!("jsonb_build_array({param}::jsonb)")
    }
    fn json_length(column: &str) -> String {
        format!("jsonb_array_length({column})")
    }

    const OPEN_BY_AGE: &'static str = "";

    fn lock(lock: Lock) -> &'static str {
        match lock {
            Lock::Update => "FOR UPDATE",
            Lock::SkipLocked => "FOR UPDATE SKIP LOCKED",
            Lock::Share => "FOR SHARE",
            Lock::ShareJobs => "FOR SHARE OF j",
        }
    }

    fn is_race(e: &sqlx::Error) -> bool {
        is_race(e)
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn wake(&self) -> &tokio::sync::Notify {
        &self.wake
    }

    async fn announce(&self) {
        self.wake.notify_one();
        // After the change committed: a worker woken by it must find the job.
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&self.me)
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %self.scrub(e.to_string()),
                "could not announce new work; other processes' workers see it at their next poll");
        }
    }

    async fn listen(&self) {
        let started = self
            .listening
            .get_or_try_init(|| async {
                // A pool of one of its own: `PgListener` keeps its connection, and reconnects (and listens
                // again) through this pool when it is lost.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(15))
                    .connect_lazy_with(self.options.clone());
                let mut listener = PgListener::connect_with(&pool).await?;
                // Listening before the first wait begins: an announcement right after it is not missed.
                listener.listen(CHANNEL).await?;
                let wake = self.wake.clone();
                let (location, secrets) = (self.location.clone(), self.secrets.clone());
                let me = self.me.clone();
                Ok::<_, sqlx::Error>(Listening(tokio::spawn(async move {
                    loop {
                        match listener.recv().await {
                            Ok(n) if n.payload() == me => {}
                            Ok(_) => wake.notify_one(),
                            Err(e) => {
                                // The poll still runs; try the connection again in a while.
                                let error = scrub_with(&secrets, e.to_string());
                                tracing::debug!(%location, %error, "listening for new work failed");
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                        }
                    }
                })))
            })
            .await;
        if let Err(e) = started {
            tracing::debug!(error = %self.scrub(e.to_string()),
                "cannot listen for new work; polling instead");
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, QueueError> {
        self.pool
            .begin()
            .await
            .map_err(self.db("starting a transaction"))
    }

    fn location(&self) -> String {
        format!("postgres at {}: ", self.location)
    }

    fn scrub(&self, message: String) -> String {
        scrub_with(&self.secrets, message)
    }
}

/// SQLSTATEs that mean "a concurrent transaction got there first; try again": unique_violation,
/// serialization_failure, deadlock_detected.
fn is_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if matches!(d.code().as_deref(), Some("23505" | "40001" | "40P01")))
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
