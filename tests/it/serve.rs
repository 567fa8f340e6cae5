//! `drafter serve` as deployed: the real binary, fed by signed Jira webhooks, running jobs through the real sandbox
//! and git, against the stand-ins. Crashes are real (`kill -9`), shutdowns are real signals.
//!
//! Long on purpose (over 700 lines): one `drafter serve` lifecycle scenario per test (bursts, crashes, drains, leases).

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drafter::queue::{JobFilter, JobState, Queue};
use serde_json::json;
use support::git::{drafter_branches, git_in};
use support::harness::{
    assignment_webhook, wait_all_finished, Flavor, Options, ServeProcess, Stack, ADA, DEMO_REPO,
    SECRETS,
};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

// One test at a time: each drives a worker pool that saturates this machine's cores on its own, and the crash
// test's short leases must not starve behind another test's burst. Shared with `policy_serve.rs`, whose tests run
// pools too.
use crate::support::POOL_SERIAL as SERIAL;

fn serve_toml(concurrency: usize, per_project: usize, lease_secs: u64, drain_secs: u64) -> String {
    format!(
        r#"[serve]
listen = "127.0.0.1:0"
webhook_secret_env = "DRAFTER_TEST_WEBHOOK_SECRET"
concurrency = {concurrency}
per_project = {per_project}
lease_secs = {lease_secs}
heartbeat_secs = 1
drain_timeout_secs = {drain_secs}
max_attempts = 5
idle_poll_ms = 100
"#
    )
}

/// A stack for `drafter serve` with these `[serve]` settings (see [`serve_toml`]); every conversation replays the
/// demo script.
async fn serve_stack(
    concurrency: usize,
    per_project: usize,
    lease_secs: u64,
    drain_secs: u64,
) -> Stack {
    Stack::start(Options {
        per_conversation: true,
        extra_toml: serve_toml(concurrency, per_project, lease_secs, drain_secs),
        ..Options::default()
    })
    .await
}

/// The tickets of drafter containers (any state) whose labels pass `keep`. Tests run in parallel, so each one
/// looks only at its own containers (by job id or by worker pid).
async fn containers(
    docker: &bollard::Docker,
    keep: impl Fn(&HashMap<String, String>) -> bool,
) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec!["drafter.managed=true".to_string()],
    )]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.labels)
        .filter(|l| keep(l))
        .filter_map(|l| l.get("drafter.ticket").cloned())
        .collect()
}

/// Containers of any job in this stack's queue.
async fn stack_containers(queue: &dyn Queue) -> Vec<String> {
    let ids: Vec<String> = queue
        .list(&JobFilter {
            limit: 100_000,
            ..JobFilter::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|j| j.id)
        .collect();
    containers(&docker().await, |l| {
        l.get("drafter.job").is_some_and(|j| ids.contains(j))
    })
    .await
}

async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version")
}

fn pr_opened_comments(stack: &Stack, key: &str) -> usize {
    stack
        .jira
        .comment_texts(key)
        .iter()
        .filter(|c| c.contains("Draft pull request opened"))
        .count()
}

/// A burst of signed webhooks for many different tickets: each becomes exactly one job and one draft PR, none is
/// lost or doubled (duplicate deliveries included), and the concurrency caps hold throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_burst_makes_exactly_one_job_per_ticket() {
    let _serial = SERIAL.lock().await;
    let tickets: usize = std::env::var("DRAFTER_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let (concurrency, per_project) = (6, 4);
    let stack = serve_stack(concurrency, per_project, 30, 60).await;
    let keys = stack.burst_tickets(tickets);

    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let queue = stack.queue().await;

    // Sample the worker's containers while the burst runs: the caps must hold at every sample.
    let docker = docker().await;
    let max_total = Arc::new(AtomicUsize::new(0));
    let max_project = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pid = serve.pid().to_string();
    let sampler = {
        let (max_total, max_project, sampling) =
            (max_total.clone(), max_project.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let running = containers(&docker, |l| {
                    l.get("drafter.owner.pid").map(String::as_str) == Some(pid.as_str())
                })
                .await;
                max_total.fetch_max(running.len(), Ordering::Relaxed);
                let mut per: BTreeMap<&str, usize> = BTreeMap::new();
                for t in &running {
                    *per.entry(t.split('-').next().unwrap_or("")).or_default() += 1;
                }
                max_project.fetch_max(per.values().copied().max().unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let client = reqwest::Client::new();
    let started = Instant::now();
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, usize>::new()));
    futures_util::future::join_all((0..8).map(|lane| {
        let (client, keys, statuses) = (client.clone(), keys.clone(), statuses.clone());
        let serve = &serve;
        async move {
            for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 8 == lane) {
                let status = serve
                    .webhook(&client, &assignment_webhook(key, 50_000 + i as u64))
                    .await;
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                // Every tenth delivery is sent again, as Jira does on a slow answer: it must not make a job.
                if i % 10 == 0 {
                    let again = serve
                        .webhook(&client, &assignment_webhook(key, 50_000 + i as u64))
                        .await;
                    // A duplicate delivery is acknowledged (200), not queued again.
                    assert_eq!(again, 200, "duplicate delivery answered {again}");
                }
            }
        }
    }))
    .await;
    let accepted = started.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [202],
        "{statuses:?}"
    );

    // Uncontended on 2 cores the burst takes ~1100 s (CPU-bound on container start-up); the deadline leaves room
    // for a slower or busier CI machine, since it only bounds how long a lost job could hide.
    let jobs = wait_all_finished(queue.as_ref(), tickets, Duration::from_secs(3000)).await;
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let log = serve.stop().await;

    // Exactly one job per ticket, every one succeeded on its first attempt.
    assert_eq!(jobs.len(), tickets);
    let mut per_ticket: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &jobs {
        *per_ticket.entry(j.ticket.as_str()).or_default() += 1;
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert_eq!(j.attempts, 1, "{j:?}");
    }
    assert!(per_ticket.values().all(|n| *n == 1));
    assert_eq!(per_ticket.len(), tickets);
    // One draft PR and one "PR opened" comment per ticket.
    let prs = stack.github.pulls(DEMO_REPO).len() + stack.github.pulls("acme/other").len();
    assert_eq!(prs, tickets);
    for key in &keys {
        assert_eq!(pr_opened_comments(&stack, key), 1, "{key}");
    }
    let (mt, mp) = (
        max_total.load(Ordering::Relaxed),
        max_project.load(Ordering::Relaxed),
    );
    eprintln!(
        "burst: {tickets} webhooks accepted in {accepted:?}; all jobs done in {elapsed:?}; \
         max concurrent containers {mt} (cap {concurrency}), max per project {mp} (cap {per_project})"
    );
    assert!(mt <= concurrency, "{mt} > {concurrency}");
    assert!(mp <= per_project, "{mp} > {per_project}");
    assert!(mt >= 2, "the pool never ran jobs in parallel");
    assert!(log.contains(&format!("{tickets} succeeded")), "{log}");
    for s in SECRETS {
        assert!(!log.contains(s), "a secret reached the worker's log");
    }
    assert!(stack_containers(queue.as_ref()).await.is_empty());
}

/// Where to crash the worker.
#[derive(Debug, Clone, Copy)]
enum CrashAt {
    Cloning,
    ModelLoop,
    AfterPushBeforePr,
    AfterPrBeforeComment,
    AfterCommentBeforeLink,
}

/// `kill -9` the worker in the middle of each stage, start it again: the job ends with exactly one branch, one draft
/// PR, one "PR opened" comment and one link of it on the ticket, and no container is left.
#[tokio::test(flavor = "multi_thread")]
async fn crash_at_any_stage_then_restart_delivers_exactly_once() {
    let _serial = SERIAL.lock().await;
    for at in [
        CrashAt::Cloning,
        CrashAt::ModelLoop,
        CrashAt::AfterPushBeforePr,
        CrashAt::AfterPrBeforeComment,
        CrashAt::AfterCommentBeforeLink,
    ] {
        crash_and_recover(at).await;
    }
}

async fn crash_and_recover(at: CrashAt) {
    let stack = serve_stack(2, 2, 3, 30).await;
    let hold = Duration::from_secs(2);
    match at {
        CrashAt::Cloning => stack.github.set_git_delay(hold),
        CrashAt::ModelLoop => stack.model.set_delay(hold),
        CrashAt::AfterPushBeforePr => stack.github.set_pr_delay(hold),
        CrashAt::AfterPrBeforeComment => stack.jira.set_comment_delay(hold),
        CrashAt::AfterCommentBeforeLink => stack.jira.set_link_delay(hold),
    }
    let first = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    first.assign(&client, "DEMO-1", 1).await;

    // Wait until the job is inside the stage, then crash.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reached = match at {
            CrashAt::Cloning => stack
                .github
                .requests()
                .iter()
                .any(|r| r.path.contains(".git/")),
            CrashAt::ModelLoop => !stack.model.requests().is_empty(),
            CrashAt::AfterPushBeforePr => stack
                .github
                .requests()
                .iter()
                .any(|r| r.method == "POST" && r.path.ends_with("/pulls")),
            CrashAt::AfterPrBeforeComment => {
                !stack.github.pulls(DEMO_REPO).is_empty()
                    || stack
                        .jira
                        .requests()
                        .iter()
                        .filter(|r| r.method == "POST")
                        .count()
                        >= 2
            }
            // The link is posted right after the "PR opened" comment (and the stand-in records it only once its
            // delay is over).
            CrashAt::AfterCommentBeforeLink => pr_opened_comments(&stack, "DEMO-1") >= 1,
        };
        if reached {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{at:?}: the job never reached the stage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill9().await;

    // A new worker: removes the dead worker's container, and takes the job over once its lease has expired.
    let second = ServeProcess::start(&stack, Path::new(BIN)).await;
    let queue = stack.queue().await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    let (status, log) = second.sigterm(Duration::from_secs(60)).await;
    assert!(status.success(), "{at:?}: {log}");
    assert_eq!(jobs.len(), 1, "{at:?}");
    assert_eq!(jobs[0].state, JobState::Succeeded, "{at:?}: {:?}", jobs[0]);

    let branches = drafter_branches(&stack.bare_repo);
    assert_eq!(branches.len(), 1, "{at:?}: branches {branches:?}");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1, "{at:?}");
    assert_eq!(
        pr_opened_comments(&stack, "DEMO-1"),
        1,
        "{at:?}: {:?}",
        stack.jira.comment_texts("DEMO-1")
    );
    let started = stack
        .jira
        .comment_texts("DEMO-1")
        .iter()
        .filter(|c| c.contains("started working"))
        .count();
    assert_eq!(started, 1, "{at:?}");
    // The PR's link on the ticket: one, however many attempts posted it (the same `globalId` updates it).
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{at:?}: {links:?}");
    if let CrashAt::AfterCommentBeforeLink = at {
        let posts = stack
            .jira
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/remotelink"))
            .count();
        assert!(posts >= 2, "{at:?}: the link was posted {posts} time(s)");
    }
    assert!(
        stack_containers(queue.as_ref()).await.is_empty(),
        "{at:?}: a container is left"
    );
    eprintln!("{at:?}: recovered after {} attempt(s)", jobs[0].attempts);
}

/// A worker with one job (DEMO-1) that has reached its model loop, whose every reply takes `model_delay`.
async fn one_job_in_its_model_loop(
    drain_secs: u64,
    model_delay: Duration,
) -> (Stack, ServeProcess) {
    let stack = serve_stack(2, 2, 30, drain_secs).await;
    stack.model.set_delay(model_delay);
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    serve.assign(&client, "DEMO-1", 1).await;
    while stack.model.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (stack, serve)
}

/// SIGTERM while a job runs and the drain is long enough: the job finishes before the worker exits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_running_job_finish_within_the_drain() {
    let _serial = SERIAL.lock().await;
    let (stack, serve) = one_job_in_its_model_loop(60, Duration::from_millis(500)).await;
    let log = serve.stop().await;
    let queue = stack.queue().await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(5)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{log}");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert!(log.contains("1 succeeded"), "{log}");
}

/// The run statement names the worker that held the job's lease: the pool's id is the queue's lease owner and the
/// `worker.id` of the attempt's run statement, so an auditor can match a bundle to the worker the queue records.
#[tokio::test(flavor = "multi_thread")]
async fn the_run_statement_names_the_lease_owner() {
    let _serial = SERIAL.lock().await;
    let (stack, serve) = one_job_in_its_model_loop(60, Duration::from_millis(300)).await;
    let queue = stack.queue().await;
    let running = queue
        .list(&JobFilter::default())
        .await
        .expect("list")
        .remove(0);
    assert_eq!(running.state, JobState::Running, "{running:?}");
    // The queue's progress listener is awaited as each stage begins: the model has been asked, so the marker says
    // "agent" (and, once the job is done, "report").
    assert_eq!(running.progress["stage"]["stage"], "agent", "{running:?}");
    let owner = running
        .lease_owner
        .clone()
        .expect("a running job has a lease owner");
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    let log = serve.stop().await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{log}");
    assert_eq!(
        jobs[0].progress["stage"]["stage"], "report",
        "{:?}",
        jobs[0]
    );
    let bundle = stack
        .data_dir()
        .join("jobs")
        .join(&running.id)
        .join(drafter::proof::BUNDLE_FILE);
    let run = drafter::proof::bundle::last_run(&bundle)
        .expect("read the bundle")
        .expect("the bundle ends with a run statement");
    assert_eq!(
        run.worker.id, owner,
        "the run statement names another worker"
    );
}

/// `drafter key rotate` on a running `drafter serve` takes effect from the next job: each attempt reads the runner
/// key when it starts, so a key the operator rotated out (perhaps because it is no longer trusted) signs nothing new.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_signs_the_next_job_of_a_running_worker() {
    let _serial = SERIAL.lock().await;
    let stack = serve_stack(2, 2, 30, 60).await;
    let description = support::harness::demo_ticket()["description"].clone();
    stack.jira.add_issue(
        "DEMO-2",
        "Greeting should end with an exclamation mark",
        description,
        &[],
    );
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let queue = stack.queue().await;
    let client = reqwest::Client::new();
    let signer_of = |job_id: &str| {
        let bundle = stack
            .data_dir()
            .join("jobs")
            .join(job_id)
            .join(drafter::proof::BUNDLE_FILE);
        drafter::proof::verify(&bundle, &drafter::proof::Pins::default())
            .expect("the bundle verifies")
            .key_ids
    };

    serve.assign(&client, "DEMO-1", 1).await;
    let first = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    assert_eq!(first[0].state, JobState::Succeeded);
    let old_signers = signer_of(&first[0].id);
    assert_eq!(old_signers.len(), 1, "{old_signers:?}");

    let rotated = std::process::Command::new(BIN)
        .args(["key", "rotate", "--data-dir"])
        .arg(stack.data_dir())
        .output()
        .expect("drafter key rotate");
    assert!(rotated.status.success(), "{rotated:?}");
    let new_key = std::fs::read_to_string(stack.data_dir().join("runner.pub")).expect("runner.pub");
    let new_key = drafter::proof::key_id(
        &drafter::proof::parse_public_key(new_key.trim()).expect("runner.pub holds a key"),
    );
    assert!(!old_signers.contains(&new_key), "rotation made no new key");

    serve.assign(&client, "DEMO-2", 2).await;
    let jobs = wait_all_finished(queue.as_ref(), 2, Duration::from_secs(120)).await;
    let log = serve.stop().await;
    let second = jobs
        .iter()
        .find(|j| j.ticket == "DEMO-2")
        .expect("the second ticket's job");
    assert_eq!(second.state, JobState::Succeeded, "{log}");
    let new_signers = signer_of(&second.id);
    assert_eq!(
        new_signers,
        vec![new_key],
        "the job after the rotation is signed with the rotated-out key"
    );
}

/// SIGTERM with a drain too short for the job: it is released at once and another worker completes it, without
/// the released attempt counting.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_what_cannot_finish_and_another_worker_completes_it() {
    let _serial = SERIAL.lock().await;
    let (stack, first) = one_job_in_its_model_loop(1, Duration::from_secs(3)).await;
    let (status, log) = first.sigterm(Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("1 released"), "{log}");
    let queue = stack.queue().await;
    assert!(
        stack_containers(queue.as_ref()).await.is_empty(),
        "the released job's container is left"
    );
    let job = queue
        .list(&JobFilter::default())
        .await
        .expect("list")
        .remove(0);
    assert_eq!(job.state, JobState::Queued, "{job:?}");

    stack.model.set_delay(Duration::ZERO);
    let second = ServeProcess::start(&stack, Path::new(BIN)).await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    second.stop().await;
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(jobs[0].attempts, 1, "a released attempt must not count");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(pr_opened_comments(&stack, "DEMO-1"), 1);
}

/// The operator CLI against the worker's queue: list, show (with the trigger), cancel and retry, text and JSON.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_cli_lists_shows_cancels_and_retries() {
    let _serial = SERIAL.lock().await;
    let stack = serve_stack(1, 1, 30, 5).await;
    stack.model.set_delay(Duration::from_secs(2));
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    serve.assign(&client, "DEMO-1", 7).await;
    let queue_path = stack.data_dir().join("queue.sqlite");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("jobs")
            .args(args)
            .arg("--queue")
            .arg(&queue_path)
            .output()
            .expect("drafter jobs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, listing) = cli(&["list", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&listing).expect("json");
    assert_eq!(listed["paused"], serde_json::Value::Null);
    let id = listed["jobs"][0]["id"].as_str().expect("id").to_string();
    assert_eq!(listed["jobs"][0]["ticket"], "DEMO-1");
    let (ok, shown) = cli(&["show", &id]);
    assert!(ok);
    assert!(
        shown.contains("712020:developer-ada"),
        "the trigger's author is recorded: {shown}"
    );

    // Cancel while it runs: the worker stops it at its next heartbeat and removes its container.
    while stack.model.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cli(&["cancel", &id]).0);
    let queue = stack.queue().await;
    wait_all_finished(queue.as_ref(), 1, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stack_containers(queue.as_ref()).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the cancelled job's container is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = cli(&["list", "--state", "cancelled"]);
    assert!(text.contains(&id), "{text}");

    // Retry: queued again, and this time it runs to a PR.
    stack.model.set_delay(Duration::ZERO);
    assert!(cli(&["retry", &id]).0);
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0]);
    assert!(!cli(&["retry", &id]).0, "a succeeded job cannot be retried");
    serve.stop().await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
}

/// The kill switch from the CLI: while paused, `/readyz` says so (503) and a new webhook's job waits in the queue;
/// `drafter resume` lets the worker take it, and it runs to a PR.
#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_new_jobs_until_resume() {
    let _serial = SERIAL.lock().await;
    let stack = serve_stack(1, 1, 30, 5).await;
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let cli = |args: &[&str]| stack.operator(Path::new(BIN), args);
    let client = reqwest::Client::new();
    let readyz = || {
        let client = client.clone();
        let url = format!("http://{}/readyz", serve.addr);
        async move {
            let r = client.get(url).send().await.expect("readyz");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    assert_eq!(readyz().await.0, 200);

    let said = cli(&["pause", "--reason", "x"]);
    assert!(
        said.contains("PAUSED since") && said.contains("by cli:ops-olga: x"),
        "{said}"
    );
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("paused by cli:ops-olga") && body.contains(": x"),
        "{body}"
    );

    assert_eq!(
        serve
            .webhook(&client, &assignment_webhook("DEMO-1", 11))
            .await,
        202,
        "triggers are still taken in while paused"
    );
    // Many idle polls (every 100 ms) go by: the job stays queued, nothing reaches the model.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queue = stack.queue().await;
    let jobs = queue.list(&JobFilter::default()).await.expect("list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].state, jobs[0].attempts),
        (JobState::Queued, 0),
        "{:?}",
        jobs[0]
    );
    assert!(stack.model.requests().is_empty());
    let listing = cli(&["jobs", "list"]);
    assert!(
        listing.starts_with("PAUSED since ")
            && listing
                .lines()
                .next()
                .unwrap_or("")
                .ends_with("by cli:ops-olga: x"),
        "{listing}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&["jobs", "list", "--json"])).expect("json");
    assert_eq!(listed["paused"]["by"], "cli:ops-olga");
    assert_eq!(listed["paused"]["reason"], "x");
    assert_eq!(listed["jobs"][0]["state"], "queued");

    let said = cli(&["resume"]);
    assert!(said.starts_with("resumed"), "{said}");
    assert_eq!(readyz().await.0, 200);
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(45)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempts, 1);
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    let (status, log) = serve.sigterm(Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    // The worker said it was paused once, not at every poll, and noticed the resume.
    assert_eq!(
        log.matches("queue paused by cli:ops-olga: x").count(),
        1,
        "{log}"
    );
    assert!(log.contains("queue resumed"), "{log}");
}

/// Three workers on one PostgreSQL queue: every job runs exactly once, and the work is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_one_postgres_queue() {
    let _serial = SERIAL.lock().await;
    let jobs_wanted: usize = std::env::var("DRAFTER_PG_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let db = support::postgres::TestDatabase::create().await;
    let stack = serve_stack(3, 3, 30, 60).await;
    let keys: Vec<String> = (0..jobs_wanted)
        .map(|i| format!("DEMO-{}", 2000 + i))
        .collect();
    let description = support::harness::demo_ticket()["description"].clone();
    for (i, key) in keys.iter().enumerate() {
        stack.jira.add_issue(
            key,
            &format!("Greeting should end with an exclamation mark {i}"),
            description.clone(),
            &[],
        );
    }
    let env = [("DRAFTER_SERVE_QUEUE", db.url.as_str())];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(ServeProcess::start_with(&stack, Path::new(BIN), &env).await);
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        // Round-robin over the workers' webhook endpoints, as a load balancer would.
        let status = workers[i % 3]
            .webhook(&client, &assignment_webhook(key, 90_000 + i as u64))
            .await;
        assert_eq!(status, 202, "{key}");
    }
    let queue = drafter::queue::open(&db.url)
        .await
        .expect("open postgres queue");
    let jobs = wait_all_finished(queue.as_ref(), jobs_wanted, Duration::from_secs(1200)).await;
    let elapsed = started.elapsed();
    let mut succeeded_per_worker = Vec::new();
    for w in workers {
        let log = w.stop().await;
        let n: u64 = log
            .lines()
            .find_map(|l| l.split("stopped (").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no stats line in:\n{log}"));
        succeeded_per_worker.push(n);
    }
    assert_eq!(jobs.len(), jobs_wanted);
    for j in &jobs {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert_eq!(j.attempts, 1, "a job ran more than once: {j:?}");
    }
    assert_eq!(
        succeeded_per_worker.iter().sum::<u64>() as usize,
        jobs_wanted
    );
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), jobs_wanted);
    for key in &keys {
        assert_eq!(pr_opened_comments(&stack, key), 1, "{key}");
    }
    // Every job's model conversation ran once: five calls each, no more.
    assert_eq!(stack.model.requests().len(), jobs_wanted * 5);
    eprintln!("postgres: {jobs_wanted} jobs over 3 workers in {elapsed:?}, per worker {succeeded_per_worker:?}");
    assert!(stack_containers(queue.as_ref()).await.is_empty());
}

/// A comment that @mentions the bot starts a job, and what it said reaches the model as quoted ticket data.
#[tokio::test(flavor = "multi_thread")]
async fn a_mention_in_a_comment_starts_a_job_with_the_request() {
    mention_starts_a_job(Flavor::Cloud).await;
}

/// The same on Data Center: a `[~drafter-bot]` mention, the author by user name, no `issue` in the payload (the
/// webhook URL names it), and the whole job on REST v2 reported in wiki markup.
#[tokio::test(flavor = "multi_thread")]
async fn a_mention_in_a_comment_starts_a_job_on_data_center() {
    mention_starts_a_job(Flavor::DataCenter).await;
}

async fn mention_starts_a_job(flavor: Flavor) {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(Options {
        per_conversation: true,
        extra_toml: serve_toml(1, 1, 30, 30),
        flavor,
        ..Options::default()
    })
    .await;
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    let (body, who) = match flavor {
        // The Cloud webhook body carries wiki markup with `[~accountid:...]` mentions (see the reference notes).
        Flavor::Cloud => (
            json!({
                "webhookEvent": "comment_created",
                "comment": {"id": "10501",
                            "self": "https://x.atlassian.net/rest/api/2/issue/10042/comment/10501",
                            "author": {"accountId": "712020:developer-ben", "displayName": "Ben"},
                            "body": format!("[~accountid:{}] please keep the docstring unchanged", support::harness::BOT_ACCOUNT)},
                "issue": {"id": "10042", "key": "DEMO-1", "fields": {"summary": "x", "project": {"key": "DEMO"}}}
            }),
            "712020:developer-ben",
        ),
        Flavor::DataCenter => (
            stack.comment_webhook(
                "DEMO-1",
                "10501",
                stack.user(ADA),
                &format!(
                    "{} please keep the docstring unchanged",
                    stack.bot_mention()
                ),
            ),
            ADA.name,
        ),
    };
    assert_eq!(
        serve.webhook_for(&stack, &client, "DEMO-1", &body).await,
        202
    );
    let queue = stack.queue().await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    serve.stop().await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0]);
    assert_eq!(jobs[0].triggers[0].triggered_by.as_deref(), Some(who));
    let first = String::from_utf8_lossy(&stack.model.requests()[0].body).into_owned();
    assert!(
        first.contains(&format!("<request>{who}:"))
            && first.contains("please keep the docstring unchanged"),
        "{first}"
    );
    assert_reported_in_the_sites_format(&stack);
}

/// The ticket heard "started" and "PR opened", in the site's format; on Data Center every call was REST v2.
fn assert_reported_in_the_sites_format(stack: &Stack) {
    let texts = stack.jira.comment_texts("DEMO-1");
    let url = stack.github.pulls(DEMO_REPO)[0]["html_url"]
        .as_str()
        .expect("html_url")
        .to_string();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("drafter started working on this")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Draft pull request opened: ")),
        "{texts:?}"
    );
    let bodies = stack.jira.comments("DEMO-1");
    if stack.flavor == Flavor::DataCenter {
        assert!(
            bodies.iter().all(serde_json::Value::is_string),
            "{bodies:?}"
        );
        assert!(
            bodies
                .iter()
                .any(|b| b.as_str().is_some_and(|w| w.contains(&format!("|{url}]")))),
            "the PR as a wiki link: {bodies:?}"
        );
        let paths = stack.jira_paths();
        assert!(
            paths.iter().all(|p| p.starts_with("/rest/api/2/")),
            "{paths:?}"
        );
    } else {
        assert!(bodies.iter().all(|b| b["type"] == "doc"), "{bodies:?}");
    }
}

/// Without webhooks: the poll finds a ticket assigned to the bot, runs it to a draft PR and reports on the ticket.
/// The trigger is the assignment in the ticket's change history, by whoever made it.
async fn poll_takes_a_ticket_to_a_draft_pr(flavor: Flavor) {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(Options {
        per_conversation: true,
        extra_toml: format!(
            "{}\n[poll]\nenabled = true\ninterval_secs = 1\n",
            serve_toml(1, 1, 30, 30)
        ),
        flavor,
        ..Options::default()
    })
    .await;
    let change = stack
        .jira
        .assign("DEMO-1", stack.bot_user(), stack.user(ADA));
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let queue = stack.queue().await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    // A few more polls find the same assignment: no second job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = serve.stop().await;
    let all = queue
        .list(&JobFilter {
            limit: 100,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0]);
    let t = &jobs[0].triggers[0];
    assert_eq!(t.source, "poll");
    // On Data Center the history names the bot by user key, which the runner learned from /myself at start.
    assert_eq!(t.delivery, format!("changelog:{change}"), "{log}");
    assert_eq!(t.triggered_by.as_deref(), Some(stack.id(ADA)));
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_reported_in_the_sites_format(&stack);
    if flavor == Flavor::DataCenter {
        let paths = stack.jira_paths();
        assert!(paths.iter().any(|p| p == "/rest/api/2/myself"), "{paths:?}");
        assert!(paths.iter().any(|p| p == "/rest/api/2/search"), "{paths:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poll_takes_an_assigned_ticket_to_a_draft_pr() {
    poll_takes_a_ticket_to_a_draft_pr(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poll_takes_an_assigned_ticket_to_a_draft_pr_on_data_center() {
    poll_takes_a_ticket_to_a_draft_pr(Flavor::DataCenter).await;
}

/// Fencing (issue 12.8): a worker frozen (SIGSTOP) in the middle of its push, past its lease, while a second worker
/// takes the job over. The frozen one wakes up while the second is in its model loop, and its push lands first.
/// Before fencing, the second worker's push was then rejected and the job failed (with a "failed" comment) although
/// the branch held the job's work; now the branch holding this job's commit counts as delivered, the stale worker's
/// lease token lets it do nothing more, and the ticket hears exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_worker_and_its_successor_deliver_exactly_once() {
    let _serial = SERIAL.lock().await;
    let stack = serve_stack(1, 1, 3, 30).await;
    stack.github.set_git_delay(Duration::from_millis(1500));
    stack.model.set_delay(Duration::from_millis(800));
    let first = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    first.assign(&client, "DEMO-1", 801).await;
    // Freeze the first worker as soon as its push asks the remote for its refs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stack.github.requests().iter().any(|r| {
        r.path.contains("git-receive-pack")
            || r.query
                .as_deref()
                .unwrap_or("")
                .contains("git-receive-pack")
    }) {
        assert!(Instant::now() < deadline, "the first worker never pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("-STOP");
    let model_calls = stack.model.requests().len();

    // The second worker takes the job over once the lease has run out, and starts its own model loop.
    let second = ServeProcess::start(&stack, Path::new(BIN)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stack.model.requests().len() <= model_calls {
        assert!(
            Instant::now() < deadline,
            "the second worker never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wake the first one: its push goes on (it was past every check), and lands before the second one's.
    first.signal("-CONT");

    let queue = stack.queue().await;
    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    // Give the first worker time to do whatever it still would.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = second.stop().await;
    let first_log = first.stop().await;

    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}\n{log}", jobs[0]);
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(pr_opened_comments(&stack, "DEMO-1"), 1);
    let comments = stack.jira.comment_texts("DEMO-1");
    assert!(
        !comments.iter().any(|c| c.contains("failed")),
        "no failure is reported for a delivered job: {comments:?}"
    );
    let after = queue.get(&jobs[0].id).await.unwrap().unwrap();
    assert_eq!(
        after.state,
        JobState::Succeeded,
        "the stale worker changed nothing"
    );
    assert!(
        first_log.contains("lease lost"),
        "the stale worker noticed: {first_log}"
    );
}

/// Issue 12.8, the push race made deterministic: while the worker is in its model loop, "another worker of the same
/// job" (this test) pushes the job's branch with a commit naming the job. The worker's own push is then refused as
/// non-fast-forward; the branch holds this job's work, so the job is delivered (one PR, from that commit), not
/// failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_branch_that_already_holds_the_jobs_commit_is_delivered_not_failed() {
    let _serial = SERIAL.lock().await;
    let stack = serve_stack(1, 1, 30, 30).await;
    stack.model.set_delay(Duration::from_millis(600));
    let queue = stack.queue().await;
    let job_id = queue
        .enqueue(drafter::queue::NewJob {
            ticket: "DEMO-1".into(),
            project: "DEMO".into(),
            trigger: drafter::queue::Trigger {
                delivery: "test:race".into(),
                source: "webhook:jira:issue_updated".into(),
                triggered_by: Some("712020:developer-ada".into()),
                text: None,
                at: chrono::Utc::now(),
                review: None,
            },
            max_attempts: 1,
        })
        .await
        .expect("enqueue")
        .job_id()
        .to_string();
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stack.model.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker never reached its model loop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker has cloned and chosen its branch; now the branch appears, holding a commit of this job.
    let branch = "drafter/DEMO-1-greeting-should-end-with-an-exclamation";
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("w");
    let out = std::process::Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&stack.bare_repo)
        .arg(&work)
        .output()
        .expect("git clone");
    assert!(out.status.success());
    git_in(&work, &["checkout", "-q", "-b", branch]);
    std::fs::write(
        work.join("greet.py"),
        std::fs::read_to_string(work.join("greet.py"))
            .expect("greet.py")
            .replace("Hello, {name}.", "Hello, {name}!"),
    )
    .expect("write");
    git_in(
        &work,
        &[
            "-c",
            "user.name=drafter[bot]",
            "-c",
            "user.email=drafter-bot@example.com",
            "commit",
            "-q",
            "-am",
            &format!("[DEMO-1] the other attempt\n\nDrafter-Ticket: DEMO-1\nDrafter-Job: {job_id}"),
        ],
    );
    let theirs = git_in(&work, &["rev-parse", "HEAD"]).trim().to_string();
    git_in(&work, &["push", "-q", "origin", branch]);

    let jobs = wait_all_finished(queue.as_ref(), 1, Duration::from_secs(120)).await;
    let log = serve.stop().await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}\n{log}", jobs[0]);
    assert!(log.contains("already holds this job's commit"), "{log}");
    let pulls = stack.github.pulls(DEMO_REPO);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let tip = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&stack.bare_repo)
        .args(["rev-parse", &format!("refs/heads/{branch}")])
        .output()
        .expect("git");
    assert_eq!(
        String::from_utf8_lossy(&tip.stdout).trim(),
        theirs,
        "the branch was never overwritten"
    );
    assert_eq!(pr_opened_comments(&stack, "DEMO-1"), 1);
}
