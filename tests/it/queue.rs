//! The queue's conformance suite: every scenario runs against both backends (SQLite in a temporary file, PostgreSQL
//! in a fresh database on a real server, see `support/postgres.rs`), so the two cannot drift apart. Backend-specific
//! checks (several SQLite handles and processes on one file, WAL mode; concurrent PostgreSQL migrations, password
//! scrubbing, the database clock) follow at the end.
//!
//! One file, over 700 lines, on purpose: each scenario is written once over `Arc<dyn Queue>` and the `conformance!`
//! list below runs every one against both backends; the backend-specific checks and the upgrade tests share its
//! fixtures.

use crate::support;

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drafter::queue::postgres::PgQueue;
use drafter::queue::sqlite::SqliteQueue;
use drafter::queue::{
    Approval, ApprovalRequest, ApprovalSubject, Approved, ApprovingComment, Claim, Enqueued,
    Failure, JobFilter, JobState, LedgerEntry, LinkRecorded, LinkState, LinkUpdate, NewJob, Pause,
    Queue, QueueError, Reopened, ReviewRef, ReviewTrigger, Trigger, UsageTotal,
};
use serde_json::json;
use support::postgres::TestDatabase;

/// A queue plus whatever must outlive it (the temporary directory, the test database). Fields drop in order.
struct Fixture {
    queue: Arc<dyn Queue>,
    _keep: Box<dyn Any + Send>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(&dir.path().join("data/queue.sqlite"))
        .await
        .unwrap();
    Fixture {
        queue: Arc::new(queue),
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Fixture {
    let db = TestDatabase::create().await;
    let queue = PgQueue::connect(&db.url).await.unwrap();
    Fixture {
        queue: Arc::new(queue),
        _keep: Box::new(db),
    }
}

fn trigger(delivery: &str) -> Trigger {
    Trigger {
        delivery: delivery.to_string(),
        source: "webhook:jira:issue_updated".into(),
        triggered_by: Some("712020:alice".into()),
        text: Some(format!("please look ({delivery})")),
        // Millisecond precision: what both backends keep of an instant inside JSON, exactly.
        at: DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap(),
        review: None,
    }
}

fn new_job(ticket: &str, delivery: &str) -> NewJob {
    NewJob {
        ticket: ticket.to_string(),
        project: ticket.split('-').next().unwrap().to_string(),
        trigger: trigger(delivery),
        max_attempts: 3,
    }
}

fn worker(name: &str) -> Claim {
    Claim {
        worker: name.to_string(),
        lease: Duration::from_secs(60),
        exclude_projects: vec![],
    }
}

fn short_lease(name: &str) -> Claim {
    Claim {
        lease: Duration::from_secs(1),
        ..worker(name)
    }
}

async fn created(q: &Arc<dyn Queue>, ticket: &str, delivery: &str) -> String {
    match q.enqueue(new_job(ticket, delivery)).await.unwrap() {
        Enqueued::Created(id) => id,
        other => panic!("expected a new job for {ticket}, got {other:?}"),
    }
}

fn assert_lease_lost(r: Result<impl std::fmt::Debug, QueueError>, id: &str) {
    match r {
        Err(QueueError::LeaseLost(got)) => assert_eq!(got, id),
        other => panic!("expected LeaseLost({id}), got {other:?}"),
    }
}

// ---------------------------------------------------------------- the scenarios, each over `Arc<dyn Queue>`

async fn enqueue_dedups_and_absorbs(q: Arc<dyn Queue>) {
    let first = new_job("ABC-1", "d1");
    let sent = first.trigger.clone();
    let Enqueued::Created(id) = q.enqueue(first.clone()).await.unwrap() else {
        panic!("first enqueue must create")
    };
    assert_eq!(
        q.enqueue(first).await.unwrap(),
        Enqueued::Duplicate(id.clone())
    );
    assert_eq!(
        q.enqueue(new_job("ABC-1", "d2")).await.unwrap(),
        Enqueued::Absorbed(id.clone())
    );
    assert_eq!(
        q.enqueue(new_job("ABC-1", "d2")).await.unwrap(),
        Enqueued::Duplicate(id.clone())
    );

    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.ticket, "ABC-1");
    assert_eq!(job.project, "ABC");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!((job.attempts, job.max_attempts), (0, 3));
    assert_eq!(job.lease_owner, None);
    assert_eq!(job.triggers.len(), 2);
    assert_eq!(job.triggers[0], sent, "triggers round-trip exactly");
    assert_eq!(job.triggers[1].delivery, "d2");
    assert_eq!(job.progress, json!({}));
    assert!(job.not_before <= Utc::now() + chrono::Duration::seconds(1));

    let other = created(&q, "ABC-2", "d3").await;
    assert_ne!(other, id);

    // A finished job absorbs nothing: the next trigger for the ticket makes a new job; old deliveries stay known.
    let c = q.claim(&worker("w")).await.unwrap().unwrap();
    assert_eq!(c.id, id);
    q.complete(&id, "w", json!({"pr": null})).await.unwrap();
    let again = created(&q, "ABC-1", "d4").await;
    assert_ne!(again, id);
    assert_eq!(
        q.enqueue(new_job("ABC-1", "d1")).await.unwrap(),
        Enqueued::Duplicate(id)
    );
}

async fn concurrent_enqueues_of_one_delivery(q: Arc<dyn Queue>) {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.enqueue(new_job("DUP-1", "same")).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let created: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Enqueued::Created(_)))
        .collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let id = created[0].job_id().to_string();
    assert!(results
        .iter()
        .all(|r| r == &Enqueued::Created(id.clone()) || r == &Enqueued::Duplicate(id.clone())));
    let jobs = q
        .list(&JobFilter {
            ticket: Some("DUP-1".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].triggers.len(), 1);
}

async fn concurrent_enqueues_for_one_ticket(q: Arc<dyn Queue>) {
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.enqueue(new_job("ONE-1", &format!("delivery-{i}"))).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let id = results
        .iter()
        .find_map(|r| match r {
            Enqueued::Created(id) => Some(id.clone()),
            _ => None,
        })
        .expect("one enqueue creates the job");
    let created = results
        .iter()
        .filter(|r| matches!(r, Enqueued::Created(_)))
        .count();
    let absorbed = results
        .iter()
        .filter(|r| r == &&Enqueued::Absorbed(id.clone()))
        .count();
    let overflow = results
        .iter()
        .filter(|r| r == &&Enqueued::Overflow(id.clone()))
        .count();
    let kept = drafter::queue::MAX_TRIGGERS;
    assert_eq!(
        (created, absorbed, overflow),
        (1, kept - 1, 50 - kept),
        "{results:?}"
    );
    let job = q.get(&id).await.unwrap().unwrap();
    let deliveries: HashSet<_> = job.triggers.iter().map(|t| t.delivery.clone()).collect();
    assert_eq!(job.triggers.len(), kept);
    assert_eq!(deliveries.len(), kept, "every kept trigger recorded once");
    assert_eq!(
        q.list(&JobFilter {
            ticket: Some("ONE-1".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

async fn claim_order_and_excluded_projects(q: Arc<dyn Queue>) {
    let a1 = created(&q, "AAA-1", "o1").await;
    let b1 = created(&q, "BBB-1", "o2").await;
    let a2 = created(&q, "AAA-2", "o3").await;

    let busy = Claim {
        exclude_projects: vec!["AAA".into(), "ZZZ".into()],
        ..worker("w1")
    };
    let job = q.claim(&busy).await.unwrap().unwrap();
    assert_eq!(job.id, b1, "AAA is excluded");
    assert!(q.claim(&busy).await.unwrap().is_none());

    let before = Utc::now();
    let job = q.claim(&worker("w2")).await.unwrap().unwrap();
    assert_eq!(job.id, a1, "oldest first");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.lease_owner.as_deref(), Some("w2"));
    let expires = job.lease_expires.unwrap();
    assert!(
        expires > before + chrono::Duration::seconds(55),
        "{expires}"
    );
    assert!(
        expires < Utc::now() + chrono::Duration::seconds(65),
        "{expires}"
    );
    let stored = q.get(&a1).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.state,
            stored.attempts,
            stored.lease_owner,
            stored.lease_expires
        ),
        (JobState::Running, 1, Some("w2".to_string()), Some(expires))
    );

    assert_eq!(q.claim(&worker("w2")).await.unwrap().unwrap().id, a2);
    assert!(q.claim(&worker("w3")).await.unwrap().is_none());
}

async fn concurrent_claimers_take_each_job_once(q: Arc<dyn Queue>) {
    let enqueues: Vec<_> = (0..200)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                q.enqueue(new_job(&format!("MANY-{i}"), &format!("m{i}")))
                    .await
            })
        })
        .collect();
    for e in enqueues {
        assert!(matches!(e.await.unwrap().unwrap(), Enqueued::Created(_)));
    }
    let claimers: Vec<_> = (0..8)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                let me = format!("worker-{w}");
                let mut mine = Vec::new();
                while let Some(job) = q.claim(&worker(&me)).await.unwrap() {
                    assert_eq!(job.lease_owner.as_deref(), Some(me.as_str()));
                    assert_eq!(job.attempts, 1, "claimed once only");
                    q.complete(&job.id, &me, json!({})).await.unwrap();
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut busy_workers = 0;
    for c in claimers {
        let mine = c.await.unwrap();
        busy_workers += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(unique.len(), 200, "a job was claimed twice");
    assert!(busy_workers > 1, "claims were spread over workers");
    let done = q
        .list(&JobFilter {
            state: Some(JobState::Succeeded),
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 200);
}

async fn expired_lease_is_reclaimed(q: Arc<dyn Queue>) {
    let id = created(&q, "LEASE-1", "l1").await;
    let first = q.claim(&short_lease("old")).await.unwrap().unwrap();
    assert_eq!(first.id, id);
    assert!(
        q.claim(&short_lease("new")).await.unwrap().is_none(),
        "leased"
    );
    assert!(q
        .heartbeat(&id, "old", Duration::from_secs(1))
        .await
        .unwrap());
    assert!(
        !q.heartbeat(&id, "new", Duration::from_secs(1))
            .await
            .unwrap(),
        "only the holder renews"
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = q.claim(&worker("new")).await.unwrap().unwrap();
    assert_eq!(second.id, id);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.lease_owner.as_deref(), Some("new"));

    assert!(!q
        .heartbeat(&id, "old", Duration::from_secs(60))
        .await
        .unwrap());
    assert_lease_lost(q.complete(&id, "old", json!({})).await, &id);
    assert_lease_lost(
        q.fail(
            &id,
            "old",
            Failure::Permanent {
                error: "late".into(),
            },
        )
        .await,
        &id,
    );
    assert_lease_lost(q.release(&id, "old").await, &id);
    assert_lease_lost(q.set_progress(&id, "old", "k", json!(1)).await, &id);
    q.complete(&id, "new", json!({"ok": true})).await.unwrap();
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.outcome, Some(json!({"ok": true})));
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
}

async fn worker_lost_on_last_attempt_fails_the_job(q: Arc<dyn Queue>) {
    let mut job = new_job("LOST-1", "x1");
    job.max_attempts = 1;
    let id = q.enqueue(job).await.unwrap().job_id().to_string();
    assert_eq!(q.claim(&short_lease("dies")).await.unwrap().unwrap().id, id);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(q.claim(&worker("next")).await.unwrap().is_none());
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("worker lost") && error.contains("gave up after 1 attempts"),
        "{error}"
    );
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
}

async fn retryable_failure_backs_off(q: Arc<dyn Queue>) {
    let id = created(&q, "RETRY-1", "r1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let state = q
        .fail(
            &id,
            "w",
            Failure::Retryable {
                error: "HTTP 503".into(),
                retry_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued);
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
    let wait = job.not_before - Utc::now();
    assert!(
        wait > chrono::Duration::seconds(25) && wait <= chrono::Duration::seconds(31),
        "first backoff is 30 s, got {wait}"
    );
    assert!(
        q.claim(&worker("w")).await.unwrap().is_none(),
        "not before its time"
    );

    // A Retry-After longer than the backoff wins.
    let id2 = created(&q, "RETRY-2", "r2").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.fail(
        &id2,
        "w",
        Failure::Retryable {
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(600)),
        },
    )
    .await
    .unwrap();
    let wait = q.get(&id2).await.unwrap().unwrap().not_before - Utc::now();
    assert!(wait > chrono::Duration::seconds(590), "{wait}");
}

async fn permanent_failure_and_exhausted_attempts(q: Arc<dyn Queue>) {
    let id = created(&q, "PERM-1", "p1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let state = q
        .fail(
            &id,
            "w",
            Failure::Permanent {
                error: "the model refused".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("the model refused"));
    assert_eq!(job.lease_owner, None);
    assert!(q.claim(&worker("w")).await.unwrap().is_none());

    let mut short = new_job("PERM-2", "p2");
    short.max_attempts = 1;
    let id = q.enqueue(short).await.unwrap().job_id().to_string();
    q.claim(&worker("w")).await.unwrap().unwrap();
    let state = q
        .fail(
            &id,
            "w",
            Failure::Retryable {
                error: "timeout".into(),
                retry_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(
        job.last_error.as_deref(),
        Some("timeout (gave up after 1 attempts)")
    );
}

async fn release_does_not_count_an_attempt(q: Arc<dyn Queue>) {
    let id = created(&q, "REL-1", "rel1").await;
    assert_eq!(q.claim(&worker("a")).await.unwrap().unwrap().attempts, 1);
    q.release(&id, "a").await.unwrap();
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
    assert!(job.not_before <= Utc::now() + chrono::Duration::seconds(1));
    let again = q.claim(&worker("b")).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (id.as_str(), 1));
    assert_lease_lost(q.release(&id, "a").await, &id);
}

async fn cancel_stops_a_running_job(q: Arc<dyn Queue>) {
    let id = created(&q, "CAN-1", "c1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    assert!(q.cancel(&id).await.unwrap());
    assert!(!q
        .heartbeat(&id, "w", Duration::from_secs(60))
        .await
        .unwrap());
    assert_lease_lost(q.complete(&id, "w", json!({})).await, &id);
    assert!(!q.cancel(&id).await.unwrap(), "already finished");
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
    assert!(q.claim(&worker("w")).await.unwrap().is_none());

    let queued = created(&q, "CAN-2", "c2").await;
    assert!(q.cancel(&queued).await.unwrap());
    assert!(q.claim(&worker("w")).await.unwrap().is_none());

    let done = created(&q, "CAN-3", "c3").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.complete(&done, "w", json!({})).await.unwrap();
    assert!(!q.cancel(&done).await.unwrap());
    assert_eq!(
        q.get(&done).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

async fn retry_requeues_failed_and_cancelled(q: Arc<dyn Queue>) {
    let id = created(&q, "RTY-1", "t1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.fail(
        &id,
        "w",
        Failure::Permanent {
            error: "broken".into(),
        },
    )
    .await
    .unwrap();
    assert!(q.retry(&id).await.unwrap());
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!(
        job.last_error.as_deref(),
        Some("broken"),
        "the reason is kept"
    );
    assert!(!q.retry(&id).await.unwrap(), "queued: nothing to retry");
    let again = q.claim(&worker("w")).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (id.as_str(), 1));
    q.complete(&id, "w", json!({})).await.unwrap();
    assert!(!q.retry(&id).await.unwrap(), "succeeded: nothing to retry");

    // A cancelled job cannot be reopened while a newer job for its ticket is open.
    let old = created(&q, "RTY-2", "t2").await;
    assert!(q.cancel(&old).await.unwrap());
    let newer = created(&q, "RTY-2", "t3").await;
    assert!(!q.retry(&old).await.unwrap());
    assert_eq!(
        q.get(&old).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(q.cancel(&newer).await.unwrap());
    assert!(
        q.retry(&old).await.unwrap(),
        "once the ticket has no open job"
    );
    assert_eq!(q.get(&old).await.unwrap().unwrap().state, JobState::Queued);
}

async fn progress_is_recorded_for_the_lease_holder(q: Arc<dyn Queue>) {
    let id = created(&q, "PROG-1", "pg1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.set_progress(&id, "w", "branch_pushed", json!("abc123"))
        .await
        .unwrap();
    q.set_progress(&id, "w", "pr", json!({"number": 7}))
        .await
        .unwrap();
    q.set_progress(&id, "w", "branch_pushed", json!("def456"))
        .await
        .unwrap();
    let odd = "a.\"b'$[0]";
    q.set_progress(&id, "w", odd, json!(true)).await.unwrap();
    let expected = json!({"branch_pushed": "def456", "pr": {"number": 7}, odd: true});
    assert_eq!(q.get(&id).await.unwrap().unwrap().progress, expected);
    assert_lease_lost(q.set_progress(&id, "intruder", "x", json!(1)).await, &id);

    // Progress survives a release and a new claim: that is what lets a retried job resume.
    q.release(&id, "w").await.unwrap();
    assert_lease_lost(q.set_progress(&id, "w", "x", json!(1)).await, &id);
    let job = q.claim(&worker("w2")).await.unwrap().unwrap();
    assert_eq!(job.progress, expected);
}

async fn list_filters_and_orders_newest_first(q: Arc<dyn Queue>) {
    let one = created(&q, "LA-1", "ls1").await;
    let two = created(&q, "LB-2", "ls2").await;
    let three = created(&q, "LC-3", "ls3").await;
    let busy = Claim {
        exclude_projects: vec!["LA".into()],
        ..worker("w")
    };
    assert_eq!(q.claim(&busy).await.unwrap().unwrap().id, two);
    q.fail(&two, "w", Failure::Permanent { error: "no".into() })
        .await
        .unwrap();

    let ids = |jobs: Vec<drafter::queue::Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = q.list(&JobFilter::default()).await.unwrap();
    assert_eq!(ids(all), vec![three.clone(), two.clone(), one.clone()]);
    let failed = JobFilter {
        state: Some(JobState::Failed),
        ..JobFilter::default()
    };
    assert_eq!(ids(q.list(&failed).await.unwrap()), vec![two.clone()]);
    let ticket = JobFilter {
        ticket: Some("LA-1".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(q.list(&ticket).await.unwrap()), vec![one.clone()]);
    let both = JobFilter {
        state: Some(JobState::Queued),
        ticket: Some("LC-3".into()),
        limit: 0,
    };
    assert_eq!(ids(q.list(&both).await.unwrap()), vec![three.clone()]);
    let none = JobFilter {
        state: Some(JobState::Failed),
        ticket: Some("LC-3".into()),
        limit: 0,
    };
    assert!(q.list(&none).await.unwrap().is_empty());
    let limited = JobFilter {
        limit: 2,
        ..JobFilter::default()
    };
    assert_eq!(ids(q.list(&limited).await.unwrap()), vec![three, two]);
}

/// An idle worker waiting for work wakes as soon as this process enqueues a job, not at the end of its poll
/// interval; and with nothing added it waits the whole interval.
async fn an_enqueue_wakes_an_idle_worker(q: Arc<dyn Queue>) {
    let idle = Duration::from_secs(30);
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            q.wait_for_work(idle).await;
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    created(&q, "WAKE-1", "wake-d1").await;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the enqueue woke the waiting worker")
        .unwrap();
    assert!(waited < idle, "{waited:?}");
    // Nothing new: a short wait runs its full length.
    let t = std::time::Instant::now();
    q.wait_for_work(Duration::from_millis(200)).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
}

async fn unknown_jobs_and_ping(q: Arc<dyn Queue>) {
    q.ping().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&q.backend()));
    let missing = "j20000101T000000-00000000";
    assert!(q.get(missing).await.unwrap().is_none());
    assert!(!q
        .heartbeat(missing, "w", Duration::from_secs(1))
        .await
        .unwrap());
    assert!(matches!(
        q.complete(missing, "w", json!({})).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        q.cancel(missing).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        q.retry(missing).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        q.set_progress(missing, "w", "k", json!(1)).await,
        Err(QueueError::NotFound(_))
    ));
}

/// Now, cut to the millisecond: what both backends keep of an instant exactly.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn subject(ticket_sha256: &str) -> ApprovalSubject {
    ApprovalSubject {
        ticket_sha256: ticket_sha256.to_string(),
        repo: "acme/payments".into(),
        base: "main".into(),
    }
}

fn approval_request(reason: &str, expires_in: chrono::Duration) -> ApprovalRequest {
    let now = now_ms();
    ApprovalRequest {
        reason: reason.to_string(),
        approvers: vec!["712020:lead-lin".into(), "group:payments-leads".into()],
        requested_at: now,
        expires_at: now + expires_in,
        subject: subject(&"ab".repeat(32)),
    }
}

/// Enqueues a job for `ticket`, claims it as `worker` and parks it for approval; returns its id.
async fn awaiting(q: &Arc<dyn Queue>, ticket: &str, request: ApprovalRequest) -> String {
    let id = created(q, ticket, &format!("{ticket}-first")).await;
    let job = q.claim(&worker("w")).await.unwrap().unwrap();
    assert_eq!(job.id, id);
    q.await_approval(&id, "w", request).await.unwrap();
    id
}

async fn await_approval_only_by_the_lease_holder(q: Arc<dyn Queue>) {
    let id = created(&q, "APR-1", "a1").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let request = approval_request("label `needs-approval`", chrono::Duration::hours(1));
    assert_lease_lost(
        q.await_approval(&id, "intruder", request.clone()).await,
        &id,
    );
    assert_eq!(q.get(&id).await.unwrap().unwrap().state, JobState::Running);

    q.await_approval(&id, "w", request.clone()).await.unwrap();
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::AwaitingApproval);
    assert_eq!(
        job.attempts, 0,
        "parking for approval does not count an attempt"
    );
    assert_eq!((job.lease_owner, job.lease_expires), (None, None));
    assert_eq!(
        job.approval,
        Some(Approval {
            reason: request.reason.clone(),
            approvers: request.approvers.clone(),
            requested_at: request.requested_at,
            expires_at: request.expires_at,
            approved_by: None,
            approved_at: None,
            subject: Some(request.subject.clone()),
            comment_id: None,
        })
    );
    assert!(!job.approval.unwrap().is_approved());

    // The worker has let go: no heartbeat, no finishing, no second request; and nobody can claim it.
    assert!(!q
        .heartbeat(&id, "w", Duration::from_secs(60))
        .await
        .unwrap());
    assert_lease_lost(q.complete(&id, "w", json!({})).await, &id);
    assert_lease_lost(q.await_approval(&id, "w", request.clone()).await, &id);
    assert!(q.claim(&worker("w2")).await.unwrap().is_none());
    let awaiting = q
        .list(&JobFilter {
            state: Some(JobState::AwaitingApproval),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(awaiting.len(), 1);
    assert_eq!(awaiting[0].id, id);
    assert!(matches!(
        q.await_approval("j20000101T000000-00000000", "w", request)
            .await,
        Err(QueueError::NotFound(_))
    ));
}

async fn approve_queues_the_job_and_the_approval_is_kept(q: Arc<dyn Queue>) {
    let request = approval_request("touches payments", chrono::Duration::hours(1));
    let id = awaiting(&q, "APR-2", request.clone()).await;
    let before = now_ms();
    assert_eq!(
        q.approve(&id, "712020:lead-lin", None).await.unwrap(),
        Approved::Yes
    );
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(job.not_before <= Utc::now() + chrono::Duration::seconds(1));
    let approval = job.approval.unwrap();
    assert_eq!(approval.approved_by.as_deref(), Some("712020:lead-lin"));
    let at = approval.approved_at.unwrap();
    assert!(
        at >= before - chrono::Duration::seconds(1)
            && at <= Utc::now() + chrono::Duration::seconds(1)
    );
    assert_eq!(approval.reason, request.reason);
    assert_eq!(
        q.approve(&id, "someone-else", None).await.unwrap(),
        Approved::NotAwaiting,
        "already approved"
    );

    // Claimable at once; the approval stays on the job through this and later claims.
    let claimed = q.claim(&worker("w2")).await.unwrap().unwrap();
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.attempts, 1, "the parked attempt was not counted");
    assert!(claimed.approval.as_ref().unwrap().is_approved());
    q.release(&id, "w2").await.unwrap();
    let again = q.claim(&worker("w3")).await.unwrap().unwrap();
    assert_eq!(
        again.approval.as_ref().unwrap().approved_by.as_deref(),
        Some("712020:lead-lin")
    );

    // A new request replaces the old approval.
    q.await_approval(
        &id,
        "w3",
        approval_request("second", chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    let approval = q.get(&id).await.unwrap().unwrap().approval.unwrap();
    assert_eq!(approval.reason, "second");
    assert_eq!((approval.approved_by, approval.approved_at), (None, None));

    // Only a job awaiting approval can be approved.
    let queued = created(&q, "APR-3", "a3").await;
    assert_eq!(
        q.approve(&queued, "712020:lead-lin", None).await.unwrap(),
        Approved::NotAwaiting
    );
    assert_eq!(
        q.get(&queued).await.unwrap().unwrap().state,
        JobState::Queued
    );
    let done = q.claim(&worker("w")).await.unwrap().unwrap();
    q.complete(&done.id, "w", json!({})).await.unwrap();
    assert_eq!(
        q.approve(&done.id, "712020:lead-lin", None).await.unwrap(),
        Approved::NotAwaiting
    );
    assert!(matches!(
        q.approve("j20000101T000000-00000000", "x", None).await,
        Err(QueueError::NotFound(_))
    ));
}

/// Approvals by comment (issue 12.2): a comment created before the request (say, for an earlier job of the ticket)
/// approves nothing, a comment id approves at most one job ever (a redelivery or a replay against another job or a
/// later request does nothing), and the job keeps what was approved and by which comment.
async fn an_approving_comment_counts_once_and_only_after_the_request(q: Arc<dyn Queue>) {
    const LIN: &str = "712020:lead-lin";
    let comment = |id: &str, created: DateTime<Utc>| ApprovingComment {
        id: id.to_string(),
        created,
    };
    let request = approval_request("label `needs-approval`", chrono::Duration::hours(1));
    let asked = request.requested_at;
    let ids = [
        awaiting(&q, "CMT-1", request.clone()).await,
        awaiting(&q, "CMT-2", request.clone()).await,
        awaiting(&q, "CMT-3", request.clone()).await,
        awaiting(&q, "CMT-4", request.clone()).await,
    ];
    let after = asked + chrono::Duration::seconds(1);

    // Written before drafter asked: an approval of something earlier.
    for created in [asked - chrono::Duration::minutes(10), asked] {
        assert_eq!(
            q.approve(&ids[0], LIN, Some(&comment("900", created)))
                .await
                .unwrap(),
            Approved::CommentBeforeRequest,
            "{created}"
        );
    }
    let job = q.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::AwaitingApproval);
    assert_eq!(job.approval.as_ref().unwrap().approved_by, None);

    // A later comment approves, and the job records it with what was approved.
    assert_eq!(
        q.approve(&ids[0], LIN, Some(&comment("902", after)))
            .await
            .unwrap(),
        Approved::Yes
    );
    let approval = q.get(&ids[0]).await.unwrap().unwrap().approval.unwrap();
    assert_eq!(approval.approved_by.as_deref(), Some(LIN));
    assert_eq!(approval.comment_id.as_deref(), Some("902"));
    assert_eq!(approval.subject.as_ref(), Some(&request.subject));

    // The same comment again, for another job waiting since before it was written: nothing.
    assert_eq!(
        q.approve(&ids[1], LIN, Some(&comment("902", after)))
            .await
            .unwrap(),
        Approved::CommentAlreadyUsed
    );
    let job = q.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::AwaitingApproval);
    assert_eq!(job.approval.unwrap().approved_by, None);

    // One comment delivered for two jobs at once: exactly one is approved.
    let shared = comment("950", after);
    let (a, b) = tokio::join!(
        q.approve(&ids[2], LIN, Some(&shared)),
        q.approve(&ids[3], LIN, Some(&shared))
    );
    let mut got = vec![a.unwrap(), b.unwrap()];
    got.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(got, vec![Approved::CommentAlreadyUsed, Approved::Yes]);

    // The first job asks again (say its ticket changed): its old comment does not approve the new request.
    let again = q.claim(&worker("w2")).await.unwrap().unwrap();
    assert_eq!(again.id, ids[0]);
    q.await_approval(&ids[0], "w2", request.clone())
        .await
        .unwrap();
    let approval = q.get(&ids[0]).await.unwrap().unwrap().approval.unwrap();
    assert_eq!((approval.approved_by, approval.comment_id), (None, None));
    assert_eq!(
        q.approve(&ids[0], LIN, Some(&comment("902", after)))
            .await
            .unwrap(),
        Approved::CommentAlreadyUsed
    );
    // An operator's approval has no comment; a fresh comment still works for the other job.
    assert_eq!(
        q.approve(&ids[0], "cli:ops", None).await.unwrap(),
        Approved::Yes
    );
    assert_eq!(
        q.get(&ids[0])
            .await
            .unwrap()
            .unwrap()
            .approval
            .unwrap()
            .comment_id,
        None
    );
    assert_eq!(
        q.approve(&ids[1], LIN, Some(&comment("903", after)))
            .await
            .unwrap(),
        Approved::Yes
    );
}

async fn expired_approval_fails_the_job(q: Arc<dyn Queue>) {
    let request = approval_request(
        "label `needs-approval`",
        chrono::Duration::milliseconds(800),
    );
    let expected = format!(
        "approval expired: nobody approved by {} (label `needs-approval`)",
        request
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let id = awaiting(&q, "EXP-1", request).await;
    assert!(q.expire_approvals().await.unwrap().is_empty(), "not yet");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        q.approve(&id, "712020:lead-lin", None).await.unwrap(),
        Approved::NotAwaiting,
        "too late to approve"
    );
    // Any claim sweeps lapsed requests.
    assert!(q.claim(&worker("other")).await.unwrap().is_none());
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some(expected.as_str()));
    assert_eq!(job.approval.unwrap().approved_by, None);
    // The claim's sweep failed it; the ids are handed out once, for the ticket comment.
    assert_eq!(q.expire_approvals().await.unwrap(), vec![id.clone()]);
    assert!(q.expire_approvals().await.unwrap().is_empty());

    // expire_approvals sweeps by itself too.
    let second = awaiting(
        &q,
        "EXP-2",
        approval_request("r2", chrono::Duration::milliseconds(300)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(q.expire_approvals().await.unwrap(), vec![second.clone()]);
    let job = q.get(&second).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.last_error
            .unwrap()
            .starts_with("approval expired: nobody approved by "),
        "worded like the first"
    );
    // An operator may queue it again.
    assert!(q.retry(&second).await.unwrap());
    assert_eq!(
        q.get(&second).await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert!(q.expire_approvals().await.unwrap().is_empty());
}

async fn an_awaiting_job_absorbs_new_triggers_and_can_be_cancelled(q: Arc<dyn Queue>) {
    let id = awaiting(
        &q,
        "ABS-1",
        approval_request("r", chrono::Duration::hours(1)),
    )
    .await;
    assert_eq!(
        q.enqueue(new_job("ABS-1", "abs-2")).await.unwrap(),
        Enqueued::Absorbed(id.clone())
    );
    assert_eq!(
        q.enqueue(new_job("ABS-1", "abs-2")).await.unwrap(),
        Enqueued::Duplicate(id.clone())
    );
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::AwaitingApproval);
    assert_eq!(job.triggers.len(), 2);
    assert!(
        !q.retry(&id).await.unwrap(),
        "an awaiting job is still open"
    );

    assert!(q.cancel(&id).await.unwrap());
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        q.approve(&id, "712020:lead-lin", None).await.unwrap(),
        Approved::NotAwaiting
    );
    let newer = created(&q, "ABS-1", "abs-3").await;
    assert_ne!(newer, id);
}

async fn pause_blocks_every_claim_until_resume(q: Arc<dyn Queue>) {
    assert_eq!(q.paused().await.unwrap(), None);
    let running = created(&q, "PAU-1", "pa1").await;
    q.claim(&worker("w1")).await.unwrap().unwrap();
    let waiting = created(&q, "PAU-2", "pa2").await;

    let pause = Pause {
        by: "cli:ops".into(),
        reason: "incident 42".into(),
        at: now_ms(),
    };
    q.set_paused(Some(pause.clone())).await.unwrap();
    assert_eq!(q.paused().await.unwrap(), Some(pause));
    for w in ["w1", "w2", "w3"] {
        assert!(
            q.claim(&worker(w)).await.unwrap().is_none(),
            "{w} claimed while paused"
        );
    }
    // Running jobs go on: their leases are still renewed.
    assert!(q
        .heartbeat(&running, "w1", Duration::from_secs(60))
        .await
        .unwrap());
    // Triggers are still taken in.
    let third = created(&q, "PAU-3", "pa3").await;

    // A second pause replaces the first.
    let again = Pause {
        by: "712020:lead-lin".into(),
        reason: "budget review".into(),
        at: now_ms(),
    };
    q.set_paused(Some(again.clone())).await.unwrap();
    assert_eq!(q.paused().await.unwrap(), Some(again));
    assert!(q.claim(&worker("w2")).await.unwrap().is_none());

    q.set_paused(None).await.unwrap();
    assert_eq!(q.paused().await.unwrap(), None);
    assert_eq!(q.claim(&worker("w2")).await.unwrap().unwrap().id, waiting);
    assert_eq!(q.claim(&worker("w3")).await.unwrap().unwrap().id, third);
    assert_eq!(
        q.get(&waiting).await.unwrap().unwrap().attempts,
        1,
        "claims refused by the pause count no attempt"
    );
}

async fn cancel_running_cancels_every_running_job(q: Arc<dyn Queue>) {
    let a = created(&q, "CR-1", "cr1").await;
    let b = created(&q, "CR-2", "cr2").await;
    let parked = created(&q, "CR-3", "cr3").await;
    assert_eq!(q.claim(&worker("w1")).await.unwrap().unwrap().id, a);
    assert_eq!(q.claim(&worker("w2")).await.unwrap().unwrap().id, b);
    assert_eq!(q.claim(&worker("w3")).await.unwrap().unwrap().id, parked);
    q.await_approval(
        &parked,
        "w3",
        approval_request("r", chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    let queued = created(&q, "CR-4", "cr4").await;

    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(q.cancel_running().await.unwrap(), expected);
    // Their workers learn it at the next heartbeat, and can no longer finish them.
    assert!(!q
        .heartbeat(&a, "w1", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!q
        .heartbeat(&b, "w2", Duration::from_secs(60))
        .await
        .unwrap());
    assert_lease_lost(q.complete(&a, "w1", json!({})).await, &a);
    for id in [&a, &b] {
        let job = q.get(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!((job.lease_owner, job.lease_expires), (None, None));
    }
    assert_eq!(
        q.get(&parked).await.unwrap().unwrap().state,
        JobState::AwaitingApproval
    );
    assert_eq!(
        q.get(&queued).await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert!(q.cancel_running().await.unwrap().is_empty());
}

async fn policy_hash_is_set_by_the_lease_holder_and_kept(q: Arc<dyn Queue>) {
    let id = created(&q, "POL-1", "po1").await;
    assert_eq!(q.get(&id).await.unwrap().unwrap().policy_hash, None);
    q.claim(&worker("w")).await.unwrap().unwrap();
    let hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    q.set_policy_hash(&id, "w", hash).await.unwrap();
    assert_lease_lost(q.set_policy_hash(&id, "intruder", "sha256:0").await, &id);
    assert_eq!(
        q.get(&id).await.unwrap().unwrap().policy_hash.as_deref(),
        Some(hash)
    );
    q.release(&id, "w").await.unwrap();
    assert_lease_lost(q.set_policy_hash(&id, "w", "sha256:0").await, &id);
    let job = q.claim(&worker("w2")).await.unwrap().unwrap();
    assert_eq!(job.policy_hash.as_deref(), Some(hash), "kept across claims");
    let listed = q.list(&JobFilter::default()).await.unwrap();
    assert_eq!(listed[0].policy_hash.as_deref(), Some(hash));
    assert!(matches!(
        q.set_policy_hash("j20000101T000000-00000000", "w", hash)
            .await,
        Err(QueueError::NotFound(_))
    ));
}

async fn usage_totals_per_team_and_since(q: Arc<dyn Queue>) {
    let now = now_ms();
    let day_ago = now - chrono::Duration::days(1);
    let old = now - chrono::Duration::days(40);
    let usage = |job: &str, team: &str, input: u64, output: u64, cost: u64, at| LedgerEntry {
        job_id: job.into(),
        team: team.into(),
        model: "claude-sonnet-4-5".into(),
        input_tokens: input,
        output_tokens: output,
        cost_micros: cost,
        at,
    };
    for u in [
        usage("j-pay-1", "payments", 100_000, 50_000, 1_050_000, old),
        usage(
            "j-pay-1",
            "payments",
            10,
            5,
            200,
            now - chrono::Duration::hours(1),
        ),
        usage("j-pay-2", "payments", 1, 2, 3, now),
        usage(
            "j-web-1",
            "web",
            7,
            8,
            9_000,
            now - chrono::Duration::minutes(5),
        ),
        // Exactly at the boundary: counted (`since` is inclusive).
        usage("j-web-1", "web", 1, 1, 1, day_ago),
    ] {
        q.record_usage(&u).await.unwrap();
    }
    assert_eq!(
        q.usage_since("payments", day_ago).await.unwrap(),
        UsageTotal {
            tokens: 18,
            cost_micros: 203,
            calls: 2
        }
    );
    assert_eq!(
        q.usage_since("payments", old).await.unwrap(),
        UsageTotal {
            tokens: 150_018,
            cost_micros: 1_050_203,
            calls: 3
        }
    );
    assert_eq!(
        q.usage_since("web", day_ago).await.unwrap(),
        UsageTotal {
            tokens: 17,
            cost_micros: 9_001,
            calls: 2
        }
    );
    assert_eq!(
        q.usage_since("web", now).await.unwrap(),
        UsageTotal::default(),
        "nothing of web's is that recent"
    );
    assert_eq!(
        q.usage_since("nobody", old).await.unwrap(),
        UsageTotal::default()
    );
    assert_eq!(
        q.job_usage("j-pay-1").await.unwrap(),
        UsageTotal {
            tokens: 150_015,
            cost_micros: 1_050_200,
            calls: 2
        }
    );
    assert_eq!(q.job_usage("j-none").await.unwrap(), UsageTotal::default());
    // A value the database cannot hold is refused, not wrapped.
    assert!(matches!(
        q.record_usage(&usage("j-x", "web", u64::MAX, 0, 0, now))
            .await,
        Err(QueueError::Database(_))
    ));
    assert_eq!(q.usage_since("web", day_ago).await.unwrap().calls, 2);
}

async fn deliveries_of_finished_jobs_are_pruned_by_age(q: Arc<dyn Queue>) {
    // Finished: succeeded (with an absorbed second trigger), failed, cancelled.
    let done = created(&q, "PRN-1", "p1").await;
    assert_eq!(
        q.enqueue(new_job("PRN-1", "p1b")).await.unwrap(),
        Enqueued::Absorbed(done.clone())
    );
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.complete(&done, "w", json!({})).await.unwrap();
    let failed = created(&q, "PRN-2", "p2").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let permanent = Failure::Permanent { error: "no".into() };
    q.fail(&failed, "w", permanent).await.unwrap();
    let cancelled = created(&q, "PRN-3", "p3").await;
    assert!(q.cancel(&cancelled).await.unwrap());
    // Open: awaiting approval, running, queued; and one running now that finishes only once the rest are old.
    let awaiting = awaiting(
        &q,
        "PRN-6",
        approval_request("r", chrono::Duration::hours(1)),
    )
    .await;
    let running = created(&q, "PRN-5", "p5").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let late = created(&q, "PRN-7", "p7").await;
    q.claim(&worker("w")).await.unwrap().unwrap();
    let queued = created(&q, "PRN-4", "p4").await;

    assert_eq!(
        q.prune_deliveries(Duration::from_secs(86_400))
            .await
            .unwrap(),
        0,
        "nothing is a day old"
    );
    let age = Duration::from_secs(1);
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    q.complete(&late, "w", json!({})).await.unwrap();
    assert_eq!(
        q.prune_deliveries(age).await.unwrap(),
        4,
        "p1, p1b, p2, p3: old, and their jobs finished long enough ago"
    );

    // Open jobs keep their keys: a re-sent webhook is still a duplicate. So does a job that finished just now.
    for (delivery, ticket, id) in [
        ("p4", "PRN-4", &queued),
        ("p5", "PRN-5", &running),
        ("PRN-6-first", "PRN-6", &awaiting),
        ("p7", "PRN-7", &late),
    ] {
        assert_eq!(
            q.enqueue(new_job(ticket, delivery)).await.unwrap(),
            Enqueued::Duplicate(id.clone()),
            "{delivery}"
        );
    }
    // A pruned key is forgotten: re-sent after the retention, it starts a new job (its ticket has no open job).
    let again = created(&q, "PRN-1", "p1").await;
    assert_ne!(again, done);
    // Pruning forgets keys, never jobs.
    for id in [&done, &failed, &cancelled] {
        assert!(q.get(id).await.unwrap().is_some(), "{id}");
    }

    tokio::time::sleep(age + Duration::from_millis(500)).await;
    assert_eq!(
        q.prune_deliveries(age).await.unwrap(),
        1,
        "p7, now that its job has been finished for long enough"
    );
    assert_eq!(q.prune_deliveries(age).await.unwrap(), 0);
    assert_eq!(
        q.enqueue(new_job("PRN-1", "p1")).await.unwrap(),
        Enqueued::Duplicate(again),
        "the new job is open: its key is kept"
    );
}

/// Instantiates every scenario once per backend, as `sqlite_backend::<name>` and `postgres_backend::<name>`.
/// Anyone who can comment can add a trigger to an open job: it keeps at most `MAX_TRIGGERS`, and the rest are
/// recorded as seen (a redelivery stays a duplicate) but not kept.
async fn an_open_job_keeps_a_bounded_number_of_triggers(q: Arc<dyn Queue>) {
    let id = created(&q, "CAP-1", "c0").await;
    for i in 1..drafter::queue::MAX_TRIGGERS {
        assert_eq!(
            q.enqueue(new_job("CAP-1", &format!("c{i}"))).await.unwrap(),
            Enqueued::Absorbed(id.clone())
        );
    }
    for i in 0..30 {
        assert_eq!(
            q.enqueue(new_job("CAP-1", &format!("flood{i}")))
                .await
                .unwrap(),
            Enqueued::Overflow(id.clone()),
            "flood {i}"
        );
    }
    assert_eq!(
        q.enqueue(new_job("CAP-1", "flood3")).await.unwrap(),
        Enqueued::Duplicate(id.clone())
    );
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(job.triggers.len(), drafter::queue::MAX_TRIGGERS);
    assert!(job
        .triggers
        .iter()
        .all(|t| !t.delivery.starts_with("flood")));
}

/// A worker that stalls past its lease and reclaims the same job under the same worker id (one process) holds an
/// older fencing token than its new claim: the old one can no longer act, and `holds` says so before a side effect.
async fn every_claim_gets_a_new_fencing_token(q: Arc<dyn Queue>) {
    let id = created(&q, "FEN-1", "f1").await;
    let first = q.claim(&short_lease("w")).await.unwrap().unwrap();
    let old = first.lease_token().unwrap();
    assert!(q.holds(&id, &old).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        !q.holds(&id, &old).await.unwrap(),
        "an expired lease does not allow a side effect, even before anyone reclaims it"
    );
    let second = q.claim(&worker("w")).await.unwrap().unwrap();
    assert_eq!(second.id, id);
    assert_eq!(second.lease_gen, first.lease_gen + 1);
    let new = second.lease_token().unwrap();
    assert_ne!(old, new);
    assert!(!q.holds(&id, &old).await.unwrap());
    assert!(q.holds(&id, &new).await.unwrap());
    assert!(!q
        .heartbeat(&id, &old, Duration::from_secs(60))
        .await
        .unwrap());
    assert_lease_lost(q.set_progress(&id, &old, "k", json!(1)).await, &id);
    assert_lease_lost(q.set_policy_hash(&id, &old, "sha256:0").await, &id);
    assert_lease_lost(q.release(&id, &old).await, &id);
    assert_lease_lost(
        q.fail(&id, &old, Failure::Permanent { error: "x".into() })
            .await,
        &id,
    );
    assert_lease_lost(q.complete(&id, &old, json!({})).await, &id);
    assert!(q
        .heartbeat(&id, &new, Duration::from_secs(60))
        .await
        .unwrap());
    q.complete(&id, &new, json!({"ok": true})).await.unwrap();
    assert!(
        !q.holds(&id, &new).await.unwrap(),
        "a finished job is held by nobody"
    );
}

fn review(job: &str, delivery: &str, cap: u32) -> ReviewTrigger {
    ReviewTrigger {
        job_id: job.to_string(),
        trigger: Trigger {
            source: "webhook:github:pull_request_review_comment".into(),
            triggered_by: Some("github:alice".into()),
            text: Some(format!("@drafter-bot please ({delivery})")),
            review: Some(Box::new(ReviewRef {
                iteration: 0,
                repo: "acme/pay".into(),
                pr: 3,
                kind: "line".into(),
                comment_id: 11,
                author: "alice".into(),
                path: Some("src/lib.rs".into()),
                line: Some(7),
            })),
            ..trigger(delivery)
        },
        max_iterations: cap,
        max_attempts: 2,
    }
}

/// Claims the job (it must be the only claimable one) and completes it.
async fn run_to_success(q: &Arc<dyn Queue>, id: &str) {
    let job = q.claim(&worker("w1")).await.unwrap().expect("claimable");
    assert_eq!(job.id, id);
    let token = job.lease_token().unwrap();
    q.complete(
        id,
        &token,
        json!({"result": "pull_request", "repo": "acme/pay", "number": 3}),
    )
    .await
    .unwrap();
}

async fn review_comments_reopen_a_finished_job_up_to_the_cap(q: Arc<dyn Queue>) {
    let id = created(&q, "REV-1", "assign-1").await;
    // Only a finished job reopens: while it first runs, a review comment changes nothing (and is not recorded).
    let job = q.claim(&worker("w1")).await.unwrap().unwrap();
    assert_eq!(
        q.reopen_for_review(review(&id, "c1", 2)).await.unwrap(),
        Reopened::Busy(JobState::Running)
    );
    q.complete(
        &id,
        &job.lease_token().unwrap(),
        json!({"result": "pull_request"}),
    )
    .await
    .unwrap();

    assert_eq!(
        q.reopen_for_review(review(&id, "c1", 2)).await.unwrap(),
        Reopened::Iteration(1)
    );
    assert_eq!(
        q.reopen_for_review(review(&id, "c1", 2)).await.unwrap(),
        Reopened::Duplicate
    );
    // A second comment before the iteration starts joins it.
    assert_eq!(
        q.reopen_for_review(review(&id, "c2", 2)).await.unwrap(),
        Reopened::Joined(1)
    );
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.iterations, job.attempts, job.max_attempts),
        (JobState::Queued, 1, 0, 2)
    );
    let tagged: Vec<(String, u32)> = job
        .triggers
        .iter()
        .filter_map(|t| Some((t.delivery.clone(), t.review.as_ref()?.iteration)))
        .collect();
    assert_eq!(tagged, vec![("c1".to_string(), 1), ("c2".to_string(), 1)]);
    assert_eq!(
        job.triggers[1].review,
        review(&id, "c1", 2).trigger.review.map(|mut r| {
            r.iteration = 1;
            r
        }),
        "the review reference round-trips"
    );

    // The iteration runs like any attempt. A comment while it runs waits for the next iteration, which starts once
    // this one has finished (even failed), and not before.
    let claimed = q.claim(&worker("w1")).await.unwrap().unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.iterations, claimed.attempts),
        (id.as_str(), 1, 1)
    );
    assert_eq!(
        q.reopen_for_review(review(&id, "c3", 2)).await.unwrap(),
        Reopened::Pending(2)
    );
    assert_eq!(
        q.reopen_pending(&id, 2).await.unwrap(),
        None,
        "still running"
    );
    q.fail(
        &id,
        &claimed.lease_token().unwrap(),
        Failure::Permanent {
            error: "boom".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        q.reopen_pending(&id, 1).await.unwrap(),
        None,
        "past the cap"
    );
    assert_eq!(q.reopen_pending(&id, 2).await.unwrap(), Some(2));
    let job = q.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.iterations, job.attempts),
        (JobState::Queued, 2, 0)
    );
    assert_eq!(
        job.triggers
            .last()
            .unwrap()
            .review
            .as_ref()
            .unwrap()
            .iteration,
        2
    );
    run_to_success(&q, &id).await;
    assert_eq!(
        q.reopen_pending(&id, 9).await.unwrap(),
        None,
        "nothing pending"
    );

    // Past the cap: recorded (so a redelivery is a duplicate), nothing queued.
    assert_eq!(
        q.reopen_for_review(review(&id, "c4", 2)).await.unwrap(),
        Reopened::CapReached(2)
    );
    assert_eq!(
        q.reopen_for_review(review(&id, "c4", 2)).await.unwrap(),
        Reopened::Duplicate
    );
    assert_eq!(
        q.get(&id).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert!(q.claim(&worker("w1")).await.unwrap().is_none());

    // A ticket with another open job: the old job is not reopened beside it.
    let newer = created(&q, "REV-1", "assign-2").await;
    assert_ne!(newer, id);
    assert_eq!(
        q.reopen_for_review(review(&id, "c5", 9)).await.unwrap(),
        Reopened::Busy(JobState::Queued)
    );
    assert!(matches!(
        q.reopen_for_review(review("no-such-job", "c6", 9)).await,
        Err(QueueError::NotFound(_))
    ));
}

fn link_update(job: &str, state: LinkState) -> LinkUpdate {
    LinkUpdate {
        job_id: job.to_string(),
        ticket: "PR-1".into(),
        state,
        link: json!({"repo": "acme/w", "number": 7, "url": "https://github.example/acme/w/pull/7", "title": "t"}),
        only_if_changed: false,
    }
}

async fn pr_link_states_are_recorded_once_and_told_with_retries(q: Arc<dyn Queue>) {
    let none = Duration::ZERO;
    // The poll's open pull request is news only after a recorded close.
    let mut open = link_update("j1", LinkState::Open);
    open.only_if_changed = true;
    assert_eq!(
        q.record_link(&open, none).await.unwrap(),
        LinkRecorded::Unrecorded
    );
    assert!(q
        .claim_links(10, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());

    // Closed: pending, held by its recorder for the hold.
    let closed = link_update("j1", LinkState::Closed);
    assert_eq!(
        q.record_link(&closed, Duration::from_secs(60))
            .await
            .unwrap(),
        LinkRecorded::New(1)
    );
    assert_eq!(
        q.record_link(&closed, none).await.unwrap(),
        LinkRecorded::Duplicate
    );
    assert!(q
        .claim_links(10, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());

    // Merged (another job), not held: the retry loop takes it once, with its link as recorded.
    let merged = link_update("j2", LinkState::Merged);
    assert_eq!(
        q.record_link(&merged, none).await.unwrap(),
        LinkRecorded::New(1)
    );
    let due = q.claim_links(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(
        (
            due[0].job_id.as_str(),
            due[0].ticket.as_str(),
            due[0].state,
            due[0].generation,
            due[0].attempts
        ),
        ("j2", "PR-1", LinkState::Merged, 1, 0)
    );
    assert_eq!(due[0].link, merged.link);
    assert!(q
        .claim_links(10, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    // Jira refused: due again after the backoff, with the attempt counted.
    q.link_failed("j2", 1, "HTTP 503", Duration::ZERO)
        .await
        .unwrap();
    let due = q.claim_links(10, Duration::ZERO).await.unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1), "{due:?}");
    q.link_failed("j2", 1, "HTTP 503", Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(q.claim_links(10, Duration::ZERO).await.unwrap().is_empty());
    // Told: never due again; the same state again, or anything after merged, changes nothing.
    q.link_told("j2", 1).await.unwrap();
    assert_eq!(
        q.record_link(&merged, none).await.unwrap(),
        LinkRecorded::Duplicate
    );
    assert_eq!(
        q.record_link(&link_update("j2", LinkState::Closed), none)
            .await
            .unwrap(),
        LinkRecorded::Final
    );
    assert_eq!(
        q.record_link(&link_update("j2", LinkState::Open), none)
            .await
            .unwrap(),
        LinkRecorded::Final
    );

    // j1 reopened while its close was being told: a new generation; the close's late "told" does not count for
    // it, and the open state is due (again).
    assert_eq!(
        q.record_link(&link_update("j1", LinkState::Open), Duration::from_secs(60))
            .await
            .unwrap(),
        LinkRecorded::New(2)
    );
    q.link_told("j1", 2).await.unwrap();
    q.link_told("j1", 1).await.unwrap();
    let due = q.claim_links(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((due[0].state, due[0].generation), (LinkState::Open, 2));
    q.link_told("j1", 2).await.unwrap();
    assert!(q.claim_links(10, Duration::ZERO).await.unwrap().is_empty());
    // A failure reported for an old generation changes nothing either.
    q.link_failed("j1", 1, "late", Duration::ZERO)
        .await
        .unwrap();
    assert!(q.claim_links(10, Duration::ZERO).await.unwrap().is_empty());

    // Concurrent first records of one state: one is new, the others duplicates.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.record_link(&link_update("j3", LinkState::Merged), Duration::ZERO)
                .await
                .unwrap()
        }));
    }
    let mut new = 0;
    for t in tasks {
        if let LinkRecorded::New(_) = t.await.unwrap() {
            new += 1;
        }
    }
    assert_eq!(new, 1);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::sqlite().await;
                    assert_eq!(f.queue.backend(), "sqlite");
                    super::$name(f.queue.clone()).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::postgres().await;
                    assert_eq!(f.queue.backend(), "postgres");
                    super::$name(f.queue.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    enqueue_dedups_and_absorbs,
    concurrent_enqueues_of_one_delivery,
    concurrent_enqueues_for_one_ticket,
    claim_order_and_excluded_projects,
    concurrent_claimers_take_each_job_once,
    expired_lease_is_reclaimed,
    worker_lost_on_last_attempt_fails_the_job,
    retryable_failure_backs_off,
    permanent_failure_and_exhausted_attempts,
    release_does_not_count_an_attempt,
    cancel_stops_a_running_job,
    retry_requeues_failed_and_cancelled,
    progress_is_recorded_for_the_lease_holder,
    list_filters_and_orders_newest_first,
    unknown_jobs_and_ping,
    an_enqueue_wakes_an_idle_worker,
    await_approval_only_by_the_lease_holder,
    approve_queues_the_job_and_the_approval_is_kept,
    an_approving_comment_counts_once_and_only_after_the_request,
    expired_approval_fails_the_job,
    an_awaiting_job_absorbs_new_triggers_and_can_be_cancelled,
    pause_blocks_every_claim_until_resume,
    cancel_running_cancels_every_running_job,
    policy_hash_is_set_by_the_lease_holder_and_kept,
    usage_totals_per_team_and_since,
    an_open_job_keeps_a_bounded_number_of_triggers,
    every_claim_gets_a_new_fencing_token,
    deliveries_of_finished_jobs_are_pruned_by_age,
    review_comments_reopen_a_finished_job_up_to_the_cap,
    pr_link_states_are_recorded_once_and_told_with_retries,
);

// ---------------------------------------------------------------- SQLite only

/// Claims until the queue is empty, completing each job; returns the ids.
async fn drain(q: Arc<dyn Queue>, me: String) -> Vec<String> {
    let mut mine = Vec::new();
    while let Some(job) = q.claim(&worker(&me)).await.unwrap() {
        q.complete(&job.id, &me, json!({})).await.unwrap();
        mine.push(job.id);
    }
    mine
}

async fn fill(q: &Arc<dyn Queue>, n: usize) {
    for i in 0..n {
        created(q, &format!("FILL-{i}"), &format!("f{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_handles_on_one_file_never_double_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let a: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    let b: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    fill(&a, 120).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let q = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(drain(q, format!("w{i}")))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 120);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_first_opens_of_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/queue.sqlite");
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteQueue::open(&path).await })
        })
        .collect();
    let mut queues = Vec::new();
    for o in opens {
        queues.push(o.await.unwrap().unwrap());
    }
    let q: Arc<dyn Queue> = Arc::new(queues.pop().unwrap());
    created(&q, "NEW-1", "n1").await;
}

#[tokio::test]
async fn sqlite_file_is_in_wal_mode_and_survives_reopening() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    let id = created(&q, "WAL-1", "w1").await;
    drop(q);

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();

    let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    assert_eq!(q.get(&id).await.unwrap().unwrap().ticket, "WAL-1");
    assert_eq!(
        q.enqueue(new_job("WAL-1", "w1")).await.unwrap(),
        Enqueued::Duplicate(id)
    );
}

/// Set in the child processes of [`sqlite_separate_processes_never_double_claim`].
const CHILD_ENV: &str = "DRAFTER_TEST_QUEUE_CHILD_DB";

/// In a child process: drains the queue named by [`CHILD_ENV`] and prints what it claimed. Otherwise: nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_child_claimer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let q: Arc<dyn Queue> = Arc::new(
        SqliteQueue::open(std::path::Path::new(&path))
            .await
            .unwrap(),
    );
    let me = format!("pid-{}", std::process::id());
    let tasks: Vec<_> = (0..2)
        .map(|i| tokio::spawn(drain(q.clone(), format!("{me}-{i}"))))
        .collect();
    for t in tasks {
        for id in t.await.unwrap() {
            println!("CLAIMED {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_separate_processes_never_double_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    fill(&q, 150).await;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    // Its name in the one test binary: module path after the crate's.
                    "queue::sqlite_child_claimer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &path)
                .output()
        })
        .collect();
    let mut all = Vec::new();
    let mut processes_that_claimed = 0;
    for child in children {
        let out = child.await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mine: Vec<String> = text
            .lines()
            // The harness's own "test ... " line may precede the first id on the same line.
            .filter_map(|l| {
                l.split_once("CLAIMED ")
                    .map(|(_, id)| id.trim().to_string())
            })
            .collect();
        processes_that_claimed += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    assert_eq!(all.len(), 150, "every job claimed");
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        150,
        "no job claimed twice"
    );
    assert!(processes_that_claimed >= 1);
    let done = q
        .list(&JobFilter {
            state: Some(JobState::Succeeded),
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pause_is_seen_by_every_handle_on_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let a: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    let b: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    pause_is_shared(a, b).await;
}

/// `ops` pauses, `worker` (another handle: another process or host) must obey; then `ops` resumes.
async fn pause_is_shared(ops: Arc<dyn Queue>, worker_q: Arc<dyn Queue>) {
    let id = created(&ops, "SHR-1", "s1").await;
    let pause = Pause {
        by: "cli:ops".into(),
        reason: "shared".into(),
        at: now_ms(),
    };
    ops.set_paused(Some(pause.clone())).await.unwrap();
    assert_eq!(worker_q.paused().await.unwrap(), Some(pause));
    assert!(worker_q
        .claim(&worker("elsewhere"))
        .await
        .unwrap()
        .is_none());
    ops.set_paused(None).await.unwrap();
    assert_eq!(
        worker_q
            .claim(&worker("elsewhere"))
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
}

// ---------------------------------------------------------------- upgrades from the schema_version era
//
// Before `sqlx::migrate!`, drafter applied the same SQL as `migrations/<backend>/0001..0005` (byte for byte below
// each file's comment header) and recorded each version as a row of `schema_version`. These tests build such a
// database at an older version, with data in it, and open it with this drafter.

/// How many schema versions this drafter knows.
fn known_versions() -> usize {
    drafter::queue::sqlite::MIGRATOR.iter().count()
}

/// Workers in other processes sharing one PostgreSQL queue wake on an enqueue or an approval (`LISTEN/NOTIFY`), not
/// at the end of their poll interval. Two `PgQueue`s are two processes' connections: `a` enqueues, `b` waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_enqueue_elsewhere_wakes_an_idle_worker() {
    let db = TestDatabase::create().await;
    let a: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
    let b: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
    let idle = Duration::from_secs(30);
    let wait = |q: Arc<dyn Queue>| {
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            q.wait_for_work(idle).await;
            t.elapsed()
        })
    };
    // The first wait starts `b` listening; give it the moment a LISTEN takes.
    let waiter = wait(b.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    created(&a, "WAKE-1", "wake-d1").await;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the enqueue in the other process woke the waiting worker")
        .unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    // An approval in the other process wakes it too.
    let done = b.claim(&worker("w")).await.unwrap().expect("claimed");
    b.complete(&done.id, "w", json!({})).await.unwrap();
    let id = awaiting(
        &b,
        "WAKE-2",
        approval_request("needs a lead", chrono::Duration::hours(1)),
    )
    .await;
    // `b`'s own enqueue above left it a wake-up; spend it, then wait for the approval alone.
    b.wait_for_work(Duration::from_millis(100)).await;
    let waiter = wait(b.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.approve(&id, "lead", None).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the approval in the other process woke the waiting worker")
        .unwrap();
    assert!(
        waited >= Duration::from_millis(300),
        "woken before the approval: {waited:?}"
    );

    // Nothing new: a short wait runs its full length.
    let t = std::time::Instant::now();
    b.wait_for_work(Duration::from_millis(300)).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
}

/// What an older drafter that knew versions 1..=`version` ran, on a SQLite connection.
async fn legacy_sqlite_schema(conn: &mut sqlx::SqliteConnection, version: usize) {
    for m in drafter::queue::sqlite::MIGRATOR.iter().take(version) {
        sqlx::raw_sql(m.sql.clone())
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    for v in 1..=version as i64 {
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
            .bind(v)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// A queue file made by a drafter that knew schema versions up to `version`, with one open job, its delivery, and
/// one finished job.
async fn legacy_sqlite_file(path: &std::path::Path, version: usize) {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    legacy_sqlite_schema(&mut conn, version).await;
    sqlx::raw_sql(
        "INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, progress, \
             created_at, updated_at) \
         VALUES ('j20260101T000000-00000001', 'OLD-1', 'OLD', 'queued', 0, 3, 0, '[]', '{\"pr\": 7}', 1, 1); \
         INSERT INTO deliveries (key, job_id, created_at) VALUES ('old-delivery', 'j20260101T000000-00000001', 1); \
         INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, progress, \
             last_error, created_at, updated_at) \
         VALUES ('j20251231T000000-00000002', 'OLD-2', 'OLD', 'failed', 3, 3, 0, '[]', '{}', 'gave up', 0, 0);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// After an upgrade: `schema_version` (what an older drafter reads) and `_sqlx_migrations` (with this drafter's
/// checksums) both list every version, once.
async fn assert_sqlite_schema_current(path: &std::path::Path) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, all_versions::<i64>(known_versions()));
    let applied: Vec<(i64, bool, Vec<u8>)> =
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let expected: Vec<(i64, bool, Vec<u8>)> = drafter::queue::sqlite::MIGRATOR
        .iter()
        .map(|m| (m.version, true, m.checksum.to_vec()))
        .collect();
    assert_eq!(applied, expected);
    conn.close().await.unwrap();
}

/// A queue file made by a drafter that knew only schema version 1, with one open job and its delivery.
#[tokio::test]
async fn sqlite_upgrade_from_schema_1_keeps_jobs_and_deliveries() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    legacy_sqlite_file(&path, 1).await;

    let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
    upgraded_queue_works(&q).await;
    assert_sqlite_schema_current(&path).await;

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // The rebuilt deliveries table still points at `jobs`, and nothing dangles.
    let parents: Vec<String> =
        sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list('deliveries')")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(parents, vec!["jobs".to_string()]);
    let dangling: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(dangling.is_empty(), "{dangling:?}");
    let leftovers: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name LIKE '%_v2'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    conn.close().await.unwrap();
}

/// From every older version, including the latest one the old tracking knew (nothing left to run: only recorded).
#[tokio::test]
async fn sqlite_upgrade_from_every_schema_version_era_keeps_the_data() {
    for version in 1..=5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        legacy_sqlite_file(&path, version).await;
        let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
        upgraded_queue_works(&q).await;
        drop(q);
        assert_sqlite_schema_current(&path).await;
        // Opening again changes nothing.
        let q: Arc<dyn Queue> = Arc::new(SqliteQueue::open(&path).await.unwrap());
        assert_eq!(
            q.get("j20251231T000000-00000002")
                .await
                .unwrap()
                .unwrap()
                .last_error
                .as_deref(),
            Some("gave up")
        );
        drop(q);
        assert_sqlite_schema_current(&path).await;
    }
}

/// Several processes opening an old file at once: one adopts and migrates it, the others find it current.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_opens_of_an_old_file_upgrade_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    legacy_sqlite_file(&path, 1).await;
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteQueue::open(&path).await })
        })
        .collect();
    let mut queues = Vec::new();
    for o in opens {
        queues.push(o.await.unwrap().unwrap());
    }
    let q: Arc<dyn Queue> = Arc::new(queues.pop().unwrap());
    upgraded_queue_works(&q).await;
    drop((q, queues));
    assert_sqlite_schema_current(&path).await;
}

/// Every schema version up to `n`, as `schema_version` lists them after migrating.
fn all_versions<T: From<u8>>(n: usize) -> Vec<T> {
    (1..=u8::try_from(n).unwrap()).map(T::from).collect()
}

/// After an upgrade from version 1: the old job, its delivery and progress are there, and the new state works.
async fn upgraded_queue_works(q: &Arc<dyn Queue>) {
    let id = "j20260101T000000-00000001";
    let job = q
        .get(id)
        .await
        .unwrap()
        .expect("the old job survives the upgrade");
    assert_eq!(
        (job.ticket.as_str(), job.state),
        ("OLD-1", JobState::Queued)
    );
    assert_eq!(job.progress, json!({"pr": 7}));
    assert_eq!((job.policy_hash, job.approval), (None, None));
    assert_eq!(
        q.enqueue(new_job("OLD-1", "old-delivery")).await.unwrap(),
        Enqueued::Duplicate(id.to_string())
    );
    q.claim(&worker("w")).await.unwrap().unwrap();
    q.await_approval(id, "w", approval_request("r", chrono::Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(
        q.enqueue(new_job("OLD-1", "new-delivery")).await.unwrap(),
        Enqueued::Absorbed(id.to_string()),
        "the one-open-job index knows the new state"
    );
    assert_eq!(
        q.approve(id, "712020:lead-lin", None).await.unwrap(),
        Approved::Yes
    );
    assert_eq!(q.paused().await.unwrap(), None);
}

// ---------------------------------------------------------------- PostgreSQL only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pause_is_seen_by_every_worker_connection() {
    let db = TestDatabase::create().await;
    let a: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
    let b: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
    pause_is_shared(a, b).await;
}

/// What an older drafter that knew versions 1..=`version` ran, and one open job, its delivery and a finished job.
async fn legacy_postgres_database(url: &str, version: usize) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    for m in drafter::queue::postgres::MIGRATOR.iter().take(version) {
        sqlx::raw_sql(m.sql.clone())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql("CREATE TABLE schema_version (version integer NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    for v in 1..=i32::try_from(version).unwrap() {
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(v)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql(
        "INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, progress, \
             created_at, updated_at) \
         VALUES ('j20260101T000000-00000001', 'OLD-1', 'OLD', 'queued', 0, 3, now(), '[]', '{\"pr\": 7}', \
             now(), now()); \
         INSERT INTO deliveries (key, job_id) VALUES ('old-delivery', 'j20260101T000000-00000001'); \
         INSERT INTO jobs (id, ticket, project, state, attempts, max_attempts, not_before, triggers, progress, \
             last_error, created_at, updated_at) \
         VALUES ('j20251231T000000-00000002', 'OLD-2', 'OLD', 'failed', 3, 3, now(), '[]', '{}', 'gave up', \
             now() - interval '1 day', now() - interval '1 day');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// The PostgreSQL twin of [`assert_sqlite_schema_current`].
async fn assert_postgres_schema_current(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, all_versions::<i32>(known_versions()));
    let applied: Vec<(i64, bool, Vec<u8>)> =
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let expected: Vec<(i64, bool, Vec<u8>)> = drafter::queue::postgres::MIGRATOR
        .iter()
        .map(|m| (m.version, true, m.checksum.to_vec()))
        .collect();
    assert_eq!(applied, expected);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn postgres_upgrade_from_schema_1_keeps_jobs_and_deliveries() {
    let db = TestDatabase::create().await;
    legacy_postgres_database(&db.url, 1).await;
    let q: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
    upgraded_queue_works(&q).await;
    assert_postgres_schema_current(&db.url).await;
}

#[tokio::test]
async fn postgres_upgrade_from_every_schema_version_era_keeps_the_data() {
    for version in 1..=5 {
        let db = TestDatabase::create().await;
        legacy_postgres_database(&db.url, version).await;
        let q: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
        upgraded_queue_works(&q).await;
        drop(q);
        assert_postgres_schema_current(&db.url).await;
        let q: Arc<dyn Queue> = Arc::new(PgQueue::connect(&db.url).await.unwrap());
        assert_eq!(
            q.get("j20251231T000000-00000002")
                .await
                .unwrap()
                .unwrap()
                .last_error
                .as_deref(),
            Some("gave up")
        );
        drop(q);
        assert_postgres_schema_current(&db.url).await;
    }
}

/// Workers starting at once against an old database: one adopts and migrates it, the rest find it current.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_first_connects_to_an_old_database_upgrade_it_once() {
    let db = TestDatabase::create().await;
    legacy_postgres_database(&db.url, 2).await;
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgQueue::connect(&url).await })
        })
        .collect();
    let mut queues = Vec::new();
    for c in connects {
        queues.push(c.await.unwrap().unwrap());
    }
    let q: Arc<dyn Queue> = Arc::new(queues.pop().unwrap());
    upgraded_queue_works(&q).await;
    drop((q, queues));
    assert_postgres_schema_current(&db.url).await;
}

/// An older drafter migrating (it holds the advisory lock every drafter version takes for that, key "drafter" in
/// ASCII) makes this one wait, instead of both changing the schema at once.
/// A database migrated by a newer drafter (or one whose released migration was edited) is refused, not changed,
/// and the error names the server, never the password.
#[tokio::test]
async fn postgres_a_schema_this_drafter_does_not_know_is_refused() {
    use sqlx::Connection;
    let db = TestDatabase::create().await;
    drop(PgQueue::connect(&db.url).await.unwrap());
    let password = url::Url::parse(&db.url)
        .unwrap()
        .password()
        .unwrap_or_default()
        .to_string();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for (tamper, undo, expected) in [
        (
            "INSERT INTO schema_version (version) VALUES (99)",
            "DELETE FROM schema_version WHERE version = 99",
            "schema version 99 is newer",
        ),
        (
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'future', true, '\\x00', 0)",
            "DELETE FROM _sqlx_migrations WHERE version = 99",
            "schema version 99 is newer",
        ),
        (
            "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 2",
            "",
            "schema version 2 was applied from different SQL",
        ),
    ] {
        sqlx::raw_sql(tamper).execute(&mut conn).await.unwrap();
        let err = PgQueue::connect(&db.url)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("postgres at "), "{err}");
        assert!(password.is_empty() || !err.contains(&password), "{err}");
        if !undo.is_empty() {
            sqlx::raw_sql(undo).execute(&mut conn).await.unwrap();
        }
    }
    let untouched: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(untouched, known_versions() as i64);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_waits_for_the_migration_lock() {
    use sqlx::Connection;
    let db = TestDatabase::create().await;
    legacy_postgres_database(&db.url, 1).await;
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x0064_7261_6674_6572_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    let url = db.url.clone();
    let connect = tokio::spawn(async move { PgQueue::connect(&url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !connect.is_finished(),
        "the migration did not wait for the lock"
    );
    let version: Option<i64> =
        sqlx::query_scalar("SELECT CAST(MAX(version) AS bigint) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(version, Some(1), "nothing migrated while the lock was held");
    tx.commit().await.unwrap();
    let q: Arc<dyn Queue> = Arc::new(connect.await.unwrap().unwrap());
    upgraded_queue_works(&q).await;
    drop(q);
    other.close().await.unwrap();
    assert_postgres_schema_current(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_first_connects_migrate_once() {
    use sqlx::Connection;
    let db = TestDatabase::create().await;
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgQueue::connect(&url).await })
        })
        .collect();
    let mut queues = Vec::new();
    for c in connects {
        queues.push(c.await.unwrap().unwrap());
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM schema_version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, all_versions::<i32>(known_versions()));
    conn.close().await.unwrap();
    let q: Arc<dyn Queue> = Arc::new(queues.pop().unwrap());
    created(&q, "MIG-1", "g1").await;
    drop(queues);
}

#[tokio::test]
async fn postgres_errors_name_the_host_but_never_the_password() {
    let db = TestDatabase::create().await;
    let url = url::Url::parse(&db.url).unwrap();
    let password = url.password().unwrap_or_default().to_string();

    let mut no_db = url.clone();
    no_db.set_path("/drafter_no_such_database");
    let err = PgQueue::connect(no_db.as_str())
        .await
        .err()
        .expect("no such database")
        .to_string();
    assert!(err.contains(url.host_str().unwrap()), "{err}");
    assert!(password.is_empty() || !err.contains(&password), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut refused = url.clone();
    refused.set_host(Some("127.0.0.1")).unwrap();
    refused.set_port(Some(port)).unwrap();
    let err = PgQueue::connect(refused.as_str())
        .await
        .err()
        .expect("nothing listens there")
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(password.is_empty() || !err.contains(&password), "{err}");
    assert!(!err.contains(support::postgres::PASSWORD), "{err}");
}

#[tokio::test]
async fn postgres_leases_use_the_database_clock() {
    use sqlx::Connection;
    let f = postgres().await;
    let db_url = f._keep.downcast_ref::<TestDatabase>().unwrap().url.clone();
    created(&f.queue, "CLK-1", "k1").await;
    let job = f.queue.claim(&worker("w")).await.unwrap().unwrap();
    let mut conn = sqlx::PgConnection::connect(&db_url).await.unwrap();
    let (db_now, expires): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT now(), lease_expires FROM jobs WHERE id = $1")
            .bind(&job.id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert_eq!(Some(expires), job.lease_expires);
    let lease = expires - db_now;
    assert!(
        lease > chrono::Duration::seconds(55) && lease <= chrono::Duration::seconds(60),
        "{lease}"
    );
}

// ---------------------------------------------------------------- the CLI: queue URLs are shown without credentials

/// Runs the real binary with a clean queue environment; returns whether it succeeded and everything it printed.
fn drafter_cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_drafter"));
    cmd.args(args)
        .env_remove("DRAFTER_QUEUE")
        .env_remove("DRAFTER_SERVE_QUEUE")
        .env_remove("DRAFTER_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("drafter runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_cli_never_prints_a_queue_password() {
    // A mistyped scheme: the location names no backend, and the message shows it without its userinfo.
    let (ok, out) = drafter_cli(
        &["jobs", "list", "--queue", "postgress://u:s3cret@h/db"],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.contains("postgress://***@h/db"), "{out}");
    // The same through the environment, for another command.
    let (ok, out) = drafter_cli(
        &["pause"],
        &[("DRAFTER_QUEUE", "postgresq://admin:s3cret@db.internal/q")],
    );
    assert!(!ok, "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.contains("db.internal"), "{out}");

    // A well-formed URL to a port nothing listens on: the error names the host and port, not the password (in the
    // userinfo or as a query parameter).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for url in [
        format!("postgres://u:s3cret@127.0.0.1:{port}/db"),
        format!("postgres://u@127.0.0.1:{port}/db?password=s3cret"),
    ] {
        let (ok, out) = drafter_cli(&["jobs", "list", "--queue", &url], &[]);
        assert!(!ok, "{out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    }

    // `drafter check-config` shows the queue it resolved, without the password.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/drafter.toml");
    let (ok, out) = drafter_cli(
        &["check-config", "--config", example],
        &[
            ("JIRA_API_TOKEN", "value"),
            ("GITHUB_TOKEN", "value"),
            ("ANTHROPIC_API_KEY", "value"),
            ("JIRA_WEBHOOK_SECRET", "value"),
            (
                "DRAFTER_SERVE_QUEUE",
                "postgres://drafter:s3cret@db.internal/drafter",
            ),
        ],
    );
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.contains("postgres://***@db.internal/drafter"), "{out}");
}
