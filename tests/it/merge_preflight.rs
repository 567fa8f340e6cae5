//! The can't-merge preflight fails closed (issue 12.3): whatever drafter cannot read or prove about a bypass counts
//! as "may bypass", and the refusal names what the operator must change. Each case runs the real `drafter run`
//! against the GitHub stand-in and asserts the job is refused before anything is cloned or pushed, with the
//! explanation in the log and on the ticket. The positive controls (what does prove it) call the check directly.

use crate::support;

use std::path::Path;
use std::process::Output;

use drafter::config::{GithubConfig, Secret};
use drafter::forge::{ForgeError, GitHub};
use support::git::branches;
use support::harness::{Options, Stack, DEMO_REPO, GITHUB_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

/// Runs DEMO-1 and asserts it was refused before any work: exit 2, nothing asked of the model, nothing cloned
/// or pushed, no PR, no merge call, and the refusal (with every `expect`ed phrase) in the log and on the ticket.
async fn assert_refused(stack: &Stack, expect: &[&str]) -> String {
    let (out, log): (Output, String) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(stack.model.requests().is_empty(), "the model was asked");
    assert_eq!(branches(&stack.bare_repo), ["main"], "something was pushed");
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
    assert_eq!(stack.github.merge_attempts(), 0);
    assert!(
        !stack
            .github
            .requests()
            .iter()
            .any(|r| r.path.contains(".git/")),
        "the repository was cloned"
    );
    let comments = stack.jira.comment_texts("DEMO-1");
    let comment = comments.last().cloned().unwrap_or_default();
    for phrase in expect {
        assert!(log.contains(phrase), "log lacks {phrase:?}: {log}");
        assert!(
            comment.contains(phrase),
            "comment lacks {phrase:?}: {comment}"
        );
    }
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ruleset_that_cannot_be_read_does_not_count_as_protection() {
    let stack = Stack::start(Options::default()).await;
    stack.github.set_ruleset_forbidden(DEMO_REPO, true);
    assert_refused(
        &stack,
        &[
            "ruleset 1",
            "403",
            "Metadata: read",
            "current_user_can_bypass",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ruleset_without_current_user_can_bypass_does_not_count_as_protection() {
    let stack = Stack::start(Options::default()).await;
    stack.github.set_ruleset_bypass_field(DEMO_REPO, None);
    assert_refused(
        &stack,
        &[
            "ruleset 1",
            "did not say whether",
            "current_user_can_bypass",
        ],
    )
    .await;

    // `pull_requests_only` means the account may merge a pull request past the rule.
    let stack = Stack::start(Options::default()).await;
    stack
        .github
        .set_ruleset_bypass_field(DEMO_REPO, Some("pull_requests_only"));
    assert_refused(&stack, &["current_user_can_bypass = pull_requests_only"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_of_the_bot_in_the_bypass_allowances_is_refused() {
    let stack = Stack::start(Options::default()).await;
    stack.github.set_requires_review(DEMO_REPO, false, 1);
    stack
        .github
        .set_bypass_allowances(DEMO_REPO, &[(42, "release-managers")], &[]);
    stack
        .github
        .set_bot_teams(Some(&[(7, "bots", None), (42, "release-managers", None)]));
    assert_refused(
        &stack,
        &[
            "team `release-managers`",
            "is a member",
            "remove team `release-managers` from the pull request review bypass allowances",
        ],
    )
    .await;

    // Membership through a child team counts: the bot is in `bots`, whose parent is in the allowances.
    let stack = Stack::start(Options::default()).await;
    stack.github.set_requires_review(DEMO_REPO, false, 1);
    stack
        .github
        .set_bypass_allowances(DEMO_REPO, &[(42, "release-managers")], &[]);
    stack.github.set_bot_teams(Some(&[(7, "bots", Some(42))]));
    assert_refused(&stack, &["team `release-managers`"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_in_the_bypass_allowances_is_refused_when_the_bots_teams_cannot_be_read() {
    let stack = Stack::start(Options::default()).await;
    stack.github.set_requires_review(DEMO_REPO, false, 1);
    stack
        .github
        .set_bypass_allowances(DEMO_REPO, &[(42, "release-managers")], &[]);
    stack.github.set_bot_teams(None);
    assert_refused(
        &stack,
        &[
            "team `release-managers`",
            "cannot tell",
            "read:org",
            "remove team `release-managers` from the pull request review bypass allowances",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_in_the_bypass_allowances_is_refused() {
    let stack = Stack::start(Options::default()).await;
    stack.github.set_requires_review(DEMO_REPO, false, 1);
    stack
        .github
        .set_bypass_allowances(DEMO_REPO, &[], &["merge-bot"]);
    assert_refused(
        &stack,
        &[
            "app `merge-bot`",
            "remove app `merge-bot` from the pull request review bypass allowances",
        ],
    )
    .await;
}

/// What still proves it: a readable ruleset that says `never`, and classic protection whose bypass teams the bot
/// is provably not in (its teams are listed and none of them, nor their parents, is one).
#[tokio::test(flavor = "multi_thread")]
async fn provable_protection_still_passes() {
    let stack = Stack::start(Options::default()).await;
    let gh = &stack.github;
    let forge = GitHub::new(&GithubConfig {
        api_url: gh.api_url(),
        git_url: gh.git_url(),
        token: Secret::new(GITHUB_TOKEN).into(),
        app: None,
        bot_login: None,
        identities: Default::default(),
    })
    .expect("client");
    forge
        .check_cannot_merge(DEMO_REPO, "main")
        .await
        .expect("ruleset, never");

    gh.set_requires_review(DEMO_REPO, false, 1);
    gh.set_bypass_allowances(DEMO_REPO, &[(42, "release-managers")], &[]);
    gh.set_bot_teams(Some(&[(7, "bots", Some(8)), (8, "automation", None)]));
    forge
        .check_cannot_merge(DEMO_REPO, "main")
        .await
        .expect("the bot's teams are known and none may bypass");

    // A ruleset that cannot be read and nothing else: refused, naming the permission to give.
    gh.set_requires_review(DEMO_REPO, true, 1);
    gh.set_ruleset_forbidden(DEMO_REPO, true);
    let err = forge
        .check_cannot_merge(DEMO_REPO, "main")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ForgeError::CanMerge { fix, .. } if fix.contains("Metadata: read")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}
