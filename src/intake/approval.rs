//! `drafter approve` comments: recognised in webhook deliveries and by polling a waiting job's ticket, checked
//! against the policy's approvers, and handed to the queue, which binds them to the request they answer.

use std::sync::Arc;

use super::*;

/// What the server needs to honour `drafter approve` comments: the policy in force (who may approve) and Jira
/// (group membership).
#[derive(Clone)]
pub struct Approvals {
    /// The policy new decisions use.
    pub policy: Arc<crate::policy::Current>,
    /// Group lookups.
    pub directory: Arc<dyn crate::policy::Directory>,
}

/// Honours one `drafter approve` comment: releases the ticket's job waiting for approval if the comment's author
/// may approve it under the policy in force. Returns whether the answer is final (`false`: the queue failed, retry)
/// and a JSON status for the webhook reply. Every decision is logged (`drafter::policy`).
pub async fn apply_approval(
    ap: &ApprovalComment,
    queue: &dyn Queue,
    approvals: Option<&Approvals>,
) -> (bool, Value) {
    use serde_json::json;
    let Some(approvals) = approvals else {
        return (
            true,
            json!({"status": "ignored", "reason": "approvals are not configured"}),
        );
    };
    let filter = JobFilter {
        state: Some(crate::queue::JobState::AwaitingApproval),
        ticket: Some(ap.ticket.clone()),
        limit: 10,
    };
    let waiting = match queue.list(&filter).await {
        Ok(jobs) => jobs,
        Err(e) => {
            return (
                false,
                json!({"status": "error", "reason": format!("queue: {e}")}),
            )
        }
    };
    let Some(job) = waiting.first() else {
        return (
            true,
            json!({"status": "ignored", "reason": "no job of this ticket is waiting for approval"}),
        );
    };
    let policy = approvals.policy.get();
    let ok = match policy
        .is_approver(&ap.project, &ap.author, approvals.directory.as_ref())
        .await
    {
        Ok(ok) => ok,
        Err(e) => {
            crate::policy::log_decision(
                &policy.hash,
                &ap.ticket,
                "approval",
                false,
                format!("could not check {}: {e}", ap.author),
            );
            return (
                false,
                json!({"status": "error", "reason": "could not check the approver"}),
            );
        }
    };
    if !ok {
        crate::policy::log_decision(
            &policy.hash,
            &ap.ticket,
            "approval",
            false,
            format!(
                "{} commented `drafter approve` but is not an approver; ignored",
                ap.author
            ),
        );
        return (
            true,
            json!({"status": "ignored", "reason": "the author is not an approver"}),
        );
    }
    // A comment proves when it was written only by its `created`; without one it cannot be told from an old one.
    let Some(created) = ap.created else {
        return (
            true,
            json!({"status": "ignored", "reason": "the comment carries no creation time"}),
        );
    };
    let comment = ApprovingComment {
        id: ap.comment_id.clone(),
        created,
    };
    match queue.approve(&job.id, &ap.author, Some(&comment)).await {
        Ok(Approved::Yes) => {
            crate::policy::log_decision(
                &policy.hash,
                &ap.ticket,
                "approval",
                true,
                format!("approved by {} (comment {})", ap.author, ap.comment_id),
            );
            (true, json!({"status": "approved", "job": job.id}))
        }
        Ok(other) => {
            let reason = other.refusal().unwrap_or("not approved");
            if other != Approved::NotAwaiting {
                crate::policy::log_decision(
                    &policy.hash,
                    &ap.ticket,
                    "approval",
                    false,
                    format!(
                        "{}'s comment {} does not approve job {}: {reason}",
                        ap.author, ap.comment_id, job.id
                    ),
                );
            }
            (true, json!({"status": "ignored", "reason": reason}))
        }
        Err(e) => (
            false,
            json!({"status": "error", "reason": format!("queue: {e}")}),
        ),
    }
}

/// For sites without webhooks: looks through the comments of every ticket whose job waits for approval and honours
/// `drafter approve` comments, like the webhook does: only comments created after the job's request, each at most
/// once.
pub async fn poll_approvals(
    jira: &JiraClient,
    jira_cfg: &JiraConfig,
    queue: &dyn Queue,
    approvals: &Approvals,
) {
    let filter = JobFilter {
        state: Some(crate::queue::JobState::AwaitingApproval),
        ticket: None,
        limit: 100,
    };
    let Ok(waiting) = queue.list(&filter).await else {
        return;
    };
    for job in waiting {
        let comments = match jira.comments(&job.ticket).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(ticket = %job.ticket, error = %e, "could not read comments for approvals");
                continue;
            }
        };
        let requested_at = job.approval.as_ref().map(|a| a.requested_at);
        for c in comments {
            if let Some(ap) = approval_from_comment(&c, &job.ticket, jira_cfg) {
                // Older comments are for earlier requests: not worth a queue round trip (the queue refuses them too).
                if ap.created.zip(requested_at).is_some_and(|(c, r)| c <= r) {
                    continue;
                }
                let (_, outcome) = apply_approval(&ap, queue, Some(approvals)).await;
                if outcome["status"] == "approved" {
                    break;
                }
            }
        }
    }
}

/// A `drafter approve` comment: someone asks for a job of `ticket` waiting for approval to run. Whether `author` may
/// approve is the policy's question, not intake's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalComment {
    /// The issue key.
    pub ticket: String,
    /// Its project key.
    pub project: String,
    /// Who wrote the comment: `accountId` on Cloud, the user name (else key) on Data Center.
    pub author: String,
    /// The comment's id: it approves at most one job.
    pub comment_id: String,
    /// When Jira says the comment was created (`created`); it must be after the approval request. `None` when the
    /// comment carries no readable time, and then it approves nothing.
    pub created: Option<DateTime<Utc>>,
}

/// The approval in a `comment_created` webhook payload, if it carries one; `None` for anything else.
///
/// **The command.** A comment approves when one of its lines is exactly `drafter approve` ([`APPROVE_COMMAND`]):
/// any letter case, any whitespace around and between the two words, optionally preceded by a mention of the bot
/// (`[~accountid:<bot>]` or `[~<bot name>]` in wiki markup, an ADF `mention` node of the bot), optionally followed by
/// `:` or `,` after the mention. Other lines may say anything. Not a command: the words inside a sentence
/// (`please drafter approve this`), with other text on the line (`drafter approve!`), preceded by a mention of
/// someone else, or inside a quote or code block (`{quote}`, `{code}`, `{noformat}`, ADF `blockquote`/`codeBlock`,
/// Markdown fences).
///
/// **Who.** The comment's author, who must not be the bot (drafter's own comments never approve), and must be the
/// comment's `updateAuthor` when that is given (a comment edited by someone else into an approval is not one).
///
/// `issue_key_hint` is the key from the webhook URL, for Data Center payloads without `issue` (as in
/// [`from_webhook`]; the server first checks it against the payload, see [`payload_issue`]). The comment's `created`
/// is kept: the queue honours only comments created after the approval request, each id once. A payload without a usable issue key, author or comment id gives `None`. [`from_webhook`]
/// ignores every comment that contains the command, so call this first and route what it returns to the queue's
/// approval; the comment never starts a job.
pub fn approval_from_webhook(
    payload: &Value,
    issue_key_hint: Option<&str>,
    jira: &JiraConfig,
) -> Option<ApprovalComment> {
    if payload.get("webhookEvent").and_then(Value::as_str) != Some("comment_created") {
        return None;
    }
    let (ticket, project) = issue_key(payload, issue_key_hint).ok()?;
    let comment = payload.get("comment").filter(|c| c.is_object())?;
    approval_of(comment, ticket, project, jira)
}

/// The approval in one comment of [`JiraClient::comments`] (`id`, `author`, `updateAuthor`, `body`: ADF on Cloud,
/// wiki markup on Data Center) of issue `ticket`; the same rules as [`approval_from_webhook`]. For a poll of the
/// comments of a job waiting for approval.
pub fn approval_from_comment(
    comment: &Value,
    ticket: &str,
    jira: &JiraConfig,
) -> Option<ApprovalComment> {
    let project = project_of(ticket)?.to_string();
    approval_of(comment, ticket.to_string(), project, jira)
}

pub(super) fn approval_of(
    comment: &Value,
    ticket: String,
    project: String,
    jira: &JiraConfig,
) -> Option<ApprovalComment> {
    let author = comment.get("author").filter(|a| a.is_object())?;
    if is_bot_user(author, jira) {
        return None;
    }
    let author_id = user_id(author)?;
    if let Some(editor) = comment.get("updateAuthor").filter(|u| u.is_object()) {
        if is_bot_user(editor, jira) || user_id(editor).as_deref() != Some(author_id.as_str()) {
            return None;
        }
    }
    if !approval_in_body(comment.get("body")?, jira) {
        return None;
    }
    Some(ApprovalComment {
        ticket,
        project,
        author: author_id,
        comment_id: comment.get("id").and_then(id_string)?,
        created: comment
            .get("created")
            .and_then(Value::as_str)
            .and_then(jira_time),
    })
}
