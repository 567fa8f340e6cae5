//! Fork mode: the service account has no write access to the repository at all. It pushes the job's branch to its
//! own fork and proposes the change across repositories. Code the model wrote then runs in CI under GitHub's rules
//! for pull requests from forks: workflows get no repository secrets and a read-only token
//! (<https://docs.github.com/en/actions/security-for-github-actions/security-guides/security-hardening-for-github-actions#considering-cross-repository-access>),
//! which closes "CI runs model-written code with the repository's secrets". An account that cannot write cannot
//! merge either, so this check takes the place of the can't-merge check ([`GitHub::check_cannot_merge`]).

use serde_json::{json, Value};

use super::merge::rule_changing_role;
use super::{split_repo, ForgeError, GitHub};

impl GitHub {
    /// Proves fork mode holds for `upstream`, or refuses with [`ForgeError::ForkMode`]: the token has no write
    /// access to `upstream` (not admin, maintain or push; unknown counts as "may write"), and `fork` is a fork of
    /// `upstream` the token can push to. Never modifies anything.
    pub async fn check_fork(&self, upstream: &str, fork: &str) -> Result<(), ForgeError> {
        split_repo(upstream)?;
        split_repo(fork)?;
        let refuse = |reason: String, fix: &str| ForgeError::ForkMode {
            repo: upstream.to_string(),
            fork: fork.to_string(),
            reason,
            fix: fix.to_string(),
        };
        if self.app_id.is_some() {
            // An installation token is scoped to one installation's repositories: the fork (the account's) and the
            // upstream (the organization's) are two installations, and the token would need write on the one it
            // pushes to and pull requests on the other.
            return Err(refuse(
                "fork mode pushes with the service account's own token; a GitHub App installation token is \
                 scoped to one installation"
                    .into(),
                "use github.token (the machine user's personal token) for repositories in fork mode",
            ));
        }
        // `permissions` as `GET /repos/{o}/{r}` reports it for user tokens
        // (<https://docs.github.com/en/rest/repos/repos#get-a-repository>); a fork has `fork`, `parent`, `source`.
        let up = self.repository(upstream).await?;
        let Some(perms) = up.permissions else {
            return Err(refuse(
                format!("GitHub did not report the token's permissions on {upstream}, so it may have write access"),
                "use a personal access token of a machine user (GitHub reports `permissions` for user tokens)",
            ));
        };
        if let Some(r) = rule_changing_role(&perms).or(perms.push.then_some("write")) {
            return Err(refuse(
                format!("the service account has the `{r}` role on {upstream}; fork mode promises it has no write access there"),
                "remove the service account's write access to the repository (read is enough), or drop `fork` to use branch mode",
            ));
        }
        let f = self.repository(fork).await?;
        let full_name = |r: &Option<Box<octocrab::models::Repository>>| {
            r.as_ref()
                .and_then(|r| r.full_name.as_deref())
                .map(str::to_ascii_lowercase)
        };
        let want = upstream.to_ascii_lowercase();
        let of_upstream = f.fork == Some(true)
            && (full_name(&f.parent).as_deref() == Some(want.as_str())
                || full_name(&f.source).as_deref() == Some(want.as_str()));
        if !of_upstream {
            let what = match (f.fork, full_name(&f.parent)) {
                (Some(true), Some(parent)) => format!("{fork} is a fork of {parent}"),
                _ => format!("{fork} is not a fork"),
            };
            return Err(refuse(
                format!("{what}, not of {upstream}"),
                "fork the repository with the service account and name that fork in `fork`",
            ));
        }
        match f.permissions {
            Some(p) if p.push => Ok(()),
            _ => Err(ForgeError::CannotPush {
                repo: fork.to_string(),
            }),
        }
    }

    /// Brings `branch` of the fork up to date with the same branch upstream ("Sync fork"), answering GitHub's
    /// `merge_type` (`fast-forward`, `merge` or `none`).
    /// <https://docs.github.com/en/rest/branches/branches#sync-a-fork-branch-with-the-upstream-repository>:
    /// 409 when the branch conflicts with upstream, 422 when it cannot be synced for another reason.
    pub async fn sync_fork(&self, fork: &str, branch: &str) -> Result<String, ForgeError> {
        split_repo(fork)?;
        let what = format!("syncing `{branch}` of the fork {fork} with upstream");
        let answer: Value = self
            .octo
            .post(
                format!("/repos/{fork}/merge-upstream"),
                Some(&json!({ "branch": branch })),
            )
            .await
            .map_err(|e| self.api_error(e, &what))?;
        Ok(answer
            .get("merge_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}
