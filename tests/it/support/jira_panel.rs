//! The Jira stand-in's development-panel endpoints, on v3 (Cloud) and v2 (Data Center) alike: remote links and
//! transitions. A child of `support::jira` (it shares its state).
//!
//! - Remote links: `POST <api>/issue/{key}/remotelink` creates a link (201) or, when its `globalId` is already on the
//!   issue, updates that one (200), answering `{id, self}`; `object.url` and `object.title` are required (400
//!   otherwise). `GET <api>/issue/{key}/remotelink` lists them. Cloud:
//!   <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-remote-links/#api-rest-api-3-issue-issueidorkey-remotelink-post>;
//!   Data Center: <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue/{issueIdOrKey}/remotelink-createOrUpdateRemoteIssueLink>;
//!   fields: <https://developer.atlassian.com/server/jira/platform/jira-rest-api-for-remote-issue-links/>.
//! - Transitions: `GET <api>/issue/{key}/transitions` lists the workflow's transitions to every status but the
//!   issue's own (`{"transitions":[{id, name, to:{name, statusCategory:{key, name}}}]}`); `POST` with
//!   `{"transition":{"id":..}}` moves the issue (204), or answers 400 for an id not offered, as Jira does. Cloud:
//!   <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get>
//!   (and `-post`); Data Center: <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getTransitions>
//!   (and `-doTransition`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{error, lock, not_found, Inner, JiraStandIn};

/// The default workflow: (transition id, transition name, status, category key, category name).
pub(super) fn default_workflow() -> Vec<(String, String, String, String, String)> {
    [
        ("11", "Back to do", "To Do", "new", "To Do"),
        (
            "21",
            "Start progress",
            "In Progress",
            "indeterminate",
            "In Progress",
        ),
        (
            "31",
            "Ask for review",
            "In Review",
            "indeterminate",
            "In Progress",
        ),
        ("41", "Done", "Done", "done", "Done"),
    ]
    .iter()
    .map(|(a, b, c, d, e)| {
        (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            d.to_string(),
            e.to_string(),
        )
    })
    .collect()
}

impl JiraStandIn {
    /// The issue's remote links, oldest first, as Jira lists them (`id`, `globalId`, `application`, `object`).
    pub fn remote_links(&self, key: &str) -> Vec<Value> {
        lock(&self.state)
            .remote_links
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// The issue's status name.
    pub fn status(&self, key: &str) -> String {
        let st = lock(&self.state);
        st.issues[key].fields["status"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Replaces the workflow: `(status, category key)` pairs, each reachable from every other.
    pub fn set_workflow(&self, statuses: &[(&str, &str)]) {
        let name_of = |key: &str| match key {
            "new" => "To Do",
            "done" => "Done",
            _ => "In Progress",
        };
        lock(&self.state).workflow = statuses
            .iter()
            .enumerate()
            .map(|(i, (s, k))| {
                (
                    format!("{}", (i + 1) * 10 + 1),
                    format!("To {s}"),
                    s.to_string(),
                    k.to_string(),
                    name_of(k).to_string(),
                )
            })
            .collect();
    }
}

/// `GET|POST <api>/issue/{key}/remotelink`.
pub(super) fn remote_link(st: &mut Inner, method: &str, key: &str, body: &[u8]) -> Response {
    if !st.issues.contains_key(key) {
        return not_found();
    }
    if method == "GET" {
        let links = st.remote_links.get(key).cloned().unwrap_or_default();
        return axum::Json(Value::Array(links)).into_response();
    }
    let Ok(link) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, &["Invalid JSON"], json!({}));
    };
    let object = &link["object"];
    if !object["url"].is_string() || !object["title"].is_string() {
        return error(
            StatusCode::BAD_REQUEST,
            &[],
            json!({"object": "'url' and 'title' are required"}),
        );
    }
    st.next_id += 1;
    let fresh = st.next_id;
    let base = st.base_url.clone();
    let api = super::api_of(st);
    let links = st.remote_links.entry(key.to_string()).or_default();
    let global = link["globalId"].as_str().filter(|g| !g.is_empty());
    let existing = global.and_then(|g| links.iter().position(|l| l["globalId"] == g));
    let (status, id) = match existing {
        Some(i) => (StatusCode::OK, links[i]["id"].as_u64().unwrap_or(fresh)),
        None => (StatusCode::CREATED, fresh),
    };
    let mut stored = link.clone();
    stored["id"] = json!(id);
    stored["self"] = json!(format!("{base}/rest/api/{api}/issue/{key}/remotelink/{id}"));
    match existing {
        Some(i) => links[i] = stored,
        None => links.push(stored),
    }
    let answer =
        json!({"id": id, "self": format!("{base}/rest/api/{api}/issue/{key}/remotelink/{id}")});
    (status, axum::Json(answer)).into_response()
}

/// `GET|POST <api>/issue/{key}/transitions`.
pub(super) fn transitions(st: &mut Inner, method: &str, key: &str, body: &[u8]) -> Response {
    let Some(issue) = st.issues.get(key) else {
        return not_found();
    };
    let current = issue.fields["status"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let offered: Vec<_> = st
        .workflow
        .iter()
        .filter(|(_, _, to, _, _)| *to != current)
        .cloned()
        .collect();
    if method == "GET" {
        let list: Vec<Value> = offered
            .iter()
            .map(|(id, name, to, cat_key, cat_name)| {
                json!({"id": id, "name": name, "hasScreen": false, "isGlobal": true,
                    "to": {"name": to, "id": format!("1{id}"),
                        "statusCategory": {"key": cat_key, "name": cat_name}}})
            })
            .collect();
        return axum::Json(json!({"expand": "transitions", "transitions": list})).into_response();
    }
    let wanted = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["transition"]["id"].as_str().map(str::to_string));
    let Some((_, _, to, cat_key, cat_name)) =
        offered.iter().find(|(id, ..)| Some(id) == wanted.as_ref())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            &["It seems that you have tried to perform a workflow operation (transition) that is not valid for the current state of this issue."],
            json!({}),
        );
    };
    let status = json!({"name": to, "statusCategory": {"key": cat_key, "name": cat_name}});
    if let Some(issue) = st.issues.get_mut(key) {
        issue.fields["status"] = status;
    }
    StatusCode::NO_CONTENT.into_response()
}
