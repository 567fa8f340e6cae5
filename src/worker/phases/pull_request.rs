//! Pull request: one draft per branch (a retried job finds the one it opened and refreshes it), opened with a
//! placeholder footer; once the run statement is written its bundle digest goes into the footer.

use crate::agent::AgentOutcome;
use crate::config::Config;
use crate::forge::{GitHub, PullRequest};
use crate::jira::Ticket;
use crate::proof;

use super::super::error::JobError;
use super::super::events::Stage;
use super::super::job::Job;
use super::super::outcome::Delivered;
use super::super::scrub;
use super::super::text::{cap, pr_body, proof_footer, strip_proof_footer};

/// Opens the draft PR for `branch` (or finds the one an earlier attempt opened).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    config: &Config,
    forge: &GitHub,
    job: &mut Job<'_>,
    ticket: &Ticket,
    repo: &crate::config::RepoConfig,
    branch: String,
    reused: bool,
    (outcome, digest, changed, left_out): (&AgentOutcome, &str, &[String], &[String]),
) -> Result<Delivered, JobError> {
    let job_id = job.id();
    job.stage(Stage::PullRequest, format!("{} <- {}", repo.base, branch))
        .await?;
    let title = format!("[{}] {}", ticket.key, cap(ticket.summary.trim(), 200));
    let body = pr_body(
        ticket,
        job_id,
        outcome,
        changed,
        left_out,
        digest,
        &job.spec.policy.hash,
    );
    // The PR opens with a placeholder footer; `complete` puts the sealed bundle's digest there.
    let opening = format!("{body}{}", proof_footer(job_id, None));
    let pr: PullRequest = match forge
        .find_open_pr(&repo.name, repo.push_repo(), &branch)
        .await?
    {
        Some(existing) => {
            // An earlier attempt opened it. If the model ran again, its new description replaces the old one;
            // if not, the old description stays and only the proof footer is refreshed.
            job.progress.pr_text = if reused {
                existing
                    .body
                    .as_deref()
                    .map(|b| (title.clone(), strip_proof_footer(b).to_string()))
            } else {
                Some((title.clone(), body))
            };
            existing
        }
        None => {
            job.fence("opening the pull request").await?;
            let pr = forge
                .open_draft_pr(
                    &repo.name,
                    repo.push_repo(),
                    &branch,
                    &repo.base,
                    &title,
                    &scrub(config, &opening),
                )
                .await?;
            job.progress.pr_text = Some((title.clone(), body));
            pr
        }
    };
    Ok(Delivered::PullRequest {
        url: pr.html_url,
        number: pr.number,
        branch,
        repo: repo.name.clone(),
        bundle: job.dir.join(proof::BUNDLE_FILE),
        bundle_digest: String::new(),
    })
}

/// After the run statement: the PR body gets the bundle digest (right after asking the fence).
pub(crate) async fn complete(
    config: &Config,
    forge: &GitHub,
    job: &Job<'_>,
    repo: &str,
    number: u64,
    digest: &str,
) -> Result<(), JobError> {
    if let Some((title, body)) = &job.progress.pr_text {
        let body = format!("{body}{}", proof_footer(job.id(), Some(digest)));
        job.fence("updating the pull request").await?;
        forge
            .update_pr(repo, number, title, &scrub(config, &body))
            .await?;
    }
    Ok(())
}
