//! Review follow-ups: who may steer an iteration (a user's permission on the repository), and the answers drafter
//! leaves on its pull request (a reply in a line comment's thread, a comment on the conversation).

use serde_json::{json, Value};

use super::{split_repo, ForgeError, GitHub};

/// A user's permission on a repository, as GitHub names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// `admin`, `write`, `read` or `none` (the legacy field, always present).
    pub permission: String,
    /// `admin`, `maintain`, `write`, `triage`, `read` or a custom role's name, when GitHub sends it.
    pub role_name: Option<String>,
}

impl Permission {
    /// Whether this permission lets its holder push to the repository (write, maintain or admin).
    pub fn can_write(&self) -> bool {
        matches!(self.permission.as_str(), "admin" | "maintain" | "write")
            || matches!(
                self.role_name.as_deref(),
                Some("admin" | "maintain" | "write")
            )
    }
}

impl GitHub {
    /// `user`'s permission on `repo`; a user GitHub does not know as a collaborator is `none`.
    /// https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user
    pub async fn permission(&self, repo: &str, user: &str) -> Result<Permission, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        if user.is_empty()
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '[' | ']'))
        {
            return Ok(Permission {
                permission: "none".into(),
                role_name: None,
            });
        }
        let what = format!("reading {user}'s permission on {repo}");
        let route = format!("/repos/{owner}/{name}/collaborators/{user}/permission");
        match self.get_json(&route, &what).await {
            Ok(v) => Ok(Permission {
                permission: v["permission"].as_str().unwrap_or("none").to_string(),
                role_name: v["role_name"].as_str().map(str::to_string),
            }),
            Err(ForgeError::NotFound { .. }) => Ok(Permission {
                permission: "none".into(),
                role_name: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// Replies in the thread of review comment `comment_id` (a top-level comment: GitHub has no replies to replies).
    /// https://docs.github.com/en/rest/pulls/comments#create-a-reply-for-a-review-comment
    pub async fn reply_to_review_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<(), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("replying to review comment {comment_id} on {repo}#{number}");
        let route = format!("/repos/{owner}/{name}/pulls/{number}/comments/{comment_id}/replies");
        self.post_json(&route, &json!({ "body": body }), &what)
            .await
            .map(|_| ())
    }

    /// Comments on the pull request's conversation (pull requests are issues for comments).
    /// https://docs.github.com/en/rest/issues/comments#create-an-issue-comment
    pub async fn comment_on_pr(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<(), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("commenting on {repo}#{number}");
        let route = format!("/repos/{owner}/{name}/issues/{number}/comments");
        self.post_json(&route, &json!({ "body": body }), &what)
            .await
            .map(|_| ())
    }

    /// The bodies of the comments on the pull request, review threads (where line replies are) and conversation,
    /// every page of each: how a retried iteration finds the answers it already left (by their marker) instead of
    /// answering twice.
    /// https://docs.github.com/en/rest/pulls/comments#list-review-comments-on-a-pull-request
    /// https://docs.github.com/en/rest/issues/comments#list-issue-comments
    pub async fn pr_comment_bodies(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<String>, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("listing the comments on {repo}#{number}");
        let mut out = Vec::new();
        for route in [
            format!("/repos/{owner}/{name}/pulls/{number}/comments?per_page=100"),
            format!("/repos/{owner}/{name}/issues/{number}/comments?per_page=100"),
        ] {
            for c in self.get_all(&route, &what).await? {
                if let Some(b) = c["body"].as_str() {
                    out.push(b.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The head branch of pull request `number` (`head.ref`), which a conversation comment's delivery does not carry.
    /// https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
    pub async fn pr_head_ref(&self, repo: &str, number: u64) -> Result<Option<String>, ForgeError> {
        let pr = self.pull(repo, number).await?;
        Ok(pr["head"]["ref"].as_str().map(str::to_string))
    }

    /// Pull request `number` as the REST API shows it (`state`, `merged`, `merged_at`, `html_url`, `title`, `head`).
    /// https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
    pub async fn pull(&self, repo: &str, number: u64) -> Result<Value, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("reading {repo}#{number}");
        self.get_json(&format!("/repos/{owner}/{name}/pulls/{number}"), &what)
            .await
    }

    /// The line comments submitted with review `review_id` (every page), as the REST API returns them: what a
    /// review requesting changes asks for when its own body says little or nothing.
    /// https://docs.github.com/en/rest/pulls/reviews#list-comments-for-a-pull-request-review
    pub async fn review_line_comments(
        &self,
        repo: &str,
        number: u64,
        review_id: u64,
    ) -> Result<Vec<Value>, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("listing the comments of review {review_id} on {repo}#{number}");
        self.get_all(
            &format!(
                "/repos/{owner}/{name}/pulls/{number}/reviews/{review_id}/comments?per_page=100"
            ),
            &what,
        )
        .await
    }

    /// What reviewers said on the pull request (every page of each kind), each with the webhook event that
    /// carries that kind: review comments (`pull_request_review_comment`), reviews (`pull_request_review`) and
    /// conversation comments (`issue_comment`), as the REST API returns them; for polling where GitHub cannot
    /// deliver webhooks.
    /// https://docs.github.com/en/rest/pulls/comments#list-review-comments-on-a-pull-request
    /// https://docs.github.com/en/rest/pulls/reviews#list-reviews-for-a-pull-request
    /// https://docs.github.com/en/rest/issues/comments#list-issue-comments
    pub async fn pr_activity(
        &self,
        repo: &str,
        number: u64,
    ) -> Result<Vec<(&'static str, Value)>, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let what = format!("listing the reviews and comments on {repo}#{number}");
        let mut out = Vec::new();
        for (event, route) in [
            (
                "pull_request_review_comment",
                format!("/repos/{owner}/{name}/pulls/{number}/comments?per_page=100"),
            ),
            (
                "pull_request_review",
                format!("/repos/{owner}/{name}/pulls/{number}/reviews?per_page=100"),
            ),
            (
                "issue_comment",
                format!("/repos/{owner}/{name}/issues/{number}/comments?per_page=100"),
            ),
        ] {
            for item in self.get_all(&route, &what).await? {
                out.push((event, item));
            }
        }
        Ok(out)
    }

    async fn post_json(&self, route: &str, body: &Value, what: &str) -> Result<Value, ForgeError> {
        self.octo
            .post::<_, Value>(route, Some(body))
            .await
            .map_err(|e| self.api_error(e, what))
    }
}
