//! `drafter bench queue`: how many jobs per second go enqueue -> claim -> complete through the job queue, and how
//! long a claim takes, with jobs that do no work.
//!
//! Everything goes through the [`Queue`] traits, as `drafter serve` uses them: producers call [`Intake::enqueue`]
//! while claim loops call [`Leases::claim`] and then [`Leases::complete`] with the claim's lease token. The clock
//! starts when the claim loops are ready and the producers start, and stops at the last completion.
//! - **SQLite**: one process, as on one host: `workers` claim loops and as many producers, as tasks sharing one
//!   queue handle (its connection pool), on a fresh file.
//! - **PostgreSQL**: `workers` worker *processes* (the same binary, `drafter bench queue-worker`, started by the
//!   caller's `launch`), each one claim loop with its own connection pool, and the producers in this process. The
//!   database must hold no jobs: the count below has to be exact, and the bench's jobs must not reach a real worker.
//!
//! Afterwards every job is counted: each one the producers created must be `succeeded`, claimed once
//! (`attempts == 1`) and reported completed by exactly one claim loop; a job is *lost* otherwise, and *doubled* if it
//! was claimed or reported more than once (or reported without having been enqueued by this run).
//!
//! A worker process reads the queue's location as the first line of its stdin (a URL's password never appears in a
//! process listing), says `ready` once connected, starts on `go`, stops claiming once told `done` (or at the end of
//! its input) and a claim finds nothing, and prints its [`Tally`] as one JSON line.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{ms, BenchError, Row};
use crate::queue::{Claim, Enqueued, Job, JobFilter, JobState, NewJob, Queue, Trigger};

/// The targets, in jobs per second end to end.
pub const SQLITE_TARGET: f64 = 5_000.0;
/// See [`SQLITE_TARGET`]; with 4 worker processes.
pub const POSTGRES_TARGET: f64 = 2_000.0;

/// A lease long enough that no job of the run is reclaimed (none does any work, so none heartbeats).
const LEASE: Duration = Duration::from_secs(300);

/// How long a claim loop waits after a claim found nothing while producers are still at work (`drafter serve`
/// waits `serve.idle_poll_ms`; a short wait keeps the loops from hammering the database while they are ahead).
const IDLE: Duration = Duration::from_millis(1);

/// How long a worker process may take to connect.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Jobs enqueued, claimed and completed.
    pub jobs: usize,
    /// Claim loops (SQLite: tasks in this process; PostgreSQL: worker processes); as many producers.
    pub workers: usize,
}

/// What one claim loop did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Its worker id (the lease owner).
    pub worker: String,
    /// The jobs it completed, in order.
    pub completed: Vec<String>,
    /// How long each claim that got a job took, in microseconds.
    pub claim_us: Vec<u64>,
    /// Claims that found nothing (the loop was ahead of the producers).
    pub empty_claims: u64,
    /// When it completed its last job (Unix microseconds; 0 if none).
    pub last_done_us: i64,
}

/// One backend's measured row.
#[derive(Debug, Clone)]
pub struct QueueRow {
    /// The backend and how it ran.
    pub setup: String,
    /// Jobs enqueued.
    pub jobs: usize,
    /// Enqueues per second (while the claim loops ran).
    pub enqueued_per_s: f64,
    /// Jobs enqueued, claimed and completed per second, from the start to the last completion.
    pub per_s: f64,
    /// Latency of the claims that got a job.
    pub claim: Row,
    /// Claims that found nothing.
    pub empty_claims: u64,
    /// The count afterwards.
    pub count: Count,
    /// The target for [`QueueRow::per_s`].
    pub target: f64,
}

impl QueueRow {
    /// Whether the row meets its target with every job accounted for.
    pub fn met(&self) -> bool {
        self.per_s >= self.target && self.count.exact()
    }
}

/// The rows of one `drafter bench queue` run.
#[derive(Debug, Clone, Default)]
pub struct QueueReport {
    /// In the order run.
    pub rows: Vec<QueueRow>,
}

impl QueueReport {
    /// The table as printed (Markdown, for BENCHMARKS.md as is).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "| queue | jobs | enqueued/s | end to end, jobs/s | claim p50 ms | claim p99 ms | empty claims \
             | lost | doubled | target jobs/s | met |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | >= {:.0} | {} |\n",
                r.setup,
                r.jobs,
                r.enqueued_per_s,
                r.per_s,
                ms(r.claim.p50),
                ms(r.claim.p99),
                r.empty_claims,
                r.count.lost,
                r.count.doubled,
                r.target,
                if r.met() { "yes" } else { "no" }
            ));
        }
        out
    }
}

/// Every job of a run, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Enqueued but not succeeded, or succeeded without any claim loop reporting it.
    pub lost: usize,
    /// Claimed more than once, reported completed more than once, or reported without having been enqueued.
    pub doubled: usize,
}

impl Count {
    /// Every job ran exactly once.
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.doubled == 0
    }
}

/// Counts the run: `created` are the ids the producers got back, `jobs` every job in the queue afterwards,
/// `tallies` what the claim loops reported.
pub fn count(created: &[String], jobs: &[Job], tallies: &[Tally]) -> Count {
    let mut reported: HashMap<&str, usize> = HashMap::new();
    for id in tallies.iter().flat_map(|t| &t.completed) {
        *reported.entry(id.as_str()).or_default() += 1;
    }
    let stored: HashMap<&str, &Job> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut c = Count::default();
    for id in created {
        let times = reported.remove(id.as_str()).unwrap_or(0);
        match stored.get(id.as_str()) {
            Some(j) if j.state == JobState::Succeeded && times > 0 => {
                if times > 1 || j.attempts != 1 {
                    c.doubled += 1;
                }
            }
            _ => c.lost += 1,
        }
    }
    // Whatever is left was completed without this run having enqueued it.
    c.doubled += reported.values().sum::<usize>();
    c
}

/// The SQLite row: a fresh queue file in `dir` (the system's temporary directory if `None`; put it on the disk the
/// data directory lives on, since a commit waits for the disk), one process.
pub async fn sqlite(dir: Option<&Path>, opts: &QueueOptions) -> Result<QueueRow, BenchError> {
    let tmp = match dir {
        Some(d) => tempfile::Builder::new()
            .prefix("drafter-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("drafter-bench-")
            .tempdir()?,
    };
    let path = tmp.path().join("queue.sqlite");
    let queue = crate::queue::open(&path.to_string_lossy()).await?;
    let done = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..opts.workers.max(1))
        .map(|i| {
            let (queue, done) = (queue.clone(), done.clone());
            let worker = format!("bench-{}-{i}", std::process::id());
            tokio::spawn(async move { claim_loop(queue.as_ref(), &worker, &done).await })
        })
        .collect();
    let start_us = Utc::now().timestamp_micros();
    let produced = produce(&queue, opts).await;
    done.store(true, Ordering::Release);
    let mut tallies = Vec::new();
    for l in loops {
        let tally = l
            .await
            .map_err(|e| BenchError::Setup(format!("a claim loop panicked: {e}")))??;
        tallies.push(tally);
    }
    let run = Run {
        start_us,
        produced,
        tallies,
    };
    finish(queue.as_ref(), Backend::Sqlite, opts, run).await
}

/// The PostgreSQL row: `opts.workers` processes made by `launch` (each runs [`worker`] on its stdin and stdout),
/// against the empty database at `url`.
pub async fn postgres(
    url: &str,
    opts: &QueueOptions,
    launch: impl Fn() -> std::process::Command,
) -> Result<QueueRow, BenchError> {
    let queue = crate::queue::open(url).await?;
    let present = queue
        .list(&JobFilter {
            limit: 1,
            ..JobFilter::default()
        })
        .await?;
    if !present.is_empty() {
        return Err(BenchError::Setup(format!(
            "the queue at {} already holds jobs: give an empty scratch database (the bench adds {} jobs to it)",
            crate::config::redact_url(url),
            opts.jobs
        )));
    }
    let mut workers = Vec::new();
    for i in 0..opts.workers.max(1) {
        let mut cmd = tokio::process::Command::from(launch());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| BenchError::Worker {
            worker: i,
            detail: format!("starting: {e}"),
        })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Worker {
                worker: i,
                detail: "no pipes".into(),
            });
        };
        stdin.write_all(format!("{url}\n").as_bytes()).await?;
        stdin.flush().await?;
        workers.push((child, stdin, BufReader::new(stdout).lines()));
    }
    for (i, (_, _, out)) in workers.iter_mut().enumerate() {
        let line = tokio::time::timeout(READY_TIMEOUT, out.next_line()).await;
        if !matches!(&line, Ok(Ok(Some(l))) if l == "ready") {
            return Err(BenchError::Worker {
                worker: i,
                detail: format!("did not get ready: {line:?}"),
            });
        }
    }
    // Producers' connections are opened before the clock starts.
    for _ in 0..opts.workers.max(1) {
        queue.ping().await?;
    }
    let start_us = Utc::now().timestamp_micros();
    for (_, stdin, _) in workers.iter_mut() {
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let produced = produce(&queue, opts).await;
    let mut tallies = Vec::new();
    for (i, (mut child, mut stdin, mut out)) in workers.into_iter().enumerate() {
        // A worker that already stopped (it failed) has closed its end: its exit status says why.
        let _ = stdin.write_all(b"done\n").await;
        drop(stdin);
        let mut last = None;
        while let Some(line) = out.next_line().await? {
            last = Some(line);
        }
        let status = child.wait().await?;
        let tally = match (status.success(), last) {
            (true, Some(line)) => {
                serde_json::from_str::<Tally>(&line).map_err(|e| BenchError::Worker {
                    worker: i,
                    detail: format!("unreadable report: {e}"),
                })?
            }
            (_, _) => {
                return Err(BenchError::Worker {
                    worker: i,
                    detail: format!("exited with {status} without a report"),
                })
            }
        };
        tallies.push(tally);
    }
    let run = Run {
        start_us,
        produced,
        tallies,
    };
    finish(queue.as_ref(), Backend::Postgres, opts, run).await
}

/// `drafter bench queue-worker`: one claim loop in this process, driven over `input` and reporting on `output` (see
/// the module docs).
pub async fn worker<R, W>(input: R, mut output: W) -> Result<(), BenchError>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    let location = lines
        .next_line()
        .await?
        .ok_or_else(|| BenchError::Setup("no queue location on stdin".into()))?;
    let queue = crate::queue::open(location.trim()).await?;
    // Opens the pool's connection now, not in the first timed claim.
    queue.ping().await?;
    output.write_all(b"ready\n").await?;
    output.flush().await?;
    match lines.next_line().await? {
        Some(l) if l == "go" => {}
        other => return Err(BenchError::Setup(format!("expected `go`, got {other:?}"))),
    }
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        tokio::spawn(async move {
            // `done`, or the end of the input (the parent went away): stop once the queue is empty.
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "done" {
                    break;
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let worker = format!("bench-{}", std::process::id());
    let tally = claim_loop(queue.as_ref(), &worker, &done).await;
    watch.abort();
    let report = serde_json::to_string(&tally?)
        .map_err(|e| BenchError::Setup(format!("encoding the report: {e}")))?;
    output.write_all(format!("{report}\n").as_bytes()).await?;
    output.flush().await?;
    Ok(())
}

/// Claims and completes until `done` is set and a claim then finds nothing.
async fn claim_loop(
    queue: &dyn Queue,
    worker: &str,
    done: &AtomicBool,
) -> Result<Tally, BenchError> {
    let claim = Claim {
        worker: worker.to_string(),
        lease: LEASE,
        exclude_projects: Vec::new(),
    };
    let mut tally = Tally {
        worker: worker.to_string(),
        ..Tally::default()
    };
    loop {
        // Read before claiming: every enqueue has committed once `done` is set, so a claim that starts after it
        // and finds nothing means the queue is drained (or the rest is being claimed by other loops).
        let finished = done.load(Ordering::Acquire);
        let t = Instant::now();
        let Some(job) = queue.claim(&claim).await? else {
            if finished {
                return Ok(tally);
            }
            tally.empty_claims += 1;
            tokio::time::sleep(IDLE).await;
            continue;
        };
        tally
            .claim_us
            .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        let token = job
            .lease_token()
            .ok_or_else(|| BenchError::Setup(format!("claimed job {} has no lease", job.id)))?;
        queue
            .complete(&job.id, &token, serde_json::json!({ "bench": worker }))
            .await?;
        tally.last_done_us = Utc::now().timestamp_micros();
        tally.completed.push(job.id);
    }
}

/// Enqueues `opts.jobs` jobs (tickets `BENCH-1`...) from `opts.workers` tasks; returns the created ids and how long
/// it took.
async fn produce(
    queue: &Arc<dyn Queue>,
    opts: &QueueOptions,
) -> Result<(Vec<String>, Duration), BenchError> {
    let run = format!("{}-{}", std::process::id(), Utc::now().timestamp_micros());
    let producers = opts.workers.max(1);
    let t = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let (queue, run, jobs) = (queue.clone(), run.clone(), opts.jobs);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (p..jobs).step_by(producers) {
                    let job = NewJob {
                        ticket: format!("BENCH-{}", i + 1),
                        project: "BENCH".into(),
                        trigger: Trigger {
                            delivery: format!("bench:{run}:{i}"),
                            source: "bench".into(),
                            triggered_by: None,
                            text: None,
                            at: Utc::now(),
                            review: None,
                        },
                        max_attempts: 3,
                    };
                    match queue.enqueue(job).await? {
                        Enqueued::Created(id) => ids.push(id),
                        other => {
                            return Err(BenchError::Setup(format!(
                                "BENCH-{} was not created as a new job: {other:?}",
                                i + 1
                            )))
                        }
                    }
                }
                Ok(ids)
            })
        })
        .collect();
    let mut created = Vec::with_capacity(opts.jobs);
    for task in tasks {
        let ids = task
            .await
            .map_err(|e| BenchError::Setup(format!("a producer panicked: {e}")))??;
        created.extend(ids);
    }
    Ok((created, t.elapsed()))
}

/// Which row.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The row's first cell, for `n` claim loops.
    fn setup(self, n: usize) -> String {
        match self {
            Backend::Sqlite => format!("SQLite, 1 process: {n} claim loops, {n} producers"),
            Backend::Postgres => format!("PostgreSQL: {n} worker processes, {n} producers"),
        }
    }

    fn target(self) -> f64 {
        match self {
            Backend::Sqlite => SQLITE_TARGET,
            Backend::Postgres => POSTGRES_TARGET,
        }
    }
}

/// What a run measured, before the count.
struct Run {
    /// When the producers started (Unix microseconds).
    start_us: i64,
    /// The producers' job ids and how long they took.
    produced: Result<(Vec<String>, Duration), BenchError>,
    /// What each claim loop reported.
    tallies: Vec<Tally>,
}

/// Counts the run and makes its row.
async fn finish(
    queue: &dyn Queue,
    backend: Backend,
    opts: &QueueOptions,
    run: Run,
) -> Result<QueueRow, BenchError> {
    let (created, enqueue_time) = run.produced?;
    let (start_us, tallies) = (run.start_us, run.tallies);
    // One more than expected, so a stray job shows.
    let limit = u32::try_from(opts.jobs.saturating_add(1)).unwrap_or(u32::MAX);
    let jobs = queue
        .list(&JobFilter {
            limit,
            ..JobFilter::default()
        })
        .await?;
    let count = count(&created, &jobs, &tallies);
    let end_us = tallies
        .iter()
        .map(|t| t.last_done_us)
        .max()
        .unwrap_or(start_us);
    let secs = |d: f64| if d > 0.0 { d } else { f64::MIN_POSITIVE };
    let elapsed = secs((end_us - start_us) as f64 / 1e6);
    let claim = Row::new(
        "claim",
        tallies
            .iter()
            .flat_map(|t| &t.claim_us)
            .map(|us| Duration::from_micros(*us))
            .collect(),
    );
    Ok(QueueRow {
        setup: backend.setup(opts.workers.max(1)),
        jobs: opts.jobs,
        enqueued_per_s: created.len() as f64 / secs(enqueue_time.as_secs_f64()),
        per_s: (created.len() as f64 / elapsed),
        claim,
        empty_claims: tallies.iter().map(|t| t.empty_claims).sum(),
        count,
        target: backend.target(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn job(id: &str, state: JobState, attempts: u32) -> Job {
        Job {
            id: id.into(),
            ticket: "BENCH-1".into(),
            project: "BENCH".into(),
            state,
            attempts,
            max_attempts: 3,
            not_before: Utc::now(),
            lease_owner: None,
            lease_expires: None,
            lease_gen: u64::from(attempts),
            iterations: 0,
            triggers: Vec::new(),
            last_error: None,
            outcome: None,
            progress: Value::Null,
            policy_hash: None,
            approval: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn tally(ids: &[&str]) -> Tally {
        Tally {
            completed: ids.iter().map(|s| s.to_string()).collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn bench_count_finds_lost_and_doubled_jobs() {
        let created: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ok = |id| job(id, JobState::Succeeded, 1);
        let jobs = vec![ok("a"), ok("b"), ok("c")];
        assert!(count(&created, &jobs, &[tally(&["a", "c"]), tally(&["b"])]).exact());

        // Never reported, still queued, or missing: lost.
        let c = count(&created, &jobs, &[tally(&["a", "c"])]);
        assert_eq!(
            c,
            Count {
                lost: 1,
                doubled: 0
            }
        );
        let queued = vec![ok("a"), job("b", JobState::Queued, 0)];
        let c = count(&created, &queued, &[tally(&["a", "b", "c"])]);
        assert_eq!(
            c,
            Count {
                lost: 2,
                doubled: 0
            }
        );

        // Reported twice, claimed twice, or reported but never enqueued: doubled.
        let c = count(&created, &jobs, &[tally(&["a", "b", "c"]), tally(&["b"])]);
        assert_eq!(
            c,
            Count {
                lost: 0,
                doubled: 1
            }
        );
        let twice = vec![ok("a"), job("b", JobState::Succeeded, 2), ok("c")];
        let c = count(&created, &twice, &[tally(&["a", "b", "c"])]);
        assert_eq!(
            c,
            Count {
                lost: 0,
                doubled: 1
            }
        );
        let c = count(&created, &jobs, &[tally(&["a", "b", "c", "x"])]);
        assert_eq!(
            c,
            Count {
                lost: 0,
                doubled: 1
            }
        );
    }

    #[tokio::test]
    async fn bench_queue_sqlite_counts_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let opts = QueueOptions {
            jobs: 40,
            workers: 3,
        };
        let row = sqlite(Some(dir.path()), &opts).await.unwrap();
        assert_eq!(row.count, Count::default(), "{row:?}");
        assert_eq!(row.claim.n, 40);
        let table = QueueReport { rows: vec![row] }.render();
        assert!(
            table.contains("| SQLite, 1 process: 3 claim loops, 3 producers | 40 |"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn bench_queue_worker_speaks_its_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        let queue = crate::queue::open(&path.to_string_lossy()).await.unwrap();
        let opts = QueueOptions {
            jobs: 5,
            workers: 1,
        };
        let (created, _) = produce(&queue, &opts).await.unwrap();
        let input = format!("{}\ngo\ndone\n", path.display());
        let mut output = Vec::new();
        worker(std::io::Cursor::new(input.into_bytes()), &mut output)
            .await
            .unwrap();
        let text = String::from_utf8(output).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("ready"));
        let tally: Tally = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(tally.completed.len(), 5);
        let jobs = queue.list(&JobFilter::default()).await.unwrap();
        assert!(count(&created, &jobs, &[tally]).exact());
    }
}
