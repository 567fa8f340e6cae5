//! What a job tells its listeners: [`Event`]s.
//!
//! Two kinds of listener hear them. In-process [`Listener`]s (the ticket's comments, `job.json`, and under `drafter
//! serve` the queue's progress marker) are called in order and awaited by [`Job::emit`](super::job::Job::emit), so
//! what they do is ordered against the job's other side effects (the "started" comment before the clone, the "PR
//! opened" comment after the run statement and the PR body's digest, a stage's marker before the stage) and a
//! failure of theirs can fail the job. Everyone else (the CLI's progress lines) reads the unbounded channel, and may
//! be gone.

use serde::Serialize;

use crate::agent::AgentEvent;

use super::error::JobError;
use super::job::Job;
use super::outcome::{AwaitingApproval, Delivered};

/// A stage of the pipeline, for progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the ticket from Jira.
    Fetch,
    /// Checking the repository against the allowlist and the forge's merge rules.
    Check,
    /// Cloning the repository.
    Clone,
    /// Starting the sandbox container and copying the workspace in.
    Sandbox,
    /// The model loop.
    Agent,
    /// Committing and pushing the branch.
    Push,
    /// Opening the draft pull request.
    PullRequest,
    /// Reporting back on the ticket.
    Report,
}

impl Stage {
    /// Lower-case name for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Check => "check",
            Stage::Clone => "clone",
            Stage::Sandbox => "sandbox",
            Stage::Agent => "agent",
            Stage::Push => "push",
            Stage::PullRequest => "pr",
            Stage::Report => "report",
        }
    }
}

/// What a job tells its listeners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The job passed the policy and the merge check and is about to clone: the ticket hears it once per job.
    Started {
        /// The repository it works on.
        repo: String,
    },
    /// A stage began; `detail` says on what (the ticket, the repository, the branch).
    Stage {
        /// Which stage.
        stage: Stage,
        /// What it works on.
        detail: String,
    },
    /// Something from inside the agent loop.
    Agent(AgentEvent),
    /// The run statement is written and the PR body carries its digest.
    PrOpened {
        /// The PR's web URL.
        url: String,
        /// The repository.
        repo: String,
        /// The PR's number.
        number: u64,
        /// The pushed branch.
        branch: String,
        /// The follow-up iteration that updated it (0: the job's first run opened it).
        iteration: u32,
        /// The bundle digest after this attempt's run statement.
        digest: String,
    },
    /// The model changed nothing; the run statement is written.
    NoChanges {
        /// The model's summary.
        summary: String,
        /// The bundle digest after this attempt's run statement.
        digest: String,
    },
    /// The policy wants a person to approve the job first.
    AwaitingApproval(AwaitingApproval),
    /// The policy refused the job (always final).
    Refused {
        /// The rule.
        rule: String,
        /// What the ticket is told, scrubbed.
        message: String,
        /// The bundle digest after the run statement, when it was written.
        digest: Option<String>,
    },
    /// The attempt failed.
    Failed {
        /// Why, scrubbed.
        reason: String,
        /// Whether a retry could help.
        retryable: bool,
        /// Whether this is the job's end (not retryable, or the last attempt); otherwise a retry is coming (or
        /// another worker holds the job now).
        last: bool,
        /// The bundle digest after the run statement, when it was written.
        digest: Option<String>,
    },
    /// The attempt is over and every side effect done: `job.json` is written now.
    Finished {
        /// What it delivered, if it did.
        outcome: Option<Delivered>,
        /// Why it failed, scrubbed.
        error: Option<String>,
        /// Whether a retry could help.
        retryable: bool,
        /// The bundle digest after the run statement, when it was written.
        digest: Option<String>,
    },
    /// The job delivered (the last event).
    Done(Delivered),
}

/// An in-process listener on a job's events, awaited before the job goes on.
#[async_trait::async_trait]
pub(crate) trait Listener: Send + Sync {
    /// Acts on `event`; an error stops the job with it (only where the job cannot go on without it).
    async fn on(&self, job: &Job<'_>, event: &Event) -> Result<(), JobError>;
}
