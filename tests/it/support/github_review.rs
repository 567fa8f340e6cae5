//! The GitHub stand-in's review side: pull request review comments (line comments and their replies), conversation
//! comments, collaborators' permissions, and a sender of signed webhook deliveries, after the public shapes:
//! - `GET /repos/{o}/{r}/pulls/{n}/comments`, `POST /repos/{o}/{r}/pulls/{n}/comments/{id}/replies` (201; a reply
//!   to a reply is 404, as GitHub only threads under the first comment)
//!   (https://docs.github.com/en/rest/pulls/comments);
//! - `GET /repos/{o}/{r}/pulls/{n}/reviews` and `.../reviews/{id}/comments`, the line comments submitted with a
//!   review (https://docs.github.com/en/rest/pulls/reviews);
//! - `GET|POST /repos/{o}/{r}/issues/{n}/comments` (https://docs.github.com/en/rest/issues/comments);
//! - the lists paged as GitHub pages them (30 a page unless `per_page` asks for up to 100, a `Link` header to the
//!   next page under `/repositories/{id}/`)
//!   (https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api);
//! - `GET /repos/{o}/{r}/collaborators/{user}/permission` -> `{"permission", "role_name", "user"}`
//!   (https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user);
//! - webhook deliveries `pull_request_review_comment`, `pull_request_review`, `issue_comment` and `pull_request`
//!   with `X-GitHub-Event`, `X-GitHub-Delivery` and `X-Hub-Signature-256`, as `application/json` or as
//!   `application/x-www-form-urlencoded` (the JSON in a `payload` field), the two content types a webhook can be set
//!   to (https://docs.github.com/en/webhooks/using-webhooks/creating-webhooks,
//!   https://docs.github.com/en/webhooks/webhook-events-and-payloads,
//!   https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries).

use std::collections::HashMap;

use axum::http::Method;
use axum::response::Response;
use serde_json::{json, Value};

use super::github::{json_response, Inner};

/// Comments and permissions, per repository.
#[derive(Default)]
pub struct ReviewState {
    /// Review comments (line comments and replies), as GitHub returns them, with `pr` added.
    pub review_comments: Vec<Value>,
    /// Conversation comments, with `pr` added.
    pub issue_comments: Vec<Value>,
    /// Reviews (`GET .../pulls/{n}/reviews`, https://docs.github.com/en/rest/pulls/reviews), with `pr` added.
    pub reviews: Vec<Value>,
    /// `login` -> `admin`, `maintain`, `write`, `triage`, `read`; anyone else has `none`.
    pub permissions: HashMap<String, String>,
    /// Permission look-ups, by login.
    pub permission_checks: Vec<String>,
    next_id: u64,
}

impl ReviewState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        1000 + self.next_id
    }

    /// Records a line comment by `login` on `path`:`line` of pull request `pr` in `repo`; the comment.
    pub fn add_line_comment(
        &mut self,
        repo: &str,
        pr: u64,
        login: &str,
        body: &str,
        path: &str,
        line: u64,
    ) -> Value {
        let id = self.id();
        let c = json!({
            "id": id, "pull_request_review_id": 77, "in_reply_to_id": null, "body": body, "path": path,
            "line": line, "original_line": line, "side": "RIGHT", "commit_id": "0", "diff_hunk": "@@",
            "user": {"login": login, "id": id, "type": "User"}, "author_association": "COLLABORATOR",
            "html_url": format!("https://github.example/{repo}/pull/{pr}#discussion_r{id}"),
            "created_at": "2026-12-07T05:00:00Z", "updated_at": "2026-12-07T05:00:00Z",
            "repo": repo, "pr": pr
        });
        self.review_comments.push(c.clone());
        c
    }

    /// Records a conversation comment by `login` on pull request `pr`; the comment.
    pub fn add_issue_comment(&mut self, repo: &str, pr: u64, login: &str, body: &str) -> Value {
        let id = self.id();
        let c = json!({"id": id, "body": body, "user": {"login": login, "id": id, "type": "User"},
                       "author_association": "COLLABORATOR", "repo": repo, "pr": pr});
        self.issue_comments.push(c.clone());
        c
    }

    /// Records a review by `login` in `state` (`CHANGES_REQUESTED`, `COMMENTED`, `APPROVED`, as the REST API
    /// spells it) on pull request `pr`; the review.
    pub fn add_review(
        &mut self,
        repo: &str,
        pr: u64,
        login: &str,
        state: &str,
        body: &str,
    ) -> Value {
        let id = self.id();
        let v = json!({"id": id, "body": body, "state": state, "user": {"login": login, "id": id, "type": "User"},
                       "submitted_at": "2026-12-07T05:00:00Z", "repo": repo, "pr": pr});
        self.reviews.push(v.clone());
        v
    }

    /// Records a review by `login` in `state` (as [`ReviewState::add_review`]; `body` may be `None`, as GitHub
    /// sends a review without one) with line comments `(path, line, text)` submitted with it; the review and the
    /// comments.
    pub fn add_review_with_comments(
        &mut self,
        repo: &str,
        pr: u64,
        login: &str,
        state: &str,
        body: Option<&str>,
        comments: &[(&str, u64, &str)],
    ) -> (Value, Vec<Value>) {
        let mut review = self.add_review(repo, pr, login, state, "");
        review["body"] = body.map_or(Value::Null, |b| json!(b));
        if let Some(v) = self.reviews.last_mut() {
            *v = review.clone();
        }
        let id = review["id"].as_u64().unwrap_or(0);
        let mut added = Vec::new();
        for (path, line, text) in comments {
            let mut c = self.add_line_comment(repo, pr, login, text, path, *line);
            c["pull_request_review_id"] = json!(id);
            if let Some(stored) = self.review_comments.last_mut() {
                *stored = c.clone();
            }
            added.push(c);
        }
        (review, added)
    }

    /// The replies in the thread of review comment `id`.
    pub fn replies_to(&self, id: u64) -> Vec<Value> {
        self.review_comments
            .iter()
            .filter(|c| c["in_reply_to_id"].as_u64() == Some(id))
            .cloned()
            .collect()
    }
}

/// One page of the items of pull request `pr` in `full`, as GitHub pages its lists: `per_page` (default 30, at most
/// 100) and `page` (from 1) in the query, and a `Link` header naming the `next` and `last` pages (and `first`,
/// `prev` past the first) by repository id, `<{api}/repositories/{id}/...?per_page=N&page=M>; rel="next"`
/// (https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api).
fn listed(all: &[Value], full: &str, pr: u64, page: &Page<'_>) -> Response {
    let list: Vec<Value> = all
        .iter()
        .filter(|c| c["repo"] == full && c["pr"].as_u64() == Some(pr))
        .cloned()
        .collect();
    let params: HashMap<&str, &str> = page
        .query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let per_page = params
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let n = params
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = list.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = list
        .into_iter()
        .skip((n - 1) * per_page)
        .take(per_page)
        .collect();
    let mut resp = json_response(200, Value::Array(items));
    let link = |p: usize, rel: &str| {
        format!(
            "<{}/api/v3/repositories/{}/{}?per_page={per_page}&page={p}>; rel=\"{rel}\"",
            page.base_url, page.repo_id, page.path
        )
    };
    let mut links = Vec::new();
    if n > 1 {
        links.push(link(n - 1, "prev"));
    }
    if n < last {
        links.push(link(n + 1, "next"));
        links.push(link(last, "last"));
    }
    if n > 1 {
        links.push(link(1, "first"));
    }
    if !links.is_empty() {
        if let Ok(v) = links.join(", ").parse() {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
}

/// Where a list is, for its `Link` header.
struct Page<'a> {
    query: Option<&'a str>,
    base_url: &'a str,
    repo_id: u64,
    /// The path after `/repositories/{id}/`.
    path: String,
}

/// The review routes of repository `full` (`rest` is the path after `/repos/{o}/{r}`); `None` for other routes.
pub(super) fn route(
    st: &mut Inner,
    method: &Method,
    full: &str,
    rest: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Option<Response> {
    let bot = st.bot_login.clone();
    let base_url = st.base_url.clone();
    let page = Page {
        query,
        base_url: &base_url,
        repo_id: st.repos.get(full).map_or(0, |r| r.id),
        path: rest.join("/"),
    };
    let body_text = || {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["body"].as_str().map(str::to_string))
    };
    let r = &mut st.review;
    Some(match (method.clone(), rest) {
        (Method::GET, ["collaborators", user, "permission"]) => {
            r.permission_checks.push(user.to_string());
            let role = r
                .permissions
                .get(*user)
                .cloned()
                .unwrap_or_else(|| "none".into());
            let legacy = match role.as_str() {
                "maintain" => "write",
                "triage" => "read",
                other => other,
            };
            json_response(
                200,
                json!({"permission": legacy, "role_name": role,
                                      "user": {"login": user, "type": "User"}}),
            )
        }
        (Method::GET, ["pulls", n, "comments"]) => {
            listed(&r.review_comments, full, n.parse().ok()?, &page)
        }
        (Method::GET, ["issues", n, "comments"]) => {
            listed(&r.issue_comments, full, n.parse().ok()?, &page)
        }
        (Method::GET, ["pulls", n, "reviews"]) => listed(&r.reviews, full, n.parse().ok()?, &page),
        // https://docs.github.com/en/rest/pulls/reviews#list-comments-for-a-pull-request-review
        (Method::GET, ["pulls", n, "reviews", id, "comments"]) => {
            let id: u64 = id.parse().ok()?;
            let of_review: Vec<Value> = r
                .review_comments
                .iter()
                .filter(|c| c["pull_request_review_id"].as_u64() == Some(id))
                .cloned()
                .collect();
            listed(&of_review, full, n.parse().ok()?, &page)
        }
        (Method::POST, ["pulls", n, "comments", id, "replies"]) => {
            let (pr, id): (u64, u64) = (n.parse().ok()?, id.parse().ok()?);
            let Some(text) = body_text() else {
                return Some(json_response(422, json!({"message": "Validation Failed"})));
            };
            let top = r.review_comments.iter().any(|c| {
                c["id"].as_u64() == Some(id)
                    && c["pr"].as_u64() == Some(pr)
                    && c["in_reply_to_id"].is_null()
            });
            if !top {
                return Some(json_response(404, json!({"message": "Not Found"})));
            }
            let new = r.id();
            let c = json!({"id": new, "in_reply_to_id": id, "body": text, "user": {"login": bot, "type": "Bot"},
                           "repo": full, "pr": pr});
            r.review_comments.push(c.clone());
            json_response(201, c)
        }
        (Method::POST, ["issues", n, "comments"]) => {
            let pr: u64 = n.parse().ok()?;
            let Some(text) = body_text() else {
                return Some(json_response(422, json!({"message": "Validation Failed"})));
            };
            let new = r.id();
            let c = json!({"id": new, "body": text, "user": {"login": bot, "type": "Bot"}, "repo": full, "pr": pr});
            r.issue_comments.push(c.clone());
            json_response(201, c)
        }
        _ => return None,
    })
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`: GitHub's `X-Hub-Signature-256`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The `pull_request` object webhooks carry for drafter's pull request `pr` (as the stand-in recorded it).
pub fn pull_request(pr: &Value) -> Value {
    let r = &pr["response"];
    json!({"number": r["number"], "title": r["title"], "html_url": r["html_url"], "state": "open",
           "draft": true, "head": r["head"], "base": r["base"], "user": {"login": "drafter-bot", "type": "User"}})
}

/// A `pull_request_review_comment` delivery (action `created`) for `comment` on `pr` of `repo`.
pub fn review_comment_event(repo: &str, pr: &Value, comment: &Value) -> Value {
    json!({"action": "created", "comment": comment, "pull_request": pull_request(pr),
           "repository": {"full_name": repo, "name": repo.split('/').nth(1)},
           "sender": comment["user"]})
}

/// An `issue_comment` delivery (action `created`) for `comment` on pull request `pr`.
pub fn issue_comment_event(repo: &str, pr: &Value, comment: &Value) -> Value {
    let p = pull_request(pr);
    json!({"action": "created", "comment": comment,
           "issue": {"number": p["number"], "title": p["title"], "pull_request": {"html_url": p["html_url"]}},
           "repository": {"full_name": repo}, "sender": comment["user"]})
}

/// Posts a delivery of `event` to `url` (`.../webhooks/github`), signed with `secret` (`None`: unsigned); the status
/// and the JSON answer.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: Option<&str>,
) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some(s) = secret {
        req = req.header("x-hub-signature-256", sign(s, &bytes));
    }
    let resp = req.body(bytes).send().await.expect("webhook request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Like [`deliver`], with the webhook's content type set to `application/x-www-form-urlencoded`: GitHub then sends
/// the JSON as the form field `payload` and signs the form body as sent
/// (https://docs.github.com/en/webhooks/using-webhooks/creating-webhooks).
pub async fn deliver_form(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: &str,
) -> (u16, Value) {
    let json = serde_json::to_string(body).expect("json");
    let bytes = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &json)
        .finish()
        .into_bytes();
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(secret, &bytes))
        .body(bytes)
        .send()
        .await
        .expect("webhook request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A `pull_request_review` delivery (action `submitted`) for `review` (as the REST API lists it) on `pr`: the
/// webhook spells `state` in lower case
/// (https://docs.github.com/en/webhooks/webhook-events-and-payloads#pull_request_review).
pub fn review_event(repo: &str, pr: &Value, review: &Value) -> Value {
    let mut r = review.clone();
    r["state"] = json!(review["state"].as_str().unwrap_or("").to_ascii_lowercase());
    json!({"action": "submitted", "review": r, "pull_request": pull_request(pr),
           "repository": {"full_name": repo}, "sender": review["user"]})
}
