//! Helpers for the tests that drive the sandbox directly (`tests/it/sandbox.rs`, `tests/it/abuse.rs`).

use std::time::Duration;

use drafter::config::SandboxConfig;
use drafter::sandbox::{Container, ExecOutput, Sandbox};

/// Values this test process holds in its environment that must never reach a container: the sandbox and abuse
/// tests look for every one of them inside theirs. Planted before `main` (see `tests/it/main.rs`), when the process
/// has one thread: setting them from a test would race with the other tests reading the environment.
pub const SECRETS: &[(&str, &str)] = &[
    ("GITHUB_TOKEN", "ghp_TESTSECRETdoNotLeak0123456789"),
    ("JIRA_TOKEN", "jira-TESTSECRET-doNotLeak"),
    ("ANTHROPIC_API_KEY", "sk-ant-TESTSECRET-doNotLeak"),
    ("JIRA_API_TOKEN", "jira-ABUSESECRET-doNotLeak"),
    ("OPENAI_API_KEY", "sk-ABUSESECRET-doNotLeak"),
];

/// Fails the test unless [`SECRETS`] are in this process's environment.
pub fn assert_secrets_planted() {
    for (k, v) in SECRETS {
        assert_eq!(std::env::var(k).as_deref(), Ok(*v), "{k} was not planted");
    }
}

/// The image the tests use: `DRAFTER_SANDBOX_IMAGE`, or the one `images/sandbox/build.sh` makes.
pub fn image() -> String {
    std::env::var("DRAFTER_SANDBOX_IMAGE").unwrap_or_else(|_| "drafter-sandbox:latest".into())
}

/// A sandbox with `cfg`, failing the test with a hint when Docker or the image is missing.
pub async fn connect(cfg: &SandboxConfig) -> Sandbox {
    let sb = Sandbox::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("Docker must be reachable for these tests: {e}"));
    if let Err(e) = sb.ensure_image().await {
        panic!("{e}\n=> run images/sandbox/build.sh first");
    }
    sb
}

/// A job id of its own per test run (`<prefix>-<name>-<random>`), so tests can run in parallel.
pub fn job_id(prefix: &str, name: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("randomness");
    format!("{prefix}-{name}-{}", hex::encode(b))
}

/// Runs `cmd` with a 30 s timeout; the exec itself must not fail.
pub async fn sh(c: &Container, cmd: &str) -> ExecOutput {
    c.exec(cmd, Duration::from_secs(30)).await.expect("exec")
}

/// Runs `cmd`, which must exit 0, and returns its output.
pub async fn ok(c: &Container, cmd: &str) -> String {
    let out = sh(c, cmd).await;
    assert_eq!(out.exit_code, Some(0), "`{cmd}` failed: {}", out.output);
    out.output
}

/// Runs `cmd`, which must fail, and returns its output.
pub async fn fails(c: &Container, cmd: &str) -> String {
    let out = sh(c, cmd).await;
    assert_ne!(out.exit_code, Some(0), "`{cmd}` succeeded: {}", out.output);
    out.output
}

/// What this machine's network answers for `hosts` from inside a refused special range, as an operator of such a
/// site would list it in `sandbox.egress_allow_addresses`: this project's test machines reach the internet through
/// an intercepting gateway that resolves every registry to 203.0.113.80 (TEST-NET-3). Empty where names resolve to
/// public addresses.
pub fn gateway_allowance(hosts: &[&str]) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for host in hosts {
        let Ok(addrs) = (*host, 443).to_socket_addrs() else {
            continue;
        };
        for a in addrs {
            let ip = a.ip();
            let special = drafter::sandboxd::egress::refused_ip(ip).is_some();
            let allowable = drafter::sandboxd::egress::allowance(&ip.to_string()).is_ok();
            if special && allowable && !out.contains(&ip.to_string()) {
                out.push(ip.to_string());
            }
        }
    }
    out
}
