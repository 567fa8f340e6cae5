//! [`Leases`](super::Leases), claims and what only a lease holder may do, for both backends: `impl_leases!(Queue)`
//! expands it for a queue type that implements [`Dialect`](super::dialect::Dialect). It also defines the helpers
//! `impl_intake!` and `impl_admin!` use (`exists`, `held`, `expire_lapsed`, `read_pause`).

/// The lease holder's test, for a statement that binds the holder's owner at `$1` and generation at `$2` (see
/// [`Holder`](super::state::Holder)).
pub(crate) const HELD: &str =
    "state = 'running' AND lease_owner = $1 AND lease_gen = COALESCE(CAST($2 AS bigint), lease_gen)";

macro_rules! impl_leases {
    ($queue:ty) => {
        const _: () = {
            use std::time::Duration;

            use serde_json::Value;
            use sqlx::query::Query;
            use sqlx::types::Json;

            use $crate::queue::dialect::{sql, Dialect, Lock};
            use $crate::queue::leases::{HELD, UNCOUNTED};
            use $crate::queue::row::{count, JobRow, Stamp};
            use $crate::queue::state::{self, holder, Holder};
            use $crate::queue::{ApprovalRequest, Claim, Failure, Job, JobState, Pause, QueueError};

            type Tx = sqlx::Transaction<'static, <$queue as Dialect>::Db>;
            type Arguments = <<$queue as Dialect>::Db as sqlx::Database>::Arguments;

            impl $queue {
                /// `Ok` when the lease holder's update touched its job (`affected` rows), else why not.
                async fn held(&self, affected: u64, job_id: &str) -> Result<(), QueueError> {
                    if affected == 1 {
                        Ok(())
                    } else {
                        Err(state::not_held(job_id, self.exists(job_id).await?))
                    }
                }

                /// `UPDATE jobs SET <set>, updated_at = now` on the job `h` holds the lease of, with `h` and the
                /// job bound at `$1` to `$3`: the caller binds what `set` names from `$4` on.
                fn held_update<'a>(
                    set: &str,
                    h: Holder<'a>,
                    job_id: &'a str,
                ) -> Query<'a, <Self as Dialect>::Db, Arguments> {
                    sqlx::query(sql(format!(
                        "UPDATE jobs SET {set}, updated_at = {now} WHERE id = $3 AND {HELD}",
                        now = Self::NOW,
                    )))
                    .bind(h.owner)
                    .bind(h.gen)
                    .bind(job_id)
                }

                /// Runs a [`held_update`](Self::held_update): `Ok` when it touched the job, else why not.
                async fn run_held(
                    &self,
                    update: Query<'_, <Self as Dialect>::Db, Arguments>,
                    job_id: &str,
                    context: &str,
                ) -> Result<(), QueueError> {
                    let done = update.execute(self.pool()).await.map_err(self.db(context))?;
                    self.held(done.rows_affected(), job_id).await
                }

                async fn exists(&self, job_id: &str) -> Result<bool, QueueError> {
                    let found = sqlx::query("SELECT 1 FROM jobs WHERE id = $1")
                        .bind(job_id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(self.db("looking up a job"))?;
                    Ok(found.is_some())
                }

                /// Fails the jobs whose approval request has lapsed (marking them for `Admin::expire_approvals` to
                /// hand out); returns their ids. Rows a concurrent sweeper holds are skipped: it does the same.
                async fn expire_lapsed(&self, tx: &mut Tx) -> Result<Vec<String>, QueueError> {
                    let lapsed: Vec<(String, Option<String>, Stamp)> = sqlx::query_as(sql(format!(
                        "SELECT id, approval_reason, approval_expires_at FROM jobs \
                         WHERE state = 'awaiting_approval' AND approval_expires_at <= {now} {lock}",
                        now = Self::NOW,
                        lock = Self::lock(Lock::SkipLocked),
                    )))
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(self.db("finding lapsed approval requests"))?;
                    let mut ids = Vec::with_capacity(lapsed.len());
                    for (id, reason, expires_at) in lapsed {
                        let error =
                            state::approval_expired(reason.as_deref().unwrap_or(""), expires_at.0);
                        sqlx::query(sql(format!(
                            "UPDATE jobs SET state = 'failed', last_error = $1, \
                             approval_expiry_unreported = {t}, updated_at = {now} WHERE id = $2",
                            t = Self::TRUE,
                            now = Self::NOW,
                        )))
                        .bind(&error)
                        .bind(&id)
                        .execute(&mut **tx)
                        .await
                        .map_err(self.db("failing a job whose approval expired"))?;
                        tracing::warn!(job = %id, %error, "job failed: approval expired");
                        ids.push(id);
                    }
                    Ok(ids)
                }

                /// Reads the kill switch, with `lock` (SQL) at the end of the `SELECT`.
                async fn read_pause<'c>(
                    &self,
                    executor: impl sqlx::Executor<'c, Database = <Self as Dialect>::Db>,
                    lock: &str,
                ) -> Result<Option<Pause>, QueueError> {
                    let value: Option<Option<Json<Value>>> = sqlx::query_scalar(sql(format!(
                        "SELECT value FROM control WHERE name = 'pause' {lock}"
                    )))
                    .fetch_optional(executor)
                    .await
                    .map_err(self.db("reading the pause switch"))?;
                    value
                        .flatten()
                        .filter(|v| !v.0.is_null())
                        .map(|v| serde_json::from_value::<Pause>(v.0))
                        .transpose()
                        .map_err(|e| QueueError::Database(format!("stored pause is malformed: {e}")))
                }
            }

            #[async_trait::async_trait]
            impl $crate::queue::Leases for $queue {
                async fn wait_for_work(&self, idle: std::time::Duration) {
                    self.listen().await;
                    let _ = tokio::time::timeout(idle, self.wake().notified()).await;
                }

                async fn claim(&self, claim: &Claim) -> Result<Option<Job>, QueueError> {
                    let mut tx = self.begin().await?;
                    // Jobs whose worker died on their last allowed attempt are failed, not run a further time.
                    let dead: Vec<(String, i32, i32)> = sqlx::query_as(sql(format!(
                        "SELECT id, attempts, max_attempts FROM jobs \
                         WHERE state = 'running' AND lease_expires < {now} AND attempts >= max_attempts {lock}",
                        now = Self::NOW,
                        lock = Self::lock(Lock::SkipLocked),
                    )))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(self.db("finding jobs whose worker was lost"))?;
                    for (id, attempts, max_attempts) in dead {
                        let attempts = count(attempts, "attempts")?;
                        sqlx::query(sql(format!(
                            "UPDATE jobs SET state = 'failed', last_error = $1, lease_owner = NULL, \
                             lease_expires = NULL, updated_at = {now} WHERE id = $2",
                            now = Self::NOW,
                        )))
                        .bind(state::worker_lost(attempts, count(max_attempts, "max_attempts")?))
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.db("failing a job whose worker was lost"))?;
                        tracing::warn!(job = %id, attempts, "job failed: its worker was lost on the last attempt");
                    }
                    self.expire_lapsed(&mut tx).await?;
                    // The kill switch, read under the claim's lock (SQLite's write lock; PostgreSQL: FOR SHARE,
                    // which `set_paused` waits for), so once a pause has committed no claim succeeds without it.
                    if self.read_pause(&mut *tx, Self::lock(Lock::Share)).await?.is_some() {
                        tx.commit().await.map_err(self.db("committing a claim"))?;
                        return Ok(None);
                    }
                    let row: Option<JobRow> = sqlx::query_as(sql(format!(
                        "UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires = {now} + {lease}, \
                         attempts = attempts + 1, lease_gen = lease_gen + 1, updated_at = {now} \
                         WHERE id = (SELECT id FROM jobs {by_age} \
                             WHERE state IN ('queued', 'running') AND ((state = 'queued' AND not_before <= {now}) \
                                    OR (state = 'running' AND lease_expires < {now} AND attempts < max_attempts)) \
                               AND {allowed} \
                             ORDER BY created_at, seq LIMIT 1 {lock}) \
                         RETURNING {columns}",
                        now = Self::NOW,
                        lease = Self::span_sql("$2"),
                        by_age = Self::OPEN_BY_AGE,
                        allowed = Self::not_in("project", "$3"),
                        lock = Self::lock(Lock::SkipLocked),
                        columns = job_columns!(),
                    )))
                    .bind(&claim.worker)
                    .bind(Self::span(claim.lease))
                    .bind(Self::projects(&claim.exclude_projects))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.db("claiming a job"))?;
                    let job = row.map(Job::try_from).transpose()?;
                    tx.commit().await.map_err(self.db("committing a claim"))?;
                    Ok(job)
                }

                async fn holds(&self, job_id: &str, worker: &str) -> Result<bool, QueueError> {
                    let h = holder(worker);
                    let held = sqlx::query(sql(format!(
                        "SELECT 1 FROM jobs WHERE id = $3 AND {HELD} AND lease_expires > {now}",
                        now = Self::NOW,
                    )))
                    .bind(h.owner)
                    .bind(h.gen)
                    .bind(job_id)
                    .fetch_optional(self.pool())
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
                    let set = format!("lease_expires = {} + {}", Self::NOW, Self::span_sql("$4"));
                    let done = Self::held_update(&set, holder(worker), job_id)
                        .bind(Self::span(lease))
                        .execute(self.pool())
                        .await
                        .map_err(self.db("renewing a lease"))?;
                    Ok(done.rows_affected() == 1)
                }

                async fn complete(
                    &self,
                    job_id: &str,
                    worker: &str,
                    outcome: Value,
                ) -> Result<(), QueueError> {
                    let set = "state = 'succeeded', outcome = $4, lease_owner = NULL, lease_expires = NULL";
                    let update = Self::held_update(set, holder(worker), job_id).bind(Json(&outcome));
                    self.run_held(update, job_id, "completing a job").await
                }

                async fn fail(
                    &self,
                    job_id: &str,
                    worker: &str,
                    failure: Failure,
                ) -> Result<JobState, QueueError> {
                    let h = holder(worker);
                    let mut tx = self.begin().await?;
                    let row: Option<(i32, i32)> = sqlx::query_as(sql(format!(
                        "SELECT attempts, max_attempts FROM jobs WHERE id = $3 AND {HELD} {lock}",
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(h.owner)
                    .bind(h.gen)
                    .bind(job_id)
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
                    sqlx::query(sql(format!(
                        "UPDATE jobs SET state = $1, last_error = $2, not_before = {now} + {wait}, \
                         lease_owner = NULL, lease_expires = NULL, updated_at = {now} WHERE id = $4",
                        now = Self::NOW,
                        wait = Self::span_sql("$3"),
                    )))
                    .bind(next.state.as_str())
                    .bind(&next.error)
                    .bind(Self::span(next.wait))
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db("recording a failure"))?;
                    tx.commit().await.map_err(self.db("committing a failure"))?;
                    Ok(next.state)
                }

                async fn release(&self, job_id: &str, worker: &str) -> Result<(), QueueError> {
                    let set = format!(
                        "state = 'queued', not_before = {}, lease_owner = NULL, lease_expires = NULL, \
                         attempts = {UNCOUNTED}",
                        Self::NOW
                    );
                    let update = Self::held_update(&set, holder(worker), job_id);
                    self.run_held(update, job_id, "releasing a job").await?;
                    // A worker draining for shutdown gives the job back: another one may take it now.
                    self.announce().await;
                    Ok(())
                }

                async fn await_approval(
                    &self,
                    job_id: &str,
                    worker: &str,
                    request: ApprovalRequest,
                ) -> Result<(), QueueError> {
                    let set = format!(
                        "state = 'awaiting_approval', lease_owner = NULL, lease_expires = NULL, \
                         attempts = {UNCOUNTED}, approval_reason = $4, approval_approvers = $5, \
                         approval_requested_at = $6, approval_expires_at = $7, approved_by = NULL, \
                         approved_at = NULL, approval_ticket_sha256 = $8, approval_repo = $9, approval_base = $10, \
                         approval_comment_id = NULL"
                    );
                    let update = Self::held_update(&set, holder(worker), job_id)
                        .bind(&request.reason)
                        .bind(Json(&request.approvers))
                        .bind(Self::instant(request.requested_at))
                        .bind(Self::instant(request.expires_at))
                        .bind(&request.subject.ticket_sha256)
                        .bind(&request.subject.repo)
                        .bind(&request.subject.base);
                    self.run_held(update, job_id, "parking a job for approval").await
                }

                async fn set_policy_hash(
                    &self,
                    job_id: &str,
                    worker: &str,
                    hash: &str,
                ) -> Result<(), QueueError> {
                    let update = Self::held_update("policy_hash = $4", holder(worker), job_id).bind(hash);
                    self.run_held(update, job_id, "recording the policy hash").await
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
                    let progress: Option<Json<Value>> = sqlx::query_scalar(sql(format!(
                        "SELECT progress FROM jobs WHERE id = $3 AND {HELD} {lock}",
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(h.owner)
                    .bind(h.gen)
                    .bind(job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.db("reading progress"))?;
                    let Some(Json(progress)) = progress else {
                        drop(tx);
                        return Err(state::not_held(job_id, self.exists(job_id).await?));
                    };
                    // Read-modify-write with the row locked: any key is fine, with no JSON-path quoting to get
                    // wrong.
                    let mut progress = match progress {
                        Value::Object(map) => map,
                        _ => serde_json::Map::new(),
                    };
                    progress.insert(key.to_string(), value);
                    sqlx::query(sql(format!(
                        "UPDATE jobs SET progress = $1, updated_at = {now} WHERE id = $2",
                        now = Self::NOW,
                    )))
                    .bind(Json(Value::Object(progress)))
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db("recording progress"))?;
                    tx.commit().await.map_err(self.db("committing progress"))
                }
            }
        };
    };
}

/// `attempts` less the attempt a release or an approval request does not count, never below zero.
pub(crate) const UNCOUNTED: &str = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END";
