//! An in-memory [`Executor`]: a workspace held as a map of paths to bytes, and scripted results for commands, so
//! the agent loop runs without Docker. It answers the way `drafter-sandboxd` does (the same listing and search line
//! formats, the same errors for a missing file, a directory or a file over the limit), but runs nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use drafter::sandbox::{ExecOutput, Executor, Limit, SandboxError};

/// What one `run` gets back, and what the command does to the workspace.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// The command's result.
    pub output: ExecOutput,
    /// How long the command takes (on tokio's clock).
    pub takes: Duration,
    /// Bytes the command leaves on disk outside the files (a build cache, a log), added to the usage.
    pub fills: u64,
}

impl Scripted {
    /// A command that exits with `code` after printing `output`.
    pub fn exit(code: i64, output: &str) -> Scripted {
        Scripted {
            output: ExecOutput {
                exit_code: Some(code),
                output: output.to_string(),
                truncated: false,
                timed_out: false,
                stopped_by: None,
            },
            takes: Duration::ZERO,
            fills: 0,
        }
    }

    /// A command the executor stopped at `limit`.
    pub fn stopped(limit: Limit, output: &str) -> Scripted {
        let mut s = Scripted::exit(137, output);
        s.output.exit_code = None;
        s.output.timed_out = limit == Limit::Timeout;
        s.output.stopped_by = Some(limit);
        s
    }
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Vec<u8>>,
    script: VecDeque<Scripted>,
    commands: Vec<String>,
    writes: Vec<String>,
    filled: u64,
}

/// The fake workspace. Commands not scripted exit 0 with no output.
#[derive(Default)]
pub struct MemExecutor {
    state: Mutex<State>,
}

impl MemExecutor {
    /// A workspace holding these files (path, text).
    pub fn with_files(files: &[(&str, &str)]) -> MemExecutor {
        let exec = MemExecutor::default();
        exec.lock().files = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
            .collect();
        exec
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A failed assertion elsewhere must not hide the workspace from the test's other checks.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the result of the next command not yet scripted.
    pub fn script(&self, result: Scripted) {
        self.lock().script.push_back(result);
    }

    /// A file's text, if it exists.
    pub fn file(&self, path: &str) -> Option<String> {
        self.lock()
            .files
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Every command run (the `bash -c` argument), in order.
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    /// Every path written, in order.
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }
}

/// `a/./b/` as `a/b`; `.` for the root.
fn normal(rel: &str) -> String {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Whether `path` is `dir` or under it.
fn under(path: &str, dir: &str) -> bool {
    dir == "." || path == dir || path.starts_with(&format!("{dir}/"))
}

#[async_trait::async_trait]
impl Executor for MemExecutor {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn exec(
        &self,
        argv: Vec<String>,
        _stdin: Vec<u8>,
        _timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let scripted = {
            let mut s = self.lock();
            s.commands.push(argv.last().cloned().unwrap_or_default());
            s.script
                .pop_front()
                .unwrap_or_else(|| Scripted::exit(0, ""))
        };
        tokio::time::sleep(scripted.takes).await;
        self.lock().filled += scripted.fills;
        Ok(scripted.output)
    }

    async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        let rel = normal(rel);
        let s = self.lock();
        match s.files.get(&rel) {
            Some(b) if b.len() > max_bytes => Err(SandboxError::TooLarge {
                path: rel,
                max_bytes,
            }),
            Some(b) => Ok(b.clone()),
            None if s.files.keys().any(|p| under(p, &rel)) => {
                Err(SandboxError::NotRegularFile(rel))
            }
            None => Err(SandboxError::NotFound(rel)),
        }
    }

    async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let rel = normal(rel);
        let mut s = self.lock();
        s.writes.push(rel.clone());
        s.files.insert(rel, contents.to_vec());
        Ok(())
    }

    async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError> {
        let rel = normal(rel);
        let s = self.lock();
        let depth_of = |p: &str| {
            p.split('/').count()
                - if rel == "." {
                    0
                } else {
                    rel.split('/').count()
                }
        };
        let mut lines = std::collections::BTreeSet::new();
        for path in s.files.keys().filter(|p| under(p, &rel) && **p != rel) {
            // Every directory on the way down, then the file, as far down as allowed.
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                let dir = parts[..i].join("/");
                if under(&dir, &rel) && dir != rel && depth_of(&dir) as u32 <= max_depth {
                    lines.insert(format!("d {dir}"));
                }
            }
            if depth_of(path) as u32 <= max_depth {
                lines.insert(format!("f {path}"));
            }
        }
        Ok(lines.into_iter().map(|l| l + "\n").collect())
    }

    async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError> {
        let re = regex::Regex::new(pattern)
            .map_err(|e| SandboxError::Tool(format!("bad pattern: {e}")))?;
        let rel = normal(rel);
        let s = self.lock();
        let mut out = String::new();
        for (path, bytes) in s.files.iter().filter(|(p, _)| under(p, &rel)) {
            for (i, line) in String::from_utf8_lossy(bytes).lines().enumerate() {
                if re.is_match(line) {
                    out.push_str(&format!("{path}:{}:{line}\n", i + 1));
                }
            }
        }
        Ok(out)
    }

    async fn disk_usage(&self) -> Result<u64, SandboxError> {
        let s = self.lock();
        Ok(s.files.values().map(|b| b.len() as u64).sum::<u64>() + s.filled)
    }
}
