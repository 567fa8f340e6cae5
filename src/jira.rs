//! Jira REST, Cloud (v3, ADF) and Data Center (v2, wiki markup): read a ticket, write a comment, and translate
//! ticket text to Markdown.
//!
//! The model: drafter reads one issue (`GET <api>/issue/{key}`) with its newest comments, configured
//! acceptance-criteria fields, links and attachment list ([`JiraClient::issue`]), turns its ADF (Cloud) or wiki
//! markup (Data Center, [`wiki`]) into Markdown for the agent's prompt, and tells the ticket what happened with
//! short comments built from a [`Notice`] (`POST <api>/issue/{key}/comment`, [`JiraClient::notify`]): ADF on Cloud,
//! wiki markup on Data Center. Nothing else is done on the ticket. `<api>` is `/rest/api/3` on Cloud and
//! `/rest/api/2` on Data Center: the [`Dialect`] of `jira.flavor` decides it, and the text format, for every call.
//! For `drafter serve` it also reads: JQL search ([`JiraClient::search`]: Cloud's `search/jql` with page tokens, or
//! Data Center's `search` with `startAt`), and a ticket's comments ([`JiraClient::comments`]), so a retried job can
//! see what it already said. For the policy: the groups of a user ([`JiraClient::user_groups`],
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

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::config::{JiraAuth, JiraConfig};

mod dialect;
pub mod mentions;
pub mod wiki;

pub use dialect::{Dialect, TextFormat};
pub use wiki::{escape_wiki, wiki_to_markdown};

/// Markdown descriptions longer than this (bytes) are cut, and the cut is said in the text.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// ADF nesting deeper than this is not rendered (a marker says so).
pub const MAX_ADF_DEPTH: usize = 100;
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest successful response body read (an issue with a big description is a few hundred KiB of ADF).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest error body read; only a summary of it is kept.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Length of the error summary kept from Jira's answer (characters).
const ERROR_SUMMARY_CHARS: usize = 300;
/// `Retry-After` values above this are clamped: a hostile or broken server must not park a worker for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Cap on reasons and summaries put into comments (characters).
const MAX_NOTICE_TEXT_CHARS: usize = 1000;
/// Cap on short notice fields: job ids, repository names, branch names (characters).
const MAX_NOTICE_FIELD_CHARS: usize = 200;
const USER_AGENT: &str = concat!("drafter/", env!("CARGO_PKG_VERSION"));
/// Fields asked for when reading an issue: exactly what [`Ticket`] uses (plus the configured acceptance-criteria
/// fields).
const ISSUE_FIELDS: &str =
    "summary,description,reporter,labels,project,issuetype,comment,issuelinks,attachment";
/// Comments given to the model at most: the newest ones.
pub const MAX_TICKET_COMMENTS: usize = 20;
/// One comment's Markdown past this (bytes) is cut, and the cut is said in the text.
pub const MAX_COMMENT_BYTES: usize = 4 * 1024;
/// All comments' Markdown together: older comments past this are left out (and counted).
pub const MAX_COMMENTS_TOTAL_BYTES: usize = 32 * 1024;
/// One acceptance-criteria field's Markdown past this (bytes) is cut, and the cut is said in the text.
pub const MAX_CRITERIA_BYTES: usize = 16 * 1024;
/// Linked issues and attachments listed at most (each).
pub const MAX_TICKET_LIST: usize = 50;
/// Pages of newest comments read when the issue did not carry them all.
const MAX_TICKET_COMMENT_PAGES: usize = 5;
/// Page size asked for by [`JiraClient::search`] and [`JiraClient::comments`] (Jira's usual maximum).
const PAGE_SIZE: usize = 100;
/// Pages [`JiraClient::comments`] reads before giving up: 100 x 100 comments is far beyond a real ticket, and a
/// server that pages forever must not keep a worker busy.
const MAX_COMMENT_PAGES: usize = 100;
/// Pages of an issue's change history [`JiraClient::assigned_by`] reads on Cloud before giving up (100 x 100 entries).
const MAX_CHANGELOG_PAGES: usize = 100;
/// How long [`JiraClient::user_groups`] answers from its cache by default.
pub const DEFAULT_GROUP_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Users whose groups a [`GroupCache`] keeps at most; past this, expired entries are dropped, then all.
const MAX_GROUP_CACHE_ENTRIES: usize = 10_000;
/// Longest account id or user name accepted by [`JiraClient::user_groups`] (Cloud ids are at most 128 characters).
const MAX_ACCOUNT_CHARS: usize = 256;
/// Groups kept per user: a user in more is still answered, with the first ones only.
const MAX_GROUPS_PER_USER: usize = 1000;

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

/// Completes a Data Center bot identity from what `GET /rest/api/2/myself` says about the credential (`me`): a missing
/// `bot_username` becomes its name, and a `bot_account_id` that is only the name (the default when just
/// `bot_username` is configured) becomes its user key, which is what change history and assignment webhooks carry
/// (`JIRAUSER10100` for users made since Jira 8.4). Returns warnings for a configuration that names someone else;
/// it is then left as configured. Cloud configurations are not touched.
pub fn adopt_bot_identity(cfg: &mut JiraConfig, me: &JiraUser) -> Vec<String> {
    let mut warnings = Vec::new();
    if cfg.flavor != crate::config::JiraFlavor::Datacenter {
        return warnings;
    }
    let Some(name) = me.name.clone() else {
        warnings.push(
            "Jira's /myself answer has no user name; keeping the configured bot identity".into(),
        );
        return warnings;
    };
    match &cfg.bot_username {
        None => cfg.bot_username = Some(name.clone()),
        Some(u) if !u.eq_ignore_ascii_case(&name) => {
            warnings.push(format!(
                "jira.bot_username is {u:?}, but the credential belongs to {name:?}: drafter's comments are posted \
                 as {name:?} and tickets must be assigned to {u:?}"
            ));
            return warnings;
        }
        Some(_) => {}
    }
    if let Some(key) = &me.key {
        if cfg.bot_account_id.eq_ignore_ascii_case(&name) {
            cfg.bot_account_id = key.clone();
        } else if !cfg.bot_account_id.eq_ignore_ascii_case(key) {
            warnings.push(format!(
                "jira.bot_account_id is {:?}, but the bot's user key is {key:?}",
                cfg.bot_account_id
            ));
        }
    }
    warnings
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

/// A Jira issue as drafter uses it. All text is untrusted ticket content. Serialised (canonically) for the digest
/// of what the job was given, which the run statement records.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ticket {
    /// The issue key as Jira answered it (it differs from the one asked for if the issue was moved).
    pub key: String,
    /// The project key, taken from [`Ticket::key`].
    pub project: String,
    /// The summary (title), control characters removed.
    pub summary: String,
    /// The description as Markdown, at most [`MAX_DESCRIPTION_BYTES`] plus a note when cut; empty when none.
    pub description: String,
    /// The reporter's display name, when Jira shows it.
    pub reporter: Option<String>,
    /// The issue's labels.
    pub labels: Vec<String>,
    /// The issue type's name (`Bug`, `Task`, ...), when Jira sent it.
    pub issue_type: Option<String>,
    /// `<base>/browse/<KEY>`.
    pub url: String,
    /// The newest comments people wrote, oldest first (newest last), at most [`MAX_TICKET_COMMENTS`] and
    /// [`MAX_COMMENTS_TOTAL_BYTES`]. Left out: drafter's own comments (by the bot account), `drafter approve`
    /// commands, and comments restricted to a group or role (or internal on a service desk).
    pub comments: Vec<TicketComment>,
    /// Comments not shown because of the caps: older ones. When the issue has more comments than Jira sent and
    /// drafter read, the unread ones count too, whoever wrote them.
    pub comments_left_out: u64,
    /// The configured acceptance-criteria fields that have a value, in configuration order.
    pub acceptance_criteria: Vec<FieldText>,
    /// Linked issues, at most [`MAX_TICKET_LIST`].
    pub links: Vec<IssueLink>,
    /// Attachments by name and size, at most [`MAX_TICKET_LIST`]. Never downloaded.
    pub attachments: Vec<Attachment>,
}

/// One comment of a [`Ticket`]. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TicketComment {
    /// The author's display name (their user name when Jira shows no display name).
    pub author: String,
    /// When it was written, as Jira says it (`2025-03-02T10:35:00.000+0000`).
    pub created: Option<String>,
    /// The body as Markdown (from ADF on Cloud, from wiki markup on Data Center), cut at [`MAX_COMMENT_BYTES`].
    pub body: String,
}

/// The text of one issue field (acceptance criteria). Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldText {
    /// The field id, as configured (`customfield_10042`).
    pub field: String,
    /// Its value as Markdown (from ADF, or from wiki markup on Data Center) or text (plain text, a selected option),
    /// cut at [`MAX_CRITERIA_BYTES`].
    pub text: String,
}

/// A link from the ticket to another issue, read from this side. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssueLink {
    /// How this ticket relates to the other: the link type's outward (`blocks`) or inward (`is blocked by`) text.
    pub relation: String,
    /// The other issue's key.
    pub key: String,
    /// The other issue's summary, when Jira sent it.
    pub summary: Option<String>,
}

/// An attachment of the ticket, listed only. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// The file name.
    pub filename: String,
    /// Its size in bytes, when Jira said.
    pub size: Option<u64>,
    /// Its MIME type, when Jira said.
    pub mime_type: Option<String>,
}

/// One page of [`JiraClient::search`].
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// The issues as Jira sent them (`id`, `key`, `fields`, and `changelog` when expanded). Untrusted input.
    pub issues: Vec<Value>,
    /// The opaque token of the next page, `None` on the last one.
    pub next: Option<String>,
}

/// A Jira REST client for one site and one bot account: Cloud REST v3, or Data Center REST v2, per its [`Dialect`].
#[derive(Debug, Clone)]
pub struct JiraClient {
    http: reqwest::Client,
    /// Site root without a trailing slash.
    base: String,
    auth: JiraAuth,
    /// Cloud or Data Center: the REST version, text format and user naming of every call.
    dialect: Dialect,
    /// The settings this client was built from: the bot's identity (whose comments are not the ticket's) and the
    /// acceptance-criteria fields.
    cfg: Arc<JiraConfig>,
    /// Group memberships already asked for; shared by clones of this client.
    groups: Arc<GroupCache>,
}

impl JiraClient {
    /// Builds a client. Fails if the base URL is not plain `http(s)://host[/path]` or the credential cannot be sent
    /// in a header. The credential itself is read only when each request is built.
    pub fn new(cfg: &JiraConfig) -> Result<JiraClient, JiraError> {
        let parsed = url::Url::parse(cfg.base_url.trim())
            .map_err(|e| JiraError::Config(format!("jira.base_url is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(JiraError::Config(format!(
                "jira.base_url must be http or https, not {:?}",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Credentials in the URL would end up in logs and error messages.
            return Err(JiraError::Config(
                "jira.base_url must not contain credentials; use the token settings".into(),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(JiraError::Config(
                "jira.base_url must not have a query or fragment".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(USER_AGENT)
            // A redirect would carry the request elsewhere; the REST API does not redirect, so treat it as an error.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                JiraError::Config(format!("cannot build HTTP client: {}", e.without_url()))
            })?;
        let client = JiraClient {
            http,
            base: cfg.base_url.trim().trim_end_matches('/').to_string(),
            auth: cfg.auth.clone(),
            dialect: Dialect::new(cfg.flavor),
            cfg: Arc::new(cfg.clone()),
            groups: Arc::new(GroupCache::new(DEFAULT_GROUP_CACHE_TTL)),
        };
        client.auth_header()?;
        Ok(client)
    }

    /// This client with a fresh group cache whose entries live `ttl` ([`DEFAULT_GROUP_CACHE_TTL`] otherwise;
    /// zero turns caching off).
    pub fn with_group_ttl(self, ttl: Duration) -> JiraClient {
        self.with_group_cache(Arc::new(GroupCache::new(ttl)))
    }

    /// This client answering [`JiraClient::user_groups`] through `cache`, e.g. one shared with other clients of the
    /// same site.
    pub fn with_group_cache(mut self, cache: Arc<GroupCache>) -> JiraClient {
        self.groups = cache;
        self
    }

    /// The group cache this client uses (to clear it, or to share it).
    pub fn group_cache(&self) -> &Arc<GroupCache> {
        &self.groups
    }

    /// The site root this client talks to (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Cloud or Data Center: how this client speaks to its site.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// `<base><api>/<rest>`: a URL of this site's REST API (see [`Dialect::path`]).
    fn api_url(&self, rest: &str) -> String {
        format!("{}{}", self.base, self.dialect.path(rest))
    }

    /// `<base>/browse/<KEY>`: the issue's page for humans.
    pub fn browse_url(&self, key: &str) -> String {
        format!("{}/browse/{}", self.base, key)
    }

    /// Reads an issue as a developer would: `GET <api>/issue/{key}?fields=summary,description,reporter,
    /// labels,project,issuetype,comment,issuelinks,attachment[,<acceptance-criteria fields>]` (v2 on Data Center,
    /// where text is wiki markup). `fields.comment` carries a page of comments; when the issue has more, the newest
    /// are read from `GET <api>/issue/{key}/comment?orderBy=-created`
    /// (<https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-comments/#api-rest-api-3-issue-issueidorkey-comment-get>).
    /// Attachments are listed from `fields.attachment`; their content is never requested.
    /// References: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-get>,
    /// <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getIssue>.
    pub async fn issue(&self, key: &str) -> Result<Ticket, JiraError> {
        check_key(key)?;
        let action = format!("reading issue {key}");
        let mut fields = ISSUE_FIELDS.to_string();
        for f in &self.cfg.acceptance_criteria_fields {
            fields.push(',');
            fields.push_str(f);
        }
        // The key is validated and the field ids are checked by the configuration: nothing here needs escaping.
        let url = self.api_url(&format!("issue/{key}?fields={fields}"));
        tracing::debug!(issue = key, "jira: GET issue");
        let req = self.http.get(url);
        let resp = self.send(req, &action, Some(key)).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("issue is not valid JSON: {e}"),
        })?;
        let mut ticket = self.ticket_from_json(key, &v, &action)?;
        let page = &v["fields"]["comment"];
        let embedded = page
            .get("comments")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let total = page
            .get("total")
            .and_then(Value::as_u64)
            .unwrap_or(embedded.len() as u64);
        let (comments, left_out) = if total > embedded.len() as u64 {
            // Jira sent only the oldest page: read the newest ones instead.
            let newest = self.newest_comments(key).await?;
            self.pick_comments(newest.iter(), total)
        } else {
            self.pick_comments(embedded.iter().rev(), total)
        };
        ticket.comments = comments;
        ticket.comments_left_out = left_out;
        Ok(ticket)
    }

    /// The newest comments, newest first, until enough for the model were read (or a few pages).
    async fn newest_comments(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        let action = format!("reading the newest comments of issue {key}");
        let mut all: Vec<Value> = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_TICKET_COMMENT_PAGES {
            // The key is validated; the numbers are ours.
            let url = self.api_url(&format!(
                "issue/{key}/comment?orderBy=-created&startAt={start}&maxResults={PAGE_SIZE}"
            ));
            tracing::debug!(issue = key, start, "jira: GET newest comments");
            let resp = self.send(self.http.get(url), &action, Some(key)).await?;
            let body = self.read_success(resp, &action).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
                    action: action.clone(),
                    message: format!("comment list is not valid JSON: {e}"),
                })?;
            let page = v
                .get("comments")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
            let got = page.len() as u64;
            all.extend(page);
            start = start.saturating_add(got);
            let usable = all
                .iter()
                .filter(|c| self.comment_is_ticket_text(c))
                .count();
            if got == 0 || start >= total || usable >= MAX_TICKET_COMMENTS {
                break;
            }
        }
        Ok(all)
    }

    /// Whether a comment belongs in the ticket given to the model: not the bot's own, not a `drafter approve`
    /// command (addressed to drafter, and posted after the approval request it answers, so it must not change what
    /// was approved), not restricted to a group or role, not internal on a service desk.
    fn comment_is_ticket_text(&self, c: &Value) -> bool {
        let by_bot = c
            .get("author")
            .is_some_and(|a| mentions::is_bot_user(a, &self.cfg));
        // drafter's notices are recognised by their words too: the account that posts them may not be the
        // configured one, and treating a look-alike as a notice only hides it (from the model and the approval).
        let notice = c
            .get("body")
            .is_some_and(|b| Notice::is_notice_text(&self.dialect.markdown(b)));
        let by_bot = by_bot || notice;
        let restricted = c.get("visibility").is_some_and(|v| !v.is_null())
            || c.get("jsdPublic").and_then(Value::as_bool) == Some(false);
        let approval = c
            .get("body")
            .is_some_and(|b| mentions::approval_in_body(b, &self.cfg));
        !(by_bot || restricted || approval)
    }

    /// From comments newest first (`total` of them on the issue, some perhaps not read): the newest that fit the
    /// caps, oldest first, and how many were left out.
    fn pick_comments<'a>(
        &self,
        newest_first: impl Iterator<Item = &'a Value>,
        total: u64,
    ) -> (Vec<TicketComment>, u64) {
        let (mut shown, mut bytes, mut read, mut dropped) = (Vec::new(), 0usize, 0u64, 0u64);
        for c in newest_first {
            read += 1;
            if !self.comment_is_ticket_text(c) {
                continue;
            }
            if shown.len() >= MAX_TICKET_COMMENTS || bytes >= MAX_COMMENTS_TOTAL_BYTES {
                dropped += 1;
                continue;
            }
            let body = match c.get("body") {
                None | Some(Value::Null) => String::new(),
                Some(b) => cap_text(self.dialect.markdown(b), MAX_COMMENT_BYTES, "comment"),
            };
            let author = c
                .get("author")
                .and_then(|a| {
                    ["displayName", "name"]
                        .iter()
                        .find_map(|k| a.get(*k).and_then(Value::as_str))
                })
                .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "(unknown)".to_string());
            let created = c
                .get("created")
                .and_then(Value::as_str)
                .map(|s| clean_text(&cap_chars(s, 40)));
            bytes += body.len();
            shown.push(TicketComment {
                author,
                created,
                body,
            });
        }
        shown.reverse();
        (shown, dropped + total.saturating_sub(read))
    }

    /// The id of the issue `key` names (for checking an unsigned `?issue=KEY` against a payload that names the issue
    /// by id): `GET <api>/issue/{key}?fields=project`. A moved issue answers under its old key with its own id.
    pub async fn issue_id(&self, key: &str) -> Result<String, JiraError> {
        check_key(key)?;
        let action = format!("looking up the id of issue {key}");
        // The key is validated; nothing else comes from outside.
        let url = self.api_url(&format!("issue/{key}?fields=project"));
        let resp = self.send(self.http.get(url), &action, Some(key)).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("issue is not valid JSON: {e}"),
        })?;
        match v.get("id") {
            Some(Value::String(id)) => Ok(id.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(JiraError::InvalidResponse {
                action,
                message: "issue has no `id`".into(),
            }),
        }
    }

    /// Tells the ticket what happened: [`JiraClient::comment`] with the notice in the site's format (ADF on Cloud,
    /// wiki markup on Data Center, see [`Dialect::notice_body`]).
    pub async fn notify(&self, key: &str, notice: &Notice) -> Result<(), JiraError> {
        self.comment(key, self.dialect.notice_body(notice)).await
    }

    /// Posts a comment: `POST <api>/issue/{key}/comment` with `{"body": body}`; Jira answers 201. `body` must be
    /// in the site's format ([`Dialect::check_body`]): an ADF document on Cloud
    /// (<https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-comments/#api-rest-api-3-issue-issueidorkey-comment-post>),
    /// a wiki-markup string on Data Center
    /// (<https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue/{issueIdOrKey}/comment-addComment>).
    pub async fn comment(&self, key: &str, body: Value) -> Result<(), JiraError> {
        check_key(key)?;
        self.dialect.check_body(&body)?;
        let action = format!("commenting on issue {key}");
        let url = self.api_url(&format!("issue/{key}/comment"));
        tracing::debug!(issue = key, "jira: POST comment");
        let req = self.http.post(url).json(&json!({ "body": body }));
        let resp = self.send(req, &action, Some(key)).await?;
        // The created comment is echoed back; drafter does not need it, but drain a bounded amount.
        let _ = read_capped(resp, MAX_ERROR_BODY_BYTES).await;
        Ok(())
    }

    /// The authenticated account's id (`GET <api>/myself`): its `accountId` on Cloud, its user key on Data Center.
    /// Lets a caller check that the configured bot account matches the credential.
    pub async fn myself(&self) -> Result<String, JiraError> {
        let me = self.whoami().await?;
        let id = if self.dialect.is_datacenter() {
            me.key.or(me.name)
        } else {
            me.account_id
        };
        id.ok_or_else(|| JiraError::InvalidResponse {
            action: "reading the bot account (myself)".into(),
            message: if self.dialect.is_datacenter() {
                "no key or name in the answer".into()
            } else {
                "no accountId in the answer".into()
            },
        })
    }

    /// Who the credential belongs to: `GET <api>/myself` (Cloud
    /// <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-myself/#api-rest-api-3-myself-get>:
    /// `accountId`; Data Center
    /// <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/myself-getUser>: `name` and `key`).
    pub async fn whoami(&self) -> Result<JiraUser, JiraError> {
        let action = "reading the bot account (myself)".to_string();
        let url = self.api_url("myself");
        let resp = self.send(self.http.get(url), &action, None).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
        };
        Ok(JiraUser {
            account_id: field("accountId"),
            name: field("name"),
            key: field("key"),
            display_name: field("displayName"),
        })
    }

    /// One page of a JQL search. Cloud: `GET /rest/api/3/search/jql?jql=..&fields=..&maxResults=100[&nextPageToken=..]`
    /// (answer `{"issues":[...],"nextPageToken":..}`, no `total`; the old `/search` is gone). Data Center:
    /// `GET /rest/api/2/search?jql=..&fields=..&startAt=N&maxResults=100` (answer `{"startAt","maxResults","total",
    /// "issues"}`; the returned token encodes the next `startAt`). Pass `None` for the first page and then
    /// [`SearchPage::next`] until it is `None`. Issues are returned raw: they are untrusted input.
    pub async fn search(
        &self,
        jql: &str,
        fields: &[&str],
        page_token: Option<&str>,
    ) -> Result<SearchPage, JiraError> {
        self.search_expanded(jql, fields, &[], page_token).await
    }

    /// [`JiraClient::search`] with `expand=...` (e.g. `changelog`, which adds each issue's recent change histories).
    pub async fn search_expanded(
        &self,
        jql: &str,
        fields: &[&str],
        expand: &[&str],
        page_token: Option<&str>,
    ) -> Result<SearchPage, JiraError> {
        let action = "searching issues (JQL)".to_string();
        let cloud = !self.dialect.is_datacenter();
        let path = self.dialect.search_path();
        let start_at = match (cloud, page_token) {
            (false, Some(t)) => t.parse::<u64>().map_err(|_| {
                JiraError::Config(format!(
                    "search page token {:?} is not a start index",
                    cap_chars(t, 40)
                ))
            })?,
            _ => 0,
        };
        let mut url = url::Url::parse(&format!("{}{}", self.base, path))
            .map_err(|e| JiraError::Config(format!("jira.base_url: {e}")))?;
        {
            // Everything from the caller goes through the query encoder: JQL carries quotes, spaces and `&`.
            let mut q = url.query_pairs_mut();
            q.append_pair("jql", jql);
            if !fields.is_empty() {
                q.append_pair("fields", &fields.join(","));
            }
            if !expand.is_empty() {
                q.append_pair("expand", &expand.join(","));
            }
            q.append_pair("maxResults", &PAGE_SIZE.to_string());
            if cloud {
                if let Some(t) = page_token {
                    q.append_pair("nextPageToken", t);
                }
            } else {
                q.append_pair("startAt", &start_at.to_string());
            }
        }
        tracing::debug!(flavor = ?self.dialect.flavor(), "jira: search");
        let resp = self.send(self.http.get(url), &action, None).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("search answer is not valid JSON: {e}"),
        })?;
        let issues = v
            .get("issues")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| JiraError::InvalidResponse {
                action: action.clone(),
                message: "search answer has no `issues` list".into(),
            })?;
        let next = if cloud {
            let last = v.get("isLast").and_then(Value::as_bool) == Some(true);
            v.get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !last && !t.is_empty())
                // A token is echoed into the next URL: keep it bounded.
                .filter(|t| t.len() <= 4096)
                .map(str::to_string)
        } else {
            let start = v.get("startAt").and_then(Value::as_u64).unwrap_or(start_at);
            let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
            let after = start.saturating_add(issues.len() as u64);
            (!issues.is_empty() && after < total).then(|| after.to_string())
        };
        Ok(SearchPage { issues, next })
    }

    /// Every comment on an issue, oldest first, as Jira sent them (`id`, `author`, `body`, `created` ...):
    /// `GET <api>/issue/{key}/comment?startAt=N&maxResults=100`, paging until `total` is reached
    /// (v2 on Data Center, where bodies are wiki-markup strings; ADF documents on Cloud). Raw and untrusted.
    pub async fn comments(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        check_key(key)?;
        let action = format!("listing comments of issue {key}");
        let mut all: Vec<Value> = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_COMMENT_PAGES {
            // The key is validated; the numbers are ours.
            let url = self.api_url(&format!(
                "issue/{key}/comment?startAt={start}&maxResults={PAGE_SIZE}"
            ));
            tracing::debug!(issue = key, start, "jira: GET comments");
            let resp = self.send(self.http.get(url), &action, Some(key)).await?;
            let body = self.read_success(resp, &action).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
                    action: action.clone(),
                    message: format!("comment list is not valid JSON: {e}"),
                })?;
            let page = v.get("comments").and_then(Value::as_array).ok_or_else(|| {
                JiraError::InvalidResponse {
                    action: action.clone(),
                    message: "comment list has no `comments` array".into(),
                }
            })?;
            let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
            let got = page.len() as u64;
            all.extend(page.iter().cloned());
            start = start.saturating_add(got);
            if got == 0 || start >= total {
                return Ok(all);
            }
        }
        Err(JiraError::InvalidResponse {
            action,
            message: format!(
                "more than {} comments; refusing to page further",
                MAX_COMMENT_PAGES * PAGE_SIZE
            ),
        })
    }

    /// The names of the groups `account` belongs to (nested groups included, as Jira reports them), at most
    /// 1000. Cloud: `GET /rest/api/3/user/groups?accountId=..` (an array of `{name, groupId, self}`). Data Center,
    /// where users are names: `GET /rest/api/2/user?username=..&expand=groups` (`groups.items[].name`); an account
    /// that is no user name but looks like a user key (`JIRAUSER10100`) is then looked up by `key=`.
    ///
    /// Answers come from the client's [`GroupCache`] while fresh (see [`JiraClient::with_group_ttl`]); concurrent
    /// calls for the same account wait for one request instead of each sending their own. A user Jira does not
    /// know (404) has no groups: `Ok(vec![])`, cached like any answer. Errors are not cached.
    pub async fn user_groups(&self, account: &str) -> Result<Vec<String>, JiraError> {
        Ok(self.user_info(account).await?.groups)
    }

    /// Every identifier `account` goes by, `account` first. On Data Center a person has a user name and a user key
    /// (`JIRAUSER10100` for users made since Jira 8.4, else the original name), and a policy may list either: both
    /// come from the same cached `GET /rest/api/2/user` answer as [`JiraClient::user_groups`]. On Cloud the account
    /// id is the only one, and no request is made.
    pub async fn identities(&self, account: &str) -> Result<Vec<String>, JiraError> {
        check_account(account)?;
        let mut ids = vec![account.to_string()];
        if self.dialect.is_datacenter() {
            for id in self.user_info(account).await?.ids {
                if !ids.iter().any(|known| self.dialect.same_user(known, &id)) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// What Jira says about `account`, from the cache while fresh.
    async fn user_info(&self, account: &str) -> Result<UserInfo, JiraError> {
        check_account(account)?;
        let slot = self.groups.slot(account);
        // Held across the request: a burst of jobs by one user makes one request, the others wait for its answer.
        let mut entry = slot.lock().await;
        if let Some((at, info)) = entry.as_ref() {
            if at.elapsed() < self.groups.ttl {
                return Ok(info.clone());
            }
        }
        let info = self.fetch_user(account).await?;
        *entry = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn fetch_user(&self, account: &str) -> Result<UserInfo, JiraError> {
        if !self.dialect.is_datacenter() {
            let list = self
                .get_user_resource("user/groups", &[("accountId", account)])
                .await?;
            let Some(v) = list else {
                // An unknown (or deleted) user is a member of nothing.
                return Ok(UserInfo::default());
            };
            let groups = v.as_array().ok_or_else(|| JiraError::InvalidResponse {
                action: "reading a user's groups".into(),
                message: "expected an array of groups".into(),
            })?;
            return Ok(UserInfo {
                ids: Vec::new(),
                groups: group_names(groups),
            });
        }
        let mut user = self
            .get_user_resource("user", &[("username", account), ("expand", "groups")])
            .await?;
        if user.is_none() && looks_like_user_key(account) {
            user = self
                .get_user_resource("user", &[("key", account), ("expand", "groups")])
                .await?;
        }
        let Some(v) = user else {
            return Ok(UserInfo::default());
        };
        let groups = v
            .pointer("/groups/items")
            .and_then(Value::as_array)
            .ok_or_else(|| JiraError::InvalidResponse {
                action: "reading a user's groups".into(),
                message: "the user has no `groups.items` list".into(),
            })?;
        Ok(UserInfo {
            ids: self
                .dialect
                .user_ids(&v)
                .into_iter()
                .map(|s| clean_text(&cap_chars(s, MAX_ACCOUNT_CHARS)))
                .collect(),
            groups: group_names(groups),
        })
    }

    /// `GET <api>/<path>?<query>` for a user resource; `None` when Jira does not know the user (404).
    async fn get_user_resource(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, JiraError> {
        let action = "reading a user's groups".to_string();
        let mut url = url::Url::parse(&self.api_url(path))
            .map_err(|e| JiraError::Config(format!("jira.base_url: {e}")))?;
        // The account comes from a webhook or the policy: only ever a query value, encoded.
        url.query_pairs_mut().extend_pairs(query);
        tracing::debug!(flavor = ?self.dialect.flavor(), path, "jira: GET user");
        let resp = match self.send(self.http.get(url), &action, None).await {
            Ok(r) => r,
            Err(JiraError::Rejected { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = self.read_success(resp, &action).await?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| JiraError::InvalidResponse {
                action,
                message: format!("not valid JSON: {e}"),
            })
    }

    /// Who most recently assigned issue `key` to `assignee` (the bot), from the issue's change history: the
    /// author's `accountId` on Cloud, its user name (else key) on Data Center; `None` when no history entry
    /// assigns the issue to `assignee` (e.g. it was created already assigned) or the last one has no author.
    ///
    /// `assignee` is compared with each assignee item's `to` (and Cloud's `tmpToAccountId`): the account id on
    /// Cloud, the user key (or, on old versions, the name) on Data Center, there case-insensitively. See
    /// [`JiraClient::assigned_by_any`] to accept either of the bot's key and name.
    ///
    /// Cloud: `GET /rest/api/3/issue/{key}/changelog?startAt=N&maxResults=100`, every page (`isLast`, `values[]`
    /// oldest first). Data Center: `GET /rest/api/2/issue/{key}?fields=assignee&expand=changelog`
    /// (`changelog.histories[]`).
    pub async fn assigned_by(
        &self,
        key: &str,
        assignee: &str,
    ) -> Result<Option<String>, JiraError> {
        self.assigned_by_any(key, &[assignee]).await
    }

    /// [`JiraClient::assigned_by`] for an assignee known by several identifiers (a Data Center user's key and name).
    /// Empty identifiers are ignored.
    pub async fn assigned_by_any(
        &self,
        key: &str,
        assignees: &[&str],
    ) -> Result<Option<String>, JiraError> {
        check_key(key)?;
        let assignees: Vec<&str> = assignees
            .iter()
            .copied()
            .filter(|a| !a.is_empty())
            .collect();
        let dc = self.dialect.is_datacenter();
        let histories = if dc {
            self.changelog_dc(key).await?
        } else {
            self.changelog_cloud(key).await?
        };
        Ok(last_assignment_author(&histories, &assignees, dc))
    }

    /// Every change history entry of an issue on Cloud, in the order Jira lists them (oldest first).
    async fn changelog_cloud(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        let action = format!("reading the change history of issue {key}");
        let mut all: Vec<Value> = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_CHANGELOG_PAGES {
            // The key is validated; the numbers are ours.
            let url = self.api_url(&format!(
                "issue/{key}/changelog?startAt={start}&maxResults={PAGE_SIZE}"
            ));
            tracing::debug!(issue = key, start, "jira: GET changelog");
            let resp = self.send(self.http.get(url), &action, Some(key)).await?;
            let body = self.read_success(resp, &action).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
                    action: action.clone(),
                    message: format!("change history is not valid JSON: {e}"),
                })?;
            let page = v.get("values").and_then(Value::as_array).ok_or_else(|| {
                JiraError::InvalidResponse {
                    action: action.clone(),
                    message: "change history page has no `values` array".into(),
                }
            })?;
            let got = page.len() as u64;
            all.extend(page.iter().cloned());
            start = start.saturating_add(got);
            let last = v.get("isLast").and_then(Value::as_bool);
            let total = v.get("total").and_then(Value::as_u64);
            // `isLast` decides when present; otherwise `total`; an empty page always ends (no endless loop).
            let done = got == 0
                || match (last, total) {
                    (Some(l), _) => l,
                    (None, Some(t)) => start >= t,
                    (None, None) => true,
                };
            if done {
                return Ok(all);
            }
        }
        Err(JiraError::InvalidResponse {
            action,
            message: format!(
                "more than {} change history entries; refusing to page further",
                MAX_CHANGELOG_PAGES * PAGE_SIZE
            ),
        })
    }

    /// Every change history entry of an issue on Data Center (`expand=changelog` on the issue).
    async fn changelog_dc(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        let action = format!("reading the change history of issue {key}");
        let url = self.api_url(&format!("issue/{key}?fields=assignee&expand=changelog"));
        tracing::debug!(issue = key, "jira: GET issue with changelog");
        let resp = self.send(self.http.get(url), &action, Some(key)).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("issue is not valid JSON: {e}"),
        })?;
        v.pointer("/changelog/histories")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| JiraError::InvalidResponse {
                action,
                message: "issue has no `changelog.histories` list".into(),
            })
    }

    fn auth_header(&self) -> Result<HeaderValue, JiraError> {
        let secret = |token: &crate::config::Credential| {
            token
                .value()
                .map(|s| s.expose().to_string())
                .map_err(|e| JiraError::Config(e.to_string()))
        };
        let value = match &self.auth {
            JiraAuth::Basic { email, token } => {
                let raw = format!("{}:{}", email, secret(token)?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            JiraAuth::Bearer { token } => format!("Bearer {}", secret(token)?),
            JiraAuth::Password { username, password } => {
                let raw = format!("{}:{}", username, secret(password)?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
        };
        let mut h = HeaderValue::from_str(&value).map_err(|_| {
            JiraError::Config(
                "the Jira credential contains characters that cannot be sent in an HTTP header"
                    .into(),
            )
        })?;
        h.set_sensitive(true);
        Ok(h)
    }

    /// Sends with auth; turns transport failures and non-2xx statuses into errors.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        action: &str,
        key: Option<&str>,
    ) -> Result<reqwest::Response, JiraError> {
        let req = req
            .header(AUTHORIZATION, self.auth_header()?)
            .header(ACCEPT, "application/json");
        let resp = req.send().await.map_err(|e| JiraError::Network {
            action: action.to_string(),
            message: self.scrub(&describe_reqwest(e)),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = parse_retry_after(resp.headers());
        let body = read_capped(resp, MAX_ERROR_BODY_BYTES)
            .await
            .map(|(b, _)| b)
            .unwrap_or_default();
        let message = self.scrub(&summarize_error_body(&body));
        tracing::debug!(status = status.as_u16(), action, "jira: request failed");
        Err(status_error(status, retry_after, action, key, message))
    }

    async fn read_success(
        &self,
        resp: reqwest::Response,
        action: &str,
    ) -> Result<Vec<u8>, JiraError> {
        let (body, cut) =
            read_capped(resp, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| JiraError::Network {
                    action: action.to_string(),
                    message: self.scrub(&describe_reqwest(e)),
                })?;
        if cut {
            return Err(JiraError::InvalidResponse {
                action: action.to_string(),
                message: format!("answer larger than {} MiB", MAX_RESPONSE_BYTES >> 20),
            });
        }
        Ok(body)
    }

    /// Removes the credential from text that came from the server, in case it was echoed back.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        let token = self.auth.secret().value().map(|s| s.expose()).unwrap_or("");
        if !token.is_empty() {
            out = out.replace(token, "[redacted]");
        }
        if let Ok(h) = self.auth_header() {
            if let Ok(s) = h.to_str() {
                if let Some((_, cred)) = s.split_once(' ') {
                    if !cred.is_empty() {
                        out = out.replace(cred, "[redacted]");
                    }
                }
            }
        }
        out
    }

    fn ticket_from_json(&self, asked: &str, v: &Value, action: &str) -> Result<Ticket, JiraError> {
        let fields = v.get("fields").filter(|f| f.is_object()).ok_or_else(|| {
            JiraError::InvalidResponse {
                action: action.to_string(),
                message: "issue has no `fields` object".into(),
            }
        })?;
        // Jira answers with the current key when an issue was moved; trust it only if it is a key.
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| valid_issue_key(k))
            .unwrap_or(asked)
            .to_string();
        let project = project_of(&key).unwrap_or_default().to_string();
        let summary = fields
            .get("summary")
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_TEXT_CHARS)))
            .unwrap_or_default();
        let description = match fields.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(d) => cap_markdown(self.dialect.markdown(d)),
        };
        let reporter = fields
            .get("reporter")
            .and_then(|r| r.get("displayName"))
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
            .filter(|s| !s.is_empty());
        let labels = fields
            .get("labels")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
                    .filter(|s| !s.is_empty())
                    .take(100)
                    .collect()
            })
            .unwrap_or_default();
        let issue_type = fields
            .get("issuetype")
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
            .filter(|s| !s.is_empty());
        let acceptance_criteria = self
            .cfg
            .acceptance_criteria_fields
            .iter()
            .filter_map(|f| {
                let text = cap_text(
                    field_text(fields.get(f)?, self.dialect),
                    MAX_CRITERIA_BYTES,
                    "field",
                );
                (!text.trim().is_empty()).then(|| FieldText {
                    field: f.clone(),
                    text,
                })
            })
            .collect();
        let short = |v: Option<&Value>, max: usize| {
            v.and_then(Value::as_str)
                .map(|s| clean_text(&cap_chars(s, max)))
                .filter(|s| !s.trim().is_empty())
        };
        let links = fields
            .get("issuelinks")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                // The other issue is the link's outward one (this ticket `blocks` it) or its inward one.
                let (other, side) = match (l.get("outwardIssue"), l.get("inwardIssue")) {
                    (Some(o), _) if o.is_object() => (o, "outward"),
                    (_, Some(i)) if i.is_object() => (i, "inward"),
                    _ => return None,
                };
                let key = other
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| valid_issue_key(k))?;
                let ty = l.get("type");
                let relation = short(ty.and_then(|t| t.get(side)), 100)
                    .or_else(|| short(ty.and_then(|t| t.get("name")), 100))
                    .unwrap_or_else(|| "relates to".to_string());
                Some(IssueLink {
                    relation,
                    key: key.to_string(),
                    summary: short(other.get("fields").and_then(|f| f.get("summary")), 200),
                })
            })
            .take(MAX_TICKET_LIST)
            .collect();
        let attachments = fields
            .get("attachment")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                Some(Attachment {
                    filename: short(a.get("filename"), MAX_NOTICE_FIELD_CHARS)?,
                    size: a.get("size").and_then(Value::as_u64),
                    mime_type: short(a.get("mimeType"), 100),
                })
            })
            .take(MAX_TICKET_LIST)
            .collect();
        Ok(Ticket {
            url: self.browse_url(&key),
            key,
            project,
            summary,
            description,
            reporter,
            labels,
            issue_type,
            comments: Vec::new(),
            comments_left_out: 0,
            acceptance_criteria,
            links,
            attachments,
        })
    }
}

/// The author of the latest history entry that assigns the issue to one of `assignees`: by `created` when every
/// such entry has a readable date (ties: list order), else by list order (Jira lists oldest first). `None` when there
/// is no such entry, or the latest one has no usable author (an anonymous or system change is nobody's trigger; an
/// older entry's author is not substituted).
fn last_assignment_author(
    histories: &[Value],
    assignees: &[&str],
    case_insensitive: bool,
) -> Option<String> {
    let matches = |v: &str| {
        assignees.iter().any(|a| {
            if case_insensitive {
                v.eq_ignore_ascii_case(a)
            } else {
                v == *a
            }
        })
    };
    let assigns = |h: &Value| {
        h.get("items")
            .and_then(Value::as_array)
            .is_some_and(|items| {
                items.iter().any(|i| {
                    let named = |k: &str| i.get(k).and_then(Value::as_str) == Some("assignee");
                    (named("fieldId") || named("field"))
                        && ["to", "tmpToAccountId"]
                            .iter()
                            .any(|k| i.get(*k).and_then(Value::as_str).is_some_and(matches))
                })
            })
    };
    let hits: Vec<(usize, &Value)> = histories
        .iter()
        .enumerate()
        .filter(|(_, h)| assigns(h))
        .collect();
    let dates: Option<Vec<chrono::DateTime<chrono::FixedOffset>>> = hits
        .iter()
        .map(|(_, h)| {
            h.get("created")
                .and_then(Value::as_str)
                .and_then(parse_jira_time)
        })
        .collect();
    let latest = match dates {
        Some(dates) => hits
            .iter()
            .zip(dates)
            .max_by_key(|((pos, _), at)| (*at, *pos))
            .map(|((_, h), _)| *h),
        None => hits.last().map(|(_, h)| *h),
    }?;
    let author = latest.get("author")?;
    ["accountId", "name", "key"]
        .iter()
        .find_map(|k| {
            author
                .get(*k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(|s| cap_chars(&clean_text(s), MAX_NOTICE_FIELD_CHARS))
        .filter(|s| !s.is_empty())
}

/// Jira's timestamps: `2026-03-01T10:00:00.000+0000` (also with `Z` or `+00:00`).
fn parse_jira_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
}

/// Group memberships by account, each kept for a TTL. Shared (in an `Arc`) by the clones of a [`JiraClient`], and
/// by several clients if given to [`JiraClient::with_group_cache`].
pub struct GroupCache {
    ttl: Duration,
    /// One slot per account; the async lock lets one request fill it while others wait.
    entries: Mutex<HashMap<String, Arc<GroupSlot>>>,
}

type GroupSlot = tokio::sync::Mutex<Option<(Instant, UserInfo)>>;

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCache")
            .field("ttl", &self.ttl)
            .field("accounts", &self.len())
            .finish()
    }
}

impl GroupCache {
    /// An empty cache whose answers live `ttl` (zero: every call asks Jira).
    pub fn new(ttl: Duration) -> GroupCache {
        GroupCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets every answer (e.g. after the policy's groups changed).
    pub fn clear(&self) {
        self.map().clear();
    }

    /// Accounts with a slot (answered, or being asked).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<GroupSlot>>> {
        // The map holds no invariant a panic could break: keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `account`, created if needed. A full map first drops slots nobody is using whose answer is
    /// stale or missing, then, if still full, every unused slot.
    fn slot(&self, account: &str) -> Arc<GroupSlot> {
        let mut map = self.map();
        if let Some(s) = map.get(account) {
            return s.clone();
        }
        if map.len() >= MAX_GROUP_CACHE_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock()
                        .map(|e| e.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl))
                        .unwrap_or(true)
            });
            if map.len() >= MAX_GROUP_CACHE_ENTRIES {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
        }
        map.entry(account.to_string()).or_default().clone()
    }
}

/// What Jira says about one user (see [`JiraClient::identities`], [`JiraClient::user_groups`]).
#[derive(Debug, Clone, Default)]
struct UserInfo {
    /// The identifiers the user goes by besides the one asked for: Data Center's name and key.
    ids: Vec<String>,
    /// The user's group names.
    groups: Vec<String>,
}

/// Who a credential belongs to ([`JiraClient::whoami`]). Each field is what the site sent, when it sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JiraUser {
    /// Cloud's `accountId`.
    pub account_id: Option<String>,
    /// Data Center's user name (what `[~name]` mentions and JQL use).
    pub name: Option<String>,
    /// Data Center's user key (what change history `to` values hold).
    pub key: Option<String>,
    /// The name shown to people.
    pub display_name: Option<String>,
}

/// Group names from a list of `{name, ...}` objects: cleaned, capped, at most [`MAX_GROUPS_PER_USER`].
fn group_names(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|g| g.get("name").and_then(Value::as_str))
        .map(|n| clean_text(&cap_chars(n, MAX_NOTICE_FIELD_CHARS)))
        .filter(|n| !n.is_empty())
        .take(MAX_GROUPS_PER_USER)
        .collect()
}

/// Whether a Data Center identifier looks like a generated user key (`JIRAUSER10100`, since Jira 8.4), which no
/// user-name lookup finds.
fn looks_like_user_key(account: &str) -> bool {
    match (account.get(..8), account.get(8..)) {
        (Some(prefix), Some(number)) => {
            prefix.eq_ignore_ascii_case("JIRAUSER")
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

fn check_account(account: &str) -> Result<(), JiraError> {
    if account.is_empty()
        || account.chars().count() > MAX_ACCOUNT_CHARS
        || account.chars().any(char::is_control)
    {
        return Err(JiraError::InvalidAccount(cap_chars(
            &clean_text(account),
            64,
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), JiraError> {
    if valid_issue_key(key) {
        Ok(())
    } else {
        Err(JiraError::InvalidKey(cap_chars(key, 64)))
    }
}

fn status_error(
    status: StatusCode,
    retry_after: Option<Duration>,
    action: &str,
    key: Option<&str>,
    message: String,
) -> JiraError {
    let action = action.to_string();
    let code = status.as_u16();
    match code {
        401 | 403 => JiraError::Unauthorized {
            status: code,
            action,
            message,
        },
        404 if key.is_some() => JiraError::NotFound {
            key: key.unwrap_or_default().to_string(),
            message,
        },
        429 => JiraError::RateLimited {
            action,
            retry_after,
            message,
        },
        500..=599 => JiraError::Server {
            status: code,
            action,
            retry_after,
            message,
        },
        _ => JiraError::Rejected {
            status: code,
            action,
            message,
        },
    }
}

/// A transport error without its URL (the URL holds nothing secret, but keeps messages short and stable).
fn describe_reqwest(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    // reqwest's Display is terse; its source chain says why (DNS, refused, TLS ...).
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(&e);
    let mut n = 0;
    while let Some(s) = src {
        if n >= 4 {
            break;
        }
        let _ = write!(msg, ": {s}");
        src = s.source();
        n += 1;
    }
    cap_chars(&msg, ERROR_SUMMARY_CHARS)
}

/// Reads at most `cap` bytes; the flag says whether more was there.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// `Retry-After` as delta-seconds or an HTTP date, clamped to [`MAX_RETRY_AFTER`].
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = raw.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        let delta = when.signed_duration_since(chrono::Utc::now());
        delta.to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Jira's `{"errorMessages":[...],"errors":{"field":"msg"}}` as one line, else the raw text; cut to a few hundred
/// characters.
fn summarize_error_body(body: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(msgs) = v.get("errorMessages").and_then(Value::as_array) {
            parts.extend(msgs.iter().filter_map(Value::as_str).map(str::to_string));
        }
        if let Some(errs) = v.get("errors").and_then(Value::as_object) {
            for (field, msg) in errs {
                let msg = msg
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| msg.to_string());
                parts.push(format!("{field}: {msg}"));
            }
        }
        if parts.is_empty() {
            if let Some(m) = v.get("message").and_then(Value::as_str) {
                parts.push(m.to_string());
            }
        }
    }
    let text = if parts.is_empty() {
        String::from_utf8_lossy(body).into_owned()
    } else {
        parts.join("; ")
    };
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if one_line.is_empty() {
        "(no details)".to_string()
    } else {
        cap_chars(&one_line, ERROR_SUMMARY_CHARS)
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

/// An issue field's value as text: rich text as Markdown (ADF on Cloud, wiki markup on Data Center, per the
/// [`Dialect`]), plain strings as they are, a selected option by its value, a list one item per line.
fn field_text(v: &Value, dialect: Dialect) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(_) => dialect.markdown(v),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| field_text(i, dialect))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(o) => match (o.get("type"), o.get("value").or_else(|| o.get("name"))) {
            (Some(_), _) => adf_to_markdown(v),
            (None, Some(x)) if !x.is_object() => field_text(x, dialect),
            _ => adf_to_markdown(v),
        },
    }
}

/// Removes control characters except newline and tab (terminal escapes, NULs, carriage returns).
fn clean_text(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect()
}

// ---- ADF -> Markdown ----------------------------------------------------------------------------------------------

/// A hard line break inside a paragraph (CommonMark backslash form, visible and unambiguous).
const HARD_BREAK: &str = "\\\n";
/// Columns kept per table row.
const MAX_TABLE_COLUMNS: usize = 64;
const DEPTH_MARKER: &str = "[content nested too deeply: omitted]";

/// Node types that are inline content (children of paragraphs, headings, task items).
const INLINE_TYPES: &[&str] = &[
    "text",
    "hardBreak",
    "mention",
    "emoji",
    "date",
    "status",
    "inlineCard",
    "mediaInline",
    "placeholder",
    "inlineExtension",
];

/// Converts an ADF document (or any ADF node, or a plain string as found in v2/webhook payloads) to Markdown.
///
/// Known nodes are rendered as their Markdown equivalents; unknown nodes are unwrapped so their text survives.
/// Malformed input never panics: missing or mistyped fields are skipped, and nesting beyond [`MAX_ADF_DEPTH`] is
/// replaced by a marker.
pub fn adf_to_markdown(doc: &Value) -> String {
    let r = Renderer {
        depth_marked: Cell::new(false),
    };
    let out = match doc {
        Value::String(s) => clean_text(s),
        Value::Array(nodes) => r.blocks(nodes, 0),
        Value::Object(_) if node_type(doc) == "doc" => r.blocks(children(doc), 0),
        Value::Object(_) => r.blocks(std::slice::from_ref(doc), 0),
        _ => String::new(),
    };
    out.trim().to_string()
}

fn node_type(n: &Value) -> &str {
    n.get("type").and_then(Value::as_str).unwrap_or("")
}

fn children(n: &Value) -> &[Value] {
    n.get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn attr<'a>(n: &'a Value, name: &str) -> Option<&'a Value> {
    n.get("attrs").and_then(|a| a.get(name))
}

fn attr_str<'a>(n: &'a Value, name: &str) -> Option<&'a str> {
    attr(n, name).and_then(Value::as_str)
}

fn is_inline(n: &Value) -> bool {
    INLINE_TYPES.contains(&node_type(n))
}

fn is_list(n: &Value) -> bool {
    matches!(node_type(n), "bulletList" | "orderedList" | "taskList")
}

/// Prefixes the first line with `first` and the others with `rest` (empty lines stay empty).
fn prefix_lines(body: &str, first: &str, rest: &str) -> String {
    let mut out = String::with_capacity(body.len() + first.len());
    for (i, line) in body.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == 0 {
            out.push_str(first);
            out.push_str(line);
        } else if !line.is_empty() {
            out.push_str(rest);
            out.push_str(line);
        }
    }
    out.trim_end().to_string()
}

fn quote(body: &str) -> String {
    body.split('\n')
        .map(|l| {
            if l.is_empty() {
                ">".to_string()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for c in s.chars() {
        if c == '`' {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

fn inline_code(s: &str) -> String {
    let fence = "`".repeat(longest_backtick_run(s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Makes a link target safe inside `(...)`: no whitespace, parentheses or angle brackets.
fn clean_href(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    for c in h.trim().chars() {
        match c {
            ' ' => out.push_str("%20"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            c if c.is_control() || c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.replace(HARD_BREAK, " ")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

struct Renderer {
    /// The depth marker is written once, not once per sibling.
    depth_marked: Cell<bool>,
}

impl Renderer {
    fn too_deep(&self, depth: usize) -> Option<String> {
        if depth <= MAX_ADF_DEPTH {
            return None;
        }
        if self.depth_marked.replace(true) {
            Some(String::new())
        } else {
            Some(DEPTH_MARKER.to_string())
        }
    }

    /// Block content separated by blank lines.
    fn blocks(&self, nodes: &[Value], depth: usize) -> String {
        self.block_parts(nodes, depth)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// Renders a block sequence; runs of stray inline nodes become a paragraph. The flag marks lists.
    fn block_parts(&self, nodes: &[Value], depth: usize) -> Vec<(String, bool)> {
        let mut parts = Vec::new();
        let mut run = String::new();
        let flush = |run: &mut String, parts: &mut Vec<(String, bool)>| {
            let t = run.trim();
            if !t.is_empty() {
                parts.push((t.to_string(), false));
            }
            run.clear();
        };
        for n in nodes.iter().filter(|n| n.is_object()) {
            if is_inline(n) {
                run.push_str(&self.inline(n, depth + 1));
                continue;
            }
            flush(&mut run, &mut parts);
            let s = self.block(n, depth + 1);
            if !s.trim().is_empty() {
                parts.push((s, is_list(n)));
            }
        }
        flush(&mut run, &mut parts);
        parts
    }

    fn inlines(&self, nodes: &[Value], depth: usize) -> String {
        nodes
            .iter()
            .filter(|n| n.is_object())
            .map(|n| self.inline(n, depth + 1))
            .collect()
    }

    fn block(&self, n: &Value, depth: usize) -> String {
        if let Some(m) = self.too_deep(depth) {
            return m;
        }
        let kids = children(n);
        match node_type(n) {
            "paragraph" => self.inlines(kids, depth).trim().to_string(),
            "heading" => {
                let level = attr(n, "level")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .clamp(1, 6) as usize;
                let text = one_line(&self.inlines(kids, depth));
                if text.is_empty() {
                    String::new()
                } else {
                    format!("{} {}", "#".repeat(level), text)
                }
            }
            "bulletList" => self.list(kids, None, depth),
            "orderedList" => {
                let start = attr(n, "order")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .min(999_999_999);
                self.list(kids, Some(start), depth)
            }
            "taskList" => self.task_list(kids, depth),
            "codeBlock" => {
                let mut code = String::new();
                collect_text(n, &mut code, depth, 0);
                let code = clean_text(&code);
                let lang: String = attr_str(n, "language")
                    .unwrap_or("")
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "+-_.#".contains(*c))
                    .take(32)
                    .collect();
                let fence = "`".repeat(longest_backtick_run(&code).max(2) + 1);
                let nl = if code.ends_with('\n') || code.is_empty() {
                    ""
                } else {
                    "\n"
                };
                format!("{fence}{lang}\n{code}{nl}{fence}")
            }
            "blockquote" => {
                let body = self.blocks(kids, depth);
                if body.is_empty() {
                    body
                } else {
                    quote(&body)
                }
            }
            "rule" => "---".to_string(),
            "panel" => {
                let kind: String = attr_str(n, "panelType")
                    .unwrap_or("info")
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(20)
                    .collect();
                let mut label = kind.clone();
                if let Some(f) = label.get_mut(0..1) {
                    f.make_ascii_uppercase();
                }
                if label.is_empty() {
                    label = "Info".into();
                }
                let body = self.blocks(kids, depth);
                quote(format!("**{label}:**\n{body}").trim_end())
            }
            "table" => self.table(kids, depth),
            "media" => media_placeholder(n),
            "expand" | "nestedExpand" => {
                let title = one_line(&clean_text(attr_str(n, "title").unwrap_or("")));
                let body = self.blocks(kids, depth);
                match (title.is_empty(), body.is_empty()) {
                    (true, _) => body,
                    (false, true) => format!("**{title}**"),
                    (false, false) => format!("**{title}**\n\n{body}"),
                }
            }
            "blockCard" | "embedCard" => attr_str(n, "url").map(clean_href).unwrap_or_default(),
            "listItem" | "taskItem" => self.blocks(kids, depth),
            // doc, mediaSingle, mediaGroup, layoutSection, layoutColumn, bodiedExtension, decisionList and
            // anything unknown: drop the wrapper, keep the content.
            _ => self.blocks(kids, depth),
        }
    }

    fn inline(&self, n: &Value, depth: usize) -> String {
        if let Some(m) = self.too_deep(depth) {
            return m;
        }
        match node_type(n) {
            "text" => text_with_marks(n),
            "hardBreak" => HARD_BREAK.to_string(),
            "mention" => {
                let text = clean_text(attr_str(n, "text").unwrap_or("").trim());
                if text.starts_with('@') {
                    text
                } else if !text.is_empty() {
                    format!("@{text}")
                } else {
                    let id = clean_text(attr_str(n, "id").unwrap_or("").trim());
                    if id.is_empty() {
                        "@someone".into()
                    } else {
                        format!("@{id}")
                    }
                }
            }
            "emoji" => clean_text(
                attr_str(n, "shortName")
                    .or_else(|| attr_str(n, "text"))
                    .unwrap_or(""),
            ),
            "date" => render_date(attr(n, "timestamp")),
            "status" => clean_text(attr_str(n, "text").unwrap_or("")),
            "inlineCard" => attr_str(n, "url").map(clean_href).unwrap_or_default(),
            "mediaInline" | "media" => media_placeholder(n),
            "placeholder" => String::new(),
            // A block where inline content was expected (e.g. a paragraph inside a table cell flattened), or an
            // unknown node: keep its text.
            _ => {
                let kids = children(n);
                let parts: Vec<String> = kids
                    .iter()
                    .filter(|k| k.is_object())
                    .map(|k| self.inline(k, depth + 1))
                    .filter(|s| !s.is_empty())
                    .collect();
                if is_inline(n) || kids.iter().all(is_inline) {
                    parts.concat()
                } else {
                    parts.join(" ")
                }
            }
        }
    }

    fn list(&self, items: &[Value], start: Option<u64>, depth: usize) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut num = start.unwrap_or(1);
        for item in items.iter().filter(|i| i.is_object()) {
            let marker = match start {
                Some(_) => format!("{num}. "),
                None => "- ".to_string(),
            };
            let body = if node_type(item) == "listItem" {
                self.item_body(children(item), depth + 1)
            } else {
                // Malformed: something other than a listItem directly in a list. Keep it as an item.
                self.block_parts(std::slice::from_ref(item), depth)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            };
            out.push(prefix_lines(&body, &marker, &" ".repeat(marker.len())));
            num = num.saturating_add(1);
        }
        out.join("\n")
    }

    /// An item's blocks: a nested list follows its paragraph directly, other blocks are separated by a blank line.
    fn item_body(&self, kids: &[Value], depth: usize) -> String {
        let mut body = String::new();
        for (i, (s, list)) in self.block_parts(kids, depth).into_iter().enumerate() {
            if i > 0 {
                body.push_str(if list { "\n" } else { "\n\n" });
            }
            body.push_str(&s);
        }
        body
    }

    fn task_list(&self, items: &[Value], depth: usize) -> String {
        let mut out: Vec<String> = Vec::new();
        for item in items.iter().filter(|i| i.is_object()) {
            match node_type(item) {
                // ADF nests task lists as siblings of the items they belong under.
                "taskList" => {
                    let nested = self.task_list(children(item), depth + 1);
                    if !nested.is_empty() {
                        out.push(prefix_lines(&nested, "  ", "  "));
                    }
                }
                _ => {
                    let done = attr_str(item, "state") == Some("DONE");
                    let marker = if done { "- [x] " } else { "- [ ] " };
                    let body = self.item_body(children(item), depth + 1);
                    out.push(prefix_lines(&body, marker, "  "));
                }
            }
        }
        out.join("\n")
    }

    fn table(&self, rows: &[Value], depth: usize) -> String {
        let mut grid: Vec<Vec<String>> = Vec::new();
        let mut header_first = false;
        for (i, row) in rows.iter().filter(|r| r.is_object()).enumerate() {
            if let Some(m) = self.too_deep(depth + 1) {
                grid.push(vec![m]);
                continue;
            }
            let cells: Vec<&Value> = children(row)
                .iter()
                .filter(|c| c.is_object())
                .take(MAX_TABLE_COLUMNS)
                .collect();
            if i == 0 {
                header_first =
                    !cells.is_empty() && cells.iter().all(|c| node_type(c) == "tableHeader");
            }
            grid.push(cells.iter().map(|c| self.cell(c, depth + 2)).collect());
        }
        let ncols = grid.iter().map(Vec::len).max().unwrap_or(0);
        if ncols == 0 {
            return String::new();
        }
        for row in &mut grid {
            row.resize(ncols, String::new());
        }
        let header = if header_first {
            grid.remove(0)
        } else {
            vec![String::new(); ncols]
        };
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for c in cells {
                s.push(' ');
                s.push_str(c);
                s.push_str(" |");
            }
            s
        };
        let mut out = vec![line(&header), format!("|{}", " --- |".repeat(ncols))];
        out.extend(grid.iter().map(|r| line(r)));
        out.join("\n")
    }

    /// A table cell on one line: line breaks become `<br>`, pipes are escaped.
    fn cell(&self, c: &Value, depth: usize) -> String {
        let body = if is_inline(c) {
            self.inline(c, depth)
        } else {
            self.blocks(children(c), depth)
        };
        body.replace(HARD_BREAK, "\n")
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("<br>")
            .replace('|', "\\|")
    }
}

/// Text of a subtree, marks ignored (for code blocks).
fn collect_text(n: &Value, out: &mut String, base: usize, depth: usize) {
    if base + depth > MAX_ADF_DEPTH {
        return;
    }
    for k in children(n) {
        match node_type(k) {
            "text" => out.push_str(k.get("text").and_then(Value::as_str).unwrap_or("")),
            "hardBreak" => out.push('\n'),
            _ => collect_text(k, out, base, depth + 1),
        }
    }
}

fn text_with_marks(n: &Value) -> String {
    let t = clean_text(n.get("text").and_then(Value::as_str).unwrap_or(""));
    let core = t.trim();
    if core.is_empty() {
        return t;
    }
    let (lead, trail) = {
        let start = t.len() - t.trim_start().len();
        let end = t.trim_end().len();
        (&t[..start], &t[end..])
    };
    let (mut code, mut strong, mut em, mut strike) = (false, false, false, false);
    let mut link: Option<String> = None;
    for m in n
        .get("marks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match node_type(m) {
            "code" => code = true,
            "strong" => strong = true,
            "em" => em = true,
            "strike" => strike = true,
            "link" => {
                link = attr_str(m, "href")
                    .map(clean_href)
                    .filter(|h| !h.is_empty())
            }
            _ => {}
        }
    }
    let mut s = if code {
        inline_code(core)
    } else {
        core.to_string()
    };
    if strike {
        s = format!("~~{s}~~");
    }
    if em {
        s = format!("_{s}_");
    }
    if strong {
        s = format!("**{s}**");
    }
    if let Some(h) = link {
        s = format!("[{s}]({h})");
    }
    format!("{lead}{s}{trail}")
}

fn render_date(ts: Option<&Value>) -> String {
    let ms = match ts {
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    };
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "[date]".to_string())
}

fn media_placeholder(n: &Value) -> String {
    let alt = one_line(&clean_text(attr_str(n, "alt").unwrap_or("")));
    if alt.is_empty() {
        "[attachment]".to_string()
    } else {
        format!("[attachment: {}]", cap_chars(&alt, MAX_NOTICE_FIELD_CHARS))
    }
}

// ---- comments -----------------------------------------------------------------------------------------------------

/// Where a job's proof bundle is, for the ticket comment that ends the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofRef {
    /// The job id (`drafter jobs bundle <id>` fetches the bundle).
    pub job_id: String,
    /// SHA-256 of the bundle file.
    pub digest: String,
}

/// What drafter tells the ticket. Rendered to ADF by [`Notice::to_adf`], or to text by [`Notice::plain_text`].
///
/// All fields are untrusted text: control characters are removed and lengths are capped (reasons and summaries at
/// 1000 characters). The caller must not put secrets in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job was accepted and is running.
    Started {
        /// The job id.
        job_id: String,
        /// `owner/name` of the repository.
        repo: String,
    },
    /// A draft pull request was opened.
    PrOpened {
        /// The pull request's web URL.
        url: String,
        /// `owner/name`.
        repo: String,
        /// Pull request number.
        number: u64,
        /// The branch pushed.
        branch: String,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// The agent finished but changed nothing.
    NoChanges {
        /// The agent's own summary.
        summary: String,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// drafter would not take the ticket (not allowlisted, no repository, ...).
    Refused {
        /// Why, in plain text.
        reason: String,
        /// The proof bundle (it records the rule that refused the ticket).
        proof: Option<ProofRef>,
    },
    /// The job failed.
    Failed {
        /// The job id.
        job_id: String,
        /// Why, in plain text.
        reason: String,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// The policy wants a person to approve the job before it runs.
    ApprovalNeeded {
        /// The job id.
        job_id: String,
        /// Which rule asks for approval.
        reason: String,
        /// Who may approve.
        approvers: String,
        /// How long the job waits.
        ttl_hours: u64,
    },
    /// An approved job's ticket changed before it ran: the approval no longer holds, and the job waits again.
    ApprovalOutdated {
        /// The job id.
        job_id: String,
        /// Who approved it.
        approved_by: String,
        /// What changed since, in words (the ticket's content, the repository, the base branch).
        changed: Vec<String>,
        /// Who may approve.
        approvers: String,
        /// How long the job waits.
        ttl_hours: u64,
    },
}

/// A piece of a comment paragraph.
enum Span {
    Text(String),
    Code(String),
    Link { text: String, href: String },
    Break,
}

/// Untrusted text for a comment: control characters removed, capped.
fn notice_field(s: &str) -> String {
    one_line(&clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
}

/// A multi-line untrusted text as spans with line breaks.
fn text_spans(s: &str, out: &mut Vec<Span>) {
    let s = clean_text(&cap_chars(s.trim(), MAX_NOTICE_TEXT_CHARS));
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push(Span::Break);
        }
        out.push(Span::Text(line.to_string()));
    }
}

fn is_web_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

impl Notice {
    fn spans(&self) -> Vec<Span> {
        use Span::*;
        let mut v = Vec::new();
        match self {
            Notice::Started { job_id, repo } => {
                v.push(Text("drafter started working on this (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!("), repository {}.", notice_field(repo))));
            }
            Notice::PrOpened {
                url,
                repo,
                number,
                branch,
                ..
            } => {
                v.push(Text("Draft pull request opened: ".into()));
                let text = format!("{}#{}", notice_field(repo), number);
                let url = url.trim();
                if is_web_url(url) && url.len() <= 2048 {
                    v.push(Link {
                        text,
                        href: url.to_string(),
                    });
                } else {
                    v.push(Text(text));
                }
                v.push(Text(" (branch ".into()));
                v.push(Code(notice_field(branch)));
                v.push(Text("). A human must review and merge it.".into()));
            }
            Notice::NoChanges { summary, .. } => {
                v.push(Text(
                    "drafter finished without changing any file, so no pull request was opened."
                        .into(),
                ));
                if !summary.trim().is_empty() {
                    v.push(Text(" Summary: ".into()));
                    text_spans(summary, &mut v);
                }
            }
            Notice::Refused { reason, .. } => {
                v.push(Text("drafter refused this ticket: ".into()));
                text_spans(reason, &mut v);
            }
            Notice::Failed { job_id, reason, .. } => {
                v.push(Text("drafter failed (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text("): ".into()));
                text_spans(reason, &mut v);
            }
            Notice::ApprovalNeeded {
                job_id,
                reason,
                approvers,
                ttl_hours,
            } => {
                v.push(Text("drafter needs approval before it starts (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!(
                    "): {}. An approver ({}) can comment ",
                    notice_field(reason),
                    notice_field(approvers)
                )));
                v.push(Code("drafter approve".into()));
                v.push(Text(format!(
                    " on this ticket. Without approval the job expires in {ttl_hours} hours."
                )));
            }
            Notice::ApprovalOutdated {
                job_id,
                approved_by,
                changed,
                approvers,
                ttl_hours,
            } => {
                let changed: Vec<String> = changed.iter().map(|c| notice_field(c)).collect();
                v.push(Text(
                    "drafter needs approval again before it starts (job ".into(),
                ));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!(
                    "): {} changed after {} approved it, so that approval no longer holds and nothing ran. \
                     An approver ({}) can comment ",
                    changed.join(", "),
                    notice_field(approved_by),
                    notice_field(approvers)
                )));
                v.push(Code("drafter approve".into()));
                v.push(Text(format!(
                    " on this ticket to approve it as it is now. Without approval the job expires in {ttl_hours} \
                     hours."
                )));
            }
        }
        if let Notice::PrOpened { proof: Some(p), .. }
        | Notice::NoChanges { proof: Some(p), .. }
        | Notice::Refused { proof: Some(p), .. }
        | Notice::Failed { proof: Some(p), .. } = self
        {
            v.push(Break);
            v.push(Text("Proof bundle ".into()));
            v.push(Code(format!("sha256:{}", notice_field(&p.digest))));
            v.push(Text(" (".into()));
            v.push(Code(format!(
                "drafter jobs bundle {}",
                notice_field(&p.job_id)
            )));
            v.push(Text(", then ".into()));
            v.push(Code("drafter verify".into()));
            v.push(Text(").".into()));
        }
        v
    }

    /// Whether a comment's text (as Markdown or wiki markup) starts like one of drafter's notices.
    pub fn is_notice_text(text: &str) -> bool {
        const OPENINGS: &[&str] = &[
            "drafter started working on this (job ",
            "Draft pull request opened: ",
            "drafter finished without changing any file",
            "drafter refused this ticket: ",
            "drafter failed (job ",
            "drafter needs approval before it starts (job ",
            "drafter needs approval again before it starts (job ",
        ];
        let t = text.trim_start();
        OPENINGS.iter().any(|o| t.starts_with(o))
    }

    /// The notice as an ADF document: one paragraph; job ids and branches as code, the pull request as a link.
    pub fn to_adf(&self) -> Value {
        let mut content: Vec<Value> = Vec::new();
        for span in self.spans() {
            // ADF forbids empty text nodes: Jira answers 400 to them.
            match span {
                Span::Text(t) if !t.is_empty() => content.push(json!({"type": "text", "text": t})),
                Span::Code(t) if !t.is_empty() => content.push(json!({
                    "type": "text", "text": t, "marks": [{"type": "code"}]
                })),
                Span::Link { text, href } if !text.is_empty() => content.push(json!({
                    "type": "text", "text": text, "marks": [{"type": "link", "attrs": {"href": href}}]
                })),
                Span::Break => content.push(json!({"type": "hardBreak"})),
                _ => {}
            }
        }
        json!({
            "type": "doc",
            "version": 1,
            "content": [{"type": "paragraph", "content": content}],
        })
    }

    /// The same words as plain text (for logs and the CLI); a link is followed by its URL in parentheses.
    pub fn plain_text(&self) -> String {
        let mut s = String::new();
        for span in self.spans() {
            match span {
                Span::Text(t) | Span::Code(t) => s.push_str(&t),
                Span::Link { text, href } => {
                    let _ = write!(s, "{text} ({href})");
                }
                Span::Break => s.push('\n'),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(content: Value) -> Value {
        json!({"type": "doc", "version": 1, "content": content})
    }
    fn p(content: Value) -> Value {
        json!({"type": "paragraph", "content": content})
    }
    fn t(s: &str) -> Value {
        json!({"type": "text", "text": s})
    }
    fn tm(s: &str, marks: Value) -> Value {
        json!({"type": "text", "text": s, "marks": marks})
    }
    fn md(content: Value) -> String {
        adf_to_markdown(&doc(content))
    }

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
    fn paragraphs_and_marks() {
        let out = md(json!([
            p(json!([
                t("plain "),
                tm("bold", json!([{"type": "strong"}])),
                t(" "),
                tm("it", json!([{"type": "em"}])),
                t(" "),
                tm("x()", json!([{"type": "code"}])),
                t(" "),
                tm("gone", json!([{"type": "strike"}])),
                t(" "),
                tm(
                    "site",
                    json!([{"type": "link", "attrs": {"href": "https://e.com/a b"}}])
                ),
                t(" "),
                tm(
                    "u",
                    json!([{"type": "underline"}, {"type": "textColor", "attrs": {"color": "#f00"}}])
                ),
            ])),
            p(json!([tm(
                " both ",
                json!([{"type": "strong"}, {"type": "em"}])
            )])),
        ]));
        assert_eq!(
            out,
            "plain **bold** _it_ `x()` ~~gone~~ [site](https://e.com/a%20b) u\n\n**_both_**"
        );
    }

    #[test]
    fn code_mark_with_backticks() {
        let out = md(json!([p(json!([tm("a`b", json!([{"type": "code"}]))]))]));
        assert_eq!(out, "``a`b``");
        let out = md(json!([p(json!([tm("`x`", json!([{"type": "code"}]))]))]));
        assert_eq!(out, "`` `x` ``");
    }

    #[test]
    fn headings() {
        let out = md(json!([
            {"type": "heading", "attrs": {"level": 2}, "content": [t("Steps")]},
            {"type": "heading", "attrs": {"level": 9}, "content": [t("deep")]},
            {"type": "heading", "content": [t("no level")]},
            {"type": "heading", "attrs": {"level": 3}, "content": []},
        ]));
        assert_eq!(out, "## Steps\n\n###### deep\n\n# no level");
    }

    #[test]
    fn nested_lists() {
        let out = md(json!([
            {"type": "bulletList", "content": [
                {"type": "listItem", "content": [
                    p(json!([t("one")])),
                    {"type": "orderedList", "attrs": {"order": 3}, "content": [
                        {"type": "listItem", "content": [p(json!([t("three")]))]},
                        {"type": "listItem", "content": [p(json!([t("four")])),
                            {"type": "bulletList", "content": [
                                {"type": "listItem", "content": [p(json!([t("deep")]))]}
                            ]}
                        ]}
                    ]}
                ]},
                {"type": "listItem", "content": [p(json!([t("two")]))]},
            ]},
            {"type": "orderedList", "content": [
                {"type": "listItem", "content": [p(json!([t("a")]))]},
                {"type": "listItem", "content": [p(json!([t("b")]))]},
            ]},
        ]));
        assert_eq!(
            out,
            "- one\n  3. three\n  4. four\n     - deep\n- two\n\n1. a\n2. b"
        );
    }

    #[test]
    fn code_blocks_choose_a_long_enough_fence() {
        let out = md(json!([
            {"type": "codeBlock", "attrs": {"language": "rust"}, "content": [t("fn main() {}\n")]},
            {"type": "codeBlock", "content": [t("a ```` b")]},
            {"type": "codeBlock", "attrs": {"language": "x\n```evil"}, "content": [t("y")]},
        ]));
        assert_eq!(
            out,
            "```rust\nfn main() {}\n```\n\n`````\na ```` b\n`````\n\n```xevil\ny\n```"
        );
    }

    #[test]
    fn quotes_rules_breaks() {
        let out = md(json!([
            {"type": "blockquote", "content": [p(json!([t("said")])), p(json!([t("twice")]))]},
            {"type": "rule"},
            p(json!([t("a"), {"type": "hardBreak"}, t("b")])),
        ]));
        assert_eq!(out, "> said\n>\n> twice\n\n---\n\na\\\nb");
    }

    #[test]
    fn inline_nodes() {
        let out = md(json!([p(json!([
            {"type": "mention", "attrs": {"id": "712020:abc", "text": "@Ben"}}, t(" "),
            {"type": "mention", "attrs": {"id": "712020:abc", "text": "Ann"}}, t(" "),
            {"type": "mention", "attrs": {"id": "712020:xyz"}}, t(" "),
            {"type": "emoji", "attrs": {"shortName": ":smile:", "id": "1f604", "text": "😄"}}, t(" "),
            {"type": "date", "attrs": {"timestamp": "1582152559000"}}, t(" "),
            {"type": "date", "attrs": {"timestamp": 0}}, t(" "),
            {"type": "date", "attrs": {"timestamp": "soon"}}, t(" "),
            {"type": "status", "attrs": {"text": "IN PROGRESS", "color": "blue"}}, t(" "),
            {"type": "inlineCard", "attrs": {"url": "https://x.atlassian.net/browse/A-1"}},
        ]))]));
        assert_eq!(
            out,
            "@Ben @Ann @712020:xyz :smile: 2020-02-19 1970-01-01 [date] IN PROGRESS https://x.atlassian.net/browse/A-1"
        );
    }

    #[test]
    fn cards_panels_media_expand() {
        let out = md(json!([
            {"type": "blockCard", "attrs": {"url": "https://github.com/a/b"}},
            {"type": "panel", "attrs": {"panelType": "warning"}, "content": [p(json!([t("careful")]))]},
            {"type": "mediaSingle", "attrs": {"layout": "center"}, "content": [
                {"type": "media", "attrs": {"id": "abc", "type": "file", "collection": "c"}}
            ]},
            {"type": "mediaGroup", "content": [
                {"type": "media", "attrs": {"id": "d", "type": "file", "alt": "log.txt"}}
            ]},
            {"type": "expand", "attrs": {"title": "More"}, "content": [p(json!([t("hidden")]))]},
        ]));
        assert_eq!(
            out,
            "https://github.com/a/b\n\n> **Warning:**\n> careful\n\n[attachment]\n\n[attachment: log.txt]\n\n**More**\n\nhidden"
        );
    }

    #[test]
    fn tables() {
        let cell =
            |kind: &str, s: &str| json!({"type": kind, "attrs": {}, "content": [p(json!([t(s)]))]});
        let out = md(
            json!([{"type": "table", "attrs": {"isNumberColumnEnabled": false}, "content": [
                {"type": "tableRow", "content": [cell("tableHeader", "Name"), cell("tableHeader", "Value")]},
                {"type": "tableRow", "content": [cell("tableCell", "a|b"), {"type": "tableCell", "content": [
                    p(json!([t("x"), {"type": "hardBreak"}, t("y")]))
                ]}]},
                {"type": "tableRow", "content": [cell("tableCell", "short")]},
            ]}]),
        );
        assert_eq!(
            out,
            "| Name | Value |\n| --- | --- |\n| a\\|b | x<br>y |\n| short |  |"
        );
        // No header row: an empty header keeps every row as data.
        let out = md(json!([{"type": "table", "content": [
            {"type": "tableRow", "content": [cell("tableCell", "1")]},
        ]}]));
        assert_eq!(out, "|  |\n| --- |\n| 1 |");
    }

    #[test]
    fn task_lists() {
        let out = md(
            json!([{"type": "taskList", "attrs": {"localId": "l"}, "content": [
                {"type": "taskItem", "attrs": {"localId": "1", "state": "DONE"}, "content": [t("done")]},
                {"type": "taskItem", "attrs": {"localId": "2", "state": "TODO"}, "content": [t("todo")]},
                {"type": "taskList", "content": [
                    {"type": "taskItem", "attrs": {"state": "TODO"}, "content": [t("sub")]}
                ]},
            ]}]),
        );
        assert_eq!(out, "- [x] done\n- [ ] todo\n  - [ ] sub");
    }

    #[test]
    fn unknown_nodes_keep_their_text() {
        let out = md(json!([
            {"type": "layoutSection", "content": [
                {"type": "layoutColumn", "attrs": {"width": 50}, "content": [p(json!([t("left")]))]},
                {"type": "layoutColumn", "content": [p(json!([t("right")]))]},
            ]},
            {"type": "decisionList", "content": [
                {"type": "decisionItem", "content": [t("we decided")]}
            ]},
            p(json!([{"type": "fancyInline", "content": [t("inner")]}])),
        ]));
        assert_eq!(out, "left\n\nright\n\nwe decided\n\ninner");
    }

    #[test]
    fn malformed_input_never_panics() {
        let cases = [
            json!(null),
            json!(42),
            json!("plain *wiki* string"),
            json!([]),
            json!({}),
            json!({"type": "doc"}),
            json!({"type": "doc", "content": "nope"}),
            json!({"type": "doc", "content": [1, "x", null, [], {"type": 5}]}),
            json!({"type": "doc", "content": [{"type": "text"}]}),
            json!({"type": "doc", "content": [{"type": "text", "text": 5, "marks": "bold"}]}),
            json!({"type": "doc", "content": [{"type": "text", "text": "x", "marks": [1, {"type": "link"}]}]}),
            json!({"type": "doc", "content": [{"type": "heading", "attrs": {"level": "two"}, "content": [t("h")]}]}),
            json!({"type": "doc", "content": [{"type": "orderedList", "attrs": {"order": -3}, "content": [p(json!([t("x")]))]}]}),
            json!({"type": "doc", "content": [{"type": "table", "content": [{"type": "tableRow"}, 7]}]}),
            json!({"type": "doc", "content": [{"type": "date", "attrs": {"timestamp": 1e300}}]}),
            json!({"type": "doc", "content": [{"type": "mention", "attrs": null}]}),
            json!({"type": "doc", "content": [{"type": "codeBlock", "attrs": {"language": 3}, "content": [{"type": "hardBreak"}]}]}),
        ];
        for c in &cases {
            let _ = adf_to_markdown(c);
        }
        assert_eq!(
            adf_to_markdown(&json!("plain\u{1b}[31m text")),
            "plain[31m text"
        );
        assert_eq!(
            adf_to_markdown(
                &json!({"type": "doc", "content": [{"type": "text", "text": "loose"}]})
            ),
            "loose"
        );
        assert_eq!(
            adf_to_markdown(&json!({"type": "doc", "content": [{"type": "text"}]})),
            ""
        );
    }

    #[test]
    fn deep_nesting_is_cut_not_crashed() {
        let mut node = p(json!([t("bottom")]));
        for _ in 0..500 {
            node = json!({"type": "blockquote", "content": [node]});
        }
        let out = adf_to_markdown(&doc(json!([node, p(json!([t("after")]))])));
        assert!(out.contains(DEPTH_MARKER));
        assert!(!out.contains("bottom"));
        assert!(out.ends_with("after"));
        assert_eq!(out.matches(DEPTH_MARKER).count(), 1);

        let mut node = t("leaf");
        for _ in 0..500 {
            node =
                json!({"type": "bulletList", "content": [{"type": "listItem", "content": [node]}]});
        }
        let _ = adf_to_markdown(&doc(json!([node])));
    }

    #[test]
    fn control_characters_are_stripped() {
        let out = md(json!([p(json!([t("a\u{0}b\u{7}c\r\nd")]))]));
        assert_eq!(out, "abc\nd");
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

    #[test]
    fn last_assignment_is_by_date_then_list_order() {
        let entry = |id: &str, by: Value, created: &str, to: &str| {
            json!({"id": id, "author": by, "created": created,
                "items": [{"field": "assignee", "fieldtype": "jira", "fieldId": "assignee", "to": to}]})
        };
        let ann = json!({"accountId": "a"});
        let ben = json!({"accountId": "b"});
        // Listed newest first: the date decides.
        let h = [
            entry("3", ben.clone(), "2026-03-02T10:00:00.000+0000", "bot"),
            entry("2", ann.clone(), "2026-03-01T10:00:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("b")
        );
        // Offsets are honoured: 09:00-0200 is 11:00 UTC, after 10:30 UTC.
        let h = [
            entry("2", ann.clone(), "2026-03-01T09:00:00.000-0200", "bot"),
            entry("3", ben.clone(), "2026-03-01T10:30:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("a")
        );
        // An unreadable date: list order (Jira lists oldest first).
        let h = [
            entry("3", ben.clone(), "yesterday", "bot"),
            entry("2", ann.clone(), "2026-03-01T10:00:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("a")
        );
        // Case: exact on Cloud, case-insensitive on Data Center; a Data Center author by name.
        let h = [entry(
            "1",
            json!({"name": "alice", "key": "JIRAUSER1"}),
            "2026-03-01T10:00:00.000+0000",
            "Drafter",
        )];
        assert_eq!(last_assignment_author(&h, &["drafter"], false), None);
        assert_eq!(
            last_assignment_author(&h, &["drafter"], true).as_deref(),
            Some("alice")
        );
        // Garbage never panics.
        let garbage = json!([1, null, {"items": "x"}, {"items": [{"field": "assignee", "to": 5}]}]);
        assert_eq!(
            last_assignment_author(garbage.as_array().unwrap(), &["bot"], false),
            None
        );
    }

    #[test]
    fn error_body_summary() {
        let body = br#"{"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{"summary":"required"}}"#;
        assert_eq!(
            summarize_error_body(body),
            "Issue does not exist or you do not have permission to see it.; summary: required"
        );
        let long = "x".repeat(5000);
        assert!(summarize_error_body(long.as_bytes()).chars().count() <= ERROR_SUMMARY_CHARS + 1);
        assert_eq!(summarize_error_body(b""), "(no details)");
        assert_eq!(
            summarize_error_body(b"<html>\n\tBad\n</html>"),
            "<html> Bad </html>"
        );
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(parse_retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn retryable_classification() {
        let e = |s: u16| {
            status_error(
                StatusCode::from_u16(s).unwrap(),
                None,
                "x",
                Some("A-1"),
                "m".into(),
            )
        };
        assert!(e(500).is_retryable());
        assert!(e(503).is_retryable());
        assert!(e(429).is_retryable());
        for s in [400, 401, 403, 404, 409, 302] {
            assert!(!e(s).is_retryable(), "{s}");
        }
        assert!(matches!(e(404), JiraError::NotFound { .. }));
        assert!(!JiraError::InvalidKey("x".into()).is_retryable());
    }

    fn texts(adf: &Value) -> String {
        let mut s = String::new();
        collect_text(adf, &mut s, 0, 0);
        s
    }

    #[test]
    fn notices_render() {
        let n = Notice::Started {
            job_id: "J1".into(),
            repo: "acme/widgets".into(),
        };
        assert_eq!(
            n.plain_text(),
            "drafter started working on this (job J1), repository acme/widgets."
        );
        assert_eq!(
            adf_to_markdown(&n.to_adf()),
            "drafter started working on this (job `J1`), repository acme/widgets."
        );

        let n = Notice::PrOpened {
            url: "https://github.com/acme/widgets/pull/3".into(),
            repo: "acme/widgets".into(),
            number: 3,
            branch: "drafter/DEMO-1-fix-x".into(),
            proof: None,
        };
        assert_eq!(
            adf_to_markdown(&n.to_adf()),
            "Draft pull request opened: [acme/widgets#3](https://github.com/acme/widgets/pull/3) (branch `drafter/DEMO-1-fix-x`). A human must review and merge it."
        );
        assert_eq!(
            n.plain_text(),
            "Draft pull request opened: acme/widgets#3 (https://github.com/acme/widgets/pull/3) (branch drafter/DEMO-1-fix-x). A human must review and merge it."
        );

        // A non-web URL is not made a link.
        let n = Notice::PrOpened {
            url: "javascript:alert(1)".into(),
            repo: "a/b".into(),
            number: 1,
            branch: "b".into(),
            proof: None,
        };
        assert!(!n.to_adf().to_string().contains("javascript"));

        let n = Notice::Failed {
            job_id: "J2".into(),
            reason: format!("line1\nline2\u{1b}{}", "z".repeat(5000)),
            proof: None,
        };
        let adf = n.to_adf();
        let text = texts(&adf);
        assert!(text.starts_with("drafter failed (job J2): line1\nline2z"));
        assert!(text.chars().count() < 1100);
        assert!(!text.contains('\u{1b}'));
        assert!(adf.to_string().contains("hardBreak"));

        let n = Notice::NoChanges {
            summary: "".into(),
            proof: None,
        };
        assert_eq!(
            n.plain_text(),
            "drafter finished without changing any file, so no pull request was opened."
        );
        let n = Notice::Refused {
            reason: "project X is not allowlisted".into(),
            proof: None,
        };
        assert_eq!(
            n.plain_text(),
            "drafter refused this ticket: project X is not allowlisted"
        );
        // The proof bundle follows on its own line, digest and commands as code.
        let n = Notice::Refused {
            reason: "no".into(),
            proof: Some(ProofRef {
                job_id: "j1".into(),
                digest: "ab12".into(),
            }),
        };
        assert_eq!(
            adf_to_markdown(&n.to_adf()),
            "drafter refused this ticket: no\\\nProof bundle `sha256:ab12` (`drafter jobs bundle j1`, then `drafter verify`)."
        );
    }

    #[test]
    fn notices_never_have_empty_text_nodes() {
        fn check(v: &Value) {
            if node_type(v) == "text" {
                assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
            }
            for c in children(v) {
                check(c);
            }
        }
        for n in [
            Notice::Started {
                job_id: "".into(),
                repo: "".into(),
            },
            Notice::Failed {
                job_id: "".into(),
                reason: "".into(),
                proof: Some(ProofRef {
                    job_id: "".into(),
                    digest: "".into(),
                }),
            },
            Notice::Refused {
                reason: "\n\n".into(),
                proof: None,
            },
            Notice::NoChanges {
                summary: "a\n\nb".into(),
                proof: None,
            },
        ] {
            check(&n.to_adf());
        }
    }

    #[test]
    fn data_center_bot_identity_is_learned_from_myself() {
        use crate::config::{JiraFlavor, Secret};
        let dc = |account: &str, username: Option<&str>| JiraConfig {
            base_url: "https://jira.example.com".into(),
            bot_account_id: account.into(),
            bot_username: username.map(str::to_string),
            flavor: JiraFlavor::Datacenter,
            auth: JiraAuth::Bearer {
                token: Secret::new("pat").into(),
            },
            acceptance_criteria_fields: Vec::new(),
        };
        let me = JiraUser {
            name: Some("drafter-bot".into()),
            key: Some("JIRAUSER10100".into()),
            ..JiraUser::default()
        };
        // Only the name configured (the key defaulted to it): the key is learned.
        let mut c = dc("drafter-bot", Some("drafter-bot"));
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_account_id, "JIRAUSER10100");
        // Only the key configured: the name is learned.
        let mut c = dc("JIRAUSER10100", None);
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_username.as_deref(), Some("drafter-bot"));
        // A credential of someone else: warned, nothing changed.
        let mut c = dc("other", Some("other"));
        let w = adopt_bot_identity(&mut c, &me);
        assert!(w[0].contains("belongs to \"drafter-bot\""), "{w:?}");
        assert_eq!(c.bot_account_id, "other");
        // A configured key that is not the bot's: warned, kept.
        let mut c = dc("JIRAUSER1", Some("drafter-bot"));
        assert_eq!(adopt_bot_identity(&mut c, &me).len(), 1);
        assert_eq!(c.bot_account_id, "JIRAUSER1");
        // Cloud is left alone.
        let mut c = dc("712020:x", None);
        c.flavor = JiraFlavor::Cloud;
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_username, None);
    }

    #[test]
    fn echoed_credentials_are_scrubbed() {
        use crate::config::Secret;
        let c = JiraClient::new(&JiraConfig {
            base_url: "https://x.atlassian.net".into(),
            bot_account_id: "bot".into(),
            bot_username: None,
            flavor: crate::config::JiraFlavor::Cloud,
            auth: JiraAuth::Basic {
                email: "bot@example.com".into(),
                token: Secret::new("tok-123456").into(),
            },
            acceptance_criteria_fields: Vec::new(),
        })
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("bot@example.com:tok-123456");
        let out = c.scrub(&format!("bad token tok-123456 in header Basic {b64}"));
        assert_eq!(out, "bad token [redacted] in header Basic [redacted]");
    }

    #[test]
    fn client_rejects_bad_config() {
        use crate::config::Secret;
        let cfg = |url: &str, token: &str| JiraConfig {
            base_url: url.into(),
            bot_account_id: "bot".into(),
            bot_username: None,
            flavor: crate::config::JiraFlavor::Cloud,
            auth: JiraAuth::Basic {
                email: "bot@example.com".into(),
                token: Secret::new(token).into(),
            },
            acceptance_criteria_fields: Vec::new(),
        };
        assert!(JiraClient::new(&cfg("https://x.atlassian.net/", "t")).is_ok());
        assert_eq!(
            JiraClient::new(&cfg("https://x.atlassian.net/", "t"))
                .unwrap()
                .base_url(),
            "https://x.atlassian.net"
        );
        for bad in [
            "ftp://x",
            "not a url",
            "https://u:p@x.atlassian.net",
            "https://x?y=1",
        ] {
            assert!(
                matches!(JiraClient::new(&cfg(bad, "t")), Err(JiraError::Config(_))),
                "{bad}"
            );
        }
        let err = JiraClient::new(&JiraConfig {
            auth: JiraAuth::Bearer {
                token: Secret::new("sec\nret").into(),
            },
            ..cfg("https://x", "t")
        })
        .unwrap_err();
        assert!(!err.to_string().contains("sec"), "{err}");
    }
}
