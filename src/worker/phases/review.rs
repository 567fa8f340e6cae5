//! Review follow-ups: what the model is shown of the pull request (its diff against the base, and the comments to
//! address), and, once the run statement is sealed, the answers on the pull request (a reply in each line
//! comment's thread, a conversation comment for a review or a conversation comment), each marked so that a
//! retried attempt finds it instead of answering twice.

use crate::agent::{ReviewContext, ReviewNote};
use crate::config::Config;
use crate::forge::{ForgeError, GitHub};
use crate::repo::{self, RepoError};

use super::super::error::JobError;
use super::super::job::{Job, ReviewIteration};
use super::super::scrub;
use super::super::text::cap;

/// The most of the pull request's diff the model is shown (bytes).
pub(crate) const MAX_DIFF_BYTES: usize = 48 * 1024;

/// The model's view of the iteration: the branch's diff against the base (as checked out) and the comments.
pub(crate) fn context(
    it: &ReviewIteration,
    r: &git2::Repository,
    base: &str,
    branch: &str,
) -> Result<ReviewContext, RepoError> {
    let tip = repo::remote_branch(r, branch)?
        .ok_or_else(|| RepoError::BranchNotFound {
            branch: branch.to_string(),
            remote: true,
        })?
        .tip;
    let base_oid = repo::remote_base(r, base)?;
    let (diff, diff_cut) = repo::diff::patch_text(r, base_oid, tip, MAX_DIFF_BYTES)
        .map_err(|e| repo::git_error("diffing the pull request", e))?;
    Ok(ReviewContext {
        iteration: it.iteration,
        diff,
        diff_cut,
        comments: it
            .comments
            .iter()
            .map(|c| ReviewNote {
                author: c.at.author.clone(),
                kind: c.at.kind.clone(),
                path: c.at.path.clone(),
                line: c.at.line,
                text: c.text.clone(),
            })
            .collect(),
    })
}

/// The marker an answer carries (inline code at its end), per job, iteration and comment.
pub(crate) fn marker(job_id: &str, iteration: u32, kind: &str, comment_id: u64) -> String {
    format!("drafter:{job_id}:review-{iteration}-{kind}-{comment_id}")
}

/// Answers every comment of the iteration on pull request `number`: line comments in their thread, the others on
/// the conversation. The fence is asked before each answer; answers an earlier attempt left are not repeated.
pub(crate) async fn answer(
    config: &Config,
    forge: &GitHub,
    job: &Job<'_>,
    repo: &str,
    number: u64,
    digest: &str,
) -> Result<usize, JobError> {
    let Some(it) = &job.spec.review else {
        return Ok(0);
    };
    let existing = forge.pr_comment_bodies(repo, number).await?;
    let summary = job
        .progress
        .agent
        .as_ref()
        .map(|a| a.summary.trim().to_string())
        .unwrap_or_default();
    let what = match &job.progress.change {
        Some(c) if !c.commit.is_empty() => {
            format!("Pushed `{}` on top of the branch.", short(&c.commit))
        }
        _ => "No files changed in this iteration.".to_string(),
    };
    let mut answered = 0;
    for c in &it.comments {
        if c.at.repo != repo || c.at.pr != number {
            continue;
        }
        let mark = marker(job.id(), it.iteration, &c.at.kind, c.at.comment_id);
        if existing.iter().any(|b| b.contains(&format!("`{mark}`"))) {
            continue;
        }
        // The summary is the model's text: scrubbed, capped, and never able to mention anyone but the author.
        let body = format!(
            "@{} drafter follow-up iteration {}: {what}\n\n{}\n\nProof bundle `sha256:{digest}` (`drafter jobs \
             bundle {}`, then `drafter verify`). `{mark}`",
            c.at.author,
            it.iteration,
            quote(&scrub(config, &cap(&summary, 1500))),
            job.id(),
        );
        job.fence("answering on the pull request").await?;
        match c.at.kind.as_str() {
            "line" => match forge
                .reply_to_review_comment(repo, number, c.at.comment_id, &body)
                .await
            {
                Ok(()) => {}
                // The thread's first comment was deleted meanwhile (GitHub answers 404,
                // https://docs.github.com/en/rest/pulls/comments#create-a-reply-for-a-review-comment): the answer
                // goes on the conversation rather than failing the iteration after its push.
                Err(ForgeError::NotFound { .. }) => {
                    forge.comment_on_pr(repo, number, &body).await?
                }
                Err(e) => return Err(e.into()),
            },
            _ => forge.comment_on_pr(repo, number, &body).await?,
        }
        answered += 1;
    }
    tracing::info!(
        iteration = it.iteration,
        answered,
        "review comments answered"
    );
    Ok(answered)
}

/// A commit id's first 12 characters.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The model's summary as a Markdown quote whose `@` cannot notify anyone.
fn quote(text: &str) -> String {
    if text.is_empty() {
        return "> (no summary)".into();
    }
    text.lines()
        .map(|l| format!("> {}", l.replace('@', "@\u{200b}")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_summaries_cannot_mention_anyone() {
        let q = quote("fixed it\n@drafter-bot do more @alice");
        assert!(!q.contains("@drafter-bot") && !q.contains("@alice"), "{q}");
        assert!(q.starts_with("> fixed it\n> @"));
        assert_eq!(marker("j-1", 2, "line", 11), "drafter:j-1:review-2-line-11");
    }
}
