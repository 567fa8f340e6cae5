//! The ticket's development panel, end to end through `drafter run` (and `drafter serve` for retries and review
//! iterations) against the Jira stand-in, Cloud and Data Center, in their documented shapes: the draft PR as one
//! remote link however often it is delivered or iterated on, the project's transitions applied by status name or
//! category, a ticket already there left alone, a missing transition skipped with a log line, and a Jira that
//! refuses (401/403/404, a screen's required field, a rate limit) not failing the job, noted without the token.

use crate::support;

use std::path::Path;

use serde_json::Value;
use support::harness::{Flavor, Options, Stack, DEMO_REPO};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

const TRANSITIONS: &str =
    "\n[jira.transitions.DEMO]\non_start = \"In Progress\"\non_pr = \"in review\"\n";

async fn stack(flavor: Flavor, jira_toml: &str) -> Stack {
    Stack::start(Options {
        flavor,
        per_conversation: true,
        jira_toml: jira_toml.to_string(),
        ..Options::default()
    })
    .await
}

async fn run(stack: &Stack) -> String {
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(out.status.success(), "drafter run failed:\n{log}");
    log
}

fn job_records(stack: &Stack) -> Vec<Value> {
    std::fs::read_dir(stack.data_dir().join("jobs"))
        .expect("jobs dir")
        .filter_map(Result::ok)
        .map(|e| {
            let text = std::fs::read_to_string(e.path().join("job.json")).expect("job.json");
            serde_json::from_str(&text).expect("job.json is JSON")
        })
        .collect()
}

async fn linked_and_moved(flavor: Flavor) {
    let stack = stack(flavor, TRANSITIONS).await;
    run(&stack).await;
    let pr = &stack.github.pulls(DEMO_REPO)[0];
    let url = pr["html_url"].as_str().expect("html_url");
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["globalId"], format!("drafter:{DEMO_REPO}#1"));
    assert_eq!(links[0]["object"]["url"], url);
    assert_eq!(links[0]["object"]["title"], format!("{DEMO_REPO}#1"));
    assert_eq!(links[0]["object"]["status"]["resolved"], false);
    // The rest of the documented request (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-remote-links/#api-rest-api-3-issue-issueidorkey-remotelink-post):
    // the application, the relationship, the icon, and the status's icon linking to the PR.
    assert_eq!(
        links[0]["application"],
        serde_json::json!({"type": "com.github", "name": "GitHub"})
    );
    assert_eq!(links[0]["relationship"], "Pull request");
    assert_eq!(links[0]["object"]["icon"]["title"], "GitHub");
    assert!(links[0]["object"]["icon"]["url16x16"].is_string());
    assert_eq!(links[0]["object"]["status"]["icon"]["link"], url);
    assert_eq!(links[0]["object"]["status"]["icon"]["title"], "Open");
    assert!(
        links[0]["object"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("[DEMO-1]")),
        "{links:?}"
    );
    // on_start then on_pr: To Do -> In Progress -> In Review (matched without regard to case).
    assert_eq!(stack.jira.status("DEMO-1"), "In Review");
    let posts: Vec<String> = stack
        .jira
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/transitions"))
        .map(|r| r.path)
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    if flavor == Flavor::DataCenter {
        let paths = stack.jira_paths();
        assert!(
            paths.iter().all(|p| p.starts_with("/rest/api/2/")),
            "{paths:?}"
        );
    }

    // The same link posted again (what a retried attempt of the job does: same PR, same `globalId`) updates it.
    let jira = drafter::jira::JiraClient::new(&stack_client_config(&stack)).expect("client");
    let again = drafter::jira::PrLink {
        repo: DEMO_REPO.into(),
        number: 1,
        url: url.into(),
        title: "[DEMO-1] retitled".into(),
        state: drafter::jira::PrState::Open,
    };
    jira.upsert_remote_link("DEMO-1", &again)
        .await
        .expect("upsert");
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["object"]["summary"], "[DEMO-1] retitled");

    // A second job for the ticket opens its own PR (a new branch): a second link beside the first, not over it.
    run(&stack).await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 2);
    let links = stack.jira.remote_links("DEMO-1");
    let ids: Vec<&str> = links
        .iter()
        .filter_map(|l| l["globalId"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            format!("drafter:{DEMO_REPO}#1"),
            format!("drafter:{DEMO_REPO}#2")
        ]
    );
    assert!(job_records(&stack).iter().all(|r| r.get("notes").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_pr_is_linked_once_and_the_ticket_moves_cloud() {
    linked_and_moved(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_pr_is_linked_once_and_the_ticket_moves_data_center() {
    linked_and_moved(Flavor::DataCenter).await;
}

async fn refused_link_and_missing_transition(flavor: Flavor) {
    // By category: on_start = "indeterminate" finds "Doing"; the workflow has no "In Review".
    let toml = "\n[jira.transitions.\"*\"]\non_start = \"indeterminate\"\non_pr = \"In Review\"\n";
    let stack = stack(flavor, toml).await;
    stack.jira.set_workflow(&[
        ("To Do", "new"),
        ("Doing", "indeterminate"),
        ("Done", "done"),
    ]);
    stack.jira.fail_next_on("/remotelink", 403, 1);
    let log = run(&stack).await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "Doing");
    assert!(stack.jira.remote_links("DEMO-1").is_empty());
    assert!(
        log.contains("no transition to that status") && log.contains("In Review"),
        "{log}"
    );
    assert!(log.contains("could not link the pull request"), "{log}");
    let record = &job_records(&stack)[0];
    assert!(record["outcome"].is_object(), "{record}");
    let notes = record["notes"].to_string();
    assert!(
        notes.contains("remote link not saved") && notes.contains("403"),
        "{notes}"
    );
    // The PR comment was posted all the same.
    let comments = stack.jira.comment_texts("DEMO-1");
    assert_eq!(comments.len(), 2, "{comments:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_link_and_missing_transition_do_not_fail_the_job_cloud() {
    refused_link_and_missing_transition(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_link_and_missing_transition_do_not_fail_the_job_data_center() {
    refused_link_and_missing_transition(Flavor::DataCenter).await;
}

async fn link_state_updates(flavor: Flavor) {
    // What a closed or merged PR will do once drafter learns of it: the same link, now resolved.
    let stack = stack(flavor, "").await;
    let cfg = stack_client_config(&stack);
    let jira = drafter::jira::JiraClient::new(&cfg).expect("client");
    let mut link = drafter::jira::PrLink {
        repo: DEMO_REPO.into(),
        number: 3,
        url: "https://github.example/acme/widgets/pull/3".into(),
        title: "[DEMO-1] Greet".into(),
        state: drafter::jira::PrState::Open,
    };
    jira.upsert_remote_link("DEMO-1", &link)
        .await
        .expect("link");
    link.state = drafter::jira::PrState::Merged;
    jira.upsert_remote_link("DEMO-1", &link)
        .await
        .expect("update");
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["object"]["status"]["resolved"], true);
    assert_eq!(links[0]["object"]["status"]["icon"]["title"], "Merged");
}

fn stack_client_config(stack: &Stack) -> drafter::config::JiraConfig {
    use support::harness::{JIRA_EMAIL, JIRA_TOKEN};
    use support::jira::{cloud_client_config, dc_client_config, DC_BOT_KEY, DC_BOT_NAME};
    match stack.flavor {
        Flavor::Cloud => cloud_client_config(&stack.jira.base_url(), JIRA_EMAIL, JIRA_TOKEN),
        Flavor::DataCenter => {
            dc_client_config(&stack.jira.base_url(), DC_BOT_KEY, DC_BOT_NAME, JIRA_TOKEN)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merged_pr_updates_its_link_cloud_and_data_center() {
    link_state_updates(Flavor::Cloud).await;
    link_state_updates(Flavor::DataCenter).await;
}

/// The POSTs drafter made to the ticket's transitions.
fn transition_posts(stack: &Stack) -> Vec<String> {
    stack
        .jira
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/transitions"))
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

fn notes(stack: &Stack) -> Vec<String> {
    job_records(stack)
        .iter()
        .flat_map(|r| r["notes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

async fn already_there(flavor: Flavor) {
    // A retried job, a review iteration, or a person who moved the ticket first: it is in review already. By
    // category (`indeterminate`: In Review is one) and by name, nothing is posted, even where the workflow offers a
    // looped transition to the status it is in (`isLooped`, Jira's "any status -> itself"), and nothing is warned.
    let toml = "\n[jira.transitions.DEMO]\non_start = \"indeterminate\"\non_pr = \"IN REVIEW\"\n";
    let stack = stack(flavor, toml).await;
    stack.jira.set_status("DEMO-1", "In Review");
    stack.jira.set_looped_transitions(true);
    let log = run(&stack).await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "In Review");
    assert_eq!(transition_posts(&stack), Vec::<String>::new());
    assert!(!log.contains("no transition to that status"), "{log}");
    assert!(log.contains("already"), "{log}");
    assert_eq!(notes(&stack), Vec::<String>::new());

    // A name still wins over a category: "In Progress" is a status of its own, so In Review moves there.
    let stack2 = self::stack(
        flavor,
        "\n[jira.transitions.DEMO]\non_pr = \"In Progress\"\n",
    )
    .await;
    stack2.jira.set_status("DEMO-1", "In Review");
    run(&stack2).await;
    assert_eq!(stack2.jira.status("DEMO-1"), "In Progress");
    assert_eq!(transition_posts(&stack2).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_already_in_the_target_status_is_left_alone_cloud() {
    already_there(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_already_in_the_target_status_is_left_alone_data_center() {
    already_there(Flavor::DataCenter).await;
}

async fn screen_requires_a_field(flavor: Flavor) {
    // A transition whose screen requires a field answers 400 `{"errorMessages":[],"errors":{"<field>":"..."}}`
    // (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-post:
    // "400 ... if a required field is not provided"; Data Center:
    // https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-doTransition). drafter sends no
    // fields: the ticket stays where on_start put it, the job delivers, and the field's error is in the notes.
    let stack = stack(flavor, TRANSITIONS).await;
    stack
        .jira
        .require_field_on("In Review", "customfield_10020");
    let log = run(&stack).await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(stack.jira.remote_links("DEMO-1").len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "In Progress");
    let notes = notes(&stack);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("on_pr transition to \"in review\" not applied")
            && notes[0].contains("HTTP 400")
            && notes[0].contains("customfield_10020 is required"),
        "{notes:?}"
    );
    assert!(log.contains("could not move the ticket"), "{log}");
    assert_eq!(stack.jira.comment_texts("DEMO-1").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transition_screen_with_a_required_field_is_noted_not_fatal_cloud() {
    screen_requires_a_field(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transition_screen_with_a_required_field_is_noted_not_fatal_data_center() {
    screen_requires_a_field(Flavor::DataCenter).await;
}

/// Jira's rate-limit answer: 429 with `Retry-After` and the usual error body
/// (https://developer.atlassian.com/cloud/jira/platform/rate-limiting/).
fn rate_limited() -> Value {
    serde_json::json!({"errorMessages": ["Rate limit exceeded."], "errors": {}})
}

async fn rate_limits(flavor: Flavor) {
    // A short `Retry-After` is waited out once: the link is saved, the ticket moved, nothing noted.
    let stack = stack(flavor, TRANSITIONS).await;
    stack
        .jira
        .fail_next_on_with("/remotelink", 429, 1, Some("1"), Some(rate_limited()));
    run(&stack).await;
    assert_eq!(stack.jira.remote_links("DEMO-1").len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "In Review");
    assert_eq!(notes(&stack), Vec::<String>::new());

    // A long one is not: the job delivers now, and says why the ticket did not move, with Jira's wait.
    let stack = self::stack(flavor, TRANSITIONS).await;
    stack
        .jira
        .fail_next_on_with("/transitions", 429, 100, Some("120"), Some(rate_limited()));
    let started = std::time::Instant::now();
    let log = run(&stack).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(stack.jira.remote_links("DEMO-1").len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "To Do");
    let notes = notes(&stack);
    assert_eq!(notes.len(), 2, "{notes:?}");
    for n in &notes {
        assert!(
            n.contains("rate limit") && n.contains("retry after 120 s"),
            "{notes:?}"
        );
    }
    assert!(log.contains("could not move the ticket"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_on_the_panel_are_waited_out_when_short_cloud() {
    rate_limits(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_on_the_panel_are_waited_out_when_short_data_center() {
    rate_limits(Flavor::DataCenter).await;
}

async fn refusals_name_the_status_never_the_token(flavor: Flavor) {
    use base64::Engine as _;
    use support::harness::{JIRA_EMAIL, JIRA_TOKEN};
    // 401 on the link, its body echoing the credential (a hostile or broken proxy); then 404 on the transitions with
    // Jira's documented body. Both are noted with their status; the credential is in neither the notes nor the log.
    // What drafter sends: Basic `email:api_token` on Cloud, the personal access token as Bearer on Data Center.
    let credential = match flavor {
        Flavor::Cloud => {
            base64::engine::general_purpose::STANDARD.encode(format!("{JIRA_EMAIL}:{JIRA_TOKEN}"))
        }
        Flavor::DataCenter => JIRA_TOKEN.to_string(),
    };
    let echo = serde_json::json!({
        "errorMessages": [format!("You are not authenticated. Authorization: {credential} ({JIRA_TOKEN})")],
        "errors": {}
    });
    let stack = stack(flavor, TRANSITIONS).await;
    stack
        .jira
        .fail_next_on_with("/remotelink", 401, 1, None, Some(echo));
    let log = run(&stack).await;
    let notes = notes(&stack);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("remote link not saved") && notes[0].contains("HTTP 401"),
        "{notes:?}"
    );
    let record = std::fs::read_dir(stack.data_dir().join("jobs"))
        .expect("jobs")
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path().join("job.json")).expect("job.json"))
        .collect::<String>();
    for secret in [JIRA_TOKEN, credential.as_str()] {
        assert!(!record.contains(secret), "{record}");
        assert!(!log.contains(secret), "{log}");
    }

    let stack = self::stack(flavor, "\n[jira.transitions.DEMO]\non_pr = \"In Review\"\n").await;
    let not_found = serde_json::json!({
        "errorMessages": ["Issue does not exist or you do not have permission to see it."],
        "errors": {}
    });
    stack
        .jira
        .fail_next_on_with("/transitions", 404, 1, None, Some(not_found));
    run(&stack).await;
    let notes = self::notes(&stack);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("on_pr transition") && notes[0].contains("not found"),
        "{notes:?}"
    );

    // A bare 403, Jira's error shape with nothing in it (no "Link issues" permission): said as such, not as JSON.
    stack.jira.fail_next_on_with(
        "/remotelink",
        403,
        1,
        None,
        Some(serde_json::json!({"errorMessages": [], "errors": {}})),
    );
    run(&stack).await;
    let notes = self::notes(&stack);
    let refused: Vec<&String> = notes
        .iter()
        .filter(|n| n.starts_with("remote link not saved"))
        .collect();
    assert_eq!(refused.len(), 1, "{notes:?}");
    assert!(
        refused[0].contains("HTTP 403")
            && refused[0].contains("(no details)")
            && !refused[0].contains("errorMessages"),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_on_the_panel_are_noted_without_the_token_cloud() {
    refusals_name_the_status_never_the_token(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_on_the_panel_are_noted_without_the_token_data_center() {
    refusals_name_the_status_never_the_token(Flavor::DataCenter).await;
}

/// `drafter serve` with Ada as the only trigger (`assignment_webhook`'s user), GitHub webhooks, two attempts a job.
fn serve_options(jira_toml: &str) -> Options {
    let ada = "712020:developer-ada";
    Options {
        policy: Some(format!(
            "version = 1\n\n[teams.demo]\nprojects = [\"DEMO\"]\n\
             repos = [{{ name = \"{DEMO_REPO}\", bases = [\"main\"] }}]\ntriggers = {{ accounts = [\"{ada}\"] }}\n"
        )),
        github_toml: "bot_login = \"drafter-bot\"".into(),
        jira_toml: jira_toml.into(),
        extra_toml: "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\n\
             github_webhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\nconcurrency = 1\nper_project = 1\n\
             lease_secs = 30\nheartbeat_secs = 1\ndrain_timeout_secs = 30\nmax_attempts = 2\nidle_poll_ms = 100\n"
            .into(),
        ..Options::default()
    }
}

/// Waits until the queue's only job has succeeded with `iterations` follow-ups; returns it.
async fn wait_succeeded(
    queue: &dyn drafter::queue::Queue,
    what: &str,
    iterations: u32,
) -> drafter::queue::Job {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let jobs = support::harness::all_jobs(queue).await;
        if let [job] = jobs.as_slice() {
            if job.state == drafter::queue::JobState::Succeeded && job.iterations == iterations {
                return job.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {jobs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A review iteration (`drafter serve`, a writer's line comment on the PR): the same job runs again on the same PR.
/// The ticket keeps one link (the same `globalId`, updated), hears one "updated after review" comment, and is not
/// pulled back to `on_start`'s status and forth again: an iteration is not the start of the job, and the ticket is in
/// `on_pr`'s status already.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_review_iteration_keeps_one_link_and_does_not_move_the_ticket_back() {
    use serde_json::json;
    use support::github_review::{deliver, review_comment_event};
    use support::harness::{ServeProcess, WEBHOOK_SECRET};
    use support::model::{finish, tool};

    let _serial = support::POOL_SERIAL.lock().await;
    let stack = Stack::start(serve_options(TRANSITIONS)).await;
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    let queue = stack.queue().await;
    let wait = |what: &'static str, iterations: u32| {
        let queue = queue.clone();
        async move { wait_succeeded(queue.as_ref(), what, iterations).await }
    };
    serve.assign(&client, "DEMO-1", 10_001).await;
    wait("the first run", 0).await;
    assert_eq!(stack.jira.status("DEMO-1"), "In Review");
    assert_eq!(transition_posts(&stack).len(), 2);
    let first_link = stack.jira.remote_links("DEMO-1");
    assert_eq!(first_link.len(), 1, "{first_link:#?}");

    let pr = stack.github.pulls(DEMO_REPO)[0].clone();
    stack.github.with_review(|r| {
        r.permissions.insert("alice".into(), "write".into());
    });
    let comment = stack.github.with_review(|r| {
        r.add_line_comment(
            DEMO_REPO,
            1,
            "alice",
            "@drafter-bot friendlier docstring, please",
            "greet.py",
            5,
        )
    });
    stack.model.push(vec![
        tool(
            "edit_file",
            json!({"path": "greet.py", "old": "\"\"\"Return a greeting for `name`.\"\"\"",
                   "new": "\"\"\"Return a friendly greeting for `name`.\"\"\""}),
        ),
        finish("Made the docstring friendlier."),
    ]);
    let url = format!("http://{}/webhooks/github", serve.addr);
    let event = review_comment_event(DEMO_REPO, &pr, &comment);
    let (status, body) = deliver(
        &client,
        &url,
        "pull_request_review_comment",
        "it-1",
        &event,
        Some(WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait("the iteration", 1).await;
    serve.stop().await;

    // One link, the first one's, still open.
    let links = stack.jira.remote_links("DEMO-1");
    assert_eq!(links.len(), 1, "{links:#?}");
    assert_eq!(links[0]["id"], first_link[0]["id"]);
    assert_eq!(links[0]["globalId"], format!("drafter:{DEMO_REPO}#1"));
    assert_eq!(links[0]["object"]["status"]["resolved"], false);
    // Not moved back to In Progress and forth again.
    assert_eq!(stack.jira.status("DEMO-1"), "In Review");
    assert_eq!(
        transition_posts(&stack).len(),
        2,
        "{:?}",
        transition_posts(&stack)
    );
    // One comment of each kind.
    let texts = stack.jira.comment_texts("DEMO-1");
    let count = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(count("started working"), 1, "{texts:#?}");
    assert_eq!(count("updated after review (iteration 1)"), 1, "{texts:#?}");
    assert_eq!(texts.len(), 3, "{texts:#?}");
}

/// A "finished without changes" comment that Jira stored but whose answer was lost (a gateway's 504): the attempt
/// fails and is retried, the retry ends the same way, and finds its comment already there instead of posting a
/// second one (the notice's key, `drafter:<job>:no-changes`, as for "started" and "PR opened"). A job's first run is
/// its only one that can end so: a review iteration that changes nothing still answers on its pull request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_job_tells_the_ticket_once_that_nothing_changed() {
    use support::harness::ServeProcess;
    use support::model::finish;

    let _serial = support::POOL_SERIAL.lock().await;
    let stack = Stack::start(Options {
        per_conversation: true,
        script: vec![finish("Nothing to change: the greeting is right as it is.")],
        ..serve_options("")
    })
    .await;
    stack
        .jira
        .lose_answers("/comment", "without changing any file", 1);
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    serve
        .assign(&reqwest::Client::new(), "DEMO-1", 10_001)
        .await;
    let queue = stack.queue().await;
    let job = wait_succeeded(queue.as_ref(), "the job", 0).await;
    serve.stop().await;
    assert_eq!(job.attempts, 2, "{job:#?}");
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
    let texts = stack.jira.comment_texts("DEMO-1");
    let count = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(count("without changing any file"), 1, "{texts:#?}");
    assert_eq!(count("started working"), 1, "{texts:#?}");
    assert_eq!(texts.len(), 2, "{texts:#?}");
}

/// GitHub names repositories without regard to case, and its webhooks spell them as GitHub does (`Acme/Widgets`),
/// which need not be how the policy spells them (`acme/widgets`): the link a closed pull request updates is the one
/// the job posted, not a second one beside it.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_is_the_same_whatever_the_case_of_the_repository() {
    for flavor in [Flavor::Cloud, Flavor::DataCenter] {
        let stack = stack(flavor, "").await;
        let jira = drafter::jira::JiraClient::new(&stack_client_config(&stack)).expect("client");
        let mut link = drafter::jira::PrLink {
            repo: DEMO_REPO.into(),
            number: 4,
            url: "https://github.example/acme/widgets/pull/4".into(),
            title: "[DEMO-1] Greet".into(),
            state: drafter::jira::PrState::Open,
        };
        jira.upsert_remote_link("DEMO-1", &link)
            .await
            .expect("link");
        link.repo = DEMO_REPO.to_uppercase();
        link.state = drafter::jira::PrState::Closed;
        jira.upsert_remote_link("DEMO-1", &link)
            .await
            .expect("update");
        let links = stack.jira.remote_links("DEMO-1");
        assert_eq!(links.len(), 1, "{flavor:?}: {links:#?}");
        assert_eq!(links[0]["object"]["status"]["resolved"], true);
    }
}

async fn no_transitions_at_all(flavor: Flavor) {
    // Without the Transition issues permission Jira lists no transitions at all, rather than answering 403
    // (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get,
    // "Permissions required"). That is a setup to fix, not a workflow without the target: the log says what to check
    // and job.json notes it; the job delivers.
    let stack = stack(flavor, TRANSITIONS).await;
    stack.jira.set_transition_permission(false);
    let log = run(&stack).await;
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    assert_eq!(stack.jira.status("DEMO-1"), "To Do");
    assert_eq!(transition_posts(&stack), Vec::<String>::new());
    assert!(log.contains("Transition issues"), "{log}");
    let notes = notes(&stack);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].contains("on_start transition to \"In Progress\" not applied")
            && notes[0].contains("no transitions at all from To Do")
            && notes[0].contains("Transition issues"),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_transitions_at_all_is_noted_as_a_permission_to_check_cloud() {
    no_transitions_at_all(Flavor::Cloud).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_transitions_at_all_is_noted_as_a_permission_to_check_data_center() {
    no_transitions_at_all(Flavor::DataCenter).await;
}
