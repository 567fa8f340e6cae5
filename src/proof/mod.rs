//! The proof record of a job: the runner key, the signed bundle of in-toto statements, and its verification.
//!
//! Every job leaves one *proof bundle* (`<data_dir>/jobs/<id>/bundle.jsonl`): JSON lines, each a DSSE v1 envelope
//! (`payloadType: application/vnd.in-toto+json`) around an in-toto Statement v1, signed with the runner's Ed25519
//! key over DSSE's pre-authentication encoding. One statement per model call, one per tool call, in the order they
//! happened, and one *run statement* at the end of every attempt that names what came out (the pushed commit and
//! the digest of its diff, the PR, or the rule that refused the job). Each statement carries the SHA-256 of the
//! previous line, so the last line commits to the whole file: an auditor can check offline, without trusting the
//! runner's database, which policy governed a pull request, who triggered it, and what the model was sent and said
//! before each tool call. The format is specified in [`bundle`]; [`verify`] checks it.
//!
//! Statements hold digests and metadata only, never content. Request and response bodies, tool arguments and
//! outputs go to `bodies/` beside the bundle when the policy's retention is `full`, and nowhere when it is
//! `digests` ([`retention`]); purging bodies later never breaks a signature.
//!
//! # Key
//! `<data_dir>/runner.key` holds the 32-byte Ed25519 seed as 64 lowercase hex characters and a newline, mode 0600;
//! `<data_dir>/runner.pub` holds the public key the same way, world-readable, for pinning in [`verify`]. A rotated
//! key's public half stays in `<data_dir>/keys/<key id>.pub`, so bundles it signed still verify.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub use crate::keys::{key_id, parse_public_key};

pub mod bundle;
pub mod format;
pub mod retention;
pub mod verify;

/// Every public key a data directory knows: `runner.pub` and the retired keys in `keys/`. Unreadable or malformed
/// files are skipped.
pub fn known_keys(data_dir: &Path) -> Vec<VerifyingKey> {
    let mut files = vec![data_dir.join(PUB_FILE)];
    if let Ok(list) = std::fs::read_dir(data_dir.join(KEYS_DIR)) {
        let mut retired: Vec<PathBuf> = list
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        retired.sort();
        files.extend(retired);
    }
    let mut keys: Vec<VerifyingKey> = Vec::new();
    for f in files {
        if let Some(k) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|t| parse_public_key(&t).ok())
        {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests_bundle;

pub use bundle::{
    BundleWriter, ModelCallInput, RunInput, ToolCallInput, BUNDLE_FILE, PAYLOAD_TYPE,
    STATEMENT_TYPE, ZERO_HASH,
};
pub use retention::{Bodies, Retention, BODIES_DIR};
pub use verify::{verify, verify_bytes, Pins, Summary, VerifyError};

/// The private key file's name inside the data directory.
pub const KEY_FILE: &str = "runner.key";

/// The public key file's name inside the data directory.
pub const PUB_FILE: &str = "runner.pub";

/// Where retired public keys are kept (`<key id>.pub`), inside the data directory.
pub const KEYS_DIR: &str = "keys";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why the key or the bundle could not be used.
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
    /// An existing bundle to be continued does not verify.
    #[error("cannot continue the proof bundle: {0}")]
    Resume(#[from] Box<VerifyError>),
    /// An existing bundle belongs to another job or ticket.
    #[error("{path}: the bundle belongs to job {found_job} / ticket {found_ticket}, not {job} / {ticket}")]
    WrongJob {
        /// The file.
        path: PathBuf,
        /// The job id the bundle holds.
        found_job: String,
        /// The ticket the bundle holds.
        found_ticket: String,
        /// The job id asked for.
        job: String,
        /// The ticket asked for.
        ticket: String,
    },
    /// An earlier append failed part-way, so the bundle may end in a torn line and cannot be extended.
    #[error("{path}: an earlier write to the bundle failed; it cannot be extended")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// Encoding or signing a statement failed (not expected with these types).
    #[error("cannot encode a statement: {0}")]
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

    /// Retires the key in `data_dir` and makes a new one. The old public key is kept as
    /// `<data_dir>/keys/<key id>.pub`, so bundles it signed still verify (`drafter verify --key <data_dir>`); the
    /// old private key is deleted, so nothing new can be signed with it. Returns the old key id and the new key.
    pub fn rotate(data_dir: &Path) -> Result<(String, RunnerKey), ProofError> {
        let old = Self::load_or_create(data_dir)?;
        let keys = data_dir.join(KEYS_DIR);
        std::fs::create_dir_all(&keys).map_err(io_err(&keys))?;
        let kept = keys.join(format!("{}.pub", old.key_id()));
        std::fs::write(&kept, format!("{}\n", old.public_hex())).map_err(io_err(&kept))?;
        let key_path = data_dir.join(KEY_FILE);
        std::fs::remove_file(&key_path).map_err(io_err(&key_path))?;
        let new = Self::load_or_create(data_dir)?;
        tracing::info!(old = %old.key_id(), new = %new.key_id(), "rotated the runner key");
        Ok((old.key_id(), new))
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
pub(crate) fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rnd = [0u8; 4];
    // The pid and the counter already keep callers apart; the random part only guards against pid reuse.
    let _ = getrandom::fill(&mut rnd);
    format!("{}-{n}-{}", std::process::id(), hex::encode(rnd))
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
