//! The policy file as written (TOML), its validation with line numbers, and the merge of `[defaults]` into teams.
//!
//! Every table refuses unknown keys, so a typo (`max_file = 3`) is an error with its line, not a silently ignored
//! rule. Team tables take the same rule keys as `[defaults]`; a key a team sets replaces the default, key by key
//! inside `limits`, `write`, `budget`, `concurrency` and `retention`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::write::WriteRules;
use super::{
    identity, Budget, Concurrency, Egress, Limits, Network, Policy, PolicyError, Price, Principals,
    RepoGrant, Rules, Team, Tool, TOOLS,
};

/// Follow-up iterations on review comments per pull request when the policy does not say (`review_iterations`).
pub const DEFAULT_REVIEW_ITERATIONS: u32 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    defaults: Option<Spanned<RawSection>>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
    #[serde(default)]
    egress: BTreeMap<String, Egress>,
    #[serde(default)]
    teams: BTreeMap<String, Spanned<RawSection>>,
}

/// `[defaults]` and `[teams.NAME]` share one shape; `projects` and `repos` are refused in `[defaults]`.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawSection {
    projects: Option<Vec<Spanned<String>>>,
    repos: Option<Vec<Spanned<RawRepo>>>,
    triggers: Option<Principals>,
    approvers: Option<Principals>,
    reviewers: Option<Vec<String>>,
    review_iterations: Option<u32>,
    issue_types: Option<Vec<String>>,
    labels_required: Option<Vec<String>>,
    labels_excluded: Option<Vec<String>>,
    approval_labels: Option<Vec<String>>,
    approval_always: Option<bool>,
    approval_ttl_hours: Option<Spanned<u64>>,
    tools: Option<Spanned<Vec<String>>>,
    network: Option<Spanned<String>>,
    limits: Option<RawLimits>,
    write: Option<RawWrite>,
    budget: Option<RawBudget>,
    concurrency: Option<RawConcurrency>,
    retention: Option<RawRetention>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    name: String,
    #[serde(default)]
    bases: Option<Vec<String>>,
    #[serde(default)]
    test_command: Option<String>,
    #[serde(default)]
    fork: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_turns: Option<u32>,
    max_total_tokens: Option<u64>,
    wall_time_secs: Option<u64>,
    command_timeout_secs: Option<u64>,
    memory_mb: Option<u64>,
    cpus: Option<f64>,
    pids_limit: Option<i64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawWrite {
    forbidden_paths: Option<Vec<String>>,
    forbid_lockfiles: Option<bool>,
    max_files: Option<usize>,
    max_lines: Option<usize>,
    allow_binary: Option<bool>,
    exclude: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    job_tokens: Option<u64>,
    job_cost_usd: Option<f64>,
    daily_tokens: Option<u64>,
    daily_cost_usd: Option<f64>,
    monthly_tokens: Option<u64>,
    monthly_cost_usd: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    team: Option<usize>,
    repo: Option<usize>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    bodies: Option<crate::proof::Bodies>,
    max_age_days: Option<u64>,
}

/// `a.or(b)` for every field of a flat struct of options.
macro_rules! merge_fields {
    ($a:expr, $b:expr, $ty:ident { $($f:ident),* }) => {
        $ty { $($f: $a.$f.or($b.$f)),* }
    };
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn invalid(
        &self,
        key: impl Into<String>,
        at: Option<usize>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_path_buf(),
            line: at.map(|o| self.line(o)),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Parses and validates a policy; `path` names it in errors. The hash is computed from the same text.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let parse_err = |e: toml::de::Error| PolicyError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    };
    let doc: toml::Table = text.parse().map_err(parse_err)?;
    let hash = identity::policy_hash(&doc).map_err(|source| PolicyError::Identity {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let raw: RawPolicy = toml::from_str(text).map_err(parse_err)?;
    let cx = Ctx { path, text };

    if *raw.version.get_ref() != 1 {
        return Err(cx.invalid(
            "version",
            Some(raw.version.span().start),
            "this runner understands policy version 1",
        ));
    }
    for (model, price) in &raw.prices {
        for (what, v) in [
            ("input_usd_per_mtok", price.input_usd_per_mtok),
            ("output_usd_per_mtok", price.output_usd_per_mtok),
            (
                "cache_read_usd_per_mtok",
                price.cache_read_usd_per_mtok.unwrap_or(0.0),
            ),
            (
                "cache_write_usd_per_mtok",
                price.cache_write_usd_per_mtok.unwrap_or(0.0),
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(cx.invalid(
                    format!("prices.{model}.{what}"),
                    None,
                    "must be a number >= 0",
                ));
            }
        }
    }
    for (name, e) in &raw.egress {
        if e.hosts.is_empty() {
            return Err(cx.invalid(format!("egress.{name}.hosts"), None, "lists no host"));
        }
        for h in &e.hosts {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let ok = !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && !bare.starts_with('.')
                && !bare.ends_with('.');
            if !ok {
                return Err(cx.invalid(
                    format!("egress.{name}.hosts"),
                    None,
                    format!("`{h}` is not a host name or `*.suffix`"),
                ));
            }
        }
    }

    let defaults = match &raw.defaults {
        Some(d) => {
            let at = Some(d.span().start);
            if d.get_ref().projects.is_some() {
                return Err(cx.invalid(
                    "defaults.projects",
                    at,
                    "projects belong to teams, not to [defaults]",
                ));
            }
            if d.get_ref().repos.is_some() {
                return Err(cx.invalid(
                    "defaults.repos",
                    at,
                    "repositories belong to teams, not to [defaults]",
                ));
            }
            d.get_ref().clone()
        }
        None => RawSection::default(),
    };
    if raw.teams.is_empty() {
        return Err(cx.invalid(
            "teams",
            None,
            "no team: add a [teams.NAME] table with `projects`, `repos` and `triggers`",
        ));
    }

    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut teams = Vec::new();
    for (name, section) in &raw.teams {
        let at = Some(section.span().start);
        let t = section.get_ref();
        let key = |k: &str| format!("teams.{name}.{k}");
        let projects = t.projects.clone().unwrap_or_default();
        if projects.is_empty() {
            return Err(cx.invalid(key("projects"), at, "lists no Jira project"));
        }
        let mut project_keys = Vec::new();
        for p in projects {
            let valid = !p.get_ref().is_empty()
                && p.get_ref()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase())
                && p.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(cx.invalid(
                    key("projects"),
                    Some(p.span().start),
                    format!("`{}` is not a Jira project key (e.g. PAY)", p.get_ref()),
                ));
            }
            if let Some(other) = owner.insert(p.get_ref().clone(), name.clone()) {
                return Err(cx.invalid(
                    key("projects"),
                    Some(p.span().start),
                    format!("project {} already belongs to team {other}", p.get_ref()),
                ));
            }
            project_keys.push(p.into_inner());
        }
        let repos_raw = t.repos.clone().unwrap_or_default();
        if repos_raw.is_empty() {
            return Err(cx.invalid(key("repos"), at, "lists no repository"));
        }
        let mut repos = Vec::new();
        for r in repos_raw {
            let line = Some(r.span().start);
            let r = r.into_inner();
            if !crate::config::valid_repo_name(&r.name) {
                return Err(cx.invalid(
                    key("repos"),
                    line,
                    format!("`{}` is not of the form owner/name", r.name),
                ));
            }
            let bases = r.bases.unwrap_or_else(|| vec!["main".into()]);
            if bases.is_empty() || bases.iter().any(|b| !valid_branch(b)) {
                return Err(cx.invalid(
                    key("repos"),
                    line,
                    format!(
                        "{}: `bases` must list branch names (e.g. [\"main\"])",
                        r.name
                    ),
                ));
            }
            if let Some(problem) = r
                .fork
                .as_deref()
                .and_then(|f| crate::config::fork_problem(&r.name, f))
            {
                return Err(cx.invalid(key("repos"), line, problem));
            }
            repos.push(RepoGrant {
                name: r.name,
                bases,
                test_command: r.test_command,
                fork: r.fork,
            });
        }

        let triggers = t
            .triggers
            .clone()
            .or(defaults.triggers.clone())
            .unwrap_or_default();
        if triggers.is_empty() {
            return Err(cx.invalid(
                key("triggers"),
                at,
                "nobody may trigger this team's jobs: list `accounts`, `groups`, or say `anyone = true`",
            ));
        }
        let approvers = t
            .approvers
            .clone()
            .or(defaults.approvers.clone())
            .unwrap_or_default();
        let approval_labels = t
            .approval_labels
            .clone()
            .or(defaults.approval_labels.clone())
            .unwrap_or_default();
        let approval_always = t
            .approval_always
            .or(defaults.approval_always)
            .unwrap_or(false);
        if (approval_always || !approval_labels.is_empty()) && approvers.is_empty() {
            return Err(cx.invalid(
                key("approvers"),
                at,
                "jobs of this team can need approval, but nobody may approve: list `approvers`",
            ));
        }
        let ttl = t
            .approval_ttl_hours
            .clone()
            .or(defaults.approval_ttl_hours.clone());
        let approval_ttl_hours = match ttl {
            Some(h) if *h.get_ref() == 0 => {
                return Err(cx.invalid(
                    key("approval_ttl_hours"),
                    Some(h.span().start),
                    "must be at least 1",
                ))
            }
            Some(h) => h.into_inner(),
            None => 72,
        };

        let tools = match t.tools.clone().or(defaults.tools.clone()) {
            None => TOOLS.to_vec(),
            Some(list) => {
                let at = Some(list.span().start);
                let mut tools = Vec::new();
                for name in list.into_inner() {
                    // `finish` is a tool but not the policy's to switch off: not listable.
                    match name.parse::<Tool>() {
                        Ok(tool) if TOOLS.contains(&tool) => tools.push(tool),
                        _ => {
                            let names: Vec<&str> = TOOLS.iter().map(|t| t.as_str()).collect();
                            return Err(cx.invalid(
                                key("tools"),
                                at,
                                format!(
                                    "unknown tool `{name}` (tools: {}; `finish` is always on)",
                                    names.join(", ")
                                ),
                            ));
                        }
                    }
                }
                tools
            }
        };
        let network = match t.network.clone().or(defaults.network.clone()) {
            None => Network::None,
            Some(n) => {
                let at = Some(n.span().start);
                match n.get_ref().as_str() {
                    "none" => Network::None,
                    other => match other.strip_prefix("allowlist:") {
                        Some(list) if raw.egress.contains_key(list) => {
                            Network::Allowlist(list.to_string())
                        }
                        Some(list) => {
                            return Err(cx.invalid(
                                key("network"),
                                at,
                                format!("no [egress.{list}] allowlist is defined"),
                            ))
                        }
                        None => {
                            return Err(cx.invalid(
                                key("network"),
                                at,
                                "expected `none` or `allowlist:NAME`",
                            ))
                        }
                    },
                }
            }
        };

        let l = merge_fields!(
            t.limits.clone().unwrap_or_default(),
            defaults.limits.clone().unwrap_or_default(),
            RawLimits {
                max_turns,
                max_total_tokens,
                wall_time_secs,
                command_timeout_secs,
                memory_mb,
                cpus,
                pids_limit
            }
        );
        if l.max_turns == Some(0)
            || l.max_total_tokens == Some(0)
            || l.wall_time_secs == Some(0)
            || l.command_timeout_secs == Some(0)
            || l.memory_mb == Some(0)
            || l.pids_limit.is_some_and(|p| p < 1)
            || l.cpus.is_some_and(|c| !c.is_finite() || c <= 0.0)
        {
            return Err(cx.invalid(key("limits"), at, "every limit must be greater than 0"));
        }
        let w = merge_fields!(
            t.write.clone().unwrap_or_default(),
            defaults.write.clone().unwrap_or_default(),
            RawWrite {
                forbidden_paths,
                forbid_lockfiles,
                max_files,
                max_lines,
                allow_binary,
                exclude
            }
        );
        let builtin = WriteRules::default();
        let write = WriteRules {
            forbidden_paths: w.forbidden_paths.unwrap_or(builtin.forbidden_paths),
            forbid_lockfiles: w.forbid_lockfiles.unwrap_or(builtin.forbid_lockfiles),
            max_files: w.max_files.or(builtin.max_files),
            max_lines: w.max_lines.or(builtin.max_lines),
            allow_binary: w.allow_binary.unwrap_or(builtin.allow_binary),
            exclude: w.exclude.unwrap_or(builtin.exclude),
        };
        if let Err(e) = write.compile() {
            return Err(cx.invalid(key("write.forbidden_paths"), at, e.to_string()));
        }
        if let Err(e) = write.exclusions() {
            return Err(cx.invalid(
                key("write.exclude"),
                at,
                format!("`{}` is not a valid glob: {}", e.glob, e.reason),
            ));
        }
        let b = merge_fields!(
            t.budget.clone().unwrap_or_default(),
            defaults.budget.clone().unwrap_or_default(),
            RawBudget {
                job_tokens,
                job_cost_usd,
                daily_tokens,
                daily_cost_usd,
                monthly_tokens,
                monthly_cost_usd
            }
        );
        for (k, v) in [
            ("job_cost_usd", b.job_cost_usd),
            ("daily_cost_usd", b.daily_cost_usd),
            ("monthly_cost_usd", b.monthly_cost_usd),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(cx.invalid(key(&format!("budget.{k}")), at, "must be a number >= 0"));
            }
        }
        let budget = Budget {
            job_tokens: b.job_tokens,
            job_cost_usd: b.job_cost_usd,
            daily_tokens: b.daily_tokens,
            daily_cost_usd: b.daily_cost_usd,
            monthly_tokens: b.monthly_tokens,
            monthly_cost_usd: b.monthly_cost_usd,
        };
        if budget.has_cost_caps() && raw.prices.is_empty() {
            return Err(cx.invalid(
                key("budget"),
                at,
                "cost caps need a price table: add [prices.\"MODEL\"] with input_usd_per_mtok and output_usd_per_mtok",
            ));
        }
        let c = merge_fields!(
            t.concurrency.clone().unwrap_or_default(),
            defaults.concurrency.clone().unwrap_or_default(),
            RawConcurrency { team, repo }
        );
        if c.team == Some(0) || c.repo == Some(0) {
            return Err(cx.invalid(key("concurrency"), at, "caps must be at least 1"));
        }
        let r = merge_fields!(
            t.retention.clone().unwrap_or_default(),
            defaults.retention.clone().unwrap_or_default(),
            RawRetention {
                bodies,
                max_age_days
            }
        );
        if r.max_age_days == Some(0) {
            return Err(cx.invalid(
                key("retention.max_age_days"),
                at,
                "must be at least 1 (use bodies = \"digests\" to keep no bodies at all)",
            ));
        }

        teams.push(Team {
            name: name.clone(),
            projects: project_keys,
            repos,
            triggers,
            approvers,
            reviewers: t.reviewers.clone().or(defaults.reviewers.clone()),
            review_iterations: t
                .review_iterations
                .or(defaults.review_iterations)
                .unwrap_or(DEFAULT_REVIEW_ITERATIONS),
            rules: Rules {
                issue_types: t
                    .issue_types
                    .clone()
                    .or(defaults.issue_types.clone())
                    .unwrap_or_default(),
                labels_required: t
                    .labels_required
                    .clone()
                    .or(defaults.labels_required.clone())
                    .unwrap_or_default(),
                labels_excluded: t
                    .labels_excluded
                    .clone()
                    .or(defaults.labels_excluded.clone())
                    .unwrap_or_default(),
                approval_labels,
                approval_always,
                approval_ttl_hours,
                tools,
                network,
                limits: Limits {
                    max_turns: l.max_turns,
                    max_total_tokens: l.max_total_tokens,
                    wall_time_secs: l.wall_time_secs,
                    command_timeout_secs: l.command_timeout_secs,
                    memory_mb: l.memory_mb,
                    cpus: l.cpus,
                    pids_limit: l.pids_limit,
                },
                write,
                budget,
                concurrency: Concurrency {
                    team: c.team,
                    repo: c.repo,
                },
                retention: crate::proof::Retention {
                    bodies: r.bodies.unwrap_or_default(),
                    max_age_days: r.max_age_days,
                },
            },
        });
    }

    Ok(Policy {
        hash,
        source: path.display().to_string(),
        signed_by: None,
        teams,
        prices: raw.prices,
        egress: raw.egress,
    })
}

/// A plausible git branch name (no `..`, no control characters or spaces, not starting with `-`).
fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && !b.starts_with('-')
        && !b.contains("..")
        && !b.ends_with('/')
        && !b.ends_with(".lock")
        && b.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
}
