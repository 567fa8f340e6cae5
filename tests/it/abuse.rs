//! The abuse suite: a hostile agent inside the real sandbox (real Docker, the real image and executor, the real
//! egress proxy). Each case must be contained, leave the worker (this test process) unaffected, and leave no
//! container or network behind.
//!
//! Network cases need the outside world for one positive check: `index.crates.io` (a registry this machine reaches
//! through its own network) must be fetchable through the proxy when allowlisted.
//!
//! Long on purpose (over 700 lines): one attack per test; they share nothing but the stack.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drafter::config::{SandboxConfig, Transport};
use drafter::sandbox::{Limit, Sandbox, SandboxError};
use drafter::sandboxd::egress::EgressRules;
use serde_json::json;
use support::harness::{Options, Stack, DEMO_REPO};
use support::model::{tool, Step};
use support::sandbox::{fails, image, ok, sh, SECRETS};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

/// The classic bomb, with a leader that waits for it.
const FORK_BOMB: &str = "b(){ b|b& }; b; sleep 60";

fn config() -> SandboxConfig {
    SandboxConfig {
        image: image(),
        memory_mb: 256,
        cpus: 1.0,
        pids_limit: 128,
        tmp_size_mb: 32,
        command_timeout_secs: 30,
        output_cap_bytes: 8 * 1024,
        max_output_mb: 4,
        workspace_max_mb: 64,
        ..SandboxConfig::default()
    }
}

async fn sandbox() -> Sandbox {
    support::sandbox::connect(&config()).await
}

fn job_id(name: &str) -> String {
    support::sandbox::job_id("abuse", name)
}

/// Nothing of the job is left: no container (job or proxy), no network.
async fn assert_clean(sb: &Sandbox, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = sb.job_containers(job).await.unwrap();
        let net = Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name=drafter-net-{job}"),
            ])
            .output()
            .unwrap();
        let nets = String::from_utf8_lossy(&net.stdout).trim().to_string();
        if left.is_empty() && nets.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind by {job}: containers {left:?}, networks {nets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP connect from inside the sandbox, as Python reports it.
fn connect(host: &str, port: u16) -> String {
    format!(
        "python3 -c \"import socket; s=socket.create_connection(('{host}', {port}), timeout=3); print('CONNECTED')\""
    )
}

/// This machine's own addresses (docker0 and the primary interface), which a sandbox must never reach.
fn host_addresses() -> Vec<String> {
    let out = Command::new("hostname").arg("-I").output().unwrap();
    let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|a| a.contains('.'))
        .map(str::to_string)
        .collect();
    addrs.push("172.17.0.1".into());
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The address index.crates.io has from here (the positive network check's destination).
fn registry_ip() -> String {
    let out = Command::new("getent")
        .args(["hosts", "index.crates.io"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("203.0.113.80")
        .to_string()
}

#[tokio::test]
async fn network_none_reaches_nothing() {
    let sb = sandbox().await;
    let job = job_id("net-none");
    let c = sb.start(&job, "ABUSE-1").await.unwrap();
    let out = fails(&c, &connect(&registry_ip(), 443)).await;
    assert!(!out.contains("CONNECTED"), "{out}");
    fails(&c, &connect("1.1.1.1", 80)).await;
    for addr in host_addresses() {
        let out = fails(&c, &connect(&addr, 22)).await;
        assert!(!out.contains("CONNECTED"), "{addr}: {out}");
    }
    fails(&c, "getent hosts index.crates.io").await;
    fails(&c, "getent hosts example.com").await;
    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

/// Python's urllib through the proxy variables the sandbox was given.
/// Certificates are not checked: this machine's own egress re-signs TLS with a CA that the host trusts and the
/// sandbox image does not, and what is tested here is the path through the proxy, not the certificate.
fn fetch(url: &str) -> String {
    format!(
        "python3 - <<'EOF'\nimport urllib.request, ssl, sys\ntry:\n    r = urllib.request.urlopen('{url}', timeout=20, context=ssl._create_unverified_context())\n    print('STATUS', r.status, len(r.read()))\nexcept Exception as e:\n    print('ERROR', e)\n    sys.exit(1)\nEOF"
    )
}

/// A raw request to the proxy, as a hostile agent would write it; returns the proxy's status line.
fn raw_proxy(request: &str) -> String {
    format!(
        "python3 - <<'EOF'\nimport os, socket, urllib.parse\nu = urllib.parse.urlparse(os.environ['HTTPS_PROXY'])\ns = socket.create_connection((u.hostname, u.port), timeout=10)\ns.sendall({request:?}.encode())\nprint(s.recv(4096).decode(errors='replace').splitlines()[0])\nEOF"
    )
}

#[tokio::test]
async fn allowlist_goes_through_the_proxy_and_only_to_allowed_public_hosts() {
    support::sandbox::assert_secrets_planted();
    let sb = sandbox().await;
    let job = job_id("net-allow");
    let rules = EgressRules {
        name: "registries".into(),
        hosts: vec![
            "index.crates.io".into(),
            "localhost".into(),
            "*.crates.io".into(),
        ],
        allow_addresses: support::sandbox::gateway_allowance(&["index.crates.io"]),
        methods: vec!["GET".into(), "HEAD".into()],
    };
    let c = sb
        .start_with_network(&job, "ABUSE-2", Some(&rules))
        .await
        .unwrap();
    let proxy = c.proxy_url().unwrap().to_string();
    assert!(ok(&c, "env")
        .await
        .contains(&format!("HTTPS_PROXY={proxy}")));

    // Allowed: an allowlisted public host over HTTPS (CONNECT).
    let out = ok(&c, &fetch("https://index.crates.io/config.json")).await;
    assert!(out.contains("STATUS 200"), "{out}");
    // Denied: a host not on the list; a plain-HTTP method not on the list.
    let out = fails(&c, &fetch("https://example.com/")).await;
    assert!(out.contains("403"), "{out}");
    let status = ok(
        &c,
        &raw_proxy("POST http://index.crates.io/ HTTP/1.1\r\nHost: index.crates.io\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // Denied: an allowlisted name that resolves to loopback, a raw IP (the metadata service), a non-443 CONNECT.
    let status = ok(&c, &raw_proxy("CONNECT localhost:443 HTTP/1.1\r\n\r\n")).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let status = ok(
        &c,
        &raw_proxy("CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let status = ok(
        &c,
        &raw_proxy("CONNECT 169.254.169.254:443 HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let status = ok(
        &c,
        &raw_proxy(&format!("CONNECT {}:443 HTTP/1.1\r\n\r\n", registry_ip())),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");

    // Around the proxy: no route out, none to the host, no resolver for outside names.
    fails(&c, &connect(&registry_ip(), 443)).await;
    fails(&c, &connect("169.254.169.254", 80)).await;
    for addr in host_addresses() {
        fails(&c, &connect(&addr, 22)).await;
    }
    fails(&c, "getent hosts index.crates.io").await;

    // Every request is recorded, allowed or denied, with host, port and rule, and nothing of paths or secrets.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (records, dropped) = c.egress_records();
    assert_eq!(dropped, 0);
    let line = |r: &drafter::sandboxd::egress::ConnRecord| {
        format!(
            "{} {} {}:{} {}",
            r.allowed, r.method, r.host, r.port, r.rule
        )
    };
    let lines: Vec<String> = records.iter().map(line).collect();
    let has = |allowed: bool, host: &str, rule: &str| {
        records
            .iter()
            .any(|r| r.allowed == allowed && r.host == host && r.rule.contains(rule))
    };
    assert!(
        has(
            true,
            "index.crates.io",
            "egress.registries: index.crates.io"
        ),
        "{lines:#?}"
    );
    assert!(
        has(false, "example.com", "not on egress.registries"),
        "{lines:#?}"
    );
    assert!(has(false, "index.crates.io", "method POST"), "{lines:#?}");
    assert!(
        has(false, "localhost", "127.0.0.1 (loopback)"),
        "{lines:#?}"
    );
    assert!(has(false, "169.254.169.254", "raw IP"), "{lines:#?}");
    let allowed = records.iter().find(|r| r.allowed).unwrap();
    assert!(
        allowed.bytes_in > 100 && allowed.bytes_out > 100,
        "{allowed:?}"
    );
    let json = serde_json::to_string(&records).unwrap();
    assert!(!json.contains("config.json"), "a path was recorded: {json}");

    // The proxy's own output holds no secret either.
    let logs = Command::new("docker")
        .args(["logs", &format!("drafter-proxy-{job}")])
        .output()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    for (k, v) in SECRETS {
        assert!(
            !logs.contains(v) && !json.contains(v),
            "{k} in the proxy's output"
        );
    }

    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

#[tokio::test]
async fn privilege_escalation_fails() {
    let sb = sandbox().await;
    let job = job_id("priv");
    let c = sb.start(&job, "ABUSE-3").await.unwrap();

    assert_eq!(ok(&c, "id -u").await.trim(), "1000");
    let caps = ok(&c, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status").await;
    for line in caps.lines() {
        assert!(line.ends_with("0000000000000000"), "{caps}");
    }
    fails(&c, "mount -t tmpfs none /mnt").await;
    fails(&c, "mount --bind /workspace /tmp").await;
    let out = fails(
        &c,
        "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\"",
    )
    .await;
    assert!(out.contains("Operation not permitted"), "{out}");
    fails(&c, "unshare --user --map-root-user true").await;
    fails(&c, "unshare --mount true").await;
    // ptrace of another process: the executor (root) and a sibling of the agent's own uid under no-new-privs and
    // Yama/the container's seccomp profile.
    let out = fails(
        &c,
        "python3 - <<'EOF'\nimport ctypes, os, subprocess, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nexe = [p for p in os.listdir('/proc') if p.isdigit() and 'sandboxd' in open(f'/proc/{p}/cmdline','rb').read().decode(errors='replace')]\nrc = libc.ptrace(16, int(exe[0]), None, None)\nprint('ptrace executor', rc, ctypes.get_errno())\nsys.exit(0 if rc == 0 else 1)\nEOF",
    )
    .await;
    assert!(out.contains("ptrace executor -1"), "{out}");
    fails(&c, "cat /proc/1/environ").await;
    // No Docker socket, no host paths.
    fails(
        &c,
        "test -e /var/run/docker.sock || test -e /run/docker.sock",
    )
    .await;
    let marker = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let name = marker
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    fails(&c, &format!("ls /tmp/{name}")).await;
    fails(
        &c,
        &format!("find / -name {name} -print -quit 2>/dev/null | grep ."),
    )
    .await;
    // Read-only root, not even for the image's own files; no setuid way back up.
    fails(&c, "touch /usr/bin/x").await;
    fails(&c, "echo x >> /etc/passwd").await;
    let out = ok(
        &c,
        "find / -xdev -perm -4000 -type f 2>/dev/null | head -5; echo END",
    )
    .await;
    // Setuid binaries may exist in the image, but no-new-privileges makes them useless: su cannot become root.
    let su = sh(&c, "su -c id root </dev/null").await;
    assert_ne!(su.exit_code, Some(0), "{out}\n{}", su.output);
    assert!(ok(&c, "grep NoNewPrivs /proc/self/status")
        .await
        .contains('1'));
    // The worker is unaffected: the container still answers.
    assert_eq!(ok(&c, "echo fine").await, "fine\n");
    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

#[tokio::test]
async fn resource_bombs_are_stopped_by_their_limits() {
    let _bombs = support::BOMBS.lock().await;
    let sb = sandbox().await;
    let job = job_id("bombs");
    let c = sb.start(&job, "ABUSE-4").await.unwrap();

    // Fork bomb (its leader stays, so only the limits end it): the pids limit holds it, the timeout ends it, and
    // everything of the agent's is killed.
    let t = Instant::now();
    let out = c.exec(FORK_BOMB, Duration::from_secs(5)).await.unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Timeout), "{out:?}");
    assert!(
        out.output.contains("Resource temporarily unavailable"),
        "{out:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let procs = ok(&c, "ls /proc | grep -c '^[0-9]'").await;
    assert!(procs.trim().parse::<u32>().unwrap() < 10, "{procs}");

    // Memory bomb: the OOM killer takes the command, not the executor; reported as the memory limit.
    let out = c
        .exec(
            "python3 -c \"x = []\nwhile True: x.append(bytearray(16 << 20))\"",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Memory), "{out:?}");
    assert_eq!(ok(&c, "echo alive").await, "alive\n");

    // Disk fill: a single file stops at the workspace limit (RLIMIT_FSIZE), many files are caught by the usage
    // check, and the job-level check fails cleanly.
    let out = sh(
        &c,
        "dd if=/dev/zero of=big bs=1M count=200 2>&1; stat -c %s big",
    )
    .await;
    assert!(
        out.output.contains("File size limit exceeded"),
        "{}",
        out.output
    );
    assert!(
        out.output.ends_with(&format!("{}\n", 64 << 20)),
        "{}",
        out.output
    );
    ok(&c, "rm -f big").await;
    let out = c
        .exec(
            "for i in $(seq 1 40); do head -c 4000000 /dev/zero > f$i || exit 1; done; sleep 10",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Disk), "{out:?}");
    match c.check_disk().await {
        Err(SandboxError::DiskLimit { limit_mb: 64, .. }) => {}
        other => panic!("expected the disk limit: {other:?}"),
    }
    ok(&c, "rm -f f*").await;
    assert!(c.check_disk().await.is_ok());

    // /tmp is a small tmpfs.
    let out = fails(&c, "head -c 100000000 /dev/zero > /tmp/fill").await;
    assert!(out.contains("No space left"), "{out}");

    // TERM ignored, and infinite output: see tests/sandbox.rs (exec_timeouts_exit_codes_and_output_cap).
    let out = c
        .exec("trap '' TERM; while :; do :; done", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Timeout));
    let out = c
        .exec("cat /dev/zero", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.stopped_by, Some(Limit::Output));

    assert_eq!(ok(&c, "echo alive").await, "alive\n");
    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

#[tokio::test]
async fn secrets_never_reach_the_container() {
    support::sandbox::assert_secrets_planted();
    let sb = sandbox().await;
    let job = job_id("secrets");
    let c = sb.start(&job, "ABUSE-5").await.unwrap();
    let env = ok(&c, "env; cat /proc/self/environ | tr '\\0' '\\n'").await;
    let inspect = Command::new("docker")
        .args(["inspect", c.id()])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout).to_string();
    // Every readable file in the container, searched for every value.
    let mut grep = String::from("grep -rIl -s");
    for (_, v) in SECRETS {
        grep.push_str(&format!(" -e '{v}'"));
    }
    grep.push_str(" / --exclude-dir=proc --exclude-dir=sys; echo END");
    let found = ok(&c, &grep).await;
    for (k, v) in SECRETS {
        assert!(
            !env.contains(v) && !env.contains(k),
            "{k} in the environment: {env}"
        );
        assert!(!inspect.contains(v), "{k} in the container config");
    }
    assert_eq!(found.trim(), "END", "secret values found in files: {found}");
    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

/// Lists the agent's processes (by the `Uid:` line of their status: a process that made itself non-dumpable owns
/// nothing under /proc) other than this command and its ancestors.
const AGENT_PROCESSES: &str = r#"python3 - <<'EOF'
import os
mine, p = set(), os.getpid()
while p > 1:
    mine.add(p)
    p = int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])
left = []
for q in os.listdir('/proc'):
    if not q.isdigit() or int(q) in mine:
        continue
    try:
        status = open(f'/proc/{q}/status').read()
        uids = [l for l in status.splitlines() if l.startswith('Uid:')][0].split()[1:]
        zombie = any(l.startswith('State:') and 'Z' in l for l in status.splitlines())
        cmd = open(f'/proc/{q}/cmdline', 'rb').read().replace(b'\0', b' ').decode(errors='replace')
    except (OSError, IndexError):
        continue
    if '1000' in uids and not zombie:
        left.append(f'{q} {cmd}')
print(left)
EOF"#;

/// A detached writer: its own session, its descriptors closed, appending to `file` ten times a second.
fn detached_writer(file: &str) -> String {
    format!("setsid sh -c 'exec >/dev/null 2>&1 </dev/null; while true; do echo x >> /workspace/{file}; sleep 0.1; done' &")
}

/// The same, in Python, non-dumpable first (so its /proc entries are root's, not the agent's).
fn hidden_writer(file: &str) -> String {
    format!(
        "setsid python3 -c \"\nimport ctypes, time\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\nwhile True:\n    open('/workspace/{file}', 'a').write('x')\n    time.sleep(0.1)\n\" >/dev/null 2>&1 </dev/null &"
    )
}

/// Whether `file` still grows over a second.
async fn still_grows(c: &drafter::sandbox::Container, file: &str) -> bool {
    let out = ok(
        c,
        &format!("a=$(wc -c < {file}); sleep 1.2; b=$(wc -c < {file}); echo $a $b"),
    )
    .await;
    let sizes: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(sizes.len(), 2, "{out}");
    sizes[0] != sizes[1]
}

/// Issue 12.5: whatever a command leaves behind (detached with setsid, descriptors closed, even non-dumpable) is gone
/// when the command's tool call returns, on a normal exit and after a timeout, under both transports. (Not under
/// gVisor here: there, two such session leaders in a row make runsc end the executor, with or without this fix.)
#[tokio::test]
async fn detached_processes_do_not_outlive_their_command() {
    for transport in [Transport::Sandboxd, Transport::DockerExec] {
        let sb = support::sandbox::connect(&SandboxConfig {
            transport,
            ..config()
        })
        .await;
        let transport = format!("{transport:?}");
        let job = job_id("detached");
        let c = sb.start(&job, "ABUSE-6").await.unwrap();

        // Normal exit: the command returns once its writer is under way (and out of its group), which would run on.
        let out = sh(&c, &format!("{} sleep 1", detached_writer("grow"))).await;
        assert_eq!(out.exit_code, Some(0), "{transport}: {}", out.output);
        assert_eq!(
            ok(&c, AGENT_PROCESSES).await.trim(),
            "[]",
            "{transport}: survivors after a normal exit"
        );
        assert!(
            !still_grows(&c, "grow").await,
            "{transport}: grow still grows"
        );

        // Timeout: the group takes the TERM and exits; the hidden writer in its own session would not.
        let out = c
            .exec(
                &format!("{} sleep 100", hidden_writer("grow2")),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert!(out.timed_out, "{transport}: {out:?}");
        assert_eq!(
            ok(&c, AGENT_PROCESSES).await.trim(),
            "[]",
            "{transport}: survivors after a timeout"
        );
        assert!(
            !still_grows(&c, "grow2").await,
            "{transport}: grow2 still grows"
        );

        c.remove().await.unwrap();
        assert_clean(&sb, &job).await;
    }
}

// ---- through the whole job --------------------------------------------------------------------------------------

fn run_cmd(cmd: &str) -> Step {
    tool("run", json!({ "command": cmd }))
}

/// The tool results the model was sent, in order (from the stand-in's record of requests).
fn tool_results(stack: &Stack) -> String {
    stack
        .model
        .requests()
        .last()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default()
}

/// A model that throws every bomb: each comes back to it as a clear tool result, and the job still ends well.
#[tokio::test]
async fn a_job_survives_its_bombs_and_reports_them_to_the_model() {
    let _bombs = support::BOMBS.lock().await;
    let mut script = vec![
        run_cmd(FORK_BOMB),
        run_cmd("python3 -c \"x = []\nwhile True: x.append(bytearray(16 << 20))\""),
        run_cmd("yes"),
        run_cmd("trap '' TERM; sleep 1000"),
    ];
    script.extend(support::harness::demo_script());
    let stack = Stack::start(Options {
        script,
        command_timeout_secs: 4,
        ..Options::default()
    })
    .await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(stack.github.pulls(DEMO_REPO).len(), 1);
    let sent = tool_results(&stack);
    assert!(sent.contains("timed out after 4 s"), "{sent}");
    assert!(sent.contains("killed: out of memory"), "{sent}");
    assert!(
        sent.contains("killed: the command printed more output"),
        "{sent}"
    );
}

/// Runs DEMO-1 through the binary with a 64 MiB workspace and a model that runs `cmd` once: the job must fail
/// cleanly with the workspace limit named (a visible failure, no PR).
async fn workspace_filler_fails_the_job(cmd: &str) {
    let stack = Stack::start(Options {
        script: vec![run_cmd(cmd), Step::Text("done".into())],
        sandbox_toml: "workspace_max_mb = 64".into(),
        ..Options::default()
    })
    .await;
    let (out, log) = stack
        .output(Path::new(BIN), &["run", "--ticket", "DEMO-1"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("over its limit of 64 MiB"), "{log}");
    assert!(stack.github.pulls(DEMO_REPO).is_empty());
}

/// Filling the workspace fails the job cleanly (a visible failure, no PR, no container left).
#[tokio::test]
async fn a_job_that_fills_its_disk_fails_cleanly() {
    workspace_filler_fails_the_job(
        "for i in $(seq 1 30); do head -c 4000000 /dev/zero > f$i; done",
    )
    .await;
}

/// Issue 12.4 through the whole job: a sparse file with many hard links (a few blocks in the container, hundreds of
/// MiB once every link is a file on the host) fails the job cleanly: no PR, the reason in the log.
#[tokio::test]
async fn a_job_whose_hard_links_multiply_its_workspace_fails_cleanly() {
    workspace_filler_fails_the_job(
        "truncate -s 4M big && for i in $(seq 1 100); do ln big l$i; done",
    )
    .await;
}

/// This machine's IPv6 addresses (`ip -6 -o addr`), link-local ones with the scope the sandbox would use (`%eth0`),
/// plus those of the job's bridge, which sits on the job network.
fn host_v6_addresses(job: &str) -> Vec<String> {
    let id = Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{.Id}}",
            &format!("drafter-net-{job}"),
        ])
        .output()
        .unwrap();
    let bridge = format!("br-{}", &String::from_utf8_lossy(&id.stdout).trim()[..12]);
    let out = Command::new("ip")
        .args(["-6", "-o", "addr"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The bridge's link-local address is the one a sandbox could most plausibly reach (it is on the job network),
    // so the probe must include it unless the host has IPv6 off on that bridge.
    let v6_off = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"))
        .is_ok_and(|v| v.trim() == "1");
    assert!(
        v6_off
            || text
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(bridge.as_str())),
        "no IPv6 address listed for the job bridge {bridge}: {text}"
    );
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let _ = w.next();
            let dev = w.next()?;
            let addr = w.nth(1)?.split('/').next()?.to_string();
            match addr.as_str() {
                "::1" => None,
                a if a.starts_with("fe80:") => Some(format!("{a}%eth0")),
                _ if dev == "lo" => None,
                a => Some(a.to_string()),
            }
        })
        .collect()
}

#[tokio::test]
async fn allowlist_jobs_have_no_ipv6_way_out() {
    let sb = sandbox().await;
    let job = job_id("net-ipv6");
    let rules = EgressRules {
        name: "registries".into(),
        hosts: vec!["index.crates.io".into(), "*.crates.io".into()],
        allow_addresses: support::sandbox::gateway_allowance(&["index.crates.io"]),
        methods: Vec::new(),
    };
    let c = sb
        .start_with_network(&job, "ABUSE-6", Some(&rules))
        .await
        .unwrap();

    // No IPv6 address in the sandbox but loopback's: nothing IPv6 can leave it.
    let v6 = ok(&c, "cat /proc/net/if_inet6").await;
    assert!(
        v6.lines().all(|l| l.trim_end().ends_with(" lo")),
        "the sandbox has IPv6 addresses: {v6}"
    );
    // Directly: public IPv6 addresses, the host's own (global, unique-local, the job bridge's link-local).
    let mut targets = vec![
        "2606:4700::1111".to_string(),
        "2001:4860:4860::8888".to_string(),
        "64:ff9b::101:101".to_string(),
    ];
    targets.extend(host_v6_addresses(&job));
    for addr in &targets {
        for port in [443, 22] {
            let out = fails(&c, &connect(addr, port)).await;
            assert!(!out.contains("CONNECTED"), "[{addr}]:{port}: {out}");
        }
    }
    // Through the proxy: IPv6 literals (public, IPv4-mapped metadata, link-local, 6to4 of loopback) are refused.
    for req in [
        "CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [::ffff:169.254.169.254]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [fe80::1]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [2002:7f00:1::1]:443 HTTP/1.1\r\n\r\n",
        "GET http://[2606:4700::1111]/ HTTP/1.1\r\nHost: index.crates.io\r\n\r\n",
        "GET http://[64:ff9b::a9fe:a9fe]/latest/meta-data/ HTTP/1.1\r\nHost: index.crates.io\r\n\r\n",
    ] {
        let status = ok(&c, &raw_proxy(req)).await;
        assert!(status.starts_with("HTTP/1.1 403"), "{req:?}: {status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (records, _) = c.egress_records();
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| !r.allowed && r.rule.contains("raw IP")),
        "{records:?}"
    );

    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}

/// A plain-HTTP request through the job's proxy with a forged `Host` and a second, pipelined request: refused
/// before anything leaves (the rebuilt `Host` itself is checked against a local origin in `egress.rs`'s unit
/// tests, since no allowlisted host answers plain HTTP from this machine).
#[tokio::test]
async fn pipelined_and_smuggled_requests_are_refused_by_the_job_proxy() {
    let sb = sandbox().await;
    let job = job_id("net-pipeline");
    let rules = EgressRules {
        name: "registries".into(),
        hosts: vec!["index.crates.io".into()],
        allow_addresses: support::sandbox::gateway_allowance(&["index.crates.io"]),
        methods: Vec::new(),
    };
    let c = sb
        .start_with_network(&job, "ABUSE-7", Some(&rules))
        .await
        .unwrap();
    for (req, status) in [
        (
            "GET http://index.crates.io/config.json HTTP/1.1\r\nHost: index.crates.io\r\n\r\nGET http://index.crates.io/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET http://index.crates.io/ HTTP/1.1\r\nX-A: 1\nHost: other.example\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "POST http://index.crates.io/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "CONNECT index.crates.io:443 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ] {
        let got = ok(&c, &raw_proxy(req)).await;
        assert!(got.starts_with(status), "{req:?}: {got}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (records, _) = c.egress_records();
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| !r.allowed && r.address.is_none() && r.host == "index.crates.io"),
        "{records:?}"
    );
    c.remove().await.unwrap();
    assert_clean(&sb, &job).await;
}
