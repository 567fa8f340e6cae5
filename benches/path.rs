//! Where a job's time and a worker's memory go (issue 15): the real `drafter serve` binary against the stand-ins of
//! `tests/it/support` (Jira, GitHub serving git over smart HTTP, a scripted zero-latency model) and the real sandbox.
//! Prints Markdown tables; not a test.
//!
//! ```text
//! cargo bench --bench path -- [--runs 20] [--jobs 1000] [--only path,tools20,memory,burst]
//! ```
//!
//! `cargo bench` builds with the `bench` profile (release): this bench, `drafter` and `drafter-sandboxd` all land in
//! `target/release`, and the worker takes the executor next to its own binary. `--profile dev` measures the debug
//! build the tests use.
//!
//! `cargo test --all-targets` builds and runs bench targets without `--bench`: then `main` returns at once.
//!
//! Stage clocks, all on this host's wall clock: the stand-ins note when each request arrived and when the model's
//! answer left; the worker's log lines (`job claimed`, `stage`) carry their own timestamps; the job's proof bundle
//! holds every tool call's start and duration.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use drafter::proof::bundle::Predicate;
use drafter::queue::{Job, Queue};
use serde_json::json;
use support::harness::{
    all_jobs, assignment_webhook, wait_all_finished, Options, ServeProcess, Stack,
};
use support::model::Step;

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

struct Args {
    runs: usize,
    jobs: usize,
    only: Vec<String>,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let args = Args {
        runs: value("--runs").and_then(|v| v.parse().ok()).unwrap_or(20),
        jobs: value("--jobs").and_then(|v| v.parse().ok()).unwrap_or(1000),
        only: value("--only")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_else(|| {
                ["path", "tools20", "memory", "burst"]
                    .map(String::from)
                    .to_vec()
            }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let want = |s: &str| args.only.iter().any(|o| o == s);
    // The worker finds its executor next to itself (`sandbox::find_executor`): both come from this build's profile,
    // `target/release` under `cargo bench`, `target/debug` under `--profile dev`.
    let executor = Path::new(BIN).with_file_name(drafter::sandbox::EXECUTOR_BIN);
    assert!(
        executor.is_file(),
        "{} is missing: build it with the same profile",
        executor.display()
    );
    println!(
        "drafter `benches/path.rs`, {} build, binary {BIN}, executor {}, {} cores",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        executor.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("path") {
        for (label, pool) in [("cold", 0), ("warm pool", 1)] {
            let rows = path_runs(args.runs, pool, support::harness::demo_script(), 12).await;
            print_path(&format!("job path, {label}"), &rows);
        }
    }
    if want("tools20") {
        let rows = path_runs(args.runs.min(10), 1, twenty_tool_calls(), 30).await;
        print_path("20-tool-call job, warm pool", &rows);
    }
    if want("memory") {
        memory().await;
    }
    if want("burst") {
        burst(args.jobs).await;
    }
}

/// The `[serve]` table: the product's defaults except a free port and the webhook secret.
fn serve_toml(concurrency: usize, per_project: usize) -> String {
    format!(
        "[serve]\nlisten = \"127.0.0.1:0\"\nwebhook_secret_env = \"DRAFTER_TEST_WEBHOOK_SECRET\"\n\
         concurrency = {concurrency}\nper_project = {per_project}\n"
    )
}

async fn stack(
    concurrency: usize,
    per_project: usize,
    pool: usize,
    script: Vec<Step>,
    max_turns: u32,
) -> Stack {
    Stack::start(Options {
        per_conversation: true,
        script,
        max_turns,
        extra_toml: serve_toml(concurrency, per_project),
        sandbox_toml: format!("pool_size = {pool}"),
        ..Options::default()
    })
    .await
}

/// The demo's edits and test run, padded to 20 tool calls with reads, listings and commands, then `finish`.
fn twenty_tool_calls() -> Vec<Step> {
    let demo = support::harness::demo_script();
    let mut steps: Vec<Step> = demo[..demo.len() - 1].to_vec();
    let calls = |s: &Step| match s {
        Step::Tools(t) => t.len(),
        _ => 0,
    };
    let mut n: usize = steps.iter().map(calls).sum();
    let mut i = 0;
    while n < 20 {
        let (name, input) = match i % 3 {
            0 => ("read_file", json!({"path": "greet.py"})),
            1 => ("list_files", json!({})),
            _ => ("run", json!({"command": "true"})),
        };
        steps.push(Step::Tools(vec![(name.to_string(), input)]));
        n += 1;
        i += 1;
    }
    steps.push(demo[demo.len() - 1].clone());
    steps
}

/// Milestones of one job, as offsets from the moment the webhook was sent.
#[derive(Default)]
struct PathRow {
    accepted: f64,
    claimed: f64,
    fetched: f64,
    workspace: f64,
    first_model: f64,
    /// Per turn: time from the model's answer leaving to the next request arriving, minus tool execution.
    overheads: Vec<f64>,
    last_answer: f64,
    push: f64,
    pr: f64,
    comment: f64,
    tool_calls: usize,
}

fn ms(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// `runs` jobs one after another (plus one unmeasured first job), each on its own ticket, on one worker.
async fn path_runs(runs: usize, pool: usize, script: Vec<Step>, max_turns: u32) -> Vec<PathRow> {
    let stack = stack(1, 1, pool, script, max_turns).await;
    let keys: Vec<String> = (0..=runs).map(|i| format!("DEMO-{}", 200 + i)).collect();
    let description = support::harness::demo_ticket()["description"].clone();
    for key in &keys {
        stack.jira.add_issue(
            key,
            "Greeting should end with an exclamation mark",
            description.clone(),
            &[],
        );
    }
    // `DRAFTER_BENCH_LOG=<filter>` runs the worker with that log filter and prints its log at the end, to see
    // where a stage's time goes.
    let log = std::env::var("DRAFTER_BENCH_LOG").ok();
    let env: Vec<(&str, &str)> = log.iter().map(|f| ("RUST_LOG", f.as_str())).collect();
    let serve = ServeProcess::start_with(&stack, Path::new(BIN), &env).await;
    let queue = stack.queue().await;
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // Let the pool refill and the previous job's container go, as between triggers spaced in time.
        // The gap varies so that the webhook lands at any point of the worker's claim poll, not always just after it.
        tokio::time::sleep(Duration::from_millis(1500 + (i as u64 * 211) % 500)).await;
        let t0 = SystemTime::now();
        let status = serve
            .webhook(&client, &assignment_webhook(key, 70_000 + i as u64))
            .await;
        let accepted = SystemTime::now();
        assert_eq!(status, 202, "{key}");
        let job = wait_finished(queue.as_ref(), key, Duration::from_secs(600)).await;
        assert_eq!(
            job.state,
            drafter::queue::JobState::Succeeded,
            "{job:?}\n{}",
            serve.stderr()
        );
        if i == 0 {
            continue;
        }
        rows.push(path_row(&stack, &serve, &job, t0, accepted));
    }
    let text = serve.stop().await;
    if log.is_some() {
        eprintln!("{text}");
    }
    rows
}

async fn wait_finished(queue: &dyn Queue, key: &str, within: Duration) -> Job {
    let deadline = Instant::now() + within;
    loop {
        if let Some(j) = all_jobs(queue)
            .await
            .into_iter()
            .find(|j| j.ticket == key && !j.state.is_open())
        {
            return j;
        }
        assert!(Instant::now() < deadline, "{key} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One worker log line: its time, the ticket of its span, and its message.
struct LogLine {
    at: SystemTime,
    ticket: Option<String>,
    text: String,
}

fn log_lines(serve: &ServeProcess) -> Vec<LogLine> {
    serve
        .stderr()
        .lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(char::is_whitespace)?;
            let at: SystemTime = chrono::DateTime::parse_from_rfc3339(stamp).ok()?.into();
            let ticket = rest
                .split("ticket=")
                .nth(1)
                .map(|t| t.split(['}', ' ', ':']).next().unwrap_or("").to_string());
            Some(LogLine {
                at,
                ticket,
                text: rest.to_string(),
            })
        })
        .collect()
}

/// The first log line of `ticket` whose text contains `needle`.
fn logged(lines: &[LogLine], ticket: &str, needle: &str) -> Option<SystemTime> {
    lines
        .iter()
        .find(|l| l.ticket.as_deref() == Some(ticket) && l.text.contains(needle))
        .map(|l| l.at)
}

fn stage_mark(stage: &str) -> String {
    format!("stage=\"{stage}\"")
}

fn path_row(
    stack: &Stack,
    serve: &ServeProcess,
    job: &Job,
    t0: SystemTime,
    accepted: SystemTime,
) -> PathRow {
    let lines = log_lines(serve);
    let key = job.ticket.as_str();
    let at = |needle: &str| logged(&lines, key, needle).map_or(f64::NAN, |t| ms(t0, t));
    let model: Vec<_> = stack
        .model
        .requests()
        .into_iter()
        .filter(|r| r.at >= t0)
        .collect();
    let github = stack.github.requests();
    let after = |reqs: &[support::RecordedRequest],
                 keep: &dyn Fn(&support::RecordedRequest) -> bool| {
        reqs.iter()
            .filter(|r| r.at >= t0 && keep(r))
            .map(|r| ms(t0, r.at))
            .next()
            .unwrap_or(f64::NAN)
    };
    let tools = tool_calls(&stack.data_dir().join("jobs").join(&job.id));
    let mut overheads = Vec::new();
    for pair in model.windows(2) {
        let Some(left) = pair[0].answered else {
            continue;
        };
        let arrived = pair[1].at;
        let tool_ms: f64 = tools
            .iter()
            .filter(|(start, _)| *start >= left && *start <= arrived)
            .map(|(_, d)| *d)
            .sum();
        overheads.push(ms(left, arrived) - tool_ms);
    }
    let comment = stack
        .jira
        .requests()
        .iter()
        .filter(|r| r.at >= t0 && r.method == "POST" && r.path.ends_with("/comment"))
        .map(|r| ms(t0, r.at))
        .fold(f64::NAN, f64::max);
    PathRow {
        accepted: ms(t0, accepted),
        claimed: at("job claimed"),
        fetched: at(&stage_mark("check")),
        workspace: at(&stage_mark("agent")),
        first_model: model.first().map_or(f64::NAN, |r| ms(t0, r.at)),
        overheads,
        last_answer: model
            .last()
            .and_then(|r| r.answered)
            .map_or(f64::NAN, |t| ms(t0, t)),
        push: after(&github, &|r| {
            r.method == "POST" && r.path.ends_with("git-receive-pack")
        }),
        pr: after(&github, &|r| {
            r.method == "POST" && r.path.ends_with("/pulls")
        }),
        comment,
        tool_calls: tools.len(),
    }
}

/// Every tool call of the job's bundle: when it started and how long it ran (ms, as the receipt rounds it down).
fn tool_calls(job_dir: &Path) -> Vec<(SystemTime, f64)> {
    let bytes = std::fs::read(job_dir.join("bundle.jsonl")).unwrap_or_default();
    drafter::proof::bundle::read_statements(&bytes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, p)| match p {
            Predicate::ToolCall(t) => {
                let start: SystemTime = chrono::DateTime::parse_from_rfc3339(&t.started_at)
                    .ok()?
                    .into();
                Some((start, t.duration_ms as f64))
            }
            _ => None,
        })
        .collect()
}

/// Nearest-rank percentile of the finite values; NaN when there are none.
fn pct(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn row(name: &str, values: &[f64]) {
    let n = values.iter().filter(|x| x.is_finite()).count();
    println!(
        "| {name} | {n} | {:.2} | {:.2} |",
        pct(values, 50.0),
        pct(values, 99.0)
    );
}

fn print_path(title: &str, rows: &[PathRow]) {
    let col = |f: &dyn Fn(&PathRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    println!("\n### {title}\n");
    println!("| stage | n | p50 ms | p99 ms |\n|---|---:|---:|---:|");
    row("webhook sent -> 2xx", &col(&|r| r.accepted));
    row("2xx -> claimed", &col(&|r| r.claimed - r.accepted));
    row(
        "claimed -> ticket fetched",
        &col(&|r| r.fetched - r.claimed),
    );
    row(
        "ticket fetched -> workspace ready (checks, clone + sandbox)",
        &col(&|r| r.workspace - r.fetched),
    );
    row(
        "workspace ready -> first model request",
        &col(&|r| r.first_model - r.workspace),
    );
    row(
        "**trigger accepted -> first model request**",
        &col(&|r| r.first_model - r.accepted),
    );
    let overheads: Vec<f64> = rows.iter().flat_map(|r| r.overheads.clone()).collect();
    row(
        "runner overhead per model turn (tool time excluded)",
        &overheads,
    );
    row(
        "first model request -> last model answer",
        &col(&|r| r.last_answer - r.first_model),
    );
    row(
        "last model answer -> push arrives",
        &col(&|r| r.push - r.last_answer),
    );
    row("push -> PR request arrives", &col(&|r| r.pr - r.push));
    row("PR -> ticket comment arrives", &col(&|r| r.comment - r.pr));
    row(
        "**trigger accepted -> ticket comment (draft PR reported)**",
        &col(&|r| r.comment - r.accepted),
    );
    let calls: Vec<f64> = rows.iter().map(|r| r.tool_calls as f64).collect();
    println!("\n(tool calls per job: p50 {:.0})", pct(&calls, 50.0));
}

/// `VmRSS`, `VmHWM` and `RssAnon` (the heap and stacks, without the mapped binary) of a process, in MiB.
fn rss(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("RssAnon:"))
}

/// The worker's RSS idle, then with 1, 4 and 16 jobs held in their model loop by a slow model.
async fn memory() {
    let levels = [1usize, 4, 16];
    let stack = stack(16, 16, 0, support::harness::demo_script(), 12).await;
    let description = support::harness::demo_ticket()["description"].clone();
    let total: usize = levels.iter().sum();
    for i in 0..total {
        stack.jira.add_issue(
            &format!("DEMO-{}", 500 + i),
            "Greeting should end with an exclamation mark",
            description.clone(),
            &[],
        );
    }
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let pid = serve.pid();
    let queue = stack.queue().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss(pid);
    let client = reqwest::Client::new();
    let mut out = vec![("idle, after start-up".to_string(), idle, f64::NAN)];
    let mut next = 0;
    for n in levels {
        // Each model answer waits 20 s: a job that reached its model loop stays in it while the others arrive.
        stack.model.set_delay(Duration::from_secs(20));
        let t0 = SystemTime::now();
        let keys: Vec<String> = (next..next + n)
            .map(|i| format!("DEMO-{}", 500 + i))
            .collect();
        next += n;
        for (i, key) in keys.iter().enumerate() {
            serve
                .webhook(
                    &client,
                    &assignment_webhook(key, 80_000 + (next + i) as u64),
                )
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let in_loop = stack.model.requests().iter().filter(|r| r.at >= t0).count();
            if in_loop >= n || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = rss(pid);
        out.push((
            format!("{n} concurrent job(s) in the model loop"),
            held,
            (held.0 - idle.0) / n as f64,
        ));
        stack.model.set_delay(Duration::ZERO);
        for key in &keys {
            wait_finished(queue.as_ref(), key, Duration::from_secs(600)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        out.push((format!("idle, after the {n}-job round"), rss(pid), f64::NAN));
    }
    let _ = serve.stop().await;
    println!("\n### worker memory (`drafter serve`, containers excluded)\n");
    println!(
        "| state | VmRSS MiB | RssAnon MiB | VmHWM MiB | (RSS - idle) / jobs, MiB |\n|---|---:|---:|---:|---:|"
    );
    for (name, (r, h, anon), per) in out {
        let per = if per.is_finite() {
            format!("{per:.2}")
        } else {
            String::new()
        };
        println!("| {name} | {r:.1} | {anon:.1} | {h:.1} | {per} |");
    }
}

/// The burst of `tickets` webhooks the CI test sends (`serve::webhook_burst_makes_exactly_one_job_per_ticket`), its
/// settings (6 jobs at once, 4 per project) and two projects; jobs/s and time per stage from the worker's log.
async fn burst(tickets: usize) {
    let stack = stack(6, 4, 0, support::harness::demo_script(), 12).await;
    let keys = stack.burst_tickets(tickets);
    let serve = ServeProcess::start(&stack, Path::new(BIN)).await;
    let queue = stack.queue().await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    futures_util::future::join_all((0..8).map(|lane| {
        let (client, keys) = (client.clone(), keys.clone());
        let serve = &serve;
        async move {
            for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 8 == lane) {
                let status = serve
                    .webhook(&client, &assignment_webhook(key, 50_000 + i as u64))
                    .await;
                assert_eq!(status, 202, "{key}");
            }
        }
    }))
    .await;
    let accepted = started.elapsed();
    let jobs = wait_all_finished(queue.as_ref(), tickets, Duration::from_secs(6 * 3600)).await;
    let elapsed = started.elapsed();
    let lines = log_lines(&serve);
    let _ = serve.stop().await;
    let succeeded = jobs
        .iter()
        .filter(|j| j.state == drafter::queue::JobState::Succeeded)
        .count();

    // Per ticket, each stage lasts until the next stage (or the job's end) is logged.
    let marks = [
        "job claimed",
        "stage=\"fetch\"",
        "stage=\"check\"",
        "stage=\"clone\"",
        "stage=\"sandbox\"",
        "stage=\"agent\"",
        "stage=\"push\"",
        "stage=\"pr\"",
        "stage=\"report\"",
        "job succeeded",
    ];
    let mut per_ticket: BTreeMap<&str, Vec<(usize, SystemTime)>> = BTreeMap::new();
    for l in &lines {
        if let (Some(t), Some(m)) = (&l.ticket, marks.iter().position(|m| l.text.contains(m))) {
            if let Some(key) = keys.iter().find(|k| *k == t) {
                per_ticket.entry(key.as_str()).or_default().push((m, l.at));
            }
        }
    }
    let mut stages: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut queued = Vec::new();
    for (key, mut seen) in per_ticket {
        seen.sort_by_key(|(m, at)| (*at, *m));
        for w in seen.windows(2) {
            stages.entry(w[0].0).or_default().push(ms(w[0].1, w[1].1));
        }
        if let (Some(job), Some((0, claimed))) =
            (jobs.iter().find(|j| j.ticket == key), seen.first())
        {
            queued.push(ms(SystemTime::from(job.created_at), *claimed));
        }
    }
    println!("\n### burst: {tickets} webhooks, 6 jobs at once (4 per project)\n");
    println!("| measure | value |\n|---|---:|");
    println!(
        "| webhooks accepted (8 senders) | {:.1} s ({:.0}/s) |",
        accepted.as_secs_f64(),
        tickets as f64 / accepted.as_secs_f64()
    );
    println!("| all jobs finished | {:.1} s |", elapsed.as_secs_f64());
    println!(
        "| **jobs/s** | **{:.2}** |",
        tickets as f64 / elapsed.as_secs_f64()
    );
    println!("| succeeded | {succeeded} of {} |", jobs.len());
    println!("\n| stage (from the worker's log) | n | p50 ms | p99 ms |\n|---|---:|---:|---:|");
    row("queued (job created -> claimed)", &queued);
    for (m, v) in stages {
        let name = match m {
            0 => "claimed -> fetch",
            _ => marks[m].trim_start_matches("stage=").trim_matches('"'),
        };
        row(name, &v);
    }
}
