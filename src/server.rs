//! HTTP for `drafter serve`: Jira webhooks in, health and readiness out (axum).
//!
//! Routes:
//! - `POST /webhooks/jira[?issue=KEY]`: an admin webhook delivery. The raw body (at most [`MAX_WEBHOOK_BODY`]; more
//!   is 413, without reading it all) must carry `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, checked
//!   in constant time *before* the body is parsed: an unsigned request never reaches the JSON parser or the queue.
//!   No secret configured, or a missing or wrong signature, is 401. Malformed JSON is 400. Then
//!   [`intake::from_webhook`] decides: an ignored event is 202 `{"status":"ignored","reason":..}`; a trigger is
//!   enqueued, and only once the queue has committed it is the answer 2xx
//!   (`{"status":"created"|"absorbed"|"duplicate","job":..}`); a queue failure is 503 so that Jira retries the
//!   delivery. `?issue=KEY` is for Data Center comment webhooks, whose payload may not name the issue
//!   (configure the URL as `.../webhooks/jira?issue=${issue.key}`). The query is not signed, so the hint must agree
//!   with the signed payload: a payload with `issue.key` must name the same key, and one that names its issue only
//!   by id (`issue.id`, or the id in `comment.self`) must name the id Jira gives for the hinted key; otherwise the
//!   delivery is refused (400; 503 when Jira cannot be asked, so that Jira retries).
//! - `POST /webhooks/github`: review comments on drafter's pull requests (`X-Hub-Signature-256`), see
//!   [`github`].
//! - `GET /healthz`: 200 while the process serves HTTP.
//! - `GET /readyz`: 200 when the queue is not paused and the caller's readiness check (queue and Docker) passes,
//!   else 503 with the reason (`not ready: paused by <who> since <when>: <reason>` while paused).
//!
//! Every webhook decision writes one line to the `audit` tracing target, with the peer address and the delivery id;
//! never the secret or the signature. Each request has a time limit ([`REQUEST_TIMEOUT`]), so a client that sends
//! its body slowly cannot hold a connection forever.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::{JiraConfig, Secret};

mod github;
use crate::intake::{self, Verdict};
use crate::queue::{Admin, Enqueued, Queue};
pub use github::{link_backoff, poll_reviews, retry_links, GithubHooks};

/// Largest Jira webhook body accepted (1 MiB); Jira's issue payloads are a few KiB to a few hundred KiB.
pub const MAX_WEBHOOK_BODY: usize = 1 << 20;
/// Largest GitHub webhook body accepted: GitHub's own cap, 25 MB
/// (https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap). A pull request's description and a
/// comment may each be 65,536 characters, escaped in JSON and, in a form-encoded delivery, again per byte: a
/// legitimate delivery can pass 1 MiB, and one GitHub sends is never refused for its size.
pub const MAX_GITHUB_WEBHOOK_BODY: usize = 25 * 1000 * 1000;
/// Time limit for one request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit for the readiness check.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);
/// Header values copied into audit lines are cut to this many characters.
const MAX_LOGGED_HEADER: usize = 100;

/// A readiness check: `Ok(())` when the runner can take work, else why not.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub use crate::intake::Approvals;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where triggers go.
    pub queue: Arc<dyn Queue>,
    /// Who the bot is (to recognise assignments and mentions).
    pub jira: JiraConfig,
    /// The admin webhook's secret; without one every delivery is refused.
    pub webhook_secret: Option<Secret>,
    /// Attempts given to new jobs.
    pub max_attempts: u32,
    /// `/readyz`'s check (see [`queue_readiness`]; the caller adds Docker).
    pub readiness: Readiness,
    /// Approval comments are honoured only with this (who may approve); without it they are ignored. The GitHub
    /// endpoint reads the policy's `reviewers` through it too.
    pub approvals: Option<Approvals>,
    /// `POST /webhooks/github`; without it every GitHub delivery is refused.
    pub github: Option<GithubHooks>,
}

/// A readiness check that pings the queue only. `drafter serve` should combine it with a Docker ping.
pub fn queue_readiness(queue: Arc<dyn Admin>) -> Readiness {
    Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move {
            queue
                .ping()
                .await
                .map_err(|e| format!("queue ({}) not ready: {e}", queue.backend()))
        })
    })
}

/// The routes (see the module docs), with the body limit and the request timeout.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/jira", post(jira_webhook))
        .route(
            "/webhooks/github",
            post(github::github_webhook).layer(DefaultBodyLimit::max(MAX_GITHUB_WEBHOOK_BODY)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY))
        .layer(middleware::from_fn(timeout))
        .with_state(Arc::new(state))
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let check = async {
        // A paused queue takes no work on any worker: not ready, and say who paused it and why. A failure to read
        // the switch is left to the readiness check, which pings the same queue and words the error.
        if let Ok(Some(p)) = st.queue.paused().await {
            return Err(format!(
                "paused by {} since {}: {}",
                p.by,
                p.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                p.reason
            ));
        }
        (st.readiness)().await
    };
    match tokio::time::timeout(READINESS_TIMEOUT, check).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", clean_header(&reason, 500)),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: readiness check timed out\n",
        )
            .into_response(),
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The peer's address, for the audit lines of a webhook.
fn remote_of(ext: &Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A header's value, trimmed; `None` when absent, empty or not text.
fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn jira_webhook(
    State(st): State<Arc<AppState>>,
    ext: Extensions,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let remote = remote_of(&ext);
    let header = |name: &str| header_of(&headers, name);
    let delivery_header = header("x-atlassian-webhook-identifier");
    let delivery_log = delivery_header
        .map(|d| clean_header(d, MAX_LOGGED_HEADER))
        .unwrap_or_default();
    let retry = header("x-atlassian-webhook-retry")
        .map(|r| clean_header(r, 10))
        .unwrap_or_default();
    let refuse = |status: StatusCode, reason: &str| {
        tracing::warn!(target: "audit", remote, delivery = delivery_log, retry, status = status.as_u16(), reason, "webhook refused");
        reply(status, json!({"status": "refused", "reason": reason}))
    };

    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body larger than 1 MiB"
            } else {
                "body could not be read"
            };
            return refuse(status, reason);
        }
    };

    // Authenticity first: nothing of an unsigned body is parsed.
    let Some(secret) = &st.webhook_secret else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no webhook secret configured: webhooks are disabled",
        );
    };
    let Some(signature) = header("x-hub-signature") else {
        return refuse(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature");
    };
    if !signature_valid(secret, signature, &body) {
        return refuse(StatusCode::UNAUTHORIZED, "bad X-Hub-Signature");
    }

    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "body is not valid JSON"),
    };
    let hint = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "issue")
            .map(|(_, v)| v.into_owned())
    });
    let event = payload
        .get("webhookEvent")
        .and_then(Value::as_str)
        .map(|e| clean_header(e, MAX_LOGGED_HEADER))
        .unwrap_or_default();
    // The hint is outside the signature: anyone who saw one delivery could resend it naming another ticket.
    if let Some(h) = hint.as_deref() {
        if let Err((status, reason)) = hint_agrees(&st.jira, h, &payload).await {
            return refuse(status, &reason);
        }
    }

    // An approval command is never a trigger: it releases a job waiting for approval, if its author may approve.
    if let Some(ap) = intake::approval_from_webhook(&payload, hint.as_deref(), &st.jira) {
        let (accepted, body) =
            intake::apply_approval(&ap, st.queue.as_ref(), st.approvals.as_ref()).await;
        tracing::info!(target: "audit", remote, delivery = delivery_log, event, ticket = ap.ticket,
            author = ap.author, comment = ap.comment_id, outcome = %body["status"], "approval comment");
        let status = if accepted {
            StatusCode::ACCEPTED
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return reply(status, body);
    }
    let job = match intake::from_webhook(
        &payload,
        delivery_header,
        hint.as_deref(),
        &st.jira,
        st.max_attempts,
        chrono::Utc::now(),
    ) {
        Verdict::Ignore(reason) => {
            tracing::info!(target: "audit", remote, delivery = delivery_log, event, reason, "webhook ignored");
            return reply(
                StatusCode::ACCEPTED,
                json!({"status": "ignored", "reason": reason}),
            );
        }
        Verdict::Trigger(job) => job,
    };
    let ticket = job.ticket.clone();
    let key = job.trigger.delivery.clone();
    let by = job.trigger.triggered_by.clone().unwrap_or_default();
    match st.queue.enqueue(job).await {
        Ok(done) => {
            let (status, code) = match &done {
                Enqueued::Created(_) => ("created", StatusCode::ACCEPTED),
                Enqueued::Absorbed(_) => ("absorbed", StatusCode::ACCEPTED),
                Enqueued::Duplicate(_) => ("duplicate", StatusCode::OK),
                // Recorded, so Jira need not redeliver it; the job simply keeps no more triggers.
                Enqueued::Overflow(_) => ("overflow", StatusCode::OK),
            };
            let job_id = done.job_id().to_string();
            tracing::info!(target: "audit", remote, delivery = delivery_log, event, ticket, key, triggered_by = by, outcome = status, job = job_id, "webhook accepted");
            reply(code, json!({"status": status, "job": job_id}))
        }
        Err(e) => {
            tracing::error!(target: "audit", remote, delivery = delivery_log, event, ticket, key, error = %e, "webhook not queued: queue failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "error", "reason": "the job queue is unavailable; retry later"}),
            )
        }
    }
}

/// Whether the unsigned `?issue=` hint names the issue the signed payload names (see the module docs). Payloads that
/// name no issue leave the hint as the only word.
async fn hint_agrees(
    jira: &JiraConfig,
    hint: &str,
    payload: &Value,
) -> Result<(), (StatusCode, String)> {
    let shown = clean_header(hint, 40);
    let mismatch = |names: &str| {
        (
            StatusCode::BAD_REQUEST,
            format!("the ?issue= hint {shown:?} does not match the issue the signed payload names ({names})"),
        )
    };
    match intake::payload_issue(payload) {
        intake::PayloadIssue::Unnamed => Ok(()),
        intake::PayloadIssue::Key(k) if k == hint => Ok(()),
        intake::PayloadIssue::Key(k) => Err(mismatch(&clean_header(&k, 40))),
        intake::PayloadIssue::Id(id) => {
            if !crate::jira::valid_issue_key(hint) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("the ?issue= hint {shown:?} is not an issue key"),
                ));
            }
            let unavailable = |e: crate::jira::JiraError| {
                tracing::warn!(error = %e, "could not check the ?issue= hint against Jira");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the ?issue= hint against Jira now; retry later".to_string(),
                )
            };
            let client = crate::jira::JiraClient::new(jira).map_err(unavailable)?;
            match client.issue_id(hint).await {
                Ok(found) if found == id => Ok(()),
                Ok(_) | Err(crate::jira::JiraError::NotFound { .. }) => {
                    Err(mismatch(&format!("issue id {id}")))
                }
                Err(e) => Err(unavailable(e)),
            }
        }
    }
}

/// `sha256=<hex>` equals HMAC-SHA256(secret, body), compared in constant time by the MAC itself.
fn signature_valid(secret: &Secret, header: &str, body: &[u8]) -> bool {
    let Some(hex_sig) = header
        .strip_prefix("sha256=")
        .or_else(|| header.strip_prefix("SHA256="))
    else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// A header or payload value fit for a log line: no control characters, bounded.
fn clean_header(s: &str, max: usize) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(max) {
        None => clean,
        Some((i, _)) => format!("{}…", &clean[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures() {
        let s = Secret::new("It's a Secret to Everybody");
        let body = b"Hello, World!";
        // The example from GitHub's webhook documentation (the same scheme Jira uses):
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", body), good);
        assert!(signature_valid(&s, good, body));
        assert!(signature_valid(
            &s,
            &good.to_uppercase().replace("SHA256=", "sha256="),
            body
        ));
        assert!(!signature_valid(&s, good, b"Hello, World?"));
        assert!(!signature_valid(&s, &good[..good.len() - 2], body));
        assert!(!signature_valid(&s, "sha1=abcd", body));
        assert!(!signature_valid(&s, "sha256=not-hex", body));
        assert!(!signature_valid(&s, "", body));
    }

    #[test]
    fn log_values_are_cleaned() {
        assert_eq!(clean_header("a\r\nb\u{1b}c", 10), "abc");
        assert_eq!(clean_header("abcdef", 3), "abc…");
    }
}
