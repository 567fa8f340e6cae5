//! [`Admin`](super::Admin) and [`UsageLedger`](super::UsageLedger), operators, housekeeping sweeps and the usage
//! ledger, for both backends: `impl_admin!(Queue)` expands them for a queue type that implements
//! [`Dialect`](super::dialect::Dialect) (and `impl_leases!`, whose helpers it uses).

macro_rules! impl_admin {
    ($queue:ty) => {
        const _: () = {
            use std::time::Duration;

            use chrono::{DateTime, Utc};
            use sqlx::types::Json;

            use $crate::queue::dialect::{is_unique_violation, sql, Dialect, Lock};
            use $crate::queue::row::JobRow;
            use $crate::queue::state;
            use $crate::queue::{
                to_i64, usage_total, Job, JobFilter, JobState, LedgerEntry, Pause, QueueError, UsageTotal,
                CENTURY, PRUNE_BATCH,
            };

            #[async_trait::async_trait]
            impl $crate::queue::Admin for $queue {
                fn backend(&self) -> &'static str {
                    Self::NAME
                }

                async fn ping(&self) -> Result<(), QueueError> {
                    sqlx::query("SELECT 1")
                        .execute(self.pool())
                        .await
                        .map_err(self.db("ping"))?;
                    Ok(())
                }

                async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
                    let row: Option<JobRow> =
                        sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                            .bind(job_id)
                            .fetch_optional(self.pool())
                            .await
                            .map_err(self.db("reading a job"))?;
                    row.map(Job::try_from).transpose()
                }

                async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
                    let limit = if filter.limit == 0 { 100 } else { filter.limit };
                    let rows: Vec<JobRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE (CAST($1 AS text) IS NULL OR state = $1) \
                         AND (CAST($2 AS text) IS NULL OR ticket = $2) \
                         ORDER BY created_at DESC, seq DESC LIMIT $3"
                    ))
                    .bind(filter.state.map(JobState::as_str))
                    .bind(filter.ticket.as_deref())
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await
                    .map_err(self.db("listing jobs"))?;
                    rows.into_iter().map(Job::try_from).collect()
                }

                async fn cancel(&self, job_id: &str) -> Result<bool, QueueError> {
                    let done = sqlx::query(sql(format!(
                        "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, \
                         updated_at = {now} WHERE id = $1 AND state IN {open}",
                        now = Self::NOW,
                        open = open_states!(),
                    )))
                    .bind(job_id)
                    .execute(self.pool())
                    .await
                    .map_err(self.db("cancelling a job"))?;
                    if done.rows_affected() == 1 {
                        Ok(true)
                    } else {
                        state::unchanged(job_id, self.exists(job_id).await?)
                    }
                }

                async fn cancel_running(&self) -> Result<Vec<String>, QueueError> {
                    let mut ids: Vec<String> = sqlx::query_scalar(sql(format!(
                        "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, \
                         updated_at = {now} WHERE state = 'running' RETURNING id",
                        now = Self::NOW,
                    )))
                    .fetch_all(self.pool())
                    .await
                    .map_err(self.db("cancelling running jobs"))?;
                    ids.sort();
                    Ok(ids)
                }

                async fn retry(&self, job_id: &str) -> Result<bool, QueueError> {
                    let done = sqlx::query(sql(format!(
                        "UPDATE jobs SET state = 'queued', attempts = 0, not_before = {now}, lease_owner = NULL, \
                         lease_expires = NULL, approval_expiry_unreported = {f}, updated_at = {now} \
                         WHERE id = $1 AND state IN {reopenable} AND NOT EXISTS \
                         (SELECT 1 FROM jobs AS open WHERE open.ticket = jobs.ticket AND open.state IN {open})",
                        now = Self::NOW,
                        f = Self::FALSE,
                        reopenable = reopenable_states!(),
                        open = open_states!(),
                    )))
                    .bind(job_id)
                    .execute(self.pool())
                    .await;
                    match done {
                        Ok(done) if done.rows_affected() == 1 => {
                            self.announce().await;
                            Ok(true)
                        }
                        // The one-open-job-per-ticket index: another job for the ticket opened meanwhile.
                        Err(e) if is_unique_violation(&e) => Ok(false),
                        Err(e) => Err(self.db("retrying a job")(e)),
                        Ok(_) => state::unchanged(job_id, self.exists(job_id).await?),
                    }
                }

                async fn set_paused(&self, pause: Option<Pause>) -> Result<(), QueueError> {
                    sqlx::query(sql(format!(
                        "INSERT INTO control (name, value, updated_at) VALUES ('pause', $1, {now}) \
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        now = Self::NOW,
                    )))
                    .bind(pause.as_ref().map(Json))
                    .execute(self.pool())
                    .await
                    .map_err(self.db("setting the pause switch"))?;
                    if pause.is_none() {
                        self.announce().await;
                    }
                    Ok(())
                }

                async fn paused(&self) -> Result<Option<Pause>, QueueError> {
                    self.read_pause(self.pool(), "").await
                }

                async fn expire_approvals(&self) -> Result<Vec<String>, QueueError> {
                    let mut tx = self.begin().await?;
                    self.expire_lapsed(&mut tx).await?;
                    let mut ids: Vec<String> = sqlx::query_scalar(sql(format!(
                        "UPDATE jobs SET approval_expiry_unreported = {f} WHERE id IN \
                         (SELECT id FROM jobs WHERE approval_expiry_unreported = {t} {lock}) RETURNING id",
                        t = Self::TRUE,
                        f = Self::FALSE,
                        lock = Self::lock(Lock::SkipLocked),
                    )))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(self.db("handing out expired approvals"))?;
                    tx.commit().await.map_err(self.db("committing expired approvals"))?;
                    ids.sort();
                    Ok(ids)
                }

                async fn prune_deliveries(&self, older_than: Duration) -> Result<u64, QueueError> {
                    // Capped at a century: a longer retention keeps everything just the same.
                    let older_than = Self::span(older_than.min(CENTURY));
                    let mut pruned = 0;
                    loop {
                        // One batch per transaction, so claims and enqueues get their turn in between.
                        let mut tx = self.begin().await?;
                        let n = sqlx::query(sql(format!(
                            "DELETE FROM deliveries WHERE key IN ( \
                                 SELECT d.key FROM deliveries d JOIN jobs j ON j.id = d.job_id \
                                 WHERE d.created_at < {now} - {age} AND j.updated_at < {now} - {age} \
                                   AND j.state NOT IN {open} LIMIT $2 {lock})",
                            now = Self::NOW,
                            age = Self::span_sql("$1"),
                            open = open_states!(),
                            lock = Self::lock(Lock::ShareJobs),
                        )))
                        .bind(older_than)
                        .bind(PRUNE_BATCH)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.db("pruning old deliveries"))?
                        .rows_affected();
                        tx.commit().await.map_err(self.db("committing the delivery prune"))?;
                        pruned += n;
                        if n < PRUNE_BATCH as u64 {
                            return Ok(pruned);
                        }
                    }
                }
            }

            #[async_trait::async_trait]
            impl $crate::queue::UsageLedger for $queue {
                async fn record_usage(&self, usage: &LedgerEntry) -> Result<(), QueueError> {
                    sqlx::query(
                        "INSERT INTO usage_ledger (job_id, team, model, input_tokens, output_tokens, cost_micros, \
                         at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&usage.job_id)
                    .bind(&usage.team)
                    .bind(&usage.model)
                    .bind(to_i64(usage.input_tokens, "input_tokens")?)
                    .bind(to_i64(usage.output_tokens, "output_tokens")?)
                    .bind(to_i64(usage.cost_micros, "cost_micros")?)
                    .bind(Self::instant(usage.at))
                    .execute(self.pool())
                    .await
                    .map_err(self.db("recording usage"))?;
                    Ok(())
                }

                async fn usage_since(
                    &self,
                    team: &str,
                    since: DateTime<Utc>,
                ) -> Result<UsageTotal, QueueError> {
                    let row: (i64, i64, i64) =
                        sqlx::query_as(concat!(usage_sums!(), " WHERE team = $1 AND at >= $2"))
                            .bind(team)
                            .bind(Self::instant(since))
                            .fetch_one(self.pool())
                            .await
                            .map_err(self.db("summing a team's usage"))?;
                    usage_total(row)
                }

                async fn job_usage(&self, job_id: &str) -> Result<UsageTotal, QueueError> {
                    let row: (i64, i64, i64) = sqlx::query_as(concat!(usage_sums!(), " WHERE job_id = $1"))
                        .bind(job_id)
                        .fetch_one(self.pool())
                        .await
                        .map_err(self.db("summing a job's usage"))?;
                    usage_total(row)
                }
            }
        };
    };
}

/// The usage sums [`usage_total`](super::usage_total) reads (tokens, cost, calls), before a `WHERE`. PostgreSQL
/// sums `bigint` to `numeric`, hence the casts.
macro_rules! usage_sums {
    () => {
        "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS bigint), \
         CAST(COALESCE(SUM(cost_micros), 0) AS bigint), COUNT(*) FROM usage_ledger"
    };
}
