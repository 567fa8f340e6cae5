//! `job.json`: what happened, for people and the CLI; a listener on the job's [`Event::Finished`].

use serde::Serialize;

use crate::policy::Decision;

use super::error::JobError;
use super::events::{Event, Listener};
use super::job::Job;
use super::outcome::Delivered;

/// What `job.json` records.
#[derive(Serialize)]
struct JobRecord<'a> {
    job_id: &'a str,
    attempt: u32,
    ticket: &'a str,
    repo: Option<&'a str>,
    branch: Option<&'a str>,
    started_at: String,
    finished_at: String,
    outcome: Option<&'a Delivered>,
    error: Option<String>,
    retryable: bool,
    bundle_digest: Option<&'a str>,
    bundle_signer: Option<String>,
    policy_hash: &'a str,
    policy_team: Option<&'a str>,
    triggered_by: String,
    approved_by: Option<&'a str>,
    decisions: &'a [Decision],
    turns: Option<u32>,
    tokens: Option<u64>,
    tool_calls: Vec<String>,
    /// Side effects that failed without failing the job (e.g. Jira refused the PR's link).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

/// Writes `job.json` into the job directory when the attempt is over. It never fails the job: the record is for
/// people; the bundle is the proof.
pub(crate) struct RecordWriter {
    /// The public key the bundle is signed with, in hex.
    pub(crate) signer: String,
}

#[async_trait::async_trait]
impl Listener for RecordWriter {
    async fn on(&self, job: &Job<'_>, event: &Event) -> Result<(), JobError> {
        let Event::Finished {
            outcome,
            error,
            retryable,
            digest,
        } = event
        else {
            return Ok(());
        };
        let (spec, progress) = (job.spec, &job.progress);
        let record = JobRecord {
            job_id: &spec.job_id,
            attempt: spec.attempt.number,
            ticket: &spec.ticket,
            repo: progress.repo.as_deref(),
            branch: progress.branch.as_deref(),
            started_at: job.started.to_rfc3339(),
            finished_at: chrono::Utc::now().to_rfc3339(),
            outcome: outcome.as_ref(),
            error: error.clone(),
            retryable: *retryable,
            bundle_digest: digest.as_deref(),
            bundle_signer: Some(self.signer.clone()),
            policy_hash: &spec.policy.hash,
            policy_team: progress.team.as_deref(),
            triggered_by: spec.origin.describe(),
            approved_by: spec.approved_by.as_deref(),
            decisions: &progress.decisions,
            turns: progress.agent.as_ref().map(|a| a.turns),
            tokens: progress.agent.as_ref().map(|a| a.tokens),
            tool_calls: progress
                .tool_calls
                .iter()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        c.name,
                        c.detail,
                        if c.ok { "" } else { " (failed)" }
                    )
                })
                .collect(),
            notes: job.notes.lock().map(|n| n.clone()).unwrap_or_default(),
        };
        match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => {
                if let Err(e) = std::fs::write(job.dir.join("job.json"), bytes) {
                    tracing::warn!(error = %e, "could not write job.json");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode job.json"),
        }
        Ok(())
    }
}
