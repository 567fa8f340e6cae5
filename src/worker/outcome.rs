//! How an attempt ends: [`JobOutcome`], the one result of [`run_job`](super::run_job). The phases stop early with a
//! [`JobError`]; `run_job` turns the pipeline's result into the outcome, which the run statement, the listeners and
//! the callers (`drafter run`'s exit code, the pool's queue state) all read.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::queue::ApprovalSubject;

use super::error::JobError;

/// What a job delivered: `job.json`'s and the queue's `outcome`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Delivered {
    /// A draft pull request was opened.
    PullRequest {
        /// Its web URL.
        url: String,
        /// Its number.
        number: u64,
        /// The pushed branch.
        branch: String,
        /// The repository.
        repo: String,
        /// The proof bundle.
        bundle: PathBuf,
        /// SHA-256 of the bundle file after this attempt's run statement.
        bundle_digest: String,
    },
    /// The model changed nothing, so no pull request was opened.
    NoChanges {
        /// The model's summary.
        summary: String,
        /// The proof bundle.
        bundle: PathBuf,
        /// SHA-256 of the bundle file after this attempt's run statement.
        bundle_digest: String,
    },
}

/// The configuration or the policy would not let the job run: always final, never retried.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The rule that refused it (a policy rule such as `repo` or `budget.daily_tokens`, or `ticket_key`,
    /// `forge.merge_rights`), as recorded in the run statement.
    pub rule: String,
    /// What the ticket is told.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.message)
    }
}

/// The policy wants a person to approve the job first: not a failure; the job waits (`drafter serve`) or the
/// operator approves it (`drafter run --approve`).
#[derive(Debug, Clone)]
pub struct AwaitingApproval {
    /// Which rule asks for approval.
    pub reason: String,
    /// Who may approve.
    pub approvers: String,
    /// How long the job may wait.
    pub ttl_hours: u64,
    /// When approval was asked for (before the ticket is told): only comments created later can approve.
    pub requested_at: chrono::DateTime<chrono::Utc>,
    /// What is to be approved: the ticket content, repository and base this attempt would have run with.
    pub subject: ApprovalSubject,
    /// Set when an earlier approval no longer holds: who gave it, and what changed since (in words).
    pub outdated: Option<(String, Vec<String>)>,
}

impl fmt::Display for AwaitingApproval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "awaiting approval: {} (approvers: {})",
            self.reason, self.approvers
        )
    }
}

/// How an attempt of a job ended.
#[derive(Debug)]
pub enum JobOutcome {
    /// A draft pull request was opened, or the model changed nothing.
    Delivered(Delivered),
    /// The policy wants a person to approve the job first.
    AwaitingApproval(AwaitingApproval),
    /// The policy refused the job.
    Refused(Refusal),
    /// The attempt failed; the error says whether a retry could help. [`JobError::LeaseLost`] means another worker
    /// holds the job now (or it was cancelled): this attempt's failure is not the job's.
    Failed(JobError),
}

impl From<JobError> for JobOutcome {
    fn from(e: JobError) -> JobOutcome {
        match e {
            JobError::Refused(r) => JobOutcome::Refused(r),
            JobError::AwaitingApproval(a) => JobOutcome::AwaitingApproval(a),
            e => JobOutcome::Failed(e),
        }
    }
}

impl From<Result<Delivered, JobError>> for JobOutcome {
    fn from(result: Result<Delivered, JobError>) -> JobOutcome {
        match result {
            Ok(d) => JobOutcome::Delivered(d),
            Err(e) => e.into(),
        }
    }
}

impl JobOutcome {
    /// Why the job delivered nothing, as the run statement, `job.json`, the queue and `drafter run` say it (before
    /// [`scrub`](super::scrub)); `None` when it delivered.
    pub fn error(&self) -> Option<String> {
        match self {
            JobOutcome::Delivered(_) => None,
            JobOutcome::AwaitingApproval(a) => Some(a.to_string()),
            JobOutcome::Refused(r) => Some(r.to_string()),
            JobOutcome::Failed(e) => Some(e.to_string()),
        }
    }

    /// Whether running the job again could end better (only a failure can say so).
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobOutcome::Failed(e) if e.is_retryable())
    }
}
