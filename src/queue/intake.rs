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
                QueueError, Reopened, ReviewTrigger, Trigger, MAX_REVIEW_TRIGGERS,
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

                async fn reopen_pending(&self, job_id: &str, max_iterations: u32) -> Result<Option<u32>, QueueError> {
                    let mut tx = self.begin().await?;
                    let row: Option<(String, i32, Json<Vec<Trigger>>)> = sqlx::query_as(sql(format!(
                        "SELECT state, iterations, triggers FROM jobs WHERE id = $1 {lock}",
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.db("reading a job for pending review comments"))?;
                    let Some((job_state, iterations, triggers)) = row else {
                        tx.rollback().await.map_err(self.db("ending a transaction"))?;
                        return Err(QueueError::NotFound(job_id.to_string()));
                    };
                    let iterations = u32::try_from(iterations).unwrap_or(0);
                    let finished = matches!(JobState::parse(&job_state), Some(JobState::Succeeded | JobState::Failed));
                    let pending = triggers
                        .0
                        .iter()
                        .any(|t| t.review.as_ref().is_some_and(|r| r.iteration > iterations));
                    if !finished || !pending || iterations >= max_iterations {
                        tx.rollback().await.map_err(self.db("ending a transaction"))?;
                        return Ok(None);
                    }
                    let next = iterations + 1;
                    let done = sqlx::query(sql(format!(
                        "UPDATE jobs SET state = 'queued', attempts = 0, not_before = {now}, lease_owner = NULL, \
                         lease_expires = NULL, last_error = NULL, approval_expiry_unreported = {f}, \
                         iterations = $1, updated_at = {now} WHERE id = $2 AND NOT EXISTS \
                         (SELECT 1 FROM jobs AS open WHERE open.ticket = jobs.ticket AND open.state IN {open})",
                        now = Self::NOW,
                        f = Self::FALSE,
                        open = open_states!(),
                    )))
                    .bind(i32::try_from(next).unwrap_or(i32::MAX))
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await;
                    let queued = match done {
                        Ok(d) => d.rows_affected() == 1,
                        // The one-open-job-per-ticket index: another job for the ticket opened meanwhile.
                        Err(e) if $crate::queue::dialect::is_unique_violation(&e) => false,
                        Err(e) => return Err(self.db("reopening a job for pending review comments")(e)),
                    };
                    if !queued {
                        tx.rollback().await.map_err(self.db("ending a transaction"))?;
                        return Ok(None);
                    }
                    tx.commit().await.map_err(self.db("committing a reopen"))?;
                    self.announce().await;
                    Ok(Some(next))
                }

                async fn reopen_for_review(&self, review: ReviewTrigger) -> Result<Reopened, QueueError> {
                    let done = retry_races(&self.location(), || self.try_reopen(&review)).await?;
                    if matches!(done, Reopened::Iteration(_)) {
                        self.announce().await;
                    }
                    Ok(done)
                }
            }

            impl $queue {
                /// One transaction of [`Intake::reopen_for_review`]: the job's row is locked, so the iteration count,
                /// the state and the triggers are read and changed as one decision.
                async fn try_reopen(&self, review: &ReviewTrigger) -> Result<Reopened, EnqueueError> {
                    let step = |context: &'static str| {
                        move |e: sqlx::Error| {
                            if Self::is_race(&e) {
                                EnqueueError::Race(self.scrub(e.to_string()))
                            } else {
                                EnqueueError::Queue(self.db(context)(e))
                            }
                        }
                    };
                    let delivery = &review.trigger.delivery;
                    let mut tx = self.begin().await.map_err(EnqueueError::Queue)?;
                    let seen: Option<String> =
                        sqlx::query_scalar("SELECT job_id FROM deliveries WHERE key = $1")
                            .bind(delivery)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(step("looking up the delivery"))?;
                    if seen.is_some() {
                        return Ok(Reopened::Duplicate);
                    }
                    let row: Option<(String, String, i32, i32)> = sqlx::query_as(sql(format!(
                        "SELECT state, ticket, iterations, CAST({length} AS integer) FROM jobs WHERE id = $1 {lock}",
                        length = Self::json_length("triggers"),
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(&review.job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(step("reading the job to reopen"))?;
                    let Some((job_state, ticket, iterations, kept)) = row else {
                        return Err(EnqueueError::Queue(QueueError::NotFound(review.job_id.clone())));
                    };
                    let job_state = JobState::parse(&job_state).unwrap_or(JobState::Cancelled);
                    let iterations = u32::try_from(iterations).unwrap_or(0);
                    let full = usize::try_from(kept).unwrap_or(usize::MAX) >= MAX_REVIEW_TRIGGERS;
                    let tagged = |n: u32| {
                        let mut t = review.trigger.clone();
                        if let Some(r) = t.review.as_mut() {
                            r.iteration = n;
                        }
                        t
                    };
                    let outcome = match job_state {
                        // Queued for an iteration that has not started: the comment joins it.
                        JobState::Queued if iterations > 0 => {
                            if full {
                                Reopened::Overflow
                            } else {
                                sqlx::query(sql(format!(
                                    "UPDATE jobs SET triggers = {appended}, updated_at = {now} WHERE id = $2",
                                    appended = Self::json_append("triggers", "$1"),
                                    now = Self::NOW,
                                )))
                                .bind(Json(&tagged(iterations)))
                                .bind(&review.job_id)
                                .execute(&mut *tx)
                                .await
                                .map_err(step("recording the review trigger"))?;
                                Reopened::Joined(iterations)
                            }
                        }
                        // Running an iteration: the comment waits for the next one (started by `reopen_pending`).
                        JobState::Running if iterations > 0 => {
                            if iterations >= review.max_iterations {
                                Reopened::CapReached(iterations)
                            } else if full {
                                Reopened::Overflow
                            } else {
                                sqlx::query(sql(format!(
                                    "UPDATE jobs SET triggers = {appended}, updated_at = {now} WHERE id = $2",
                                    appended = Self::json_append("triggers", "$1"),
                                    now = Self::NOW,
                                )))
                                .bind(Json(&tagged(iterations + 1)))
                                .bind(&review.job_id)
                                .execute(&mut *tx)
                                .await
                                .map_err(step("recording the review trigger"))?;
                                Reopened::Pending(iterations + 1)
                            }
                        }
                        JobState::Succeeded | JobState::Failed => {
                            if iterations >= review.max_iterations {
                                Reopened::CapReached(iterations)
                            } else if full {
                                Reopened::Overflow
                            } else {
                                let other: Option<String> = sqlx::query_scalar(sql(format!(
                                    "SELECT state FROM jobs WHERE ticket = $1 AND state IN {open}",
                                    open = open_states!(),
                                )))
                                .bind(&ticket)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(step("looking up an open job"))?;
                                if let Some(other) = other {
                                    tx.rollback().await.map_err(|e| EnqueueError::Queue(self.db("ending a transaction")(e)))?;
                                    return Ok(Reopened::Busy(JobState::parse(&other).unwrap_or(JobState::Running)));
                                }
                                let next = iterations + 1;
                                // The one-open-job-per-ticket index decides a race with a concurrent enqueue.
                                sqlx::query(sql(format!(
                                    "UPDATE jobs SET state = 'queued', attempts = 0, max_attempts = $1, \
                                     not_before = {now}, lease_owner = NULL, lease_expires = NULL, last_error = NULL, \
                                     approval_expiry_unreported = {f}, iterations = $2, \
                                     triggers = {appended}, updated_at = {now} WHERE id = $4",
                                    now = Self::NOW,
                                    f = Self::FALSE,
                                    appended = Self::json_append("triggers", "$3"),
                                )))
                                .bind(i32::try_from(review.max_attempts).unwrap_or(i32::MAX))
                                .bind(i32::try_from(next).unwrap_or(i32::MAX))
                                .bind(Json(&tagged(next)))
                                .bind(&review.job_id)
                                .execute(&mut *tx)
                                .await
                                .map_err(step("reopening the job"))?;
                                Reopened::Iteration(next)
                            }
                        }
                        other => {
                            tx.rollback().await.map_err(|e| EnqueueError::Queue(self.db("ending a transaction")(e)))?;
                            return Ok(Reopened::Busy(other));
                        }
                    };
                    let recorded: Option<String> = sqlx::query_scalar(sql(format!(
                        "INSERT INTO deliveries (key, job_id, created_at) VALUES ($1, $2, {now}) \
                         ON CONFLICT (key) DO NOTHING RETURNING key",
                        now = Self::NOW,
                    )))
                    .bind(delivery)
                    .bind(&review.job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(step("recording the delivery"))?;
                    if recorded.is_none() {
                        return Err(EnqueueError::Race(
                            "another reopen recorded the same delivery".into(),
                        ));
                    }
                    tx.commit().await.map_err(step("committing the reopen"))?;
                    Ok(outcome)
                }

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
