//! Jira REST, Cloud (v3, ADF) and Data Center (v2, wiki markup): read a ticket, write a comment, and translate
//! ticket text to Markdown.
//!
//! The model: drafter reads one issue (`GET <api>/issue/{key}`) with its newest comments, configured
//! acceptance-criteria fields, links and attachment list ([`JiraClient::issue`]), turns its ADF (Cloud) or wiki
//! markup (Data Center, [`wiki`]) into Markdown for the agent's prompt, and tells the ticket what happened with
//! short comments built from a [`Notice`] (`POST <api>/issue/{key}/comment`, [`JiraClient::notify`]): ADF on Cloud,
//! wiki markup on Data Center. Besides, the PR is linked on the ticket and the ticket moved along its workflow
//! (`panel.rs`: remote links, transitions); nothing else is done on the ticket. `<api>` is `/rest/api/3` on Cloud
//! and `/rest/api/2` on Data Center: the [`Dialect`] of `jira.flavor` decides it, and the text format, for every call.
//! For `drafter serve` it also reads: JQL search ([`JiraClient::search`]: Cloud's `search/jql` with page tokens, or
//! Data Center's `search` with `startAt`), and a ticket's comments ([`JiraClient::comments`]), so a retried job can
//! see what it already said ([`JiraClient::has_notice`]: the bot's comment carrying a notice's [`DedupKey`]). For the policy: the groups of a user ([`JiraClient::user_groups`],
//! cached for a few minutes in a [`GroupCache`] so a burst of jobs asks Jira once), and who assigned a ticket to the
//! bot ([`JiraClient::assigned_by`], from the issue's change history), so a job found by the JQL poll knows who
//! triggered it.
//!
//! Why it is this strict:
//! - Issue keys arrive from webhooks and humans, so a key is checked against `^[A-Z][A-Z0-9_]+-[1-9][0-9]*$` before
//!   any URL exists ([`valid_issue_key`]): `../../admin` never becomes a path.
//! - Ticket text is hostile input. The ADF walker never panics (missing fields, wrong types), stops at
//!   [`MAX_ADF_DEPTH`] levels, strips control characters, and the description is cut at [`MAX_DESCRIPTION_BYTES`].
//!   Response bodies are read up to a cap, never in full on trust.
//! - The credential is exposed only while building the `Authorization` header of each request (marked sensitive),
//!   redirects are not followed (so the header cannot be replayed elsewhere), and error messages are summaries of
//!   Jira's `errorMessages`/`errors`, with the token scrubbed out should a server echo it.
//! - The client never sleeps: 429 and 503 surface `Retry-After` in the error and the caller decides
//!   ([`JiraError::is_retryable`], [`JiraError::retry_after`]).
//!
//! Where things are: this file is the public surface (re-exports, [`JiraError`], issue keys, text caps);
//! `client.rs` the HTTP side (auth, caps on answers, the issue, comments, search); `ticket.rs` the [`Ticket`] built
//! from the issue; `groups.rs` users' groups and identities ([`GroupCache`]); `changelog.rs` who assigned an issue;
//! `paging.rs` Jira's `startAt`/`maxResults` paging, once for every list read that way; `panel.rs` remote links and
//! transitions; `notice.rs` the comments drafter posts ([`Notice`]) and their ADF; `adf.rs` ADF to Markdown; `wiki.rs` wiki
//! markup both ways; `dialect.rs` Cloud versus Data Center; `mentions.rs` what a comment says to the bot.

use std::time::Duration;

mod adf;
mod changelog;
mod client;
mod dialect;
mod groups;
pub mod mentions;
mod notice;
mod paging;
mod panel;
mod ticket;
pub mod wiki;

pub use adf::adf_to_markdown;
pub use client::{JiraClient, SearchPage};
pub use dialect::{Dialect, TextFormat};
pub use groups::{adopt_bot_identity, GroupCache, JiraUser, DEFAULT_GROUP_CACHE_TTL};
pub use notice::{DedupKey, Notice, ProofRef};
pub use panel::{plan_transition, Moved, Plan, PrLink, PrState, Status, Transition};
pub use ticket::{
    Attachment, FieldText, IssueLink, Ticket, TicketComment, MAX_COMMENTS_TOTAL_BYTES,
    MAX_COMMENT_BYTES, MAX_CRITERIA_BYTES, MAX_TICKET_COMMENTS, MAX_TICKET_LIST,
};
pub use wiki::{escape_wiki, wiki_to_markdown};

/// Markdown descriptions longer than this (bytes) are cut, and the cut is said in the text.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// ADF nesting deeper than this is not rendered (a marker says so).
pub const MAX_ADF_DEPTH: usize = 100;
/// Cap on reasons and summaries put into comments (characters).
const MAX_NOTICE_TEXT_CHARS: usize = 1000;
/// Cap on short notice fields: job ids, repository names, branch names (characters).
const MAX_NOTICE_FIELD_CHARS: usize = 200;

/// Why a Jira call failed. Messages never contain the credential or request headers.
#[derive(Debug, thiserror::Error)]
pub enum JiraError {
    /// The issue key does not look like `PROJ-123`; no request was made.
    #[error("refusing Jira issue key {0:?}: expected a key like PROJ-123 (capital letters, digits, underscore, a dash, a number)")]
    InvalidKey(String),
    /// The account id or user name given to [`JiraClient::user_groups`] is empty, too long or has control
    /// characters; no request was made.
    #[error("refusing Jira account {0:?}: expected a non-empty account id or user name without control characters")]
    InvalidAccount(String),
    /// The Jira settings cannot be used (bad base URL, a credential that cannot go in a header).
    #[error("Jira client configuration: {0}")]
    Config(String),
    /// The comment body given to [`JiraClient::comment`] on Cloud is not an ADF document.
    #[error("comment body must be an ADF document (an object with \"type\": \"doc\")")]
    NotAdf,
    /// The comment body given to [`JiraClient::comment`] on Data Center is not a wiki-markup string.
    #[error("comment body must be a wiki-markup string on Jira Data Center")]
    NotWiki,
    /// Jira could not be reached, or the connection failed or timed out mid-request.
    #[error("cannot reach Jira while {action}: {message}")]
    Network {
        /// What was being done, e.g. `reading issue DEMO-1`.
        action: String,
        /// The transport error, without the URL.
        message: String,
    },
    /// 401/403: the credential is wrong, expired, or lacks permission.
    #[error("Jira refused the credentials (HTTP {status}) while {action}: {message}; check the bot's email and API token and its project permissions")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// What was being done.
        action: String,
        /// Jira's error summary.
        message: String,
    },
    /// 404: the issue does not exist or the bot cannot see it (Jira does not say which).
    #[error("Jira issue {key} not found, or the bot account may not see it: {message}")]
    NotFound {
        /// The issue key.
        key: String,
        /// Jira's error summary.
        message: String,
    },
    /// 429: Jira's rate limit. Retry after `retry_after` if given.
    #[error("Jira rate limit hit while {action}{}: {message}", fmt_retry(*retry_after))]
    RateLimited {
        /// What was being done.
        action: String,
        /// From the `Retry-After` header (seconds or HTTP date), clamped to an hour.
        retry_after: Option<Duration>,
        /// Jira's error summary.
        message: String,
    },
    /// 5xx: Jira is failing or overloaded. 503 often carries `Retry-After`.
    #[error("Jira server error (HTTP {status}) while {action}{}: {message}", fmt_retry(*retry_after))]
    Server {
        /// HTTP status.
        status: u16,
        /// What was being done.
        action: String,
        /// From the `Retry-After` header, clamped to an hour.
        retry_after: Option<Duration>,
        /// Jira's error summary.
        message: String,
    },
    /// Any other non-success status (400, 409, 3xx ...): retrying the same request will not help.
    #[error("Jira rejected the request (HTTP {status}) while {action}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// What was being done.
        action: String,
        /// Jira's error summary.
        message: String,
    },
    /// The answer was not the JSON expected (or was too large).
    #[error("unexpected answer from Jira while {action}: {message}")]
    InvalidResponse {
        /// What was being done.
        action: String,
        /// What was wrong.
        message: String,
    },
}

fn fmt_retry(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(" (retry after {} s)", d.as_secs()))
        .unwrap_or_default()
}

impl JiraError {
    /// Whether the same request may succeed later: network failures, 5xx and 429 are; 4xx and local refusals not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JiraError::Network { .. } | JiraError::RateLimited { .. } | JiraError::Server { .. }
        )
    }

    /// How long Jira asked to wait (`Retry-After` on 429/5xx), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JiraError::RateLimited { retry_after, .. } | JiraError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Whether `key` is a Jira issue key: `^[A-Z][A-Z0-9_]+-[1-9][0-9]*$`. Everything else is refused before any URL is
/// built from it.
pub fn valid_issue_key(key: &str) -> bool {
    let Some((project, number)) = key.split_once('-') else {
        return false;
    };
    let mut p = project.bytes();
    let first_ok = p.next().is_some_and(|b| b.is_ascii_uppercase());
    let rest_ok =
        project.len() >= 2 && p.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let mut n = number.bytes();
    let num_ok =
        n.next().is_some_and(|b| (b'1'..=b'9').contains(&b)) && n.all(|b| b.is_ascii_digit());
    first_ok && rest_ok && num_ok
}

/// The project part of a valid issue key: `"DEMO-12"` -> `Some("DEMO")`; `None` for an invalid key.
pub fn project_of(key: &str) -> Option<&str> {
    if !valid_issue_key(key) {
        return None;
    }
    key.split_once('-').map(|(p, _)| p)
}

fn check_key(key: &str) -> Result<(), JiraError> {
    if valid_issue_key(key) {
        Ok(())
    } else {
        Err(JiraError::InvalidKey(cap_chars(key, 64)))
    }
}

/// At most `max` characters, with `…` when cut.
fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Cuts a description at [`MAX_DESCRIPTION_BYTES`] (on a character boundary) and says so.
fn cap_markdown(md: String) -> String {
    cap_text(md, MAX_DESCRIPTION_BYTES, "description")
}

/// Cuts `text` at `max` bytes (on a character boundary) and says so, naming `what` was cut.
fn cap_text(text: String, max: usize, what: &str) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n\n[{what} cut by drafter: it was {} bytes, only the first {} are shown]",
        &text[..cut],
        text.len(),
        cut
    )
}

/// Removes control characters except newline and tab (terminal escapes, NULs, carriage returns).
fn clean_text(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_keys() {
        for ok in ["DEMO-1", "AB-12", "A1_B-999", "X9-10"] {
            assert!(valid_issue_key(ok), "{ok}");
        }
        for bad in [
            "",
            "DEMO",
            "demo-1",
            "D-1",
            "1DEMO-1",
            "DEMO-0",
            "DEMO-01",
            "DEMO-1a",
            "DEMO--1",
            "DEMO-1-2",
            "../../admin",
            "DEMO-1/../x",
            "DEMO-1?x=1",
            "DEMO-1 ",
            " DEMO-1",
            "DÉMO-1",
            "DEMO-１",
        ] {
            assert!(!valid_issue_key(bad), "{bad:?}");
        }
        assert_eq!(project_of("DEMO-12"), Some("DEMO"));
        assert_eq!(project_of("A_1-3"), Some("A_1"));
        assert_eq!(project_of("../x-1"), None);
    }

    #[test]
    fn description_cap_says_so() {
        let big = "é".repeat(MAX_DESCRIPTION_BYTES);
        let out = cap_markdown(big.clone());
        assert!(out.len() < big.len());
        assert!(out.contains("[description cut by drafter"));
        assert!(out.starts_with("éé"));
        assert_eq!(cap_markdown("small".into()), "small");
    }
}
