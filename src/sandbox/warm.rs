//! Warm start: a few pre-started containers per container shape, taken by jobs instead of starting their own.
//!
//! Creating and starting a hardened container is most of a cold start (see BENCHMARKS.md). With
//! `sandbox.pool_size = N`, this process keeps up to N containers per *shape* started, attached and answering pings;
//! a job takes one, renames it `drafter-<job id>` (so [`super::Sandbox::remove_job`] finds it by name like any job
//! container), uploads its workspace, and a refill starts in the background. The shape is everything that goes into
//! the create request except the labels (image, limits, runtime, network, executor volume), hashed: jobs whose
//! policy tightens a limit get their own shape, never a looser container.
//!
//! The pool is process-wide because the worker makes a [`super::Sandbox`] per job (with that job's limits). Pooled
//! containers carry the owner labels, so a crashed runner's pool is removed by the next start's orphan sweep;
//! `drafter serve` drains the pool when it stops.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RenameContainerOptionsBuilder};
use bollard::Docker;
use sha2::{Digest, Sha256};

use super::executor_client::DaemonClient;
use super::{
    docker_err, force_remove, status_code, ExecLimits, SandboxError, LABEL_JOB, LABEL_TICKET,
    READY_TIMEOUT,
};

/// Label marking a pooled container with its shape.
pub const LABEL_POOL: &str = "drafter.pool";

/// A started container waiting for a job.
pub(super) struct Warm {
    pub(super) id: String,
    pub(super) executor: DaemonClient,
}

#[derive(Default)]
struct Shape {
    ready: Vec<Warm>,
    /// Containers being started for this shape right now.
    filling: usize,
}

static POOL: Mutex<Option<HashMap<String, Shape>>> = Mutex::new(None);

fn with_pool<T>(f: impl FnOnce(&mut HashMap<String, Shape>) -> T) -> T {
    // A panic while holding the lock leaves plain data behind: keep using it.
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// The shape of a create request: its hash without the job's labels.
pub(super) fn shape_of(body: &ContainerCreateBody) -> String {
    let mut b = body.clone();
    if let Some(labels) = b.labels.as_mut() {
        labels.remove(LABEL_JOB);
        labels.remove(LABEL_TICKET);
    }
    // HashMaps (labels, tmpfs) serialise in a random order: sort every object's keys, or the same shape would
    // hash differently each time.
    let value = sorted(serde_json::to_value(&b).unwrap_or_default());
    let json = serde_json::to_vec(&value).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..12])
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Takes a warm container of this shape, if one is ready.
pub(super) fn take(shape: &str) -> Option<Warm> {
    with_pool(|p| p.get_mut(shape).and_then(|s| s.ready.pop()))
}

/// Starts containers in the background until the shape has `size` ready or starting, after `delay` (a refill
/// right after a take waits a moment, so the new container's start does not compete with the job that took one
/// for the CPU while it moves its workspace in).
pub(super) fn refill(
    docker: &Docker,
    shape: &str,
    body: &ContainerCreateBody,
    limits: ExecLimits,
    size: usize,
    delay: Duration,
) {
    let wanted = with_pool(|p| {
        let s = p.entry(shape.to_string()).or_default();
        let wanted = size.saturating_sub(s.ready.len() + s.filling);
        s.filling += wanted;
        wanted
    });
    if wanted == 0 {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        with_pool(|p| p.entry(shape.to_string()).or_default().filling -= wanted);
        return;
    };
    for _ in 0..wanted {
        let (docker, shape, body) = (docker.clone(), shape.to_string(), body.clone());
        handle.spawn(async move {
            tokio::time::sleep(delay).await;
            let started = start_warm(&docker, &shape, body, limits).await;
            let leftover = with_pool(|p| {
                let s = p.entry(shape.clone()).or_default();
                s.filling = s.filling.saturating_sub(1);
                match started {
                    Ok(w) => {
                        s.ready.push(w);
                        None
                    }
                    Err(e) => Some(e),
                }
            });
            if let Some(e) = leftover {
                tracing::warn!(error = %e, "could not start a pooled sandbox container");
            }
        });
    }
}

async fn start_warm(
    docker: &Docker,
    shape: &str,
    mut body: ContainerCreateBody,
    limits: ExecLimits,
) -> Result<Warm, SandboxError> {
    if let Some(labels) = body.labels.as_mut() {
        labels.remove(LABEL_JOB);
        labels.remove(LABEL_TICKET);
        labels.insert(LABEL_POOL.to_string(), shape.to_string());
    }
    let mut nonce = [0u8; 6];
    getrandom::fill(&mut nonce).map_err(|e| SandboxError::Exec(format!("no randomness: {e}")))?;
    let name = format!("drafter-pool-{}", hex::encode(nonce));
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = docker
        .create_container(Some(opts), body)
        .await
        .map_err(docker_err("create pooled container"))?;
    let ready = async {
        let executor = DaemonClient::attach(docker, &created.id, limits).await?;
        docker
            .start_container(&created.id, None)
            .await
            .map_err(docker_err("start pooled container"))?;
        executor.ready(READY_TIMEOUT).await?;
        Ok::<_, SandboxError>(executor)
    }
    .await;
    match ready {
        Ok(executor) => Ok(Warm {
            id: created.id,
            executor,
        }),
        Err(e) => {
            let _ = force_remove(docker, &created.id).await;
            Err(e)
        }
    }
}

/// Renames a taken container to the job's name, replacing a stale container of that name (an earlier attempt).
pub(super) async fn claim(docker: &Docker, id: &str, name: &str) -> Result<(), SandboxError> {
    let opts = RenameContainerOptionsBuilder::new().name(name).build();
    match docker.rename_container(id, opts.clone()).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(409) => {
            tracing::warn!(container = %name, "removing stale container of the same job");
            force_remove(docker, name).await?;
            docker
                .rename_container(id, opts)
                .await
                .map_err(docker_err("rename pooled container"))
        }
        Err(e) => Err(docker_err("rename pooled container")(e)),
    }
}

/// Waits until the shape has `size` containers ready (or `within` passes).
pub(super) async fn wait_full(shape: &str, size: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (ready, filling) = with_pool(|p| {
            p.get(shape)
                .map(|s| (s.ready.len(), s.filling))
                .unwrap_or((0, 0))
        });
        if ready >= size || (ready + filling == 0 && size == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes every ready pooled container of this process (all shapes); waits for those still starting first.
pub async fn drain(docker: &Docker) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    while with_pool(|p| p.values().any(|s| s.filling > 0)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = with_pool(|p| {
        p.values_mut()
            .flat_map(|s| s.ready.drain(..).map(|w| w.id))
            .collect()
    });
    let mut removed = 0;
    for id in ids {
        match force_remove(docker, &id).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "could not remove a pooled container")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_hashes_the_same_every_time_and_ignores_the_job() {
        let body = |job: &str| ContainerCreateBody {
            image: Some("img".into()),
            labels: Some(
                (0..20)
                    .map(|i| (format!("k{i}"), format!("v{i}")))
                    .chain([(LABEL_JOB.to_string(), job.to_string())])
                    .collect(),
            ),
            ..Default::default()
        };
        let first = shape_of(&body("a"));
        for i in 0..20 {
            assert_eq!(shape_of(&body(&format!("job{i}"))), first);
        }
        let mut other = body("a");
        other.image = Some("img2".into());
        assert_ne!(shape_of(&other), first);
    }
}
