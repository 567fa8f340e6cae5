//! [`JobError`]: why the phases of an attempt stopped short of a pull request or "no changes", and whether trying
//! again could help. [`run_job`](super::run_job) turns it into the attempt's [`JobOutcome`](super::JobOutcome).

use std::time::Duration;

use crate::agent::AgentError;
use crate::forge::ForgeError;
use crate::jira::JiraError;
use crate::model::ModelError;
use crate::proof::ProofError;
use crate::repo::RepoError;
use crate::sandbox::SandboxError;

use super::outcome::{AwaitingApproval, Refusal};

/// Why a job failed. `Refused` means the runner would not do it (policy); the others are faults.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The ticket asked for something the configuration or the policy does not allow. Not retryable.
    #[error("{0}")]
    Refused(Refusal),
    /// The policy wants a person to approve the job first: not a failure of the job (see [`AwaitingApproval`]).
    #[error("{0}")]
    AwaitingApproval(AwaitingApproval),
    /// Jira failed.
    #[error("jira: {0}")]
    Jira(#[from] JiraError),
    /// Git failed.
    #[error("git: {0}")]
    Repo(#[from] RepoError),
    /// GitHub failed.
    #[error("github: {0}")]
    Forge(#[from] ForgeError),
    /// Docker failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The model loop failed or hit a limit.
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    /// The model client could not be set up.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// Receipts or the runner key failed.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    /// This attempt no longer holds the job's lease (another worker took it over after this one stalled, or an
    /// operator cancelled it): it stopped before `before` instead of doing it twice. Not a failure of the job.
    #[error("lease lost before {before}: another worker holds the job now, or it was cancelled")]
    LeaseLost {
        /// The side effect that was not done.
        before: String,
    },
    /// Local I/O (job directory, workspace).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl JobError {
    /// How long the failing service asked us to wait (`Retry-After`), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JobError::Jira(e) => e.retry_after(),
            JobError::Model(e) | JobError::Agent(AgentError::Model(e)) => e.retry_after(),
            JobError::Forge(ForgeError::RateLimited {
                retry_after_secs, ..
            }) => retry_after_secs.map(Duration::from_secs),
            _ => None,
        }
    }

    /// Whether running the job again could succeed (a network fault, not a refusal or a model that would not stop).
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Refused(_)
            | JobError::AwaitingApproval(_)
            | JobError::Proof(_)
            | JobError::LeaseLost { .. }
            | JobError::Io { .. } => false,
            JobError::Jira(e) => e.is_retryable(),
            JobError::Repo(e) => e.is_retryable(),
            JobError::Forge(e) => e.is_retryable(),
            JobError::Sandbox(_) => false,
            JobError::Agent(e) => e.is_retryable(),
            JobError::Model(e) => e.is_retryable(),
        }
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Io { context, source }
}

/// A refusal by the policy rule `rule`.
pub(crate) fn refused(rule: &str, reason: String) -> JobError {
    JobError::Refused(Refusal {
        rule: rule.to_string(),
        message: format!("policy rule `{rule}`: {reason}"),
    })
}
