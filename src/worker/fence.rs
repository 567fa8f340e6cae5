//! The fence: whether this attempt still holds its job, asked immediately before each side effect outside the
//! runner (push, pull request, ticket comment).

use crate::queue::QueueError;

use super::error::JobError;

/// Whether this attempt still holds its job: asked immediately before each push, pull request and ticket comment,
/// so a worker that stalled past its lease (SIGSTOP, a long GC pause of the host, a hung blocking call) and the
/// worker that took the job over never both deliver.
#[async_trait::async_trait]
pub trait Fence: Send + Sync {
    /// `Ok(true)` while this attempt holds the lease; an error when the queue could not be asked.
    async fn holds(&self) -> Result<bool, QueueError>;
}

/// [`JobError::LeaseLost`] unless `fence` (if any) still holds. Not knowing counts as lost: a side effect done twice
/// is worse than one done on a retry.
pub(crate) async fn check(fence: Option<&dyn Fence>, what: &str) -> Result<(), JobError> {
    let Some(f) = fence else {
        return Ok(());
    };
    match f.holds().await {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(before = what, "lease lost: not doing it");
            Err(JobError::LeaseLost {
                before: what.to_string(),
            })
        }
        Err(e) => {
            tracing::warn!(before = what, error = %e, "could not check the lease: not doing it");
            Err(JobError::LeaseLost {
                before: what.to_string(),
            })
        }
    }
}
