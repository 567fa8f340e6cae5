//! The check at `finish` ([`WorkspaceCheck`], the agent's [`FinishCheck`]) and which untracked files are build
//! products ([`LeaveOut`]): the commit uses the same rule, so the check sees exactly what the commit will hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::agent::{AgentError, FinishCheck, FinishReport};
use crate::policy::write;
use crate::repo::{self, RepoError};
use crate::sandbox::Container;

use super::super::error::{refused, JobError};

/// Which untracked files are build products left out of the commit (and of the check at `finish`): those matching
/// the policy's exclusions, unless the agent's write or edit tools wrote them. Counts what it left out per listed
/// entry (a directory such as `__pycache__/`, or a file).
pub(crate) struct LeaveOut {
    pub(crate) exclusions: write::Exclusions,
    written: BTreeSet<String>,
    pub(crate) listed: BTreeMap<String, usize>,
}

impl LeaveOut {
    /// A policy whose exclusions do not compile (checked when it is parsed, so only a hand-made grant) is refused.
    pub(crate) fn new(
        write: &write::WriteRules,
        written: &BTreeSet<String>,
    ) -> Result<LeaveOut, Box<JobError>> {
        let exclusions = write.exclusions().map_err(|e| {
            Box::new(refused(
                "write.exclude",
                format!("`{}` is not a valid glob: {}", e.glob, e.reason),
            ))
        })?;
        Ok(LeaveOut {
            exclusions,
            written: written.clone(),
            listed: BTreeMap::new(),
        })
    }

    /// `true` to leave the untracked `path` out.
    pub(crate) fn decide(&mut self, path: &str, tracked: &repo::Tracked) -> bool {
        if self.written.contains(path) {
            return false;
        }
        match self.exclusions.matches(path, &|d| tracked.has_dir(d)) {
            Some(entry) => {
                *self.listed.entry(entry).or_default() += 1;
                true
            }
            None => false,
        }
    }

    /// One line per listed entry, safe inside Markdown code spans: "`__pycache__/` (2 files)", "`.coverage`".
    pub(crate) fn lines(&self) -> Vec<String> {
        self.listed
            .iter()
            .map(|(entry, n)| {
                let shown: String = entry
                    .chars()
                    .map(|c| if c == '`' || c.is_control() { '?' } else { c })
                    .collect();
                if entry.ends_with('/') {
                    let files = if *n == 1 { "file" } else { "files" };
                    format!("`{shown}` ({n} {files})")
                } else {
                    format!("`{shown}`")
                }
            })
            .collect()
    }
}

/// The write rules on the workspace as the model leaves it at `finish`: the workspace comes out of the container
/// into the job's clone (as it does after the loop), is staged there without touching the index file, and the
/// staged tree is checked against the base like the commit will be.
pub(crate) struct WorkspaceCheck<'a> {
    pub(crate) container: &'a Container,
    pub(crate) ws: &'a Path,
    pub(crate) base: String,
    pub(crate) write: write::WriteRules,
    pub(crate) exclusions: write::Exclusions,
}

#[async_trait::async_trait]
impl FinishCheck for WorkspaceCheck<'_> {
    async fn check(&self, written: &BTreeSet<String>) -> Result<FinishReport, AgentError> {
        self.container
            .download_workspace(self.ws)
            .await
            .map_err(AgentError::Sandbox)?;
        let (ws, base, write) = (self.ws.to_path_buf(), self.base.clone(), self.write.clone());
        let mut leave = LeaveOut {
            exclusions: self.exclusions.clone(),
            written: written.clone(),
            listed: BTreeMap::new(),
        };
        let checked = tokio::task::spawn_blocking(move || -> Result<_, RepoError> {
            let r = repo::open(&ws)?;
            let staged = repo::stage_all(&r, &mut |p, t| leave.decide(p, t), false)?;
            let base = repo::remote_base(&r, &base)?;
            let summary = repo::diff::summarize(&r, base, staged.tree)
                .map_err(|e| repo::git_error("diffing the workspace", e))?;
            Ok((write::check(&summary, &write), leave.lines()))
        })
        .await;
        let (violations, left_out) = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(AgentError::Workspace(e.to_string())),
            Err(e) => return Err(AgentError::Workspace(format!("git task: {e}"))),
        };
        Ok(FinishReport {
            violations,
            allowed: self.write.describe(),
            left_out,
        })
    }
}
