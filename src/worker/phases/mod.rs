//! The phases of one attempt, in order: fetch, decide, check, sandbox and clone (side by side), agent, deliver,
//! pull request; then, from [`super::run_job`], seal and report. Each phase takes the job's state and only the
//! services it needs.

use std::time::Duration;

use crate::forge::{JobForge, TokenGrant};
use crate::proof::bundle::CredentialRecord;
use crate::repo::{self, RepoError};
use crate::sandbox::SandboxError;

use super::error::JobError;
use super::events::Event;
use super::job::Job;
use super::outcome::Delivered;
use super::services::Services;

pub(crate) mod agent;
pub(crate) mod check;
pub(crate) mod clone;
pub(crate) mod decide;
pub(crate) mod deliver;
pub(crate) mod fetch;
pub(crate) mod finish;
pub(crate) mod panel;
pub(crate) mod pull_request;
pub(crate) mod report;
pub(crate) mod review;
pub(crate) mod sandbox;
pub(crate) mod seal;

/// Fetch to pull request. Whatever it learns stays in `job.progress` for the run statement, also when it fails.
/// The job's forge credential goes into `forge` as soon as it exists, so that the caller revokes it at the end
/// whatever happened.
pub(crate) async fn pipeline(
    s: &Services,
    job: &mut Job<'_>,
    forge_slot: &mut Option<JobForge>,
) -> Result<Delivered, JobError> {
    let (config, spec) = (&s.config, job.spec);
    let ticket = fetch::fetch(job, &s.jira).await?;

    // The policy first (nothing is cloned for a refused ticket), then the budget and the forge's merge rules.
    let grant = decide::decide(job, &ticket, &s.jira).await?;
    let requests = decide::admit_requests(spec, &ticket, &s.jira, &mut job.progress).await;
    let repo_cfg = grant.repo.clone();
    job.progress.repo = Some(repo_cfg.name.clone());
    job.progress.base = Some(repo_cfg.base.clone());
    job.progress.fork = repo_cfg.fork.clone();
    // A team already over its budget is told before anything is cloned.
    let meter = decide::budget(job, config, &ticket, &grant, s.ledger.clone()).await?;
    let (limits, sandbox_cfg) = decide::effective_limits(config, &grant);
    // The repository cap: wait for a slot before cloning (the slot is held until the job ends).
    let _slot = check::repo_slot(&s.slots, &grant).await;
    // The job's own credential (a GitHub App mints a token for this repository alone).
    let forge = forge_slot.insert(s.forge.for_job(&repo_cfg.name).await?);
    job.progress.credential = Some(credential_record(forge.grant().await));
    let github = forge.client().await?;
    check::merge_rights(job, &github, &repo_cfg).await?;

    let sandbox = sandbox::prepare(job, &s.sandbox, &sandbox_cfg).await?;
    job.emit(Event::Started {
        repo: repo_cfg.name.clone(),
    })
    .await?;

    let (_scratch, ws) =
        clone::scratch().map_err(super::error::io("creating the workspace directory"))?;
    let url = config.github.clone_url(&repo_cfg.name);
    // Where the job's branch lives: the repository, or in fork mode the fork (the clone is still of upstream).
    let push_url = config.github.clone_url(repo_cfg.push_repo());
    job.stage(
        super::Stage::Clone,
        format!("{} ({})", repo_cfg.name, repo_cfg.base),
    )
    .await?;
    // The sandbox starts while the repository clones: the two are independent, and each is a good part of a job's
    // start-up. If the clone fails, or an earlier attempt already pushed (no agent run), the container goes again.
    let egress = decide::egress_rules(config, spec, &grant);
    let cloning = clone::clone(
        clone::Source {
            url: url.clone(),
            fork_url: (push_url != url).then(|| push_url.clone()),
            base: repo_cfg.base.clone(),
        },
        ws.clone(),
        github.token().clone(),
        repo::branch_name(&ticket.key, &ticket.summary),
        job.id().to_string(),
        clone::mirrors(&config.repo),
    );
    let (cloned, started) = tokio::join!(
        cloning,
        sandbox::start(&sandbox, job.id(), &ticket.key, egress.as_ref())
    );
    let (git_repo, branch, reused) = match cloned {
        Ok(c) => c,
        Err(e) => {
            if let Ok(container) = started {
                let _ = container.remove().await;
            }
            return Err(e);
        }
    };
    // A follow-up iteration works on top of the job's own pushed branch; only if an earlier attempt of this same
    // iteration already pushed (the tip carries its `Drafter-Iteration` trailer) is that push delivered as is.
    let iteration = spec.review.as_ref();
    let pushed_before = match iteration {
        Some(it) if reused => tip_iteration(&git_repo, &branch)? == Some(it.iteration),
        _ => reused,
    };
    let container = match (pushed_before, started) {
        (false, started) => Some(started?),
        (true, Ok(container)) => {
            let _ = container.remove().await;
            None
        }
        (true, Err(_)) => None,
    };
    job.progress.branch = Some(branch.clone());

    let (outcome, digest, changed, left_out) = if pushed_before {
        deliver::reuse(job, &ticket, &grant, git_repo, &branch).await?
    } else {
        let review = match iteration {
            Some(it) => Some(review::context(it, &git_repo, &repo_cfg.base, &branch)?),
            None => None,
        };
        let run = agent::AgentRun {
            grant: &grant,
            requests: &requests,
            review: review.as_ref(),
            limits: &limits,
            command_timeout: Duration::from_secs(sandbox_cfg.command_timeout_secs),
            meter: &meter,
        };
        let container = container.ok_or_else(|| {
            JobError::Sandbox(SandboxError::Exec(
                "the sandbox container was not started".into(),
            ))
        })?;
        let ran = agent::run(s, job, &ticket, &repo_cfg, container, &ws, &run).await;
        // The last calls' usage is in the ledger before the job delivers (or fails).
        meter.settle().await;
        let (outcome, digest) = ran?;
        // A long agent run may have outlived the token: a fresh one (re-minted if close to expiry) for the push.
        let github = forge.client().await?;
        job.progress.credential = Some(credential_record(forge.grant().await));
        let pushed = deliver::commit_and_push(
            config, &github, job, &ticket, &grant, git_repo, &branch, &push_url, &outcome, &digest,
        )
        .await?;
        let pushed = match (pushed, iteration) {
            // An iteration that changed nothing still answers the reviewers on the pull request it has.
            (None, Some(_)) => Some((Vec::new(), Vec::new())),
            (pushed, _) => pushed,
        };
        let Some((changed, left_out)) = pushed else {
            // The ticket hears about it once the run statement is written.
            return Ok(Delivered::NoChanges {
                summary: outcome.summary,
                bundle: job.dir.join(crate::proof::BUNDLE_FILE),
                bundle_digest: String::new(),
            });
        };
        (outcome, digest, changed, left_out)
    };

    let github = forge.client().await?;
    job.progress.credential = Some(credential_record(forge.grant().await));
    pull_request::open(
        config,
        &github,
        job,
        &ticket,
        &repo_cfg,
        branch,
        // An iteration keeps the pull request's description; only its proof footer is refreshed.
        reused || iteration.is_some(),
        (&outcome, &digest, &changed, &left_out),
    )
    .await
}

/// The follow-up iteration the remote branch's tip commit was made for (its `Drafter-Iteration` trailer).
fn tip_iteration(r: &git2::Repository, branch: &str) -> Result<Option<u32>, RepoError> {
    Ok(repo::remote_branch(r, branch)?.and_then(|b| {
        b.message
            .lines()
            .find_map(|l| l.strip_prefix("Drafter-Iteration:"))
            .and_then(|n| n.trim().parse().ok())
    }))
}

/// The run statement's view of a credential: kind, scope and expiry, never the token.
pub(crate) fn credential_record(g: TokenGrant) -> CredentialRecord {
    CredentialRecord {
        kind: g.kind.to_string(),
        installation_id: g.installation_id,
        repository: g.repository,
        repository_id: g.repository_id,
        permissions: g.permissions,
        expires_at: g.expires_at.map(crate::proof::bundle::time),
    }
}

/// Runs git work (libgit2 blocks) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, JobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(JobError::from),
        Err(e) => Err(JobError::Io {
            context: "git task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}
