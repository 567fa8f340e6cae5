//! `drafter doctor`: the sandbox on this host.

use std::process::ExitCode;

use drafter::config::{Config, Purpose};

/// The `[sandbox]` settings of `config`, or the defaults without one (also for `drafter bench`).
pub(super) fn sandbox_config(
    config: Option<&std::path::Path>,
) -> anyhow::Result<drafter::config::SandboxConfig> {
    Ok(match config {
        Some(path) => Config::load_for(path, Purpose::Sandbox)?.sandbox,
        None => drafter::config::SandboxConfig::default(),
    })
}

pub async fn doctor(config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let cfg = sandbox_config(config)?;
    let checks = drafter::sandbox::doctor(&cfg).await;
    let mut ok = true;
    for c in &checks {
        let mark = match c.status {
            drafter::sandbox::CheckStatus::Ok => "ok  ",
            drafter::sandbox::CheckStatus::Note => "note",
            drafter::sandbox::CheckStatus::Fail => {
                ok = false;
                "FAIL"
            }
        };
        println!(
            "{mark}  {:<16} {}",
            c.what,
            drafter::config::redact_url(&c.detail)
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
