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
/// already holds this job's pushed work (then it is checked out as pushed, not created).
pub(crate) async fn clone(
    url: String,
    ws: PathBuf,
    base: String,
    token: Secret,
    preferred: String,
    job_id: String,
) -> Result<(git2::Repository, String, bool), JobError> {
    blocking(move || {
        let r = repo::clone(&url, &ws, &base, &token)?;
        let (branch, reused) = choose_branch(&r, &preferred, &job_id)?;
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
    preferred: &str,
    job_id: &str,
) -> Result<(String, bool), RepoError> {
    let suffix = job_id.rsplit('-').next().unwrap_or(job_id);
    for candidate in [preferred.to_string(), format!("{preferred}-{suffix}")] {
        match repo::remote_branch(r, &candidate)? {
            None => return Ok((candidate, false)),
            Some(b) if b.job.as_deref() == Some(job_id) => return Ok((candidate, true)),
            Some(_) => continue,
        }
    }
    Err(RepoError::PushRejected {
        branch: format!("{preferred}-{suffix}"),
        message: "the remote already has this branch from another job".into(),
    })
}
