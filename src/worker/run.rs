//! [`run_job`]: one attempt, start to end: the phases, the run statement, then the events that report it.

use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::config::Config;

use super::error::{self, JobError};
use super::events::{self, Event, JobOutcome, Stage};
use super::job::{Job, JobSpec};
use super::services::Services;
use super::{job_dir, phases, record, scrub};

/// Runs one attempt of a job to the end. Events go to `events` (if the receiver is gone they are dropped). Every
/// attempt ends with a run statement in the job's proof bundle, whatever the outcome; final failures are commented
/// on the ticket (with the bundle digest) before this returns.
pub async fn run_job(
    s: &Services,
    spec: &JobSpec,
    events: UnboundedSender<Event>,
) -> Result<JobOutcome, JobError> {
    let span = tracing::info_span!("job", job_id = %spec.job_id, ticket = %spec.ticket);
    async move {
        let config = &s.config;
        let dir = job_dir(&config.data_dir, &spec.job_id);
        std::fs::create_dir_all(&dir).map_err(error::io(format!("creating {}", dir.display())))?;
        let key = s.current_key()?;
        // In order: the ticket hears each event before `job.json` is written.
        let listeners: Vec<Box<dyn events::Listener + '_>> = vec![
            Box::new(phases::report::TicketReporter {
                jira: &s.jira,
                config,
            }),
            Box::new(record::RecordWriter {
                signer: key.public_hex(),
            }),
        ];
        let mut job = Job::new(spec, dir, &s.worker_id, key, listeners, events);
        let mut result = phases::pipeline(s, &mut job).await;

        // The run statement ends the attempt's record; its digest goes to the PR and the ticket.
        let digest = match phases::seal::seal(config, &job.key.clone(), &mut job, &result) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "could not write the run statement");
                if result.is_ok() {
                    result = Err(JobError::Proof(e));
                }
                None
            }
        };
        if let (Ok(outcome), Some(d)) = (&mut result, &digest) {
            if let Err(e) = deliver(s, &job, outcome, d).await {
                result = Err(e);
            }
        }
        if let Err(e) = &result {
            failed(config, &job, e, digest.as_deref()).await;
        }

        let finished = Event::Finished {
            outcome: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(|e| scrub(config, &e.to_string())),
            retryable: result.as_ref().err().is_some_and(JobError::is_retryable),
            digest: digest.clone(),
        };
        // Its listeners only log their failures.
        let _ = job.emit(finished).await;
        if let Ok(outcome) = &result {
            let _ = job.emit(Event::Done(outcome.clone())).await;
        }
        result
    }
    .instrument(span)
    .await
}

/// After the run statement: the PR body gets the bundle digest, then the ticket hears the result with it.
async fn deliver(
    s: &Services,
    job: &Job<'_>,
    outcome: &mut JobOutcome,
    digest: &str,
) -> Result<(), JobError> {
    match outcome {
        JobOutcome::PullRequest {
            url,
            number,
            branch,
            repo,
            bundle_digest,
            ..
        } => {
            *bundle_digest = digest.to_string();
            phases::pull_request::complete(&s.config, &s.forge, job, repo, *number, digest).await?;
            job.stage(Stage::Report, job.ticket());
            job.emit(Event::PrOpened {
                url: url.clone(),
                repo: repo.clone(),
                number: *number,
                branch: branch.clone(),
                digest: digest.to_string(),
            })
            .await
        }
        JobOutcome::NoChanges {
            summary,
            bundle_digest,
            ..
        } => {
            *bundle_digest = digest.to_string();
            job.stage(Stage::Report, "no changes");
            job.emit(Event::NoChanges {
                summary: summary.clone(),
                digest: digest.to_string(),
            })
            .await
        }
    }
}

/// Logs the failure and tells the listeners: approval asked for, refused, failed (finally, or to be retried).
async fn failed(config: &Config, job: &Job<'_>, e: &JobError, digest: Option<&str>) {
    let event = match e {
        JobError::AwaitingApproval {
            reason,
            approvers,
            ttl_hours,
            outdated,
            ..
        } => Event::AwaitingApproval {
            reason: reason.clone(),
            approvers: approvers.clone(),
            ttl_hours: *ttl_hours,
            outdated: outdated.clone(),
        },
        e => {
            let reason = scrub(config, &e.to_string());
            let attempt = job.spec.attempt;
            let last = attempt.is_final_for(e);
            if !last {
                tracing::warn!(error = %reason, attempt = attempt.number, max = attempt.max,
                    "attempt failed; it will be retried");
            } else {
                tracing::error!(error = %reason, retryable = e.is_retryable(), "job failed");
            }
            match e {
                JobError::Refused { rule, message } if last => Event::Refused {
                    rule: rule.clone(),
                    message: scrub(config, message),
                    digest: digest.map(str::to_string),
                },
                _ => Event::Failed {
                    reason,
                    retryable: e.is_retryable(),
                    last,
                    digest: digest.map(str::to_string),
                },
            }
        }
    };
    // The ticket's listener logs what it could not post: the job has ended either way.
    let _ = job.emit(event).await;
}
