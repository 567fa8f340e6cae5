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

/// Makes sure volume `name` holds exactly `binary` (see [`Sandbox::executor_volume`]).
pub(super) async fn fill_executor_volume(
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
        // Another runner on this engine may be writing the same bytes into the same volume right now, and a write
        // replaces the file in place: a read-back can see its half-written copy. So a mismatch right after a write
        // is first re-read after a pause (the other write ends), and written again only if it persists.
        let mut wrote_last = false;
        for attempt in 0..FILL_ATTEMPTS {
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

/// A regular file out of a (possibly stopped) container through the archive API; `None` if it is not there.
pub(super) async fn read_container_file(
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

/// The executor binary (path, size, mtime) last put into a volume by this process, and that volume's name.
pub(super) type ExecutorStamp = (PathBuf, u64, Option<std::time::SystemTime>);
pub(super) static EXECUTOR_VOLUME: std::sync::Mutex<Option<(ExecutorStamp, String)>> =
    std::sync::Mutex::new(None);

/// Held while this process fills an executor volume.
static FILL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads of the executor volume before a fill gives up: writes alternate with pauses, so several runners filling
/// the same volume at once settle (see [`fill_executor_volume`]).
const FILL_ATTEMPTS: usize = 7;
