//! Secrets are read where they are used, and a file's problems are reported all at once with what they stop.

use super::*;
use std::cell::RefCell;

const EXAMPLE: &str = include_str!("../../examples/drafter.toml");

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .expect("needle in text")
        + 1
}

/// The README's environment for a one-off run: the three tokens, no webhook secret.
fn run_env(n: &str) -> Option<String> {
    match n {
        "JIRA_API_TOKEN" => Some("jira-VALUE-1".into()),
        "GITHUB_TOKEN" => Some("ghp_VALUE-2".into()),
        "ANTHROPIC_API_KEY" => Some("sk-VALUE-3".into()),
        _ => None,
    }
}

#[test]
fn run_needs_no_webhook_secret_and_serve_names_its_key_and_line() {
    let path = Path::new("drafter.toml");
    let c = Config::from_toml_for(EXAMPLE, path, &run_env, Purpose::Run)
        .expect("a one-off run needs no webhook secret");
    assert_eq!(c.github.token.value().unwrap().expose(), "ghp_VALUE-2");
    assert_eq!(
        c.jira.auth.secret().value().unwrap().expose(),
        "jira-VALUE-1"
    );
    let key = c.model.api_key.as_ref().expect("configured");
    assert_eq!(key.value().unwrap().expose(), "sk-VALUE-3");
    // Not read, and saying so if anything tried.
    let hook = c.serve.webhook_secret.as_ref().expect("configured");
    let err = hook.value().unwrap_err().to_string();
    assert!(err.contains("serve.webhook_secret_env"), "{err}");

    let line = line_of(EXAMPLE, "webhook_secret_env");
    let err = Config::from_toml_for(EXAMPLE, path, &run_env, Purpose::Serve)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("line {line}")), "{err}");
    assert!(err.contains("`serve.webhook_secret_env`"), "{err}");
    assert!(err.contains("JIRA_WEBHOOK_SECRET"), "{err}");
    assert!(
        err.contains("remove the key to run without webhooks"),
        "{err}"
    );

    let checked = Config::check(EXAMPLE, path, &run_env);
    assert_eq!(checked.problems.len(), 1, "{:#?}", checked.problems);
    assert_eq!(checked.problems[0].line, Some(line));
    assert_eq!(checked.problems[0].blocked(), ["serve (webhooks)"]);
    assert!(checked.blocking(Purpose::Run).next().is_none());
}

#[test]
fn without_a_webhook_secret_key_serve_starts_with_webhooks_off() {
    let text = EXAMPLE.replace("webhook_secret_env = \"JIRA_WEBHOOK_SECRET\"\n", "");
    let c = Config::from_toml_for(&text, Path::new("d.toml"), &run_env, Purpose::Serve)
        .expect("webhooks off: no secret needed");
    assert!(!c.webhooks_on());
    let with = Config::from_toml_for(
        EXAMPLE,
        Path::new("d.toml"),
        &|n: &str| match n {
            "JIRA_WEBHOOK_SECRET" => Some("whsec".into()),
            other => run_env(other),
        },
        Purpose::Serve,
    )
    .expect("all set");
    assert!(with.webhooks_on());
    let hook = with.serve.webhook_secret.as_ref().expect("configured");
    assert_eq!(hook.value().unwrap().expose(), "whsec");
}

#[test]
fn commands_read_only_the_secrets_they_use() {
    // A token file nobody may read, and no environment at all: the queue, the data directory and the sandbox
    // settings are still readable; reading a secret was never attempted.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let text = EXAMPLE.replace(
        "token_env = \"JIRA_API_TOKEN\"",
        &format!("token_file = \"{}\"", missing.display()),
    );
    let lookups = RefCell::new(Vec::<String>::new());
    let env = |n: &str| {
        lookups.borrow_mut().push(n.to_string());
        None
    };
    for purpose in [Purpose::Queue, Purpose::DataDir, Purpose::Sandbox] {
        let c = Config::from_toml_for(&text, Path::new("d.toml"), &env, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(c.data_dir, Path::new("/var/lib/drafter"));
        assert!(c.github.token.value().is_err(), "never read");
    }
    for secret_var in [
        "JIRA_API_TOKEN",
        "GITHUB_TOKEN",
        "ANTHROPIC_API_KEY",
        "JIRA_WEBHOOK_SECRET",
    ] {
        assert!(
            !lookups.borrow().iter().any(|n| n == secret_var),
            "{secret_var} was looked up by a command that does not use it: {:?}",
            lookups.borrow()
        );
    }
    // `run` reads them all and names each one missing, with its line.
    let err = Config::from_toml_for(&text, Path::new("d.toml"), &env, Purpose::Run)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 problems stop `drafter run`"), "{err}");
    assert!(err.contains("`jira.token_file`"), "{err}");
    assert!(err.contains("no-such-token"), "{err}");
    assert!(
        err.contains(&format!("line {}", line_of(&text, "token_file ="))),
        "{err}"
    );
    assert!(err.contains("`github.token_env`"), "{err}");
    assert!(err.contains("`model.api_key_env`"), "{err}");
    assert!(!err.contains("webhook"), "not run's: {err}");
    // `policy explain` reads Jira only.
    let err = Config::from_toml_for(&text, Path::new("d.toml"), &env, Purpose::Explain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`jira.token_file`"), "{err}");
    assert!(!err.contains("github") && !err.contains("api_key"), "{err}");
}

#[test]
fn a_secret_is_read_once_at_load() {
    let reads = RefCell::new(0);
    let env = |n: &str| {
        if n == "GITHUB_TOKEN" {
            *reads.borrow_mut() += 1;
        }
        run_env(n)
    };
    let c = Config::from_toml_for(EXAMPLE, Path::new("d.toml"), &env, Purpose::Run).unwrap();
    assert_eq!(*reads.borrow(), 1);
    for _ in 0..3 {
        assert_eq!(c.github.token.value().unwrap().expose(), "ghp_VALUE-2");
    }
    assert_eq!(*reads.borrow(), 1, "the value is kept, not read again");
}

#[test]
fn every_problem_at_once_with_key_line_and_what_it_stops() {
    let text = EXAMPLE
        .replace(
            "base_url = \"https://example.atlassian.net\"",
            "base_url = \"example.atlassian.net\"",
        )
        .replace("concurrency = 4 ", "concurrency = 0 ")
        .replace(
            "model = \"claude-sonnet-4-5\"",
            "model = \"claude-sonnet-4-5\"\ntemperature = 0.2",
        )
        .replace("max_turns = 40 ", "max_turns = \"forty\" ")
        .replace("[commit]", "[comit]");
    let env = |n: &str| match n {
        "JIRA_API_TOKEN" => Some("jira-VALUE-1".into()),
        _ => None,
    };
    let checked = Config::check(&text, Path::new("d.toml"), &env);
    let shown: Vec<String> = checked
        .problems
        .iter()
        .map(|p| format!("{p} => {}", p.blocked().join("; ")))
        .collect();
    let expect = [
        (
            "jira.base_url",
            line_of(&text, "base_url = \"example"),
            "run; serve; policy explain",
        ),
        ("github.token_env", line_of(&text, "token_env = \"GITHUB_TOKEN\""), "run; serve"),
        ("model.temperature", line_of(&text, "temperature"), "run; serve; policy explain"),
        ("model.api_key_env", line_of(&text, "api_key_env"), "run; serve"),
        ("agent.max_turns", line_of(&text, "max_turns"), "run; serve; policy explain"),
        ("comit", line_of(&text, "[comit]"), "run; serve; policy explain; jobs, pause, resume; key, jobs bundle, jobs purge; doctor, bench"),
        ("serve.webhook_secret_env", line_of(&text, "webhook_secret_env"), "serve (webhooks)"),
        ("serve.concurrency", line_of(&text, "concurrency = 0"), "serve"),
    ];
    assert_eq!(checked.problems.len(), expect.len(), "{shown:#?}");
    for (key, line, blocks) in expect {
        let p = checked
            .problems
            .iter()
            .find(|p| p.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no problem for {key}: {shown:#?}"));
        assert_eq!(p.line, Some(line), "{key}: {shown:#?}");
        assert_eq!(p.blocked().join("; "), blocks, "{key}");
    }
    let lines: Vec<usize> = checked.problems.iter().filter_map(|p| p.line).collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "in file order: {lines:?}"
    );
    // The rest of the file was still read.
    let shown_config = format!("{:?}", checked.display().expect("readable"));
    assert!(shown_config.contains("acme/payments-sdk"), "{shown_config}");
}

#[test]
fn nothing_shows_a_secret_value() {
    let env = |n: &str| match n {
        "JIRA_WEBHOOK_SECRET" => Some("whsec-VALUE-4".into()),
        other => run_env(other),
    };
    let values = ["jira-VALUE-1", "ghp_VALUE-2", "sk-VALUE-3", "whsec-VALUE-4"];
    let loaded = Config::from_toml(EXAMPLE, Path::new("d.toml"), &env).unwrap();
    let checked = Config::check(EXAMPLE, Path::new("d.toml"), &env);
    assert!(checked.problems.is_empty(), "{:#?}", checked.problems);
    let shown = [
        format!("{loaded:?}"),
        format!("{:#?}", loaded.for_display()),
        format!("{:#?}", checked.display()),
    ];
    for text in &shown {
        for v in values {
            assert!(!text.contains(v), "{v} shown in {text}");
        }
    }
    assert!(shown[0].contains("[redacted]"));
    // Unread secrets show where they come from.
    assert!(
        shown[2].contains("not read: environment variable GITHUB_TOKEN (`github.token_env`, line"),
        "{}",
        shown[2]
    );
    // A secret file that holds nothing usable is named, not quoted.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blank");
    std::fs::write(&f, "  \n").unwrap();
    let text = EXAMPLE.replace(
        "api_key_env = \"ANTHROPIC_API_KEY\"",
        &format!("api_key_file = \"{}\"", f.display()),
    );
    let err = Config::from_toml_for(&text, Path::new("d.toml"), &env, Purpose::Run)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`model.api_key_file`") && err.contains("is empty"),
        "{err}"
    );
}
