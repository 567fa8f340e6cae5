use super::merge::*;
use super::*;
use serde_json::json;

#[test]
fn review_rules_need_pull_request_type_and_count() {
    let rules = json!([
        {"type": "deletion", "ruleset_id": 1},
        {"type": "pull_request", "ruleset_id": 2, "parameters": {"required_approving_review_count": 0}},
        {"type": "pull_request", "ruleset_id": 3, "parameters": {"required_approving_review_count": 2}},
        {"type": "pull_request", "parameters": {"required_approving_review_count": "1"}},
    ]);
    assert_eq!(
        review_rules(&rules),
        vec![ReviewRule {
            ruleset_id: Some(3),
            count: 2
        }]
    );
    assert!(review_rules(&json!({"message": "x"})).is_empty());
    assert!(review_rules(&json!([])).is_empty());
}

#[test]
fn team_membership_counts_parents_and_is_unknown_past_what_is_listed() {
    let flat = TeamSet {
        teams: vec![1, 2],
        parents: vec![],
    };
    assert_eq!(flat.contains(2), Membership::Yes);
    assert_eq!(flat.contains(3), Membership::No);
    // 1's parent 2 is listed (its own ancestry with it): a miss is a miss.
    let nested = TeamSet {
        teams: vec![1, 2],
        parents: vec![2],
    };
    assert_eq!(nested.contains(3), Membership::No);
    // 1's parent 9 is not listed: 9 counts, and 9's unseen parents might be anything.
    let deep = TeamSet {
        teams: vec![1],
        parents: vec![9],
    };
    assert_eq!(deep.contains(9), Membership::Yes);
    assert_eq!(deep.contains(3), Membership::Unknown);
}

#[test]
fn repo_names_and_branches_are_checked_and_encoded() {
    assert_eq!(split_repo("acme/widgets").unwrap(), ("acme", "widgets"));
    assert!(split_repo("acme/../x").is_err());
    assert!(split_repo("acme").is_err());
    assert_eq!(encode_branch("release/1.0"), "release/1.0");
    assert_eq!(encode_branch("a b#?%"), "a%20b%23%3F%25");
}

#[test]
fn retryable_classes() {
    let w = || "x".to_string();
    assert!(ForgeError::Server {
        what: w(),
        status: 502,
        message: w()
    }
    .is_retryable());
    assert!(ForgeError::RateLimited {
        what: w(),
        retry_after_secs: None
    }
    .is_retryable());
    assert!(ForgeError::Network {
        what: w(),
        message: w()
    }
    .is_retryable());
    assert!(!ForgeError::Unauthorized { what: w() }.is_retryable());
    assert!(!ForgeError::CanMerge {
        repo: w(),
        reason: w(),
        fix: w()
    }
    .is_retryable());
    assert!(!ForgeError::NotFound { what: w() }.is_retryable());
}

#[test]
fn long_messages_are_clipped_on_char_boundaries() {
    let s = "é".repeat(500);
    let c = clip(&s);
    assert!(c.len() <= MAX_MESSAGE + 3);
    assert!(c.ends_with("..."));
}

#[tokio::test]
async fn builds_for_plain_http_enterprise_base() {
    let gh = GitHub::new(&GithubConfig {
        api_url: "http://127.0.0.1:9/api/v3".into(),
        git_url: "http://127.0.0.1:9".into(),
        token: Secret::new("t0ken-value").into(),
        app: None,
        bot_login: None,
        identities: Default::default(),
    })
    .unwrap();
    // Nothing listens on port 9: a transport error, retryable, without the token.
    let err = gh
        .check_cannot_merge("acme/widgets", "main")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Network { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("t0ken-value"));
}

/// `GET /repos/{o}/{r}` of a fork as GitHub documents it (https://docs.github.com/en/rest/repos/repos#get-a-repository,
/// the example trimmed of URL templates octocrab does not require): the typed read fork mode and the merge check
/// share (`GitHub::repository`) takes it, with `fork`, `parent`, `source` and `permissions` (`maintain`, `triage`).
#[test]
fn a_documented_fork_repository_reads_through_the_typed_model() {
    let user = |login: &str, kind: &str| {
        json!({"login": login, "id": 1, "node_id": "MDQ6VXNlcjE=",
            "avatar_url": "https://github.com/images/error/octocat_happy.gif", "gravatar_id": "",
            "url": format!("https://api.github.com/users/{login}"), "html_url": format!("https://github.com/{login}"),
            "followers_url": "https://api.github.com/users/octocat/followers",
            "following_url": "https://api.github.com/users/octocat/following{/other_user}",
            "gists_url": "https://api.github.com/users/octocat/gists{/gist_id}",
            "starred_url": "https://api.github.com/users/octocat/starred{/owner}{/repo}",
            "subscriptions_url": "https://api.github.com/users/octocat/subscriptions",
            "organizations_url": "https://api.github.com/users/octocat/orgs",
            "repos_url": "https://api.github.com/users/octocat/repos",
            "events_url": "https://api.github.com/users/octocat/events{/privacy}",
            "received_events_url": "https://api.github.com/users/octocat/received_events",
            "type": kind, "site_admin": false})
    };
    let repo = |full: &str, fork: bool| {
        let (owner, name) = full.split_once('/').unwrap();
        // Two halves: one `json!` of it all is past the macro's recursion limit.
        let base = json!({"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full,
            "owner": user(owner, "User"), "private": false, "html_url": format!("https://github.com/{full}"),
            "description": "This your first repo!", "fork": fork, "url": format!("https://api.github.com/repos/{full}"),
            "archive_url": format!("https://api.github.com/repos/{full}/{{archive_format}}{{/ref}}"),
            "clone_url": format!("https://github.com/{full}.git"), "git_url": format!("git:github.com/{full}.git"),
            "ssh_url": format!("git@github.com:{full}.git"), "mirror_url": format!("git:git.example.com/{full}"),
            "homepage": "https://github.com", "language": null, "forks_count": 9, "stargazers_count": 80,
            "watchers_count": 80, "size": 108, "default_branch": "master", "open_issues_count": 0,
            "is_template": false, "topics": ["octocat", "atom", "electron", "api"], "has_issues": true,
            "has_projects": true, "has_wiki": true, "has_pages": false, "has_downloads": true,
            "has_discussions": false, "archived": false, "disabled": false, "visibility": "public",
            "pushed_at": "2011-01-26T19:06:43Z", "created_at": "2011-01-26T19:01:12Z",
            "updated_at": "2011-01-26T19:14:43Z"});
        let more = json!({
            "permissions": {"admin": false, "maintain": false, "push": true, "triage": true, "pull": true},
            "allow_rebase_merge": true, "template_repository": null, "temp_clone_token": "ABTLWHOULUVAXGTRYU7OC2876QJ2O",
            "allow_squash_merge": true, "allow_auto_merge": false, "delete_branch_on_merge": true,
            "allow_merge_commit": true, "allow_forking": true, "web_commit_signoff_required": false,
            "subscribers_count": 42, "network_count": 0,
            "license": {"key": "mit", "name": "MIT License", "spdx_id": "MIT",
                "url": "https://api.github.com/licenses/mit", "node_id": "MDc6TGljZW5zZW1pdA=="},
            "forks": 1, "open_issues": 1, "watchers": 1,
            "squash_merge_commit_title": "PR_TITLE", "squash_merge_commit_message": "PR_BODY",
            "merge_commit_title": "MERGE_MESSAGE", "merge_commit_message": "PR_TITLE",
            "security_and_analysis": {"advanced_security": {"status": "enabled"},
                "secret_scanning": {"status": "enabled"}, "secret_scanning_push_protection": {"status": "disabled"}},
            "custom_properties": {}});
        let mut v = base;
        if let (Value::Object(a), Value::Object(b)) = (&mut v, more) {
            a.extend(b);
        }
        v
    };
    let mut fork = repo("drafter-bot/Hello-World", true);
    fork["organization"] = Value::Null;
    fork["parent"] = repo("octocat/Hello-World", false);
    fork["source"] = repo("octocat/Hello-World", false);
    let r: octocrab::models::Repository = serde_json::from_value(fork).unwrap();
    assert_eq!(r.fork, Some(true));
    assert_eq!(
        r.parent.and_then(|p| p.full_name).as_deref(),
        Some("octocat/Hello-World")
    );
    assert_eq!(
        r.source.and_then(|p| p.full_name).as_deref(),
        Some("octocat/Hello-World")
    );
    let p = r.permissions.unwrap();
    assert!(p.push && rule_changing_role(&p).is_none());
}
