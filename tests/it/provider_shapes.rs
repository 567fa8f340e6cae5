//! Conformance with the providers' real response shapes, not only the ones our scripted stand-in writes. Every
//! canned body below is written from the provider's public API reference, cited next to it, and served verbatim
//! (status, headers, bytes) by the stand-in's [`Step::Raw`]. The first half drives [`ModelClient`] directly; the
//! second half runs whole jobs (the real binary, the real sandbox) where the behaviour lives in the agent loop.
//! Each case either works or fails the job with a message naming the provider's answer: never a panic or a hang.
//!
//! Long on purpose (over 700 lines): the providers' documented payloads, quoted in full so a test fails when a shape
//! drifts.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use drafter::config::{ModelConfig, ProviderKind};
use drafter::model::{Block, Message, ModelClient, ModelRequest, Role, ToolSpec};
use drafter::proof::{BundleWriter, RunnerKey};
use serde_json::{json, Value};
use support::harness::{Options, Stack, DEMO_REPO};
use support::model::{finish, ModelStandIn, Step};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

fn json_ct() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_string())]
}

fn ok(body: Value) -> Step {
    Step::Raw(200, json_ct(), body.to_string())
}

// ---- Anthropic Messages API ----------------------------------------------------------------------------------

/// Several `tool_use` blocks in one message, after a text block.
/// <https://docs.anthropic.com/en/api/messages> (response `content`), and parallel tool use:
/// <https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use#parallel-tool-use>.
fn anthropic_parallel_tool_use() -> Value {
    json!({
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "I'll read both files and list the repository."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "read_file", "input": {"path": "greet.py"}},
            {"type": "tool_use", "id": "toolu_01B19r91rw91mr928946mr0", "name": "read_file", "input": {"path": "test_greet.py"}},
            {"type": "tool_use", "id": "toolu_01C29s92sx92ns939057ns1", "name": "list_files", "input": {}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

/// `thinking` and `redacted_thinking` blocks before a tool call. With tool use, the thinking blocks of the turn must
/// be passed back unchanged (signature and data included) in the assistant message:
/// <https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#preserving-thinking-blocks> and
/// <https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#thinking-redaction>.
fn anthropic_thinking() -> Value {
    json!({
        "id": "msg_01Bt7bnLqkd3xqvCN2WsL7oV",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "The ticket wants an exclamation mark. Let me read greet.py first.",
             "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL=="},
            {"type": "redacted_thinking",
             "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj2pLmN3kF8/dW5hR7xJ0aP1oLs9yTcMnKVf2wRpEGjH9XZaBt4UvDcPrQ=="},
            {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "read_file", "input": {"path": "greet.py"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 1848, "output_tokens": 211, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

/// `stop_reason: "pause_turn"`: a long server-tool turn was paused; the caller sends the assistant content back as
/// it is to let the model continue. <https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons>
/// (pause_turn), server tool blocks: <https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool>.
fn anthropic_pause_turn() -> Value {
    json!({
        "id": "msg_01PauseTurnExample0000001",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Let me look that up."},
            {"type": "server_tool_use", "id": "srvtoolu_01WYG3ziw53XMcoyKL4XcZmE", "name": "web_search",
             "input": {"query": "python f-string exclamation mark"}}
        ],
        "stop_reason": "pause_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 2679, "output_tokens": 37, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

/// `stop_reason: "max_tokens"` in the middle of a tool call: the `tool_use` block may be incomplete.
/// <https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons> (max_tokens) and
/// <https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use#max-tokens-stop-reason>.
fn anthropic_max_tokens_mid_tool() -> Value {
    json!({
        "id": "msg_01MaxTokensMidToolUse00001",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "I'll rewrite greet.py completely:"},
            {"type": "tool_use", "id": "toolu_01MaxTok9q90qw90lq91783", "name": "write_file", "input": {"path": "greet.py"}}
        ],
        "stop_reason": "max_tokens",
        "stop_sequence": null,
        "usage": {"input_tokens": 3120, "output_tokens": 4096, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

/// HTTP 429 `rate_limit_error` with `retry-after` (seconds). Error shape: <https://docs.anthropic.com/en/api/errors>;
/// the header: <https://docs.anthropic.com/en/api/rate-limits#response-headers>.
fn anthropic_429(retry_after: &str) -> Step {
    Step::Raw(
        429,
        vec![
            ("content-type", "application/json".into()),
            ("retry-after", retry_after.into()),
            ("anthropic-ratelimit-requests-remaining", "0".into()),
            ("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy".into()),
        ],
        json!({
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage."},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"
        })
        .to_string(),
    )
}

/// HTTP 529 `overloaded_error`. <https://docs.anthropic.com/en/api/errors> (529: the API is temporarily overloaded).
fn anthropic_529(retry_after: Option<&str>) -> Step {
    let mut headers = json_ct();
    if let Some(r) = retry_after {
        headers.push(("retry-after", r.to_string()));
    }
    Step::Raw(
        529,
        headers,
        json!({
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fz"
        })
        .to_string(),
    )
}

// ---- OpenAI Chat Completions -----------------------------------------------------------------------------------

/// A chat completion object around one message. <https://platform.openai.com/docs/api-reference/chat/object>.
fn openai_completion(message: Value, finish_reason: &str, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb"
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

/// Usage with the prompt-caching detail. <https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage>
/// and <https://platform.openai.com/docs/guides/prompt-caching> (`prompt_tokens_details.cached_tokens`).
fn openai_usage(prompt: u64, cached: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// Parallel `tool_calls` in one message (<https://platform.openai.com/docs/guides/function-calling#parallel-function-calling>);
/// the second call's `arguments` is not valid JSON (the reference warns the model "does not always generate valid
/// JSON": <https://platform.openai.com/docs/api-reference/chat/object#chat/object-choices>), the third's is an
/// object instead of a string, as some self-hosted OpenAI-compatible servers send it.
fn openai_parallel_calls() -> Value {
    openai_completion(
        json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "annotations": [],
            "tool_calls": [
                {"id": "call_abc123", "type": "function",
                 "function": {"name": "read_file", "arguments": "{\"path\": \"greet.py\"}"}},
                {"id": "call_def456", "type": "function",
                 "function": {"name": "run", "arguments": "{\"command\": \"ls -la\", "}},
                {"id": "call_ghi789", "type": "function",
                 "function": {"name": "read_file", "arguments": {"path": "README.md"}}}
            ]
        }),
        "tool_calls",
        Some(openai_usage(2006, 1920, 300)),
    )
}

/// A refusal: `message.refusal` set, no content.
/// <https://platform.openai.com/docs/api-reference/chat/object#chat/object-choices> (`message.refusal`) and
/// <https://platform.openai.com/docs/guides/structured-outputs#refusals>.
fn openai_refusal() -> Value {
    openai_completion(
        json!({"role": "assistant", "content": null, "refusal": "I'm sorry, I cannot help with that request.", "annotations": []}),
        "stop",
        Some(openai_usage(812, 0, 12)),
    )
}

/// `finish_reason: "length"`: cut off by `max_tokens`. <https://platform.openai.com/docs/api-reference/chat/object#chat/object-choices>.
fn openai_length() -> Value {
    openai_completion(
        json!({"role": "assistant", "content": "Here is my plan: first I will", "refusal": null}),
        "length",
        Some(openai_usage(900, 0, 512)),
    )
}

/// A streamed answer although `stream` was not asked for: `text/event-stream` with `chat.completion.chunk` events.
/// <https://platform.openai.com/docs/api-reference/chat-streaming/streaming>.
fn openai_event_stream() -> Step {
    let chunk = json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4.1", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "logprobs": null, "finish_reason": null}]});
    Step::Raw(
        200,
        vec![("content-type", "text/event-stream; charset=utf-8".into())],
        format!("data: {chunk}\n\ndata: [DONE]\n\n"),
    )
}

// ---- ModelClient level -------------------------------------------------------------------------------------------

struct Client {
    _dir: tempfile::TempDir,
    job_dir: std::path::PathBuf,
    client: ModelClient,
}

/// The model-call statements of a bundle.
fn model_calls(job_dir: &Path) -> Vec<drafter::proof::bundle::ModelCall> {
    let bytes = std::fs::read(job_dir.join(drafter::proof::BUNDLE_FILE)).unwrap();
    drafter::proof::bundle::read_statements(&bytes)
        .unwrap()
        .into_iter()
        .filter_map(|(_, p)| match p {
            drafter::proof::bundle::Predicate::ModelCall(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn client(kind: ProviderKind, stand_in: &ModelStandIn) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let key = std::sync::Arc::new(RunnerKey::load_or_create(&dir.path().join("data")).unwrap());
    let job_dir = dir.path().join("jobs/job-1");
    std::fs::create_dir_all(&job_dir).unwrap();
    let log = BundleWriter::open(&job_dir, key, "job-1", "DEMO-1", "sha256:p").unwrap();
    let cfg = ModelConfig {
        provider: kind,
        base_url: stand_in.base_url(),
        model: "m".into(),
        api_key: None,
        max_tokens_per_call: 4096,
        request_timeout_secs: 10,
        prompt_caching: true,
    };
    Client {
        client: ModelClient::new(&cfg, log).unwrap(),
        job_dir,
        _dir: dir,
    }
}

fn request() -> ModelRequest {
    ModelRequest {
        system: "You are drafter.".into(),
        messages: vec![Message::user_text("Fix DEMO-1")],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            input_schema: json!({"type": "object"}),
        }],
    }
}

fn results_for(content: &[Block]) -> Message {
    Message {
        role: Role::User,
        content: content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { id, .. } => Some(Block::ToolResult {
                    id: id.clone(),
                    content: format!("result {id}"),
                    is_error: false,
                }),
                _ => None,
            })
            .collect(),
    }
}

#[tokio::test]
async fn anthropic_several_tool_use_blocks_in_one_message() {
    let stand_in = ModelStandIn::start(vec![ok(anthropic_parallel_tool_use())]).await;
    let mut c = client(ProviderKind::Anthropic, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    let calls: Vec<(&str, &str)> = r.tool_uses().iter().map(|(i, n, _)| (*i, *n)).collect();
    assert_eq!(
        calls,
        [
            ("toolu_01A09q90qw90lq917835lq9", "read_file"),
            ("toolu_01B19r91rw91mr928946mr0", "read_file"),
            ("toolu_01C29s92sx92ns939057ns1", "list_files"),
        ]
    );
    assert_eq!(r.text(), "I'll read both files and list the repository.");
}

#[tokio::test]
async fn anthropic_thinking_blocks_go_back_unchanged() {
    let stand_in = ModelStandIn::start(vec![ok(anthropic_thinking())]).await;
    let mut c = client(ProviderKind::Anthropic, &stand_in);
    let mut req = request();
    let r = c.client.call(&req).await.unwrap();
    assert_eq!(r.tool_uses().len(), 1);
    req.messages.push(Message::assistant(r.content.clone()));
    req.messages.push(results_for(&r.content));
    c.client.call(&req).await.unwrap();

    let sent = stand_in.requests()[1].json().unwrap();
    let assistant = &sent["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    let blocks = assistant["content"].as_array().unwrap();
    let original = anthropic_thinking();
    // The thinking blocks come first, byte for byte what the API sent (signature, redacted data).
    assert_eq!(blocks.len(), 3, "{assistant}");
    assert_eq!(blocks[0], original["content"][0]);
    assert_eq!(blocks[1], original["content"][1]);
    assert_eq!(blocks[2]["type"], "tool_use");
    assert_eq!(blocks[2]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
}

#[tokio::test]
async fn anthropic_pause_turn_and_max_tokens_are_told_apart() {
    let stand_in = ModelStandIn::start(vec![
        ok(anthropic_pause_turn()),
        ok(anthropic_max_tokens_mid_tool()),
    ])
    .await;
    let mut c = client(ProviderKind::Anthropic, &stand_in);
    let mut req = request();
    let paused = c.client.call(&req).await.unwrap();
    assert_eq!(format!("{:?}", paused.stop), "PauseTurn");
    // The server tool block is kept, to go back with the rest of the turn.
    assert!(
        format!("{:?}", paused.content).contains("srvtoolu_01WYG3ziw53XMcoyKL4XcZmE"),
        "{:?}",
        paused.content
    );
    req.messages
        .push(Message::assistant(paused.content.clone()));
    let cut = c.client.call(&req).await.unwrap();
    assert_eq!(format!("{:?}", cut.stop), "MaxTokens");
    // The paused turn went back as it came, and nothing was added after it.
    let sent = stand_in.requests()[1].json().unwrap();
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["content"][1], anthropic_pause_turn()["content"][1]);
}

#[tokio::test]
async fn rate_limits_and_overload_are_retryable_and_named() {
    let stand_in = ModelStandIn::start(vec![
        anthropic_429("7"),
        anthropic_529(None),
        anthropic_429("Wed, 21 Oct 2037 07:28:00 GMT"),
    ])
    .await;
    let mut c = client(ProviderKind::Anthropic, &stand_in);
    let e = c.client.call(&request()).await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(e.to_string().contains("rate_limit_error"), "{e}");
    let e = c.client.call(&request()).await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.status(), Some(529));
    assert!(e.to_string().contains("overloaded_error"), "{e}");
    assert!(e.to_string().contains("Overloaded"), "{e}");
    // An HTTP-date is a wait too (RFC 9110 10.2.3); far in the future, it is still a bounded wait for the loop.
    let e = c.client.call(&request()).await.unwrap_err();
    assert!(e.retry_after().is_some(), "{e}");
}

#[tokio::test]
async fn openai_parallel_calls_odd_arguments_and_cached_usage() {
    let stand_in = ModelStandIn::start(vec![ok(openai_parallel_calls())]).await;
    let mut c = client(ProviderKind::Openai, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    let calls = r.tool_uses();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[0],
        ("call_abc123", "read_file", &json!({"path": "greet.py"}))
    );
    // Not JSON: kept raw, for the loop to tell the model.
    assert_eq!(
        calls[1].2,
        &Value::String("{\"command\": \"ls -la\", ".into())
    );
    // An object instead of a string: accepted.
    assert_eq!(
        calls[2],
        ("call_ghi789", "read_file", &json!({"path": "README.md"}))
    );
    // prompt_tokens includes the cached ones: 86 at the full price, 1920 read from the cache.
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.cache_read_tokens,
            r.usage.cache_write_tokens
        ),
        (86, 1920, 0)
    );
    assert_eq!(r.usage.prompt_tokens(), 2006);
    let m = &model_calls(&c.job_dir)[0];
    assert_eq!(
        (m.usage.input_tokens, m.usage.cache_read_tokens),
        (86, 1920)
    );
    assert!(!m.usage_estimated);
}

#[tokio::test]
async fn openai_refusal_is_not_an_empty_answer() {
    let stand_in = ModelStandIn::start(vec![ok(openai_refusal())]).await;
    let mut c = client(ProviderKind::Openai, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    let stop = format!("{:?}", r.stop);
    assert!(stop.contains("Refusal"), "{stop}");
    assert!(stop.contains("I cannot help with that request"), "{stop}");
}

#[tokio::test]
async fn openai_length_is_max_tokens() {
    let stand_in = ModelStandIn::start(vec![ok(openai_length())]).await;
    let mut c = client(ProviderKind::Openai, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    assert_eq!(format!("{:?}", r.stop), "MaxTokens");
    assert_eq!(r.text(), "Here is my plan: first I will");
}

#[tokio::test]
async fn missing_usage_is_estimated_not_zero() {
    let body = openai_completion(
        json!({"role": "assistant", "content": "done", "refusal": null}),
        "stop",
        None,
    );
    let stand_in = ModelStandIn::start(vec![ok(body)]).await;
    let mut c = client(ProviderKind::Openai, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    // Budgets count tokens: a server that reports none must not make a job free.
    assert!(r.usage.input_tokens > 0, "{:?}", r.usage);
    assert!(r.usage.output_tokens > 0, "{:?}", r.usage);
    assert!(r.usage.estimated);
    // The statement says the figures are estimates.
    let m = &model_calls(&c.job_dir)[0];
    assert!(m.usage_estimated);
    assert_eq!(m.usage.input_tokens, r.usage.input_tokens);
}

#[tokio::test]
async fn anthropic_cache_usage_is_read_and_recorded() {
    // https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching#tracking-cache-performance
    let mut body = anthropic_parallel_tool_use();
    body["usage"] = json!({"input_tokens": 50, "output_tokens": 503,
        "cache_creation_input_tokens": 248, "cache_read_input_tokens": 1800});
    let stand_in = ModelStandIn::start(vec![ok(body)]).await;
    let mut c = client(ProviderKind::Anthropic, &stand_in);
    let r = c.client.call(&request()).await.unwrap();
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.cache_write_tokens,
            r.usage.cache_read_tokens
        ),
        (50, 248, 1800)
    );
    let m = &model_calls(&c.job_dir)[0];
    assert_eq!(
        (m.usage.cache_write_tokens, m.usage.cache_read_tokens),
        (248, 1800)
    );
    // The request carried the breakpoints: system, tools, and the last message.
    let sent = stand_in.requests()[0].json().unwrap();
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["tools"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(
        sent["messages"][0]["content"][0]["cache_control"]["type"],
        "ephemeral"
    );
}

#[tokio::test]
async fn an_event_stream_nobody_asked_for_is_named() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let stand_in = ModelStandIn::start(vec![openai_event_stream()]).await;
        let mut c = client(kind, &stand_in);
        let t0 = Instant::now();
        let e = c.client.call(&request()).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!e.is_retryable(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("text/event-stream"), "{msg}");
        assert!(msg.contains("stream"), "{msg}");
    }
}

// ---- through the agent loop (real binary, real sandbox) ------------------------------------------------------------

async fn run(stack: &Stack) -> (std::process::Output, String) {
    stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await
}

/// Several tool_use blocks with thinking, a paused turn, a tool call cut off by max_tokens, an overloaded endpoint
/// and a rate limit: the job ends normally, and what went back to the model is what the API requires.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_shapes_through_the_agent_loop() {
    let mut thinking_and_calls = anthropic_thinking();
    thinking_and_calls["content"]
        .as_array_mut()
        .unwrap()
        .extend(
            anthropic_parallel_tool_use()["content"].as_array().unwrap()[1..]
                .iter()
                .cloned(),
        );
    let stack = Stack::start(Options {
        script: vec![
            ok(thinking_and_calls.clone()),
            anthropic_529(Some("1")),
            anthropic_429("1"),
            ok(anthropic_pause_turn()),
            ok(anthropic_max_tokens_mid_tool()),
            finish("Nothing to change: greet.py already does what the ticket asks."),
        ],
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let (out, log) = run(&stack).await;
    assert!(out.status.success(), "{log}");
    // Both retry waits were honoured.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let reqs: Vec<Value> = stack
        .model
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(reqs.len(), 6, "{log}");

    // Turn 2: the whole assistant turn went back, thinking blocks first and unchanged, and the four tool results
    // answer the four calls in order.
    let msgs = reqs[1]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    let sent_back = msgs[1]["content"].as_array().unwrap();
    assert_eq!(sent_back[0], thinking_and_calls["content"][0]);
    assert_eq!(sent_back[1], thinking_and_calls["content"][1]);
    let ids: Vec<&str> = msgs[2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tool_use_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "toolu_01A09q90qw90lq917835lq9",
            "toolu_01B19r91rw91mr928946mr0",
            "toolu_01C29s92sx92ns939057ns1"
        ]
    );
    assert!(msgs[2]["content"][0]["content"]
        .as_str()
        .unwrap()
        .contains("def greet"));
    // The retried requests are the same request.
    assert_eq!(reqs[1], reqs[2]);
    assert_eq!(reqs[2], reqs[3]);

    // After pause_turn: the paused assistant turn is sent back as the last message, nothing added.
    let msgs = reqs[4]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[3]["role"], "assistant");
    assert_eq!(
        msgs[3]["content"][1]["id"],
        "srvtoolu_01WYG3ziw53XMcoyKL4XcZmE"
    );

    // After max_tokens in the middle of a tool call: the call was not run, and the model is told why.
    let msgs = reqs[5]["messages"].as_array().unwrap();
    let last = msgs.last().unwrap();
    assert_eq!(last["role"], "user");
    let result = &last["content"][0];
    assert_eq!(result["tool_use_id"], "toolu_01MaxTok9q90qw90lq91783");
    assert_eq!(result["is_error"], true);
    assert!(
        result["content"].as_str().unwrap().contains("max_tokens"),
        "{result}"
    );
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
}

/// Parallel calls (one with arguments that are not JSON, one with an object), a reply cut off by `length`, and a
/// server that reports no usage: the job goes on; the model is told about its bad arguments.
#[tokio::test(flavor = "multi_thread")]
async fn openai_shapes_through_the_agent_loop() {
    let no_usage = openai_completion(
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_fin", "type": "function", "function": {"name": "finish",
             "arguments": "{\"summary\": \"Nothing to change.\"}"}}]}),
        "tool_calls",
        None,
    );
    let stack = Stack::start(Options {
        provider: "openai",
        script: vec![
            ok(openai_parallel_calls()),
            ok(openai_length()),
            ok(no_usage),
        ],
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack).await;
    assert!(out.status.success(), "{log}");
    let reqs: Vec<Value> = stack
        .model
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(reqs.len(), 3, "{log}");
    let msgs = reqs[1]["messages"].as_array().unwrap();
    let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 3);
    assert_eq!(tool_msgs[0]["tool_call_id"], "call_abc123");
    assert!(tool_msgs[0]["content"]
        .as_str()
        .unwrap()
        .contains("def greet"));
    assert_eq!(tool_msgs[1]["tool_call_id"], "call_def456");
    let bad = tool_msgs[1]["content"].as_str().unwrap();
    assert!(
        bad.starts_with("ERROR:") && bad.contains("not valid JSON"),
        "{bad}"
    );
    assert_eq!(tool_msgs[2]["tool_call_id"], "call_ghi789");
    assert!(!tool_msgs[2]["content"]
        .as_str()
        .unwrap()
        .starts_with("ERROR"));
    // After `length` the model is asked to go on.
    let last = reqs[2]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "user");
    assert!(
        last["content"].as_str().unwrap().contains("cut off"),
        "{last}"
    );
}

/// A refusal fails the job, and the failure quotes the provider's refusal.
#[tokio::test(flavor = "multi_thread")]
async fn openai_refusal_fails_the_job_naming_it() {
    let stack = Stack::start(Options {
        provider: "openai",
        script: vec![ok(openai_refusal())],
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack).await;
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("refused"), "{log}");
    assert!(log.contains("I cannot help with that request"), "{log}");
    let comments = stack.jira.comment_texts("DEMO-1");
    assert!(
        comments
            .last()
            .unwrap()
            .contains("I cannot help with that request"),
        "{comments:?}"
    );
}

// ---- prompt caching and the context budget, through the agent loop -----------------------------------------------

/// The only job directory of a stack's data dir.
/// Twenty tool calls of a typical mix (reads, listings, searches, commands with a page of output), then `finish`.
fn twenty_calls() -> Vec<Step> {
    let mut steps: Vec<Step> = (0..20)
        .map(|i| {
            let (name, input) = match i % 5 {
                0 => ("read_file", json!({"path": "greet.py"})),
                1 => (
                    "run",
                    json!({"command": format!("seq {} {}", i * 100, i * 100 + 150)}),
                ),
                2 => ("search", json!({"pattern": "def "})),
                3 => ("read_file", json!({"path": "test_greet.py"})),
                _ => ("list_files", json!({})),
            };
            Step::Tools(vec![(name.into(), input)])
        })
        .collect();
    steps.push(finish("Looked around; nothing to change."));
    steps
}

/// Anthropic pricing of the prompt in input-token equivalents: uncached input, cache writes at 1.25x and cache
/// reads at 0.1x (<https://docs.anthropic.com/en/docs/about-claude/pricing>, prompt caching multipliers).
fn billed_equivalent(calls: &[drafter::proof::bundle::ModelCall]) -> f64 {
    calls
        .iter()
        .map(|m| {
            m.usage.input_tokens as f64
                + 1.25 * m.usage.cache_write_tokens as f64
                + 0.1 * m.usage.cache_read_tokens as f64
        })
        .sum()
}

async fn twenty_call_job(caching: bool) -> (Vec<drafter::proof::bundle::ModelCall>, String) {
    let stack = Stack::start(Options {
        script: twenty_calls(),
        max_turns: 30,
        model_toml: format!("prompt_caching = {caching}"),
        ..Options::default()
    })
    .await;
    stack.model.simulate_cache();
    let (out, log) = run(&stack).await;
    assert!(out.status.success(), "{log}");
    let dir = stack.only_job_dir();
    let verify = std::process::Command::new(BIN)
        .args(["verify", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success());
    (
        model_calls(&dir),
        String::from_utf8_lossy(&verify.stdout).into_owned(),
    )
}

/// The figure in BENCHMARKS.md: billed-equivalent input tokens of a 20-tool-call job with prompt caching, against
/// resending everything uncached. The stand-in models Anthropic's cache (see `ModelStandIn::simulate_cache`).
#[tokio::test(flavor = "multi_thread")]
async fn prompt_caching_cuts_billed_input_of_a_twenty_call_job() {
    let (plain, _) = twenty_call_job(false).await;
    let (cached, verify) = twenty_call_job(true).await;
    assert_eq!(plain.len(), 21);
    assert_eq!(cached.len(), 21);
    // Without breakpoints nothing is cached: every prompt token is billed in full.
    assert!(plain
        .iter()
        .all(|m| m.usage.cache_read_tokens + m.usage.cache_write_tokens == 0));
    let prompt = |m: &drafter::proof::bundle::ModelCall| {
        m.usage.input_tokens + m.usage.cache_read_tokens + m.usage.cache_write_tokens
    };
    // Same conversation either way (the breakpoints add a few bytes each).
    let resent: u64 = plain.iter().map(prompt).sum();
    let with_cache = billed_equivalent(&cached);
    let ratio = with_cache / resent as f64;
    println!(
        "20-tool-call job, 21 model calls: prompt tokens resent without caching {resent}; billed-equivalent with \
         caching {with_cache:.0} (uncached {} + 1.25 x {} written + 0.1 x {} read); ratio {ratio:.3}",
        cached.iter().map(|m| m.usage.input_tokens).sum::<u64>(),
        cached.iter().map(|m| m.usage.cache_write_tokens).sum::<u64>(),
        cached.iter().map(|m| m.usage.cache_read_tokens).sum::<u64>(),
    );
    assert!(ratio <= 0.35, "ratio {ratio:.3}");
    // From the second call on, the conversation so far is read from the cache.
    assert!(cached[1..].iter().all(|m| m.usage.cache_read_tokens > 0));
    assert!(verify.contains("prompt cache:"), "{verify}");
}

/// A conversation past `agent.context_budget_tokens` loses its old tool outputs, not the job: they are replaced by
/// a summary and the digest of the output the tool-call statement holds.
#[tokio::test(flavor = "multi_thread")]
async fn old_tool_outputs_are_elided_past_the_context_budget() {
    let mut script: Vec<Step> = (0..4)
        .map(|i| {
            Step::Tools(vec![(
                "run".into(),
                json!({"command": format!("seq {} {}", i * 10_000, i * 10_000 + 1000)}),
            )])
        })
        .collect();
    script.push(finish("Nothing to change."));
    let stack = Stack::start(Options {
        script,
        agent_toml: "context_budget_tokens = 4000".into(),
        ..Options::default()
    })
    .await;
    let (out, log) = run(&stack).await;
    assert!(out.status.success(), "{log}");
    let reqs: Vec<Value> = stack
        .model
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(reqs.len(), 5);
    let results = |req: &Value| -> Vec<String> {
        req["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["type"] == "tool_result")
            .map(|b| b["content"].as_str().unwrap().to_string())
            .collect()
    };
    // Each output is ~5 KB (~1300 tokens): by the last request the oldest ones are elided, the newest is whole.
    let last = results(&reqs[4]);
    assert_eq!(last.len(), 4);
    assert!(last[0].starts_with("[output elided"), "{}", last[0]);
    assert!(last[0].contains("run seq 0 1000 (ok)"), "{}", last[0]);
    assert!(last[3].contains("31000"), "{}", last[3]);
    // The digest is the one the tool-call statement recorded for the full output.
    let bytes = std::fs::read(stack.only_job_dir().join(drafter::proof::BUNDLE_FILE)).unwrap();
    let first_output = drafter::proof::bundle::read_statements(&bytes)
        .unwrap()
        .into_iter()
        .find(|(_, p)| matches!(p, drafter::proof::bundle::Predicate::ToolCall(_)))
        .map(|(st, _)| {
            st.subject
                .iter()
                .find(|s| s.name == "output")
                .unwrap()
                .digest["sha256"]
                .clone()
        })
        .unwrap();
    assert!(
        last[0].contains(&format!("sha256:{first_output}")),
        "{}",
        last[0]
    );
}
