//! Clone: the repository into a scratch directory that disappears with the job, on the job's branch.

use std::path::PathBuf;

use crate::config::{CloneConfig, Secret};
use crate::repo::{self, MirrorCache, RepoError};

use super::super::error::JobError;
use super::blocking;

/// A scratch directory for the workspace (removed when dropped) and the clone's path inside it.
pub(crate) fn scratch() -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let scratch = tempfile::Builder::new().prefix("drafter-ws-").tempdir()?;
    let ws = scratch.path().join("repo");
    Ok((scratch, ws))
}

/// The mirror cache `[repo]` configures, if mirrors are on.
pub(crate) fn mirrors(cfg: &CloneConfig) -> Option<MirrorCache> {
    cfg.mirror
        .then(|| MirrorCache::new(&cfg.mirror_dir, cfg.mirror_max_bytes))
}

/// Clones `url` at `base` into `ws` (from the repository's mirror when `mirrors` is on) and checks out the job's
/// branch: the repository, the branch, and whether it already holds this job's pushed work (then it is checked out
/// as pushed, not created).
pub(crate) async fn clone(
    url: String,
    ws: PathBuf,
    base: String,
    token: Secret,
    preferred: String,
    job_id: String,
    mirrors: Option<MirrorCache>,
) -> Result<(git2::Repository, String, bool), JobError> {
    // spawn_blocking does not carry the span: the mirror's log lines keep the job id this way.
    let span = tracing::Span::current();
    blocking(move || {
        let _entered = span.enter();
        let candidates = candidates(&preferred, &job_id);
        let r = match &mirrors {
            Some(cache) => {
                let (r, used) = cache.clone_with(&url, &ws, &base, &candidates, &token)?;
                tracing::info!(
                    cloned = used.cloned,
                    fetched = used.fetched,
                    coalesced = used.coalesced,
                    repaired = used.repaired,
                    "workspace made from the mirror"
                );
                r
            }
            None => repo::clone_with(&url, &ws, &base, &candidates, &token)?,
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
