//! The ticket's development panel, end to end through `drafter run` against the Jira stand-in (Cloud and Data
//! Center): the draft PR as one remote link however often it is delivered, the project's transitions applied, a
//! missing transition skipped with a log line, and a Jira that refuses the link not failing the job.

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
