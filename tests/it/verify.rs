//! `drafter verify` against bundles an attacker has cut or extended: through the real binary, on bundles written by
//! the library's `BundleWriter` (no Docker, no stand-ins needed).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use chrono::Utc;
use drafter::proof::bundle::{Change, Outcome, ReceiptUsage, TriggerInfo};
use drafter::proof::{BundleWriter, ModelCallInput, RunInput, RunnerKey, BUNDLE_FILE};

const BIN: &str = env!("CARGO_BIN_EXE_drafter");

fn policy() -> String {
    format!("sha256:{}", drafter::proof::sha256_hex(b"policy"))
}

fn key(seed: u8) -> Arc<RunnerKey> {
    Arc::new(RunnerKey::from_seed([seed; 32]))
}

fn model_call(w: &mut BundleWriter, i: u8) {
    w.model_call(ModelCallInput {
        provider: "anthropic",
        model: "m",
        endpoint: "/v1/messages",
        http_status: 200,
        request: &[b'q', i],
        response: &[b'r', i],
        usage: ReceiptUsage {
            input_tokens: 10,
            output_tokens: 2,
            ..ReceiptUsage::default()
        },
        usage_estimated: false,
        latency_ms: 5,
        started_at: Utc::now(),
    })
    .expect("model call");
}

fn run_input(attempt: u32, result: &str) -> RunInput {
    let pr = result == "pull_request";
    RunInput {
        team: None,
        attempt,
        max_attempts: 3,
        ticket_sha256: None,
        trigger: TriggerInfo {
            by: "jira user 5b10".into(),
            event: "webhook:jira:issue_updated changelog:1".into(),
            approved_by: None,
        },
        worker_id: "host:1:abc".into(),
        repo: Some("acme/web".into()),
        base: Some("main".into()),
        branch: Some("drafter/DEMO-1-x".into()),
        change: pr.then(|| Change {
            base_commit: "1".repeat(40),
            commit: "2".repeat(40),
            diff_sha256: drafter::proof::sha256_hex(b"diff"),
            files: 1,
        }),
        sandbox_image: None,
        sandbox_image_digest: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        decisions: vec![],
        network: None,
        credential: None,
        fork: None,
        outcome: Outcome {
            result: result.into(),
            rule: None,
            reason: (!pr).then(|| "model API returned 503".into()),
            retryable: !pr,
            pr_url: pr.then(|| "https://gh/acme/web/pull/1".into()),
            pr_number: pr.then_some(1),
        },
    }
}

/// A two-attempt job: attempt 1 failed (retryable), attempt 2 opened the PR. Returns the bundle, the digest attempt 1
/// reported (on the ticket) and the digest attempt 2 put in the PR, and the file's length after attempt 1.
struct TwoAttempts {
    path: PathBuf,
    first_digest: String,
    pr_digest: String,
    first_len: usize,
}

fn two_attempts(dir: &Path, k: Arc<RunnerKey>) -> TwoAttempts {
    let mut w = BundleWriter::open(dir, k.clone(), "j1", "DEMO-1", &policy()).expect("open");
    model_call(&mut w, 0);
    let first_digest = w.run(run_input(1, "failed")).expect("run 1");
    drop(w);
    let path = dir.join(BUNDLE_FILE);
    let first_len = std::fs::read(&path).expect("read").len();
    let mut w = BundleWriter::open(dir, k, "j1", "DEMO-1", &policy()).expect("reopen");
    model_call(&mut w, 1);
    model_call(&mut w, 2);
    let pr_digest = w.run(run_input(2, "pull_request")).expect("run 2");
    TwoAttempts {
        path,
        first_digest,
        pr_digest,
        first_len,
    }
}

fn verify(path: &Path, args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .arg("verify")
        .arg(path)
        .args(args)
        .output()
        .expect("drafter verify runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn a_bundle_cut_after_an_earlier_attempt_fails_against_the_prs_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = two_attempts(dir.path(), key(1));
    let full = std::fs::read(&b.path).expect("read");
    let pr = format!("sha256:{}", b.pr_digest);

    // The whole bundle matches the PR's digest.
    let ok = verify(&b.path, &["--digest", &pr]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("digest:"), "{}", text(&ok));

    // Cut after attempt 1's run statement: a well-formed bundle that ends with a run statement, but not the one
    // the PR names.
    let cut = write(dir.path(), "cut.jsonl", &full[..b.first_len]);
    let bad = verify(&cut, &["--digest", &pr]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let why = text(&bad);
    assert!(why.contains(&b.pr_digest), "{why}");
    assert!(why.contains("verification failed"), "{why}");

    // The digest attempt 1 put on the ticket still names a prefix of the full bundle: accepted, and said so.
    let first = format!("sha256:{}", b.first_digest);
    let ok = verify(&b.path, &["--digest", &first]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("line 2"), "{}", text(&ok));
    // A digest that is no attempt's at all is refused.
    let other = format!("sha256:{}", "ab".repeat(32));
    let bad = verify(&b.path, &["--digest", &other]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    // Malformed digests are a usage error, not a verification result.
    let bad = verify(&b.path, &["--digest", "sha256:xyz"]);
    assert!(!bad.status.success(), "{}", text(&bad));
}

#[test]
fn a_line_appended_with_another_key_fails_without_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = two_attempts(dir.path(), key(1));
    // The attacker continues the chain correctly, but can only sign with a key of their own.
    let mut w = BundleWriter::open(dir.path(), key(66), "j1", "DEMO-1", &policy()).expect("open");
    model_call(&mut w, 9);
    w.run(run_input(3, "pull_request")).expect("run");

    let bad = verify(&b.path, &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let why = text(&bad);
    assert!(why.contains("line 6"), "{why}");
    assert!(why.contains(&key(66).key_id()), "{why}");
    assert!(why.contains(&key(1).key_id()), "{why}");

    // Explicitly allowed: accepted, and the summary names both keys.
    let ok = verify(&b.path, &["--allow-signer-change"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let shown = text(&ok);
    assert!(shown.contains(&key(66).key_id()), "{shown}");
    assert!(shown.contains("changes"), "{shown}");

    // Pinned to the runner's key, the stranger's line is refused whatever the flags.
    let pub_hex = key(1).public_hex();
    let bad = verify(&b.path, &["--key", &pub_hex, "--allow-signer-change"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("line 6"), "{}", text(&bad));
}

#[test]
fn a_rotated_key_mid_bundle_verifies_with_the_data_directory() {
    let data = tempfile::tempdir().expect("tempdir");
    let job = tempfile::tempdir().expect("tempdir");
    let old = Arc::new(RunnerKey::load_or_create(data.path()).expect("key"));
    let mut w =
        BundleWriter::open(job.path(), old.clone(), "j1", "DEMO-1", &policy()).expect("open");
    model_call(&mut w, 0);
    w.run(run_input(1, "failed")).expect("run 1");
    drop(w);
    // `drafter key rotate`, then the retry runs with the new key.
    let rotated = std::process::Command::new(BIN)
        .args(["key", "rotate", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("key rotate");
    assert!(rotated.status.success(), "{}", text(&rotated));
    let new = Arc::new(RunnerKey::load_or_create(data.path()).expect("key"));
    assert_ne!(new.key_id(), old.key_id());
    let mut w =
        BundleWriter::open(job.path(), new.clone(), "j1", "DEMO-1", &policy()).expect("reopen");
    model_call(&mut w, 1);
    let digest = w.run(run_input(2, "pull_request")).expect("run 2");
    let path = job.path().join(BUNDLE_FILE);

    // Unpinned, a change of signer is refused: nothing says the second key is the runner's.
    let bad = verify(&path, &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("--key"), "{}", text(&bad));
    // Pinned to the data directory (runner.pub and the retired keys/), the rotation verifies.
    let dd = data.path().to_str().expect("utf8");
    let ok = verify(
        &path,
        &["--key", dd, "--digest", &format!("sha256:{digest}")],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("(pinned)"), "{}", text(&ok));
    // So does naming both keys.
    let ok = verify(
        &path,
        &["--key", &old.public_hex(), "--key", &new.public_hex()],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    // Only the new key: the old lines are refused.
    let bad = verify(&path, &["--key", &new.public_hex()]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
}

#[test]
fn a_bundle_whose_last_run_statement_was_cut_fails_unless_incomplete_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = two_attempts(dir.path(), key(1));
    let full = std::fs::read(&b.path).expect("read");
    let body = &full[..full.len() - 1];
    let last_line = body.iter().rposition(|&c| c == b'\n').expect("lines") + 1;
    let cut = write(dir.path(), "cut.jsonl", &full[..last_line]);

    let bad = verify(&cut, &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("without a run statement"),
        "{}",
        text(&bad)
    );
    // With the PR's digest it fails too, whatever else is allowed.
    let pr = format!("sha256:{}", b.pr_digest);
    let bad = verify(&cut, &["--digest", &pr, "--allow-incomplete"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));

    // An operator looking at a job still running says so explicitly, and the summary says it is unfinished.
    let ok = verify(&cut, &["--allow-incomplete"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("INCOMPLETE"), "{}", text(&ok));
}
