//! The PostgreSQL backend's [`Leases`](crate::queue::Leases): claims and what only a lease holder may do.

use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;

use super::{expire_lapsed, seconds, PgQueue};
use crate::queue::row::{count, JobRow};
use crate::queue::state::{self, holder};
use crate::queue::{ApprovalRequest, Claim, Failure, Job, JobState, QueueError};

#[async_trait::async_trait]
impl crate::queue::Leases for PgQueue {
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
        // `project NOT IN (SELECT unnest(..))`, not `NOT (project = ANY(..))`: for the prepared statement's generic
        // plan PostgreSQL guesses that `<> ALL` of an unknown array keeps almost no rows, and that plan reads and
        // sorts every open job (10 ms with 10,000 queued) where walking `jobs_open_by_age` oldest first stops at
        // the first claimable one (0.1 ms). So it planned the statement afresh at every claim (0.2 ms), and sorted
        // the backlog under `plan_cache_mode = force_generic_plan`. This form's generic plan walks the index.
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, \
             lease_expires = now() + make_interval(secs => $2), attempts = attempts + 1, \
             lease_gen = lease_gen + 1, updated_at = now() \
             WHERE id = (SELECT id FROM jobs \
                 WHERE state IN ('queued', 'running') AND ((state = 'queued' AND not_before <= now()) \
                        OR (state = 'running' AND lease_expires < now() AND attempts < max_attempts)) \
                   AND project NOT IN (SELECT unnest($3::text[])) \
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
