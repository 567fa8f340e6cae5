//! The OpenAI-compatible Chat Completions encoding (https://platform.openai.com/docs/api-reference/chat), which
//! self-hosted servers (vLLM, llama.cpp, Ollama) also speak.

use super::*;

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
            usage: TokenUsage {
                input_tokens: prompt - cached,
                output_tokens: token_count(usage, "completion_tokens", body)?,
                cache_read_tokens: cached,
                cache_write_tokens: 0,
                estimated: usage.is_none(),
            },
        })
    }
}
