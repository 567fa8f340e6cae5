//! The Anthropic Messages API encoding (https://docs.anthropic.com/en/api/messages), with prompt caching.

use super::*;

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

pub(super) fn ephemeral() -> Value {
    json!({"type": "ephemeral"})
}

/// Puts a cache breakpoint on the last block of a message that may carry one (not thinking or other opaque
/// blocks); `false` if there is none.
pub(super) fn mark_last_block(message: &mut Value) -> bool {
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
            usage: TokenUsage {
                input_tokens: token_count(usage, "input_tokens", body)?,
                output_tokens: token_count(usage, "output_tokens", body)?,
                cache_read_tokens: token_count(usage, "cache_read_input_tokens", body)?,
                cache_write_tokens: token_count(usage, "cache_creation_input_tokens", body)?,
                estimated: usage.is_none(),
            },
        })
    }
}
