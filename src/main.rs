//! The `drafter` command line: the edge where library errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drafter::agent::AgentEvent;
use drafter::config::Config;
use drafter::jira::{JiraClient, Notice};
use drafter::proof;
use drafter::sandbox::Sandbox;
use drafter::worker::{self, Event, JobError, JobOutcome};

/// drafter: turn a Jira ticket into a draft pull request, with the model's work done in a locked-down container
/// and every model call recorded as a signed receipt.
#[derive(Parser)]
#[command(name = "drafter", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text (logs go to stderr; set the level with RUST_LOG, e.g. RUST_LOG=drafter=debug).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one ticket in the foreground: fetch it, clone the allowlisted repository, run the model loop in the
    /// sandbox, push a branch and open a draft pull request. Exits 0 when a PR was opened or nothing needed
    /// changing, 2 when the ticket was refused (allowlist, merge rights), 1 on any other failure.
    Run {
        /// The Jira issue key, e.g. PROJ-123.
        #[arg(long)]
        ticket: String,
        /// The runner configuration file (see examples/drafter.toml).
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
    },
    /// Check a job's receipt chain: every line canonical, chained to the one before, and signed by one runner key.
    /// Takes a job directory (`<data_dir>/jobs/<id>`) or a receipts.jsonl file. Exits 1 and says what is wrong
    /// (line and check) when anything does not hold.
    Verify {
        /// A job directory or a receipts.jsonl file.
        path: PathBuf,
        /// Require this signer: a hex Ed25519 public key, or a file holding one (e.g. `<data_dir>/runner.pub`).
        /// Without it the chain is checked against the key it names, which proves integrity but not origin.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Load and validate a configuration file, printing what it resolves to (secrets shown as [redacted]).
    CheckConfig {
        /// The runner configuration file.
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    set_git_timeouts();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { ticket, config } => run(&ticket, &config).await,
            Command::Verify { path, public_key } => verify(&path, public_key.as_deref()),
            Command::CheckConfig { config } => {
                let c = Config::load(&config)?;
                println!("{c:#?}");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// libgit2 waits forever on a silent server by default, which would pin a job (and its blocking thread) for good.
fn set_git_timeouts() {
    // SAFETY: these set process-global libgit2 options; they are called once, before any thread uses libgit2.
    let result = unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(30_000)
            .and_then(|_| git2::opts::set_server_timeout_in_milliseconds(300_000))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not set git network timeouts");
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(ticket: &str, config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;

    // A crashed earlier run may have left its container behind; nothing else removes it.
    let sandbox = Sandbox::connect(&config.sandbox).await?;
    match sandbox.remove_orphans().await {
        Ok(0) => {}
        Ok(n) => eprintln!("removed {n} container(s) left behind by an earlier run"),
        Err(e) => tracing::warn!(error = %e, "could not look for leftover containers"),
    }

    let job_id = drafter::queue::new_job_id();
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
                Event::Done(_) => {}
            }
        }
    });
    let job = worker::run_job(config.clone(), ticket, &job_id, tx);
    let result = tokio::select! {
        result = job => result,
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
            };
            if let Ok(jira) = JiraClient::new(&config.jira) {
                if let Err(e) = jira.comment(ticket, notice.to_adf()).await {
                    tracing::warn!(error = %worker::scrub(&config, &e.to_string()), "could not report the interruption");
                }
            }
            return Ok(ExitCode::from(130));
        }
    };
    let _ = printer.await;
    let dir = worker::job_dir(&config.data_dir, &job_id);
    match result {
        Ok(JobOutcome::PullRequest {
            url,
            branch,
            repo,
            receipts,
            receipts_digest,
            ..
        }) => {
            println!("draft pull request: {url}");
            println!("repository:         {repo}");
            println!("branch:             {branch}");
            println!("receipts:           {}", receipts.display());
            println!("receipts digest:    sha256:{receipts_digest}");
            println!("verify with:        drafter verify {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(JobOutcome::NoChanges { summary, receipts }) => {
            println!("no changes were made, so no pull request was opened");
            println!("model summary: {summary}");
            println!("receipts:      {}", receipts.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let msg = worker::scrub(&config, &e.to_string());
            eprintln!("error: {msg}");
            eprintln!("job record: {}", dir.join("job.json").display());
            Ok(match e {
                JobError::Refused(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            })
        }
    }
}

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

fn verify(path: &std::path::Path, public_key: Option<&str>) -> anyhow::Result<ExitCode> {
    let pinned = match public_key {
        None => None,
        Some(k) => {
            // Either the hex key itself or a file holding it (such as `<data_dir>/runner.pub`).
            let text = if std::path::Path::new(k).is_file() {
                std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?
            } else {
                k.to_string()
            };
            Some(
                proof::parse_public_key(text.trim())
                    .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?,
            )
        }
    };
    match proof::verify(path, pinned.as_ref()) {
        Ok(report) => {
            println!(
                "ok: {} receipt(s) for job {} (ticket {}), chain intact, all signatures valid",
                report.count, report.job_id, report.ticket
            );
            println!(
                "signer: {}{}",
                report.signer,
                if pinned.is_some() {
                    " (pinned)"
                } else {
                    " (not pinned: pass --public-key to check origin)"
                }
            );
            println!("head:   sha256:{}", report.head);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("verification failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
