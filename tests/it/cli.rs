//! The command line's promises about configuration and help: each command reads only the secrets it uses and
//! stops at once, naming key and line, when one is missing; `serve` needs the webhook secret exactly when webhooks
//! are on; `check-config` lists every problem with what it stops; `drafter --help` is one short line per command.

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::harness::{Options, ServeProcess, Stack};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

/// The harness's secret variables: a command run without them has no secret at all.
const SECRET_VARS: &[&str] = &[
    "DRAFTER_TEST_JIRA_TOKEN",
    "DRAFTER_TEST_GITHUB_TOKEN",
    "DRAFTER_TEST_MODEL_KEY",
    "DRAFTER_TEST_WEBHOOK_SECRET",
];

/// The 1-based line of the first line of `stack`'s configuration starting with `prefix`.
fn config_line(stack: &Stack, prefix: &str) -> usize {
    let text = std::fs::read_to_string(&stack.config_path).expect("config");
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in the configuration"))
        + 1
}

/// Runs `drafter <args>` against `stack` without any secret in its environment.
async fn without_secrets(stack: &Stack, args: &[&str]) -> (std::process::Output, String) {
    let mut cmd = stack.drafter(Path::new(BIN), args);
    for v in SECRET_VARS {
        cmd.env_remove(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("finishes")
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[tokio::test]
async fn commands_read_only_the_secrets_they_use_and_run_stops_before_any_request() {
    let stack = Stack::start(Options {
        extra_toml: "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    // The queue, the data directory and the sandbox settings need no secret.
    for args in [
        &["jobs", "list"][..],
        &["key", "show"],
        &["pause", "--reason", "test"],
        &["resume"],
    ] {
        let (out, text) = without_secrets(&stack, args).await;
        assert!(out.status.success(), "drafter {args:?}:\n{text}");
    }
    // `run` needs Jira, GitHub and the model: it names all three, with their lines, and touches nothing.
    let (out, text) = without_secrets(&stack, &["run", "--ticket", "DEMO-1"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (key, prefix) in [
        ("jira.token_env", "token_env = \"DRAFTER_TEST_JIRA_TOKEN\""),
        (
            "github.token_env",
            "token_env = \"DRAFTER_TEST_GITHUB_TOKEN\"",
        ),
        ("model.api_key_env", "api_key_env"),
    ] {
        assert!(text.contains(&format!("`{key}`")), "{key}: {text}");
        let line = config_line(&stack, prefix);
        assert!(
            text.contains(&format!("line {line}:")),
            "{key} line {line}: {text}"
        );
    }
    assert!(!text.contains("webhook"), "run does not use it: {text}");
    assert!(
        stack.jira.requests().is_empty(),
        "no request before the secrets are read"
    );
    assert!(stack.github.requests().is_empty());
    assert!(
        !stack.data_dir().join("jobs").exists(),
        "no job was started"
    );

    // With only its own secrets, `run` works although serve's webhook secret is unset.
    let mut cmd = stack.drafter(Path::new(BIN), &["run", "--ticket", "DEMO-1"]);
    cmd.env_remove("DRAFTER_TEST_WEBHOOK_SECRET");
    let out = cmd.output().await.expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn check_config_lists_every_problem_with_what_it_stops() {
    let stack = Stack::start(Options {
        extra_toml: "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\nconcurrency = 0\n"
            .into(),
        ..Options::default()
    })
    .await;
    let (out, text) = without_secrets(&stack, &["check-config"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    let problem_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("drafter.toml, line "))
        .collect();
    assert_eq!(problem_lines.len(), 5, "{text}");
    for (key, blocks) in [
        ("jira.token_env", "blocks: run; serve; policy explain"),
        ("github.token_env", "blocks: run; serve"),
        ("model.api_key_env", "blocks: run; serve"),
        ("serve.webhook_secret_env", "blocks: serve (webhooks)"),
        ("serve.concurrency", "blocks: serve"),
    ] {
        let at = text
            .lines()
            .position(|l| l.contains("drafter.toml, line ") && l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("{key} not listed:\n{text}"));
        assert_eq!(
            text.lines().nth(at + 1).map(str::trim),
            Some(blocks),
            "{key}:\n{text}"
        );
    }
    assert!(
        text.contains(
            "can start: jobs, pause, resume; key, jobs bundle, jobs purge; doctor, bench"
        ),
        "{text}"
    );
    // --for decides the exit status: `jobs` can start, `run` cannot.
    let (out, text) = without_secrets(&stack, &["check-config", "--for", "jobs"]).await;
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("jobs, pause, resume can start; the 5 problems above stop other commands"),
        "{text}"
    );
    let (out, text) = without_secrets(&stack, &["check-config", "--for", "run"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("run cannot start: 3 of the 5 problems above stop it"),
        "{text}"
    );
    // Secret values are never shown, only where they come from.
    let (out, text) = stack
        .output(Path::new(BIN), &["check-config", "--for", "run"])
        .await;
    assert!(out.status.success(), "{text}");
    for s in support::harness::SECRETS {
        assert!(!text.contains(s), "a secret was printed");
    }
    assert!(
        text.contains("not read: environment variable DRAFTER_TEST_GITHUB_TOKEN"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_with_webhooks_on_refuses_to_start_without_the_secret() {
    let stack = Stack::start(Options {
        extra_toml: "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let mut cmd = stack.drafter(Path::new(BIN), &["serve"]);
    cmd.env_remove("DRAFTER_TEST_WEBHOOK_SECRET");
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("refuses at once")
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = config_line(&stack, "webhook_secret_env");
    assert!(
        text.contains(&format!("line {line}: `serve.webhook_secret_env`")),
        "{text}"
    );
    assert!(text.contains("DRAFTER_TEST_WEBHOOK_SECRET"), "{text}");
    assert!(
        text.contains("remove the key to run without webhooks"),
        "{text}"
    );
    assert!(!text.contains("listening"), "{text}");
}

#[tokio::test]
async fn serve_without_a_webhook_secret_key_runs_with_webhooks_off() {
    let stack = Stack::start(Options {
        extra_toml: "[serve]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Options::default()
    })
    .await;
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    assert!(
        serve
            .stderr()
            .contains("webhooks off: no serve.webhook_secret_env or _file"),
        "{}",
        serve.stderr()
    );
    // The endpoint refuses every delivery, signed or not.
    let client = reqwest::Client::new();
    let body = support::harness::assignment_webhook("DEMO-1", 1);
    assert_eq!(serve.webhook(&client, &body).await, 401);
    serve.stop().await;
}

#[test]
fn help_is_one_short_line_per_command_and_the_long_text_stays_in_help_cmd() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(commands.len() >= 11, "{text}");
    for line in &commands {
        assert!(line.len() <= 100, "a long command summary: {line:?}");
        assert!(
            !line.trim_end().ends_with('.'),
            "a summary, not a paragraph: {line:?}"
        );
    }
    // Subcommand lists too.
    for group in ["jobs", "policy", "key", "bench"] {
        let out = std::process::Command::new(BIN)
            .args([group, "--help"])
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
        {
            assert!(line.len() <= 100, "drafter {group}: {line:?}");
        }
    }
    let out = std::process::Command::new(BIN)
        .args(["help", "serve"])
        .output()
        .expect("runs");
    let long = String::from_utf8_lossy(&out.stdout);
    assert!(
        long.contains("Webhooks are on when `serve.webhook_secret_env`"),
        "{long}"
    );
    let out = std::process::Command::new(BIN)
        .args(["help", "run"])
        .output()
        .expect("runs");
    let long = String::from_utf8_lossy(&out.stdout);
    assert!(
        long.contains("3 when the policy asks for approval"),
        "{long}"
    );
}

/// `drafter bench queue` runs jobs through SQLite and, with worker processes of the same binary, PostgreSQL, then
/// counts every job; the database URL reaches the workers on stdin and is never printed. (No throughput is asserted:
/// the numbers are the machine's.)
#[tokio::test]
async fn bench_queue_counts_every_job_through_worker_processes() {
    let db = support::postgres::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["bench", "queue", "--jobs", "60", "--workers", "2"])
        .args(["--postgres", &db.url, "--dir"])
        .arg(dir.path());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("finishes")
        .expect("runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| SQLite") || l.starts_with("| PostgreSQL"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[1][1].contains("2 worker processes"), "{stdout}");
    for cells in &rows {
        // | queue | jobs | enqueued/s | end to end | p50 | p99 | empty claims | lost | doubled | target | met |
        assert_eq!((cells[2], cells[8], cells[9]), ("60", "0", "0"), "{stdout}");
    }
    if let Some(password) = url::Url::parse(&db.url).unwrap().password() {
        assert!(
            !stdout.contains(password) && !stderr.contains(password),
            "{stdout}{stderr}"
        );
    }
}
