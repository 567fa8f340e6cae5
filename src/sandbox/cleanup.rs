//! Removal of what runners leave behind: orphans of dead runners at start-up (found by owner labels), and one
//! job's containers when its handle is gone with a cancelled task.

use super::*;

impl Sandbox {
    pub(super) async fn list_by_label(
        &self,
        label: String,
    ) -> Result<Vec<ContainerSummary>, SandboxError> {
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
    pub(super) async fn list_job_containers(
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
}
