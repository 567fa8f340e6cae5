//! The ticket's development panel, a listener after the comments: the draft PR as a remote link (upserted by its
//! `globalId`, so a retried job or a review iteration updates the one link), and the project's optional status
//! transitions (`on_start` when the job starts work, not again for a review iteration; `on_pr` once the PR is open
//! or updated; a ticket already in the target status, or its category, is left alone). None of it can fail a job:
//! the PR is the delivery, and a Jira that refuses the link or has no such transition is logged and noted in
//! `job.json`. A rate limit or an overloaded Jira with a short `Retry-After` (at most [`MAX_PANEL_WAIT`]) is waited
//! out once, since otherwise the link would be missing for good; a longer one is noted with its wait. The fence is
//! asked before each call, like before a comment. When a PR closes or merges, `drafter serve`'s GitHub webhook posts
//! the same link with [`PrState::Merged`]/[`PrState::Closed`] (`server/github.rs`).

use std::future::Future;
use std::time::Duration;

use crate::config::Config;
use crate::jira::{self, JiraClient, JiraError, Moved, PrLink, PrState};

use super::super::error::JobError;
use super::super::events::{Event, Listener};
use super::super::job::Job;
use super::super::scrub;

/// The longest `Retry-After` (429, 503) waited out, once, before a panel call is given up; without a
/// `Retry-After`, a retryable failure (the network, a 5xx) is tried again after [`DEFAULT_PANEL_WAIT`].
const MAX_PANEL_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_PANEL_WAIT: Duration = Duration::from_secs(1);

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
                // A review iteration is not the job's start: its ticket is in on_pr's status, and moving it back to
                // on_start's and forth again would only add two changes to its history per review comment.
                let iteration = job.spec.review.is_some();
                if let Some(target) = targets.and_then(|t| t.on_start.as_deref()) {
                    if iteration {
                        tracing::debug!(target, "review iteration: on_start not applied");
                    } else {
                        self.transition(job, "on_start", target).await;
                    }
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
        let linked = once_more(job, "linking the pull request", || {
            self.jira.upsert_remote_link(job.ticket(), link)
        })
        .await;
        match linked {
            None => {}
            Some(Ok(())) => {
                tracing::info!(link = %link.global_id(), "pull request linked on the ticket")
            }
            Some(Err(e)) => {
                let error = scrub(self.config, &e.to_string());
                tracing::warn!(%error, "could not link the pull request on the ticket");
                job.note(format!("remote link not saved: {error}"));
            }
        }
    }

    /// Applies the project's `which` transition (`on_start`/`on_pr`) when the workflow offers it and the ticket is
    /// not there already; otherwise, or when Jira refuses, logs (and notes a refusal).
    async fn transition(&self, job: &Job<'_>, which: &str, target: &str) {
        let moved = once_more(job, "moving the ticket", || {
            self.jira.transition_to(job.ticket(), target)
        })
        .await;
        match moved {
            None => {}
            Some(Ok(Moved::Applied { status })) => {
                tracing::info!(transition = which, %status, "ticket moved");
            }
            Some(Ok(Moved::Already { status })) => {
                tracing::info!(transition = which, target, %status,
                    "ticket already in that status: left alone");
            }
            Some(Ok(Moved::NoSuchTransition { from, offered })) if offered.is_empty() => {
                // Jira lists nothing to a bot without the permission (no 403): a setup to fix, so it is noted too.
                let why = format!(
                    "Jira offers no transitions at all from {}: does the bot have the Transition issues \
                     permission in the project, or is the status final?",
                    if from.is_empty() { "its status" } else { &from }
                );
                tracing::warn!(transition = which, target, "{why}");
                job.note(format!(
                    "{which} transition to {target:?} not applied: {why}"
                ));
            }
            Some(Ok(Moved::NoSuchTransition { from, offered })) => {
                tracing::warn!(transition = which, target, %from, offered = %offered.join(", "),
                    "no transition to that status from the ticket's current one: skipped");
            }
            Some(Err(e)) => {
                let error = scrub(self.config, &e.to_string());
                tracing::warn!(transition = which, target, %error, "could not move the ticket");
                job.note(format!(
                    "{which} transition to {target:?} not applied: {error}"
                ));
            }
        }
    }
}

/// Runs `call` after asking the fence for `what`; when it fails with a retryable error whose wait is short (see
/// [`MAX_PANEL_WAIT`]), waits, asks the fence again and runs it once more. Both calls are safe to repeat: a link is
/// upserted by its `globalId`, and a transition first reads where the ticket is. `None`: the fence said no.
async fn once_more<T, F, Fut>(job: &Job<'_>, what: &str, call: F) -> Option<Result<T, JiraError>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, JiraError>>,
{
    job.fence(what).await.ok()?;
    let wait = match call().await {
        Err(e) if e.is_retryable() => match e.retry_after().unwrap_or(DEFAULT_PANEL_WAIT) {
            wait if wait <= MAX_PANEL_WAIT => wait,
            _ => return Some(Err(e)),
        },
        done => return Some(done),
    };
    tracing::info!(
        wait_secs = wait.as_secs_f32(),
        "{what}: Jira is busy or out of reach; trying once more"
    );
    tokio::time::sleep(wait).await;
    job.fence(what).await.ok()?;
    Some(call().await)
}
