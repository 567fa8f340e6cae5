//! `drafter serve`'s worker pool: claim jobs from the queue, run each through the same pipeline as `drafter run`,
//! keep their leases alive, and finish them exactly once.
//!
//! Caps: at most `serve.concurrency` jobs at once, and `serve.per_project` per Jira project (projects at their cap
//! are excluded from the claim, so their jobs wait without blocking other projects).
//!
//! Leases: each running job has a heartbeat task renewing its lease every `serve.heartbeat_secs`. A heartbeat that
//! reports the lease lost (an operator cancelled the job, or this worker stalled past the lease and another worker
//! took the job over) stops the job at once: its pipeline future is dropped and its container removed.
//!
//! Kill switch: while the queue is paused (`drafter pause`), claims find nothing; the pool says so once per pause
//! (who and why), not at every poll, and once more when the queue is resumed. Jobs already running go on unless
//! they were cancelled (`drafter pause --cancel-running`), which their heartbeats notice.
//!
//! Approvals: every [`APPROVAL_SWEEP`] the pool fails lapsed approval requests ([`Admin::expire_approvals`](crate::queue::Admin::expire_approvals)) and
//! logs the jobs failed that way (claims sweep them too; either way each id is handed out once).
//!
//! Shutdown (mini-redis style): the `shutdown` future resolving stops claiming; running jobs get
//! `serve.drain_timeout_secs` to finish; whatever is still running then is cancelled, its container removed and its
//! lease released, so another worker picks it up without waiting for the lease to expire.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::jira::{self, Notice};
use crate::policy::Policy;
use crate::queue::{Admin, Claim, Pause, Queue};

use super::{scrub, Services};

mod task;

use task::JobTask;

/// How often the pool looks for lapsed approval requests.
pub const APPROVAL_SWEEP: Duration = Duration::from_secs(30);

/// How often the pool prunes old delivery keys (`serve.delivery_retention_days`).
pub const DELIVERY_PRUNE: Duration = Duration::from_secs(300);

/// What a pool did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Jobs that succeeded here.
    pub succeeded: u64,
    /// Attempts that failed and were scheduled for a retry.
    pub retried: u64,
    /// Jobs that failed for good here.
    pub failed: u64,
    /// Jobs handed back at shutdown.
    pub released: u64,
    /// Jobs stopped because their lease was lost (cancelled, or taken over).
    pub lost: u64,
    /// The most jobs this pool ran at the same time.
    pub max_concurrent: usize,
}

/// This process's worker id: host, pid and a random part (so a restarted process on the same host is a new worker).
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let mut rnd = [0u8; 3];
    let _ = getrandom::fill(&mut rnd);
    format!("{host}:{}:{}", std::process::id(), hex::encode(rnd))
}

#[derive(Default)]
struct Running {
    total: usize,
    per_project: HashMap<String, usize>,
    stats: PoolStats,
}

fn lock(m: &Mutex<Running>) -> MutexGuard<'_, Running> {
    // A job task that panicked must not stop the pool's bookkeeping.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One job's place under the global and per-project caps. Dropping it gives the place back, so a job task that
/// panics (or is aborted) cannot keep a slot forever: after `concurrency` such jobs the pool would never claim again.
struct Slot {
    running: Arc<Mutex<Running>>,
    project: String,
}

impl Slot {
    fn take(running: &Arc<Mutex<Running>>, project: &str) -> Slot {
        let mut r = lock(running);
        r.total += 1;
        *r.per_project.entry(project.to_string()).or_default() += 1;
        r.stats.max_concurrent = r.stats.max_concurrent.max(r.total);
        Slot {
            running: running.clone(),
            project: project.to_string(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = lock(&self.running);
        r.total = r.total.saturating_sub(1);
        if let Some(n) = r.per_project.get_mut(&self.project) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                r.per_project.remove(&self.project);
            }
        }
    }
}

/// Runs the pool until `shutdown` resolves and the drain is over. Every job runs over `services`, built once for
/// the process: their `worker_id` is the lease owner of every claim, and their `ledger` should be this `queue`'s
/// (so that budgets are shared by every worker of the queue).
pub async fn run(
    services: Arc<Services>,
    queue: Arc<dyn Queue>,
    shutdown: impl Future<Output = ()>,
) -> PoolStats {
    let config = services.config.clone();
    let worker = services.worker_id.clone();
    let running = Arc::new(Mutex::new(Running::default()));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let idle = Duration::from_millis(config.serve.idle_poll_ms);
    let lease = Duration::from_secs(config.serve.lease_secs);
    tokio::pin!(shutdown);
    tracing::info!(%worker, queue = queue.backend(), concurrency = config.serve.concurrency,
        per_project = config.serve.per_project, "worker pool started");
    // The pause last reported, so that a pause is logged once, not at every idle poll.
    let mut pause_seen: Option<Pause> = None;
    let mut next_sweep = tokio::time::Instant::now();
    let mut next_prune = tokio::time::Instant::now();

    loop {
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + APPROVAL_SWEEP;
            expire_approvals(queue.as_ref(), &services).await;
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + DELIVERY_PRUNE;
            prune_deliveries(queue.as_ref(), &config).await;
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a job task panicked");
            }
        }
        let current = services.policy.get();
        let (full, exclude) = {
            let r = lock(&running);
            let mut exclude: Vec<String> = r
                .per_project
                .iter()
                .filter(|(_, n)| **n >= config.serve.per_project)
                .map(|(p, _)| p.clone())
                .collect();
            exclude.extend(teams_at_cap(&current, &r.per_project));
            exclude.sort();
            exclude.dedup();
            (r.total >= config.serve.concurrency, exclude)
        };
        let claimed = if full {
            None
        } else {
            let claim = Claim {
                worker: worker.clone(),
                lease,
                exclude_projects: exclude,
            };
            match queue.claim(&claim).await {
                Ok(None) => {
                    note_pause(queue.as_ref(), &mut pause_seen).await;
                    None
                }
                Ok(Some(job)) => {
                    if let Some(p) = pause_seen.take() {
                        tracing::warn!(paused_by = %p.by, "queue resumed; claiming again");
                    }
                    Some(job)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming from the queue failed; retrying");
                    None
                }
            }
        };
        match claimed {
            Some(job) => {
                // Taken here, given back by the guard's drop: whatever way the task ends, panics included.
                let slot = Slot::take(&running, &job.project);
                let task = JobTask {
                    policy: current.clone(),
                    services: services.clone(),
                    queue: queue.clone(),
                    running: running.clone(),
                    cancel: cancel_rx.clone(),
                };
                let span = tracing::info_span!("job", job_id = %job.id, ticket = %job.ticket);
                tasks.spawn(task.run(job, slot).instrument(span));
            }
            None => {
                // Nothing to do (or no room): wait for a slot, a tick, or the end.
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = queue.wait_for_work(idle) => {}
                    Some(done) = tasks.join_next(), if full => {
                        if let Err(e) = done {
                            tracing::error!(error = %e, "a job task panicked");
                        }
                    }
                }
            }
        }
        // A claim loop that always finds work must still notice the shutdown.
        if futures_util::FutureExt::now_or_never(&mut shutdown).is_some() {
            break;
        }
    }

    let in_flight = lock(&running).total;
    tracing::info!(
        in_flight,
        drain_secs = config.serve.drain_timeout_secs,
        "stopped claiming; draining"
    );
    let drain = tokio::time::sleep(Duration::from_secs(config.serve.drain_timeout_secs));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => break,
                Some(Err(e)) => tracing::error!(error = %e, "a job task panicked"),
                Some(Ok(())) => {}
            },
            _ = &mut drain, if !*cancel_tx.borrow() => {
                tracing::warn!(left = lock(&running).total, "drain timeout: cancelling and releasing the remaining jobs");
                let _ = cancel_tx.send(true);
            }
        }
    }
    let stats = lock(&running).stats.clone();
    tracing::info!(?stats, "worker pool stopped");
    stats
}

/// Projects of teams whose `concurrency.team` cap is reached by the jobs running here: their jobs wait.
fn teams_at_cap(policy: &Policy, per_project: &HashMap<String, usize>) -> Vec<String> {
    let mut out = Vec::new();
    for team in &policy.teams {
        let Some(cap) = team.rules.concurrency.team else {
            continue;
        };
        let running: usize = team
            .projects
            .iter()
            .map(|p| per_project.get(p).copied().unwrap_or(0))
            .sum();
        if running >= cap {
            out.extend(team.projects.iter().cloned());
        }
    }
    out
}

/// After a claim found nothing: logs a pause the first time it is seen (and a resume once it is lifted), so an idle
/// pool polling a paused queue does not repeat itself.
async fn note_pause(queue: &dyn Admin, seen: &mut Option<Pause>) {
    match queue.paused().await {
        Ok(Some(p)) => {
            if seen.as_ref() != Some(&p) {
                tracing::warn!(paused_by = %p.by, since = %p.at, "queue paused by {}: {}", p.by, p.reason);
                *seen = Some(p);
            }
        }
        Ok(None) => {
            if let Some(p) = seen.take() {
                tracing::warn!(paused_by = %p.by, "queue resumed; claiming again");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read the pause switch"),
    }
}

/// Fails lapsed approval requests and logs the jobs failed that way.
async fn expire_approvals(queue: &dyn Admin, services: &Services) {
    let config = &services.config;
    let ids = match queue.expire_approvals().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "could not expire approval requests");
            return;
        }
    };
    if ids.is_empty() {
        return;
    }
    let jira = &services.jira;
    for id in ids {
        tracing::warn!(job = %id, "job failed: nobody approved it before its approval request expired");
        // The ticket hears about it once: each expired job is returned by exactly one sweep.
        let Ok(Some(job)) = queue.get(&id).await else {
            continue;
        };
        let reason = scrub(
            config,
            job.last_error
                .as_deref()
                .unwrap_or("the approval request expired"),
        );
        let sealed = match services.current_key() {
            Ok(key) => {
                super::phases::seal::seal_expired(config, &key, &services.worker_id, &job, &reason)
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot read the runner key: the expired job stays unsealed");
                None
            }
        };
        let proof = sealed.map(|digest| jira::ProofRef {
            job_id: id.clone(),
            digest,
        });
        let notice = Notice::Failed {
            job_id: id.clone(),
            reason,
            proof,
        };
        if let Err(e) = jira.notify(&job.ticket, &notice).await {
            tracing::warn!(job = %id, error = %e, "could not report the expired approval on the ticket");
        }
    }
}

/// Forgets the delivery keys of jobs finished more than `serve.delivery_retention_days` ago.
async fn prune_deliveries(queue: &dyn Admin, config: &crate::config::Config) {
    let days = config.serve.delivery_retention_days;
    let older_than = Duration::from_secs(days.saturating_mul(86_400));
    match queue.prune_deliveries(older_than).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            pruned = n,
            days,
            "forgot old delivery keys of finished jobs"
        ),
        Err(e) => tracing::warn!(error = %e, "could not prune old delivery keys"),
    }
}

#[cfg(test)]
mod tests {
    use super::task::unwind;
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_gives_its_slot_back() {
        let running = Arc::new(Mutex::new(Running::default()));
        let mut tasks = JoinSet::new();
        // As many panics as a pool of concurrency 3 has slots: on the old code the pool never claimed again.
        for _ in 0..3 {
            let slot = Slot::take(&running, "PROJ");
            tasks.spawn(async move {
                let _slot = slot;
                tokio::task::yield_now().await;
                panic!("job blew up");
            });
        }
        assert_eq!(lock(&running).total, 3);
        while let Some(done) = tasks.join_next().await {
            assert!(done.unwrap_err().is_panic());
        }
        let r = lock(&running);
        assert_eq!(r.total, 0, "every slot is free again");
        assert!(r.per_project.is_empty(), "{:?}", r.per_project);
        assert_eq!(r.stats.max_concurrent, 3);
    }

    #[tokio::test]
    async fn a_panic_becomes_a_failure_with_its_message() {
        let running = Arc::new(Mutex::new(Running::default()));
        let slot = Slot::take(&running, "PROJ");
        let out = unwind(async move {
            let _slot = slot;
            let summary: Option<u32> = std::hint::black_box(None);
            summary.expect("the ticket had no summary")
        })
        .await;
        assert_eq!(out.unwrap_err(), "the ticket had no summary");
        assert_eq!(lock(&running).total, 0);
        let fine = unwind(async { 7 }).await;
        assert_eq!(fine, Ok(7));
        let formatted = unwind(async { panic!("job {} failed", 12) }).await;
        assert_eq!(formatted, Err::<(), _>("job 12 failed".into()));
    }
}
