//! The sandbox against a real Docker daemon and the real image (`images/sandbox/build.sh` must have been run).
//!
//! Every test uses its own job id (random suffix) and checks at the end that no container with that label is left,
//! so the tests can run in parallel. The `remove_orphans` test plants containers of crashed, live and remote runners,
//! so it takes a write lock that the other tests hold for reading.
//!
//! Long on purpose (over 700 lines): one hardening promise per test, against real Docker.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drafter::config::{SandboxConfig, Transport};
use drafter::sandbox::{Limit, Sandbox, SandboxError, EXEC_GRACE};
use support::sandbox::{connect, image, ok, sh, SECRETS};
use tokio::sync::RwLock;

static ORPHAN_LOCK: RwLock<()> = RwLock::const_new(());

fn config(output_cap_bytes: usize) -> SandboxConfig {
    config_for(Transport::Sandboxd, output_cap_bytes)
}

fn config_for(transport: Transport, output_cap_bytes: usize) -> SandboxConfig {
    SandboxConfig {
        image: image(),
        memory_mb: 512,
        cpus: 1.0,
        pids_limit: 256,
        tmp_size_mb: 64,
        command_timeout_secs: 30,
        output_cap_bytes,
        transport,
        max_output_mb: 4,
        workspace_max_mb: 256,
        ..SandboxConfig::default()
    }
}

async fn sandbox(output_cap_bytes: usize) -> Sandbox {
    sandbox_for(Transport::Sandboxd, output_cap_bytes).await
}

async fn sandbox_for(transport: Transport, output_cap_bytes: usize) -> Sandbox {
    connect(&config_for(transport, output_cap_bytes)).await
}

fn job_id(name: &str) -> String {
    support::sandbox::job_id("test", name)
}

/// Polls until no container carries the job label (bounded), failing the test otherwise.
async fn assert_no_containers(sb: &Sandbox, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = sb.job_containers(job).await.unwrap();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containers of {job} left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn container_is_locked_down() {
    let _g = ORPHAN_LOCK.read().await;
    support::sandbox::assert_secrets_planted();
    let sb = sandbox(64 * 1024).await;
    let job = job_id("lockdown");
    let t = Instant::now();
    let c = sb.start(&job, "DEMO-1").await.unwrap();
    eprintln!("start (create + start): {:?}", t.elapsed());

    // No network: only the loopback interface, no routes, and a connect to the host's side of Docker's default
    // bridge (an address on this machine) is unreachable.
    assert_eq!(ok(&c, "ls /sys/class/net").await.trim(), "lo");
    let probe = r#"python3 - <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("172.17.0.1", 9))
except OSError as e:
    print("refused", e.errno)
    sys.exit(1)
print("connected")
EOF"#;
    let out = sh(&c, probe).await;
    assert_ne!(out.exit_code, Some(0), "network reachable: {}", out.output);
    assert!(
        out.output.contains("refused 101"),
        "expected ENETUNREACH: {}",
        out.output
    );
    let out = sh(&c, "exec 3<>/dev/tcp/172.17.0.1/80").await;
    assert_ne!(out.exit_code, Some(0), "{}", out.output);

    // Unprivileged, no capabilities.
    assert_eq!(ok(&c, "id -u; id -g").await, "1000\n1000\n");
    let status = ok(&c, "grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status").await;
    for line in status.lines() {
        assert!(line.ends_with("0000000000000000"), "{status}");
    }
    assert!(ok(&c, "grep NoNewPrivs /proc/self/status")
        .await
        .contains('1'));

    // The host environment does not leak, neither into processes nor into the container config.
    let env = ok(&c, "env").await;
    let inspect = Command::new("docker")
        .args(["inspect", "-f", "{{json .Config.Env}}", c.id()])
        .output()
        .unwrap();
    let config_env = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(config_env.contains("HOME=/tmp"), "{config_env}");
    for (k, v) in SECRETS {
        assert!(
            !env.contains(v) && !env.contains(k),
            "{k} leaked into env: {env}"
        );
        assert!(!config_env.contains(v), "{k} leaked into Config.Env");
    }

    // Read-only root; /workspace and /tmp writable.
    let out = sh(&c, "echo x > /etc/x").await;
    assert_ne!(out.exit_code, Some(0));
    assert!(
        out.output.contains("Read-only file system") || out.output.contains("Permission denied")
    );
    let out = sh(&c, "touch /home/agent/x").await;
    assert!(
        out.output.contains("Read-only file system"),
        "{}",
        out.output
    );
    ok(
        &c,
        "echo w > /workspace/w && echo t > /tmp/t && cat /workspace/w /tmp/t",
    )
    .await;

    // Labels, and what Docker recorded about the limits.
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} \
             {{.HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} \
             {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.Config.User}} {{.Name}} \
             {{index .Config.Labels \"drafter.managed\"}} {{index .Config.Labels \"drafter.ticket\"}} \
             {{.HostConfig.CapAdd}}",
            c.id(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout).to_string();
    let expected = format!(
        "none true [ALL] [no-new-privileges] 256 536870912 536870912 1000000000 0:0 /drafter-{job} true DEMO-1 \
         [CHOWN SETPCAP SETUID SETGID KILL DAC_READ_SEARCH]"
    );
    assert_eq!(text.trim(), expected);

    // The executor runs as root, but the agent can neither signal nor trace it, nor read its environment.
    let pid = ok(
        &c,
        "pgrep -f drafter-sandboxd || ps -eo pid,comm | awk '/sandboxd/{print $1}'",
    )
    .await;
    let pid = pid.trim();
    assert!(!pid.is_empty());
    let out = sh(&c, &format!("kill -9 {pid}")).await;
    assert_ne!(out.exit_code, Some(0), "{}", out.output);
    let out = sh(&c, &format!("cat /proc/{pid}/environ")).await;
    assert_ne!(out.exit_code, Some(0), "{}", out.output);
    assert_eq!(ok(&c, "echo still-here").await, "still-here\n");

    // Per-exec latency, for the record.
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        ok(&c, "true").await;
    }
    eprintln!(
        "exec latency: {:?} per `true` (avg of {n})",
        t.elapsed() / n
    );

    // The workspace is an anonymous volume, removed together with the container.
    let volume = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{end}}",
            c.id(),
        ])
        .output()
        .unwrap();
    let volume = String::from_utf8_lossy(&volume.stdout).trim().to_string();
    let mounts: Vec<String> = volume
        .split("volume ")
        .filter(|m| !m.is_empty())
        .map(|m| m.trim().to_string())
        .collect();
    let workspace = mounts
        .iter()
        .find(|m| m.ends_with(" /workspace"))
        .unwrap_or_else(|| panic!("no workspace volume: {volume}"));
    let parts: Vec<&str> = workspace.split(' ').collect();
    // The executor's volume is shared and read-only; the agent cannot change the binary.
    assert!(
        mounts.iter().any(|m| m.ends_with(" /opt/drafter")),
        "{volume}"
    );
    let out = sh(&c, "echo x > /opt/drafter/drafter-sandboxd").await;
    assert_ne!(out.exit_code, Some(0));

    let t = Instant::now();
    c.remove().await.unwrap();
    eprintln!("remove: {:?}", t.elapsed());
    assert_no_containers(&sb, &job).await;
    let gone = Command::new("docker")
        .args(["volume", "inspect", parts[0]])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "workspace volume {} outlived its container",
        parts[0]
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn workspace_round_trip() {
    let _g = ORPHAN_LOCK.read().await;
    let sb = sandbox(64 * 1024).await;
    let job = job_id("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "original\n").unwrap();
    std::fs::write(d.join("doomed.txt"), "delete me\n").unwrap();
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("sub/deeper/keep.txt"), "keep\n").unwrap();
    std::fs::write(d.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    // Enough files for the executor to write them from several threads: each must still be the agent's.
    std::fs::create_dir_all(d.join("many")).unwrap();
    for i in 0..40 {
        std::fs::write(d.join(format!("many/f{i}")), format!("{i}\n")).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    git(d, &["init", "-q"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-q", "-m", "init"]);
    let head_before = git(d, &["rev-parse", "HEAD"]);

    let c = sb.start(&job, "DEMO-2").await.unwrap();
    let t = Instant::now();
    c.upload_dir(d).await.unwrap();
    eprintln!("upload_dir: {:?}", t.elapsed());

    // Everything is the agent's, git works inside, the executable bit survived.
    assert_eq!(
        ok(&c, "find /workspace ! -uid 1000 ! -gid 1000 | wc -l")
            .await
            .trim(),
        "0"
    );
    assert_eq!(
        ok(&c, "find /workspace ! -user 1000 | wc -l").await.trim(),
        "0"
    );
    assert_eq!(ok(&c, "./run.sh").await, "ran\n");
    assert_eq!(ok(&c, "cat many/f39").await, "39\n");
    assert_eq!(ok(&c, "git status --porcelain").await, "");
    assert_eq!(ok(&c, "git rev-parse HEAD").await, head_before);

    ok(
        &c,
        "echo changed > a.txt && rm doomed.txt && mkdir -p new && echo fresh > new/n.txt \
         && mkdir -p .git/hooks && echo evil > .git/hooks/evil && chmod +x .git/hooks/evil \
         && echo '[core] hooksPath = /tmp' >> .git/config \
         && mkdir -p sub/.git && echo nested > sub/.git/config \
         && ln -s /etc/passwd link",
    )
    .await;
    // A file that exists only on the host (not in the upload) must be gone after the download too.
    std::fs::write(d.join("host-only.txt"), "x").unwrap();

    let t = Instant::now();
    c.download_workspace(d).await.unwrap();
    eprintln!("download_workspace: {:?}", t.elapsed());

    assert_eq!(
        std::fs::read_to_string(d.join("a.txt")).unwrap(),
        "changed\n"
    );
    assert!(!d.join("doomed.txt").exists());
    assert!(!d.join("host-only.txt").exists());
    assert_eq!(
        std::fs::read_to_string(d.join("new/n.txt")).unwrap(),
        "fresh\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("sub/deeper/keep.txt")).unwrap(),
        "keep\n"
    );
    // The container's .git was ignored: no hook, no config change, no nested .git.
    assert!(!d.join(".git/hooks/evil").exists());
    assert!(!std::fs::read_to_string(d.join(".git/config"))
        .unwrap()
        .contains("hooksPath"));
    assert!(!d.join("sub/.git").exists());
    // The symlink came back as a link and was not followed.
    let link = std::fs::symlink_metadata(d.join("link")).unwrap();
    assert!(link.is_symlink());
    assert_eq!(
        std::fs::read_link(d.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit lost: {mode:o}");
    }
    // The host repository is intact and sees exactly the agent's changes.
    assert_eq!(git(d, &["rev-parse", "HEAD"]), head_before);
    let status = git(d, &["status", "--porcelain"]);
    assert!(status.contains(" M a.txt"), "{status}");
    assert!(status.contains(" D doomed.txt"), "{status}");
    assert!(status.contains("?? new/"), "{status}");

    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

#[tokio::test]
async fn exec_timeouts_exit_codes_and_output_cap() {
    exec_checks(Transport::Sandboxd).await;
}

#[tokio::test]
async fn exec_timeouts_exit_codes_and_output_cap_docker_exec() {
    exec_checks(Transport::DockerExec).await;
}

async fn exec_checks(transport: Transport) {
    let _g = ORPHAN_LOCK.read().await;
    let sb = sandbox_for(transport, 1000).await;
    let job = job_id(&format!("exec-{}", transport.as_str()));
    let c = sb.start(&job, "DEMO-3").await.unwrap();

    let out = sh(&c, "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.exit_code, Some(3));
    assert!(
        out.output.contains("out\n") && out.output.contains("err\n"),
        "{}",
        out.output
    );
    assert!(!out.timed_out && !out.truncated);

    // A command that exits 124 by itself is not a timeout.
    let out = sh(&c, "exit 124").await;
    assert_eq!(out.exit_code, Some(124));
    assert!(!out.timed_out);

    // Plain timeout: TERM stops it.
    let limit = Duration::from_secs(2);
    let t = Instant::now();
    let out = c.exec("echo start; sleep 60", limit).await.unwrap();
    let took = t.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.stopped_by, Some(Limit::Timeout));
    // coreutils `timeout` exits 124; the executor reports the TERM as a shell would (128 + 15).
    let expected = match transport {
        Transport::DockerExec => 124,
        Transport::Sandboxd => 143,
    };
    assert_eq!(out.exit_code, Some(expected));
    assert!(out.output.contains("start"));
    assert!(took >= limit && took < limit + EXEC_GRACE, "took {took:?}");

    // A command that ignores TERM is KILLed (timeout -k), with its children.
    let t = Instant::now();
    let out = c
        .exec("trap '' TERM; sleep 60 & sleep 60; wait", limit)
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert!(took < limit + EXEC_GRACE, "took {took:?}");
    let procs = ok(
        &c,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
    )
    .await;
    assert!(!procs.contains("sleep 60"), "leftover processes: {procs}");

    // A command that tries to disarm what supervises it (stops its parent: `timeout` under docker exec, which the
    // host backstop then covers; the root executor, which it may not signal): stopped all the same, every agent
    // process killed, and the container stays usable.
    let t = Instant::now();
    let out = c
        .exec(
            "echo before; kill -STOP $PPID; sleep 300",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let took = t.elapsed();
    eprintln!("backstop: {out:?} after {took:?}");
    assert!(out.timed_out, "{out:?}");
    if transport == Transport::DockerExec {
        assert_eq!(out.exit_code, None);
    }
    assert!(out.output.contains("before"));
    assert!(
        took < Duration::from_secs(1) + EXEC_GRACE + Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(ok(&c, "echo alive").await, "alive\n");
    let procs = ok(
        &c,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
    )
    .await;
    assert!(!procs.contains("sleep 300"), "leftover processes: {procs}");

    // Output cap: first half and last half kept, the cut marked.
    let out = sh(&c, "head -c 100000 /dev/zero | tr '\\0' a; echo; echo END").await;
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert!(
        out.output.starts_with(&"a".repeat(500)),
        "{}",
        &out.output[..50]
    );
    assert!(out.output.ends_with("END\n"), "{}", out.output);
    assert!(
        out.output.contains("[... 99005 bytes omitted ...]"),
        "{}",
        out.output
    );
    assert!(out.output.len() < 1100);

    // An infinite-output command is killed at the output limit (4 MiB here), well before its timeout.
    let t = Instant::now();
    let out = c.exec("yes flood", Duration::from_secs(60)).await.unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Output), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(out.truncated && out.output.len() < 1100);
    assert_eq!(ok(&c, "echo alive").await, "alive\n");

    drop(c); // removal through Drop is tested separately; here it just must not leak
    assert_no_containers(&sb, &job).await;
}

#[tokio::test]
async fn read_and_write_files() {
    file_checks(Transport::Sandboxd).await;
}

#[tokio::test]
async fn read_and_write_files_docker_exec() {
    file_checks(Transport::DockerExec).await;
}

async fn file_checks(transport: Transport) {
    let _g = ORPHAN_LOCK.read().await;
    let sb = sandbox_for(transport, 64 * 1024).await;
    let job = job_id(&format!("files-{}", transport.as_str()));
    let c = sb.start(&job, "DEMO-4").await.unwrap();

    let body = b"line one\nline two\n\xff binary ok\n";
    c.write_file("dir/sub/x.txt", body).await.unwrap();
    assert_eq!(c.read_file("dir/sub/x.txt", 1024).await.unwrap(), body);
    assert_eq!(
        ok(&c, "stat -c %u:%g dir dir/sub dir/sub/x.txt").await,
        "1000:1000\n".repeat(3)
    );
    // Overwrite, and an empty file.
    c.write_file("dir/sub/x.txt", b"short").await.unwrap();
    assert_eq!(
        c.read_file("./dir//sub/x.txt", 1024).await.unwrap(),
        b"short"
    );
    c.write_file("empty", b"").await.unwrap();
    assert_eq!(c.read_file("empty", 0).await.unwrap(), b"");
    // Larger than a pipe buffer.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.write_file("big.bin", &big).await.unwrap();
    assert_eq!(c.read_file("big.bin", big.len()).await.unwrap(), big);

    for bad in ["../x", "/etc/passwd", "a/../../x", "a\0b", ""] {
        assert!(
            matches!(
                c.read_file(bad, 100).await,
                Err(SandboxError::BadPath { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                c.write_file(bad, b"x").await,
                Err(SandboxError::BadPath { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.read_file("big.bin", 1000).await,
        Err(SandboxError::TooLarge { .. })
    ));
    assert!(matches!(
        c.read_file("nope.txt", 100).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        c.read_file("dir", 100).await,
        Err(SandboxError::NotRegularFile(_))
    ));
    ok(&c, "ln -s /etc/passwd pw").await;
    assert!(matches!(
        c.read_file("pw", 10_000).await,
        Err(SandboxError::NotRegularFile(_))
    ));
    // Writing where the agent may not (through a link to the read-only root) fails as the agent would.
    ok(&c, "ln -s /etc etc").await;
    assert!(matches!(
        c.write_file("etc/evil", b"x").await,
        Err(SandboxError::Exec(_))
    ));

    // Listing and search: the same shape through either transport, `.git` left out.
    ok(
        &c,
        "mkdir -p .git src && echo 'fn main() {}' > src/main.rs && echo secret > .git/x",
    )
    .await;
    let listing = c.list(".", 2).await.unwrap();
    assert!(
        listing.contains("d src\n") && listing.contains("f src/main.rs\n"),
        "{listing}"
    );
    assert!(!listing.contains(".git"), "{listing}");
    let found = c.search("fn ma[i]n", ".").await.unwrap();
    assert!(found.contains("src/main.rs:1:fn main() {}"), "{found}");
    assert!(c.search("secret", ".").await.unwrap().is_empty());
    assert!(c.list("src/main.rs", 1).await.is_err());

    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

#[tokio::test]
async fn drop_without_remove_removes_the_container() {
    let _g = ORPHAN_LOCK.read().await;
    let sb = sandbox(64 * 1024).await;
    let job = job_id("drop");
    let c = sb.start(&job, "DEMO-5").await.unwrap();
    assert_eq!(
        sb.job_containers(&job).await.unwrap(),
        vec![c.id().to_string()]
    );
    drop(c);
    assert_no_containers(&sb, &job).await;

    // Same for a task that panics while holding the container.
    let job2 = job_id("panic");
    let c = sb.start(&job2, "DEMO-5").await.unwrap();
    let handle = tokio::spawn(async move {
        let _c = c;
        panic!("job failed");
    });
    assert!(handle.await.is_err());
    assert_no_containers(&sb, &job2).await;
}

#[tokio::test]
async fn start_refuses_bad_ids_and_replaces_stale_container() {
    let _g = ORPHAN_LOCK.read().await;
    let sb = sandbox(64 * 1024).await;
    assert!(matches!(
        sb.start("../x", "T-1").await,
        Err(SandboxError::BadJobId(_))
    ));
    let job = job_id("stale");
    let first = sb.start(&job, "DEMO-6").await.unwrap();
    let first_id = first.id().to_string();
    std::mem::forget(first); // as if the runner had crashed
    let second = sb.start(&job, "DEMO-6").await.unwrap();
    assert_ne!(second.id(), first_id);
    assert_eq!(
        sb.job_containers(&job).await.unwrap(),
        vec![second.id().to_string()]
    );
    second.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

#[tokio::test]
async fn missing_image_is_a_clear_error() {
    let _g = ORPHAN_LOCK.read().await;
    let mut cfg = config(1000);
    cfg.image = "drafter-sandbox-does-not-exist:nope".into();
    let sb = Sandbox::connect(&cfg).await.unwrap();
    sb.ping().await.unwrap();
    let err = sb.ensure_image().await.unwrap_err();
    assert!(err.to_string().contains("images/sandbox/build.sh"), "{err}");
    let job = job_id("noimage");
    let err = sb.start(&job, "DEMO-7").await.err().unwrap();
    assert!(matches!(err, SandboxError::ImageMissing { .. }), "{err}");
    assert_no_containers(&sb, &job).await;
}

/// Creates a bare drafter-labelled container as a runner with the given owner would, without a `Container` handle.
async fn labelled_container(job: &str, host: &str, pid: u32) -> String {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
    let docker = bollard::Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let labels = std::collections::HashMap::from([
        ("drafter.managed".to_string(), "true".to_string()),
        ("drafter.job".to_string(), job.to_string()),
        ("drafter.owner.host".to_string(), host.to_string()),
        ("drafter.owner.pid".to_string(), pid.to_string()),
    ]);
    let body = ContainerCreateBody {
        image: Some("drafter-sandbox:latest".into()),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&format!("drafter-{job}"))
                    .build(),
            ),
            body,
        )
        .await
        .unwrap()
        .id;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn remove_orphans_after_a_crash() {
    let _g = ORPHAN_LOCK.write().await;
    // Nor may another test's `drafter run` or `serve` sweep up the crashed runner's container first.
    let _alone = support::sweep_alone().await;
    let sb = sandbox(64 * 1024).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();

    // A runner that crashed: its process is gone (a child that has exited and been reaped).
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let crashed = job_id("orphan-dead");
    labelled_container(&crashed, &host, dead_pid).await;
    // A container from a live runner on this host (this test process), and one from another host.
    let live = job_id("orphan-live");
    let live_container = sb.start(&live, "DEMO-8").await.unwrap();
    let remote = job_id("orphan-remote");
    labelled_container(&remote, "some-other-runner-host", 1).await;

    assert!(sb.remove_orphans().await.unwrap() >= 1);
    // Only the crashed runner's container went, with its anonymous workspace volume.
    assert_no_containers(&sb, &crashed).await;
    assert_eq!(
        sb.job_containers(&live).await.unwrap().len(),
        1,
        "a live runner's container was removed"
    );
    assert_eq!(
        sb.job_containers(&remote).await.unwrap().len(),
        1,
        "another host's container was removed"
    );

    live_container.remove().await.unwrap();
    for id in sb.job_containers(&remote).await.unwrap() {
        let docker = bollard::Docker::connect_with_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        docker
            .remove_container(
                &id,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
            .unwrap();
    }
    assert_no_containers(&sb, &live).await;
    assert_no_containers(&sb, &remote).await;
}

/// Warm start: a pooled container is taken, renamed for the job (so the job's cleanup finds it), answers at once,
/// and the pool refills; draining it leaves nothing behind.
#[tokio::test]
async fn warm_pool_hands_out_ready_containers() {
    let _g = ORPHAN_LOCK.read().await;
    let mut cfg = config(64 * 1024);
    cfg.pool_size = 1;
    // A shape of its own (other tests use other limits), so no other test takes from this pool.
    cfg.tmp_size_mb = 63;
    let sb = Sandbox::connect(&cfg).await.unwrap();
    sb.wait_pool_full(Duration::from_secs(60)).await;
    let job = job_id("warm");
    let t = Instant::now();
    let c = sb.start(&job, "DEMO-9").await.unwrap();
    let took = t.elapsed();
    eprintln!("warm start: {took:?}");
    assert_eq!(
        sb.job_containers(&job).await.unwrap(),
        vec![c.id().to_string()]
    );
    assert_eq!(ok(&c, "id -u").await, "1000\n");
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "hello").unwrap();
    c.upload_dir(ws.path()).await.unwrap();
    assert_eq!(ok(&c, "cat a.txt").await, "hello");
    // The job's cleanup path (by name) removes a pooled container like any other.
    assert_eq!(sb.remove_job(&job).await.unwrap(), 1);
    drop(c);
    assert_no_containers(&sb, &job).await;
    // The pool refilled, and draining it removes what it holds.
    sb.wait_pool_full(Duration::from_secs(60)).await;
    assert!(sb.drain_pool().await >= 1);
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=drafter.pool",
            "--filter",
            &format!("label=drafter.owner.pid={}", std::process::id()),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());
}

/// gVisor: with `sandbox.runtime` naming a runsc runtime the engine offers, the same container runs under gVisor's
/// kernel, executor and all. Skipped (with the reason) when the engine offers none. `DRAFTER_TEST_RUNSC` picks the
/// runtime name (`.ci/install-deps` registers `runsc-nonet`: runsc with its own networking off, which is what a
/// `network = "none"` job needs and the only way runsc runs on machines whose Docker lives in a nested network
/// namespace).
#[tokio::test]
async fn runs_under_gvisor_when_the_engine_offers_it() {
    let _g = ORPHAN_LOCK.read().await;
    let probe = sandbox(64 * 1024).await;
    let (offered, _) = drafter::sandbox::runtimes(&probe).await.unwrap();
    let wanted = std::env::var("DRAFTER_TEST_RUNSC").ok().or_else(|| {
        ["runsc-nonet", "runsc"]
            .into_iter()
            .find(|r| offered.iter().any(|o| o == r))
            .map(str::to_string)
    });
    let Some(runtime) = wanted.filter(|r| offered.contains(r)) else {
        eprintln!(
            "SKIPPED: the Docker engine offers no runsc runtime (it has: {}); install gVisor (Debian: apt install \
             runsc) and register it in /etc/docker/daemon.json, as .ci/install-deps does",
            offered.join(", ")
        );
        return;
    };
    let mut cfg = config(64 * 1024);
    cfg.runtime = Some(runtime.clone());
    let sb = Sandbox::connect(&cfg).await.unwrap();
    sb.ensure_image().await.unwrap();
    let job = job_id("gvisor");
    let c = sb.start(&job, "DEMO-10").await.unwrap();
    // gVisor's kernel answers, not the host's.
    let kernel = ok(&c, "dmesg 2>/dev/null | head -3; uname -r").await;
    assert!(
        kernel.contains("gVisor") || kernel.trim_end().ends_with("4.4.0"),
        "{kernel}"
    );
    assert_eq!(ok(&c, "id -u").await, "1000\n");
    c.write_file("x.txt", b"under gvisor").await.unwrap();
    assert_eq!(c.read_file("x.txt", 100).await.unwrap(), b"under gvisor");
    let out = c.exec("sleep 30", Duration::from_secs(1)).await.unwrap();
    assert!(out.timed_out, "{out:?}");
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "hello").unwrap();
    c.upload_dir(ws.path()).await.unwrap();
    assert_eq!(ok(&c, "cat a.txt").await, "hello");
    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

/// Bytes in regular files under `dir` (apparent sizes; hard links counted per link, as the host wrote them).
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Issue 12.4: a sparse file with many hard links is ~0 blocks in the container but a full copy per link on the
/// host. Taking the workspace out must fail once the host would write more than `workspace_max_mb`, having written
/// no more than that.
#[tokio::test]
async fn the_returning_workspace_is_budgeted_on_the_host() {
    let _g = ORPHAN_LOCK.read().await;
    // Its 100 `ln`s must finish before the executor's first disk check (2 s): no bomb may run meanwhile.
    let _bombs = support::BOMBS.lock().await;
    let mut cfg = config(64 * 1024);
    cfg.workspace_max_mb = 16;
    let sb = connect(&cfg).await;
    let job = job_id("budget");
    let c = sb.start(&job, "DEMO-12").await.unwrap();
    // 4 MiB apparent, no blocks, 101 names: 404 MiB for a host that copies every link.
    ok(
        &c,
        "truncate -s 4M big && for i in $(seq 1 100); do ln big l$i; done",
    )
    .await;
    let dest = tempfile::tempdir().unwrap();
    let result = c.download_workspace(dest.path()).await;
    let written = bytes_under(dest.path());
    assert!(
        written <= 16 << 20,
        "the host wrote {} MiB for a 16 MiB workspace",
        written >> 20
    );
    let err = result.expect_err("an over-budget workspace must not come back");
    assert!(
        matches!(err, SandboxError::WorkspaceOverBudget { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("over its limit of 16 MiB"),
        "{err}"
    );
    // The container's own check, on apparent sizes, sees it too.
    match c.check_disk().await {
        Err(SandboxError::DiskLimit { limit_mb: 16, .. }) => {}
        other => panic!("expected the disk limit: {other:?}"),
    }
    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

/// Issue 15: the workspace comes out through the executor's `pack`, from a hostile workspace. Links to the
/// executor's secrets and to `/` come back as links (nothing read through them), a fifo neither hangs the executor nor
/// comes back, a file the agent made unreadable still comes out, and a few huge sparse files and an entry flood stop
/// with `WorkspaceOverBudget` at once, the host having written no more than its budget.
#[tokio::test]
async fn a_hostile_workspace_comes_out_through_the_executor_checked() {
    let _g = ORPHAN_LOCK.read().await;
    let mut cfg = config(64 * 1024);
    cfg.workspace_max_mb = 256;
    let sb = connect(&cfg).await;
    let job = job_id("pack");
    let c = sb.start(&job, "DEMO-15").await.unwrap();
    ok(
        &c,
        "ln -s /etc/shadow shadow && ln -s / rootlink && ln -s /proc/1/environ environ && mkfifo fifo \
         && mkdir -p d/e && echo deep > d/e/f && echo s > secret && chmod 000 secret \
         && mkdir .git && echo evil > .git/config",
    )
    .await;
    let dest = tempfile::tempdir().unwrap();
    let t = Instant::now();
    c.download_workspace(dest.path()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let d = dest.path();
    for (name, target) in [
        ("shadow", "/etc/shadow"),
        ("rootlink", "/"),
        ("environ", "/proc/1/environ"),
    ] {
        assert!(std::fs::symlink_metadata(d.join(name))
            .unwrap()
            .is_symlink());
        assert_eq!(std::fs::read_link(d.join(name)).unwrap(), Path::new(target));
    }
    assert!(!d.join("fifo").exists());
    assert!(!d.join(".git").exists());
    assert_eq!(std::fs::read(d.join("d/e/f")).unwrap(), b"deep\n");
    assert_eq!(std::fs::read(d.join("secret")).unwrap(), b"s\n");
    // Only what the workspace holds: nothing of /etc or / came through the links.
    assert!(bytes_under(d) < 64, "{}", bytes_under(d));
    // The connection is still in step after a complete pack.
    assert_eq!(ok(&c, "echo still-here").await, "still-here\n");

    // Three sparse files of 200 MiB: a few blocks in the container, 600 MiB on the host. Refused on their lengths.
    ok(&c, "for i in 1 2 3; do truncate -s 200M huge$i; done").await;
    let t = Instant::now();
    let err = c.download_workspace(dest.path()).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.to_string().contains("over its limit of 256 MiB"),
        "{err}"
    );
    assert!(bytes_under(dest.path()) <= 256 << 20);
    c.remove().await.unwrap();

    // An entry flood: 8 MiB allow 10,000 entries.
    cfg.workspace_max_mb = 8;
    let sb = connect(&cfg).await;
    let c = sb.start(&job, "DEMO-15").await.unwrap();
    ok(&c, "mkdir flood && cd flood && seq 1 10050 | xargs touch").await;
    let dest = tempfile::tempdir().unwrap();
    let err = c.download_workspace(dest.path()).await.unwrap_err();
    assert!(
        matches!(err, SandboxError::WorkspaceOverBudget { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("over its limit of 10000 archive entries"),
        "{err}"
    );
    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
}

/// Issue 12.6: an executor that cannot drop its own privileges (here: started as `nobody`, so `setgroups` and the
/// bounding-set drop fail) must refuse to run anything rather than carry on with whatever it still has.
#[test]
fn the_executor_refuses_to_serve_when_its_lockdown_fails() {
    use drafter::sandboxd::proto::{encode, read_frame, Op, Reply, Request, Response};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy the unprivileged uid can reach: the checkout may sit under a directory only root may enter (a clone
    // into `mktemp -d`, mode 0700), and then spawning the build's own binary as uid 65534 fails with EACCES.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("drafter-sandboxd");
    std::fs::copy(env!("CARGO_BIN_EXE_drafter-sandboxd"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(&bin)
        .arg("--workspace")
        .arg(dir.path())
        .args(["--uid", "65534", "--gid", "65534"])
        .uid(65534)
        .gid(65534)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exec = Op::Exec {
        argv: vec!["touch".into(), "ran".into()],
        cwd: None,
        env: vec![],
        timeout_ms: 5000,
        kill_grace_ms: 100,
        output_cap: 1000,
        output_limit: 1000,
    };
    let write = Op::Write {
        path: "written".into(),
    };
    let mut stdin = child.stdin.take().unwrap();
    for (id, op) in [(1, exec), (2, write)] {
        stdin
            .write_all(&encode(&Request { id, op }, b"x").unwrap())
            .unwrap();
    }
    drop(stdin);
    let mut stdout = child.stdout.take().unwrap();
    for id in [1, 2] {
        let (resp, _) = read_frame::<Response>(&mut stdout).unwrap().unwrap();
        assert_eq!(resp.id, id);
        match resp.reply {
            Reply::Error { message, .. } => {
                assert!(message.contains("refuses"), "{message}")
            }
            other => panic!("request {id} was served: {other:?}"),
        }
    }
    let _ = child.wait();
    assert!(!dir.path().join("ran").exists(), "the command ran");
    assert!(!dir.path().join("written").exists(), "the file was written");
}

/// Several runners (here: sandboxes with no shared state) fill the executor volume of a binary nobody has filled yet,
/// all at once. Each writes the binary in place while the others read it back, so a reader can see another's
/// half-written copy; every one of them must still end with the volume holding exactly the binary, and a job
/// container started on it must run it.
#[tokio::test]
async fn concurrent_runners_fill_one_executor_volume() {
    let _shared = ORPHAN_LOCK.read().await;
    // A binary of its own (the executor plus trailing bytes, still a valid ELF): a fresh volume name.
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("drafter-sandboxd");
    let mut bytes = std::fs::read(drafter::sandbox::find_executor(&config(4096)).unwrap()).unwrap();
    bytes.extend_from_slice(job_id("fill").as_bytes());
    std::fs::write(&own, &bytes).unwrap();
    let mut cfg = config(4096);
    cfg.executor = Some(own.clone());
    let fills = (0..8).map(|_| {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let sb = connect(&cfg).await;
            sb.executor_volume().await.map(str::to_string)
        })
    });
    let names: Vec<String> = futures_util::future::join_all(fills)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("every concurrent fill succeeds"))
        .collect();
    assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
    let sb = connect(&cfg).await;
    let job = job_id("fill-run");
    let c = sb.start(&job, "FILL-1").await.unwrap();
    assert_eq!(ok(&c, "echo ran").await.trim(), "ran");
    c.remove().await.unwrap();
    assert_no_containers(&sb, &job).await;
    let _ = sb
        .docker()
        .remove_volume(
            &names[0],
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
}
