//! The HTTP side of the Jira client: building it, authenticating every request, reading answers within caps and
//! turning failures into [`JiraError`]s; the issue, comments (post and list) and JQL search.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::groups::{GroupCache, JiraUser, DEFAULT_GROUP_CACHE_TTL};
use super::paging::{Paged, Want, PAGE_SIZE};
use super::ticket::MAX_TICKET_COMMENTS;
use super::{cap_chars, check_key, Dialect, JiraError, Notice, Ticket};
use crate::config::{JiraAuth, JiraConfig};

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
const USER_AGENT: &str = concat!("drafter/", env!("CARGO_PKG_VERSION"));
/// Fields asked for when reading an issue: exactly what [`Ticket`] uses (plus the configured acceptance-criteria
/// fields).
const ISSUE_FIELDS: &str =
    "summary,description,reporter,labels,project,issuetype,comment,issuelinks,attachment";
/// Pages of newest comments read when the issue did not carry them all.
const MAX_TICKET_COMMENT_PAGES: usize = 5;
/// Pages [`JiraClient::comments`] reads before giving up: 100 x 100 comments is far beyond a real ticket, and a
/// server that pages forever must not keep a worker busy.
const MAX_COMMENT_PAGES: usize = 100;

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
    pub(super) http: reqwest::Client,
    /// Site root without a trailing slash.
    pub(super) base: String,
    auth: JiraAuth,
    /// Cloud or Data Center: the REST version, text format and user naming of every call.
    pub(super) dialect: Dialect,
    /// The settings this client was built from: the bot's identity (whose comments are not the ticket's) and the
    /// acceptance-criteria fields.
    pub(super) cfg: Arc<JiraConfig>,
    /// Group memberships already asked for; shared by clones of this client.
    pub(super) groups: Arc<GroupCache>,
    /// Who the credential belongs to, once asked ([`JiraClient::has_notice`]); shared by clones of this client.
    pub(super) me: Arc<tokio::sync::OnceCell<JiraUser>>,
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
            me: Arc::default(),
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
    pub(super) fn api_url(&self, rest: &str) -> String {
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
        let list = Paged::comments(&action, key, "?orderBy=-created", MAX_TICKET_COMMENT_PAGES);
        let enough = |all: &[Value]| {
            let usable = all.iter().filter(|c| self.comment_is_ticket_text(c));
            usable.count() >= MAX_TICKET_COMMENTS
        };
        self.paged(list, Want::Until(&enough)).await
    }

    /// The id of the issue `key` names (for checking an unsigned `?issue=KEY` against a payload that names the issue
    /// by id): `GET <api>/issue/{key}?fields=project`. A moved issue answers under its old key with its own id.
    pub async fn issue_id(&self, key: &str) -> Result<String, JiraError> {
        check_key(key)?;
        let action = format!("looking up the id of issue {key}");
        // The key is validated; nothing else comes from outside.
        let v = self.issue_json(key, "fields=project", &action).await?;
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
        let list = Paged::comments(&action, key, "", MAX_COMMENT_PAGES);
        self.paged(list, Want::All { noun: "comments" }).await
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
    pub(super) async fn send(
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

    /// `GET <api>/issue/{key}?{query}`, as JSON. The caller has checked `key`; `query` is its own.
    pub(super) async fn issue_json(
        &self,
        key: &str,
        query: &str,
        action: &str,
    ) -> Result<Value, JiraError> {
        let url = self.api_url(&format!("issue/{key}?{query}"));
        let resp = self.send(self.http.get(url), action, Some(key)).await?;
        let body = self.read_success(resp, action).await?;
        serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.to_string(),
            message: format!("issue is not valid JSON: {e}"),
        })
    }

    pub(super) async fn read_success(
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
    // Jira's own error shape, even when empty (a bare 401/403/404): then there are no details, not raw JSON.
    let mut jira_shaped = false;
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        jira_shaped = v.get("errorMessages").is_some() || v.get("errors").is_some();
        if let Some(msgs) = v.get("errorMessages").and_then(Value::as_array) {
            parts.extend(
                msgs.iter()
                    .filter_map(Value::as_str)
                    .filter(|m| !m.trim().is_empty())
                    .map(str::to_string),
            );
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
    let text = if parts.is_empty() && jira_shaped {
        String::new()
    } else if parts.is_empty() {
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

#[cfg(test)]
mod tests;
