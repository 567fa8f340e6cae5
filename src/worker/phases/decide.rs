//! Decide: the policy on this ticket and trigger (refuse, or wait for approval, before anything is cloned), the
//! later requests' authors, the budget, and the limits and network the policy grants.

use crate::config::{AgentLimits, Config, SandboxConfig};
use crate::jira::Ticket;
use crate::policy::{self, Approval, Grant, Network, Request};
use crate::queue::ApprovalSubject;
use crate::sandboxd::egress::EgressRules;

use super::super::error::{refused, JobError};
use super::super::job::{Job, JobSpec, Progress, MAX_REQUESTS, MAX_REQUEST_BYTES};
use super::super::meter::{Ledger, Meter};
use super::super::outcome::{AwaitingApproval, Refusal};

/// Asks the policy about this ticket and trigger; records every decision on the job.
pub(crate) async fn decide(
    job: &mut Job<'_>,
    ticket: &Ticket,
    dir: &dyn policy::Directory,
) -> Result<Grant, JobError> {
    let spec = job.spec;
    let req = Request {
        ticket,
        who: spec.origin.as_deref(),
        approved_by: spec.approved_by.as_deref(),
    };
    let grant = match spec.policy.decide(&req, dir).await {
        Ok(g) => g,
        Err(denial) => {
            job.progress.decisions = denial.decisions;
            return Err(refused(&denial.rule, denial.reason));
        }
    };
    job.progress.decisions = grant.decisions.clone();
    job.progress.team = Some(grant.team.clone());
    job.progress.retention = grant.rules.retention;
    let subject = ApprovalSubject {
        ticket_sha256: job.progress.ticket_sha256.clone().unwrap_or_default(),
        repo: grant.repo.name.clone(),
        base: grant.repo.base.clone(),
    };
    if let Approval::Required {
        reason,
        approvers,
        ttl_hours,
    } = &grant.approval
    {
        return Err(JobError::AwaitingApproval(AwaitingApproval {
            reason: reason.clone(),
            approvers: approvers.clone(),
            ttl_hours: *ttl_hours,
            requested_at: chrono::Utc::now(),
            subject,
            outdated: None,
        }));
    }
    // An approval holds for what was approved only, whether or not the policy still asks for one now (dropping the
    // label is itself a change of the ticket).
    if let (Some(by), Some(approved)) = (&spec.approved_by, &spec.approved) {
        let changed = approved.changes(&subject);
        if !changed.is_empty() {
            let reason = format!("{} changed after {by} approved the job", changed.join(", "));
            job.decision(
                &ticket.key,
                "approval",
                false,
                format!("{reason}; asking again"),
            );
            let team = spec.policy.team_for(&ticket.project);
            return Err(JobError::AwaitingApproval(AwaitingApproval {
                reason,
                approvers: team.map(|t| t.approvers.describe()).unwrap_or_default(),
                ttl_hours: grant.rules.approval_ttl_hours,
                requested_at: chrono::Utc::now(),
                subject,
                outdated: Some((by.clone(), changed)),
            }));
        }
    }
    if let Network::Allowlist(name) = &grant.rules.network {
        // Fail closed: a name the policy does not define gets no network at all, not some other one.
        let detail = match spec.policy.egress.get(name) {
            Some(e) => Ok(format!(
                "network allowlist:{name}: {} (plain HTTP methods: {})",
                e.hosts.join(", "),
                if e.methods.is_empty() {
                    "any".to_string()
                } else {
                    e.methods.join(", ")
                }
            )),
            None => Err(format!(
                "network allowlist:{name}: no [egress.{name}] in the policy"
            )),
        };
        let allowed = detail.is_ok();
        let text = detail.unwrap_or_else(|e| e);
        job.decision(&ticket.key, "network", allowed, text.clone());
        if !allowed {
            return Err(refused("network", text));
        }
    }
    Ok(grant)
}

/// The requests whose authors pass the policy's `triggers` rule, as `who: text` for the model. The first trigger's
/// author was checked by [`decide`]; every later one (a mention or assignment absorbed by the open job) is checked
/// here the same way, and a refused one is recorded as a decision (who, why) and never reaches the model. Past
/// [`MAX_REQUESTS`] or [`MAX_REQUEST_BYTES`] the rest are dropped, and that is recorded too.
pub(crate) async fn admit_requests(
    spec: &JobSpec,
    ticket: &Ticket,
    dir: &dyn policy::Directory,
    progress: &mut Progress,
) -> Vec<String> {
    let mut admitted = Vec::new();
    let mut bytes = 0usize;
    let mut note = |allowed: bool, detail: String| {
        progress.decisions.push(policy::log_decision(
            &spec.policy.hash,
            &ticket.key,
            "trigger",
            allowed,
            detail,
        ));
    };
    for ask in &spec.requests {
        let text = ask.text.trim();
        if text.is_empty() {
            continue;
        }
        let who_name = ask.by.as_deref().unwrap_or("someone");
        if !ask.first {
            let who = if ask.operator {
                policy::Who::Operator(who_name)
            } else {
                policy::Who::Jira(ask.by.as_deref())
            };
            if let Err(why) = spec.policy.may_trigger(&ticket.project, who, dir).await {
                note(
                    false,
                    format!("a later request by {who_name} was not given to the model: {why}"),
                );
                continue;
            }
        }
        let line = format!("{who_name}: {text}");
        if admitted.len() >= MAX_REQUESTS || bytes + line.len() > MAX_REQUEST_BYTES {
            note(
                false,
                format!(
                    "a request by {who_name} was not given to the model: the job keeps at most {MAX_REQUESTS} \
                     requests and {MAX_REQUEST_BYTES} bytes of request text"
                ),
            );
            continue;
        }
        bytes += line.len();
        admitted.push(line);
    }
    admitted
}

/// The job's budget gate; a team already over its budget (or a cost cap without a price) is refused before anything
/// is cloned.
pub(crate) async fn budget(
    job: &Job<'_>,
    config: &Config,
    ticket: &Ticket,
    grant: &Grant,
    ledger: Option<std::sync::Arc<dyn Ledger>>,
) -> Result<Meter, JobError> {
    let policy = &job.spec.policy;
    let meter = Meter::new(
        &policy.hash,
        &ticket.key,
        job.id(),
        &grant.team,
        &config.model.model,
        policy.prices.get(&config.model.model).copied(),
        grant.rules.budget.clone(),
        ledger,
    );
    if grant.rules.budget.has_cost_caps() && !policy.prices.contains_key(&config.model.model) {
        return Err(refused(
            "budget",
            format!(
                "the policy sets cost budgets but has no price for the model `{}`",
                config.model.model
            ),
        ));
    }
    meter.check().await.map_err(|r| {
        JobError::Refused(Refusal {
            rule: r.rule,
            message: r.message,
        })
    })?;
    Ok(meter)
}

/// The egress allowlist the policy grants the job's sandbox, if any (`decide` has already refused a name the policy
/// does not define).
pub(crate) fn egress_rules(config: &Config, spec: &JobSpec, grant: &Grant) -> Option<EgressRules> {
    match &grant.rules.network {
        Network::Allowlist(name) => spec.policy.egress.get(name).map(|e| EgressRules {
            name: name.clone(),
            hosts: e.hosts.clone(),
            methods: e.methods.clone(),
            allow_addresses: config.sandbox.egress_allow_addresses.clone(),
        }),
        Network::None => None,
    }
}

/// The runner's limits tightened by the policy's: the stricter value of each wins.
pub(crate) fn effective_limits(config: &Config, grant: &Grant) -> (AgentLimits, SandboxConfig) {
    let l = &grant.rules.limits;
    let min = |a: u64, b: Option<u64>| b.map_or(a, |b| a.min(b));
    // `budget.job_tokens` is not folded in here: the meter enforces it before each call, naming the budget rule.
    let tokens = min(config.agent.max_total_tokens, l.max_total_tokens);
    let limits = AgentLimits {
        max_turns: l
            .max_turns
            .map_or(config.agent.max_turns, |t| config.agent.max_turns.min(t)),
        max_total_tokens: tokens,
        wall_time_secs: min(config.agent.wall_time_secs, l.wall_time_secs),
        context_budget_tokens: config.agent.context_budget_tokens,
    };
    let mut sandbox = config.sandbox.clone();
    sandbox.memory_mb = min(sandbox.memory_mb, l.memory_mb);
    sandbox.command_timeout_secs = min(sandbox.command_timeout_secs, l.command_timeout_secs);
    if let Some(c) = l.cpus {
        sandbox.cpus = sandbox.cpus.min(c);
    }
    if let Some(p) = l.pids_limit {
        sandbox.pids_limit = sandbox.pids_limit.min(p);
    }
    (limits, sandbox)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::policy::{write, Policy, Who};
    use crate::worker::Ask;

    pub(crate) fn ticket(desc: &str, labels: &[&str]) -> Ticket {
        Ticket {
            key: "DEMO-1".into(),
            project: "DEMO".into(),
            summary: "s".into(),
            description: desc.into(),
            reporter: None,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            issue_type: None,
            url: "u".into(),
            ..Ticket::default()
        }
    }

    fn config() -> Config {
        let text = r#"
[jira]
base_url = "https://j.example"
bot_account_id = "bot"
token_env = "T"
[github]
token_env = "G"
[model]
provider = "openai"
base_url = "http://m.example"
model = "m"
[projects.DEMO]
repos = [{ name = "acme/web" }, { name = "acme/api", base = "develop" }]
"#;
        let env = |n: &str| match n {
            "T" => Some("jira-secret-123".to_string()),
            "G" => Some("ghp_secret_456".to_string()),
            _ => None,
        };
        Config::from_toml(text, Path::new("t.toml"), &env).unwrap()
    }

    #[tokio::test]
    async fn later_requests_are_capped_in_number_and_bytes() {
        let c = config();
        let mut spec = JobSpec::new("DEMO-1", Arc::new(Policy::derived(&c)), "ops");
        let ask = |i: usize, text: String| Ask {
            by: Some(format!("dev{i}")),
            operator: false,
            first: i == 0,
            text,
        };
        spec.requests = (0..MAX_REQUESTS + 5)
            .map(|i| ask(i, format!("request {i}")))
            .collect();
        let mut progress = Progress::default();
        let t = ticket("", &[]);
        let admitted = admit_requests(&spec, &t, &policy::NoGroups, &mut progress).await;
        assert_eq!(admitted.len(), MAX_REQUESTS);
        assert_eq!(admitted[0], "dev0: request 0");
        let dropped = progress.decisions.iter().filter(|d| !d.allowed).count();
        assert_eq!(dropped, 5);

        spec.requests = vec![
            ask(0, "x".repeat(MAX_REQUEST_BYTES - 100)),
            ask(1, "y".repeat(200)),
            ask(2, "short".into()),
        ];
        let mut progress = Progress::default();
        let admitted = admit_requests(&spec, &t, &policy::NoGroups, &mut progress).await;
        assert_eq!(
            admitted.len(),
            2,
            "the oversized one is dropped, later small ones fit"
        );
        assert!(admitted.iter().map(String::len).sum::<usize>() <= MAX_REQUEST_BYTES);
        assert_eq!(admitted[1], "dev2: short");
    }

    #[tokio::test]
    async fn without_a_policy_file_the_allowlist_is_the_policy() {
        let c = config();
        let p = Policy::derived(&c);
        assert!(p.hash.starts_with("sha256:"), "{}", p.hash);
        let decide = |t: Ticket| {
            let p = p.clone();
            async move {
                let req = Request {
                    ticket: &t,
                    who: Who::Jira(Some("anyone-at-all")),
                    approved_by: None,
                };
                p.decide(&req, &policy::NoGroups).await
            }
        };
        assert_eq!(decide(ticket("", &[])).await.unwrap().repo.name, "acme/web");
        let api = decide(ticket("", &["repo:ACME/api"])).await.unwrap().repo;
        assert_eq!(
            (api.name.as_str(), api.base.as_str()),
            ("acme/api", "develop")
        );
        let refused = decide(ticket("repo: evil/repo", &[])).await.unwrap_err();
        assert_eq!(refused.rule, "repo");
        assert!(
            refused.reason.contains("acme/web, acme/api"),
            "{}",
            refused.reason
        );
        let mut other = ticket("", &[]);
        other.project = "OPS".into();
        assert_eq!(decide(other).await.unwrap_err().rule, "project");
        // The derived policy still keeps CI definitions out of reach.
        let g = decide(ticket("", &[])).await.unwrap();
        assert!(write::check_path(&g.rules.write, ".github/workflows/ci.yml").is_err());
    }
}
