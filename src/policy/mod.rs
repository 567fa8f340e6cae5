//! Policy as code: one file decides who may trigger what, where, with which tools, at what cost, and what a change
//! may touch. The runner checks it in code at every decision; nothing here relies on the model's good behaviour.
//!
//! - [`file`] parses and validates the TOML (errors carry the line), merging `[defaults]` into each team.
//! - [`identity`] gives a policy its identity: the canonical form, the hash recorded on every job, receipt and PR,
//!   and the detached Ed25519 signature.
//! - [`diff`] holds the write rules checked on the diff before anything is pushed (and on paths before the agent's
//!   own writes).
//! - This module: the policy model, [`Policy::load`] (with the runner's signature and pin demands), and
//!   [`Policy::decide`], which turns a ticket and its trigger into a [`Grant`] or a [`Denial`], logging every
//!   decision as a structured `tracing` event (target `drafter::policy`) with the rule, inputs and policy hash.
//!
//! A runner without a policy file gets a permissive policy derived from its `[projects]` table ([`Policy::derived`]):
//! anyone may trigger, every tool, the built-in write rules, no budgets. It has a hash like any other.

mod file;
pub mod identity;
mod who;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, RepoConfig};
use crate::jira::Ticket;
pub use crate::proof::format::{Decision, Price, CACHE_READ_MULTIPLIER, CACHE_WRITE_MULTIPLIER};

pub use file::parse;
use identity::IdentityError;
pub use who::{Directory, DirectoryError, NoGroups, Who};

/// The agent's tools a policy can switch on or off (`finish` is always available: it only ends the job).
pub const TOOLS: &[&str] = &[
    "list_files",
    "read_file",
    "search",
    "write_file",
    "edit_file",
    "run",
];

/// Why a policy could not be loaded or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Malformed TOML, an unknown key or a wrong type; the parser's message names the line and column.
    #[error("policy {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A value that parsed but is not acceptable.
    #[error("policy {path}{}: `{key}`: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The canonical form or the signature failed.
    #[error("policy {path}: {source}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: Box<IdentityError>,
    },
    /// The runner requires a signature and there is none.
    #[error("policy {path} (hash {hash}) is not signed, and the runner requires a signed policy: sign it with `drafter policy sign {path} --key KEY` (expected {sig})")]
    Unsigned {
        /// The file.
        path: PathBuf,
        /// Its hash.
        hash: String,
        /// Where the signature was looked for.
        sig: PathBuf,
    },
    /// The runner pins another hash.
    #[error(
        "policy {path}: the runner pins policy hash {expected}, but this file's hash is {actual}"
    )]
    PinMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
}

/// Who a rule names: Jira account ids (Cloud) or user names (Data Center), Jira groups, or anyone.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Principals {
    /// Account ids or user names.
    pub accounts: Vec<String>,
    /// Group names, resolved through the Jira API.
    pub groups: Vec<String>,
    /// Everyone (must be said explicitly).
    pub anyone: bool,
}

impl Principals {
    /// Whether nobody is named.
    pub fn is_empty(&self) -> bool {
        !self.anyone && self.accounts.is_empty() && self.groups.is_empty()
    }

    /// Short text for explanations and comments.
    pub fn describe(&self) -> String {
        if self.anyone {
            return "anyone".into();
        }
        let mut parts = Vec::new();
        if !self.accounts.is_empty() {
            parts.push(format!("accounts {}", self.accounts.join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!("groups {}", self.groups.join(", ")));
        }
        if parts.is_empty() {
            "nobody".into()
        } else {
            parts.join("; ")
        }
    }
}

/// A named egress allowlist (enforced by the sandbox's egress proxy; the policy names it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Host names, exact or `*.suffix`.
    pub hosts: Vec<String>,
    /// Plain-HTTP methods allowed (default: any).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// The sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Network {
    /// No network at all (the default).
    None,
    /// Only the hosts of the named `[egress.NAME]` allowlist.
    Allowlist(String),
}

impl Network {
    /// As written in the policy.
    pub fn as_string(&self) -> String {
        match self {
            Network::None => "none".into(),
            Network::Allowlist(n) => format!("allowlist:{n}"),
        }
    }
}

/// Limits that tighten the runner's own (`[agent]`, `[sandbox]`): the stricter value wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    /// Model calls per job.
    pub max_turns: Option<u32>,
    /// Tokens per job (also see [`Budget::job_tokens`]).
    pub max_total_tokens: Option<u64>,
    /// Wall time of the agent loop, seconds.
    pub wall_time_secs: Option<u64>,
    /// Per command, seconds.
    pub command_timeout_secs: Option<u64>,
    /// Sandbox memory, MiB.
    pub memory_mb: Option<u64>,
    /// Sandbox CPUs.
    pub cpus: Option<f64>,
    /// Sandbox processes.
    pub pids_limit: Option<i64>,
}

/// Spending caps. Costs need a price for the model in `[prices]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Budget {
    /// Tokens per job.
    pub job_tokens: Option<u64>,
    /// Dollars per job.
    pub job_cost_usd: Option<f64>,
    /// Tokens per team per UTC day.
    pub daily_tokens: Option<u64>,
    /// Dollars per team per UTC day.
    pub daily_cost_usd: Option<f64>,
    /// Tokens per team per UTC calendar month.
    pub monthly_tokens: Option<u64>,
    /// Dollars per team per UTC calendar month.
    pub monthly_cost_usd: Option<f64>,
}

impl Budget {
    /// Whether any cost cap is set (then the model needs a price).
    pub fn has_cost_caps(&self) -> bool {
        self.job_cost_usd.is_some()
            || self.daily_cost_usd.is_some()
            || self.monthly_cost_usd.is_some()
    }

    /// Whether any team-wide cap is set (then usage must be recorded in the shared ledger).
    pub fn has_team_caps(&self) -> bool {
        self.daily_tokens.is_some()
            || self.daily_cost_usd.is_some()
            || self.monthly_tokens.is_some()
            || self.monthly_cost_usd.is_some()
    }
}

/// Concurrency caps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Concurrency {
    /// Jobs of the team at once.
    pub team: Option<usize>,
    /// Jobs per repository at once.
    pub repo: Option<usize>,
}

/// Everything a team's jobs are held to, after `[defaults]` were merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Issue types in scope (empty: any).
    pub issue_types: Vec<String>,
    /// The ticket must carry one of these labels (empty: none required).
    pub labels_required: Vec<String>,
    /// Tickets with any of these labels are refused.
    pub labels_excluded: Vec<String>,
    /// Tickets with any of these labels wait for an approver first.
    pub approval_labels: Vec<String>,
    /// Every job waits for an approver.
    pub approval_always: bool,
    /// How long a job waits for approval before it fails.
    pub approval_ttl_hours: u64,
    /// Tools the agent gets (see [`TOOLS`]).
    pub tools: Vec<String>,
    /// The sandbox's network.
    pub network: Network,
    /// Limits tightening the runner's.
    pub limits: Limits,
    /// What a change may touch.
    pub write: write::WriteRules,
    /// Spending caps.
    pub budget: Budget,
    /// Concurrency caps.
    pub concurrency: Concurrency,
    /// What the job's proof record keeps besides digests, and for how long.
    pub retention: crate::proof::Retention,
}

/// One repository a team may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoGrant {
    /// `owner/name`.
    pub name: String,
    /// Base branches PRs may target; the first is the default.
    pub bases: Vec<String>,
    /// The repository's test command, a hint for the model.
    pub test_command: Option<String>,
}

/// A team: a set of Jira projects and what their tickets may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    /// The team's name (its table key).
    pub name: String,
    /// Jira project keys.
    pub projects: Vec<String>,
    /// Repositories, the first the default.
    pub repos: Vec<RepoGrant>,
    /// Who may trigger jobs.
    pub triggers: Principals,
    /// Who may approve jobs that need approval.
    pub approvers: Principals,
    /// The rest.
    pub rules: Rules,
}

/// A loaded, validated policy with its identity.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `sha256:<hex>` of the canonical form.
    pub hash: String,
    /// Where it came from (a path, or "derived from ...").
    pub source: String,
    /// The key id of a verified signature.
    pub signed_by: Option<String>,
    /// Teams, by name.
    pub teams: Vec<Team>,
    /// Prices per model name.
    pub prices: BTreeMap<String, Price>,
    /// Named egress allowlists.
    pub egress: BTreeMap<String, Egress>,
}

/// Logs a decision as a structured event (target `drafter::policy`) and returns it.
pub fn log_decision(
    policy_hash: &str,
    ticket: &str,
    rule: &str,
    allowed: bool,
    detail: String,
) -> Decision {
    if allowed {
        tracing::info!(target: "drafter::policy", policy = %policy_hash, %ticket, rule, allowed, %detail, "policy decision");
    } else {
        tracing::warn!(target: "drafter::policy", policy = %policy_hash, %ticket, rule, allowed, %detail, "policy decision");
    }
    Decision {
        rule: rule.to_string(),
        allowed,
        detail,
    }
}

/// What [`Policy::decide`] is asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The ticket, as fetched.
    pub ticket: &'a Ticket,
    /// Who triggered the job.
    pub who: Who<&'a str>,
    /// Who approved the job, if anybody did (checked against the approvers again here).
    pub approved_by: Option<&'a str>,
}

/// Whether the job may start now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Approval {
    /// No rule asks for approval.
    NotNeeded,
    /// Approval was needed and given.
    Given {
        /// By whom.
        by: String,
    },
    /// The job must wait for one of the approvers.
    Required {
        /// Which rule asks for it.
        reason: String,
        /// Who may approve.
        approvers: String,
        /// How long to wait.
        ttl_hours: u64,
    },
}

/// What a job is allowed to do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The policy's hash.
    pub policy_hash: String,
    /// The team whose rules apply.
    pub team: String,
    /// The repository and base branch chosen.
    pub repo: RepoConfig,
    /// The team's rules.
    pub rules: Rules,
    /// Whether the job must wait for approval.
    pub approval: Approval,
    /// Every decision made on the way.
    pub decisions: Vec<Decision>,
}

/// Why a job may not run.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The policy's hash.
    pub policy_hash: String,
    /// The rule that refused it.
    pub rule: String,
    /// Why, fit for a ticket comment.
    pub reason: String,
    /// Every decision made on the way, the refusal last.
    pub decisions: Vec<Decision>,
}

impl Policy {
    /// Loads the runner's policy: its `[policy] file` (checked against `require_signature`, `trusted_keys` and
    /// `pin_hash`), or the permissive policy derived from `[projects]`.
    pub fn load(config: &Config) -> Result<Policy, PolicyError> {
        let Some(path) = &config.policy.file else {
            return Ok(Policy::derived(config));
        };
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        let mut policy = parse(&text, path)?;
        let identity = |source| PolicyError::Identity {
            path: path.clone(),
            source: Box::new(source),
        };
        let trusted: Vec<_> = config
            .policy
            .trusted_keys
            .iter()
            .filter_map(|k| crate::proof::parse_public_key(k).ok())
            .collect();
        match identity::read_signature(path).map_err(identity)? {
            Some(sig) => {
                policy.signed_by =
                    Some(identity::verify(&sig, &policy.hash, &trusted).map_err(identity)?);
            }
            None if config.policy.require_signature => {
                return Err(PolicyError::Unsigned {
                    path: path.clone(),
                    hash: policy.hash.clone(),
                    sig: identity::sig_path(path),
                })
            }
            None => {}
        }
        if let Some(pin) = &config.policy.pin_hash {
            if *pin != policy.hash {
                return Err(PolicyError::PinMismatch {
                    path: path.clone(),
                    expected: pin.clone(),
                    actual: policy.hash.clone(),
                });
            }
        }
        Ok(policy)
    }

    /// The permissive policy of a runner without a policy file: one team per `[projects]` entry, anyone may
    /// trigger, every tool, built-in write rules, no budgets.
    pub fn derived(config: &Config) -> Policy {
        let mut doc = toml::Table::new();
        doc.insert("version".into(), toml::Value::Integer(1));
        let mut teams = toml::Table::new();
        for (key, project) in &config.projects {
            let mut team = toml::Table::new();
            team.insert(
                "projects".into(),
                toml::Value::Array(vec![key.clone().into()]),
            );
            let repos = project
                .repos
                .iter()
                .map(|r| {
                    let mut t = toml::Table::new();
                    t.insert("name".into(), r.name.clone().into());
                    t.insert(
                        "bases".into(),
                        toml::Value::Array(vec![r.base.clone().into()]),
                    );
                    if let Some(c) = &r.test_command {
                        t.insert("test_command".into(), c.clone().into());
                    }
                    toml::Value::Table(t)
                })
                .collect();
            team.insert("repos".into(), toml::Value::Array(repos));
            let mut anyone = toml::Table::new();
            anyone.insert("anyone".into(), true.into());
            team.insert("triggers".into(), toml::Value::Table(anyone));
            teams.insert(key.to_lowercase(), toml::Value::Table(team));
        }
        doc.insert("teams".into(), toml::Value::Table(teams));
        let text = toml::to_string(&doc).unwrap_or_default();
        match parse(&text, Path::new("<derived>")) {
            Ok(mut p) => {
                p.source = "derived from the runner configuration's [projects]".into();
                p
            }
            // The config was validated already; a policy that cannot be derived refuses everything.
            Err(e) => {
                tracing::error!(error = %e, "could not derive a policy from [projects]");
                Policy {
                    hash: String::new(),
                    source: "empty".into(),
                    signed_by: None,
                    teams: Vec::new(),
                    prices: BTreeMap::new(),
                    egress: BTreeMap::new(),
                }
            }
        }
    }

    /// The team that owns a Jira project.
    pub fn team_for(&self, project: &str) -> Option<&Team> {
        self.teams
            .iter()
            .find(|t| t.projects.iter().any(|p| p.eq_ignore_ascii_case(project)))
    }

    /// Every project any team covers (the poll's default).
    pub fn projects(&self) -> Vec<String> {
        let mut v: Vec<String> = self.teams.iter().flat_map(|t| t.projects.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `account` may approve jobs of `project`.
    pub async fn is_approver(
        &self,
        project: &str,
        account: &str,
        dir: &dyn Directory,
    ) -> Result<bool, DirectoryError> {
        match self.team_for(project) {
            Some(team) => matches(&team.approvers, account, dir).await,
            None => Ok(false),
        }
    }

    /// Whether `who` may trigger jobs for `project` under the `triggers` rule: `Ok` with why, or `Err` with why
    /// not. The same rule [`Policy::decide`] applies to a job's first trigger, for the triggers a job absorbs later
    /// (a mention on a ticket whose job is already open must not steer it past the rule).
    pub async fn may_trigger(
        &self,
        project: &str,
        who: Who<&str>,
        dir: &dyn Directory,
    ) -> Result<String, String> {
        match self.team_for(project) {
            Some(team) => trigger_rule(team, project, who, dir).await,
            None => Err(format!(
                "project {project} is not covered by drafter's policy; an admin must add it to a team"
            )),
        }
    }

    /// Decides whether a job for `req.ticket`, triggered by `req.who`, may run, and with what. Every step is
    /// logged; the first refusal ends the decision.
    pub async fn decide(&self, req: &Request<'_>, dir: &dyn Directory) -> Result<Grant, Denial> {
        let ticket = req.ticket;
        let mut decisions = Vec::new();
        let mut note = |rule: &str, allowed: bool, detail: String| {
            decisions.push(log_decision(&self.hash, &ticket.key, rule, allowed, detail));
        };
        macro_rules! deny {
            ($rule:expr, $reason:expr) => {{
                let reason: String = $reason;
                note($rule, false, reason.clone());
                return Err(Denial {
                    policy_hash: self.hash.clone(),
                    rule: $rule.to_string(),
                    reason,
                    decisions,
                });
            }};
        }

        let Some(team) = self.team_for(&ticket.project) else {
            deny!(
                "project",
                format!(
                    "project {} is not covered by drafter's policy; an admin must add it to a team",
                    ticket.project
                )
            );
        };
        note(
            "project",
            true,
            format!("project {} belongs to team {}", ticket.project, team.name),
        );

        // Who triggered it.
        match trigger_rule(team, &ticket.project, req.who, dir).await {
            Ok(why) => note("trigger", true, why),
            Err(why) => deny!("trigger", why),
        }

        let rules = &team.rules;
        if !rules.issue_types.is_empty() {
            let ty = ticket.issue_type.as_deref().unwrap_or("");
            if rules.issue_types.iter().any(|t| t.eq_ignore_ascii_case(ty)) {
                note("issue_types", true, format!("issue type {ty} is in scope"));
            } else {
                deny!(
                    "issue_types",
                    format!(
                        "issue type {} is out of scope for drafter (in scope: {})",
                        if ty.is_empty() { "(none)" } else { ty },
                        rules.issue_types.join(", ")
                    )
                );
            }
        }
        let has = |label: &str| ticket.labels.iter().any(|l| l.eq_ignore_ascii_case(label));
        if let Some(l) = rules.labels_excluded.iter().find(|l| has(l)) {
            deny!(
                "labels.excluded",
                format!("tickets labelled `{l}` are out of scope for drafter")
            );
        }
        if !rules.labels_required.is_empty() {
            if let Some(l) = rules.labels_required.iter().find(|l| has(l)) {
                note("labels.required", true, format!("ticket carries `{l}`"));
            } else {
                deny!(
                    "labels.required",
                    format!(
                        "the ticket needs one of the labels {} to be in scope",
                        rules.labels_required.join(", ")
                    )
                );
            }
        }

        // Repository and base branch.
        let repo = match named_field(ticket, "repo") {
            None => team.repos.first(),
            Some(name) => match team
                .repos
                .iter()
                .find(|r| r.name.eq_ignore_ascii_case(&name))
            {
                Some(r) => Some(r),
                None => deny!(
                    "repo",
                    format!(
                        "repository `{}` is not allowed for project {} (allowed: {})",
                        cap(&name, 100),
                        ticket.project,
                        team.repos
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                ),
            },
        };
        let Some(repo) = repo else {
            deny!("repo", format!("team {} lists no repository", team.name));
        };
        let base = match named_field(ticket, "base") {
            None => repo.bases.first().cloned().unwrap_or_else(|| "main".into()),
            Some(b) => match repo.bases.iter().find(|x| **x == b) {
                Some(x) => x.clone(),
                None => deny!(
                    "repo.bases",
                    format!(
                        "base branch `{}` is not allowed for {} (allowed: {})",
                        cap(&b, 100),
                        repo.name,
                        repo.bases.join(", ")
                    )
                ),
            },
        };
        note("repo", true, format!("{} on base {base}", repo.name));

        // Approval.
        let wanted = if rules.approval_always {
            Some("every job of this team needs approval".to_string())
        } else {
            rules
                .approval_labels
                .iter()
                .find(|l| has(l))
                .map(|l| format!("the label `{l}` needs approval"))
        };
        let approval = match (wanted, req.approved_by) {
            (None, _) => Approval::NotNeeded,
            (Some(reason), Some(by)) => {
                // An operator's CLI approval (`cli:` prefix) stands for the runner's admins.
                let ok = by.starts_with("cli:")
                    || matches(&team.approvers, by, dir).await.unwrap_or(false);
                if ok {
                    note("approval", true, format!("{reason}; approved by {by}"));
                    Approval::Given { by: by.to_string() }
                } else {
                    deny!(
                        "approval",
                        format!(
                            "{by} approved the job but is not an approver ({})",
                            team.approvers.describe()
                        )
                    );
                }
            }
            (Some(reason), None) => {
                note(
                    "approval",
                    false,
                    format!("{reason}; waiting for {}", team.approvers.describe()),
                );
                Approval::Required {
                    reason,
                    approvers: team.approvers.describe(),
                    ttl_hours: rules.approval_ttl_hours,
                }
            }
        };

        Ok(Grant {
            policy_hash: self.hash.clone(),
            team: team.name.clone(),
            repo: RepoConfig {
                name: repo.name.clone(),
                base,
                test_command: repo.test_command.clone(),
            },
            rules: rules.clone(),
            approval,
            decisions,
        })
    }
}

/// The policy in force, swapped whole on reload: a job takes an `Arc` when it starts and keeps it, so a reload
/// applies to new jobs only.
#[derive(Debug)]
pub struct Current(std::sync::RwLock<std::sync::Arc<Policy>>);

impl Current {
    /// Starts with `policy`.
    pub fn new(policy: Policy) -> Current {
        Current(std::sync::RwLock::new(std::sync::Arc::new(policy)))
    }

    /// The policy new jobs get.
    pub fn get(&self) -> std::sync::Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces it; returns the previous hash.
    pub fn set(&self, policy: Policy) -> String {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        let old = g.hash.clone();
        *g = std::sync::Arc::new(policy);
        old
    }
}

/// The `triggers` rule of `team` for `who`: `Ok` with why it allows them, `Err` with why not.
async fn trigger_rule(
    team: &Team,
    project: &str,
    who: Who<&str>,
    dir: &dyn Directory,
) -> Result<String, String> {
    match who {
        Who::Operator(name) => Ok(format!("started by operator {name} on the runner host")),
        Who::Jira(None) if team.triggers.anyone => Ok("team allows anyone to trigger".into()),
        Who::Jira(None) => Err(
            "drafter could not establish who assigned or mentioned it, and this team only accepts triggers from \
             named people or groups"
                .into(),
        ),
        Who::Jira(Some(account)) => match matches(&team.triggers, account, dir).await {
            Ok(true) => Ok(format!("{account} may trigger jobs for team {}", team.name)),
            Ok(false) => Err(format!(
                "{account} is not allowed to trigger drafter for project {project} (allowed: {})",
                team.triggers.describe()
            )),
            Err(e) => Err(format!(
                "could not check the group membership of {account}: {e}"
            )),
        },
    }
}

/// Whether `account` is among `who`: listed (by any identifier it goes by: a Data Center user may be listed by
/// name or by key), in a listed group, or `anyone`.
async fn matches(
    who: &Principals,
    account: &str,
    dir: &dyn Directory,
) -> Result<bool, DirectoryError> {
    let listed = |id: &str| who.accounts.iter().any(|a| dir.same_identity(a, id));
    if who.anyone || listed(account) {
        return Ok(true);
    }
    if !who.accounts.is_empty() && dir.identities(account).await?.iter().any(|id| listed(id)) {
        return Ok(true);
    }
    if who.groups.is_empty() {
        return Ok(false);
    }
    let groups = dir.groups(account).await?;
    Ok(groups
        .iter()
        .any(|g| who.groups.iter().any(|w| w.eq_ignore_ascii_case(g))))
}

/// A value a ticket names for `field` (`repo`, `base`): a label `field:value`, or a line `field: value` in the
/// description (Markdown emphasis around it is ignored).
pub fn named_field(ticket: &Ticket, field: &str) -> Option<String> {
    let prefix = format!("{field}:");
    for label in &ticket.labels {
        if let Some(r) = label.strip_prefix(&prefix) {
            return Some(r.trim().to_string());
        }
    }
    for line in ticket.description.lines() {
        let l = line
            .trim()
            .trim_start_matches(['*', '_', '`', '>', '-', ' ']);
        let lower = l.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix(&prefix) {
            let start = l.len() - rest.len();
            let name = l[start..].trim().trim_matches(['`', '*', '_', ' ']);
            if !name.is_empty() {
                return Some(name.to_string());
            }
        }
    }
    None
}

fn cap(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests;
