//! Model providers behind one receipt-emitting client.
//!
//! The agent speaks one normalised conversation ([`ModelRequest`], [`ModelResponse`]); a [`Provider`] translates it
//! to and from one API family: [`AnthropicProvider`] for the Anthropic Messages API, [`OpenAiProvider`] for OpenAI
//! Chat Completions as served by OpenAI, vLLM, Ollama and LiteLLM. Providers are pure encode/decode with no I/O, so
//! that [`ModelClient`] alone owns the bytes on the wire: it serialises a request once, sends exactly those bytes,
//! reads the complete response body, and records the SHA-256 of both in a signed model-call statement in the job's
//! proof bundle ([`crate::proof::BundleWriter`]) for every HTTP exchange, including failed ones, before decoding.
//!
//! Model output is treated as hostile: bodies are size-capped, every field is checked, and errors carry a short
//! excerpt of the body (never headers, never the API key). The client does not retry; [`ModelError::is_retryable`]
//! tells the caller whether trying again could help, [`ModelError::retry_after`] how long the provider asked to
//! wait. `tests/provider_shapes.rs` feeds it response bodies written from the providers' API references.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use crate::config::{ModelConfig, ProviderKind, Secret};
use crate::proof::bundle::Usage as ReceiptUsage;
use crate::proof::{BundleWriter, ModelCallInput, ProofError};

/// The largest response body read; anything longer is cut off and rejected.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Characters of a response body quoted in an error.
const EXCERPT_CHARS: usize = 200;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user side: the task, and tool results.
    User,
    /// The model.
    Assistant,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Plain text.
    Text(String),
    /// The model asks for a tool call. `input` is normally a JSON object; when an OpenAI-compatible model produced
    /// `arguments` that are not a JSON object, it is `Value::String` holding the raw arguments, so the agent can tell
    /// the model its arguments were malformed.
    ToolUse {
        /// Call id, echoed back in the result.
        id: String,
        /// Tool name.
        name: String,
        /// Tool arguments.
        input: Value,
    },
    /// A provider block drafter does not interpret but must keep: Anthropic `thinking` and `redacted_thinking`
    /// (which must go back unchanged, signature and data included, in the assistant turn when continuing tool use:
    /// <https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#preserving-thinking-blocks>) and
    /// server-tool blocks of a paused turn. Sent back verbatim to the provider that produced it; other providers
    /// drop it.
    Opaque(Value),
    /// The result of a tool call, sent back on the user side.
    ToolResult {
        /// The id of the [`Block::ToolUse`] this answers.
        id: String,
        /// The tool's output.
        content: String,
        /// Whether the tool failed.
        is_error: bool,
    },
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Content blocks, in order.
    pub content: Vec<Block>,
}

impl Message {
    /// A user message with one text block.
    pub fn user_text(text: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: vec![Block::Text(text.into())],
        }
    }

    /// An assistant message with the blocks of a response (to append a response to the history).
    pub fn assistant(content: Vec<Block>) -> Message {
        Message {
            role: Role::Assistant,
            content,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the input object.
    pub input_schema: Value,
}

/// One model call's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// System prompt (omitted from the request when empty).
    pub system: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools offered (omitted from the request when empty).
    pub tools: Vec<ToolSpec>,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Finished its turn.
    EndTurn,
    /// Wants tool results.
    ToolUse,
    /// Hit `max_tokens` (OpenAI: `finish_reason: "length"`); a tool call in the response may be incomplete.
    MaxTokens,
    /// Anthropic `pause_turn`: the turn was paused; sending the conversation back, paused turn last, continues it.
    PauseTurn,
    /// The model declined: OpenAI `message.refusal` or `finish_reason: "content_filter"`, Anthropic
    /// `stop_reason: "refusal"`. Holds the provider's words.
    Refusal(String),
    /// Anything else the provider said (e.g. `stop_sequence`, `content_filter`), or `missing`.
    Other(String),
}

/// Token counts the provider reported, normalised across families: `input_tokens` are the prompt tokens billed at
/// the full input price (OpenAI's `prompt_tokens` minus `cached_tokens`; Anthropic's `input_tokens`, which already
/// exclude the cache), so the prompt's size is [`Usage::prompt_tokens`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens not read from or written to a cache.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's cache (Anthropic `cache_read_input_tokens`, OpenAI
    /// `prompt_tokens_details.cached_tokens`).
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the cache (Anthropic `cache_creation_input_tokens`; OpenAI has none).
    pub cache_write_tokens: u64,
    /// The provider reported no usage; the counts are estimated from the bytes exchanged (4 bytes a token), so
    /// budgets still count the call.
    pub estimated: bool,
}

impl Usage {
    /// The whole prompt: uncached, cache read and cache written.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
    }

    /// Every token the call processed: the whole prompt and the output. Token budgets count this.
    pub fn total(&self) -> u64 {
        self.prompt_tokens() + self.output_tokens
    }
}

/// One model call's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    /// [`Block::Text`], [`Block::ToolUse`] and [`Block::Opaque`] blocks, in the provider's order.
    pub content: Vec<Block>,
    /// Why generation stopped.
    pub stop: StopReason,
    /// Token counts.
    pub usage: Usage,
}

impl ModelResponse {
    /// The tool calls, in order: `(id, name, input)`.
    pub fn tool_uses(&self) -> Vec<(&str, &str, &Value)> {
        self.content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
                _ => None,
            })
            .collect()
    }

    /// All text blocks joined with blank lines.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        parts.join("\n\n")
    }
}

/// Why a model call failed. Messages never contain the API key or request headers.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model configuration cannot work (bad base URL, unusable header value).
    #[error("model configuration: {0}")]
    Config(String),
    /// The request could not be encoded.
    #[error("cannot encode model request: {0}")]
    Encode(String),
    /// No complete response: connection failed, timed out, or broke mid-body.
    #[error("model request failed{}: {message}", if *timeout { " (timeout)" } else { "" })]
    Transport {
        /// What went wrong.
        message: String,
        /// Whether it was the configured timeout.
        timeout: bool,
    },
    /// The endpoint answered with an HTTP error status.
    #[error("model endpoint returned HTTP {status}{}: {message}",
        retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
        /// The provider's error message, or an excerpt of the body.
        message: String,
    },
    /// The response body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("model response body exceeds {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// The response is not what the API documents (not JSON, missing fields, wrong types).
    #[error("unusable model response: {message} (body starts: {excerpt:?})")]
    BadResponse {
        /// What is wrong.
        message: String,
        /// The start of the body.
        excerpt: String,
    },
    /// The receipt could not be written; the job must stop, since its calls could no longer be proven.
    #[error("cannot record model call receipt: {0}")]
    Receipt(#[from] ProofError),
}

impl ModelError {
    /// Whether the same request might succeed later: transport failures, HTTP 5xx, 429 (rate limited) and 529
    /// (Anthropic: overloaded). Other 4xx, undecodable responses and receipt failures are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Transport { .. } => true,
            ModelError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// How long the endpoint asked to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, for [`ModelError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ModelError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Replaces any occurrence of `secret` in the error's text: a hostile or misconfigured endpoint may echo the
    /// request headers back in its body.
    fn redacted(self, secret: Option<&Secret>) -> ModelError {
        let Some(secret) = secret.map(|s| s.expose()).filter(|s| !s.is_empty()) else {
            return self;
        };
        let r = |s: String| s.replace(secret, "[redacted]");
        match self {
            ModelError::Config(m) => ModelError::Config(r(m)),
            ModelError::Encode(m) => ModelError::Encode(r(m)),
            ModelError::Transport { message, timeout } => ModelError::Transport {
                message: r(message),
                timeout,
            },
            ModelError::Status {
                status,
                retry_after,
                message,
            } => ModelError::Status {
                status,
                retry_after,
                message: r(message),
            },
            ModelError::BadResponse { message, excerpt } => ModelError::BadResponse {
                message: r(message),
                excerpt: r(excerpt),
            },
            other => other,
        }
    }
}

/// The first [`EXCERPT_CHARS`] characters of a body, control characters replaced, for error messages.
fn excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(head);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if head.len() < body.len() || text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

fn bad(message: impl Into<String>, body: &[u8]) -> ModelError {
    ModelError::BadResponse {
        message: message.into(),
        excerpt: excerpt(body),
    }
}

/// One API family: pure encoding and decoding, no I/O, so the client owns the exact bytes sent and received.
pub trait Provider: Send + Sync {
    /// Which family.
    fn kind(&self) -> ProviderKind;
    /// The endpoint path appended to the base URL.
    fn path(&self) -> &'static str;
    /// Headers to send besides `content-type` (authentication, API version).
    fn headers(&self, api_key: Option<&Secret>) -> Vec<(String, String)>;
    /// The request body.
    fn encode(&self, model: &str, max_tokens: u32, req: &ModelRequest) -> Value;
    /// Decodes a successful (2xx) response body.
    fn decode(&self, body: &[u8]) -> Result<ModelResponse, ModelError>;
}

/// The provider for a configured API family; `prompt_caching` asks Anthropic for cache breakpoints (OpenAI caches
/// prompt prefixes on its own).
pub fn provider_for(kind: ProviderKind, prompt_caching: bool) -> Box<dyn Provider> {
    match kind {
        ProviderKind::Anthropic => Box::new(AnthropicProvider { prompt_caching }),
        ProviderKind::Openai => Box::new(OpenAiProvider),
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ModelError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("response is JSON but not an object", body)),
        Err(e) => Err(bad(format!("response is not JSON: {e}"), body)),
    }
}

/// Reads a token count: absent or null is 0 (some servers omit usage); anything but a non-negative integer is an
/// error.
fn token_count(obj: Option<&Value>, field: &str, body: &[u8]) -> Result<u64, ModelError> {
    match obj.and_then(|u| u.get(field)) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad(format!("usage.{field} is not a non-negative integer"), body)),
    }
}

/// A provider-shaped `{"error": {"type": ..., "message": ...}}` message, if the body has one (both families use
/// this shape), as `type: message` so the provider's own name for the failure (`overloaded_error`,
/// `rate_limit_error`, `insufficient_quota`) reaches the job's error.
fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let m = e
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())?;
    let kind = e
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| e.get("code").and_then(Value::as_str))
        .filter(|k| !k.is_empty() && !m.starts_with(k));
    let text = match kind {
        Some(k) => format!("{k}: {m}"),
        None => m.to_string(),
    };
    Some(text.chars().take(EXCERPT_CHARS * 2).collect())
}

/// Whether a body is a server-sent event stream rather than one JSON document.
fn looks_like_event_stream(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|c| {
        c.trim()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    }) {
        return true;
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&body[..0], |i| &body[i..]);
    start.starts_with(b"data:") || start.starts_with(b"event:")
}

/// `Retry-After` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date; OpenAI-compatible servers may send
/// `retry-after-ms` instead.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(v) {
            let wait = at.with_timezone(&Utc) - Utc::now();
            return Some(wait.to_std().unwrap_or(Duration::ZERO));
        }
    }
    get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_millis(ms as u64))
}

/// Anthropic Messages API, `POST /v1/messages` (<https://docs.anthropic.com/en/api/messages>).
///
/// Prompt caching (<https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching>): with `prompt_caching`,
/// four `cache_control: {"type": "ephemeral"}` breakpoints (the API's maximum) mark the end of the system prompt,
/// of the tools, of the conversation as the previous request sent it (its last user message: read from the cache
/// this time) and of this request's last message (written for the next one). A job resends its conversation every
/// turn, so all but the newest turn is billed at the cache-read rate.
#[derive(Debug, Clone, Copy)]
pub struct AnthropicProvider {
    /// Send cache breakpoints.
    pub prompt_caching: bool,
}

impl Default for AnthropicProvider {
    fn default() -> Self {
        AnthropicProvider {
            prompt_caching: true,
        }
    }
}

fn ephemeral() -> Value {
    json!({"type": "ephemeral"})
}

/// Puts a cache breakpoint on the last block of a message that may carry one (not thinking or other opaque
/// blocks); `false` if there is none.
fn mark_last_block(message: &mut Value) -> bool {
    let Some(blocks) = message.get_mut("content").and_then(Value::as_array_mut) else {
        return false;
    };
    for b in blocks.iter_mut().rev() {
        if matches!(
            b.get("type").and_then(Value::as_str),
            Some("text" | "tool_use" | "tool_result")
        ) {
            if let Some(o) = b.as_object_mut() {
                o.insert("cache_control".into(), ephemeral());
                return true;
            }
        }
    }
    false
}

/// The `anthropic-version` header value this encoding follows.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Provider for AnthropicProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn path(&self) -> &'static str {
        "/v1/messages"
    }

    fn headers(&self, api_key: Option<&Secret>) -> Vec<(String, String)> {
        let mut h = vec![(
            "anthropic-version".to_string(),
            ANTHROPIC_VERSION.to_string(),
        )];
        if let Some(k) = api_key {
            h.push(("x-api-key".to_string(), k.expose().to_string()));
        }
        h
    }

    fn encode(&self, model: &str, max_tokens: u32, req: &ModelRequest) -> Value {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            let blocks: Vec<Value> = m
                .content
                .iter()
                .filter_map(|b| match b {
                    // The API rejects empty text blocks.
                    Block::Text(t) if t.is_empty() => None,
                    Block::Text(t) => Some(json!({"type": "text", "text": t})),
                    Block::ToolUse { id, name, input } => {
                        Some(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
                    }
                    Block::Opaque(v) => Some(v.clone()),
                    Block::ToolResult {
                        id,
                        content,
                        is_error,
                    } => Some(json!({
                        "type": "tool_result",
                        "tool_use_id": id,
                        "content": content,
                        "is_error": is_error,
                    })),
                })
                .collect();
            // ... and empty messages; consecutive same-role turns are combined by the API.
            if blocks.is_empty() {
                continue;
            }
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": blocks}));
        }
        if self.prompt_caching {
            // This request's last message, and the last user message before the newest assistant turn: where the
            // previous request ended, so its cache entry is read back exactly.
            if let Some(last) = messages.last_mut() {
                mark_last_block(last);
            }
            let n = messages.len();
            if let Some(prev) = (0..n.saturating_sub(1))
                .rev()
                .find(|&i| messages[i]["role"] == "user" && messages[i + 1]["role"] == "assistant")
            {
                mark_last_block(&mut messages[prev]);
            }
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("max_tokens".into(), json!(max_tokens));
        body.insert("stream".into(), json!(false));
        if !req.system.is_empty() {
            let system = if self.prompt_caching {
                json!([{"type": "text", "text": req.system, "cache_control": ephemeral()}])
            } else {
                json!(req.system)
            };
            body.insert("system".into(), system);
        }
        body.insert("messages".into(), Value::Array(messages));
        if !req.tools.is_empty() {
            let mut tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    json!({"name": t.name, "description": t.description, "input_schema": t.input_schema})
                })
                .collect();
            if self.prompt_caching {
                if let Some(last) = tools.last_mut().and_then(Value::as_object_mut) {
                    last.insert("cache_control".into(), ephemeral());
                }
            }
            body.insert("tools".into(), Value::Array(tools));
        }
        Value::Object(body)
    }

    fn decode(&self, body: &[u8]) -> Result<ModelResponse, ModelError> {
        let obj = parse_object(body)?;
        if obj.get("type").and_then(Value::as_str) == Some("error") {
            let msg = error_message(body).unwrap_or_else(|| "unspecified error".into());
            return Err(bad(format!("error response: {msg}"), body));
        }
        let Some(blocks) = obj.get("content").and_then(Value::as_array) else {
            return Err(bad("missing `content` array", body));
        };
        let mut content = Vec::with_capacity(blocks.len());
        for (i, b) in blocks.iter().enumerate() {
            let field = |name: &str| {
                b.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        bad(
                            format!("content[{i}].{name} is missing or not a string"),
                            body,
                        )
                    })
            };
            match b.get("type").and_then(Value::as_str) {
                Some("text") => content.push(Block::Text(field("text")?)),
                Some("tool_use") => content.push(Block::ToolUse {
                    id: field("id")?,
                    name: field("name")?,
                    input: b.get("input").cloned().unwrap_or_else(|| json!({})),
                }),
                // Thinking, redacted thinking and server-tool blocks: kept as they came, to go back unchanged.
                Some(_) => content.push(Block::Opaque(b.clone())),
                None => return Err(bad(format!("content[{i}] has no string `type`"), body)),
            }
        }
        let stop = match obj.get("stop_reason") {
            Some(Value::String(s)) => match s.as_str() {
                "end_turn" => StopReason::EndTurn,
                "tool_use" => StopReason::ToolUse,
                "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
                "pause_turn" => StopReason::PauseTurn,
                "refusal" => {
                    let said: Vec<&str> = content
                        .iter()
                        .filter_map(|b| match b {
                            Block::Text(t) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect();
                    StopReason::Refusal(if said.is_empty() {
                        "stop_reason \"refusal\"".into()
                    } else {
                        format!("stop_reason \"refusal\": {}", said.join(" "))
                    })
                }
                other => StopReason::Other(other.to_string()),
            },
            None | Some(Value::Null) => StopReason::Other("missing".into()),
            Some(_) => return Err(bad("stop_reason is not a string", body)),
        };
        let usage = obj.get("usage").filter(|u| !u.is_null());
        Ok(ModelResponse {
            content,
            stop,
            usage: Usage {
                input_tokens: token_count(usage, "input_tokens", body)?,
                output_tokens: token_count(usage, "output_tokens", body)?,
                cache_read_tokens: token_count(usage, "cache_read_input_tokens", body)?,
                cache_write_tokens: token_count(usage, "cache_creation_input_tokens", body)?,
                estimated: usage.is_none(),
            },
        })
    }
}

/// OpenAI Chat Completions, `POST /v1/chat/completions`
/// (<https://platform.openai.com/docs/api-reference/chat/create>), as served by OpenAI, vLLM, Ollama and LiteLLM.
///
/// Mapping notes: tool results become one `role: "tool"` message each, placed before any user text of the same turn
/// (they must directly follow the assistant's `tool_calls`); the format has no error flag, so a failed tool's content
/// is prefixed with `ERROR: `. A [`Block::ToolUse`] whose input is `Value::String` is sent back with that string as
/// the raw `arguments`, so the history shows the model exactly what it produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiProvider;

/// Tool-call `arguments` from the model: a JSON object when they parse as one, empty means `{}`, anything else is
/// kept raw as `Value::String`.
pub fn parse_tool_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(raw.to_string()),
    }
}

impl Provider for OpenAiProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn path(&self) -> &'static str {
        "/v1/chat/completions"
    }

    fn headers(&self, api_key: Option<&Secret>) -> Vec<(String, String)> {
        api_key
            .map(|k| {
                vec![(
                    "authorization".to_string(),
                    format!("Bearer {}", k.expose()),
                )]
            })
            .unwrap_or_default()
    }

    fn encode(&self, model: &str, max_tokens: u32, req: &ModelRequest) -> Value {
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        if !req.system.is_empty() {
            messages.push(json!({"role": "system", "content": req.system}));
        }
        for m in &req.messages {
            let texts: Vec<&str> = m
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::Text(t) if !t.is_empty() => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            let text = texts.join("\n\n");
            match m.role {
                Role::User => {
                    for b in &m.content {
                        if let Block::ToolResult {
                            id,
                            content,
                            is_error,
                        } = b
                        {
                            let content = if *is_error {
                                format!("ERROR: {content}")
                            } else {
                                content.clone()
                            };
                            messages.push(
                                json!({"role": "tool", "tool_call_id": id, "content": content}),
                            );
                        }
                    }
                    if !text.is_empty() {
                        messages.push(json!({"role": "user", "content": text}));
                    }
                }
                Role::Assistant => {
                    let calls: Vec<Value> = m
                        .content
                        .iter()
                        .filter_map(|b| match b {
                            Block::ToolUse { id, name, input } => {
                                let arguments = match input {
                                    Value::String(raw) => raw.clone(),
                                    other => other.to_string(),
                                };
                                Some(json!({
                                    "id": id,
                                    "type": "function",
                                    "function": {"name": name, "arguments": arguments},
                                }))
                            }
                            _ => None,
                        })
                        .collect();
                    let mut msg = Map::new();
                    msg.insert("role".into(), json!("assistant"));
                    msg.insert(
                        "content".into(),
                        if text.is_empty() {
                            Value::Null
                        } else {
                            json!(text)
                        },
                    );
                    if !calls.is_empty() {
                        msg.insert("tool_calls".into(), Value::Array(calls));
                    }
                    messages.push(Value::Object(msg));
                }
            }
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("max_tokens".into(), json!(max_tokens));
        body.insert("stream".into(), json!(false));
        body.insert("messages".into(), Value::Array(messages));
        if !req.tools.is_empty() {
            let tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.input_schema,
                        },
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        Value::Object(body)
    }

    fn decode(&self, body: &[u8]) -> Result<ModelResponse, ModelError> {
        let obj = parse_object(body)?;
        let Some(choice) = obj
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            if let Some(msg) = error_message(body) {
                return Err(bad(format!("error response: {msg}"), body));
            }
            return Err(bad("missing or empty `choices` array", body));
        };
        let Some(message) = choice.get("message").filter(|m| m.is_object()) else {
            return Err(bad("choices[0].message is missing or not an object", body));
        };
        let mut content = Vec::new();
        match message.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if !s.is_empty() {
                    content.push(Block::Text(s.clone()));
                }
            }
            // Some servers return content parts instead of a string.
            Some(Value::Array(parts)) => {
                let text: String = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !text.is_empty() {
                    content.push(Block::Text(text));
                }
            }
            Some(_) => return Err(bad("choices[0].message.content is not a string", body)),
        }
        match message.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for (i, call) in calls.iter().enumerate() {
                    let Some(function) = call.get("function").filter(|f| f.is_object()) else {
                        return Err(bad(format!("tool_calls[{i}].function is missing"), body));
                    };
                    let Some(name) = function.get("name").and_then(Value::as_str) else {
                        return Err(bad(
                            format!("tool_calls[{i}].function.name is missing or not a string"),
                            body,
                        ));
                    };
                    let input = match function.get("arguments") {
                        None | Some(Value::Null) => json!({}),
                        Some(Value::String(raw)) => parse_tool_arguments(raw),
                        // Some servers send the arguments as an object rather than a JSON string.
                        Some(v @ Value::Object(_)) => v.clone(),
                        Some(other) => Value::String(other.to_string()),
                    };
                    // Some servers omit ids; a positional one still pairs the result with the call.
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("call_{i}"));
                    content.push(Block::ToolUse {
                        id,
                        name: name.to_string(),
                        input,
                    });
                }
            }
            Some(_) => return Err(bad("choices[0].message.tool_calls is not an array", body)),
        }
        let has_calls = content.iter().any(|b| matches!(b, Block::ToolUse { .. }));
        // A refusal comes as `message.refusal`, with no content (structured outputs) or next to it.
        let refusal = match message.get("refusal") {
            Some(Value::String(r)) if !r.trim().is_empty() => Some(r.trim().to_string()),
            _ => None,
        };
        let stop = match choice.get("finish_reason") {
            _ if refusal.is_some() && !has_calls => {
                StopReason::Refusal(format!("message.refusal: {}", refusal.unwrap_or_default()))
            }
            Some(Value::String(s)) if s == "content_filter" && !has_calls => {
                StopReason::Refusal("finish_reason \"content_filter\"".into())
            }
            // Some servers say "stop" even when they return tool calls: the calls are what matters.
            Some(Value::String(s)) => match s.as_str() {
                "tool_calls" | "function_call" => StopReason::ToolUse,
                "stop" if has_calls => StopReason::ToolUse,
                "stop" => StopReason::EndTurn,
                "length" => StopReason::MaxTokens,
                other => StopReason::Other(other.to_string()),
            },
            None | Some(Value::Null) if has_calls => StopReason::ToolUse,
            None | Some(Value::Null) => StopReason::Other("missing".into()),
            Some(_) => return Err(bad("choices[0].finish_reason is not a string", body)),
        };
        let usage = obj.get("usage").filter(|u| !u.is_null());
        let prompt = token_count(usage, "prompt_tokens", body)?;
        // `prompt_tokens` includes the cached ones (https://platform.openai.com/docs/guides/prompt-caching).
        let cached = token_count(
            usage.and_then(|u| u.get("prompt_tokens_details")),
            "cached_tokens",
            body,
        )?
        .min(prompt);
        Ok(ModelResponse {
            content,
            stop,
            usage: Usage {
                input_tokens: prompt - cached,
                output_tokens: token_count(usage, "completion_tokens", body)?,
                cache_read_tokens: cached,
                cache_write_tokens: 0,
                estimated: usage.is_none(),
            },
        })
    }
}

/// Sends model requests and records one signed receipt per HTTP exchange.
pub struct ModelClient {
    http: reqwest::Client,
    provider: Box<dyn Provider>,
    url: String,
    endpoint: String,
    model: String,
    max_tokens: u32,
    api_key: Option<Secret>,
    headers: HeaderMap,
    bundle: BundleWriter,
}

impl fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelClient")
            .field("provider", &self.provider.kind())
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("bundle", &self.bundle.path())
            .finish_non_exhaustive()
    }
}

/// What came back from one HTTP exchange, before decoding.
struct Exchange {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    /// Set when the exchange itself failed (no response, broken or oversized body).
    failure: Option<ModelError>,
}

fn transport_error(e: reqwest::Error) -> ModelError {
    let timeout = e.is_timeout();
    // `without_url` keeps the URL (and any credentials in it) out of the message.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ModelError::Transport { message, timeout }
}

impl ModelClient {
    /// A client for `cfg`, recording into `bundle`.
    pub fn new(cfg: &ModelConfig, bundle: BundleWriter) -> Result<ModelClient, ModelError> {
        let provider = provider_for(cfg.provider, cfg.prompt_caching);
        let base = cfg.base_url.trim_end_matches('/');
        let url = format!("{base}{}", provider.path());
        let parsed = url::Url::parse(&url)
            .map_err(|e| ModelError::Config(format!("model.base_url is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ModelError::Config(
                "model.base_url must be http:// or https://".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Resolved at start-up by the command ([`crate::config::Config::load_for`]); unresolved is a bug, said so.
        let api_key = match &cfg.api_key {
            Some(k) => Some(
                k.value()
                    .map_err(|e| ModelError::Config(e.to_string()))?
                    .clone(),
            ),
            None => None,
        };
        for (name, value) in provider.headers(api_key.as_ref()) {
            let hname = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ModelError::Config(format!("invalid header name `{name}`")))?;
            // The error names the header only: the value may be the key.
            let mut hvalue = HeaderValue::from_str(&value).map_err(|_| {
                ModelError::Config(format!(
                    "header `{name}` has an invalid value (check the API key for stray characters)"
                ))
            })?;
            if matches!(name.as_str(), "authorization" | "x-api-key") {
                hvalue.set_sensitive(true);
            }
            headers.insert(hname, hvalue);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
            // A redirect could carry the key to another host or turn the POST into a GET: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(ModelClient {
            http,
            endpoint: parsed.path().to_string(),
            url,
            provider,
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens_per_call,
            api_key,
            headers,
            bundle,
        })
    }

    /// Sends one request: serialises it once, sends those bytes, reads the whole response, appends exactly one
    /// receipt for the exchange (also on HTTP errors and transport failures), then decodes. Never retries.
    pub async fn call(&mut self, req: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&self.provider.encode(&self.model, self.max_tokens, req))
            .map_err(|e| ModelError::Encode(e.to_string()))?;
        let started_at = Utc::now();
        let t0 = Instant::now();
        let exchange = self.exchange(&body).await;
        let latency_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);

        let result = match exchange.failure {
            Some(e) => Err(e),
            // Some servers and proxies stream by default; drafter asks for one JSON document (`"stream": false`).
            None if (200..300).contains(&exchange.status)
                && looks_like_event_stream(exchange.content_type.as_deref(), &exchange.body) =>
            {
                Err(bad(
                    format!(
                        "the endpoint answered with a server-sent event stream (content-type {}) although the request \
                         asked for none (\"stream\": false); turn streaming off on the server or proxy",
                        exchange.content_type.as_deref().unwrap_or("text/event-stream")
                    ),
                    &exchange.body,
                ))
            }
            None if (200..300).contains(&exchange.status) => self.provider.decode(&exchange.body),
            None => Err(ModelError::Status {
                status: exchange.status,
                retry_after: exchange.retry_after,
                message: error_message(&exchange.body).unwrap_or_else(|| excerpt(&exchange.body)),
            }),
        };
        // Redact before anything (logs included) sees the error text.
        let mut result = result.map_err(|e| e.redacted(self.api_key.as_ref()));
        if let Ok(r) = &mut result {
            if r.usage.estimated {
                // No usage reported: estimate from the bytes, so token budgets still count the call.
                r.usage.input_tokens = (body.len() as u64).div_ceil(4);
                r.usage.output_tokens = (exchange.body.len() as u64).div_ceil(4);
                tracing::warn!(
                    input_tokens = r.usage.input_tokens,
                    output_tokens = r.usage.output_tokens,
                    "the model endpoint reported no usage; tokens estimated from the bytes exchanged"
                );
            }
        }
        let usage = result.as_ref().map(|r| r.usage).unwrap_or_default();
        let receipt = self.bundle.model_call(ModelCallInput {
            provider: self.provider.kind().as_str(),
            model: &self.model,
            endpoint: &self.endpoint,
            http_status: exchange.status,
            request: &body,
            response: &exchange.body,
            usage: ReceiptUsage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_tokens: usage.cache_read_tokens,
                cache_write_tokens: usage.cache_write_tokens,
            },
            usage_estimated: usage.estimated,
            latency_ms,
            started_at,
        })?;
        match &result {
            Ok(r) => tracing::info!(
                seq = receipt.chain.seq,
                status = exchange.status,
                latency_ms,
                input_tokens = r.usage.input_tokens,
                output_tokens = r.usage.output_tokens,
                cache_read_tokens = r.usage.cache_read_tokens,
                cache_write_tokens = r.usage.cache_write_tokens,
                "model call"
            ),
            Err(e) => {
                tracing::warn!(seq = receipt.chain.seq, status = exchange.status, latency_ms, error = %e, "model call failed")
            }
        }
        result
    }

    async fn exchange(&self, body: &[u8]) -> Exchange {
        let sent = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body.to_vec())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Exchange {
                    status: 0,
                    body: Vec::new(),
                    retry_after: None,
                    content_type: None,
                    failure: Some(transport_error(e)),
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(100).collect::<String>());
        let mut body = Vec::new();
        let mut failure = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        failure = Some(ModelError::TooLarge {
                            limit: MAX_RESPONSE_BYTES,
                        });
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(transport_error(e));
                    break;
                }
            }
        }
        Exchange {
            status,
            body,
            retry_after,
            content_type,
            failure,
        }
    }

    /// The proof bundle this client records into.
    pub fn bundle(&self) -> &BundleWriter {
        &self.bundle
    }

    /// The bundle, for the agent loop's tool-call statements (one chain orders model and tool calls).
    pub fn bundle_mut(&mut self) -> &mut BundleWriter {
        &mut self.bundle
    }

    /// Ends the client, returning the bundle writer.
    pub fn into_bundle(self) -> BundleWriter {
        self.bundle
    }

    /// The API family in use.
    pub fn provider_kind(&self) -> ProviderKind {
        self.provider.kind()
    }

    /// The model name sent.
    pub fn model(&self) -> &str {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> ModelRequest {
        ModelRequest {
            system: "be brief".into(),
            messages: vec![
                Message::user_text("fix it"),
                Message::assistant(vec![
                    Block::Text("looking".into()),
                    Block::ToolUse {
                        id: "call_1".into(),
                        name: "read_file".into(),
                        input: json!({"path": "a.rs"}),
                    },
                    Block::ToolUse {
                        id: "call_2".into(),
                        name: "run".into(),
                        input: Value::String("{not json".into()),
                    },
                ]),
                Message {
                    role: Role::User,
                    content: vec![
                        Block::ToolResult {
                            id: "call_1".into(),
                            content: "fn main() {}".into(),
                            is_error: false,
                        },
                        Block::ToolResult {
                            id: "call_2".into(),
                            content: "bad arguments".into(),
                            is_error: true,
                        },
                    ],
                },
            ],
            tools: vec![ToolSpec {
                name: "read_file".into(),
                description: "read".into(),
                input_schema: json!({"type": "object"}),
            }],
        }
    }

    #[test]
    fn anthropic_encode_shape() {
        let plain = AnthropicProvider {
            prompt_caching: false,
        };
        let v = plain.encode("m", 100, &conversation());
        assert_eq!(v["model"], "m");
        assert_eq!(v["max_tokens"], 100);
        assert_eq!(v["stream"], false);
        assert_eq!(v["system"], "be brief");
        assert!(!v.to_string().contains("cache_control"));
        assert_eq!(v["tools"][0]["input_schema"]["type"], "object");
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[0],
            json!({"role": "user", "content": [{"type": "text", "text": "fix it"}]})
        );
        assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][1]["input"]["path"], "a.rs");
        assert_eq!(
            msgs[2]["content"][1],
            json!({"type": "tool_result", "tool_use_id": "call_2", "content": "bad arguments", "is_error": true})
        );
        let empty = ModelRequest {
            system: String::new(),
            messages: vec![Message::user_text("")],
            tools: vec![],
        };
        let v = AnthropicProvider::default().encode("m", 1, &empty);
        assert!(v.get("system").is_none() && v.get("tools").is_none());
        assert_eq!(v["messages"], json!([]));
    }

    #[test]
    fn anthropic_cache_breakpoints() {
        let mut req = conversation();
        req.messages.push(Message::assistant(vec![
            Block::Opaque(json!({"type": "thinking", "thinking": "t", "signature": "s"})),
            Block::ToolUse {
                id: "call_3".into(),
                name: "read_file".into(),
                input: json!({"path": "b.rs"}),
            },
        ]));
        req.messages.push(Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                id: "call_3".into(),
                content: "b".into(),
                is_error: false,
            }],
        });
        let v = AnthropicProvider::default().encode("m", 100, &req);
        let eph = json!({"type": "ephemeral"});
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "be brief", "cache_control": eph}])
        );
        assert_eq!(v["tools"][0]["cache_control"], eph);
        let msgs = v["messages"].as_array().unwrap();
        // The previous request's end (last block of its last message) and this request's end.
        assert_eq!(msgs[2]["content"][1]["cache_control"], eph);
        assert!(msgs[2]["content"][0].get("cache_control").is_none());
        assert_eq!(msgs[4]["content"][0]["cache_control"], eph);
        // The thinking block goes back untouched.
        assert_eq!(
            msgs[3]["content"][0],
            json!({"type": "thinking", "thinking": "t", "signature": "s"})
        );
        // Never more than the API's 4 breakpoints.
        assert_eq!(v.to_string().matches("cache_control").count(), 4);
    }

    #[test]
    fn openai_encode_shape() {
        let v = OpenAiProvider.encode("m", 100, &conversation());
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(msgs[1], json!({"role": "user", "content": "fix it"}));
        assert_eq!(msgs[2]["role"], "assistant");
        assert_eq!(msgs[2]["content"], "looking");
        let calls = msgs[2]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["arguments"], r#"{"path":"a.rs"}"#);
        // Malformed arguments go back exactly as the model produced them.
        assert_eq!(calls[1]["function"]["arguments"], "{not json");
        assert_eq!(
            msgs[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "fn main() {}"})
        );
        assert_eq!(msgs[4]["content"], "ERROR: bad arguments");
        assert_eq!(msgs.len(), 5);
        assert_eq!(v["tools"][0]["type"], "function");
        assert_eq!(v["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(v["max_tokens"], 100);
    }

    #[test]
    fn anthropic_decode() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[
            {"type":"thinking","thinking":"hmm"},
            {"type":"text","text":"ok"},
            {"type":"tool_use","id":"toolu_1","name":"run","input":{"cmd":"ls"}}],
            "stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let r = AnthropicProvider::default().decode(body).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 3,
                ..Usage::default()
            }
        );
        assert_eq!(r.text(), "ok");
        assert_eq!(
            r.tool_uses(),
            vec![("toolu_1", "run", &json!({"cmd": "ls"}))]
        );

        for (body, want) in [
            (&b"<html>502</html>"[..], "not JSON"),
            (b"[1]", "not an object"),
            (b"{}", "missing `content`"),
            (
                br#"{"content":[{"type":"tool_use","name":"x"}]}"#,
                "content[0].id",
            ),
            (br#"{"content":[{"text":"x"}]}"#, "no string `type`"),
            (
                br#"{"content":[],"usage":{"input_tokens":"12"}}"#,
                "usage.input_tokens",
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "Overloaded",
            ),
        ] {
            let e = AnthropicProvider::default().decode(body).unwrap_err();
            assert!(!e.is_retryable());
            assert!(e.to_string().contains(want), "{e} / {want}");
        }
    }

    #[test]
    fn openai_decode_lenient_where_it_helps() {
        let body =
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"c1","type":"function","function":{"name":"run","arguments":"{\"cmd\":\"ls\"}"}},
            {"id":"c2","type":"function","function":{"name":"run","arguments":"{\"cmd\": ls"}},
            {"type":"function","function":{"name":"noargs","arguments":""}},
            {"id":"c4","type":"function","function":{"name":"obj","arguments":{"a":1}}}]},
            "finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        let r = OpenAiProvider.decode(body).unwrap();
        assert_eq!(r.stop, StopReason::ToolUse);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 7,
                output_tokens: 2,
                ..Usage::default()
            }
        );
        let calls = r.tool_uses();
        assert_eq!(calls[0], ("c1", "run", &json!({"cmd": "ls"})));
        assert_eq!(calls[1].2, &Value::String("{\"cmd\": ls".into()));
        assert_eq!(calls[2], ("call_2", "noargs", &json!({})));
        assert_eq!(calls[3].2, &json!({"a": 1}));

        let r = OpenAiProvider
            .decode(br#"{"choices":[{"message":{"content":"done"},"finish_reason":"length"}]}"#)
            .unwrap();
        assert_eq!(r.stop, StopReason::MaxTokens);
        assert_eq!(r.text(), "done");
        assert_eq!(
            r.usage,
            Usage {
                estimated: true,
                ..Usage::default()
            }
        );

        for (body, want) in [
            (&b"not json at all"[..], "not JSON"),
            (br#"{"choices":[]}"#, "choices"),
            (
                br#"{"error":{"message":"model not loaded"}}"#,
                "model not loaded",
            ),
            (br#"{"choices":[{"message":"hi"}]}"#, "message is missing"),
            (
                br#"{"choices":[{"message":{"content":5}}]}"#,
                "content is not a string",
            ),
            (
                br#"{"choices":[{"message":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
                "function.name",
            ),
            (
                br#"{"choices":[{"message":{"content":"x"},"finish_reason":3}]}"#,
                "finish_reason",
            ),
        ] {
            let e = OpenAiProvider.decode(body).unwrap_err();
            assert!(e.to_string().contains(want), "{e} / {want}");
        }
    }

    #[test]
    fn headers_and_retryability() {
        let key = Secret::new("sk-test-123");
        let h = AnthropicProvider::default().headers(Some(&key));
        assert!(h.contains(&("x-api-key".into(), "sk-test-123".into())));
        assert!(h.contains(&("anthropic-version".into(), "2023-06-01".into())));
        assert_eq!(
            OpenAiProvider.headers(Some(&key)),
            vec![(
                "authorization".to_string(),
                "Bearer sk-test-123".to_string()
            )]
        );
        assert!(OpenAiProvider.headers(None).is_empty());

        let status = |s| ModelError::Status {
            status: s,
            retry_after: None,
            message: String::new(),
        };
        assert!(status(500).is_retryable());
        assert!(status(529).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(ModelError::Transport {
            message: String::new(),
            timeout: true
        }
        .is_retryable());

        let e = bad("echo sk-test-123", b"x-api-key: sk-test-123").redacted(Some(&key));
        assert!(!e.to_string().contains("sk-test-123"), "{e}");
    }

    #[test]
    fn excerpt_is_short_and_clean() {
        let long = "a\nb".repeat(1000);
        let e = excerpt(long.as_bytes());
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        assert!(!e.contains('\n'));
        assert_eq!(excerpt(b"short"), "short");
    }
}
