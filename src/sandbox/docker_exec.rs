//! The fallback transport: every tool call is a `docker exec` (or, for reads, an archive download).
//!
//! Slower than `drafter-sandboxd` (a round trip through the daemon, containerd and a fresh runc per call) and weaker:
//! processes started by `docker exec` are not bounded by the container's pids limit under runc, and the Docker API
//! cannot kill an exec, so each command runs as `timeout -k <grace> <secs> bash -c ...` inside the container (which
//! kills its process group), followed by `kill -9 -1` as the agent (every other uid-1000 process, detached ones
//! too), with a host-side backstop that does the same when the exec outlives its timeout. Unlike the executor it
//! does not check the workspace's size while a command runs (only after tool calls), and it does not confirm that
//! no agent process survived. Chosen with
//! `sandbox.transport = "docker-exec"`, e.g. for an image that cannot run the executor.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{
    docker_err, io_err, shell_quote, status_code, workspace_path, ExecLimits, ExecOutput, Executor,
    SandboxError, AGENT_UID, WORKSPACE,
};
use crate::sandboxd::proto::{Limit, OutputCap};

/// Slack over `max_bytes` that [`DockerExec::read_file`] accepts for tar headers and padding.
const TAR_OVERHEAD: usize = 64 * 1024;
/// `timeout -k`: seconds between the polite TERM and the KILL inside the container.
const KILL_AFTER_SECS: u64 = 2;
/// How much longer than its timeout the host waits for a command before giving up on it.
const EXEC_GRACE: Duration = Duration::from_secs(KILL_AFTER_SECS + 5);

/// An exec of `cmd` as the agent in `/workspace`, output attached, stdin only when there is some to feed.
fn agent_exec(cmd: Vec<String>, stdin: bool) -> CreateExecOptions<String> {
    CreateExecOptions {
        cmd: Some(cmd),
        attach_stdin: Some(stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        user: Some(format!("{AGENT_UID}:{AGENT_UID}")),
        working_dir: Some(WORKSPACE.to_string()),
        privileged: Some(false),
        ..Default::default()
    }
}

/// Tool calls as `docker exec`s into a running container.
pub struct DockerExec {
    pub(super) docker: Docker,
    pub(super) id: String,
    pub(super) limits: ExecLimits,
}

#[async_trait::async_trait]
impl Executor for DockerExec {
    fn name(&self) -> &'static str {
        "docker-exec"
    }

    async fn exec(
        &self,
        argv: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        // `timeout 0` would mean "no timeout": keep a floor.
        let timeout = timeout.max(Duration::from_millis(100));
        // After the command, however it ended, the wrapper kills every other process of the agent's uid (`kill -1`
        // spares only the caller): nothing the command detached outlives it.
        let mut cmd = vec![
            "bash".to_string(),
            "-c".to_string(),
            r#"timeout "$@"; rc=$?; kill -9 -1 2>/dev/null; exit $rc"#.to_string(),
            "drafter-exec".to_string(),
            "-k".to_string(),
            format!("{KILL_AFTER_SECS}s"),
            format!("{:.3}s", timeout.as_secs_f64()),
        ];
        cmd.extend(argv);
        let started = Instant::now();
        let stdin = (!stdin.is_empty()).then_some(stdin.as_slice());
        let mut out = self.run(cmd, stdin, timeout + EXEC_GRACE).await?;
        // 124: timeout's TERM worked; 137: it had to KILL. Either only counts once the time is actually up, so a
        // command that itself exits 124 (or is OOM-killed early) is not mistaken for a timeout.
        if matches!(out.exit_code, Some(124) | Some(137)) && started.elapsed() >= timeout {
            out.stopped_by = Some(Limit::Timeout);
        }
        out.timed_out = out.stopped_by == Some(Limit::Timeout);
        Ok(out)
    }

    async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError> {
        let dir = if rel == "." {
            WORKSPACE.to_string()
        } else {
            workspace_path(rel)?
        };
        let cmd = format!(
            "test -d {dir} || {{ echo 'not a directory' >&2; exit 3; }}; find {dir} -mindepth 1 -maxdepth {max_depth} -not -path '*/.git' -not -path '*/.git/*' -printf '%y %P\\n' | sort -k2 | head -n {max}",
            dir = shell_quote(&dir),
            max = super::LIST_MAX_ENTRIES
        );
        let out = self.shell(&cmd).await?;
        if out.exit_code == Some(3) {
            return Err(SandboxError::Tool(format!("`{rel}` is not a directory")));
        }
        Ok(out.output)
    }

    async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError> {
        let cmd = format!(
            "grep -rnIE --exclude-dir=.git -e {} -- {} | head -n {}",
            shell_quote(pattern),
            shell_quote(rel),
            super::SEARCH_MAX_MATCHES
        );
        Ok(self.shell(&cmd).await?.output)
    }

    /// The larger of the blocks in use and the apparent size with every hard link counted (what the host would
    /// write), as the executor counts.
    async fn disk_usage(&self) -> Result<u64, SandboxError> {
        let out = self
            .shell("du -s -B1 /workspace 2>/dev/null | cut -f1; du -sl -b /workspace 2>/dev/null | cut -f1")
            .await?;
        Ok(out
            .output
            .split_whitespace()
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0))
    }

    /// Reads `/workspace/<rel>`. Errors if it is missing, not a regular file, or larger than `max_bytes`.
    async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        let path = workspace_path(rel)?;
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path(&path)
            .build();
        let mut stream = self.docker.download_from_container(&self.id, Some(opts));
        let limit = max_bytes.saturating_add(TAR_OVERHEAD);
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if status_code(&e) == Some(404) => {
                    return Err(SandboxError::NotFound(rel.to_string()))
                }
                Err(e) => return Err(docker_err("read file")(e)),
            };
            if buf.len() + chunk.len() > limit {
                return Err(SandboxError::TooLarge {
                    path: rel.to_string(),
                    max_bytes,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        let mut archive = tar::Archive::new(io::Cursor::new(buf));
        let mut entries = archive
            .entries()
            .map_err(io_err(format!("reading archive of {rel}")))?;
        let mut entry = match entries.next() {
            Some(e) => e.map_err(io_err(format!("reading archive of {rel}")))?,
            None => return Err(SandboxError::NotFound(rel.to_string())),
        };
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(SandboxError::NotRegularFile(rel.to_string()));
        }
        if entry.size() > max_bytes as u64 {
            return Err(SandboxError::TooLarge {
                path: rel.to_string(),
                max_bytes,
            });
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut out)
            .map_err(io_err(format!("reading archive of {rel}")))?;
        Ok(out)
    }

    /// Writes `/workspace/<rel>` as uid 1000 (through an exec, so permissions are exactly the agent's), creating
    /// parent directories.
    async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let path = workspace_path(rel)?;
        let cmd = vec![
            "bash".to_string(),
            "-c".to_string(),
            r#"set -e; mkdir -p -- "$(dirname -- "$1")"; cat > "$1""#.to_string(),
            "write_file".to_string(),
            path,
        ];
        let timeout = Duration::from_secs(60) + Duration::from_millis(contents.len() as u64 / 1000);
        let out = self.run(cmd, Some(contents), timeout).await?;
        match out.exit_code {
            Some(0) => Ok(()),
            code => Err(SandboxError::Exec(format!(
                "writing `{rel}` failed (exit {code:?}): {}",
                out.output.trim()
            ))),
        }
    }
}

impl DockerExec {
    /// Runs `argv` and counts every output byte received, keeping none (for `drafter bench`: the transfer itself).
    pub async fn exec_raw_len(&self, argv: &[&str]) -> Result<usize, SandboxError> {
        let opts = agent_exec(argv.iter().map(|s| s.to_string()).collect(), false);
        let exec = self
            .docker
            .create_exec(&self.id, opts)
            .await
            .map_err(docker_err("create exec"))?;
        let mut n = 0;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(docker_err("start exec"))?
        {
            while let Some(item) = output.next().await {
                if let LogOutput::StdOut { message } = item.map_err(docker_err("exec output"))? {
                    n += message.len();
                }
            }
        }
        Ok(n)
    }

    /// A helper command (list, search, du) under the default timeout.
    async fn shell(&self, cmd: &str) -> Result<ExecOutput, SandboxError> {
        self.exec(
            vec!["bash".into(), "-c".into(), cmd.into()],
            Vec::new(),
            Duration::from_secs(120),
        )
        .await
    }

    /// Creates and runs one exec, feeding `stdin` if given, bounded on the host by `host_timeout`.
    async fn run(
        &self,
        cmd: Vec<String>,
        stdin: Option<&[u8]>,
        host_timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let opts = agent_exec(cmd, stdin.is_some());
        let exec = self
            .docker
            .create_exec(&self.id, opts)
            .await
            .map_err(docker_err("create exec"))?;
        let mut collector = OutputCap::new(self.limits.output_cap);
        let mut over_limit = false;

        let streamed = tokio::time::timeout(host_timeout, async {
            let started = self
                .docker
                .start_exec(&exec.id, None::<StartExecOptions>)
                .await
                .map_err(docker_err("start exec"))?;
            let StartExecResults::Attached {
                mut output,
                mut input,
            } = started
            else {
                return Err(SandboxError::Exec("exec started detached".into()));
            };
            // Feed stdin concurrently with reading, so a chatty command cannot deadlock against a full pipe.
            let feed = async {
                if let Some(data) = stdin {
                    input.write_all(data).await?;
                    input.flush().await?;
                }
                input.shutdown().await
            };
            let read = async {
                while let Some(item) = output.next().await {
                    match item.map_err(docker_err("exec output"))? {
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message } => collector.push(&message),
                        LogOutput::StdIn { .. } => {}
                    }
                    if collector.total() > self.limits.output_limit {
                        // An exec cannot be killed through the API: stop listening, then kill from inside.
                        over_limit = true;
                        break;
                    }
                }
                Ok::<(), SandboxError>(())
            };
            let (fed, read) = tokio::join!(feed, read);
            read?;
            if over_limit {
                return Ok(());
            }
            if let Err(e) = fed {
                if stdin.is_some() {
                    return Err(SandboxError::Exec(format!("writing stdin: {e}")));
                }
            }
            Ok(())
        })
        .await;

        match streamed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => {
                tracing::warn!(container = %self.id, "command outlived its timeout; killing all agent processes");
                self.kill_agent_processes().await;
                let (output, truncated) = collector.finish();
                return Ok(ExecOutput {
                    exit_code: None,
                    output,
                    truncated,
                    timed_out: true,
                    stopped_by: Some(Limit::Timeout),
                });
            }
        }
        if over_limit {
            self.kill_agent_processes().await;
            let (output, truncated) = collector.finish();
            return Ok(ExecOutput {
                exit_code: None,
                output,
                truncated,
                timed_out: false,
                stopped_by: Some(Limit::Output),
            });
        }

        let exit_code = self.exit_code(&exec.id).await?;
        let (output, truncated) = collector.finish();
        Ok(ExecOutput {
            exit_code,
            output,
            truncated,
            timed_out: false,
            stopped_by: None,
        })
    }

    /// The exit code of a finished exec. The stream can close a moment before the daemon records the exit, so poll.
    async fn exit_code(&self, exec_id: &str) -> Result<Option<i64>, SandboxError> {
        for _ in 0..40 {
            let info = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(docker_err("inspect exec"))?;
            if info.running != Some(true) {
                return Ok(info.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(None)
    }

    /// Backstop when a command outlived the host-side timeout (it disarmed the in-container `timeout`): SIGKILL every
    /// process uid 1000 may signal. The container's init and keeper run as `nobody`, which uid 1000 cannot
    /// signal, so the container survives and stays usable.
    async fn kill_agent_processes(&self) {
        let opts = CreateExecOptions {
            cmd: Some(vec!["bash".into(), "-c".into(), "kill -9 -1".into()]),
            user: Some(format!("{AGENT_UID}:{AGENT_UID}")),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let kill = async {
            let exec = self.docker.create_exec(&self.id, opts).await?;
            if let StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&exec.id, None).await?
            {
                while output.next().await.is_some() {}
            }
            Ok::<(), bollard::errors::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), kill).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(container = %self.id, error = %e, "kill exec failed"),
            Err(_) => tracing::warn!(container = %self.id, "kill exec timed out"),
        }
    }
}
