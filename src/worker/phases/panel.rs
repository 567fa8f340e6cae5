//! The ticket's development panel, a listener after the comments: the draft PR as a remote link (upserted by its
//! `globalId`, so a retried or re-delivered job updates the one link), and the project's optional status
//! transitions (`on_start` when work starts, `on_pr` once the PR is open). None of it can fail a job: the PR is the
//! delivery, and a Jira that refuses the link or has no such transition is logged and noted in `job.json`. The
//! fence is asked before each call, like before a comment. When a PR closes or merges, the same link posted with
//! [`PrState::Merged`]/[`PrState::Closed`] updates its status; drafter does not learn PR states yet (GitHub webhooks,
//! issue 16 part 2), so nothing here sends that.

use crate::config::Config;
use crate::jira::{self, JiraClient, Moved, PrLink, PrState};

use super::super::error::JobError;
use super::super::events::{Event, Listener};
use super::super::job::Job;
use super::super::scrub;

/// Links the PR to the ticket and moves the ticket along its workflow.
pub(crate) struct TicketPanel<'a> {
    pub(crate) jira: &'a JiraClient,
    pub(crate) config: &'a Config,
}

#[async_trait::async_trait]
impl Listener for TicketPanel<'_> {
    async fn on(&self, job: &Job<'_>, event: &Event) -> Result<(), JobError> {
        let targets =
            jira::project_of(job.ticket()).and_then(|p| self.config.panel.transitions_for(p));
        match event {
            Event::Started { .. } => {
                if let Some(target) = targets.and_then(|t| t.on_start.as_deref()) {
                    self.transition(job, "on_start", target).await;
                }
            }
            Event::PrOpened {
                url, repo, number, ..
            } => {
                if self.config.panel.remote_links {
                    let title = job
                        .progress
                        .pr_text
                        .as_ref()
                        .map(|(t, _)| t.clone())
                        .unwrap_or_else(|| format!("[{}] draft pull request", job.ticket()));
                    let link = PrLink {
                        repo: repo.clone(),
                        number: *number,
                        url: url.clone(),
                        title,
                        state: PrState::Open,
                    };
                    self.link(job, &link).await;
                }
                if let Some(target) = targets.and_then(|t| t.on_pr.as_deref()) {
                    self.transition(job, "on_pr", target).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl TicketPanel<'_> {
    /// Upserts the PR's remote link on the ticket; a failure is logged and noted.
    async fn link(&self, job: &Job<'_>, link: &PrLink) {
        if job.fence("linking the pull request").await.is_err() {
            return;
        }
        match self.jira.upsert_remote_link(job.ticket(), link).await {
            Ok(()) => tracing::info!(link = %link.global_id(), "pull request linked on the ticket"),
            Err(e) => {
                let error = scrub(self.config, &e.to_string());
                tracing::warn!(%error, "could not link the pull request on the ticket");
                job.note(format!("remote link not saved: {error}"));
            }
        }
    }

    /// Applies the project's `which` transition (`on_start`/`on_pr`) when the workflow offers it; otherwise, or
    /// when Jira refuses, logs and notes it.
    async fn transition(&self, job: &Job<'_>, which: &str, target: &str) {
        if job.fence("moving the ticket").await.is_err() {
            return;
        }
        match self.jira.transition_to(job.ticket(), target).await {
            Ok(Moved::Applied { status }) => {
                tracing::info!(transition = which, %status, "ticket moved");
            }
            Ok(Moved::NoSuchTransition { offered }) => {
                tracing::warn!(transition = which, target, offered = %offered.join(", "),
                    "no transition to that status from the ticket's current one: skipped");
            }
            Err(e) => {
                let error = scrub(self.config, &e.to_string());
                tracing::warn!(transition = which, target, %error, "could not move the ticket");
                job.note(format!(
                    "{which} transition to {target:?} not applied: {error}"
                ));
            }
        }
    }
}
