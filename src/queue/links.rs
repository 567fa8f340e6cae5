//! [`LinkUpdates`](super::LinkUpdates), pull request states waiting to be told to Jira, for both backends:
//! `impl_links!(Queue)` expands it for a queue type that implements [`Dialect`](super::dialect::Dialect).
//!
//! One row per job in `pr_links`: the last state recorded, its generation (bumped by each new state), and whether
//! Jira still has to be told (`pending`, retried from `not_before`). A told row stays, so the same state delivered
//! or polled again is recognised and changes nothing.

/// How often [`LinkUpdates::record_link`](super::LinkUpdates::record_link) tries again when a concurrent first
/// record for the same job got there first (the second try sees its row).
pub(crate) const RECORD_TRIES: u32 = 3;

macro_rules! impl_links {
    ($queue:ty) => {
        const _: () = {
            use std::time::Duration;

            use serde_json::Value;
            use sqlx::types::Json;

            use $crate::queue::dialect::{sql, Dialect, Lock};
            use $crate::queue::links::RECORD_TRIES;
            use $crate::queue::{
                LinkRecorded, LinkState, LinkUpdate, PendingLink, QueueError, CENTURY,
            };

            impl $queue {
                /// One try of `record_link`: `None` when a concurrent insert won (try again).
                async fn record_link_once(
                    &self,
                    u: &LinkUpdate,
                    hold: Duration,
                ) -> Result<Option<LinkRecorded>, QueueError> {
                    let mut tx = self.begin().await?;
                    let known: Option<(String, i64)> = sqlx::query_as(sql(format!(
                        "SELECT state, generation FROM pr_links WHERE job_id = $1 {lock}",
                        lock = Self::lock(Lock::Update),
                    )))
                    .bind(&u.job_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.db("reading a pull request's recorded state"))?;
                    let generation = match known {
                        None if u.only_if_changed => return Ok(Some(LinkRecorded::Unrecorded)),
                        None => {
                            let done = sqlx::query(sql(format!(
                                "INSERT INTO pr_links (job_id, ticket, state, link, generation, pending, \
                                 attempts, not_before, updated_at) \
                                 VALUES ($1, $2, $3, $4, 1, {t}, 0, {now} + {hold}, {now}) \
                                 ON CONFLICT (job_id) DO NOTHING",
                                t = Self::TRUE,
                                now = Self::NOW,
                                hold = Self::span_sql("$5"),
                            )))
                            .bind(&u.job_id)
                            .bind(&u.ticket)
                            .bind(u.state.as_str())
                            .bind(Json(&u.link))
                            .bind(Self::span(hold.min(CENTURY)))
                            .execute(&mut *tx)
                            .await
                            .map_err(self.db("recording a pull request's state"))?;
                            if done.rows_affected() == 0 {
                                return Ok(None);
                            }
                            1
                        }
                        Some((state, _)) if state == u.state.as_str() => {
                            return Ok(Some(LinkRecorded::Duplicate))
                        }
                        Some((state, _)) if state == LinkState::Merged.as_str() => {
                            return Ok(Some(LinkRecorded::Final))
                        }
                        Some((_, generation)) => {
                            sqlx::query(sql(format!(
                                "UPDATE pr_links SET ticket = $2, state = $3, link = $4, generation = $5, \
                                 pending = {t}, attempts = 0, last_error = NULL, not_before = {now} + {hold}, \
                                 updated_at = {now} WHERE job_id = $1",
                                t = Self::TRUE,
                                now = Self::NOW,
                                hold = Self::span_sql("$6"),
                            )))
                            .bind(&u.job_id)
                            .bind(&u.ticket)
                            .bind(u.state.as_str())
                            .bind(Json(&u.link))
                            .bind(generation + 1)
                            .bind(Self::span(hold.min(CENTURY)))
                            .execute(&mut *tx)
                            .await
                            .map_err(self.db("recording a pull request's state"))?;
                            generation + 1
                        }
                    };
                    tx.commit()
                        .await
                        .map_err(self.db("committing a pull request's state"))?;
                    Ok(Some(LinkRecorded::New(generation)))
                }
            }

            #[async_trait::async_trait]
            impl $crate::queue::LinkUpdates for $queue {
                async fn record_link(
                    &self,
                    update: &LinkUpdate,
                    hold: Duration,
                ) -> Result<LinkRecorded, QueueError> {
                    for _ in 0..RECORD_TRIES {
                        if let Some(done) = self.record_link_once(update, hold).await? {
                            return Ok(done);
                        }
                    }
                    Err(self.error(format!(
                        "recording the state of job {}'s pull request kept conflicting",
                        update.job_id
                    )))
                }

                async fn claim_links(
                    &self,
                    limit: u32,
                    hold: Duration,
                ) -> Result<Vec<PendingLink>, QueueError> {
                    let rows: Vec<(String, String, String, Json<Value>, i64, i64)> =
                        sqlx::query_as(sql(format!(
                            "UPDATE pr_links SET not_before = {now} + {hold}, updated_at = {now} \
                             WHERE job_id IN (SELECT job_id FROM pr_links WHERE pending = {t} \
                             AND not_before <= {now} ORDER BY not_before LIMIT $1 {lock}) \
                             RETURNING job_id, ticket, state, link, generation, attempts",
                            t = Self::TRUE,
                            now = Self::NOW,
                            hold = Self::span_sql("$2"),
                            lock = Self::lock(Lock::SkipLocked),
                        )))
                        .bind(i64::from(limit))
                        .bind(Self::span(hold.min(CENTURY)))
                        .fetch_all(self.pool())
                        .await
                        .map_err(self.db("claiming pull request states to tell"))?;
                    rows.into_iter()
                        .map(|(job_id, ticket, state, link, generation, attempts)| {
                            let state = LinkState::parse(&state).ok_or_else(|| {
                                self.error(format!("job {job_id}: unknown pull request state {state:?}"))
                            })?;
                            Ok(PendingLink {
                                job_id,
                                ticket,
                                state,
                                link: link.0,
                                generation,
                                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                            })
                        })
                        .collect()
                }

                async fn link_told(&self, job_id: &str, generation: i64) -> Result<(), QueueError> {
                    let done = sqlx::query(sql(format!(
                        "UPDATE pr_links SET pending = {f}, last_error = NULL, updated_at = {now} \
                         WHERE job_id = $1 AND generation = $2",
                        f = Self::FALSE,
                        now = Self::NOW,
                    )))
                    .bind(job_id)
                    .bind(generation)
                    .execute(self.pool())
                    .await
                    .map_err(self.db("recording a pull request state as told"))?;
                    if done.rows_affected() == 0 {
                        // A newer state was recorded meanwhile, and may have been told before this older one
                        // landed: tell it again.
                        sqlx::query(sql(format!(
                            "UPDATE pr_links SET pending = {t}, not_before = {now}, updated_at = {now} \
                             WHERE job_id = $1 AND generation <> $2",
                            t = Self::TRUE,
                            now = Self::NOW,
                        )))
                        .bind(job_id)
                        .bind(generation)
                        .execute(self.pool())
                        .await
                        .map_err(self.db("recording a pull request state as told"))?;
                    }
                    Ok(())
                }

                async fn link_failed(
                    &self,
                    job_id: &str,
                    generation: i64,
                    error: &str,
                    retry_in: Duration,
                ) -> Result<(), QueueError> {
                    sqlx::query(sql(format!(
                        "UPDATE pr_links SET attempts = attempts + 1, last_error = $3, \
                         not_before = {now} + {wait}, updated_at = {now} \
                         WHERE job_id = $1 AND generation = $2 AND pending = {t}",
                        t = Self::TRUE,
                        now = Self::NOW,
                        wait = Self::span_sql("$4"),
                    )))
                    .bind(job_id)
                    .bind(generation)
                    .bind(error)
                    .bind(Self::span(retry_in.min(CENTURY)))
                    .execute(self.pool())
                    .await
                    .map_err(self.db("recording a failed pull request state"))?;
                    Ok(())
                }
            }
        };
    };
}
