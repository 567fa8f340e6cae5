//! `drafter doctor`: what this host's Docker engine offers a runner, checked the way a job would use it.

use super::{find_executor, Sandbox, EXECUTOR_BIN};
use crate::config::{SandboxConfig, Transport};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Worth knowing, not a problem (an optional runtime that is not installed).
    Note,
    /// A job would fail.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
}

fn check(what: &'static str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        what,
        status,
        detail: detail.into(),
    }
}

/// The OCI runtimes the engine offers, and its default (from `GET /info`).
pub async fn runtimes(sandbox: &Sandbox) -> Result<(Vec<String>, String), super::SandboxError> {
    let info = sandbox
        .docker()
        .info()
        .await
        .map_err(super::docker_err("info"))?;
    let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
    names.sort();
    Ok((names, info.default_runtime.unwrap_or_default()))
}

/// Runs every check; never fails itself (an unreachable engine is a failed check).
pub async fn doctor(cfg: &SandboxConfig) -> Vec<Check> {
    let mut out = Vec::new();
    let sandbox = match Sandbox::connect(cfg).await {
        Ok(s) => s,
        Err(e) => {
            out.push(check("docker", CheckStatus::Fail, e.to_string()));
            return out;
        }
    };
    match sandbox.docker().version().await {
        Ok(v) => out.push(check(
            "docker",
            CheckStatus::Ok,
            format!(
                "engine {} (API {}), {} {}",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default(),
                v.os.unwrap_or_default(),
                v.arch.unwrap_or_default()
            ),
        )),
        Err(e) => out.push(check("docker", CheckStatus::Fail, e.to_string())),
    }
    match runtimes(&sandbox).await {
        Ok((names, default)) => {
            out.push(check(
                "runtimes",
                CheckStatus::Ok,
                format!("{} (default {default})", names.join(", ")),
            ));
            let wanted = cfg.runtime.clone().unwrap_or_else(|| default.clone());
            if names.contains(&wanted) {
                out.push(check(
                    "runtime",
                    CheckStatus::Ok,
                    format!("jobs run under `{wanted}`"),
                ));
            } else {
                out.push(check(
                    "runtime",
                    CheckStatus::Fail,
                    format!("sandbox.runtime = `{wanted}` is not offered by this engine"),
                ));
            }
            if let Some(g) = names.iter().find(|n| n.starts_with("runsc")) {
                out.push(check(
                    "gvisor",
                    CheckStatus::Ok,
                    format!("offered as `{g}` (sandbox.runtime = \"{g}\")"),
                ));
            } else {
                out.push(check(
                    "gvisor",
                    CheckStatus::Note,
                    "runsc is not installed: install gVisor and register it in /etc/docker/daemon.json to use \
                     sandbox.runtime = \"runsc\"",
                ));
            }
        }
        Err(e) => out.push(check("runtimes", CheckStatus::Fail, e.to_string())),
    }
    match sandbox.ensure_image().await {
        Ok(id) => out.push(check(
            "image",
            CheckStatus::Ok,
            format!("{} {id}", cfg.image),
        )),
        Err(e) => out.push(check("image", CheckStatus::Fail, e.to_string())),
    }
    match (cfg.transport, find_executor(cfg)) {
        (Transport::Sandboxd, Ok(p)) => out.push(check(
            "executor",
            CheckStatus::Ok,
            format!("{} (transport sandboxd)", p.display()),
        )),
        (Transport::Sandboxd, Err(e)) => out.push(check("executor", CheckStatus::Fail, e.to_string())),
        (Transport::DockerExec, _) => out.push(check(
            "executor",
            CheckStatus::Note,
            format!("transport docker-exec: {EXECUTOR_BIN} not used (slower; exec'd processes escape the pids limit under runc)"),
        )),
    }
    out
}
