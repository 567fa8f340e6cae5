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
        TokenUsage {
            input_tokens: 12,
            output_tokens: 3,
            ..TokenUsage::default()
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
        TokenUsage {
            input_tokens: 7,
            output_tokens: 2,
            ..TokenUsage::default()
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
        TokenUsage {
            estimated: true,
            ..TokenUsage::default()
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
