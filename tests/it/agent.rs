//! The agent loop's own rules, without Docker: the loop runs against an in-memory executor
//! ([`support::executor::MemExecutor`]) and the scripted model stand-in, so each rule is checked on what the model
//! was told, what the workspace holds afterwards and what the proof bundle recorded. The same rules through the
//! real binary and sandbox are in `policy.rs`, `finish.rs` and `e2e.rs`.
//!
//! Long on purpose (over 700 lines): one rule of the agent loop per test, each a short script for the model and
//! executor stand-ins.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drafter::agent::{
    self, AgentError, AgentEvent, AgentOutcome, FinishCheck, FinishReport, Permissions, Task,
};
use drafter::config::{AgentLimits, ModelConfig, ProviderKind, RepoConfig};
use drafter::jira::Ticket;
use drafter::model::ModelClient;
use drafter::policy::write::{Violation, WriteRules};
use drafter::policy::{self, Tool};
use drafter::proof::bundle::{read_statements, Predicate, ToolCall};
use drafter::proof::verify::verify_unfinished;
use drafter::proof::{self, sha256_hex, BundleWriter, Pins, RunnerKey};
use drafter::sandbox::{Limit, SandboxError, Workspace};
use serde_json::json;

use crate::support::executor::{MemExecutor, Scripted};
use crate::support::model::{finish, tool, ModelStandIn, Step, INPUT_TOKENS, OUTPUT_TOKENS};
use crate::support::RecordedRequest;

/// A `FinishCheck` that answers from a list, one report per call (the last one repeated), and counts its calls.
struct ScriptedCheck {
    reports: Mutex<Vec<FinishReport>>,
    seen: Mutex<Vec<BTreeSet<String>>>,
}

impl ScriptedCheck {
    fn new(reports: Vec<FinishReport>) -> ScriptedCheck {
        ScriptedCheck {
            reports: Mutex::new(reports),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<BTreeSet<String>> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl FinishCheck for ScriptedCheck {
    async fn check(&self, written: &BTreeSet<String>) -> Result<FinishReport, AgentError> {
        self.seen.lock().unwrap().push(written.clone());
        let mut reports = self.reports.lock().unwrap();
        Ok(if reports.len() > 1 {
            reports.remove(0)
        } else {
            reports[0].clone()
        })
    }
}

fn violation(rule: &str, path: &str) -> FinishReport {
    FinishReport {
        violations: vec![Violation {
            rule: rule.into(),
            path: Some(path.into()),
            detail: format!("`{path}` may not be changed"),
        }],
        allowed: "any file but CI configuration".into(),
        left_out: vec![],
    }
}

/// One agent run's world: the stand-in, the fake workspace, the job's bundle, and the knobs a test turns.
struct AgentRun {
    _dir: tempfile::TempDir,
    job_dir: PathBuf,
    model: ModelStandIn,
    client: ModelClient,
    exec: MemExecutor,
    tools: Vec<Tool>,
    write: WriteRules,
    limits: AgentLimits,
    disk_limit: u64,
}

impl AgentRun {
    async fn new(script: Vec<Step>, files: &[(&str, &str)]) -> AgentRun {
        let model = ModelStandIn::start(script).await;
        let cfg = ModelConfig {
            provider: ProviderKind::Anthropic,
            base_url: model.base_url(),
            model: "test-model".into(),
            api_key: None,
            max_tokens_per_call: 512,
            request_timeout_secs: 10,
            prompt_caching: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(RunnerKey::load_or_create(&dir.path().join("data")).unwrap());
        let job_dir = dir.path().join("jobs").join("job-1");
        std::fs::create_dir_all(&job_dir).unwrap();
        let bundle = BundleWriter::open(&job_dir, key, "job-1", "DEMO-1", "sha256:p").unwrap();
        AgentRun {
            _dir: dir,
            job_dir,
            client: ModelClient::new(&cfg, bundle).unwrap(),
            model,
            exec: MemExecutor::with_files(files),
            tools: policy::TOOLS.to_vec(),
            write: WriteRules::default(),
            limits: AgentLimits {
                max_turns: 10,
                max_total_tokens: 1_000_000,
                wall_time_secs: 60,
                context_budget_tokens: 1_000_000,
            },
            disk_limit: 1 << 20,
        }
    }

    /// Runs the loop to its end; returns the result and every event.
    async fn go(
        &mut self,
        finish_check: Option<&dyn FinishCheck>,
    ) -> (Result<AgentOutcome, AgentError>, Vec<AgentEvent>) {
        let ticket = Ticket {
            key: "DEMO-1".into(),
            project: "DEMO".into(),
            summary: "Greet with an exclamation mark".into(),
            ..Ticket::default()
        };
        let repo = RepoConfig {
            name: "acme/demo".into(),
            base: "main".into(),
            test_command: Some("make test".into()),
            fork: None,
        };
        let task = Task {
            ticket: &ticket,
            repo: &repo,
            limits: &self.limits,
            command_timeout: Duration::from_secs(30),
            requests: &[],
            permissions: Permissions {
                policy_hash: "sha256:p",
                tools: &self.tools,
                write: &self.write,
                gate: None,
                finish_check,
            },
            review: None,
        };
        let mut events = Vec::new();
        let workspace = Workspace::new(&self.exec, self.disk_limit);
        let result = agent::run(&task, &mut self.client, workspace, &mut |e| events.push(e)).await;
        (result, events)
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        self.model.requests()
    }

    /// The bundle's tool-call statements, in order.
    fn tool_calls(&self) -> Vec<ToolCall> {
        statements(&self.job_dir)
            .into_iter()
            .filter_map(|p| match p {
                Predicate::ToolCall(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

fn statements(job_dir: &std::path::Path) -> Vec<Predicate> {
    let bytes = std::fs::read(job_dir.join(proof::BUNDLE_FILE)).unwrap();
    read_statements(&bytes)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// The tool results (content, is_error) of the last message of a recorded Anthropic request: what the model was
/// told about its previous turn's calls.
fn tool_results(request: &RecordedRequest) -> Vec<(String, bool)> {
    let body = request.json().expect("request JSON");
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned();
    let last = last.expect("a last message");
    last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            (
                b["content"].as_str().unwrap_or_default().to_string(),
                b["is_error"] == true,
            )
        })
        .collect()
}

fn only_result(request: &RecordedRequest) -> (String, bool) {
    let mut results = tool_results(request);
    assert_eq!(results.len(), 1, "{results:?}");
    results.remove(0)
}

/// The loop syncs the bundle at each request and when it ends, however it ends: the worker pushes, opens the PR
/// and comments only after `agent::run` returns, so by then every statement (`finish` included) is on disk.
#[tokio::test]
async fn every_statement_is_durable_at_each_request_and_when_the_loop_ends() {
    for (script, max_turns) in [
        (
            vec![
                tool("read_file", json!({"path": "greet.py"})),
                tool("run", json!({"command": "make test"})),
                finish("Done."),
            ],
            10,
        ),
        // Out of turns: the loop ends in an error, after a tool call nothing synced yet.
        (vec![tool("read_file", json!({"path": "greet.py"})); 3], 2),
    ] {
        let mut run = AgentRun::new(script, &[("greet.py", "print(1)\n")]).await;
        run.limits.max_turns = max_turns;
        run.exec.script(Scripted::exit(0, "ok\n"));
        let synced = run.client.bundle().synced();
        let written_at = {
            let path = run.job_dir.join(proof::BUNDLE_FILE);
            move || std::fs::metadata(&path).map_or(0, |m| m.len())
        };
        let probe_synced = synced.clone();
        let probe_written = written_at.clone();
        // At each request: (bytes durable) - (bytes written), which must be zero.
        run.model
            .set_probe(move || probe_written() - probe_synced.get());
        let check = ScriptedCheck::new(vec![FinishReport::default()]);
        let (result, _) = run.go(Some(&check)).await;
        assert_eq!(result.is_ok(), max_turns == 10, "{result:?}");
        let probed = run.model.probed();
        assert_eq!(probed.len(), run.requests().len());
        assert!(probed.iter().all(|&d| d == 0), "{probed:?}");
        let written = written_at();
        assert!(written > 0);
        assert_eq!(synced.get(), written, "the bundle's tail is not durable");
    }
}

#[tokio::test]
async fn tools_act_on_the_workspace_and_finish_ends_the_loop() {
    let mut run = AgentRun::new(
        vec![
            tool("list_files", json!({})),
            tool("read_file", json!({"path": "./greet.py"})),
            tool(
                "edit_file",
                json!({"path": "greet.py", "old": "Hello, {name}.", "new": "Hello, {name}!"}),
            ),
            tool(
                "write_file",
                json!({"path": "./docs//NOTES.md", "content": "hi\n"}),
            ),
            tool("search", json!({"pattern": "Hello", "path": "."})),
            tool("run", json!({"command": "make test"})),
            finish("Greeting ends with an exclamation mark."),
        ],
        &[(
            "greet.py",
            "def greet(name):\n    return f\"Hello, {name}.\"\n",
        )],
    )
    .await;
    run.exec.script(Scripted::exit(0, "2 passed\n"));
    let check = ScriptedCheck::new(vec![FinishReport::default()]);
    let (result, events) = run.go(Some(&check)).await;
    let outcome = result.unwrap();

    assert_eq!(outcome.summary, "Greeting ends with an exclamation mark.");
    assert_eq!(outcome.turns, 7);
    assert_eq!(outcome.tokens, 7 * (INPUT_TOKENS + OUTPUT_TOKENS));
    assert_eq!(outcome.finish_refusals, 0);
    // Paths as git names them, whatever spelling the model used.
    assert_eq!(
        outcome
            .written
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["docs/NOTES.md", "greet.py"]
    );
    assert_eq!(check.calls(), vec![outcome.written.clone()]);
    assert_eq!(
        run.exec.file("greet.py").unwrap(),
        "def greet(name):\n    return f\"Hello, {name}!\"\n"
    );
    assert_eq!(run.exec.file("docs/NOTES.md").unwrap(), "hi\n");
    assert_eq!(run.exec.commands(), ["make test"]);

    let reqs = run.requests();
    assert_eq!(reqs.len(), 7);
    assert_eq!(only_result(&reqs[1]), ("f greet.py\n".into(), false));
    assert!(only_result(&reqs[2]).0.contains("Hello, {name}."));
    assert_eq!(only_result(&reqs[3]), ("edited greet.py".into(), false));
    let (wrote, is_error) = only_result(&reqs[4]);
    assert!(
        wrote.starts_with("wrote 3 bytes to docs/") && !is_error,
        "{wrote}"
    );
    assert_eq!(
        only_result(&reqs[5]),
        (
            "greet.py:2:    return f\"Hello, {name}!\"".to_string() + "\n",
            false
        )
    );
    assert_eq!(
        only_result(&reqs[6]),
        ("exit code 0\n2 passed\n".into(), false)
    );

    // One event per turn and per tool call, in order.
    let turns = events
        .iter()
        .filter(|e| matches!(e, AgentEvent::Turn { .. }))
        .count();
    assert_eq!(turns, 7);
    let calls: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolCall(r) => Some((r.name.clone(), r.ok)),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("list_files".to_string(), true),
            ("read_file".into(), true),
            ("edit_file".into(), true),
            ("write_file".into(), true),
            ("search".into(), true),
            ("run".into(), true),
        ]
    );
}

/// The receipts chain: model call, then the calls it asked for, then the next model call; every statement chained
/// to the one before it and signed, and each tool call's digest is what the model was shown next.
#[tokio::test]
async fn every_model_call_and_tool_call_is_one_statement_in_order() {
    let mut run = AgentRun::new(
        vec![
            Step::Tools(vec![
                ("read_file".into(), json!({"path": "a.txt"})),
                ("run".into(), json!({"command": "false"})),
            ]),
            finish("done"),
        ],
        &[("a.txt", "alpha\n")],
    )
    .await;
    run.exec.script(Scripted::exit(1, "nope\n"));
    let (result, _) = run.go(None).await;
    result.unwrap();

    let kinds: Vec<String> = statements(&run.job_dir)
        .iter()
        .map(|p| match p {
            Predicate::ModelCall(_) => "model".to_string(),
            Predicate::ToolCall(t) => format!("tool:{}:{}", t.turn, t.name),
            Predicate::Run(_) => "run".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "model",
            "tool:1:read_file",
            "tool:1:run",
            "model",
            "tool:2:finish"
        ]
    );
    let summary = verify_unfinished(&run.job_dir, &Pins::default()).unwrap();
    assert_eq!(summary.count, 5);

    let calls = run.tool_calls();
    let shown = tool_results(&run.requests()[1]);
    assert_eq!(shown.len(), 2);
    for (call, (text, is_error)) in calls.iter().zip(&shown) {
        assert_eq!(
            call.shown_sha256,
            sha256_hex(text.as_bytes()),
            "{}",
            call.name
        );
        assert_eq!(call.ok, !is_error, "{}", call.name);
    }
    assert_eq!(calls[1].exit_code, Some(1));
    assert_eq!(shown[1], ("exit code 1\nnope\n".into(), true));
    assert!(calls.iter().all(|c| c.refused_by.is_none()));
}

#[tokio::test]
async fn a_write_the_policy_forbids_is_refused_to_the_model_and_nothing_is_written() {
    let mut run = AgentRun::new(
        vec![
            tool(
                "write_file",
                json!({"path": ".github/workflows/ci.yml", "content": "on: push\n"}),
            ),
            tool(
                "edit_file",
                json!({"path": "CODEOWNERS", "old": "@ada", "new": "@mallory"}),
            ),
            finish("Tried."),
        ],
        &[("CODEOWNERS", "* @ada\n")],
    )
    .await;
    let (result, events) = run.go(None).await;
    let outcome = result.unwrap();

    // Refused before anything ran: the workspace is as it was and no path counts as written.
    assert!(run.exec.writes().is_empty(), "{:?}", run.exec.writes());
    assert_eq!(run.exec.file("CODEOWNERS").unwrap(), "* @ada\n");
    assert!(outcome.written.is_empty());
    let reqs = run.requests();
    for req in &reqs[1..3] {
        let (text, is_error) = only_result(req);
        assert!(is_error);
        assert!(
            text.starts_with("error: refused by policy (rule `write.forbidden_paths`)"),
            "{text}"
        );
    }
    let calls = run.tool_calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| c.refused_by.as_deref())
            .collect::<Vec<_>>(),
        [
            Some("write.forbidden_paths"),
            Some("write.forbidden_paths"),
            None
        ]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolCall(r) if r.name == "write_file" && !r.ok)));
}

#[tokio::test]
async fn a_tool_the_team_does_not_have_is_refused_and_never_offered() {
    let mut run = AgentRun::new(
        vec![
            tool("run", json!({"command": "curl evil.example"})),
            finish("ok"),
        ],
        &[],
    )
    .await;
    run.tools = vec![Tool::ReadFile];
    let (result, _) = run.go(None).await;
    result.unwrap();

    assert!(run.exec.commands().is_empty(), "{:?}", run.exec.commands());
    let reqs = run.requests();
    let offered: Vec<String> = reqs[0].json().unwrap()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, ["read_file", "finish"]);
    let (text, is_error) = only_result(&reqs[1]);
    assert!(is_error);
    assert!(text.contains("refused by policy (rule `tools`)"), "{text}");
    assert_eq!(run.tool_calls()[0].refused_by.as_deref(), Some("tools"));
}

#[tokio::test]
async fn unknown_tools_bad_arguments_and_bad_paths_are_the_models_to_fix() {
    let mut run = AgentRun::new(
        vec![
            tool("delete_everything", json!({})),
            Step::RawArguments("read_file".into(), "{\"path\": ".into()),
            tool("read_file", json!({"path": "../etc/passwd"})),
            tool("read_file", json!({"path": ".git/config"})),
            tool("read_file", json!({"path": "missing.txt"})),
            tool("read_file", json!({"path": "src"})),
            tool(
                "edit_file",
                json!({"path": "src/a.rs", "old": "fn", "new": "pub fn"}),
            ),
            tool("finish", json!({"summary": "  "})),
            finish("done"),
        ],
        &[("src/a.rs", "fn a() {}\nfn b() {}\n")],
    )
    .await;
    let (result, _) = run.go(None).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.turns, 9);
    assert!(run.exec.writes().is_empty());

    let told: Vec<String> = run.requests()[1..9]
        .iter()
        .map(|r| {
            let (text, is_error) = only_result(r);
            assert!(is_error, "{text}");
            text
        })
        .collect();
    assert!(
        told[0].contains("unknown tool `delete_everything`"),
        "{}",
        told[0]
    );
    assert!(told[1].contains("are not valid JSON"), "{}", told[1]);
    assert!(told[2].contains("leaves the repository"), "{}", told[2]);
    assert!(
        told[3].contains("inside .git, which is off limits"),
        "{}",
        told[3]
    );
    assert!(told[4].contains("does not exist"), "{}", told[4]);
    assert!(told[5].contains("not a regular file"), "{}", told[5]);
    assert!(told[6].contains("occurs 2 times"), "{}", told[6]);
    assert!(
        told[7].contains("needs a non-empty string `summary`"),
        "{}",
        told[7]
    );
    // None of these is a policy refusal.
    assert!(run.tool_calls().iter().all(|c| c.refused_by.is_none()));
}

#[tokio::test]
async fn a_violation_at_finish_is_told_once_and_a_fixed_workspace_finishes() {
    let mut run = AgentRun::new(
        vec![
            tool("write_file", json!({"path": "ci.yml", "content": "x"})),
            finish("first try"),
            tool("run", json!({"command": "rm ci.yml"})),
            finish("second try"),
        ],
        &[],
    )
    .await;
    let check = ScriptedCheck::new(vec![
        violation("write.forbidden_paths", "ci.yml"),
        FinishReport {
            left_out: vec!["__pycache__/".into()],
            ..FinishReport::default()
        },
    ]);
    let (result, events) = run.go(Some(&check)).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.summary, "second try");
    assert_eq!(outcome.finish_refusals, 1);
    assert_eq!(check.calls().len(), 2);

    let reqs = run.requests();
    let (told, is_error) = only_result(&reqs[2]);
    assert!(is_error);
    assert!(
        told.starts_with("not finished: the change breaks the policy's write rules"),
        "{told}"
    );
    assert!(
        told.contains("- rule `write.forbidden_paths`: `ci.yml` may not be changed"),
        "{told}"
    );
    assert!(told.contains("any file but CI configuration"), "{told}");
    let finishes: Vec<ToolCall> = run
        .tool_calls()
        .into_iter()
        .filter(|c| c.name == "finish")
        .collect();
    assert_eq!(finishes.len(), 2);
    assert_eq!(
        finishes[0].refused_by.as_deref(),
        Some("write.forbidden_paths")
    );
    assert!(!finishes[0].ok);
    assert!(finishes[1].ok && finishes[1].refused_by.is_none());
    assert!(events.iter().any(
        |e| matches!(e, AgentEvent::ToolCall(r) if r.detail == "refused: write.forbidden_paths")
    ));
    // The last `finish` result named what stays out of the commit. It is in the bundle, not in a request: the loop
    // ended, so no further model call carried it.
    assert_eq!(reqs.len(), 4);
}

#[tokio::test]
async fn finishing_again_still_in_violation_is_refused_with_the_rule() {
    let mut run = AgentRun::new(vec![finish("one"), finish("two"), finish("three")], &[]).await;
    let check = ScriptedCheck::new(vec![violation("write.max_files", "big/")]);
    let (result, _) = run.go(Some(&check)).await;
    match result {
        Err(AgentError::Unfixed(v)) => assert_eq!(v[0].rule, "write.max_files"),
        other => panic!("{other:?}"),
    }
    // Told once; the second `finish` ended the job, so no third model call.
    assert_eq!(run.requests().len(), 2);
    assert_eq!(check.calls().len(), 2);
}

#[tokio::test]
async fn told_at_finish_and_out_of_turns_is_refused_with_the_rule() {
    let mut run = AgentRun::new(
        vec![
            finish("one"),
            tool("list_files", json!({})),
            tool("list_files", json!({})),
        ],
        &[("a", "")],
    )
    .await;
    run.limits.max_turns = 3;
    let check = ScriptedCheck::new(vec![violation("write.forbidden_paths", "a")]);
    let (result, _) = run.go(Some(&check)).await;
    assert!(
        matches!(&result, Err(AgentError::Unfixed(v)) if v[0].rule == "write.forbidden_paths"),
        "{result:?}"
    );
    // Checked at `finish` and once more when the turns ran out.
    assert_eq!(check.calls().len(), 2);
}

#[tokio::test]
async fn turn_and_token_limits_end_the_loop() {
    // A model that never finishes: out of turns, without a finish check to consult.
    let script: Vec<Step> = (0..5).map(|_| tool("list_files", json!({}))).collect();
    let mut run = AgentRun::new(script.clone(), &[("a", "")]).await;
    run.limits.max_turns = 3;
    let (result, _) = run.go(None).await;
    assert!(matches!(result, Err(AgentError::MaxTurns(3))), "{result:?}");
    assert_eq!(run.requests().len(), 3);

    // Over the token budget: stopped right after the call that crossed it, before its tool calls run.
    let mut run = AgentRun::new(script, &[("a", "")]).await;
    run.limits.max_total_tokens = 2 * (INPUT_TOKENS + OUTPUT_TOKENS) + 1;
    let (result, _) = run.go(None).await;
    match result {
        Err(AgentError::TokenBudget { used, limit }) => {
            assert_eq!(used, 3 * (INPUT_TOKENS + OUTPUT_TOKENS));
            assert_eq!(limit, run.limits.max_total_tokens);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(run.tool_calls().len(), 2);
}

#[tokio::test]
async fn a_slow_command_runs_into_the_wall_time_limit() {
    let mut run = AgentRun::new(vec![tool("run", json!({"command": "make slow"}))], &[]).await;
    run.limits.wall_time_secs = 1;
    let mut slow = Scripted::exit(0, "");
    slow.takes = Duration::from_secs(30);
    run.exec.script(slow);
    let started = std::time::Instant::now();
    let (result, _) = run.go(None).await;
    assert!(matches!(result, Err(AgentError::WallTime(1))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn outputs_are_capped_for_the_model_and_recorded_whole() {
    let big = format!("{}\n", "x".repeat(100 * 1024));
    let mut run = AgentRun::new(
        vec![
            tool("run", json!({"command": "cat big.log"})),
            tool("run", json!({"command": "yes"})),
            tool("read_file", json!({"path": "huge.bin"})),
            finish("done"),
        ],
        &[("huge.bin", &"y".repeat(300 * 1024))],
    )
    .await;
    run.exec.script(Scripted::exit(0, &big));
    let mut flood = Scripted::stopped(Limit::Output, "yyyy");
    flood.output.truncated = true;
    run.exec.script(flood);
    let (result, _) = run.go(None).await;
    result.unwrap();

    let reqs = run.requests();
    let calls = run.tool_calls();
    // 48 KiB of a 100 KiB output reach the model, the cut marked; the statement counts the whole output.
    let (shown, is_error) = only_result(&reqs[1]);
    assert!(!is_error);
    assert!(shown.len() < 50 * 1024, "{}", shown.len());
    assert!(
        shown.ends_with("more bytes cut ...]"),
        "{}",
        &shown[shown.len() - 60..]
    );
    assert_eq!(
        calls[0].output_bytes,
        ("exit code 0\n".len() + big.len()) as u64
    );
    assert_eq!(calls[0].shown_bytes, shown.len() as u64);
    assert_eq!(calls[0].shown_sha256, sha256_hex(shown.as_bytes()));
    // A command stopped by the output limit says so, and that the output was cut.
    let (shown, is_error) = only_result(&reqs[2]);
    assert!(is_error);
    assert!(
        shown.starts_with("killed: the command printed more output"),
        "{shown}"
    );
    assert!(shown.ends_with("[output was truncated]"), "{shown}");
    // A file over the read limit is refused with the limit, not cut.
    let (shown, is_error) = only_result(&reqs[3]);
    assert!(is_error);
    assert!(shown.contains("is larger than 262144 bytes"), "{shown}");
}

#[tokio::test]
async fn a_workspace_over_its_disk_limit_ends_the_job() {
    let mut run = AgentRun::new(
        vec![
            tool(
                "write_file",
                json!({"path": "a.txt", "content": "a".repeat(1000)}),
            ),
            tool("run", json!({"command": "make"})),
            finish("never"),
        ],
        &[],
    )
    .await;
    run.disk_limit = 4096;
    let mut build = Scripted::exit(0, "built\n");
    build.fills = 8192;
    run.exec.script(build);
    let (result, _) = run.go(None).await;
    assert!(
        matches!(
            result,
            Err(AgentError::Sandbox(SandboxError::DiskLimit { .. }))
        ),
        "{result:?}"
    );
    // The write fitted; the build did not, and the job stopped there (recorded, but never shown to the model).
    assert_eq!(run.requests().len(), 2);
    let calls = run.tool_calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[0].ok && !calls[1].ok);
}

#[tokio::test]
async fn calls_after_finish_in_the_same_turn_are_not_run() {
    let mut run = AgentRun::new(
        vec![Step::Tools(vec![
            ("finish".into(), json!({"summary": "done"})),
            ("run".into(), json!({"command": "rm -rf ."})),
        ])],
        &[],
    )
    .await;
    let (result, _) = run.go(None).await;
    assert_eq!(result.unwrap().summary, "done");
    assert!(run.exec.commands().is_empty());
    // Only `finish` is a statement: the other call never ran.
    let names: Vec<String> = run.tool_calls().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["finish"]);
}

#[tokio::test]
async fn a_final_answer_in_prose_finishes_and_a_client_error_ends_the_loop() {
    let mut run = AgentRun::new(vec![Step::Text("Nothing to change.".into())], &[]).await;
    let (result, _) = run.go(None).await;
    assert_eq!(result.unwrap().summary, "Nothing to change.");

    // A provider error that retrying cannot fix ends the loop at once, as a model error.
    let mut run = AgentRun::new(vec![Step::Status(400)], &[]).await;
    let (result, _) = run.go(None).await;
    match result {
        Err(e @ AgentError::Model(_)) => assert!(!e.is_retryable(), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.requests().len(), 1);
}
