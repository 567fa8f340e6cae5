//! The loaded configuration, one type per section of the file. Built from the file as written (`raw.rs`) by
//! `build.rs`; secrets are [`Credential`]s, read only by the commands that use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::raw::RawSandbox;
use super::Credential;

/// The whole runner configuration. Secrets are [`Credential`]s: named by the file, read only by the commands that
/// use them ([`Config::load_for`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the runner keeps its signing key and one directory per job (receipts, logs, proof).
    pub data_dir: PathBuf,
    /// The Jira site the tickets come from.
    pub jira: JiraConfig,
    /// What drafter shows on the ticket besides comments: the PR as a remote link, and status transitions.
    pub panel: PanelConfig,
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
    /// How jobs get their clone: through a local mirror of each repository (`[repo]`).
    pub repo: CloneConfig,
}

/// `[repo]`: how a job's workspace is cloned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneConfig {
    /// Keep a bare mirror per repository and make workspaces from it (`mirror`, default on); off, every job
    /// clones from the forge.
    pub mirror: bool,
    /// Where the mirrors live (`mirror_dir`, default `<data_dir>/mirrors`).
    pub mirror_dir: PathBuf,
    /// Bound on the mirrors' total size (`mirror_max_bytes`, default 10 GiB): least recently used ones go first.
    pub mirror_max_bytes: u64,
    /// Keep one workspace per repository and base branch made ahead of time, beside the jobs' workspaces
    /// (`spare_workspaces`, default on; only with `mirror`): the next job takes it instead of writing every file.
    pub spare_workspaces: bool,
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
    /// The GitHub webhook's secret (`POST /webhooks/github`, `X-Hub-Signature-256`): review comments on drafter's
    /// pull requests start follow-up iterations. Configured means GitHub webhooks are on; without one the endpoint
    /// refuses everything.
    pub github_webhook_secret: Option<Credential>,
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

/// The ticket's development panel (`[jira] remote_links`, `[jira.transitions.PROJ]`).
#[derive(Debug, Clone, Default)]
pub struct PanelConfig {
    /// Whether the draft PR is linked to the ticket as a remote link (on by default).
    pub remote_links: bool,
    /// Status transitions per Jira project key; `"*"` applies to projects without their own table.
    pub transitions: BTreeMap<String, Transitions>,
}

impl PanelConfig {
    /// The transitions for tickets of `project`: its own table, else `"*"`'s.
    pub fn transitions_for(&self, project: &str) -> Option<&Transitions> {
        self.transitions
            .get(project)
            .or_else(|| self.transitions.get("*"))
    }
}

/// Where a ticket moves when drafter starts and when its PR opens. Each target is matched against the statuses the
/// workflow offers from where the ticket is: by status name (case-insensitive), else by status category key or name
/// (`indeterminate`, `In Progress`). Left out: no transition.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Transitions {
    /// When a job starts work (after the policy and the merge check), e.g. `"In Progress"`.
    #[serde(default)]
    pub on_start: Option<String>,
    /// When its draft PR is open, e.g. `"In Review"`.
    #[serde(default)]
    pub on_pr: Option<String>,
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

    pub(super) fn secret_mut(&mut self) -> &mut Credential {
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
    /// The service account's token: needs contents and pull requests write, must not be able to merge. Unset
    /// (never read) when a GitHub App is configured.
    pub token: Credential,
    /// A GitHub App instead of the token: each job gets its own installation token.
    pub app: Option<GithubAppConfig>,
    /// The login drafter comments as (`github.bot_login`): review comments must mention `@<login>`, and its own
    /// comments never trigger. Without it, review comments are ignored.
    pub bot_login: Option<String>,
    /// `[github.identities]`: GitHub login (lower case) -> Jira account id or user name. When a team lists no
    /// `reviewers`, a reviewer whose mapped Jira identity passes its `triggers` may steer follow-ups, like anyone
    /// with write access.
    pub identities: std::collections::BTreeMap<String, String>,
}

/// A GitHub App drafter authenticates as (`[github] app_id`, `app_private_key_env`/`_file`).
#[derive(Debug, Clone)]
pub struct GithubAppConfig {
    /// The App's id (the JWT's `iss`).
    pub app_id: u64,
    /// Its private key, PEM (RSA), to sign the JWTs.
    pub private_key: Credential,
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
    /// Fork mode: the service account's fork of `name` (`owner/name`). The branch is pushed there and the draft PR
    /// goes from it into `name`; the account must have no write access to `name` at all, so the code the model
    /// wrote runs in CI under GitHub's rules for forks (no upstream secrets on `pull_request`).
    #[serde(default)]
    pub fork: Option<String>,
}

impl RepoConfig {
    /// The repository branches are pushed to: the fork in fork mode, else the repository itself.
    pub fn push_repo(&self) -> &str {
        self.fork.as_deref().unwrap_or(&self.name)
    }
}

/// Why a fork cannot serve `name`, if it cannot (a malformed name, or the repository itself).
pub fn fork_problem(name: &str, fork: &str) -> Option<String> {
    if !crate::config::valid_repo_name(fork) {
        return Some(format!(
            "{name}: fork `{fork}` is not of the form owner/name"
        ));
    }
    if fork.eq_ignore_ascii_case(name) {
        return Some(format!(
            "{name}: `fork` names the repository itself; name the service account's fork"
        ));
    }
    None
}

pub(super) fn default_base() -> String {
    "main".into()
}
