//! The model client against the scripted stand-in, for both API families: request shapes on the wire, decoding,
//! one verified receipt per HTTP exchange, and errors.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drafter::config::{ModelConfig, ProviderKind, Secret};
use drafter::model::{
    Block, Message, ModelClient, ModelError, ModelRequest, Role, StopReason, ToolSpec,
};
use drafter::proof::bundle::{read_statements, Predicate};
use drafter::proof::verify::verify_unfinished;
use drafter::proof::{self, sha256_hex, BundleWriter, Pins, RunnerKey};
use serde_json::{json, Value};
use support::model::{ModelStandIn, Step, INPUT_TOKENS, OUTPUT_TOKENS};

const KEY: &str = "sk-test-NEVER-LOG-ME-0123456789";

struct Setup {
    _dir: tempfile::TempDir,
    job_dir: PathBuf,
    key: Arc<RunnerKey>,
    client: ModelClient,
}

fn config(kind: ProviderKind, base_url: String, api_key: Option<&str>) -> ModelConfig {
    ModelConfig {
        provider: kind,
        base_url,
        model: "test-model".into(),
        api_key: api_key.map(|k| Secret::new(k).into()),
        max_tokens_per_call: 512,
        request_timeout_secs: 10,
        prompt_caching: false,
    }
}

fn setup(cfg: &ModelConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(RunnerKey::load_or_create(&dir.path().join("data")).unwrap());
    let job_dir = dir.path().join("jobs").join("job-7");
    std::fs::create_dir_all(&job_dir).unwrap();
    let log = BundleWriter::open(&job_dir, key.clone(), "job-7", "DEMO-7", "sha256:p").unwrap();
    let client = ModelClient::new(cfg, log).unwrap();
    Setup {
        _dir: dir,
        job_dir,
        key,
        client,
    }
}

/// One model-call statement, flattened for assertions.
struct Receipt {
    seq: u64,
    job_id: String,
    ticket: String,
    signer: String,
    provider: String,
    model: String,
    endpoint: String,
    http_status: u16,
    request_sha256: String,
    response_sha256: String,
    input_tokens: u64,
    output_tokens: u64,
}

fn receipts(job_dir: &Path) -> (Vec<u8>, Vec<Receipt>) {
    let bytes = std::fs::read(job_dir.join(proof::BUNDLE_FILE)).unwrap();
    let parsed = read_statements(&bytes)
        .unwrap()
        .into_iter()
        .map(|(st, p)| {
            let Predicate::ModelCall(m) = p else {
                panic!("not a model call")
            };
            assert_eq!(st.predicate_type, proof::bundle::MODEL_CALL);
            let digest = |name: &str| {
                st.subject.iter().find(|x| x.name == name).unwrap().digest["sha256"].clone()
            };
            Receipt {
                seq: m.chain.seq,
                job_id: m.chain.job_id,
                ticket: m.chain.ticket,
                signer: m.chain.signer,
                provider: m.provider,
                model: m.model,
                endpoint: m.endpoint,
                http_status: m.http_status,
                request_sha256: digest("request"),
                response_sha256: digest("response"),
                input_tokens: m.usage.input_tokens,
                output_tokens: m.usage.output_tokens,
            }
        })
        .collect();
    (bytes, parsed)
}

fn pins(key: &RunnerKey) -> Pins {
    Pins {
        keys: vec![key.verifying_key()],
        policy_hash: None,
        ..Pins::default()
    }
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "read_file".into(),
            description: "Read a file from the workspace".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        },
        ToolSpec {
            name: "run".into(),
            description: "Run a shell command in the sandbox".into(),
            input_schema: json!({"type": "object", "properties": {"cmd": {"type": "string"}}}),
        },
    ]
}

/// Answers every tool call of `content` with a result whose text names the call.
fn results_for(content: &[Block]) -> Message {
    Message {
        role: Role::User,
        content: content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { id, name, .. } => Some(Block::ToolResult {
                    id: id.clone(),
                    content: format!("result of {name} {id}"),
                    is_error: name == "run",
                }),
                _ => None,
            })
            .collect(),
    }
}

async fn three_call_conversation(kind: ProviderKind) {
    let stand_in = ModelStandIn::start(vec![
        Step::Tools(vec![
            ("read_file".into(), json!({"path": "src/lib.rs"})),
            ("run".into(), json!({"cmd": "cargo test"})),
        ]),
        Step::Tools(vec![("read_file".into(), json!({"path": "Cargo.toml"}))]),
        Step::Text("All tests pass.".into()),
    ])
    .await;
    stand_in.set_expected_key(Some(KEY));
    let mut s = setup(&config(kind, stand_in.base_url(), Some(KEY)));

    let mut req = ModelRequest {
        system: "You are drafter.".into(),
        messages: vec![Message::user_text("Fix DEMO-7")],
        tools: tools(),
    };

    // Call 1: two tool calls.
    let r1 = s.client.call(&req).await.unwrap();
    assert_eq!(r1.stop, StopReason::ToolUse);
    assert_eq!(r1.usage.input_tokens, INPUT_TOKENS);
    assert_eq!(r1.usage.output_tokens, OUTPUT_TOKENS);
    assert_eq!(
        r1.tool_uses(),
        vec![
            ("call_1", "read_file", &json!({"path": "src/lib.rs"})),
            ("call_2", "run", &json!({"cmd": "cargo test"})),
        ]
    );
    req.messages.push(Message::assistant(r1.content.clone()));
    req.messages.push(results_for(&r1.content));

    // Call 2: one tool call.
    let r2 = s.client.call(&req).await.unwrap();
    assert_eq!(
        r2.tool_uses(),
        vec![("call_3", "read_file", &json!({"path": "Cargo.toml"}))]
    );
    req.messages.push(Message::assistant(r2.content.clone()));
    req.messages.push(results_for(&r2.content));

    // Call 3: final text.
    let r3 = s.client.call(&req).await.unwrap();
    assert_eq!(r3.stop, StopReason::EndTurn);
    assert_eq!(r3.text(), "All tests pass.");
    assert!(r3.tool_uses().is_empty());

    // What the stand-in received has the documented shape.
    let recorded = stand_in.requests();
    assert_eq!(recorded.len(), 3);
    for r in &recorded {
        let body = r.json().unwrap();
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let second = recorded[1].json().unwrap();
    match kind {
        ProviderKind::Anthropic => {
            assert_eq!(recorded[0].path, "/v1/messages");
            assert_eq!(recorded[0].header("x-api-key"), Some(KEY));
            assert_eq!(recorded[0].header("anthropic-version"), Some("2023-06-01"));
            assert!(recorded[0].header("authorization").is_none());
            assert_eq!(second["system"], "You are drafter.");
            assert_eq!(second["tools"][1]["name"], "run");
            assert_eq!(second["tools"][1]["input_schema"]["type"], "object");
            let msgs = second["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), 3);
            assert_eq!(msgs[0]["role"], "user");
            assert_eq!(
                msgs[0]["content"][0],
                json!({"type": "text", "text": "Fix DEMO-7"})
            );
            assert_eq!(msgs[1]["role"], "assistant");
            assert_eq!(
                msgs[1]["content"][0],
                json!({"type": "tool_use", "id": "call_1", "name": "read_file", "input": {"path": "src/lib.rs"}})
            );
            assert_eq!(msgs[2]["role"], "user");
            assert_eq!(
                msgs[2]["content"],
                json!([
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "result of read_file call_1", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "result of run call_2", "is_error": true},
                ])
            );
        }
        ProviderKind::Openai => {
            assert_eq!(recorded[0].path, "/v1/chat/completions");
            assert_eq!(
                recorded[0].header("authorization"),
                Some(format!("Bearer {KEY}").as_str())
            );
            assert!(recorded[0].header("x-api-key").is_none());
            assert_eq!(second["tools"][1]["type"], "function");
            assert_eq!(second["tools"][1]["function"]["name"], "run");
            assert_eq!(
                second["tools"][1]["function"]["parameters"]["type"],
                "object"
            );
            let msgs = second["messages"].as_array().unwrap();
            assert_eq!(msgs.len(), 5);
            assert_eq!(
                msgs[0],
                json!({"role": "system", "content": "You are drafter."})
            );
            assert_eq!(msgs[1], json!({"role": "user", "content": "Fix DEMO-7"}));
            assert_eq!(msgs[2]["role"], "assistant");
            let calls = msgs[2]["tool_calls"].as_array().unwrap();
            assert_eq!(calls[0]["id"], "call_1");
            assert_eq!(calls[0]["type"], "function");
            assert_eq!(calls[0]["function"]["name"], "read_file");
            // `arguments` is a JSON string holding the object.
            let args: Value =
                serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"path": "src/lib.rs"}));
            assert_eq!(
                msgs[3],
                json!({"role": "tool", "tool_call_id": "call_1", "content": "result of read_file call_1"})
            );
            assert_eq!(
                msgs[4],
                json!({"role": "tool", "tool_call_id": "call_2", "content": "ERROR: result of run call_2"})
            );
        }
    }

    // One receipt per call, hashing exactly the bytes the stand-in received.
    let (bytes, rs) = receipts(&s.job_dir);
    assert_eq!(rs.len(), 3);
    assert_eq!(s.client.bundle().count(), 3);
    for (i, (r, req)) in rs.iter().zip(&recorded).enumerate() {
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.request_sha256, sha256_hex(&req.body));
        assert_eq!(r.http_status, 200);
        assert_eq!(r.provider, kind.as_str());
        assert_eq!(r.model, "test-model");
        assert_eq!(r.endpoint, req.path);
        assert_eq!(r.job_id, "job-7");
        assert_eq!(r.ticket, "DEMO-7");
        assert_eq!(r.input_tokens, INPUT_TOKENS);
        assert_eq!(r.output_tokens, OUTPUT_TOKENS);
        assert_eq!(r.signer, s.key.public_hex());
    }

    // The key never reaches the receipts.
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains(KEY));
    assert!(!text.contains("NEVER-LOG-ME"));

    // verify accepts it (directory form, pinned to runner.pub), and rejects one changed byte.
    let pinned = proof::parse_public_key(
        &std::fs::read_to_string(s._dir.path().join("data/runner.pub")).unwrap(),
    )
    .unwrap();
    let pinned = Pins {
        keys: vec![pinned],
        policy_hash: Some("sha256:p".into()),
        ..Pins::default()
    };
    let report = verify_unfinished(&s.job_dir, &pinned).unwrap();
    assert_eq!(report.count, 3);
    assert_eq!(report.head, s.client.bundle().head());
    assert_eq!(
        report.totals.usage.input_tokens + report.totals.usage.output_tokens,
        3 * (INPUT_TOKENS + OUTPUT_TOKENS)
    );
    assert_eq!(report.ticket, "DEMO-7");
    // Without a run statement the bundle is not a finished job's.
    let err = proof::verify(&s.job_dir, &pinned).unwrap_err().to_string();
    assert!(err.contains("without a run statement"), "{err}");

    let log = s.client.into_bundle();
    assert_eq!(log.head(), report.head);
    let file = log.path().to_path_buf();
    // The first statement's token count changed (20 -> 10) and re-encoded, without re-signing.
    let first = bytes.split(|&b| b == b'\n').next().unwrap();
    let mut env: Value = serde_json::from_slice(first).unwrap();
    let payload = base64_decode(env["payload"].as_str().unwrap());
    let edited = String::from_utf8(payload)
        .unwrap()
        .replace("\"output_tokens\":20", "\"output_tokens\":10");
    env["payload"] = Value::String(base64_encode(edited.as_bytes()));
    let mut tampered = serde_json::to_vec(&env).unwrap();
    tampered.extend_from_slice(&bytes[first.len()..]);
    std::fs::write(&file, &tampered).unwrap();
    let err = verify_unfinished(&file, &pinned).unwrap_err().to_string();
    assert!(err.contains("line 1: signature does not verify"), "{err}");
}

#[tokio::test]
async fn anthropic_three_call_conversation() {
    three_call_conversation(ProviderKind::Anthropic).await;
}

#[tokio::test]
async fn openai_three_call_conversation() {
    three_call_conversation(ProviderKind::Openai).await;
}

/// The bundle is synced once per turn, not per statement, and never later than the next request: when a request
/// reaches the provider, every statement written before it (the previous exchange's receipt, the tool calls it led
/// to) is on disk; the receipt of the last exchange is not yet, until someone syncs.
#[tokio::test]
async fn a_turns_statements_are_durable_before_the_next_request_leaves() {
    let stand_in = ModelStandIn::start(vec![
        Step::Tools(vec![("read_file".into(), json!({"path": "a"}))]),
        Step::Tools(vec![("read_file".into(), json!({"path": "b"}))]),
        Step::Text("done".into()),
    ])
    .await;
    let mut s = setup(&config(ProviderKind::Anthropic, stand_in.base_url(), None));
    let synced = s.client.bundle().synced();
    stand_in.set_probe(move || synced.get());
    let bundle_len = |job_dir: &Path| {
        std::fs::metadata(job_dir.join("bundle.jsonl"))
            .unwrap()
            .len()
    };

    let mut req = simple();
    let mut before = Vec::new();
    for turn in 0..3u8 {
        before.push(bundle_len(&s.job_dir));
        let r = s.client.call(&req).await.unwrap();
        req.messages.push(Message::assistant(r.content.clone()));
        if r.tool_uses().is_empty() {
            break;
        }
        // The tool call the answer asked for, recorded the way the agent loop records it.
        s.client
            .bundle_mut()
            .tool_call(proof::ToolCallInput {
                turn: u32::from(turn) + 1,
                name: "read_file",
                arguments: b"{}",
                output: b"x",
                shown: b"x",
                ok: true,
                exit_code: None,
                refused_by: None,
                duration_ms: 1,
                started_at: chrono::Utc::now(),
            })
            .unwrap();
        req.messages.push(results_for(&r.content));
    }
    assert_eq!(before.len(), 3);
    assert_eq!(before[0], 0);
    assert!(before[1] < before[2], "{before:?}");
    // At each request, exactly what was written before it was durable.
    assert_eq!(stand_in.probed(), before);
    // The last receipt waits for the next sync (the agent loop's at its end, or the run statement's).
    let written = bundle_len(&s.job_dir);
    assert_eq!(s.client.bundle().written(), written);
    assert_eq!(s.client.bundle().synced().get(), before[2]);
    assert!(before[2] < written);
    s.client.bundle_mut().sync().await.unwrap();
    assert_eq!(s.client.bundle().synced().get(), written);
}

fn simple() -> ModelRequest {
    ModelRequest {
        system: String::new(),
        messages: vec![Message::user_text("hi")],
        tools: vec![],
    }
}

#[tokio::test]
async fn http_errors_are_recorded_and_classified() {
    for kind in [ProviderKind::Anthropic, ProviderKind::Openai] {
        let stand_in = ModelStandIn::start(vec![
            Step::Status(500),
            Step::Status(429),
            Step::Status(400),
            Step::Text("ok".into()),
        ])
        .await;
        let mut s = setup(&config(kind, stand_in.base_url(), Some(KEY)));

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(e.status(), Some(500));
        assert!(e.to_string().contains("scripted HTTP 500"), "{e}");
        assert_eq!(s.client.bundle().count(), 1);

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(1)));

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert_eq!(e.status(), Some(400));

        let ok = s.client.call(&simple()).await.unwrap();
        assert_eq!(ok.text(), "ok");

        let (_, rs) = receipts(&s.job_dir);
        let statuses: Vec<u16> = rs.iter().map(|r| r.http_status).collect();
        assert_eq!(statuses, vec![500, 429, 400, 200]);
        assert_eq!((rs[0].input_tokens, rs[0].output_tokens), (0, 0));
        let recorded = stand_in.requests();
        for (r, req) in rs.iter().zip(&recorded) {
            assert_eq!(r.request_sha256, sha256_hex(&req.body));
        }
        assert_eq!(
            verify_unfinished(&s.job_dir, &Pins::default())
                .unwrap()
                .count,
            4
        );
    }
}

#[tokio::test]
async fn invalid_tool_arguments_surface_as_a_string() {
    let raw = r#"{"cmd": "ls -la", oops"#;
    let stand_in = ModelStandIn::start(vec![Step::RawArguments("run".into(), raw.into())]).await;
    let mut s = setup(&config(ProviderKind::Openai, stand_in.base_url(), None));
    let mut req = simple();
    let r = s.client.call(&req).await.unwrap();
    assert_eq!(r.stop, StopReason::ToolUse);
    assert_eq!(
        r.tool_uses(),
        vec![("call_1", "run", &Value::String(raw.into()))]
    );

    // Sent back in the history exactly as the model produced it, next to the agent's complaint.
    req.messages.push(Message::assistant(r.content.clone()));
    req.messages.push(Message {
        role: Role::User,
        content: vec![Block::ToolResult {
            id: "call_1".into(),
            content: "arguments are not a JSON object".into(),
            is_error: true,
        }],
    });
    let done = s.client.call(&req).await.unwrap();
    assert_eq!(done.text(), "done");
    let second = stand_in.requests()[1].json().unwrap();
    assert_eq!(
        second["messages"][1]["tool_calls"][0]["function"]["arguments"],
        raw
    );
    // No key configured: no Authorization header at all.
    assert!(stand_in.requests()[0].header("authorization").is_none());
}

#[tokio::test]
async fn hostile_bodies_are_rejected_but_recorded() {
    for kind in [ProviderKind::Anthropic, ProviderKind::Openai] {
        let html = "<html><body>502 Bad Gateway</body></html>";
        let echo = format!(r#"{{"error":{{"message":"bad key {KEY}"}}}}"#);
        let huge = "x".repeat(drafter::model::MAX_RESPONSE_BYTES + 1024);
        let stand_in = ModelStandIn::start(vec![
            Step::Body(200, html.into()),
            Step::Body(200, r#"{"content": "nope", "choices": 5}"#.into()),
            Step::Body(401, echo),
            Step::Body(200, huge),
        ])
        .await;
        let mut s = setup(&config(kind, stand_in.base_url(), Some(KEY)));

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(matches!(e, ModelError::BadResponse { .. }), "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("502 Bad Gateway"), "{e}");

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(matches!(e, ModelError::BadResponse { .. }), "{e}");

        // An endpoint echoing the key back does not get it into our error.
        let e = s.client.call(&simple()).await.unwrap_err();
        assert_eq!(e.status(), Some(401));
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains(KEY), "{e}");
        assert!(!format!("{e:?}").contains(KEY));

        let e = s.client.call(&simple()).await.unwrap_err();
        assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");

        let (_, rs) = receipts(&s.job_dir);
        assert_eq!(rs.len(), 4);
        // The response hash is of the exact bytes received.
        assert_eq!(rs[0].response_sha256, sha256_hex(html.as_bytes()));
        assert_eq!(rs[2].http_status, 401);
        verify_unfinished(&s.job_dir, &pins(&s.key)).unwrap();
    }
}

#[tokio::test]
async fn transport_failure_records_status_zero() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = setup(&config(
        ProviderKind::Openai,
        format!("http://user:{KEY}@127.0.0.1:{port}"),
        Some(KEY),
    ));
    let e = s.client.call(&simple()).await.unwrap_err();
    assert!(matches!(e, ModelError::Transport { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(!e.to_string().contains(KEY), "{e}");
    let (bytes, rs) = receipts(&s.job_dir);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].http_status, 0);
    assert_eq!(rs[0].response_sha256, sha256_hex(b""));
    // The endpoint is the path only: no host, no credentials.
    assert_eq!(rs[0].endpoint, "/v1/chat/completions");
    assert!(!String::from_utf8(bytes).unwrap().contains(KEY));
}

#[tokio::test]
async fn wrong_key_is_a_non_retryable_401() {
    let stand_in = ModelStandIn::start(vec![Step::Text("never".into())]).await;
    stand_in.set_expected_key(Some("the-right-key"));
    let mut s = setup(&config(
        ProviderKind::Anthropic,
        stand_in.base_url(),
        Some(KEY),
    ));
    let e = s.client.call(&simple()).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains(KEY));
    assert_eq!(
        stand_in.remaining(),
        1,
        "a rejected request consumes no step"
    );
    assert_eq!(s.client.bundle().count(), 1);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
