//! GitHub (and GitHub Enterprise Server) through octocrab: the can't-merge check and the draft pull request.
//!
//! The model: drafter's service account may push branches and open **draft** pull requests; a human reviews and
//! merges. On GitHub, any token that can push (`Contents: write`) can also merge through the API, unless a rule on
//! the base branch stops it. So before a job touches a repository, [`GitHub::check_cannot_merge`] proves that a
//! rule stops it, and refuses with [`ForgeError::CanMerge`] (naming the repository, the branch and the fix) if it
//! cannot:
//! 1. `GET /repos/{o}/{r}`: the token must not be `admin` or `maintain` (they can bypass or edit rules), and must
//!    have `push` (else the job cannot work at all).
//! 2. `GET /repos/{o}/{r}/rules/branches/{base}`: an active `pull_request` rule with
//!    `required_approving_review_count >= 1`, from a ruleset the token cannot bypass
//!    (`GET /repos/{o}/{r}/rulesets/{id}` -> `current_user_can_bypass == "never"`), proves it. A PR author cannot
//!    approve their own PR, so the bot's PR needs a human approval before anyone can merge it.
//! 3. Otherwise `GET /repos/{o}/{r}/branches/{base}/protection` (classic branch protection):
//!    `required_pull_request_reviews.required_approving_review_count >= 1` proves it, unless the account is or may
//!    be in the review bypass allowances (`users`; `teams`, checked against `GET /user/teams`; `apps`, always).
//!    404 means unprotected; 403 means it cannot be read (not proven).
//!
//! It fails closed: whatever cannot be read or is absent (a ruleset answering 403/404, a missing
//! `current_user_can_bypass`, teams the token cannot list) counts as "may bypass", and the refusal says which
//! permission or setting the operator must change.
//!
//! **Architecture invariant**: only this module talks to GitHub's API, and it has no function that merges, approves
//! or marks a pull request ready. Errors never carry the token. octocrab's own retries are off: the worker decides
//! about retries from [`ForgeError::is_retryable`].

use std::time::Duration;

use octocrab::service::middleware::retry::RetryConfig;
use octocrab::Octocrab;
use serde_json::Value;

use crate::config::{GithubConfig, Secret};

/// REST API version sent with every request (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>).
const API_VERSION: &str = "2022-11-28";

/// How long a GitHub error message may be before it is cut (responses are external input).
const MAX_MESSAGE: usize = 400;

/// Why a GitHub call failed, or why the repository is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForgeError {
    /// `owner/name` is malformed.
    #[error("`{repo}` is not a repository name of the form owner/name")]
    InvalidRepo {
        /// As given.
        repo: String,
    },
    /// The client could not be built (bad `github.api_url`, no TLS roots).
    #[error("cannot set up the GitHub client for {api_url}: {message}")]
    Client {
        /// The configured API base.
        api_url: String,
        /// Why.
        message: String,
    },
    /// 401: GitHub rejected the token.
    #[error("GitHub rejected the token (401 Bad credentials) while {what}: check github.token (expired or revoked?)")]
    Unauthorized {
        /// What drafter was doing.
        what: String,
    },
    /// 403 that is not a rate limit: the token lacks a permission.
    #[error("GitHub refused (403) while {what}: {message}")]
    Forbidden {
        /// What drafter was doing.
        what: String,
        /// GitHub's message.
        message: String,
    },
    /// 404: the repository, branch or resource does not exist, or the token cannot see it.
    #[error("not found (404) while {what}: the repository or branch does not exist, or the token cannot see it")]
    NotFound {
        /// What drafter was doing.
        what: String,
    },
    /// The service account could merge into the base branch: drafter refuses to work on this repository.
    #[error("refusing {repo}: the service account may be able to merge pull requests without a human review: {reason}. Fix: {fix}")]
    CanMerge {
        /// `owner/name`.
        repo: String,
        /// What was found (or not found).
        reason: String,
        /// What an administrator should change.
        fix: String,
    },
    /// The token cannot push to the repository, so no branch could be published.
    #[error(
        "the service account cannot push to {repo}. Fix: give it write (push) permission on {repo}"
    )]
    CannotPush {
        /// `owner/name`.
        repo: String,
    },
    /// 422 on create: a pull request for this head already exists.
    #[error("a pull request from `{head}` already exists in {repo}")]
    PullRequestExists {
        /// `owner/name`.
        repo: String,
        /// The head branch.
        head: String,
    },
    /// 422 on create: head has no commits that base lacks.
    #[error("no commits between `{base}` and `{head}` in {repo}: nothing to propose")]
    NoCommits {
        /// `owner/name`.
        repo: String,
        /// The head branch.
        head: String,
        /// The base branch.
        base: String,
    },
    /// 422 on create: the repository does not allow draft pull requests (private repositories on some plans).
    #[error("{repo} does not support draft pull requests (private repositories need a Team or Enterprise plan); drafter opens drafts only")]
    DraftsNotSupported {
        /// `owner/name`.
        repo: String,
    },
    /// Another 422: the request was understood but refused.
    #[error("GitHub refused the request (422) while {what}: {message}")]
    Unprocessable {
        /// What drafter was doing.
        what: String,
        /// GitHub's message and error details.
        message: String,
    },
    /// 429, or a 403 carrying rate-limit headers: retry after the given time.
    #[error("GitHub rate limit hit while {what}{}", retry_after_secs.map(|s| format!(": retry after {s}s")).unwrap_or_default())]
    RateLimited {
        /// What drafter was doing.
        what: String,
        /// Seconds to wait, from `retry-after` or `x-ratelimit-reset`, when GitHub said.
        retry_after_secs: Option<u64>,
    },
    /// 5xx.
    #[error("GitHub server error {status} while {what}: {message}")]
    Server {
        /// What drafter was doing.
        what: String,
        /// The HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// Any other HTTP status.
    #[error("GitHub answered {status} while {what}: {message}")]
    Http {
        /// What drafter was doing.
        what: String,
        /// The HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// The request did not get an HTTP answer (connection refused, reset, timeout).
    #[error("cannot reach GitHub while {what}: {message}")]
    Network {
        /// What drafter was doing.
        what: String,
        /// The transport error.
        message: String,
    },
    /// GitHub answered something drafter cannot read.
    #[error("unexpected answer from GitHub while {what}: {message}")]
    Unexpected {
        /// What drafter was doing.
        what: String,
        /// What was wrong with it.
        message: String,
    },
}

impl ForgeError {
    /// Whether trying again later can succeed: rate limits, 5xx and transport errors.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ForgeError::RateLimited { .. } | ForgeError::Server { .. } | ForgeError::Network { .. }
        )
    }

    fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Unauthorized { .. } => Some(401),
            ForgeError::Forbidden { .. } => Some(403),
            ForgeError::NotFound { .. } => Some(404),
            ForgeError::Unprocessable { .. } => Some(422),
            ForgeError::RateLimited { .. } => Some(429),
            ForgeError::Server { status, .. } | ForgeError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A pull request drafter opened.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// Its number in the repository.
    pub number: u64,
    /// The page humans open.
    pub html_url: String,
    /// Whether GitHub reports it as a draft (drafter always asks for one).
    pub draft: bool,
    /// Its description, when GitHub sent one (a retried job keeps it and refreshes only the proof footer).
    pub body: Option<String>,
}

/// A GitHub REST client acting as the service account.
pub struct GitHub {
    /// The octocrab client, with the token as a bearer header and retries off.
    octo: Octocrab,
    /// Kept only to scrub it out of any message that could echo it.
    token: Secret,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").finish_non_exhaustive()
    }
}

/// `owner`, `name`, after checking the shape (nothing that could change the URL path).
fn split_repo(repo: &str) -> Result<(&str, &str), ForgeError> {
    if !crate::config::valid_repo_name(repo) {
        return Err(ForgeError::InvalidRepo {
            repo: repo.to_string(),
        });
    }
    repo.split_once('/').ok_or_else(|| ForgeError::InvalidRepo {
        repo: repo.to_string(),
    })
}

/// Percent-encodes a branch name for a URL path, keeping `/` (GitHub accepts slashes in branch path parameters).
fn encode_branch(branch: &str) -> String {
    let mut out = String::new();
    for b in branch.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The message of a GitHub error, with the `errors[].message` details GitHub puts the real reason in.
fn github_message(e: &octocrab::GitHubError) -> String {
    let mut parts = vec![e.message.clone()];
    for detail in e.errors.iter().flatten() {
        match detail.get("message").and_then(Value::as_str) {
            Some(m) => parts.push(m.to_string()),
            None => {
                let field = detail.get("field").and_then(Value::as_str).unwrap_or("?");
                let code = detail.get("code").and_then(Value::as_str).unwrap_or("?");
                parts.push(format!("{field}: {code}"));
            }
        }
    }
    parts.join(": ")
}

impl GitHub {
    /// A client for `cfg.api_url` (`https://api.github.com`, or `https://HOST/api/v3`; plain `http://` works too)
    /// authenticating as `cfg.token`.
    pub fn new(cfg: &GithubConfig) -> Result<GitHub, ForgeError> {
        let client_err = |message: String| ForgeError::Client {
            api_url: crate::config::redact_url(&cfg.api_url),
            message,
        };
        let token = cfg
            .token
            .value()
            .map_err(|e| client_err(e.to_string()))?
            .clone();
        let octo = Octocrab::builder()
            .base_uri(cfg.api_url.as_str())
            .map_err(|e| client_err(format!("bad github.api_url: {e}")))?
            .personal_token(token.expose().to_string())
            .add_header(
                reqwest::header::HeaderName::from_static("x-github-api-version"),
                API_VERSION.to_string(),
            )
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(15)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .set_write_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| client_err(e.to_string()))?;
        Ok(GitHub { octo, token })
    }

    /// The token this client authenticates with, for git over HTTPS to the same forge.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    fn scrub(&self, s: &str) -> String {
        let t = self.token.expose();
        let s = if t.is_empty() {
            s.to_string()
        } else {
            s.replace(t, "[redacted]")
        };
        clip(&s)
    }

    /// Maps an octocrab error to a [`ForgeError`] for the action `what`.
    fn api_error(&self, e: octocrab::Error, what: &str) -> ForgeError {
        let what = what.to_string();
        match e {
            octocrab::Error::GitHub { source, .. } => {
                let status = source.status_code.as_u16();
                let message = self.scrub(&github_message(&source));
                let header = |name: &str| {
                    source
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let retry_after = header("retry-after");
                let exhausted = header("x-ratelimit-remaining") == Some(0);
                let until_reset = || {
                    source
                        .rate_limit_reset
                        .map(|r| r.saturating_sub(chrono::Utc::now().timestamp().max(0) as u64))
                };
                match status {
                    401 => ForgeError::Unauthorized { what },
                    429 => ForgeError::RateLimited {
                        what,
                        retry_after_secs: retry_after.or_else(until_reset),
                    },
                    // GitHub's secondary rate limits answer 403 with retry-after, or with remaining = 0.
                    403 if retry_after.is_some() || exhausted => ForgeError::RateLimited {
                        what,
                        retry_after_secs: retry_after.or_else(until_reset),
                    },
                    403 => ForgeError::Forbidden { what, message },
                    404 => ForgeError::NotFound { what },
                    422 => ForgeError::Unprocessable { what, message },
                    s if s >= 500 => ForgeError::Server {
                        what,
                        status: s,
                        message,
                    },
                    s => ForgeError::Http {
                        what,
                        status: s,
                        message,
                    },
                }
            }
            octocrab::Error::Hyper { .. }
            | octocrab::Error::Service { .. }
            | octocrab::Error::Http { .. } => ForgeError::Network {
                what,
                message: self.scrub(&e.to_string()),
            },
            other => ForgeError::Unexpected {
                what,
                message: self.scrub(&other.to_string()),
            },
        }
    }

    async fn get_json(&self, route: &str, what: &str) -> Result<Value, ForgeError> {
        self.octo
            .get::<Value, _, ()>(route, None::<&()>)
            .await
            .map_err(|e| self.api_error(e, what))
    }

    /// Proves that the service account cannot merge into `base` of `repo` (`owner/name`) on its own, or refuses
    /// with [`ForgeError::CanMerge`]. See the module docs for what counts as proof. Never modifies anything.
    pub async fn check_cannot_merge(&self, repo: &str, base: &str) -> Result<(), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let fix_rule = format!(
            "add a branch ruleset or protection rule on `{base}` requiring at least 1 approving review, \
             with the service account not in the bypass list"
        );

        // 1. The token's role: admin and maintain can change or bypass rules, so no rule can prove anything.
        let info = self
            .octo
            .repos(owner, name)
            .get()
            .await
            .map_err(|e| self.api_error(e, &format!("reading repository {repo}")))?;
        let Some(perms) = info.permissions else {
            return Err(ForgeError::CanMerge {
                repo: repo.to_string(),
                reason: "GitHub did not report the token's permissions on the repository, so its role is unknown"
                    .into(),
                fix: "use a personal access token of a machine user (GitHub reports `permissions` for user tokens) \
                      with write (push) permission only"
                    .into(),
            });
        };
        let role = if perms.admin {
            Some("admin")
        } else if perms.maintain {
            Some("maintain")
        } else {
            None
        };
        if let Some(role) = role {
            return Err(ForgeError::CanMerge {
                repo: repo.to_string(),
                reason: format!(
                    "the token has the `{role}` role, which can merge and can bypass or change branch rules"
                ),
                fix: "give the service account write (push) permission only".into(),
            });
        }
        if !perms.push {
            return Err(ForgeError::CannotPush {
                repo: repo.to_string(),
            });
        }

        let branch = encode_branch(base);
        // What was found, and for each way it fell short, what the operator can change.
        let mut notes: Vec<String> = Vec::new();
        let mut fixes: Vec<String> = Vec::new();

        // 2. Rulesets (readable with Metadata: read).
        // https://docs.github.com/en/rest/repos/rules#get-rules-for-a-branch
        let what = format!("reading the rules for `{base}` in {repo}");
        match self
            .get_json(
                &format!("/repos/{owner}/{name}/rules/branches/{branch}"),
                &what,
            )
            .await
        {
            Ok(rules) => {
                let guards = review_rules(&rules);
                if guards.is_empty() {
                    notes.push(format!(
                        "no active ruleset rule on `{base}` requires an approving review"
                    ));
                }
                for guard in guards {
                    match self.ruleset_bypass(repo, base, &guard).await? {
                        Bypass::Never => {
                            tracing::info!(
                                repo,
                                base,
                                count = guard.count,
                                "merge guarded by a ruleset review rule"
                            );
                            return Ok(());
                        }
                        Bypass::May { note, fix } => {
                            notes.push(note);
                            fixes.push(fix);
                        }
                    }
                }
            }
            // Older Enterprise Server versions have no rulesets API.
            Err(e @ ForgeError::NotFound { .. }) => {
                tracing::debug!(error = %e, "no rulesets API");
                notes.push("rulesets could not be read (404)".into());
            }
            Err(e @ ForgeError::Forbidden { .. }) => {
                tracing::debug!(error = %e, "rulesets not readable");
                notes.push(
                    "rulesets could not be read (403: the token needs Metadata: read)".into(),
                );
                fixes.push(format!("give the token Metadata: read on {repo}"));
            }
            Err(e) => return Err(e),
        }

        // 3. Classic branch protection (needs Administration: read).
        // https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection
        let what = format!("reading branch protection of `{base}` in {repo}");
        match self
            .get_json(&format!("/repos/{owner}/{name}/branches/{branch}/protection"), &what)
            .await
        {
            Ok(protection) => {
                let reviews = &protection["required_pull_request_reviews"];
                let count = reviews["required_approving_review_count"].as_u64().unwrap_or(0);
                if count == 0 {
                    notes.push(format!(
                        "branch protection on `{base}` does not require an approving review"
                    ));
                } else {
                    let bypasses = self
                        .classic_bypass(base, count, &reviews["bypass_pull_request_allowances"])
                        .await?;
                    if bypasses.is_empty() {
                        tracing::info!(repo, base, count, "merge guarded by branch protection");
                        return Ok(());
                    }
                    for bypass in bypasses {
                        if let Bypass::May { note, fix } = bypass {
                            notes.push(note);
                            fixes.push(fix);
                        }
                    }
                }
            }
            Err(ForgeError::NotFound { .. }) => {
                notes.push(format!("branch `{base}` has no classic branch protection (404)"))
            }
            Err(ForgeError::Forbidden { .. }) => notes.push(format!(
                "branch protection of `{base}` could not be read (403: the token needs Administration: read)"
            )),
            Err(e) => return Err(e),
        }

        Err(ForgeError::CanMerge {
            repo: repo.to_string(),
            reason: format!(
                "nothing proves that a rule stops it from merging into `{base}`: {}",
                notes.join("; ")
            ),
            fix: if fixes.is_empty() {
                fix_rule
            } else {
                fixes.join("; or ")
            },
        })
    }

    /// Whether the service account can bypass a ruleset's review rule: only `current_user_can_bypass == "never"`
    /// proves it cannot. `always` and `pull_requests_only` (which lets it merge a pull request past the rule) say it
    /// can; a ruleset that cannot be read, or that lacks the field, leaves it unknown, which counts as "may".
    /// https://docs.github.com/en/rest/repos/rules#get-a-repository-ruleset
    async fn ruleset_bypass(
        &self,
        repo: &str,
        base: &str,
        guard: &ReviewRule,
    ) -> Result<Bypass, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let rule = format!("requires {} approving review(s) on `{base}`", guard.count);
        let Some(id) = guard.ruleset_id else {
            return Ok(Bypass::May {
                note: format!(
                    "a ruleset rule {rule}, but GitHub did not name its ruleset, so whether the service account \
                     can bypass it (current_user_can_bypass) is unknown"
                ),
                fix: format!(
                    "require the review with classic branch protection on `{base}`, without bypass allowances"
                ),
            });
        };
        let what = format!("reading ruleset {id} of {repo}");
        let ruleset = match self
            .get_json(&format!("/repos/{owner}/{name}/rulesets/{id}"), &what)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "ruleset not readable: counted as one the service account may bypass");
                let (status, fix) = match e.status() {
                    Some(403) => (
                        "403".to_string(),
                        format!("give the token Metadata: read on {repo}, so drafter can read ruleset {id}"),
                    ),
                    Some(404) => (
                        "404: an organization or enterprise ruleset the token cannot see?".to_string(),
                        format!(
                            "let the token read ruleset {id} (Metadata: read on {repo}), or require the review \
                             in a repository ruleset"
                        ),
                    ),
                    _ => (
                        e.to_string(),
                        format!("let the token read ruleset {id} (Metadata: read on {repo})"),
                    ),
                };
                return Ok(Bypass::May {
                    note: format!(
                        "ruleset {id} {rule}, but it could not be read ({status}), so whether the service account \
                         can bypass it (current_user_can_bypass) is unknown"
                    ),
                    fix,
                });
            }
        };
        Ok(match ruleset["current_user_can_bypass"].as_str() {
            Some("never") => Bypass::Never,
            Some(mode) => Bypass::May {
                note: format!(
                    "ruleset {id} {rule}, but the service account can bypass it (current_user_can_bypass = {mode})"
                ),
                fix: format!(
                    "remove the service account, its teams and its role from the bypass list of ruleset {id}"
                ),
            },
            None => Bypass::May {
                note: format!(
                    "ruleset {id} {rule}, but GitHub did not say whether the service account can bypass it \
                     (no current_user_can_bypass in the ruleset: an older GitHub Enterprise Server?)"
                ),
                fix: format!(
                    "upgrade GitHub Enterprise Server to a version that reports current_user_can_bypass, or \
                     require the review with classic branch protection on `{base}`, without bypass allowances"
                ),
            },
        })
    }

    /// Who in classic protection's `bypass_pull_request_allowances` (`users`, `teams`, `apps`) is or may be the
    /// service account; empty when it provably is none of them. A user matches by login; a team when the account
    /// is in it or in a child team of it (`GET /user/teams`; if that cannot be read, or a team's ancestry is out of
    /// sight, membership is unknown, which counts as "may"); an app always counts (a token cannot prove it does
    /// not act for one).
    /// https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection
    async fn classic_bypass(
        &self,
        base: &str,
        count: u64,
        allowances: &Value,
    ) -> Result<Vec<Bypass>, ForgeError> {
        let rule = format!("branch protection on `{base}` requires {count} approving review(s)");
        let names = |key: &str, field: &str| -> Vec<(Option<u64>, String)> {
            allowances[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            let name = x[field]
                                .as_str()
                                .or_else(|| x["name"].as_str())
                                .unwrap_or("?");
                            (x["id"].as_u64(), name.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (users, teams, apps) = (
            names("users", "login"),
            names("teams", "slug"),
            names("apps", "slug"),
        );
        let mut found = Vec::new();
        if !users.is_empty() {
            let login = match self
                .get_json("/user", "reading the service account's login")
                .await
            {
                Ok(me) => me["login"].as_str().map(str::to_string),
                Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
                Err(_) => None,
            };
            for (_, user) in &users {
                match &login {
                    Some(me) if !user.eq_ignore_ascii_case(me) => {}
                    Some(me) => found.push(Bypass::May {
                        note: format!("{rule}, but `{me}` is in its bypass allowances"),
                        fix: format!(
                            "remove `{me}` from the pull request review bypass allowances of `{base}`"
                        ),
                    }),
                    None => found.push(Bypass::May {
                        note: format!(
                            "{rule}, but user `{user}` may bypass it and drafter cannot read the service \
                             account's login (GET /user)"
                        ),
                        fix: format!(
                            "remove `{user}` from the pull request review bypass allowances of `{base}`"
                        ),
                    }),
                }
            }
        }
        if !teams.is_empty() {
            let mine = self.bot_teams().await?;
            for (id, slug) in &teams {
                let remove = format!(
                    "remove team `{slug}` from the pull request review bypass allowances of `{base}`"
                );
                let member = match (&mine, id) {
                    (Ok(mine), Some(id)) => mine.contains(*id),
                    _ => Membership::Unknown,
                };
                match (member, &mine) {
                    (Membership::No, _) => {}
                    (Membership::Yes, _) => found.push(Bypass::May {
                        note: format!(
                            "{rule}, but team `{slug}` is in its bypass allowances and the service account is a \
                             member of it"
                        ),
                        fix: format!("{remove}, or the service account from the team"),
                    }),
                    (Membership::Unknown, mine) => {
                        let why = match (mine, id) {
                            (Err(why), _) => why.clone(),
                            (Ok(_), None) => "the allowance gives no team id".to_string(),
                            (Ok(_), Some(_)) => {
                                "a team of the service account has a parent team drafter cannot see".to_string()
                            }
                        };
                        found.push(Bypass::May {
                            note: format!(
                                "{rule}, but team `{slug}` is in its bypass allowances and drafter cannot tell \
                                 whether the service account is in it ({why})"
                            ),
                            fix: format!(
                                "{remove}, or give the token the read:org scope so drafter can list the service \
                                 account's teams"
                            ),
                        });
                    }
                }
            }
        }
        for (_, app) in &apps {
            found.push(Bypass::May {
                note: format!(
                    "{rule}, but app `{app}` is in its bypass allowances and drafter cannot prove the token does \
                     not act for it"
                ),
                fix: format!("remove app `{app}` from the pull request review bypass allowances of `{base}`"),
            });
        }
        Ok(found)
    }

    /// The service account's teams (`GET /user/teams`, every page), or why they are unknown.
    /// https://docs.github.com/en/rest/teams/teams#list-teams-for-the-authenticated-user
    async fn bot_teams(&self) -> Result<Result<TeamSet, String>, ForgeError> {
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 10;
        let mut set = TeamSet::default();
        for page in 1..=MAX_PAGES {
            let route = format!("/user/teams?per_page={PER_PAGE}&page={page}");
            let listed = match self
                .get_json(&route, "listing the service account's teams")
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
                Err(e) => {
                    let status = e
                        .status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string());
                    return Ok(Err(format!("GET /user/teams answered {status}")));
                }
            };
            let Some(items) = listed.as_array() else {
                return Ok(Err("GET /user/teams did not answer a list".into()));
            };
            for team in items {
                let Some(id) = team["id"].as_u64() else {
                    return Ok(Err("GET /user/teams listed a team without an id".into()));
                };
                set.teams.push(id);
                if let Some(parent) = team["parent"]["id"].as_u64() {
                    set.parents.push(parent);
                }
            }
            if items.len() < PER_PAGE {
                return Ok(Ok(set));
            }
        }
        Ok(Err(format!(
            "the service account is in more than {} teams",
            PER_PAGE * MAX_PAGES
        )))
    }

    /// Opens a **draft** pull request from `head` (a branch of `repo`) into `base`, with
    /// `maintainer_can_modify: false`. A 422 says why: it already exists, no commits, or drafts not supported.
    /// https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request
    pub async fn open_draft_pr(
        &self,
        repo: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("opening a pull request from `{head}` into `{base}` in {repo}");
        let pr = self
            .octo
            .pulls(owner, name)
            .create(title, head, base)
            .body(body)
            .draft(true)
            .maintainer_can_modify(false)
            .send()
            .await
            .map_err(|e| match self.api_error(e, &what) {
                ForgeError::Unprocessable { what, message } => {
                    let lower = message.to_ascii_lowercase();
                    if lower.contains("already exists") {
                        ForgeError::PullRequestExists {
                            repo: repo.to_string(),
                            head: head.to_string(),
                        }
                    } else if lower.contains("no commits between") {
                        ForgeError::NoCommits {
                            repo: repo.to_string(),
                            head: head.to_string(),
                            base: base.to_string(),
                        }
                    } else if lower.contains("draft") {
                        ForgeError::DraftsNotSupported {
                            repo: repo.to_string(),
                        }
                    } else {
                        ForgeError::Unprocessable { what, message }
                    }
                }
                other => other,
            })?;
        let draft = pr.draft.unwrap_or(false);
        if !draft {
            tracing::warn!(
                repo,
                number = pr.number,
                "GitHub did not report the pull request as a draft"
            );
        }
        Ok(PullRequest {
            number: pr.number,
            html_url: pr
                .html_url
                .map(|u| u.to_string())
                .unwrap_or_else(|| pr.url.clone()),
            draft,
            body: pr.body,
        })
    }

    /// The open pull request whose head is `branch` in the same repository, if any: how a retried job finds the PR
    /// an earlier attempt opened, instead of opening a second one.
    pub async fn find_open_pr(
        &self,
        repo: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("looking up the pull request for `{branch}` in {repo}");
        let page = self
            .octo
            .pulls(owner, name)
            .list()
            .state(octocrab::params::State::Open)
            .head(format!("{owner}:{branch}"))
            .per_page(10)
            .send()
            .await
            .map_err(|e| self.api_error(e, &what))?;
        Ok(page
            .items
            .into_iter()
            .find(|pr| pr.head.ref_field == branch)
            .map(|pr| PullRequest {
                number: pr.number,
                html_url: pr
                    .html_url
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| pr.url.clone()),
                draft: pr.draft.unwrap_or(false),
                body: pr.body,
            }))
    }

    /// Replaces an existing pull request's title and body (a retried job refreshing what it opened).
    pub async fn update_pr(
        &self,
        repo: &str,
        number: u64,
        title: &str,
        body: &str,
    ) -> Result<(), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("updating pull request #{number} in {repo}");
        self.octo
            .pulls(owner, name)
            .update(number)
            .title(title)
            .body(body)
            .send()
            .await
            .map_err(|e| self.api_error(e, &what))?;
        Ok(())
    }
}

/// Whether the service account can bypass a review rule, as far as drafter can tell.
#[derive(Debug)]
enum Bypass {
    /// Proven: it cannot.
    Never,
    /// It can, or drafter cannot tell: `note` says which, `fix` what the operator can change.
    May { note: String, fix: String },
}

/// Whether the service account is in a team.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Membership {
    Yes,
    No,
    Unknown,
}

/// The service account's teams as `GET /user/teams` lists them: each team's id and its parent's.
#[derive(Debug, Default)]
struct TeamSet {
    teams: Vec<u64>,
    parents: Vec<u64>,
}

impl TeamSet {
    /// Membership of team `id`, directly or through a child team. A parent that is not itself listed has an
    /// ancestry drafter cannot see (a grandparent team would count too), so a miss is then unknown.
    fn contains(&self, id: u64) -> Membership {
        if self.teams.contains(&id) || self.parents.contains(&id) {
            Membership::Yes
        } else if self.parents.iter().any(|p| !self.teams.contains(p)) {
            Membership::Unknown
        } else {
            Membership::No
        }
    }
}

/// A ruleset rule that requires approving reviews.
#[derive(Debug, PartialEq)]
struct ReviewRule {
    /// The ruleset it comes from, to look up whether the account can bypass it.
    ruleset_id: Option<u64>,
    /// Required approving reviews (>= 1).
    count: u64,
}

/// The `pull_request` rules requiring at least one approval, from a `GET /rules/branches/{b}` answer (a JSON array
/// of rules; anything else yields none).
fn review_rules(rules: &Value) -> Vec<ReviewRule> {
    rules
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter(|r| r["type"].as_str() == Some("pull_request"))
                .filter_map(|r| {
                    let count = r["parameters"]["required_approving_review_count"].as_u64()?;
                    (count >= 1).then(|| ReviewRule {
                        ruleset_id: r["ruleset_id"].as_u64(),
                        count,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
}
