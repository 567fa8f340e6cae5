//! Fork mode: the service account has no write access upstream; drafter pushes the job's branch to the account's
//! fork (synced with upstream's base first) and opens the draft PR across repositories. Each test runs the real
//! `drafter run` binary, the real sandbox and real git against the GitHub stand-in, which refuses pushes from an
//! account without write access (403) the way GitHub does.

use crate::support;

use std::path::Path;

use serde_json::{json, Value};
use support::git::{drafter_branches, git};
use support::harness::{Options, Stack, DEMO_REPO};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");
const FORK: &str = "drafter-bot/widgets";

fn policy(fork: &str) -> String {
    format!(
        r#"version = 1

[teams.demo]
projects = ["DEMO"]
repos = [{{ name = "{DEMO_REPO}", bases = ["main"], test_command = "python3 -m unittest -v", fork = "{fork}" }}]
triggers = {{ anyone = true }}
"#
    )
}

/// A stack whose policy puts `acme/widgets` in fork mode, with the account on read access upstream and its fork
/// made (then upstream moves on, so the fork's `main` is behind).
async fn fork_stack(opts: Options) -> (Stack, std::path::PathBuf) {
    let stack = Stack::start(Options {
        policy: Some(policy(FORK)),
        ..opts
    })
    .await;
    stack.github.set_permissions(DEMO_REPO, false, false, false);
    let fork = stack.github.create_fork(DEMO_REPO, FORK);
    commit_upstream(&stack.bare_repo, "NOTES.md", "upstream moved on\n");
    (stack, fork)
}

/// A commit on upstream's `main`, made directly in the bare repository.
fn commit_upstream(bare: &Path, path: &str, content: &str) {
    let repo = git2::Repository::open_bare(bare).expect("open");
    let parent = repo
        .find_commit(repo.refname_to_id("refs/heads/main").expect("main"))
        .expect("commit");
    let mut builder = repo
        .treebuilder(Some(&parent.tree().expect("tree")))
        .expect("treebuilder");
    let blob = repo.blob(content.as_bytes()).expect("blob");
    builder.insert(path, blob, 0o100644).expect("insert");
    let tree = repo
        .find_tree(builder.write().expect("write"))
        .expect("tree");
    let sig = git2::Signature::now("Upstream", "up@example.com").expect("sig");
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "upstream change",
        &tree,
        &[&parent],
    )
    .expect("commit");
}

/// The last run statement's predicate.
fn last_run(job_dir: &Path) -> Value {
    let text = std::fs::read_to_string(job_dir.join("bundle.jsonl")).expect("bundle");
    let statements = drafter::proof::bundle::read_statements(text.as_bytes()).expect("statements");
    let (last, _) = statements.last().expect("a statement");
    assert!(
        last.predicate_type.contains("/run/"),
        "{}",
        last.predicate_type
    );
    last.predicate.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_mode_pushes_to_the_fork_and_opens_the_draft_upstream() {
    let (stack, fork) = fork_stack(Options::default()).await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(out.status.success(), "drafter run failed:\n{log}");

    // The branch is in the fork and nowhere upstream; nothing was even tried upstream.
    let upstream_branches = drafter_branches(&stack.bare_repo);
    assert!(upstream_branches.is_empty(), "{upstream_branches:?}");
    let fork_branches = drafter_branches(&fork);
    assert_eq!(fork_branches.len(), 1, "{fork_branches:?}");
    let branch = &fork_branches[0];
    assert!(
        stack.github.refused_pushes().is_empty(),
        "{:?}",
        stack.github.refused_pushes()
    );
    assert_eq!(stack.github.merge_attempts(), 0);

    // The fork's `main` was synced with upstream's before the job, and the job's branch starts from upstream's.
    assert_eq!(
        stack.github.fork_syncs(),
        vec![(FORK.to_string(), "main".to_string())]
    );
    let upstream_main = git(&stack.bare_repo, &["rev-parse", "main"]);
    assert_eq!(git(&fork, &["rev-parse", "main"]), upstream_main);
    assert_eq!(
        git(&fork, &["rev-parse", &format!("{branch}^")]),
        upstream_main
    );

    // One draft into upstream, its head the fork's branch (`owner:branch`, the documented cross-repository form).
    let pulls = stack.github.pulls(DEMO_REPO);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["draft"], json!(true));
    assert_eq!(pulls[0]["base"], json!("main"));
    assert_eq!(pulls[0]["head"], json!(format!("drafter-bot:{branch}")));
    assert_eq!(
        pulls[0]["response"]["head"]["repo"]["full_name"],
        json!(FORK)
    );
    assert!(stack.github.pulls(FORK).is_empty());

    // The run statement says where the branch went; the bundle verifies.
    let run = last_run(&stack.only_job_dir());
    assert_eq!(run["fork"], json!(FORK), "{run}");
    assert_eq!(run["repo"], json!(DEMO_REPO), "{run}");
    assert_eq!(run["outcome"]["result"], json!("pull_request"), "{run}");
}

/// A second job for the same ticket finds the first job's branch in the fork (not upstream, where it never is) and
/// takes its own branch instead of pushing over it; its PR is found and opened across repositories too.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_job_sees_the_first_jobs_branch_in_the_fork() {
    let (stack, fork) = fork_stack(Options {
        per_conversation: true,
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        let (out, log) = stack
            .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
            .await;
        assert!(out.status.success(), "drafter run failed:\n{log}");
    }
    let mut branches = drafter_branches(&fork);
    branches.sort();
    assert_eq!(branches.len(), 2, "{branches:?}");
    assert!(
        branches[1].starts_with(&format!("{}-", branches[0])),
        "{branches:?}"
    );
    assert!(drafter_branches(&stack.bare_repo).is_empty());
    let heads: Vec<Value> = stack
        .github
        .pulls(DEMO_REPO)
        .iter()
        .map(|p| p["head"].clone())
        .collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
}

/// The promise of fork mode is "no write access upstream": an account that has it is refused before anything is
/// cloned or pushed, and the refusal says what to change.
#[tokio::test(flavor = "multi_thread")]
async fn fork_mode_refuses_an_account_that_can_write_upstream() {
    let (stack, fork) = fork_stack(Options::default()).await;
    stack.github.set_permissions(DEMO_REPO, false, false, true);
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(
        !out.status.success(),
        "fork mode with write access ran:\n{log}"
    );
    assert!(
        log.contains("fork mode") && log.contains("`write` role"),
        "{log}"
    );
    assert!(drafter_branches(&fork).is_empty());
    assert!(drafter_branches(&stack.bare_repo).is_empty());
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
    assert!(stack.github.fork_syncs().is_empty());
    let run = last_run(&stack.only_job_dir());
    assert_eq!(run["outcome"]["result"], json!("refused"), "{run}");
    assert_eq!(run["outcome"]["rule"], json!("forge.fork"), "{run}");
}

/// A `fork` that is not the account's fork of this repository (a plain repository, or a fork of another one) is
/// refused: pushing there would propose code from somewhere the PR cannot come from.
#[tokio::test(flavor = "multi_thread")]
async fn fork_mode_refuses_a_repository_that_is_not_a_fork_of_upstream() {
    let stack = Stack::start(Options {
        policy: Some(policy("drafter-bot/widgets")),
        ..Options::default()
    })
    .await;
    stack.github.set_permissions(DEMO_REPO, false, false, false);
    // A repository of the same name that is not a fork at all.
    let plain = stack
        .github
        .create_repo("drafter-bot/widgets", &[("README.md", "not a fork\n")]);
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(!out.status.success(), "ran against a non-fork:\n{log}");
    assert!(log.contains("is not a fork"), "{log}");
    let run = last_run(&stack.only_job_dir());
    assert_eq!(run["outcome"]["rule"], json!("forge.fork"), "{run}");
    assert!(drafter_branches(&plain).is_empty());
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
}

/// A fork whose `main` has diverged from upstream cannot be synced (409): the job still delivers (its branch starts
/// from upstream's base whatever the fork holds) and `job.json` notes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fork_that_cannot_be_synced_is_noted_and_the_job_delivers() {
    let (stack, fork) = fork_stack(Options::default()).await;
    // The fork's `main` gets a commit of its own: upstream's is no longer a fast-forward of it.
    commit_upstream(&fork, "FORK_ONLY.md", "diverged\n");
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(out.status.success(), "drafter run failed:\n{log}");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    let job: Value = serde_json::from_str(
        &std::fs::read_to_string(stack.only_job_dir().join("job.json")).expect("job.json"),
    )
    .expect("json");
    let notes = job["notes"].to_string();
    assert!(
        notes.contains("not synced") && notes.contains("409"),
        "{job}"
    );
    let branch = &drafter_branches(&fork)[0];
    assert_eq!(
        git(&fork, &["rev-parse", &format!("{branch}^")]),
        git(&stack.bare_repo, &["rev-parse", "main"])
    );
}

/// A GitHub App's installation token cannot push to the account's fork and open a PR upstream: fork mode with an
/// App is refused with the fix, and the App's token is still revoked.
#[tokio::test(flavor = "multi_thread")]
async fn fork_mode_with_a_github_app_is_refused() {
    let (stack, fork) = fork_stack(Options {
        github_app: true,
        ..Options::default()
    })
    .await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("github.token"), "{log}");
    let run = last_run(&stack.only_job_dir());
    assert_eq!(run["outcome"]["rule"], json!("forge.fork"), "{run}");
    assert!(drafter_branches(&fork).is_empty());
    assert_eq!(
        stack.github.app_revocations(),
        stack.github.app_tokens().len()
    );
}
