//! A stand-in for GitHub Enterprise Server: the REST API under `/api/v3` and a **real** git smart-HTTP remote.
//!
//! REST follows the public shapes (https://docs.github.com/en/rest):
//! - repositories: `GET /repos/{o}/{r}` with `permissions` (https://docs.github.com/en/rest/repos/repos#get-a-repository)
//! - rules: `GET /repos/{o}/{r}/rules/branches/{b}` and `GET /repos/{o}/{r}/rulesets/{id}`
//!   (https://docs.github.com/en/rest/repos/rules)
//! - classic protection: `GET /repos/{o}/{r}/branches/{b}/protection`, 404 "Branch not protected" when unprotected
//!   (https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection)
//! - pulls: `POST /repos/{o}/{r}/pulls` (201, 422 "Validation Failed" with `errors[]`) and `GET .../pulls?head=&state=`
//!   (https://docs.github.com/en/rest/pulls/pulls)
//! - merges: `PUT /repos/{o}/{r}/pulls/{n}/merge` and `POST /repos/{o}/{r}/merges` are counted and refused (403):
//!   the product must never call them.
//! - the authenticated user: `GET /user` (https://docs.github.com/en/rest/users/users#get-the-authenticated-user)
//!   and its teams: `GET /user/teams`, `team-full` objects with their `organization`
//!   (https://docs.github.com/en/rest/teams/teams#list-teams-for-the-authenticated-user).
//! - ruleset details: `current_user_can_bypass` is `always`, `pull_requests_only` or `never`, and only present
//!   on the repository-level endpoint (https://docs.github.com/en/rest/repos/rules#get-a-repository-ruleset); a
//!   token without Metadata: read gets 403 "Resource not accessible by personal access token".
//! - classic review bypass allowances: `required_pull_request_reviews.bypass_pull_request_allowances` with `users`
//!   (simple-user), `teams` (team) and `apps` (integration)
//!   (https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection).
//!
//! Git goes to `git http-backend` as a CGI (https://git-scm.com/docs/git-http-backend) over bare repositories in a
//! temporary directory, behind HTTP Basic auth with the token as password, as GitHub does for HTTPS with a token.
//! Every request (API and git) must carry the token; all requests are recorded for assertions.
//!
//! Long on purpose (over 700 lines): one stand-in for one public API (REST and git smart HTTP); its routes belong
//! together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

pub use super::RecordedRequest;

/// How the protected branch of a repository requires reviews.
#[derive(Debug, Clone, Copy)]
enum Review {
    /// No ruleset rule and no classic protection.
    None,
    /// A repository ruleset with a `pull_request` rule.
    Ruleset(u32),
    /// Classic branch protection with `required_pull_request_reviews`.
    Classic(u32),
}

pub(super) struct RepoState {
    pub(super) bare: PathBuf,
    /// The upstream repository, when this one is a fork (`create_fork`).
    pub(super) fork_of: Option<String>,
    pub(super) id: u64,
    admin: bool,
    maintain: bool,
    push: bool,
    review: Review,
    /// The branch the review rule applies to.
    protected_branch: String,
    /// Whether the service account may bypass the rule (ruleset `current_user_can_bypass`, classic bypass users).
    can_bypass: bool,
    /// `GET .../rulesets/{id}` answers 403 (the token lacks Metadata: read).
    ruleset_forbidden: bool,
    /// Overrides `current_user_can_bypass` in the ruleset detail: `Some(None)` leaves the field out (older GitHub
    /// Enterprise Server, or an organization ruleset seen from a repository-level token).
    ruleset_bypass_field: Option<Option<String>>,
    /// Teams in the classic review bypass allowances: (id, slug).
    bypass_teams: Vec<(u64, String)>,
    /// Apps in the classic review bypass allowances: slugs.
    bypass_apps: Vec<String>,
    drafts_supported: bool,
}

pub struct Inner {
    pub(super) token: String,
    /// The GitHub App, when enabled (`enable_app`): its tokens work next to the personal token.
    pub(super) app: Option<super::github_app::AppState>,
    pub(super) root: PathBuf,
    /// Pushes refused for want of write access, by repository.
    pub(super) refused_pushes: Vec<String>,
    /// `POST .../merge-upstream` calls: (fork, branch).
    pub(super) fork_syncs: Vec<(String, String)>,
    pub(super) base_url: String,
    pub(super) bot_login: String,
    /// The service account's teams as `GET /user/teams` lists them, (id, slug, parent id); `None` answers 403.
    bot_teams: Option<Vec<(u64, String, Option<u64>)>>,
    pub(super) repos: HashMap<String, RepoState>,
    pulls: HashMap<String, Vec<Value>>,
    next_pr: u64,
    merge_attempts: usize,
    requests: Vec<RecordedRequest>,
    api_failure: Option<u16>,
    /// Delay before serving git requests (to hold a job in its clone).
    git_delay: std::time::Duration,
    /// Delay before answering `POST .../pulls` (to hold a job between its push and its PR).
    pr_delay: std::time::Duration,
    /// Review comments, conversation comments and collaborators' permissions (`github_review.rs`).
    pub(super) review: super::github_review::ReviewState,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in; the server stops and the repositories are deleted when it is dropped.
pub struct GithubStandIn {
    addr: SocketAddr,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for GithubStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl GithubStandIn {
    /// Starts on `127.0.0.1:0`; every API and git request must present `token`.
    pub async fn start(token: &str) -> GithubStandIn {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).expect("repos dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            app: None,
            root,
            fork_syncs: Vec::new(),
            refused_pushes: Vec::new(),
            base_url: format!("http://{addr}"),
            bot_login: "drafter-bot".into(),
            bot_teams: Some(Vec::new()),
            repos: HashMap::new(),
            pulls: HashMap::new(),
            next_pr: 1,
            merge_attempts: 0,
            review: Default::default(),
            requests: Vec::new(),
            api_failure: None,
            git_delay: std::time::Duration::ZERO,
            pr_delay: std::time::Duration::ZERO,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GithubStandIn {
            addr,
            state,
            server,
            _dir: dir,
        }
    }

    /// REST base, like GitHub Enterprise Server: `http://127.0.0.1:PORT/api/v3`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v3", self.addr)
    }

    /// Git base: clone URL is `git_url()/owner/name.git`.
    pub fn git_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The login `GET /user` answers with.
    pub fn bot_login(&self) -> String {
        lock(&self.state).bot_login.clone()
    }

    /// Creates a bare repository `full_name` with one commit on `main` holding `files` (paths may contain `/`).
    /// Defaults: the token has push only; `main` has a ruleset requiring 1 approving review that it cannot bypass.
    pub fn create_repo(&self, full_name: &str, files: &[(&str, &str)]) -> PathBuf {
        let mut st = lock(&self.state);
        let bare = st.root.join(format!("{full_name}.git"));
        let repo = git2::Repository::init_bare(&bare).expect("init bare");
        let tree_id = super::git::tree_of(&repo, files);
        let tree = repo.find_tree(tree_id).expect("find tree");
        let sig = git2::Signature::now("Seed", "seed@example.com").expect("sig");
        repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            "Initial commit",
            &tree,
            &[],
        )
        .expect("commit");
        repo.set_head("refs/heads/main").expect("head");
        let mut cfg = repo.config().expect("config");
        // Lets `git http-backend` serve pushes (https://git-scm.com/docs/git-http-backend#_services).
        cfg.set_bool("http.receivepack", true).expect("receivepack");
        let id = st.repos.len() as u64 + 1000;
        st.repos.insert(
            full_name.to_string(),
            RepoState {
                bare: bare.clone(),
                fork_of: None,
                id,
                admin: false,
                maintain: false,
                push: true,
                review: Review::Ruleset(1),
                protected_branch: "main".into(),
                can_bypass: false,
                ruleset_forbidden: false,
                ruleset_bypass_field: None,
                bypass_teams: Vec::new(),
                bypass_apps: Vec::new(),
                drafts_supported: true,
            },
        );
        bare
    }

    /// Forks `upstream` as `fork_full` (the service account's fork): every branch copied, `fork: true` with its
    /// `parent`, push allowed and no review rule (rules on a fork do not guard upstream).
    pub fn create_fork(&self, upstream: &str, fork_full: &str) -> PathBuf {
        let mut st = lock(&self.state);
        let bare = super::github_fork::create(&mut st, upstream, fork_full);
        let id = st.repos.len() as u64 + 1000;
        st.repos.insert(
            fork_full.to_string(),
            RepoState {
                bare: bare.clone(),
                fork_of: Some(upstream.to_string()),
                id,
                admin: false,
                maintain: false,
                push: true,
                review: Review::None,
                protected_branch: "main".into(),
                can_bypass: false,
                ruleset_forbidden: false,
                ruleset_bypass_field: None,
                bypass_teams: Vec::new(),
                bypass_apps: Vec::new(),
                drafts_supported: true,
            },
        );
        bare
    }

    /// The pushes refused because the account has no write access, by repository.
    pub fn refused_pushes(&self) -> Vec<String> {
        lock(&self.state).refused_pushes.clone()
    }

    /// The "Sync fork" calls received: (fork, branch).
    pub fn fork_syncs(&self) -> Vec<(String, String)> {
        lock(&self.state).fork_syncs.clone()
    }

    /// Turns the GitHub App on: JWTs must verify with `public_pem` (SPKI PEM) and name `app_id`.
    pub fn enable_app(&self, app_id: u64, public_pem: &[u8]) {
        lock(&self.state).app = Some(super::github_app::AppState::new(app_id, public_pem));
    }

    fn with_app<T>(&self, f: impl FnOnce(&mut super::github_app::AppState) -> T) -> T {
        f(lock(&self.state).app.as_mut().expect("enable_app first"))
    }

    /// Installation tokens issued so far, in order.
    pub fn app_tokens(&self) -> Vec<String> {
        self.with_app(|a| a.issued.clone())
    }

    /// Installation tokens revoked so far.
    pub fn app_revocations(&self) -> usize {
        self.with_app(|a| a.revocations)
    }

    /// JWTs refused so far.
    pub fn app_refused_jwts(&self) -> usize {
        self.with_app(|a| a.refused_jwts)
    }

    /// The repository and permissions an issued token is for, and whether it was revoked.
    pub fn app_token(&self, token: &str) -> Option<(String, Value, bool)> {
        self.with_app(|a| {
            a.tokens
                .get(token)
                .map(|t| (t.repo.clone(), t.permissions.clone(), t.revoked))
        })
    }

    /// How long installation tokens live from now on (GitHub: one hour).
    pub fn set_app_token_lifetime(&self, lifetime: chrono::Duration) {
        self.with_app(|a| a.lifetime = lifetime);
    }

    /// Lists (or not) the App as a bypass actor of ruleset 1.
    pub fn set_app_bypass_actor(&self, listed: bool) {
        self.with_app(|a| a.bypass_actor = listed);
    }

    /// What `permissions` says for the token (`triage` and `pull` are always true).
    pub fn set_permissions(&self, full_name: &str, admin: bool, maintain: bool, push: bool) {
        self.with_repo(full_name, |r| {
            r.admin = admin;
            r.maintain = maintain;
            r.push = push;
        });
    }

    /// `main` requires `count` approving reviews, through a ruleset (`via_ruleset`) or classic protection.
    pub fn set_requires_review(&self, full_name: &str, via_ruleset: bool, count: u32) {
        self.with_repo(full_name, |r| {
            r.review = if via_ruleset {
                Review::Ruleset(count)
            } else {
                Review::Classic(count)
            }
        });
    }

    /// No ruleset rule and no classic protection on any branch.
    pub fn remove_review_rules(&self, full_name: &str) {
        self.with_repo(full_name, |r| r.review = Review::None);
    }

    /// Whether the service account is in the bypass list (ruleset) or the review bypass allowances (classic).
    pub fn set_can_bypass(&self, full_name: &str, can_bypass: bool) {
        self.with_repo(full_name, |r| r.can_bypass = can_bypass);
    }

    /// `GET .../rulesets/{id}` answers 403 "Resource not accessible by personal access token".
    pub fn set_ruleset_forbidden(&self, full_name: &str, forbidden: bool) {
        self.with_repo(full_name, |r| r.ruleset_forbidden = forbidden);
    }

    /// The ruleset detail's `current_user_can_bypass`: `Some("pull_requests_only")` etc., or `None` to leave the
    /// field out.
    pub fn set_ruleset_bypass_field(&self, full_name: &str, value: Option<&str>) {
        self.with_repo(full_name, |r| {
            r.ruleset_bypass_field = Some(value.map(str::to_string))
        });
    }

    /// Teams (id, slug) and apps (slugs) in the classic review bypass allowances of the protected branch.
    pub fn set_bypass_allowances(&self, full_name: &str, teams: &[(u64, &str)], apps: &[&str]) {
        self.with_repo(full_name, |r| {
            r.bypass_teams = teams.iter().map(|(i, s)| (*i, s.to_string())).collect();
            r.bypass_apps = apps.iter().map(|s| s.to_string()).collect();
        });
    }

    /// The service account's teams, (id, slug, parent team id), as `GET /user/teams` lists them; `None` makes that
    /// endpoint answer 403 (a token that may not read the organization's teams).
    pub fn set_bot_teams(&self, teams: Option<&[(u64, &str, Option<u64>)]>) {
        lock(&self.state).bot_teams =
            teams.map(|t| t.iter().map(|(i, s, p)| (*i, s.to_string(), *p)).collect());
    }

    /// Whether draft pull requests are allowed (private repositories on the Free plan: no).
    pub fn set_drafts_supported(&self, full_name: &str, supported: bool) {
        self.with_repo(full_name, |r| r.drafts_supported = supported);
    }

    /// Delays every git (smart HTTP) request by this long.
    pub fn set_git_delay(&self, delay: std::time::Duration) {
        lock(&self.state).git_delay = delay;
    }

    /// Delays every pull request creation by this long (the PR is still created, after the delay, even if the
    /// client has gone: like a request GitHub received just before the caller crashed).
    pub fn set_pr_delay(&self, delay: std::time::Duration) {
        lock(&self.state).pr_delay = delay;
    }

    /// Every API request answers `status` (e.g. 502) until set back to `None`. Git is unaffected.
    pub fn set_api_failure(&self, status: Option<u16>) {
        lock(&self.state).api_failure = status;
    }

    /// Installs a `pre-receive` hook that refuses every push with `message` (like GitHub's "GH006: Protected branch
    /// update failed"): receive-pack then reports `ng <ref> pre-receive hook declined`.
    pub fn reject_pushes(&self, full_name: &str, message: &str) {
        let bare = lock(&self.state).repos[full_name].bare.clone();
        let hook = bare.join("hooks/pre-receive");
        std::fs::create_dir_all(bare.join("hooks")).expect("hooks dir");
        let script = format!(
            "#!/bin/sh\necho '{}' >&2\nexit 1\n",
            message.replace('\'', "")
        );
        std::fs::write(&hook, script).expect("hook");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    /// Pull requests created in `full_name`: the request body plus `number` and `html_url`.
    pub fn pulls(&self, full_name: &str) -> Vec<Value> {
        lock(&self.state)
            .pulls
            .get(full_name)
            .cloned()
            .unwrap_or_default()
    }

    /// Closes pull request `number` of `full_name` as a human would on GitHub, merged or not, or reopens it
    /// (`state` `open`): what `GET /repos/{o}/{r}/pulls/{n}` then shows in `state`, `merged` and `merged_at`
    /// (https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request).
    pub fn set_pull_state(&self, full_name: &str, number: u64, state: &str, merged: bool) {
        if let Some(pr) = lock(&self.state)
            .pulls
            .get_mut(full_name)
            .and_then(|ps| ps.iter_mut().find(|p| p["number"].as_u64() == Some(number)))
        {
            let r = &mut pr["response"];
            r["state"] = json!(state);
            r["merged"] = json!(merged);
            r["merged_at"] = if merged {
                json!("2026-01-02T03:04:05Z")
            } else {
                Value::Null
            };
            r["closed_at"] = if state == "closed" {
                json!("2026-01-02T03:04:05Z")
            } else {
                Value::Null
            };
        }
    }

    /// Renames pull request `number` of `full_name`, as a human editing its title on GitHub.
    pub fn set_pull_title(&self, full_name: &str, number: u64, title: &str) {
        if let Some(pr) = lock(&self.state)
            .pulls
            .get_mut(full_name)
            .and_then(|ps| ps.iter_mut().find(|p| p["number"].as_u64() == Some(number)))
        {
            pr["title"] = json!(title);
            pr["response"]["title"] = json!(title);
        }
    }

    /// How many merge calls arrived (all refused). The product must never make one.
    pub fn merge_attempts(&self) -> usize {
        lock(&self.state).merge_attempts
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Runs `f` on the review state (comments, permissions).
    pub fn with_review<T>(&self, f: impl FnOnce(&mut super::github_review::ReviewState) -> T) -> T {
        f(&mut lock(&self.state).review)
    }

    fn with_repo(&self, full_name: &str, f: impl FnOnce(&mut RepoState)) {
        let mut st = lock(&self.state);
        let repo = st
            .repos
            .get_mut(full_name)
            .unwrap_or_else(|| panic!("stand-in has no repo {full_name}"));
        f(repo);
    }
}

// ---- HTTP -----------------------------------------------------------------------------------------------------------

pub(super) fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn not_found() -> Response {
    json_response(
        404,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
    )
}

/// 403 as GitHub answers a fine-grained token without the permission an endpoint needs.
fn forbidden() -> Response {
    json_response(
        403,
        json!({"message": "Resource not accessible by personal access token",
               "documentation_url": "https://docs.github.com/rest", "status": "403"}),
    )
}

/// A `team` object (https://docs.github.com/en/rest/teams/teams#get-a-team-by-name).
fn team(api: &str, id: u64, slug: &str) -> Value {
    json!({"id": id, "node_id": format!("T_{id}"), "url": format!("{api}/teams/{id}"),
           "html_url": format!("https://github.example/orgs/acme/teams/{slug}"), "name": slug, "slug": slug,
           "description": null, "privacy": "closed", "notification_setting": "notifications_enabled",
           "permission": "push", "members_url": format!("{api}/teams/{id}/members{{/member}}"),
           "repositories_url": format!("{api}/teams/{id}/repos"), "parent": null})
}

/// `repositories/{id}/<rest>` as `repos/{owner}/{name}/<rest>`, for a repository the stand-in has.
fn by_repository_id(st: &Inner, path: &str) -> Option<String> {
    let rest = path.strip_prefix("repositories/")?;
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let id: u64 = id.parse().ok()?;
    let full = st.repos.iter().find(|(_, r)| r.id == id)?.0;
    Some(format!("repos/{full}/{rest}"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // libgit2 pushes with chunked transfer encoding; hyper de-chunks, and the whole body is buffered here so the CGI
    // gets a CONTENT_LENGTH.
    let body = match axum::body::to_bytes(body, 256 * 1024 * 1024).await {
        Ok(b) => b.to_vec(),
        Err(_) => return json_response(400, json!({"message": "Problems parsing body"})),
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    lock(&state).requests.push(RecordedRequest::new(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
    ));
    let (git_delay, pr_delay) = {
        let st = lock(&state);
        (st.git_delay, st.pr_delay)
    };
    if path.contains(".git/") && !git_delay.is_zero() {
        tokio::time::sleep(git_delay).await;
    }
    if parts.method == Method::POST && path.ends_with("/pulls") && !pr_delay.is_zero() {
        // Finish the creation even if the client disconnects meanwhile.
        let (state2, parts2, body2, query2) =
            (state.clone(), parts.clone(), body.clone(), query.clone());
        let api_path = path.trim_start_matches("/api/v3/").to_string();
        return tokio::spawn(async move {
            tokio::time::sleep(pr_delay).await;
            api(
                &state2,
                &parts2.method,
                &api_path,
                query2.as_deref(),
                &parts2.headers,
                &body2,
            )
        })
        .await
        .unwrap_or_else(|_| json_response(500, json!({"message": "stand-in task failed"})));
    }
    if let Some(api_path) = path.strip_prefix("/api/v3/") {
        api(
            &state,
            &parts.method,
            api_path,
            query.as_deref(),
            &parts.headers,
            &body,
        )
    } else if path.contains(".git/") {
        git(
            &state,
            &parts.method,
            &path,
            query.as_deref(),
            &parts.headers,
            body,
        )
        .await
    } else {
        not_found()
    }
}

// ---- REST -----------------------------------------------------------------------------------------------------------

fn api(
    state: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut st = lock(state);
    // GitHub's `Link` headers name repositories by id (`/repositories/{id}/...`, e.g. the next page of a list):
    // the same routes as `/repos/{owner}/{name}/...`.
    let by_id = by_repository_id(&st, path);
    let path = by_id.as_deref().unwrap_or(path);
    // https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api: `Authorization: Bearer <t>` or
    // the older `token <t>`.
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::trim);
    let app_segs: Vec<String> = path.split('/').map(percent_decode).collect();
    let app_segs: Vec<&str> = app_segs.iter().map(String::as_str).collect();
    if let Some(answer) = super::github_app::route(&mut st, method, &app_segs, presented, body) {
        return answer;
    }
    let by_app = presented != Some(st.token.as_str());
    if by_app {
        let app_answer = match (&st.app, presented) {
            (Some(app), Some(p)) => super::github_app::refusal(app, p, &app_segs),
            _ => Some(json_response(
                401,
                json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
            )),
        };
        if let Some(answer) = app_answer {
            return answer;
        }
    }
    if let Some(status) = st.api_failure {
        return json_response(status, json!({"message": "Server Error"}));
    }
    let segs: Vec<String> = path.split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let base = st.base_url.clone();
    let api = format!("{base}/api/v3");

    if segs == ["user"] && method == Method::GET {
        let login = st.bot_login.clone();
        return json_response(
            200,
            json!({"login": login, "id": 1, "type": "User", "url": format!("{api}/users/{login}")}),
        );
    }
    if segs == ["user", "teams"] && method == Method::GET {
        let Some(teams) = st.bot_teams.clone() else {
            return forbidden();
        };
        let list: Vec<Value> = teams
            .iter()
            .map(|(id, slug, parent)| {
                let mut t = team(&api, *id, slug);
                t["parent"] = parent.map_or(Value::Null, |p| team(&api, p, &format!("team-{p}")));
                t["organization"] =
                    json!({"login": "acme", "id": 77, "url": format!("{api}/orgs/acme")});
                t
            })
            .collect();
        return json_response(200, Value::Array(list));
    }
    if segs.len() < 3 || segs[0] != "repos" {
        return not_found();
    }
    let full = format!("{}/{}", segs[1], segs[2]);
    let rest = &segs[3..];

    // Merge endpoints: counted and refused whatever the repo.
    // https://docs.github.com/en/rest/pulls/pulls#merge-a-pull-request, https://docs.github.com/en/rest/branches/branches#merge-a-branch
    let is_merge =
        (method == Method::PUT && rest.len() == 3 && rest[0] == "pulls" && rest[2] == "merge")
            || (method == Method::POST && rest == ["merges"]);
    if is_merge {
        st.merge_attempts += 1;
        return json_response(
            403,
            json!({"message": "Merging is not allowed for this account in the stand-in"}),
        );
    }

    if st.repos.contains_key(&full) {
        if let Some(answer) = super::github_review::route(&mut st, method, &full, rest, query, body)
        {
            return answer;
        }
    }
    let Some(repo) = st.repos.get(&full) else {
        return not_found();
    };
    let review = repo.review;
    let protected = repo.protected_branch.clone();
    let can_bypass = repo.can_bypass;
    let ruleset_forbidden = repo.ruleset_forbidden;
    let bypass_field = repo
        .ruleset_bypass_field
        .clone()
        .unwrap_or_else(|| Some(if can_bypass { "always" } else { "never" }.to_string()));
    let bypass_teams: Vec<Value> = repo
        .bypass_teams
        .iter()
        .map(|(id, slug)| team(&api, *id, slug))
        .collect();
    let bypass_apps: Vec<Value> = repo
        .bypass_apps
        .iter()
        .enumerate()
        .map(|(i, slug)| {
            json!({"id": 900 + i, "slug": slug, "node_id": format!("A_{i}"), "name": slug,
                                "owner": {"login": "acme", "id": 77, "type": "Organization"}})
        })
        .collect();

    match (method.clone(), rest) {
        (Method::GET, []) => {
            let mut answer = json!({
                "id": repo.id, "node_id": format!("R_{}", repo.id), "name": segs[2], "full_name": full,
                "private": true, "fork": false,
                "url": format!("{api}/repos/{full}"), "html_url": format!("{base}/{full}"),
                "clone_url": format!("{base}/{full}.git"), "default_branch": "main",
                "permissions": {"admin": repo.admin, "maintain": repo.maintain, "push": repo.push,
                                "triage": true, "pull": true}
            });
            // `permissions` is the authenticated user's role: an installation token is no user, and GitHub leaves
            // the key out (what GitHub Actions' token, an installation token, sees:
            // https://github.com/semantic-release/github/issues/182).
            if by_app {
                if let Value::Object(fields) = &mut answer {
                    fields.remove("permissions");
                }
            }
            if let Value::Object(fields) = super::github_fork::fork_fields(&st, repo, &api) {
                for (k, v) in fields {
                    answer[k] = v;
                }
            }
            json_response(200, answer)
        }
        (Method::POST, ["merge-upstream"]) => super::github_fork::sync(&mut st, &full, body),
        (Method::GET, ["rules", "branches", branch @ ..]) => {
            let branch = branch.join("/");
            let rules = match review {
                Review::Ruleset(n) if branch == protected => json!([
                    {"type": "deletion", "ruleset_source_type": "Repository", "ruleset_source": full, "ruleset_id": 1},
                    {"type": "pull_request", "ruleset_source_type": "Repository", "ruleset_source": full,
                     "ruleset_id": 1,
                     "parameters": {"required_approving_review_count": n, "dismiss_stale_reviews_on_push": false,
                                    "require_code_owner_review": false, "require_last_push_approval": false,
                                    "required_review_thread_resolution": false}}
                ]),
                _ => json!([]),
            };
            json_response(200, rules)
        }
        (Method::GET, ["rulesets", _]) if ruleset_forbidden => forbidden(),
        (Method::GET, ["rulesets", id]) => match review {
            Review::Ruleset(n) if *id == "1" => {
                let mut ruleset = json!({
                    "id": 1, "name": "protect main", "target": "branch", "source_type": "Repository",
                    "source": full, "enforcement": "active",
                    "conditions": {"ref_name": {"include": [format!("refs/heads/{protected}")], "exclude": []}},
                    "rules": [{"type": "pull_request", "parameters": {"required_approving_review_count": n}}]
                });
                if let Some(app) = st.app.as_ref().filter(|a| a.bypass_actor) {
                    // https://docs.github.com/en/rest/repos/rules#get-a-repository-ruleset: `bypass_actors`.
                    ruleset["bypass_actors"] = json!([{"actor_id": app.app_id, "actor_type": "Integration", "bypass_mode": "always"}]);
                }
                if let Some(mode) = &bypass_field {
                    ruleset["current_user_can_bypass"] = json!(mode);
                }
                json_response(200, ruleset)
            }
            _ => not_found(),
        },
        (Method::GET, ["branches", branch @ .., "protection"]) => {
            let branch = branch.join("/");
            match review {
                Review::Classic(n) if branch == protected => {
                    let users = if can_bypass {
                        json!([{"login": st.bot_login, "id": 1, "type": "User"}])
                    } else {
                        json!([])
                    };
                    json_response(
                        200,
                        json!({
                            "url": format!("{api}/repos/{full}/branches/{branch}/protection"),
                            "required_pull_request_reviews": {
                                "dismiss_stale_reviews": false, "require_code_owner_reviews": false,
                                "required_approving_review_count": n,
                                "bypass_pull_request_allowances": {"users": users, "teams": bypass_teams,
                                                                   "apps": bypass_apps}
                            },
                            "enforce_admins": {"enabled": true},
                            "allow_force_pushes": {"enabled": false}
                        }),
                    )
                }
                _ => json_response(
                    404,
                    json!({"message": "Branch not protected",
                           "documentation_url": "https://docs.github.com/rest/branches/branch-protection#get-branch-protection",
                           "status": "404"}),
                ),
            }
        }
        (Method::POST, ["pulls"]) => create_pull(&mut st, &full, body),
        // https://docs.github.com/rest/pulls/pulls#update-a-pull-request
        (Method::PATCH, ["pulls", number]) => {
            let Ok(req) = serde_json::from_slice::<Value>(body) else {
                return json_response(400, json!({"message": "Problems parsing JSON"}));
            };
            let Some(pr) = st.pulls.get_mut(&full).and_then(|ps| {
                ps.iter_mut().find(|p| {
                    p["number"].as_u64().map(|n| n.to_string()).as_deref() == Some(*number)
                })
            }) else {
                return not_found();
            };
            for field in ["title", "body"] {
                if let Some(v) = req.get(field) {
                    pr[field] = v.clone();
                    pr["response"][field] = v.clone();
                }
            }
            pr["updates"] = json!(pr["updates"].as_u64().unwrap_or(0) + 1);
            json_response(200, pr["response"].clone())
        }
        // https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
        (Method::GET, ["pulls", number]) => st
            .pulls
            .get(&full)
            .and_then(|ps| {
                ps.iter().find(|p| {
                    p["number"].as_u64().map(|n| n.to_string()).as_deref() == Some(*number)
                })
            })
            .map_or_else(not_found, |p| json_response(200, p["response"].clone())),
        (Method::GET, ["pulls"]) => {
            let params: HashMap<String, String> = query
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect();
            let list: Vec<Value> = st
                .pulls
                .get(&full)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    // `head=owner:branch` (https://docs.github.com/en/rest/pulls/pulls#list-pull-requests):
                    // the head's owner, which is the fork's for a pull request from a fork.
                    params
                        .get("head")
                        .is_none_or(|h| p["response"]["head"]["label"].as_str() == Some(h.as_str()))
                })
                .filter(|_| {
                    params
                        .get("state")
                        .is_none_or(|s| s == "open" || s == "all")
                })
                .map(|p| p["response"].clone())
                .collect();
            json_response(200, Value::Array(list))
        }
        _ => not_found(),
    }
}

/// `POST /repos/{o}/{r}/pulls`: 201 with a pull request, or 422 like GitHub's "Validation Failed".
fn create_pull(st: &mut Inner, full: &str, body: &[u8]) -> Response {
    let validation = |errors: Value| {
        json_response(
            422,
            json!({"message": "Validation Failed", "errors": errors,
                   "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                   "status": "422"}),
        )
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return json_response(400, json!({"message": "Problems parsing JSON"}));
    };
    let (Some(title), Some(head), Some(base)) = (
        req["title"].as_str(),
        req["head"].as_str(),
        req["base"].as_str(),
    ) else {
        return validation(
            json!([{"resource": "PullRequest", "field": "head", "code": "missing_field"}]),
        );
    };
    let owner = full.split('/').next().unwrap_or("");
    let head_branch = head.rsplit(':').next().unwrap_or(head).to_string();
    let head_owner = head.split_once(':').map_or(owner, |(o, _)| o).to_string();
    let head_repo = super::github_fork::head_repo(st, full, &req);
    let repo_state = &st.repos[full];
    let Ok(repo) = git2::Repository::open_bare(&repo_state.bare) else {
        return json_response(500, json!({"message": "stand-in cannot open repo"}));
    };
    let head_oid = match &head_repo {
        Some(h) if h.full_name != full => {
            super::github_fork::copy_head(&repo_state.bare, h, &head_branch, st.next_pr)
        }
        Some(_) => repo
            .refname_to_id(&format!("refs/heads/{head_branch}"))
            .ok(),
        None => None,
    };
    let base_oid = repo.refname_to_id(&format!("refs/heads/{base}")).ok();
    let (Some(head_oid), Some(base_oid)) = (head_oid, base_oid) else {
        let field = if head_oid.is_none() { "head" } else { "base" };
        return validation(json!([{"resource": "PullRequest", "field": field, "code": "invalid"}]));
    };
    if req["draft"].as_bool() == Some(true) && !repo_state.drafts_supported {
        return validation(json!([{"resource": "PullRequest", "code": "custom",
                                  "message": "Draft pull requests are not supported in this repository."}]));
    }
    let head_label = format!("{head_owner}:{head_branch}");
    let exists = st.pulls.get(full).is_some_and(|ps| {
        ps.iter()
            .any(|p| p["response"]["head"]["label"].as_str() == Some(head_label.as_str()))
    });
    if exists {
        return validation(json!([{"resource": "PullRequest", "code": "custom",
                                  "message": format!("A pull request already exists for {head_label}.")}]));
    }
    let ahead = head_oid != base_oid
        && !repo
            .graph_descendant_of(base_oid, head_oid)
            .unwrap_or(false);
    if !ahead {
        return validation(json!([{"resource": "PullRequest", "code": "custom",
                                  "message": format!("No commits between {base} and {head_branch}")}]));
    }
    let number = st.next_pr;
    st.next_pr += 1;
    let base_url = st.base_url.clone();
    // A repository object as GitHub nests it in `head.repo` (id, name, full_name, url are what clients read).
    let head_full = head_repo.as_ref().map_or(full, |h| h.full_name.as_str());
    let head_repo_json = json!({
        "id": st.repos.get(head_full).map_or(0, |r| r.id), "name": head_full.split('/').nth(1),
        "full_name": head_full, "url": format!("{base_url}/api/v3/repos/{head_full}"),
        "fork": head_full != full,
    });
    let html_url = format!("{base_url}/{full}/pull/{number}");
    let draft = req["draft"].as_bool().unwrap_or(false);
    let response = json!({
        "id": 5000 + number, "node_id": format!("PR_{number}"), "number": number, "state": "open", "locked": false,
        "title": title, "body": req["body"], "draft": draft,
        "url": format!("{base_url}/api/v3/repos/{full}/pulls/{number}"), "html_url": html_url,
        "maintainer_can_modify": req["maintainer_can_modify"].as_bool().unwrap_or(true),
        "head": {"label": head_label, "ref": head_branch, "sha": head_oid.to_string(), "repo": head_repo_json},
        "base": {"label": format!("{owner}:{base}"), "ref": base, "sha": base_oid.to_string()},
        "merged": false, "mergeable": null
    });
    let mut record = req.clone();
    record["number"] = json!(number);
    record["html_url"] = json!(html_url);
    record["response"] = response.clone();
    st.pulls.entry(full.to_string()).or_default().push(record);
    json_response(201, response)
}

// ---- git smart HTTP via git http-backend (CGI) ----------------------------------------------------------------------

fn unauthorized_git() -> Response {
    Response::builder()
        .status(401)
        // Without the challenge libgit2 would not ask the credentials callback.
        .header("www-authenticate", "Basic realm=\"GitHub\"")
        .body(Body::from("Authentication required\n"))
        .unwrap_or_default()
}

async fn git(
    state: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Response {
    let (token, root) = {
        let st = lock(state);
        (st.token.clone(), st.root.clone())
    };
    let app_ok = |p: &str| {
        lock(state)
            .app
            .as_ref()
            .is_some_and(|a| super::github_app::allows_git(a, p, path))
    };
    // HTTP Basic, any username, the token as password (what GitHub accepts for HTTPS git with a token).
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| {
            let (u, p) = up.split_once(':')?;
            (p == token || app_ok(p)).then(|| u.to_string())
        });
    let Some(user) = user else {
        return unauthorized_git();
    };
    let repo_dir = path.split(".git/").next().map(|p| format!("{p}.git"));
    let exists = repo_dir
        .as_deref()
        .map(|d| !d.contains("..") && root.join(d.trim_start_matches('/')).is_dir())
        .unwrap_or(false);
    if !exists {
        return Response::builder()
            .status(404)
            .body(Body::from("Repository not found.\n"))
            .unwrap_or_default();
    }
    // A push needs write access: GitHub answers 403 "Permission to o/r denied to user." to an account without it.
    let pushing = path.ends_with("/git-receive-pack") || query == Some("service=git-receive-pack");
    let full = repo_dir
        .as_deref()
        .map(|d| {
            d.trim_start_matches('/')
                .trim_end_matches(".git")
                .to_string()
        })
        .unwrap_or_default();
    let may_push = lock(state).repos.get(&full).is_none_or(|r| r.push);
    if pushing && !may_push {
        lock(state).refused_pushes.push(full.clone());
        return Response::builder()
            .status(403)
            .body(Body::from(format!(
                "Permission to {full}.git denied to {user}.\n"
            )))
            .unwrap_or_default();
    }
    run_cgi(&root, method, path, query, headers, &user, body).await
}

async fn run_cgi(
    root: &Path,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    user: &str,
    body: Vec<u8>,
) -> Response {
    use tokio::io::AsyncWriteExt;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", query.unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let enc = header("content-encoding");
    if !enc.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    let proto = header("git-protocol");
    if !proto.is_empty() {
        cmd.env("GIT_PROTOCOL", proto);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return json_response(
                500,
                json!({"message": format!("cannot run git http-backend: {e}")}),
            )
        }
    };
    // Write stdin concurrently with reading stdout so a large exchange cannot deadlock on full pipes.
    let stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        }
    });
    let output = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => {
            return json_response(
                500,
                json!({"message": format!("git http-backend failed: {e}")}),
            )
        }
    };
    let _ = writer.await;
    parse_cgi(&output.stdout)
}

/// Turns CGI output (`Status:` and other headers, a blank line, the body) into a response.
fn parse_cgi(out: &[u8]) -> Response {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match find(out, b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => return json_response(502, json!({"message": "bad CGI output"})),
        },
    };
    let mut builder = Response::builder().status(200);
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(500);
            builder = builder
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        } else if let Ok(v) = HeaderValue::from_str(value) {
            builder = builder.header(name.trim(), v);
        }
    }
    builder.body(Body::from(body.to_vec())).unwrap_or_default()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
