//! `drafter bench`: measurements of this machine, printed as Markdown tables (BENCHMARKS.md records runs).
//!
//! Not timed tests: the numbers depend on the machine (and on what else it is doing), so they are printed with the
//! targets they are held to, and a person reads them. One file per part, each a subcommand of `drafter bench`:
//! - [`sandbox`] (the default): container start-up and tool-call round trips against the Docker CLI;
//! - [`queue`]: enqueue -> claim -> complete throughput of the job queue, SQLite and PostgreSQL, with every job
//!   counted afterwards (none lost, none run twice);
//! - [`clone`]: workspace-ready time of a plain clone over HTTP against one made from a warm mirror.
//!
//! Shared here: a row of latency samples ([`Row`]) and the error type.

pub mod clone;
pub mod queue;
pub mod sandbox;

use std::time::Duration;

use crate::queue::QueueError;
use crate::sandbox::SandboxError;

/// One measured row: latency samples summarised.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile (for few samples: the maximum).
    pub p99: Duration,
}

impl Row {
    /// Summarises `samples` (nearest-rank percentiles).
    pub fn new(name: impl Into<String>, mut samples: Vec<Duration>) -> Row {
        samples.sort();
        let n = samples.len();
        let at = |q: f64| {
            let i = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
            samples.get(i).copied().unwrap_or_default()
        };
        Row {
            name: name.into(),
            n,
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Milliseconds with two decimals, as the tables show them.
fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A CLI command failed.
    #[error("`{command}` failed: {detail}")]
    Cli {
        /// The command line.
        command: String,
        /// What went wrong.
        detail: String,
    },
    /// A queue bench worker process failed, or said something that is not a report.
    #[error("queue bench worker {worker}: {detail}")]
    Worker {
        /// Which worker (0-based).
        worker: usize,
        /// What went wrong.
        detail: String,
    },
    /// The run could not be set up as asked (e.g. the queue already holds jobs).
    #[error("{0}")]
    Setup(String),
    /// Preparing the sandbox bench's sample workspace failed.
    #[error("preparing the sample workspace: {0}")]
    Workspace(std::io::Error),
    /// Local files or processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_rows_use_nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let r = Row::new("r", (1..=100).rev().map(ms).collect());
        assert_eq!((r.n, r.p50, r.p99), (100, ms(50), ms(99)));
        // Few samples: p99 is the maximum.
        let r = Row::new("r", vec![ms(3), ms(1), ms(2)]);
        assert_eq!((r.p50, r.p99), (ms(2), ms(3)));
        let r = Row::new("empty", Vec::new());
        assert_eq!((r.n, r.p50, r.p99), (0, Duration::ZERO, Duration::ZERO));
    }
}
