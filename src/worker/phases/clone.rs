//! Clone: the repository into a scratch directory that disappears with the job, on the job's branch.

use std::path::PathBuf;

use crate::config::Secret;
use crate::repo::{self, RepoError};

use super::super::error::JobError;
use super::blocking;

/// A scratch directory for the workspace (removed when dropped) and the clone's path inside it.
pub(crate) fn scratch() -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let scratch = tempfile::Builder::new().prefix("drafter-ws-").tempdir()?;
    let ws = scratch.path().join("repo");
    Ok((scratch, ws))
}

/// Clones `url` at `base` into `ws` and checks out the job's branch: the repository, the branch, and whether it
/// already holds this job's pushed work (then it is checked out as pushed, not created). In fork mode `fork_url`
/// is where the job's branches live: the candidates are looked up there, not upstream.
pub(crate) async fn clone(
    url: String,
    fork_url: Option<String>,
    ws: PathBuf,
    base: String,
    token: Secret,
    preferred: String,
    job_id: String,
) -> Result<(git2::Repository, String, bool), JobError> {
    blocking(move || {
        let candidates = candidates(&preferred, &job_id);
        let r = match &fork_url {
            None => repo::clone_with(&url, &ws, &base, &candidates, &token)?,
            Some(fork_url) => {
                let r = repo::clone_with(&url, &ws, &base, &[], &token)?;
                // Into `refs/remotes/origin/`, where `choose_branch` and a reused attempt read them.
                for c in &candidates {
                    repo::refresh_remote_branch(&r, fork_url, c, &token)?;
                }
                r
            }
        };
        let (branch, reused) = choose_branch(&r, candidates, &job_id)?;
        if reused {
            repo::checkout_remote_branch(&r, &branch)?;
        } else {
            repo::create_branch(&r, &branch)?;
        }
        Ok((r, branch, reused))
    })
    .await
}

/// The branch for this job: the ticket's usual `drafter/<KEY>-<slug>`, unless the remote already has it from a
/// different job (an earlier assignment of the same ticket, whose PR may still be under review): then the job's
/// own `drafter/<KEY>-<slug>-<job suffix>`, never overwriting anyone's branch. `true` when the chosen branch
/// already holds this job's pushed work (an earlier attempt got that far).
fn choose_branch(
    r: &git2::Repository,
    candidates: Vec<String>,
    job_id: &str,
) -> Result<(String, bool), RepoError> {
    let last = candidates.last().cloned().unwrap_or_default();
    for candidate in candidates {
        match repo::remote_branch(r, &candidate)? {
            None => return Ok((candidate, false)),
            Some(b) if b.job.as_deref() == Some(job_id) => return Ok((candidate, true)),
            Some(_) => continue,
        }
    }
    Err(RepoError::PushRejected {
        branch: last,
        message: "the remote already has this branch from another job".into(),
    })
}

/// The branches a job may use, in order of preference (the clone fetches just these besides the base).
fn candidates(preferred: &str, job_id: &str) -> Vec<String> {
    let suffix = job_id.rsplit('-').next().unwrap_or(job_id);
    vec![preferred.to_string(), format!("{preferred}-{suffix}")]
}
