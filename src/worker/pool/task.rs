//! One claimed job's task: drives the job under its lease (heartbeat, fence, cancellation), turns a panic into a
//! failure, and finishes the job in the queue exactly once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::policy::{Policy, Who};
use crate::queue::{ApprovalRequest, Failure, Job, JobState, Leases, Queue, QueueError};

use super::super::events::{Event, Listener};
use super::super::run::run_with;
use super::super::{
    scrub, Ask, Attempt, JobError, JobOutcome, JobSpec, ReviewAsk, ReviewIteration, Services,
};
use super::{lock, Running, Slot};

/// Runs a job task's future, turning a panic into its message: the pool must survive a job that panics and
/// report it like any other failure.
pub(super) async fn unwind<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        })
}

/// How one job task ended, for the stats.
pub(super) enum Ended {
    Succeeded,
    Retried,
    Failed,
    Released,
    Lost,
}

/// Who set a job off, from its first trigger (the one that created it).
pub(super) fn origin_of(job: &Job) -> Who {
    match job.triggers.first() {
        Some(t) if t.source == "cli" => {
            Who::Operator(t.triggered_by.clone().unwrap_or_else(|| "cli".into()))
        }
        Some(t) => Who::Jira(t.triggered_by.clone()),
        None => Who::Jira(None),
    }
}

/// The follow-up iteration a reopened job runs: the review comments tagged with its current iteration.
pub(super) fn review_of(job: &Job) -> Option<ReviewIteration> {
    if job.iterations == 0 {
        return None;
    }
    let comments: Vec<ReviewAsk> = job
        .triggers
        .iter()
        .filter_map(|t| {
            let at = t.review.as_ref()?;
            (at.iteration == job.iterations).then(|| ReviewAsk {
                at: (**at).clone(),
                text: t.text.clone().unwrap_or_default(),
            })
        })
        .collect();
    Some(ReviewIteration {
        iteration: job.iterations,
        comments,
    })
}

/// Everything one job task needs.
pub(super) struct JobTask {
    /// The policy this job runs under, fixed when it was claimed.
    pub(super) policy: Arc<Policy>,
    /// What every job of this process runs over.
    pub(super) services: Arc<Services>,
    pub(super) queue: Arc<dyn Queue>,
    pub(super) running: Arc<Mutex<Running>>,
    pub(super) cancel: watch::Receiver<bool>,
}

impl JobTask {
    pub(super) async fn run(self, job: Job, slot: Slot) {
        let ended = match unwind(self.drive(&job)).await {
            Ok(ended) => ended,
            Err(panic) => self.panicked(&job, &panic).await,
        };
        // The slot is free before the stats say the job ended, so whoever reads them can claim again.
        drop(slot);
        let mut r = lock(&self.running);
        match ended {
            Ended::Succeeded => r.stats.succeeded += 1,
            Ended::Retried => r.stats.retried += 1,
            Ended::Failed => r.stats.failed += 1,
            Ended::Released => r.stats.released += 1,
            Ended::Lost => r.stats.lost += 1,
        }
    }

    async fn drive(&self, job: &Job) -> Ended {
        // Every lease-holder call presents this claim's fencing token, not just the worker id: a stalled attempt of
        // this same process cannot act for a later claim of the job either.
        let worker = job
            .lease_token()
            .unwrap_or_else(|| self.services.worker_id.clone());
        let queue = self.queue.clone();
        tracing::info!(
            attempt = job.attempts,
            max = job.max_attempts,
            "job claimed"
        );

        // The fence and the progress marker both act as this claim's lease holder.
        let lease = ClaimLease {
            queue: queue.clone(),
            job_id: job.id.clone(),
            token: worker.clone(),
        };
        let spec = JobSpec {
            ticket: job.ticket.clone(),
            job_id: job.id.clone(),
            attempt: Attempt {
                number: job.attempts,
                max: job.max_attempts,
            },
            // Review comments are not Jira requests: they reach the model in the iteration's review block.
            requests: job
                .triggers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.review.is_none())
                .filter_map(|(i, t)| {
                    Some(Ask {
                        by: t.triggered_by.clone(),
                        operator: t.source == "cli",
                        first: i == 0,
                        text: t.text.clone()?,
                    })
                })
                .collect(),
            origin: origin_of(job),
            event: match job.triggers.iter().rev().find(|t| t.review.is_some()) {
                // The run statement says which iteration this attempt is, and the comment that opened it.
                Some(t) if job.iterations > 0 => format!(
                    "review:iteration-{} {} {}",
                    job.iterations, t.source, t.delivery
                ),
                _ => job
                    .triggers
                    .first()
                    .map(|t| format!("{} {}", t.source, t.delivery))
                    .unwrap_or_else(|| "unknown".into()),
            },
            // An approval counts with what it approved; one stored without that (before approvals were bound to
            // their subject) is asked for again.
            approved_by: job
                .approval
                .as_ref()
                .filter(|a| a.subject.is_some())
                .and_then(|a| a.approved_by.clone()),
            approved: job
                .approval
                .as_ref()
                .filter(|a| a.approved_by.is_some())
                .and_then(|a| a.subject.clone()),
            policy: self.policy.clone(),
            fence: Some(Arc::new(lease.clone())),
            review: review_of(job),
        };
        // The policy hash is on the job before anything runs: an auditor sees which policy governed it.
        if let Err(e) = queue
            .set_policy_hash(&job.id, &worker, &self.policy.hash)
            .await
        {
            tracing::warn!(error = %e, "could not record the policy hash on the job");
        }
        let config = &self.services.config;
        // Every reader of this job's events is a listener; the channel has no receiver here.
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let pipeline = run_with(&self.services, &spec, vec![Box::new(lease)], events);
        let heartbeat = heartbeat(
            queue.clone(),
            &job.id,
            &worker,
            Duration::from_secs(config.serve.heartbeat_secs),
            Duration::from_secs(config.serve.lease_secs),
        );
        let mut cancel_rx = self.cancel.clone();
        let cancel = async {
            // The borrow guard must not live across the handler's awaits.
            let _ = cancel_rx.wait_for(|c| *c).await.map(|_| ());
        };
        let ended = tokio::select! {
            outcome = pipeline => Some(outcome),
            () = heartbeat => None,
            () = cancel => {
                self.remove_container(&job.id).await;
                if let Err(e) = queue.release(&job.id, &worker).await {
                    tracing::warn!(error = %e, "could not release the job");
                }
                tracing::info!("job released at shutdown");
                return Ended::Released;
            }
        };
        let Some(outcome) = ended else {
            // Cancelled by an operator, or taken over after this worker stalled: stop touching it.
            self.remove_container(&job.id).await;
            tracing::warn!("lease lost (cancelled, or reclaimed by another worker): job stopped");
            return Ended::Lost;
        };
        let ended = self.finish(job, &worker, outcome).await;
        // Review comments that came in while this iteration ran start the next one.
        if job.iterations > 0 && matches!(ended, Ended::Succeeded | Ended::Failed) {
            let cap = self
                .policy
                .review_rule(&job.project)
                .map_or(0, |(_, cap)| cap);
            match queue.reopen_pending(&job.id, cap).await {
                Ok(Some(n)) => tracing::info!(
                    iteration = n,
                    "queued again for review comments that came in meanwhile"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for pending review comments"),
            }
        }
        ended
    }

    /// Records the attempt's outcome in the queue.
    async fn finish(&self, job: &Job, worker: &str, outcome: JobOutcome) -> Ended {
        let (queue, worker) = (&self.queue, worker.to_string());
        let config = &self.services.config;
        match outcome {
            JobOutcome::Delivered(delivered) => {
                let value = serde_json::to_value(&delivered).unwrap_or_default();
                match queue.complete(&job.id, &worker, value).await {
                    Ok(()) => {
                        tracing::info!("job succeeded");
                        Ended::Succeeded
                    }
                    Err(e) => {
                        // The work is delivered; a retry finds the branch, PR and comment and completes it.
                        tracing::warn!(error = %e, "could not mark the job succeeded");
                        Ended::Lost
                    }
                }
            }
            JobOutcome::AwaitingApproval(ask) => {
                let request = ApprovalRequest {
                    reason: ask.reason,
                    approvers: vec![ask.approvers],
                    requested_at: ask.requested_at,
                    expires_at: ask.requested_at
                        + chrono::Duration::hours(ask.ttl_hours.min(24 * 365) as i64),
                    subject: ask.subject,
                };
                match queue.await_approval(&job.id, &worker, request).await {
                    Ok(()) => {
                        tracing::info!("job waits for approval");
                        Ended::Released
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not park the job for approval");
                        Ended::Lost
                    }
                }
            }
            JobOutcome::Failed(JobError::LeaseLost { before }) => {
                // Whoever holds the job now finishes it; this attempt touches nothing more.
                self.remove_container(&job.id).await;
                tracing::warn!(%before, "lease lost (taken over, or cancelled): attempt stopped");
                Ended::Lost
            }
            JobOutcome::Refused(r) => {
                let error = scrub(config, &r.to_string());
                self.fail(&job.id, &worker, Failure::Permanent { error })
                    .await
            }
            JobOutcome::Failed(e) => {
                let error = scrub(config, &e.to_string());
                let failure = if e.is_retryable() {
                    Failure::Retryable {
                        error,
                        retry_after: e.retry_after(),
                    }
                } else {
                    Failure::Permanent { error }
                };
                self.fail(&job.id, &worker, failure).await
            }
        }
    }

    /// Hands a failed attempt back to the queue, which retries it or fails the job.
    async fn fail(&self, job_id: &str, token: &str, failure: Failure) -> Ended {
        match self.queue.fail(job_id, token, failure).await {
            Ok(JobState::Queued) => {
                tracing::info!("attempt failed; retry scheduled");
                Ended::Retried
            }
            Ok(_) => Ended::Failed,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the failure");
                Ended::Lost
            }
        }
    }

    /// A job whose pipeline panicked: its container goes, and the attempt fails visibly (retryable: a panic is a
    /// bug of this worker, not necessarily of the job) instead of waiting for the lease to lapse in silence.
    async fn panicked(&self, job: &Job, panic: &str) -> Ended {
        let config = &self.services.config;
        tracing::error!(panic = %scrub(config, panic), "the job panicked");
        self.remove_container(&job.id).await;
        let failure = Failure::Retryable {
            error: scrub(config, &format!("the worker panicked: {panic}")),
            retry_after: None,
        };
        let token = job
            .lease_token()
            .unwrap_or_else(|| self.services.worker_id.clone());
        match self.queue.fail(&job.id, &token, failure).await {
            Ok(JobState::Queued) => Ended::Retried,
            Ok(_) => Ended::Failed,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the panic as a failure");
                Ended::Lost
            }
        }
    }

    async fn remove_container(&self, job_id: &str) {
        if let Err(e) = self.services.sandbox.remove_job(job_id).await {
            tracing::warn!(error = %e, "could not remove the job's container");
        }
    }
}

/// A job's claim on the queue, held by its lease token. It is the job's fence (the token must still hold the lease,
/// see [`Leases::holds`]) and the listener that turns its stages into the progress marker an operator sees in
/// `drafter jobs show`.
#[derive(Clone)]
struct ClaimLease {
    queue: Arc<dyn Leases>,
    job_id: String,
    token: String,
}

#[async_trait::async_trait]
impl super::super::Fence for ClaimLease {
    async fn holds(&self) -> Result<bool, QueueError> {
        self.queue.holds(&self.job_id, &self.token).await
    }
}

#[async_trait::async_trait]
impl Listener for ClaimLease {
    /// Records each stage as it begins; a marker that cannot be written is no reason to stop the job.
    async fn on(&self, _: &super::super::job::Job<'_>, event: &Event) -> Result<(), JobError> {
        if let Event::Stage { stage, .. } = event {
            let value = serde_json::json!({"stage": stage, "at": chrono::Utc::now()});
            let written = self
                .queue
                .set_progress(&self.job_id, &self.token, "stage", value);
            if let Err(e) = written.await {
                tracing::debug!(error = %e, "could not record the stage");
            }
        }
        Ok(())
    }
}

/// Renews the lease until it is lost; returns only then. A failed renewal (database briefly away) is retried until
/// the lease would have run out.
async fn heartbeat(
    queue: Arc<dyn Leases>,
    job_id: &str,
    worker: &str,
    every: Duration,
    lease: Duration,
) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match queue.heartbeat(job_id, worker, lease).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                if last_ok.elapsed() >= lease {
                    return;
                }
            }
        }
    }
}
