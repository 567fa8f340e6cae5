//! [`Intake`](super::Intake), enqueue and approve, for both backends: `impl_intake!(Queue)` expands it for a queue
//! type that implements [`Dialect`](super::dialect::Dialect) (and `impl_leases!`, whose `exists` it uses).
//!
//! An enqueue is one transaction: delivery known? (`Duplicate`) open job for the ticket? (absorb the trigger, or
//! `Overflow`) else a new job; then the delivery is recorded. SQLite runs it under its write lock, so nothing races
//! it. PostgreSQL runs it in READ COMMITTED and lets the unique indexes decide races: the delivery key is the primary
//! key of `deliveries`, and a partial unique index allows one open job per ticket. The inserts are
//! `ON CONFLICT DO NOTHING`; when one finds a conflict (a concurrent enqueue committed first), the attempt is rolled
//! back and tried again ([`retry_races`](super::retry_races)), and the retry sees the winner's row. Absorbing locks
//! the open job (`FOR UPDATE`) and appends to its `triggers` in SQL, so concurrent absorbs queue up instead of
//! overwriting each other.

macro_rules! impl_intake {
    ($queue:ty) => {
        const _: () = {
            use sqlx::types::Json;

            use $crate::queue::dialect::{sql, Dialect, Lock};
            use $crate::queue::row::Stamp;
            use $crate::queue::state::{self, MAX_TRIGGERS};
            use $crate::queue::{
                retry_races, Approved, ApprovingComment, EnqueueError, Enqueued, JobId, JobState, NewJob,
                QueueError, Trigger,
            };

            #[async_trait::async_trait]
            impl $crate::queue::Intake for $queue {
                async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
                    let trigger = Json(&job.trigger);
                    let enqueued = retry_races(&self.location(), || self.try_enqueue(&job, &trigger)).await?;
                    self.announce().await;
                    Ok(enqueued)
                }

                async fn approve(
                    &self,
                    job_id: &str,
                    by: &str,
                    comment: Option<&ApprovingComment>,
                ) -> Result<Approved, QueueError> {
                    // The job's row is locked (or the database), so the checks and the comment's use are one
                    // decision; a concurrent use of the same comment id waits on its primary key, then finds it
                    // taken.
                    let mut tx = self.begin().await?;
                    let row: Option<(String, Option<Stamp>, bool)> = sqlx::query_as(sql(format!(
                        "SELECT state, approval_requested_at, COALESCE(approval_expires_at > {now}, {f}) \
                         FROM jobs WHERE id = $1 {lock}",
                        now = Self::NOW,
                        f = Self::FALSE,
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.db("reading a job to approve"))?;
                    let Some((job_state, requested_at, live)) = row else {
                        tx.rollback().await.map_err(self.db("ending a transaction"))?;
                        return Err(QueueError::NotFound(job_id.to_string()));
                    };
                    if let Err(refused) = state::may_approve(
                        JobState::parse(&job_state),
                        live,
                        requested_at.map(|r| r.0),
                        comment.map(|c| Self::stored(c.created)),
                    ) {
                        // Ended now, not when the pool next uses the connection: the lock must not linger.
                        tx.rollback().await.map_err(self.db("ending a transaction"))?;
                        return Ok(refused);
                    }
                    if let Some(c) = comment {
                        let fresh = sqlx::query(sql(format!(
                            "INSERT INTO approval_comments (comment_id, job_id, used_at) VALUES ($1, $2, {now}) \
                             ON CONFLICT (comment_id) DO NOTHING",
                            now = Self::NOW,
                        )))
                        .bind(&c.id)
                        .bind(job_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.db("recording the approving comment"))?;
                        if fresh.rows_affected() != 1 {
                            tx.rollback().await.map_err(self.db("ending a transaction"))?;
                            return Ok(Approved::CommentAlreadyUsed);
                        }
                    }
                    sqlx::query(sql(format!(
                        "UPDATE jobs SET state = 'queued', not_before = {now}, approved_by = $1, \
                         approved_at = {now}, approval_comment_id = $2, updated_at = {now} WHERE id = $3",
                        now = Self::NOW,
                    )))
                    .bind(by)
                    .bind(comment.map(|c| c.id.as_str()))
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db("approving a job"))?;
                    tx.commit().await.map_err(self.db("committing an approval"))?;
                    self.announce().await;
                    Ok(Approved::Yes)
                }
            }

            impl $queue {
                async fn try_enqueue(
                    &self,
                    job: &NewJob,
                    trigger: &Json<&Trigger>,
                ) -> Result<Enqueued, EnqueueError> {
                    let step = |context: &'static str| {
                        move |e: sqlx::Error| {
                            if Self::is_race(&e) {
                                EnqueueError::Race(self.scrub(e.to_string()))
                            } else {
                                EnqueueError::Queue(self.db(context)(e))
                            }
                        }
                    };
                    let mut tx = self.begin().await.map_err(EnqueueError::Queue)?;
                    let seen: Option<String> =
                        sqlx::query_scalar("SELECT job_id FROM deliveries WHERE key = $1")
                            .bind(&job.trigger.delivery)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(step("looking up the delivery"))?;
                    if let Some(id) = seen {
                        return Ok(Enqueued::Duplicate(id));
                    }
                    // Locked, so a concurrent finish either happens before (then the row no longer matches and a
                    // new job is made) or after this commits.
                    let open: Option<String> = sqlx::query_scalar(sql(format!(
                        "SELECT id FROM jobs WHERE ticket = $1 AND state IN {open} {lock}",
                        open = open_states!(),
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(&job.ticket)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(step("looking up an open job"))?;
                    let outcome = match open {
                        Some(id) => {
                            let kept = sqlx::query(sql(format!(
                                "UPDATE jobs SET triggers = {appended}, updated_at = {now} \
                                 WHERE id = $2 AND {length} < $3",
                                appended = Self::json_append("triggers", "$1"),
                                length = Self::json_length("triggers"),
                                now = Self::NOW,
                            )))
                            .bind(trigger)
                            .bind(&id)
                            .bind(MAX_TRIGGERS as i32)
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
                            // The conflict target is `jobs_one_open_per_ticket`: its predicate, word for word.
                            let inserted: Option<String> = sqlx::query_scalar(sql(format!(
                                "INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, \
                                 triggers, progress, created_at, updated_at) \
                                 VALUES ($1, $2, $3, 'queued', 0, $4, {now}, {triggers}, '{{}}', {now}, {now}) \
                                 ON CONFLICT (ticket) WHERE state IN {open} DO NOTHING RETURNING id",
                                now = Self::NOW,
                                triggers = Self::json_array("$5"),
                                open = open_states!(),
                            )))
                            .bind(&id)
                            .bind(&job.ticket)
                            .bind(&job.project)
                            .bind(i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
                            .bind(trigger)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(step("inserting the job"))?;
                            if inserted.is_none() {
                                return Err(EnqueueError::Race(
                                    "another enqueue opened a job for the ticket".into(),
                                ));
                            }
                            Enqueued::Created(id)
                        }
                    };
                    let recorded: Option<String> = sqlx::query_scalar(sql(format!(
                        "INSERT INTO deliveries (key, job_id, created_at) VALUES ($1, $2, {now}) \
                         ON CONFLICT (key) DO NOTHING RETURNING key",
                        now = Self::NOW,
                    )))
                    .bind(&job.trigger.delivery)
                    .bind(outcome.job_id())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(step("recording the delivery"))?;
                    if recorded.is_none() {
                        // Rolls back the job or trigger above: the other enqueue of this delivery won.
                        return Err(EnqueueError::Race(
                            "another enqueue recorded the same delivery".into(),
                        ));
                    }
                    tx.commit().await.map_err(step("committing the enqueue"))?;
                    Ok(outcome)
                }
            }
        };
    };
}
