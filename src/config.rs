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

mod load;

pub use load::{Problem, Purpose};

/// A secret value. `Debug` and `Display` never show it; call [`Secret::expose`] at the one place it is used.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value (tests and stand-ins; the product reads secrets through [`Config::load_for`]).
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

/// Where a configured secret comes from: the key naming it, its line, and the environment variable or file. Holds
/// no value; [`SecretRef::resolve`] reads it.
#[derive(Debug, Clone)]
pub struct SecretRef {
    /// The configuration file, for messages.
    file: PathBuf,
    /// The dotted key, e.g. `github.token_env`.
    key: String,
    /// Its 1-based line.
    line: Option<usize>,
    /// The variable or the file holding the value.
    source: SecretSource,
}

/// The two places a secret may live.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable, by name (`*_env`).
    Env(String),
    /// A file, by path (`*_file`): a systemd credential, a mounted Kubernetes secret.
    File(PathBuf),
}

impl SecretRef {
    /// The dotted key naming this secret (`serve.webhook_secret_env`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its line in the configuration file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Reads the value now (trimmed; empty counts as unset). The error names the key, the line and the variable or
    /// file, never a value.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
        self.read(env).map_err(|p| p.into_error(&self.file))
    }

    fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, Problem> {
        // Webhooks are on exactly when their secret is configured: say how to have them off.
        let hint = if self.key.starts_with("serve.webhook_secret") {
            format!(
                "; webhooks are on because `{}` is set: give `drafter serve` the secret, or remove the key to run \
                 without webhooks (polling only)",
                self.key
            )
        } else {
            String::new()
        };
        let fail =
            |message: String| Problem::new(Some(self.key.clone()), self.line, message + &hint);
        match &self.source {
            SecretSource::Env(var) => match env(var) {
                Some(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim().to_string())),
                _ => Err(fail(format!(
                    "environment variable `{var}` is not set or empty"
                ))),
            },
            SecretSource::File(path) => {
                let value = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read `{}`: {e}", path.display())))?;
                if value.trim().is_empty() {
                    return Err(fail(format!("`{}` is empty", path.display())));
                }
                Ok(Secret::new(value.trim().to_string()))
            }
        }
    }
}

/// A secret in the loaded configuration: where it comes from and, once the command that uses it has resolved it,
/// its value. [`Config::load_for`] resolves exactly the secrets its purpose uses, at start-up, so a command never
/// reads a secret it does not use and never finds one missing half-way through a job.
#[derive(Clone)]
pub struct Credential {
    origin: Option<SecretRef>,
    value: Option<Secret>,
}

impl Credential {
    /// The value, if this command resolved it. The error names the key and line of a secret that was not read
    /// (a command using a secret its purpose does not list: a bug, reported rather than sent as an empty token).
    pub fn value(&self) -> Result<&Secret, ConfigError> {
        match (&self.value, &self.origin) {
            (Some(v), _) => Ok(v),
            (None, Some(r)) => Err(ConfigError::NotRead {
                key: r.key.clone(),
                line: r.line,
            }),
            (None, None) => Err(ConfigError::NotRead {
                key: "(unnamed secret)".into(),
                line: None,
            }),
        }
    }

    /// Where it comes from, for a secret read from the configuration.
    pub fn origin(&self) -> Option<&SecretRef> {
        self.origin.as_ref()
    }

    /// No secret: a credential whose configuration has a problem (which stops every command that would use it).
    fn missing() -> Credential {
        Credential {
            origin: None,
            value: None,
        }
    }

    fn unread(origin: SecretRef) -> Credential {
        Credential {
            origin: Some(origin),
            value: None,
        }
    }

    /// Reads the value unless already read.
    fn resolve(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Problem> {
        if self.value.is_none() {
            if let Some(origin) = &self.origin {
                self.value = Some(origin.read(env)?);
            }
        }
        Ok(())
    }
}

impl From<Secret> for Credential {
    /// A value given directly (tests and stand-ins).
    fn from(value: Secret) -> Credential {
        Credential {
            origin: None,
            value: Some(value),
        }
    }
}

impl fmt::Debug for Credential {
    /// `[redacted]` once read; before that, where it would come from (a variable's name or a path is no secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.value, &self.origin) {
            (Some(_), _) => f.write_str("[redacted]"),
            (None, Some(r)) => {
                match &r.source {
                    SecretSource::Env(var) => write!(f, "not read: environment variable {var}")?,
                    SecretSource::File(p) => write!(f, "not read: file {}", p.display())?,
                }
                match r.line {
                    Some(l) => write!(f, " (`{}`, line {l})", r.key),
                    None => write!(f, " (`{}`)", r.key),
                }
            }
            (None, None) => f.write_str("none"),
        }
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
    /// The TOML is malformed (the message comes from the TOML parser, with the line), or a problem names no key.
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
    /// Several problems stop the command: each with its key and line.
    #[error("config file {path}: {} problems stop `drafter {}`:{}", problems.len(), purpose.label(),
        problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Problems {
        /// The file.
        path: PathBuf,
        /// What the command needed the file for.
        purpose: Purpose,
        /// Every problem that stops it.
        problems: Vec<Problem>,
    },
    /// A command used a secret it did not resolve at start-up.
    #[error("`{key}`{} was not read at start-up: this command does not resolve it (a bug in drafter)",
        line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    NotRead {
        /// The dotted key naming the secret.
        key: String,
        /// Its line.
        line: Option<usize>,
    },
}

impl Problem {
    /// This problem as an error about `path`.
    fn into_error(self, path: &Path) -> ConfigError {
        match self.key {
            Some(key) => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: self.line,
                key,
                message: self.message,
            },
            None => ConfigError::Parse {
                path: path.to_path_buf(),
                message: match self.line {
                    Some(l) => format!("line {l}: {}", self.message),
                    None => self.message,
                },
            },
        }
    }
}

impl ConfigError {
    /// One problem as itself, several as a list.
    fn from_problems(path: &Path, purpose: Purpose, mut problems: Vec<Problem>) -> ConfigError {
        if problems.len() == 1 {
            if let Some(p) = problems.pop() {
                return p.into_error(path);
            }
        }
        ConfigError::Problems {
            path: path.to_path_buf(),
            purpose,
            problems,
        }
    }
}

/// The whole runner configuration. Secrets are [`Credential`]s: named by the file, read only by the commands that
/// use them ([`Config::load_for`]).
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
    /// The admin webhook's secret: requests must carry `X-Hub-Signature: sha256=<HMAC of the body>`. Configured
    /// means webhooks are on (and `drafter serve` refuses to start without the value); without one, the webhook
    /// endpoint refuses everything (use polling).
    pub webhook_secret: Option<Credential>,
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
        token: Credential,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// A personal access token (Data Center 8.14+) or OAuth access token.
        token: Credential,
    },
    /// `Authorization: Basic base64(username:password)`: Data Center and Server sites without personal access
    /// tokens (Jira 11 turns Basic auth off by default).
    Password {
        /// The bot's user name.
        username: String,
        /// Its password.
        password: Credential,
    },
}

impl JiraAuth {
    /// The secret this credential carries, whichever the scheme: the token or the password (to send it, and to
    /// scrub it from text).
    pub fn secret(&self) -> &Credential {
        match self {
            JiraAuth::Basic { token, .. } | JiraAuth::Bearer { token } => token,
            JiraAuth::Password { password, .. } => password,
        }
    }

    fn secret_mut(&mut self) -> &mut Credential {
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
    pub token: Credential,
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
    pub api_key: Option<Credential>,
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
    #[serde(default)]
    jira: Option<RawJira>,
    #[serde(default)]
    github: Option<RawGithub>,
    #[serde(default)]
    model: Option<RawModel>,
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

impl Default for RawGithub {
    fn default() -> Self {
        RawGithub {
            api_url: default_github_api(),
            git_url: default_github_git(),
            token_env: None,
            token_file: None,
        }
    }
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

/// What [`Config::check`] found: every problem in the file (each with its key, line and the commands it stops), and
/// the configuration as far as it could be read, for showing.
pub struct Checked {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
    config: Option<Config>,
}

impl Checked {
    /// The configuration with URL credentials cut out and secrets not read (they show where they come from), or
    /// `None` when the file is not TOML at all. A part with a problem holds its defaults.
    pub fn display(&self) -> Option<Config> {
        self.config.as_ref().map(Config::for_display)
    }

    /// The problems that stop commands of `purpose`.
    pub fn blocking(&self, purpose: Purpose) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.blocks(purpose))
    }
}

/// The file read as far as it goes: the configuration (secrets not read) unless the file is not TOML at all, and
/// every problem found.
struct Parsed {
    config: Option<Config>,
    problems: Vec<Problem>,
}

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

    /// Reads `path` for a command of `purpose`: parses and validates it, applies [`ENV_OVERRIDES`], and resolves
    /// the secrets that purpose uses. Problems in parts of the file the purpose does not read do not stop it; every
    /// problem that does is in the error, with its key and line.
    pub fn load_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml_for(&text, path, &|name| std::env::var(name).ok(), purpose)
    }

    /// Parses `text` (as if read from `path`) for everything ([`Purpose::Serve`]), looking environment variables up
    /// through `env`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_for(text, path, env, Purpose::Serve)
    }

    /// Parses `text` (as if read from `path`) for a command of `purpose`; see [`Config::load_for`].
    pub fn from_toml_for(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        purpose: Purpose,
    ) -> Result<Config, ConfigError> {
        let Parsed {
            config,
            mut problems,
        } = parse(text, path, env);
        problems.retain(|p| p.blocks(purpose));
        let mut config = match config {
            Some(c) if problems.is_empty() => c,
            _ => return Err(ConfigError::from_problems(path, purpose, problems)),
        };
        // Read once, now: a job never finds a secret missing half-way.
        for (parts, credential) in config.credentials_mut() {
            if purpose.needs().intersects(parts) {
                if let Err(p) = credential.resolve(env) {
                    problems.push(p);
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::from_problems(path, purpose, problems));
        }
        Ok(config)
    }

    /// Every problem in `text` at once, for `drafter check-config`: what does not parse, what is not acceptable, and
    /// every configured secret that cannot be read here. Values read to check them are dropped at once.
    pub fn check(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Checked {
        let Parsed {
            config,
            mut problems,
        } = parse(text, path, env);
        if let Some(c) = &config {
            for (_, credential) in c.credentials() {
                if let Some(origin) = credential.origin() {
                    if let Err(p) = origin.read(env) {
                        problems.push(p);
                    }
                }
            }
        }
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Checked { problems, config }
    }

    /// [`Config::check`] on a file, with the process environment.
    pub fn check_file(path: &Path) -> Result<Checked, ConfigError> {
        let text = read_file(path)?;
        Ok(Self::check(&text, path, &|name| std::env::var(name).ok()))
    }

    /// Where webhooks stand: on when `serve.webhook_secret_env` or `_file` is set (then `drafter serve` needs the
    /// secret), off otherwise (the endpoint refuses everything; jobs come from polling or operators).
    pub fn webhooks_on(&self) -> bool {
        self.serve.webhook_secret.is_some()
    }

    /// The allowlisted repositories for a Jira project key, if the project is allowlisted at all.
    pub fn project(&self, key: &str) -> Option<&ProjectConfig> {
        self.projects.get(key)
    }

    /// Every secret of the configuration with the parts it belongs to.
    fn credentials(&self) -> Vec<(load::Parts, &Credential)> {
        let mut out = vec![
            (load::Parts::JIRA, self.jira.auth.secret()),
            (load::Parts::GITHUB_TOKEN, &self.github.token),
        ];
        if let Some(k) = &self.model.api_key {
            out.push((load::Parts::MODEL_KEY, k));
        }
        if let Some(s) = &self.serve.webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        out
    }

    fn credentials_mut(&mut self) -> Vec<(load::Parts, &mut Credential)> {
        let mut out = vec![
            (load::Parts::JIRA, self.jira.auth.secret_mut()),
            (load::Parts::GITHUB_TOKEN, &mut self.github.token),
        ];
        if let Some(k) = &mut self.model.api_key {
            out.push((load::Parts::MODEL_KEY, k));
        }
        if let Some(s) = &mut self.serve.webhook_secret {
            out.push((load::Parts::WEBHOOKS, s));
        }
        out
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the file as far as it goes. Secrets are named, not read.
fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
    let lines = load::Lines(text);
    let (table, errors) = toml::de::DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // Not TOML: nothing can be read reliably.
        let problems = errors
            .iter()
            .map(|e| {
                Problem::new(
                    None,
                    e.span().map(|s| lines.at(s.start)),
                    e.message().trim().to_string(),
                )
            })
            .collect();
        return Parsed {
            config: None,
            problems,
        };
    }
    let (raw, problems) = load::deserialize_lenient::<RawConfig>(&table, &lines);
    let mut ctx = Ctx {
        path,
        table: table.get_ref(),
        lines,
        env,
        overridden: Vec::new(),
        problems,
    };
    let config = raw.map(|raw| ctx.build(raw));
    let mut problems = ctx.problems;
    if config.is_none() && problems.is_empty() {
        problems.push(Problem::new(None, None, "cannot be read".into()));
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Parsed { config, problems }
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
    table: &'a toml::de::DeTable<'a>,
    lines: load::Lines<'a>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Keys set from the environment, with the variable: their problems name the variable, not a line.
    overridden: Vec<(&'static str, &'static str)>,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    /// Records a problem with `key`, at its line in the file (or naming the variable that overrode it).
    fn invalid(&mut self, key: &str, message: &str) {
        let (line, message) = match self.overridden.iter().find(|(k, _)| *k == key) {
            Some((_, var)) => (None, format!("{message} (set by {var})")),
            None => (
                load::line_of(self.table, key, &self.lines),
                message.to_string(),
            ),
        };
        self.problems
            .push(Problem::new(Some(key.to_string()), line, message));
    }

    /// Whether `key` or anything under it already has a problem (a dropped key is not reported again as missing).
    fn has_problem_under(&self, key: &str) -> bool {
        self.problems.iter().any(|p| {
            p.key.as_deref().is_some_and(|k| {
                k == key
                    || k.strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
        })
    }

    fn check_url(&mut self, key: &str, value: &str) {
        match url::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => self.invalid(key, "must be an http:// or https:// URL"),
            Err(e) => self.invalid(key, &format!("`{}` is not a URL: {e}", redact_url(value))),
        }
    }

    fn apply_overrides(&mut self, raw: &mut RawConfig) {
        for (var, key) in ENV_OVERRIDES {
            let Some(value) = (self.env)(var) else {
                continue;
            };
            self.overridden.push((key, var));
            match *key {
                "data_dir" => raw.data_dir = PathBuf::from(value),
                "jira.flavor" => {
                    let flavor = match value.as_str() {
                        "cloud" => JiraFlavor::Cloud,
                        "datacenter" => JiraFlavor::Datacenter,
                        other => {
                            self.invalid(
                                key,
                                &format!("`{other}`: expected `cloud` or `datacenter`"),
                            );
                            continue;
                        }
                    };
                    if let Some(j) = raw.jira.as_mut() {
                        j.flavor = flavor;
                    }
                }
                "jira.base_url"
                | "jira.bot_account_id"
                | "jira.email"
                | "jira.bot_username"
                | "jira.username" => {
                    if let Some(j) = raw.jira.as_mut() {
                        match *key {
                            "jira.base_url" => j.base_url = value,
                            "jira.bot_account_id" => j.bot_account_id = value,
                            "jira.email" => j.email = Some(value),
                            "jira.bot_username" => j.bot_username = Some(value),
                            _ => j.username = Some(value),
                        }
                    }
                }
                "github.api_url" => {
                    if let Some(g) = raw.github.as_mut() {
                        g.api_url = value;
                    }
                }
                "github.git_url" => {
                    if let Some(g) = raw.github.as_mut() {
                        g.git_url = value;
                    }
                }
                "model.provider" => {
                    let kind = match value.as_str() {
                        "anthropic" => ProviderKind::Anthropic,
                        "openai" => ProviderKind::Openai,
                        other => {
                            self.invalid(
                                key,
                                &format!("`{other}`: expected `anthropic` or `openai`"),
                            );
                            continue;
                        }
                    };
                    if let Some(m) = raw.model.as_mut() {
                        m.provider = kind;
                    }
                }
                "model.base_url" | "model.model" => {
                    if let Some(m) = raw.model.as_mut() {
                        if *key == "model.base_url" {
                            m.base_url = value;
                        } else {
                            m.model = value;
                        }
                    }
                }
                "sandbox.image" => raw.sandbox.image = value,
                "sandbox.transport" => {
                    raw.sandbox.transport = match value.as_str() {
                        "sandboxd" => Transport::Sandboxd,
                        "docker-exec" => Transport::DockerExec,
                        other => {
                            self.invalid(
                                key,
                                &format!("`{other}`: expected `sandboxd` or `docker-exec`"),
                            );
                            continue;
                        }
                    }
                }
                "serve.queue" => raw.serve.queue = Some(value),
                "serve.listen" => raw.serve.listen = value,
                _ => {}
            }
        }
    }

    /// Names the secret `<name>_env` / `<name>_file` refers to, without reading it. `Err` when both are set (a
    /// problem already recorded); `Ok(None)` when neither is.
    fn secret_ref(
        &mut self,
        name: &str,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<PathBuf>>,
    ) -> Result<Option<SecretRef>, ()> {
        let make = |key: String, line: usize, source: SecretSource| SecretRef {
            file: self.path.to_path_buf(),
            key,
            line: Some(line),
            source,
        };
        match (env, file) {
            (Some(_), Some(_)) => {
                self.invalid(
                    &format!("{name}_env"),
                    &format!("set only one of `{name}_env` and `{name}_file`"),
                );
                Err(())
            }
            (Some(var), None) => Ok(Some(make(
                format!("{name}_env"),
                self.lines.at(var.span().start),
                SecretSource::Env(var.get_ref().clone()),
            ))),
            (None, Some(p)) => Ok(Some(make(
                format!("{name}_file"),
                self.lines.at(p.span().start),
                SecretSource::File(p.get_ref().clone()),
            ))),
            (None, None) => Ok(None),
        }
    }

    /// The Jira credential, named but not read: exactly one of a token (`token_env`/`token_file`: with `email`
    /// Basic, as Cloud's API tokens are used; alone a Bearer token, as Data Center's personal access tokens are) or
    /// a password (`password_env`/`password_file` with `username`: Basic, for Data Center and Server sites without
    /// tokens). A mix is a problem naming the key to remove; the credential then holds nothing (the problem stops
    /// every command that talks to Jira).
    fn jira_auth(&mut self, j: &RawJira, given: bool) -> JiraAuth {
        let broken = || JiraAuth::Bearer {
            token: Credential::missing(),
        };
        let token = self.secret_ref("jira.token", &j.token_env, &j.token_file);
        let password = self.secret_ref("jira.password", &j.password_env, &j.password_file);
        let (token, password) = match (token, password) {
            (Ok(t), Ok(p)) => (t, p),
            // Both `_env` and `_file` of one secret: already reported.
            _ => return broken(),
        };
        let email = j.email.clone().filter(|e| !e.trim().is_empty());
        let username = j.username.clone().filter(|u| !u.trim().is_empty());
        match (token, password) {
            (Some(_), Some(password)) => {
                self.invalid(
                    password.key(),
                    "set either a token (`token_env`/`token_file`) or a password (`password_env`/`password_file`), not both",
                );
                broken()
            }
            (Some(token), None) => match (email, username) {
                (Some(_), Some(_)) => {
                    self.invalid(
                        "jira.username",
                        "set `email` (Cloud API token) or `username` (Data Center password), not both",
                    );
                    broken()
                }
                (None, Some(_)) => {
                    self.invalid(
                        "jira.username",
                        "`username` goes with `password_env`/`password_file`; a personal access token is sent alone (leave `username` out)",
                    );
                    broken()
                }
                (Some(email), None) => JiraAuth::Basic {
                    email,
                    token: Credential::unread(token),
                },
                (None, None) => JiraAuth::Bearer {
                    token: Credential::unread(token),
                },
            },
            (None, Some(password)) => match (username, email) {
                (_, Some(_)) => {
                    self.invalid(
                        "jira.email",
                        "a password goes with `username`; Cloud uses `email` with an API token (`token_env`)",
                    );
                    broken()
                }
                (Some(username), None) => JiraAuth::Password {
                    username,
                    password: Credential::unread(password),
                },
                (None, None) => {
                    self.invalid(
                        "jira.username",
                        "a password needs the user name it belongs to (`username`)",
                    );
                    broken()
                }
            },
            (None, None) => {
                if given {
                    self.invalid(
                        "jira.token_env",
                        "no Jira credential: set `token_env` (name of an environment variable) or `token_file` in \
                         [jira] (or, on Data Center without personal access tokens, `username` with \
                         `password_env`/`password_file`)",
                    );
                }
                broken()
            }
        }
    }

    /// Validates what was read and builds the configuration; every problem is recorded, and a part with one holds
    /// defaults (the commands that read that part are stopped by the problem).
    fn build(&mut self, mut raw: RawConfig) -> Config {
        let path = self.path;
        self.apply_overrides(&mut raw);
        for (section, hint) in [
            (
                "jira",
                "add a [jira] table with base_url, bot_account_id and token_env",
            ),
            (
                "github",
                "add a [github] table with token_env (and api_url for GitHub Enterprise Server)",
            ),
            (
                "model",
                "add a [model] table with provider, base_url and model",
            ),
        ] {
            let missing = match section {
                "jira" => raw.jira.is_none(),
                "github" => raw.github.is_none(),
                _ => raw.model.is_none(),
            };
            if missing && !self.has_problem_under(section) {
                self.invalid(section, &format!("the table is missing: {hint}"));
            }
        }

        let jira_given = raw.jira.is_some();
        let rj = raw.jira.take().unwrap_or_default();
        let auth = self.jira_auth(&rj, jira_given);
        let github_given = raw.github.is_some();
        let rg = raw.github.take().unwrap_or_default();
        let github_token = match self.secret_ref("github.token", &rg.token_env, &rg.token_file) {
            Ok(Some(r)) => Credential::unread(r),
            Ok(None) => {
                if github_given {
                    self.invalid(
                        "github.token_env",
                        "no GitHub credential: set `token_env` (name of an environment variable) or `token_file` in [github]",
                    );
                }
                Credential::missing()
            }
            Err(()) => Credential::missing(),
        };
        let model_given = raw.model.is_some();
        let rm = raw.model.take().unwrap_or_default();
        let api_key = self
            .secret_ref("model.api_key", &rm.api_key_env, &rm.api_key_file)
            .ok()
            .flatten()
            .map(Credential::unread);
        let webhook_secret = self
            .secret_ref(
                "serve.webhook_secret",
                &raw.serve.webhook_secret_env,
                &raw.serve.webhook_secret_file,
            )
            .ok()
            .flatten()
            .map(Credential::unread);

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
                self.invalid(key, "must be at least 1");
            }
        }
        if raw.serve.heartbeat_secs >= raw.serve.lease_secs && raw.serve.heartbeat_secs > 0 {
            self.invalid(
                "serve.heartbeat_secs",
                "must be shorter than serve.lease_secs, or leases expire between heartbeats",
            );
        }
        let bot_username = rj
            .bot_username
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        let mut bot_account_id = rj.bot_account_id.clone();
        if jira_given {
            self.check_url("jira.base_url", &rj.base_url);
            if bot_account_id.trim().is_empty() {
                match (rj.flavor, &bot_username) {
                    // Data Center: the user name is enough; until `drafter serve` learns the user key from
                    // `/rest/api/2/myself`, the name stands for it (users made before Jira 8.4 have key = name).
                    (JiraFlavor::Datacenter, Some(name)) => bot_account_id = name.clone(),
                    (JiraFlavor::Datacenter, None) => self.invalid(
                        "jira.bot_username",
                        "Data Center needs the bot's user name (`bot_username`, as in `[~username]` mentions)",
                    ),
                    (JiraFlavor::Cloud, _) => {
                        self.invalid("jira.bot_account_id", "must not be empty")
                    }
                }
            }
            if let Err(message) = check_field_ids(&rj.acceptance_criteria_fields) {
                self.invalid("jira.acceptance_criteria_fields", &message);
            }
        }
        if github_given {
            self.check_url("github.api_url", &rg.api_url);
            self.check_url("github.git_url", &rg.git_url);
        }
        if model_given {
            self.check_url("model.base_url", &rm.base_url);
        }
        if raw.agent.max_turns == 0 {
            self.invalid("agent.max_turns", "must be at least 1");
        }
        if raw.agent.context_budget_tokens == 0 {
            self.invalid("agent.context_budget_tokens", "must be at least 1");
        }
        if raw.sandbox.cpus.is_nan() || raw.sandbox.cpus <= 0.0 {
            self.invalid("sandbox.cpus", "must be greater than 0");
        }
        if raw.sandbox.max_output_mb == 0 {
            self.invalid("sandbox.max_output_mb", "must be at least 1");
        }
        if raw.sandbox.workspace_max_mb == 0 {
            self.invalid("sandbox.workspace_max_mb", "must be at least 1");
        }
        for cidr in &raw.sandbox.egress_allow_addresses {
            if let Err(why) = crate::sandboxd::egress::allowance(cidr) {
                self.invalid("sandbox.egress_allow_addresses", &why);
            }
        }
        if raw.policy.file.is_some() && !raw.projects.is_empty() {
            self.invalid(
                "projects",
                "with a policy file ([policy] file), the repositories are listed in the policy: remove [projects]",
            );
        }
        if raw.policy.require_signature && raw.policy.trusted_keys.is_empty() {
            self.invalid(
                "policy.trusted_keys",
                "require_signature needs at least one trusted policy key (64 hex characters)",
            );
        }
        for k in &raw.policy.trusted_keys {
            if let Err(e) = crate::keys::parse_public_key(k) {
                self.invalid("policy.trusted_keys", &format!("`{k}`: {e}"));
            }
        }
        if let Some(pin) = &raw.policy.pin_hash {
            let ok = pin.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            });
            if !ok {
                self.invalid(
                    "policy.pin_hash",
                    "expected `sha256:` followed by 64 lowercase hex characters (see `drafter policy hash FILE`)",
                );
            }
        }
        if raw.projects.is_empty()
            && raw.policy.file.is_none()
            && !self.has_problem_under("projects")
        {
            self.invalid(
                "projects",
                "the allowlist is empty: add a [projects.KEY] table with `repos = [{ name = \"owner/repo\" }]`",
            );
        }
        let mut projects = BTreeMap::new();
        for (key, project) in raw.projects {
            let name = format!("projects.{key}.repos");
            let repos = project.repos.into_inner();
            if repos.is_empty() {
                self.invalid(&name, "lists no repository");
            }
            for repo in &repos {
                if !valid_repo_name(&repo.name) {
                    self.invalid(
                        &name,
                        &format!("`{}` is not of the form owner/name", repo.name),
                    );
                }
            }
            projects.insert(key, ProjectConfig { repos });
        }

        Config {
            jira: JiraConfig {
                base_url: rj.base_url.trim_end_matches('/').to_string(),
                bot_account_id,
                bot_username,
                flavor: rj.flavor,
                auth,
                acceptance_criteria_fields: rj.acceptance_criteria_fields,
            },
            github: GithubConfig {
                api_url: rg.api_url.trim_end_matches('/').to_string(),
                git_url: rg.git_url.trim_end_matches('/').to_string(),
                token: github_token,
            },
            model: ModelConfig {
                provider: rm.provider,
                base_url: rm.base_url.trim_end_matches('/').to_string(),
                model: rm.model,
                api_key,
                max_tokens_per_call: rm.max_tokens_per_call,
                request_timeout_secs: rm.request_timeout_secs,
                prompt_caching: rm.prompt_caching,
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

/// Secrets are read where they are used, and a file's problems are reported all at once with what they stop.
#[cfg(test)]
mod per_command {
    use super::*;
    use std::cell::RefCell;

    const EXAMPLE: &str = include_str!("../examples/drafter.toml");

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
            shown[2]
                .contains("not read: environment variable GITHUB_TOKEN (`github.token_env`, line"),
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
}

/// Issue 17's Jira Data Center settings under the per-command loader: the password is a secret like the token, read
/// only by the commands that talk to Jira, and every mistake is a problem with its key, line and what it stops.
#[cfg(test)]
mod data_center {
    use super::*;
    use std::cell::RefCell;

    const EXAMPLE: &str = include_str!("../examples/drafter.toml");

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
            shown.contains(
                "not read: environment variable JIRA_PASSWORD (`jira.password_env`, line"
            ),
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
}
