//! `drafter serve`: the library's `service` with the process's signals, its `drafter serve: ...` lines and its
//! exit code.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use drafter::config::{Config, Purpose};
use drafter::service::{Event, Service};

use super::shutdown_signal;

pub async fn serve(config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    // Everything, and the webhook secret when webhooks are on (its key is set): a worker that would refuse every
    // delivery must not look healthy.
    let config = Config::load_for(config_path, Purpose::Serve)?;
    let service = Service::start(config, Arc::new(print)).await?;
    // Bound only now, after the queue, the policy and Docker: a port that answers is a worker that can take jobs.
    let listen = service.config().serve.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let stats = service.run(listener, shutdown_signal()).await?;
    eprintln!(
        "drafter serve: stopped ({} succeeded, {} retried, {} failed, {} released, {} lost; at most {} at once)",
        stats.succeeded, stats.retried, stats.failed, stats.released, stats.lost, stats.max_concurrent
    );
    Ok(ExitCode::SUCCESS)
}

/// The operator's lines on stderr (the logs say the rest).
fn print(event: &Event) {
    match event {
        Event::BotIdentityWarning(w) => eprintln!("drafter serve: warning: {w}"),
        Event::QueueNotReady { error, retry_in } => eprintln!(
            "drafter serve: queue not ready ({error}); retrying in {}s",
            retry_in.as_secs()
        ),
        Event::Policy {
            hash,
            source,
            signed_by,
        } => eprintln!(
            "drafter serve: policy {hash} ({source}{})",
            signed_by
                .as_deref()
                .map(|k| format!(", signed by {k}"))
                .unwrap_or_default()
        ),
        Event::Listening {
            addr,
            webhook_secret,
            queue,
            concurrency,
        } => eprintln!(
            "drafter serve: listening on http://{addr} ({}), queue {queue}, {concurrency} job(s) at once",
            match webhook_secret {
                Some(r) => format!(
                    "webhooks on: secret from `{}`{}",
                    r.key(),
                    r.line().map(|l| format!(", line {l}")).unwrap_or_default()
                ),
                None => "webhooks off: no serve.webhook_secret_env or _file".to_string(),
            }
        ),
        Event::PolicyReloaded { old, new } => {
            eprintln!("drafter serve: policy reloaded: {old} -> {new}")
        }
        Event::PolicyReloadRefused { error, keeping } => {
            eprintln!("drafter serve: policy reload refused ({error}); keeping {keeping}")
        }
        Event::Stopping => eprintln!("drafter serve: stopping (draining running jobs)"),
    }
}
