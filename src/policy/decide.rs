//! [`Policy::decide`]: a ticket and its trigger to a [`Grant`] or a [`Denial`], each step a `drafter::policy` tracing
//! event; and the trigger and approver rules it shares with intake.

use crate::jira::Ticket;

use super::who::{Directory, DirectoryError, Who};

use super::*;

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
                fork: repo.fork.clone(),
            },
            rules: rules.clone(),
            approval,
            decisions,
        })
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
