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
