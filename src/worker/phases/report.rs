//! Report: the ticket's comments, a listener on the job's events. One "started" comment per job, one "PR opened"
//! comment per PR (and per review iteration) and one "no changes" comment per job, however many attempts it takes
//! (a retry finds its own by the notice's dedup key); the fence is asked right before each comment; a failure is
//! told only when it is final.

use crate::config::Config;
use crate::jira::{self, JiraClient, Notice};

use super::super::error::JobError;
use super::super::events::{Event, Listener};
use super::super::job::Job;
use super::super::outcome::AwaitingApproval;
use super::super::scrub;

/// Tells the ticket what the job does.
pub(crate) struct TicketReporter<'a> {
    pub(crate) jira: &'a JiraClient,
    pub(crate) config: &'a Config,
}

#[async_trait::async_trait]
impl Listener for TicketReporter<'_> {
    async fn on(&self, job: &Job<'_>, event: &Event) -> Result<(), JobError> {
        let (jira, key, job_id) = (self.jira, job.ticket(), job.id());
        let proof = |digest: &str| {
            Some(jira::ProofRef {
                job_id: job_id.to_string(),
                digest: digest.to_string(),
            })
        };
        match event {
            Event::Started { repo } => {
                // One "started" comment per job, not per attempt: a retried job finds its own id already there.
                if jira
                    .has_notice(key, &jira::DedupKey::started(job_id))
                    .await?
                {
                    return Ok(());
                }
                job.fence("commenting on the ticket").await?;
                let notice = Notice::Started {
                    job_id: job_id.to_string(),
                    repo: repo.clone(),
                };
                jira.notify(key, &notice).await?;
            }
            Event::PrOpened {
                url,
                repo,
                number,
                branch,
                digest,
                iteration,
            } => {
                // One "PR opened" comment per PR (and one per follow-up iteration), however many attempts it took.
                if jira
                    .has_notice(key, &jira::DedupKey::pr_opened(job_id, *number, *iteration))
                    .await?
                {
                    return Ok(());
                }
                job.fence("commenting on the ticket").await?;
                let notice = Notice::PrOpened {
                    url: url.clone(),
                    repo: repo.clone(),
                    number: *number,
                    branch: branch.clone(),
                    iteration: *iteration,
                    proof: proof(digest),
                };
                jira.notify(key, &notice).await?;
            }
            Event::NoChanges { summary, digest } => {
                // Once per job: a retry after Jira stored the comment but its answer was lost finds it there.
                if jira
                    .has_notice(key, &jira::DedupKey::no_changes(job_id))
                    .await?
                {
                    return Ok(());
                }
                job.fence("commenting on the ticket").await?;
                let notice = Notice::NoChanges {
                    summary: summary.clone(),
                    proof: proof(digest),
                };
                jira.notify(key, &notice).await?;
            }
            Event::AwaitingApproval(ask) => self.ask_approval(job, ask).await,
            Event::Refused {
                message, digest, ..
            } => {
                let notice = Notice::Refused {
                    reason: message.clone(),
                    proof: digest.as_deref().and_then(proof),
                };
                self.tell_failure(job, &notice).await;
            }
            Event::Failed {
                reason,
                last: true,
                digest,
                ..
            } => {
                let notice = Notice::Failed {
                    job_id: job_id.to_string(),
                    reason: reason.clone(),
                    proof: digest.as_deref().and_then(proof),
                };
                self.tell_failure(job, &notice).await;
            }
            _ => {}
        }
        Ok(())
    }
}

impl TicketReporter<'_> {
    /// Asks the approvers (once per job), and again each time an approval stops holding. Not being able to ask is
    /// logged: the job waits either way.
    async fn ask_approval(&self, job: &Job<'_>, ask: &AwaitingApproval) {
        let (jira, key, job_id) = (self.jira, job.ticket(), job.id());
        let AwaitingApproval {
            reason,
            approvers,
            ttl_hours,
            outdated,
            ..
        } = ask;
        if let Some((approved_by, changed)) = outdated {
            // Each time an approval stops holding, the approvers must look again: say what changed.
            let notice = Notice::ApprovalOutdated {
                job_id: job_id.to_string(),
                approved_by: approved_by.clone(),
                changed: changed.clone(),
                approvers: approvers.to_string(),
                ttl_hours: *ttl_hours,
            };
            if let Err(ce) = jira.notify(key, &notice).await {
                tracing::warn!(error = %scrub(self.config, &ce.to_string()), "could not ask for approval again on the ticket");
            }
        }
        // One request per job, however often it is looked at.
        let asked = if outdated.is_some() {
            Ok(true)
        } else {
            jira.has_notice(key, &jira::DedupKey::approval(job_id))
                .await
        };
        if !matches!(asked, Ok(true)) && job.fence("asking for approval").await.is_ok() {
            let notice = Notice::ApprovalNeeded {
                job_id: job_id.to_string(),
                reason: reason.to_string(),
                approvers: approvers.to_string(),
                ttl_hours: *ttl_hours,
            };
            if let Err(ce) = jira.notify(key, &notice).await {
                tracing::warn!(error = %scrub(self.config, &ce.to_string()), "could not ask for approval on the ticket");
            }
        }
    }

    /// A final failure or refusal; not being able to say so is logged (the job has failed already).
    async fn tell_failure(&self, job: &Job<'_>, notice: &Notice) {
        if job.fence("reporting the failure").await.is_ok() {
            if let Err(ce) = self.jira.notify(job.ticket(), notice).await {
                tracing::warn!(error = %scrub(self.config, &ce.to_string()), "could not report the failure on the ticket");
            }
        }
    }
}
