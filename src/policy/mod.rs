//! Policy as code: one file decides who may trigger what, where, with which tools, at what cost, and what a change
//! may touch. The runner checks it in code at every decision; nothing here relies on the model's good behaviour.
//!
//! - [`file`] parses and validates the TOML (errors carry the line), merging `[defaults]` into each team.
//! - [`identity`] gives a policy its identity: the canonical form, the hash recorded on every job, receipt and PR,
//!   and the detached Ed25519 signature.
//! - [`diff`] holds the write rules checked on the diff before anything is pushed (and on paths before the agent's
//!   own writes).
//! - [`rules`] the policy model: teams and the rules they are held to.
//! - [`decide`] turns a ticket and its trigger into a [`Grant`] or a [`Denial`] ([`Policy::decide`]), logging every
//!   decision as a structured `tracing` event (target `drafter::policy`) with the rule, inputs and policy hash.
//! - This module: [`Policy`], [`Policy::load`] (with the runner's signature and pin demands) and the policy in
//!   force ([`Current`]).
//!
//! A runner without a policy file gets a permissive policy derived from its `[projects]` table ([`Policy::derived`]):
//! anyone may trigger, every tool, the built-in write rules, no budgets. It has a hash like any other.

mod decide;
mod file;
pub mod identity;
mod rules;
mod who;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, RepoConfig};
pub use crate::proof::format::{
    Decision, Price, Tool, UnknownTool, CACHE_READ_MULTIPLIER, CACHE_WRITE_MULTIPLIER,
};

pub use decide::{named_field, Approval, Denial, Grant, Request};
pub use file::parse;
use identity::IdentityError;
pub use rules::{Budget, Concurrency, Egress, Limits, Network, Principals, RepoGrant, Rules, Team};
pub use who::{Directory, DirectoryError, NoGroups, Who};

/// The agent's tools a policy can switch on or off (`finish` is always available: it only ends the job).
pub const TOOLS: &[Tool] = &[
    Tool::ListFiles,
    Tool::ReadFile,
    Tool::Search,
    Tool::WriteFile,
    Tool::EditFile,
    Tool::Run,
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
                    if let Some(f) = &r.fork {
                        t.insert("fork".into(), f.clone().into());
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

    /// Who may steer a follow-up iteration of `project`'s pull requests by review comment: `Ok(Some(logins))` when
    /// the team lists `reviewers`, `Ok(None)` when GitHub's write access decides, with the team's iteration cap.
    /// `Err` when no team covers the project.
    pub fn review_rule(&self, project: &str) -> Result<(Option<&[String]>, u32), String> {
        match self.team_for(project) {
            Some(t) => Ok((t.reviewers.as_deref(), t.review_iterations)),
            None => Err(format!(
                "project {project} is not covered by drafter's policy; an admin must add it to a team"
            )),
        }
    }

    /// Every project any team covers (the poll's default).
    pub fn projects(&self) -> Vec<String> {
        let mut v: Vec<String> = self.teams.iter().flat_map(|t| t.projects.clone()).collect();
        v.sort();
        v.dedup();
        v
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

#[cfg(test)]
mod tests;
