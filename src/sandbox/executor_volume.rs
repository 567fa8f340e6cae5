//! The executor binary's way into containers: a read-only named volume keyed by the binary's SHA-256, filled
//! once per binary by a short-lived filler container.

use super::*;

impl Sandbox {
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
                // Sandboxes of this process fill one at a time; the one that waited finds the volume filled.
                let _filling = FILL_LOCK.lock().await;
                let known = EXECUTOR_VOLUME
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|(s, _)| *s == stamp)
                    .map(|(_, name)| name.clone());
                if let Some(name) = known {
                    return Ok(name);
                }
                // Hashed and later uploaded from the file in chunks: the binary is tens of MB, never held whole.
                let hashed = path.clone();
                let (digest, len) = tokio::task::spawn_blocking(move || file_sha256(&hashed))
                    .await
                    .map_err(|e| SandboxError::Exec(format!("hashing task failed: {e}")))?
                    .map_err(io_err(format!("reading {}", path.display())))?;
                let name = format!("drafter-sandboxd-{}", &digest[..16]);
                let binary = Binary { path: &path, len };
                fill_executor_volume(&self.docker, &self.cfg.image, &name, &digest, binary).await?;
                tracing::info!(volume = %name, binary = %path.display(), "sandbox executor volume ready");
                *EXECUTOR_VOLUME.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, name.clone()));
                Ok(name)
            })
            .await
            .map(String::as_str)
    }
}

/// The executor's volume at [`EXECUTOR_DIR`] (never copied from the image; read-only everywhere but in the filler).
pub(super) fn executor_mount(volume: &str, read_only: bool) -> Mount {
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

/// Read size of the executor binary's chunks, for hashing and for the upload.
const READ_CHUNK: usize = 256 * 1024;

/// Hex SHA-256 and length of the file at `path`, read a chunk at a time.
pub(super) fn file_sha256(path: &Path) -> io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// The executor binary on disk, and its length when it was hashed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Binary<'a> {
    pub(super) path: &'a Path,
    pub(super) len: u64,
}

/// Makes sure volume `name` holds exactly `binary` (see [`Sandbox::executor_volume`]).
pub(super) async fn fill_executor_volume(
    docker: &Docker,
    image: &str,
    name: &str,
    digest: &str,
    binary: Binary<'_>,
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
        // Another runner on this engine may be writing the same bytes into the same volume right now, and a write
        // replaces the file in place: a read-back can see its half-written copy. So a mismatch right after a write
        // is first re-read after a pause (the other write ends), and written again only if it persists.
        let mut wrote_last = false;
        for attempt in 0..FILL_ATTEMPTS {
            let held = container_file_sha256(
                docker,
                &created.id,
                &format!("{EXECUTOR_DIR}/{EXECUTOR_BIN}"),
            )
            .await?;
            if held.as_deref() == Some(digest) {
                return Ok(());
            }
            if attempt + 1 == FILL_ATTEMPTS {
                break;
            }
            if wrote_last {
                wrote_last = false;
                let mut jitter = [0u8; 1];
                let _ = getrandom::fill(&mut jitter);
                let pause = 100 * (attempt as u64 + 1) + u64::from(jitter[0]);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            upload_binary(docker, &created.id, binary).await?;
            wrote_last = true;
        }
        Err(SandboxError::Exec(format!(
            "volume {name} does not hold the executor binary after writing it"
        )))
    }
    .await;
    force_remove(docker, &created.id).await?;
    result
}

/// Uploads `binary` into the container's [`EXECUTOR_DIR`] as a one-entry tar, streamed from the file: at most a
/// few chunks are in memory at once.
async fn upload_binary(
    docker: &Docker,
    container: &str,
    binary: Binary<'_>,
) -> Result<(), SandboxError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let (path, len) = (binary.path.to_path_buf(), binary.len);
    let producer = tokio::task::spawn_blocking(move || {
        let result = write_binary_tar(&path, len, tx.clone());
        if let Err(e) = &result {
            // Make the upload fail rather than succeed with a partial file.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let opts = UploadToContainerOptionsBuilder::new()
        .path(EXECUTOR_DIR)
        .build();
    let uploaded = docker
        .upload_to_container(container, Some(opts), bollard::body_try_stream(body))
        .await;
    let produced = producer
        .await
        .map_err(|e| SandboxError::Exec(format!("executor tar task failed: {e}")))?;
    produced.map_err(io_err(format!("packing {}", binary.path.display())))?;
    uploaded.map_err(docker_err("upload executor"))
}

/// Writes the tar of the executor binary (`len` bytes at `path`, as hashed) into `tx`, a chunk at a time; a file
/// that is no longer `len` bytes long is an error, never a tar whose header lies about its size.
fn write_binary_tar(
    path: &Path,
    len: u64,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let send = |chunk: Vec<u8>| {
        tx.blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    };
    let mut header = tar::Header::new_gnu();
    header.set_path(EXECUTOR_BIN)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(len);
    header.set_mode(0o555);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    send(header.as_bytes().to_vec())?;
    let mut file = std::fs::File::open(path)?.take(len);
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sent += n as u64;
        send(buf)?;
    }
    if sent != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file changed while it was uploaded ({sent} of {len} bytes)"),
        ));
    }
    // The entry padded to a whole block, then the archive's two zero blocks.
    let pad = (512 - (len % 512) as usize) % 512;
    send(vec![0u8; pad + 1024])
}

/// Hex SHA-256 of a regular file in a (possibly stopped) container, read through the archive API as a stream;
/// `None` if it is not there.
pub(super) async fn container_file_sha256(
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<Option<String>, SandboxError> {
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(opts));
    // The first chunk tells a missing file (404) from one that is there.
    let first = match stream.next().await {
        None => return Ok(None),
        Some(Ok(c)) => c,
        Some(Err(e)) if status_code(&e) == Some(404) => return Ok(None),
        Some(Err(e)) => return Err(docker_err("download")(e)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let hasher = tokio::task::spawn_blocking(move || -> io::Result<Option<String>> {
        let mut archive = tar::Archive::new(ChannelReader {
            rx,
            chunk: Bytes::new(),
        });
        let mut entries = archive.entries()?;
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let mut entry = entry?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                return Ok(Some(hex::encode(hasher.finalize())));
            }
            hasher.update(&buf[..n]);
        }
    });
    let mut failed = None;
    if tx.send(first).await.is_ok() {
        while let Some(chunk) = stream.next().await {
            match chunk {
                // A closed channel: the reader has what it needs (or failed, which it reports).
                Ok(c) => {
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    drop(tx);
    let hashed = hasher
        .await
        .map_err(|e| SandboxError::Exec(format!("hashing task failed: {e}")))?;
    // A download cut short would look like a shorter file: its error wins.
    if let Some(e) = failed {
        return Err(docker_err("download")(e));
    }
    hashed.map_err(io_err(format!("reading {path}")))
}

/// A blocking reader over chunks sent from async code.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// The executor binary (path, size, mtime) last put into a volume by this process, and that volume's name.
pub(super) type ExecutorStamp = (PathBuf, u64, Option<std::time::SystemTime>);
pub(super) static EXECUTOR_VOLUME: std::sync::Mutex<Option<(ExecutorStamp, String)>> =
    std::sync::Mutex::new(None);

/// Held while this process fills an executor volume.
static FILL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads of the executor volume before a fill gives up: writes alternate with pauses, so several runners filling
/// the same volume at once settle (see [`fill_executor_volume`]).
const FILL_ATTEMPTS: usize = 7;
