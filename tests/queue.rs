//! The queue's conformance suite: every scenario runs against both backends (SQLite in a temporary file, PostgreSQL
//! in a fresh database on a real server, see `support/postgres.rs`), so the two cannot drift apart. Backend-specific
//! checks (several SQLite handles and processes on one file, WAL mode; concurrent PostgreSQL migrations, password
//! scrubbing, the database clock) follow at the end.

mod support;

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drafter::queue::postgres::PgQueue;
use drafter::queue::sqlite::SqliteQueue;
use drafter::queue::{
    Claim, Enqueued, Failure, JobFilter, JobState, NewJob, Queue, QueueError, Trigger,
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
    assert_eq!((created, absorbed), (1, 49), "{results:?}");
    let job = q.get(&id).await.unwrap().unwrap();
    let deliveries: HashSet<_> = job.triggers.iter().map(|t| t.delivery.clone()).collect();
    assert_eq!(job.triggers.len(), 50);
    assert_eq!(deliveries.len(), 50, "every trigger recorded once");
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

/// Instantiates every scenario once per backend, as `sqlite_backend::<name>` and `postgres_backend::<name>`.
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
                    "sqlite_child_claimer",
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

// ---------------------------------------------------------------- PostgreSQL only

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
    assert_eq!(versions, vec![1]);
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
