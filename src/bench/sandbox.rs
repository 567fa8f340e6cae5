//! `drafter bench` (also `drafter bench sandbox`): the sandbox measured against the Docker CLI doing the same work,
//! on this machine, in one run.
//!
//! Two questions, each answered side by side:
//! - **Ready**: how long until a hardened container is created, started and holds the workspace. drafter (cold: a
//!   new container per job; warm: one taken from the pre-started pool) against `docker run` with the same hardening
//!   flags followed by `docker cp` of the same directory.
//! - **Tool-call round trip**: `true`, and reading a 1 MB file, through the in-container executor, through a
//!   `docker exec` made with bollard (drafter's fallback transport), and through the `docker exec` CLI.
//!
//! The ratios are computed from the same run, so they compare like with like on whatever machine runs it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ms, BenchError, Row};
use crate::config::{SandboxConfig, Transport};
use crate::sandbox::{self, Container, Executor, Sandbox, LABEL_OWNER_HOST, LABEL_OWNER_PID};

/// What to measure and how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Round trips per tool-call row.
    pub calls: usize,
    /// Containers started per ready row.
    pub starts: usize,
}

/// A target from the issue: `row` p50 at most `max_ratio` times `baseline` p50.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// What is compared.
    pub what: String,
    /// Measured p50 / baseline p50.
    pub ratio: f64,
    /// The target.
    pub max_ratio: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Rows in the order measured.
    pub rows: Vec<Row>,
    /// The ratios that have targets.
    pub ratios: Vec<Ratio>,
}

impl Report {
    /// The table as printed by `drafter bench` (Markdown, so it can go into BENCHMARKS.md as is).
    pub fn render(&self) -> String {
        let mut out = String::from("| measurement | n | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.name,
                r.n,
                ms(r.p50),
                ms(r.p99)
            ));
        }
        out.push_str("\n| ratio (p50) | measured | target | met |\n|---|---:|---:|---|\n");
        for r in &self.ratios {
            out.push_str(&format!(
                "| {} | {:.3}x | <= {}x | {} |\n",
                r.what,
                r.ratio,
                r.max_ratio,
                if r.ratio <= r.max_ratio { "yes" } else { "no" }
            ));
        }
        out
    }
}

/// The sample workspace: 200 source-sized files (2 MB) and a 1 MB file for the read rows.
fn sample_workspace(dir: &Path) -> std::io::Result<()> {
    for i in 0..200 {
        let sub = dir.join(format!("src/m{}", i % 10));
        std::fs::create_dir_all(&sub)?;
        let line = format!("fn f{i}() -> u32 {{ {i} }} // some source text to fill the line\n");
        std::fs::write(
            sub.join(format!("f{i}.rs")),
            line.repeat(10_240 / line.len()),
        )?;
    }
    let big: Vec<u8> = (0..1_048_576u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.join("big.txt"), big)
}

fn cli(args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| BenchError::Cli {
            command: format!("docker {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BenchError::Cli {
            command: format!("docker {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bench_job(tag: &str, i: usize) -> String {
    format!("bench-{}-{tag}-{i}", std::process::id())
}

/// The same hardening drafter applies, as `docker run` flags (the docker-exec layout: a sleeping keeper). `owner` are
/// the owner labels, so another runner's orphan sweep on the same daemon leaves the container alone.
fn cli_run_args<'a>(
    cfg: &'a SandboxConfig,
    name: &'a str,
    mem: &'a str,
    pids: &'a str,
    owner: &'a [String; 2],
) -> Vec<&'a str> {
    vec![
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "drafter.managed=true",
        "--label",
        &owner[0],
        "--label",
        &owner[1],
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--pids-limit",
        pids,
        "--memory",
        mem,
        "--memory-swap",
        mem,
        "--user",
        "65534:65534",
        "--init",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=512m,mode=1777",
        "-v",
        "/workspace",
        "-w",
        "/workspace",
        &cfg.image,
        "sleep",
        "infinity",
    ]
}

/// Runs the whole benchmark with `cfg`'s image and limits.
pub async fn run(cfg: &SandboxConfig, opts: &BenchOptions) -> Result<Report, BenchError> {
    let ws = tempfile::tempdir().map_err(BenchError::Workspace)?;
    sample_workspace(ws.path()).map_err(BenchError::Workspace)?;
    let mut rows = Vec::new();

    let mut sandboxd_cfg = cfg.clone();
    sandboxd_cfg.transport = Transport::Sandboxd;
    sandboxd_cfg.pool_size = 0;
    let cold = Sandbox::connect(&sandboxd_cfg).await?;
    cold.ensure_image().await?;
    // Fill the executor volume outside the timings (a once-per-binary cost).
    cold.executor_volume().await?;

    // ---- ready ---------------------------------------------------------------------------------------------------
    let mut samples = Vec::new();
    let mut phases: [Vec<Duration>; 5] = Default::default();
    for i in 0..opts.starts {
        let t = Instant::now();
        let c = cold.start(&bench_job("cold", i), "BENCH-1").await?;
        let u = Instant::now();
        c.upload_dir(ws.path()).await?;
        samples.push(t.elapsed());
        let st = c.start_timings();
        for (k, d) in [st.create, st.attach, st.start, st.ready, u.elapsed()]
            .into_iter()
            .enumerate()
        {
            phases[k].push(d);
        }
        c.remove().await?;
    }
    rows.push(Row::new(
        "ready: drafter, cold (create, attach, start, ping, workspace in)",
        samples,
    ));
    for (name, p) in [
        "cold phase: create",
        "cold phase: attach",
        "cold phase: start",
        "cold phase: executor answers its first ping",
        "cold phase: workspace in (201 files, 3 MB, one tar through the executor)",
    ]
    .into_iter()
    .zip(phases)
    {
        rows.push(Row::new(name, p));
    }

    let mut warm_cfg = sandboxd_cfg.clone();
    warm_cfg.pool_size = 1;
    let warm = Sandbox::connect(&warm_cfg).await?;
    let mut samples = Vec::new();
    let mut warm_phases: [Vec<Duration>; 3] = Default::default();
    for i in 0..opts.starts {
        // Let the pool refill between starts, as it would between jobs.
        warm.wait_pool_full(Duration::from_secs(60)).await;
        let t = Instant::now();
        let c = warm.start(&bench_job("warm", i), "BENCH-1").await?;
        let u = Instant::now();
        c.upload_dir(ws.path()).await?;
        samples.push(t.elapsed());
        let st = c.start_timings();
        for (k, d) in [st.check, st.rename, u.elapsed()].into_iter().enumerate() {
            warm_phases[k].push(d);
        }
        c.remove().await?;
    }
    warm.drain_pool().await;
    rows.push(Row::new(
        "ready: drafter, warm pool (take, workspace in)",
        samples,
    ));
    for (name, p) in [
        "warm phase: take and liveness check (disk usage through the executor)",
        "warm phase: rename for the job",
        "warm phase: workspace in",
    ]
    .into_iter()
    .zip(warm_phases)
    {
        rows.push(Row::new(name, p));
    }

    let mem = format!("{}m", cfg.memory_mb);
    let pids = cfg.pids_limit.to_string();
    let src = format!("{}/.", ws.path().display());
    let owner = [
        format!("{LABEL_OWNER_HOST}={}", sandbox::host_name()),
        format!("{LABEL_OWNER_PID}={}", std::process::id()),
    ];
    let mut samples = Vec::new();
    for i in 0..opts.starts {
        let name = format!("drafter-{}", bench_job("cli", i));
        let t = Instant::now();
        cli(&cli_run_args(cfg, &name, &mem, &pids, &owner))?;
        cli(&["cp", &src, &format!("{name}:/workspace")])?;
        samples.push(t.elapsed());
        cli(&["rm", "-f", "-v", &name])?;
    }
    rows.push(Row::new("ready: docker run + docker cp (CLI)", samples));

    // ---- tool-call round trips -----------------------------------------------------------------------------------
    let c = cold.start(&bench_job("calls", 0), "BENCH-1").await?;
    c.upload_dir(ws.path()).await?;
    let result = round_trips(&c, opts.calls, &mut rows).await;
    c.remove().await?;
    result?;

    // ---- workspace out -------------------------------------------------------------------------------------------
    let mut exec_cfg = sandboxd_cfg.clone();
    exec_cfg.transport = Transport::DockerExec;
    let exec_sb = Sandbox::connect(&exec_cfg).await?;
    for (name, sb) in [
        (
            "workspace out: drafter-sandboxd (pack, one tar through the executor)",
            &cold,
        ),
        (
            "workspace out: Docker archive API (the docker-exec fallback)",
            &exec_sb,
        ),
    ] {
        let c = sb.start(&bench_job("out", 0), "BENCH-1").await?;
        let result = workspace_out(&c, ws.path(), opts.starts).await;
        c.remove().await?;
        rows.push(Row::new(name, result?));
    }

    let p50 = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.p50.as_secs_f64())
            .unwrap_or(f64::NAN)
    };
    let ratio = |what: &str, a: &str, b: &str, max_ratio: f64| Ratio {
        what: what.into(),
        ratio: p50(a) / p50(b),
        max_ratio,
    };
    let ratios = vec![
        ratio(
            "ready, warm pool / docker run CLI",
            "ready: drafter, warm",
            "ready: docker run",
            0.15,
        ),
        ratio(
            "ready, cold / docker run CLI",
            "ready: drafter, cold",
            "ready: docker run",
            0.3,
        ),
        ratio(
            "`true`, executor / docker exec CLI",
            "`true`: drafter-sandboxd",
            "`true`: docker exec CLI",
            0.02,
        ),
        ratio(
            "read 1 MB, executor / docker exec CLI",
            "read 1 MB: drafter-sandboxd",
            "read 1 MB: docker exec CLI",
            0.1,
        ),
    ];
    Ok(Report { rows, ratios })
}

/// `n` times: the workspace out of `c` (which holds `ws`) into a fresh directory.
async fn workspace_out(c: &Container, ws: &Path, n: usize) -> Result<Vec<Duration>, BenchError> {
    c.upload_dir(ws).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let dest = tempfile::tempdir().map_err(BenchError::Workspace)?;
        let t = Instant::now();
        c.download_workspace(dest.path()).await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

async fn round_trips(c: &Container, n: usize, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let timeout = Duration::from_secs(30);
    let true_argv = || vec!["true".to_string()];
    let cat_argv = || vec!["cat".to_string(), "big.txt".to_string()];

    let exec = c.executor();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = exec.exec(true_argv(), Vec::new(), timeout).await?;
        samples.push(t.elapsed());
        check_exit(&out, "true")?;
    }
    rows.push(Row::new("`true`: drafter-sandboxd", samples));

    let bollard = c.docker_exec();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = bollard.exec(true_argv(), Vec::new(), timeout).await?;
        samples.push(t.elapsed());
        check_exit(&out, "true")?;
    }
    rows.push(Row::new("`true`: docker exec via bollard", samples));

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        cli(&["exec", "-u", "1000:1000", c.id(), "true"])?;
        samples.push(t.elapsed());
    }
    rows.push(Row::new("`true`: docker exec CLI", samples));

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let data = exec.read_file("big.txt", 2 << 20).await?;
        samples.push(t.elapsed());
        check_len(data.len())?;
    }
    rows.push(Row::new("read 1 MB: drafter-sandboxd (read op)", samples));

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let data = exec.exec(cat_argv(), Vec::new(), timeout).await;
        samples.push(t.elapsed());
        data?;
    }
    // The executor keeps only output_cap bytes of a command's output: this row is the command, not the transfer.
    rows.push(Row::new(
        "read 1 MB: drafter-sandboxd (`cat`, output capped)",
        samples,
    ));

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let data = bollard.exec_raw_len(&["cat", "big.txt"]).await?;
        samples.push(t.elapsed());
        check_len(data)?;
    }
    rows.push(Row::new(
        "read 1 MB: docker exec via bollard (`cat`)",
        samples,
    ));

    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = Command::new("docker")
            .args([
                "exec",
                "-u",
                "1000:1000",
                "-w",
                "/workspace",
                c.id(),
                "cat",
                "big.txt",
            ])
            .output()?;
        samples.push(t.elapsed());
        check_len(out.stdout.len())?;
    }
    rows.push(Row::new("read 1 MB: docker exec CLI (`cat`)", samples));
    Ok(())
}

fn check_exit(out: &crate::sandbox::ExecOutput, what: &str) -> Result<(), BenchError> {
    if out.exit_code == Some(0) {
        Ok(())
    } else {
        Err(BenchError::Cli {
            command: what.into(),
            detail: format!("exit {:?}: {}", out.exit_code, out.output),
        })
    }
}

fn check_len(n: usize) -> Result<(), BenchError> {
    if n == 1_048_576 {
        Ok(())
    } else {
        Err(BenchError::Cli {
            command: "read big.txt".into(),
            detail: format!("got {n} bytes, expected 1048576"),
        })
    }
}
