//! The bundle format against the DSSE spec's test vector and in-toto Statement v1, and the verifier against every
//! kind of tampering the issue names: a changed byte, a reordered, dropped or replayed envelope, another key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use serde_json::Value;

use super::bundle::*;
use super::retention::{purge, Bodies, Retention};
use super::verify::{verify_bytes, verify_unfinished, LineProblem, Pins, VerifyError};
use super::*;

/// A policy hash of the real shape.
fn p1() -> String {
    format!("sha256:{}", sha256_hex(b"p1"))
}

fn key(seed: u8) -> Arc<RunnerKey> {
    Arc::new(RunnerKey::from_seed([seed; 32]))
}

fn model(w: &mut BundleWriter, i: u8) {
    w.model_call(ModelCallInput {
        provider: "anthropic",
        model: "m",
        endpoint: "/v1/messages",
        http_status: 200,
        request: &[b'q', i],
        response: &[b'r', i],
        usage: ReceiptUsage {
            input_tokens: 100,
            output_tokens: 20,
            ..ReceiptUsage::default()
        },
        usage_estimated: false,
        latency_ms: 5,
        started_at: Utc::now(),
    })
    .unwrap();
}

fn tool(w: &mut BundleWriter) {
    w.tool_call(ToolCallInput {
        turn: 1,
        name: "run",
        arguments: br#"{"command":"make test"}"#,
        output: b"exit code 0\nall passed",
        shown: b"exit code 0\nall passed",
        ok: true,
        exit_code: Some(0),
        refused_by: None,
        duration_ms: 12,
        started_at: Utc::now(),
    })
    .unwrap();
}

fn run_input(result: &str, rule: Option<&str>) -> RunInput {
    RunInput {
        team: Some("web".into()),
        attempt: 1,
        max_attempts: 3,
        ticket_sha256: Some(sha256_hex(b"ticket")),
        trigger: TriggerInfo {
            by: "jira user 5b10".into(),
            event: "webhook:jira:issue_updated changelog:1".into(),
            approved_by: None,
        },
        worker_id: "host:1:abc".into(),
        repo: Some("acme/web".into()),
        base: Some("main".into()),
        branch: Some("drafter/DEMO-1-x".into()),
        change: (result == "pull_request").then(|| Change {
            base_commit: "1".repeat(40),
            commit: "2".repeat(40),
            diff_sha256: sha256_hex(b"diff"),
            files: 1,
        }),
        sandbox_image: Some("drafter-sandbox:latest".into()),
        sandbox_image_digest: Some(format!("sha256:{}", sha256_hex(b"image"))),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        decisions: vec![],
        network: None,
        credential: None,
        fork: None,
        outcome: Outcome {
            result: result.into(),
            rule: rule.map(str::to_string),
            reason: rule.map(|r| format!("policy rule `{r}`")),
            retryable: false,
            pr_url: (result == "pull_request").then(|| "https://gh/acme/web/pull/1".into()),
            pr_number: (result == "pull_request").then_some(1),
        },
    }
}

/// A finished job's bundle: two model calls, a tool call between them, a run statement.
fn bundle(dir: &Path, job: &str, k: Arc<RunnerKey>) -> (PathBuf, Vec<u8>) {
    let mut w = BundleWriter::open(dir, k, job, "DEMO-1", &p1()).unwrap();
    model(&mut w, 0);
    tool(&mut w);
    model(&mut w, 1);
    w.run(run_input("pull_request", None)).unwrap();
    let path = dir.join(BUNDLE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn join(ls: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in ls {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn pinned(k: &RunnerKey) -> Pins {
    Pins {
        keys: vec![k.verifying_key()],
        policy_hash: None,
        ..Pins::default()
    }
}

#[test]
fn pae_matches_the_dsse_spec_test_vector() {
    // secure-systems-lab/dsse protocol.md, "Test Vectors".
    assert_eq!(
        dsse::pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
    );
    // The spec's envelope carries the body as standard base64, as ours does.
    assert_eq!(b64(b"hello world"), "aGVsbG8gd29ybGQ=");
    // An empty body and a multi-byte type are length-prefixed in bytes.
    assert_eq!(dsse::pae("", b""), b"DSSEv1 0  0 ".to_vec());
    assert_eq!(dsse::pae("é", b"x"), "DSSEv1 2 é 1 x".as_bytes().to_vec());

    // Our signatures are over exactly PAE(payloadType, payload), checked here by hand with the raw Ed25519 key.
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (_, bytes) = bundle(dir.path(), "j1", k.clone());
    for line in lines(&bytes) {
        let env: Value = serde_json::from_slice(&line).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let mut pae = format!(
            "DSSEv1 {} {PAYLOAD_TYPE} {} ",
            PAYLOAD_TYPE.len(),
            payload.len()
        )
        .into_bytes();
        pae.extend_from_slice(&payload);
        let sig = base64::engine::general_purpose::STANDARD
            .decode(env["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        k.verifying_key().verify_strict(&pae, &sig).unwrap();
        assert_eq!(env["signatures"][0]["keyid"], k.key_id());
    }
}

#[test]
fn statements_are_in_toto_statement_v1() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = bundle(dir.path(), "j1", key(3));
    let mut types = Vec::new();
    for line in lines(&bytes) {
        let env: Value = serde_json::from_slice(&line).unwrap();
        let keys: Vec<&String> = env.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let st: Value = serde_json::from_slice(&payload).unwrap();
        let mut fields: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(fields, ["_type", "predicate", "predicateType", "subject"]);
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        let subjects = st["subject"].as_array().unwrap();
        assert!(!subjects.is_empty());
        for s in subjects {
            assert!(!s["name"].as_str().unwrap().is_empty());
            let digest = s["digest"].as_object().unwrap();
            assert!(!digest.is_empty());
            for (alg, v) in digest {
                assert!(["sha256", "sha1"].contains(&alg.as_str()));
                assert!(v.as_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
        assert!(st["predicate"].is_object());
        types.push(st["predicateType"].as_str().unwrap().to_string());
        // Canonical: re-encoding the parsed payload gives the same bytes.
        assert_eq!(canonical_json(&st).unwrap(), payload);
    }
    assert_eq!(types, [MODEL_CALL, TOOL_CALL, MODEL_CALL, RUN]);
}

#[test]
fn a_finished_bundle_verifies_and_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (path, bytes) = bundle(dir.path(), "j1", k.clone());
    let s = verify_bytes(&path, &bytes, &pinned(&k)).unwrap();
    assert_eq!(s.count, 4);
    assert_eq!(s.digest, sha256_hex(&bytes));
    assert_eq!((s.totals.model_calls, s.totals.tool_calls), (2, 1));
    assert_eq!(s.totals.usage.input_tokens, 200);
    assert_eq!(s.runs, 1);
    assert!(s.pinned);
    assert_eq!(s.key_ids, [k.key_id()]);
    assert_eq!(
        s.ticket_sha256.as_deref(),
        Some(sha256_hex(b"ticket").as_str())
    );
    let run = s.last_run.clone().unwrap();
    assert_eq!(
        run.outcome.pr_url.as_deref(),
        Some("https://gh/acme/web/pull/1")
    );
    let text = super::verify::render(&s, None, None);
    assert!(text.contains("2 model calls, 1 tool calls"), "{text}");
    assert!(text.contains("jira user 5b10"), "{text}");

    // The policy file's hash must be the statements'.
    let mut p = pinned(&k);
    p.policy_hash = Some(format!("sha256:{}", sha256_hex(b"other")));
    let err = verify_bytes(&path, &bytes, &p).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "line 1: policy hash {} does not match the policy file's sha256:{}",
            p1(),
            sha256_hex(b"other")
        )),
        "{err}"
    );
}

#[test]
fn every_single_byte_change_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let mut w = BundleWriter::open(dir.path(), k.clone(), "j1", "DEMO-1", &p1()).unwrap();
    model(&mut w, 0);
    w.run(run_input("refused", Some("repo"))).unwrap();
    let path = dir.path().join(BUNDLE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    verify_bytes(&path, &bytes, &Pins::default()).unwrap();
    for offset in 0..bytes.len() {
        // 0x01 changes a character to its neighbour, 0x20 flips letter case, 0x80 breaks UTF-8.
        for mask in [0x01u8, 0x20, 0x80] {
            let mut bad = bytes.clone();
            bad[offset] ^= mask;
            assert!(
                verify_bytes(&path, &bad, &Pins::default()).is_err(),
                "accepted a change at byte {offset} (mask {mask:#04x})"
            );
        }
    }
}

#[test]
fn reordered_dropped_replayed_and_foreign_envelopes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (path, bytes) = bundle(dir.path(), "j1", k.clone());
    let ls = lines(&bytes);
    let p = path.display().to_string();
    let check = |candidate: Vec<u8>, pins: &Pins, want: &str| {
        let err = verify_bytes(&path, &candidate, pins)
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("{p}: {want}"));
    };
    let none = Pins::default();

    // Two envelopes swapped.
    check(
        join(&[ls[0].clone(), ls[2].clone(), ls[1].clone(), ls[3].clone()]),
        &none,
        "line 2: seq is 2, expected 1 (an envelope is missing, duplicated or out of order)",
    );
    // One dropped from the middle, and the last (the run statement) dropped.
    check(
        join(&[ls[0].clone(), ls[2].clone(), ls[3].clone()]),
        &none,
        "line 2: seq is 2, expected 1 (an envelope is missing, duplicated or out of order)",
    );
    let err = verify_bytes(&path, &join(&ls[..3]), &none).unwrap_err();
    assert!(
        matches!(err, VerifyError::Incomplete { lines: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("without a run statement"), "{err}");

    // An envelope replayed from another job's bundle (same runner key, same position).
    let other = tempfile::tempdir().unwrap();
    let (_, other_bytes) = bundle(other.path(), "j2", k.clone());
    let theirs = lines(&other_bytes);
    check(
        join(&[
            ls[0].clone(),
            theirs[1].clone(),
            ls[2].clone(),
            ls[3].clone(),
        ]),
        &none,
        "line 2: job_id is `j2` but line 1 has `j1` (an envelope from another job's bundle)",
    );

    // Verified with another key.
    let stranger = key(9);
    check(
        bytes.clone(),
        &pinned(&stranger),
        &format!(
            "line 1: signed by key {}, which is not a given key ({})",
            k.key_id(),
            stranger.key_id()
        ),
    );
    // A bundle re-signed end to end by another key is self-consistent, but not by the pinned key.
    let forged_dir = tempfile::tempdir().unwrap();
    let (_, forged) = bundle(forged_dir.path(), "j1", stranger.clone());
    verify_bytes(&path, &forged, &none).unwrap();
    assert!(verify_bytes(&path, &forged, &pinned(&k)).is_err());

    // The keyid hint must name the signer.
    let mut env: Value = serde_json::from_slice(&ls[3]).unwrap();
    env["signatures"][0]["keyid"] = Value::String(stranger.key_id());
    let swapped = serde_json::to_vec(&env).unwrap();
    let err = verify_bytes(
        &path,
        &join(&[ls[0].clone(), ls[1].clone(), ls[2].clone(), swapped]),
        &none,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Line {
                line: 4,
                problem: LineProblem::KeyId { .. },
                ..
            }
        ),
        "{err}"
    );

    // A torn last line.
    let err = verify_bytes(&path, &bytes[..bytes.len() - 1], &none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4: no trailing newline"), "{err}");
}

#[test]
fn a_rotated_key_keeps_old_bundles_verifiable() {
    let data = tempfile::tempdir().unwrap();
    let old = Arc::new(RunnerKey::load_or_create(data.path()).unwrap());
    let job = tempfile::tempdir().unwrap();
    let (path, bytes) = bundle(job.path(), "j1", old.clone());
    let (old_id, new) = RunnerKey::rotate(data.path()).unwrap();
    assert_eq!(old_id, old.key_id());
    assert_ne!(new.key_id(), old.key_id());
    let known = known_keys(data.path());
    assert_eq!(known.len(), 2);
    let pins = Pins {
        keys: known,
        policy_hash: None,
        ..Pins::default()
    };
    verify_bytes(&path, &bytes, &pins).unwrap();
    // The old private key is gone; the new one is what load_or_create returns.
    assert_eq!(
        RunnerKey::load_or_create(data.path()).unwrap().key_id(),
        new.key_id()
    );
}

#[test]
fn a_retried_job_continues_its_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let mut w = BundleWriter::open(dir.path(), k.clone(), "j1", "DEMO-1", &p1()).unwrap();
    model(&mut w, 0);
    w.run(run_input("failed", None)).unwrap();
    drop(w);
    let mut w = BundleWriter::open(dir.path(), k.clone(), "j1", "DEMO-1", &p1()).unwrap();
    assert_eq!((w.count(), w.totals().model_calls), (2, 1));
    model(&mut w, 1);
    w.run(run_input("no_changes", None)).unwrap();
    let s = super::verify(dir.path(), &pinned(&k)).unwrap();
    assert_eq!((s.count, s.runs, s.totals.model_calls), (4, 2, 2));
    assert_eq!(s.last_run.unwrap().outcome.result, "no_changes");
    // Another job's id is refused.
    assert!(matches!(
        BundleWriter::open(dir.path(), k, "j2", "DEMO-1", &p1()),
        Err(ProofError::WrongJob { .. })
    ));
}

/// Two attempts by `k` (the first failed, the second opened the PR); returns the file, its length after attempt 1
/// and the digests attempt 1 and attempt 2 reported.
fn two_attempts(dir: &Path, k: Arc<RunnerKey>) -> (PathBuf, usize, String, String) {
    let mut w = BundleWriter::open(dir, k.clone(), "j1", "DEMO-1", &p1()).unwrap();
    model(&mut w, 0);
    let first = w.run(run_input("failed", None)).unwrap();
    drop(w);
    let path = dir.join(BUNDLE_FILE);
    let first_len = std::fs::read(&path).unwrap().len();
    let mut w = BundleWriter::open(dir, k, "j1", "DEMO-1", &p1()).unwrap();
    model(&mut w, 1);
    tool(&mut w);
    let second = w.run(run_input("pull_request", None)).unwrap();
    (path, first_len, first, second)
}

#[test]
fn a_bundle_cut_after_an_earlier_attempt_does_not_match_the_prs_digest() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (path, first_len, first, second) = two_attempts(dir.path(), k.clone());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        second,
        sha256_hex(&bytes),
        "the PR's digest is the whole file's"
    );
    let with = |d: &str| Pins {
        digest: Some(d.to_string()),
        ..pinned(&k)
    };
    let s = verify_bytes(&path, &bytes, &with(&format!("sha256:{second}"))).unwrap();
    let m = s.digest_match.unwrap();
    assert_eq!((m.line, m.attempt), (5, 1));
    assert_eq!(s.run_digests.len(), 2);
    assert_eq!(s.run_digests[0].digest, first);

    // The cut bundle is well formed and ends with a run statement: only the digest tells it apart.
    let cut = &bytes[..first_len];
    verify_bytes(&path, cut, &pinned(&k)).unwrap();
    let err = verify_bytes(&path, cut, &with(&second)).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Digest { expected, runs: 1, .. } if *expected == second),
        "{err}"
    );
    // Attempt 1's digest (the one its ticket comment showed) names a prefix of the full bundle.
    let s = verify_bytes(&path, &bytes, &with(&first)).unwrap();
    assert_eq!(s.digest_match.map(|m| m.line), Some(2));
    // Only run statements end a digest's prefix: the digest of the file up to a model call matches nothing.
    let mid = sha256_hex(&bytes[..first_len + lines(&bytes)[2].len() + 1]);
    assert!(verify_bytes(&path, &bytes, &with(&mid)).is_err());
}

#[test]
fn a_line_appended_by_another_key_fails_unless_allowed_or_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (path, ..) = two_attempts(dir.path(), k.clone());
    // The stranger chains correctly, but signs with their own key.
    let stranger = key(9);
    let mut w = BundleWriter::open(dir.path(), stranger.clone(), "j1", "DEMO-1", &p1()).unwrap();
    w.run(run_input("pull_request", None)).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let err = verify_bytes(&path, &bytes, &Pins::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Line { line: 6, problem: LineProblem::SignerChanged { from, to }, .. }
                if *from == k.key_id() && *to == stranger.key_id()
        ),
        "{err}"
    );
    let allowed = Pins {
        allow_signer_change: true,
        ..Pins::default()
    };
    let s = verify_bytes(&path, &bytes, &allowed).unwrap();
    assert_eq!(s.signer_changes, vec![6]);
    assert_eq!(s.key_ids, vec![k.key_id(), stranger.key_id()]);
    assert!(!s.pinned);
    // Pinned to the runner's key, the flag does not help the stranger.
    let err = verify_bytes(
        &path,
        &bytes,
        &Pins {
            allow_signer_change: true,
            ..pinned(&k)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Line {
                line: 6,
                problem: LineProblem::Unpinned { .. },
                ..
            }
        ),
        "{err}"
    );
    // Both pinned (a rotation): the change is accepted and reported.
    let both = Pins {
        keys: vec![k.verifying_key(), stranger.verifying_key()],
        ..Pins::default()
    };
    assert_eq!(
        verify_bytes(&path, &bytes, &both).unwrap().signer_changes,
        vec![6]
    );
}

#[test]
fn a_cut_last_run_statement_fails_unless_incomplete_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let (path, _, _, second) = two_attempts(dir.path(), k.clone());
    let bytes = std::fs::read(&path).unwrap();
    let ls = lines(&bytes);
    let cut = join(&ls[..ls.len() - 1]);
    let err = verify_bytes(&path, &cut, &pinned(&k)).unwrap_err();
    assert!(
        matches!(err, VerifyError::Incomplete { lines: 4, .. }),
        "{err}"
    );
    let open = Pins {
        allow_incomplete: true,
        ..pinned(&k)
    };
    let s = verify_bytes(&path, &cut, &open).unwrap();
    assert!(!s.complete);
    assert_eq!(s.runs, 1);
    // Allowing an unfinished attempt does not let it pass for the PR's bundle.
    let err = verify_bytes(
        &path,
        &cut,
        &Pins {
            digest: Some(second),
            ..open
        },
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::Digest { .. }), "{err}");
}

#[test]
fn retention_keeps_bodies_only_when_full_and_purges_them_by_age() {
    let data = tempfile::tempdir().unwrap();
    let jobs = data.path().join("jobs");
    for (job, bodies) in [("jfull", Bodies::Full), ("jzero", Bodies::Digests)] {
        let dir = jobs.join(job);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = BundleWriter::open(&dir, key(3), job, "DEMO-1", &p1())
            .unwrap()
            .with_retention(Retention {
                bodies,
                max_age_days: Some(30),
            });
        model(&mut w, 7);
        tool(&mut w);
        w.run(run_input("no_changes", None)).unwrap();
    }
    // Full: every body is there under its digest.
    let full = jobs.join("jfull").join(BODIES_DIR);
    for body in [
        &b"q\x07"[..],
        b"r\x07",
        br#"{"command":"make test"}"#,
        b"exit code 0\nall passed",
    ] {
        assert_eq!(std::fs::read(full.join(sha256_hex(body))).unwrap(), body);
    }
    // Digests: nothing but the bundle.
    let zero: Vec<_> = std::fs::read_dir(jobs.join("jzero"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(zero, [BUNDLE_FILE]);

    // Not yet 30 days old: kept. After: removed, and the bundle still verifies.
    assert!(purge(data.path(), Utc::now(), false).is_empty());
    let later = Utc::now() + chrono::Duration::days(31);
    let dry = purge(data.path(), later, true);
    assert_eq!(dry.len(), 1);
    assert!(full.exists());
    let done = purge(data.path(), later, false);
    assert_eq!(done[0].files, 4);
    assert!(!full.exists());
    super::verify(&jobs.join("jfull"), &Pins::default()).unwrap();
    let _ = verify_unfinished(&jobs.join("jfull"), &Pins::default()).unwrap();
}
