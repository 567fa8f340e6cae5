//! The `drafter` command line: the edge where library errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drafter::agent::AgentEvent;
use drafter::config::{Config, Purpose};
use drafter::jira::{self, JiraClient, Notice};
use drafter::policy::{self, Policy};
use drafter::proof;
use drafter::queue::{JobFilter, JobState, Pause, Queue};
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
    /// Run one ticket in the foreground, from the ticket to a draft pull request
    ///
    /// Fetches the ticket, clones the allowlisted repository, runs the model loop in the sandbox, pushes a branch
    /// and opens a draft pull request. Reads the Jira, GitHub and model secrets at start-up (not the webhook
    /// secret). Exits 0 when a PR was opened or nothing needed changing, 2 when the ticket was refused (allowlist,
    /// merge rights), 3 when the policy asks for approval, 1 on any other failure.
    Run {
        /// The Jira issue key, e.g. PROJ-123.
        #[arg(long)]
        ticket: String,
        /// The runner configuration file (see examples/drafter.toml).
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
        /// Approve the job as the operator when the policy asks for approval (recorded as `cli:$USER`). Without
        /// it, a ticket that needs approval exits 3 before anything runs.
        #[arg(long)]
        approve: bool,
    },
    /// Check, hash, sign and verify policy files; explain what a job may do
    ///
    /// Work with policy files: check, hash, sign, verify, and explain what a job for a ticket would be allowed to do.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check a job's proof bundle offline
    ///
    /// Checks every DSSE signature, the chain order, the job, and (when given) the signer keys, the policy file and
    /// the repository's commit and diff. Prints a summary (ticket, trigger,
    /// policy, model and tool calls, tokens, cost, outcome). Takes a bundle file or a job directory. Exits 1 and
    /// says exactly what is wrong (line and check) when anything does not hold.
    Verify {
        /// A bundle file (`drafter jobs bundle ID > bundle.jsonl`) or a job directory (`<data_dir>/jobs/<id>`).
        path: PathBuf,
        /// Trust only this signer: a hex Ed25519 public key, a file holding one (`runner.pub`), or a data
        /// directory (its `runner.pub` and retired `keys/*.pub`). Repeat for several keys. Without it each
        /// statement is checked against the key it names, which proves integrity but not origin.
        #[arg(long = "key", alias = "public-key")]
        keys: Vec<String>,
        /// The policy file the job should have run under: every statement's policy hash must be its hash.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// A git repository holding the pushed branch: the run statement's commit must be in it, and the diff
        /// from its base commit must have the recorded SHA-256.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// The bundle digest from the PR body or the ticket comment (`sha256:<hex>`): the bundle must hash to it,
        /// or (when later attempts extended it) its part up to one of its run statements must. A bundle cut after
        /// an earlier attempt fails.
        #[arg(long, value_parser = parse_digest_arg)]
        digest: Option<String>,
        /// Accept a bundle whose last attempt has no run statement (a job still running). Without it such a
        /// bundle fails: its end may have been cut off.
        #[arg(long)]
        allow_incomplete: bool,
        /// Without --key: accept statements signed by a different key than line 1's. Without either, a change of
        /// signer fails (after a key rotation, pass --key with the data directory, which keeps retired keys).
        #[arg(long)]
        allow_signer_change: bool,
    },
    /// Show or rotate the runner's signing key
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Run the long-lived worker: queue, webhooks, polling, health checks
    ///
    /// Claims jobs from the queue (SQLite file or PostgreSQL), runs each like `drafter run`, and takes new jobs in
    /// from Jira webhooks (`POST /webhooks/jira`) and/or a JQL poll. Also serves `GET /healthz` and `GET /readyz`.
    /// Webhooks are on when `serve.webhook_secret_env` (or `_file`) is set: then it refuses to start without that
    /// secret, naming the key and its line; remove the key to run without webhooks. SIGTERM/SIGINT stop claiming,
    /// let running jobs finish within `serve.drain_timeout_secs`, then release the rest for another worker.
    Serve {
        /// The runner configuration file.
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
    },
    /// Inspect and steer the job queue
    ///
    /// The same SQLite file or PostgreSQL database `drafter serve` uses. Reads only `serve.queue` (and `data_dir`)
    /// from the configuration: no secret is needed.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        /// The queue: a SQLite file path or a postgres:// URL. Default: `serve.queue` from the configuration.
        #[arg(long, env = "DRAFTER_QUEUE", global = true)]
        queue: Option<String>,
        /// The runner configuration file, read only to find the queue when --queue is not given.
        #[arg(
            long,
            env = "DRAFTER_CONFIG",
            default_value = "drafter.toml",
            global = true
        )]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Stop every worker on the queue from claiming jobs (the kill switch)
    ///
    /// Every worker sharing the queue stops claiming new jobs until `drafter resume`. Running jobs go on unless
    /// --cancel-running is given. Shown by `drafter jobs list` and `GET /readyz` (503) while set.
    Pause {
        /// Why (shown in `jobs list`, `/readyz` and the workers' logs).
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
        /// Who is pausing. Default: `cli:$USER`.
        #[arg(long)]
        by: Option<String>,
        /// Also cancel every running job (their workers stop them at the next heartbeat) and remove their sandbox
        /// containers on this host's Docker.
        #[arg(long)]
        cancel_running: bool,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Lift the kill switch: workers claim jobs again
    Resume {
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Measure the sandbox against the Docker CLI on this machine
    ///
    /// Container ready (drafter cold and warm vs `docker run` + `docker cp`) and tool-call round trips (`true`, reading 1 MB) through drafter-sandboxd, bollard
    /// exec and the `docker exec` CLI. Prints a Markdown table with p50/p99 and the target ratios.
    Bench {
        /// A runner configuration whose `[sandbox]` settings (image, limits, runtime) to use; defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Round trips per tool-call row.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Containers started per ready row.
        #[arg(long, default_value_t = 20)]
        starts: usize,
    },
    /// Check this host can run jobs: Docker, runtimes, image, executor
    ///
    /// Checks the Docker engine, the OCI runtimes it offers (runc, runsc for gVisor), the configured runtime and
    /// image, the executor binary. Exits 1 if something a job needs is missing.
    Doctor {
        /// The runner configuration file (optional: defaults are checked without one).
        #[arg(long, env = "DRAFTER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: every problem, and the commands it stops
    ///
    /// Prints what the file resolves to (secrets by where they come from, never their values; URLs without
    /// credentials), then every problem at once, each with its key, its line and the commands it stops (a missing
    /// webhook secret stops only `serve`, an unset `GITHUB_TOKEN` stops `run` and `serve`). Exits 1 if there is any
    /// problem, or with --for, any problem that stops that command.
    CheckConfig {
        /// The runner configuration file.
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
        /// Exit 0 when this command can start, whatever else is wrong: run, serve, explain (policy explain), jobs
        /// (also pause, resume), key (also jobs bundle, jobs purge), doctor (also bench).
        #[arg(long = "for", value_enum)]
        for_command: Option<ForCommand>,
    },
}

/// The commands `check-config --for` can check for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ForCommand {
    Run,
    Serve,
    Explain,
    Jobs,
    Key,
    Doctor,
}

impl ForCommand {
    fn purpose(self) -> Purpose {
        match self {
            ForCommand::Run => Purpose::Run,
            ForCommand::Serve => Purpose::Serve,
            ForCommand::Explain => Purpose::Explain,
            ForCommand::Jobs => Purpose::Queue,
            ForCommand::Key => Purpose::DataDir,
            ForCommand::Doctor => Purpose::Sandbox,
        }
    }
}

/// Where the queue is, for the commands that steer it without `jobs`.
#[derive(Args)]
struct QueueArgs {
    /// The queue: a SQLite file path or a postgres:// URL. Default: `serve.queue` from the configuration.
    #[arg(long, env = "DRAFTER_QUEUE")]
    queue: Option<String>,
    /// The runner configuration file, read to find the queue when --queue is not given.
    #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Where the runner's data directory is, for commands that only read it.
#[derive(Args)]
struct DataDirArgs {
    /// The data directory (default: `data_dir` from the configuration).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The runner configuration file, read to find the data directory when --data-dir is not given.
    #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
    config: PathBuf,
}

impl DataDirArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(Config::load_for(&self.config, Purpose::DataDir)
                .with_context(|| "finding the data directory (or pass --data-dir)")?
                .data_dir),
        }
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the runner's public key and key id, and the retired keys
    ///
    /// Creates the key if there is none yet. Old bundles may be signed with a retired key.
    Show {
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Retire the current key and make a new one
    ///
    /// The old public key stays in `<data_dir>/keys/`, so bundles it signed still verify (`drafter verify --key
    /// <data_dir>`); the old private key is deleted.
    Rotate {
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; errors name the line and key. Prints its hash when valid.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the policy's hash (`sha256:` of its canonical form)
    ///
    /// Comments, whitespace and key order do not count; any value does.
    Hash {
        /// The policy file.
        file: PathBuf,
    },
    /// Create a new Ed25519 policy key (mode 0600) and `<key>.pub`
    ///
    /// Keep it away from the runners: they only need the public key (`[policy] trusted_keys`).
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a policy: writes `<file>.sig`
    ///
    /// The signature file holds the hash, the key id, the public key and the signature.
    Sign {
        /// The policy file.
        file: PathBuf,
        /// The policy key (from `drafter policy keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check `<file>.sig` against the file (and, with --key, its signer)
    ///
    /// With --key (hex or a file holding it), also checks that this key signed it.
    Verify {
        /// The policy file.
        file: PathBuf,
        /// The expected signer's public key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Show what a job for a ticket would be allowed to do, and why
    ///
    /// Before anything runs: team, trigger, repository and base, tools, limits, network, write rules, budget left,
    /// approval, caps.
    Explain {
        /// The Jira issue key.
        #[arg(long)]
        ticket: String,
        /// Evaluate the trigger as this Jira account (id or Data Center name); default: as an operator.
        #[arg(long)]
        user: Option<String>,
        /// The runner configuration file (its policy, Jira and queue are used).
        #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs, newest first (after a `PAUSED ...` line while the queue is paused).
    List {
        /// Only jobs in this state: queued, running, awaiting_approval, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs for this ticket.
        #[arg(long)]
        ticket: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one job: state, attempts, lease, triggers (who, what), last error, outcome, progress.
    Show {
        /// The job id.
        id: String,
    },
    /// Approve a job awaiting approval: it is queued and runs at the next claim.
    Approve {
        /// The job id.
        id: String,
        /// Who approves (recorded on the job). Default: `cli:$USER`.
        #[arg(long)]
        by: Option<String>,
    },
    /// Cancel a queued, running or awaiting job
    ///
    /// A running job's worker stops it at its next heartbeat.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Queue a failed or cancelled job again, with its attempts reset.
    Retry {
        /// The job id.
        id: String,
    },
    /// Write a job's proof bundle to stdout (or --out), and its SHA-256 to stderr
    ///
    /// Reads this host's data directory: run it where the job ran.
    Bundle {
        /// The job id.
        id: String,
        /// Write the bundle to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The data directory (default: `data_dir` from the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Remove retained request/response bodies past their policy's age
    ///
    /// Removes bodies older than their policy's `retention.max_age_days` (digests and bundles stay). `drafter serve`
    /// does this hourly on its own.
    Purge {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// The data directory (default: `data_dir` from the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
            Command::Run {
                ticket,
                config,
                approve,
            } => run(&ticket, &config, approve).await,
            Command::Policy { command } => policy_cmd(command).await,
            Command::Verify {
                path,
                keys,
                policy,
                repo,
                digest,
                allow_incomplete,
                allow_signer_change,
            } => {
                let expect = VerifyExpect {
                    digest,
                    allow_incomplete,
                    allow_signer_change,
                };
                verify(&path, &keys, policy.as_deref(), repo.as_deref(), expect)
            }
            Command::Key { command } => key_cmd(command),
            Command::Serve { config } => serve(&config).await,
            Command::Jobs {
                command,
                queue,
                config,
                json,
            } => jobs(command, queue, &config, json).await,
            Command::Pause {
                reason,
                by,
                cancel_running,
                queue,
            } => pause(reason, by, cancel_running, queue).await,
            Command::Resume { queue } => resume(queue).await,
            Command::Bench {
                config,
                calls,
                starts,
            } => bench(config.as_deref(), calls, starts).await,
            Command::Doctor { config } => doctor(config.as_deref()).await,
            Command::CheckConfig {
                config,
                for_command,
            } => check_config(&config, for_command.map(ForCommand::purpose)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // A last line of defence: no message quoting a URL prints its credentials.
            eprintln!("error: {}", drafter::config::redact_url(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// `drafter check-config`: what the file resolves to, every problem with the commands it stops, and a verdict.
fn check_config(path: &std::path::Path, purpose: Option<Purpose>) -> anyhow::Result<ExitCode> {
    let checked = Config::check_file(path)?;
    let name = path.display();
    if let Some(c) = checked.display() {
        println!("{c:#?}");
    }
    for p in &checked.problems {
        println!("{name}, {p}");
        println!("    blocks: {}", p.blocked().join("; "));
    }
    let n = checked.problems.len();
    let problems = match n {
        0 => "no problems".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    let (blocked, free): (Vec<Purpose>, Vec<Purpose>) = Purpose::ALL
        .into_iter()
        .partition(|p| checked.blocking(*p).next().is_some());
    let labels = |list: &[Purpose]| {
        list.iter()
            .map(|p| {
                // A worker stopped only for its webhook secret is shown as such.
                let only_webhooks = *p == Purpose::Serve
                    && checked
                        .blocking(*p)
                        .all(|x| x.blocked().contains(&"serve (webhooks)"));
                if only_webhooks {
                    "serve (webhooks)"
                } else {
                    p.label()
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let ok = match purpose {
        None if n == 0 => {
            println!("{name}: no problems; every command can start");
            true
        }
        None => {
            println!(
                "{name}: {problems}; blocked: {}; can start: {}",
                labels(&blocked),
                if free.is_empty() {
                    "nothing".to_string()
                } else {
                    labels(&free)
                }
            );
            false
        }
        Some(p) => {
            let stopping = checked.blocking(p).count();
            if stopping == 0 {
                match n {
                    0 => println!("{name}: {} can start (no problems)", p.label()),
                    1 => println!(
                        "{name}: {} can start; the problem above stops other commands",
                        p.label()
                    ),
                    n => println!(
                        "{name}: {} can start; the {n} problems above stop other commands",
                        p.label()
                    ),
                }
                true
            } else {
                println!(
                    "{name}: {} cannot start: {stopping} of the {problems} above stop it",
                    p.label()
                );
                false
            }
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn sandbox_config(
    config: Option<&std::path::Path>,
) -> anyhow::Result<drafter::config::SandboxConfig> {
    Ok(match config {
        Some(path) => Config::load_for(path, Purpose::Sandbox)?.sandbox,
        None => drafter::config::SandboxConfig::default(),
    })
}

async fn bench(
    config: Option<&std::path::Path>,
    calls: usize,
    starts: usize,
) -> anyhow::Result<ExitCode> {
    let cfg = sandbox_config(config)?;
    let opts = drafter::bench::BenchOptions {
        calls: calls.max(1),
        starts: starts.max(1),
    };
    eprintln!(
        "drafter bench: image {}, {} round trips per call row, {} starts per ready row (takes a minute or two)",
        cfg.image, opts.calls, opts.starts
    );
    let report = drafter::bench::run(&cfg, &opts).await?;
    print!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}

async fn doctor(config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
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
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether log lines may carry ANSI colour codes: only when stderr is a terminal (a file, a pipe or the systemd
/// journal gets plain text), and never when `NO_COLOR` is set to anything non-empty (<https://no-color.org/>).
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

async fn run(
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
    let policy = Arc::new(policy::Current::new(policy));
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
    match result {
        Ok(JobOutcome::PullRequest {
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
        Ok(JobOutcome::NoChanges {
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
        Err(e) => {
            let msg = worker::scrub(&config, &e.to_string());
            eprintln!("error: {msg}");
            eprintln!("job record: {}", dir.join("job.json").display());
            Ok(match e {
                JobError::Refused { .. } => ExitCode::from(2),
                JobError::AwaitingApproval { .. } => {
                    eprintln!("the policy asks for approval: run again with --approve to approve it as the operator, or let `drafter serve` wait for an approver");
                    ExitCode::from(3)
                }
                _ => ExitCode::FAILURE,
            })
        }
    }
}

/// On Data Center, completes the bot's identity from `GET /rest/api/2/myself` (see [`jira::adopt_bot_identity`]):
/// assignment webhooks and change history name the assignee by user key, which only Jira knows when the
/// configuration gives the bot's user name alone. Jira being unreachable now is not fatal: the name then stands for
/// the key, which holds for users made before Jira 8.4.
async fn learn_datacenter_bot(config: &mut Config) {
    if config.jira.flavor != drafter::config::JiraFlavor::Datacenter {
        return;
    }
    let me = match JiraClient::new(&config.jira) {
        Ok(client) => client.whoami().await,
        Err(e) => Err(e),
    };
    match me {
        Ok(me) => {
            for w in jira::adopt_bot_identity(&mut config.jira, &me) {
                tracing::warn!("{w}");
                eprintln!("drafter serve: warning: {w}");
            }
            tracing::info!(
                bot_username = ?config.jira.bot_username,
                bot_key = %config.jira.bot_account_id,
                "jira: Data Center bot identity"
            );
        }
        Err(e) => tracing::warn!(
            error = %worker::scrub(config, &e.to_string()),
            "cannot read the bot's user key from Jira (GET /rest/api/2/myself); using jira.bot_account_id as configured"
        ),
    }
}

async fn serve(config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    // Everything, and the webhook secret when webhooks are on (its key is set): a worker that would refuse every
    // delivery must not look healthy.
    let mut config = Config::load_for(config_path, Purpose::Serve)?;
    learn_datacenter_bot(&mut config).await;
    let config = Arc::new(config);
    let webhook_secret = match &config.serve.webhook_secret {
        Some(c) => Some(c.value()?.clone()),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    // A worker may start before its database (a host booting, a compose stack): keep trying for a minute.
    let mut wait = std::time::Duration::from_secs(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let queue = loop {
        match drafter::queue::open(&config.serve.queue).await {
            Ok(q) => break q,
            Err(e)
                if std::time::Instant::now() < deadline
                    && !matches!(e, drafter::queue::QueueError::BadLocation(_)) =>
            {
                eprintln!(
                    "drafter serve: queue not ready ({}); retrying in {}s",
                    drafter::config::redact_url(&e.to_string()),
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    };
    // The policy: a worker that cannot prove which policy governs it takes no jobs.
    let loaded = Policy::load(&config)?;
    eprintln!(
        "drafter serve: policy {} ({}{})",
        loaded.hash,
        loaded.source,
        loaded
            .signed_by
            .as_deref()
            .map(|k| format!(", signed by {k}"))
            .unwrap_or_default()
    );
    let policy = Arc::new(policy::Current::new(loaded));
    let reloader = tokio::spawn(reload_on_sighup(config.clone(), policy.clone()));
    // Retention: bodies past their policy's max age are removed at start and then hourly.
    let purger = {
        let data_dir = config.data_dir.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                let dir = data_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    proof::retention::purge(&dir, chrono::Utc::now(), false)
                })
                .await;
            }
        })
    };
    // The signing key: made now if this is the first start, so an unusable key stops the worker before any job.
    let key = proof::RunnerKey::load_or_create(&config.data_dir)?;
    tracing::info!(public_key = %key.public_hex(), "runner key");
    let sandbox = Arc::new(Sandbox::connect(&config.sandbox).await?);
    sandbox.ensure_image().await?;
    match sandbox.remove_orphans().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed containers left behind by a crashed worker"
        ),
        Err(e) => tracing::warn!(error = %e, "could not look for leftover containers"),
    }
    // With sandbox.pool_size, the first jobs start warm too.
    if let Err(e) = sandbox.prewarm().await {
        tracing::warn!(error = %e, "could not start the warm pool; jobs start cold");
    }
    let pool_owner = sandbox.clone();

    // One signal, three listeners: the HTTP server, the poller and the pool.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await.map(|_| ());
        }
    };

    let listener = tokio::net::TcpListener::bind(&config.serve.listen)
        .await
        .with_context(|| format!("listening on {}", config.serve.listen))?;
    let addr = listener.local_addr()?;
    let (rq, rs) = (queue.clone(), sandbox.clone());
    let readiness: drafter::server::Readiness = Arc::new(move || {
        let (q, sb) = (rq.clone(), rs.clone());
        Box::pin(async move {
            q.ping().await.map_err(|e| format!("queue: {e}"))?;
            sb.ping().await.map_err(|e| format!("docker: {e}"))?;
            Ok(())
        })
    });
    let approvals = drafter::server::Approvals {
        policy: policy.clone(),
        directory: Arc::new(JiraClient::new(&config.jira)?),
    };
    let state = drafter::server::AppState {
        queue: queue.clone(),
        jira: config.jira.clone(),
        webhook_secret,
        max_attempts: config.serve.max_attempts,
        readiness,
        approvals: Some(approvals.clone()),
    };
    let http = tokio::spawn(drafter::server::serve(listener, state, stopped()));
    eprintln!(
        "drafter serve: listening on http://{addr} ({}), queue {}, {} job(s) at once",
        match config
            .serve
            .webhook_secret
            .as_ref()
            .and_then(|c| c.origin())
        {
            Some(r) => format!(
                "webhooks on: secret from `{}`{}",
                r.key(),
                r.line().map(|l| format!(", line {l}")).unwrap_or_default()
            ),
            None => "webhooks off: no serve.webhook_secret_env or _file".to_string(),
        },
        queue.backend(),
        config.serve.concurrency
    );
    let poller = if config.poll.enabled {
        let jira = JiraClient::new(&config.jira)?;
        let mut poll = config.poll.clone();
        if poll.projects.is_empty() {
            poll.projects = policy.get().projects();
        }
        // Sites without webhooks also need `drafter approve` comments read by polling.
        let (q, a, j, cfg) = (
            queue.clone(),
            approvals.clone(),
            jira.clone(),
            config.clone(),
        );
        let every = std::time::Duration::from_secs(config.poll.interval_secs.max(1));
        let stop = stopped();
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(stop);
            loop {
                drafter::intake::poll_approvals(&j, &cfg.jira, q.as_ref(), &a).await;
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Some(tokio::spawn(drafter::intake::poll_loop(
            jira,
            poll,
            config.jira.clone(),
            queue.clone(),
            config.serve.max_attempts,
            stopped(),
        )))
    } else {
        None
    };

    let signal = async move {
        shutdown_signal().await;
        eprintln!("drafter serve: stopping (draining running jobs)");
        let _ = stop_tx.send(true);
    };
    // Built once for every job of the pool; the worker id is the lease owner of its claims and goes into every run
    // statement. Team budgets are counted in this queue, shared by its workers.
    let ledger: Arc<dyn worker::meter::Ledger> =
        Arc::new(worker::meter::QueueLedger(queue.clone()));
    let services = Arc::new(worker::Services::new(
        config.clone(),
        sandbox,
        policy,
        Some(ledger),
        worker::pool::worker_id(),
    )?);
    let stats = drafter::worker::pool::run(services, queue, signal).await;
    reloader.abort();
    purger.abort();
    let drained = pool_owner.drain_pool().await;
    if drained > 0 {
        tracing::info!(removed = drained, "warm pool emptied");
    }
    if let Some(p) = poller {
        let _ = p.await;
    }
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
    }
    eprintln!(
        "drafter serve: stopped ({} succeeded, {} retried, {} failed, {} released, {} lost; at most {} at once)",
        stats.succeeded, stats.retried, stats.failed, stats.released, stats.lost, stats.max_concurrent
    );
    Ok(ExitCode::SUCCESS)
}

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

async fn pause(
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

async fn resume(args: QueueArgs) -> anyhow::Result<ExitCode> {
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

async fn jobs(
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

/// Trusted keys from `--key` values: hex keys, key files, or data directories.
fn pinned_keys(values: &[String]) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    let mut keys = Vec::new();
    for v in values {
        let p = std::path::Path::new(v);
        if p.is_dir() {
            let found = proof::known_keys(p);
            if found.is_empty() {
                anyhow::bail!("--key {v}: no runner.pub or keys/*.pub in this directory");
            }
            keys.extend(found);
            continue;
        }
        let text = if p.is_file() {
            std::fs::read_to_string(p).with_context(|| format!("reading {v}"))?
        } else {
            v.clone()
        };
        keys.push(
            proof::parse_public_key(text.trim()).map_err(|e| anyhow::anyhow!("--key {v}: {e}"))?,
        );
    }
    Ok(keys)
}

/// `drafter verify`'s demands beyond keys, policy and repository.
struct VerifyExpect {
    digest: Option<String>,
    allow_incomplete: bool,
    allow_signer_change: bool,
}

fn parse_digest_arg(value: &str) -> Result<String, String> {
    proof::verify::parse_digest(value)
}

fn verify(
    path: &std::path::Path,
    keys: &[String],
    policy_file: Option<&std::path::Path>,
    repo: Option<&std::path::Path>,
    expect: VerifyExpect,
) -> anyhow::Result<ExitCode> {
    let mut pins = proof::Pins {
        keys: pinned_keys(keys)?,
        policy_hash: None,
        digest: expect.digest,
        allow_incomplete: expect.allow_incomplete,
        allow_signer_change: expect.allow_signer_change,
    };
    if let Some(f) = policy_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        pins.policy_hash = Some(policy::parse(&text, f)?.hash);
    }
    let summary = match proof::verify(path, &pins) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("verification failed: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let repo_check = match (repo, &summary.last_run) {
        (Some(r), Some(run)) => Some(proof::verify::check_repo(run, r)),
        _ => None,
    };
    if let Some(Err(e)) = &repo_check {
        eprintln!("verification failed: {}: {e}", summary.path.display());
        return Ok(ExitCode::FAILURE);
    }
    print!(
        "{}",
        proof::verify::render(
            &summary,
            policy_file,
            repo.zip(repo_check.and_then(Result::ok))
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn key_cmd(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Show { dir } => {
            let data_dir = dir.resolve()?;
            let key = proof::RunnerKey::load_or_create(&data_dir)?;
            println!("public key: {}", key.public_hex());
            println!("key id:     {}", key.key_id());
            println!("file:       {}", data_dir.join(proof::PUB_FILE).display());
            let retired: Vec<_> = proof::known_keys(&data_dir)
                .into_iter()
                .filter(|k| *k != key.verifying_key())
                .collect();
            for k in retired {
                println!(
                    "retired:    {} (key id {})",
                    hex::encode(k.as_bytes()),
                    proof::key_id(&k)
                );
            }
        }
        KeyCommand::Rotate { dir } => {
            let data_dir = dir.resolve()?;
            let (old, new) = proof::RunnerKey::rotate(&data_dir)?;
            println!(
                "retired key id: {old} (public key kept in {})",
                data_dir.join(proof::KEYS_DIR).display()
            );
            println!("new public key: {}", new.public_hex());
            println!("new key id:     {}", new.key_id());
            println!(
                "re-pin the new key where bundles are checked; pass --key {} to accept both",
                data_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
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

async fn policy_cmd(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let read = |file: &std::path::Path| -> anyhow::Result<Policy> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Ok(policy::parse(&text, file)?)
    };
    match command {
        PolicyCommand::Check { file } => {
            let p = read(&file)?;
            println!("{}: ok", file.display());
            println!("hash:  {}", p.hash);
            for t in &p.teams {
                println!(
                    "team {}: projects {}; repositories {}",
                    t.name,
                    t.projects.join(", "),
                    t.repos
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Hash { file } => {
            println!("{}", read(&file)?.hash);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Keygen { out } => {
            let key = proof::RunnerKey::create_file(&out)?;
            println!("policy key:  {}", out.display());
            println!("public key:  {}", key.public_hex());
            println!("key id:      {}", key.key_id());
            println!("add the public key to the runners' [policy] trusted_keys");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Sign { file, key } => {
            let p = read(&file)?;
            let key = proof::RunnerKey::load_file(&key)?;
            let sig = policy::identity::sign(&p.hash, &key);
            let path = policy::identity::write_signature(&file, &sig)?;
            println!(
                "signed {} ({}) with key {}",
                file.display(),
                p.hash,
                key.key_id()
            );
            println!("signature: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Verify { file, key } => {
            let p = read(&file)?;
            let trusted = match key {
                Some(k) => vec![read_public_key(&k)?],
                None => Vec::new(),
            };
            let Some(sig) = policy::identity::read_signature(&file)? else {
                eprintln!(
                    "{}: not signed (no {})",
                    file.display(),
                    policy::identity::sig_path(&file).display()
                );
                return Ok(ExitCode::FAILURE);
            };
            match policy::identity::verify(&sig, &p.hash, &trusted) {
                Ok(key_id) => {
                    println!("{}: signature ok", file.display());
                    println!("hash:    {}", p.hash);
                    println!("signer:  {key_id} ({})", sig.public_key);
                    println!("signed:  {}", sig.signed_at);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCommand::Explain {
            ticket,
            user,
            config,
            json,
        } => explain(&ticket, user.as_deref(), &config, json).await,
    }
}

/// A hex public key, or a file holding one.
fn read_public_key(arg: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let text = if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_string()
    };
    proof::parse_public_key(text.trim()).map_err(|e| anyhow::anyhow!("public key: {e}"))
}

async fn explain(
    ticket: &str,
    user: Option<&str>,
    config_path: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load_for(config_path, Purpose::Explain)?;
    let policy = Policy::load(&config)?;
    let jira = JiraClient::new(&config.jira)?;
    let t = jira.issue(ticket).await?;
    let operator = format!("cli:{}", operator_name());
    let who = match user {
        Some(u) => policy::Who::Jira(Some(u)),
        None => policy::Who::Operator(operator.as_str()),
    };
    let req = policy::Request {
        ticket: &t,
        who,
        approved_by: None,
    };
    let verdict = policy.decide(&req, &jira).await;
    let ledger = ledger_for(&config, &policy).await.ok().flatten();
    let explanation =
        worker::explain::Explanation::new(&policy, &config, &t, verdict, ledger.as_deref()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", explanation.render());
    }
    Ok(if explanation.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// SIGHUP re-reads the policy file (with the same signature and pin checks). New jobs get the new policy; running
/// jobs keep the one they started with. A policy that fails the checks is not applied, and the old one stays.
async fn reload_on_sighup(config: Arc<Config>, current: Arc<policy::Current>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        match Policy::load(&config) {
            Ok(p) => {
                let new = p.hash.clone();
                let old = current.set(p);
                tracing::info!(%old, %new, "policy reloaded; new jobs use the new policy");
                eprintln!("drafter serve: policy reloaded: {old} -> {new}");
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; keeping the policy in force");
                eprintln!(
                    "drafter serve: policy reload refused ({e}); keeping {}",
                    current.get().hash
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        // An empty NO_COLOR does not count (no-color.org: "present and not an empty string").
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(true, Some(OsStr::new("false"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
        assert!(!log_colours(false, Some(OsStr::new("1"))));
    }
}
