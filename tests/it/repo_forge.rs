//! `repo` and `forge` against the GitHub stand-in: real git over smart HTTP (`git http-backend`), REST via octocrab.

use crate::support;

use std::path::{Path, PathBuf};

use drafter::config::{CommitIdentity, GithubConfig, Secret};
use drafter::forge::{ForgeError, GitHub};
use drafter::repo::{self, RepoError};
use support::github::GithubStandIn;

const TOKEN: &str = "ghp_standin_secret_token_123";
const REPO: &str = "acme/widgets";

fn identity() -> CommitIdentity {
    CommitIdentity {
        name: "drafter[bot]".into(),
        email: "drafter@example.com".into(),
    }
}

fn github(gh: &GithubStandIn, token: &str) -> GitHub {
    GitHub::new(&GithubConfig {
        api_url: gh.api_url(),
        git_url: gh.git_url(),
        token: Secret::new(token).into(),
        app: None,
        bot_login: None,
        identities: Default::default(),
    })
    .unwrap()
}

async fn clone_async(url: String, dest: PathBuf, token: &str) -> Result<(), RepoError> {
    let token = Secret::new(token);
    tokio::task::spawn_blocking(move || repo::clone(&url, &dest, "main", &token).map(|_| ()))
        .await
        .unwrap()
}

/// Clone, branch, change files, commit and push over smart HTTP; returns the pushed commit id.
async fn push_change(gh: &GithubStandIn, work: &Path, branch: &str) -> git2::Oid {
    let url = format!("{}/{REPO}.git", gh.git_url());
    let work = work.to_path_buf();
    let branch = branch.to_string();
    tokio::task::spawn_blocking(move || {
        let token = Secret::new(TOKEN);
        let r = repo::clone(&url, &work, "main", &token).unwrap();
        repo::create_branch(&r, &branch).unwrap();
        std::fs::write(work.join("greeting.txt"), "hello, world\n").unwrap();
        std::fs::remove_file(work.join("obsolete.txt")).unwrap();
        let msg = repo::message_with_trailers("Fix the greeting", "", &[("Drafter-Job", "job-1")]);
        let oid = repo::commit_all(&r, &identity(), &msg).unwrap().unwrap();
        repo::push(&r, &url, &branch, &token).unwrap();
        oid
    })
    .await
    .unwrap()
}

fn seed(gh: &GithubStandIn) -> PathBuf {
    gh.create_repo(
        REPO,
        &[
            ("greeting.txt", "hello\n"),
            ("obsolete.txt", "old\n"),
            ("src/main.rs", "fn main() {}\n"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_branch_commit_push_over_smart_http() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = seed(&gh);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let branch = repo::branch_name("DEMO-1", "Fix the greeting");
    assert_eq!(branch, "drafter/DEMO-1-fix-the-greeting");

    let oid = push_change(&gh, &work, &branch).await;

    // The clone has the files, and no trace of the token in its config.
    let config = std::fs::read_to_string(work.join(".git/config")).unwrap();
    assert!(!config.contains(TOKEN), "{config}");
    assert!(
        config.contains(&format!("{}/{REPO}.git", gh.git_url())),
        "{config}"
    );
    assert!(work.join("src/main.rs").exists());

    // The remote has the branch at the pushed commit with the expected tree; main did not move.
    let remote = git2::Repository::open_bare(&bare).unwrap();
    assert_eq!(
        remote
            .refname_to_id(&format!("refs/heads/{branch}"))
            .unwrap(),
        oid
    );
    let commit = remote.find_commit(oid).unwrap();
    let tree = commit.tree().unwrap();
    let blob = tree.get_path(Path::new("greeting.txt")).unwrap();
    assert_eq!(
        remote.find_blob(blob.id()).unwrap().content(),
        b"hello, world\n"
    );
    assert!(tree.get_path(Path::new("obsolete.txt")).is_err());
    assert_eq!(commit.author().email().ok(), Some("drafter@example.com"));
    assert!(commit
        .message()
        .unwrap()
        .ends_with("\n\nDrafter-Job: job-1\n"));
    assert_ne!(remote.refname_to_id("refs/heads/main").unwrap(), oid);

    // changed_files against origin/main.
    let files = tokio::task::spawn_blocking(move || {
        let r = git2::Repository::open(&work).unwrap();
        repo::changed_files(&r, "main").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(files, vec!["greeting.txt", "obsolete.txt"]);

    // Git requests authenticated with Basic (token as password); the token never appeared in a URL.
    let reqs = gh.requests();
    let git_reqs: Vec<_> = reqs.iter().filter(|r| r.path.contains(".git/")).collect();
    assert!(git_reqs
        .iter()
        .any(|r| r.path.ends_with("git-receive-pack")));
    assert!(git_reqs.iter().any(|r| r
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic "))));
    for r in &reqs {
        assert!(!r.path.contains(TOKEN) && !r.query.as_deref().unwrap_or("").contains(TOKEN));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_fails_clone_with_non_retryable_auth_error() {
    let gh = GithubStandIn::start(TOKEN).await;
    seed(&gh);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = "ghp_wrong_token_456";
    let err = clone_async(
        format!("{}/{REPO}.git", gh.git_url()),
        tmp.path().join("w"),
        wrong,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RepoError::Auth { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong) && !text.contains(TOKEN), "{text}");

    // A repository that does not exist: not found, not retryable.
    let err = clone_async(
        format!("{}/acme/nope.git", gh.git_url()),
        tmp.path().join("w2"),
        TOKEN,
    )
    .await
    .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_rejected_by_server_is_an_error_with_its_message() {
    let gh = GithubStandIn::start(TOKEN).await;
    let bare = seed(&gh);
    gh.reject_pushes(REPO, "GH006: Protected branch update failed");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    let url = format!("{}/{REPO}.git", gh.git_url());
    let err = tokio::task::spawn_blocking(move || {
        let token = Secret::new(TOKEN);
        let r = repo::clone(&url, &work, "main", &token).unwrap();
        repo::create_branch(&r, "drafter/X-1-y").unwrap();
        std::fs::write(work.join("new.txt"), "x\n").unwrap();
        repo::commit_all(&r, &identity(), "x").unwrap().unwrap();
        repo::push(&r, &url, "drafter/X-1-y", &token).unwrap_err()
    })
    .await
    .unwrap();
    match &err {
        RepoError::PushRejected { branch, message } => {
            assert_eq!(branch, "drafter/X-1-y");
            assert!(message.contains("hook declined"), "{message}");
            assert!(
                message.contains("GH006: Protected branch update failed"),
                "{message}"
            );
        }
        other => panic!("expected PushRejected, got {other:?}"),
    }
    assert!(!err.is_retryable());
    let remote = git2::Repository::open_bare(&bare).unwrap();
    assert!(remote.find_reference("refs/heads/drafter/X-1-y").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_cannot_merge_scenarios() {
    let gh = GithubStandIn::start(TOKEN).await;
    seed(&gh);
    let forge = github(&gh, TOKEN);

    // Default: push only, ruleset with 1 required review that the account cannot bypass.
    forge.check_cannot_merge(REPO, "main").await.unwrap();

    // Classic protection instead of a ruleset.
    gh.set_requires_review(REPO, false, 1);
    forge.check_cannot_merge(REPO, "main").await.unwrap();

    // Classic protection, but the account is in the bypass allowances.
    gh.set_can_bypass(REPO, true);
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(err.to_string().contains("bypass"), "{err}");
    assert!(matches!(err, ForgeError::CanMerge { .. }));

    // Ruleset the account can bypass.
    gh.set_requires_review(REPO, true, 1);
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::CanMerge { .. }), "{err:?}");
    assert!(err.to_string().contains("current_user_can_bypass"), "{err}");
    gh.set_can_bypass(REPO, false);

    // A review rule with 0 approvals proves nothing.
    gh.set_requires_review(REPO, true, 0);
    assert!(matches!(
        forge.check_cannot_merge(REPO, "main").await.unwrap_err(),
        ForgeError::CanMerge { .. }
    ));

    // No rule at all: refused, naming repo, branch and the fix.
    gh.remove_review_rules(REPO);
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ForgeError::CanMerge { .. }), "{err:?}");
    assert!(text.contains(REPO) && text.contains("`main`"), "{text}");
    assert!(
        text.contains("approving review") && text.contains("bypass list"),
        "{text}"
    );
    assert!(!err.is_retryable());

    // A rule on main does not protect another base branch.
    gh.set_requires_review(REPO, true, 1);
    let err = forge
        .check_cannot_merge(REPO, "release/1.0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`release/1.0`"), "{err}");

    // Admin and maintain are refused even with the rule in place.
    gh.set_permissions(REPO, true, false, true);
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(
        matches!(&err, ForgeError::CanMerge { fix, .. } if fix.contains("write (push) permission only"))
    );
    assert!(err.to_string().contains("admin"), "{err}");
    gh.set_permissions(REPO, false, true, true);
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::CanMerge { .. }) && err.to_string().contains("maintain"));

    // No push at all.
    gh.set_permissions(REPO, false, false, false);
    assert!(matches!(
        forge.check_cannot_merge(REPO, "main").await.unwrap_err(),
        ForgeError::CannotPush { .. }
    ));
    gh.set_permissions(REPO, false, false, true);

    // Unknown repository, bad token, server errors.
    assert!(matches!(
        forge
            .check_cannot_merge("acme/nope", "main")
            .await
            .unwrap_err(),
        ForgeError::NotFound { .. }
    ));
    let bad = github(&gh, "ghp_bad_token_789");
    let err = bad.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("ghp_bad_token_789"));
    gh.set_api_failure(Some(502));
    let err = forge.check_cannot_merge(REPO, "main").await.unwrap_err();
    assert!(
        matches!(err, ForgeError::Server { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    gh.set_api_failure(Some(429));
    assert!(forge
        .check_cannot_merge(REPO, "main")
        .await
        .unwrap_err()
        .is_retryable());
    gh.set_api_failure(None);

    // Every API request carried the token as a bearer header and the API version; nothing merged.
    for r in gh
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v3/"))
    {
        let auth = r.header("authorization").unwrap_or("");
        assert!(
            auth == format!("Bearer {TOKEN}") || auth == "Bearer ghp_bad_token_789",
            "{auth}"
        );
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(
            r.method, "GET",
            "the check only reads: {} {}",
            r.method, r.path
        );
    }
    assert_eq!(gh.merge_attempts(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_draft_pr_after_push() {
    let gh = GithubStandIn::start(TOKEN).await;
    seed(&gh);
    let forge = github(&gh, TOKEN);
    let tmp = tempfile::tempdir().unwrap();
    let branch = repo::branch_name("DEMO-2", "Fix the greeting");

    // Nothing pushed yet: GitHub's 422 for an unknown head is passed on as such.
    let err = forge
        .open_draft_pr(REPO, REPO, &branch, "main", "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Unprocessable { .. }), "{err:?}");

    push_change(&gh, &tmp.path().join("w"), &branch).await;

    // Drafts not supported: a clear refusal, not a silent ready-for-review PR.
    gh.set_drafts_supported(REPO, false);
    let err = forge
        .open_draft_pr(REPO, REPO, &branch, "main", "t", "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ForgeError::DraftsNotSupported { .. }),
        "{err:?}"
    );
    gh.set_drafts_supported(REPO, true);

    let pr = forge
        .open_draft_pr(
            REPO,
            REPO,
            &branch,
            "main",
            "DEMO-2: Fix the greeting",
            "Changed files:\n- greeting.txt",
        )
        .await
        .unwrap();
    assert_eq!(pr.number, 1);
    assert!(pr.draft);
    assert_eq!(pr.html_url, format!("{}/{REPO}/pull/1", gh.git_url()));

    let pulls = gh.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    let p = &pulls[0];
    assert_eq!(p["draft"], true);
    assert_eq!(p["head"], branch.as_str());
    assert_eq!(p["base"], "main");
    assert_eq!(p["title"], "DEMO-2: Fix the greeting");
    assert_eq!(p["maintainer_can_modify"], false);

    // A second time: already exists.
    let err = forge
        .open_draft_pr(REPO, REPO, &branch, "main", "again", "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ForgeError::PullRequestExists { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A branch with no new commits.
    let url = format!("{}/{REPO}.git", gh.git_url());
    let work = tmp.path().join("w2");
    tokio::task::spawn_blocking(move || {
        let token = Secret::new(TOKEN);
        let r = repo::clone(&url, &work, "main", &token).unwrap();
        repo::create_branch(&r, "drafter/DEMO-3-noop").unwrap();
        assert_eq!(repo::commit_all(&r, &identity(), "noop").unwrap(), None);
        repo::push(&r, &url, "drafter/DEMO-3-noop", &token).unwrap();
    })
    .await
    .unwrap();
    let err = forge
        .open_draft_pr(REPO, REPO, "drafter/DEMO-3-noop", "main", "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::NoCommits { .. }), "{err:?}");

    assert_eq!(gh.merge_attempts(), 0);
    for r in gh.requests() {
        assert!(
            !r.path.ends_with("/merge") && !r.path.ends_with("/merges"),
            "{}",
            r.path
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains(TOKEN),
            "token in a body: {}",
            r.path
        );
    }
}
