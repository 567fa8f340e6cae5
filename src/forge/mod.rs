//! GitHub (and GitHub Enterprise Server) through octocrab: the can't-merge check and the draft pull request.
//!
//! The model: drafter's service account may push branches and open **draft** pull requests; a human reviews and
//! merges. On GitHub, any token that can push (`Contents: write`) can also merge through the API, unless a rule on
//! the base branch stops it. So before a job touches a repository, [`GitHub::check_cannot_merge`] proves that a
//! rule stops it, and refuses with [`ForgeError::CanMerge`] (naming the repository, the branch and the fix) if it
//! cannot:
//! 1. `GET /repos/{o}/{r}`: the token must not be `admin` or `maintain` (they can bypass or edit rules), and must
//!    have `push` (else the job cannot work at all). A GitHub App's installation token has no such role there: its
//!    grant decides (no `administration: write`, and `contents: write`).
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
//!
//! Here: the client and its plumbing. `merge.rs` is the can't-merge check, `pr.rs` the draft pull request,
//! `error.rs` the errors, `fork.rs` fork mode's check and the fork's sync, `review.rs` review follow-ups (a user's
//! permission, replies in review threads, conversation comments, the PR's comments and reviews).

use std::time::Duration;

use octocrab::service::middleware::retry::RetryConfig;
use octocrab::Octocrab;
use serde_json::Value;

use crate::config::{GithubConfig, Secret};

/// REST API version sent with every request (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>).
const API_VERSION: &str = "2022-11-28";

/// How long a GitHub error message may be before it is cut (responses are external input).
const MAX_MESSAGE: usize = 400;

/// The most pages [`GitHub::get_all`] reads of one list (100 items a page).
const MAX_PAGES: usize = 100;

mod app;
mod error;
mod fork;
mod merge;
mod pr;
mod review;

pub use app::{Forge, GitHubApp, JobForge, TokenGrant, JOB_PERMISSIONS};
pub use error::ForgeError;
pub use review::Permission;

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

/// A GitHub REST client acting as the service account (a personal token, or one job's App installation token).
#[derive(Clone)]
pub struct GitHub {
    /// The octocrab client, with the token as a bearer header and retries off.
    octo: Octocrab,
    /// Kept only to scrub it out of any message that could echo it.
    token: Secret,
    /// The App whose installation token this is: the merge check refuses rulesets it may bypass.
    app_id: Option<u64>,
    /// What GitHub granted the installation token (App tokens only): the merge check reads the token's rights
    /// here, as a repository reports no user role (`permissions`) for a token that is no user.
    app_permissions: Option<std::collections::BTreeMap<String, String>>,
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
        let token = cfg.token.value().map_err(|e| ForgeError::Client {
            api_url: crate::config::redact_url(&cfg.api_url),
            message: e.to_string(),
        })?;
        GitHub::with_token(cfg, token.clone())
    }

    /// A client for `cfg.api_url` authenticating with `token` (a JWT, an installation token).
    pub(crate) fn with_token(cfg: &GithubConfig, token: Secret) -> Result<GitHub, ForgeError> {
        let client_err = |message: String| ForgeError::Client {
            api_url: crate::config::redact_url(&cfg.api_url),
            message,
        };
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
        Ok(GitHub {
            octo,
            token,
            app_id: None,
            app_permissions: None,
        })
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

    /// `GET /repos/{o}/{r}`: with a user token, its `permissions`; for a fork, `fork`, `parent` and `source`.
    async fn repository(&self, repo: &str) -> Result<octocrab::models::Repository, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        self.octo
            .repos(owner, name)
            .get()
            .await
            .map_err(|e| self.api_error(e, &format!("reading repository {repo}")))
    }

    async fn get_json(&self, route: &str, what: &str) -> Result<Value, ForgeError> {
        self.octo
            .get::<Value, _, ()>(route, None::<&()>)
            .await
            .map_err(|e| self.api_error(e, what))
    }

    /// Every item of the list at `route`, page after page as the `Link` header's `rel="next"` names them
    /// (<https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api>). Only the next link's
    /// path and query are followed, on the configured API host: the token never goes where a header points. More
    /// than [`MAX_PAGES`] pages is an error rather than a silent cut (a caller deciding from the whole list, like
    /// the retry's search for its own answers, must not act on part of it).
    async fn get_all(&self, route: &str, what: &str) -> Result<Vec<Value>, ForgeError> {
        let mut items = Vec::new();
        let mut next = Some(route.to_string());
        let mut pages = 0;
        while let Some(uri) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(ForgeError::Unexpected {
                    what: what.to_string(),
                    message: format!("more than {MAX_PAGES} pages"),
                });
            }
            let page: octocrab::Page<Value> = self
                .octo
                .get(uri, None::<&()>)
                .await
                .map_err(|e| self.api_error(e, what))?;
            items.extend(page.items);
            next = page
                .next
                .as_ref()
                .and_then(|u| u.path_and_query())
                .map(|p| p.as_str().to_string());
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests;
