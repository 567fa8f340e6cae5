//! A scripted stand-in for a model endpoint, serving both API families drafter speaks:
//! - `POST /v1/messages`, the Anthropic Messages API (<https://docs.anthropic.com/en/api/messages>,
//!   errors: <https://docs.anthropic.com/en/api/errors>);
//! - `POST /v1/chat/completions`, OpenAI Chat Completions
//!   (<https://platform.openai.com/docs/api-reference/chat/create>, the shape vLLM, Ollama and LiteLLM also serve).
//!
//! Each well-formed request consumes the next [`Step`] of the script; once the script is exhausted every request is
//! answered with the final text "done". In per-conversation mode ([`ModelStandIn::start_per_conversation`]) the
//! script is not consumed: the step for a request is picked by how many assistant turns its conversation already
//! holds, so many concurrent jobs, and a job retried after a crash, each replay the whole script. Every request, well-formed or not, is recorded with its exact body bytes so
//! tests can check what was sent and compare hashes with the receipts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// Usage numbers every successful reply reports.
pub const INPUT_TOKENS: u64 = 100;
/// Usage numbers every successful reply reports.
pub const OUTPUT_TOKENS: u64 = 20;

/// A step asking for one tool call.
pub fn tool(name: &str, input: Value) -> Step {
    Step::Tools(vec![(name.to_string(), input)])
}

/// A step calling `finish` with this summary.
pub fn finish(summary: &str) -> Step {
    tool("finish", json!({ "summary": summary }))
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Step {
    /// Ask for these tool calls (name, input), with ids `call_1`, `call_2`, ... counted over the whole run.
    Tools(Vec<(String, Value)>),
    /// Final answer: this text, stop reason `end_turn` / `stop`.
    Text(String),
    /// Reply with this HTTP error status and the provider's error body (429 also sends `Retry-After: 1`).
    Status(u16),
    /// OpenAI: one tool call whose `arguments` string is exactly this (possibly invalid JSON). Anthropic has no
    /// string arguments, so there the tool_use `input` is the raw string as a JSON string (also not an object).
    RawArguments(String, String),
    /// Reply with this status and this body verbatim (for hostile-response tests).
    Body(u16, String),
    /// Reply with this status, these headers (e.g. `content-type`, `retry-after`) and this body verbatim: the
    /// provider-shaped answers of the conformance tests.
    Raw(u16, Vec<(&'static str, String)>, String),
}

pub use super::RecordedRequest;

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    requests: Vec<RecordedRequest>,
    expected_key: Option<String>,
    tool_calls: u64,
    replies: u64,
    per_conversation: bool,
    delay: std::time::Duration,
    /// `Some` when simulating Anthropic prompt caching (see [`ModelStandIn::simulate_cache`]): the prefixes cached.
    cache: Option<std::collections::HashSet<String>>,
    /// Read as each request arrives (see [`ModelStandIn::set_probe`]), and what it read.
    probe: Option<Probe>,
    probed: Vec<u64>,
}

/// What a test reads from the client's side as each request arrives.
type Probe = Box<dyn Fn() -> u64 + Send>;

type Shared = Arc<Mutex<Inner>>;

/// One tool call in a reply: id, name, input (Anthropic) and the arguments string (OpenAI).
type Call = (String, String, Value, String);

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    // A panicking test thread must not hide the recorded requests from the others.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running stand-in; stops when dropped.
pub struct ModelStandIn {
    addr: std::net::SocketAddr,
    inner: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Anthropic,
    OpenAi,
}

impl ModelStandIn {
    /// Starts serving on 127.0.0.1 on a free port.
    pub async fn start(script: Vec<Step>) -> ModelStandIn {
        Self::start_with(script, false).await
    }

    /// Like [`ModelStandIn::start`], but every conversation replays the script from its own turn count.
    pub async fn start_per_conversation(script: Vec<Step>) -> ModelStandIn {
        Self::start_with(script, true).await
    }

    /// Delays every reply by this long (to hold a job inside its model loop).
    pub fn set_delay(&self, delay: std::time::Duration) {
        lock(&self.inner).delay = delay;
    }

    async fn start_with(script: Vec<Step>, per_conversation: bool) -> ModelStandIn {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            script: script.into(),
            per_conversation,
            ..Inner::default()
        }));
        let app = Router::new()
            .route(
                "/v1/messages",
                post(
                    |State(s): State<Shared>, h: HeaderMap, b: Bytes| async move {
                        pause(&s).await;
                        handle(&s, Family::Anthropic, "/v1/messages", &h, &b)
                    },
                ),
            )
            .route(
                "/v1/chat/completions",
                post(
                    |State(s): State<Shared>, h: HeaderMap, b: Bytes| async move {
                        pause(&s).await;
                        handle(&s, Family::OpenAi, "/v1/chat/completions", &h, &b)
                    },
                ),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind model stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ModelStandIn { addr, inner, task }
    }

    /// `http://127.0.0.1:PORT`, to use as `model.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner).requests.clone()
    }

    /// Everything the model was sent, the request bodies one per line (for leak checks and for reading tool
    /// results).
    pub fn traffic(&self) -> String {
        self.requests()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Require this API key (`x-api-key` for Anthropic, `Authorization: Bearer` for OpenAI); others get 401 and do
    /// not consume a step. `None` accepts any request.
    pub fn set_expected_key(&self, key: Option<&str>) {
        lock(&self.inner).expected_key = key.map(str::to_string);
    }

    /// Simulates Anthropic prompt caching as documented
    /// (<https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching>): the prompt is the sequence tools,
    /// system, messages; every block carrying `cache_control` ends a prefix that is written to the cache; a request
    /// reads the longest of its marked prefixes already cached. Usage then reports `cache_read_input_tokens`,
    /// `cache_creation_input_tokens` and the rest as `input_tokens`, counting a token per 4 bytes of the blocks'
    /// JSON. Only exact hits at breakpoints count (the API also looks back up to 20 blocks), so this errs against
    /// caching.
    pub fn simulate_cache(&self) {
        lock(&self.inner).cache = Some(Default::default());
    }

    /// Calls `probe` as each request arrives, before it is answered, and keeps what it returned (see
    /// [`ModelStandIn::probed`]): a test reads the client's state at the moment its request was on the wire.
    pub fn set_probe(&self, probe: impl Fn() -> u64 + Send + 'static) {
        lock(&self.inner).probe = Some(Box::new(probe));
    }

    /// What the probe returned, one value per request, in order.
    pub fn probed(&self) -> Vec<u64> {
        lock(&self.inner).probed.clone()
    }

    /// Appends steps to the script.
    pub fn push(&self, steps: Vec<Step>) {
        lock(&self.inner).script.extend(steps);
    }

    /// Steps not yet consumed.
    pub fn remaining(&self) -> usize {
        lock(&self.inner).script.len()
    }
}

async fn pause(s: &Shared) {
    let delay = lock(s).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn error_reply(family: Family, status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match family {
        // https://docs.anthropic.com/en/api/errors: {"type":"error","error":{"type":...,"message":...}}
        Family::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        // https://platform.openai.com/docs/guides/error-codes: {"error":{"message","type","param","code"}}
        Family::OpenAi => {
            json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
        }
    };
    let mut resp = (code, axum::Json(body)).into_response();
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    resp
}

/// Answers a request and notes when the answer left (see [`RecordedRequest::answered`]).
fn handle(
    s: &Shared,
    family: Family,
    path: &'static str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    {
        let mut inner = lock(s);
        if let Some(value) = inner.probe.as_ref().map(|p| p()) {
            inner.probed.push(value);
        }
    }
    let mut index = 0;
    let resp = answer(s, family, path, headers, body, &mut index);
    if let Some(r) = lock(s).requests.get_mut(index) {
        r.answered = Some(std::time::SystemTime::now());
    }
    resp
}

/// Records the request (its index into `index`) and builds the answer, under one lock so that steps are taken in
/// the order requests are recorded.
fn answer(
    s: &Shared,
    family: Family,
    path: &'static str,
    headers: &HeaderMap,
    body: &Bytes,
    index: &mut usize,
) -> Response {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let mut inner = lock(s);
    *index = inner.requests.len();
    inner.requests.push(RecordedRequest::new(
        &Method::POST,
        &Uri::from_static(path),
        headers,
        body,
    ));

    if let Some(key) = inner.expected_key.clone() {
        let presented = match family {
            Family::Anthropic => headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            Family::OpenAi => headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string),
        };
        if presented.as_deref() != Some(key.as_str()) {
            return error_reply(family, 401, "invalid x-api-key / bearer token");
        }
    }
    if family == Family::Anthropic && headers.get("anthropic-version").is_none() {
        return error_reply(family, 400, "anthropic-version header is required");
    }
    let Some(req) = json else {
        return error_reply(family, 400, "request body is not valid JSON");
    };
    let model = match req.get("model").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => return error_reply(family, 400, "model: field required"),
    };
    if !req.get("messages").is_some_and(Value::is_array) {
        return error_reply(family, 400, "messages: field required");
    }
    if family == Family::Anthropic && !req.get("max_tokens").is_some_and(Value::is_u64) {
        return error_reply(family, 400, "max_tokens: field required");
    }

    let step = if inner.per_conversation {
        let turn = req["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "assistant").count())
            .unwrap_or(0);
        inner.script.get(turn).cloned()
    } else {
        inner.script.pop_front()
    }
    .unwrap_or_else(|| Step::Text("done".into()));
    inner.replies += 1;
    let n = inner.replies;
    let mut next_id = || {
        inner.tool_calls += 1;
        format!("call_{}", inner.tool_calls)
    };
    let (text, calls): (Option<String>, Vec<Call>) = match step {
        Step::Status(code) => return error_reply(family, code, &format!("scripted HTTP {code}")),
        Step::Body(code, raw) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            return (code, [("content-type", "application/json")], raw).into_response();
        }
        Step::Raw(code, headers, raw) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            let mut resp = (code, raw).into_response();
            for (name, value) in headers {
                if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                    resp.headers_mut().insert(name, v);
                }
            }
            return resp;
        }
        Step::Text(t) => (Some(t), vec![]),
        Step::Tools(tools) => (
            None,
            tools
                .into_iter()
                .map(|(name, input)| {
                    let args = input.to_string();
                    (next_id(), name, input, args)
                })
                .collect(),
        ),
        Step::RawArguments(name, raw) => (
            None,
            vec![(next_id(), name, Value::String(raw.clone()), raw)],
        ),
    };
    let tool_stop = !calls.is_empty();
    let (input_tokens, cache_read, cache_write) = match (&mut inner.cache, family) {
        (Some(cache), Family::Anthropic) => simulate_cache(cache, &req),
        _ => (INPUT_TOKENS, 0, 0),
    };
    let body = match family {
        // https://docs.anthropic.com/en/api/messages (response): content blocks, stop_reason, usage.
        Family::Anthropic => {
            let mut content = Vec::new();
            if let Some(t) = text {
                content.push(json!({"type": "text", "text": t}));
            }
            for (id, name, input, _) in calls {
                content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
            json!({
                "id": format!("msg_{n}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": if tool_stop { "tool_use" } else { "end_turn" },
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": OUTPUT_TOKENS,
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                },
            })
        }
        // https://platform.openai.com/docs/api-reference/chat/object: choices[0].message with content and
        // tool_calls (arguments as a JSON *string*), finish_reason, usage.prompt/completion_tokens.
        Family::OpenAi => {
            let mut message = json!({"role": "assistant", "content": text});
            if tool_stop {
                message["tool_calls"] = Value::Array(
                    calls
                        .into_iter()
                        .map(|(id, name, _, args)| {
                            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                        })
                        .collect(),
                );
            }
            json!({
                "id": format!("chatcmpl-{n}"),
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": if tool_stop { "tool_calls" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens": INPUT_TOKENS,
                    "completion_tokens": OUTPUT_TOKENS,
                    "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
                },
            })
        }
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Tokens of a JSON value, at 4 bytes a token.
fn tokens(v: &Value) -> u64 {
    (v.to_string().len() as u64).div_ceil(4)
}

/// `(input_tokens, cache_read, cache_write)` for one request under the cache model of
/// [`ModelStandIn::simulate_cache`].
fn simulate_cache(cache: &mut std::collections::HashSet<String>, req: &Value) -> (u64, u64, u64) {
    use sha2::Digest as _;
    // The prompt as one sequence of blocks, each without its cache_control (a marker is not content).
    let mut blocks: Vec<(Value, bool)> = Vec::new();
    let mut push = |b: &Value, prefix: Value| {
        let marked = b.get("cache_control").is_some();
        let mut b = b.clone();
        if let Some(o) = b.as_object_mut() {
            o.remove("cache_control");
        }
        blocks.push((json!([prefix, b]), marked));
    };
    for t in req["tools"].as_array().into_iter().flatten() {
        push(t, json!("tool"));
    }
    match &req["system"] {
        Value::String(s) => push(&json!({"type": "text", "text": s}), json!("system")),
        Value::Array(parts) => parts.iter().for_each(|p| push(p, json!("system"))),
        _ => {}
    }
    for (i, m) in req["messages"].as_array().into_iter().flatten().enumerate() {
        match &m["content"] {
            Value::String(s) => push(&json!({"type": "text", "text": s}), json!([i, m["role"]])),
            Value::Array(parts) => parts.iter().for_each(|p| push(p, json!([i, m["role"]]))),
            _ => {}
        }
    }
    let total: u64 = blocks.iter().map(|(b, _)| tokens(b)).sum();
    let mut hasher = sha2::Sha256::new();
    let (mut so_far, mut read, mut last_mark) = (0u64, 0u64, 0u64);
    for (b, marked) in &blocks {
        hasher.update(b.to_string().as_bytes());
        so_far += tokens(b);
        if *marked {
            let key = hex::encode(hasher.clone().finalize());
            if !cache.insert(key) {
                read = so_far;
            }
            last_mark = so_far;
        }
    }
    let write = last_mark.saturating_sub(read);
    (total - read - write, read, write)
}
