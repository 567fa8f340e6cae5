use super::*;

const GOOD: &str = r#"
data_dir = "/var/lib/drafter"

[jira]
base_url = "https://example.atlassian.net/"
bot_account_id = "712020:bot"
email = "bot@example.com"
token_env = "JIRA_TOKEN"

[github]
token_env = "GH_TOKEN"

[model]
provider = "openai"
base_url = "http://localhost:8000"
model = "qwen"

[projects.DEMO]
repos = [{ name = "acme/widgets", test_command = "make test" }]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "JIRA_TOKEN" => Some("jira-secret-value".into()),
        "GH_TOKEN" => Some("ghp_secretvalue".into()),
        _ => None,
    }
}

#[test]
fn loads_defaults_and_resolves_secrets() {
    let c = Config::from_toml(GOOD, Path::new("d.toml"), &env).unwrap();
    assert_eq!(c.jira.base_url, "https://example.atlassian.net");
    assert_eq!(c.github.api_url, "https://api.github.com");
    assert_eq!(
        c.github.clone_url("acme/widgets"),
        "https://github.com/acme/widgets.git"
    );
    assert_eq!(c.projects["DEMO"].repos[0].base, "main");
    assert!(matches!(c.jira.auth, JiraAuth::Basic { .. }));
    assert!(c.model.api_key.is_none());
    assert_eq!(c.github.token.value().unwrap().expose(), "ghp_secretvalue");
}

#[test]
fn egress_allowances_never_open_the_host_or_cloud_metadata() {
    let with = |list: &str| {
        Config::from_toml(
            &format!("{GOOD}\n[sandbox]\negress_allow_addresses = {list}\n"),
            Path::new("d.toml"),
            &env,
        )
    };
    let ok = with(r#"["203.0.113.80", "10.20.0.0/16"]"#).unwrap();
    assert_eq!(ok.sandbox.egress_allow_addresses.len(), 2);
    for bad in [
        r#"["169.254.169.254"]"#,
        r#"["127.0.0.1/8"]"#,
        r#"["0.0.0.0/0"]"#,
        r#"["x"]"#,
    ] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("sandbox.egress_allow_addresses"), "{bad}: {e}");
    }
}

#[test]
fn acceptance_criteria_fields_are_plain_field_ids() {
    let with = |list: &str| {
        Config::from_toml(
            &GOOD.replace(
                "token_env = \"JIRA_TOKEN\"\n",
                &format!("token_env = \"JIRA_TOKEN\"\nacceptance_criteria_fields = {list}\n"),
            ),
            Path::new("d.toml"),
            &env,
        )
    };
    let ok = with(r#"["customfield_10042", "environment"]"#).unwrap();
    assert_eq!(
        ok.jira.acceptance_criteria_fields,
        ["customfield_10042", "environment"]
    );
    assert!(Config::from_toml(GOOD, Path::new("d.toml"), &env)
        .unwrap()
        .jira
        .acceptance_criteria_fields
        .is_empty());
    // They go into the request's `fields=` list: nothing that could add a parameter or change the path.
    for bad in [r#"["a&expand=x"]"#, r#"["../x"]"#, r#"[""]"#, r#"["*all"]"#] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("jira.acceptance_criteria_fields"), "{bad}: {e}");
    }
}

#[test]
fn ticket_panel_transitions_per_project() {
    let with = |tables: &str| {
        Config::from_toml(
            &GOOD.replace("\n[github]", &format!("{tables}\n[github]")),
            Path::new("d.toml"),
            &env,
        )
    };
    let plain = Config::from_toml(GOOD, Path::new("d.toml"), &env).unwrap();
    assert!(plain.panel.remote_links);
    assert!(plain.panel.transitions_for("DEMO").is_none());
    let c = with(
        "remote_links = false\n[jira.transitions.DEMO]\non_start = \"In Progress\"\n\
         [jira.transitions.\"*\"]\non_pr = \"done\"\n",
    )
    .unwrap();
    assert!(!c.panel.remote_links);
    let demo = c.panel.transitions_for("DEMO").unwrap();
    assert_eq!(demo.on_start.as_deref(), Some("In Progress"));
    assert_eq!(demo.on_pr, None);
    assert_eq!(
        c.panel.transitions_for("OPS").unwrap().on_pr.as_deref(),
        Some("done")
    );
    for bad in [
        "[jira.transitions.demo]\non_pr = \"x\"\n",
        "[jira.transitions.DEMO]\non_pr = \" \"\n",
    ] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("jira.transitions"), "{bad}: {e}");
    }
    assert!(with("[jira.transitions.DEMO]\non_merge = \"x\"\n").is_err());
}

#[test]
fn data_center_credentials_and_bot_identity() {
    let jira = |table: &str| {
        let text = GOOD.replace(
            "[jira]\nbase_url = \"https://example.atlassian.net/\"\nbot_account_id = \"712020:bot\"\nemail = \"bot@example.com\"\ntoken_env = \"JIRA_TOKEN\"\n",
            &format!("[jira]\nbase_url = \"https://jira.example.com\"\n{table}"),
        );
        assert!(text.contains("jira.example.com"));
        Config::from_toml(&text, Path::new("d.toml"), &|n: &str| match n {
            "JIRA_PW" => Some("hunter2-password".into()),
            other => env(other),
        })
    };
    // A personal access token: Bearer, no email; the user name alone names the bot (its key is learned later).
    let c = jira(
        "flavor = \"datacenter\"\nbot_username = \"drafter-bot\"\ntoken_env = \"JIRA_TOKEN\"\n",
    )
    .unwrap();
    assert_eq!(c.jira.flavor, JiraFlavor::Datacenter);
    assert!(matches!(c.jira.auth, JiraAuth::Bearer { .. }));
    assert_eq!(c.jira.bot_username.as_deref(), Some("drafter-bot"));
    assert_eq!(c.jira.bot_account_id, "drafter-bot");
    // User name and password: Basic for older sites.
    let c = jira(
        "flavor = \"datacenter\"\nbot_username = \"drafter-bot\"\nbot_account_id = \"JIRAUSER10100\"\n\
         username = \"drafter-bot\"\npassword_env = \"JIRA_PW\"\n",
    )
    .unwrap();
    assert_eq!(c.jira.bot_account_id, "JIRAUSER10100");
    match &c.jira.auth {
        JiraAuth::Password { username, password } => {
            assert_eq!(username, "drafter-bot");
            assert_eq!(password.value().unwrap().expose(), "hunter2-password");
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("hunter2"));
    // Mistakes are named.
    for (table, key) in [
        ("flavor = \"datacenter\"\ntoken_env = \"JIRA_TOKEN\"\n", "jira.bot_username"),
        ("bot_username = \"x\"\ntoken_env = \"JIRA_TOKEN\"\n", "jira.bot_account_id"),
        ("flavor = \"datacenter\"\nbot_username = \"x\"\ntoken_env = \"JIRA_TOKEN\"\npassword_env = \"JIRA_PW\"\nusername = \"x\"\n", "jira.password_env"),
        ("flavor = \"datacenter\"\nbot_username = \"x\"\npassword_env = \"JIRA_PW\"\n", "jira.username"),
        ("flavor = \"datacenter\"\nbot_username = \"x\"\ntoken_env = \"JIRA_TOKEN\"\nusername = \"x\"\n", "jira.username"),
        ("flavor = \"datacenter\"\nbot_username = \"x\"\nemail = \"a@b\"\npassword_env = \"JIRA_PW\"\nusername = \"x\"\n", "jira.email"),
        ("flavor = \"datacenter\"\nbot_username = \"x\"\n", "jira.token_env"),
    ] {
        let e = jira(table).unwrap_err().to_string();
        assert!(e.contains(key), "{table}: {e}");
    }
    // The flavor and names can come from the environment too.
    let c = Config::from_toml(
        &GOOD.replace("email = \"bot@example.com\"\n", ""),
        Path::new("d.toml"),
        &|n: &str| match n {
            "DRAFTER_JIRA_FLAVOR" => Some("datacenter".into()),
            "DRAFTER_JIRA_BOT_USERNAME" => Some("drafter-bot".into()),
            other => env(other),
        },
    )
    .unwrap();
    assert_eq!(c.jira.flavor, JiraFlavor::Datacenter);
    assert_eq!(c.jira.bot_username.as_deref(), Some("drafter-bot"));
}

#[test]
fn debug_never_shows_secrets() {
    let c = Config::from_toml(GOOD, Path::new("d.toml"), &env).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("ghp_secretvalue"));
    assert!(!dbg.contains("jira-secret-value"));
    assert!(dbg.contains("[redacted]"));
}

#[test]
fn env_overrides_apply() {
    let env2 = |n: &str| match n {
        "DRAFTER_MODEL_BASE_URL" => Some("http://10.0.0.5:9000".into()),
        "DRAFTER_MODEL_PROVIDER" => Some("anthropic".into()),
        other => env(other),
    };
    let c = Config::from_toml(GOOD, Path::new("d.toml"), &env2).unwrap();
    assert_eq!(c.model.base_url, "http://10.0.0.5:9000");
    assert_eq!(c.model.provider, ProviderKind::Anthropic);
}

#[test]
fn missing_key_names_key_and_line() {
    let text = GOOD.replace("model = \"qwen\"\n", "");
    let err = Config::from_toml(&text, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d.toml"), "{err}");
    assert!(err.contains("model"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn malformed_toml_names_line() {
    let text = GOOD.replace("provider = \"openai\"", "provider = openai");
    let err = Config::from_toml(&text, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 14"), "{err}");
}

#[test]
fn unset_secret_variable_names_key_and_line() {
    let err = Config::from_toml(GOOD, Path::new("d.toml"), &|n: &str| match n {
        "JIRA_TOKEN" => Some("x".into()),
        _ => None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("github.token_env"), "{err}");
    assert!(err.contains("line 11"), "{err}");
    assert!(err.contains("GH_TOKEN"), "{err}");
}

#[test]
fn bad_repo_name_refused() {
    let text = GOOD.replace("acme/widgets", "../etc");
    let err = Config::from_toml(&text, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("projects.DEMO.repos"), "{err}");
    assert!(!valid_repo_name("a/b/c"));
    assert!(valid_repo_name("acme/widgets.rs"));
}

#[test]
fn urls_lose_their_credentials_for_display() {
    for (raw, shown) in [
        ("postgres://u:s3cret@db:5432/q", "postgres://***@db:5432/q"),
        ("postgress://u:s3cret@h/db", "postgress://***@h/db"),
        ("https://ghp_tok3n@github.com", "https://***@github.com"),
        // Unescaped `@`, `/` and `?` in a password: nothing after the scheme up to the last `@` survives.
        ("postgres://u:p@ss/w?rd@h/db", "postgres://***@h/db"),
        (
            "postgres://h/db?user=u&password=s3cret&sslmode=require",
            "postgres://h/db?user=u&password=***&sslmode=require",
        ),
        (
            "/var/lib/drafter/queue.sqlite",
            "/var/lib/drafter/queue.sqlite",
        ),
        (
            "https://example.atlassian.net",
            "https://example.atlassian.net",
        ),
        (
            "queue `postgresql://a:s3cret@h/db` and `https://x:s3cret@y/`",
            "queue `postgresql://***@h/db` and `https://***@y/`",
        ),
    ] {
        assert_eq!(redact_url(raw), shown, "{raw}");
    }
}

#[test]
fn check_config_output_and_url_errors_hide_url_credentials() {
    let text =
        format!("{GOOD}\n[serve]\nqueue = \"postgres://drafter:s3cret@db.internal/drafter\"\n");
    let c = Config::from_toml(&text, Path::new("d.toml"), &env).unwrap();
    assert!(
        c.serve.queue.contains("s3cret"),
        "the real value is kept for use"
    );
    assert_eq!(c.serve.delivery_retention_days, 30);
    let shown = format!("{:#?}", c.for_display());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("db.internal"), "{shown}");

    let text = GOOD.replace("https://example.atlassian.net/", "https://bot:s3cret@[bad");
    let err = Config::from_toml(&text, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("jira.base_url"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn delivery_retention_is_configurable_and_at_least_a_day() {
    let text = format!("{GOOD}\n[serve]\ndelivery_retention_days = 7\n");
    let c = Config::from_toml(&text, Path::new("d.toml"), &env).unwrap();
    assert_eq!(c.serve.delivery_retention_days, 7);
    let text = format!("{GOOD}\n[serve]\ndelivery_retention_days = 0\n");
    let err = Config::from_toml(&text, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("serve.delivery_retention_days"), "{err}");
}

#[test]
fn mirror_cache_defaults_on_under_the_data_dir_and_is_bounded() {
    let c = Config::from_toml(GOOD, Path::new("d.toml"), &env).unwrap();
    assert_eq!(
        c.repo,
        CloneConfig {
            mirror: true,
            mirror_dir: PathBuf::from("/var/lib/drafter/mirrors"),
            mirror_max_bytes: 10 << 30,
            spare_workspaces: true,
        }
    );
    let text = format!(
        "{GOOD}\n[repo]\nmirror = false\nmirror_dir = \"/srv/m\"\nmirror_max_bytes = 1000\nspare_workspaces = false\n"
    );
    let c = Config::from_toml(&text, Path::new("d.toml"), &env).unwrap();
    assert_eq!(
        (
            c.repo.mirror,
            c.repo.mirror_dir,
            c.repo.mirror_max_bytes,
            c.repo.spare_workspaces
        ),
        (false, PathBuf::from("/srv/m"), 1000, false)
    );
    for bad in ["mirror_max_bytes = 0", "mirrors = true"] {
        let text = format!("{GOOD}\n[repo]\n{bad}\n");
        let err = Config::from_toml(&text, Path::new("d.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("repo.mirror"), "{bad}: {err}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example must stay loadable: it is what admins copy.
    #[test]
    fn examples_drafter_toml_loads() {
        let text = include_str!("../../examples/drafter.toml");
        let env = |n: &str| match n {
            "JIRA_API_TOKEN" | "GITHUB_TOKEN" | "ANTHROPIC_API_KEY" | "JIRA_WEBHOOK_SECRET" => {
                Some("value".to_string())
            }
            _ => None,
        };
        let c = Config::from_toml(text, Path::new("examples/drafter.toml"), &env).unwrap();
        assert_eq!(c.projects["PAY"].repos.len(), 2);
        assert_eq!(c.projects["PAY"].repos[1].base, "develop");
        assert_eq!(c.model.provider, ProviderKind::Anthropic);
    }
}

#[test]
fn a_github_app_replaces_the_token() {
    let app = GOOD.replace(
        "token_env = \"GH_TOKEN\"",
        "app_id = 31337\napp_private_key_env = \"GH_APP_KEY\"",
    );
    let key_env = |n: &str| match n {
        "GH_APP_KEY" => {
            Some("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n".into())
        }
        n => env(n),
    };
    let c = Config::from_toml(&app, Path::new("d.toml"), &key_env).unwrap();
    let a = c.github.app.as_ref().expect("app");
    assert_eq!(a.app_id, 31337);
    assert!(a
        .private_key
        .value()
        .unwrap()
        .expose()
        .starts_with("-----BEGIN"));
    assert!(c.github.token.value().is_err(), "no token is read");
    assert!(!format!("{c:?}").contains("abc"));

    // The key is a secret like the others: unset, the error names the key and the variable.
    let err = Config::from_toml(&app, Path::new("d.toml"), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("github.app_private_key_env") && err.contains("GH_APP_KEY"),
        "{err}"
    );

    // Both a token and an App, or an App without its key: refused.
    let both = GOOD.replace(
        "token_env = \"GH_TOKEN\"",
        "token_env = \"GH_TOKEN\"\napp_id = 31337\napp_private_key_env = \"GH_APP_KEY\"",
    );
    let err = Config::from_toml(&both, Path::new("d.toml"), &key_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not both"), "{err}");
    let keyless = GOOD.replace("token_env = \"GH_TOKEN\"", "app_id = 31337");
    let err = Config::from_toml(&keyless, Path::new("d.toml"), &key_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("app_private_key_env"), "{err}");
}
