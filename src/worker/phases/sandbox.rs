//! Sandbox: the job's narrowed view of the engine, its image checked, and its container started (warm from the
//! pool, or cold; an allowlist job's network and proxy first).

use crate::config::SandboxConfig;
use crate::sandbox::{Container, Sandbox, SandboxError};
use crate::sandboxd::egress::EgressRules;

use super::super::error::JobError;
use super::super::job::Job;

/// The engine with the job's limits, after checking its image (whose digest the run statement records).
pub(crate) async fn prepare(
    job: &mut Job<'_>,
    engine: &Sandbox,
    cfg: &SandboxConfig,
) -> Result<Sandbox, JobError> {
    let sandbox = engine.with_config(cfg);
    let image_digest = sandbox.ensure_image().await?;
    job.progress.image = Some((cfg.image.clone(), image_digest));
    Ok(sandbox)
}

/// Starts the job's container.
pub(crate) async fn start(
    sandbox: &Sandbox,
    job_id: &str,
    ticket: &str,
    egress: Option<&EgressRules>,
) -> Result<Container, SandboxError> {
    sandbox.start_with_network(job_id, ticket, egress).await
}
