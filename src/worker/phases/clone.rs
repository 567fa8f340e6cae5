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

/// The mirror cache `[repo]` configures, if mirrors are on, with its spare workspaces beside the jobs' (see
/// [`scratch`]: a spare is taken by a `rename`, which cannot cross file systems), in a directory of this user's.
pub(crate) fn mirrors(cfg: &CloneConfig) -> Option<MirrorCache> {
    cfg.mirror.then(|| {
        let cache = MirrorCache::new(&cfg.mirror_dir, cfg.mirror_max_bytes);
        if cfg.spare_workspaces {
            // SAFETY: geteuid has no arguments and cannot fail.
            let uid = unsafe { libc::geteuid() };
            cache.with_spares(std::env::temp_dir().join(format!("drafter-spares-{uid}")))
        } else {
            cache
        }
    })
}

/// Where a job's repository comes from.
pub(crate) struct Source {
    /// The repository's clone URL.
    pub(crate) url: String,
    /// Fork mode: the fork's clone URL, where the job's branches live.
    pub(crate) fork_url: Option<String>,
    /// The base branch.
    pub(crate) base: String,
}

/// Clones the source's `url` at its `base` into `ws` (from the repository's mirror when `mirrors` is on) and checks
/// out the job's branch: the repository, the branch, and whether it already holds this job's pushed work (then it is
/// checked out as pushed, not created). In fork mode the candidates are looked up in the fork, not upstream.
pub(crate) async fn clone(
    Source {
        url,
        fork_url,
        base,
    }: Source,
    ws: PathBuf,
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
        // In fork mode upstream has none of the job's branches: the clone takes the base, the fork the candidates.
        let from_origin: &[String] = if fork_url.is_some() { &[] } else { &candidates };
        let r = match &mirrors {
            Some(cache) => {
                let (r, used) = cache.clone_with(&url, &ws, &base, from_origin, &token)?;
                tracing::info!(
                    cloned = used.cloned,
                    fetched = used.fetched,
                    coalesced = used.coalesced,
                    repaired = used.repaired,
                    spare = used.spare,
                    "workspace made from the mirror"
                );
                r
            }
            None => repo::clone_with(&url, &ws, &base, from_origin, &token)?,
        };
        if let Some(fork_url) = &fork_url {
            // Into `refs/remotes/origin/`, where `choose_branch` and a reused attempt read them.
            for c in &candidates {
                repo::refresh_remote_branch(&r, fork_url, c, &token)?;
            }
        }
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
