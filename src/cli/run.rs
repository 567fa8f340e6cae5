//! `drafter run`: one ticket in the foreground, with progress lines on stderr.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use drafter::agent::AgentEvent;
use drafter::config::{Config, Purpose};
use drafter::jira::{JiraClient, Notice};
use drafter::policy::Policy;
use drafter::sandbox::Sandbox;
use drafter::worker::{self, Delivered, Event, JobOutcome};

use super::{ledger_for, operator_name, shutdown_signal};

pub async fn run(
    ticket: &str,
    config_path: &std::path::Path,
    approve: bool,
) -> anyhow::Result<ExitCode> {
    // Jira, GitHub and the model's secrets are read now, so a job never finds one missing half-way; the webhook
    // secret is `serve`'s alone.
    let config = Arc::new(Config::load_for(config_path, Purpose::Run)?);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;

    // A crashed earlier run may have left its container behind; nothing else removes it.
    let sandbox = Arc::new(Sandbox::connect(&config.sandbox).await?);
    match sandbox.remove_orphans().await {
        Ok(0) => {}
        Ok(n) => eprintln!("removed {n} container(s) left behind by an earlier run"),
        Err(e) => tracing::warn!(error = %e, "could not look for leftover containers"),
    }

    let policy = Policy::load(&config)?;
    let ledger = ledger_for(&config, &policy).await?;
    let policy = Arc::new(drafter::policy::Current::new(policy));
    // This process is the job's one worker: its own id goes into the run statement.
    let services = worker::Services::new(
        config.clone(),
        sandbox.clone(),
        policy.clone(),
        ledger,
        worker::pool::worker_id(),
    )?;
    let operator = operator_name();
    let mut spec = worker::JobSpec::new(ticket, policy.get(), &operator);
    if approve {
        spec.approved_by = Some(format!("cli:{operator}"));
    }
    let job_id = spec.job_id.clone();
    eprintln!("job {job_id}: ticket {ticket}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            match event {
                Event::Stage { stage, detail } => eprintln!("==> {:<8} {detail}", stage.as_str()),
                Event::Agent(AgentEvent::Turn { turn, max }) => {
                    eprintln!("    model turn {turn}/{max}")
                }
                Event::Agent(AgentEvent::ToolCall(c)) => eprintln!(
                    "      {} {}{}",
                    c.name,
                    c.detail,
                    if c.ok { "" } else { "  [failed]" }
                ),
                _ => {}
            }
        }
    });
    let job = worker::run_job(&services, &spec, tx);
    let outcome = tokio::select! {
        outcome = job => outcome,
        _ = shutdown_signal() => {
            // The job's task is dropped here; remove its container now rather than leave it to the next start-up,
            // and tell the ticket, so the job is visibly failed rather than silently gone.
            eprintln!("interrupted: stopping job {job_id}");
            if let Err(e) = sandbox.remove_job(&job_id).await {
                eprintln!("could not remove the job's container: {e}");
            }
            let notice = Notice::Failed {
                job_id: job_id.clone(),
                reason: "the runner was stopped before the job finished; no pull request was opened".into(),
                proof: None,
            };
            if let Ok(jira) = JiraClient::new(&config.jira) {
                if let Err(e) = jira.notify(ticket, &notice).await {
                    tracing::warn!(error = %worker::scrub(&config, &e.to_string()), "could not report the interruption");
                }
            }
            return Ok(ExitCode::from(130));
        }
    };
    let _ = printer.await;
    let dir = worker::job_dir(&config.data_dir, &job_id);
    let failed = |why: &dyn std::fmt::Display| {
        eprintln!("error: {}", worker::scrub(&config, &why.to_string()));
        eprintln!("job record: {}", dir.join("job.json").display());
    };
    match outcome {
        JobOutcome::Delivered(Delivered::PullRequest {
            url,
            branch,
            repo,
            bundle,
            bundle_digest,
            ..
        }) => {
            println!("draft pull request: {url}");
            println!("repository:         {repo}");
            println!("branch:             {branch}");
            println!("proof bundle:       {}", bundle.display());
            println!("bundle digest:      sha256:{bundle_digest}");
            println!("verify with:        drafter verify {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        JobOutcome::Delivered(Delivered::NoChanges {
            summary,
            bundle,
            bundle_digest,
        }) => {
            println!("no changes were made, so no pull request was opened");
            println!("model summary: {summary}");
            println!(
                "proof bundle:  {} (sha256:{bundle_digest})",
                bundle.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        JobOutcome::Refused(refusal) => {
            failed(&refusal);
            Ok(ExitCode::from(2))
        }
        JobOutcome::AwaitingApproval(ask) => {
            failed(&ask);
            eprintln!("the policy asks for approval: run again with --approve to approve it as the operator, or let `drafter serve` wait for an approver");
            Ok(ExitCode::from(3))
        }
        JobOutcome::Failed(e) => {
            failed(&e);
            Ok(ExitCode::FAILURE)
        }
    }
}
