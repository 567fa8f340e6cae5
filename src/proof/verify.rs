//! Checking a bundle offline: every signature, the chain, the job, the pinned keys and the policy.
//!
//! The verifier demands the one valid spelling of every line (canonical envelope, standard base64, canonical JSON
//! payload), so a changed byte anywhere is reported, and reports the first problem with its 1-based line number.
//! Checks run in an order that names the most useful cause: a line replayed from another job is reported as that,
//! not as a broken link; a dropped or swapped line as a sequence gap.
//!
//! Here: what a caller pins and gets back, the errors, and the entry points. `checks.rs` holds the checks (the
//! whole file, one line, a run's subjects, a repository), `render.rs` the summary `drafter verify` prints.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;

use super::bundle::{
    b64, canonical_json, Predicate, Run, Statement, Subject, Totals, BUNDLE_FILE, PAYLOAD_TYPE,
    STATEMENT_TYPE, ZERO_HASH,
};
use super::{key_id, parse_public_key, sha256_hex};

mod checks;
mod render;

use checks::check;
pub use checks::check_repo;
pub use render::render;

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
