//! Checking a bundle offline: every signature, the chain, the job, the pinned keys and the policy.
//!
//! The verifier demands the one valid spelling of every line (canonical envelope, standard base64, canonical JSON
//! payload), so a changed byte anywhere is reported, and reports the first problem with its 1-based line number.
//! Checks run in an order that names the most useful cause: a line replayed from another job is reported as that,
//! not as a broken link; a dropped or swapped line as a sequence gap.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;

use super::bundle::{
    b64, canonical_json, Predicate, Run, Statement, Subject, Totals, BUNDLE_FILE, PAYLOAD_TYPE,
    STATEMENT_TYPE, ZERO_HASH,
};
use super::{key_id, parse_public_key, sha256_hex};

/// What the caller expects of a bundle beyond its own consistency.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// Trusted public keys: every statement must be signed by one of them. Empty: each statement's declared
    /// signer is used, and the summary says the bundle was not pinned.
    pub keys: Vec<VerifyingKey>,
    /// The policy hash every statement must carry (from the policy file given to `drafter verify --policy`).
    pub policy_hash: Option<String>,
    /// The bundle digest the caller was given (from the PR or the ticket; lowercase hex, see [`parse_digest`]): the
    /// file, or the file up to one of its run statements, must hash to it. Each run statement's digest is the
    /// SHA-256 of the file as it stood right after it, so a bundle cut after an earlier attempt does not match the
    /// digest a later attempt published.
    pub digest: Option<String>,
    /// Accept a bundle whose last attempt has no run statement yet (a job still running, or cut short).
    pub allow_incomplete: bool,
    /// Accept a change of signer when no keys are pinned. Without pinned keys nothing says a second key is the
    /// runner's, so by default every statement must be signed by the key that signed line 1; with pinned keys any
    /// of them may sign (a rotated runner key: pin the data directory, which keeps its retired keys).
    pub allow_signer_change: bool,
}

/// The digest as of one run statement: the SHA-256 of the file up to and including that line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDigest {
    /// 1-based line of the run statement.
    pub line: usize,
    /// Its attempt number.
    pub attempt: u32,
    /// Lowercase hex SHA-256 of the file through that line.
    pub digest: String,
}

/// Parses a bundle digest as the PR and the ticket show it (`sha256:<64 hex>`, or the bare hex) into lowercase hex.
pub fn parse_digest(text: &str) -> Result<String, String> {
    let t = text.trim();
    let hex = t.strip_prefix("sha256:").unwrap_or(t).to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "`{t}` is not a bundle digest (expected sha256: and 64 hex characters)"
        ))
    }
}

/// What a bundle that verified says.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The file.
    pub path: PathBuf,
    /// Statements.
    pub count: u64,
    /// Hex SHA-256 of the last line.
    pub head: String,
    /// Hex SHA-256 of the whole file: the bundle digest.
    pub digest: String,
    /// The job.
    pub job_id: String,
    /// The ticket.
    pub ticket: String,
    /// Ids of the keys that signed, in order of first use.
    pub key_ids: Vec<String>,
    /// Lines signed by a different key than the line before (a rotated key, or an allowed change of signer).
    pub signer_changes: Vec<usize>,
    /// Whether the keys were pinned by the caller.
    pub pinned: bool,
    /// Policy hashes seen, in order of first use.
    pub policy_hashes: Vec<String>,
    /// Model and tool call totals.
    pub totals: Totals,
    /// Tool names called, in order, with whether each succeeded.
    pub tools: Vec<(String, bool)>,
    /// Run statements (one per attempt).
    pub runs: u64,
    /// The last run statement (absent only for a chain still being written).
    pub last_run: Option<Run>,
    /// Whether the last line is a run statement (a finished attempt).
    pub complete: bool,
    /// The ticket's content digest from the last run statement's subjects, when the ticket was fetched.
    pub ticket_sha256: Option<String>,
    /// The digest as of each run statement, in order; the last one is [`Summary::digest`] when the bundle is complete.
    pub run_digests: Vec<RunDigest>,
    /// The run statement whose digest matched [`Pins::digest`], when one was given.
    pub digest_match: Option<RunDigest>,
}

/// Which check a line failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// Not UTF-8.
    NotUtf8,
    /// The last line has no newline: truncated, or a write was torn.
    Truncated,
    /// Not a DSSE JSON envelope.
    NotEnvelope(String),
    /// Parses, but is not the canonical spelling.
    NotCanonical {
        /// 1-based byte column of the first difference.
        column: usize,
    },
    /// `payloadType` is not the in-toto one.
    PayloadType(String),
    /// Not exactly one signature.
    Signatures(usize),
    /// A base64 member is not standard padded base64.
    Base64(&'static str),
    /// The payload is not an in-toto Statement v1 in canonical JSON.
    Statement(String),
    /// `keyid` does not name the key the statement says signed it.
    KeyId {
        /// The envelope's keyid.
        found: String,
        /// The id of the declared signer.
        expected: String,
    },
    /// The signer is not one of the pinned keys.
    Unpinned {
        /// The signer's key id.
        key_id: String,
        /// The pinned key ids.
        pinned: String,
    },
    /// The signature does not verify.
    Signature,
    /// The statement belongs to another job or ticket than line 1.
    OtherJob {
        /// `job_id` or `ticket`.
        field: &'static str,
        /// Its value here.
        found: String,
        /// Line 1's value.
        expected: String,
    },
    /// `chain.seq` out of order: a line is missing, duplicated or moved.
    Seq {
        /// Value in the line.
        found: u64,
        /// Value expected here.
        expected: u64,
    },
    /// `chain.prev` does not match the previous line.
    Prev,
    /// The policy hash is not the expected one.
    Policy {
        /// In the statement.
        found: String,
        /// Expected.
        expected: String,
    },
    /// A run statement's counts disagree with the chain before it.
    Counts(String),
    /// Signed by another key than the lines before, with no keys pinned.
    SignerChanged {
        /// The key id that signed the lines before.
        from: String,
        /// The key id that signed this line.
        to: String,
    },
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NotUtf8 => f.write_str("not UTF-8"),
            LineProblem::Truncated => {
                f.write_str("no trailing newline (file truncated or a write was interrupted)")
            }
            LineProblem::NotEnvelope(m) => write!(f, "not a DSSE envelope: {m}"),
            LineProblem::NotCanonical { column } => write!(
                f,
                "not the canonical envelope encoding (differs at column {column})"
            ),
            LineProblem::PayloadType(t) => {
                write!(f, "payloadType is `{t}`, expected `{PAYLOAD_TYPE}`")
            }
            LineProblem::Signatures(n) => write!(f, "{n} signatures, expected exactly one"),
            LineProblem::Base64(m) => write!(f, "{m} is not standard padded base64"),
            LineProblem::Statement(m) => write!(f, "payload is not a valid statement: {m}"),
            LineProblem::KeyId { found, expected } => write!(
                f,
                "keyid `{found}` does not match the signer named in the statement (key id {expected})"
            ),
            LineProblem::Unpinned { key_id, pinned } => write!(
                f,
                "signed by key {key_id}, which is not a given key ({pinned})"
            ),
            LineProblem::Signature => f.write_str("signature does not verify"),
            LineProblem::OtherJob {
                field,
                found,
                expected,
            } => write!(
                f,
                "{field} is `{found}` but line 1 has `{expected}` (an envelope from another job's bundle)"
            ),
            LineProblem::Seq { found, expected } => write!(
                f,
                "seq is {found}, expected {expected} (an envelope is missing, duplicated or out of order)"
            ),
            LineProblem::Prev => f.write_str("prev does not match the hash of the line before"),
            LineProblem::Policy { found, expected } => write!(
                f,
                "policy hash {found} does not match the policy file's {expected}"
            ),
            LineProblem::Counts(m) => write!(f, "run statement disagrees with the chain: {m}"),
            LineProblem::SignerChanged { from, to } => write!(
                f,
                "signed by key {to}, but the lines before by key {from}: nothing says both are the runner's \
                 (lines appended by someone else?). After a key rotation, pin the keys you trust (--key with the \
                 runner's data directory, which keeps its retired keys, or each public key); \
                 --allow-signer-change accepts it unpinned"
            ),
        }
    }
}

/// Why a bundle does not verify. Names the file and, for a bad line, its 1-based number and the check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no statements.
    #[error("{path}: file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// One line failed a check.
    #[error("{path}: line {line}: {problem}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The failed check.
        problem: LineProblem,
    },
    /// The last statement is not a run statement.
    #[error(
        "{path}: the bundle ends at line {lines} without a run statement (the last envelope was dropped, or the \
         job is still running: --allow-incomplete accepts an attempt in progress)"
    )]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// Lines read.
        lines: usize,
    },
    /// The given bundle digest is neither the file's nor that of the file up to any of its run statements.
    #[error(
        "{path}: the bundle digest sha256:{expected} is not this bundle's (sha256:{actual}) nor that of any of its \
         {runs} attempt(s) so far: the bundle was cut short, changed, or is another job's"
    )]
    Digest {
        /// The file.
        path: PathBuf,
        /// The digest given (hex).
        expected: String,
        /// The file's digest (hex).
        actual: String,
        /// Run statements in the file.
        runs: u64,
    },
}

/// Reads and verifies a bundle (a job directory or the `bundle.jsonl` in it). It must end with a run statement
/// unless [`Pins::allow_incomplete`], and match [`Pins::digest`] when one is given.
pub fn verify(path: &Path, pins: &Pins) -> Result<Summary, VerifyError> {
    let path = bundle_path(path);
    let bytes = std::fs::read(&path).map_err(|source| VerifyError::Io {
        path: path.clone(),
        source,
    })?;
    verify_bytes(&path, &bytes, pins)
}

/// [`verify`] over bytes already read; `path` is used in messages.
pub fn verify_bytes(path: &Path, bytes: &[u8], pins: &Pins) -> Result<Summary, VerifyError> {
    let mut s = check(path, bytes, pins)?;
    if !s.complete && !pins.allow_incomplete {
        return Err(VerifyError::Incomplete {
            path: path.to_path_buf(),
            lines: s.count as usize,
        });
    }
    if let Some(want) = &pins.digest {
        let want = want
            .strip_prefix("sha256:")
            .unwrap_or(want)
            .to_ascii_lowercase();
        // The whole file first (the usual case), then earlier attempts (a digest a ticket comment showed before a
        // retry extended the bundle).
        s.digest_match = s
            .run_digests
            .iter()
            .rev()
            .find(|r| r.digest == want)
            .cloned();
        if s.digest_match.is_none() {
            return Err(VerifyError::Digest {
                path: path.to_path_buf(),
                expected: want,
                actual: s.digest.clone(),
                runs: s.runs,
            });
        }
    }
    Ok(s)
}

/// Verifies a bundle that may still be growing (it need not end with a run statement), e.g. to continue it.
pub fn verify_unfinished(path: &Path, pins: &Pins) -> Result<Summary, VerifyError> {
    let path = bundle_path(path);
    let path = path.as_path();
    let bytes = std::fs::read(path).map_err(|source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let pins = Pins {
        allow_incomplete: true,
        ..pins.clone()
    };
    verify_bytes(path, &bytes, &pins)
}

fn bundle_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(BUNDLE_FILE)
    } else {
        path.to_path_buf()
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
        + 1
}

fn check(path: &Path, bytes: &[u8], pins: &Pins) -> Result<Summary, VerifyError> {
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
    let digest = super::format::diff_digest(&repo, base, commit).map_err(|e| e.to_string())?;
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

/// The human summary `drafter verify` prints for a bundle that verified.
pub fn render(s: &Summary, policy_file: Option<&Path>, repo: Option<(&Path, String)>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let run_count = s.runs;
    let _ = writeln!(
        o,
        "ok: proof bundle of job {} (ticket {}) verified: {} statements, chain intact, every signature valid",
        s.job_id, s.ticket, s.count
    );
    if !s.complete {
        let _ = writeln!(
            o,
            "  INCOMPLETE:    the last attempt has no run statement yet (still running, or cut short); accepted \
             because of --allow-incomplete"
        );
    }
    let _ = writeln!(
        o,
        "  signed by:     key {}{}{}",
        s.key_ids.join(", "),
        if s.signer_changes.is_empty() {
            String::new()
        } else {
            let lines: Vec<String> = s.signer_changes.iter().map(usize::to_string).collect();
            format!(" (the signer changes at line {})", lines.join(", "))
        },
        if s.pinned {
            " (pinned)"
        } else {
            " (NOT pinned: pass --key to check who signed)"
        }
    );
    let _ = writeln!(
        o,
        "  policy:        {}{}",
        s.policy_hashes.join(", "),
        policy_file
            .map(|f| format!(" (matches {})", f.display()))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "  calls:         {} model calls, {} tool calls, {} attempt(s)",
        s.totals.model_calls, s.totals.tool_calls, run_count
    );
    let u = &s.totals.usage;
    let _ = writeln!(
        o,
        "  tokens:        {} in, {} out{}",
        u.input_tokens,
        u.output_tokens,
        if s.totals.estimated_calls > 0 {
            format!(
                " ({} call(s) without reported usage, estimated from bytes)",
                s.totals.estimated_calls
            )
        } else {
            String::new()
        }
    );
    if u.cache_read_tokens + u.cache_write_tokens > 0 {
        let prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        let _ = writeln!(
            o,
            "  prompt cache:  {} read, {} written ({:.0}% of {} prompt tokens read from the cache)",
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.cache_read_tokens as f64 * 100.0 / prompt.max(1) as f64,
            prompt
        );
    }
    let _ = writeln!(
        o,
        "  cost:          {}",
        if s.totals.cost_micros > 0 {
            format!("${:.4}", s.totals.cost_micros as f64 / 1_000_000.0)
        } else {
            "not priced (no price for the model in the policy)".into()
        }
    );
    if !s.tools.is_empty() {
        let failed = s.tools.iter().filter(|(_, ok)| !ok).count();
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in &s.tools {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let _ = writeln!(
            o,
            "  tools:         {} ({failed} failed or refused)",
            names.join(", ")
        );
    }
    if let Some(r) = &s.last_run {
        let _ = writeln!(
            o,
            "  ticket:        {}{}",
            s.ticket,
            s.ticket_sha256
                .as_deref()
                .map(|d| format!(" (content sha256:{d})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  trigger:       {} via {}{}",
            r.trigger.by,
            r.trigger.event,
            r.trigger
                .approved_by
                .as_deref()
                .map(|a| format!(", approved by {a}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  worker:        {} (drafter {})",
            r.worker.id, r.worker.version
        );
        if let Some(img) = &r.sandbox_image {
            let _ = writeln!(
                o,
                "  sandbox:       {img} ({})",
                r.sandbox_image_digest
                    .as_deref()
                    .unwrap_or("digest unknown")
            );
        }
        if let Some(net) = &r.network {
            let denied = net.connections.iter().filter(|c| !c.allowed).count();
            let _ = writeln!(
                o,
                "  network:       {} ({} requests, {denied} denied{})",
                net.mode,
                net.connections.len() as u64 + net.dropped,
                if net.dropped > 0 {
                    format!(", {} not listed", net.dropped)
                } else {
                    String::new()
                }
            );
            for c in &net.connections {
                let _ = writeln!(
                    o,
                    "    {} {} {}:{} ({} B out, {} B in) {}",
                    if c.allowed { "allowed" } else { "denied " },
                    c.method,
                    c.host,
                    c.port,
                    c.bytes_out,
                    c.bytes_in,
                    c.rule
                );
            }
        }
        if let Some(repo_name) = &r.repo {
            let _ = writeln!(
                o,
                "  repository:    {repo_name} (base {}, branch {})",
                r.base.as_deref().unwrap_or("?"),
                r.branch.as_deref().unwrap_or("none")
            );
        }
        if let Some(c) = &r.change {
            let _ = writeln!(
                o,
                "  change:        commit {} against {}, {} file(s), diff sha256:{}",
                c.commit, c.base_commit, c.files, c.diff_sha256
            );
        }
        if let Some((_, line)) = &repo {
            let _ = writeln!(o, "  repository ok: {line}");
        }
        let _ = writeln!(
            o,
            "  retention:     {}{}",
            r.retention.bodies.as_str(),
            r.retention
                .max_age_days
                .map(|d| format!(", bodies kept {d} days"))
                .unwrap_or_default()
        );
        let outcome = &r.outcome;
        let detail = match outcome.result.as_str() {
            "pull_request" => outcome.pr_url.clone().unwrap_or_default(),
            _ => {
                let rule = outcome
                    .rule
                    .as_deref()
                    .map(|x| format!("rule `{x}`: "))
                    .unwrap_or_default();
                format!("{rule}{}", outcome.reason.as_deref().unwrap_or(""))
            }
        };
        let _ = writeln!(
            o,
            "  outcome:       {} {} ({}, {} ms)",
            outcome.result, detail, r.finished_at, r.duration_ms
        );
    }
    let _ = writeln!(o, "  bundle digest: sha256:{}", s.digest);
    if let Some(m) = &s.digest_match {
        let later = s.count as usize - m.line;
        let _ = writeln!(
            o,
            "  digest:        sha256:{} matches {}",
            m.digest,
            if later == 0 {
                format!(
                    "the whole bundle (run statement of attempt {}, line {})",
                    m.attempt, m.line
                )
            } else {
                format!(
                    "the bundle through line {} (run statement of attempt {}); {later} later statement(s) follow, \
                     chained to it",
                    m.line, m.attempt
                )
            }
        );
    }
    o
}

/// serde's messages for a whole-line parse carry "line 1 column N", which would read as the bundle's line 1.
fn strip_prefix(m: &str) -> String {
    m.replace(" at line 1 column", " at column")
}
