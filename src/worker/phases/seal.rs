//! Seal: the run statement that ends every attempt's record, whatever its outcome. It is called, not listened
//! for: the PR body and the ticket comment carry the digest it returns, so it must be written before them.

use std::sync::Arc;

use crate::config::Config;
use crate::proof::bundle::{Outcome, TriggerInfo};
use crate::proof::{self, BundleWriter, ProofError, RunInput, RunnerKey};

use super::super::job::Job;
use super::super::outcome::{Delivered, JobOutcome};
use super::super::{job_dir, scrub};

/// Writes the attempt's run statement; returns the bundle digest.
pub(crate) fn seal(
    config: &Config,
    key: &Arc<RunnerKey>,
    job: &mut Job<'_>,
    result: &JobOutcome,
) -> Result<String, ProofError> {
    let spec = job.spec;
    let progress = &mut job.progress;
    let mut bundle = match progress.bundle.take() {
        Some(b) => b,
        // The agent did not run (a refusal, an earlier failure, a reused branch): open the job's bundle.
        None => BundleWriter::open(
            &job.dir,
            key.clone(),
            &spec.job_id,
            &spec.ticket,
            &spec.policy.hash,
        )?
        .with_retention(progress.retention),
    };
    let outcome = match result {
        JobOutcome::Delivered(Delivered::PullRequest { url, number, .. }) => Outcome {
            result: "pull_request".into(),
            rule: None,
            reason: None,
            retryable: false,
            pr_url: Some(url.clone()),
            pr_number: Some(*number),
        },
        JobOutcome::Delivered(Delivered::NoChanges { .. }) => Outcome {
            result: "no_changes".into(),
            rule: None,
            reason: None,
            retryable: false,
            pr_url: None,
            pr_number: None,
        },
        ended => Outcome {
            result: match ended {
                JobOutcome::Refused(_) => "refused",
                JobOutcome::AwaitingApproval(_) => "awaiting_approval",
                _ => "failed",
            }
            .into(),
            rule: match ended {
                JobOutcome::Refused(r) => Some(r.rule.clone()),
                JobOutcome::AwaitingApproval(_) => Some("approval".into()),
                _ => None,
            },
            reason: ended.error().map(|e| scrub(config, &e)),
            retryable: ended.is_retryable(),
            pr_url: None,
            pr_number: None,
        },
    };
    bundle.run(RunInput {
        team: progress.team.clone(),
        attempt: spec.attempt.number,
        max_attempts: spec.attempt.max,
        ticket_sha256: progress.ticket_sha256.clone(),
        trigger: TriggerInfo {
            by: spec.origin.describe(),
            event: spec.event.clone(),
            approved_by: spec.approved_by.clone(),
        },
        worker_id: job.worker_id.to_string(),
        repo: progress.repo.clone(),
        base: progress.base.clone(),
        branch: progress.branch.clone(),
        change: progress.change.clone(),
        sandbox_image: progress.image.as_ref().map(|i| i.0.clone()),
        sandbox_image_digest: progress.image.as_ref().map(|i| i.1.clone()),
        started_at: job.started,
        finished_at: chrono::Utc::now(),
        decisions: progress.decisions.clone(),
        network: progress.network.clone(),
        credential: progress.credential.clone(),
        fork: progress.fork.clone(),
        outcome,
    })
}

/// Ends the record of a job whose approval request expired, so it never ran again: a run statement with outcome
/// `failed` (rule `approval`), when this host holds the job's bundle. Returns the new bundle digest.
pub(crate) fn seal_expired(
    config: &Config,
    key: &Arc<RunnerKey>,
    worker_id: &str,
    job: &crate::queue::Job,
    reason: &str,
) -> Option<String> {
    let dir = job_dir(&config.data_dir, &job.id);
    let last = proof::bundle::last_run(&dir.join(proof::BUNDLE_FILE))
        .ok()
        .flatten()?;
    let mut bundle = BundleWriter::open(&dir, key.clone(), &job.id, &job.ticket, &last.policy_hash)
        .ok()?
        .with_retention(last.retention);
    let now = chrono::Utc::now();
    let written = bundle.run(RunInput {
        team: last.team,
        attempt: last.attempt,
        max_attempts: last.max_attempts,
        ticket_sha256: None,
        trigger: last.trigger,
        worker_id: worker_id.to_string(),
        repo: last.repo,
        base: last.base,
        branch: None,
        change: None,
        sandbox_image: None,
        sandbox_image_digest: None,
        started_at: now,
        finished_at: now,
        decisions: last.decisions,
        network: None,
        credential: None,
        fork: None,
        outcome: Outcome {
            result: "failed".into(),
            rule: Some("approval".into()),
            reason: Some(reason.to_string()),
            retryable: false,
            pr_url: None,
            pr_number: None,
        },
    });
    match written {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not end the expired job's bundle");
            None
        }
    }
}
