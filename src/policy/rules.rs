//! The policy model: who a rule names, the limits, budgets and caps a team's jobs are held to, and the teams.

use serde::{Deserialize, Serialize};

use super::{write, Tool};

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
    /// Tools the agent gets (see [`super::TOOLS`]).
    pub tools: Vec<Tool>,
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
    /// Fork mode: the service account's fork the branch goes to (see `config::RepoConfig::fork`).
    pub fork: Option<String>,
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
    /// GitHub logins whose review comments on the team's pull requests start a follow-up iteration; `None`: any
    /// GitHub user with write access to the repository.
    pub reviewers: Option<Vec<String>>,
    /// Follow-up iterations on review comments per pull request (0: none).
    pub review_iterations: u32,
    /// The rest.
    pub rules: Rules,
}
