//! The command line's shape (clap): commands, their arguments and help texts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drafter::config::{Config, Purpose};
use drafter::proof;

/// drafter: turn a Jira ticket into a draft pull request, with the model's work done in a locked-down container
/// and every model call recorded as a signed receipt.
#[derive(Parser)]
#[command(name = "drafter", version, about, long_about = None)]
pub struct Cli {
    /// Log as JSON lines instead of text (logs go to stderr; set the level with RUST_LOG, e.g. RUST_LOG=drafter=debug).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Measure this machine: the sandbox against the Docker CLI (the default), or the queue
    ///
    /// Without a part, as `bench sandbox`: container ready (drafter cold and warm vs `docker run` + `docker cp`) and
    /// tool-call round trips (`true`, reading 1 MB) through drafter-sandboxd, bollard exec and the `docker exec`
    /// CLI. `bench queue`: jobs per second through the queue. Each prints a Markdown table with its targets.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        part: Option<BenchPart>,
        #[command(flatten)]
        sandbox: SandboxBenchArgs,
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
pub enum ForCommand {
    Run,
    Serve,
    Explain,
    Jobs,
    Key,
    Doctor,
}

impl ForCommand {
    pub fn purpose(self) -> Purpose {
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

/// The parts of `drafter bench`.
#[derive(Subcommand)]
pub enum BenchPart {
    /// The sandbox against the Docker CLI (what `drafter bench` alone runs)
    Sandbox {
        #[command(flatten)]
        args: SandboxBenchArgs,
    },
    /// Queue throughput: enqueue -> claim -> complete of jobs that do no work
    ///
    /// SQLite in one process (claim loops and producers as tasks, on a fresh file), and with --postgres also
    /// PostgreSQL with worker processes. Prints jobs per second end to end, claim latency (p50, p99) and the count
    /// of every job afterwards: none lost, none run twice.
    Queue {
        /// Jobs to run through each queue.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Claim loops (SQLite: tasks; PostgreSQL: worker processes); as many producers enqueue.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Also measure PostgreSQL, on this database: it must hold no jobs (use a scratch database; the bench
        /// leaves its jobs there).
        #[arg(long)]
        postgres: Option<String>,
        /// Where to make the SQLite file (default: the system's temporary directory). Use the disk your data
        /// directory is on: a commit waits for it.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Workspace-ready time: a plain clone over HTTP against one made from a warm mirror
    ///
    /// Generates a repository (`git fast-import`), serves it over smart HTTP (`git http-backend` on 127.0.0.1,
    /// token by HTTP Basic) and times, from nothing to a checked-out workspace, a plain clone and a workspace made
    /// from the mirror cache (`[repo] mirror = true`: fetch of the warm mirror, then a local copy and checkout).
    Clone {
        /// Files at the tip of the generated repository.
        #[arg(long, default_value_t = 20_000)]
        files: usize,
        /// Commits in its history.
        #[arg(long, default_value_t = 2_000)]
        commits: usize,
        /// Timed workspaces per path.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Where to work (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// One worker process of `bench queue` (started by it; reads its orders on stdin)
    #[command(hide = true)]
    QueueWorker,
}

/// `drafter bench sandbox`'s settings.
#[derive(Args)]
pub struct SandboxBenchArgs {
    /// A runner configuration whose `[sandbox]` settings (image, limits, runtime) to use; defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Round trips per tool-call row.
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// Containers started per ready row.
    #[arg(long, default_value_t = 20)]
    pub starts: usize,
}

/// Where the queue is, for the commands that steer it without `jobs`.
#[derive(Args)]
pub struct QueueArgs {
    /// The queue: a SQLite file path or a postgres:// URL. Default: `serve.queue` from the configuration.
    #[arg(long, env = "DRAFTER_QUEUE")]
    pub queue: Option<String>,
    /// The runner configuration file, read to find the queue when --queue is not given.
    #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the runner's data directory is, for commands that only read it.
#[derive(Args)]
pub struct DataDirArgs {
    /// The data directory (default: `data_dir` from the configuration).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The runner configuration file, read to find the data directory when --data-dir is not given.
    #[arg(long, env = "DRAFTER_CONFIG", default_value = "drafter.toml")]
    pub config: PathBuf,
}

impl DataDirArgs {
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(Config::load_for(&self.config, Purpose::DataDir)
                .with_context(|| "finding the data directory (or pass --data-dir)")?
                .data_dir),
        }
    }
}

#[derive(Subcommand)]
pub enum KeyCommand {
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
pub enum PolicyCommand {
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
pub enum JobsCommand {
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

fn parse_digest_arg(value: &str) -> Result<String, String> {
    proof::verify::parse_digest(value)
}
