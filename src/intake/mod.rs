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
mod approval;
mod poll;
mod review;
mod webhook;

pub use crate::jira::mentions::{approval_in_body, approval_in_comment, APPROVE_COMMAND};
use crate::jira::mentions::{is_bot_user, mentions_bot};
pub use approval::*;
pub use poll::*;
pub use review::*;
pub use webhook::*;

use crate::queue::{
    Approved, ApprovingComment, Enqueued, JobFilter, NewJob, Queue, QueueError, Trigger,
};

/// Comment text recorded on a trigger is cut at this many bytes (on a character boundary), and the cut is said.
pub const MAX_TRIGGER_TEXT_BYTES: usize = 4 * 1024;
/// Fields the poll asks for: what [`from_search_issue`] reads.
pub const POLL_FIELDS: &[&str] = &["assignee", "creator", "project", "status", "updated"];
/// Pages one poll reads at most (100 issues each): a server that pages forever must not hold the loop.
const MAX_POLL_PAGES: usize = 100;
/// Cap on identifiers copied from payloads into keys and triggers (characters).
const MAX_ID_CHARS: usize = 200;

/// What to do with a webhook delivery.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Enqueue this job.
    Trigger(NewJob),
    /// Do nothing; the reason is for the audit line.
    Ignore(String),
}

/// A Jira timestamp: `2025-03-02T10:35:00.000+0000` (REST and webhooks), or RFC 3339.
pub fn jira_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s.trim()))
        .ok()
        .map(|t| t.with_timezone(&Utc))
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
pub(crate) fn cap_text(s: &str) -> String {
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
mod tests;

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
