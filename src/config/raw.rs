//! The file as written: what serde reads, with the defaults for keys left out. `build.rs` checks it and turns it
//! into a [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_data_dir")]
    pub(super) data_dir: PathBuf,
    #[serde(default)]
    pub(super) jira: Option<RawJira>,
    #[serde(default)]
    pub(super) github: Option<RawGithub>,
    #[serde(default)]
    pub(super) model: Option<RawModel>,
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) sandbox: RawSandbox,
    #[serde(default)]
    pub(super) commit: RawCommit,
    #[serde(default)]
    pub(super) projects: BTreeMap<String, RawProject>,
    #[serde(default)]
    pub(super) serve: RawServe,
    #[serde(default)]
    pub(super) poll: RawPoll,
    #[serde(default)]
    pub(super) policy: RawPolicyConfig,
    #[serde(default)]
    pub(super) repo: RawRepo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRepo {
    pub(super) mirror: bool,
    pub(super) mirror_dir: Option<PathBuf>,
    pub(super) mirror_max_bytes: u64,
    pub(super) spare_workspaces: bool,
}

/// Default bound on the mirror cache: 10 GiB.
pub(super) const DEFAULT_MIRROR_MAX_BYTES: u64 = 10 << 30;

impl Default for RawRepo {
    fn default() -> Self {
        RawRepo {
            mirror: true,
            mirror_dir: None,
            mirror_max_bytes: DEFAULT_MIRROR_MAX_BYTES,
            spare_workspaces: true,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPolicyConfig {
    pub(super) file: Option<PathBuf>,
    pub(super) require_signature: bool,
    pub(super) trusted_keys: Vec<String>,
    pub(super) pin_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServe {
    pub(super) queue: Option<String>,
    pub(super) listen: String,
    pub(super) webhook_secret_env: Option<Spanned<String>>,
    pub(super) webhook_secret_file: Option<Spanned<PathBuf>>,
    pub(super) github_webhook_secret_env: Option<Spanned<String>>,
    pub(super) github_webhook_secret_file: Option<Spanned<PathBuf>>,
    pub(super) concurrency: usize,
    pub(super) per_project: usize,
    pub(super) lease_secs: u64,
    pub(super) heartbeat_secs: u64,
    pub(super) drain_timeout_secs: u64,
    pub(super) max_attempts: u32,
    pub(super) idle_poll_ms: u64,
    pub(super) delivery_retention_days: u64,
}

impl Default for RawServe {
    fn default() -> Self {
        RawServe {
            queue: None,
            listen: "127.0.0.1:8787".into(),
            webhook_secret_env: None,
            webhook_secret_file: None,
            github_webhook_secret_env: None,
            github_webhook_secret_file: None,
            concurrency: 4,
            per_project: 2,
            lease_secs: 60,
            heartbeat_secs: 10,
            drain_timeout_secs: 120,
            max_attempts: 5,
            idle_poll_ms: 500,
            delivery_retention_days: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPoll {
    pub(super) enabled: bool,
    pub(super) interval_secs: u64,
    pub(super) projects: Vec<String>,
    pub(super) statuses: Vec<String>,
}

impl Default for RawPoll {
    fn default() -> Self {
        RawPoll {
            enabled: false,
            interval_secs: 60,
            projects: Vec::new(),
            statuses: Vec::new(),
        }
    }
}

pub(super) fn default_data_dir() -> PathBuf {
    PathBuf::from(".drafter")
}

/// Most acceptance-criteria fields a configuration may name.
pub const MAX_CRITERIA_FIELDS: usize = 10;

/// Jira field ids go into the issue request's `fields=` list: only plain ids (`customfield_10042`), a few of them.
pub(super) fn check_field_ids(ids: &[String]) -> Result<(), String> {
    if ids.len() > MAX_CRITERIA_FIELDS {
        return Err(format!("at most {MAX_CRITERIA_FIELDS} fields"));
    }
    for id in ids {
        let plain = !id.is_empty()
            && id.len() <= 64
            && id.starts_with(|c: char| c.is_ascii_alphabetic())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(format!(
                "{id:?} is not a Jira field id (expected e.g. \"customfield_10042\")"
            ));
        }
    }
    Ok(())
}

/// A `[jira.transitions.KEY]` table: `KEY` is a project key or `*`, each target a non-empty status or category.
pub(super) fn check_transitions(project: &str, t: &Transitions) -> Result<(), String> {
    let key_ok = project == "*"
        || (project.len() >= 2
            && project.starts_with(|c: char| c.is_ascii_uppercase())
            && project
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
    if !key_ok {
        return Err(format!(
            "{project:?} is not a Jira project key (expected e.g. DEMO, or \"*\" for every project)"
        ));
    }
    for target in [&t.on_start, &t.on_pr].into_iter().flatten() {
        if target.trim().is_empty() || target.len() > 255 {
            return Err(
                "a transition target is a status name or category, 1 to 255 characters".into(),
            );
        }
    }
    Ok(())
}

/// Where a secret lives: exactly one of `*_env` or `*_file`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJira {
    pub(super) base_url: String,
    #[serde(default)]
    pub(super) bot_account_id: String,
    #[serde(default)]
    pub(super) bot_username: Option<String>,
    #[serde(default)]
    pub(super) flavor: JiraFlavor,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) acceptance_criteria_fields: Vec<String>,
    #[serde(default = "default_true")]
    pub(super) remote_links: bool,
    #[serde(default)]
    pub(super) transitions: BTreeMap<String, Transitions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGithub {
    #[serde(default = "default_github_api")]
    pub(super) api_url: String,
    #[serde(default = "default_github_git")]
    pub(super) git_url: String,
    #[serde(default)]
    pub(super) token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) token_file: Option<Spanned<PathBuf>>,
    /// A GitHub App instead of the token: its id, and its private key (PEM) by reference.
    #[serde(default)]
    pub(super) app_id: Option<u64>,
    #[serde(default)]
    pub(super) app_private_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) app_private_key_file: Option<Spanned<PathBuf>>,
    /// The login the bot comments as on GitHub (`drafter-bot`, or `<app-slug>[bot]`): mentions of it in review
    /// comments start follow-up iterations, and its own comments are ignored.
    #[serde(default)]
    pub(super) bot_login: Option<String>,
    /// GitHub login -> Jira account id (Cloud) or user name (Data Center): a reviewer whose Jira identity passes the
    /// policy's `triggers` may steer review follow-ups when the team lists no `reviewers`.
    #[serde(default)]
    pub(super) identities: std::collections::BTreeMap<String, String>,
}

impl Default for RawGithub {
    fn default() -> Self {
        RawGithub {
            api_url: default_github_api(),
            git_url: default_github_git(),
            token_env: None,
            token_file: None,
            app_id: None,
            bot_login: None,
            identities: Default::default(),
            app_private_key_env: None,
            app_private_key_file: None,
        }
    }
}

pub(super) fn default_github_api() -> String {
    "https://api.github.com".into()
}
pub(super) fn default_github_git() -> String {
    "https://github.com".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) provider: ProviderKind,
    pub(super) base_url: String,
    pub(super) model: String,
    #[serde(default)]
    pub(super) api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) api_key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_max_tokens_per_call")]
    pub(super) max_tokens_per_call: u32,
    #[serde(default = "default_request_timeout")]
    pub(super) request_timeout_secs: u64,
    #[serde(default = "default_true")]
    pub(super) prompt_caching: bool,
}

impl Default for RawModel {
    /// Only ever used for a `[model]` table that is missing or unreadable, whose problem stops every command that
    /// would read it.
    fn default() -> Self {
        RawModel {
            provider: ProviderKind::Anthropic,
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            api_key_file: None,
            max_tokens_per_call: default_max_tokens_per_call(),
            request_timeout_secs: default_request_timeout(),
            prompt_caching: true,
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_max_tokens_per_call() -> u32 {
    4096
}
pub(super) fn default_request_timeout() -> u64 {
    300
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAgent {
    pub(super) max_turns: u32,
    pub(super) max_total_tokens: u64,
    pub(super) wall_time_secs: u64,
    pub(super) context_budget_tokens: u64,
}

impl Default for RawAgent {
    fn default() -> Self {
        RawAgent {
            max_turns: 40,
            max_total_tokens: 1_000_000,
            wall_time_secs: 1800,
            // Below the smallest context window of the models drafter is used with (Claude: 200k), with room for
            // the reply.
            context_budget_tokens: 120_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSandbox {
    pub(super) image: String,
    pub(super) memory_mb: u64,
    pub(super) cpus: f64,
    pub(super) pids_limit: i64,
    pub(super) tmp_size_mb: u64,
    pub(super) command_timeout_secs: u64,
    pub(super) output_cap_bytes: usize,
    pub(super) runtime: Option<String>,
    pub(super) transport: Transport,
    pub(super) executor: Option<PathBuf>,
    pub(super) max_output_mb: u64,
    pub(super) workspace_max_mb: u64,
    pub(super) pool_size: usize,
    pub(super) egress_allow_addresses: Vec<String>,
}

impl Default for RawSandbox {
    fn default() -> Self {
        RawSandbox {
            image: "drafter-sandbox:latest".into(),
            memory_mb: 2048,
            cpus: 2.0,
            pids_limit: 512,
            tmp_size_mb: 512,
            command_timeout_secs: 300,
            output_cap_bytes: 64 * 1024,
            runtime: None,
            transport: Transport::Sandboxd,
            executor: None,
            max_output_mb: 16,
            workspace_max_mb: 4096,
            pool_size: 0,
            egress_allow_addresses: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCommit {
    pub(super) name: String,
    pub(super) email: String,
}

impl Default for RawCommit {
    fn default() -> Self {
        RawCommit {
            name: "drafter[bot]".into(),
            email: "drafter@localhost".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub(super) repos: Spanned<Vec<RepoConfig>>,
}

/// Environment variables that override single keys of the file, for containers and systemd units where editing the
/// file is awkward. Secrets are not here: they are always given by name (`*_env`) or path (`*_file`).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DRAFTER_DATA_DIR", "data_dir"),
    ("DRAFTER_JIRA_BASE_URL", "jira.base_url"),
    ("DRAFTER_JIRA_BOT_ACCOUNT_ID", "jira.bot_account_id"),
    ("DRAFTER_JIRA_EMAIL", "jira.email"),
    ("DRAFTER_JIRA_FLAVOR", "jira.flavor"),
    ("DRAFTER_JIRA_BOT_USERNAME", "jira.bot_username"),
    ("DRAFTER_JIRA_USERNAME", "jira.username"),
    ("DRAFTER_GITHUB_API_URL", "github.api_url"),
    ("DRAFTER_GITHUB_GIT_URL", "github.git_url"),
    ("DRAFTER_MODEL_PROVIDER", "model.provider"),
    ("DRAFTER_MODEL_BASE_URL", "model.base_url"),
    ("DRAFTER_MODEL_MODEL", "model.model"),
    ("DRAFTER_SANDBOX_IMAGE", "sandbox.image"),
    ("DRAFTER_SANDBOX_TRANSPORT", "sandbox.transport"),
    ("DRAFTER_SERVE_QUEUE", "serve.queue"),
    ("DRAFTER_SERVE_LISTEN", "serve.listen"),
];
