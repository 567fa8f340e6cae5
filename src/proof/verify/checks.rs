//! The checks: the whole file in order, one line on its own, a run statement's subjects, and a repository.

use super::*;

pub(super) fn check(path: &Path, bytes: &[u8], pins: &Pins) -> Result<Summary, VerifyError> {
    if bytes.is_empty() {
        return Err(VerifyError::Empty {
            path: path.to_path_buf(),
        });
    }
    let pinned: Vec<(String, &VerifyingKey)> = pins.keys.iter().map(|k| (key_id(k), k)).collect();
    let mut s = Summary {
        path: path.to_path_buf(),
        count: 0,
        head: ZERO_HASH.to_string(),
        digest: sha256_hex(bytes),
        job_id: String::new(),
        ticket: String::new(),
        key_ids: Vec::new(),
        signer_changes: Vec::new(),
        pinned: !pins.keys.is_empty(),
        policy_hashes: Vec::new(),
        totals: Totals::default(),
        tools: Vec::new(),
        runs: 0,
        last_run: None,
        complete: false,
        ticket_sha256: None,
        run_digests: Vec::new(),
        digest_match: None,
    };
    let mut last_kid: Option<String> = None;
    let mut rest = bytes;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let fail = |problem| VerifyError::Line {
            path: path.to_path_buf(),
            line: line_no,
            problem,
        };
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(fail(LineProblem::Truncated));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let (predicate, subjects, kid) = check_line(line, &pinned).map_err(fail)?;
        let chain = predicate.chain();
        if line_no == 1 {
            s.job_id = chain.job_id.clone();
            s.ticket = chain.ticket.clone();
        }
        for (field, found, expected) in [
            ("job_id", &chain.job_id, &s.job_id),
            ("ticket", &chain.ticket, &s.ticket),
        ] {
            if found != expected {
                return Err(fail(LineProblem::OtherJob {
                    field,
                    found: found.clone(),
                    expected: expected.clone(),
                }));
            }
        }
        if chain.seq != s.count {
            return Err(fail(LineProblem::Seq {
                found: chain.seq,
                expected: s.count,
            }));
        }
        if chain.prev != s.head {
            return Err(fail(LineProblem::Prev));
        }
        if let Some(want) = &pins.policy_hash {
            if predicate.policy_hash() != want {
                return Err(fail(LineProblem::Policy {
                    found: predicate.policy_hash().to_string(),
                    expected: want.clone(),
                }));
            }
        }
        // After the job and chain checks, so a line replayed from another bundle is named as that.
        if let Some(before) = last_kid.as_ref().filter(|k| **k != kid) {
            if pinned.is_empty() && !pins.allow_signer_change {
                return Err(fail(LineProblem::SignerChanged {
                    from: before.clone(),
                    to: kid,
                }));
            }
            s.signer_changes.push(line_no);
        }
        last_kid = Some(kid.clone());
        if let Predicate::Run(run) = &predicate {
            let t = &s.totals;
            let checks = [
                ("model_calls", run.model_calls, t.model_calls),
                ("tool_calls", run.tool_calls, t.tool_calls),
                ("input tokens", run.usage.input_tokens, t.usage.input_tokens),
                (
                    "output tokens",
                    run.usage.output_tokens,
                    t.usage.output_tokens,
                ),
                (
                    "cache read tokens",
                    run.usage.cache_read_tokens,
                    t.usage.cache_read_tokens,
                ),
                (
                    "cache write tokens",
                    run.usage.cache_write_tokens,
                    t.usage.cache_write_tokens,
                ),
                ("cost_micros", run.cost_micros, t.cost_micros),
            ];
            for (what, said, counted) in checks {
                if said != counted {
                    return Err(fail(LineProblem::Counts(format!(
                        "{what} is {said}, the chain has {counted}"
                    ))));
                }
            }
            check_run_subjects(run, &subjects, &s.head, &s.ticket)
                .map_err(|m| fail(LineProblem::Counts(m)))?;
            s.runs += 1;
            s.run_digests.push(RunDigest {
                line: line_no,
                attempt: run.attempt,
                digest: sha256_hex(&bytes[..bytes.len() - rest.len()]),
            });
            s.last_run = Some((**run).clone());
            let ticket_subject = format!("ticket:{}", s.ticket);
            s.ticket_sha256 = subjects
                .iter()
                .find(|x| x.name == ticket_subject)
                .and_then(|x| x.digest.get("sha256").cloned());
        }
        if !s.key_ids.contains(&kid) {
            s.key_ids.push(kid);
        }
        if !s.policy_hashes.iter().any(|p| p == predicate.policy_hash()) {
            s.policy_hashes.push(predicate.policy_hash().to_string());
        }
        if let Predicate::ToolCall(t) = &predicate {
            s.tools.push((t.name.clone(), t.ok));
        }
        s.complete = matches!(predicate, Predicate::Run(_));
        s.totals.add(&predicate);
        s.count += 1;
        s.head = sha256_hex(line);
    }
    Ok(s)
}

/// Checks one line on its own: encoding, canonical form, statement shape, key and signature. Returns the predicate,
/// the subjects and the signer's key id.
fn check_line(
    line: &[u8],
    pinned: &[(String, &VerifyingKey)],
) -> Result<(Predicate, Vec<Subject>, String), LineProblem> {
    std::str::from_utf8(line).map_err(|_| LineProblem::NotUtf8)?;
    let envelope = dsse::Envelope::from_json(line)
        .map_err(|e| LineProblem::NotEnvelope(strip_prefix(&e.to_string())))?;
    let canonical = envelope
        .to_json()
        .map_err(|e| LineProblem::NotEnvelope(e.to_string()))?;
    if canonical != line {
        return Err(LineProblem::NotCanonical {
            column: first_difference(line, &canonical),
        });
    }
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(LineProblem::PayloadType(envelope.payload_type.clone()));
    }
    if envelope.signatures.len() != 1 {
        return Err(LineProblem::Signatures(envelope.signatures.len()));
    }
    let std = base64::engine::general_purpose::STANDARD;
    let payload = std
        .decode(&envelope.payload)
        .ok()
        .filter(|p| b64(p) == envelope.payload)
        .ok_or(LineProblem::Base64("payload"))?;
    let sig = &envelope.signatures[0];
    std.decode(&sig.sig)
        .ok()
        .filter(|s| b64(s) == sig.sig)
        .ok_or(LineProblem::Base64("sig"))?;

    let value: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| LineProblem::Statement(e.to_string()))?;
    let canonical = canonical_json(&value).map_err(LineProblem::Statement)?;
    if canonical != payload {
        return Err(LineProblem::Statement(format!(
            "not canonical JSON (differs at byte {})",
            first_difference(&payload, &canonical)
        )));
    }
    let statement: Statement =
        serde_json::from_value(value).map_err(|e| LineProblem::Statement(e.to_string()))?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(LineProblem::Statement(format!(
            "_type is `{}`, expected `{STATEMENT_TYPE}`",
            statement.type_
        )));
    }
    if statement.subject.is_empty()
        || statement
            .subject
            .iter()
            .any(|s| s.name.is_empty() || s.digest.is_empty())
    {
        return Err(LineProblem::Statement(
            "every statement needs at least one subject, each with a name and a digest".into(),
        ));
    }
    for s in &statement.subject {
        for (alg, hex) in &s.digest {
            let len = match alg.as_str() {
                "sha256" => 64,
                "sha1" => 40,
                _ => 0,
            };
            if hex.len() != len
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(LineProblem::Statement(format!(
                    "subject `{}`: `{alg}` digest is not lowercase hex of the right length",
                    s.name
                )));
            }
        }
    }
    let predicate = Predicate::parse(&statement.predicate_type, &statement.predicate)
        .map_err(LineProblem::Statement)?;

    // The key: the one the statement names, which must match the envelope's keyid and, when keys are pinned, be
    // one of them. The signature is then checked over DSSE's PAE by the dsse crate.
    let signer = parse_public_key(&predicate.chain().signer)
        .map_err(|e| LineProblem::Statement(format!("chain.signer: {e}")))?;
    let signer_id = key_id(&signer);
    let keyid = sig.keyid.clone().unwrap_or_default();
    if keyid != signer_id {
        return Err(LineProblem::KeyId {
            found: keyid,
            expected: signer_id,
        });
    }
    if !pinned.is_empty() && !pinned.iter().any(|(_, k)| **k == signer) {
        return Err(LineProblem::Unpinned {
            key_id: signer_id,
            pinned: pinned
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let verifier = dsse::Ed25519Verifier::from_bytes(signer.as_bytes())
        .map_err(|_| LineProblem::Signature)?
        .with_key_id(signer_id.clone());
    let verified = dsse::verify(&envelope, &[&verifier], 1).map_err(|_| LineProblem::Signature)?;
    // What was parsed is what was signed (the same decoded bytes).
    if verified.payload != payload {
        return Err(LineProblem::Signature);
    }
    Ok((predicate, statement.subject, signer_id))
}

/// A run statement's subjects must say what its predicate says: the policy, the chain head before it, the commit
/// and the diff.
fn check_run_subjects(
    run: &Run,
    subjects: &[Subject],
    head: &str,
    ticket: &str,
) -> Result<(), String> {
    let get = |name: &str, alg: &str| {
        subjects
            .iter()
            .find(|x| x.name == name)
            .and_then(|x| x.digest.get(alg))
            .map(String::as_str)
    };
    let policy = run
        .policy_hash
        .strip_prefix("sha256:")
        .unwrap_or(&run.policy_hash);
    if get("policy", "sha256") != Some(policy) {
        return Err("the `policy` subject is not the statement's policy hash".into());
    }
    let chain_expected = (head != ZERO_HASH).then_some(head);
    if get("chain", "sha256") != chain_expected {
        return Err("the `chain` subject is not the hash of the line before".into());
    }
    let (commit, diff) = match &run.change {
        Some(c) => (Some(c.commit.as_str()), Some(c.diff_sha256.as_str())),
        None => (None, None),
    };
    if get("commit", "sha1") != commit || get("diff", "sha256") != diff {
        return Err("the `commit`/`diff` subjects do not match the recorded change".into());
    }
    let known = ["policy", "chain", "commit", "diff"];
    let ticket_subject = format!("ticket:{ticket}");
    if let Some(x) = subjects
        .iter()
        .find(|x| !known.contains(&x.name.as_str()) && x.name != ticket_subject)
    {
        return Err(format!("unexpected subject `{}`", x.name));
    }
    Ok(())
}

/// With `drafter verify --repo`: the run's commit must be in `repo_path`, and the diff from its base commit must
/// hash to the recorded digest. Returns a one-line confirmation.
pub fn check_repo(run: &Run, repo_path: &Path) -> Result<String, String> {
    let Some(change) = &run.change else {
        return Err(format!(
            "the run statement records no pushed change (outcome `{}`), so there is nothing to compare with the \
             repository",
            run.outcome.result
        ));
    };
    let repo = git2::Repository::open(repo_path).map_err(|e| {
        format!(
            "{}: not a git repository: {}",
            repo_path.display(),
            e.message()
        )
    })?;
    let oid = |hex: &str, what: &str| {
        git2::Oid::from_str(hex)
            .map_err(|_| format!("the recorded {what} `{hex}` is not a commit id"))
    };
    let (base, commit) = (
        oid(&change.base_commit, "base commit")?,
        oid(&change.commit, "commit")?,
    );
    for (id, what) in [(commit, "commit"), (base, "base commit")] {
        if repo.find_commit(id).is_err() {
            return Err(format!(
                "{what} {id} is not in {} (fetch the job's branch `{}` first)",
                repo_path.display(),
                run.branch.as_deref().unwrap_or("?")
            ));
        }
    }
    let digest =
        crate::proof::format::diff_digest(&repo, base, commit).map_err(|e| e.to_string())?;
    if digest != change.diff_sha256 {
        return Err(format!(
            "the diff {base}..{commit} in {} hashes to sha256:{digest}, but the bundle records sha256:{}",
            repo_path.display(),
            change.diff_sha256
        ));
    }
    Ok(format!(
        "commit {commit} and its diff match {}",
        repo_path.display()
    ))
}

/// serde's messages for a whole-line parse carry "line 1 column N", which would read as the bundle's line 1.
fn strip_prefix(m: &str) -> String {
    m.replace(" at line 1 column", " at column")
}
