//! The whole stand-in world for one run: Jira, GitHub (REST + a real git remote) and a scripted model, seeded with
//! the bundled example (`examples/demo/`), plus a runner configuration file pointing at them.
//!
//! The runner under test is the real `drafter` binary; it reaches the stand-ins only through the base URLs in the
//! configuration, exactly as it would reach the real services.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::github::GithubStandIn;
use super::jira::JiraStandIn;
use super::model::{ModelStandIn, Step};

/// Secret values used by the stand-ins. Tests assert that none of them leaks anywhere.
pub const JIRA_EMAIL: &str = "drafter-bot@example.com";
/// The Jira API token.
pub const JIRA_TOKEN: &str = "jira-TESTSECRET-5d1c9a";
/// The GitHub token.
pub const GITHUB_TOKEN: &str = "ghp_TESTSECRET0000000000000000000000abcd";
/// The model API key.
pub const MODEL_KEY: &str = "sk-TESTSECRET-model-7e2b";
/// The bot's Jira account id.
pub const BOT_ACCOUNT: &str = "712020:drafter-bot";

/// Every secret value, for leak checks.
pub const SECRETS: &[&str] = &[JIRA_TOKEN, GITHUB_TOKEN, MODEL_KEY];

/// The example's repository name.
pub const DEMO_REPO: &str = "acme/widgets";

/// How to set up the world.
pub struct Options {
    /// `anthropic` or `openai`.
    pub provider: &'static str,
    /// The model's answers.
    pub script: Vec<Step>,
    /// `agent.max_turns`.
    pub max_turns: u32,
    /// `agent.max_total_tokens`.
    pub max_total_tokens: u64,
    /// `agent.wall_time_secs`.
    pub wall_time_secs: u64,
    /// `sandbox.command_timeout_secs`.
    pub command_timeout_secs: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            provider: "anthropic",
            script: demo_script(),
            max_turns: 12,
            max_total_tokens: 1_000_000,
            wall_time_secs: 300,
            command_timeout_secs: 60,
        }
    }
}

/// A running stand-in world.
pub struct Stack {
    /// Jira Cloud stand-in.
    pub jira: JiraStandIn,
    /// GitHub stand-in.
    pub github: GithubStandIn,
    /// Scripted model.
    pub model: ModelStandIn,
    /// Scratch directory: config, data dir.
    pub dir: tempfile::TempDir,
    /// The generated runner configuration.
    pub config_path: PathBuf,
    /// The bare repository behind `acme/widgets`.
    pub bare_repo: PathBuf,
}

/// The crate root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example repository's files, read from `examples/demo/repo`.
pub fn demo_files() -> Vec<(String, String)> {
    let dir = root().join("examples/demo/repo");
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/demo/repo exists")
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.path().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            let content = std::fs::read_to_string(e.path()).expect("example file is UTF-8");
            files.push((name, content));
        }
    }
    files
}

/// The example ticket: key, summary, labels and ADF description.
pub fn demo_ticket() -> Value {
    let text =
        std::fs::read_to_string(root().join("examples/demo/ticket.json")).expect("ticket.json");
    serde_json::from_str(&text).expect("ticket.json is JSON")
}

/// The example model transcript as stand-in steps.
pub fn demo_script() -> Vec<Step> {
    let text = std::fs::read_to_string(root().join("examples/demo/transcript.json"))
        .expect("transcript.json");
    let v: Value = serde_json::from_str(&text).expect("transcript.json is JSON");
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| {
            Step::Tools(
                step.as_array()
                    .expect("a step is a list of calls")
                    .iter()
                    .map(|call| {
                        (
                            call[0].as_str().expect("tool name").to_string(),
                            call[1].clone(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

impl Stack {
    /// Starts the stand-ins, seeds the example repository and ticket, and writes the configuration.
    pub async fn start(opts: Options) -> Stack {
        let jira = JiraStandIn::start(JIRA_EMAIL, JIRA_TOKEN).await;
        let github = GithubStandIn::start(GITHUB_TOKEN).await;
        let model = ModelStandIn::start(opts.script).await;
        model.set_expected_key(Some(MODEL_KEY));

        let files = demo_files();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_str()))
            .collect();
        let bare_repo = github.create_repo(DEMO_REPO, &refs);

        let t = demo_ticket();
        let labels: Vec<&str> = t["labels"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        jira.add_issue(
            t["key"].as_str().expect("key"),
            t["summary"].as_str().expect("summary"),
            t["description"].clone(),
            &labels,
        );

        let dir = tempfile::Builder::new()
            .prefix("drafter-stack-")
            .tempdir()
            .expect("tempdir");
        let image = std::env::var("DRAFTER_SANDBOX_IMAGE")
            .unwrap_or_else(|_| "drafter-sandbox:latest".to_string());
        let config = format!(
            r#"# Generated for a run against the bundled stand-ins.
data_dir = "{data}"

[jira]
base_url = "{jira}"
bot_account_id = "{bot}"
email = "{email}"
token_env = "DRAFTER_TEST_JIRA_TOKEN"

[github]
api_url = "{api}"
git_url = "{git}"
token_env = "DRAFTER_TEST_GITHUB_TOKEN"

[model]
provider = "{provider}"
base_url = "{model}"
model = "scripted-model"
api_key_env = "DRAFTER_TEST_MODEL_KEY"
request_timeout_secs = 30

[agent]
max_turns = {max_turns}
max_total_tokens = {max_tokens}
wall_time_secs = {wall}

[sandbox]
image = "{image}"
memory_mb = 512
cpus = 1.0
pids_limit = 128
command_timeout_secs = {timeout}

[commit]
name = "drafter[bot]"
email = "drafter-bot@example.com"

[projects.DEMO]
repos = [{{ name = "{repo}", base = "main", test_command = "python3 -m unittest -v" }}]

[projects.OTHER]
repos = [{{ name = "acme/other" }}]
"#,
            data = dir.path().join("data").display(),
            jira = jira.base_url(),
            bot = BOT_ACCOUNT,
            email = JIRA_EMAIL,
            api = github.api_url(),
            git = github.git_url(),
            provider = opts.provider,
            model = model.base_url(),
            max_turns = opts.max_turns,
            max_tokens = opts.max_total_tokens,
            wall = opts.wall_time_secs,
            timeout = opts.command_timeout_secs,
            repo = DEMO_REPO,
        );
        let config_path = dir.path().join("drafter.toml");
        std::fs::write(&config_path, config).expect("write config");
        Stack {
            jira,
            github,
            model,
            dir,
            config_path,
            bare_repo,
        }
    }

    /// The data directory named in the configuration.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command that runs `drafter <args>` against this stack, with the secrets in its environment only.
    pub fn drafter(&self, bin: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .env("DRAFTER_TEST_JIRA_TOKEN", JIRA_TOKEN)
            .env("DRAFTER_TEST_GITHUB_TOKEN", GITHUB_TOKEN)
            .env("DRAFTER_TEST_MODEL_KEY", MODEL_KEY)
            .env("DRAFTER_CONFIG", &self.config_path)
            .env("RUST_LOG", "drafter=debug")
            .kill_on_drop(true);
        cmd
    }
}
