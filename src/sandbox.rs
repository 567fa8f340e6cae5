//! One hardened Docker container per job; the workspace goes in and out as tar streams.
//!
//! # Model
//! [`Sandbox::start`] creates a container from the image built by `images/sandbox/build.sh` and keeps it running
//! (`sleep infinity` under Docker's init) for the whole job; every agent command is a `docker exec` into it. The
//! container has no network, a read-only root filesystem, no capabilities, `no-new-privileges`, memory/CPU/pids
//! limits, runs as uid 1000, and gets an environment built here from constants: the host environment (which holds
//! the runner's tokens) is never passed through.
//!
//! # Why the workspace is an anonymous volume, not a bind mount or a tmpfs
//! The repository travels through the Docker API as tar streams ([`Container::upload_dir`],
//! [`Container::download_workspace`]) so a remote `DOCKER_HOST` works and nothing on the host is shared with the
//! container. The daemon refuses archive uploads into a read-only root filesystem unless the target is a volume,
//! and archive uploads into a tmpfs do not work at all; so `/workspace` is an anonymous volume created with the
//! container and removed with it (`v=true`).
//!
//! # Why commands run under coreutils `timeout`
//! The Docker API cannot kill an exec. Each command therefore runs as `timeout -k 5 <secs> bash -c ...` inside the
//! container, which kills the command's whole process group; the host also bounds the stream with
//! [`tokio::time::timeout`] as a backstop and, if that fires, kills every uid-1000 process in the container.
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

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::SandboxConfig;

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
/// The container's own processes (Docker's init and `sleep infinity`) run as `nobody`, not as the agent: so the
/// agent's `kill -9 -1` (or the host backstop's) cannot take the container down. Commands always run as 1000.
const KEEPER_USER: &str = "65534:65534";
/// `timeout -k`: seconds between the polite TERM and the KILL inside the container.
const KILL_AFTER_SECS: u64 = 5;
/// How much longer than its timeout the host waits for a command before giving up on it:
/// the in-container `timeout` needs up to [`KILL_AFTER_SECS`] for its KILL, plus exec round trips.
pub const EXEC_GRACE: Duration = Duration::from_secs(KILL_AFTER_SECS + 5);
/// The whole environment of the container. Built here; nothing comes from the host.
const CONTAINER_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/tmp",
    "LANG=C.UTF-8",
];
/// Slack over `max_bytes` that [`Container::read_file`] accepts for tar headers and padding.
const TAR_OVERHEAD: usize = 64 * 1024;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker daemon could not be reached or did not answer the version handshake.
    #[error("cannot reach the Docker daemon (is it running, and is DOCKER_HOST right?): {0}")]
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
    #[error("invalid job id `{0}`: use 1-100 characters of [A-Za-z0-9_.-], starting with a letter or digit")]
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
}

/// A connection to the Docker daemon plus the sandbox settings: makes [`Container`]s.
pub struct Sandbox {
    docker: Docker,
    cfg: SandboxConfig,
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
        Ok(removed)
    }

    /// Ids of the containers labelled with this job id, in any state.
    pub async fn job_containers(&self, job_id: &str) -> Result<Vec<String>, SandboxError> {
        let list = self.list_by_label(format!("{LABEL_JOB}={job_id}")).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Force-removes every container of this job (with its volume): for a runner that is stopping mid-job, when the
    /// job's own [`Container`] handle is gone with the cancelled task. Returns how many were removed.
    /// Waits (up to 20 s) until they are really gone: a removal already under way elsewhere (the dropped handle's
    /// own) answers 409 at once, and a runner about to exit must not leave before the daemon has finished.
    pub async fn remove_job(&self, job_id: &str) -> Result<usize, SandboxError> {
        let ids = self.job_containers(job_id).await?;
        for id in &ids {
            force_remove(&self.docker, id).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.job_containers(job_id).await?.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ids.len())
    }

    /// Creates and starts the job's container `drafter-<job_id>`. A stale container of the same name left by an
    /// earlier attempt of the same job is removed first.
    pub async fn start(&self, job_id: &str, ticket: &str) -> Result<Container, SandboxError> {
        if !valid_job_id(job_id) {
            return Err(SandboxError::BadJobId(job_id.to_string()));
        }
        let name = format!("drafter-{job_id}");
        let body = self.container_body(job_id, ticket);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();

        let created = match self
            .docker
            .create_container(Some(opts.clone()), body.clone())
            .await
        {
            Ok(c) => c,
            Err(e) if status_code(&e) == Some(409) => {
                // Name taken: only ever by our own earlier attempt, since the name embeds the job id.
                tracing::warn!(container = %name, "removing stale container of the same job");
                force_remove(&self.docker, &name).await?;
                self.docker
                    .create_container(Some(opts), body)
                    .await
                    .map_err(|e| self.create_error(e))?
            }
            Err(e) => return Err(self.create_error(e)),
        };

        let container = Container {
            docker: self.docker.clone(),
            id: created.id,
            cap: self.cfg.output_cap_bytes,
            removed: false,
        };
        // On failure `container` is dropped here, and its Drop removes it.
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(docker_err("start container"))?;
        tracing::info!(container = %container.id, job = job_id, "sandbox container started");
        Ok(container)
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

    fn container_body(&self, job_id: &str, ticket: &str) -> ContainerCreateBody {
        let cfg = &self.cfg;
        let memory = i64::try_from(cfg.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        // Saturating float->int cast; a non-positive value means "no limit" to Docker, so keep at least 0.01 CPU.
        let nano_cpus = ((cfg.cpus * 1e9) as i64).max(10_000_000);
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!("rw,size={}m,mode=1777", cfg.tmp_size_mb.max(1)),
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
        ContainerCreateBody {
            image: Some(cfg.image.clone()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            env: Some(CONTAINER_ENV.iter().map(|s| s.to_string()).collect()),
            user: Some(KEEPER_USER.into()),
            working_dir: Some(WORKSPACE.into()),
            // An anonymous volume: writable through the archive API despite the read-only rootfs.
            volumes: Some(vec![WORKSPACE.into()]),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_JOB.to_string(), job_id.to_string()),
                (LABEL_TICKET.to_string(), ticket.to_string()),
                (LABEL_OWNER_HOST.to_string(), host_name()),
                (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
            ])),
            network_disabled: Some(true),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

fn valid_job_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
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

/// A running job container. Remove it with [`Container::remove`]; dropping it also removes it, in the background.
pub struct Container {
    docker: Docker,
    id: String,
    cap: usize,
    removed: bool,
}

impl Container {
    /// The Docker container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Copies the host directory `src` (a git checkout, `.git` included) into `/workspace`, every entry owned by
    /// 1000:1000. Symlinks are copied as symlinks; sockets, fifos and devices are skipped.
    pub async fn upload_dir(&self, src: &Path) -> Result<(), SandboxError> {
        let meta = std::fs::metadata(src).map_err(io_err(format!("reading {}", src.display())))?;
        if !meta.is_dir() {
            return Err(SandboxError::Io {
                context: format!("uploading {}", src.display()),
                source: io::Error::other("not a directory"),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let root = src.to_path_buf();
        let producer = tokio::task::spawn_blocking(move || {
            let writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let result = write_dir_tar(&root, writer);
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

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let dest_owned = dest.to_path_buf();
        let consumer = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            unpack_workspace(reader, &dest_owned)
        });
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path(WORKSPACE)
            .build();
        let mut stream = self.docker.download_from_container(&self.id, Some(opts));
        let mut stream_err = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if tx.send(bytes).await.is_err() {
                        break; // the unpacker stopped early; its error is reported below
                    }
                }
                Err(e) => {
                    stream_err = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let unpacked = consumer
            .await
            .map_err(|e| SandboxError::Exec(format!("unpack task failed: {e}")))?;
        if let Some(e) = stream_err {
            return Err(docker_err("download workspace")(e));
        }
        unpacked
    }

    /// Reads `/workspace/<rel>`. Errors if it is missing, not a regular file, or larger than `max_bytes`.
    pub async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
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
    pub async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
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

    /// Runs `bash -c command` in `/workspace` as uid 1000, killed after `timeout` (see [`EXEC_GRACE`] for the
    /// host-side backstop). A non-zero exit is an `Ok` [`ExecOutput`]; `Err` means the exec itself failed.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        // `timeout 0` would mean "no timeout": keep a floor.
        let timeout = timeout.max(Duration::from_millis(100));
        let cmd = vec![
            "timeout".to_string(),
            "-k".to_string(),
            format!("{KILL_AFTER_SECS}s"),
            format!("{:.3}s", timeout.as_secs_f64()),
            "bash".to_string(),
            "-c".to_string(),
            command.to_string(),
        ];
        let started = Instant::now();
        let mut out = self.run(cmd, None, timeout + EXEC_GRACE).await?;
        // 124: timeout's TERM worked; 137: it had to KILL. Either only counts once the time is actually up, so a
        // command that itself exits 124 (or is OOM-killed early) is not mistaken for a timeout.
        if matches!(out.exit_code, Some(124) | Some(137)) && started.elapsed() >= timeout {
            out.timed_out = true;
        }
        Ok(out)
    }

    /// Creates and runs one exec, feeding `stdin` if given, bounded on the host by `host_timeout`.
    async fn run(
        &self,
        cmd: Vec<String>,
        stdin: Option<&[u8]>,
        host_timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let opts = CreateExecOptions {
            cmd: Some(cmd),
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            user: Some(format!("{AGENT_UID}:{AGENT_UID}")),
            working_dir: Some(WORKSPACE.to_string()),
            privileged: Some(false),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&self.id, opts)
            .await
            .map_err(docker_err("create exec"))?;
        let mut collector = OutputCap::new(self.cap);

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
                }
                Ok::<(), SandboxError>(())
            };
            let (fed, read) = tokio::join!(feed, read);
            read?;
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
                });
            }
        }

        let exit_code = self.exit_code(&exec.id).await?;
        let (output, truncated) = collector.finish();
        Ok(ExecOutput {
            exit_code,
            output,
            truncated,
            timed_out: false,
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
    /// process uid 1000 may signal. The container's init and keeper run as [`KEEPER_USER`], which uid 1000 cannot
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

    /// Force-removes the container and its workspace volume.
    pub async fn remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        force_remove(&self.docker, &self.id).await?;
        tracing::info!(container = %self.id, "sandbox container removed");
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let id = std::mem::take(&mut self.id);
        match tokio::runtime::Handle::try_current() {
            // The normal error path: remove in the background on the caller's runtime.
            Ok(handle) if !std::thread::panicking() => {
                let docker = self.docker.clone();
                handle.spawn(async move {
                    match force_remove(&docker, &id).await {
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
            _ => remove_blocking(id),
        }
    }
}

/// Force-removes a container from a fresh thread, runtime and Docker client, waiting at most 20 s.
fn remove_blocking(id: String) {
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
                        force_remove(&docker, &thread_id)
                            .await
                            .map_err(|e| e.to_string())
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

// ---- output cap ------------------------------------------------------------------------------------------------

/// Keeps the first half and the last half of a byte stream within `cap` bytes.
struct OutputCap {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl OutputCap {
    fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        OutputCap {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            total: 0,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// The kept text, and whether anything was dropped.
    fn finish(self) -> (String, bool) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let tail: Vec<u8> = self.tail.into_iter().collect();
        if kept == self.total {
            let mut all = self.head;
            all.extend_from_slice(&tail);
            return (String::from_utf8_lossy(&all).into_owned(), false);
        }
        let omitted = self.total - kept;
        let text = format!(
            "{}\n[... {omitted} bytes omitted ...]\n{}",
            String::from_utf8_lossy(&self.head),
            String::from_utf8_lossy(&tail)
        );
        (text, true)
    }
}

// ---- tar streaming helpers -------------------------------------------------------------------------------------

const CHUNK: usize = 256 * 1024;

/// Blocking `Write` that sends chunks to an async channel (the upload body).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Blocking `Read` over chunks arriving on an async channel (the download body).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Writes `root`'s tree as a tar (paths relative to `root`, owner 1000:1000, no setuid/setgid/sticky bits).
fn write_dir_tar(root: &Path, writer: ChannelWriter) -> io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&full)?;
            let ft = meta.file_type();
            let mut header = tar::Header::new_gnu();
            header.set_uid(AGENT_UID);
            header.set_gid(AGENT_UID);
            header.set_mtime(mtime_of(&meta));
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode_of(&meta) | 0o700);
                header.set_size(0);
                builder.append_data(&mut header, &rel_path, io::empty())?;
                stack.push(rel_path);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &rel_path, &target)?;
            } else if ft.is_file() {
                let file = std::fs::File::open(&full)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode_of(&meta) | 0o600);
                header.set_size(meta.len());
                // Take exactly the stat'ed length, so a file growing meanwhile cannot corrupt the archive.
                builder.append_data(&mut header, &rel_path, file.take(meta.len()))?;
            } else {
                tracing::debug!(path = %rel_path.display(), "skipping special file in upload");
            }
        }
    }
    let mut writer = builder.into_inner()?;
    io::Write::flush(&mut writer)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

fn mtime_of(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deletes everything directly inside `dest` except `.git` (never following symlinks).
fn clear_except_git(dest: &Path) -> Result<(), SandboxError> {
    let entries = std::fs::read_dir(dest).map_err(io_err(format!("listing {}", dest.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dest.display())))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(io_err(format!("reading {}", path.display())))?;
        let removed = if ft.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("deleting {}", path.display())))?;
    }
    Ok(())
}

/// A tar entry's path with the archive's root directory (`workspace/`) stripped, checked to stay inside the
/// destination. `Ok(None)` for the root itself.
fn entry_rel_path(raw: &Path) -> Result<Option<PathBuf>, SandboxError> {
    let unsafe_entry = |reason| SandboxError::UnsafeArchive {
        entry: raw.display().to_string(),
        reason,
    };
    let mut comps = raw.components().filter(|c| !matches!(c, Component::CurDir));
    match comps.next() {
        Some(Component::Normal(_)) => {}
        None => return Ok(None),
        Some(_) => return Err(unsafe_entry("absolute path or `..`")),
    }
    let mut rel = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(p) => rel.push(p),
            _ => return Err(unsafe_entry("absolute path or `..`")),
        }
    }
    if rel.as_os_str().is_empty() {
        Ok(None)
    } else {
        Ok(Some(rel))
    }
}

/// Whether any component is `.git` (any case: case-insensitive filesystems would resolve `.GIT` to `.git`).
fn touches_git(rel: &Path) -> bool {
    rel.components()
        .any(|c| matches!(c, Component::Normal(p) if p.eq_ignore_ascii_case(".git")))
}

/// Makes sure every parent of `dest/rel` is a real directory (created as needed, never a symlink).
fn ensure_parents(dest: &Path, rel: &Path) -> Result<(), SandboxError> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SandboxError::UnsafeArchive {
                    entry: rel.display().to_string(),
                    reason: "a parent is a symlink or file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(io_err(format!("creating {}", cur.display())))?
            }
            Err(e) => return Err(io_err(format!("reading {}", cur.display()))(e)),
        }
    }
    Ok(())
}

/// Removes whatever non-directory is at `path` so a new entry can be created without following it.
fn clear_slot(path: &Path, keep_dir: bool) -> Result<(), SandboxError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(io_err(format!("deleting {}", path.display())))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io_err(format!("deleting {}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

fn unpack_workspace(reader: impl Read, dest: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let ctx = || format!("unpacking the workspace into {}", dest.display());
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(io_err(ctx()))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(ctx()))?;
        let raw = entry.path().map_err(io_err(ctx()))?.into_owned();
        let Some(rel) = entry_rel_path(&raw)? else {
            continue;
        };
        if touches_git(&rel) {
            continue;
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                ensure_parents(dest, &rel)?;
                clear_slot(&target, true)?;
                if std::fs::symlink_metadata(&target).is_err() {
                    std::fs::create_dir(&target)
                        .map_err(io_err(format!("creating {}", target.display())))?;
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(format!("chmod {}", target.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                // create_new: O_EXCL never follows a symlink that appeared meanwhile.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                io::copy(&mut entry, &mut file)
                    .map_err(io_err(format!("writing {}", target.display())))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err(ctx()))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_err(format!("creating symlink {}", target.display())))?;
            }
            tar::EntryType::Link => {
                // A hard link inside the archive: copy the already-unpacked file, refusing anything but a regular
                // file reached through real directories.
                let link = entry
                    .link_name()
                    .map_err(io_err(ctx()))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let Some(src_rel) = entry_rel_path(&link)? else {
                    continue;
                };
                if touches_git(&src_rel) {
                    continue;
                }
                ensure_parents(dest, &src_rel)?;
                let src = dest.join(&src_rel);
                let is_file = std::fs::symlink_metadata(&src)
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                if !is_file {
                    return Err(SandboxError::UnsafeArchive {
                        entry: raw.display().to_string(),
                        reason: "hard link to something other than an unpacked regular file",
                    });
                }
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                let mut from = std::fs::File::open(&src)
                    .map_err(io_err(format!("reading {}", src.display())))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                io::copy(&mut from, &mut file)
                    .map_err(io_err(format!("writing {}", target.display())))?;
            }
            // PAX/GNU extension headers are consumed by the tar crate; devices and fifos are not workspace content.
            _ => {}
        }
    }
    Ok(())
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
        assert!(valid_job_id("job-1_a.b"));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id("-x"));
        assert!(!valid_job_id("a/b"));
        assert!(!valid_job_id(&"a".repeat(101)));
    }

    #[test]
    fn output_cap_keeps_head_and_tail() {
        let mut c = OutputCap::new(10);
        c.push(b"0123");
        c.push(b"456789");
        assert_eq!(c.finish(), ("0123456789".to_string(), false));

        let mut c = OutputCap::new(10);
        for b in b"abcdefghijklmnopqrstuvwxyz".chunks(3) {
            c.push(b);
        }
        let (text, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(text, "abcde\n[... 16 bytes omitted ...]\nvwxyz");

        let mut c = OutputCap::new(4);
        c.push(&[b'x'; 1000]);
        c.push(b"END");
        let (text, truncated) = c.finish();
        assert!(truncated);
        assert_eq!(text, "xx\n[... 999 bytes omitted ...]\nND");
    }

    #[test]
    fn entry_paths_are_confined() {
        assert_eq!(entry_rel_path(Path::new("workspace/")).unwrap(), None);
        assert_eq!(
            entry_rel_path(Path::new("workspace/a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert!(entry_rel_path(Path::new("/etc/passwd")).is_err());
        assert!(entry_rel_path(Path::new("workspace/../../x")).is_err());
        assert!(touches_git(Path::new(".git/hooks/evil")));
        assert!(touches_git(Path::new("sub/.GIT/config")));
        assert!(!touches_git(Path::new("a/.gitignore")));
    }

    /// A hostile archive: a symlink to outside, then a file "through" it. Nothing may land outside `dest`.
    #[test]
    fn unpack_never_writes_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "workspace/out", outside.path())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "workspace/out/pwned", &b"hi"[..])
            .unwrap();
        let data = b.into_inner().unwrap();
        let err = unpack_workspace(&data[..], dest.path()).unwrap_err();
        assert!(matches!(err, SandboxError::UnsafeArchive { .. }), "{err}");
        assert!(!outside.path().join("pwned").exists());
        assert!(std::fs::symlink_metadata(dest.path().join("out"))
            .unwrap()
            .is_symlink());
    }
}
