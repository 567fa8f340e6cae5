//! The per-job network for `allowlist:` jobs: an internal network with no host address, and the egress proxy
//! container on it (see [`crate::sandboxd::egress`] for the proxy and why the network is built this way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
};
use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

use super::{
    docker_err, executor_mount, force_remove, owned_labels, status_code, SandboxError,
    CONTAINER_ENV, EXECUTOR_BIN, EXECUTOR_DIR, LABEL_JOB,
};
use crate::sandboxd::egress::{ConnRecord, EgressRules, PROXY_PORT};

/// Records kept per job at most (a runaway loop of requests must not grow the worker without bound).
const MAX_RECORDS: usize = 10_000;
/// The alias the proxy has on the job network (also reachable by address, which is what the sandbox is given).
const PROXY_ALIAS: &str = "egress-proxy";

/// The job network's name.
pub(super) fn network_name(job_id: &str) -> String {
    format!("drafter-net-{job_id}")
}

/// The proxy container's name.
pub(super) fn proxy_name(job_id: &str) -> String {
    format!("drafter-proxy-{job_id}")
}

/// A job's egress: what to give the job container, and the records the proxy reports.
pub(super) struct JobEgress {
    pub(super) network: String,
    pub(super) proxy_url: String,
    pub(super) records: Arc<Mutex<RecordLog>>,
}

/// What the proxy reported so far.
#[derive(Default)]
pub(super) struct RecordLog {
    pub(super) records: Vec<ConnRecord>,
    pub(super) dropped: u64,
}

fn labels(job_id: &str, role: &str) -> HashMap<String, String> {
    owned_labels([
        (LABEL_JOB, job_id.to_string()),
        ("drafter.role", role.to_string()),
    ])
}

/// Creates the job network and starts the proxy on it. Anything left from an earlier attempt of the same job is
/// removed first. On error, whatever was made is removed again.
pub(super) async fn setup(
    docker: &Docker,
    image: &str,
    executor_volume: &str,
    job_id: &str,
    rules: &EgressRules,
) -> Result<JobEgress, SandboxError> {
    teardown(docker, job_id).await;
    let made = setup_inner(docker, image, executor_volume, job_id, rules).await;
    if made.is_err() {
        teardown(docker, job_id).await;
    }
    made
}

async fn setup_inner(
    docker: &Docker,
    image: &str,
    executor_volume: &str,
    job_id: &str,
    rules: &EgressRules,
) -> Result<JobEgress, SandboxError> {
    let network = network_name(job_id);
    docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            // No route out, and no address on the host: the sandbox reaches the proxy and nothing else.
            internal: Some(true),
            // No IPv6 on it either, whatever the daemon's defaults: Docker then disables IPv6 on the containers'
            // interfaces, so not even the bridge's link-local address (which is the host's) answers.
            enable_ipv6: Some(false),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.inhibit_ipv4".to_string(),
                "true".to_string(),
            )])),
            labels: Some(labels(job_id, "network")),
            ..Default::default()
        })
        .await
        .map_err(docker_err("create job network"))?;

    let mut cmd = vec![
        format!("{EXECUTOR_DIR}/{EXECUTOR_BIN}"),
        "egress-proxy".into(),
        "--listen".into(),
        format!("0.0.0.0:{PROXY_PORT}"),
        "--name".into(),
        rules.name.clone(),
        "--hosts".into(),
        rules.hosts.join(","),
    ];
    if !rules.methods.is_empty() {
        cmd.push("--methods".into());
        cmd.push(rules.methods.join(","));
    }
    if !rules.allow_addresses.is_empty() {
        cmd.push("--allow-addresses".into());
        cmd.push(rules.allow_addresses.join(","));
    }
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(Vec::new()),
        cmd: Some(cmd),
        env: Some(CONTAINER_ENV.iter().map(|s| s.to_string()).collect()),
        user: Some("65534:65534".into()),
        labels: Some(labels(job_id, "egress-proxy")),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            // The way out: Docker's default bridge. The job network is connected below.
            network_mode: Some("bridge".into()),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(64),
            memory: Some(256 << 20),
            memory_swap: Some(256 << 20),
            init: Some(true),
            mounts: Some(vec![executor_mount(executor_volume, true)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new()
        .name(&proxy_name(job_id))
        .build();
    let created = docker
        .create_container(Some(opts), body)
        .await
        .map_err(docker_err("create egress proxy"))?;
    let records = Arc::new(Mutex::new(RecordLog::default()));
    collect(docker, &created.id, records.clone()).await?;
    docker
        .start_container(&created.id, None)
        .await
        .map_err(docker_err("start egress proxy"))?;
    docker
        .connect_network(
            &network,
            NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(vec![PROXY_ALIAS.into()]),
                    ..Default::default()
                }),
            },
        )
        .await
        .map_err(docker_err("connect egress proxy"))?;
    let inspect = docker
        .inspect_container(&created.id, None)
        .await
        .map_err(docker_err("inspect egress proxy"))?;
    let ip = inspect
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&network).cloned())
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| {
            SandboxError::Exec("the egress proxy got no address on the job network".into())
        })?;
    Ok(JobEgress {
        network,
        proxy_url: format!("http://{ip}:{PROXY_PORT}"),
        records,
    })
}

/// Reads the proxy's stdout (one JSON record per line) into `log` until the container goes.
async fn collect(
    docker: &Docker,
    container: &str,
    log: Arc<Mutex<RecordLog>>,
) -> Result<(), SandboxError> {
    let opts = AttachContainerOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .stream(true)
        .build();
    let mut attached = docker
        .attach_container(container, Some(opts))
        .await
        .map_err(docker_err("attach egress proxy"))?;
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(Ok(item)) = attached.output.next().await {
            let LogOutput::StdOut { message } = item else {
                continue;
            };
            pending.extend_from_slice(&message);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let Ok(record) = serde_json::from_slice::<ConnRecord>(&line) else {
                    continue;
                };
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if log.records.len() < MAX_RECORDS {
                    log.records.push(record);
                } else {
                    log.dropped += 1;
                }
            }
            // A line longer than any record is not one.
            if pending.len() > 64 * 1024 {
                pending.clear();
            }
        }
    });
    Ok(())
}

/// Removes the job's proxy container and network, whatever state they are in (errors are logged, not returned:
/// this runs on every exit path).
pub(super) async fn teardown(docker: &Docker, job_id: &str) {
    if let Err(e) = force_remove(docker, &proxy_name(job_id)).await {
        tracing::warn!(job = job_id, error = %e, "could not remove the egress proxy");
    }
    remove_network(docker, &network_name(job_id)).await;
}

/// Removes a network, tolerating one that is already gone.
pub(super) async fn remove_network(docker: &Docker, name: &str) {
    match docker.remove_network(name).await {
        Ok(()) => {}
        Err(e) if status_code(&e) == Some(404) => {}
        Err(e) => tracing::warn!(network = name, error = %e, "could not remove the job network"),
    }
}
