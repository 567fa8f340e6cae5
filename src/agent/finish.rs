//! `finish` as the write rules see it: the worker's [`FinishCheck`] judges the workspace as it would be committed,
//! and these are the words the model gets back, passed (with the build products left out) or turned back (the
//! rules broken, what is allowed, how to go on).

use std::collections::BTreeSet;

use super::AgentError;
use crate::policy::write::Violation;

/// Asked when the model calls `finish`: the write rules' verdict on the workspace as it would be committed (build
/// products left out the same way). The worker implements it; the agent stays away from git and the host.
#[async_trait::async_trait]
pub trait FinishCheck: Send + Sync {
    /// `written`: the paths the write and edit tools wrote, which are never left out as build products.
    async fn check(&self, written: &BTreeSet<String>) -> Result<FinishReport, AgentError>;
}

/// What [`FinishCheck::check`] found.
#[derive(Debug, Clone, Default)]
pub struct FinishReport {
    /// Every write rule the change breaks; empty when it may be delivered.
    pub violations: Vec<Violation>,
    /// What the rules allow, in words (see [`crate::policy::write::WriteRules::describe`]).
    pub allowed: String,
    /// The build products that will be left out of the commit, one line each (a directory or a file).
    pub left_out: Vec<String>,
}

/// The `finish` result when the rules pass: the build products that stay out of the commit are named.
pub(super) fn finish_ok_text(report: &FinishReport) -> String {
    if report.left_out.is_empty() {
        return "ok".into();
    }
    format!(
        "ok. Left out of the commit as build products your commands created:\n{}",
        bullet(&report.left_out)
    )
}

/// The `finish` result the first time the rules fail: the rule, the files, what is allowed, how to go on.
pub(super) fn violation_text(report: &FinishReport) -> String {
    let mut t = format!(
        "not finished: the change breaks the policy's write rules, so it cannot be delivered as it is.\n{}\n{}\n\
         Fix the workspace: remove or restore the files named above (for build output, a `.gitignore` entry works \
         where the repository has a `.gitignore`), then call `finish` again. If the change still breaks a rule \
         then, the job is refused under that rule.",
        violation_lines(&report.violations),
        report.allowed.trim(),
    );
    if !report.left_out.is_empty() {
        t.push_str(&format!(
            "\nThese build products are left out of the commit anyway (no need to remove them):\n{}",
            bullet(&report.left_out)
        ));
    }
    t
}

pub(super) fn violation_lines(violations: &[Violation]) -> String {
    violations
        .iter()
        .take(20)
        .map(|v| format!("- rule `{}`: {}", v.rule, v.detail))
        .chain((violations.len() > 20).then(|| format!("- ... and {} more", violations.len() - 20)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn bullet(lines: &[String]) -> String {
    lines
        .iter()
        .take(50)
        .map(|l| format!("- {l}"))
        .chain((lines.len() > 50).then(|| format!("- ... and {} more", lines.len() - 50)))
        .collect::<Vec<_>>()
        .join("\n")
}
