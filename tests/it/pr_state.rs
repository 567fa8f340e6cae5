//! A drafter pull request merged, closed or reopened on GitHub shows so on its ticket's remote link, through the
//! real `drafter serve`, even when Jira is down at that moment: GitHub does not redeliver a failed delivery by
//! itself (https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries), so the delivery
//! is answered once the state is recorded in the queue, and serve tells Jira later, with backoff. Sites GitHub
//! cannot reach find the state by polling the pull request. Each state reaches Jira once, however often delivered
//! or polled.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use drafter::queue::JobState;
use serde_json::{json, Value};
use support::github_review::deliver;
use support::harness::{Options, ServeProcess, Stack, DEMO_REPO, WEBHOOK_SECRET};

use crate::support::POOL_SERIAL as SERIAL;

const BIN: &str = env!("CARGO_BIN_EXE_drafter");
const ADA: &str = "712020:developer-ada"; // the user in `assignment_webhook`

async fn stack(more_toml: &str) -> Stack {
    Stack::start(Options {
        policy: Some(format!(
            "version = 1\n\n[teams.demo]\nprojects = [\"DEMO\"]\n\
             repos = [{{ name = \"{DEMO_REPO}\", bases = [\"main\"] }}]\ntriggers = {{ accounts = [\"{ADA}\"] }}\n"
        )),
        github_toml: "bot_login = \"drafter-bot\"".into(),
        extra_toml: format!(
            "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\n\
             github_webhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\nconcurrency = 1\nper_project = 1\n\
             lease_secs = 30\nheartbeat_secs = 1\ndrain_timeout_secs = 30\nmax_attempts = 2\nidle_poll_ms = 100\n\
             {more_toml}"
        ),
        ..Options::default()
    })
    .await
}

/// Serve, assign DEMO-1, wait for its draft PR: the serve process, its GitHub webhook URL and the PR.
async fn first_pr(stack: &Stack, client: &reqwest::Client) -> (ServeProcess, String, Value) {
    let serve = ServeProcess::start(stack, Path::new(BIN)).await;
    serve.assign(client, "DEMO-1", 10_001).await;
    let queue = stack.queue().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let jobs = support::harness::all_jobs(queue.as_ref()).await;
        if matches!(jobs.as_slice(), [j] if j.state == JobState::Succeeded) {
            break;
        }
        assert!(Instant::now() < deadline, "no PR: {jobs:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pulls = stack.github.pulls(DEMO_REPO);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:#?}");
    assert_eq!(link_state(stack), "Open");
    let url = format!("http://{}/webhooks/github", serve.addr);
    (serve, url, pulls[0].clone())
}

/// The status title of DEMO-1's one remote link (`Open`, `Merged`, `Closed`).
fn link_state(stack: &Stack) -> String {
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:#?}");
    links[0]["object"]["status"]["icon"]["title"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Remote link posts that reached the stand-in saying `title` (failed ones included).
fn link_posts(stack: &Stack, title: &str) -> usize {
    stack
        .jira
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/remotelink"))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|b| b["object"]["status"]["icon"]["title"] == title)
        .count()
}

async fn wait_link(stack: &Stack, title: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while link_state(stack) != title {
        assert!(
            Instant::now() < deadline,
            "the link never showed {title}: {:#?}",
            stack.jira.remote_links("DEMO-1")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `pull_request` delivery with `action` for the stand-in's PR.
fn pr_event(pr: &Value, action: &str, merged: bool) -> Value {
    let mut e = json!({"action": action, "number": 1,
        "pull_request": support::github_review::pull_request(pr), "repository": {"full_name": DEMO_REPO}});
    e["pull_request"]["merged"] = json!(merged);
    e["pull_request"]["state"] = json!(if action == "reopened" {
        "open"
    } else {
        "closed"
    });
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_delivered_while_jira_is_down_reaches_the_link_once() {
    let _serial = SERIAL.lock().await;
    let stack = stack("").await;
    let client = reqwest::Client::new();
    let (serve, url, pr) = first_pr(&stack, &client).await;

    // Jira answers 503 to the next three link posts: the delivery is still accepted (recorded), not lost.
    stack.jira.fail_next_post_on("/remotelink", 503, 3);
    let merged = pr_event(&pr, "closed", true);
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request",
        "m-1",
        &merged,
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    // GitHub's manual redelivery, and a second delivery of the same event: nothing more to tell Jira.
    for id in ["m-1", "m-2"] {
        let (status, body) = deliver(
            &client,
            &url,
            "pull_request",
            id,
            &merged,
            Some(WEBHOOK_SECRET),
        )
        .await;
        assert_eq!(
            (status, &body["status"]),
            (202, &json!("duplicate")),
            "{body}"
        );
    }
    wait_link(&stack, "Merged", Duration::from_secs(90)).await;
    // Three refused posts, then the one that landed; and nothing after it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(link_posts(&stack, "Merged"), 4);
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request",
        "m-3",
        &merged,
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("duplicate")),
        "{body}"
    );
    // A merged PR stays merged: a stray `closed` (unmerged) delivery does not undo it.
    let closed = pr_event(&pr, "closed", false);
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request",
        "m-4",
        &closed,
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(link_state(&stack), "Merged");
    assert_eq!(link_posts(&stack, "Merged"), 4);
    assert_eq!(link_posts(&stack, "Closed"), 0);
    let log = serve.stop().await;
    assert!(
        log.contains("could not update the ticket's link"),
        "each failure is logged: {log}"
    );
    assert!(!log.contains(support::harness::JIRA_TOKEN), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_then_reopened_pr_shows_open_again() {
    let _serial = SERIAL.lock().await;
    let stack = stack("").await;
    let client = reqwest::Client::new();
    let (serve, url, pr) = first_pr(&stack, &client).await;
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request",
        "c-1",
        &pr_event(&pr, "closed", false),
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!((status, &body["status"]), (202, &json!("linked")), "{body}");
    assert_eq!(link_state(&stack), "Closed");
    stack.jira.fail_next_post_on("/remotelink", 500, 1);
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request",
        "c-2",
        &pr_event(&pr, "reopened", false),
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("pending")),
        "{body}"
    );
    wait_link(&stack, "Open", Duration::from_secs(60)).await;
    assert_eq!(
        stack.jira.remote_links("DEMO-1")[0]["object"]["status"]["resolved"],
        false
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn where_github_cannot_deliver_the_poll_finds_a_merged_pr_once() {
    let _serial = SERIAL.lock().await;
    let stack = stack("\n[poll]\nenabled = true\ninterval_secs = 1\n").await;
    let client = reqwest::Client::new();
    let (serve, _url, _pr) = first_pr(&stack, &client).await;
    // Jira down for the first try too: the poll's record is durable like a delivery's.
    stack.jira.fail_next_post_on("/remotelink", 503, 1);
    stack.github.set_pull_state(DEMO_REPO, 1, "closed", true);
    wait_link(&stack, "Merged", Duration::from_secs(90)).await;
    // Several more poll rounds: the merge was told once (plus the refused try).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(link_posts(&stack, "Merged"), 2);
    serve.stop().await;
    let queue = stack.queue().await;
    let jobs = support::harness::all_jobs(queue.as_ref()).await;
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
}
