//! Why a GitHub call failed, or why the repository is refused.

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
    /// Fork mode does not hold for the repository: the account may write to it, or the fork is not its fork.
    #[error("refusing {repo} in fork mode (fork {fork}): {reason}. Fix: {fix}")]
    ForkMode {
        /// `owner/name` upstream.
        repo: String,
        /// The configured fork.
        fork: String,
        /// What was found.
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

    pub(super) fn status(&self) -> Option<u16> {
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
