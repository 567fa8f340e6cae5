//! GitHub review events on drafter's pull requests: which deliveries ask for a follow-up iteration, as pure
//! functions of the payload (the server checks the signature first and the author's rights after).
//!
//! Payloads, as GitHub documents them (https://docs.github.com/en/webhooks/webhook-events-and-payloads):
//! - `pull_request_review_comment` (action `created`): `comment` {`id`, `body`, `user.login`, `path`, `line`,
//!   `in_reply_to_id`}, `pull_request` {`number`, `head.ref`, `title`}, `repository.full_name`;
//! - `pull_request_review` (action `submitted`): `review` {`id`, `body`, `state` (`changes_requested`,
//!   `commented`, `approved`), `user.login`}, `pull_request`, `repository`;
//! - `issue_comment` (action `created`): `comment` {`id`, `body`, `user.login`}, `issue` {`number`, `title`,
//!   `pull_request` (present only when the issue is a pull request)}, `repository`;
//! - `pull_request` (action `closed`): `pull_request.merged` says merged or closed unmerged; (action `reopened`):
//!   open again.
//!
//! What asks for an iteration: a line comment or a conversation comment that mentions `@<bot login>`, and a review
//! that requests changes or mentions the bot; never anything the bot wrote. The dedup key names the comment, not
//! the HTTP delivery (`github:<repo>:review_comment:<id>`, `...:review:<id>`, `...:issue_comment:<id>`), so a
//! redelivery and a later poll of the same comment agree, like the Jira keys (see the module docs of
//! [`crate::intake`]).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::jira::valid_issue_key;
use crate::queue::{Admin, Job, JobFilter, QueueError, ReviewRef, Trigger};

use super::{cap_text, clean_id};

/// A review comment that asks the bot for a follow-up, as read from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    /// The webhook event it came in (`pull_request_review_comment`, ...).
    pub event: String,
    /// `owner/name`.
    pub repo: String,
    /// The pull request's number.
    pub pr: u64,
    /// The ticket the pull request names (its head branch `drafter/<KEY>-...`, or its title `[KEY] ...`): where
    /// to look for the job. Only a hint: the job must have recorded this very pull request.
    pub ticket_hint: Option<String>,
    /// `line`, `review` or `conversation`.
    pub kind: &'static str,
    /// The comment's (review's) id; for a line comment, its thread's first comment (GitHub answers replies there).
    pub comment_id: u64,
    /// The comment's own id (the dedup key's).
    pub own_id: u64,
    /// Its author's login.
    pub author: String,
    /// Its text, capped at [`super::MAX_TRIGGER_TEXT_BYTES`].
    pub body: String,
    /// A line comment's file.
    pub path: Option<String>,
    /// A line comment's line.
    pub line: Option<u64>,
}

impl ReviewComment {
    /// The queue's dedup key for this comment.
    pub fn delivery_key(&self) -> String {
        let kind = match self.kind {
            "line" => "review_comment",
            "review" => "review",
            _ => "issue_comment",
        };
        format!("github:{}:{kind}:{}", self.repo, self.own_id)
    }

    /// The comment as a trigger for [`crate::queue::Intake::reopen_for_review`] (the queue sets the iteration).
    pub fn trigger(&self, at: DateTime<Utc>) -> Trigger {
        Trigger {
            delivery: self.delivery_key(),
            source: format!("webhook:github:{}", self.event),
            triggered_by: Some(format!("github:{}", self.author)),
            text: Some(self.body.clone()),
            at,
            review: Some(Box::new(ReviewRef {
                iteration: 0,
                repo: self.repo.clone(),
                pr: self.pr,
                kind: self.kind.to_string(),
                comment_id: self.comment_id,
                author: self.author.clone(),
                path: self.path.clone(),
                line: self.line,
            })),
        }
    }
}

/// What a GitHub delivery means for drafter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubVerdict {
    /// A comment asking for a follow-up iteration (who wrote it is still to be checked).
    Review(ReviewComment),
    /// A pull request was closed: merged or not.
    Closed {
        /// `owner/name`.
        repo: String,
        /// Its number.
        pr: u64,
        /// Merged (else closed unmerged).
        merged: bool,
        /// As [`ReviewComment::ticket_hint`].
        ticket_hint: Option<String>,
    },
    /// A closed pull request was reopened.
    Reopened {
        /// `owner/name`.
        repo: String,
        /// Its number.
        pr: u64,
        /// As [`ReviewComment::ticket_hint`].
        ticket_hint: Option<String>,
    },
    /// Nothing to do; the reason is for the audit line.
    Ignore(String),
}

/// Reads a delivery of `event` (the `X-GitHub-Event` header). `bot_login` is the login drafter comments as.
pub fn from_github(event: &str, payload: &Value, bot_login: &str) -> GithubVerdict {
    let ignore = |why: &str| GithubVerdict::Ignore(why.to_string());
    let action = payload["action"].as_str().unwrap_or("");
    let Some(repo) = payload["repository"]["full_name"]
        .as_str()
        .filter(|r| crate::config::valid_repo_name(r))
    else {
        return ignore("no repository in the payload");
    };
    let repo = repo.to_string();
    let (pr_obj, kind, comment, wanted) = match event {
        "pull_request_review_comment" => (
            &payload["pull_request"],
            "line",
            &payload["comment"],
            "created",
        ),
        "pull_request_review" => (
            &payload["pull_request"],
            "review",
            &payload["review"],
            "submitted",
        ),
        "issue_comment" => {
            if payload["issue"]["pull_request"].is_null() {
                return ignore("a comment on an issue, not on a pull request");
            }
            (
                &payload["issue"],
                "conversation",
                &payload["comment"],
                "created",
            )
        }
        "pull_request" => {
            if action != "closed" && action != "reopened" {
                return ignore(&format!("pull_request action `{}`", clean_id(action)));
            }
            let Some(pr) = payload["pull_request"]["number"].as_u64() else {
                return ignore("no pull request number");
            };
            if action == "reopened" {
                return GithubVerdict::Reopened {
                    repo,
                    pr,
                    ticket_hint: ticket_hint(&payload["pull_request"]),
                };
            }
            return GithubVerdict::Closed {
                repo,
                pr,
                merged: payload["pull_request"]["merged"].as_bool().unwrap_or(false),
                ticket_hint: ticket_hint(&payload["pull_request"]),
            };
        }
        "ping" => return ignore("ping"),
        other => {
            return ignore(&format!(
                "event `{}` is not one drafter reads",
                clean_id(other)
            ))
        }
    };
    if action != wanted {
        return ignore(&format!("{event} action `{}`", clean_id(action)));
    }
    let Some(pr) = pr_obj["number"].as_u64() else {
        return ignore("no pull request number");
    };
    let Some(own_id) = comment["id"].as_u64() else {
        return ignore("no comment id");
    };
    let author = comment["user"]["login"].as_str().unwrap_or("");
    if author.is_empty() {
        return ignore("no author");
    }
    if is_bot(author, bot_login) {
        return ignore("written by drafter itself");
    }
    let body = comment["body"].as_str().unwrap_or("");
    let mentioned = mentions(body, bot_login);
    let asks = match kind {
        "review" => {
            let state = comment["state"].as_str().unwrap_or("").to_ascii_lowercase();
            state == "changes_requested" || (state == "commented" && mentioned)
        }
        _ => mentioned,
    };
    if !asks {
        return ignore("does not mention the bot");
    }
    let comment_id = if kind == "line" {
        comment["in_reply_to_id"].as_u64().unwrap_or(own_id)
    } else {
        own_id
    };
    GithubVerdict::Review(ReviewComment {
        event: event.to_string(),
        repo,
        pr,
        ticket_hint: ticket_hint(pr_obj),
        kind,
        comment_id,
        own_id,
        author: clean_id(author),
        body: cap_text(body),
        path: (kind == "line")
            .then(|| comment["path"].as_str().map(clean_id))
            .flatten(),
        line: (kind == "line")
            .then(|| {
                comment["line"]
                    .as_u64()
                    .or(comment["original_line"].as_u64())
            })
            .flatten(),
    })
}

/// Whether `login` is the bot's (an App's `name[bot]` too).
fn is_bot(login: &str, bot: &str) -> bool {
    let plain = |s: &str| s.trim_end_matches("[bot]").to_ascii_lowercase();
    !bot.is_empty() && plain(login) == plain(bot)
}

/// Whether `body` mentions `@<bot>` as a whole login (not `@<bot>-other`, not an e-mail address).
pub fn mentions(body: &str, bot: &str) -> bool {
    let name = bot.trim_end_matches("[bot]").to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    let lower = body.to_ascii_lowercase();
    let needle = format!("@{name}");
    let login_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    lower.match_indices(&needle).any(|(i, _)| {
        let before_ok = lower[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !login_char(c));
        let after = &lower[i + needle.len()..];
        let after_ok =
            after.chars().next().is_none_or(|c| !login_char(c)) || after.starts_with("[bot]");
        before_ok && after_ok
    })
}

/// The ticket key a drafter pull request names: its head branch `drafter/<KEY>-<slug>`, else its title
/// `[<KEY>] ...`.
fn ticket_hint(pr: &Value) -> Option<String> {
    let from_branch = pr["head"]["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("drafter/"))
        .and_then(|r| {
            // `<PROJECT>-<number>-<slug>`: the key is the first two dash-separated parts.
            let mut parts = r.splitn(3, '-');
            Some(format!("{}-{}", parts.next()?, parts.next()?))
        });
    let from_title = pr["title"]
        .as_str()
        .and_then(|t| t.strip_prefix('['))
        .and_then(|t| t.split_once(']'))
        .map(|(k, _)| k.to_string());
    from_branch
        .filter(|k| valid_issue_key(k))
        .or(from_title.filter(|k| valid_issue_key(k)))
}

/// The job that opened pull request `pr` of `repo`: among the hinted ticket's jobs, the one whose recorded
/// outcome is that pull request. `None` for a pull request drafter did not open (or a hint that names another
/// ticket).
pub async fn job_for_pr(
    queue: &dyn Admin,
    repo: &str,
    pr: u64,
    ticket_hint: Option<&str>,
) -> Result<Option<Job>, QueueError> {
    let Some(ticket) = ticket_hint else {
        return Ok(None);
    };
    let jobs = queue
        .list(&JobFilter {
            state: None,
            ticket: Some(ticket.to_string()),
            limit: 50,
        })
        .await?;
    Ok(jobs.into_iter().find(|j| {
        j.outcome.as_ref().is_some_and(|o| {
            o["result"] == "pull_request"
                && o["repo"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(repo))
                && o["number"].as_u64() == Some(pr)
        })
    }))
}

/// Whether a GitHub user may push to a repository (the forge answers; the server supplies it). `Err` when it could
/// not be asked.
#[async_trait::async_trait]
pub trait WriteAccess: Send + Sync {
    /// Whether `user` has write (or maintain, or admin) access to `repo`.
    async fn can_write(&self, repo: &str, user: &str) -> Result<bool, String>;
}

/// Whether a review comment's author may steer the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewerCheck {
    /// Yes; iterations are capped at `cap`.
    Allowed {
        /// The policy's iteration cap for the job's team.
        cap: u32,
    },
    /// No, and why (logged as a policy decision; the comment is not acted on).
    Refused(String),
    /// Could not be decided now (GitHub unreachable): the caller answers 503.
    Unknown(String),
}

/// The policy's `reviewers` rule for the job's team: the team's list of GitHub logins when it has one; else the
/// author's Jira identity (`identity`: from `[github.identities]`, with the directory for groups) passing the team's
/// `triggers`, or write access to the repository. Every decision is logged (`drafter::policy`, rule `reviewers`).
pub async fn check_reviewer(
    policy: &crate::policy::Policy,
    job: &Job,
    c: &ReviewComment,
    access: &dyn WriteAccess,
    identity: Option<(&str, &dyn crate::policy::Directory)>,
) -> ReviewerCheck {
    let log = |allowed: bool, detail: String| {
        crate::policy::log_decision(&policy.hash, &job.ticket, "reviewers", allowed, detail);
    };
    let (listed, cap) = match policy.review_rule(&job.project) {
        Ok(rule) => rule,
        Err(why) => {
            log(false, why.clone());
            return ReviewerCheck::Refused(why);
        }
    };
    let who = &c.author;
    match listed {
        Some(list) => {
            if list.iter().any(|l| l.eq_ignore_ascii_case(who)) {
                log(true, format!("GitHub user {who} is listed in `reviewers`"));
                ReviewerCheck::Allowed { cap }
            } else {
                let why = format!("GitHub user {who} is not listed in the team's `reviewers`");
                log(false, why.clone());
                ReviewerCheck::Refused(why)
            }
        }
        None => {
            // Mapped to a Jira identity that may trigger the team's jobs: the same people steer the follow-ups.
            if let Some((jira, dir)) = identity {
                let asked = crate::policy::Who::Jira(Some(jira));
                if let Ok(why) = policy.may_trigger(&job.project, asked, dir).await {
                    log(
                        true,
                        format!("GitHub user {who} is Jira user {jira}: {why}"),
                    );
                    return ReviewerCheck::Allowed { cap };
                }
            }
            write_access(access, c, cap, log).await
        }
    }
}

/// The fallback of the `reviewers` rule: write access to the repository, as the forge reports it.
async fn write_access(
    access: &dyn WriteAccess,
    c: &ReviewComment,
    cap: u32,
    log: impl Fn(bool, String),
) -> ReviewerCheck {
    let who = &c.author;
    {
        match access.can_write(&c.repo, who).await {
            Ok(true) => {
                log(
                    true,
                    format!("GitHub user {who} has write access to {}", c.repo),
                );
                ReviewerCheck::Allowed { cap }
            }
            Ok(false) => {
                let why = format!("GitHub user {who} has no write access to {}", c.repo);
                log(false, why.clone());
                ReviewerCheck::Refused(why)
            }
            Err(e) => ReviewerCheck::Unknown(format!("could not read {who}'s permission: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line_comment(login: &str, body: &str) -> Value {
        // Trimmed from https://docs.github.com/en/webhooks/webhook-events-and-payloads#pull_request_review_comment
        json!({
            "action": "created",
            "comment": {"id": 11, "body": body, "path": "src/lib.rs", "line": 7, "in_reply_to_id": null,
                        "user": {"login": login, "type": "User"}},
            "pull_request": {"number": 3, "title": "[PAY-1] Fix", "head": {"ref": "drafter/PAY-1-fix"},
                             "user": {"login": "drafter-bot"}},
            "repository": {"full_name": "acme/pay"},
            "sender": {"login": login}
        })
    }

    #[test]
    fn line_comments_mentioning_the_bot_ask_for_an_iteration() {
        let v = from_github(
            "pull_request_review_comment",
            &line_comment("alice", "@drafter-bot please rename this"),
            "drafter-bot",
        );
        let GithubVerdict::Review(c) = v else {
            panic!("{v:?}")
        };
        assert_eq!(
            (c.repo.as_str(), c.pr, c.kind, c.comment_id),
            ("acme/pay", 3, "line", 11)
        );
        assert_eq!(c.ticket_hint.as_deref(), Some("PAY-1"));
        assert_eq!((c.path.as_deref(), c.line), (Some("src/lib.rs"), Some(7)));
        assert_eq!(c.delivery_key(), "github:acme/pay:review_comment:11");
    }

    #[test]
    fn no_mention_the_bot_itself_and_other_actions_are_ignored() {
        for (login, body) in [
            ("alice", "looks odd"),
            ("alice", "@drafter-bot-two do it"),
            ("alice", "mail me at x@drafter-bot.example"),
            ("drafter-bot", "@drafter-bot note to self"),
            ("Drafter-Bot", "@drafter-bot again"),
        ] {
            let v = from_github(
                "pull_request_review_comment",
                &line_comment(login, body),
                "drafter-bot",
            );
            assert!(
                matches!(v, GithubVerdict::Ignore(_)),
                "{login} {body}: {v:?}"
            );
        }
        let mut edited = line_comment("alice", "@drafter-bot fix");
        edited["action"] = json!("edited");
        assert!(matches!(
            from_github("pull_request_review_comment", &edited, "drafter-bot"),
            GithubVerdict::Ignore(_)
        ));
    }

    #[test]
    fn replies_answer_in_their_thread_and_huge_bodies_are_capped() {
        let mut p = line_comment("alice", &format!("@drafter-bot {}", "x".repeat(100_000)));
        p["comment"]["in_reply_to_id"] = json!(5);
        let GithubVerdict::Review(c) =
            from_github("pull_request_review_comment", &p, "drafter-bot")
        else {
            panic!()
        };
        assert_eq!((c.comment_id, c.own_id), (5, 11));
        assert!(c.body.len() < super::super::MAX_TRIGGER_TEXT_BYTES + 100);
    }

    #[test]
    fn reviews_and_conversation_comments() {
        let review = json!({
            "action": "submitted",
            "review": {"id": 21, "body": "", "state": "changes_requested", "user": {"login": "bob"}},
            "pull_request": {"number": 3, "head": {"ref": "drafter/PAY-1-fix"}},
            "repository": {"full_name": "acme/pay"}
        });
        let GithubVerdict::Review(c) = from_github("pull_request_review", &review, "drafter-bot")
        else {
            panic!()
        };
        assert_eq!((c.kind, c.comment_id), ("review", 21));
        let mut approved = review.clone();
        approved["review"]["state"] = json!("approved");
        assert!(matches!(
            from_github("pull_request_review", &approved, "drafter-bot"),
            GithubVerdict::Ignore(_)
        ));
        let convo = json!({
            "action": "created",
            "comment": {"id": 31, "body": "@Drafter-Bot, also the docs", "user": {"login": "carol"}},
            "issue": {"number": 3, "title": "[PAY-1] Fix", "pull_request": {"url": "x"}},
            "repository": {"full_name": "acme/pay"}
        });
        let GithubVerdict::Review(c) = from_github("issue_comment", &convo, "drafter-bot") else {
            panic!()
        };
        assert_eq!(
            (c.kind, c.ticket_hint.as_deref()),
            ("conversation", Some("PAY-1"))
        );
        let mut plain_issue = convo.clone();
        plain_issue["issue"]["pull_request"] = Value::Null;
        assert!(matches!(
            from_github("issue_comment", &plain_issue, "drafter-bot"),
            GithubVerdict::Ignore(_)
        ));
    }

    #[test]
    fn closed_pull_requests() {
        let p = json!({"action": "closed", "pull_request": {"number": 3, "merged": true,
            "head": {"ref": "drafter/PAY-1-fix"}}, "repository": {"full_name": "acme/pay"}});
        assert_eq!(
            from_github("pull_request", &p, "drafter-bot"),
            GithubVerdict::Closed {
                repo: "acme/pay".into(),
                pr: 3,
                merged: true,
                ticket_hint: Some("PAY-1".into())
            }
        );
        let mut p = p;
        p["action"] = json!("reopened");
        assert_eq!(
            from_github("pull_request", &p, "drafter-bot"),
            GithubVerdict::Reopened {
                repo: "acme/pay".into(),
                pr: 3,
                ticket_hint: Some("PAY-1".into())
            }
        );
        p["action"] = json!("edited");
        assert!(matches!(
            from_github("pull_request", &p, "drafter-bot"),
            GithubVerdict::Ignore(_)
        ));
    }
}
