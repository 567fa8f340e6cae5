//! Errors of the sandbox, and which of them the model can fix by itself.

use super::*;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker daemon could not be reached or did not answer the version handshake.
    #[error(
        "cannot reach the Docker daemon (is it running, and is DOCKER_HOST right?): {}",
        crate::config::redact_url(&.0.to_string())
    )]
    Unreachable(#[source] bollard::errors::Error),
    /// The sandbox image does not exist on the daemon.
    #[error("sandbox image `{image}` not found: build it with images/sandbox/build.sh")]
    ImageMissing {
        /// The configured image name.
        image: String,
    },
    /// A Docker API call failed.
    #[error("docker {action} failed: {source}")]
    Docker {
        /// What was being done (`create container`, `exec`, ...).
        action: &'static str,
        /// The error from the Docker client.
        #[source]
        source: bollard::errors::Error,
    },
    /// A job id that cannot be part of a container name.
    #[error("invalid job id `{0}`: use 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit")]
    BadJobId(String),
    /// A workspace path that is absolute, contains `..` or NUL, or is empty.
    #[error("invalid workspace path `{path}`: {reason}")]
    BadPath {
        /// The path as given (lossy).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path does not exist in the workspace.
    #[error("`{0}` does not exist in the workspace")]
    NotFound(String),
    /// The path exists but is a directory, symlink or special file.
    #[error("`{0}` is not a regular file")]
    NotRegularFile(String),
    /// The file is larger than the caller allows.
    #[error("`{path}` is larger than {max_bytes} bytes")]
    TooLarge {
        /// The path.
        path: String,
        /// The limit.
        max_bytes: usize,
    },
    /// The archive from the container has an entry that would land outside the destination.
    #[error("refusing workspace archive entry `{entry}`: {reason}")]
    UnsafeArchive {
        /// The entry's path (lossy).
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The executor refused a tool's request for a reason the model can fix (a path that is not a directory, a
    /// pattern that does not compile, a command that could not start).
    #[error("{0}")]
    Tool(String),
    /// The workspace outgrew its disk limit: the job stops.
    #[error("the workspace uses {used_mb} MiB on disk, over its limit of {limit_mb} MiB")]
    DiskLimit {
        /// Usage found.
        used_mb: u64,
        /// The limit.
        limit_mb: u64,
    },
    /// The workspace coming back out of the container is over its budget (bytes the host would write, counting
    /// every hard link as a copy; entries; time): the job stops, with no more than the budget written.
    #[error("the workspace coming back out of the sandbox is over its limit of {limit}")]
    WorkspaceOverBudget {
        /// Which limit, with its unit (`64 MiB written`, `1000000 entries`, `68 s`).
        limit: String,
    },
    /// `sandbox.runtime` names a runtime the engine does not offer.
    #[error("sandbox.runtime = `{runtime}` is not offered by this Docker engine (it has: {offered}); see `drafter doctor`")]
    RuntimeMissing {
        /// The configured runtime.
        runtime: String,
        /// What the engine offers.
        offered: String,
    },
    /// The executor binary is not where drafter looks for it.
    #[error("the sandbox executor `{EXECUTOR_BIN}` was not found (looked in: {searched}); build it with `cargo build --bin {EXECUTOR_BIN}` and install it next to `drafter`, set sandbox.executor, or use sandbox.transport = \"docker-exec\"")]
    ExecutorMissing {
        /// Where drafter looked.
        searched: String,
    },
    /// Running a command in the container failed (not: the command failed; that is an [`ExecOutput`]).
    #[error("exec failed: {0}")]
    Exec(String),
    /// A host-side file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    /// Whether the caller (the model, through a tool) caused this and can fix it: a bad or missing path, a file of
    /// the wrong kind or size. Everything else means the sandbox itself is in trouble.
    pub fn is_model_fixable(&self) -> bool {
        matches!(
            self,
            SandboxError::BadPath { .. }
                | SandboxError::NotFound(_)
                | SandboxError::NotRegularFile(_)
                | SandboxError::TooLarge { .. }
                | SandboxError::Tool(_)
        )
    }
}

pub(super) fn docker_err(
    action: &'static str,
) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
    move |source| SandboxError::Docker { action, source }
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}
