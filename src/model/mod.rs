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
//! wait. `tests/it/provider_shapes.rs` feeds it response bodies written from the providers' API references.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use crate::config::{ModelConfig, ProviderKind, Secret};
use crate::proof::bundle::ReceiptUsage;
use crate::proof::{BundleWriter, ModelCallInput, ProofError};

mod anthropic;
mod client;
mod openai;

pub use anthropic::{AnthropicProvider, ANTHROPIC_VERSION};
pub use client::{http_client, ModelClient};
pub use openai::{parse_tool_arguments, OpenAiProvider};

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
/// exclude the cache), so the prompt's size is [`TokenUsage::prompt_tokens`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
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

impl TokenUsage {
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
    pub usage: TokenUsage,
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

#[cfg(test)]
mod tests;
