//! Agent: the workspace into the container, the model loop (every exchange and tool call into the job's bundle),
//! the workspace back out. The container is removed on every path out of here: beside delivery on the normal
//! path (`Job::remove_later`), by its guard on panics and cancellation.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::agent::{self, AgentError, AgentEvent, AgentOutcome, Permissions, Task};
use crate::config::{AgentLimits, RepoConfig};
use crate::jira::Ticket;
use crate::policy::{Grant, Network};
use crate::proof::bundle::NetworkRecord;
use crate::proof::BundleWriter;
use crate::sandbox::Container;

use super::super::error::JobError;
use super::super::events::{Event, Stage};
use super::super::job::Job;
use super::super::meter::Meter;
use super::super::services::Services;
use super::fetch::ticket_canonical;
use super::finish::{LeaveOut, WorkspaceCheck};

/// What the policy granted the agent stage.
pub(crate) struct AgentRun<'a> {
    pub(crate) grant: &'a Grant,
    /// The requests the policy let through, as `who: text`.
    pub(crate) requests: &'a [String],
    /// A follow-up iteration's diff and review comments.
    pub(crate) review: Option<&'a agent::ReviewContext>,
    pub(crate) limits: &'a AgentLimits,
    pub(crate) command_timeout: Duration,
    pub(crate) meter: &'a Meter,
}

/// Runs the model loop in `container` on the clone at `ws`; returns the outcome and the chain head.
pub(crate) async fn run(
    s: &Services,
    job: &mut Job<'_>,
    ticket: &Ticket,
    repo_cfg: &RepoConfig,
    container: Container,
    ws: &Path,
    run: &AgentRun<'_>,
) -> Result<(AgentOutcome, String), JobError> {
    let (config, spec) = (&s.config, job.spec);
    job.stage(Stage::Sandbox, config.sandbox.image.as_str())
        .await?;
    let agent_result = async {
        container.upload_dir(ws).await?;
        job.stage(
            Stage::Agent,
            format!("{} {}", config.model.provider.as_str(), config.model.model),
        )
        .await?;
        // A retried job on the same host continues its bundle; elsewhere it starts one in its own job directory.
        let bundle = BundleWriter::open(
            &job.dir,
            job.key.clone(),
            &spec.job_id,
            &spec.ticket,
            &spec.policy.hash,
        )?
        .with_retention(run.grant.rules.retention)
        .with_price(spec.policy.prices.get(&config.model.model).copied());
        // With full retention the ticket as the model got it is kept too (its digest is in the run statement).
        bundle.ticket_body(&ticket_canonical(ticket))?;
        let mut model = s.models.client(bundle)?;
        let finish_check = WorkspaceCheck {
            container: &container,
            ws,
            base: repo_cfg.base.clone(),
            write: run.grant.rules.write.clone(),
            exclusions: LeaveOut::new(&run.grant.rules.write, &BTreeSet::new())
                .map_err(|e| *e)?
                .exclusions,
        };
        let task = Task {
            ticket,
            repo: repo_cfg,
            limits: run.limits,
            command_timeout: run.command_timeout,
            requests: run.requests,
            permissions: Permissions {
                policy_hash: &spec.policy.hash,
                tools: &run.grant.rules.tools,
                write: &run.grant.rules.write,
                gate: Some(run.meter),
                finish_check: Some(&finish_check),
            },
            review: run.review,
        };
        let mut calls = Vec::new();
        let ev = job.channel();
        let mut on_event = |e: AgentEvent| {
            if let AgentEvent::ToolCall(c) = &e {
                calls.push(c.clone());
            }
            let _ = ev.send(Event::Agent(e));
        };
        let outcome = agent::run(&task, &mut model, &container, &mut on_event).await;
        let digest = model.bundle().head().to_string();
        Ok::<_, JobError>((outcome, digest, calls, model.into_bundle()))
    }
    .await;
    let result = match agent_result {
        Ok((outcome, digest, calls, bundle)) => {
            job.progress.tool_calls = calls;
            // The run statement continues this writer rather than reopening (and re-verifying) the file.
            job.progress.bundle = Some(bundle);
            match outcome {
                // Bring the model's work back before the container goes.
                Ok(o) => container
                    .download_workspace(ws)
                    .await
                    .map(|_| (o, digest))
                    .map_err(JobError::from),
                // Told at `finish`, and finished again (or ran out of turns) without fixing it.
                Err(AgentError::Unfixed(violations)) => Err(job.refuse_violations(
                    &ticket.key,
                    &violations,
                    "the change was not pushed (the model was told when it called finish, and did not fix it)",
                )),
                Err(e) => Err(JobError::from(e)),
            }
        }
        Err(e) => Err(e),
    };
    if let Network::Allowlist(name) = &run.grant.rules.network {
        let (connections, dropped) = container.egress_records();
        job.progress.network = Some(NetworkRecord {
            mode: format!("allowlist:{name}"),
            connections,
            dropped,
        });
    }
    // The workspace is out (or the run failed): the container goes while the job delivers.
    job.remove_later(container);
    let (outcome, digest) = result?;
    job.progress.agent = Some(outcome.clone());
    Ok((outcome, digest))
}

/// The outcome of an agent run an earlier attempt already delivered (its pushed branch is reused).
pub(crate) fn reused_outcome(summary: String) -> AgentOutcome {
    AgentOutcome {
        summary,
        turns: 0,
        tool_calls: Vec::new(),
        tokens: 0,
        written: BTreeSet::new(),
        finish_refusals: 0,
    }
}
