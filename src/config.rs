//! Runner configuration: one TOML file, a few environment overrides, secrets by reference.
//!
//! Why secrets are references: the file is meant to be committed to a platform team's config repo or baked into a
//! container image, so it names *where* a secret lives (`token_env = "GITHUB_TOKEN"` or `token_file = "/run/..."`)
//! and never holds the value. Values are read once, here, into [`Secret`], whose `Debug` prints `[redacted]` and
//! which is not `Serialize`: nothing else in the crate reads secrets from the environment.
//!
//! Errors name the file, the key and, where the TOML parser or a span knows it, the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

/// A secret value. `Debug` and `Display` never show it; call [`Secret::expose`] at the one place it is used.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value (tests and stand-ins; the product reads secrets through [`Config::load`]).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the single call site that sends it (an auth header, a git credential callback).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `text` with credentials cut out of every URL in it, for display: the userinfo of `scheme://user:password@host`
/// becomes `***`, and so does the value of a query parameter whose name mentions a password, secret or token
/// (`?password=...`). Works on a bare URL, a mistyped one (`postgress://...`), or a message quoting URLs. Everything
/// else is kept, so the operator still sees which host and database were meant.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // A URL runs to the next blank or quoting character.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        // The last `@`: a password typed with an unescaped `@`, `/` or `?` in it must not leak its tail.
        let url = match url.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &url[at..]
            }
            None => url,
        };
        match url.split_once('?') {
            Some((base, query)) => {
                out.push_str(base);
                out.push('?');
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                        _ => p.to_string(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|w| n.contains(w))
}

/// Why loading the configuration failed. Every variant names the file; most name a key and a line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is missing, or a value has the wrong type. The message comes from the TOML
    /// parser and includes the line and column.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value parsed but is not acceptable (an unset secret variable, an empty allowlist, a bad URL).
    #[error("config file {path}{}: `{key}`: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the offending key, when known.
        line: Option<usize>,
        /// The dotted key, e.g. `github.token_env`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The whole runner configuration, with secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the runner keeps its signing key and one directory per job (receipts, logs, proof).
    pub data_dir: PathBuf,
    /// The Jira site the tickets come from.
    pub jira: JiraConfig,
    /// The forge that receives branches and draft pull requests.
    pub github: GithubConfig,
    /// The model endpoint.
    pub model: ModelConfig,
    /// Limits on one agent run.
    pub agent: AgentLimits,
    /// The container every job runs in.
    pub sandbox: SandboxConfig,
    /// The identity commits are made with.
    pub commit: CommitIdentity,
    /// The allowlist: Jira project key -> repositories drafter may touch for it.
    pub projects: BTreeMap<String, ProjectConfig>,
    /// `drafter serve`: the queue, the worker pool and the HTTP intake.
    pub serve: ServeConfig,
    /// `drafter serve`: the JQL poll, for sites that cannot reach the runner.
    pub poll: PollConfig,
    /// Where the policy lives and what the runner demands of it (signature, pinned hash).
    pub policy: PolicyConfig,
}

/// The runner's demands on its policy (see [`crate::policy`]).
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// The policy file. Without one, a permissive policy is derived from `[projects]` (anyone may trigger, every
    /// tool, the built-in write rules, no budgets).
    pub file: Option<PathBuf>,
    /// Refuse to start unless the policy carries a valid signature (`<file>.sig`) by one of `trusted_keys`.
    pub require_signature: bool,
    /// Ed25519 public keys (64 hex characters) whose policy signatures are accepted. Not the runner's key.
    pub trusted_keys: Vec<String>,
    /// Refuse to start unless the policy's hash is exactly this (`sha256:<hex>`).
    pub pin_hash: Option<String>,
}

/// `drafter serve` settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The queue: a SQLite file path (default `<data_dir>/queue.sqlite`) or a `postgres://` URL.
    pub queue: String,
    /// Address the HTTP server listens on (webhooks, health).
    pub listen: String,
    /// The admin webhook's secret: requests must carry `X-Hub-Signature: sha256=<HMAC of the body>`. Without one,
    /// the webhook endpoint refuses everything (use polling).
    pub webhook_secret: Option<Secret>,
    /// Jobs run at the same time by this worker.
    pub concurrency: usize,
    /// Jobs of one Jira project run at the same time by this worker.
    pub per_project: usize,
    /// Lease length in seconds: a job whose worker stops heartbeating becomes claimable again after this.
    pub lease_secs: u64,
    /// Heartbeat interval in seconds (well under `lease_secs`).
    pub heartbeat_secs: u64,
    /// On SIGTERM: how long running jobs may take to finish before they are cancelled and released.
    pub drain_timeout_secs: u64,
    /// Attempts per job for retryable failures.
    pub max_attempts: u32,
    /// How often an idle worker looks for work, in milliseconds.
    pub idle_poll_ms: u64,
    /// Days a webhook delivery key is remembered (for dedup) after its job was last changed; older keys of
    /// finished jobs are pruned. Keys of open jobs are never pruned.
    pub delivery_retention_days: u64,
}

/// The JQL poll.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// Whether to poll at all.
    pub enabled: bool,
    /// Seconds between polls.
    pub interval_secs: u64,
    /// Projects to poll (default: every allowlisted project).
    pub projects: Vec<String>,
    /// Only tickets in these statuses (default: any).
    pub statuses: Vec<String>,
}

/// Jira connection settings.
#[derive(Debug, Clone)]
pub struct JiraConfig {
    /// Site root, e.g. `https://example.atlassian.net` (no trailing `/rest`).
    pub base_url: String,
    /// The bot account tickets are assigned to (Cloud `accountId`; on Data Center its user key, or its name when
    /// only `bot_username` is configured, until `drafter serve` learns the key from `GET /rest/api/2/myself`).
    pub bot_account_id: String,
    /// Data Center only: the bot's user name, as it appears in `[~username]` mentions.
    pub bot_username: Option<String>,
    /// Cloud or Data Center: decides the REST version, the text format (ADF or wiki markup) and how people are named
    /// (see [`crate::jira::Dialect`]).
    pub flavor: JiraFlavor,
    /// How requests authenticate.
    pub auth: JiraAuth,
    /// Issue fields holding acceptance criteria (`customfield_10042`), given to the model with the ticket when set.
    pub acceptance_criteria_fields: Vec<String>,
}

/// Which Jira.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JiraFlavor {
    /// Jira Cloud (REST v3, ADF, account ids).
    #[default]
    Cloud,
    /// Jira Data Center / Server (REST v2, wiki markup, user names).
    Datacenter,
}

/// Jira authentication: Cloud uses email + API token (Basic); Data Center a personal access token (Bearer), or on
/// older sites the bot's user name and password (Basic).
#[derive(Debug, Clone)]
pub enum JiraAuth {
    /// `Authorization: Basic base64(email:token)`.
    Basic {
        /// The bot account's email.
        email: String,
        /// Its API token.
        token: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// A personal access token (Data Center 8.14+) or OAuth access token.
        token: Secret,
    },
    /// `Authorization: Basic base64(username:password)`: Data Center and Server sites without personal access
    /// tokens (Jira 11 turns Basic auth off by default).
    Password {
        /// The bot's user name.
        username: String,
        /// Its password.
        password: Secret,
    },
}

impl JiraAuth {
    /// The secret this credential carries (for scrubbing it from text).
    pub fn secret(&self) -> &Secret {
        match self {
            JiraAuth::Basic { token, .. } | JiraAuth::Bearer { token } => token,
            JiraAuth::Password { password, .. } => password,
        }
    }
}

/// GitHub (or GitHub Enterprise Server) settings.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// REST base: `https://api.github.com`, or `https://HOST/api/v3` for Enterprise Server.
    pub api_url: String,
    /// Git base for clone and push: `https://github.com`, or `https://HOST` for Enterprise Server.
    pub git_url: String,
    /// The service account's token: needs contents and pull requests write, must not be able to merge.
    pub token: Secret,
}

impl GithubConfig {
    /// The HTTPS clone URL of `owner/name`. Carries no credential: the token goes through git's callback.
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{}.git", self.git_url.trim_end_matches('/'), repo)
    }
}

/// Which model API family an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic Messages API (`POST /v1/messages`).
    Anthropic,
    /// OpenAI-compatible Chat Completions (`POST /v1/chat/completions`): OpenAI, vLLM, Ollama, LiteLLM.
    Openai,
}

impl ProviderKind {
    /// The name recorded in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
        }
    }
}

/// The model endpoint.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// API family.
    pub provider: ProviderKind,
    /// Base URL up to, not including, `/v1/...`: `https://api.anthropic.com`, `http://localhost:8000`.
    pub base_url: String,
    /// Model name sent in every request.
    pub model: String,
    /// API key; optional because self-hosted OpenAI-compatible servers often need none.
    pub api_key: Option<Secret>,
    /// `max_tokens` for each call.
    pub max_tokens_per_call: u32,
    /// HTTP timeout for one model call, in seconds.
    pub request_timeout_secs: u64,
    /// Anthropic prompt-cache breakpoints (`model.prompt_caching`, default on; OpenAI caches on its own).
    pub prompt_caching: bool,
}

/// Limits on one agent run, enforced by the loop, not by asking the model.
#[derive(Debug, Clone)]
pub struct AgentLimits {
    /// Model calls per job.
    pub max_turns: u32,
    /// Input + output tokens per job, summed over calls.
    pub max_total_tokens: u64,
    /// Wall-clock seconds for the whole agent loop.
    pub wall_time_secs: u64,
    /// Estimated tokens (4 bytes a token) the conversation may reach before old tool outputs are elided.
    pub context_budget_tokens: u64,
}

/// The sandbox container.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Image built by `images/sandbox/build.sh`.
    pub image: String,
    /// Memory limit (MiB); swap is set equal so the container cannot swap past it.
    pub memory_mb: u64,
    /// CPU limit in cores (fractional allowed).
    pub cpus: f64,
    /// Max processes in the container.
    pub pids_limit: i64,
    /// Size of the `/tmp` tmpfs (MiB).
    pub tmp_size_mb: u64,
    /// Per-command timeout in seconds.
    pub command_timeout_secs: u64,
    /// Bytes of stdout+stderr kept per command; the rest is dropped and the cut is marked.
    pub output_cap_bytes: usize,
    /// Optional OCI runtime (e.g. `runsc` for gVisor). Empty means the engine default.
    pub runtime: Option<String>,
    /// How tool calls reach the container.
    pub transport: Transport,
    /// The `drafter-sandboxd` binary (default: next to the running `drafter`).
    pub executor: Option<PathBuf>,
    /// Output (MiB) after which a command is killed: an infinite-output command ends here.
    pub max_output_mb: u64,
    /// Disk (MiB) the workspace may use; a job whose workspace grows past it fails.
    pub workspace_max_mb: u64,
    /// Pre-started containers kept per container shape for warm starts (0: none; `sandboxd` transport only).
    pub pool_size: usize,
    /// Addresses (CIDRs) the egress proxy may connect to although they are in a special range: the site's own
    /// egress gateway or an internal mirror. Loopback, link-local, unspecified and multicast addresses can never be
    /// allowed (checked at load).
    pub egress_allow_addresses: Vec<String>,
}

impl Default for SandboxConfig {
    /// The defaults a config file without `[sandbox]` gets.
    fn default() -> Self {
        let r = RawSandbox::default();
        SandboxConfig {
            image: r.image,
            memory_mb: r.memory_mb,
            cpus: r.cpus,
            pids_limit: r.pids_limit,
            tmp_size_mb: r.tmp_size_mb,
            command_timeout_secs: r.command_timeout_secs,
            output_cap_bytes: r.output_cap_bytes,
            runtime: r.runtime,
            transport: r.transport,
            executor: r.executor,
            max_output_mb: r.max_output_mb,
            workspace_max_mb: r.workspace_max_mb,
            pool_size: r.pool_size,
            egress_allow_addresses: r.egress_allow_addresses,
        }
    }
}

/// How tool calls reach the sandbox container (`sandbox.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `drafter-sandboxd` inside the container, over its attached stdin/stdout (the default).
    #[default]
    Sandboxd,
    /// One `docker exec` per call: slower, and processes it starts escape the pids limit under runc.
    DockerExec,
}

impl Transport {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sandboxd => "sandboxd",
            Transport::DockerExec => "docker-exec",
        }
    }
}

/// Who commits are authored by.
#[derive(Debug, Clone)]
pub struct CommitIdentity {
    /// Author and committer name.
    pub name: String,
    /// Author and committer email.
    pub email: String,
}

/// One Jira project's allowlist entry.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    /// Repositories (`owner/name`) tickets of this project may change. The first is the default.
    pub repos: Vec<RepoConfig>,
}

/// One allowlisted repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// `owner/name` on the forge.
    pub name: String,
    /// Branch PRs target.
    #[serde(default = "default_base")]
    pub base: String,
    /// The repository's own test command, given to the model as a hint (it runs in the sandbox).
    #[serde(default)]
    pub test_command: Option<String>,
}

fn default_base() -> String {
    "main".into()
}

// ---- the file as written ------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    jira: RawJira,
    github: RawGithub,
    model: RawModel,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    commit: RawCommit,
    #[serde(default)]
    projects: BTreeMap<String, RawProject>,
    #[serde(default)]
    serve: RawServe,
    #[serde(default)]
    poll: RawPoll,
    #[serde(default)]
    policy: RawPolicyConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicyConfig {
    file: Option<PathBuf>,
    require_signature: bool,
    trusted_keys: Vec<String>,
    pin_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServe {
    queue: Option<String>,
    listen: String,
    webhook_secret_env: Option<Spanned<String>>,
    webhook_secret_file: Option<Spanned<PathBuf>>,
    concurrency: usize,
    per_project: usize,
    lease_secs: u64,
    heartbeat_secs: u64,
    drain_timeout_secs: u64,
    max_attempts: u32,
    idle_poll_ms: u64,
    delivery_retention_days: u64,
}

impl Default for RawServe {
    fn default() -> Self {
        RawServe {
            queue: None,
            listen: "127.0.0.1:8787".into(),
            webhook_secret_env: None,
            webhook_secret_file: None,
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
struct RawPoll {
    enabled: bool,
    interval_secs: u64,
    projects: Vec<String>,
    statuses: Vec<String>,
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

fn default_data_dir() -> PathBuf {
    PathBuf::from(".drafter")
}

/// Most acceptance-criteria fields a configuration may name.
pub const MAX_CRITERIA_FIELDS: usize = 10;

/// Jira field ids go into the issue request's `fields=` list: only plain ids (`customfield_10042`), a few of them.
fn check_field_ids(ids: &[String]) -> Result<(), String> {
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

/// Where a secret lives: exactly one of `*_env` or `*_file`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJira {
    base_url: String,
    #[serde(default)]
    bot_account_id: String,
    #[serde(default)]
    bot_username: Option<String>,
    #[serde(default)]
    flavor: JiraFlavor,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    token_env: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_env: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    acceptance_criteria_fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    #[serde(default = "default_github_api")]
    api_url: String,
    #[serde(default = "default_github_git")]
    git_url: String,
    #[serde(default)]
    token_env: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<Spanned<PathBuf>>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}
fn default_github_git() -> String {
    "https://github.com".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: ProviderKind,
    base_url: String,
    model: String,
    #[serde(default)]
    api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    api_key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_max_tokens_per_call")]
    max_tokens_per_call: u32,
    #[serde(default = "default_request_timeout")]
    request_timeout_secs: u64,
    #[serde(default = "default_true")]
    prompt_caching: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_tokens_per_call() -> u32 {
    4096
}
fn default_request_timeout() -> u64 {
    300
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAgent {
    max_turns: u32,
    max_total_tokens: u64,
    wall_time_secs: u64,
    context_budget_tokens: u64,
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
struct RawSandbox {
    image: String,
    memory_mb: u64,
    cpus: f64,
    pids_limit: i64,
    tmp_size_mb: u64,
    command_timeout_secs: u64,
    output_cap_bytes: usize,
    runtime: Option<String>,
    transport: Transport,
    executor: Option<PathBuf>,
    max_output_mb: u64,
    workspace_max_mb: u64,
    pool_size: usize,
    egress_allow_addresses: Vec<String>,
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
struct RawCommit {
    name: String,
    email: String,
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
struct RawProject {
    repos: Spanned<Vec<RepoConfig>>,
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

impl Config {
    /// A copy for showing (`drafter check-config`): every URL with its credentials cut out ([`redact_url`]); the
    /// secrets are hidden by their own `Debug`.
    pub fn for_display(&self) -> Config {
        let mut c = self.clone();
        for url in [
            &mut c.serve.queue,
            &mut c.jira.base_url,
            &mut c.github.api_url,
            &mut c.github.git_url,
            &mut c.model.base_url,
        ] {
            *url = redact_url(url);
        }
        c
    }

    /// Reads, parses and validates `path`, applies [`ENV_OVERRIDES`] and resolves secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses `text` (as if read from `path`), looking environment variables up through `env`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let ctx = Ctx { path, text, env };
        ctx.apply_overrides(&mut raw)?;

        let auth = ctx.jira_auth(&raw.jira)?;
        let github_token = ctx
            .secret("github.token", &raw.github.token_env, &raw.github.token_file)?
            .ok_or_else(|| ctx.invalid(
                "github.token_env",
                None,
                "no GitHub credential: set `token_env` (name of an environment variable) or `token_file` in [github]",
            ))?;
        let api_key = ctx.secret(
            "model.api_key",
            &raw.model.api_key_env,
            &raw.model.api_key_file,
        )?;

        let webhook_secret = ctx.secret(
            "serve.webhook_secret",
            &raw.serve.webhook_secret_env,
            &raw.serve.webhook_secret_file,
        )?;
        for (key, value) in [
            ("serve.concurrency", raw.serve.concurrency as u64),
            ("serve.per_project", raw.serve.per_project as u64),
            ("serve.lease_secs", raw.serve.lease_secs),
            ("serve.heartbeat_secs", raw.serve.heartbeat_secs),
            ("serve.max_attempts", raw.serve.max_attempts as u64),
            (
                "serve.delivery_retention_days",
                raw.serve.delivery_retention_days,
            ),
            ("poll.interval_secs", raw.poll.interval_secs),
        ] {
            if value == 0 {
                return Err(ctx.invalid(key, None, "must be at least 1"));
            }
        }
        if raw.serve.heartbeat_secs >= raw.serve.lease_secs {
            return Err(ctx.invalid(
                "serve.heartbeat_secs",
                None,
                "must be shorter than serve.lease_secs, or leases expire between heartbeats",
            ));
        }
        for (key, value) in [
            ("jira.base_url", &raw.jira.base_url),
            ("github.api_url", &raw.github.api_url),
            ("github.git_url", &raw.github.git_url),
            ("model.base_url", &raw.model.base_url),
        ] {
            ctx.check_url(key, value)?;
        }
        let bot_username = raw
            .jira
            .bot_username
            .clone()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        if raw.jira.bot_account_id.trim().is_empty() {
            match (raw.jira.flavor, &bot_username) {
                // Data Center: the user name is enough; until `drafter serve` learns the user key from
                // `/rest/api/2/myself`, the name stands for it (users made before Jira 8.4 have key = name).
                (JiraFlavor::Datacenter, Some(name)) => raw.jira.bot_account_id = name.clone(),
                (JiraFlavor::Datacenter, None) => {
                    return Err(ctx.invalid(
                        "jira.bot_username",
                        None,
                        "Data Center needs the bot's user name (`bot_username`, as in `[~username]` mentions)",
                    ))
                }
                (JiraFlavor::Cloud, _) => {
                    return Err(ctx.invalid("jira.bot_account_id", None, "must not be empty"))
                }
            }
        }
        if let Err(message) = check_field_ids(&raw.jira.acceptance_criteria_fields) {
            return Err(ctx.invalid("jira.acceptance_criteria_fields", None, &message));
        }
        if raw.agent.max_turns == 0 {
            return Err(ctx.invalid("agent.max_turns", None, "must be at least 1"));
        }
        if raw.agent.context_budget_tokens == 0 {
            return Err(ctx.invalid("agent.context_budget_tokens", None, "must be at least 1"));
        }
        if raw.sandbox.cpus.is_nan() || raw.sandbox.cpus <= 0.0 {
            return Err(ctx.invalid("sandbox.cpus", None, "must be greater than 0"));
        }
        if raw.sandbox.max_output_mb == 0 {
            return Err(ctx.invalid("sandbox.max_output_mb", None, "must be at least 1"));
        }
        if raw.sandbox.workspace_max_mb == 0 {
            return Err(ctx.invalid("sandbox.workspace_max_mb", None, "must be at least 1"));
        }
        for cidr in &raw.sandbox.egress_allow_addresses {
            if let Err(why) = crate::sandboxd::egress::allowance(cidr) {
                return Err(ctx.invalid("sandbox.egress_allow_addresses", None, &why));
            }
        }
        if raw.policy.file.is_some() && !raw.projects.is_empty() {
            return Err(ctx.invalid(
                "projects",
                None,
                "with a policy file ([policy] file), the repositories are listed in the policy: remove [projects]",
            ));
        }
        if raw.policy.require_signature && raw.policy.trusted_keys.is_empty() {
            return Err(ctx.invalid(
                "policy.trusted_keys",
                None,
                "require_signature needs at least one trusted policy key (64 hex characters)",
            ));
        }
        for k in &raw.policy.trusted_keys {
            if let Err(e) = crate::proof::parse_public_key(k) {
                return Err(ctx.invalid("policy.trusted_keys", None, &format!("`{k}`: {e}")));
            }
        }
        if let Some(pin) = &raw.policy.pin_hash {
            let ok = pin.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            });
            if !ok {
                return Err(ctx.invalid(
                    "policy.pin_hash",
                    None,
                    "expected `sha256:` followed by 64 lowercase hex characters (see `drafter policy hash FILE`)",
                ));
            }
        }
        if raw.projects.is_empty() && raw.policy.file.is_none() {
            return Err(ctx.invalid(
                "projects",
                None,
                "the allowlist is empty: add a [projects.KEY] table with `repos = [{ name = \"owner/repo\" }]`",
            ));
        }
        let mut projects = BTreeMap::new();
        for (key, project) in raw.projects {
            let line = Some(ctx.line_at(project.repos.span().start));
            let repos = project.repos.into_inner();
            if repos.is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    key: format!("projects.{key}.repos"),
                    message: "lists no repository".into(),
                });
            }
            for repo in &repos {
                if !valid_repo_name(&repo.name) {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        line,
                        key: format!("projects.{key}.repos"),
                        message: format!("`{}` is not of the form owner/name", repo.name),
                    });
                }
            }
            projects.insert(key, ProjectConfig { repos });
        }

        Ok(Config {
            jira: JiraConfig {
                base_url: raw.jira.base_url.trim_end_matches('/').to_string(),
                bot_account_id: raw.jira.bot_account_id,
                bot_username,
                flavor: raw.jira.flavor,
                auth,
                acceptance_criteria_fields: raw.jira.acceptance_criteria_fields,
            },
            github: GithubConfig {
                api_url: raw.github.api_url.trim_end_matches('/').to_string(),
                git_url: raw.github.git_url.trim_end_matches('/').to_string(),
                token: github_token,
            },
            model: ModelConfig {
                provider: raw.model.provider,
                base_url: raw.model.base_url.trim_end_matches('/').to_string(),
                model: raw.model.model,
                api_key,
                max_tokens_per_call: raw.model.max_tokens_per_call,
                request_timeout_secs: raw.model.request_timeout_secs,
                prompt_caching: raw.model.prompt_caching,
            },
            agent: AgentLimits {
                max_turns: raw.agent.max_turns,
                max_total_tokens: raw.agent.max_total_tokens,
                wall_time_secs: raw.agent.wall_time_secs,
                context_budget_tokens: raw.agent.context_budget_tokens,
            },
            sandbox: SandboxConfig {
                image: raw.sandbox.image,
                memory_mb: raw.sandbox.memory_mb,
                cpus: raw.sandbox.cpus,
                pids_limit: raw.sandbox.pids_limit,
                tmp_size_mb: raw.sandbox.tmp_size_mb,
                command_timeout_secs: raw.sandbox.command_timeout_secs,
                output_cap_bytes: raw.sandbox.output_cap_bytes,
                runtime: raw.sandbox.runtime.filter(|r| !r.is_empty()),
                transport: raw.sandbox.transport,
                // Relative to the config file, like the policy file.
                executor: raw.sandbox.executor.map(|f| match path.parent() {
                    Some(dir) if f.is_relative() => dir.join(f),
                    _ => f,
                }),
                max_output_mb: raw.sandbox.max_output_mb,
                workspace_max_mb: raw.sandbox.workspace_max_mb,
                pool_size: raw.sandbox.pool_size,
                egress_allow_addresses: raw.sandbox.egress_allow_addresses,
            },
            commit: CommitIdentity {
                name: raw.commit.name,
                email: raw.commit.email,
            },
            serve: ServeConfig {
                queue: raw.serve.queue.unwrap_or_else(|| {
                    raw.data_dir
                        .join("queue.sqlite")
                        .to_string_lossy()
                        .into_owned()
                }),
                listen: raw.serve.listen,
                webhook_secret,
                concurrency: raw.serve.concurrency,
                per_project: raw.serve.per_project,
                lease_secs: raw.serve.lease_secs,
                heartbeat_secs: raw.serve.heartbeat_secs,
                drain_timeout_secs: raw.serve.drain_timeout_secs,
                max_attempts: raw.serve.max_attempts,
                idle_poll_ms: raw.serve.idle_poll_ms,
                delivery_retention_days: raw.serve.delivery_retention_days,
            },
            poll: PollConfig {
                enabled: raw.poll.enabled,
                interval_secs: raw.poll.interval_secs,
                projects: if raw.poll.projects.is_empty() {
                    projects.keys().cloned().collect()
                } else {
                    raw.poll.projects
                },
                statuses: raw.poll.statuses,
            },
            policy: PolicyConfig {
                // Relative to the config file, so a unit file's working directory does not matter.
                file: raw.policy.file.map(|f| match path.parent() {
                    Some(dir) if f.is_relative() => dir.join(f),
                    _ => f,
                }),
                require_signature: raw.policy.require_signature,
                trusted_keys: raw.policy.trusted_keys,
                pin_hash: raw.policy.pin_hash,
            },
            data_dir: raw.data_dir,
            projects,
        })
    }

    /// The allowlisted repositories for a Jira project key, if the project is allowlisted at all.
    pub fn project(&self, key: &str) -> Option<&ProjectConfig> {
        self.projects.get(key)
    }
}

/// `owner/name` with GitHub's allowed characters; refuses anything that could escape a URL path.
pub fn valid_repo_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(n), None) if ok(o) && ok(n))
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn invalid(&self, key: &str, line: Option<usize>, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn check_url(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        match url::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            Ok(_) => Err(self.invalid(key, None, "must be an http:// or https:// URL")),
            Err(e) => Err(self.invalid(
                key,
                None,
                &format!("`{}` is not a URL: {e}", redact_url(value)),
            )),
        }
    }

    fn apply_overrides(&self, raw: &mut RawConfig) -> Result<(), ConfigError> {
        for (var, key) in ENV_OVERRIDES {
            let Some(value) = (self.env)(var) else {
                continue;
            };
            match *key {
                "data_dir" => raw.data_dir = PathBuf::from(value),
                "jira.base_url" => raw.jira.base_url = value,
                "jira.bot_account_id" => raw.jira.bot_account_id = value,
                "jira.email" => raw.jira.email = Some(value),
                "jira.flavor" => {
                    raw.jira.flavor = match value.as_str() {
                        "cloud" => JiraFlavor::Cloud,
                        "datacenter" => JiraFlavor::Datacenter,
                        other => {
                            return Err(self.invalid(
                                key,
                                None,
                                &format!("{var}=`{other}`: expected `cloud` or `datacenter`"),
                            ))
                        }
                    }
                }
                "jira.bot_username" => raw.jira.bot_username = Some(value),
                "jira.username" => raw.jira.username = Some(value),
                "github.api_url" => raw.github.api_url = value,
                "github.git_url" => raw.github.git_url = value,
                "model.provider" => {
                    raw.model.provider = match value.as_str() {
                        "anthropic" => ProviderKind::Anthropic,
                        "openai" => ProviderKind::Openai,
                        other => {
                            return Err(self.invalid(
                                key,
                                None,
                                &format!("{var}=`{other}`: expected `anthropic` or `openai`"),
                            ))
                        }
                    }
                }
                "model.base_url" => raw.model.base_url = value,
                "model.model" => raw.model.model = value,
                "sandbox.image" => raw.sandbox.image = value,
                "sandbox.transport" => {
                    raw.sandbox.transport = match value.as_str() {
                        "sandboxd" => Transport::Sandboxd,
                        "docker-exec" => Transport::DockerExec,
                        other => {
                            return Err(self.invalid(
                                key,
                                None,
                                &format!("{var}=`{other}`: expected `sandboxd` or `docker-exec`"),
                            ))
                        }
                    }
                }
                "serve.queue" => raw.serve.queue = Some(value),
                "serve.listen" => raw.serve.listen = value,
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolves `<name>_env` / `<name>_file`; `Ok(None)` when neither is set.
    /// The Jira credential: exactly one of a token (`token_env`/`token_file`: with `email` Basic, as Cloud's API
    /// tokens are used; alone a Bearer token, as Data Center's personal access tokens are) or a password
    /// (`password_env`/`password_file` with `username`: Basic, for Data Center and Server sites without tokens).
    fn jira_auth(&self, j: &RawJira) -> Result<JiraAuth, ConfigError> {
        let token = self.secret("jira.token", &j.token_env, &j.token_file)?;
        let password = self.secret("jira.password", &j.password_env, &j.password_file)?;
        let email = j.email.clone().filter(|e| !e.trim().is_empty());
        let username = j.username.clone().filter(|u| !u.trim().is_empty());
        match (token, password) {
            (Some(_), Some(_)) => Err(self.invalid(
                "jira.password_env",
                None,
                "set either a token (`token_env`/`token_file`) or a password (`password_env`/`password_file`), not both",
            )),
            (Some(token), None) => match (email, username) {
                (Some(_), Some(_)) => Err(self.invalid(
                    "jira.username",
                    None,
                    "set `email` (Cloud API token) or `username` (Data Center password), not both",
                )),
                (None, Some(_)) => Err(self.invalid(
                    "jira.username",
                    None,
                    "`username` goes with `password_env`/`password_file`; a personal access token is sent alone (leave `username` out)",
                )),
                (Some(email), None) => Ok(JiraAuth::Basic { email, token }),
                (None, None) => Ok(JiraAuth::Bearer { token }),
            },
            (None, Some(password)) => match (username, email) {
                (_, Some(_)) => Err(self.invalid(
                    "jira.email",
                    None,
                    "a password goes with `username`; Cloud uses `email` with an API token (`token_env`)",
                )),
                (Some(username), None) => Ok(JiraAuth::Password { username, password }),
                (None, None) => Err(self.invalid(
                    "jira.username",
                    None,
                    "a password needs the user name it belongs to (`username`)",
                )),
            },
            (None, None) => Err(self.invalid(
                "jira.token_env",
                None,
                "no Jira credential: set `token_env` (name of an environment variable) or `token_file` in [jira] \
                 (or, on Data Center without personal access tokens, `username` with `password_env`/`password_file`)",
            )),
        }
    }

    fn secret(
        &self,
        name: &str,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<PathBuf>>,
    ) -> Result<Option<Secret>, ConfigError> {
        match (env, file) {
            (Some(e), Some(_)) => Err(self.invalid(
                &format!("{name}_env"),
                Some(self.line_at(e.span().start)),
                &format!("set only one of `{name}_env` and `{name}_file`"),
            )),
            (Some(var), None) => {
                let line = Some(self.line_at(var.span().start));
                match (self.env)(var.get_ref()) {
                    Some(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim().to_string()))),
                    _ => Err(self.invalid(
                        &format!("{name}_env"),
                        line,
                        &format!(
                            "environment variable `{}` is not set or empty",
                            var.get_ref()
                        ),
                    )),
                }
            }
            (None, Some(p)) => {
                let line = Some(self.line_at(p.span().start));
                let value = std::fs::read_to_string(p.get_ref()).map_err(|e| {
                    self.invalid(
                        &format!("{name}_file"),
                        line,
                        &format!("cannot read `{}`: {e}", p.get_ref().display()),
                    )
                })?;
                if value.trim().is_empty() {
                    return Err(self.invalid(
                        &format!("{name}_file"),
                        line,
                        &format!("`{}` is empty", p.get_ref().display()),
                    ));
                }
                Ok(Some(Secret::new(value.trim().to_string())))
            }
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.github.token.expose(), "ghp_secretvalue");
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
                assert_eq!(password.expose(), "hunter2-password");
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
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example must stay loadable: it is what admins copy.
    #[test]
    fn examples_drafter_toml_loads() {
        let text = include_str!("../examples/drafter.toml");
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
