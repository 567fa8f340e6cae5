//! Deliver: commit the agent's work (build products left out), run the write rules on exactly what would be
//! pushed, push; or, when an earlier attempt already pushed, check that branch under this attempt's policy.

use crate::agent::AgentOutcome;
use crate::config::Config;
use crate::forge::GitHub;
use crate::jira::Ticket;
use crate::policy::{write, Grant};
use crate::proof::bundle::Change;
use crate::repo::{self, RepoError};

use super::super::error::JobError;
use super::super::events::Stage;
use super::super::job::Job;
use super::super::text::cap;
use super::agent::reused_outcome;
use super::blocking;
use super::finish::LeaveOut;

/// What is delivered: the agent's outcome, the receipts digest, the changed paths and the build products left out.
pub(crate) type Delivery = (AgentOutcome, String, Vec<String>, Vec<String>);

/// An earlier attempt of this job already pushed its work: deliver that instead of running the model again, once
/// its diff passes this attempt's write rules.
pub(crate) async fn reuse(
    job: &mut Job<'_>,
    ticket: &Ticket,
    grant: &Grant,
    git_repo: git2::Repository,
    branch: &str,
) -> Result<Delivery, JobError> {
    job.stage(
        Stage::Push,
        format!("{branch} (already pushed by an earlier attempt)"),
    )
    .await?;
    let (branch2, base2) = (branch.to_string(), grant.repo.base.clone());
    let write = grant.rules.write.clone();
    let (message, changed, change, violations) = blocking(move || {
        let remote =
            repo::remote_branch(&git_repo, &branch2)?.ok_or_else(|| RepoError::PushRejected {
                branch: branch2.clone(),
                message: "the branch an earlier attempt pushed is gone".into(),
            })?;
        // The pushed tip is checked like a fresh change, under this attempt's policy: it may have been
        // checked under an older policy, or pushed by someone who forged the job's trailer.
        let base = repo::remote_base(&git_repo, &base2)?;
        let summary = repo::diff::summarize(&git_repo, base, remote.tip)
            .map_err(|e| repo::git_error("diffing the pushed change", e))?;
        let violations = write::check(&summary, &write);
        let changed = repo::changed_files(&git_repo, &base2)?;
        let change = change_of(&git_repo, &base2, remote.tip, changed.len())?;
        Ok((remote.message, changed, change, violations))
    })
    .await?;
    if !violations.is_empty() {
        return Err(job.refuse_violations(
            &ticket.key,
            &violations,
            "the branch an earlier attempt pushed is not delivered",
        ));
    }
    let committed_under = message
        .lines()
        .find_map(|l| l.strip_prefix("Drafter-Policy:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let hash = job.spec.policy.hash.clone();
    job.decision(
        &ticket.key,
        "write",
        true,
        format!(
            "the change an earlier attempt pushed (committed under policy {committed_under}) passes the \
             write rules of policy {hash}"
        ),
    );
    job.progress.change = Some(change);
    let (summary, digest) = summary_and_digest(&message);
    Ok((reused_outcome(summary), digest, changed, Vec::new()))
}

/// Commits the agent's work and pushes it: `None` when nothing changed. The write rules see exactly what would be
/// pushed (base tree against the new commit); the fence is asked right before the push.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn commit_and_push(
    config: &Config,
    forge: &GitHub,
    job: &mut Job<'_>,
    ticket: &Ticket,
    grant: &Grant,
    git_repo: git2::Repository,
    branch: &str,
    url: &str,
    outcome: &AgentOutcome,
    digest: &str,
) -> Result<Option<(Vec<String>, Vec<String>)>, JobError> {
    let job_id = job.id();
    job.stage(Stage::Push, branch).await?;
    let receipts = format!("sha256:{digest}");
    let mut trailers = vec![
        ("Drafter-Ticket", ticket.key.clone()),
        ("Drafter-Job", job_id.to_string()),
        ("Drafter-Receipts", receipts),
        ("Drafter-Policy", job.spec.policy.hash.clone()),
    ];
    // A follow-up's commit names its iteration: a retried attempt of it finds its own push by this.
    if let Some(it) = &job.spec.review {
        trailers.push(("Drafter-Iteration", it.iteration.to_string()));
    }
    let trailers: Vec<(&str, &str)> = trailers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let message = repo::message_with_trailers(
        &format!("[{}] {}", ticket.key, cap(ticket.summary.trim(), 60)),
        &outcome.summary,
        &trailers,
    );
    let (identity, token) = (config.commit.clone(), forge.token().clone());
    let (url2, branch2, base2) = (url.to_string(), branch.to_string(), grant.repo.base.clone());
    let write = grant.rules.write.clone();
    let write2 = write.clone();
    let base3 = base2.clone();
    let mut leave = LeaveOut::new(&write, &outcome.written).map_err(|e| *e)?;
    let committed = blocking(move || {
        let r = git_repo;
        // Build products the agent's commands left behind stay out (and are listed in the PR body).
        let (head, left_out) =
            repo::commit_all_except(&r, &identity, &message, &mut |p, t| leave.decide(p, t))?;
        if !left_out.is_empty() {
            tracing::info!(
                files = left_out.len(),
                "build products left out of the commit"
            );
        }
        let left_out = leave.lines();
        let Some(head) = head else {
            return Ok(Committed::Nothing);
        };
        // The write rules see exactly what would be pushed: base tree against the new commit.
        let base = repo::remote_base(&r, &base2)?;
        let summary = repo::diff::summarize(&r, base, head)
            .map_err(|e| repo::git_error("diffing the change", e))?;
        let violations = write::check(&summary, &write);
        if !violations.is_empty() {
            return Ok(Committed::Refused(violations));
        }
        let changed = repo::changed_files(&r, &base2)?;
        let change = change_of(&r, &base2, head, changed.len())?;
        Ok(Committed::Ready(r, changed, change, left_out))
    })
    .await?;
    match committed {
        Committed::Ready(r, changed, change, left_out) => {
            job.fence("pushing the branch").await?;
            let this_job = job_id.to_string();
            let (changed, change) = blocking(move || {
                match repo::push(&r, &url2, &branch2, &token) {
                    Ok(()) => Ok((changed, change)),
                    // Refused by the server (non-fast-forward), or by libgit2 before sending (the remote ref
                    // has commits it lacks): either way, ask the remote what the branch holds now.
                    Err(e @ (RepoError::PushRejected { .. } | RepoError::Git { .. })) => {
                        // Another worker running this same job (this one stalled past its lease) may have
                        // pushed first: the branch then holds this job's work, which is delivered, not failed.
                        match repo::refresh_remote_branch(&r, &url2, &branch2, &token)? {
                            Some(b) if b.job.as_deref() == Some(this_job.as_str()) => {
                                tracing::warn!(branch = %branch2,
                                    "the branch already holds this job's commit (pushed by another worker)");
                                // Like any path to a PR, the commit that will be delivered passes the rules.
                                let base = repo::remote_base(&r, &base3)?;
                                let summary = repo::diff::summarize(&r, base, b.tip)
                                    .map_err(|e| repo::git_error("diffing the pushed change", e))?;
                                if let Some(v) = write::check(&summary, &write2).first() {
                                    return Err(RepoError::PushRejected {
                                        branch: branch2.clone(),
                                        message: format!(
                                            "the branch holds a commit naming this job that breaks {}: {}",
                                            v.rule, v.detail
                                        ),
                                    });
                                }
                                let changed = repo::changed_files_at(&r, &base3, b.tip)?;
                                let change = change_of(&r, &base3, b.tip, changed.len())?;
                                Ok((changed, change))
                            }
                            _ => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
            job.progress.change = Some(change);
            Ok(Some((changed, left_out)))
        }
        Committed::Nothing => Ok(None),
        Committed::Refused(violations) => {
            Err(job.refuse_violations(&ticket.key, &violations, "the change was not pushed"))
        }
    }
}

/// What committing the agent's work came to.
enum Committed {
    /// Nothing changed.
    Nothing,
    /// The change broke write rules and was not pushed.
    Refused(Vec<write::Violation>),
    /// Committed and checked, ready to push: the repository, the changed paths, the change and the build products
    /// left out (as listed in the PR body).
    Ready(git2::Repository, Vec<String>, Change, Vec<String>),
}

/// The change `commit` makes against the remote base, for the run statement.
fn change_of(
    r: &git2::Repository,
    base: &str,
    commit: git2::Oid,
    files: usize,
) -> Result<Change, RepoError> {
    let base = repo::remote_base(r, base)?;
    Ok(Change {
        base_commit: base.to_string(),
        commit: commit.to_string(),
        diff_sha256: repo::diff_digest(r, base, commit)?,
        files: files as u64,
    })
}

/// The model's summary and the receipts digest from a commit message made by this pipeline.
fn summary_and_digest(message: &str) -> (String, String) {
    let digest = message
        .lines()
        .find_map(|l| l.strip_prefix("Drafter-Receipts: sha256:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let body: Vec<&str> = message
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("Drafter-"))
        .collect();
    (body.join("\n").trim().to_string(), digest)
}
