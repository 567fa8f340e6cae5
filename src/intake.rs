//! Intake: turning Jira webhook deliveries and JQL poll results into [`NewJob`]s.
//!
//! The model: two ways in, one way out. A webhook payload ([`from_webhook`]) or a search hit ([`from_search_issue`])
//! either becomes a [`NewJob`] for the queue or is ignored with a reason that goes into the audit log. The decision
//! functions are pure (no I/O, the clock is a parameter), so every branch is unit-tested; [`poll_loop`] is the only
//! part that talks to Jira and the queue.
//!
//! What triggers a job:
//! - `jira:issue_updated` whose changelog sets the assignee to the bot (Cloud: `to`/`tmpToAccountId` is the bot's
//!   account id; Data Center: `to` is its user key, or its user name);
//! - `jira:issue_created` with the bot as assignee;
//! - `comment_created` whose body mentions the bot (wiki markup `[~accountid:<id>]` / `[~username]`, or an ADF
//!   `mention` node), unless the bot wrote it;
//! - a poll hit: a ticket the JQL `assignee = <bot>` finds. Its `triggered_by` is who made the latest assignment to
//!   the bot, read from the issue's full change history ([`JiraClient::assigned_by_any`], one request per new hit),
//!   else from the search's own history entry, else (a ticket created already assigned) its creator; `None` when
//!   none is known, which the policy treats as "nobody allowed".
//!
//! What does not trigger, but is routed elsewhere: a `comment_created` whose comment is the approval command
//! `drafter approve` (see [`approval_from_webhook`]). [`from_webhook`] ignores it, so an approval never starts a
//! job; the server asks [`approval_from_webhook`] first and hands the approval to the queue.
//!
//! # Delivery keys: why the payload's ids come before the delivery header
//! The queue never makes two jobs for one delivery key, so the key decides what counts as "the same trigger". Keys
//! name the Jira *change*, not the HTTP delivery, so that every source of the same change agrees:
//! - an assignment is `changelog:<changelog id>`: Jira's retries of a delivery carry it unchanged, a second admin
//!   webhook for the same event carries it too, and the poll finds the same id in the issue's change history;
//! - a ticket created already assigned to the bot is `created:<issue id>` (creation leaves no assignee history
//!   entry, so the poll uses the same key when it finds none);
//! - a comment is `comment:<comment id>`.
//!
//! Only when the payload has no such id does the `X-Atlassian-Webhook-Identifier` header (unique per delivery,
//! the same on retries) serve, and failing that a SHA-256 of the payload. Had the header come first, a webhook job
//! and a later poll of the same still-assigned ticket would carry different keys, and once the webhook's job had
//! finished (no open job to absorb into) the poll would start a second, needless run.
//!
//! # Poll dedup
//! A poll sees a ticket on every round for as long as it stays assigned to the bot. Its key is the id of the latest
//! change-history entry that assigned the bot (`expand=changelog` on the search), else `created:<issue id>`:
//! - the same assignment seen on every poll has the same key, so it is a duplicate, whether or not its job has
//!   finished, and across restarts (no in-memory state);
//! - a ticket re-assigned to the bot later has a new history entry, hence a new key, hence a new job;
//! - while a job is open, a re-assignment is absorbed into it by the queue.
//!
//! Keys such as `poll:<KEY>:<fields.updated>` would make a job per comment; `poll:<KEY>` alone would never run a
//! re-assigned ticket again. The cost: the search returns each issue's recent histories. Jira caps those per issue,
//! so a ticket with more changes than the cap since its assignment may get an older id (a re-assignment then goes
//! unnoticed by the poll until the webhook or the next re-assignment); this is documented, not hidden.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{JiraConfig, JiraFlavor, PollConfig};
use crate::jira::{adf_to_markdown, project_of, valid_issue_key, JiraClient, JiraError};
use crate::queue::{
    Approved, ApprovingComment, Enqueued, JobFilter, NewJob, Queue, QueueError, Trigger,
};

/// Comment text recorded on a trigger is cut at this many bytes (on a character boundary), and the cut is said.
pub const MAX_TRIGGER_TEXT_BYTES: usize = 4 * 1024;
/// Fields the poll asks for: what [`from_search_issue`] reads.
pub const POLL_FIELDS: &[&str] = &["assignee", "creator", "project", "status", "updated"];
/// The approval command, matched case-insensitively on a line of its own (see [`approval_in_comment`]).
pub const APPROVE_COMMAND: &str = "drafter approve";
/// Pages one poll reads at most (100 issues each): a server that pages forever must not hold the loop.
const MAX_POLL_PAGES: usize = 100;
/// Cap on identifiers copied from payloads into keys and triggers (characters).
const MAX_ID_CHARS: usize = 200;
/// ADF nesting walked when looking for a mention.
const MAX_MENTION_DEPTH: usize = crate::jira::MAX_ADF_DEPTH;

/// What to do with a webhook delivery.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Enqueue this job.
    Trigger(NewJob),
    /// Do nothing; the reason is for the audit line.
    Ignore(String),
}

/// Decides what a webhook payload means (see the module docs for what triggers).
///
/// - `delivery_header`: `X-Atlassian-Webhook-Identifier`, if sent (Cloud).
/// - `issue_key_hint`: the issue key from the webhook URL (`?issue=${issue.key}`), for Data Center comment payloads
///   that carry no `issue`. Used only when the payload names no issue key: the signed body wins over the unsigned
///   URL (and the server refuses a delivery whose hint disagrees with the payload, see [`payload_issue`]).
pub fn from_webhook(
    payload: &Value,
    delivery_header: Option<&str>,
    issue_key_hint: Option<&str>,
    jira: &JiraConfig,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Decision {
    let event = payload
        .get("webhookEvent")
        .and_then(Value::as_str)
        .unwrap_or("");
    let event_name = clean_id(event);
    let (ticket, project) = match issue_key(payload, issue_key_hint) {
        Ok(k) => k,
        Err(why)
            if matches!(
                event,
                "jira:issue_updated" | "jira:issue_created" | "comment_created"
            ) =>
        {
            return Decision::Ignore(why)
        }
        Err(_) => (String::new(), String::new()),
    };
    let job = |delivery: String, triggered_by: Option<String>, text: Option<String>| {
        Decision::Trigger(NewJob {
            ticket: ticket.clone(),
            project: project.clone(),
            trigger: Trigger {
                delivery,
                source: format!("webhook:{event_name}"),
                triggered_by,
                text,
                at: now,
            },
            max_attempts,
        })
    };
    let fallback_key = || delivery_fallback(delivery_header, payload);

    match event {
        "jira:issue_updated" => {
            let items = payload
                .pointer("/changelog/items")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let assignee_items: Vec<&Value> =
                items.iter().filter(|i| is_assignee_item(i)).collect();
            if assignee_items.is_empty() {
                return Decision::Ignore("issue update does not change the assignee".into());
            }
            if !assignee_items.iter().any(|i| assigns_bot(i, jira)) {
                return Decision::Ignore("assignee changed to someone else".into());
            }
            let delivery = payload
                .pointer("/changelog/id")
                .and_then(id_string)
                .map(|id| format!("changelog:{id}"))
                .unwrap_or_else(fallback_key);
            job(delivery, payload.get("user").and_then(user_id), None)
        }
        "jira:issue_created" => {
            let assignee = payload.pointer("/issue/fields/assignee");
            if !assignee.is_some_and(|a| is_bot_user(a, jira)) {
                return Decision::Ignore("new issue is not assigned to the bot".into());
            }
            let delivery = payload
                .pointer("/issue/id")
                .and_then(id_string)
                .map(|id| format!("created:{id}"))
                .unwrap_or_else(fallback_key);
            job(delivery, payload.get("user").and_then(user_id), None)
        }
        "comment_created" => {
            let Some(comment) = payload.get("comment").filter(|c| c.is_object()) else {
                return Decision::Ignore("comment event without a comment".into());
            };
            if comment.get("author").is_some_and(|a| is_bot_user(a, jira)) {
                return Decision::Ignore("comment written by the bot".into());
            }
            let body = comment.get("body").unwrap_or(&Value::Null);
            // Checked before the mention: `[~bot] drafter approve` mentions the bot but asks for no new job.
            if approval_in_body(body, jira) {
                return Decision::Ignore(
                    "comment is the approval command (drafter approve), not a trigger".into(),
                );
            }
            if !mentions_bot(body, jira) {
                return Decision::Ignore("comment does not mention the bot".into());
            }
            let delivery = comment
                .get("id")
                .and_then(id_string)
                .map(|id| format!("comment:{id}"))
                .unwrap_or_else(fallback_key);
            let text = cap_text(&adf_to_markdown(body));
            job(
                delivery,
                comment.get("author").and_then(user_id),
                (!text.is_empty()).then_some(text),
            )
        }
        "" => Decision::Ignore("payload has no webhookEvent".into()),
        _ => Decision::Ignore(format!("event {event_name} is not a trigger")),
    }
}

/// Turns one issue from the poll's search into a job, if it is assigned to the bot and has a valid key. The delivery
/// key is `changelog:<id>` of the newest visible history entry that assigned the bot, else `created:<issue id>`
/// (see the module docs for why this dedups correctly). `triggered_by` is whoever made that assignment, or the
/// issue's creator (`fields.creator`) when there is none. [`poll_once`] may replace it with the author of the latest
/// assignment in the full change history.
pub fn from_search_issue(
    issue: &Value,
    jira: &JiraConfig,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Option<NewJob> {
    let key = issue
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| valid_issue_key(k))?;
    let project = project_of(key)?.to_string();
    // The JQL asked for this already; a stale or odd answer must not start a job anyway.
    if !issue
        .pointer("/fields/assignee")
        .is_some_and(|a| is_bot_user(a, jira))
    {
        return None;
    }
    let latest = issue
        .pointer("/changelog/histories")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|h| {
            h.get("items")
                .and_then(Value::as_array)
                .is_some_and(|items| items.iter().any(|i| assigns_bot(i, jira)))
        })
        .filter_map(|h| {
            let id = h.get("id").and_then(id_string)?;
            let n: u64 = id.parse().ok()?;
            Some((n, h))
        })
        .max_by_key(|(n, _)| *n);
    let (delivery, triggered_by) = match latest {
        Some((n, h)) => (format!("changelog:{n}"), h.get("author").and_then(user_id)),
        // Created already assigned: whoever created it chose the assignee (the webhook path takes the
        // `jira:issue_created` event's `user`, the same person).
        None => {
            let creator = issue.pointer("/fields/creator").and_then(user_id);
            match issue.get("id").and_then(id_string) {
                Some(id) => (format!("created:{id}"), creator),
                None => (format!("poll:{key}"), creator),
            }
        }
    };
    Some(NewJob {
        ticket: key.to_string(),
        project,
        trigger: Trigger {
            delivery,
            source: "poll".into(),
            triggered_by,
            text: None,
            at: now,
        },
        max_attempts,
    })
}

/// The poll's JQL: `assignee = "<bot>" [AND project in ("A", "B")] [AND status in ("x")] ORDER BY updated DESC`.
/// Every value from the configuration is a quoted, escaped JQL string. The bot is its account id on Cloud and its
/// user name (else its key) on Data Center. An empty project list polls every project (the worker refuses tickets
/// of projects that are not allowlisted).
pub fn poll_jql(cfg: &PollConfig, jira: &JiraConfig) -> String {
    let bot = match (jira.flavor, &jira.bot_username) {
        (JiraFlavor::Datacenter, Some(name)) => name.as_str(),
        _ => jira.bot_account_id.as_str(),
    };
    let mut jql = format!("assignee = {}", jql_quote(bot));
    let list = |values: &[String]| {
        values
            .iter()
            .map(|v| jql_quote(v))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !cfg.projects.is_empty() {
        jql.push_str(&format!(" AND project in ({})", list(&cfg.projects)));
    }
    if !cfg.statuses.is_empty() {
        jql.push_str(&format!(" AND status in ({})", list(&cfg.statuses)));
    }
    jql.push_str(" ORDER BY updated DESC");
    jql
}

/// A JQL string literal: double quotes, with `"` and `\` escaped and control characters dropped, so a value from the
/// configuration can never end the string and add clauses.
pub fn jql_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Issues the search returned.
    pub issues: usize,
    /// New jobs.
    pub created: usize,
    /// Assignments already seen.
    pub duplicate: usize,
    /// Triggers recorded on an open job.
    pub absorbed: usize,
    /// Issues that did not make a job (bad key, not assigned to the bot).
    pub skipped: usize,
}

/// Why one poll failed (the loop logs it and tries again next interval).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The search failed.
    #[error("poll: {0}")]
    Jira(#[from] JiraError),
    /// The queue refused a job.
    #[error("poll: {0}")]
    Queue(#[from] QueueError),
    /// The search's paging misbehaved (a repeated token, too many pages).
    #[error("poll: {0}")]
    Paging(String),
}

impl PollError {
    /// How long Jira asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Jira(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// One poll: runs [`poll_jql`] through every page (with `expand=changelog`) and enqueues each hit. For a hit whose
/// delivery key the queue has not seen, `triggered_by` is set from [`JiraClient::assigned_by_any`] (one request);
/// if that fails, the search's own answer stays (see [`from_search_issue`]). Stops at the first queue error (the
/// next poll enqueues again; dedup makes that safe).
pub async fn poll_once(
    jira: &JiraClient,
    cfg: &PollConfig,
    jira_cfg: &JiraConfig,
    queue: &dyn Queue,
    max_attempts: u32,
) -> Result<PollStats, PollError> {
    let jql = poll_jql(cfg, jira_cfg);
    let mut stats = PollStats::default();
    let mut token: Option<String> = None;
    for _ in 0..MAX_POLL_PAGES {
        let page = jira
            .search_expanded(&jql, POLL_FIELDS, &["changelog"], token.as_deref())
            .await?;
        stats.issues += page.issues.len();
        for issue in &page.issues {
            let Some(mut job) = from_search_issue(issue, jira_cfg, max_attempts, Utc::now()) else {
                stats.skipped += 1;
                continue;
            };
            // Only a delivery the queue has not seen costs a request: a ticket stays assigned (and found) for days.
            if is_new_delivery(queue, &job).await? {
                fill_assigner(jira, jira_cfg, &mut job).await;
            }
            let ticket = job.ticket.clone();
            let delivery = job.trigger.delivery.clone();
            match queue.enqueue(job).await? {
                Enqueued::Created(id) => {
                    stats.created += 1;
                    tracing::info!(target: "audit", ticket, delivery, job = id, "poll: job created");
                }
                Enqueued::Absorbed(id) => {
                    stats.absorbed += 1;
                    tracing::info!(target: "audit", ticket, delivery, job = id, "poll: trigger absorbed by open job");
                }
                Enqueued::Duplicate(_) => stats.duplicate += 1,
                Enqueued::Overflow(id) => {
                    stats.duplicate += 1;
                    tracing::warn!(target: "audit", ticket, delivery, job = id,
                        "poll: trigger not kept: the open job already keeps the most triggers a job may");
                }
            }
        }
        match page.next {
            None => return Ok(stats),
            Some(next) if token.as_deref() == Some(next.as_str()) => {
                return Err(PollError::Paging(
                    "Jira returned the same page token twice".into(),
                ))
            }
            Some(next) => token = Some(next),
        }
    }
    Err(PollError::Paging(format!(
        "more than {MAX_POLL_PAGES} pages of results; narrow the poll's projects or statuses"
    )))
}

/// Honours one `drafter approve` comment: releases the ticket's job waiting for approval if the comment's author
/// may approve it under the policy in force. Returns whether the answer is final (`false`: the queue failed, retry)
/// and a JSON status for the webhook reply. Every decision is logged (`drafter::policy`).
pub async fn apply_approval(
    ap: &ApprovalComment,
    queue: &dyn Queue,
    approvals: Option<&crate::server::Approvals>,
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
    approvals: &crate::server::Approvals,
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

/// Polls every `cfg.interval_secs` (at least 1 s; the first poll runs at once) until `shutdown` completes, which
/// stops it promptly, also in the middle of a poll (an enqueue is one transaction, so nothing is left half done).
/// Failures are logged and retried next interval, or after Jira's `Retry-After` when that is longer. Returns at once
/// when `cfg.enabled` is false.
pub async fn poll_loop(
    jira: JiraClient,
    cfg: PollConfig,
    jira_cfg: JiraConfig,
    queue: Arc<dyn Queue>,
    max_attempts: u32,
    shutdown: impl Future<Output = ()>,
) {
    if !cfg.enabled {
        tracing::info!("poll: disabled");
        return;
    }
    let interval = Duration::from_secs(cfg.interval_secs.max(1));
    tracing::info!(
        interval_secs = interval.as_secs(),
        jql = %poll_jql(&cfg, &jira_cfg),
        "poll: started"
    );
    tokio::pin!(shutdown);
    loop {
        let wait = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = poll_once(&jira, &cfg, &jira_cfg, queue.as_ref(), max_attempts) => match r {
                Ok(s) => {
                    tracing::info!(
                        issues = s.issues, created = s.created, duplicate = s.duplicate,
                        absorbed = s.absorbed, skipped = s.skipped, "poll: done"
                    );
                    interval
                }
                Err(e) => {
                    let wait = e.retry_after().map_or(interval, |ra| ra.max(interval));
                    tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "poll: failed");
                    wait
                }
            },
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("poll: stopped");
}

/// Whether no job of the ticket has recorded this delivery key yet (the queue would create or absorb it). Reads the
/// ticket's newest jobs; an older job holding the key only costs one needless lookup.
async fn is_new_delivery(queue: &dyn Queue, job: &NewJob) -> Result<bool, QueueError> {
    let jobs = queue
        .list(&JobFilter {
            ticket: Some(job.ticket.clone()),
            ..JobFilter::default()
        })
        .await?;
    Ok(!jobs.iter().any(|j| {
        j.triggers
            .iter()
            .any(|t| t.delivery == job.trigger.delivery)
    }))
}

/// Sets `triggered_by` to the author of the latest assignment to the bot in the issue's full change history. The
/// search's histories may be cut short by Jira, so they may miss the latest one; when the full history has no
/// answer (none, or the request failed), what the search said stays.
async fn fill_assigner(jira: &JiraClient, cfg: &JiraConfig, job: &mut NewJob) {
    let mut bot: Vec<&str> = vec![cfg.bot_account_id.as_str()];
    if cfg.flavor == JiraFlavor::Datacenter {
        // Old Data Center versions record the assignee by name instead of key.
        bot.extend(cfg.bot_username.as_deref());
    }
    match jira.assigned_by_any(&job.ticket, &bot).await {
        Ok(Some(by)) => job.trigger.triggered_by = Some(clean_id(&by)),
        Ok(None) => tracing::debug!(
            ticket = %job.ticket,
            triggered_by = ?job.trigger.triggered_by,
            "poll: no assignment to the bot in the change history"
        ),
        Err(e) => tracing::warn!(
            ticket = %job.ticket,
            error = %e,
            triggered_by = ?job.trigger.triggered_by,
            "poll: cannot read who assigned the ticket; keeping the search's answer"
        ),
    }
}

// ---- approvals -----------------------------------------------------------------------------------------------------

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

fn approval_of(
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

/// A Jira timestamp: `2025-03-02T10:35:00.000+0000` (REST and webhooks), or RFC 3339.
pub fn jira_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s.trim()))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How a webhook payload names its issue, to check the unsigned `?issue=` hint against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadIssue {
    /// `issue.key`.
    Key(String),
    /// Only an issue id: `issue.id`, or the one in `comment.self` (`.../issue/<id>/comment/<id>`, as Data Center
    /// comment payloads carry it).
    Id(String),
    /// Nothing: only the hint can say.
    Unnamed,
}

/// What the (signed) payload says its issue is; see [`PayloadIssue`].
pub fn payload_issue(payload: &Value) -> PayloadIssue {
    if let Some(Value::String(k)) = payload.pointer("/issue/key") {
        return PayloadIssue::Key(k.clone());
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(id) = payload
        .pointer("/issue/id")
        .and_then(id_string)
        .filter(|id| digits(id))
    {
        return PayloadIssue::Id(id);
    }
    let from_self = payload
        .pointer("/comment/self")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| {
            let segs: Vec<String> = u.path_segments()?.map(str::to_string).collect();
            let at = segs.iter().rposition(|s| s == "issue")?;
            segs.get(at + 1).filter(|id| digits(id)).cloned()
        });
    match from_self {
        Some(id) => PayloadIssue::Id(id),
        None => PayloadIssue::Unnamed,
    }
}

/// Whether a comment body (a wiki-markup string, or an ADF document) contains the approval command, with only the
/// bot accepted as the leading mention. See [`approval_from_webhook`] for the exact rule.
pub fn approval_in_body(body: &Value, jira: &JiraConfig) -> bool {
    let bot = |target: &str| wiki_target_is_bot(target, jira);
    match body {
        Value::String(s) => text_has_approval(s, &bot, false),
        Value::Object(_) | Value::Array(_) => {
            let mut text = String::new();
            adf_command_text(body, 0, &mut text);
            text_has_approval(&text, &bot, false)
        }
        _ => false,
    }
}

/// Whether plain comment text (wiki markup, or Markdown as [`adf_to_markdown`] renders ADF) has a line that is the
/// approval command `drafter approve` (see [`approval_from_webhook`]). Without the Jira settings it cannot tell
/// whose mention leads the line, so it accepts one leading mention of anyone: `[~...]`, or an `@name` word as the
/// Markdown of an ADF mention has it (display names with spaces are not recognised: use [`approval_in_body`] on the
/// ADF itself for those).
pub fn approval_in_comment(body_text: &str) -> bool {
    text_has_approval(body_text, &|_| true, true)
}

/// The line rule over every line outside quote and code blocks. `mention_ok` judges a leading `[~target]`;
/// `at_mentions` also allows a leading `@word`.
fn text_has_approval(text: &str, mention_ok: &dyn Fn(&str) -> bool, at_mentions: bool) -> bool {
    // The block that is open, by its opening tag; its lines are quotations or code, not commands.
    let mut open: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            open = match open {
                Some("```") => None,
                None => Some("```"),
                other => other,
            };
            continue;
        }
        let lower = t.to_lowercase();
        let mut tagged = false;
        for tag in ["{quote}", "{code", "{noformat"] {
            let n = lower.matches(tag).count();
            tagged |= n > 0;
            if n % 2 == 1 {
                open = match open {
                    Some(o) if o == tag => None,
                    None => Some(tag),
                    other => other,
                };
            }
        }
        if open.is_none() && !tagged && approval_line(t, mention_ok, at_mentions) {
            return true;
        }
    }
    false
}

fn approval_line(line: &str, mention_ok: &dyn Fn(&str) -> bool, at_mentions: bool) -> bool {
    let mut rest = line.trim();
    if let Some(after) = rest.strip_prefix("[~") {
        let Some(end) = after.find(']') else {
            return false;
        };
        if !mention_ok(&after[..end]) {
            return false;
        }
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
    } else if let Some(after) = rest.strip_prefix('@').filter(|_| at_mentions) {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        rest = after[end..].trim_start();
        rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
    }
    let mut words = rest.split_whitespace();
    APPROVE_COMMAND
        .split_whitespace()
        .all(|c| words.next().is_some_and(|w| w.eq_ignore_ascii_case(c)))
        && words.next().is_none()
}

/// The text of an ADF body as lines for [`text_has_approval`]: text nodes as they are, a mention as
/// `[~accountid:<id>]`, other inline nodes as a placeholder (so a line with them is never the bare command), one
/// line per block and per hard break; quotes and code blocks left out.
fn adf_command_text(node: &Value, depth: usize, out: &mut String) {
    if depth > MAX_MENTION_DEPTH {
        return;
    }
    match node {
        Value::Array(nodes) => {
            for n in nodes {
                adf_command_text(n, depth + 1, out);
            }
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => {
                if let Some(t) = o.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
            "mention" => {
                let id = node
                    .pointer("/attrs/id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // A `]` in an id would end the mention early; such an id is never the bot's anyway.
                out.push_str(&format!("[~accountid:{}]", id.replace(']', "")));
            }
            "hardBreak" => out.push('\n'),
            "codeBlock" | "blockquote" => out.push('\n'),
            t if INLINE_NODE_TYPES.contains(&t) => out.push('\u{fffc}'),
            _ => {
                // A block: its own lines.
                out.push('\n');
                if let Some(c) = o.get("content") {
                    adf_command_text(c, depth + 1, out);
                }
                out.push('\n');
            }
        },
        _ => {}
    }
}

/// Inline ADF nodes other than text, mentions and hard breaks.
const INLINE_NODE_TYPES: &[&str] = &[
    "emoji",
    "date",
    "status",
    "inlineCard",
    "mediaInline",
    "placeholder",
    "inlineExtension",
];

// ---- helpers -------------------------------------------------------------------------------------------------------

/// The ticket key and project: `issue.key` when present (it must be valid), else the URL hint.
fn issue_key(payload: &Value, hint: Option<&str>) -> Result<(String, String), String> {
    let key = match payload.pointer("/issue/key") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("issue.key is not a string".into()),
        None => match hint {
            Some(h) => h,
            None => {
                return Err(
                    "payload names no issue (on Data Center, add ?issue=${issue.key} to the webhook URL)"
                        .into(),
                )
            }
        },
    };
    match project_of(key) {
        Some(project) => Ok((key.to_string(), project.to_string())),
        None => Err(format!("{:?} is not a valid issue key", cap_chars(key, 40))),
    }
}

fn is_assignee_item(item: &Value) -> bool {
    let named = |k: &str| item.get(k).and_then(Value::as_str) == Some("assignee");
    named("fieldId") || named("field")
}

/// Whether a changelog item sets the assignee to the bot: Cloud `to`/`tmpToAccountId` is the account id; Data Center
/// `to` is the user key (configured as `bot_account_id`) or, on old versions, the user name.
fn assigns_bot(item: &Value, jira: &JiraConfig) -> bool {
    if !is_assignee_item(item) {
        return false;
    }
    let s = |k: &str| {
        item.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let is_id = |v: Option<&str>| v.is_some_and(|v| v == jira.bot_account_id);
    let is_name = |v: Option<&str>| {
        v.zip(jira.bot_username.as_deref())
            .is_some_and(|(v, n)| v.eq_ignore_ascii_case(n))
    };
    is_id(s("to")) || is_id(s("tmpToAccountId")) || is_name(s("to"))
}

/// Whether a user object (`assignee`, `author`, `user`) is the bot: Cloud `accountId`; Data Center `key` or `name`.
pub(crate) fn is_bot_user(user: &Value, jira: &JiraConfig) -> bool {
    let s = |k: &str| {
        user.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if s("accountId").is_some_and(|v| v == jira.bot_account_id)
        || s("key").is_some_and(|v| v == jira.bot_account_id)
    {
        return true;
    }
    // Data Center user names are case-insensitive.
    s("name").is_some_and(|n| {
        n.eq_ignore_ascii_case(&jira.bot_account_id)
            || jira
                .bot_username
                .as_deref()
                .is_some_and(|b| n.eq_ignore_ascii_case(b))
    })
}

/// A user's id for the trigger: `accountId` (Cloud), else `name`, else `key` (Data Center).
fn user_id(user: &Value) -> Option<String> {
    ["accountId", "name", "key"]
        .iter()
        .find_map(|k| {
            user.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        })
        .map(clean_id)
        .filter(|v| !v.is_empty())
}

/// Whether a comment body mentions the bot: a wiki-markup string (`[~accountid:<id>]` on Cloud webhooks,
/// `[~username]` on Data Center), or an ADF document with a `mention` node whose `attrs.id` is the bot.
fn mentions_bot(body: &Value, jira: &JiraConfig) -> bool {
    match body {
        Value::String(s) => wiki_mentions_bot(s, jira),
        Value::Object(_) | Value::Array(_) => adf_mentions_bot(body, jira, 0),
        _ => false,
    }
}

fn wiki_mentions_bot(text: &str, jira: &JiraConfig) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("[~") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(']') else {
            return false;
        };
        if wiki_target_is_bot(&after[..end], jira) {
            return true;
        }
        rest = &after[end..];
    }
    false
}

/// Whether the inside of a wiki mention `[~...]` names the bot: `accountid:<id>` (Cloud), or the bot's user name
/// (case-insensitive) or key (Data Center).
fn wiki_target_is_bot(target: &str, jira: &JiraConfig) -> bool {
    let target = target.trim();
    if target.is_empty() {
        return false;
    }
    let by_id = target
        .strip_prefix("accountid:")
        .or_else(|| target.strip_prefix("accountId:"))
        .map_or(target == jira.bot_account_id, |id| {
            id.trim() == jira.bot_account_id
        });
    let by_name = jira
        .bot_username
        .as_deref()
        .is_some_and(|n| target.eq_ignore_ascii_case(n));
    by_id || by_name
}

fn adf_mentions_bot(node: &Value, jira: &JiraConfig, depth: usize) -> bool {
    if depth > MAX_MENTION_DEPTH {
        return false;
    }
    match node {
        Value::Array(nodes) => nodes.iter().any(|n| adf_mentions_bot(n, jira, depth + 1)),
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("mention")
                && node
                    .pointer("/attrs/id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id == jira.bot_account_id)
            {
                return true;
            }
            o.get("content")
                .is_some_and(|c| adf_mentions_bot(c, jira, depth + 1))
        }
        _ => false,
    }
}

/// An id from a payload (string or number), if it is a plain token fit for a key.
fn id_string(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    .then_some(s)
}

/// The delivery key when the payload has no change id: the delivery header (if sane), else `sha256:<hex>` of the
/// payload (serde_json writes object keys sorted, so the same payload always hashes the same).
fn delivery_fallback(header: Option<&str>, payload: &Value) -> String {
    if let Some(h) = header.map(str::trim).filter(|h| {
        !h.is_empty() && h.len() <= MAX_ID_CHARS && h.chars().all(|c| c.is_ascii_graphic())
    }) {
        return format!("delivery:{h}");
    }
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// Control characters removed, capped: identifiers end up in logs and the queue.
fn clean_id(s: &str) -> String {
    cap_chars(
        &s.chars().filter(|c| !c.is_control()).collect::<String>(),
        MAX_ID_CHARS,
    )
}

fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Cuts trigger text at [`MAX_TRIGGER_TEXT_BYTES`] on a character boundary and says so.
fn cap_text(s: &str) -> String {
    if s.len() <= MAX_TRIGGER_TEXT_BYTES {
        return s.to_string();
    }
    let mut cut = MAX_TRIGGER_TEXT_BYTES;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[comment cut by drafter at {cut} bytes]", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JiraAuth, Secret};
    use serde_json::json;

    const BOT: &str = "712020:bot-0001";

    fn cloud() -> JiraConfig {
        JiraConfig {
            base_url: "https://x.atlassian.net".into(),
            bot_account_id: BOT.into(),
            bot_username: None,
            flavor: JiraFlavor::Cloud,
            auth: JiraAuth::Basic {
                email: "bot@example.com".into(),
                token: Secret::new("t").into(),
            },
            acceptance_criteria_fields: Vec::new(),
        }
    }

    fn dc() -> JiraConfig {
        JiraConfig {
            bot_account_id: "JIRAUSER10100".into(),
            bot_username: Some("drafter".into()),
            flavor: JiraFlavor::Datacenter,
            ..cloud()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn decide(p: &Value, header: Option<&str>, hint: Option<&str>, j: &JiraConfig) -> Decision {
        from_webhook(p, header, hint, j, 5, now())
    }

    fn job(d: Decision) -> NewJob {
        match d {
            Decision::Trigger(j) => j,
            Decision::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    fn ignored(d: Decision) -> String {
        match d {
            Decision::Ignore(why) => why,
            Decision::Trigger(j) => panic!("triggered: {j:?}"),
        }
    }

    /// The reference's Cloud assignment payload.
    fn assigned(to: &str) -> Value {
        json!({"timestamp": 1740947640940u64, "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_assigned",
            "user": {"accountId": "712020:ben", "displayName": "Ben"},
            "issue": {"id": "10411", "key": "TM-100", "fields": {"summary": "s", "project": {"key": "TM"},
                "assignee": {"accountId": to}}},
            "changelog": {"id": "10518", "items": [{"field": "assignee", "fieldtype": "jira", "fieldId": "assignee",
                "from": null, "fromString": null, "to": to, "toString": "Bot", "tmpFromAccountId": null,
                "tmpToAccountId": to}]}})
    }

    fn comment(author: Value, body: Value) -> Value {
        json!({"webhookEvent": "comment_created",
            "comment": {"id": "10501", "self": "https://x.atlassian.net/rest/api/2/issue/10042/comment/10501",
                "author": author, "body": body},
            "issue": {"id": "10042", "key": "PROJ-17", "fields": {"summary": "s"}}})
    }

    #[test]
    fn assignment_to_bot_triggers() {
        let j = job(decide(&assigned(BOT), Some("hdr-1"), None, &cloud()));
        assert_eq!(j.ticket, "TM-100");
        assert_eq!(j.project, "TM");
        assert_eq!(j.max_attempts, 5);
        assert_eq!(j.trigger.delivery, "changelog:10518");
        assert_eq!(j.trigger.source, "webhook:jira:issue_updated");
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ben"));
        assert_eq!(j.trigger.text, None);
        assert_eq!(j.trigger.at, now());
    }

    #[test]
    fn assignment_matches_on_field_or_tmp_account() {
        let mut p = assigned(BOT);
        p["changelog"]["items"][0]["fieldId"] = Value::Null;
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Decision::Trigger(_)
        ));
        let mut p = assigned(BOT);
        p["changelog"]["items"][0]["to"] = json!("something-else");
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Decision::Trigger(_)
        ));
    }

    #[test]
    fn assignment_to_someone_else_is_ignored() {
        let why = ignored(decide(&assigned("712020:ann"), None, None, &cloud()));
        assert_eq!(why, "assignee changed to someone else");
        let mut p = assigned(BOT);
        p["changelog"]["items"] = json!([{"field": "status", "fieldId": "status", "to": "3"}]);
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "issue update does not change the assignee"
        );
        p.as_object_mut().unwrap().remove("changelog");
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "issue update does not change the assignee"
        );
    }

    #[test]
    fn delivery_key_fallbacks() {
        let mut p = assigned(BOT);
        p["changelog"].as_object_mut().unwrap().remove("id");
        let j = job(decide(&p, Some("a1b2-c3"), None, &cloud()));
        assert_eq!(j.trigger.delivery, "delivery:a1b2-c3");
        let j1 = job(decide(&p, None, None, &cloud()));
        let j2 = job(decide(&p, Some("  "), None, &cloud()));
        assert!(
            j1.trigger.delivery.starts_with("sha256:"),
            "{}",
            j1.trigger.delivery
        );
        assert_eq!(j1.trigger.delivery, j2.trigger.delivery);
        // A hostile id is not copied into a key.
        p["changelog"]["id"] = json!("1/../2 x");
        assert!(job(decide(&p, None, None, &cloud()))
            .trigger
            .delivery
            .starts_with("sha256:"));
        p["changelog"]["id"] = json!(10518);
        assert_eq!(
            job(decide(&p, None, None, &cloud())).trigger.delivery,
            "changelog:10518"
        );
    }

    #[test]
    fn issue_created_assigned_to_bot() {
        let p = json!({"webhookEvent": "jira:issue_created", "user": {"accountId": "712020:ann"},
            "issue": {"id": "10500", "key": "TM-101", "fields": {"assignee": {"accountId": BOT}}}});
        let j = job(decide(&p, Some("h"), None, &cloud()));
        assert_eq!(j.trigger.delivery, "created:10500");
        assert_eq!(j.trigger.source, "webhook:jira:issue_created");
        let mut p2 = p.clone();
        p2["issue"]["fields"]["assignee"] = Value::Null;
        assert_eq!(
            ignored(decide(&p2, None, None, &cloud())),
            "new issue is not assigned to the bot"
        );
        p2["issue"]["fields"]["assignee"] = json!({"accountId": "712020:ann"});
        assert!(matches!(
            decide(&p2, None, None, &cloud()),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn wiki_comment_mention_triggers_with_text() {
        let p = comment(
            json!({"accountId": "712020:ann"}),
            json!(format!("[~accountid:{BOT}] please fix the *parser*")),
        );
        let j = job(decide(&p, Some("h"), None, &cloud()));
        assert_eq!(j.ticket, "PROJ-17");
        assert_eq!(j.trigger.delivery, "comment:10501");
        assert_eq!(j.trigger.source, "webhook:comment_created");
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ann"));
        assert_eq!(
            j.trigger.text.as_deref(),
            Some(format!("[~accountid:{BOT}] please fix the *parser*").as_str())
        );
    }

    #[test]
    fn adf_comment_mention_triggers() {
        let body = json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "mention", "attrs": {"id": BOT, "text": "@drafter"}},
            {"type": "text", "text": " fix it "},
            {"type": "text", "text": "now", "marks": [{"type": "strong"}]}]}]});
        let j = job(decide(
            &comment(json!({"accountId": "712020:ann"}), body),
            None,
            None,
            &cloud(),
        ));
        assert_eq!(j.trigger.text.as_deref(), Some("@drafter fix it **now**"));
        // A mention of someone else is not a trigger.
        let other = json!({"type": "doc", "content": [{"type": "paragraph", "content": [
            {"type": "mention", "attrs": {"id": "712020:ann"}}]}]});
        assert_eq!(
            ignored(decide(
                &comment(json!({"accountId": "x"}), other),
                None,
                None,
                &cloud()
            )),
            "comment does not mention the bot"
        );
    }

    #[test]
    fn comment_without_mention_or_by_bot_is_ignored() {
        let p = comment(
            json!({"accountId": "712020:ann"}),
            json!("looks good [~accountid:712020:ann]"),
        );
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "comment does not mention the bot"
        );
        let p = comment(
            json!({"accountId": BOT}),
            json!(format!("[~accountid:{BOT}] PR opened")),
        );
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "comment written by the bot"
        );
        let p = comment(json!({"accountId": "a"}), json!(42));
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "comment does not mention the bot"
        );
        let p = json!({"webhookEvent": "comment_created", "issue": {"key": "PROJ-1"}});
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "comment event without a comment"
        );
        // An unterminated mention does not panic or match.
        let p = comment(
            json!({"accountId": "a"}),
            json!("[~accountid:712020:bot-0001"),
        );
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn long_comment_text_is_capped() {
        let body = format!("[~accountid:{BOT}] {}", "é".repeat(5000));
        let j = job(decide(
            &comment(json!({"accountId": "a"}), json!(body)),
            None,
            None,
            &cloud(),
        ));
        let text = j.trigger.text.unwrap();
        assert!(text.len() < MAX_TRIGGER_TEXT_BYTES + 100, "{}", text.len());
        assert!(text.ends_with("bytes]"), "{text}");
    }

    #[test]
    fn data_center_payloads() {
        // DC: users by name/key, mentions as [~username], no issue in comment payloads (key from the URL hint).
        let p = json!({"webhookEvent": "comment_created",
            "comment": {"id": "20001", "self": "https://jira.example.com/rest/api/2/issue/10042/comment/20001",
                "author": {"name": "alice", "key": "JIRAUSER10000"}, "body": "[~Drafter] please have a look"}});
        let j = job(decide(&p, None, Some("OPS-7"), &dc()));
        assert_eq!(j.ticket, "OPS-7");
        assert_eq!(j.project, "OPS");
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("alice"));
        assert_eq!(j.trigger.delivery, "comment:20001");
        // No hint: ignored with advice.
        assert!(ignored(decide(&p, None, None, &dc())).contains("?issue=${issue.key}"));
        // A bad hint is refused.
        assert!(
            ignored(decide(&p, None, Some("../admin"), &dc())).contains("not a valid issue key")
        );
        // The bot's own comment (by name) never triggers.
        let mut own = p.clone();
        own["comment"]["author"] = json!({"name": "drafter", "key": "JIRAUSER10100"});
        assert_eq!(
            ignored(decide(&own, None, Some("OPS-7"), &dc())),
            "comment written by the bot"
        );

        // Assignment: `to` is the user key, or the name on old versions.
        let mut a = json!({"webhookEvent": "jira:issue_updated", "user": {"name": "alice", "key": "JIRAUSER10000"},
            "issue": {"id": "10042", "key": "OPS-7", "fields": {}},
            "changelog": {"id": 30010, "items": [{"field": "assignee", "fieldtype": "jira",
                "from": null, "to": "JIRAUSER10100", "toString": "drafter bot"}]}});
        let j = job(decide(&a, None, None, &dc()));
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("alice"));
        assert_eq!(j.trigger.delivery, "changelog:30010");
        a["changelog"]["items"][0]["to"] = json!("drafter");
        assert!(matches!(
            decide(&a, None, None, &dc()),
            Decision::Trigger(_)
        ));
        a["changelog"]["items"][0]["to"] = json!("bob");
        assert!(matches!(decide(&a, None, None, &dc()), Decision::Ignore(_)));
        // The payload's key wins over the URL hint.
        a["changelog"]["items"][0]["to"] = json!("drafter");
        assert_eq!(
            job(decide(&a, None, Some("OTHER-1"), &dc())).ticket,
            "OPS-7"
        );
    }

    #[test]
    fn other_events_and_bad_keys_are_ignored() {
        let p = json!({"webhookEvent": "jira:issue_deleted", "issue": {"key": "TM-1"}});
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "event jira:issue_deleted is not a trigger"
        );
        assert_eq!(
            ignored(decide(&json!({}), None, None, &cloud())),
            "payload has no webhookEvent"
        );
        assert_eq!(
            ignored(decide(&json!([1, 2]), None, None, &cloud())),
            "payload has no webhookEvent"
        );
        let mut p = assigned(BOT);
        p["issue"]["key"] = json!("tm-100");
        assert!(ignored(decide(&p, None, None, &cloud())).contains("not a valid issue key"));
        p["issue"]["key"] = json!(7);
        assert_eq!(
            ignored(decide(&p, None, Some("TM-1"), &cloud())),
            "issue.key is not a string"
        );
        let p = json!({"webhookEvent": "weird\u{1b}[31m"});
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "event weird[31m is not a trigger"
        );
    }

    fn search_issue(histories: Value) -> Value {
        json!({"id": "10411", "key": "TM-100", "fields": {"assignee": {"accountId": BOT}, "project": {"key": "TM"}},
            "changelog": {"startAt": 0, "maxResults": 100, "total": 3, "histories": histories}})
    }

    fn assign_entry(id: Value, to: &str, by: &str) -> Value {
        json!({"id": id, "author": {"accountId": by}, "created": "2026-03-01T10:00:00.000+0000",
            "items": [{"field": "assignee", "fieldId": "assignee", "to": to, "tmpToAccountId": to}]})
    }

    #[test]
    fn poll_key_is_the_latest_assignment() {
        let i = search_issue(json!([
            assign_entry(json!("100"), BOT, "712020:ann"),
            {"id": "150", "items": [{"field": "status", "to": "3"}]},
            assign_entry(json!("120"), "712020:ann", "712020:ann"),
            assign_entry(json!("130"), BOT, "712020:ben"),
        ]));
        let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
        assert_eq!(j.trigger.delivery, "changelog:130");
        assert_eq!(j.trigger.source, "poll");
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ben"));
        assert_eq!(j.project, "TM");
        assert_eq!(j.max_attempts, 3);
        // A status change or a comment later does not change the key.
        let mut i2 = i.clone();
        i2["changelog"]["histories"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "200", "items": [{"field": "status"}]}));
        i2["fields"]["updated"] = json!("2026-03-05T10:00:00.000+0000");
        assert_eq!(
            from_search_issue(&i2, &cloud(), 3, now())
                .unwrap()
                .trigger
                .delivery,
            "changelog:130"
        );
    }

    #[test]
    fn poll_key_without_assignment_history_is_creation() {
        let j = from_search_issue(&search_issue(json!([])), &cloud(), 3, now()).unwrap();
        assert_eq!(j.trigger.delivery, "created:10411");
        let mut i = search_issue(json!([]));
        i.as_object_mut().unwrap().remove("id");
        i.as_object_mut().unwrap().remove("changelog");
        assert_eq!(
            from_search_issue(&i, &cloud(), 3, now())
                .unwrap()
                .trigger
                .delivery,
            "poll:TM-100"
        );
    }

    #[test]
    fn poll_skips_foreign_or_invalid_issues() {
        let mut i = search_issue(json!([]));
        i["fields"]["assignee"] = json!({"accountId": "712020:ann"});
        assert!(from_search_issue(&i, &cloud(), 3, now()).is_none());
        let mut i = search_issue(json!([]));
        i["key"] = json!("../x");
        assert!(from_search_issue(&i, &cloud(), 3, now()).is_none());
        assert!(from_search_issue(&json!(null), &cloud(), 3, now()).is_none());
        // Data Center assignee by name.
        let i = json!({"id": "1", "key": "OPS-2", "fields": {"assignee": {"name": "drafter", "key": "JIRAUSER10100"}}});
        assert_eq!(
            from_search_issue(&i, &dc(), 3, now())
                .unwrap()
                .trigger
                .delivery,
            "created:1"
        );
    }

    #[test]
    fn jql_is_quoted() {
        let cfg = PollConfig {
            enabled: true,
            interval_secs: 60,
            projects: vec!["PAY".into(), "OPS".into()],
            statuses: vec!["To Do".into(), "Sel\"ected\\".into()],
        };
        assert_eq!(
            poll_jql(&cfg, &cloud()),
            r#"assignee = "712020:bot-0001" AND project in ("PAY", "OPS") AND status in ("To Do", "Sel\"ected\\") ORDER BY updated DESC"#
        );
        let cfg = PollConfig {
            projects: vec![],
            statuses: vec![],
            ..cfg
        };
        assert_eq!(
            poll_jql(&cfg, &dc()),
            r#"assignee = "drafter" ORDER BY updated DESC"#
        );
        assert_eq!(jql_quote("a\") OR (x = \"y\n"), r#""a\") OR (x = \"y""#);
    }

    // ---- approvals ----

    fn approve_payload(author: Value, body: Value) -> Value {
        let mut p = comment(author.clone(), body);
        p["comment"]["updateAuthor"] = author;
        p["comment"]["created"] = json!("2025-03-02T10:35:00.123+0100");
        p
    }

    fn created_at() -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(1_740_908_100_123)
    }

    #[test]
    fn jira_times_parse() {
        assert_eq!(jira_time("2025-03-02T10:35:00.123+0100"), created_at());
        assert_eq!(jira_time("2025-03-02T09:35:00.123Z"), created_at());
        assert_eq!(jira_time("yesterday"), None);
    }

    #[test]
    fn payloads_name_their_issue_by_key_or_id() {
        let cloud = comment(json!({"accountId": "a"}), json!("x"));
        assert_eq!(payload_issue(&cloud), PayloadIssue::Key("PROJ-17".into()));
        let dc = json!({"webhookEvent": "comment_created",
            "comment": {"id": "20002", "self": "https://jira.example.com/jira/rest/api/2/issue/10042/comment/20002"}});
        assert_eq!(payload_issue(&dc), PayloadIssue::Id("10042".into()));
        let by_id = json!({"issue": {"id": 10043}});
        assert_eq!(payload_issue(&by_id), PayloadIssue::Id("10043".into()));
        for unnamed in [
            json!({"webhookEvent": "comment_created", "comment": {"id": "1"}}),
            json!({"comment": {"self": "https://j.example.com/rest/api/2/issue/OPS-7/comment/1"}}),
            json!({"comment": {"self": "not a url"}}),
        ] {
            assert_eq!(payload_issue(&unnamed), PayloadIssue::Unnamed, "{unnamed}");
        }
    }

    fn para(content: Value) -> Value {
        json!({"type": "paragraph", "content": content})
    }

    fn adf(blocks: Value) -> Value {
        json!({"type": "doc", "version": 1, "content": blocks})
    }

    #[test]
    fn wiki_approve_command_is_an_approval() {
        let ann = json!({"accountId": "712020:ann", "displayName": "Ann"});
        for body in [
            "drafter approve".to_string(),
            "  DRAFTER   Approve \t".to_string(),
            format!("[~accountid:{BOT}] drafter approve"),
            format!("[~accountid:{BOT}]: drafter approve"),
            format!("Looks right to me.\r\n[~accountid:{BOT}] drafter approve\r\nThanks"),
        ] {
            let p = approve_payload(ann.clone(), json!(body));
            assert_eq!(
                approval_from_webhook(&p, None, &cloud()),
                Some(ApprovalComment {
                    ticket: "PROJ-17".into(),
                    project: "PROJ".into(),
                    author: "712020:ann".into(),
                    comment_id: "10501".into(),
                    created: created_at(),
                }),
                "{body:?}"
            );
            // Never a new job as well.
            assert_eq!(
                ignored(decide(&p, Some("h"), None, &cloud())),
                "comment is the approval command (drafter approve), not a trigger",
                "{body:?}"
            );
        }
    }

    #[test]
    fn adf_approve_command_is_an_approval() {
        let ann = json!({"accountId": "712020:ann"});
        let bodies = [
            adf(json!([para(
                json!([{"type": "text", "text": "drafter approve"}])
            )])),
            adf(json!([para(json!([
                {"type": "mention", "attrs": {"id": BOT, "text": "@drafter bot"}},
                {"type": "text", "text": " Drafter "},
                {"type": "text", "text": "approve", "marks": [{"type": "strong"}]}]))])),
            adf(json!([
                para(json!([{"type": "text", "text": "Scope checked."}])),
                para(
                    json!([{"type": "text", "text": "ok"}, {"type": "hardBreak"},
                    {"type": "text", "text": "drafter approve"}])
                ),
            ])),
        ];
        for body in &bodies {
            let p = approve_payload(ann.clone(), body.clone());
            let a = approval_from_webhook(&p, None, &cloud()).unwrap_or_else(|| panic!("{body}"));
            assert_eq!(a.author, "712020:ann");
            assert!(matches!(
                decide(&p, None, None, &cloud()),
                Decision::Ignore(_)
            ));
            // The same comment as `GET .../comment` lists it.
            assert_eq!(
                approval_from_comment(&p["comment"], "PROJ-17", &cloud()),
                Some(a)
            );
        }
        // The Markdown of a plain ADF command, as a poll would see it through `adf_to_markdown`.
        assert!(approval_in_comment(&adf_to_markdown(&bodies[0])));
        assert!(approval_in_comment(&adf_to_markdown(&bodies[2])));
    }

    #[test]
    fn sentences_quotes_and_code_are_not_commands() {
        let ann = json!({"accountId": "712020:ann"});
        let wiki = [
            "please drafter approve this".to_string(),
            "I will approve it tomorrow".to_string(),
            "drafter approve!".to_string(),
            "drafter approves".to_string(),
            "drafter: approve".to_string(),
            "[~accountid:712020:ben] drafter approve".to_string(),
            "{quote}\ndrafter approve\n{quote}".to_string(),
            "{code:bash}\ndrafter approve\n{code}".to_string(),
            "{noformat}drafter approve{noformat}".to_string(),
            "bq. drafter approve".to_string(),
            "```\ndrafter approve\n```".to_string(),
            format!("[~accountid:{BOT}] please drafter approve"),
            "[~accountid:712020:bot-0001 drafter approve".to_string(),
            "approve".to_string(),
            "".to_string(),
        ];
        for body in &wiki {
            let p = approve_payload(ann.clone(), json!(body));
            assert_eq!(approval_from_webhook(&p, None, &cloud()), None, "{body:?}");
            assert!(!approval_in_body(&json!(body), &cloud()), "{body:?}");
        }
        // A sentence mentioning the bot and "approve" is still an ordinary trigger.
        let p = approve_payload(
            ann.clone(),
            json!(format!(
                "[~accountid:{BOT}] can you approve the plan and fix it"
            )),
        );
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Decision::Trigger(_)
        ));
        // ADF: quotes, code blocks, other inline nodes on the line, someone else's mention.
        for body in [
            adf(json!([{"type": "blockquote", "content": [
                para(json!([{"type": "text", "text": "drafter approve"}]))]}])),
            adf(
                json!([{"type": "codeBlock", "content": [{"type": "text", "text": "drafter approve"}]}]),
            ),
            adf(json!([para(
                json!([{"type": "text", "text": "drafter approve "},
                {"type": "emoji", "attrs": {"shortName": ":tada:"}}])
            )])),
            adf(json!([para(
                json!([{"type": "mention", "attrs": {"id": "712020:ben"}},
                {"type": "text", "text": " drafter approve"}])
            )])),
            adf(json!([para(
                json!([{"type": "text", "text": "please drafter approve"}])
            )])),
        ] {
            let p = approve_payload(ann.clone(), body.clone());
            assert_eq!(approval_from_webhook(&p, None, &cloud()), None, "{body}");
        }
        // Not a comment event, or no usable ids.
        let mut p = approve_payload(ann.clone(), json!("drafter approve"));
        p["webhookEvent"] = json!("comment_updated");
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
        let mut p = approve_payload(ann.clone(), json!("drafter approve"));
        p["comment"]["id"] = json!("1/../2");
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
        let mut p = approve_payload(ann, json!("drafter approve"));
        p["issue"]["key"] = json!("../x");
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    }

    #[test]
    fn the_bots_own_or_someone_elses_edit_never_approves() {
        let p = approve_payload(json!({"accountId": BOT}), json!("drafter approve"));
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
        assert_eq!(
            ignored(decide(&p, None, None, &cloud())),
            "comment written by the bot"
        );
        // Written by Ann, edited by Ben into an approval: nobody's approval.
        let mut p = approve_payload(json!({"accountId": "712020:ann"}), json!("drafter approve"));
        p["comment"]["updateAuthor"] = json!({"accountId": "712020:ben"});
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
        // Still not a trigger.
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Decision::Ignore(_)
        ));
        // No author at all.
        let mut p = approve_payload(json!({"accountId": "712020:ann"}), json!("drafter approve"));
        p["comment"].as_object_mut().unwrap().remove("author");
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    }

    #[test]
    fn data_center_approvals() {
        let p = json!({"webhookEvent": "comment_created",
            "comment": {"id": "20002", "self": "https://jira.example.com/rest/api/2/issue/10042/comment/20002",
                "author": {"name": "alice", "key": "JIRAUSER10000"},
                "updateAuthor": {"name": "alice", "key": "JIRAUSER10000"},
                "body": "[~Drafter] drafter approve"}});
        // Without `created` it is still recognised, but carries no time (and so approves nothing).
        assert_eq!(
            approval_from_webhook(&p, Some("OPS-7"), &dc()),
            Some(ApprovalComment {
                ticket: "OPS-7".into(),
                project: "OPS".into(),
                author: "alice".into(),
                comment_id: "20002".into(),
                created: None,
            })
        );
        assert!(matches!(
            decide(&p, None, Some("OPS-7"), &dc()),
            Decision::Ignore(_)
        ));
        // No key anywhere: no approval (and no job).
        assert_eq!(approval_from_webhook(&p, None, &dc()), None);
        // The bot by name.
        let mut own = p.clone();
        own["comment"]["author"] = json!({"name": "DRAFTER", "key": "JIRAUSER10100"});
        own["comment"]["updateAuthor"] = own["comment"]["author"].clone();
        assert_eq!(approval_from_webhook(&own, Some("OPS-7"), &dc()), None);
        // A listed v2 comment.
        assert_eq!(
            approval_from_comment(&p["comment"], "OPS-7", &dc()).map(|a| a.author),
            Some("alice".to_string())
        );
        assert_eq!(approval_from_comment(&p["comment"], "bad", &dc()), None);
    }

    #[test]
    fn approval_in_plain_text() {
        assert!(approval_in_comment("drafter approve"));
        assert!(approval_in_comment("LGTM\n  Drafter Approve  \n"));
        assert!(approval_in_comment("@drafter drafter approve"));
        assert!(approval_in_comment("[~accountid:anyone] drafter approve"));
        assert!(!approval_in_comment("@drafter please drafter approve"));
        assert!(!approval_in_comment("we should drafter approve soon"));
        assert!(!approval_in_comment("> drafter approve"));
        assert!(!approval_in_comment("```\ndrafter approve\n```"));
        assert!(!approval_in_comment("drafter approve drafter approve"));
        assert!(!approval_in_comment(""));
    }

    #[test]
    fn poll_uses_the_creator_when_there_is_no_assignment() {
        let mut i = search_issue(json!([]));
        i["fields"]["creator"] = json!({"accountId": "712020:cid", "displayName": "Cid"});
        let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
        assert_eq!(j.trigger.delivery, "created:10411");
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:cid"));
        // An assignment in the history wins over the creator.
        let mut i = search_issue(json!([assign_entry(json!("100"), BOT, "712020:ann")]));
        i["fields"]["creator"] = json!({"accountId": "712020:cid"});
        let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
        assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ann"));
    }
}
