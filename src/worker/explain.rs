//! `drafter policy explain`: what a job for a ticket would be allowed to do, and why, before anything runs.
//!
//! It asks the same [`Policy::decide`] the pipeline asks and applies the same tightening of limits, so the
//! explanation cannot drift from what a job would actually get.

use std::fmt::Write as _;

use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::jira::Ticket;
use crate::policy::{Approval, Decision, Denial, Grant, Policy, Tool};

use super::meter::{caps, windows, Ledger, Spent, Window};

/// Budget figures for the explanation: caps and what is left.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetLeft {
    /// The cap's name (`job_tokens`, `daily_cost_usd`, ...).
    pub cap: String,
    /// The cap.
    pub limit: String,
    /// Spent in the window (team caps), when the ledger could be read.
    pub spent: Option<String>,
    /// Left, when known.
    pub left: Option<String>,
}

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The policy's hash.
    pub policy_hash: String,
    /// Where it came from.
    pub policy_source: String,
    /// Signed by (key id).
    pub signed_by: Option<String>,
    /// The ticket key.
    pub ticket: String,
    /// Its type and labels.
    pub issue_type: Option<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// Whether a job would run (possibly after approval).
    pub allowed: bool,
    /// The refusing rule, when refused.
    pub refused_by: Option<String>,
    /// The refusal's reason.
    pub reason: Option<String>,
    /// The team.
    pub team: Option<String>,
    /// Repository and base.
    pub repository: Option<String>,
    /// Every repository the team may use, with bases.
    pub allowed_repositories: Vec<String>,
    /// Tools given to the model.
    pub tools: Vec<Tool>,
    /// Effective limits (the runner's tightened by the policy's).
    pub limits: Vec<(String, String)>,
    /// Network.
    pub network: Option<String>,
    /// Write rules.
    pub write: Vec<(String, String)>,
    /// Budgets.
    pub budget: Vec<BudgetLeft>,
    /// Approval.
    pub approval: Option<String>,
    /// Concurrency caps.
    pub concurrency: Vec<(String, String)>,
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
}

async fn spent(
    ledger: Option<&dyn Ledger>,
    team: &str,
    since: chrono::DateTime<Utc>,
) -> Option<Spent> {
    ledger?.team_since(team, since).await.ok()
}

impl Explanation {
    /// Builds the explanation of `verdict` (from [`Policy::decide`]); reads team spending from `ledger` if given.
    pub async fn new(
        policy: &Policy,
        config: &Config,
        ticket: &Ticket,
        verdict: Result<Grant, Denial>,
        ledger: Option<&dyn Ledger>,
    ) -> Explanation {
        let mut e = Explanation {
            policy_hash: policy.hash.clone(),
            policy_source: policy.source.clone(),
            signed_by: policy.signed_by.clone(),
            ticket: ticket.key.clone(),
            issue_type: ticket.issue_type.clone(),
            labels: ticket.labels.clone(),
            allowed: verdict.is_ok(),
            refused_by: None,
            reason: None,
            team: None,
            repository: None,
            allowed_repositories: Vec::new(),
            tools: Vec::new(),
            limits: Vec::new(),
            network: None,
            write: Vec::new(),
            budget: Vec::new(),
            approval: None,
            concurrency: Vec::new(),
            decisions: Vec::new(),
        };
        if let Some(team) = policy.team_for(&ticket.project) {
            e.allowed_repositories = team
                .repos
                .iter()
                .map(|r| format!("{} [{}]", r.name, r.bases.join(", ")))
                .collect();
        }
        let grant = match verdict {
            Err(d) => {
                e.refused_by = Some(d.rule);
                e.reason = Some(d.reason);
                e.decisions = d.decisions;
                return e;
            }
            Ok(g) => g,
        };
        e.decisions = grant.decisions.clone();
        e.team = Some(grant.team.clone());
        e.repository = Some(format!("{} (base {})", grant.repo.name, grant.repo.base));
        e.tools = grant.rules.tools.clone();
        e.tools.push(Tool::Finish);
        let (limits, sandbox) = super::phases::decide::effective_limits(config, &grant);
        e.limits = vec![
            ("model calls".into(), limits.max_turns.to_string()),
            ("tokens".into(), limits.max_total_tokens.to_string()),
            (
                "agent wall time".into(),
                format!("{} s", limits.wall_time_secs),
            ),
            (
                "per command".into(),
                format!("{} s", sandbox.command_timeout_secs),
            ),
            ("memory".into(), format!("{} MiB", sandbox.memory_mb)),
            ("cpus".into(), sandbox.cpus.to_string()),
            ("processes".into(), sandbox.pids_limit.to_string()),
        ];
        e.network = Some(grant.rules.network.as_string());
        let w = &grant.rules.write;
        e.write = vec![
            ("forbidden paths".into(), w.forbidden_paths.join(", ")),
            (
                "lockfiles".into(),
                if w.forbid_lockfiles {
                    "forbidden"
                } else {
                    "allowed"
                }
                .into(),
            ),
            (
                "max files".into(),
                w.max_files.map_or("no cap".into(), |n| n.to_string()),
            ),
            (
                "max lines".into(),
                w.max_lines.map_or("no cap".into(), |n| n.to_string()),
            ),
            (
                "binary files".into(),
                if w.allow_binary {
                    "allowed"
                } else {
                    "forbidden"
                }
                .into(),
            ),
            (
                "always".into(),
                "no submodule changes, no symlinks out of the repository, no .git paths".into(),
            ),
            (
                "left out".into(),
                format!(
                    "build products commands created: the built-in list{}",
                    if w.exclude.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", w.exclude.join(", "))
                    }
                ),
            ),
        ];
        let b = &grant.rules.budget;
        let price = policy.prices.get(&config.model.model);
        let (day, month) = windows(Utc::now());
        let today: Option<Spent> = spent(ledger, &grant.team, day).await;
        let this_month: Option<Spent> = spent(ledger, &grant.team, month).await;
        let mut push = |cap: &str, limit: String, spent: Option<String>, left: Option<String>| {
            e.budget.push(BudgetLeft {
                cap: cap.into(),
                limit,
                spent,
                left,
            })
        };
        for cap in caps(b) {
            // Job caps have nothing spent yet; team caps show what the ledger says.
            let used = match cap.window {
                Window::Job => None,
                Window::Day => today.map(|s| cap.measure.of(&s)),
                Window::Month => this_month.map(|s| cap.measure.of(&s)),
            };
            let show = |v: u64| cap.measure.show(v);
            push(
                cap.name(),
                show(cap.limit),
                used.map(show),
                used.map(|u| show(cap.limit.saturating_sub(u))),
            );
        }
        if b.has_cost_caps() && price.is_none() {
            push(
                "price",
                format!(
                    "no price for model `{}`: the job would be refused",
                    config.model.model
                ),
                None,
                None,
            );
        }
        e.approval = Some(match &grant.approval {
            Approval::NotNeeded => "not needed".into(),
            Approval::Given { by } => format!("given by {by}"),
            Approval::Required {
                reason,
                approvers,
                ttl_hours,
            } => format!("REQUIRED: {reason}; approvers: {approvers}; expires after {ttl_hours} h"),
        });
        let c = &grant.rules.concurrency;
        e.concurrency = vec![
            (
                "team".into(),
                c.team.map_or("no cap".into(), |n| n.to_string()),
            ),
            (
                "repository".into(),
                c.repo.map_or("no cap".into(), |n| n.to_string()),
            ),
        ];
        e
    }

    /// The explanation as text for a terminal.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "policy      {} ({}{})",
            self.policy_hash,
            self.policy_source,
            self.signed_by
                .as_deref()
                .map(|k| format!(", signed by key {k}"))
                .unwrap_or_else(|| ", unsigned".into())
        );
        let _ = writeln!(
            s,
            "ticket      {} ({}; labels: {})",
            self.ticket,
            self.issue_type.as_deref().unwrap_or("no type"),
            if self.labels.is_empty() {
                "none".into()
            } else {
                self.labels.join(", ")
            }
        );
        let verdict = match (&self.refused_by, self.approval.as_deref()) {
            (Some(rule), _) => format!(
                "REFUSED by rule `{rule}`: {}",
                self.reason.as_deref().unwrap_or("")
            ),
            (None, Some(a)) if a.starts_with("REQUIRED") => {
                "would wait for approval, then run".into()
            }
            _ => "would run".into(),
        };
        let _ = writeln!(s, "verdict     {verdict}");
        if let Some(t) = &self.team {
            let _ = writeln!(s, "team        {t}");
        }
        if let Some(r) = &self.repository {
            let _ = writeln!(s, "repository  {r}");
        }
        if !self.allowed_repositories.is_empty() {
            let _ = writeln!(s, "allowed     {}", self.allowed_repositories.join("; "));
        }
        if !self.tools.is_empty() {
            let names: Vec<&str> = self.tools.iter().map(|t| t.as_str()).collect();
            let _ = writeln!(s, "tools       {}", names.join(", "));
        }
        if !self.limits.is_empty() {
            let l: Vec<String> = self
                .limits
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "limits      {}", l.join(", "));
        }
        if let Some(n) = &self.network {
            let _ = writeln!(s, "network     {n}");
        }
        for (k, v) in &self.write {
            let _ = writeln!(s, "write       {k}: {v}");
        }
        for b in &self.budget {
            let extra = match (&b.spent, &b.left) {
                (Some(sp), Some(l)) => format!(" (spent {sp}, left {l})"),
                _ => String::new(),
            };
            let _ = writeln!(s, "budget      {}: {}{extra}", b.cap, b.limit);
        }
        if let Some(a) = &self.approval {
            let _ = writeln!(s, "approval    {a}");
        }
        if !self.concurrency.is_empty() {
            let c: Vec<String> = self
                .concurrency
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "concurrency {}", c.join(", "));
        }
        let _ = writeln!(s, "decisions");
        for d in &self.decisions {
            let _ = writeln!(
                s,
                "  {} {:<16} {}",
                if d.allowed { "allow" } else { "deny " },
                d.rule,
                d.detail
            );
        }
        s
    }
}
