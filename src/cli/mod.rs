//! The `drafter` command line: the edge where library errors become messages and exit codes (`anyhow` lives
//! here). One file per command family; [`dispatch`] runs the parsed command.

pub mod args;
mod bench;
mod check_config;
mod doctor;
mod jobs;
pub mod logging;
mod policy;
mod proof;
mod run;
mod serve;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use drafter::config::Config;
use drafter::policy::Policy;
use drafter::worker;

use args::{Command, ForCommand};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, `docker stop`).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Who is at the keyboard, for `cli:` triggers and approvals.
fn operator_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| "operator".into())
}

/// The usage ledger team budgets are counted in: the queue database, opened only when a team has team-wide caps.
async fn ledger_for(
    config: &Config,
    policy: &Policy,
) -> anyhow::Result<Option<Arc<dyn worker::meter::Ledger>>> {
    if !policy.teams.iter().any(|t| t.rules.budget.has_team_caps()) {
        return Ok(None);
    }
    let queue = drafter::queue::open(&config.serve.queue)
        .await
        .context("opening the queue database, where team budgets are counted")?;
    Ok(Some(Arc::new(worker::meter::QueueLedger(queue))))
}

/// Runs one parsed command.
pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            ticket,
            config,
            approve,
        } => run::run(&ticket, &config, approve).await,
        Command::Policy { command } => policy::policy_cmd(command).await,
        Command::Verify {
            path,
            keys,
            policy,
            repo,
            digest,
            allow_incomplete,
            allow_signer_change,
        } => {
            let expect = proof::VerifyExpect {
                digest,
                allow_incomplete,
                allow_signer_change,
            };
            proof::verify(&path, &keys, policy.as_deref(), repo.as_deref(), expect)
        }
        Command::Key { command } => proof::key_cmd(command),
        Command::Serve { config } => serve::serve(&config).await,
        Command::Jobs {
            command,
            queue,
            config,
            json,
        } => jobs::jobs(command, queue, &config, json).await,
        Command::Pause {
            reason,
            by,
            cancel_running,
            queue,
        } => jobs::pause(reason, by, cancel_running, queue).await,
        Command::Resume { queue } => jobs::resume(queue).await,
        Command::Bench { part, sandbox } => bench::bench(part, sandbox).await,
        Command::Doctor { config } => doctor::doctor(config.as_deref()).await,
        Command::CheckConfig {
            config,
            for_command,
        } => check_config::check_config(&config, for_command.map(ForCommand::purpose)),
    }
}
