//! Pull request states on the ticket's link: a closed (merged or not) or reopened pull request is recorded in the
//! queue ([`crate::queue::LinkUpdates`]) and answered 202 once recorded, because GitHub does not redeliver a failed
//! delivery by itself (https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries): the
//! record, not Jira, is the durable part. Jira is told at once if it can be, else by [`retry_links`] with backoff.
//! The poll records what it reads the same way ([`poll_pr_state`]).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::forge::ForgeError;
use crate::intake;
use crate::jira::{JiraClient, PrLink, PrState};
use crate::queue::{LinkRecorded, LinkState, LinkUpdate, PendingLink};

use super::super::{reply, AppState};
use super::GithubHooks;

/// How long whoever records a new state keeps it for its own first try before [`retry_links`] may take it; also how
/// long [`retry_links`] holds what it took (a process that dies holding one leaves it to the next round after this).
const TRY_HOLD: Duration = Duration::from_secs(60);

/// How long a delivery waits for its first try to tell Jira before it is answered (pending) anyway.
const FIRST_TRY: Duration = Duration::from_secs(5);

/// Pending states [`retry_links`] takes per round.
const RETRY_BATCH: u32 = 20;

/// The wait before telling Jira a state again after `attempt` failed tries: 2 s doubling to 30 minutes, or longer
/// when Jira's `Retry-After` asked for it (up to an hour).
pub fn link_backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = Duration::from_secs(2u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)))
        .min(Duration::from_secs(30 * 60));
    match retry_after {
        Some(r) if r > exp => r.min(Duration::from_secs(3600)),
        _ => exp,
    }
}

/// A pull request's state change, as the delivery says.
pub(super) struct PrChange<'a> {
    pub(super) repo: &'a str,
    pub(super) pr: u64,
    pub(super) state: LinkState,
    pub(super) ticket_hint: Option<&'a str>,
    pub(super) payload: &'a Value,
}

/// The update of `job`'s link to `state`, from the pull request as GitHub shows it (`pull`: a delivery's
/// `pull_request`, or the REST API's): its URL (else the one the job recorded) and title, as recorded with the state
/// and read back by [`pr_link`].
fn link_update(
    job: &crate::queue::Job,
    repo: &str,
    number: u64,
    pull: &Value,
    state: LinkState,
    only_if_changed: bool,
) -> LinkUpdate {
    let url = pull["html_url"]
        .as_str()
        .or(job.outcome.as_ref().and_then(|o| o["url"].as_str()))
        .unwrap_or_default();
    LinkUpdate {
        job_id: job.id.clone(),
        ticket: job.ticket.clone(),
        state,
        link: json!({"repo": repo, "number": number, "url": url,
            "title": pull["title"].as_str().unwrap_or_default()}),
        only_if_changed,
    }
}

/// The remote link for a recorded state.
fn pr_link(p: &PendingLink) -> PrLink {
    let text = |k: &str| p.link[k].as_str().unwrap_or_default().to_string();
    PrLink {
        repo: text("repo"),
        number: p.link["number"].as_u64().unwrap_or_default(),
        url: text("url"),
        title: text("title"),
        state: match p.state {
            LinkState::Open => PrState::Open,
            LinkState::Merged => PrState::Merged,
            LinkState::Closed => PrState::Closed,
        },
    }
}

/// What [`record_and_tell`] did.
enum Told {
    /// Recorded and Jira shows it.
    Linked,
    /// Recorded; Jira refused or could not be reached, and [`retry_links`] tries again.
    Pending,
    /// Nothing new ([`LinkRecorded`]).
    Unchanged(LinkRecorded),
}

/// Records a pull request's new state (the durable part), then tries once to tell Jira. `Err` only when the queue
/// could not record it.
async fn record_and_tell(
    st: &AppState,
    update: &LinkUpdate,
    origin: &str,
) -> Result<Told, crate::queue::QueueError> {
    let generation = match st.queue.record_link(update, TRY_HOLD).await? {
        LinkRecorded::New(g) => g,
        other => return Ok(Told::Unchanged(other)),
    };
    tracing::info!(target: "audit", origin, job = update.job_id, state = update.state.as_str(),
        "pull request state recorded");
    let pending = PendingLink {
        job_id: update.job_id.clone(),
        ticket: update.ticket.clone(),
        state: update.state,
        link: update.link.clone(),
        generation,
        attempts: 0,
    };
    // Bounded: GitHub gives a delivery 10 s. A try cut short stays held until `TRY_HOLD` passes, then is retried.
    Ok(
        match tokio::time::timeout(FIRST_TRY, tell(st, &pending, origin)).await {
            Ok(true) => Told::Linked,
            Ok(false) | Err(_) => Told::Pending,
        },
    )
}

/// Tells Jira one recorded state and records how that went; whether Jira took it. Failures are logged with Jira's
/// error as the client words it (which never carries the credential) and tried again after [`link_backoff`].
async fn tell(st: &AppState, p: &PendingLink, origin: &str) -> bool {
    let linked = match JiraClient::new(&st.jira) {
        Ok(jira) => jira.upsert_remote_link(&p.ticket, &pr_link(p)).await,
        Err(e) => Err(e),
    };
    let state = p.state.as_str();
    match linked {
        Ok(()) => {
            tracing::info!(
                origin,
                job = p.job_id,
                state,
                "pull request state: link updated"
            );
            if let Err(e) = st.queue.link_told(&p.job_id, p.generation).await {
                // Told again once the hold passes: the same link, the same state.
                tracing::warn!(job = p.job_id, error = %e, "could not record the link update as done");
            }
            true
        }
        Err(e) => {
            let attempt = p.attempts.saturating_add(1);
            let wait = link_backoff(attempt, e.retry_after());
            let error = e.to_string();
            tracing::warn!(
                origin,
                job = p.job_id,
                state,
                attempt,
                retry_in_secs = wait.as_secs(),
                error,
                "could not update the ticket's link; will try again"
            );
            if let Err(e) = st
                .queue
                .link_failed(&p.job_id, p.generation, &error, wait)
                .await
            {
                tracing::warn!(job = p.job_id, error = %e, "could not record the failed link update");
            }
            false
        }
    }
}

/// One round of telling Jira the pull request states it has not taken yet (`drafter serve` runs it every few
/// seconds): the due ones, each held by this process while it tries.
pub async fn retry_links(st: &AppState) {
    let due = match st.queue.claim_links(RETRY_BATCH, TRY_HOLD).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "link retry: could not read pending link updates");
            return;
        }
    };
    for p in &due {
        tell(st, p, "retry").await;
    }
}

/// A drafter pull request was closed (merged or not) or reopened: the state is recorded for its remote link on the
/// ticket, then told to Jira, now or by [`retry_links`]. 202 once recorded; 503 only when the queue cannot record it
/// (GitHub does not redeliver by itself, but an operator can).
pub(super) async fn pr_state_changed(
    st: &AppState,
    hooks: &GithubHooks,
    c: PrChange<'_>,
    delivery: &str,
) -> Response {
    let ignored = |reason: &str| {
        reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": reason}),
        )
    };
    let unavailable = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "reason": "the job queue is unavailable; retry later"}),
        )
    };
    if !hooks.remote_links {
        return ignored("remote links are off");
    }
    let job = match intake::job_for_pr(st.queue.as_ref(), c.repo, c.pr, c.ticket_hint).await {
        Ok(Some(job)) => job,
        Ok(None) => return ignored("not a pull request drafter opened"),
        Err(_) => return unavailable(),
    };
    let update = link_update(
        &job,
        c.repo,
        c.pr,
        &c.payload["pull_request"],
        c.state,
        false,
    );
    let status = match record_and_tell(st, &update, delivery).await {
        Ok(Told::Linked) => "linked",
        Ok(Told::Pending) => "pending",
        Ok(Told::Unchanged(LinkRecorded::Final)) => "merged_already",
        Ok(Told::Unchanged(_)) => "duplicate",
        Err(e) => {
            tracing::warn!(target: "audit", delivery, job = job.id, error = %e,
                "could not record the pull request's state");
            return unavailable();
        }
    };
    tracing::info!(target: "audit", delivery, job = job.id, state = c.state.as_str(), outcome = status,
        "pull request state");
    reply(
        StatusCode::ACCEPTED,
        json!({"status": status, "job": job.id}),
    )
}

/// For sites GitHub cannot reach: a finished job's pull request as GitHub shows it now, recorded like a delivery
/// when it was merged or closed (or reopened after a recorded close). A state recorded before changes nothing.
pub(super) async fn poll_pr_state(
    st: &AppState,
    job: &crate::queue::Job,
    repo: &str,
    pr: u64,
    read: Result<Value, ForgeError>,
) {
    let pull = match read {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(repo, pr, error = %e, "pull request poll: could not read the pull request");
            return;
        }
    };
    let merged = pull["merged"].as_bool().unwrap_or(false) || pull["merged_at"].is_string();
    let state = match (pull["state"].as_str(), merged) {
        (_, true) => LinkState::Merged,
        (Some("closed"), false) => LinkState::Closed,
        (Some("open"), false) => LinkState::Open,
        _ => return,
    };
    let update = link_update(job, repo, pr, &pull, state, state == LinkState::Open);
    if let Err(e) = record_and_tell(st, &update, &format!("poll:{repo}#{pr}")).await {
        tracing::warn!(job = job.id, error = %e, "pull request poll: could not record the state");
    }
}
