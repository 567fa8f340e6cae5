//! One job's lifecycle: ticket in, draft pull request (or a clear refusal) out.
//!
//! A job is a straight line of phases ([`phases`]: fetch the ticket, decide under the policy, check the forge's
//! merge rules, clone and start the sandbox, run the agent, bring the workspace back, commit and push, open the
//! draft PR) over the process's shared [`Services`], then the run statement (seal) and the report. It tells
//! listeners what happens through [`Event`]s: the ticket's comments, `job.json` and (under `drafter serve`) the
//! queue's progress marker are in-process listeners, awaited in order; the CLI's progress output reads a channel.
//! Every phase that can fail stops with a [`JobError`] that says whether trying again could help; the attempt ends
//! in one [`JobOutcome`] (delivered, awaiting approval, refused or failed), and every final failure is reported on
//! the ticket with a reason that has been scrubbed of secrets.
//!
//! The job directory (`<data_dir>/jobs/<job_id>/`) holds `bundle.jsonl` (the signed proof bundle: one statement per
//! model call and tool call, and a run statement at the end of every attempt, see [`crate::proof`]), `bodies/` when
//! the policy retains them, and `job.json` (what happened, for people and the CLI).

use std::path::{Path, PathBuf};

use crate::config::Config;

mod error;
mod events;
pub mod explain;
mod fence;
mod job;
pub mod meter;
mod outcome;
mod phases;
pub mod pool;
mod record;
mod run;
mod services;
mod slots;
mod text;

pub use error::JobError;
pub use events::{Event, Stage};
pub use fence::Fence;
pub use job::{Ask, Attempt, JobSpec, ReviewAsk, ReviewIteration, MAX_REQUESTS, MAX_REQUEST_BYTES};
pub use outcome::{AwaitingApproval, Delivered, JobOutcome, Refusal};
pub use run::run_job;
pub use services::{ModelFactory, Services, ServicesError};
pub use slots::{RepoSlot, RepoSlots};
pub use text::{pr_body, proof_footer};

/// Where a job keeps its proof record.
pub fn job_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("jobs").join(job_id)
}

/// Replaces every configured secret value in `text` with `[redacted]`. Errors should never carry secrets; this is
/// the second line of defence before anything leaves the process (a ticket comment, a log line, `job.json`).
pub fn scrub(config: &Config, text: &str) -> String {
    // Only what this command read: a secret never read cannot be in any text. The Jira one is a token or a
    // password, whichever [jira] configures.
    let secrets: Vec<&str> = [
        Some(&config.github.token),
        Some(config.jira.auth.secret()),
        config.model.api_key.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|c| c.value().ok())
    .map(|s| s.expose())
    .collect();
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn scrub_removes_every_configured_secret() {
        let c = config();
        let s = scrub(&c, "auth failed for ghp_secret_456 and jira-secret-123");
        assert_eq!(s, "auth failed for [redacted] and [redacted]");
    }

    #[test]
    fn scrub_removes_a_data_center_password() {
        let text = r#"
[jira]
base_url = "https://jira.example.com"
flavor = "datacenter"
bot_username = "drafter-bot"
username = "drafter-bot"
password_env = "P"
[github]
token_env = "G"
[model]
provider = "openai"
base_url = "http://m.example"
model = "m"
[projects.DEMO]
repos = [{ name = "acme/web" }]
"#;
        let env = |n: &str| match n {
            "P" => Some("hunter2-password".to_string()),
            "G" => Some("ghp_secret_456".to_string()),
            _ => None,
        };
        let run = crate::config::Purpose::Run;
        let c = Config::from_toml_for(text, Path::new("t.toml"), &env, run).unwrap();
        let s = scrub(&c, "401 for drafter-bot:hunter2-password");
        assert_eq!(s, "401 for drafter-bot:[redacted]");
    }

    #[test]
    fn job_ids_are_unique_and_safe() {
        let a = crate::queue::new_job_id();
        let b = crate::queue::new_job_id();
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
