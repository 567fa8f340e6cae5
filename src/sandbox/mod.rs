//! One hardened Docker container per job; the workspace goes in and out as tar streams.
//!
//! # Model
//! [`Sandbox::start`] creates a container from the image built by `images/sandbox/build.sh` and keeps it running for
//! the whole job. The container has no network, a read-only root filesystem, `no-new-privileges`, memory/CPU/pids
//! limits, and an environment built here from constants: the host environment (which holds the runner's tokens) is
//! never passed through. Every command runs as uid 1000 with no capabilities.
//!
//! # Transports
//! Tool calls go through an [`Executor`]. The default, [`sandboxd::Sandboxd`], talks to `drafter-sandboxd` (the
//! second binary of this crate, see [`daemon`]) running inside the container as its main process, over the attach
//! stream ([`proto`] documents the frames). The binary reaches the container through a read-only named volume keyed
//! by its SHA-256, filled once per binary ([`Sandbox::executor_volume`]). The fallback, [`docker_exec::DockerExec`]
//! (`sandbox.transport = "docker-exec"`), runs each call as a `docker exec` into a container that only sleeps.
//!
//! # Why the workspace is an anonymous volume, not a bind mount or a tmpfs
//! The repository travels through the Docker API as tar streams ([`Container::upload_dir`],
//! [`Container::download_workspace`]) so a remote `DOCKER_HOST` works and nothing on the host is shared with the
//! container. The daemon refuses archive uploads into a read-only root filesystem unless the target is a volume,
//! and archive uploads into a tmpfs do not work at all; so `/workspace` is an anonymous volume created with the
//! container and removed with it (`v=true`).
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
use crate::queue::JobId;

mod archive;
pub mod daemon;
pub mod docker_exec;
mod doctor;
pub mod egress;
mod network;
pub mod pool;
pub mod proto;
pub mod sandboxd;

use archive::{
    clear_except_git, unpack_workspace, write_dir_tar, ChannelReader, ChannelWriter, CHUNK,
};
pub use doctor::{doctor, runtimes, Check, CheckStatus};
pub use proto::Limit;

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
fn host_name() -> String {
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
/// How long after a take the pool starts its replacement (see [`pool::refill`]).
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
}

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

fn docker_err(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
    move |source| SandboxError::Docker { action, source }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
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

    async fn list_by_label(&self, label: String) -> Result<Vec<ContainerSummary>, SandboxError> {
        let filters = HashMap::from([("label", vec![label])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(docker_err("list containers"))
    }

    /// Removes every container labelled `drafter.managed=true` whose owning runner is gone (see [`owner_alive`]), in
    /// any state, with its volumes: start-up cleanup after a crash. Returns how many were removed. Runners sharing
    /// a daemon leave each other's live containers alone.
    pub async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        let list = self.list_by_label(format!("{LABEL_MANAGED}=true")).await?;
        let this_host = host_name();
        let ids: Vec<String> = list
            .into_iter()
            .filter(|c| {
                !c.labels
                    .as_ref()
                    .is_some_and(|l| owner_alive(l, &this_host))
            })
            .filter_map(|c| c.id)
            .collect();
        let mut removed = 0;
        for id in ids {
            match force_remove(&self.docker, &id).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove orphan container")
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed orphaned sandbox containers");
        }
        // Job networks of dead runners (their containers are gone by now, so the networks can go).
        let filters = HashMap::from([("label", vec![format!("{LABEL_MANAGED}=true")])]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::new()
            .filters(&filters)
            .build();
        if let Ok(networks) = self.docker.list_networks(Some(opts)).await {
            for n in networks {
                let dead = !n
                    .labels
                    .as_ref()
                    .is_some_and(|l| owner_alive(l, &this_host));
                if let (true, Some(name)) = (dead, n.name) {
                    network::remove_network(&self.docker, &name).await;
                }
            }
        }
        Ok(removed)
    }

    /// Ids of this job's containers, in any state: drafter containers named `drafter-<job_id>` (a container taken
    /// from the warm pool carries no job label, but is renamed so) and its egress proxy `drafter-proxy-<job_id>`.
    pub async fn job_containers(&self, job_id: &str) -> Result<Vec<String>, SandboxError> {
        self.list_job_containers(job_id, false).await
    }

    /// [`Sandbox::job_containers`], with `own` only those this process made: another runner holding the same job
    /// now (this one stalled past its lease and the job was taken over) keeps its containers.
    async fn list_job_containers(
        &self,
        job_id: &str,
        own: bool,
    ) -> Result<Vec<String>, SandboxError> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if own {
            labels.push(format!("{LABEL_OWNER_HOST}={}", host_name()));
            labels.push(format!("{LABEL_OWNER_PID}={}", std::process::id()));
        }
        let filters = HashMap::from([
            ("label", labels),
            (
                "name",
                vec![format!("^/drafter-{}$", regex::escape(job_id))],
            ),
        ]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(docker_err("list containers"))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Force-removes every container of this job that this process made (with its volume): for a runner that is stopping mid-job, when the
    /// job's own [`Container`] handle is gone with the cancelled task. Returns how many were removed.
    /// Waits (up to 20 s) until they are really gone: a removal already under way elsewhere (the dropped handle's
    /// own) answers 409 at once, and a runner about to exit must not leave before the daemon has finished.
    pub async fn remove_job(&self, job_id: &str) -> Result<usize, SandboxError> {
        let ids = self.list_job_containers(job_id, true).await?;
        for id in &ids {
            force_remove(&self.docker, id).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.list_job_containers(job_id, true).await?.is_empty() && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        network::remove_network(&self.docker, &network::network_name(job_id)).await;
        Ok(ids.len())
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
            Transport::Sandboxd => {
                Some(sandboxd::Sandboxd::attach(&self.docker, &container.id, limits).await?)
            }
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
        let shape = pool::shape_of(body);
        let warm = pool::take(&shape);
        pool::refill(
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
        pool::claim(&self.docker, &container.id, name).await?;
        container.timings.ready = t.elapsed();
        Ok(Some(container))
    }

    /// Starts filling the warm pool for this sandbox's container shape (`drafter serve` calls it at start, so even
    /// the first job is warm). Does nothing without `sandbox.pool_size`.
    pub async fn prewarm(&self) -> Result<(), SandboxError> {
        let Some((shape, body)) = self.pool_shape().await? else {
            return Ok(());
        };
        pool::refill(
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
                pool::wait_full(&shape, self.cfg.pool_size, within).await;
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
        Ok(Some((pool::shape_of(&body), body)))
    }

    /// Removes this process's pooled containers (every shape). Returns how many.
    pub async fn drain_pool(&self) -> usize {
        pool::drain(&self.docker).await
    }

    /// The named volume holding this worker's `drafter-sandboxd`, read-only in every job container: created and
    /// filled once per binary (its name and label carry the binary's SHA-256), so a container start copies nothing.
    /// Filling goes through a container that is created, never started, and removed; the copy is then read back and
    /// compared, so a half-written binary (two workers filling at once, a crash) is caught and rewritten.
    pub async fn executor_volume(&self) -> Result<&str, SandboxError> {
        self.executor
            .get_or_try_init(|| async {
                let path = find_executor(&self.cfg)?;
                let meta = std::fs::metadata(&path)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                let stamp = (path.clone(), meta.len(), meta.modified().ok());
                // The worker makes a Sandbox per job: the binary is hashed and its volume checked once per process
                // (and again only if the file changes or the volume disappears).
                let known = {
                    let cache = EXECUTOR_VOLUME.lock().unwrap_or_else(|p| p.into_inner());
                    cache
                        .as_ref()
                        .filter(|(s, _)| *s == stamp)
                        .map(|(_, name)| name.clone())
                };
                if let Some(name) = known {
                    if self.docker.inspect_volume(&name).await.is_ok() {
                        return Ok(name);
                    }
                }
                let binary = tokio::fs::read(&path)
                    .await
                    .map_err(io_err(format!("reading {}", path.display())))?;
                let digest = hex::encode(Sha256::digest(&binary));
                let name = format!("drafter-sandboxd-{}", &digest[..16]);
                fill_executor_volume(&self.docker, &self.cfg.image, &name, &digest, &binary).await?;
                tracing::info!(volume = %name, binary = %path.display(), "sandbox executor volume ready");
                *EXECUTOR_VOLUME.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, name.clone()));
                Ok(name)
            })
            .await
            .map(String::as_str)
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

    fn container_body(
        &self,
        job_id: &str,
        ticket: &str,
        executor_volume: Option<&str>,
    ) -> ContainerCreateBody {
        let cfg = &self.cfg;
        let memory = i64::try_from(cfg.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        // Saturating float->int cast; a non-positive value means "no limit" to Docker, so keep at least 0.01 CPU.
        let nano_cpus = ((cfg.cpus * 1e9) as i64).max(10_000_000);
        let mut host_config = HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!("rw,nosuid,nodev,size={}m,mode=1777", cfg.tmp_size_mb.max(1)),
            )])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(cfg.pids_limit),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(nano_cpus),
            runtime: cfg.runtime.clone().filter(|r| !r.is_empty()),
            init: Some(true),
            privileged: Some(false),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            image: Some(cfg.image.clone()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            env: Some(CONTAINER_ENV.iter().map(|s| s.to_string()).collect()),
            user: Some(KEEPER_USER.into()),
            working_dir: Some(WORKSPACE.into()),
            // An anonymous volume: writable through the archive API despite the read-only rootfs.
            volumes: Some(vec![WORKSPACE.into()]),
            labels: Some(owned_labels([
                (LABEL_JOB, job_id.to_string()),
                (LABEL_TICKET, ticket.to_string()),
            ])),
            network_disabled: Some(true),
            ..Default::default()
        };
        if let Some(volume) = executor_volume {
            // The executor is the container's main process (under Docker's init): root, but with only the
            // capabilities it needs to drop to the agent's uid for every command (SETUID, SETGID), to stop the
            // agent's processes (KILL), and to measure directories the agent made unreadable (DAC_READ_SEARCH).
            // Every command loses all of them at its uid change.
            body.user = Some("0:0".into());
            body.cmd = Some(vec![
                format!("{EXECUTOR_DIR}/{EXECUTOR_BIN}"),
                "--workspace".into(),
                WORKSPACE.into(),
                "--uid".into(),
                AGENT_UID.to_string(),
                "--gid".into(),
                AGENT_UID.to_string(),
                "--workspace-limit".into(),
                ExecLimits::from_config(cfg).workspace_limit.to_string(),
            ]);
            body.entrypoint = Some(Vec::new());
            body.open_stdin = Some(true);
            body.stdin_once = Some(false);
            body.attach_stdin = Some(true);
            body.attach_stdout = Some(true);
            body.attach_stderr = Some(true);
            body.tty = Some(false);
            // SETPCAP only to empty the bounding set at start, after which the executor drops it.
            host_config.cap_add = Some(vec![
                "SETPCAP".into(),
                "SETUID".into(),
                "SETGID".into(),
                "KILL".into(),
                "DAC_READ_SEARCH".into(),
            ]);
            host_config.mounts = Some(vec![executor_mount(volume, true)]);
        }
        body.host_config = Some(host_config);
        body
    }
}

/// The executor binary (path, size, mtime) last put into a volume by this process, and that volume's name.
type ExecutorStamp = (PathBuf, u64, Option<std::time::SystemTime>);
static EXECUTOR_VOLUME: std::sync::Mutex<Option<(ExecutorStamp, String)>> =
    std::sync::Mutex::new(None);

/// The executor's volume at [`EXECUTOR_DIR`] (never copied from the image; read-only everywhere but in the filler).
fn executor_mount(volume: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(EXECUTOR_DIR.into()),
        source: Some(volume.to_string()),
        typ: Some(MountType::VOLUME),
        read_only: Some(read_only),
        volume_options: Some(MountVolumeOptions {
            no_copy: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the executor binary is: `sandbox.executor` if set, else `DRAFTER_SANDBOXD`, else next to the running
/// binary (or one directory up, for test binaries in `target/*/deps`).
pub fn find_executor(cfg: &SandboxConfig) -> Result<PathBuf, SandboxError> {
    let mut candidates = Vec::new();
    if let Some(p) = &cfg.executor {
        candidates.push(p.clone());
    } else if let Some(p) = std::env::var_os("DRAFTER_SANDBOXD") {
        candidates.push(PathBuf::from(p));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(EXECUTOR_BIN));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(EXECUTOR_BIN));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| SandboxError::ExecutorMissing {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Makes sure volume `name` holds exactly `binary` (see [`Sandbox::executor_volume`]).
async fn fill_executor_volume(
    docker: &Docker,
    image: &str,
    name: &str,
    digest: &str,
    binary: &[u8],
) -> Result<(), SandboxError> {
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_EXECUTOR.to_string(), digest.to_string()),
    ]);
    // Creating a volume that exists returns it unchanged.
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .map_err(docker_err("create executor volume"))?;
    // Unique per call: several sandboxes of one process (or of several) may fill at the same time.
    let mut nonce = [0u8; 6];
    getrandom::fill(&mut nonce).map_err(|e| SandboxError::Exec(format!("no randomness: {e}")))?;
    let filler = format!("drafter-sandboxd-fill-{}", hex::encode(nonce));
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".into()]),
        labels: Some(owned_labels([])),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            mounts: Some(vec![executor_mount(name, false)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new().name(&filler).build();
    let created = docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| {
            if status_code(&e) == Some(404) {
                SandboxError::ImageMissing {
                    image: image.to_string(),
                }
            } else {
                docker_err("create executor filler")(e)
            }
        })?;
    let result = async {
        for attempt in 0..2 {
            let held = read_container_file(
                docker,
                &created.id,
                &format!("{EXECUTOR_DIR}/{EXECUTOR_BIN}"),
            )
            .await?;
            if held
                .as_deref()
                .map(|b| hex::encode(Sha256::digest(b)))
                .as_deref()
                == Some(digest)
            {
                return Ok(());
            }
            if attempt == 1 {
                break;
            }
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(binary.len() as u64);
            header.set_mode(0o555);
            header.set_uid(0);
            header.set_gid(0);
            tar.append_data(&mut header, EXECUTOR_BIN, binary)
                .map_err(io_err("packing the executor"))?;
            let archive = tar.into_inner().map_err(io_err("packing the executor"))?;
            let opts = UploadToContainerOptionsBuilder::new()
                .path(EXECUTOR_DIR)
                .build();
            docker
                .upload_to_container(&created.id, Some(opts), bollard::body_full(archive.into()))
                .await
                .map_err(docker_err("upload executor"))?;
        }
        Err(SandboxError::Exec(format!(
            "volume {name} does not hold the executor binary after writing it"
        )))
    }
    .await;
    force_remove(docker, &created.id).await?;
    result
}

/// A regular file out of a (possibly stopped) container through the archive API; `None` if it is not there.
async fn read_container_file(
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, SandboxError> {
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(opts));
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => buf.extend_from_slice(&c),
            Err(e) if status_code(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(docker_err("download")(e)),
        }
    }
    let mut archive = tar::Archive::new(io::Cursor::new(buf));
    let mut entries = archive
        .entries()
        .map_err(io_err(format!("reading {path}")))?;
    let Some(entry) = entries.next() else {
        return Ok(None);
    };
    let mut entry = entry.map_err(io_err(format!("reading {path}")))?;
    let mut out = Vec::new();
    entry
        .read_to_end(&mut out)
        .map_err(io_err(format!("reading {path}")))?;
    Ok(Some(out))
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

/// Where a container's start-up time went (for `drafter bench` and the logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Taken from the warm pool (then only `ready` is set: the take, the liveness check and the rename).
    pub warm: bool,
    /// The create request.
    pub create: Duration,
    /// Attaching to the executor's stdin/stdout.
    pub attach: Duration,
    /// The start request.
    pub start: Duration,
    /// Until the executor answered its first ping (or, warm, until the container was the job's).
    pub ready: Duration,
}

/// A running job container. Remove it with [`Container::remove`]; dropping it also removes it, in the background.
pub struct Container {
    docker: Docker,
    id: String,
    job_id: String,
    limits: ExecLimits,
    executor: Box<dyn Executor>,
    /// The job's network and egress proxy, for `allowlist:` jobs.
    egress: Option<network::JobEgress>,
    timings: StartTimings,
    removed: bool,
}

impl Container {
    /// The Docker container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where this container's start-up time went.
    pub fn start_timings(&self) -> StartTimings {
        self.timings
    }

    /// The transport tool calls go through.
    pub fn executor(&self) -> &dyn Executor {
        self.executor.as_ref()
    }

    /// A `docker exec` transport into this same container, whatever the configured one (for `drafter bench`).
    pub fn docker_exec(&self) -> docker_exec::DockerExec {
        docker_exec::DockerExec {
            docker: self.docker.clone(),
            id: self.id.clone(),
            limits: self.limits,
        }
    }

    /// Copies the host directory `src` (a git checkout, `.git` included) into `/workspace`, every entry owned by
    /// 1000:1000. Symlinks are copied as symlinks; sockets, fifos and devices are skipped. One tar stream: through
    /// the executor when the transport has one and the tree fits [`UNPACK_MAX`] (no daemon round trips, no helper
    /// process), else through the Docker archive API.
    pub async fn upload_dir(&self, src: &Path) -> Result<(), SandboxError> {
        let meta = std::fs::metadata(src).map_err(io_err(format!("reading {}", src.display())))?;
        if !meta.is_dir() {
            return Err(SandboxError::Io {
                context: format!("uploading {}", src.display()),
                source: io::Error::other("not a directory"),
            });
        }
        if self.executor.name() == "sandboxd" {
            let root = src.to_path_buf();
            let packed = tokio::task::spawn_blocking(move || {
                let mut buf = archive::CappedVec::new(UNPACK_MAX);
                write_dir_tar(&root, &mut buf).map(|()| buf.into_inner())
            })
            .await
            .map_err(|e| SandboxError::Exec(format!("tar task failed: {e}")))?;
            match packed {
                Ok(tar) => {
                    if self.executor.unpack(tar).await? {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {}
                Err(e) => return Err(io_err(format!("archiving {}", src.display()))(e)),
            }
        }
        self.upload_dir_streamed(src).await
    }

    /// [`Container::upload_dir`] through the Docker archive API, streamed.
    async fn upload_dir_streamed(&self, src: &Path) -> Result<(), SandboxError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let root = src.to_path_buf();
        let producer = tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let result = write_dir_tar(&root, &mut writer);
            if let Err(e) = &result {
                // Make the upload fail rather than succeed with a partial tree.
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let opts = UploadToContainerOptionsBuilder::new()
            .path(WORKSPACE)
            .build();
        let upload = self
            .docker
            .upload_to_container(&self.id, Some(opts), bollard::body_try_stream(body))
            .await;
        let produced = producer
            .await
            .map_err(|e| SandboxError::Exec(format!("tar producer task failed: {e}")))?;
        produced.map_err(io_err(format!("archiving {}", src.display())))?;
        upload.map_err(docker_err("upload workspace"))
    }

    /// Replaces the contents of `dest` with `/workspace`: deletes everything in `dest` except `.git`, then unpacks,
    /// skipping every entry with a `.git` component (the container's git metadata is untrusted). Refuses entries
    /// that are absolute, contain `..`, or would be written through a symlink; symlinks are recreated as links.
    /// Budgeted ([`archive::ReturnBudget`]): past `sandbox.workspace_max_mb` written on the host (hard links are
    /// copies, and count as such), past an entry count or past a time limit it stops with
    /// [`SandboxError::WorkspaceOverBudget`], having written no more than the budget.
    pub async fn download_workspace(&self, dest: &Path) -> Result<(), SandboxError> {
        let meta = std::fs::symlink_metadata(dest)
            .map_err(io_err(format!("reading {}", dest.display())))?;
        if !meta.is_dir() {
            return Err(SandboxError::Io {
                context: format!("downloading into {}", dest.display()),
                source: io::Error::other("not a directory"),
            });
        }
        clear_except_git(dest)?;

        let budget = archive::ReturnBudget::for_limit(self.limits.workspace_limit);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let dest_owned = dest.to_path_buf();
        let consumer = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            unpack_workspace(reader, &dest_owned, &budget)
        });
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path(WORKSPACE)
            .build();
        let mut stream = self.docker.download_from_container(&self.id, Some(opts));
        let fed = tokio::time::timeout_at(budget.deadline.into(), async {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        if tx.send(bytes).await.is_err() {
                            return Ok(()); // the unpacker stopped early; its error is reported below
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await;
        // Closing the channel ends the unpacker's input; waiting for it means nothing is written after this returns.
        drop(tx);
        let unpacked = consumer
            .await
            .map_err(|e| SandboxError::Exec(format!("unpack task failed: {e}")))?;
        match fed {
            Err(_elapsed) => Err(budget.over_time()),
            Ok(Err(e)) => Err(docker_err("download workspace")(e)),
            Ok(Ok(())) => unpacked,
        }
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
        if used > self.limits.workspace_limit {
            return Err(SandboxError::DiskLimit {
                used_mb: used / (1024 * 1024),
                limit_mb: self.limits.workspace_limit / (1024 * 1024),
            });
        }
        Ok(used)
    }

    /// Force-removes the container and its workspace volume.
    pub async fn remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        let removed = force_remove(&self.docker, &self.id).await;
        if self.egress.is_some() {
            network::teardown(&self.docker, &self.job_id).await;
        }
        removed?;
        tracing::info!(container = %self.id, "sandbox container removed");
        Ok(())
    }

    /// What the egress proxy recorded so far (empty without an allowlist), and how many records were dropped over
    /// the per-job cap.
    pub fn egress_records(&self) -> (Vec<egress::ConnRecord>, u64) {
        match &self.egress {
            Some(e) => {
                let log = e.records.lock().unwrap_or_else(|p| p.into_inner());
                (log.records.clone(), log.dropped)
            }
            None => (Vec::new(), 0),
        }
    }

    /// The proxy URL the container was given (allowlist jobs).
    pub fn proxy_url(&self) -> Option<&str> {
        self.egress.as_ref().map(|e| e.proxy_url.as_str())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let id = std::mem::take(&mut self.id);
        let egress_of = self.egress.is_some().then(|| self.job_id.clone());
        match tokio::runtime::Handle::try_current() {
            // The normal error path: remove in the background on the caller's runtime.
            Ok(handle) if !std::thread::panicking() => {
                let docker = self.docker.clone();
                handle.spawn(async move {
                    let removed = force_remove(&docker, &id).await;
                    if let Some(job) = egress_of {
                        network::teardown(&docker, &job).await;
                    }
                    match removed {
                        Ok(()) => {
                            tracing::info!(container = %id, "sandbox container removed on drop")
                        }
                        Err(e) => {
                            tracing::warn!(container = %id, error = %e, "removal on drop failed")
                        }
                    }
                });
            }
            // Unwinding (the runtime is likely being torn down and would cancel a spawned task) or no runtime at
            // all: remove synchronously from a helper thread with its own runtime and client, bounded in time.
            _ => remove_blocking(id, egress_of),
        }
    }
}

/// Force-removes a container from a fresh thread, runtime and Docker client, waiting at most 20 s.
fn remove_blocking(id: String, egress_of: Option<String>) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread_id = id.clone();
    let spawned = std::thread::Builder::new()
        .name("drafter-sandbox-drop".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        let docker = Docker::connect_with_defaults()
                            .map_err(|e| e.to_string())?
                            .negotiate_version()
                            .await
                            .map_err(|e| e.to_string())?;
                        let removed = force_remove(&docker, &thread_id).await;
                        if let Some(job) = egress_of {
                            network::teardown(&docker, &job).await;
                        }
                        removed.map_err(|e| e.to_string())
                    })
                });
            let _ = done_tx.send(result);
        });
    if spawned.is_err() {
        tracing::warn!(container = %id, "could not spawn removal thread; remove_orphans will clean up");
        return;
    }
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => tracing::info!(container = %id, "sandbox container removed on drop"),
        Ok(Err(e)) => tracing::warn!(container = %id, error = %e, "removal on drop failed"),
        Err(_) => tracing::warn!(container = %id, "removal on drop timed out"),
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
