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

/// Refuses the job when the service account could merge into the base.
pub(crate) async fn merge_rights(
    job: &Job<'_>,
    forge: &GitHub,
    repo: &RepoConfig,
) -> Result<(), JobError> {
    job.stage(Stage::Check, repo.name.as_str()).await?;
    forge
        .check_cannot_merge(&repo.name, &repo.base)
        .await
        .map_err(|e| match e {
            ForgeError::CanMerge { .. } => JobError::Refused(Refusal {
                rule: "forge.merge_rights".into(),
                message: e.to_string(),
            }),
            other => JobError::Forge(other),
        })
}
