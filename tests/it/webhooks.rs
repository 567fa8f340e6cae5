//! Intake end to end: real HTTP against `server::serve` on 127.0.0.1, signed like Jira's admin webhooks, into an
//! in-memory queue that follows the `Queue` trait's documented dedup and absorb rules; and the JQL poll against the
//! Jira stand-in (Cloud `search/jql` with `nextPageToken`, Data Center `/rest/api/2/search` with `startAt`).
//!
//! Payload shapes follow Atlassian's webhook documentation
//! (<https://developer.atlassian.com/server/jira/platform/webhooks/>,
//! <https://developer.atlassian.com/cloud/jira/platform/webhooks/>): Cloud bodies carry wiki-markup strings and
//! `[~accountid:<id>]` mentions, Data Center ones `[~username]` and users by `name`/`key`; admin webhooks with a
//! secret send `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>` and, on Cloud,
//! `X-Atlassian-Webhook-Identifier` (the same on retries) and `X-Atlassian-Webhook-Retry`.
//!
//! Long on purpose (over 700 lines): one webhook attack or delivery rule per test.

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use drafter::config::{JiraConfig, PollConfig, Secret};
use drafter::intake;
use drafter::jira::JiraClient;
use drafter::queue::{
    Admin, ApprovalRequest, Approved, ApprovingComment, Claim, Enqueued, Failure, Intake, Job,
    JobFilter, JobState, Leases, LedgerEntry, NewJob, Pause, Queue, QueueError, UsageLedger,
    UsageTotal,
};
use drafter::server::{self, AppState, Readiness};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::jira::{cloud_client_config, dc_client_config, JiraStandIn, BOT_ACCOUNT_ID};

// ---- an in-memory queue with the trait's enqueue semantics --------------------------------------------------------

#[derive(Default)]
struct MemState {
    jobs: Vec<Job>,
    /// Delivery key -> the job it made or was absorbed into.
    deliveries: HashMap<String, String>,
}

/// Dedup by delivery key, absorb into an open job of the same ticket, else create; `failing` makes every call fail.
#[derive(Default)]
struct MemQueue {
    state: Mutex<MemState>,
    failing: AtomicBool,
}

impl MemQueue {
    fn jobs(&self) -> Vec<Job> {
        self.state.lock().unwrap().jobs.clone()
    }

    /// Marks every open job succeeded (what a worker does when it is done).
    fn finish_all(&self) {
        for j in &mut self.state.lock().unwrap().jobs {
            if j.state.is_open() {
                j.state = JobState::Succeeded;
            }
        }
    }

    fn check(&self) -> Result<(), QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(QueueError::Database("test queue: disk on fire".into()))
        } else {
            Ok(())
        }
    }
}

fn unsupported() -> QueueError {
    QueueError::Database("not supported by the test queue".into())
}

#[async_trait::async_trait]
impl Intake for MemQueue {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        self.check()?;
        let mut st = self.state.lock().unwrap();
        if let Some(id) = st.deliveries.get(&job.trigger.delivery) {
            return Ok(Enqueued::Duplicate(id.clone()));
        }
        let delivery = job.trigger.delivery.clone();
        if let Some(open) = st
            .jobs
            .iter_mut()
            .find(|j| j.ticket == job.ticket && j.state.is_open())
        {
            open.triggers.push(job.trigger);
            let id = open.id.clone();
            st.deliveries.insert(delivery, id.clone());
            return Ok(Enqueued::Absorbed(id));
        }
        let id = format!("job-{}", st.jobs.len() + 1);
        let now = Utc::now();
        st.jobs.push(Job {
            id: id.clone(),
            ticket: job.ticket,
            project: job.project,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: job.max_attempts,
            not_before: now,
            lease_owner: None,
            lease_expires: None,
            triggers: vec![job.trigger],
            last_error: None,
            outcome: None,
            progress: json!({}),
            created_at: now,
            updated_at: now,
            policy_hash: None,
            approval: None,
            lease_gen: 0,
            iterations: 0,
        });
        st.deliveries.insert(delivery, id.clone());
        Ok(Enqueued::Created(id))
    }

    async fn approve(
        &self,
        _: &str,
        _: &str,
        _: Option<&ApprovingComment>,
    ) -> Result<Approved, QueueError> {
        Err(unsupported())
    }

    async fn reopen_pending(&self, _: &str, _: u32) -> Result<Option<u32>, QueueError> {
        Err(unsupported())
    }

    async fn reopen_for_review(
        &self,
        _: drafter::queue::ReviewTrigger,
    ) -> Result<drafter::queue::Reopened, QueueError> {
        Err(unsupported())
    }
}

#[async_trait::async_trait]
impl Leases for MemQueue {
    async fn claim(&self, _claim: &Claim) -> Result<Option<Job>, QueueError> {
        Err(unsupported())
    }

    async fn holds(&self, _: &str, _: &str) -> Result<bool, QueueError> {
        Err(unsupported())
    }

    async fn heartbeat(&self, _: &str, _: &str, _: Duration) -> Result<bool, QueueError> {
        Err(unsupported())
    }

    async fn complete(&self, _: &str, _: &str, _: Value) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn fail(&self, _: &str, _: &str, _: Failure) -> Result<JobState, QueueError> {
        Err(unsupported())
    }

    async fn release(&self, _: &str, _: &str) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn set_progress(&self, _: &str, _: &str, _: &str, _: Value) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn await_approval(&self, _: &str, _: &str, _: ApprovalRequest) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn set_policy_hash(&self, _: &str, _: &str, _: &str) -> Result<(), QueueError> {
        Err(unsupported())
    }
}

#[async_trait::async_trait]
impl Admin for MemQueue {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn cancel(&self, _: &str) -> Result<bool, QueueError> {
        Err(unsupported())
    }

    async fn retry(&self, _: &str) -> Result<bool, QueueError> {
        Err(unsupported())
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        self.check()?;
        Ok(self.jobs().into_iter().find(|j| j.id == job_id))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
        self.check()?;
        let mut jobs: Vec<Job> = self
            .jobs()
            .into_iter()
            .filter(|j| filter.state.is_none_or(|s| s == j.state))
            .filter(|j| filter.ticket.as_ref().is_none_or(|t| *t == j.ticket))
            .collect();
        jobs.reverse();
        Ok(jobs)
    }

    async fn expire_approvals(&self) -> Result<Vec<String>, QueueError> {
        Err(unsupported())
    }

    async fn cancel_running(&self) -> Result<Vec<String>, QueueError> {
        Err(unsupported())
    }

    async fn set_paused(&self, _: Option<Pause>) -> Result<(), QueueError> {
        Err(unsupported())
    }

    /// Never paused (`/readyz` asks).
    async fn paused(&self) -> Result<Option<Pause>, QueueError> {
        self.check().map(|()| None)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.check()
    }

    async fn prune_deliveries(&self, _older_than: Duration) -> Result<u64, QueueError> {
        Err(unsupported())
    }
}

#[async_trait::async_trait]
impl UsageLedger for MemQueue {
    async fn record_usage(&self, _: &LedgerEntry) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn usage_since(
        &self,
        _: &str,
        _: chrono::DateTime<Utc>,
    ) -> Result<UsageTotal, QueueError> {
        Err(unsupported())
    }

    async fn job_usage(&self, _: &str) -> Result<UsageTotal, QueueError> {
        Err(unsupported())
    }
}

#[async_trait::async_trait]
impl drafter::queue::LinkUpdates for MemQueue {
    async fn record_link(
        &self,
        _: &drafter::queue::LinkUpdate,
        _: std::time::Duration,
    ) -> Result<drafter::queue::LinkRecorded, QueueError> {
        Err(unsupported())
    }

    async fn claim_links(
        &self,
        _: u32,
        _: std::time::Duration,
    ) -> Result<Vec<drafter::queue::PendingLink>, QueueError> {
        Err(unsupported())
    }

    async fn link_told(&self, _: &str, _: i64) -> Result<(), QueueError> {
        Err(unsupported())
    }

    async fn link_failed(
        &self,
        _: &str,
        _: i64,
        _: &str,
        _: std::time::Duration,
    ) -> Result<(), QueueError> {
        Err(unsupported())
    }
}

// ---- the server under test -----------------------------------------------------------------------------------------

const SECRET: &str = "whsec-TESTSECRET-4f1a";
const DC_BOT_KEY: &str = "JIRAUSER10100";
const DC_BOT_NAME: &str = "drafter";

fn cloud_cfg(base_url: &str) -> JiraConfig {
    cloud_client_config(base_url, EMAIL, TOKEN)
}

fn dc_cfg(base_url: &str) -> JiraConfig {
    dc_client_config(base_url, DC_BOT_KEY, DC_BOT_NAME, PAT)
}

struct Server {
    url: String,
    queue: Arc<MemQueue>,
    ready: Arc<AtomicBool>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(secret: Option<&str>, jira: JiraConfig) -> Server {
    let queue = Arc::new(MemQueue::default());
    let ready = Arc::new(AtomicBool::new(true));
    let flag = ready.clone();
    let dyn_queue: Arc<dyn Queue> = queue.clone();
    let queue_check = server::queue_readiness(dyn_queue.clone());
    // What `drafter serve` does: the queue's ping plus another dependency (Docker there, a flag here).
    let readiness: Readiness = Arc::new(move || {
        let flag = flag.clone();
        let queue_check = queue_check.clone();
        Box::pin(async move {
            queue_check().await?;
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("docker: not reachable".to_string())
            }
        })
    });
    let state = AppState {
        queue: dyn_queue,
        jira,
        webhook_secret: secret.map(Secret::new),
        max_attempts: 4,
        readiness,
        approvals: None,
        github: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Server {
        url,
        queue,
        ready,
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Server {
    /// Posts `body` signed with `secret` (or unsigned), with extra headers; returns status and JSON answer.
    async fn post_raw(
        &self,
        query: &str,
        body: Vec<u8>,
        signature: Option<String>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/jira{query}", self.url))
            .header("content-type", "application/json")
            .header("user-agent", "Atlassian Webhook HTTP Client");
        if let Some(sig) = signature {
            req = req.header("x-hub-signature", sig);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    async fn post(&self, payload: &Value, delivery: Option<&str>) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let sig = sign(SECRET, &body);
        let headers: Vec<(&str, &str)> = delivery
            .map(|d| vec![("x-atlassian-webhook-identifier", d)])
            .unwrap_or_default();
        self.post_raw("", body, Some(sig), &headers).await
    }
}

/// Cloud `jira:issue_updated` for an assignment, as in the reference (wiki-markup description, changelog item with
/// `tmpToAccountId`).
fn assigned(key: &str, changelog_id: &str, to: &str) -> Value {
    json!({
        "timestamp": 1740947640940u64,
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_assigned",
        "user": {"self": "https://x.atlassian.net/rest/api/2/user?accountId=712020:c9de-ben",
                 "accountId": "712020:c9de-ben", "displayName": "Ben", "active": true},
        "issue": {"id": "10411", "self": "https://x.atlassian.net/rest/api/2/10411", "key": key,
            "fields": {"summary": "Parser crashes on empty input", "description": "The *parser* crashes.",
                "project": {"key": key.split('-').next().unwrap(), "name": "Team"},
                "assignee": {"accountId": to, "displayName": "drafter bot"}}},
        "changelog": {"id": changelog_id, "items": [{"field": "assignee", "fieldtype": "jira", "fieldId": "assignee",
            "from": null, "fromString": null, "to": to, "toString": "drafter bot",
            "tmpFromAccountId": null, "tmpToAccountId": to}]}
    })
}

/// Cloud `comment_created` (the body is a wiki-markup string in webhooks, not ADF).
fn commented(key: &str, comment_id: &str, author: &str, body: Value) -> Value {
    json!({
        "timestamp": 1740947700000u64,
        "webhookEvent": "comment_created",
        "comment": {"self": format!("https://x.atlassian.net/rest/api/2/issue/10042/comment/{comment_id}"),
            "id": comment_id, "author": {"accountId": author, "displayName": "Ann"},
            "body": body, "updateAuthor": {"accountId": author},
            "created": "2025-03-02T10:35:00.000+0000", "updated": "2025-03-02T10:35:00.000+0000"},
        "issue": {"id": "10042", "key": key, "fields": {"summary": "Parser crashes"}}
    })
}

// ---- webhooks ------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_signature_creates_one_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let (status, body) = s
        .post(
            &assigned("TM-100", "10518", BOT_ACCOUNT_ID),
            Some("b5a1-delivery-1"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "created");
    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(body["job"], jobs[0].id.as_str());
    let j = &jobs[0];
    assert_eq!((j.ticket.as_str(), j.project.as_str()), ("TM-100", "TM"));
    assert_eq!(j.max_attempts, 4);
    let t = &j.triggers[0];
    assert_eq!(t.delivery, "changelog:10518");
    assert_eq!(t.source, "webhook:jira:issue_updated");
    assert_eq!(t.triggered_by.as_deref(), Some("712020:c9de-ben"));
    assert_eq!(t.text, None);
}

#[tokio::test]
async fn bad_or_missing_signature_is_refused_without_a_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let body = serde_json::to_vec(&assigned("TM-100", "10518", BOT_ACCOUNT_ID)).unwrap();
    // No signature.
    let (status, _) = s.post_raw("", body.clone(), None, &[]).await;
    assert_eq!(status, 401);
    // Signed with another secret.
    let (status, _) = s
        .post_raw("", body.clone(), Some(sign("wrong", &body)), &[])
        .await;
    assert_eq!(status, 401);
    // Signature of another body (a tampered payload).
    let (status, _) = s
        .post_raw("", body.clone(), Some(sign(SECRET, b"{}")), &[])
        .await;
    assert_eq!(status, 401);
    // Garbage and the wrong scheme.
    for sig in ["sha256=zz", "sha1=0123", ""] {
        let (status, _) = s
            .post_raw("", body.clone(), Some(sig.to_string()), &[])
            .await;
        assert_eq!(status, 401, "{sig}");
    }
    // An unsigned body is not even parsed: malformed JSON without a signature is 401, not 400.
    let (status, _) = s.post_raw("", b"{not json".to_vec(), None, &[]).await;
    assert_eq!(status, 401);
    assert!(s.queue.jobs().is_empty());

    // No secret configured: webhooks are off, whatever is sent.
    let s = start(None, cloud_cfg("https://x.atlassian.net")).await;
    let (status, answer) = s
        .post_raw("", body.clone(), Some(sign(SECRET, &body)), &[])
        .await;
    assert_eq!(status, 401);
    assert!(!answer.to_string().contains(SECRET));
    assert!(s.queue.jobs().is_empty());
}

#[tokio::test]
async fn the_same_delivery_five_times_makes_one_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let payload = assigned("TM-100", "10518", BOT_ACCOUNT_ID);
    let body = serde_json::to_vec(&payload).unwrap();
    let sig = sign(SECRET, &body);
    let mut statuses = Vec::new();
    for retry in 0..5 {
        let n = retry.to_string();
        let mut headers = vec![("x-atlassian-webhook-identifier", "b5a1-delivery-1")];
        if retry > 0 {
            headers.push(("x-atlassian-webhook-retry", n.as_str()));
        }
        let (status, answer) = s
            .post_raw("", body.clone(), Some(sig.clone()), &headers)
            .await;
        statuses.push((status, answer["status"].as_str().unwrap().to_string()));
    }
    assert_eq!(statuses[0], (202, "created".to_string()));
    for s in &statuses[1..] {
        assert_eq!(*s, (200, "duplicate".to_string()));
    }
    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].triggers.len(), 1);
}

#[tokio::test]
async fn assignment_to_another_user_makes_no_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let (status, body) = s
        .post(
            &assigned("TM-100", "10519", "712020:someone-else"),
            Some("d-2"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"status": "ignored", "reason": "assignee changed to someone else"})
    );
    assert!(s.queue.jobs().is_empty());
}

#[tokio::test]
async fn comment_mentioning_the_bot_records_its_text() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let text = format!("[~accountid:{BOT_ACCOUNT_ID}] please also handle *whitespace-only* input");
    let (status, body) = s
        .post(
            &commented("PROJ-17", "10501", "712020:ann", json!(text)),
            Some("d-3"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "created");
    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 1);
    let t = &jobs[0].triggers[0];
    assert_eq!(jobs[0].ticket, "PROJ-17");
    assert_eq!(t.delivery, "comment:10501");
    assert_eq!(t.source, "webhook:comment_created");
    assert_eq!(t.triggered_by.as_deref(), Some("712020:ann"));
    assert_eq!(t.text.as_deref(), Some(text.as_str()));
}

#[tokio::test]
async fn the_bots_own_comment_makes_no_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let body = json!(format!(
        "[~accountid:{BOT_ACCOUNT_ID}] Draft pull request opened: [acme/widgets#3|https://github.com/acme/widgets/pull/3]"
    ));
    let (status, answer) = s
        .post(
            &commented("PROJ-17", "10502", BOT_ACCOUNT_ID, body),
            Some("d-4"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["reason"], "comment written by the bot");
    // A comment that mentions nobody.
    let (status, answer) = s
        .post(
            &commented("PROJ-17", "10503", "712020:ann", json!("LGTM")),
            Some("d-5"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["reason"], "comment does not mention the bot");
    assert!(s.queue.jobs().is_empty());
}

#[tokio::test]
async fn an_approve_comment_makes_no_job() {
    // `drafter approve` is routed to the queue's approval (intake::approval_from_webhook), never to a new job,
    // also when it mentions the bot.
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let payload = commented(
        "PROJ-17",
        "10504",
        "712020:ann",
        json!(format!("[~accountid:{BOT_ACCOUNT_ID}] drafter approve")),
    );
    let (status, answer) = s.post(&payload, Some("d-6")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "ignored");
    // The server routes it to approvals first; this server has none configured (no policy), so it is ignored.
    assert_eq!(answer["reason"], "approvals are not configured");
    assert!(s.queue.jobs().is_empty());
    // Intake on its own never turns it into a trigger either.
    match intake::from_webhook(
        &payload,
        None,
        None,
        &cloud_cfg("https://x"),
        3,
        chrono::Utc::now(),
    ) {
        intake::Verdict::Ignore(reason) => {
            assert_eq!(
                reason,
                "comment is the approval command (drafter approve), not a trigger"
            )
        }
        other => panic!("{other:?}"),
    }
    let approval = intake::approval_from_webhook(&payload, None, &cloud_cfg("https://x"))
        .expect("an approval");
    assert_eq!(
        (approval.author.as_str(), approval.comment_id.as_str()),
        ("712020:ann", "10504")
    );
    // A sentence about approving, mentioning the bot, is an ordinary trigger.
    let (status, answer) = s
        .post(
            &commented(
                "PROJ-17",
                "10505",
                "712020:ann",
                json!(format!(
                    "[~accountid:{BOT_ACCOUNT_ID}] I approve of the plan, please go ahead"
                )),
            ),
            Some("d-7"),
        )
        .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("created")));
}

#[tokio::test]
async fn a_two_mib_body_is_413() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let mut payload = assigned("TM-100", "10518", BOT_ACCOUNT_ID);
    payload["issue"]["fields"]["description"] = json!("x".repeat(2 << 20));
    let body = serde_json::to_vec(&payload).unwrap();
    let sig = sign(SECRET, &body);
    let (status, _) = s.post_raw("", body, Some(sig), &[]).await;
    assert_eq!(status, 413);
    assert!(s.queue.jobs().is_empty());
    // Just under the limit is fine.
    payload["issue"]["fields"]["description"] = json!("x".repeat(900 * 1024));
    let (status, _) = s.post(&payload, None).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn truncated_json_is_400() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let full = serde_json::to_vec(&assigned("TM-100", "10518", BOT_ACCOUNT_ID)).unwrap();
    let cut = full[..full.len() / 2].to_vec();
    let sig = sign(SECRET, &cut);
    let (status, body) = s.post_raw("", cut, Some(sig), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "body is not valid JSON");
    assert!(s.queue.jobs().is_empty());
}

#[tokio::test]
async fn unknown_event_is_accepted_and_ignored() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let payload = json!({"timestamp": 1740947640940u64, "webhookEvent": "jira:issue_deleted",
        "user": {"accountId": "712020:ann"}, "issue": {"id": "10411", "key": "TM-100", "fields": {}}});
    let (status, body) = s.post(&payload, Some("d-6")).await;
    assert_eq!(status, 202);
    assert_eq!(
        body,
        json!({"status": "ignored", "reason": "event jira:issue_deleted is not a trigger"})
    );
    assert!(s.queue.jobs().is_empty());
}

#[tokio::test]
async fn a_second_trigger_while_the_job_is_open_is_absorbed() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let (_, first) = s
        .post(&assigned("TM-100", "10518", BOT_ACCOUNT_ID), Some("d-7"))
        .await;
    let text = format!("[~accountid:{BOT_ACCOUNT_ID}] and the CLI too");
    let mut comment = commented("TM-100", "10600", "712020:ann", json!(text));
    comment["issue"]["key"] = json!("TM-100");
    let (status, second) = s.post(&comment, Some("d-8")).await;
    assert_eq!(status, 202);
    assert_eq!(second["status"], "absorbed");
    assert_eq!(second["job"], first["job"]);
    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].triggers.len(), 2);
    assert_eq!(jobs[0].triggers[1].text.as_deref(), Some(text.as_str()));
}

#[tokio::test]
async fn adf_comment_with_a_mention_node_makes_a_job() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let adf = json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "mention", "attrs": {"id": BOT_ACCOUNT_ID, "text": "@drafter bot", "accessLevel": ""}},
        {"type": "text", "text": " can you take this?"}]}]});
    let (status, body) = s
        .post(
            &commented("PROJ-17", "10504", "712020:ann", adf),
            Some("d-9"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].triggers[0].text.as_deref(),
        Some("@drafter bot can you take this?")
    );
}

#[tokio::test]
async fn data_center_payloads_make_jobs() {
    // The hint is checked against the issue id in `comment.self`, so Jira is asked which id OPS-7 has.
    let j = JiraStandIn::start_datacenter(PAT).await;
    j.add_issue("OPS-7", "v2 parser", Value::Null, &[]);
    let s = start(Some(SECRET), dc_cfg(&j.base_url())).await;
    // DC comment webhook: no `issue` in the payload, the key comes from `?issue=${issue.key}` in the URL.
    let payload = json!({
        "timestamp": 1740947700000u64,
        "webhookEvent": "comment_created",
        "comment": {"self": format!("{}/rest/api/2/issue/{}/comment/20001", j.base_url(), j.issue_id("OPS-7")),
            "id": "20001",
            "author": {"name": "alice", "key": "JIRAUSER10000", "displayName": "Alice"},
            "body": "[~drafter] the fix should go into the v2 parser", "created": "2025-03-02T10:35:00.000+0000"}
    });
    let body = serde_json::to_vec(&payload).unwrap();
    let sig = sign(SECRET, &body);
    let (status, answer) = s
        .post_raw("?issue=OPS-7", body.clone(), Some(sig.clone()), &[])
        .await;
    assert_eq!(status, 202, "{answer}");
    // Without the URL hint it cannot name the ticket.
    let (status, answer) = s.post_raw("", body, Some(sig), &[]).await;
    assert_eq!(status, 202);
    assert_eq!(answer["status"], "ignored");

    // DC assignment: users by name/key, `to` is the user key.
    let assign = json!({
        "timestamp": 1740947800000u64,
        "webhookEvent": "jira:issue_updated",
        "user": {"name": "bob", "key": "JIRAUSER10001"},
        "issue": {"id": "10050", "key": "OPS-8", "fields": {"summary": "s", "assignee": {"name": "drafter", "key": DC_BOT_KEY}}},
        "changelog": {"id": "30010", "items": [{"field": "assignee", "fieldtype": "jira",
            "from": null, "fromString": null, "to": DC_BOT_KEY, "toString": "drafter bot"}]}
    });
    let (status, _) = s.post(&assign, None).await;
    assert_eq!(status, 202);

    let jobs = s.queue.jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].ticket, "OPS-7");
    assert_eq!(jobs[0].triggers[0].triggered_by.as_deref(), Some("alice"));
    assert_eq!(jobs[0].triggers[0].delivery, "comment:20001");
    assert_eq!(
        jobs[0].triggers[0].text.as_deref(),
        Some("[~drafter] the fix should go into the v2 parser")
    );
    assert_eq!(jobs[1].ticket, "OPS-8");
    assert_eq!(jobs[1].triggers[0].triggered_by.as_deref(), Some("bob"));
}

#[tokio::test]
async fn queue_failure_is_503_and_the_retry_succeeds() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let payload = assigned("TM-100", "10518", BOT_ACCOUNT_ID);
    s.queue.failing.store(true, Ordering::SeqCst);
    let (status, body) = s.post(&payload, Some("d-10")).await;
    assert_eq!(status, 503);
    assert!(!body.to_string().contains("disk on fire"), "{body}");
    // Jira retries the same delivery once the queue is back.
    s.queue.failing.store(false, Ordering::SeqCst);
    let (status, body) = s.post(&payload, Some("d-10")).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "created");
    assert_eq!(s.queue.jobs().len(), 1);
}

#[tokio::test]
async fn healthz_and_readyz() {
    let s = start(Some(SECRET), cloud_cfg("https://x.atlassian.net")).await;
    let get = |path: &'static str| {
        let http = s.http.clone();
        let url = format!("{}{path}", s.url);
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(get("/readyz").await.0, 200);
    s.ready.store(false, Ordering::SeqCst);
    let (status, text) = get("/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("docker: not reachable"), "{text}");
    s.ready.store(true, Ordering::SeqCst);
    s.queue.failing.store(true, Ordering::SeqCst);
    let (status, text) = get("/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("queue (memory) not ready"), "{text}");
    // Liveness does not depend on dependencies.
    assert_eq!(get("/healthz").await.0, 200);
    // Wrong method on the webhook route.
    let r = s
        .http
        .get(format!("{}/webhooks/jira", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

// ---- poll ----------------------------------------------------------------------------------------------------------

const EMAIL: &str = "drafter-bot@example.com";
const TOKEN: &str = "ATATT3xFfGF0-TESTSECRET-poll";
const PAT: &str = "NjM0-TESTSECRET-pat";

fn poll_cfg(projects: &[&str], statuses: &[&str]) -> PollConfig {
    PollConfig {
        enabled: true,
        interval_secs: 3600,
        projects: projects.iter().map(|s| s.to_string()).collect(),
        statuses: statuses.iter().map(|s| s.to_string()).collect(),
    }
}

fn bot() -> Value {
    json!({"accountId": BOT_ACCOUNT_ID, "displayName": "drafter bot"})
}

fn ann() -> Value {
    json!({"accountId": "712020:ann", "displayName": "Ann"})
}

fn jql_of(req: &support::RecordedRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn search_requests(j: &JiraStandIn) -> Vec<support::RecordedRequest> {
    j.requests()
        .into_iter()
        .filter(|r| r.path.contains("/search"))
        .collect()
}

#[tokio::test]
async fn cloud_poll_pages_and_never_duplicates() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.set_page_size(2);
    // Three tickets assigned to the bot in polled projects (one at creation, two by a change), plus noise.
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    for key in ["PAY-2", "OPS-3", "PAY-4", "HR-5"] {
        j.add_issue(key, key, Value::Null, &[]);
        j.assign(key, ann(), ann());
    }
    let pay2 = j.assign("PAY-2", bot(), ann());
    j.assign("OPS-3", bot(), ann());
    j.assign("HR-5", bot(), ann()); // not a polled project
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    let jira_cfg = cloud_cfg(&j.base_url());
    let cfg = poll_cfg(&["PAY", "OPS"], &[]);
    let queue = MemQueue::default();

    let first = intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3)
        .await
        .unwrap();
    assert_eq!(first.issues, 3);
    assert_eq!(first.created, 3);
    for _ in 0..4 {
        let s = intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3)
            .await
            .unwrap();
        assert_eq!((s.issues, s.created, s.duplicate), (3, 0, 3));
    }
    let jobs = queue.jobs();
    let mut tickets: Vec<&str> = jobs.iter().map(|j| j.ticket.as_str()).collect();
    tickets.sort();
    assert_eq!(tickets, ["OPS-3", "PAY-1", "PAY-2"]);
    assert!(jobs.iter().all(|j| j.triggers.len() == 1));
    let pay2_job = jobs.iter().find(|j| j.ticket == "PAY-2").unwrap();
    assert_eq!(pay2_job.triggers[0].delivery, format!("changelog:{pay2}"));
    assert_eq!(pay2_job.triggers[0].source, "poll");
    assert_eq!(
        pay2_job.triggers[0].triggered_by.as_deref(),
        Some("712020:ann")
    );
    assert!(
        jobs.iter().find(|j| j.ticket == "PAY-1").unwrap().triggers[0]
            .delivery
            .starts_with("created:")
    );

    // What was sent: the new endpoint, the exact JQL, and the page token on the second page.
    let reqs = search_requests(&j);
    assert_eq!(reqs.len(), 10, "two pages per poll");
    assert!(reqs.iter().all(|r| r.path == "/rest/api/3/search/jql"));
    let q1 = jql_of(&reqs[0]);
    assert_eq!(
        q1["jql"],
        format!(
            r#"assignee = "{BOT_ACCOUNT_ID}" AND project in ("PAY", "OPS") ORDER BY updated DESC"#
        )
    );
    assert_eq!(q1["expand"], "changelog");
    assert_eq!(q1["maxResults"], "100");
    assert!(q1["fields"].split(',').any(|f| f == "assignee"));
    assert!(!q1.contains_key("nextPageToken"));
    assert!(jql_of(&reqs[1]).contains_key("nextPageToken"));
    assert_eq!(
        reqs[0].header("authorization").unwrap().split(' ').next(),
        Some("Basic")
    );
}

#[tokio::test]
async fn a_reassigned_ticket_runs_again_but_a_finished_one_does_not() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    j.assign("PAY-1", ann(), ann());
    j.assign("PAY-1", bot(), ann());
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    let jira_cfg = cloud_cfg(&j.base_url());
    let cfg = poll_cfg(&["PAY"], &[]);
    let queue = MemQueue::default();
    let poll = || intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3);

    assert_eq!(poll().await.unwrap().created, 1);
    queue.finish_all();
    // Still assigned, the job is done, people comment: no new job.
    j.add_comment("PAY-1", ann(), json!("thanks"));
    for _ in 0..3 {
        let s = poll().await.unwrap();
        assert_eq!((s.created, s.duplicate), (0, 1));
    }
    // Re-assigned to a human and back to the bot: a new assignment, a new job.
    j.assign("PAY-1", ann(), ann());
    assert_eq!(poll().await.unwrap().issues, 0);
    j.assign("PAY-1", bot(), ann());
    assert_eq!(poll().await.unwrap().created, 1);
    assert_eq!(poll().await.unwrap().duplicate, 1);
    assert_eq!(queue.jobs().len(), 2);
}

#[tokio::test]
async fn webhook_and_poll_agree_on_the_same_assignment() {
    // With both intake paths on, a poll after the webhook's job has finished must not start a second run.
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-9", "nine", Value::Null, &[]);
    j.assign("PAY-9", ann(), ann());
    let history_id = j.assign("PAY-9", bot(), ann());
    let jira_cfg = cloud_cfg(&j.base_url());
    let s = start(Some(SECRET), jira_cfg.clone()).await;
    let (status, _) = s
        .post(
            &assigned("PAY-9", &history_id, BOT_ACCOUNT_ID),
            Some("c0ffee-1"),
        )
        .await;
    assert_eq!(status, 202);
    s.queue.finish_all();
    let client = JiraClient::new(&jira_cfg).unwrap();
    let stats = intake::poll_once(
        &client,
        &poll_cfg(&["PAY"], &[]),
        &jira_cfg,
        s.queue.as_ref(),
        3,
    )
    .await
    .unwrap();
    assert_eq!((stats.created, stats.duplicate), (0, 1));
    assert_eq!(s.queue.jobs().len(), 1);
}

fn changelog_requests(j: &JiraStandIn) -> Vec<support::RecordedRequest> {
    j.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/changelog"))
        .collect()
}

#[tokio::test]
async fn poll_reads_who_assigned_from_the_full_history_once_per_new_hit() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    // Jira cuts the histories a search returns: here to the newest one, so PAY-1's assignment is not in it.
    j.set_search_changelog_cap(1);
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    j.assign("PAY-1", ann(), ann());
    j.assign("PAY-1", bot(), json!({"accountId": "712020:ben"}));
    j.add_history(
        "PAY-1",
        ann(),
        json!([{"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "1", "to": "3"}]),
    );
    // PAY-2's assignment is the newest entry: the search sees it, the full history agrees.
    j.add_issue("PAY-2", "two", Value::Null, &[]);
    let pay2 = j.assign("PAY-2", bot(), ann());
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    let jira_cfg = cloud_cfg(&j.base_url());
    let cfg = poll_cfg(&["PAY"], &[]);
    let queue = MemQueue::default();

    let s = intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3)
        .await
        .unwrap();
    assert_eq!(s.created, 2);
    let jobs = queue.jobs();
    let by_ticket = |t: &str| jobs.iter().find(|j| j.ticket == t).unwrap().triggers[0].clone();
    let t1 = by_ticket("PAY-1");
    assert!(t1.delivery.starts_with("created:"), "{}", t1.delivery);
    assert_eq!(t1.triggered_by.as_deref(), Some("712020:ben"));
    let t2 = by_ticket("PAY-2");
    assert_eq!(t2.delivery, format!("changelog:{pay2}"));
    assert_eq!(t2.triggered_by.as_deref(), Some("712020:ann"));
    assert_eq!(changelog_requests(&j).len(), 2);

    // Later polls see the same assignments: duplicates, and no more history requests.
    for _ in 0..3 {
        let s = intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3)
            .await
            .unwrap();
        assert_eq!((s.created, s.duplicate), (0, 2));
    }
    assert_eq!(changelog_requests(&j).len(), 2);
}

#[tokio::test]
async fn poll_keeps_the_searchs_answer_when_the_history_cannot_be_read() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    j.assign("PAY-1", bot(), ann());
    // Created already assigned: no history, no creator in the stand-in's fields.
    j.add_issue("PAY-2", "two", Value::Null, &[]);
    j.fail_next_on("/changelog", 503, 10);
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    let jira_cfg = cloud_cfg(&j.base_url());
    let queue = MemQueue::default();
    let s = intake::poll_once(&client, &poll_cfg(&["PAY"], &[]), &jira_cfg, &queue, 3)
        .await
        .unwrap();
    assert_eq!(s.created, 2);
    assert_eq!(changelog_requests(&j).len(), 2);
    let jobs = queue.jobs();
    let by = |t: &str| {
        jobs.iter().find(|j| j.ticket == t).unwrap().triggers[0]
            .triggered_by
            .clone()
    };
    assert_eq!(by("PAY-1").as_deref(), Some("712020:ann"));
    // Nobody known: the policy refuses it (fails closed).
    assert_eq!(by("PAY-2"), None);
}

#[tokio::test]
async fn data_center_poll_pages_with_start_at() {
    let j = JiraStandIn::start_datacenter(PAT).await;
    j.set_page_size(2);
    let dc_bot = json!({"name": DC_BOT_NAME, "key": DC_BOT_KEY, "displayName": "drafter bot"});
    let alice = json!({"name": "alice", "key": "JIRAUSER10000"});
    for key in ["OPS-1", "OPS-2", "OPS-3"] {
        j.add_issue(key, key, Value::Null, &[]);
        j.assign(key, alice.clone(), alice.clone());
        j.assign(key, dc_bot.clone(), alice.clone());
    }
    let jira_cfg = dc_cfg(&j.base_url());
    let client = JiraClient::new(&jira_cfg).unwrap();
    let cfg = poll_cfg(&["OPS"], &["To Do", "In Progress"]);
    let queue = MemQueue::default();
    for _ in 0..5 {
        intake::poll_once(&client, &cfg, &jira_cfg, &queue, 3)
            .await
            .unwrap();
    }
    let jobs = queue.jobs();
    assert_eq!(jobs.len(), 3);
    assert!(jobs
        .iter()
        .all(|j| j.triggers[0].delivery.starts_with("changelog:")
            && j.triggers[0].triggered_by.as_deref() == Some("alice")));
    let reqs = search_requests(&j);
    assert_eq!(reqs.len(), 10);
    assert!(reqs.iter().all(|r| r.path == "/rest/api/2/search"));
    let q0 = jql_of(&reqs[0]);
    let q1 = jql_of(&reqs[1]);
    assert_eq!(
        q0["jql"],
        r#"assignee = "drafter" AND project in ("OPS") AND status in ("To Do", "In Progress") ORDER BY updated DESC"#
    );
    assert_eq!((q0["startAt"].as_str(), q1["startAt"].as_str()), ("0", "2"));
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {PAT}").as_str())
    );
}

#[tokio::test]
async fn poll_loop_stops_promptly_on_shutdown() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    let jira_cfg = cloud_cfg(&j.base_url());
    let client = JiraClient::new(&jira_cfg).unwrap();
    let queue = Arc::new(MemQueue::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(intake::poll_loop(
        client,
        poll_cfg(&["PAY"], &[]),
        jira_cfg,
        queue.clone() as Arc<dyn Queue>,
        3,
        async {
            let _ = rx.await;
        },
    ));
    // The first poll runs at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while queue.jobs().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job from the first poll"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now it sleeps for an hour; shutdown must end it at once.
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("poll loop did not stop within 1 s")
        .unwrap();
    assert_eq!(queue.jobs().len(), 1);
}

/// On a paused clock: the 2 s of Retry-After pass at once. The stand-in runs on this test's runtime, and the test's
/// 20 ms poll below keeps a timer pending, so the clock only ever jumps 20 ms while a request is in flight (never to
/// the client's request timeout).
#[tokio::test(start_paused = true)]
async fn poll_loop_retries_after_a_failure_honouring_retry_after() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    j.fail_next_with(503, 1, Some("2"));
    let jira_cfg = cloud_cfg(&j.base_url());
    let client = JiraClient::new(&jira_cfg).unwrap();
    let queue = Arc::new(MemQueue::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut cfg = poll_cfg(&["PAY"], &[]);
    cfg.interval_secs = 1;
    let started = tokio::time::Instant::now();
    let handle = tokio::spawn(intake::poll_loop(
        client,
        cfg,
        jira_cfg,
        queue.clone() as Arc<dyn Queue>,
        3,
        async {
            let _ = rx.await;
        },
    ));
    while queue.jobs().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The 503 asked for 2 s, longer than the 1 s interval: the second poll waited for it.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(search_requests(&j).len(), 2);
}

#[tokio::test]
async fn disabled_poll_loop_returns_at_once() {
    let jira_cfg = cloud_cfg("http://127.0.0.1:9");
    let client = JiraClient::new(&jira_cfg).unwrap();
    let mut cfg = poll_cfg(&["PAY"], &[]);
    cfg.enabled = false;
    tokio::time::timeout(
        Duration::from_secs(1),
        intake::poll_loop(
            client,
            cfg,
            jira_cfg,
            Arc::new(MemQueue::default()),
            3,
            std::future::pending(),
        ),
    )
    .await
    .unwrap();
}

// ---- comments ------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn comments_are_listed_across_pages() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("PAY-1", "one", Value::Null, &[]);
    for i in 0..250 {
        let body = json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": format!("comment {i}")}]}]});
        j.add_comment("PAY-1", ann(), body);
    }
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    j.set_page_size(100);
    let all = client.comments("PAY-1").await.unwrap();
    assert_eq!(all.len(), 250);
    for (i, c) in all.iter().enumerate() {
        assert_eq!(
            c["body"]["content"][0]["content"][0]["text"],
            format!("comment {i}")
        );
        assert_eq!(c["author"]["accountId"], "712020:ann");
    }
    let starts: Vec<String> = j
        .requests()
        .iter()
        .filter(|r| r.path == "/rest/api/3/issue/PAY-1/comment")
        .map(|r| jql_of(r)["startAt"].clone())
        .collect();
    assert_eq!(starts, ["0", "100", "200"]);

    // A page size smaller than asked (Jira may cap it) still reaches every comment.
    j.set_page_size(7);
    assert_eq!(client.comments("PAY-1").await.unwrap().len(), 250);
    // No comments, an unknown issue, a hostile key.
    j.add_issue("PAY-2", "two", Value::Null, &[]);
    assert!(client.comments("PAY-2").await.unwrap().is_empty());
    assert!(matches!(
        client.comments("PAY-404").await,
        Err(drafter::jira::JiraError::NotFound { .. })
    ));
    assert!(matches!(
        client.comments("../x").await,
        Err(drafter::jira::JiraError::InvalidKey(_))
    ));
}

#[tokio::test]
async fn data_center_comments_use_v2() {
    let j = JiraStandIn::start_datacenter(PAT).await;
    j.add_issue("OPS-1", "one", Value::Null, &[]);
    j.add_comment("OPS-1", json!({"name": "alice"}), json!("wiki *text*"));
    let client = JiraClient::new(&dc_cfg(&j.base_url())).unwrap();
    let all = client.comments("OPS-1").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["body"], "wiki *text*");
    assert!(j
        .requests()
        .iter()
        .any(|r| r.path == "/rest/api/2/issue/OPS-1/comment"));
}

#[tokio::test]
async fn search_errors_surface() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    let client = JiraClient::new(&cloud_cfg(&j.base_url())).unwrap();
    // JQL the site does not understand is a 400, not retryable.
    let e = client
        .search("garbage ((", &["key"], None)
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    // Rate limited: retryable with the server's Retry-After.
    j.fail_next_with(429, 1, Some("7"));
    let e = client
        .search(r#"assignee = "x""#, &["key"], None)
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let page = client
        .search(r#"assignee = "x""#, &["key"], None)
        .await
        .unwrap();
    assert!(page.issues.is_empty() && page.next.is_none());
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let queue: Arc<dyn Queue> = Arc::new(MemQueue::default());
    let state = AppState {
        readiness: server::queue_readiness(queue.clone()),
        queue,
        jira: cloud_cfg("https://x.atlassian.net"),
        webhook_secret: None,
        max_attempts: 3,
        approvals: None,
        github: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
    assert!(reqwest::get(&url).await.is_err(), "still listening");
}

// ---- approvals bound to their request (issue 12.2) ------------------------------------------------------------------

const LIN: &str = "712020:lead-lin";
const DC_LIN: &str = "lin";

/// A `drafter serve` webhook endpoint with a real (SQLite) queue and the approval rules of a policy whose approver
/// is Lin (by account id on Cloud, by user name on Data Center).
struct ApprovalServer {
    url: String,
    queue: Arc<dyn Queue>,
    approvals: server::Approvals,
    jira: JiraConfig,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_with_approvals(jira: JiraConfig) -> ApprovalServer {
    let dir = tempfile::tempdir().unwrap();
    let queue: Arc<dyn Queue> = Arc::new(
        drafter::queue::sqlite::SqliteQueue::open(&dir.path().join("queue.sqlite"))
            .await
            .unwrap(),
    );
    let policy = drafter::policy::parse(
        &format!(
            r#"version = 1

[teams.demo]
projects = ["DEMO"]
repos = [{{ name = "acme/web", bases = ["main"] }}]
triggers = {{ anyone = true }}
approvers = {{ accounts = ["{LIN}", "{DC_LIN}"] }}
approval_labels = ["needs-approval"]
"#
        ),
        std::path::Path::new("policy.toml"),
    )
    .unwrap();
    let approvals = server::Approvals {
        policy: Arc::new(drafter::policy::Current::new(policy)),
        directory: Arc::new(drafter::policy::NoGroups),
    };
    let state = AppState {
        readiness: server::queue_readiness(queue.clone()),
        queue: queue.clone(),
        jira: jira.clone(),
        webhook_secret: Some(Secret::new(SECRET)),
        max_attempts: 3,
        approvals: Some(approvals.clone()),
        github: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    ApprovalServer {
        url,
        queue,
        approvals,
        jira,
        http: reqwest::Client::new(),
        _dir: dir,
        _stop: tx,
    }
}

/// A new job for `ticket` (an assignment delivered as `delivery`), claimed by worker `w` as a worker would; its id.
async fn enqueue_and_claim(queue: &dyn Queue, ticket: &str, delivery: &str) -> String {
    let created = queue
        .enqueue(NewJob {
            ticket: ticket.into(),
            project: "DEMO".into(),
            trigger: drafter::queue::Trigger {
                delivery: delivery.into(),
                source: "webhook:jira:issue_updated".into(),
                triggered_by: Some("712020:ann".into()),
                text: None,
                at: Utc::now(),
                review: None,
            },
            max_attempts: 3,
        })
        .await
        .unwrap();
    let Enqueued::Created(id) = created else {
        panic!("{created:?}")
    };
    let claim = Claim {
        worker: "w".into(),
        lease: Duration::from_secs(60),
        exclude_projects: vec![],
    };
    let job = queue.claim(&claim).await.unwrap().unwrap();
    assert_eq!(job.id, id);
    id
}

impl ApprovalServer {
    /// Posts `payload` signed with the webhook secret, with `query` (`?issue=...` or empty).
    async fn post(&self, query: &str, payload: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let resp = self
            .http
            .post(format!("{}/webhooks/jira{query}", self.url))
            .header("content-type", "application/json")
            .header("x-hub-signature", sign(SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }

    /// A new job for `ticket`, claimed and parked for approval as a worker does; returns its id and when approval
    /// was requested.
    async fn park(&self, ticket: &str, delivery: &str) -> (String, chrono::DateTime<Utc>) {
        let id = enqueue_and_claim(self.queue.as_ref(), ticket, delivery).await;
        let now = Utc::now();
        self.queue
            .await_approval(
                &id,
                "w",
                ApprovalRequest {
                    reason: "the label `needs-approval` needs approval".into(),
                    approvers: vec![LIN.into()],
                    requested_at: now,
                    expires_at: now + chrono::Duration::hours(24),
                    subject: drafter::queue::ApprovalSubject {
                        ticket_sha256: "ab".repeat(32),
                        repo: "acme/web".into(),
                        base: "main".into(),
                    },
                },
            )
            .await
            .unwrap();
        // Jira's timestamps have milliseconds: keep comments written "now" strictly after the request.
        tokio::time::sleep(Duration::from_millis(20)).await;
        (id, now)
    }

    async fn state(&self, id: &str) -> JobState {
        self.queue.get(id).await.unwrap().unwrap().state
    }

    async fn poll(&self) {
        let client = JiraClient::new(&self.jira).unwrap();
        intake::poll_approvals(&client, &self.jira, self.queue.as_ref(), &self.approvals).await;
    }
}

/// A Cloud `comment_created` payload around a comment object as the Jira stand-in lists it.
fn comment_webhook(key: &str, issue_id: u64, comment: &Value) -> Value {
    json!({
        "timestamp": Utc::now().timestamp_millis(),
        "webhookEvent": "comment_created",
        "comment": comment,
        "issue": {"id": issue_id.to_string(), "key": key, "fields": {"summary": "s"}}
    })
}

fn lin() -> Value {
    json!({"accountId": LIN, "displayName": "Lin"})
}

fn approve_adf() -> Value {
    json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": "drafter approve"}]}]})
}

/// Attack (a): the `drafter approve` comment an approver wrote for an earlier job of the ticket must not approve a
/// later job, whether the poll finds it or a webhook (a late retry, or a replay) delivers it again.
#[tokio::test]
async fn an_approval_comment_for_an_earlier_job_does_not_approve_a_later_one() {
    let j = JiraStandIn::start(EMAIL, TOKEN).await;
    j.add_issue("DEMO-1", "Fix the parser", Value::Null, &["needs-approval"]);
    let s = start_with_approvals(cloud_cfg(&j.base_url())).await;
    let issue_id = j.issue_id("DEMO-1");

    // The first job is approved by Lin's comment (found by the poll) and runs to the end.
    let (first, _) = s.park("DEMO-1", "changelog:1").await;
    j.add_comment("DEMO-1", lin(), approve_adf());
    s.poll().await;
    assert_eq!(s.state(&first).await, JobState::Queued, "approved");
    let claim = Claim {
        worker: "w".into(),
        lease: Duration::from_secs(60),
        exclude_projects: vec![],
    };
    s.queue.claim(&claim).await.unwrap().unwrap();
    s.queue.complete(&first, "w", json!({})).await.unwrap();

    // The ticket is assigned again: a new job asks for approval. Lin's old comment is still on the ticket.
    let (second, asked) = s.park("DEMO-1", "changelog:2").await;
    s.poll().await;
    assert_eq!(
        s.state(&second).await,
        JobState::AwaitingApproval,
        "the poll took the earlier job's approval"
    );
    // The same comment delivered again by webhook (Jira's retry, or a replay of the signed body).
    let old = j.comment_objects("DEMO-1").remove(0);
    let (status, answer) = s.post("", &comment_webhook("DEMO-1", issue_id, &old)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "ignored", "{answer}");
    // Another approval comment written before this request, delivered late.
    let mut late = old.clone();
    late["id"] = json!("99001");
    late["created"] = json!((asked - chrono::Duration::seconds(30))
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string());
    let (_, answer) = s
        .post("", &comment_webhook("DEMO-1", issue_id, &late))
        .await;
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert_eq!(
        answer["reason"], "the comment was written before drafter asked for this approval",
        "{answer}"
    );
    assert_eq!(s.state(&second).await, JobState::AwaitingApproval);

    // Lin approves again, after this request: that counts.
    j.add_comment("DEMO-1", lin(), approve_adf());
    s.poll().await;
    let job = s.queue.get(&second).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    let approval = job.approval.unwrap();
    assert_eq!(approval.approved_by.as_deref(), Some(LIN));
    let newest = j.comment_objects("DEMO-1").pop().unwrap();
    assert_eq!(approval.comment_id.as_deref(), newest["id"].as_str());
}

/// Attack (b): one comment approves one job. A Data Center payload that names no issue (so only the unsigned
/// `?issue=` can say which) replayed with another ticket's key must not approve that ticket's job too.
#[tokio::test]
async fn one_approval_comment_approves_one_job_however_often_it_is_delivered() {
    let s = start_with_approvals(dc_cfg("https://jira.example.com")).await;
    let (one, _) = s.park("DEMO-1", "changelog:1").await;
    let (two, _) = s.park("DEMO-2", "changelog:2").await;
    let payload = json!({
        "timestamp": Utc::now().timestamp_millis(),
        "webhookEvent": "comment_created",
        "comment": {"id": "20777", "author": {"name": DC_LIN, "key": "JIRAUSER10777"},
            "updateAuthor": {"name": DC_LIN, "key": "JIRAUSER10777"}, "body": "drafter approve",
            "created": Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()}
    });
    let (status, answer) = s.post("?issue=DEMO-1", &payload).await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("approved")),
        "{answer}"
    );
    assert_eq!(s.state(&one).await, JobState::Queued);

    let (status, answer) = s.post("?issue=DEMO-2", &payload).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["reason"], "this comment has already approved a job",
        "{answer}"
    );
    assert_eq!(s.state(&two).await, JobState::AwaitingApproval);
    // A plain redelivery changes nothing either.
    let (_, answer) = s.post("?issue=DEMO-1", &payload).await;
    assert_eq!(answer["status"], "ignored", "{answer}");
}

/// Attack (c): the `?issue=` hint is not signed. A Data Center comment webhook whose payload names its issue (by
/// id, in `comment.self`) is refused when the hint names another ticket; so is a payload whose `issue.key` differs.
#[tokio::test]
async fn a_data_center_hint_naming_another_ticket_than_the_payload_is_refused() {
    let j = JiraStandIn::start_datacenter(PAT).await;
    j.add_issue("DEMO-1", "one", Value::Null, &["needs-approval"]);
    j.add_issue("DEMO-2", "two", Value::Null, &["needs-approval"]);
    let s = start_with_approvals(dc_cfg(&j.base_url())).await;
    let (one, _) = s.park("DEMO-1", "changelog:1").await;
    let (two, _) = s.park("DEMO-2", "changelog:2").await;
    let id1 = j.issue_id("DEMO-1");
    let approve = json!({
        "timestamp": Utc::now().timestamp_millis(),
        "webhookEvent": "comment_created",
        "comment": {"id": "20801",
            "self": format!("{}/rest/api/2/issue/{id1}/comment/20801", j.base_url()),
            "author": {"name": DC_LIN, "key": "JIRAUSER10777"}, "body": "drafter approve",
            "created": Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()}
    });
    let (status, answer) = s.post("?issue=DEMO-2", &approve).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not match")),
        "{answer}"
    );
    assert_eq!(s.state(&two).await, JobState::AwaitingApproval);
    assert_eq!(s.state(&one).await, JobState::AwaitingApproval);

    // A mention (a trigger) is held to the same rule: no job for the other ticket.
    let mut mention = approve.clone();
    mention["comment"]["id"] = json!("20802");
    mention["comment"]["body"] = json!("[~drafter] please also do this");
    let (status, _) = s.post("?issue=DEMO-3", &mention).await;
    assert_eq!(status, 400);
    // A payload that names its key must name the hinted one.
    let keyed = json!({"webhookEvent": "comment_created",
        "comment": {"id": "20803", "author": {"name": DC_LIN}, "body": "drafter approve",
            "created": Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()},
        "issue": {"id": id1.to_string(), "key": "DEMO-1"}});
    let (status, _) = s.post("?issue=DEMO-2", &keyed).await;
    assert_eq!(status, 400);
    assert_eq!(s.state(&two).await, JobState::AwaitingApproval);
    assert!(
        s.queue
            .list(&JobFilter {
                ticket: Some("DEMO-3".into()),
                ..JobFilter::default()
            })
            .await
            .unwrap()
            .is_empty(),
        "no job for the hinted ticket"
    );

    // The hint that agrees with the payload is honoured.
    let (status, answer) = s.post("?issue=DEMO-1", &approve).await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("approved")),
        "{answer}"
    );
    assert_eq!(s.state(&one).await, JobState::Queued);
}

// ---- GitHub: `POST /webhooks/github` with the documented payloads ------------------------------------------------
//
// Deliveries as GitHub documents them (https://docs.github.com/en/webhooks/webhook-events-and-payloads), trimmed of
// fields drafter does not read; the examples are GitHub's own (octokit/webhooks `payload-examples/api.github.com`),
// renamed to the pull request drafter opened here (acme/widgets#2, branch `drafter/DEMO-1-fix-the-greeting`).

const GH_REPO: &str = "acme/widgets";
const GH_PR: u64 = 2;

/// A user object as webhook payloads carry it (`sender`, `comment.user`, ...).
fn gh_user(login: &str, id: u64, kind: &str) -> Value {
    json!({
        "login": login, "id": id, "node_id": "MDQ6VXNlcjIxMDMxMDY3",
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"), "gravatar_id": "",
        "url": format!("https://api.github.com/users/{login}"), "html_url": format!("https://github.com/{login}"),
        "type": kind, "site_admin": false
    })
}

fn gh_repository() -> Value {
    json!({
        "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=", "name": "widgets", "full_name": GH_REPO,
        "private": false, "owner": gh_user("acme", 77, "Organization"),
        "html_url": "https://github.com/acme/widgets", "fork": false,
        "url": "https://api.github.com/repos/acme/widgets", "default_branch": "main"
    })
}

/// The pull request object of `pull_request*` events.
fn gh_pull_request() -> Value {
    json!({
        "url": "https://api.github.com/repos/acme/widgets/pulls/2", "id": 279147437,
        "node_id": "MDExOlB1bGxSZXF1ZXN0Mjc5MTQ3NDM3", "html_url": "https://github.com/acme/widgets/pull/2",
        "issue_url": "https://api.github.com/repos/acme/widgets/issues/2", "number": GH_PR, "state": "open",
        "locked": false, "title": "[DEMO-1] Fix the greeting", "user": gh_user("drafter-bot", 5, "User"),
        "body": "Drafted by drafter.", "created_at": "2019-05-15T15:20:33Z", "updated_at": "2019-05-15T15:20:38Z",
        "closed_at": null, "merged_at": null, "merge_commit_sha": null, "assignee": null, "assignees": [],
        "requested_reviewers": [], "requested_teams": [], "labels": [], "milestone": null, "draft": true,
        "head": {"label": "acme:drafter/DEMO-1-fix-the-greeting", "ref": "drafter/DEMO-1-fix-the-greeting",
                 "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "user": gh_user("acme", 77, "Organization"),
                 "repo": gh_repository()},
        "base": {"label": "acme:main", "ref": "main", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                 "user": gh_user("acme", 77, "Organization"), "repo": gh_repository()},
        "author_association": "NONE"
    })
}

/// `pull_request_review_comment` (https://docs.github.com/en/webhooks/webhook-events-and-payloads#pull_request_review_comment),
/// from octokit/webhooks `pull_request_review_comment/created.payload.json`.
fn gh_review_comment(action: &str, id: u64, login: &str, body: &str) -> Value {
    json!({
        "action": action,
        "comment": {
            "url": format!("https://api.github.com/repos/acme/widgets/pulls/comments/{id}"),
            "pull_request_review_id": 237895671, "id": id, "node_id": "MDI0OlB1bGxSZXF1ZXN0UmV2aWV3Q29tbWVudA==",
            "diff_hunk": "@@ -1 +1 @@\n-# Hello-World", "path": "greet.py", "position": 1, "original_position": 1,
            "commit_id": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
            "original_commit_id": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
            "user": gh_user(login, 21031067, "User"), "body": body,
            "created_at": "2019-05-15T15:20:37Z", "updated_at": "2019-05-15T15:20:38Z",
            "html_url": format!("https://github.com/acme/widgets/pull/2#discussion_r{id}"),
            "pull_request_url": "https://api.github.com/repos/acme/widgets/pulls/2",
            "author_association": "MEMBER",
            "start_line": null, "original_start_line": null, "start_side": null,
            "line": 265, "original_line": 265, "side": "RIGHT"
        },
        "pull_request": gh_pull_request(),
        "repository": gh_repository(),
        "sender": gh_user(login, 21031067, "User")
    })
}

/// `issue_comment` (https://docs.github.com/en/webhooks/webhook-events-and-payloads#issue_comment), from octokit/webhooks
/// `issue_comment/created.payload.json`; `issue.pull_request` is there only when the issue is a pull request.
fn gh_issue_comment(id: u64, login: &str, body: &str, on_pr: bool) -> Value {
    let mut issue = json!({
        "url": "https://api.github.com/repos/acme/widgets/issues/2", "id": 444500041,
        "node_id": "MDU6SXNzdWU0NDQ1MDAwNDE=", "number": GH_PR, "title": "[DEMO-1] Fix the greeting",
        "user": gh_user("drafter-bot", 5, "User"), "labels": [], "state": "open", "locked": false,
        "assignee": null, "assignees": [], "milestone": null, "comments": 1,
        "created_at": "2019-05-15T15:20:18Z", "updated_at": "2019-05-15T15:20:21Z", "closed_at": null,
        "author_association": "NONE", "body": "Drafted by drafter."
    });
    if on_pr {
        issue["pull_request"] = json!({
            "url": "https://api.github.com/repos/acme/widgets/pulls/2",
            "html_url": "https://github.com/acme/widgets/pull/2",
            "diff_url": "https://github.com/acme/widgets/pull/2.diff",
            "patch_url": "https://github.com/acme/widgets/pull/2.patch", "merged_at": null
        });
    }
    json!({
        "action": "created",
        "issue": issue,
        "comment": {
            "url": format!("https://api.github.com/repos/acme/widgets/issues/comments/{id}"),
            "html_url": format!("https://github.com/acme/widgets/pull/2#issuecomment-{id}"),
            "issue_url": "https://api.github.com/repos/acme/widgets/issues/2", "id": id,
            "node_id": "MDEyOklzc3VlQ29tbWVudDQ5MjcwMDQwMA==", "user": gh_user(login, 21031067, "User"),
            "created_at": "2019-05-15T15:20:21Z", "updated_at": "2019-05-15T15:20:21Z",
            "author_association": "MEMBER", "body": body
        },
        "repository": gh_repository(),
        "sender": gh_user(login, 21031067, "User")
    })
}

/// `pull_request_review` (https://docs.github.com/en/webhooks/webhook-events-and-payloads#pull_request_review), from
/// octokit/webhooks `pull_request_review/submitted.payload.json` (whose `review.body` is `null`).
fn gh_review(id: u64, login: &str, state: &str, body: Option<&str>) -> Value {
    json!({
        "action": "submitted",
        "review": {
            "id": id, "node_id": "MDE3OlB1bGxSZXF1ZXN0UmV2aWV3MjM3ODk1Njcx", "user": gh_user(login, 21031067, "User"),
            "body": body, "commit_id": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
            "submitted_at": "2019-05-15T15:20:38Z", "state": state,
            "html_url": format!("https://github.com/acme/widgets/pull/2#pullrequestreview-{id}"),
            "pull_request_url": "https://api.github.com/repos/acme/widgets/pulls/2", "author_association": "MEMBER"
        },
        "pull_request": gh_pull_request(),
        "repository": gh_repository(),
        "sender": gh_user(login, 21031067, "User")
    })
}

/// A `drafter serve` GitHub endpoint with a real (SQLite) queue holding one finished job that opened acme/widgets#2,
/// and a policy whose team lists its `reviewers` (so GitHub is never asked about permissions).
struct GithubServer {
    url: String,
    queue: Arc<dyn Queue>,
    job: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A forge at an address nothing listens on: the tests that use it expect GitHub not to be called.
fn unreachable_forge() -> drafter::forge::Forge {
    drafter::forge::Forge::new(&drafter::config::GithubConfig {
        api_url: "http://127.0.0.1:9/api/v3".into(),
        git_url: "http://127.0.0.1:9".into(),
        token: Secret::new("ghp_unused").into(),
        app: None,
        bot_login: Some("drafter-bot".into()),
        identities: Default::default(),
    })
    .unwrap()
}

async fn start_github() -> GithubServer {
    let dir = tempfile::tempdir().unwrap();
    let queue: Arc<dyn Queue> = Arc::new(
        drafter::queue::sqlite::SqliteQueue::open(&dir.path().join("queue.sqlite"))
            .await
            .unwrap(),
    );
    let job = enqueue_and_claim(queue.as_ref(), "DEMO-1", "changelog:1").await;
    queue
        .complete(
            &job,
            "w",
            json!({"result": "pull_request", "repo": GH_REPO, "number": GH_PR,
                   "branch": "drafter/DEMO-1-fix-the-greeting",
                   "url": "https://github.com/acme/widgets/pull/2"}),
        )
        .await
        .unwrap();
    let policy = drafter::policy::parse(
        &format!(
            r#"version = 1

[teams.demo]
projects = ["DEMO"]
repos = [{{ name = "{GH_REPO}", bases = ["main"] }}]
triggers = {{ anyone = true }}
reviewers = ["alice"]
"#
        ),
        std::path::Path::new("policy.toml"),
    )
    .unwrap();
    let approvals = server::Approvals {
        policy: Arc::new(drafter::policy::Current::new(policy)),
        directory: Arc::new(drafter::policy::NoGroups),
    };
    // Nothing listens there: with a `reviewers` list and no cap reached, GitHub is not called.
    let forge = unreachable_forge();
    let state = AppState {
        readiness: server::queue_readiness(queue.clone()),
        queue: queue.clone(),
        jira: cloud_cfg("https://jira.example.com"),
        webhook_secret: Some(Secret::new(SECRET)),
        max_attempts: 3,
        approvals: Some(approvals),
        github: Some(server::GithubHooks {
            secret: Some(Secret::new(SECRET)),
            bot_login: Some("drafter-bot".into()),
            forge: Arc::new(forge),
            remote_links: false,
            identities: Default::default(),
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    GithubServer {
        url,
        queue,
        job,
        http: reqwest::Client::new(),
        _dir: dir,
        _stop: tx,
    }
}

impl GithubServer {
    async fn send(&self, event: &str, delivery: &str, payload: &Value) -> (u16, Value) {
        support::github_review::deliver(
            &self.http,
            &self.url,
            event,
            delivery,
            payload,
            Some(SECRET),
        )
        .await
    }

    async fn job(&self) -> Job {
        self.queue.get(&self.job).await.unwrap().unwrap()
    }

    /// The review triggers the job holds.
    async fn review_triggers(&self) -> Vec<drafter::queue::ReviewRef> {
        self.job()
            .await
            .triggers
            .into_iter()
            .filter_map(|t| t.review.map(|r| *r))
            .collect()
    }
}

/// A webhook set to `application/x-www-form-urlencoded` sends the same JSON as the form field `payload`, signed as
/// sent (https://docs.github.com/en/webhooks/using-webhooks/creating-webhooks): drafter reads it like JSON, and the
/// same comment delivered again as JSON is a duplicate. An outdated line comment (`line: null`) keeps its
/// `original_line`.
#[tokio::test]
async fn a_form_encoded_delivery_is_read_like_json() {
    let s = start_github().await;
    let mut p = gh_review_comment(
        "created",
        284312630,
        "alice",
        "@drafter-bot use more emoji here",
    );
    p["comment"]["line"] = Value::Null;
    let (status, body) = support::github_review::deliver_form(
        &s.http,
        &s.url,
        "pull_request_review_comment",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &p,
        SECRET,
    )
    .await;
    assert_eq!(
        (status, &body["status"], &body["iteration"]),
        (202, &json!("created"), &json!(1)),
        "{body}"
    );
    let (status, body) = s
        .send("pull_request_review_comment", "another-delivery", &p)
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("duplicate")),
        "{body}"
    );
    let triggers = s.review_triggers().await;
    assert_eq!(triggers.len(), 1, "{triggers:#?}");
    let t = &triggers[0];
    assert_eq!(
        (
            t.kind.as_str(),
            t.comment_id,
            t.author.as_str(),
            t.path.as_deref(),
            t.line
        ),
        ("line", 284312630, "alice", Some("greet.py"), Some(265))
    );

    // A form body signed with another secret is refused before it is read; one without `payload` is a clear 400.
    let form = |payload: &str| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", payload)
            .finish()
    };
    let post = |body: String, sig: String| {
        s.http
            .post(&s.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-github-event", "pull_request_review_comment")
            .header("x-github-delivery", "d-form")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
    };
    let forged = form(&p.to_string());
    let resp = post(
        forged.clone(),
        support::github_review::sign("not-the-secret", forged.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let empty = "other=1".to_string();
    let resp = post(
        empty.clone(),
        support::github_review::sign(SECRET, empty.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("payload")),
        "{answer}"
    );
    assert_eq!(s.review_triggers().await.len(), 1);
}

/// Only new comments start work: GitHub's `edited` and `deleted` deliveries of a comment that mentions the bot
/// (https://docs.github.com/en/webhooks/webhook-events-and-payloads#pull_request_review_comment: `changes.body.from`
/// on `edited`), a comment on a plain issue (no `issue.pull_request`), a review that only comments without a
/// mention (`body: null`), GitHub's `ping`, an event drafter does not read, and the bot's own comments (as a GitHub
/// App it is `drafter-bot[bot]`, type `Bot`) are all accepted and ignored.
#[tokio::test]
async fn edits_deletes_plain_issues_pings_and_the_bots_own_comments_start_nothing() {
    let s = start_github().await;
    let mut edited = gh_review_comment("edited", 11, "alice", "@drafter-bot rename it");
    edited["changes"] = json!({"body": {"from": "rename it"}});
    let deleted = gh_review_comment("deleted", 12, "alice", "@drafter-bot rename it");
    let mut issue_edited = gh_issue_comment(13, "alice", "@drafter-bot rename it", true);
    issue_edited["action"] = json!("edited");
    issue_edited["changes"] = json!({"body": {"from": "rename it"}});
    let plain_issue = gh_issue_comment(14, "alice", "@drafter-bot rename it", false);
    let quiet_review = gh_review(15, "alice", "commented", None);
    let mut dismissed = gh_review(16, "alice", "dismissed", Some("@drafter-bot"));
    dismissed["action"] = json!("dismissed");
    let mut own = gh_issue_comment(17, "drafter-bot[bot]", "@drafter-bot follow-up", true);
    own["comment"]["user"]["type"] = json!("Bot");
    let own_line = gh_review_comment("created", 18, "drafter-bot", "@drafter-bot again");
    let ping = json!({
        "zen": "Design for failure.", "hook_id": 109948940,
        "hook": {"type": "Repository", "id": 109948940, "name": "web", "active": true,
                 "events": ["pull_request_review_comment", "pull_request_review", "issue_comment", "pull_request"],
                 "config": {"content_type": "json", "insecure_ssl": "0", "url": "https://drafter.example/webhooks/github"},
                 "updated_at": "2019-05-15T15:20:49Z", "created_at": "2019-05-15T15:20:49Z"},
        "repository": gh_repository(), "sender": gh_user("alice", 21031067, "User")
    });
    let star = json!({"action": "created", "starred_at": "2019-05-15T15:20:40Z",
                      "repository": gh_repository(), "sender": gh_user("alice", 21031067, "User")});
    for (event, payload) in [
        ("pull_request_review_comment", &edited),
        ("pull_request_review_comment", &deleted),
        ("issue_comment", &issue_edited),
        ("issue_comment", &plain_issue),
        ("pull_request_review", &quiet_review),
        ("pull_request_review", &dismissed),
        ("issue_comment", &own),
        ("pull_request_review_comment", &own_line),
        ("ping", &ping),
        ("star", &star),
    ] {
        let (status, body) = s.send(event, &format!("d-{event}"), payload).await;
        assert_eq!(
            (status, &body["status"]),
            (202, &json!("ignored")),
            "{event} {}: {body}",
            payload["action"]
        );
    }
    let job = s.job().await;
    assert_eq!((job.state, job.iterations), (JobState::Succeeded, 0));
    assert!(s.review_triggers().await.is_empty());

    // The same shapes, created: a conversation comment on the pull request and a review requesting changes with no
    // body at all go into one iteration.
    let (_, body) = s
        .send(
            "issue_comment",
            "d-new-1",
            &gh_issue_comment(21, "alice", "@drafter-bot rename it", true),
        )
        .await;
    assert_eq!(body["status"], "created", "{body}");
    let (_, body) = s
        .send(
            "pull_request_review",
            "d-new-2",
            &gh_review(22, "alice", "changes_requested", None),
        )
        .await;
    assert_eq!(body["status"], "absorbed", "{body}");
    let kinds: Vec<(String, u64)> = s
        .review_triggers()
        .await
        .into_iter()
        .map(|t| (t.kind, t.comment_id))
        .collect();
    assert_eq!(
        kinds,
        vec![("conversation".to_string(), 21), ("review".to_string(), 22)]
    );
}

/// GitHub caps a webhook payload at 25 MB (https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap),
/// and a pull request's description and a comment may each be 65,536 characters. Non-ASCII text is escaped in JSON
/// and again, per byte, in a form-encoded delivery: such a delivery is several MiB, and is read. Past GitHub's cap
/// is 413, as for Jira past its own.
#[tokio::test]
async fn a_github_delivery_as_large_as_github_sends_is_read() {
    let s = start_github().await;
    let mut p = gh_review_comment("created", 284312631, "alice", "@drafter-bot tidy this");
    let wide = "\u{1F600}\u{0007}".repeat(32_768);
    p["pull_request"]["body"] = json!(wide);
    p["comment"]["body"] = json!(format!("@drafter-bot tidy this {wide}"));
    let (status, body) = support::github_review::deliver_form(
        &s.http,
        &s.url,
        "pull_request_review_comment",
        "big-delivery",
        &p,
        SECRET,
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("created")),
        "{body}"
    );

    p["pull_request"]["body"] = json!("x".repeat(26 << 20));
    let (status, _) = s
        .send("pull_request_review_comment", "huge-delivery", &p)
        .await;
    assert_eq!(status, 413);
}

/// A closed pull request is recorded before it is answered (GitHub does not redeliver a failed delivery by itself:
/// https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries): when the queue cannot
/// record it the answer is 503, so the failure shows in GitHub's delivery log for an operator to redeliver, and Jira
/// is not called at all (nothing listens at its address here).
#[tokio::test]
async fn a_closed_pull_request_the_queue_cannot_record_is_answered_503() {
    let queue = Arc::new(MemQueue::default());
    let now = Utc::now();
    queue.state.lock().unwrap().jobs.push(Job {
        id: "job-1".into(),
        ticket: "DEMO-1".into(),
        project: "DEMO".into(),
        state: JobState::Succeeded,
        attempts: 1,
        max_attempts: 3,
        not_before: now,
        lease_owner: None,
        lease_expires: None,
        triggers: vec![],
        last_error: None,
        outcome: Some(
            json!({"result": "pull_request", "repo": "acme/widgets", "number": 4,
            "url": "https://github.example/acme/widgets/pull/4", "branch": "drafter/DEMO-1-x"}),
        ),
        progress: json!({}),
        created_at: now,
        updated_at: now,
        policy_hash: None,
        approval: None,
        lease_gen: 0,
        iterations: 0,
    });
    let forge = unreachable_forge();
    let state = AppState {
        readiness: server::queue_readiness(queue.clone()),
        queue: queue.clone(),
        jira: cloud_cfg("http://127.0.0.1:9"),
        webhook_secret: Some(Secret::new(SECRET)),
        max_attempts: 3,
        approvals: None,
        github: Some(server::GithubHooks {
            secret: Some(Secret::new(SECRET)),
            bot_login: Some("drafter-bot".into()),
            forge: Arc::new(forge),
            remote_links: true,
            identities: Default::default(),
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    let closed = json!({"action": "closed", "number": 4,
        "pull_request": {"number": 4, "merged": true, "state": "closed", "title": "[DEMO-1] x",
            "html_url": "https://github.example/acme/widgets/pull/4", "head": {"ref": "drafter/DEMO-1-x"}},
        "repository": {"full_name": "acme/widgets"}});
    let (status, body) = support::github_review::deliver(
        &reqwest::Client::new(),
        &url,
        "pull_request",
        "d-1",
        &closed,
        Some(SECRET),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["reason"], "the job queue is unavailable; retry later",
        "{body}"
    );
}
