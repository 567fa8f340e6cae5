//! A running job container: workspace in and out, tool calls through its executor, removal (explicit or on drop).

use super::*;

/// Where a container's start-up time went (for `drafter bench` and the logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Taken from the warm pool (then only `ready` (the take, the liveness check and the rename), `check` and
    /// `rename` are set).
    pub warm: bool,
    /// The create request.
    pub create: Duration,
    /// Attaching to the executor's stdin/stdout.
    pub attach: Duration,
    /// The start request.
    pub start: Duration,
    /// Until the executor answered its first ping (or, warm, until the container was the job's).
    pub ready: Duration,
    /// Warm: the liveness check of the taken container.
    pub check: Duration,
    /// Warm: renaming it for the job.
    pub rename: Duration,
}

/// A running job container. Remove it with [`Container::remove`]; dropping it also removes it, in the background.
pub struct Container {
    pub(super) docker: Docker,
    pub(super) id: String,
    pub(super) job_id: String,
    pub(super) limits: ExecLimits,
    pub(super) executor: Box<dyn Executor>,
    /// The job's network and egress proxy, for `allowlist:` jobs.
    pub(super) egress: Option<network::JobEgress>,
    pub(super) timings: StartTimings,
    pub(super) removed: bool,
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
            let t = Instant::now();
            let packed = tokio::task::spawn_blocking(move || {
                let mut buf = archive::CappedVec::new(UNPACK_MAX);
                write_dir_tar(&root, &mut buf).map(|()| buf.into_inner())
            })
            .await
            .map_err(|e| SandboxError::Exec(format!("tar task failed: {e}")))?;
            match packed {
                Ok(tar) => {
                    let (size, packed_in) = (tar.len(), t.elapsed());
                    if self.executor.unpack(tar).await? {
                        tracing::debug!(size, ?packed_in, unpacked_in = ?(t.elapsed() - packed_in), "workspace in");
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
    /// [`SandboxError::WorkspaceOverBudget`], having written no more than the budget. One tar stream through the
    /// executor when the transport has one ([`Executor::pack`]), else through the Docker archive API; either way
    /// the host checks every entry itself.
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
        let (tx, consumer) = spawn_unpacker(dest, budget);
        let within = budget.deadline.saturating_duration_since(Instant::now());
        let packed = self
            .executor
            .pack(budget.bytes, budget.entries, within, tx)
            .await;
        // Waiting for the unpacker means nothing is written after this returns; its refusal is the precise one.
        let unpacked = consumer
            .await
            .map_err(|e| SandboxError::Exec(format!("unpack task failed: {e}")))?;
        let stopped = match packed {
            Ok(Packed::Unsupported) => return self.download_archive(dest, budget).await,
            Ok(Packed::Done) => return unpacked,
            Ok(Packed::OverBytes) => budget.over_bytes(),
            Ok(Packed::OverEntries) => budget.over_entries(),
            Ok(Packed::OverTime) => budget.over_time(),
            Ok(Packed::Abandoned) => {
                SandboxError::Exec("the workspace unpacker stopped early".into())
            }
            Err(e) => e,
        };
        match unpacked {
            // The host's own refusal is the precise one.
            Err(
                e @ (SandboxError::WorkspaceOverBudget { .. } | SandboxError::UnsafeArchive { .. }),
            ) => Err(e),
            // Else the tar ended early because the executor stopped: its reason is the one.
            _ => Err(stopped),
        }
    }

    /// [`Container::download_workspace`] through the Docker archive API (the `docker-exec` transport).
    async fn download_archive(
        &self,
        dest: &Path,
        budget: archive::ReturnBudget,
    ) -> Result<(), SandboxError> {
        let (tx, consumer) = spawn_unpacker(dest, budget);
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

    /// The workspace's tool-call operations, through this container's executor and under its disk limit.
    pub fn workspace(&self) -> Workspace<'_> {
        Workspace::new(self.executor.as_ref(), self.limits.workspace_limit)
    }

    /// [`Workspace::read_file`].
    pub async fn read_file(&self, rel: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        self.workspace().read_file(rel, max_bytes).await
    }

    /// [`Workspace::write_file`].
    pub async fn write_file(&self, rel: &str, contents: &[u8]) -> Result<(), SandboxError> {
        self.workspace().write_file(rel, contents).await
    }

    /// [`Workspace::exec`].
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        self.workspace().exec(command, timeout).await
    }

    /// [`Workspace::list`].
    pub async fn list(&self, rel: &str, max_depth: u32) -> Result<String, SandboxError> {
        self.workspace().list(rel, max_depth).await
    }

    /// [`Workspace::search`].
    pub async fn search(&self, pattern: &str, rel: &str) -> Result<String, SandboxError> {
        self.workspace().search(pattern, rel).await
    }

    /// [`Workspace::check_disk`].
    pub async fn check_disk(&self) -> Result<u64, SandboxError> {
        self.workspace().check_disk().await
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

/// A blocking task unpacking the tar that arrives on the returned channel into `dest`, within `budget`.
fn spawn_unpacker(
    dest: &Path,
    budget: archive::ReturnBudget,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Result<(), SandboxError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let dest = dest.to_path_buf();
    let consumer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        unpack_workspace(reader, &dest, &budget)
    });
    (tx, consumer)
}

/// Force-removes a container from a fresh thread, runtime and Docker client, waiting at most 20 s.
pub(super) fn remove_blocking(id: String, egress_of: Option<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor that answers `pack` with whatever tar it was given, ignoring every limit asked of it: what a
    /// compromised `drafter-sandboxd` could send.
    struct Hostile(Vec<u8>);

    #[async_trait::async_trait]
    impl Executor for Hostile {
        fn name(&self) -> &'static str {
            "hostile"
        }
        async fn exec(
            &self,
            _: Vec<String>,
            _: Vec<u8>,
            _: Duration,
        ) -> Result<ExecOutput, SandboxError> {
            unreachable!()
        }
        async fn read_file(&self, _: &str, _: usize) -> Result<Vec<u8>, SandboxError> {
            unreachable!()
        }
        async fn write_file(&self, _: &str, _: &[u8]) -> Result<(), SandboxError> {
            unreachable!()
        }
        async fn list(&self, _: &str, _: u32) -> Result<String, SandboxError> {
            unreachable!()
        }
        async fn search(&self, _: &str, _: &str) -> Result<String, SandboxError> {
            unreachable!()
        }
        async fn disk_usage(&self) -> Result<u64, SandboxError> {
            unreachable!()
        }
        async fn pack(
            &self,
            _: u64,
            _: u64,
            _: Duration,
            sink: tokio::sync::mpsc::Sender<Bytes>,
        ) -> Result<Packed, SandboxError> {
            for piece in self.0.chunks(700) {
                if sink.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return Ok(Packed::Abandoned);
                }
            }
            Ok(Packed::Done)
        }
    }

    fn container(tar: Vec<u8>, workspace_limit: u64) -> Container {
        Container {
            // Never used: the lazy client connects on a first request.
            docker: Docker::connect_with_local_defaults().unwrap(),
            id: "hostile".into(),
            job_id: "hostile".into(),
            limits: ExecLimits {
                output_cap: 1000,
                output_limit: 1000,
                workspace_limit,
            },
            executor: Box::new(Hostile(tar)),
            egress: None,
            timings: StartTimings::default(),
            removed: true,
        }
    }

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if link.is_empty() {
            b.append_data(&mut h, path, data).unwrap();
        } else {
            b.append_link(&mut h, path, link).unwrap();
        }
    }

    /// What comes through the executor gets every check the archive API's stream gets: no writing through a
    /// symlink, no `.git`, no escaping paths, and the byte budget with hard links counted as copies.
    #[tokio::test]
    async fn the_host_checks_what_a_hostile_executor_packs() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join(".git")).unwrap();
        std::fs::write(dest.path().join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();

        // .git is ignored and left as it was; a plain file lands.
        let mut b = tar::Builder::new(Vec::new());
        entry(
            &mut b,
            tar::EntryType::Regular,
            "workspace/.git/hooks/pre-commit",
            "",
            b"evil",
        );
        entry(
            &mut b,
            tar::EntryType::Regular,
            "workspace/sub/.Git/config",
            "",
            b"evil",
        );
        entry(&mut b, tar::EntryType::Regular, "workspace/ok", "", b"fine");
        let c = container(b.into_inner().unwrap(), 1 << 20);
        c.download_workspace(dest.path()).await.unwrap();
        assert_eq!(std::fs::read(dest.path().join("ok")).unwrap(), b"fine");
        assert!(!dest.path().join(".git/hooks").exists());
        assert!(!dest.path().join("sub/.Git").exists());
        assert_eq!(
            std::fs::read(dest.path().join(".git/HEAD")).unwrap(),
            b"ref: refs/heads/main\n"
        );

        // A symlink out, then a file through it.
        let mut b = tar::Builder::new(Vec::new());
        entry(
            &mut b,
            tar::EntryType::Symlink,
            "workspace/out",
            outside.path().to_str().unwrap(),
            b"",
        );
        entry(
            &mut b,
            tar::EntryType::Regular,
            "workspace/out/pwned",
            "",
            b"hi",
        );
        let c = container(b.into_inner().unwrap(), 1 << 20);
        let err = c.download_workspace(dest.path()).await.unwrap_err();
        assert!(matches!(err, SandboxError::UnsafeArchive { .. }), "{err}");
        assert!(!outside.path().join("pwned").exists());

        // A hard link to a file outside (by path), and an escaping path.
        for (kind, path, link) in [
            (tar::EntryType::Link, "workspace/passwd", "../../etc/passwd"),
            (tar::EntryType::Regular, "workspace/../../escape", ""),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o644);
            // Raw names: the tar crate's builder refuses `..` itself.
            let old = h.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            let mut tar = h.as_bytes().to_vec();
            tar.extend([0u8; 1024]);
            let c = container(tar, 1 << 20);
            let err = c.download_workspace(dest.path()).await.unwrap_err();
            assert!(
                matches!(err, SandboxError::UnsafeArchive { .. }),
                "{path}: {err}"
            );
        }

        // An executor ignoring the budget: 50 hard links to a 1000-byte file, for a 10,500-byte workspace. The host
        // stops at its own budget, having written no more than it.
        let mut b = tar::Builder::new(Vec::new());
        entry(
            &mut b,
            tar::EntryType::Regular,
            "workspace/big",
            "",
            &[7u8; 1000],
        );
        for i in 0..50 {
            entry(
                &mut b,
                tar::EntryType::Link,
                &format!("workspace/l{i}"),
                "workspace/big",
                b"",
            );
        }
        let c = container(b.into_inner().unwrap(), 10_500);
        let err = c.download_workspace(dest.path()).await.unwrap_err();
        assert!(
            matches!(err, SandboxError::WorkspaceOverBudget { .. }),
            "{err}"
        );
        let written: u64 = std::fs::read_dir(dest.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(written <= 10_500, "{written}");
    }
}
