//! `POST /webhooks/github`: review comments on drafter's pull requests start follow-up iterations, and a closed
//! pull request updates its link on the ticket.
//!
//! In order: the raw body (capped like Jira's) must carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret,
//! body)>` (https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries), checked in constant
//! time before anything is parsed (no secret configured, a missing or wrong signature: 401); the JSON is the body,
//! or its form field `payload` when the webhook is set to `application/x-www-form-urlencoded`; then
//! [`intake::from_github`] reads the `X-GitHub-Event`; the pull request must be one a job recorded as its own
//! ([`intake::job_for_pr`]); the author must pass the policy's `reviewers` rule ([`intake::check_reviewer`]: the
//! team's list, else write access as GitHub reports it); then the queue reopens the job for its next iteration
//! ([`crate::queue::Intake::reopen_for_review`]). The comment id is the dedup key, so the same delivery twice (a
//! GitHub redelivery keeps its `X-GitHub-Delivery`) makes one iteration. Past the policy's iteration cap the pull
//! request gets one comment saying so instead of a job. Every decision is one `audit` line with the delivery id.
//!
//! A pull request closed (merged or not) or reopened is recorded in the queue and told to Jira durably: `links.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::forge::Forge;
use crate::intake::{self, GithubVerdict, ReviewerCheck, WriteAccess};
use crate::queue::{LinkState, Reopened, ReviewTrigger};

use super::{clean_header, reply, AppState, MAX_LOGGED_HEADER};

mod links;
pub use links::{link_backoff, retry_links};
use links::{poll_pr_state, pr_state_changed, PrChange};

/// What the GitHub endpoint needs besides the queue.
#[derive(Clone)]
pub struct GithubHooks {
    /// The webhook's secret; without one every delivery is refused.
    pub secret: Option<Secret>,
    /// The login drafter comments as; without one review comments are ignored.
    pub bot_login: Option<String>,
    /// The forge, for permissions and the cap's comment (a GitHub App mints a token for the repository).
    pub forge: Arc<Forge>,
    /// Whether closed pull requests update their remote link on the ticket (`[panel] remote_links`).
    pub remote_links: bool,
    /// `[github.identities]`: GitHub login (lower case) -> Jira identity.
    pub identities: std::collections::BTreeMap<String, String>,
}

/// Write access as the forge reports it, with a short-lived token for the repository.
struct ForgeAccess<'a>(&'a Forge);

#[async_trait::async_trait]
impl WriteAccess for ForgeAccess<'_> {
    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, String> {
        self.0
            .once(repo, |gh| async move { gh.permission(repo, user).await })
            .await
            .map(|p| p.can_write())
            .map_err(|e| e.to_string())
    }
}

pub(super) async fn github_webhook(
    State(st): State<Arc<AppState>>,
    ext: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let remote = super::remote_of(&ext);
    let header = |name: &str| super::header_of(&headers, name);
    let delivery = header("x-github-delivery")
        .map(|d| clean_header(d, MAX_LOGGED_HEADER))
        .unwrap_or_default();
    let event = header("x-github-event")
        .map(|d| clean_header(d, MAX_LOGGED_HEADER))
        .unwrap_or_default();
    let refuse = |status: StatusCode, reason: &str| {
        tracing::warn!(target: "audit", remote, delivery, event, status = status.as_u16(), reason, "github webhook refused");
        reply(status, json!({"status": "refused", "reason": reason}))
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body larger than GitHub's 25 MB payload cap"
            } else {
                "body could not be read"
            };
            return refuse(status, reason);
        }
    };
    let Some(hooks) = &st.github else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "GitHub webhooks are not configured",
        );
    };
    let Some(secret) = &hooks.secret else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no GitHub webhook secret configured: GitHub webhooks are disabled",
        );
    };
    let Some(signature) = header("x-hub-signature-256") else {
        return refuse(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
    };
    if !super::signature_valid(secret, signature, &body) {
        return refuse(StatusCode::UNAUTHORIZED, "bad X-Hub-Signature-256");
    }
    let payload = match read_payload(header("content-type"), &body) {
        Ok(v) => v,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let ignored = |reason: &str| {
        tracing::info!(target: "audit", remote, delivery, event, reason, "github webhook ignored");
        reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": reason}),
        )
    };
    let bot = hooks.bot_login.as_deref().unwrap_or("");
    let comment = match intake::from_github(&event, &payload, bot) {
        GithubVerdict::Ignore(reason) => return ignored(&reason),
        GithubVerdict::Closed {
            repo,
            pr,
            merged,
            ticket_hint,
        } => {
            let change = PrChange {
                repo: &repo,
                pr,
                state: if merged {
                    LinkState::Merged
                } else {
                    LinkState::Closed
                },
                ticket_hint: ticket_hint.as_deref(),
                payload: &payload,
            };
            return pr_state_changed(&st, hooks, change, &delivery).await;
        }
        GithubVerdict::Reopened {
            repo,
            pr,
            ticket_hint,
        } => {
            let change = PrChange {
                repo: &repo,
                pr,
                state: LinkState::Open,
                ticket_hint: ticket_hint.as_deref(),
                payload: &payload,
            };
            return pr_state_changed(&st, hooks, change, &delivery).await;
        }
        GithubVerdict::Review(c) => c,
    };
    if bot.is_empty() {
        return ignored("github.bot_login is not configured");
    }
    let (code, body) = review(&st, hooks, &comment, &delivery).await;
    reply(code, body)
}

/// The delivery's JSON. A webhook can be set to either content type GitHub offers
/// (<https://docs.github.com/en/webhooks/using-webhooks/creating-webhooks>): `application/json` is the body itself;
/// `application/x-www-form-urlencoded` carries the same JSON in the form field `payload`. Both are signed as sent,
/// so the signature was checked on the raw body before this.
fn read_payload(content_type: Option<&str>, body: &[u8]) -> Result<Value, &'static str> {
    let form = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| {
            c.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return serde_json::from_slice(body).map_err(|_| "body is not valid JSON");
    }
    let Some((_, json)) = url::form_urlencoded::parse(body).find(|(k, _)| k == "payload") else {
        return Err(
            "a form-encoded delivery without a `payload` field (GitHub sends the JSON there)",
        );
    };
    serde_json::from_str(&json).map_err(|_| "the form field `payload` is not valid JSON")
}

/// Acts on one review comment (from a delivery, or found by [`poll_reviews`]): the job that opened the pull
/// request, the `reviewers` rule, then the queue; the status and JSON answer.
async fn review(
    st: &AppState,
    hooks: &GithubHooks,
    comment: &intake::ReviewComment,
    delivery: &str,
) -> (StatusCode, Value) {
    let event = &comment.event;
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(target: "audit", delivery, event, error = %e, what, "github review comment not handled");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "reason": format!("{what}; retry later")}),
        )
    };
    let ignored = |reason: &str| {
        tracing::info!(target: "audit", delivery, event, reason, "github review comment ignored");
        (
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": reason}),
        )
    };
    let job = match intake::job_for_pr(
        st.queue.as_ref(),
        &comment.repo,
        comment.pr,
        comment.ticket_hint.as_deref(),
    )
    .await
    {
        Ok(Some(job)) => job,
        Ok(None) => match by_head_branch(st, &hooks.forge, comment).await {
            Ok(Some(job)) => job,
            Ok(None) => return ignored("not a pull request drafter opened"),
            Err(e) => return unavailable("could not read the pull request from GitHub", &e),
        },
        Err(e) => return unavailable("the job queue is unavailable", &e),
    };
    let Some(approvals) = &st.approvals else {
        return ignored("the policy is not available to check reviewers");
    };
    let policy = approvals.policy.get();
    let access = ForgeAccess(&hooks.forge);
    let identity = hooks
        .identities
        .get(&comment.author.to_ascii_lowercase())
        .map(|jira| (jira.as_str(), approvals.directory.as_ref()));
    let cap = match intake::check_reviewer(&policy, &job, comment, &access, identity).await {
        ReviewerCheck::Allowed { cap } => cap,
        ReviewerCheck::Refused(why) => {
            tracing::warn!(target: "audit", delivery, event, job = job.id, author = comment.author,
                reason = why, "review comment refused");
            return (
                StatusCode::ACCEPTED,
                json!({"status": "refused", "reason": why}),
            );
        }
        ReviewerCheck::Unknown(why) => return unavailable("could not check the reviewer", &why),
    };
    let comment = &with_line_comments(&hooks.forge, comment, delivery).await;
    let trigger = ReviewTrigger {
        job_id: job.id.clone(),
        trigger: comment.trigger(chrono::Utc::now()),
        max_iterations: cap,
        max_attempts: st.max_attempts,
    };
    let done = match st.queue.reopen_for_review(trigger).await {
        Ok(done) => done,
        Err(e) => return unavailable("the job queue is unavailable", &e),
    };
    let (code, status) = match &done {
        Reopened::Iteration(_) => (StatusCode::ACCEPTED, "created"),
        Reopened::Joined(_) => (StatusCode::ACCEPTED, "absorbed"),
        Reopened::Pending(_) => (StatusCode::ACCEPTED, "pending"),
        Reopened::Duplicate => (StatusCode::OK, "duplicate"),
        Reopened::Overflow => (StatusCode::OK, "overflow"),
        Reopened::Busy(_) => (StatusCode::ACCEPTED, "busy"),
        Reopened::CapReached(_) => (StatusCode::OK, "cap_reached"),
    };
    tracing::info!(target: "audit", delivery, event, job = job.id, author = comment.author,
        comment = comment.own_id, outcome = status, detail = ?done, "review comment");
    if let Reopened::CapReached(n) = done {
        let text = format!(
            "@{} drafter has already made {n} follow-up iteration(s) on this pull request, the most its policy \
             allows (`review_iterations`): it will not change it again. A human can take it from here. \
             `drafter:{}:cap:{}`",
            comment.author, job.id, comment.own_id
        );
        let posted = hooks
            .forge
            .once(&comment.repo, |gh| async move {
                gh.comment_on_pr(&comment.repo, comment.pr, &text).await
            })
            .await;
        if let Err(e) = posted {
            tracing::warn!(target: "audit", delivery, job = job.id, error = %e,
                "could not comment on the pull request");
        }
    }
    let mut body = json!({"status": status, "job": job.id});
    if let Reopened::Iteration(n) | Reopened::Joined(n) | Reopened::Pending(n) = done {
        body["iteration"] = json!(n);
    }
    (code, body)
}

/// The job of a conversation comment's pull request, found through its head branch (`drafter/<KEY>-...`): an
/// `issue_comment` delivery names the pull request only as an issue, by a title a human may have edited. `Err` only
/// when GitHub could not be asked now (a retryable error); a pull request GitHub will not show counts as not
/// drafter's.
async fn by_head_branch(
    st: &AppState,
    forge: &Forge,
    c: &intake::ReviewComment,
) -> Result<Option<crate::queue::Job>, String> {
    if c.kind != "conversation" {
        return Ok(None);
    }
    let read = forge
        .once(
            &c.repo,
            |gh| async move { gh.pr_head_ref(&c.repo, c.pr).await },
        )
        .await;
    let head = match read {
        Ok(head) => head,
        Err(e) if e.is_retryable() => return Err(e.to_string()),
        Err(e) => {
            tracing::info!(repo = c.repo, pr = c.pr, error = %e, "could not read the pull request's head branch");
            return Ok(None);
        }
    };
    // `drafter/<PROJECT>-<number>-<slug>` (crate::repo::branch_name): the key is the first two dash-separated parts.
    let key = head
        .as_deref()
        .and_then(|r| r.strip_prefix("drafter/"))
        .and_then(|r| {
            let mut parts = r.splitn(3, '-');
            Some(format!("{}-{}", parts.next()?, parts.next()?))
        })
        .filter(|k| crate::jira::valid_issue_key(k));
    let Some(key) = key.filter(|k| c.ticket_hint.as_deref() != Some(k.as_str())) else {
        return Ok(None);
    };
    intake::job_for_pr(st.queue.as_ref(), &c.repo, c.pr, Some(&key))
        .await
        .map_err(|e| e.to_string())
}

/// A review's text with the line comments submitted with it: "Request changes" often says everything in its line
/// comments and nothing in its body (`null`), and those comments need not mention the bot. Capped like any trigger
/// text. Not being able to read them costs context only: the review still counts, with its own text.
async fn with_line_comments(
    forge: &Forge,
    c: &intake::ReviewComment,
    delivery: &str,
) -> intake::ReviewComment {
    if c.kind != "review" {
        return c.clone();
    }
    let read = forge
        .once(&c.repo, |gh| async move {
            gh.review_line_comments(&c.repo, c.pr, c.own_id).await
        })
        .await;
    let comments = match read {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(target: "audit", delivery, repo = c.repo, pr = c.pr, review = c.own_id, error = %e,
                "could not read the review's line comments; the review counts with its own text");
            return c.clone();
        }
    };
    let mut text = c.body.clone();
    for item in &comments {
        let Some(body) = item["body"].as_str().filter(|b| !b.trim().is_empty()) else {
            continue;
        };
        let path = item["path"].as_str().unwrap_or("?");
        let line = item["line"]
            .as_u64()
            .or(item["original_line"].as_u64())
            .map(|l| format!(" line {l}"))
            .unwrap_or_default();
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&format!("On `{path}`{line}: {body}"));
    }
    let mut out = c.clone();
    out.body = intake::cap_text(&text);
    out
}

/// For sites GitHub cannot reach: one round over the pull requests of finished jobs (the newest `limit` succeeded
/// and failed ones), reading their review comments, reviews and conversation comments through the REST API and
/// acting on each as if it had been delivered (with a bot login), and, with remote links on, each pull request's
/// state ([`poll_pr_state`]: merged or closed is recorded for the ticket's link like a delivery). Comments already
/// acted on are duplicates in the queue; `refused` holds the comments this process refused or ignored, so they are
/// not judged (and logged) again every round.
pub async fn poll_reviews(
    st: &AppState,
    refused: &mut std::collections::HashSet<String>,
    limit: u32,
) {
    let Some(hooks) = &st.github else { return };
    let bot = hooks.bot_login.as_deref().filter(|b| !b.is_empty());
    if bot.is_none() && !hooks.remote_links {
        return;
    }
    let mut jobs = Vec::new();
    for state in [
        crate::queue::JobState::Succeeded,
        crate::queue::JobState::Failed,
    ] {
        let filter = crate::queue::JobFilter {
            state: Some(state),
            ticket: None,
            limit,
        };
        match st.queue.list(&filter).await {
            Ok(mut found) => jobs.append(&mut found),
            Err(e) => {
                tracing::warn!(error = %e, "review poll: could not list jobs");
                return;
            }
        }
    }
    for job in jobs {
        let Some(o) = job
            .outcome
            .as_ref()
            .filter(|o| o["result"] == "pull_request")
        else {
            continue;
        };
        let (Some(repo), Some(pr), Some(branch)) = (
            o["repo"].as_str(),
            o["number"].as_u64(),
            o["branch"].as_str(),
        ) else {
            continue;
        };
        // One credential for both reads: an App mints (and revokes) one token per pull request per round.
        let reads = hooks
            .forge
            .once(repo, |gh| async move {
                let pull = match hooks.remote_links {
                    true => Some(gh.pull(repo, pr).await),
                    false => None,
                };
                let activity = match bot {
                    Some(_) => Some(gh.pr_activity(repo, pr).await),
                    None => None,
                };
                Ok((pull, activity))
            })
            .await;
        let (pull, activity) = match reads {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repo, pr, error = %e, "review poll: no credential for the repository");
                continue;
            }
        };
        if let Some(pull) = pull {
            poll_pr_state(st, &job, repo, pr, pull).await;
        }
        let (Some(bot), Some(activity)) = (bot, activity) else {
            continue;
        };
        let activity = match activity {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(repo, pr, error = %e, "review poll: could not read the pull request's comments");
                continue;
            }
        };
        let pull = json!({"number": pr, "head": {"ref": branch}});
        for (event, item) in activity {
            let payload = match event {
                "pull_request_review" => json!({"action": "submitted", "review": item,
                    "pull_request": pull, "repository": {"full_name": repo}}),
                "issue_comment" => json!({"action": "created", "comment": item,
                    "issue": {"number": pr, "pull_request": {}, "title": ""}, "repository": {"full_name": repo}}),
                _ => json!({"action": "created", "comment": item,
                    "pull_request": pull, "repository": {"full_name": repo}}),
            };
            let GithubVerdict::Review(mut comment) = intake::from_github(event, &payload, bot)
            else {
                continue;
            };
            // The job's own branch names its ticket, whatever the conversation's title says.
            comment.ticket_hint = Some(job.ticket.clone());
            let key = comment.delivery_key();
            if refused.contains(&key) {
                continue;
            }
            let (_, body) = review(st, hooks, &comment, &format!("poll:{key}")).await;
            if matches!(body["status"].as_str(), Some("refused" | "ignored")) {
                refused.insert(key);
            }
        }
    }
}
