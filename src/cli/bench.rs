//! `drafter bench`: its parts (the sandbox by default, the queue) and the queue bench's hidden worker process.

use std::process::ExitCode;

use anyhow::Context;
use drafter::bench::queue::{QueueOptions, QueueReport};

use super::args::{BenchPart, SandboxBenchArgs};
use super::doctor::sandbox_config;

pub async fn bench(part: Option<BenchPart>, sandbox: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    match part {
        None => sandbox_bench(sandbox).await,
        Some(BenchPart::Sandbox { args }) => sandbox_bench(args).await,
        Some(BenchPart::Queue {
            jobs,
            workers,
            postgres,
            dir,
        }) => queue_bench(jobs, workers, postgres.as_deref(), dir.as_deref()).await,
        Some(BenchPart::Clone {
            files,
            commits,
            runs,
            dir,
        }) => clone_bench(files, commits, runs, dir).await,
        Some(BenchPart::QueueWorker) => {
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            drafter::bench::queue::worker(stdin, tokio::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn sandbox_bench(args: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    let cfg = sandbox_config(args.config.as_deref())?;
    let opts = drafter::bench::sandbox::BenchOptions {
        calls: args.calls.max(1),
        starts: args.starts.max(1),
    };
    eprintln!(
        "drafter bench: image {}, {} round trips per call row, {} starts per ready row (takes a minute or two)",
        cfg.image, opts.calls, opts.starts
    );
    let report = drafter::bench::sandbox::run(&cfg, &opts).await?;
    print!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}

async fn queue_bench(
    jobs: usize,
    workers: usize,
    postgres: Option<&str>,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let opts = QueueOptions {
        jobs: jobs.max(1),
        workers: workers.max(1),
    };
    let mut report = QueueReport::default();
    eprintln!(
        "drafter bench queue: {} jobs, SQLite with {} claim loops",
        opts.jobs, opts.workers
    );
    report.rows.push(
        drafter::bench::queue::sqlite(dir, &opts)
            .await
            .context("SQLite")?,
    );
    if let Some(url) = postgres {
        eprintln!(
            "drafter bench queue: {} jobs, PostgreSQL with {} worker processes",
            opts.jobs, opts.workers
        );
        let exe = std::env::current_exe().context("finding this binary, to start workers")?;
        let launch = || {
            let mut c = std::process::Command::new(&exe);
            c.args(["bench", "queue-worker"]);
            c
        };
        let row = drafter::bench::queue::postgres(url, &opts, launch)
            .await
            .context("PostgreSQL")?;
        report.rows.push(row);
    }
    print!("{}", report.render());
    Ok(if report.rows.iter().all(|r| r.count.exact()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn clone_bench(
    files: usize,
    commits: usize,
    runs: usize,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let opts = drafter::bench::clone::CloneOptions {
        files,
        commits,
        runs,
        dir,
    };
    eprintln!(
        "drafter bench clone: {files} files, {commits} commits, {runs} runs per path (generating takes a while)"
    );
    let report = drafter::bench::clone::run(&opts).await?;
    print!("{}", report.render());
    Ok(if report.met() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
