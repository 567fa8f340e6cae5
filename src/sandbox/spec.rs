//! What a job container is: the create request with every hardening setting, in one place so it can be read
//! (and reviewed) as a whole.

use super::*;

impl Sandbox {
    pub(super) fn container_body(
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
            // An anonymous volume: writable through the archive API despite the read-only rootfs. Docker copies
            // the image's (empty) `/workspace` into it at create, with a helper process; with an executor the
            // volume is mounted without that copy instead (below).
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
            // SETPCAP only to empty the bounding set at start, CHOWN only to hand the fresh workspace volume to the
            // agent; the executor drops both before it serves anything.
            host_config.cap_add = Some(vec![
                "CHOWN".into(),
                "SETPCAP".into(),
                "SETUID".into(),
                "SETGID".into(),
                "KILL".into(),
                "DAC_READ_SEARCH".into(),
            ]);
            // The workspace as an anonymous volume without the copy-up (`nocopy`): Docker starts no `docker-tar`
            // process per container for it, and removes it with the container all the same (`v=true`).
            body.volumes = None;
            host_config.mounts = Some(vec![
                Mount {
                    target: Some(WORKSPACE.into()),
                    typ: Some(MountType::VOLUME),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                executor_mount(volume, true),
            ]);
        }
        body.host_config = Some(host_config);
        body
    }
}
