//! [`run_job`]: one attempt, start to end: the phases, the run statement, then the events that report it.

use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use crate::config::Config;
use crate::forge::{ForgeError, JobForge};

use super::error::{self, JobError};
use super::events::{Event, Listener, Stage};
use super::job::{Job, JobSpec};
use super::outcome::{Delivered, JobOutcome};
use super::services::Services;
use super::{job_dir, phases, record, scrub};

/// Runs one attempt of a job to the end. Events go to `events` (if the receiver is gone they are dropped). Every
/// attempt ends with a run statement in the job's proof bundle, whatever the outcome; final failures are commented
/// on the ticket (with the bundle digest) before this returns.
pub async fn run_job(s: &Services, spec: &JobSpec, events: UnboundedSender<Event>) -> JobOutcome {
    run_with(s, spec, Vec::new(), events).await
}

/// [`run_job`] with `more` listeners after the ticket's and `job.json`'s (the pool's queue progress).
pub(crate) async fn run_with<'a>(
    s: &'a Services,
    spec: &'a JobSpec,
    more: Vec<Box<dyn Listener + 'a>>,
    events: UnboundedSender<Event>,
) -> JobOutcome {
    let span = tracing::info_span!("job", job_id = %spec.job_id, ticket = %spec.ticket);
    async move {
        let config = &s.config;
        let dir = job_dir(&config.data_dir, &spec.job_id);
        // Nothing is told to anyone before the job directory and the runner key are there.
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return error::io(format!("creating {}", dir.display()))(e).into();
        }
        let key = match s.current_key() {
            Ok(key) => key,
            Err(e) => return JobError::Proof(e).into(),
        };
        // In order: the ticket hears each event (comments, then its link and status) before `job.json` is written.
        let mut listeners: Vec<Box<dyn Listener + 'a>> = vec![
            Box::new(phases::report::TicketReporter {
                jira: &s.jira,
                config,
            }),
            Box::new(phases::panel::TicketPanel {
                jira: &s.jira,
                config,
            }),
            Box::new(record::RecordWriter {
                signer: key.public_hex(),
            }),
        ];
        listeners.extend(more);
        let mut job = Job::new(spec, dir, &s.worker_id, key, listeners, events);
        // The job's forge credential lives until the PR body has its digest; then an App token is revoked.
        let mut forge = None;
        let mut outcome = JobOutcome::from(phases::pipeline(s, &mut job, &mut forge).await);

        // The run statement ends the attempt's record; its digest goes to the PR and the ticket.
        let digest = match phases::seal::seal(config, &job.key.clone(), &mut job, &outcome) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "could not write the run statement");
                if let JobOutcome::Delivered(_) = outcome {
                    outcome = JobOutcome::Failed(JobError::Proof(e));
                }
                None
            }
        };
        if let (JobOutcome::Delivered(delivered), Some(d)) = (&mut outcome, &digest) {
            if let Err(e) = deliver(s, forge.as_ref(), &job, delivered, d).await {
                outcome = e.into();
            }
        }
        if let Some(forge) = &forge {
            // Whatever the outcome: a revocation that fails only costs the token's remaining hour.
            if let Err(e) = forge.revoke().await {
                tracing::warn!(error = %e, "could not revoke the job's GitHub token");
            }
        }
        ended(config, &job, &outcome, digest.as_deref()).await;
        job.removed().await;

        let delivered = match &outcome {
            JobOutcome::Delivered(d) => Some(d.clone()),
            _ => None,
        };
        let finished = Event::Finished {
            outcome: delivered.clone(),
            error: outcome.error().map(|e| scrub(config, &e)),
            retryable: outcome.is_retryable(),
            digest,
        };
        // Its listeners only log their failures.
        let _ = job.emit(finished).await;
        if let Some(d) = delivered {
            let _ = job.emit(Event::Done(d)).await;
        }
        outcome
    }
    .instrument(span)
    .await
}

/// After the run statement: the PR body gets the bundle digest, then the ticket hears the result with it.
async fn deliver(
    s: &Services,
    forge: Option<&JobForge>,
    job: &Job<'_>,
    delivered: &mut Delivered,
    digest: &str,
) -> Result<(), JobError> {
    match delivered {
        Delivered::PullRequest {
            url,
            number,
            branch,
            repo,
            bundle_digest,
            ..
        } => {
            *bundle_digest = digest.to_string();
            // A pull request is only opened with the job's credential.
            let forge = forge.ok_or_else(|| {
                JobError::Forge(ForgeError::Unexpected {
                    what: "completing the pull request".into(),
                    message: "the job has no forge credential".into(),
                })
            })?;
            let github = forge.client().await?;
            phases::pull_request::complete(&s.config, &github, job, repo, *number, digest).await?;
            // A follow-up answers its reviewers where they asked, with the sealed bundle's digest.
            phases::review::answer(&s.config, &github, job, repo, *number, digest).await?;
            job.stage(Stage::Report, job.ticket()).await?;
            job.emit(Event::PrOpened {
                url: url.clone(),
                repo: repo.clone(),
                number: *number,
                branch: branch.clone(),
                digest: digest.to_string(),
                iteration: job.spec.review.as_ref().map_or(0, |r| r.iteration),
            })
            .await
        }
        Delivered::NoChanges {
            summary,
            bundle_digest,
            ..
        } => {
            *bundle_digest = digest.to_string();
            job.stage(Stage::Report, "no changes").await?;
            job.emit(Event::NoChanges {
                summary: summary.clone(),
                digest: digest.to_string(),
            })
            .await
        }
    }
}

/// When the attempt delivered nothing: logs why and tells the listeners (approval asked for, refused, failed finally
/// or to be retried).
async fn ended(config: &Config, job: &Job<'_>, outcome: &JobOutcome, digest: Option<&str>) {
    let digest = digest.map(str::to_string);
    let event = match outcome {
        JobOutcome::Delivered(_) => return,
        JobOutcome::AwaitingApproval(ask) => Event::AwaitingApproval(ask.clone()),
        JobOutcome::Refused(r) => {
            tracing::error!(error = %scrub(config, &r.to_string()), retryable = false, "job failed");
            Event::Refused {
                rule: r.rule.clone(),
                message: scrub(config, &r.message),
                digest,
            }
        }
        JobOutcome::Failed(e) => {
            let reason = scrub(config, &e.to_string());
            let attempt = job.spec.attempt;
            let last = attempt.is_final_for(e);
            if !last {
                tracing::warn!(error = %reason, attempt = attempt.number, max = attempt.max,
                    "attempt failed; it will be retried");
            } else {
                tracing::error!(error = %reason, retryable = e.is_retryable(), "job failed");
            }
            Event::Failed {
                reason,
                retryable: e.is_retryable(),
                last,
                digest,
            }
        }
    };
    // The ticket's listener logs what it could not post: the job has ended either way.
    let _ = job.emit(event).await;
}
