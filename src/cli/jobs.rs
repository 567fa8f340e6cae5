//! The queue and data-directory commands: `jobs list|show|approve|cancel|retry|bundle|purge`, `pause`, `resume`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use drafter::config::{Config, Purpose};
use drafter::proof;
use drafter::queue::{JobFilter, JobState, Pause, Queue};
use drafter::sandbox::Sandbox;
use drafter::worker;

use super::args::{DataDirArgs, JobsCommand, QueueArgs};

/// Opens the queue named by `--queue`, else the configuration's `serve.queue`.
async fn open_queue(
    queue: Option<String>,
    config: &std::path::Path,
) -> anyhow::Result<Arc<dyn Queue>> {
    let location = match queue {
        Some(q) => q,
        None => {
            Config::load_for(config, Purpose::Queue)
                .with_context(|| "finding the queue (or pass --queue)")?
                .serve
                .queue
        }
    };
    Ok(drafter::queue::open(&location).await?)
}

/// `cli:$USER`: who an operator command acts as when `--by` is not given.
fn cli_user() -> String {
    format!(
        "cli:{}",
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "unknown".into())
    )
}

fn show_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn pause_line(p: &Pause) -> String {
    format!(
        "PAUSED since {} by {}: {}",
        show_time(&p.at),
        p.by,
        p.reason
    )
}

pub async fn pause(
    reason: String,
    by: Option<String>,
    cancel_running: bool,
    args: QueueArgs,
) -> anyhow::Result<ExitCode> {
    let queue = open_queue(args.queue, &args.config).await?;
    let pause = Pause {
        by: by.unwrap_or_else(cli_user),
        reason,
        at: chrono::Utc::now(),
    };
    // Pause first: once it has committed no worker claims anything, so the running set below is final.
    queue.set_paused(Some(pause.clone())).await?;
    let cancelled = if cancel_running {
        queue.cancel_running().await?
    } else {
        Vec::new()
    };
    let mut removed = 0;
    if !cancelled.is_empty() {
        // The jobs' workers remove their containers when their next heartbeat finds the lease gone; removing them
        // here as well stops the work at once on this host, even if its worker is stuck.
        match cleanup_sandbox(&args.config).await {
            Ok(sandbox) => {
                for id in &cancelled {
                    match sandbox.remove_job(id).await {
                        Ok(n) => removed += n,
                        Err(e) => eprintln!("could not remove the container of {id}: {e}"),
                    }
                }
            }
            Err(e) => {
                eprintln!("containers not removed on this host ({e:#}); their workers remove them")
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "paused": pause,
                "cancelled": cancelled,
                "containers_removed": removed,
            }))?
        );
    } else {
        println!("{}", pause_line(&pause));
        if cancel_running {
            println!("cancelled {} running job(s)", cancelled.len());
            for id in &cancelled {
                println!("  {id}");
            }
            if !cancelled.is_empty() {
                println!("removed {removed} container(s) on this host");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A Docker connection for removing containers. Only labels matter for removal, so when the configuration cannot
/// be loaded (only --queue was given) placeholder sandbox settings do.
async fn cleanup_sandbox(config: &std::path::Path) -> anyhow::Result<Sandbox> {
    let cfg = match Config::load_for(config, Purpose::Sandbox) {
        Ok(c) => c.sandbox,
        Err(_) => drafter::config::SandboxConfig::default(),
    };
    Ok(Sandbox::connect(&cfg).await?)
}

pub async fn resume(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(args.queue, &args.config).await?;
    let was = queue.paused().await?;
    queue.set_paused(None).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"resumed": was.is_some(), "was": was})
            )?
        );
    } else {
        match was {
            Some(p) => println!("resumed (was {})", pause_line(&p)),
            None => println!("the queue was not paused"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn jobs(
    command: JobsCommand,
    queue: Option<String>,
    config: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // The proof commands read this host's data directory, not the queue.
    match command {
        JobsCommand::Bundle { id, out, data_dir } => {
            let dir = DataDirArgs {
                data_dir,
                config: config.to_path_buf(),
            };
            return jobs_bundle(&id, out.as_deref(), &dir.resolve()?);
        }
        JobsCommand::Purge { dry_run, data_dir } => {
            let dir = DataDirArgs {
                data_dir,
                config: config.to_path_buf(),
            };
            return jobs_purge(&dir.resolve()?, dry_run, json);
        }
        _ => {}
    }
    let queue = open_queue(queue, config).await?;
    match command {
        JobsCommand::Bundle { .. } | JobsCommand::Purge { .. } => Ok(ExitCode::SUCCESS),
        JobsCommand::List {
            state,
            ticket,
            limit,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                    let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                    anyhow::anyhow!("unknown state `{s}`: use one of {}", names.join(", "))
                })?),
            };
            let paused = queue.paused().await?;
            let list = queue
                .list(&JobFilter {
                    state,
                    ticket,
                    limit,
                })
                .await?;
            if json {
                let out = serde_json::json!({"paused": paused, "jobs": list});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                if let Some(p) = &paused {
                    println!("{}", pause_line(p));
                }
                println!(
                    "{:<28} {:<12} {:<17} {:>7}  {:<20} {:<12} LAST ERROR",
                    "JOB", "TICKET", "STATE", "TRIES", "UPDATED", "POLICY"
                );
                for j in list {
                    println!(
                        "{:<28} {:<12} {:<17} {:>3}/{:<3}  {:<20} {:<12} {}",
                        j.id,
                        j.ticket,
                        j.state.as_str(),
                        j.attempts,
                        j.max_attempts,
                        j.updated_at.format("%Y-%m-%d %H:%M:%S"),
                        j.policy_hash
                            .as_deref()
                            .map(|h| h.chars().take(12).collect::<String>())
                            .unwrap_or_else(|| "-".into()),
                        j.last_error
                            .as_deref()
                            .unwrap_or("")
                            .chars()
                            .take(80)
                            .collect::<String>()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id } => match queue.get(&id).await? {
            None => {
                eprintln!("no job {id}");
                Ok(ExitCode::FAILURE)
            }
            Some(j) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&j)?);
                } else {
                    println!("job:        {}", j.id);
                    println!("ticket:     {} (project {})", j.ticket, j.project);
                    println!("state:      {}", j.state.as_str());
                    println!("attempts:   {}/{}", j.attempts, j.max_attempts);
                    println!("not before: {}", j.not_before);
                    if let (Some(owner), Some(until)) = (&j.lease_owner, &j.lease_expires) {
                        println!("lease:      {owner} until {until}");
                    }
                    if let Some(h) = &j.policy_hash {
                        println!("policy:     {h}");
                    }
                    if let Some(a) = &j.approval {
                        println!(
                            "approval:   {} (approvers: {}; requested {}, expires {})",
                            a.reason,
                            if a.approvers.is_empty() {
                                "-".to_string()
                            } else {
                                a.approvers.join(", ")
                            },
                            show_time(&a.requested_at),
                            show_time(&a.expires_at)
                        );
                        if let Some(sub) = &a.subject {
                            println!(
                                "approves:   ticket sha256:{}, {} (base {})",
                                sub.ticket_sha256, sub.repo, sub.base
                            );
                        }
                        match (&a.approved_by, &a.approved_at) {
                            (Some(by), Some(at)) => {
                                let via = a
                                    .comment_id
                                    .as_deref()
                                    .map(|c| format!(" (comment {c})"))
                                    .unwrap_or_default();
                                println!("approved:   by {by} at {}{via}", show_time(at))
                            }
                            (Some(by), None) => println!("approved:   by {by}"),
                            _ => println!("approved:   not yet"),
                        }
                    }
                    println!("created:    {}", j.created_at);
                    println!("updated:    {}", j.updated_at);
                    if let Some(e) = &j.last_error {
                        println!("last error: {e}");
                    }
                    if let Some(o) = &j.outcome {
                        println!("outcome:    {o}");
                    }
                    println!("progress:   {}", j.progress);
                    println!("triggers:");
                    for t in &j.triggers {
                        println!(
                            "  {} {} by {}{}",
                            t.at,
                            t.source,
                            t.triggered_by.as_deref().unwrap_or("?"),
                            t.text
                                .as_deref()
                                .map(|x| format!(": {}", x.chars().take(200).collect::<String>()))
                                .unwrap_or_default()
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        JobsCommand::Approve { id, by } => {
            let by = by.unwrap_or_else(cli_user);
            if queue.approve(&id, &by, None).await? == drafter::queue::Approved::Yes {
                if json {
                    println!("{}", serde_json::to_string_pretty(&queue.get(&id).await?)?);
                } else {
                    println!("approved {id} as {by}: queued to run");
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{id} is not awaiting approval, or its request has expired (see `drafter jobs show {id}`)"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        JobsCommand::Cancel { id } => {
            if queue.cancel(&id).await? {
                println!("cancelled {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{id} is not queued, running or awaiting approval (see `drafter jobs show {id}`)");
                Ok(ExitCode::FAILURE)
            }
        }
        JobsCommand::Retry { id } => {
            if queue.retry(&id).await? {
                println!("queued {id} again");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{id} is not failed or cancelled, or its ticket already has an open job");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn jobs_bundle(
    id: &str,
    out: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    if !drafter::queue::valid_job_id(id) {
        anyhow::bail!("`{id}` is not a job id");
    }
    let path = worker::job_dir(data_dir, id).join(proof::BUNDLE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "no bundle for job {id} in {} (run this on the host that ran the job)",
                data_dir.display()
            )
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    match out {
        Some(o) => std::fs::write(o, &bytes).with_context(|| format!("writing {}", o.display()))?,
        None => {
            use std::io::Write as _;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    eprintln!("sha256:{}  {}", proof::sha256_hex(&bytes), path.display());
    Ok(ExitCode::SUCCESS)
}

fn jobs_purge(data_dir: &std::path::Path, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let purged = proof::retention::purge(data_dir, chrono::Utc::now(), dry_run);
    if json {
        let list: Vec<_> = purged
            .iter()
            .map(|p| serde_json::json!({"dir": p.dir, "files": p.files, "bytes": p.bytes}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"dry_run": dry_run, "purged": list}))?
        );
    } else {
        for p in &purged {
            println!(
                "{} {} ({} files, {} bytes)",
                if dry_run { "would remove" } else { "removed" },
                p.dir.join(proof::BODIES_DIR).display(),
                p.files,
                p.bytes
            );
        }
        if purged.is_empty() {
            println!("nothing to purge");
        }
    }
    Ok(ExitCode::SUCCESS)
}
