//! A Jira Cloud stand-in: the few REST v3 endpoints drafter uses, with Jira's shapes, on 127.0.0.1 and a random
//! port. State (issues, posted comments, every request) is kept for tests to inspect.
//!
//! Shapes follow Atlassian's public reference:
//! - Get issue: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-get>
//!   (only the fields named in `?fields=` are returned, like Jira).
//! - Add comment: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-comments/#api-rest-api-3-issue-issueidorkey-comment-post>
//!   (`{"body": <ADF doc>}` -> 201; a body that is not an ADF doc, or has an empty text node, -> 400).
//! - Get current user: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-myself/#api-rest-api-3-myself-get>.
//! - Errors: `{"errorMessages":[...],"errors":{...}}`; authentication is Basic `base64(email:api_token)`
//!   (<https://developer.atlassian.com/cloud/jira/platform/basic-auth-for-rest-apis/>).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

pub use super::RecordedRequest;

/// The stand-in bot's `accountId` (what `GET /rest/api/3/myself` answers).
pub const BOT_ACCOUNT_ID: &str = "557058:0f3c-drafter-bot";

struct Issue {
    id: u64,
    key: String,
    fields: Value,
    comments: Vec<Value>,
}

struct Failure {
    status: u16,
    remaining: usize,
    retry_after: Option<String>,
}

struct Inner {
    base_url: String,
    email: String,
    expected_auth: String,
    issues: BTreeMap<String, Issue>,
    requests: Vec<RecordedRequest>,
    failure: Option<Failure>,
    next_id: u64,
}

/// A running stand-in. The server stops when this is dropped.
pub struct JiraStandIn {
    state: Arc<Mutex<Inner>>,
    base_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    // A test that panicked while holding the lock should not hide the state from the next assertion.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl JiraStandIn {
    /// Starts the server on `127.0.0.1:0`. Requests must carry `Authorization: Basic base64(email:api_token)`.
    pub async fn start(email: &str, api_token: &str) -> JiraStandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let base_url = format!("http://{addr}");
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{email}:{api_token}"))
        );
        let state: Shared = Arc::new(Mutex::new(Inner {
            base_url: base_url.clone(),
            email: email.to_string(),
            expected_auth,
            issues: BTreeMap::new(),
            requests: Vec::new(),
            failure: None,
            next_id: 10000,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        JiraStandIn {
            state,
            base_url,
            shutdown: Some(tx),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The bot's `accountId`, as `GET /rest/api/3/myself` reports it.
    pub fn bot_account_id(&self) -> String {
        BOT_ACCOUNT_ID.to_string()
    }

    /// Adds (or replaces) an issue. `description_adf` may be `Value::Null` (no description). The reporter is a fixed
    /// user, the project is the key's prefix.
    pub fn add_issue(&self, key: &str, summary: &str, description_adf: Value, labels: &[&str]) {
        let project = key.split('-').next().unwrap_or(key);
        let fields = json!({
            "summary": summary,
            "description": description_adf,
            "reporter": {
                "accountId": "712020:5b1c-reporter",
                "displayName": "Rita Reporter",
                "active": true,
                "accountType": "atlassian",
            },
            "labels": labels,
            "project": {
                "id": "10001",
                "key": project,
                "name": format!("{project} project"),
                "projectTypeKey": "software",
            },
            "status": {"name": "To Do", "statusCategory": {"key": "new"}},
            "assignee": {"accountId": BOT_ACCOUNT_ID, "displayName": "drafter bot"},
        });
        self.add_issue_fields(key, fields);
    }

    /// Adds (or replaces) an issue with arbitrary `fields` (for hostile or odd payloads).
    pub fn add_issue_fields(&self, key: &str, fields: Value) {
        let mut st = lock(&self.state);
        st.next_id += 1;
        let id = st.next_id;
        st.issues.insert(
            key.to_string(),
            Issue {
                id,
                key: key.to_string(),
                fields,
                comments: Vec::new(),
            },
        );
    }

    /// The ADF bodies posted as comments on `key`, in order.
    pub fn comments(&self, key: &str) -> Vec<Value> {
        lock(&self.state)
            .issues
            .get(key)
            .map(|i| i.comments.clone())
            .unwrap_or_default()
    }

    /// Per comment on `key`, all its text nodes concatenated (hard breaks as `\n`).
    pub fn comment_texts(&self, key: &str) -> Vec<String> {
        self.comments(key)
            .iter()
            .map(|c| {
                let mut s = String::new();
                adf_text(c, &mut s);
                s
            })
            .collect()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// The next `times` requests fail with `status` and a Jira error body. 429 and 503 carry `Retry-After: 2`.
    pub fn fail_next(&self, status: u16, times: usize) {
        let retry_after = matches!(status, 429 | 503).then(|| "2".to_string());
        self.fail_next_with(status, times, retry_after.as_deref());
    }

    /// Like [`JiraStandIn::fail_next`], with an explicit `Retry-After` value (or none).
    pub fn fail_next_with(&self, status: u16, times: usize, retry_after: Option<&str>) {
        lock(&self.state).failure = Some(Failure {
            status,
            remaining: times,
            retry_after: retry_after.map(str::to_string),
        });
    }
}

impl Drop for JiraStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn adf_text(v: &Value, out: &mut String) {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => out.push_str(v.get("text").and_then(Value::as_str).unwrap_or("")),
        Some("hardBreak") => out.push('\n'),
        _ => {}
    }
    if let Some(kids) = v.get("content").and_then(Value::as_array) {
        for k in kids {
            adf_text(k, out);
        }
    }
}

fn error(status: StatusCode, messages: &[&str], errors: Value) -> Response {
    (
        status,
        axum::Json(json!({"errorMessages": messages, "errors": errors})),
    )
        .into_response()
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        &["Issue does not exist or you do not have permission to see it."],
        json!({}),
    )
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = lock(&state);
    st.requests
        .push(RecordedRequest::new(&method, &uri, &headers, &body));

    // Injected failures come first: they stand for an overloaded or broken site.
    if let Some(f) = st.failure.as_mut() {
        if f.remaining > 0 {
            f.remaining -= 1;
            let status =
                StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let retry_after = f.retry_after.clone();
            let mut resp = error(status, &["stand-in: injected failure"], json!({}));
            if let Some(ra) = retry_after {
                if let Ok(v) = ra.parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
            }
            return resp;
        }
    }

    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != st.expected_auth {
        return error(
            StatusCode::UNAUTHORIZED,
            &["You are not authenticated. Authentication required to perform this operation."],
            json!({}),
        );
    }

    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["rest", "api", "3", "myself"]) => {
            let base = st.base_url.clone();
            axum::Json(json!({
                "self": format!("{base}/rest/api/3/user?accountId={BOT_ACCOUNT_ID}"),
                "accountId": BOT_ACCOUNT_ID,
                "accountType": "atlassian",
                "emailAddress": st.email,
                "displayName": "drafter bot",
                "active": true,
                "timeZone": "UTC",
            }))
            .into_response()
        }
        ("GET", ["rest", "api", "3", "issue", key]) => {
            let wanted: Option<Vec<String>> = uri.query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "fields")
                    .map(|(_, v)| {
                        v.replace("%2C", ",")
                            .split(',')
                            .map(str::to_string)
                            .collect()
                    })
            });
            let base = st.base_url.clone();
            let Some(issue) = st.issues.get(*key) else {
                return not_found();
            };
            let fields = match (&wanted, issue.fields.as_object()) {
                (Some(w), Some(all)) if !w.iter().any(|f| f == "*all") => Value::Object(
                    all.iter()
                        .filter(|(k, _)| w.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                _ => issue.fields.clone(),
            };
            axum::Json(json!({
                "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
                "id": issue.id.to_string(),
                "self": format!("{base}/rest/api/3/issue/{}", issue.id),
                "key": issue.key,
                "fields": fields,
            }))
            .into_response()
        }
        ("POST", ["rest", "api", "3", "issue", key, "comment"]) => {
            let json_ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
            if !json_ct {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &["Unsupported Media Type"],
                    json!({}),
                );
            }
            let key = key.to_string();
            if !st.issues.contains_key(&key) {
                return not_found();
            }
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let doc = parsed.as_ref().and_then(|v| v.get("body")).cloned();
            let valid = doc.as_ref().is_some_and(|d| {
                d.get("type").and_then(Value::as_str) == Some("doc")
                    && d.get("version").and_then(Value::as_u64) == Some(1)
                    && d.get("content").is_some_and(Value::is_array)
                    && adf_ok(d)
            });
            let Some(doc) = doc.filter(|_| valid) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    &[],
                    json!({"comment": "Comment body is not valid!"}),
                );
            };
            st.next_id += 1;
            let id = st.next_id;
            let base = st.base_url.clone();
            let Some(issue) = st.issues.get_mut(&key) else {
                return not_found();
            };
            issue.comments.push(doc.clone());
            let issue_id = issue.id;
            let now = chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
                .to_string();
            let author = json!({
                "accountId": BOT_ACCOUNT_ID,
                "displayName": "drafter bot",
                "active": true,
            });
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "self": format!("{base}/rest/api/3/issue/{issue_id}/comment/{id}"),
                    "id": id.to_string(),
                    "author": author,
                    "updateAuthor": author,
                    "body": doc,
                    "created": now,
                    "updated": now,
                    "jsdPublic": true,
                })),
            )
                .into_response()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &["stand-in: no such endpoint"],
            json!({}),
        ),
    }
}

/// The ADF rules Jira enforces that a builder can get wrong: every node has a string `type`, text nodes have
/// non-empty `text`, `content` is an array.
fn adf_ok(v: &Value) -> bool {
    let Some(t) = v.get("type").and_then(Value::as_str) else {
        return false;
    };
    if t == "text"
        && v.get("text")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return false;
    }
    match v.get("content") {
        None => true,
        Some(Value::Array(kids)) => kids.iter().all(adf_ok),
        Some(_) => false,
    }
}
