//! The runner key, the signed receipt chain, and its verification.
//!
//! Every HTTP exchange with the model becomes one *receipt*: a JSON line recording what was sent and received (as
//! SHA-256 digests of the exact body bytes), the token counts and timing, chained to the previous line by hash and
//! signed with the runner's Ed25519 key. The point is that a reviewer of a draft pull request can check, offline and
//! without trusting the runner's database, that the work was produced by this runner through these calls, and that
//! nobody edited, dropped, reordered or inserted a call record afterwards.
//!
//! # Format
//! `receipts.jsonl` in the job directory holds one receipt per line, each terminated by `\n`. A line is the compact
//! `serde_json` encoding of [`Receipt`], fields in declaration order. The signature covers the same encoding without
//! the `signature` field, and `prev_hash` is the SHA-256 of the previous line's bytes (without its `\n`), so the
//! last line's hash ([`ReceiptLog::head`]) commits to the whole file. The verifier re-encodes every parsed line and
//! demands byte equality, so the file has exactly one valid spelling: any single changed byte is detected.
//!
//! # Key
//! `<data_dir>/runner.key` holds the 32-byte Ed25519 seed as 64 lowercase hex characters and a newline, mode 0600;
//! `<data_dir>/runner.pub` holds the public key the same way, world-readable, for pinning in [`verify`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The receipt format version written in every line's `v`.
pub const RECEIPT_VERSION: u32 = 2;

/// The `prev_hash` of the first receipt, and the [`ReceiptLog::head`] of an empty log.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The receipt file's name inside a job directory.
pub const RECEIPTS_FILE: &str = "receipts.jsonl";

/// The private key file's name inside the data directory.
pub const KEY_FILE: &str = "runner.key";

/// The public key file's name inside the data directory.
pub const PUB_FILE: &str = "runner.pub";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why the key or the receipt log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file can be read by group or others: the key must be treated as leaked until proven otherwise.
    #[error(
        "{path}: mode {mode:04o} lets group/other access the runner's private key; refusing to use it. \
         If the key has not been exposed, run `chmod 600 {path}`; otherwise delete it (and runner.pub) so a new \
         key is created, and re-pin the new public key"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a 32-byte hex seed.
    #[error("{path}: {message}")]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the content).
        message: String,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a new runner key: {0}")]
    Random(String),
    /// The receipt log already exists where a new one was to be created.
    #[error("{path}: a receipt log already exists; use ReceiptLog::resume to continue it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// An existing log to be resumed does not verify.
    #[error("cannot resume receipt log: {0}")]
    Resume(#[from] Box<VerifyError>),
    /// An existing log belongs to another job or ticket.
    #[error("{path}: receipt log belongs to job {found_job} / ticket {found_ticket}, not {job} / {ticket}")]
    WrongJob {
        /// The file.
        path: PathBuf,
        /// The job id the log holds.
        found_job: String,
        /// The ticket the log holds.
        found_ticket: String,
        /// The job id asked for.
        job: String,
        /// The ticket asked for.
        ticket: String,
    },
    /// An earlier append failed part-way, so the log may end in a torn line and cannot be extended.
    #[error("{path}: an earlier receipt write failed; the log cannot be extended")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// Encoding a receipt failed (not expected with these field types).
    #[error("cannot encode receipt: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProofError + '_ {
    move |source| ProofError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The runner's Ed25519 signing key. `Debug` shows only the public key.
pub struct RunnerKey {
    signing: SigningKey,
}

impl fmt::Debug for RunnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl RunnerKey {
    /// Loads `<data_dir>/runner.key`, or creates it (mode 0600, from the OS random source) if it does not exist.
    /// Also (re)writes `<data_dir>/runner.pub` if it is missing or does not match. Refuses a key file that group or
    /// others can access.
    pub fn load_or_create(data_dir: &Path) -> Result<RunnerKey, ProofError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let key_path = data_dir.join(KEY_FILE);
        let key = match Self::load(&key_path) {
            Ok(k) => k,
            Err(ProofError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Self::create(data_dir, &key_path)?
            }
            Err(e) => return Err(e),
        };
        key.write_pub(data_dir)?;
        Ok(key)
    }

    /// Loads a key file written by [`RunnerKey::create_file`] (64 hex characters, mode 0600). Policy keys use this
    /// too: they are the same kind of key, kept elsewhere.
    pub fn load_file(path: &Path) -> Result<RunnerKey, ProofError> {
        Self::load(path)
    }

    /// Creates a new key file at `path` (mode 0600; refuses to overwrite one) and `<path>.pub` beside it.
    pub fn create_file(path: &Path) -> Result<RunnerKey, ProofError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.exists() {
            return Err(ProofError::KeyFormat {
                path: path.to_path_buf(),
                message: "already exists; refusing to overwrite a key".into(),
            });
        }
        let key = Self::create(&dir, path)?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        std::fs::write(&pub_path, format!("{}\n", key.public_hex()))
            .map_err(io_err(Path::new(&pub_path)))?;
        Ok(key)
    }

    /// A short, stable name for the public key: the first 16 hex characters of its SHA-256.
    pub fn key_id(&self) -> String {
        key_id(&self.verifying_key())
    }

    /// A key from a seed, for tests and tools; the product uses [`RunnerKey::load_or_create`].
    pub fn from_seed(seed: [u8; 32]) -> RunnerKey {
        RunnerKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    fn load(path: &Path) -> Result<RunnerKey, ProofError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(ProofError::KeyFormat {
                path: path.to_path_buf(),
                message: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ProofError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        // A seed file is 65 bytes; reading a little more lets us say "too long" without reading a huge file.
        (&mut file)
            .take(256)
            .read_to_string(&mut text)
            .map_err(|_| ProofError::KeyFormat {
                path: path.to_path_buf(),
                message: "not a text file of 64 hex characters".into(),
            })?;
        let bad = |message: &str| ProofError::KeyFormat {
            path: path.to_path_buf(),
            message: message.into(),
        };
        let trimmed = text.trim();
        if trimmed.len() != 64 {
            return Err(bad("expected 64 hex characters (a 32-byte Ed25519 seed)"));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(trimmed, &mut seed).map_err(|_| bad("not valid hex"))?;
        let key = RunnerKey::from_seed(seed);
        seed.fill(0);
        Ok(key)
    }

    fn create(data_dir: &Path, key_path: &Path) -> Result<RunnerKey, ProofError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ProofError::Random(e.to_string()))?;
        let key = RunnerKey::from_seed(seed);
        let mut text = hex::encode(seed);
        seed.fill(0);
        text.push('\n');

        // Write a private temporary file completely, then hard-link it into place: the key file is never visible
        // half-written or with a wider mode, and if two runners race, exactly one link wins and the loser loads it.
        let tmp = data_dir.join(format!(".{KEY_FILE}.{}.tmp", unique_suffix()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        // Best effort: overwrite the hex copy of the seed before it is freed.
        let zeros = "0".repeat(text.len());
        text.replace_range(.., &zeros);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        let linked = std::fs::hard_link(&tmp, key_path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(dir) = File::open(data_dir) {
                    let _ = dir.sync_all();
                }
                tracing::info!(public = %key.public_hex(), path = %key_path.display(), "created runner key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(key_path),
            Err(e) => Err(io_err(key_path)(e)),
        }
    }

    fn write_pub(&self, data_dir: &Path) -> Result<(), ProofError> {
        let pub_path = data_dir.join(PUB_FILE);
        let want = format!("{}\n", self.public_hex());
        if std::fs::read_to_string(&pub_path).ok().as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        let tmp = data_dir.join(format!(".{PUB_FILE}.{}.tmp", unique_suffix()));
        (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(want.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &pub_path)
        })()
        .map_err(io_err(&pub_path))
    }

    /// The public key as 64 lowercase hex characters.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }
}

/// `<pid>-<n>-<random>`: a temporary file name no other process or thread is using (concurrent jobs in one worker
/// create the key at the same moment too).
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rnd = [0u8; 4];
    // The pid and the counter already keep callers apart; the random part only guards against pid reuse.
    let _ = getrandom::fill(&mut rnd);
    format!("{}-{n}-{}", std::process::id(), hex::encode(rnd))
}

/// A short, stable name for a public key: the first 16 hex characters of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())[..16].to_string()
}

/// Parses a 64-character hex public key (as in `runner.pub`).
pub fn parse_public_key(hex_str: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_str.trim(), &mut bytes)
        .map_err(|_| "a public key is 64 hex characters".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// One signed receipt: one line of `receipts.jsonl`. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version, [`RECEIPT_VERSION`].
    pub v: u32,
    /// 0-based position in the log.
    pub seq: u64,
    /// The job this call belongs to.
    pub job_id: String,
    /// The Jira ticket key.
    pub ticket: String,
    /// The hash of the policy the job ran under (`sha256:<hex>`; see [`crate::policy::identity`]).
    pub policy_hash: String,
    /// `anthropic` or `openai`.
    pub provider: String,
    /// Model name as sent.
    pub model: String,
    /// URL path of the call (no host, no query, no credentials).
    pub endpoint: String,
    /// HTTP status, or 0 when no response arrived.
    pub http_status: u16,
    /// SHA-256 of the exact request body bytes sent.
    pub request_sha256: String,
    /// SHA-256 of the exact response body bytes received (of nothing, when nothing arrived).
    pub response_sha256: String,
    /// Input tokens the provider reported (0 if it reported none).
    pub input_tokens: u64,
    /// Output tokens the provider reported (0 if it reported none).
    pub output_tokens: u64,
    /// Wall time of the exchange.
    pub latency_ms: u64,
    /// When the request was started, RFC 3339 UTC.
    pub started_at: String,
    /// SHA-256 of the previous line's bytes, or [`ZERO_HASH`].
    pub prev_hash: String,
    /// Hex Ed25519 public key of the signer.
    pub signer: String,
    /// Hex Ed25519 signature over [`Receipt::signed_bytes`].
    pub signature: String,
}

/// The signed part of a receipt: the same fields in the same order, minus `signature`. Must mirror [`Receipt`].
#[derive(Serialize)]
struct SignedPart<'a> {
    v: u32,
    seq: u64,
    job_id: &'a str,
    ticket: &'a str,
    policy_hash: &'a str,
    provider: &'a str,
    model: &'a str,
    endpoint: &'a str,
    http_status: u16,
    request_sha256: &'a str,
    response_sha256: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    latency_ms: u64,
    started_at: &'a str,
    prev_hash: &'a str,
    signer: &'a str,
}

impl Receipt {
    /// The bytes the signature covers: the canonical encoding without the `signature` field.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ProofError> {
        serde_json::to_vec(&SignedPart {
            v: self.v,
            seq: self.seq,
            job_id: &self.job_id,
            ticket: &self.ticket,
            policy_hash: &self.policy_hash,
            provider: &self.provider,
            model: &self.model,
            endpoint: &self.endpoint,
            http_status: self.http_status,
            request_sha256: &self.request_sha256,
            response_sha256: &self.response_sha256,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            latency_ms: self.latency_ms,
            started_at: &self.started_at,
            prev_hash: &self.prev_hash,
            signer: &self.signer,
        })
        .map_err(|e| ProofError::Encode(e.to_string()))
    }

    /// The canonical line, without the trailing newline.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, ProofError> {
        serde_json::to_vec(self).map_err(|e| ProofError::Encode(e.to_string()))
    }
}

/// The per-call fields of a receipt; the log fills in the rest.
#[derive(Debug, Clone)]
pub struct ReceiptInput {
    /// `anthropic` or `openai`.
    pub provider: String,
    /// Model name as sent.
    pub model: String,
    /// URL path of the call.
    pub endpoint: String,
    /// HTTP status, or 0 when no response arrived.
    pub http_status: u16,
    /// SHA-256 hex of the request body bytes sent.
    pub request_sha256: String,
    /// SHA-256 hex of the response body bytes received.
    pub response_sha256: String,
    /// Reported input tokens.
    pub input_tokens: u64,
    /// Reported output tokens.
    pub output_tokens: u64,
    /// Wall time of the exchange.
    pub latency_ms: u64,
    /// When the request started.
    pub started_at: DateTime<Utc>,
}

/// An append-only, signed, hash-chained receipt file for one job.
#[derive(Debug)]
pub struct ReceiptLog {
    path: PathBuf,
    file: File,
    key: Arc<RunnerKey>,
    signer: String,
    job_id: String,
    ticket: String,
    policy_hash: String,
    count: u64,
    head: String,
    /// Set when a write failed part-way: the file may end in a torn line, so nothing more may be chained to it.
    poisoned: bool,
}

impl ReceiptLog {
    /// Creates a new, empty log at `path` (a file path, normally `<job dir>/receipts.jsonl`). Fails if the file
    /// already exists, so a log is never silently overwritten or forked.
    pub fn create(
        path: &Path,
        key: Arc<RunnerKey>,
        job_id: &str,
        ticket: &str,
    ) -> Result<ReceiptLog, ProofError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ProofError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    io_err(path)(e)
                }
            })?;
        Ok(ReceiptLog {
            path: path.to_path_buf(),
            file,
            signer: key.public_hex(),
            key,
            job_id: job_id.to_string(),
            ticket: ticket.to_string(),
            policy_hash: String::new(),
            count: 0,
            head: ZERO_HASH.to_string(),
            poisoned: false,
        })
    }

    /// Continues an existing log (a retried job): verifies it with `key` pinned and for this job and ticket, then
    /// appends after its last line. An empty file is accepted as an empty log.
    pub fn resume(
        path: &Path,
        key: Arc<RunnerKey>,
        job_id: &str,
        ticket: &str,
    ) -> Result<ReceiptLog, ProofError> {
        let len = std::fs::metadata(path).map_err(io_err(path))?.len();
        let (count, head) = if len == 0 {
            (0, ZERO_HASH.to_string())
        } else {
            let report = verify(path, Some(&key.verifying_key())).map_err(Box::new)?;
            if report.job_id != job_id || report.ticket != ticket {
                return Err(ProofError::WrongJob {
                    path: path.to_path_buf(),
                    found_job: report.job_id,
                    found_ticket: report.ticket,
                    job: job_id.to_string(),
                    ticket: ticket.to_string(),
                });
            }
            (report.count, report.head)
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(ReceiptLog {
            path: path.to_path_buf(),
            file,
            signer: key.public_hex(),
            key,
            job_id: job_id.to_string(),
            ticket: ticket.to_string(),
            policy_hash: String::new(),
            count,
            head,
            poisoned: false,
        })
    }

    /// Records `hash` as the policy in every receipt appended from now on.
    pub fn with_policy(mut self, hash: &str) -> ReceiptLog {
        self.policy_hash = hash.to_string();
        self
    }

    /// Signs and appends one receipt; the line is written, flushed and fsynced before this returns.
    pub fn append(&mut self, input: ReceiptInput) -> Result<Receipt, ProofError> {
        if self.poisoned {
            return Err(ProofError::Poisoned {
                path: self.path.clone(),
            });
        }
        let mut receipt = Receipt {
            v: RECEIPT_VERSION,
            seq: self.count,
            job_id: self.job_id.clone(),
            ticket: self.ticket.clone(),
            policy_hash: self.policy_hash.clone(),
            provider: input.provider,
            model: input.model,
            endpoint: input.endpoint,
            http_status: input.http_status,
            request_sha256: input.request_sha256,
            response_sha256: input.response_sha256,
            input_tokens: input.input_tokens,
            output_tokens: input.output_tokens,
            latency_ms: input.latency_ms,
            started_at: input
                .started_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            prev_hash: self.head.clone(),
            signer: self.signer.clone(),
            signature: String::new(),
        };
        let signed = receipt.signed_bytes()?;
        receipt.signature = hex::encode(self.key.sign(&signed).to_bytes());
        let mut line = receipt.canonical_bytes()?;
        let hash = sha256_hex(&line);
        line.push(b'\n');
        // One write call for the whole line keeps concurrent readers from seeing a torn line in practice; the
        // verifier reports a torn final line anyway.
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io_err(&self.path)(e));
        }
        self.count += 1;
        self.head = hash;
        Ok(receipt)
    }

    /// Hex SHA-256 of the last line (the "receipts digest" that commits to the whole log); [`ZERO_HASH`] when empty.
    pub fn head(&self) -> String {
        self.head.clone()
    }

    /// Number of receipts in the log.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signer's hex public key.
    pub fn signer(&self) -> &str {
        &self.signer
    }
}

/// What a successful [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file verified.
    pub path: PathBuf,
    /// Number of receipts.
    pub count: u64,
    /// Hex public key that signed every line.
    pub signer: String,
    /// Hex SHA-256 of the last line: the receipts digest.
    pub head: String,
    /// The job id every line carries.
    pub job_id: String,
    /// The ticket every line carries.
    pub ticket: String,
    /// Sum of `input_tokens`.
    pub input_tokens: u64,
    /// Sum of `output_tokens`.
    pub output_tokens: u64,
}

impl VerifyReport {
    /// Input plus output tokens over all receipts.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Which check a line failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// The line is not UTF-8.
    NotUtf8,
    /// The last line has no terminating newline: the file was truncated or a write was torn.
    Truncated,
    /// The line is not a JSON object with exactly the receipt fields of the right types.
    NotJson(String),
    /// The line parses but is not byte-identical to its canonical encoding.
    NotCanonical {
        /// 1-based byte column of the first difference.
        column: usize,
    },
    /// Unknown format version.
    Version(u32),
    /// `seq` is out of order.
    Seq {
        /// Value in the line.
        found: u64,
        /// Value expected at this position.
        expected: u64,
    },
    /// `prev_hash` does not match the previous line (or zeros for the first line).
    PrevHash,
    /// A hex field is not lowercase hex of the right length.
    BadHex(&'static str),
    /// The signer differs from the first line's.
    SignerChanged,
    /// `job_id` or `ticket` differs from the first line's.
    JobChanged(&'static str),
    /// The Ed25519 signature does not verify.
    Signature,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NotUtf8 => f.write_str("not UTF-8"),
            LineProblem::Truncated => {
                f.write_str("no trailing newline (file truncated or a write was interrupted)")
            }
            LineProblem::NotJson(m) => write!(f, "not a valid receipt: {m}"),
            LineProblem::NotCanonical { column } => write!(
                f,
                "not canonical JSON (bytes differ from the canonical encoding at column {column})"
            ),
            LineProblem::Version(v) => write!(f, "unsupported receipt version {v}"),
            LineProblem::Seq { found, expected } => {
                write!(f, "seq is {found}, expected {expected}")
            }
            LineProblem::PrevHash => f.write_str("prev_hash does not match"),
            LineProblem::BadHex(field) => {
                write!(f, "{field} is not lowercase hex of the right length")
            }
            LineProblem::SignerChanged => f.write_str("signer differs from line 1"),
            LineProblem::JobChanged(field) => write!(f, "{field} differs from line 1"),
            LineProblem::Signature => f.write_str("signature does not verify"),
        }
    }
}

/// Why a receipt file does not verify. Names the file and, for a bad line, its 1-based number and the check.
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
    /// The file holds no receipts.
    #[error("{path}: file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// One line failed a check.
    #[error("{path}: line {line}: {}", describe(*line, problem))]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The failed check.
        problem: LineProblem,
    },
    /// The file is signed by a key other than the pinned one.
    #[error("{path}: signer {signer} is not the pinned key {pinned}")]
    NotPinned {
        /// The file.
        path: PathBuf,
        /// The key that signed the file.
        signer: String,
        /// The key the caller expected.
        pinned: String,
    },
}

fn describe(line: usize, problem: &LineProblem) -> String {
    match problem {
        LineProblem::PrevHash if line == 1 => "prev_hash of the first line is not all zeros".into(),
        LineProblem::PrevHash => format!(
            "prev_hash does not match the hash of line {}",
            line.saturating_sub(1)
        ),
        other => other.to_string(),
    }
}

/// Whether `r`'s signature verifies under `key` (its hex fields were already checked).
fn signature_ok(r: &Receipt, key: &VerifyingKey) -> bool {
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(&r.signature, &mut sig).is_err() {
        return false;
    }
    let Ok(signed) = r.signed_bytes() else {
        return false;
    };
    // verify_strict also rejects malleable (non-canonical) signatures and weak keys.
    key.verify_strict(&signed, &Signature::from_bytes(&sig))
        .is_ok()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Verifies a receipt file: `path` is the file or a job directory holding `receipts.jsonl`. Checks, for every
/// line: exact receipt fields and types, canonical bytes, version, contiguous `seq` from 0, the `prev_hash` chain,
/// one signer (and job and ticket) for the whole file, a valid signature, and, if `pinned` is given, that the signer
/// is that key. Stops at the first failure.
pub fn verify(path: &Path, pinned: Option<&VerifyingKey>) -> Result<VerifyReport, VerifyError> {
    let path = if path.is_dir() {
        path.join(RECEIPTS_FILE)
    } else {
        path.to_path_buf()
    };
    let data = std::fs::read(&path).map_err(|source| VerifyError::Io {
        path: path.clone(),
        source,
    })?;
    verify_bytes(&path, &data, pinned)
}

/// [`verify`] on bytes already in memory; `path` is only used in messages.
pub fn verify_bytes(
    path: &Path,
    data: &[u8],
    pinned: Option<&VerifyingKey>,
) -> Result<VerifyReport, VerifyError> {
    if data.is_empty() {
        return Err(VerifyError::Empty {
            path: path.to_path_buf(),
        });
    }
    let fail = |line: usize, problem: LineProblem| VerifyError::Line {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    // A well-formed file ends with '\n', so the split leaves one empty piece at the end.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    } else {
        return Err(fail(lines.len(), LineProblem::Truncated));
    }

    // Pass 1: structure and chain, which are cheap. Pass 2: signatures. Both report the first failing line; doing
    // the cheap checks first keeps verification of a damaged file fast.
    let mut receipts: Vec<Receipt> = Vec::with_capacity(lines.len());
    let mut key: Option<VerifyingKey> = None;
    let mut prev_hash = ZERO_HASH.to_string();
    let mut input_tokens = 0u64;
    let mut output_tokens = 0u64;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let text = std::str::from_utf8(raw).map_err(|_| fail(n, LineProblem::NotUtf8))?;
        let r: Receipt =
            serde_json::from_str(text).map_err(|e| fail(n, LineProblem::NotJson(e.to_string())))?;
        let canonical = r
            .canonical_bytes()
            .map_err(|e| fail(n, LineProblem::NotJson(e.to_string())))?;
        if canonical != *raw {
            let column = canonical
                .iter()
                .zip(raw.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(canonical.len().min(raw.len()))
                + 1;
            return Err(fail(n, LineProblem::NotCanonical { column }));
        }
        if r.v != RECEIPT_VERSION {
            return Err(fail(n, LineProblem::Version(r.v)));
        }
        if r.seq != i as u64 {
            return Err(fail(
                n,
                LineProblem::Seq {
                    found: r.seq,
                    expected: i as u64,
                },
            ));
        }
        for (field, value) in [
            ("request_sha256", &r.request_sha256),
            ("response_sha256", &r.response_sha256),
            ("prev_hash", &r.prev_hash),
            ("signer", &r.signer),
        ] {
            if !is_lower_hex(value, 64) {
                return Err(fail(n, LineProblem::BadHex(field)));
            }
        }
        if !is_lower_hex(&r.signature, 128) {
            return Err(fail(n, LineProblem::BadHex("signature")));
        }
        if r.prev_hash != prev_hash {
            // Blame the edited line rather than its successor when the previous line's own signature is broken.
            if let (Some(prev), Some(k)) = (receipts.last(), key.as_ref()) {
                if !signature_ok(prev, k) {
                    return Err(fail(n - 1, LineProblem::Signature));
                }
            }
            return Err(fail(n, LineProblem::PrevHash));
        }
        match receipts.first() {
            None => {
                key = Some(
                    parse_public_key(&r.signer)
                        .map_err(|_| fail(n, LineProblem::BadHex("signer")))?,
                );
            }
            Some(f) => {
                if r.signer != f.signer {
                    return Err(fail(n, LineProblem::SignerChanged));
                }
                if r.job_id != f.job_id {
                    return Err(fail(n, LineProblem::JobChanged("job_id")));
                }
                if r.ticket != f.ticket {
                    return Err(fail(n, LineProblem::JobChanged("ticket")));
                }
            }
        }
        prev_hash = sha256_hex(raw);
        input_tokens = input_tokens.saturating_add(r.input_tokens);
        output_tokens = output_tokens.saturating_add(r.output_tokens);
        receipts.push(r);
    }
    let (Some(first), Some(key)) = (receipts.first(), key) else {
        return Err(VerifyError::Empty {
            path: path.to_path_buf(),
        });
    };
    if let Some(p) = pinned {
        if p != &key {
            return Err(VerifyError::NotPinned {
                path: path.to_path_buf(),
                signer: first.signer.clone(),
                pinned: hex::encode(p.as_bytes()),
            });
        }
    }
    for (i, r) in receipts.iter().enumerate() {
        if !signature_ok(r, &key) {
            return Err(fail(i + 1, LineProblem::Signature));
        }
    }
    let first = first.clone();
    Ok(VerifyReport {
        path: path.to_path_buf(),
        count: lines.len() as u64,
        signer: first.signer,
        head: prev_hash,
        job_id: first.job_id,
        ticket: first.ticket,
        input_tokens,
        output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent jobs of one worker create the key at the same moment: all of them get the same key.
    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| RunnerKey::load_or_create(dir.path()).unwrap().public_hex()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    fn input(i: u64) -> ReceiptInput {
        ReceiptInput {
            provider: "anthropic".into(),
            model: "claude-test".into(),
            endpoint: "/v1/messages".into(),
            http_status: 200,
            request_sha256: sha256_hex(format!("req{i}").as_bytes()),
            response_sha256: sha256_hex(format!("resp{i}").as_bytes()),
            input_tokens: 100 + i,
            output_tokens: 20 + i,
            latency_ms: 5,
            started_at: Utc::now(),
        }
    }

    fn key() -> Arc<RunnerKey> {
        Arc::new(RunnerKey::from_seed([7u8; 32]))
    }

    /// A log of `n` receipts; returns the dir guard, file path and bytes.
    fn log(n: u64) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECEIPTS_FILE);
        let mut l = ReceiptLog::create(&path, key(), "job-1", "DEMO-1").unwrap();
        for i in 0..n {
            l.append(input(i)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.to_vec())
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECEIPTS_FILE);
        let k = key();
        let mut l = ReceiptLog::create(&path, k.clone(), "job-1", "DEMO-1").unwrap();
        assert_eq!(l.head(), ZERO_HASH);
        assert_eq!(l.count(), 0);
        let r0 = l.append(input(0)).unwrap();
        let r1 = l.append(input(1)).unwrap();
        assert_eq!(r0.prev_hash, ZERO_HASH);
        assert_eq!(r1.seq, 1);
        let bytes = std::fs::read(&path).unwrap();
        let lines = lines_of(&bytes);
        assert_eq!(r1.prev_hash, sha256_hex(&lines[0]));
        assert_eq!(l.head(), sha256_hex(&lines[1]));
        // The stored line is exactly the struct's compact encoding, fields in the documented order.
        assert_eq!(lines[0], serde_json::to_vec(&r0).unwrap());
        let text = String::from_utf8(lines[0].clone()).unwrap();
        assert!(text.starts_with(
            r#"{"v":2,"seq":0,"job_id":"job-1","ticket":"DEMO-1","policy_hash":"","provider":"anthropic""#
        ));
        assert!(text.contains(r#","prev_hash":"0000"#));
        // The signature covers the line without the signature field.
        let unsigned_end = text.find(r#","signature":""#).unwrap();
        assert_eq!(
            r0.signed_bytes().unwrap(),
            format!("{}}}", &text[..unsigned_end]).into_bytes()
        );

        // Directory and file paths both work; pinned key accepted.
        let rep = verify(dir.path(), Some(&k.verifying_key())).unwrap();
        assert_eq!(rep.count, 2);
        assert_eq!(rep.head, l.head());
        assert_eq!(rep.signer, k.public_hex());
        assert_eq!(rep.job_id, "job-1");
        assert_eq!(rep.ticket, "DEMO-1");
        assert_eq!(rep.input_tokens, 201);
        assert_eq!(rep.output_tokens, 41);
        assert_eq!(rep.total_tokens(), 242);
        assert_eq!(verify(&path, None).unwrap(), rep);

        // create refuses an existing file; resume continues the chain.
        assert!(matches!(
            ReceiptLog::create(&path, k.clone(), "job-1", "DEMO-1"),
            Err(ProofError::Exists { .. })
        ));
        drop(l);
        let mut l = ReceiptLog::resume(&path, k.clone(), "job-1", "DEMO-1").unwrap();
        assert_eq!(l.count(), 2);
        assert_eq!(l.head(), rep.head);
        l.append(input(2)).unwrap();
        assert_eq!(verify(&path, None).unwrap().count, 3);
        assert!(matches!(
            ReceiptLog::resume(&path, k, "job-2", "DEMO-1"),
            Err(ProofError::WrongJob { .. })
        ));
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let (_dir, path, bytes) = log(3);
        verify_bytes(&path, &bytes, None).unwrap();
        for offset in 0..bytes.len() {
            // 0x01 changes a hex digit or letter to another ASCII character, 0x20 flips letter case (catching
            // case-insensitive hex parsing), 0x80 makes the byte invalid UTF-8.
            for mask in [0x01u8, 0x20, 0x80] {
                let mut bad = bytes.clone();
                bad[offset] ^= mask;
                assert!(
                    verify_bytes(&path, &bad, None).is_err(),
                    "accepted a change at byte {offset} (mask {mask:#04x})"
                );
            }
        }
    }

    #[test]
    fn removed_reordered_duplicated_lines_are_rejected() {
        let (_dir, path, bytes) = log(3);
        let lines = lines_of(&bytes);
        let check = |ls: Vec<Vec<u8>>, want: &str| {
            let err = verify_bytes(&path, &join(&ls), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} does not contain {want}");
        };
        check(
            vec![lines[1].clone(), lines[2].clone()],
            "line 1: seq is 1, expected 0",
        );
        check(
            vec![lines[0].clone(), lines[2].clone()],
            "line 2: seq is 2, expected 1",
        );
        check(
            vec![lines[0].clone(), lines[2].clone(), lines[1].clone()],
            "line 2: seq is 2, expected 1",
        );
        check(
            vec![lines[0].clone(), lines[1].clone(), lines[1].clone()],
            "line 3: seq is 1, expected 2",
        );
        check(
            vec![lines[0].clone(), lines[0].clone()],
            "line 2: seq is 0, expected 1",
        );
        // Dropping the tail still verifies as a shorter log, but its head differs: callers compare the head digest
        // recorded elsewhere (PR body, ticket comment).
        let short = verify_bytes(&path, &join(&lines[..2]), None).unwrap();
        assert_ne!(short.head, verify_bytes(&path, &bytes, None).unwrap().head);

        // Truncated final line, empty file.
        let err = verify_bytes(&path, &bytes[..bytes.len() - 1], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3: no trailing newline"), "{err}");
        let err = verify_bytes(&path, &bytes[..bytes.len() - 10], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3: no trailing newline"), "{err}");
        assert!(matches!(
            verify_bytes(&path, b"", None),
            Err(VerifyError::Empty { .. })
        ));
        let err = verify_bytes(&path, b"\n", None).unwrap_err().to_string();
        assert!(err.contains("line 1: not a valid receipt"), "{err}");
    }

    #[test]
    fn precise_messages() {
        let (_dir, path, bytes) = log(3);
        let lines = lines_of(&bytes);
        let p = path.display().to_string();

        // Re-signed with another key, with a correct chain: each line verifies, but the signer changes at line 2.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join(RECEIPTS_FILE);
        let mut other = ReceiptLog::create(
            &path2,
            Arc::new(RunnerKey::from_seed([9u8; 32])),
            "job-1",
            "DEMO-1",
        )
        .unwrap();
        other.head = sha256_hex(&lines[0]);
        other.count = 1;
        other.append(input(1)).unwrap();
        let mixed = join(&[
            lines[0].clone(),
            lines_of(&std::fs::read(&path2).unwrap())[0].clone(),
        ]);
        let err = verify_bytes(&path, &mixed, None).unwrap_err().to_string();
        assert_eq!(err, format!("{p}: line 2: signer differs from line 1"));

        // A changed token count without re-signing.
        let mut r: Receipt = serde_json::from_slice(&lines[2]).unwrap();
        r.output_tokens = 1;
        let forged = join(&[
            lines[0].clone(),
            lines[1].clone(),
            r.canonical_bytes().unwrap(),
        ]);
        let err = verify_bytes(&path, &forged, None).unwrap_err().to_string();
        assert_eq!(err, format!("{p}: line 3: signature does not verify"));

        // The same edit in line 1 is blamed on line 1, not on line 2's broken link.
        let mut r: Receipt = serde_json::from_slice(&lines[0]).unwrap();
        r.output_tokens = 1;
        let forged = join(&[
            r.canonical_bytes().unwrap(),
            lines[1].clone(),
            lines[2].clone(),
        ]);
        let err = verify_bytes(&path, &forged, None).unwrap_err().to_string();
        assert_eq!(err, format!("{p}: line 1: signature does not verify"));

        // A changed line 1, re-signed by the same key, breaks line 2's link.
        let mut r: Receipt = serde_json::from_slice(&lines[0]).unwrap();
        r.input_tokens = 1;
        r.signature = hex::encode(key().sign(&r.signed_bytes().unwrap()).to_bytes());
        let relinked = join(&[r.canonical_bytes().unwrap(), lines[1].clone()]);
        let err = verify_bytes(&path, &relinked, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("{p}: line 2: prev_hash does not match the hash of line 1")
        );

        // Whitespace is not canonical.
        let mut spaced = lines[0].clone();
        spaced.insert(5, b' ');
        let err = verify_bytes(&path, &join(&[spaced]), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("{p}: line 1: not canonical JSON (bytes differ from the canonical encoding at column 6)")
        );

        // Extra or missing fields.
        let text = String::from_utf8(lines[0].clone()).unwrap();
        let extra = text.replacen("{", r#"{"x":1,"#, 1);
        let err = verify_bytes(&path, &join(&[extra.into_bytes()]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1: not a valid receipt: unknown field `x`"),
            "{err}"
        );
        let missing = text.replacen(r#""v":2,"#, "", 1);
        let err = verify_bytes(&path, &join(&[missing.into_bytes()]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `v`"), "{err}");
    }

    #[test]
    fn failed_write_poisons_the_log() {
        // /dev/full fails every write with ENOSPC.
        let Ok(file) = OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let k = key();
        let mut l = ReceiptLog {
            path: PathBuf::from("/dev/full"),
            file,
            signer: k.public_hex(),
            key: k,
            job_id: "j".into(),
            ticket: "T-1".into(),
            policy_hash: String::new(),
            count: 0,
            head: ZERO_HASH.into(),
            poisoned: false,
        };
        assert!(matches!(l.append(input(0)), Err(ProofError::Io { .. })));
        assert_eq!(l.count(), 0);
        assert_eq!(l.head(), ZERO_HASH);
        assert!(matches!(
            l.append(input(0)),
            Err(ProofError::Poisoned { .. })
        ));
    }

    #[test]
    fn pinned_key_mismatch() {
        let (_dir, path, _) = log(2);
        let other = RunnerKey::from_seed([1u8; 32]);
        let err = verify(&path, Some(&other.verifying_key())).unwrap_err();
        assert!(matches!(err, VerifyError::NotPinned { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "{}: signer {} is not the pinned key {}",
                path.display(),
                key().public_hex(),
                other.public_hex()
            )
        );
        verify(&path, Some(&key().verifying_key())).unwrap();
    }

    #[test]
    fn key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = RunnerKey::load_or_create(dir.path()).unwrap();
        let key_path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&key_path).unwrap();
        assert_eq!(text.len(), 65);
        let pub_text = std::fs::read_to_string(dir.path().join(PUB_FILE)).unwrap();
        assert_eq!(pub_text, format!("{}\n", k1.public_hex()));
        assert_eq!(parse_public_key(&pub_text).unwrap(), k1.verifying_key());
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let k2 = RunnerKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k1.public_hex(), k2.public_hex());

        // Debug never shows the seed.
        let dbg = format!("{k1:?}");
        assert!(!dbg.contains(text.trim()), "{dbg}");
        assert!(dbg.contains(&k1.public_hex()));

        // A key readable by others is refused with a clear message.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = RunnerKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(
            err,
            ProofError::KeyPermissions { mode: 0o640, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");

        // A malformed key is refused without echoing its content.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key_path, "zz-not-hex-secretish\n").unwrap();
        let err = RunnerKey::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretish"), "{err}");
        assert!(err.contains("64 hex"), "{err}");
    }
}
