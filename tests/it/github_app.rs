//! GitHub App authentication: per-job installation tokens, scoped to one repository, revoked at the end of every
//! job (delivered, failed, cancelled, refused), against the stand-in that checks JWTs with the App's public key.

use crate::support;

use std::path::Path;

use drafter::config::{GithubAppConfig, GithubConfig, Secret};
use drafter::forge::{Forge, ForgeError};
use serde_json::{json, Value};
use support::git::branches;
use support::github::GithubStandIn;
use support::github_app::{key_pair, APP_ID};
use support::harness::{Options, Stack, DEMO_REPO, GITHUB_TOKEN};
use support::model::Step;

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

fn app_stack() -> Options {
    Options {
        github_app: true,
        ..Options::default()
    }
}

/// The `credential` of the bundle's last run statement, and the whole bundle's text.
fn run_credential(stack: &Stack) -> (Value, String) {
    let text = std::fs::read_to_string(stack.only_job_dir().join("bundle.jsonl")).expect("bundle");
    let statements = drafter::proof::bundle::read_statements(text.as_bytes()).expect("statements");
    let (last, _) = statements.last().expect("a statement");
    assert!(
        last.predicate_type.contains("/run/"),
        "{}",
        last.predicate_type
    );
    (last.predicate["credential"].clone(), text)
}

fn forge_for(gh: &GithubStandIn, pem: &str) -> Forge {
    Forge::new(&GithubConfig {
        api_url: gh.api_url(),
        git_url: gh.git_url(),
        token: drafter::config::Credential::from(Secret::new("unused")),
        app: Some(GithubAppConfig {
            app_id: APP_ID,
            private_key: Secret::new(pem).into(),
        }),
        bot_login: None,
        identities: Default::default(),
    })
    .expect("forge")
}

async fn get(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn clone_with(url: &str, token: &str) -> Result<(), git2::Error> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cb = git2::RemoteCallbacks::new();
    let token = token.to_string();
    cb.credentials(move |_, _, _| git2::Cred::userpass_plaintext("x-access-token", &token));
    let mut fo = git2::FetchOptions::new();
    fo.remote_callbacks(cb);
    git2::build::RepoBuilder::new()
        .fetch_options(fo)
        .clone(url, dir.path())
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn app_job_delivers_a_draft_pr_with_one_scoped_token_revoked_at_the_end() {
    let stack = Stack::start(app_stack()).await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(out.status.success(), "drafter run failed:\n{log}");
    let pulls = stack.github.pulls(DEMO_REPO);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["draft"], json!(true));

    // One token for the job, for this repository alone, with the three permissions; revoked once.
    let tokens = stack.github.app_tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let (repo, permissions, revoked) = stack.github.app_token(&tokens[0]).expect("issued");
    assert_eq!(repo, DEMO_REPO);
    assert_eq!(
        permissions,
        json!({"contents": "write", "pull_requests": "write", "metadata": "read"})
    );
    assert!(revoked);
    assert_eq!(stack.github.app_revocations(), 1);
    // Every API and git request of the job used the App token: the personal token was never sent.
    for r in stack.github.requests() {
        assert!(!format!("{r:?}").contains(GITHUB_TOKEN), "{r:?}");
    }
    // After revocation the token opens nothing, over REST or git.
    let api = format!("{}/repos/{DEMO_REPO}", stack.github.api_url());
    assert_eq!(get(&api, &tokens[0]).await, 401);
    let url = format!("{}/{DEMO_REPO}.git", stack.github.git_url());
    assert!(clone_with(&url, &tokens[0]).is_err());

    // The run statement names the credential, its scope and expiry, and never the token.
    let (cred, text) = run_credential(&stack);
    assert_eq!(cred["kind"], json!("github-app"), "{cred}");
    assert_eq!(cred["installation_id"], json!(4242), "{cred}");
    assert_eq!(cred["repository"], json!(DEMO_REPO), "{cred}");
    assert!(cred["repository_id"].is_u64(), "{cred}");
    assert_eq!(cred["permissions"]["contents"], json!("write"), "{cred}");
    assert!(cred["expires_at"].is_string(), "{cred}");
    assert!(!text.contains(&tokens[0]));
    assert!(!log.contains(&tokens[0]));
}

/// Tokens that live only four minutes are re-minted before each use (the margin is five): the job still delivers,
/// each replaced token is revoked at once, and the last one at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_re_mints_a_token_close_to_expiry_and_revokes_every_one() {
    let stack = Stack::start(app_stack()).await;
    stack
        .github
        .set_app_token_lifetime(chrono::Duration::minutes(4));
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(out.status.success(), "drafter run failed:\n{log}");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    let tokens = stack.github.app_tokens();
    assert!(tokens.len() > 1, "{tokens:?}");
    assert_eq!(stack.github.app_revocations(), tokens.len());
    for t in &tokens {
        assert!(
            stack.github.app_token(t).expect("issued").2,
            "{t} not revoked"
        );
    }
    let (cred, _) = run_credential(&stack);
    assert!(cred["expires_at"].is_string(), "{cred}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_revokes_its_token() {
    let stack = Stack::start(Options {
        script: vec![Step::Status(400)],
        ..app_stack()
    })
    .await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert!(!out.status.success(), "{log}");
    assert_eq!(stack.github.app_tokens().len(), 1);
    assert_eq!(stack.github.app_revocations(), 1);
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
    let (cred, _) = run_credential(&stack);
    assert_eq!(cred["kind"], json!("github-app"), "{cred}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_revokes_its_token() {
    let stack = Stack::start(Options {
        script: vec![Step::Tools(vec![(
            "run".into(),
            json!({"command": "sleep 120"}),
        )])],
        command_timeout_secs: 300,
        ..app_stack()
    })
    .await;
    let out = stack.run_then_stop(Path::new(BIN), "DEMO-1").await;
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(stack.github.app_tokens().len(), 1);
    assert_eq!(stack.github.app_revocations(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_may_bypass_the_ruleset_is_refused() {
    let stack = Stack::start(app_stack()).await;
    stack.github.set_app_bypass_actor(true);
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains(&format!("GitHub App {APP_ID}")), "{log}");
    assert_eq!(branches(&stack.bare_repo), ["main"]);
    assert!(stack.model.requests().is_empty());
    assert_eq!(stack.github.app_revocations(), 1);
}

/// The stand-in itself: JWTs signed with another key or expired are refused; a token works for its own
/// repository only, over REST and git.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_signed_scoped_and_revocable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = key_pair(dir.path(), "app");
    let (other, _) = key_pair(dir.path(), "other");
    let gh = GithubStandIn::start(GITHUB_TOKEN).await;
    gh.enable_app(APP_ID, &public);
    gh.create_repo(DEMO_REPO, &[("README.md", "hi\n")]);
    gh.create_repo("acme/other", &[("README.md", "other\n")]);

    // Another key: refused.
    let wrong = forge_for(&gh, &std::fs::read_to_string(&other).expect("key"));
    let err = wrong.for_job(DEMO_REPO).await.expect_err("wrong key");
    assert!(matches!(err, ForgeError::Unauthorized { .. }), "{err:?}");
    assert_eq!(gh.app_refused_jwts(), 1);

    // An expired JWT, signed with the right key: refused.
    let pem = std::fs::read_to_string(&private).expect("key");
    let now = chrono::Utc::now().timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iat": now - 1200, "exp": now - 600, "iss": APP_ID.to_string()}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
    )
    .expect("jwt");
    let installation = format!("{}/repos/{DEMO_REPO}/installation", gh.api_url());
    assert_eq!(get(&installation, &expired).await, 401);
    assert_eq!(gh.app_refused_jwts(), 2);

    // The right key: a token for acme/widgets only.
    let forge = forge_for(&gh, &pem);
    let job = forge.for_job(DEMO_REPO).await.expect("minted");
    let grant = job.grant().await;
    assert_eq!(grant.repository.as_deref(), Some(DEMO_REPO));
    let token = gh.app_tokens()[0].clone();
    let api = gh.api_url();
    assert_eq!(get(&format!("{api}/repos/{DEMO_REPO}"), &token).await, 200);
    assert_eq!(get(&format!("{api}/repos/acme/other"), &token).await, 404);
    assert_eq!(get(&format!("{api}/user"), &token).await, 403);
    let git = gh.git_url();
    clone_with(&format!("{git}/{DEMO_REPO}.git"), &token).expect("own repository");
    assert!(clone_with(&format!("{git}/acme/other.git"), &token).is_err());
    // A second job learns the repository id and asks by id.
    let second = forge.for_job(DEMO_REPO).await.expect("minted by id");
    let mint = gh
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/access_tokens"))
        .expect("mint request");
    let body = String::from_utf8_lossy(&mint.body).into_owned();
    assert!(body.contains("\"repository_ids\""), "{body}");

    job.revoke().await.expect("revoked");
    second.revoke().await.expect("revoked");
    assert_eq!(gh.app_revocations(), 2);
    assert_eq!(get(&format!("{api}/repos/{DEMO_REPO}"), &token).await, 401);
    assert!(clone_with(&format!("{git}/{DEMO_REPO}.git"), &token).is_err());
    // Revoking twice does nothing more.
    job.revoke().await.expect("no-op");
    assert_eq!(gh.app_revocations(), 2);
}

/// A job whose lease is lost under `drafter serve` (an operator cancels it while it waits for the model) is dropped
/// at the worker's next heartbeat, before `run_job` reaches its revoke: the token is revoked in the background on
/// drop, while the worker goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_lease_is_lost_under_serve_revokes_its_token() {
    use std::time::{Duration, Instant};
    use support::harness::{wait_all_finished, ServeProcess};

    let _serial = support::POOL_SERIAL.lock().await;
    let stack = Stack::start(Options {
        per_conversation: true,
        extra_toml: r#"[serve]
listen = "127.0.0.1:0"
webhook_secret_env = "DRAFTER_TEST_WEBHOOK_SECRET"
concurrency = 1
per_project = 1
lease_secs = 30
heartbeat_secs = 1
drain_timeout_secs = 5
max_attempts = 5
idle_poll_ms = 100
"#
        .into(),
        ..app_stack()
    })
    .await;
    // The stand-in records a request once it has answered it: the job is then waiting for its next answer.
    stack.model.set_delay(Duration::from_secs(3));
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let client = reqwest::Client::new();
    serve.assign(&client, "DEMO-1", 11).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.model.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the job never reached its model loop:\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.github.app_tokens().len(), 1);
    assert_eq!(stack.github.app_revocations(), 0);

    let queue = stack.queue().await;
    let id = support::harness::all_jobs(queue.as_ref()).await[0]
        .id
        .clone();
    stack.operator(Path::new(BIN), &["jobs", "cancel", &id]);
    wait_all_finished(queue.as_ref(), 1, Duration::from_secs(30)).await;

    // The worker is still running (it was not shut down): the revocation comes from dropping the job.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.github.app_revocations() < 1 {
        assert!(
            Instant::now() < deadline,
            "the lost job's token was never revoked:\n{}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = serve.stop().await;
    assert!(log.contains("lease lost"), "{log}");
    let tokens = stack.github.app_tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(
        stack.github.app_token(&tokens[0]).expect("issued").2,
        "revoked"
    );
    assert_eq!(stack.github.app_revocations(), 1);
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
}
