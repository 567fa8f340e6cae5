//! Check: a slot under the repository's concurrency cap, then proof that the service account cannot merge into the
//! base (a refusal names what to change).

use std::sync::Arc;

use crate::config::RepoConfig;
use crate::forge::{ForgeError, GitHub};
use crate::policy::Grant;

use super::super::error::JobError;
use super::super::events::Stage;
use super::super::job::Job;
use super::super::outcome::Refusal;
use super::super::slots::{RepoSlot, RepoSlots};

/// Waits for a slot on the granted repository when the policy caps it (held until the job ends).
pub(crate) async fn repo_slot(slots: &Arc<RepoSlots>, grant: &Grant) -> Option<RepoSlot> {
    let cap = grant.rules.concurrency.repo?;
    let repo = &grant.repo.name;
    if slots.busy(repo) >= cap {
        tracing::info!(repo = %repo, cap, "repository at its concurrency cap; waiting");
    }
    Some(slots.acquire(repo, cap).await)
}

/// Refuses the job when the service account could merge into the base. In fork mode: refuses unless the account
/// has no write access upstream and the fork is its fork, then syncs the fork's base with upstream's.
pub(crate) async fn merge_rights(
    job: &Job<'_>,
    forge: &GitHub,
    repo: &RepoConfig,
) -> Result<(), JobError> {
    job.stage(Stage::Check, repo.name.as_str()).await?;
    let refusal = |e: ForgeError| match e {
        ForgeError::CanMerge { .. } => JobError::Refused(Refusal {
            rule: "forge.merge_rights".into(),
            message: e.to_string(),
        }),
        ForgeError::ForkMode { .. } => JobError::Refused(Refusal {
            rule: "forge.fork".into(),
            message: e.to_string(),
        }),
        other => JobError::Forge(other),
    };
    let Some(fork) = &repo.fork else {
        return forge
            .check_cannot_merge(&repo.name, &repo.base)
            .await
            .map_err(refusal);
    };
    forge.check_fork(&repo.name, fork).await.map_err(refusal)?;
    // The job's branch starts from upstream's base whatever the fork holds (the clone is of upstream), so a fork
    // that cannot be synced is noted, not fatal: the pull request is the same either way.
    match forge.sync_fork(fork, &repo.base).await {
        Ok(how) => {
            tracing::info!(fork = %fork, base = %repo.base, merge_type = %how, "fork synced with upstream")
        }
        Err(e) if e.is_retryable() => return Err(JobError::Forge(e)),
        Err(e) => {
            tracing::warn!(fork = %fork, base = %repo.base, error = %e, "the fork's base could not be synced");
            job.note(format!(
                "the fork's `{}` was not synced with upstream: {e}",
                repo.base
            ));
        }
    }
    Ok(())
}
