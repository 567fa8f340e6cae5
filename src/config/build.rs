//! From the file as written to a [`Config`]: environment overrides applied, every value checked (each problem
//! with its key and line, the key dropped so the rest can be read), secrets named but not read.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::raw::*;
use super::*;

/// Reads the file as far as it goes. Secrets are named, not read.
pub(super) fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Parsed {
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
        let app_key = self
            .secret_ref(
                "github.app_private_key",
                &rg.app_private_key_env,
                &rg.app_private_key_file,
            )
            .ok()
            .flatten();
        let github_app = match (rg.app_id, app_key) {
            (Some(app_id), Some(r)) => Some(GithubAppConfig {
                app_id,
                private_key: Credential::unread(r),
            }),
            (Some(_), None) => {
                self.invalid(
                    "github.app_id",
                    "a GitHub App needs its private key: set `app_private_key_env` or `app_private_key_file` in [github]",
                );
                None
            }
            (None, Some(_)) => {
                self.invalid(
                    "github.app_private_key_env",
                    "an App private key without `app_id`: set `app_id` in [github]",
                );
                None
            }
            (None, None) => None,
        };
        let app_given = rg.app_id.is_some();
        let github_token = match self.secret_ref("github.token", &rg.token_env, &rg.token_file) {
            Ok(Some(_)) if app_given => {
                self.invalid(
                    "github.token_env",
                    "set either a token (`token_env`/`token_file`) or a GitHub App (`app_id`), not both",
                );
                Credential::missing()
            }
            Ok(Some(r)) => Credential::unread(r),
            Ok(None) => {
                if github_given && !app_given {
                    self.invalid(
                        "github.token_env",
                        "no GitHub credential: set `token_env` (name of an environment variable) or `token_file` in [github], or a GitHub App (`app_id` and `app_private_key_env`/`_file`)",
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
        let github_webhook_secret = self
            .secret_ref(
                "serve.github_webhook_secret",
                &raw.serve.github_webhook_secret_env,
                &raw.serve.github_webhook_secret_file,
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
            ("repo.mirror_max_bytes", raw.repo.mirror_max_bytes),
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
            for (project, t) in &rj.transitions {
                if let Err(message) = check_transitions(project, t) {
                    self.invalid(&format!("jira.transitions.{project}"), &message);
                }
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
                if let Some(problem) = repo
                    .fork
                    .as_deref()
                    .and_then(|f| super::sections::fork_problem(&repo.name, f))
                {
                    self.invalid(&name, &problem);
                }
            }
            projects.insert(key, ProjectConfig { repos });
        }

        Config {
            panel: PanelConfig {
                remote_links: rj.remote_links,
                transitions: rj.transitions.clone(),
            },
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
                app: github_app,
                bot_login: rg.bot_login.clone().filter(|l| !l.trim().is_empty()),
                identities: rg
                    .identities
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
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
                github_webhook_secret,
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
            repo: CloneConfig {
                mirror: raw.repo.mirror,
                // Relative paths are taken as written, like data_dir; the default follows data_dir.
                mirror_dir: raw
                    .repo
                    .mirror_dir
                    .unwrap_or_else(|| raw.data_dir.join("mirrors")),
                mirror_max_bytes: raw.repo.mirror_max_bytes,
                spare_workspaces: raw.repo.spare_workspaces,
            },
            data_dir: raw.data_dir,
            projects,
        }
    }
}
