//! Fetch: the ticket from Jira, and its content digest for the run statement.

use crate::jira::{self, JiraClient, Ticket};
use crate::proof;

use super::super::error::JobError;
use super::super::events::Stage;
use super::super::job::Job;
use super::super::outcome::Refusal;
use super::super::text::cap;

/// Reads the ticket (after checking its key is one: no URL is built from anything else).
pub(crate) async fn fetch(job: &mut Job<'_>, jira: &JiraClient) -> Result<Ticket, JobError> {
    let key = job.ticket();
    job.stage(Stage::Fetch, key).await?;
    if !jira::valid_issue_key(key) {
        return Err(JobError::Refused(Refusal {
            rule: "ticket_key".into(),
            message: format!(
                "`{}` is not a Jira issue key (expected e.g. PROJ-123)",
                cap(key, 40)
            ),
        }));
    }
    let ticket = jira.issue(key).await?;
    job.progress.ticket_sha256 = Some(proof::sha256_hex(&ticket_canonical(&ticket)));
    Ok(ticket)
}

/// The ticket as the job saw it, in canonical JSON: its SHA-256 is the ticket's content digest in the run statement.
pub(crate) fn ticket_canonical(ticket: &Ticket) -> Vec<u8> {
    serde_json::to_value(ticket)
        .ok()
        .and_then(|v| proof::bundle::canonical_json(&v).ok())
        .unwrap_or_default()
}
