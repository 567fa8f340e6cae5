//! One hardened Docker container per job; the workspace goes in and out as tar streams.
//!
//! # Model
//! [`Sandbox::start`] creates a container from the image built by `images/sandbox/build.sh` and keeps it running for
//! the whole job. The container has no network, a read-only root filesystem, `no-new-privileges`, memory/CPU/pids
//! limits, and an environment built here from constants: the host environment (which holds the runner's tokens) is
//! never passed through. Every command runs as uid 1000 with no capabilities.
//!
//! # Transports
//! Tool calls go through an [`Executor`]. The default, [`executor_client::DaemonClient`], talks to `drafter-sandboxd` (the
//! second binary of this crate, see [`crate::sandboxd::daemon`]) running inside the container as its main process, over the attach
//! stream ([`crate::sandboxd::proto`] documents the frames). The binary reaches the container through a read-only named volume keyed
//! by its SHA-256, filled once per binary ([`Sandbox::executor_volume`]). The fallback, [`docker_exec::DockerExec`]
//! (`sandbox.transport = "docker-exec"`), runs each call as a `docker exec` into a container that only sleeps.
//!
//! # Why the workspace is an anonymous volume, not a bind mount or a tmpfs
//! The repository travels through the Docker API as tar streams ([`Container::upload_dir`],
//! [`Container::download_workspace`]) so a remote `DOCKER_HOST` works and nothing on the host is shared with the
//! container. The daemon refuses archive uploads into a read-only root filesystem unless the target is a volume,
//! and archive uploads into a tmpfs do not work at all; so `/workspace` is an anonymous volume created with the
//! container and removed with it (`v=true`). A tmpfs would also hold the workspace in the container's memory (its
//! limit is the disk limit's concern, measured by the executor, not the memory's). With the executor, the volume is
//! mounted `nocopy`: Docker would otherwise copy the image's empty `/workspace` into it with a helper process per
//! container; the executor hands the fresh (root's) directory to the agent at start instead.
//!
//! # Why the downloaded `.git` is ignored
//! Everything the container wrote is untrusted. A `.git/` written inside it could plant hooks or config that run on
//! the host at commit time, so [`Container::download_workspace`] keeps the host's own `.git` and skips every entry
//! with a `.git` path component; it also refuses entries that would land outside the destination, and never writes
//! through a symlink.
//!
//! # Cleanup
//! [`Container::remove`] force-removes the container and its volume. If a `Container` is dropped without it (an
//! error path, a panic), its `Drop` spawns the removal on the current Tokio runtime. After a crash,
//! [`Sandbox::remove_orphans`] removes, at start-up, every drafter container whose owning runner is gone: each
//! container is labelled with the host and process id of the runner that made it ([`LABEL_OWNER_HOST`],
//! [`LABEL_OWNER_PID`]), so runners sharing a daemon never remove each other's live containers.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, Mount, MountType, MountVolumeOptions,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::{SandboxConfig, Transport};
use crate::ids::JobId;
use crate::sandboxd::egress;

mod archive;
mod cleanup;
mod container;
pub mod docker_exec;
mod doctor;
mod error;
pub mod executor_client;
mod executor_volume;
mod network;
mod spec;
pub mod warm;
mod workspace;

pub use crate::sandboxd::proto::Limit;
use archive::{
    clear_except_git, unpack_workspace, write_dir_tar, ChannelReader, ChannelWriter, CHUNK,
};
pub use container::{Container, StartTimings};
pub use doctor::{doctor, runtimes, Check, CheckStatus};
pub use error::SandboxError;
use error::*;
pub use executor_volume::find_executor;
use executor_volume::*;
pub use workspace::Workspace;

/// Label set to `"true"` on every container drafter creates.
pub const LABEL_MANAGED: &str = "drafter.managed";
/// Label holding the job id a container belongs to.
pub const LABEL_JOB: &str = "drafter.job";
/// Label holding the Jira ticket key a container works on.
pub const LABEL_TICKET: &str = "drafter.ticket";
/// Label naming the host whose runner created the container.
pub const LABEL_OWNER_HOST: &str = "drafter.owner.host";
/// Label holding the process id of the runner that created the container.
pub const LABEL_OWNER_PID: &str = "drafter.owner.pid";

/// This machine's host name, as recorded in [`LABEL_OWNER_HOST`].
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Labels for anything drafter makes on the daemon: managed, owned by this runner (host and pid, for
/// [`Sandbox::remove_orphans`]), plus `extra`.
fn owned_labels<const N: usize>(extra: [(&str, String); N]) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_OWNER_HOST.to_string(), host_name()),
        (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
    ]);
    labels.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    labels
}

/// Whether a container's owner labels name a runner that is still alive. A container from another host is
/// treated as alive (only its own host can tell); one without owner labels, or whose process is gone, is not.
fn owner_alive(labels: &HashMap<String, String>, this_host: &str) -> bool {
    let (Some(host), Some(pid)) = (labels.get(LABEL_OWNER_HOST), labels.get(LABEL_OWNER_PID))
    else {
        return false;
    };
    if host != this_host {
        return true;
    }
    match pid.parse::<u32>() {
        Ok(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}
/// Where the repository lives inside the container (an anonymous volume, the working directory of every command).
pub const WORKSPACE: &str = "/workspace";

/// The uid and gid every command runs as and every uploaded file is owned by.
const AGENT_UID: u64 = 1000;
/// Under the docker-exec transport the container's own processes (Docker's init and `sleep infinity`) run as
/// `nobody`, not as the agent: so the agent's `kill -9 -1` (or the host backstop's) cannot take the container down.
const KEEPER_USER: &str = "65534:65534";
/// How much longer than its timeout the host waits for a command before giving up on it (the kill grace inside the
/// container plus round trips), under either transport.
pub const EXEC_GRACE: Duration = Duration::from_secs(10);
/// The whole environment of the container. Built here; nothing comes from the host.
const CONTAINER_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/tmp",
    "LANG=C.UTF-8",
];
/// Workspaces up to this size (as a tar) go in through the executor in one frame; larger ones stream through the
/// Docker archive API.
const UNPACK_MAX: usize = 48 << 20;
/// Where the executor's volume is mounted (read-only) in the container.
const EXECUTOR_DIR: &str = "/opt/drafter";
/// The executor binary's name, in the container and next to the `drafter` binary on the host.
pub const EXECUTOR_BIN: &str = "drafter-sandboxd";
/// Label on the executor volume holding the binary's SHA-256.
const LABEL_EXECUTOR: &str = "drafter.sandboxd.sha256";
/// Entries a listing shows at most.
pub const LIST_MAX_ENTRIES: u32 = 2000;
/// Matches a search shows at most.
pub const SEARCH_MAX_MATCHES: u32 = 300;
/// How long after a take the pool starts its replacement (see [`warm::refill`]).
const REFILL_DELAY: Duration = Duration::from_millis(500);
/// How long a started container may take for its executor to answer the first ping.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The per-command limits both transports enforce.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    /// Bytes of output kept per command (head and tail).
    pub output_cap: usize,
    /// Bytes of output after which a command is killed.
    pub output_limit: u64,
    /// Bytes the workspace may use on disk.
    pub workspace_limit: u64,
}

impl ExecLimits {
    fn from_config(cfg: &SandboxConfig) -> ExecLimits {
        ExecLimits {
            output_cap: cfg.output_cap_bytes,
            output_limit: cfg.max_output_mb.saturating_mul(1024 * 1024),
            workspace_limit: cfg.workspace_max_mb.saturating_mul(1024 * 1024),
        }
    }
}

/// How tool calls reach the container: the in-container executor, or `docker exec`.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// The transport's name, for logs and the benchmark.
    fn name(&self) -> &'static str;
    /// Runs `argv` in `/workspace` as the agent, feeding `stdin`, stopped after `timeout`.
    async fn exec(
        &self,
        argv: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError>;
    /// Reads a regular file of at most `max_bytes`.
    async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError>;
    /// Writes a file as the agent, creating parent directories.
    async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError>;
    /// `<type> <path>` lines for the tree under `rel` (`.git` excluded).
    async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError>;
    /// `<path>:<line>:<text>` lines for a regular expression under `rel`.
    async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError>;
    /// Bytes the workspace uses on disk.
    async fn disk_usage(&self) -> Result<u64, SandboxError>;
    /// Unpacks a tar archive into the workspace; `Ok(false)` when this transport cannot (the caller then uploads
    /// through the Docker archive API).
    async fn unpack(&self, _tar: Vec<u8>) -> Result<bool, SandboxError> {
        Ok(false)
    }
    /// Sends the workspace as one tar stream (`.git` left out, see [`crate::sandboxd::proto::Op::Pack`]) in pieces
    /// into `sink`, asking the other side to stop past `max_bytes` of file content (hard links counted as copies)
    /// or `max_entries` names, and giving up after `within`. [`Packed::Unsupported`] when this transport cannot
    /// (the caller then downloads through the Docker archive API). The pieces are untrusted: the receiver checks
    /// every entry and every budget again.
    async fn pack(
        &self,
        _max_bytes: u64,
        _max_entries: u64,
        _within: Duration,
        _sink: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<Packed, SandboxError> {
        Ok(Packed::Unsupported)
    }
}

/// How [`Executor::pack`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packed {
    /// The whole tar was sent.
    Done,
    /// The transport has no such operation.
    Unsupported,
    /// The other side stopped: more file bytes than allowed.
    OverBytes,
    /// The other side stopped: more entries than allowed.
    OverEntries,
    /// Not done in time (the connection is given up).
    OverTime,
    /// The receiver stopped reading (it refused an entry; its own error says why).
    Abandoned,
}

/// `s` as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The output of one command.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// The exit code; `None` when the host gave up on the command (see `timed_out`).
    pub exit_code: Option<i64>,
    /// stdout and stderr interleaved in arrival order, lossy UTF-8, cut to the configured cap.
    pub output: String,
    /// Whether the middle of the output was dropped (a `[... N bytes omitted ...]` marker shows where).
    pub truncated: bool,
    /// Whether the command was stopped because it exceeded its timeout.
    pub timed_out: bool,
    /// The limit that stopped the command, if one did (timeout, output, memory, disk).
    pub stopped_by: Option<Limit>,
}

/// A connection to the Docker daemon plus the sandbox settings: makes [`Container`]s.
pub struct Sandbox {
    docker: Docker,
    cfg: SandboxConfig,
    /// The executor volume's name, once made sure of (see [`Sandbox::executor_volume`]).
    executor: tokio::sync::OnceCell<String>,
}

impl Sandbox {
    /// Connects with the usual defaults (`DOCKER_HOST`, else the local socket) and negotiates the API version
    /// (the client's default is newer than older engines, e.g. 20.10 speaks 1.41).
    pub async fn connect(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let docker = Docker::connect_with_defaults()
            .map_err(SandboxError::Unreachable)?
            .negotiate_version()
            .await
            .map_err(SandboxError::Unreachable)?;
        Ok(Sandbox {
            docker,
            cfg: cfg.clone(),
            executor: tokio::sync::OnceCell::new(),
        })
    }

    /// The same engine with other settings (a job's limits, tightened by its policy): the Docker connection and the
    /// executor volume are shared, so a job costs no new connection.
    pub fn with_config(&self, cfg: &SandboxConfig) -> Sandbox {
        Sandbox {
            docker: self.docker.clone(),
            cfg: cfg.clone(),
            executor: self.executor.clone(),
        }
    }

    /// Checks the daemon answers.
    pub async fn ping(&self) -> Result<(), SandboxError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(SandboxError::Unreachable)
    }

    /// Checks the configured image exists and returns its content digest (the Docker image id, `sha256:...`, which
    /// names the image's exact layers and config), for the run statement; [`SandboxError::ImageMissing`] says how
    /// to build a missing one.
    pub async fn ensure_image(&self) -> Result<String, SandboxError> {
        if let Some(runtime) = &self.cfg.runtime {
            let (offered, _) = runtimes(self).await?;
            if !offered.contains(runtime) {
                return Err(SandboxError::RuntimeMissing {
                    runtime: runtime.clone(),
                    offered: offered.join(", "),
                });
            }
        }
        match self.docker.inspect_image(&self.cfg.image).await {
            Ok(i) => Ok(i.id.unwrap_or_default()),
            Err(e) if status_code(&e) == Some(404) => Err(SandboxError::ImageMissing {
                image: self.cfg.image.clone(),
            }),
            Err(e) => Err(docker_err("inspect image")(e)),
        }
    }

    /// The Docker client, for tools that measure the engine itself (`drafter bench`, `drafter doctor`).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The settings this sandbox was made with.
    pub fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    /// Creates and starts the job's container `drafter-<job_id>` with no network and waits until it is ready for
    /// tool calls. A stale container of the same name left by an earlier attempt of the same job is removed first.
    pub async fn start(&self, job_id: &str, ticket: &str) -> Result<Container, SandboxError> {
        self.start_with_network(job_id, ticket, None).await
    }

    /// [`Sandbox::start`], and with `egress` the container's only way out is that allowlist through the job's egress
    /// proxy (see [`egress`]): an internal network with the proxy on it, `HTTP(S)_PROXY` pointing at it.
    pub async fn start_with_network(
        &self,
        job_id: &str,
        ticket: &str,
        egress: Option<&egress::EgressRules>,
    ) -> Result<Container, SandboxError> {
        // The queue's one rule for ids: it keeps `drafter-<id>` a valid container name.
        if !JobId::is_valid(job_id) {
            return Err(SandboxError::BadJobId(job_id.to_string()));
        }
        // The proxy runs the executor binary too, so an allowlist job needs its volume under either transport.
        let executor_volume = match (self.cfg.transport, egress) {
            (Transport::DockerExec, None) => None,
            _ => Some(self.executor_volume().await?.to_string()),
        };
        let name = format!("drafter-{job_id}");
        let in_container = match self.cfg.transport {
            Transport::Sandboxd => executor_volume.as_deref(),
            Transport::DockerExec => None,
        };
        let mut body = self.container_body(job_id, ticket, in_container);
        let limits = ExecLimits::from_config(&self.cfg);
        let (Some(rules), Some(volume)) = (egress, executor_volume.as_deref()) else {
            if let Some(container) = self.take_warm(job_id, &name, &body, limits).await? {
                tracing::info!(container = %container.id, job = job_id, "sandbox container taken from the warm pool");
                return Ok(container);
            }
            return self
                .create_and_start(job_id, &name, body, limits, None)
                .await;
        };
        // A stale container of this job may still be attached to a stale network of this job.
        force_remove(&self.docker, &name).await?;
        let job_egress =
            network::setup(&self.docker, &self.cfg.image, volume, job_id, rules).await?;
        if let Some(host) = body.host_config.as_mut() {
            host.network_mode = Some(job_egress.network.clone());
        }
        body.network_disabled = Some(false);
        if let Some(env) = body.env.as_mut() {
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.push(format!("{var}={}", job_egress.proxy_url));
            }
            // Nothing bypasses the proxy.
            env.push("NO_PROXY=".into());
            env.push("no_proxy=".into());
        }
        self.create_and_start(job_id, &name, body, limits, Some(job_egress))
            .await
    }

    /// The cold path: create, attach, start, ping. On failure everything made for the job (its egress included) is
    /// removed again.
    async fn create_and_start(
        &self,
        job_id: &str,
        name: &str,
        body: ContainerCreateBody,
        limits: ExecLimits,
        egress: Option<network::JobEgress>,
    ) -> Result<Container, SandboxError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let t = Instant::now();
        let created = match self
            .docker
            .create_container(Some(opts.clone()), body.clone())
            .await
        {
            Ok(c) => Ok(c),
            Err(e) if status_code(&e) == Some(409) => {
                // Name taken: only ever by our own earlier attempt, since the name embeds the job id.
                tracing::warn!(container = %name, "removing stale container of the same job");
                match force_remove(&self.docker, name).await {
                    Ok(()) => self
                        .docker
                        .create_container(Some(opts), body)
                        .await
                        .map_err(|e| self.create_error(e)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(self.create_error(e)),
        };
        let created_in = t.elapsed();
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if egress.is_some() {
                    network::teardown(&self.docker, job_id).await;
                }
                return Err(e);
            }
        };
        let mut container = Container {
            docker: self.docker.clone(),
            id: created.id.clone(),
            job_id: job_id.to_string(),
            limits,
            executor: Box::new(docker_exec::DockerExec {
                docker: self.docker.clone(),
                id: created.id.clone(),
                limits,
            }),
            egress,
            timings: StartTimings {
                create: created_in,
                ..StartTimings::default()
            },
            removed: false,
        };
        // From here on, an early return drops `container`, and its Drop removes it (and its egress).
        // Attach before starting, so the stream is there when the executor first speaks.
        let t = Instant::now();
        let executor = match self.cfg.transport {
            Transport::Sandboxd => Some(
                executor_client::DaemonClient::attach(&self.docker, &container.id, limits).await?,
            ),
            Transport::DockerExec => None,
        };
        container.timings.attach = t.elapsed();
        let t = Instant::now();
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(docker_err("start container"))?;
        container.timings.start = t.elapsed();
        let t = Instant::now();
        if let Some(executor) = executor {
            executor.ready(READY_TIMEOUT).await?;
            container.executor = Box::new(executor);
        }
        container.timings.ready = t.elapsed();
        tracing::info!(container = %container.id, job = job_id, transport = container.executor.name(), "sandbox container ready");
        Ok(container)
    }

    /// A warm container of this shape from the pool (see [`pool`]), renamed for the job, after a ping shows its
    /// executor is still there; starts a refill either way. `None` without a pool or when it is empty.
    async fn take_warm(
        &self,
        job_id: &str,
        name: &str,
        body: &ContainerCreateBody,
        limits: ExecLimits,
    ) -> Result<Option<Container>, SandboxError> {
        if self.cfg.pool_size == 0 || self.cfg.transport != Transport::Sandboxd {
            return Ok(None);
        }
        let shape = warm::shape_of(body);
        let warm = warm::take(&shape);
        warm::refill(
            &self.docker,
            &shape,
            body,
            limits,
            self.cfg.pool_size,
            REFILL_DELAY,
        );
        let Some(warm) = warm else {
            return Ok(None);
        };
        let t = Instant::now();
        let mut container = Container {
            docker: self.docker.clone(),
            id: warm.id,
            job_id: job_id.to_string(),
            limits,
            executor: Box::new(warm.executor),
            egress: None,
            timings: StartTimings {
                warm: true,
                ..StartTimings::default()
            },
            removed: false,
        };
        // On any error below, dropping `container` removes it.
        if let Err(e) = container.executor.disk_usage().await {
            tracing::warn!(error = %e, "a pooled container stopped answering; starting a fresh one");
            return Ok(None);
        }
        container.timings.check = t.elapsed();
        warm::claim(&self.docker, &container.id, name).await?;
        container.timings.ready = t.elapsed();
        container.timings.rename = container.timings.ready - container.timings.check;
        Ok(Some(container))
    }

    /// Starts filling the warm pool for this sandbox's container shape (`drafter serve` calls it at start, so even
    /// the first job is warm). Does nothing without `sandbox.pool_size`.
    pub async fn prewarm(&self) -> Result<(), SandboxError> {
        let Some((shape, body)) = self.pool_shape().await? else {
            return Ok(());
        };
        warm::refill(
            &self.docker,
            &shape,
            &body,
            ExecLimits::from_config(&self.cfg),
            self.cfg.pool_size,
            Duration::ZERO,
        );
        Ok(())
    }

    /// Waits until the warm pool of this sandbox's shape is full (or `within` passes), filling it first.
    pub async fn wait_pool_full(&self, within: Duration) {
        if let Ok(Some((shape, _))) = self.pool_shape().await {
            if self.prewarm().await.is_ok() {
                warm::wait_full(&shape, self.cfg.pool_size, within).await;
            }
        }
    }

    /// This sandbox's pool shape and the create request of a pooled container; `None` without a pool.
    async fn pool_shape(&self) -> Result<Option<(String, ContainerCreateBody)>, SandboxError> {
        if self.cfg.pool_size == 0 || self.cfg.transport != Transport::Sandboxd {
            return Ok(None);
        }
        let volume = self.executor_volume().await?.to_string();
        let body = self.container_body("pool", "", Some(&volume));
        Ok(Some((warm::shape_of(&body), body)))
    }

    /// Removes this process's pooled containers (every shape). Returns how many.
    pub async fn drain_pool(&self) -> usize {
        warm::drain(&self.docker).await
    }

    fn create_error(&self, e: bollard::errors::Error) -> SandboxError {
        if status_code(&e) == Some(404) {
            SandboxError::ImageMissing {
                image: self.cfg.image.clone(),
            }
        } else {
            docker_err("create container")(e)
        }
    }
}

async fn force_remove(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let opts = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        // Already gone (or its removal already under way): the goal is reached.
        Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(()),
        Err(e) => Err(docker_err("remove container")(e)),
    }
}

/// `rel` as an absolute path under `/workspace`: relative, no `..`, no NUL, not empty.
fn workspace_path(rel: &str) -> Result<String, SandboxError> {
    let bad = |reason| SandboxError::BadPath {
        path: rel.to_string(),
        reason,
    };
    if rel.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if rel.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("must not contain `..`")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(bad("names no file"));
    }
    Ok(format!("{WORKSPACE}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths() {
        assert_eq!(workspace_path("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(workspace_path("./a//b").unwrap(), "/workspace/a/b");
        assert!(workspace_path("../x").is_err());
        assert!(workspace_path("a/../../x").is_err());
        assert!(workspace_path("/etc/passwd").is_err());
        assert!(workspace_path("a\0b").is_err());
        assert!(workspace_path("").is_err());
        assert!(workspace_path(".").is_err());
    }

    #[test]
    fn job_ids() {
        let valid_job_id = JobId::is_valid;
        assert!(valid_job_id("job-1_a.b"));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id("-x"));
        assert!(!valid_job_id("a/b"));
        assert!(!valid_job_id(&"a".repeat(101)));
    }
}
