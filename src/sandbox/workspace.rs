//! The workspace as tool calls see it: file and command operations through an [`Executor`], paths checked and the
//! disk limit enforced. A [`Container`] lends one out ([`Container::workspace`]); anything else that implements
//! [`Executor`] can back one too, which is how the agent loop is tested without Docker.

use super::*;

/// Tool-call operations on a job's `/workspace`, through its executor.
#[derive(Clone, Copy)]
pub struct Workspace<'a> {
    executor: &'a dyn Executor,
    /// Bytes the workspace may use on disk.
    limit: u64,
}

impl<'a> Workspace<'a> {
    /// Operations through `executor`, on a workspace allowed `limit` bytes of disk.
    pub fn new(executor: &'a dyn Executor, limit: u64) -> Workspace<'a> {
        Workspace { executor, limit }
    }

    /// Reads `/workspace/<rel>`. Errors if it is missing, not a regular file, or larger than `max_bytes`.
    pub async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        workspace_path(rel)?;
        self.executor.read_file(rel, max_bytes).await
    }

    /// Writes `/workspace/<rel>` with exactly the agent's permissions (the file is its own), creating parent
    /// directories.
    pub async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
        workspace_path(rel)?;
        self.executor.write_file(rel, contents).await
    }

    /// Runs `bash -c command` in `/workspace` as uid 1000, stopped after `timeout` (see [`EXEC_GRACE`] for the
    /// host-side backstop), or earlier by the output limit or the memory limit. A non-zero exit is an `Ok`
    /// [`ExecOutput`]; `Err` means the exec itself failed.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        let argv = vec!["bash".to_string(), "-c".to_string(), command.to_string()];
        self.executor.exec(argv, Vec::new(), timeout).await
    }

    /// The tree under `rel` (`.` for the workspace), `max_depth` levels deep, as `<type> <path>` lines.
    pub async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError> {
        if rel != "." {
            workspace_path(rel)?;
        }
        self.executor.list(rel, max_depth).await
    }

    /// Lines matching a regular expression under `rel`, as `<path>:<line>:<text>`.
    pub async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError> {
        if rel != "." {
            workspace_path(rel)?;
        }
        self.executor.search(pattern, rel).await
    }

    /// Fails with [`SandboxError::DiskLimit`] when the workspace uses more disk than `sandbox.workspace_max_mb`:
    /// checked after every tool call that can write (the executor also checks while a command runs).
    pub async fn check_disk(&self) -> Result<u64, SandboxError> {
        let used = self.executor.disk_usage().await?;
        if used > self.limit {
            return Err(SandboxError::DiskLimit {
                used_mb: used / (1024 * 1024),
                limit_mb: self.limit / (1024 * 1024),
            });
        }
        Ok(used)
    }
}

impl<'a> From<&'a Container> for Workspace<'a> {
    fn from(c: &'a Container) -> Workspace<'a> {
        c.workspace()
    }
}
