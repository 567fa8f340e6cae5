//! The schema: `migrations/<backend>/*.sql`, embedded by `sqlx::migrate!` and applied by [`migrate`] when a queue is
//! opened. Both backends share this driver; each supplies only the lock that makes concurrent openers take turns
//! (SQLite: the transaction is `BEGIN IMMEDIATE`; PostgreSQL: `pg_advisory_xact_lock`).
//!
//! Databases made before drafter used `sqlx::migrate!` track their version in `schema_version` (one row per applied
//! version, 1 to 5 with the same SQL as the files). Such a database is *adopted*: the versions it lists are recorded
//! in `_sqlx_migrations` with the files' checksums, without running them again, and the rest run as usual. Every
//! version applied since is also mirrored into `schema_version`, so an older drafter, which reads only that table,
//! still refuses a schema newer than it knows instead of migrating it again.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgConnection, SqliteConnection};

/// The SQLite schema.
pub static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The PostgreSQL schema.
pub static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// What [`migrate`] does on a connection. Implemented for each backend's connection type with the same body: a
/// function generic over `sqlx::Database` would need higher-ranked bounds that make its future not provably `Send`.
/// For the same reason the migrator is driven by `run_direct` (what `Migrator::run` and `Migrator::skip` call after
/// `Acquire`, public for exactly this, see its comment in sqlx-core) rather than through `Acquire`.
#[async_trait::async_trait]
pub(super) trait SchemaConnection: Send {
    async fn run_sql(&mut self, sql: &'static str) -> Result<(), sqlx::Error>;
    async fn legacy_version(&mut self) -> Result<Option<i64>, sqlx::Error>;
    async fn record_applied(&mut self, m: &Migrator, up_to: i64) -> Result<(), MigrateError>;
    async fn run_migrations(&mut self, m: &Migrator) -> Result<(), MigrateError>;
}

macro_rules! schema_connection {
    ($conn:ty) => {
        #[async_trait::async_trait]
        impl SchemaConnection for $conn {
            async fn run_sql(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
                sqlx::raw_sql(sql).execute(self).await.map(|_| ())
            }
            async fn legacy_version(&mut self) -> Result<Option<i64>, sqlx::Error> {
                sqlx::query_scalar("SELECT CAST(MAX(version) AS bigint) FROM schema_version")
                    .fetch_one(self)
                    .await
            }
            async fn record_applied(
                &mut self,
                m: &Migrator,
                up_to: i64,
            ) -> Result<(), MigrateError> {
                m.run_direct(Some(up_to), self, true).await
            }
            async fn run_migrations(&mut self, m: &Migrator) -> Result<(), MigrateError> {
                m.run_direct(None, self, false).await
            }
        }
    };
}

schema_connection!(SqliteConnection);
schema_connection!(PgConnection);

/// Brings the schema up to date. `conn` is inside a transaction that holds the backend's migration lock, and the
/// caller commits it: the adoption, the migrations and the mirror land together or not at all. (Each migration's
/// own transaction nests as a savepoint.) The error is in words, for the backend to prefix with its location.
pub(super) async fn migrate(
    conn: &mut impl SchemaConnection,
    migrator: &Migrator,
) -> Result<(), String> {
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    // Created on a fresh database too: it is the mirror an older drafter reads.
    conn.run_sql("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await
        .map_err(|e| format!("creating schema_version: {e}"))?;
    let legacy = conn
        .legacy_version()
        .await
        .map_err(|e| format!("reading the schema version: {e}"))?
        .unwrap_or(0);
    if legacy > latest {
        return Err(newer(legacy, latest));
    }
    if legacy > 0 {
        // Versions already applied under the old tracking: record them (no-op for those already recorded).
        conn.record_applied(migrator, legacy)
            .await
            .map_err(|e| explain(e, latest))?;
    }
    conn.run_migrations(migrator)
        .await
        .map_err(|e| explain(e, latest))?;
    conn.run_sql(
        "INSERT INTO schema_version (version) \
         SELECT CAST(version AS integer) FROM _sqlx_migrations \
         WHERE version NOT IN (SELECT version FROM schema_version) ORDER BY version",
    )
    .await
    .map_err(|e| format!("recording the schema version: {e}"))?;
    Ok(())
}

fn newer(version: i64, latest: i64) -> String {
    format!(
        "schema version {version} is newer than this drafter understands ({latest}): upgrade drafter"
    )
}

fn explain(e: MigrateError, latest: i64) -> String {
    match e {
        MigrateError::VersionMissing(v) => newer(v, latest),
        MigrateError::VersionMismatch(v) => format!(
            "schema version {v} was applied from different SQL than this drafter's (checksum mismatch): \
             a released migration was edited"
        ),
        MigrateError::ExecuteMigration(e, v) => format!("migrating to schema version {v}: {e}"),
        e => format!("migrating the schema: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_versions_in_order() {
        let versions = |m: &Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(&SQLITE), versions(&POSTGRES));
        let n = i64::try_from(SQLITE.iter().count()).unwrap();
        assert_eq!(versions(&SQLITE), (1..=n).collect::<Vec<_>>());
        assert!(SQLITE.iter().chain(POSTGRES.iter()).all(|m| !m.no_tx));
    }
}
