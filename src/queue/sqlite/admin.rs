//! The SQLite backend's [`Admin`](crate::queue::Admin) and [`UsageLedger`](crate::queue::UsageLedger): operators,
//! housekeeping sweeps and the usage ledger.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{db, expire_lapsed, is_unique_violation, now_ms, read_pause, SqliteQueue};
use crate::queue::row::JobRow;
use crate::queue::state;
use crate::queue::{
    to_i64, usage_total, Job, JobFilter, JobState, LedgerEntry, Pause, QueueError, UsageTotal,
};

#[async_trait::async_trait]
impl crate::queue::Admin for SqliteQueue {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ?"
        ))
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a job"))?;
        row.map(Job::try_from).transpose()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR ticket = ?2) \
             ORDER BY created_at DESC, seq DESC LIMIT ?3"
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.ticket.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing jobs"))?;
        rows.into_iter().map(Job::try_from).collect()
    }

    async fn cancel(&self, job_id: &str) -> Result<bool, QueueError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, updated_at = ? \
             WHERE id = ? AND state IN ",
            open_states!()
        ))
        .bind(now_ms())
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(db("cancelling a job"))?;
        if done.rows_affected() == 1 {
            Ok(true)
        } else {
            state::unchanged(job_id, self.exists(job_id).await?)
        }
    }

    async fn cancel_running(&self) -> Result<Vec<String>, QueueError> {
        let mut ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires = NULL, updated_at = ? \
             WHERE state = 'running' RETURNING id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db("cancelling running jobs"))?;
        ids.sort();
        Ok(ids)
    }

    async fn retry(&self, job_id: &str) -> Result<bool, QueueError> {
        let now = now_ms();
        let done = sqlx::query(concat!(
            "UPDATE jobs SET state = 'queued', attempts = 0, not_before = ?, lease_owner = NULL, \
             lease_expires = NULL, approval_expiry_unreported = 0, updated_at = ? \
             WHERE id = ? AND state IN ",
            reopenable_states!(),
            " AND NOT EXISTS (SELECT 1 FROM jobs AS open WHERE open.ticket = jobs.ticket AND open.state IN ",
            open_states!(),
            ")"
        ))
        .bind(now)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 1 => Ok(true),
            // The one-open-job-per-ticket index: another job for the ticket opened meanwhile.
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(db("retrying a job")(e)),
            Ok(_) => state::unchanged(job_id, self.exists(job_id).await?),
        }
    }

    async fn set_paused(&self, pause: Option<Pause>) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO control (name, value, updated_at) VALUES ('pause', ?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = ?1, updated_at = ?2",
        )
        .bind(pause.as_ref().map(Json))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db("setting the pause switch"))?;
        Ok(())
    }

    async fn paused(&self) -> Result<Option<Pause>, QueueError> {
        read_pause(&self.pool).await
    }

    async fn expire_approvals(&self) -> Result<Vec<String>, QueueError> {
        let mut tx = self.begin().await?;
        expire_lapsed(&mut tx, now_ms()).await?;
        let mut ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET approval_expiry_unreported = 0 WHERE approval_expiry_unreported = 1 RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("handing out expired approvals"))?;
        tx.commit()
            .await
            .map_err(db("committing expired approvals"))?;
        ids.sort();
        Ok(ids)
    }

    async fn prune_deliveries(&self, older_than: Duration) -> Result<u64, QueueError> {
        let cutoff = now_ms().saturating_sub(crate::queue::retention_ms(older_than));
        let mut pruned = 0;
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(concat!(
                "DELETE FROM deliveries WHERE rowid IN ( \
                     SELECT d.rowid FROM deliveries d JOIN jobs j ON j.id = d.job_id \
                     WHERE d.created_at < ?1 AND j.updated_at < ?1 AND j.state NOT IN ",
                open_states!(),
                " LIMIT ?2)"
            ))
            .bind(cutoff)
            .bind(crate::queue::PRUNE_BATCH)
            .execute(&mut *tx)
            .await
            .map_err(db("pruning old deliveries"))?
            .rows_affected();
            tx.commit()
                .await
                .map_err(db("committing the delivery prune"))?;
            pruned += n;
            if n < crate::queue::PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::queue::UsageLedger for SqliteQueue {
    async fn record_usage(&self, usage: &LedgerEntry) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO usage_ledger (job_id, team, model, input_tokens, output_tokens, cost_micros, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&usage.job_id)
        .bind(&usage.team)
        .bind(&usage.model)
        .bind(to_i64(usage.input_tokens, "input_tokens")?)
        .bind(to_i64(usage.output_tokens, "output_tokens")?)
        .bind(to_i64(usage.cost_micros, "cost_micros")?)
        .bind(usage.at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(db("recording usage"))?;
        Ok(())
    }

    async fn usage_since(
        &self,
        team: &str,
        since: DateTime<Utc>,
    ) -> Result<UsageTotal, QueueError> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_micros), 0), COUNT(*) \
             FROM usage_ledger WHERE team = ? AND at >= ?",
        )
        .bind(team)
        .bind(since.timestamp_millis())
        .fetch_one(&self.pool)
        .await
        .map_err(db("summing a team's usage"))?;
        usage_total(row)
    }

    async fn job_usage(&self, job_id: &str) -> Result<UsageTotal, QueueError> {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_micros), 0), COUNT(*) \
             FROM usage_ledger WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("summing a job's usage"))?;
        usage_total(row)
    }
}
