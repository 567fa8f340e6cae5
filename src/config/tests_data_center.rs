//! Issue 17's Jira Data Center settings under the per-command loader: the password is a secret like the token, read
//! only by the commands that talk to Jira, and every mistake is a problem with its key, line and what it stops.

use super::*;
use std::cell::RefCell;

const EXAMPLE: &str = include_str!("../../examples/drafter.toml");

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .expect("needle in text")
        + 1
}

/// The example switched to Data Center with the bot's user name and password, as the README describes.
fn with_password() -> String {
    EXAMPLE
        .replace("flavor = \"cloud\"", "flavor = \"datacenter\"")
        .replace(
            "bot_account_id = \"712020:00000000-0000-0000-0000-000000000000\"\n",
            "",
        )
        .replace("# bot_username = ", "bot_username = ")
        .replace("email = \"drafter-bot@example.com\"\n", "")
        .replace("token_env = \"JIRA_API_TOKEN\"\n", "")
        .replace("# username = ", "username = ")
        .replace("# password_env = ", "password_env = ")
}

fn env(n: &str) -> Option<String> {
    match n {
        "JIRA_PASSWORD" => Some("hunter2-VALUE".into()),
        "GITHUB_TOKEN" => Some("ghp_VALUE".into()),
        "ANTHROPIC_API_KEY" => Some("sk-VALUE".into()),
        "JIRA_WEBHOOK_SECRET" => Some("whsec-VALUE".into()),
        _ => None,
    }
}

#[test]
fn the_password_is_read_by_the_commands_that_use_jira_only() {
    let text = with_password();
    assert!(
        text.contains("\npassword_env = \"JIRA_PASSWORD\""),
        "{text}"
    );
    let c = Config::from_toml_for(&text, Path::new("d.toml"), &env, Purpose::Run).unwrap();
    assert_eq!(c.jira.flavor, JiraFlavor::Datacenter);
    assert_eq!(
        c.jira.bot_account_id, "drafter-bot",
        "the name stands for the key"
    );
    match &c.jira.auth {
        JiraAuth::Password { username, password } => {
            assert_eq!(username, "drafter-bot");
            assert_eq!(password.value().unwrap().expose(), "hunter2-VALUE");
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("hunter2"));

    let lookups = RefCell::new(Vec::<String>::new());
    let logged = |n: &str| {
        lookups.borrow_mut().push(n.to_string());
        None
    };
    for purpose in [Purpose::Queue, Purpose::DataDir, Purpose::Sandbox] {
        let c = Config::from_toml_for(&text, Path::new("d.toml"), &logged, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        let err = c.jira.auth.secret().value().unwrap_err().to_string();
        assert!(err.contains("`jira.password_env`"), "{err}");
    }
    assert!(
        !lookups.borrow().iter().any(|n| n == "JIRA_PASSWORD"),
        "{:?}",
        lookups.borrow()
    );
    // `policy explain` reads Jira: a missing password stops it, with key and line.
    let err = Config::from_toml_for(&text, Path::new("d.toml"), &logged, Purpose::Explain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`jira.password_env`"), "{err}");
    assert!(err.contains("JIRA_PASSWORD"), "{err}");
    assert!(
        err.contains(&format!("line {}", line_of(&text, "password_env ="))),
        "{err}"
    );
    // check-config names it with what it stops.
    let checked = Config::check(&text, Path::new("d.toml"), &|n: &str| match n {
        "JIRA_PASSWORD" => None,
        other => env(other),
    });
    let p = checked
        .problems
        .iter()
        .find(|p| p.key.as_deref() == Some("jira.password_env"))
        .unwrap_or_else(|| panic!("{:#?}", checked.problems));
    assert_eq!(p.line, Some(line_of(&text, "password_env =")));
    assert_eq!(p.blocked(), ["run", "serve", "policy explain"]);
    let shown = format!("{:?}", checked.display().expect("readable"));
    assert!(
        shown.contains("not read: environment variable JIRA_PASSWORD (`jira.password_env`, line"),
        "{shown}"
    );
}

#[test]
fn mixed_credentials_are_problems_with_key_line_and_blocks() {
    let base = with_password();
    let password_line = line_of(&base, "password_env =");
    // A token as well as a password.
    let text = base.replace(
        "password_env = ",
        "token_env = \"JIRA_API_TOKEN\"\npassword_env = ",
    );
    let both = |text: &str| {
        Config::check(text, Path::new("d.toml"), &|n: &str| match n {
            "JIRA_API_TOKEN" => Some("jira-VALUE".into()),
            other => env(other),
        })
    };
    let checked = both(&text);
    assert_eq!(checked.problems.len(), 1, "{:#?}", checked.problems);
    let p = &checked.problems[0];
    assert_eq!(p.key.as_deref(), Some("jira.password_env"));
    assert_eq!(p.line, Some(password_line + 1));
    assert!(p.message.contains("not both"), "{p}");
    assert_eq!(p.blocked(), ["run", "serve", "policy explain"]);
    // A Jira mistake does not stop the commands that never read Jira.
    assert!(checked.blocking(Purpose::Queue).next().is_none());
    // A password with an email (Cloud's key), and a password without a user name.
    for (text, key, line_needle) in [
        (
            base.replace(
                "\nusername = ",
                "\nemail = \"bot@example.com\"\nusername = ",
            ),
            "jira.email",
            "email =",
        ),
        (
            base.replace("\nusername = \"drafter-bot\"\n", "\n"),
            "jira.username",
            "[jira]",
        ),
        (
            base.replace("password_env = ", "token_env = \"JIRA_API_TOKEN\"\n# was "),
            "jira.username",
            "username =",
        ),
    ] {
        let checked = both(&text);
        assert_eq!(checked.problems.len(), 1, "{key}: {:#?}", checked.problems);
        let p = &checked.problems[0];
        assert_eq!(p.key.as_deref(), Some(key), "{p}");
        assert_eq!(p.line, Some(line_of(&text, line_needle)), "{p}");
        assert_eq!(p.blocked(), ["run", "serve", "policy explain"], "{p}");
    }
}

#[test]
fn data_center_needs_the_bot_user_name_and_overrides_set_it() {
    let base = with_password();
    let text = base.replace("bot_username = \"drafter-bot\"\n", "");
    let checked = Config::check(&text, Path::new("d.toml"), &env);
    assert_eq!(checked.problems.len(), 1, "{:#?}", checked.problems);
    let p = &checked.problems[0];
    assert_eq!(p.key.as_deref(), Some("jira.bot_username"));
    assert_eq!(p.line, Some(line_of(&text, "[jira]")));
    assert_eq!(p.blocked(), ["run", "serve", "policy explain"]);
    // The environment may give the name, the flavor and the user name.
    let from_env = |n: &str| match n {
        "DRAFTER_JIRA_BOT_USERNAME" => Some("bot-from-env".into()),
        "DRAFTER_JIRA_USERNAME" => Some("login-from-env".into()),
        other => env(other),
    };
    let c = Config::from_toml_for(&text, Path::new("d.toml"), &from_env, Purpose::Run).unwrap();
    assert_eq!(c.jira.bot_username.as_deref(), Some("bot-from-env"));
    assert_eq!(c.jira.bot_account_id, "bot-from-env");
    assert!(
        matches!(&c.jira.auth, JiraAuth::Password { username, .. } if username == "login-from-env")
    );
    let cloud = |n: &str| match n {
        "DRAFTER_JIRA_FLAVOR" => Some("cloud".into()),
        other => env(other),
    };
    let err = Config::from_toml_for(&text, Path::new("d.toml"), &cloud, Purpose::Run)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`jira.bot_account_id`: must not be empty"),
        "{err}"
    );
    // A flavor drafter does not know names the variable that set it.
    let bad = |n: &str| match n {
        "DRAFTER_JIRA_FLAVOR" => Some("server".into()),
        other => env(other),
    };
    let checked = Config::check(&base, Path::new("d.toml"), &bad);
    assert_eq!(checked.problems.len(), 1, "{:#?}", checked.problems);
    let p = &checked.problems[0];
    assert_eq!(p.key.as_deref(), Some("jira.flavor"));
    assert!(p.message.contains("`server`"), "{p}");
    assert!(p.message.contains("DRAFTER_JIRA_FLAVOR"), "{p}");
    assert_eq!(p.blocked(), ["run", "serve", "policy explain"]);
}
