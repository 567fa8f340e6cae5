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
//!   issue's own (and, when asked for, a looped one to it: `isLooped`), in each product's documented shape
//!   (`{"expand","transitions":[{id, name, to:{self, description, iconUrl, name, id, statusCategory:{self, id, key,
//!   colorName, name}}, ...}]}`; Cloud adds `hasScreen`, `isGlobal`, `isInitial`, `isAvailable`, `isConditional`,
//!   `isLooped`, Data Center has `opsbarSequence` and none of those); `POST` with `{"transition":{"id":..}}` moves the
//!   issue (204), or answers 400 for an id not offered, or for a screen's required field left out
//!   (`{"errorMessages":[],"errors":{"<field>":"..."}}`), as Jira does. Cloud:
//!   <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get>
//!   (and `-post`); Data Center: <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getTransitions>
//!   (and `-doTransition`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{error, lock, not_found, Inner, JiraStandIn};

/// One transition of the stand-in's workflow: every status can be reached from every other.
#[derive(Clone)]
pub(super) struct Step {
    /// The transition's id.
    id: String,
    /// The transition's own name (`Start progress`).
    name: String,
    /// The status it leads to.
    status: String,
    /// That status's category key (`new`, `indeterminate`, `done`).
    category: String,
    /// A field the transition's screen requires (`POST` without it in `fields` answers 400, as Jira does).
    required: Option<String>,
}

/// The workflow every issue follows.
pub(super) struct Workflow {
    steps: Vec<Step>,
    /// Whether each status also offers a looped transition to itself (`isLooped`, "any status -> itself").
    looped: bool,
    /// Whether the bot has the *Transition issues* permission; without it Jira lists no transitions at all (and
    /// refuses a POST), rather than answering 403.
    permitted: bool,
}

/// The default workflow: To Do, In Progress, In Review, Done.
pub(super) fn default_workflow() -> Workflow {
    let steps = [
        ("11", "Back to do", "To Do", "new"),
        ("21", "Start progress", "In Progress", "indeterminate"),
        ("31", "Ask for review", "In Review", "indeterminate"),
        ("41", "Done", "Done", "done"),
    ]
    .iter()
    .map(|(id, name, status, category)| Step {
        id: id.to_string(),
        name: name.to_string(),
        status: status.to_string(),
        category: category.to_string(),
        required: None,
    })
    .collect();
    Workflow {
        steps,
        looped: false,
        permitted: true,
    }
}

/// A status category as Jira describes it: `{self, id, key, colorName, name}` (the ids and colours of Jira's
/// built-in categories).
fn category_json(base: &str, api: &str, key: &str) -> Value {
    let (id, color, name) = match key {
        "new" => (2, "blue-gray", "To Do"),
        "done" => (3, "green", "Done"),
        "undefined" => (1, "medium-gray", "No Category"),
        _ => (4, "yellow", "In Progress"),
    };
    json!({"self": format!("{base}/rest/api/{api}/statuscategory/{id}"), "id": id, "key": key,
           "colorName": color, "name": name})
}

/// A status as Jira describes it (`fields.status`, a transition's `to`): `{self, description, iconUrl, name, id,
/// statusCategory}`.
pub(super) fn status_json(base: &str, api: &str, name: &str, category: &str) -> Value {
    let id = 10000 + name.bytes().map(u64::from).sum::<u64>();
    json!({
        "self": format!("{base}/rest/api/{api}/status/{id}"),
        "description": "",
        "iconUrl": format!("{base}/images/icons/statuses/generic.png"),
        "name": name,
        "id": id.to_string(),
        "statusCategory": category_json(base, api, category),
    })
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

    /// Puts the issue in `status` (one of the workflow's), as a person moving it would.
    pub fn set_status(&self, key: &str, status: &str) {
        let mut st = lock(&self.state);
        let category = st
            .workflow
            .steps
            .iter()
            .find(|s| s.status == status)
            .map(|s| s.category.clone())
            .unwrap_or_else(|| panic!("stand-in: no status {status} in the workflow"));
        let value = status_json(&st.base_url, super::api_of(&st), status, &category);
        match st.issues.get_mut(key) {
            Some(issue) => issue.fields["status"] = value,
            None => panic!("stand-in: no issue {key}"),
        }
    }

    /// Replaces the workflow: `(status, category key)` pairs, each reachable from every other.
    pub fn set_workflow(&self, statuses: &[(&str, &str)]) {
        lock(&self.state).workflow.steps = statuses
            .iter()
            .enumerate()
            .map(|(i, (s, k))| Step {
                id: format!("{}", (i + 1) * 10 + 1),
                name: format!("To {s}"),
                status: s.to_string(),
                category: k.to_string(),
                required: None,
            })
            .collect();
    }

    /// Every status also offers a looped transition to itself (Jira's "any status -> itself", `isLooped`).
    pub fn set_looped_transitions(&self, on: bool) {
        lock(&self.state).workflow.looped = on;
    }

    /// Takes the bot's *Transition issues* permission away (or gives it back): the listing is then empty, as Cloud
    /// documents ("if the user does not have the Transition issues project permission the response will not list
    /// any transitions").
    pub fn set_transition_permission(&self, on: bool) {
        lock(&self.state).workflow.permitted = on;
    }

    /// The transition to `status` has a screen that requires `field`: posted without it, Jira answers 400 with
    /// `{"errorMessages":[],"errors":{field: "..."}}`.
    pub fn require_field_on(&self, status: &str, field: &str) {
        let mut st = lock(&self.state);
        for s in st.workflow.steps.iter_mut().filter(|s| s.status == status) {
            s.required = Some(field.to_string());
        }
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

/// `GET|POST <api>/issue/{key}/transitions`. The listing has the documented shape of each product: Cloud's
/// transitions carry `hasScreen`, `isGlobal`, `isInitial`, `isAvailable`, `isConditional` and `isLooped`
/// (<https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get>);
/// Data Center's only `id`, `name`, `opsbarSequence` and `to`
/// (<https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getTransitions>).
pub(super) fn transitions(st: &mut Inner, method: &str, key: &str, body: &[u8]) -> Response {
    let Some(issue) = st.issues.get(key) else {
        return not_found();
    };
    let current = issue.fields["status"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (looped, permitted) = (st.workflow.looped, st.workflow.permitted);
    // (step, whether it loops back to the current status)
    let offered: Vec<(Step, bool)> = st
        .workflow
        .steps
        .iter()
        .filter(|s| permitted && (looped || s.status != current))
        .map(|s| {
            let mut s = s.clone();
            let is_loop = s.status == current;
            if is_loop {
                s.id = format!("9{}", s.id);
                s.name = format!("Stay in {}", s.status);
            }
            (s, is_loop)
        })
        .collect();
    let (base, api) = (st.base_url.clone(), super::api_of(st));
    if method == "GET" {
        let list: Vec<Value> = offered
            .iter()
            .enumerate()
            .map(|(i, (s, is_loop))| {
                let to = status_json(&base, api, &s.status, &s.category);
                if st.datacenter {
                    json!({"id": s.id, "name": s.name, "opsbarSequence": (i + 1) * 10, "to": to})
                } else {
                    json!({"id": s.id, "name": s.name, "to": to, "hasScreen": s.required.is_some(),
                        "isGlobal": true, "isInitial": false, "isAvailable": true, "isConditional": false,
                        "isLooped": is_loop})
                }
            })
            .collect();
        return axum::Json(json!({"expand": "transitions", "transitions": list})).into_response();
    }
    let asked = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let wanted = asked["transition"]["id"].as_str().map(str::to_string);
    let Some((step, _)) = offered.iter().find(|(s, _)| Some(&s.id) == wanted.as_ref()) else {
        return error(
            StatusCode::BAD_REQUEST,
            &["It seems that you have tried to perform a workflow operation (transition) that is not valid for the current state of this issue."],
            json!({}),
        );
    };
    // A screen with a required field the request does not fill: 400 with the field's error, nothing moves.
    if let Some(field) = &step.required {
        if asked["fields"][field].is_null() {
            return error(
                StatusCode::BAD_REQUEST,
                &[],
                json!({field.clone(): format!("{field} is required.")}),
            );
        }
    }
    let status = status_json(&base, api, &step.status, &step.category);
    if let Some(issue) = st.issues.get_mut(key) {
        issue.fields["status"] = status;
    }
    StatusCode::NO_CONTENT.into_response()
}
