//! The draft pull request: open it, find it again by head branch, update its body.

use super::{split_repo, ForgeError, GitHub, PullRequest};

impl GitHub {
    /// Opens a **draft** pull request from `head` (a branch of `head_repo`: `repo` itself, or in fork mode the
    /// service account's fork) into `base`, with `maintainer_can_modify: false`. A 422 says why: it already
    /// exists, no commits, or drafts not supported.
    /// https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request: across repositories `head` is
    /// `owner:branch`, and `head_repo` names the fork when both have the same owner.
    pub async fn open_draft_pr(
        &self,
        repo: &str,
        head_repo: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let (head_owner, head_name) = split_repo(head_repo)?;
        let across = !head_repo.eq_ignore_ascii_case(repo);
        let head_ref = if across {
            format!("{head_owner}:{head}")
        } else {
            head.to_string()
        };
        let what = format!("opening a pull request from `{head_ref}` into `{base}` in {repo}");
        let pulls = self.octo.pulls(owner, name);
        let mut create = pulls.create(title, head_ref, base);
        if across && head_owner.eq_ignore_ascii_case(owner) {
            create = create.head_repo(head_name.to_string());
        }
        let pr = create
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

    /// The open pull request into `repo` whose head is `branch` of `head_repo` (`repo` itself, or the fork), if
    /// any: how a retried job finds the PR an earlier attempt opened, instead of opening a second one.
    pub async fn find_open_pr(
        &self,
        repo: &str,
        head_repo: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let (head_owner, _) = split_repo(head_repo)?;
        let what = format!("looking up the pull request for `{branch}` in {repo}");
        let page = self
            .octo
            .pulls(owner, name)
            .list()
            .state(octocrab::params::State::Open)
            .head(format!("{head_owner}:{branch}"))
            .per_page(10)
            .send()
            .await
            .map_err(|e| self.api_error(e, &what))?;
        Ok(page
            .items
            .into_iter()
            .find(|pr| {
                pr.head.ref_field == branch
                    && pr.head.repo.as_ref().is_none_or(|r| {
                        r.full_name
                            .as_deref()
                            .is_none_or(|f| f.eq_ignore_ascii_case(head_repo))
                    })
            })
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
