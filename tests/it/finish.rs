//! How a job ends, through the real `drafter` binary, the stand-ins and the real Docker sandbox: the write rules are
//! run when the model calls `finish`, and a violation goes back to the model once before the job is refused; build
//! products that commands left behind (`__pycache__`, ...) never reach the commit and are listed in the PR body.

use crate::support;

use support::git::{branches, git};

use std::path::{Path, PathBuf};
use std::process::Output;

use drafter::proof::bundle::{Predicate, ToolCall};
use serde_json::json;
use support::harness::{Options, Stack, DEMO_REPO};
use support::model::{tool, Step};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

/// A Python repository like the demo, but without a `.gitignore`: nothing hides `__pycache__` from git.
const PLAIN_REPO: &str = "acme/plain";

fn edit_greet() -> Step {
    tool(
        "edit_file",
        json!({"path": "greet.py", "old": "return f\"Hello, {name}.\"", "new": "return f\"Hello, {name}!\""}),
    )
}

fn edit_test() -> Step {
    tool(
        "edit_file",
        json!({"path": "test_greet.py", "old": "\"Hello, Ada.\"", "new": "\"Hello, Ada!\""}),
    )
}

/// The demo team under a policy file, working on `repo`; `write` is the body of `[teams.demo.write]`.
fn policy(repo: &str, write: &str) -> String {
    format!(
        r#"version = 1

[teams.demo]
projects = ["DEMO"]
repos = [{{ name = "{repo}", bases = ["main"], test_command = "python3 -m unittest -v" }}]
triggers = {{ accounts = ["712020:developer-ada"] }}

[teams.demo.write]
{write}
"#
    )
}

/// A stack whose DEMO project works on [`PLAIN_REPO`]: the demo's files minus `.gitignore`.
async fn plain_stack(script: Vec<Step>, write: &str) -> (Stack, PathBuf) {
    let stack = Stack::start(Options {
        policy: Some(policy(PLAIN_REPO, write)),
        script,
        ..Options::default()
    })
    .await;
    let files: Vec<(String, String)> = support::harness::demo_files()
        .into_iter()
        .filter(|(name, _)| name != ".gitignore")
        .collect();
    assert!(files.iter().any(|(n, _)| n == "greet.py"));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let bare = stack.github.create_repo(PLAIN_REPO, &refs);
    // The demo ticket names the demo repository; this one names none, so the team's first repository is used.
    stack.jira.add_issue(
        "DEMO-2",
        "Greeting should end with an exclamation mark",
        json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "greet(\"Ada\") should return \"Hello, Ada!\"; keep the tests passing."}]}]}),
        &[],
    );
    (stack, bare)
}

async fn run(stack: &Stack, ticket: &str) -> (Output, String) {
    stack
        .output(Path::new(BIN), &["run", "--ticket", ticket])
        .await
}

/// The paths the only drafter branch changes against `main`.
fn pushed_files(bare: &Path) -> Vec<String> {
    let branch = branches(bare)
        .into_iter()
        .find(|b| b.starts_with("drafter/"))
        .expect("a drafter branch was pushed");
    git(bare, &["diff", "--name-only", &format!("main..{branch}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The job's bundle, verified through the CLI pinned to the runner key; returns the `finish` tool calls.
async fn finish_calls(stack: &Stack) -> Vec<ToolCall> {
    stack
        .verified_bundle(Path::new(BIN))
        .await
        .into_iter()
        .filter_map(|(_, p)| match p {
            Predicate::ToolCall(c) if c.name == "finish" => Some(c),
            _ => None,
        })
        .collect()
}

/// The text of the last tool result in a recorded Anthropic request: what the model was shown.
fn last_tool_result(request: &support::RecordedRequest) -> String {
    let body = request.json().expect("request JSON");
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .expect("a last message");
    last["content"]
        .as_array()
        .and_then(|c| c.iter().rev().find(|b| b["type"] == "tool_result"))
        .and_then(|b| b["content"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no tool result in {last}"))
}

#[tokio::test]
async fn build_products_of_the_tests_are_left_out_and_listed_in_the_pr() {
    // The ticket's change, then the tests as every agent runs them: __pycache__ appears, and a log the policy
    // excludes.
    let script = vec![
        edit_greet(),
        edit_test(),
        tool(
            "run",
            json!({"command": "python3 -m unittest -v > test.log 2>&1; cat test.log; ls __pycache__"}),
        ),
        tool(
            "finish",
            json!({"summary": "greet() ends with an exclamation mark; tests pass."}),
        ),
    ];
    let (stack, bare) = plain_stack(script, "exclude = [\"*.log\"]").await;
    let (out, log) = run(&stack, "DEMO-2").await;
    assert!(out.status.success(), "{log}");
    let traffic: String = stack
        .model
        .requests()
        .iter()
        .map(|r| r.body_text())
        .collect();
    assert!(
        traffic.contains(".cpython-"),
        "the tests wrote bytecode: {traffic}"
    );

    // Only the source change was pushed.
    assert_eq!(pushed_files(&bare), ["greet.py", "test_greet.py"]);
    // The PR says what was left out.
    let pulls = stack.github.pulls(PLAIN_REPO);
    assert_eq!(pulls.len(), 1, "{log}");
    assert_eq!(pulls[0]["draft"], true);
    let body = pulls[0]["body"].as_str().expect("PR body");
    let left = body
        .split("### Left out")
        .nth(1)
        .unwrap_or_else(|| panic!("no Left out section: {body}"));
    assert!(left.contains("`__pycache__/`"), "{body}");
    assert!(left.contains("`test.log`"), "{body}");
    let files = body
        .split("### Files changed")
        .nth(1)
        .and_then(|s| s.split("###").next())
        .unwrap_or("");
    assert!(
        !files.contains("pycache") && !files.contains("test.log"),
        "{body}"
    );
    // One finish, accepted: the build products never broke a rule.
    let finishes = finish_calls(&stack).await;
    assert_eq!(finishes.len(), 1, "{finishes:?}");
    assert!(finishes[0].ok && finishes[0].refused_by.is_none());
}

#[tokio::test]
async fn a_ticket_needing_no_change_whose_tests_ran_is_nothing_to_change() {
    let script = vec![
        tool("read_file", json!({"path": "greet.py"})),
        tool("run", json!({"command": "python3 -m unittest -v"})),
        tool(
            "finish",
            json!({"summary": "greet() already does what the ticket asks; nothing to change."}),
        ),
    ];
    let (stack, bare) = plain_stack(script, "").await;
    let (out, log) = run(&stack, "DEMO-2").await;
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("no changes were made"), "{log}");
    assert_eq!(branches(&bare), ["main"]);
    assert!(stack.github.pulls(PLAIN_REPO).is_empty());
    let comments = stack.jira.comment_texts("DEMO-2");
    let last = comments.last().expect("a comment");
    assert!(last.contains("without changing any file"), "{comments:?}");
    assert!(!last.contains("refused"), "{comments:?}");
}

#[tokio::test]
async fn a_violation_at_finish_goes_back_to_the_model_which_fixes_it() {
    let script = vec![
        edit_greet(),
        tool("run", json!({"command": "printf '\\x00\\x01' > data.bin"})),
        tool("finish", json!({"summary": "done"})),
        tool("run", json!({"command": "rm data.bin"})),
        tool(
            "finish",
            json!({"summary": "greet() ends with an exclamation mark; removed a stray data file."}),
        ),
    ];
    let stack = Stack::start(Options {
        policy: Some(policy(DEMO_REPO, "allow_binary = false")),
        script,
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack, "DEMO-1").await;
    assert!(out.status.success(), "{log}");
    assert_eq!(pushed_files(&stack.bare_repo), ["greet.py"]);
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);

    // The model was told the rule, the file and what is allowed, as the first finish's result.
    let requests = stack.model.requests();
    assert_eq!(requests.len(), 5, "{log}");
    let told = last_tool_result(&requests[3]);
    assert!(told.contains("write.allow_binary"), "{told}");
    assert!(told.contains("data.bin"), "{told}");
    assert!(told.contains("no binary files"), "{told}");

    // Both rounds are in the signed bundle, the first with its rule and the digest of what the model was shown.
    let finishes = finish_calls(&stack).await;
    assert_eq!(finishes.len(), 2, "{finishes:?}");
    assert!(!finishes[0].ok);
    assert_eq!(
        finishes[0].refused_by.as_deref(),
        Some("write.allow_binary")
    );
    assert_eq!(
        finishes[0].shown_sha256,
        drafter::proof::sha256_hex(told.as_bytes())
    );
    assert!(finishes[1].ok, "{:?}", finishes[1]);
    assert_eq!(finishes[1].refused_by, None);
}

#[tokio::test]
async fn a_model_that_ignores_the_violation_is_refused_with_the_rule() {
    let script = vec![
        edit_greet(),
        tool("run", json!({"command": "printf '\\x00\\x01' > data.bin"})),
        tool("finish", json!({"summary": "done"})),
        tool("finish", json!({"summary": "done, really"})),
    ];
    let stack = Stack::start(Options {
        policy: Some(policy(DEMO_REPO, "allow_binary = false")),
        script,
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack, "DEMO-1").await;
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("write.allow_binary"), "{log}");
    assert_eq!(branches(&stack.bare_repo), ["main"]);
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
    let comments = stack.jira.comment_texts("DEMO-1");
    let last = comments.last().expect("a comment");
    assert!(last.contains("write.allow_binary"), "{comments:?}");
    assert!(last.contains("data.bin"), "{comments:?}");

    // It was told once, then finished again unchanged: the job ended there.
    let requests = stack.model.requests();
    assert_eq!(requests.len(), 4, "{log}");
    assert!(last_tool_result(&requests[3]).contains("write.allow_binary"));
    let finishes = finish_calls(&stack).await;
    assert_eq!(finishes.len(), 2, "{finishes:?}");
    for f in &finishes {
        assert!(!f.ok);
        assert_eq!(f.refused_by.as_deref(), Some("write.allow_binary"));
    }
}

#[tokio::test]
async fn a_model_told_at_finish_that_runs_out_of_turns_is_refused_with_the_rule() {
    let script = vec![
        edit_greet(),
        tool("run", json!({"command": "printf '\\x00\\x01' > data.bin"})),
        tool("finish", json!({"summary": "done"})),
        tool("list_files", json!({})),
    ];
    let stack = Stack::start(Options {
        policy: Some(policy(DEMO_REPO, "allow_binary = false")),
        script,
        max_turns: 4,
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack, "DEMO-1").await;
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert_eq!(stack.model.requests().len(), 4, "{log}");
    assert_eq!(branches(&stack.bare_repo), ["main"]);
    let comments = stack.jira.comment_texts("DEMO-1");
    let last = comments.last().expect("a comment");
    assert!(
        last.contains("write.allow_binary") && last.contains("did not fix it"),
        "{comments:?}"
    );
}
