//! The SQLite backend's [`Leases`](crate::queue::Leases): claims and what only a lease holder may do.

use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;

use super::{db, duration_ms, expire_lapsed, now_ms, read_pause, SqliteQueue};
use crate::queue::row::{count, JobRow};
use crate::queue::state::{self, holder};
use crate::queue::{ApprovalRequest, Claim, Failure, Job, JobState, QueueError};

#[async_trait::async_trait]
impl crate::queue::Leases for SqliteQueue {
    async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        // Jobs whose worker died on their last allowed attempt are failed, not run a further time.
        let dead: Vec<(String, i32, i32)> = sqlx::query_as(
            "SELECT id, attempts, max_attempts FROM jobs \
             WHERE state = 'running' AND lease_expires < ? AND attempts >= max_attempts",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("finding jobs whose worker was lost"))?;
        for (id, attempts, max_attempts) in dead {
            let attempts = count(attempts, "attempts")?;
            sqlx::query(
                "UPDATE jobs SET state = 'failed', last_error = ?, lease_owner = NULL, lease_expires = NULL, \
                 updated_at = ? WHERE id = ?",
            )
            .bind(state::worker_lost(
                attempts,
                count(max_attempts, "max_attempts")?,
            ))
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db("failing a job whose worker was lost"))?;
            tracing::warn!(job = %id, attempts, "job failed: its worker was lost on the last attempt");
        }
        expire_lapsed(&mut tx, now).await?;
        // The kill switch, read under the write lock the claim holds, so a pause that committed is always seen.
        if read_pause(&mut *tx).await?.is_some() {
            tx.commit().await.map_err(db("committing a claim"))?;
            return Ok(None);
        }
        // INDEXED BY: walk the open jobs oldest first and stop at the first claimable one. Left to itself (no
        // ANALYZE statistics) the planner ORs two searches of `jobs_state_not_before` and sorts every queued job,
        // so a claim cost time in proportion to the backlog (about 1 ms per claim with 2,000 jobs queued).
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_expires = ?2, attempts = attempts + 1, \
             lease_gen = lease_gen + 1, updated_at = ?3 \
             WHERE id = (SELECT id FROM jobs INDEXED BY jobs_open_by_age \
                 WHERE state IN ('queued', 'running') AND ((state = 'queued' AND not_before <= ?3) \
                        OR (state = 'running' AND lease_expires < ?3 AND attempts < max_attempts)) \
                   AND project NOT IN (SELECT value FROM json_each(?4)) \
                 ORDER BY created_at, seq LIMIT 1) \
             RETURNING ",
            job_columns!()
        ))
        .bind(&claim.worker)
        .bind(now.saturating_add(duration_ms(claim.lease)))
        .bind(now)
        .bind(Json(&claim.exclude_projects))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("claiming a job"))?;
        let job = row.map(Job::try_from).transpose()?;
        tx.commit().await.map_err(db("committing a claim"))?;
        Ok(job)
    }

    async fn holds(&self, job_id: &str, worker: &str) -> Result<bool, QueueError> {
        let h = holder(worker);
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_expires > ? \
             AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(job_id)
        .bind(now_ms())
        .bind(h.owner)
        .bind(h.gen)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("checking a lease"))?;
        Ok(held.is_some())
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        let (now, h) = (now_ms(), holder(worker));
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires = ?, updated_at = ? \
             WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(now.saturating_add(duration_ms(lease)))
        .bind(now)
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(db("renewing a lease"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(&self, job_id: &str, worker: &str, outcome: Value) -> Result<(), QueueError> {
        let h = holder(worker);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', outcome = ?, lease_owner = NULL, lease_expires = NULL, \
             updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(Json(&outcome))
        .bind(now_ms())
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(db("completing a job"))?;
        self.held(done.rows_affected(), job_id).await
    }

    async fn fail(
        &self,
        job_id: &str,
        worker: &str,
        failure: Failure,
    ) -> Result<JobState, QueueError> {
        let (now, h) = (now_ms(), holder(worker));
        let mut tx = self.begin().await?;
        let row: Option<(i32, i32)> = sqlx::query_as(
            "SELECT attempts, max_attempts FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a job"))?;
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
            "UPDATE jobs SET state = ?, last_error = ?, not_before = ?, lease_owner = NULL, lease_expires = NULL, \
             updated_at = ? WHERE id = ?",
        )
        .bind(next.state.as_str())
        .bind(&next.error)
        .bind(now.saturating_add(duration_ms(next.wait)))
        .bind(now)
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(db("recording a failure"))?;
        tx.commit().await.map_err(db("committing a failure"))?;
        Ok(next.state)
    }

    async fn release(&self, job_id: &str, worker: &str) -> Result<(), QueueError> {
        let (now, h) = (now_ms(), holder(worker));
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', not_before = ?, lease_owner = NULL, lease_expires = NULL, \
             attempts = MAX(attempts - 1, 0), updated_at = ? \
             WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(now)
        .bind(now)
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(db("releasing a job"))?;
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
             attempts = MAX(attempts - 1, 0), approval_reason = ?, approval_approvers = ?, \
             approval_requested_at = ?, approval_expires_at = ?, approved_by = NULL, approved_at = NULL, \
             approval_ticket_sha256 = ?, approval_repo = ?, approval_base = ?, approval_comment_id = NULL, \
             updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(&request.reason)
        .bind(Json(&request.approvers))
        .bind(request.requested_at.timestamp_millis())
        .bind(request.expires_at.timestamp_millis())
        .bind(&request.subject.ticket_sha256)
        .bind(&request.subject.repo)
        .bind(&request.subject.base)
        .bind(now_ms())
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(db("parking a job for approval"))?;
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
            "UPDATE jobs SET policy_hash = ?, updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(hash)
        .bind(now_ms())
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .execute(&self.pool)
        .await
        .map_err(db("recording the policy hash"))?;
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
        let mut tx = self.begin().await?;
        let progress: Option<Json<Value>> = sqlx::query_scalar(
            "SELECT progress FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_gen = COALESCE(?, lease_gen)",
        )
        .bind(job_id)
        .bind(h.owner)
        .bind(h.gen)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading progress"))?;
        let Some(Json(progress)) = progress else {
            drop(tx);
            return Err(state::not_held(job_id, self.exists(job_id).await?));
        };
        // Read-modify-write under the write lock: any key is fine, with no JSON-path quoting to get wrong.
        let mut progress = match progress {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        progress.insert(key.to_string(), value);
        sqlx::query("UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ?")
            .bind(Json(Value::Object(progress)))
            .bind(now_ms())
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(db("recording progress"))?;
        tx.commit().await.map_err(db("committing progress"))
    }
}
