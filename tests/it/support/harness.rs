//! The whole stand-in world for one run: Jira, GitHub (REST + a real git remote) and a scripted model, seeded with
//! the bundled example (`examples/demo/`), plus a runner configuration file pointing at them.
//!
//! The runner under test is the real `drafter` binary; it reaches the stand-ins only through the base URLs in the
//! configuration, exactly as it would reach the real services.
//!
//! Long on purpose (over 700 lines): the one `Stack` every integration test starts (stand-ins, config, processes), kept
//! together so tests share one way to build it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::github::GithubStandIn;
use super::jira::{JiraStandIn, DC_BOT_KEY, DC_BOT_NAME};
use super::model::{ModelStandIn, Step};

/// Secret values used by the stand-ins. Tests assert that none of them leaks anywhere.
pub const JIRA_EMAIL: &str = "drafter-bot@example.com";
/// The Jira API token.
pub const JIRA_TOKEN: &str = "jira-TESTSECRET-5d1c9a";
/// The GitHub token.
pub const GITHUB_TOKEN: &str = "ghp_TESTSECRET0000000000000000000000abcd";
/// The model API key.
pub const MODEL_KEY: &str = "sk-TESTSECRET-model-7e2b";
/// The Jira admin webhook's secret.
pub const WEBHOOK_SECRET: &str = "whsec-TESTSECRET-4411";
/// The bot's Jira account id.
pub const BOT_ACCOUNT: &str = "712020:drafter-bot";

/// Every secret value, for leak checks.
pub const SECRETS: &[&str] = &[JIRA_TOKEN, GITHUB_TOKEN, MODEL_KEY, WEBHOOK_SECRET];

/// The example's repository name.
pub const DEMO_REPO: &str = "acme/widgets";

/// Which Jira the stack stands in for. Scenarios that must hold on both are written once, taking a flavor, and run
/// as one test per flavor; the rest run on Cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Jira Cloud: REST v3, ADF, account ids, email + API token.
    #[default]
    Cloud,
    /// Jira Data Center: REST v2 only, wiki markup, user names and keys, a personal access token. The runner is
    /// configured the way the README's Data Center section says: `flavor`, `bot_username`, `token_env`, nothing
    /// else about the bot (its key is learned from `/myself`).
    DataCenter,
}

impl Flavor {
    /// How this flavor names `p` (account id on Cloud, user name on Data Center): what a trigger records.
    pub fn id(self, p: Person) -> &'static str {
        match self {
            Flavor::Cloud => p.account_id,
            Flavor::DataCenter => p.name,
        }
    }

    /// How a policy may list `p`: the account id on Cloud, the user key on Data Center (so the runner must learn
    /// the key of whoever a webhook names by user name).
    pub fn listed(self, p: Person) -> &'static str {
        match self {
            Flavor::Cloud => p.account_id,
            Flavor::DataCenter => p.key,
        }
    }
}

/// A person of the stand-in world, named as each flavor names people.
#[derive(Debug, Clone, Copy)]
pub struct Person {
    /// Cloud account id.
    pub account_id: &'static str,
    /// Data Center user name.
    pub name: &'static str,
    /// Data Center user key (not the name: users made since Jira 8.4).
    pub key: &'static str,
}

/// The developer who assigns tickets in the scenarios (the user in [`assignment_webhook`]).
pub const ADA: Person = Person {
    account_id: "712020:developer-ada",
    name: "ada",
    key: "JIRAUSER10200",
};
/// A lead who may approve.
pub const LIN: Person = Person {
    account_id: "712020:lead-lin",
    name: "lin",
    key: "JIRAUSER10300",
};
/// Someone who may do nothing.
pub const MALLORY: Person = Person {
    account_id: "712020:mallory",
    name: "mallory",
    key: "JIRAUSER10666",
};

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
    /// Whole tables appended to the configuration (`[serve]`, `[poll]`).
    pub extra_toml: String,
    /// Lines added to the `[sandbox]` table.
    pub sandbox_toml: String,
    /// Replay the script per conversation (many jobs, or retried jobs) instead of consuming it once.
    pub per_conversation: bool,
    /// A policy file's text: written to `policy.toml` and named in `[policy]`, replacing the `[projects]` tables.
    pub policy: Option<String>,
    /// Lines added to the `[model]` table.
    pub model_toml: String,
    /// Lines added to the `[agent]` table.
    pub agent_toml: String,
    /// Lines added to the `[jira]` table.
    pub jira_toml: String,
    /// Lines added to the `[github]` table.
    pub github_toml: String,
    /// Which Jira to stand in for.
    pub flavor: Flavor,
    /// Authenticate to GitHub as a GitHub App (a key pair made for the test) instead of the personal token.
    pub github_app: bool,
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
            extra_toml: String::new(),
            sandbox_toml: String::new(),
            per_conversation: false,
            policy: None,
            model_toml: String::new(),
            agent_toml: String::new(),
            jira_toml: String::new(),
            github_toml: String::new(),
            flavor: Flavor::Cloud,
            github_app: false,
        }
    }
}

/// A running stand-in world.
pub struct Stack {
    /// Jira stand-in (Cloud or Data Center, per [`Stack::flavor`]).
    pub jira: JiraStandIn,
    /// Which Jira it is.
    pub flavor: Flavor,
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
    /// Held while the stack lives: its `drafter run` and `serve` processes sweep orphaned containers at start-up.
    _sweeping: super::Sweeping,
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

/// The example ticket: key, summary, labels, ADF description and the same description in wiki markup
/// (`description_wiki`, for Data Center).
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
        let jira = match opts.flavor {
            Flavor::Cloud => JiraStandIn::start(JIRA_EMAIL, JIRA_TOKEN).await,
            Flavor::DataCenter => JiraStandIn::start_datacenter(JIRA_TOKEN).await,
        };
        for p in [ADA, LIN, MALLORY] {
            jira.add_user(p.name, p.key);
        }
        let github = GithubStandIn::start(GITHUB_TOKEN).await;
        let model = if opts.per_conversation {
            ModelStandIn::start_per_conversation(opts.script).await
        } else {
            ModelStandIn::start(opts.script).await
        };
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
        let description = match opts.flavor {
            Flavor::Cloud => t["description"].clone(),
            Flavor::DataCenter => t["description_wiki"].clone(),
        };
        jira.add_issue(
            t["key"].as_str().expect("key"),
            t["summary"].as_str().expect("summary"),
            description,
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
{jira_identity}
token_env = "DRAFTER_TEST_JIRA_TOKEN"
{jira_extra}

[github]
api_url = "{api}"
git_url = "{git}"
{github_auth}
{github_extra}

[model]
provider = "{provider}"
base_url = "{model}"
model = "scripted-model"
api_key_env = "DRAFTER_TEST_MODEL_KEY"
request_timeout_secs = 30
{model_extra}

[agent]
max_turns = {max_turns}
max_total_tokens = {max_tokens}
wall_time_secs = {wall}
{agent_extra}

[sandbox]
image = "{image}"
memory_mb = 512
cpus = 1.0
pids_limit = 128
command_timeout_secs = {timeout}
{sandbox_extra}

[commit]
name = "drafter[bot]"
email = "drafter-bot@example.com"

{projects}

{extra}
"#,
            data = dir.path().join("data").display(),
            jira = jira.base_url(),
            jira_identity = match opts.flavor {
                Flavor::Cloud => format!("bot_account_id = \"{BOT_ACCOUNT}\"\nemail = \"{JIRA_EMAIL}\""),
                // A personal access token (Bearer) and the bot's user name: nothing else is needed.
                Flavor::DataCenter => format!("flavor = \"datacenter\"\nbot_username = \"{DC_BOT_NAME}\""),
            },
            github_auth = if opts.github_app {
                let (private, public) = super::github_app::key_pair(dir.path(), "app-key");
                github.enable_app(super::github_app::APP_ID, &public);
                format!(
                    "app_id = {}\napp_private_key_file = \"{}\"",
                    super::github_app::APP_ID,
                    private.display()
                )
            } else {
                "token_env = \"DRAFTER_TEST_GITHUB_TOKEN\"".to_string()
            },
            api = github.api_url(),
            git = github.git_url(),
            provider = opts.provider,
            model = model.base_url(),
            max_turns = opts.max_turns,
            max_tokens = opts.max_total_tokens,
            wall = opts.wall_time_secs,
            timeout = opts.command_timeout_secs,
            extra = opts.extra_toml,
            sandbox_extra = opts.sandbox_toml,
            model_extra = opts.model_toml,
            agent_extra = opts.agent_toml,
            jira_extra = opts.jira_toml,
            github_extra = opts.github_toml,
            projects = match &opts.policy {
                None => format!(
                    "[projects.DEMO]\nrepos = [{{ name = \"{DEMO_REPO}\", base = \"main\", test_command = \"python3 -m unittest -v\" }}]\n\n\
                     [projects.OTHER]\nrepos = [{{ name = \"acme/other\" }}]\n"
                ),
                Some(_) => "[policy]\nfile = \"policy.toml\"\n".to_string(),
            },
        );
        if let Some(policy) = &opts.policy {
            std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
        }
        let config_path = dir.path().join("drafter.toml");
        std::fs::write(&config_path, config).expect("write config");
        Stack {
            jira,
            flavor: opts.flavor,
            github,
            model,
            dir,
            config_path,
            bare_repo,
            _sweeping: super::sweeping().await,
        }
    }

    /// Seeds `n` tickets for a burst across two projects, `DEMO-<100 + i>` for even `i` and `OTHER-<100 + i>` for
    /// odd, and the `acme/other` repository; their keys. Each ticket names the repository of its own project (the
    /// demo ticket's text names acme/widgets).
    pub fn burst_tickets(&self, n: usize) -> Vec<String> {
        let files = demo_files();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_str()))
            .collect();
        self.github.create_repo("acme/other", &refs);
        let description = demo_ticket()["description"].clone();
        let keys: Vec<String> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    format!("DEMO-{}", 100 + i)
                } else {
                    format!("OTHER-{}", 100 + i)
                }
            })
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let desc = if key.starts_with("OTHER") {
                serde_json::json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
                    {"type": "text", "text": "Greeting should end with an exclamation mark."}]}]})
            } else {
                description.clone()
            };
            self.jira.add_issue(
                key,
                &format!("Greeting should end with an exclamation mark {i}"),
                desc,
                &[],
            );
        }
        keys
    }

    /// The data directory named in the configuration.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// How this flavor names `p` (see [`Flavor::id`]).
    pub fn id(&self, p: Person) -> &'static str {
        self.flavor.id(p)
    }

    /// `p` as a user object of this flavor.
    pub fn user(&self, p: Person) -> Value {
        self.jira.user(self.id(p))
    }

    /// The bot as the runner is configured to know it, as a user object of this flavor.
    pub fn bot_user(&self) -> Value {
        match self.flavor {
            Flavor::Cloud => {
                serde_json::json!({"accountId": BOT_ACCOUNT, "displayName": "drafter bot"})
            }
            Flavor::DataCenter => self.jira.bot_user(),
        }
    }

    /// A one-paragraph description in this flavor's format: ADF on Cloud, wiki markup on Data Center.
    pub fn text(&self, text: &str) -> Value {
        match self.flavor {
            Flavor::Cloud => serde_json::json!({"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": text}]}]}),
            Flavor::DataCenter => Value::String(text.to_string()),
        }
    }

    /// How a comment's text mentions the bot: `[~accountid:<id>]` (Cloud webhooks), `[~name]` (Data Center).
    pub fn bot_mention(&self) -> String {
        match self.flavor {
            Flavor::Cloud => format!("[~accountid:{BOT_ACCOUNT}]"),
            Flavor::DataCenter => format!("[~{DC_BOT_NAME}]"),
        }
    }

    /// A `jira:issue_updated` webhook body in which `by` assigns `key` to the bot (change `changelog_id`): the Cloud
    /// shape of [`assignment_webhook`], or Data Center's (users by `name`/`key`, the bot's key as `to`, no
    /// `fieldId`/`tmp*` fields).
    pub fn assignment_webhook(&self, key: &str, changelog_id: u64, by: Person) -> Value {
        match self.flavor {
            Flavor::Cloud => {
                let mut hook = assignment_webhook(key, changelog_id);
                hook["user"] = self.user(by);
                hook
            }
            Flavor::DataCenter => serde_json::json!({
                "timestamp": 1_740_947_640_940u64,
                "webhookEvent": "jira:issue_updated",
                "user": self.user(by),
                "issue": {"id": self.jira.issue_id(key).to_string(), "key": key, "fields": {
                    "summary": "ticket", "project": {"key": key.split('-').next().unwrap_or("")},
                    "assignee": {"name": DC_BOT_NAME, "key": DC_BOT_KEY}}},
                "changelog": {"id": changelog_id.to_string(), "items": [{
                    "field": "assignee", "fieldtype": "jira",
                    "from": null, "fromString": null, "to": DC_BOT_KEY, "toString": "drafter bot"}]}
            }),
        }
    }

    /// A `comment_created` webhook body: `author` (a user object, e.g. [`Stack::user`]) wrote `body` (wiki markup,
    /// as both flavors' webhooks carry it) as comment `id` on `key`, just now. Cloud names the issue in the payload;
    /// Data Center does not (the webhook URL carries `?issue=${issue.key}`, see [`ServeProcess::webhook_for`]) and
    /// names its id only in `comment.self`.
    pub fn comment_webhook(&self, key: &str, id: &str, author: Value, body: &str) -> Value {
        let api = match self.flavor {
            Flavor::Cloud => "3",
            Flavor::DataCenter => "2",
        };
        let issue_id = self.jira.issue_id(key);
        let mut hook = serde_json::json!({
            "timestamp": 1_740_947_700_000u64,
            "webhookEvent": "comment_created",
            "comment": {"id": id,
                        "self": format!("{}/rest/api/{api}/issue/{issue_id}/comment/{id}", self.jira.base_url()),
                        "author": author.clone(), "updateAuthor": author,
                        "body": body,
                        "created": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()},
        });
        if self.flavor == Flavor::Cloud {
            hook["issue"] = serde_json::json!({"id": issue_id.to_string(), "key": key,
                "fields": {"summary": "x", "project": {"key": key.split('-').next().unwrap_or("")}}});
        }
        hook
    }

    /// The directory of the only job in the data directory (`jobs/<id>/`), failing the test unless there is exactly
    /// one.
    pub fn only_job_dir(&self) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.data_dir().join("jobs"))
            .expect("jobs dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        assert_eq!(dirs.len(), 1, "exactly one job directory: {dirs:?}");
        dirs[0].clone()
    }

    /// The only job's bundle, verified through `drafter verify` pinned to the runner key; its statements.
    pub async fn verified_bundle(
        &self,
        bin: &Path,
    ) -> Vec<(
        drafter::proof::bundle::Statement,
        drafter::proof::bundle::Predicate,
    )> {
        let dir = self.only_job_dir();
        let key = self.data_dir().join("runner.pub");
        let (out, log) = self
            .output(
                bin,
                &[
                    "verify",
                    dir.to_str().expect("utf8"),
                    "--key",
                    key.to_str().expect("utf8"),
                ],
            )
            .await;
        assert!(out.status.success(), "{log}");
        let bytes = std::fs::read(dir.join("bundle.jsonl")).expect("bundle");
        drafter::proof::bundle::read_statements(&bytes).expect("statements")
    }

    /// The SQLite queue in the data directory, the one `drafter serve` and `drafter run` use.
    pub async fn queue(&self) -> std::sync::Arc<dyn drafter::queue::Queue> {
        let path = self.data_dir().join("queue.sqlite");
        drafter::queue::open(path.to_str().expect("utf8"))
            .await
            .expect("open the queue the worker uses")
    }

    /// `drafter run --ticket <ticket>`, stopped with SIGTERM once the model has been asked (and its first command
    /// has had a moment to start); its output, once it exited (within 30 s).
    pub async fn run_then_stop(&self, bin: &Path, ticket: &str) -> std::process::Output {
        use std::time::{Duration, Instant};
        let child = self
            .drafter(bin, &["run", "--ticket", ticket])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn drafter");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.model.requests().is_empty() {
            assert!(Instant::now() < deadline, "the job never reached the model");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("drafter stops promptly")
            .expect("wait")
    }

    /// The paths of every request the Jira stand-in received.
    pub fn jira_paths(&self) -> Vec<String> {
        self.jira.requests().into_iter().map(|r| r.path).collect()
    }

    /// Runs `drafter <args>` against this stack to the end: its exit status, and stdout and stderr as one text.
    pub async fn output(&self, bin: &Path, args: &[&str]) -> (std::process::Output, String) {
        let out = self
            .drafter(bin, args)
            .output()
            .await
            .expect("drafter runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, text)
    }

    /// Runs `drafter <args> --queue <this stack's queue>` as the operator `ops-olga` (`USER`), with no configuration
    /// or secret in its environment, as `drafter jobs`, `pause` and `resume` are run on a worker's host; its stdout,
    /// failing the test when it fails.
    pub fn operator(&self, bin: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--queue")
            .arg(self.data_dir().join("queue.sqlite"))
            .env("USER", "ops-olga")
            .output()
            .expect("drafter");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `drafter <args>` against this stack, with the secrets in its environment only.
    pub fn drafter(&self, bin: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .env("DRAFTER_TEST_JIRA_TOKEN", JIRA_TOKEN)
            .env("DRAFTER_TEST_GITHUB_TOKEN", GITHUB_TOKEN)
            .env("DRAFTER_TEST_MODEL_KEY", MODEL_KEY)
            .env("DRAFTER_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("DRAFTER_CONFIG", &self.config_path)
            .env("RUST_LOG", "drafter=debug")
            .kill_on_drop(true);
        cmd
    }
}

/// `sha256=<hex HMAC-SHA256(WEBHOOK_SECRET, body)>`, as Jira signs admin webhooks (`X-Hub-Signature`).
pub fn sign(body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())
        .expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Cloud `jira:issue_updated` webhook body assigning `key` to the bot (the shape in the reference notes).
pub fn assignment_webhook(key: &str, changelog_id: u64) -> serde_json::Value {
    serde_json::json!({
        "timestamp": 1_740_947_640_940u64,
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_assigned",
        "user": {"accountId": "712020:developer-ada", "displayName": "Ada"},
        "issue": {"id": "10411", "key": key, "fields": {
            "summary": "ticket", "project": {"key": key.split('-').next().unwrap_or("")},
            "assignee": {"accountId": BOT_ACCOUNT}}},
        "changelog": {"id": changelog_id.to_string(), "items": [{
            "field": "assignee", "fieldtype": "jira", "fieldId": "assignee",
            "from": null, "fromString": null, "to": BOT_ACCOUNT, "toString": "drafter",
            "tmpFromAccountId": null, "tmpToAccountId": BOT_ACCOUNT}]}
    })
}

/// Every job in `queue`.
pub async fn all_jobs(queue: &dyn drafter::queue::Queue) -> Vec<drafter::queue::Job> {
    queue
        .list(&drafter::queue::JobFilter {
            limit: 100_000,
            ..drafter::queue::JobFilter::default()
        })
        .await
        .expect("list")
}

/// Waits until every job is finished (or the deadline passes); returns the jobs.
pub async fn wait_all_finished(
    queue: &dyn drafter::queue::Queue,
    expected: usize,
    within: std::time::Duration,
) -> Vec<drafter::queue::Job> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let jobs = all_jobs(queue).await;
        let open = jobs.iter().filter(|j| j.state.is_open()).count();
        if jobs.len() >= expected && open == 0 {
            return jobs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {expected} jobs, {open} still open after {within:?}",
            jobs.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A running `drafter serve` process, with its stderr collected (it must be drained, or the child blocks).
pub struct ServeProcess {
    child: tokio::process::Child,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `drafter serve` against `stack` and waits until it listens.
    pub async fn start(stack: &Stack, bin: &Path) -> ServeProcess {
        Self::start_with(stack, bin, &[]).await
    }

    /// Like [`ServeProcess::start`], with extra environment variables (e.g. `DRAFTER_SERVE_QUEUE`).
    pub async fn start_with(stack: &Stack, bin: &Path, env: &[(&str, &str)]) -> ServeProcess {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = stack.drafter(bin, &["serve"]);
        cmd.env("RUST_LOG", "drafter=info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn drafter serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(pipe).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let Some(addr) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
                    {
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let addr = match tokio::time::timeout(std::time::Duration::from_secs(60), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "drafter serve did not start listening:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        ServeProcess {
            child,
            addr,
            stderr,
        }
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `kill -9`: a crash, no cleanup at all.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// Sends `sig` (`-HUP`, `-STOP`, ...) with `kill`, failing the test when it cannot.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }

    /// SIGTERM, then waits (bounded) for it to exit; returns its exit status and stderr.
    pub async fn sigterm(
        mut self,
        within: std::time::Duration,
    ) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "drafter serve did not stop within {within:?}:\n{}",
                    self.stderr()
                )
            })
            .expect("wait");
        // Let the reader catch the last lines.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        (status, self.stderr())
    }

    /// SIGTERM, asserting it exits cleanly within a minute; returns its stderr.
    pub async fn stop(self) -> String {
        let (status, log) = self.sigterm(std::time::Duration::from_secs(60)).await;
        assert!(status.success(), "{log}");
        log
    }

    /// POSTs Ada's signed assignment of `key` to the bot ([`assignment_webhook`]) and asserts it was queued (202).
    pub async fn assign(&self, client: &reqwest::Client, key: &str, changelog_id: u64) {
        let status = self
            .webhook(client, &assignment_webhook(key, changelog_id))
            .await;
        assert_eq!(status, 202, "assigning {key} (changelog {changelog_id})");
    }

    /// POSTs a signed webhook body; returns the status code.
    pub async fn webhook(&self, client: &reqwest::Client, body: &serde_json::Value) -> u16 {
        self.webhook_at(client, body, "").await
    }

    /// POSTs a signed webhook body about issue `key` as the stack's Jira sends it: Data Center's webhook URL carries
    /// `?issue=${issue.key}` (its comment payloads do not name the issue), Cloud's does not.
    pub async fn webhook_for(
        &self,
        stack: &Stack,
        client: &reqwest::Client,
        key: &str,
        body: &serde_json::Value,
    ) -> u16 {
        let query = match stack.flavor {
            Flavor::Cloud => String::new(),
            Flavor::DataCenter => format!("?issue={key}"),
        };
        self.webhook_at(client, body, &query).await
    }

    /// POSTs a signed webhook body to `/webhooks/jira<query>`; returns the status code.
    pub async fn webhook_at(
        &self,
        client: &reqwest::Client,
        body: &serde_json::Value,
        query: &str,
    ) -> u16 {
        let bytes = serde_json::to_vec(body).expect("json");
        let resp = client
            .post(format!("http://{}/webhooks/jira{query}", self.addr))
            .header("content-type", "application/json")
            .header("x-hub-signature", sign(&bytes))
            .body(bytes)
            .send()
            .await
            .expect("webhook request");
        resp.status().as_u16()
    }
}
