//! The identity of a policy: a canonical serialization, its SHA-256 (the policy hash), and an Ed25519 signature by a
//! policy key (not the runner's receipt key) in a detached `<file>.sig`.
//!
//! # Canonical form
//! The TOML document is parsed and written as JSON with no insignificant whitespace: object keys sorted by their
//! UTF-8 bytes, strings escaped as JSON does (`serde_json`), integers in decimal, floats as the shortest decimal
//! that reads back to the same value (`2.0` and `2` are both `2`), datetimes as their TOML text in a string.
//! Comments, whitespace, key order and quoting style therefore do not change the hash; any change of a value does.
//! NaN and infinities are refused. The policy hash is `sha256:` + the lowercase hex SHA-256 of those bytes.
//!
//! # Signature
//! `<file>.sig` is a JSON object `{"v":1,"policy_hash":..,"key_id":..,"public_key":..,"signature":..,
//! "signed_at":..}`; the Ed25519 signature (hex) is over the bytes `drafter-policy-v1\n` followed by the policy
//! hash string. Signing the hash of the canonical form, not the file's bytes, lets an admin reformat a signed file
//! without re-signing it, and lets an auditor check a hash recorded on a job against any copy of the policy.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::proof::{self, RunnerKey};

/// What the signature covers, before the hash: a fixed domain string, so a policy signature can never be mistaken
/// for any other signature made with the same key.
const SIG_DOMAIN: &[u8] = b"drafter-policy-v1\n";

/// Why a canonical form, signature or key could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A float that JSON cannot carry.
    #[error("`{0}`: NaN and infinite numbers are not allowed in a policy")]
    NotFinite(String),
    /// The signature file is missing, unreadable or malformed.
    #[error("signature file {path}: {message}")]
    SigFile {
        /// The `.sig` file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The signature was made for a different policy (the file changed after signing).
    #[error("the signature is for policy {signed}, but the file's hash is {actual}: the policy changed after it was signed")]
    HashMismatch {
        /// The hash in the signature file.
        signed: String,
        /// The file's hash now.
        actual: String,
    },
    /// The signature does not verify.
    #[error("the signature by key {key_id} does not verify: the signature file was tampered with or made by another key")]
    BadSignature {
        /// The key id named in the signature file.
        key_id: String,
    },
    /// The signing key is not one the runner trusts.
    #[error("the policy is signed by key {key_id}, which is not among the trusted policy keys ({trusted})")]
    Untrusted {
        /// The signer's key id.
        key_id: String,
        /// The trusted key ids.
        trusted: String,
    },
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] proof::ProofError),
    /// Writing the signature failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The canonical JSON bytes of a parsed TOML document (see the module docs).
pub fn canonical_bytes(doc: &toml::Table) -> Result<Vec<u8>, IdentityError> {
    let mut out = String::new();
    write_table(doc, &mut out, "")?;
    Ok(out.into_bytes())
}

/// `sha256:<hex>` of [`canonical_bytes`].
pub fn policy_hash(doc: &toml::Table) -> Result<String, IdentityError> {
    Ok(format!(
        "sha256:{}",
        proof::sha256_hex(&canonical_bytes(doc)?)
    ))
}

fn write_table(t: &toml::Table, out: &mut String, at: &str) -> Result<(), IdentityError> {
    let mut keys: Vec<&String> = t.keys().collect();
    keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(k));
        out.push(':');
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        if let Some(v) = t.get(k) {
            write_value(v, out, &path)?;
        }
    }
    out.push('}');
    Ok(())
}

fn write_value(v: &toml::Value, out: &mut String, at: &str) -> Result<(), IdentityError> {
    match v {
        toml::Value::String(s) => out.push_str(&json_string(s)),
        toml::Value::Integer(i) => out.push_str(&i.to_string()),
        toml::Value::Float(f) => {
            if !f.is_finite() {
                return Err(IdentityError::NotFinite(at.to_string()));
            }
            // Rust's `Display` for f64 is the shortest text that parses back to the same value, without exponent.
            let text = if *f == 0.0 {
                "0".to_string()
            } else {
                f.to_string()
            };
            out.push_str(&text);
        }
        toml::Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        toml::Value::Datetime(d) => out.push_str(&json_string(&d.to_string())),
        toml::Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, &format!("{at}[{i}]"))?;
            }
            out.push(']');
        }
        toml::Value::Table(t) => write_table(t, out, at)?,
    }
    Ok(())
}

fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// The detached signature of a policy, as stored in `<file>.sig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySignature {
    /// Format version (1).
    pub v: u32,
    /// The signed policy hash (`sha256:<hex>`).
    pub policy_hash: String,
    /// The signer's key id (see [`proof::key_id`]).
    pub key_id: String,
    /// The signer's Ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// Ed25519 signature over `drafter-policy-v1\n` + `policy_hash`, 128 hex characters.
    pub signature: String,
    /// When it was signed (RFC 3339), for people; not covered by the signature.
    pub signed_at: String,
}

/// Where the signature of `policy_file` lives: the same path with `.sig` appended.
pub fn sig_path(policy_file: &Path) -> PathBuf {
    let mut p = policy_file.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// Signs `hash` with `key`.
pub fn sign(hash: &str, key: &RunnerKey) -> PolicySignature {
    let mut msg = SIG_DOMAIN.to_vec();
    msg.extend_from_slice(hash.as_bytes());
    PolicySignature {
        v: 1,
        policy_hash: hash.to_string(),
        key_id: key.key_id(),
        public_key: key.public_hex(),
        signature: hex::encode(key.sign(&msg).to_bytes()),
        signed_at: chrono::Utc::now().to_rfc3339(),
    }
}

/// Writes `sig` next to `policy_file`; returns the path written.
pub fn write_signature(
    policy_file: &Path,
    sig: &PolicySignature,
) -> Result<PathBuf, IdentityError> {
    let path = sig_path(policy_file);
    let mut text = serde_json::to_string_pretty(sig).unwrap_or_default();
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| IdentityError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Reads `<policy_file>.sig`. `Ok(None)` when there is none.
pub fn read_signature(policy_file: &Path) -> Result<Option<PolicySignature>, IdentityError> {
    let path = sig_path(policy_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IdentityError::SigFile {
                path,
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::SigFile {
            path,
            message: format!("not a drafter policy signature: {e}"),
        })
}

/// Checks `sig` against the policy's current `hash` and, when `trusted` is not empty, that the signer is one of
/// them. Returns the signer's key id.
pub fn verify(
    sig: &PolicySignature,
    hash: &str,
    trusted: &[VerifyingKey],
) -> Result<String, IdentityError> {
    let bad = || IdentityError::BadSignature {
        key_id: sig.key_id.clone(),
    };
    if sig.v != 1 {
        return Err(IdentityError::SigFile {
            path: PathBuf::from("<signature>"),
            message: format!("unknown signature version {}", sig.v),
        });
    }
    if sig.policy_hash != hash {
        return Err(IdentityError::HashMismatch {
            signed: sig.policy_hash.clone(),
            actual: hash.to_string(),
        });
    }
    let key = proof::parse_public_key(&sig.public_key).map_err(|_| bad())?;
    if proof::key_id(&key) != sig.key_id {
        return Err(bad());
    }
    let mut raw = [0u8; 64];
    hex::decode_to_slice(sig.signature.trim(), &mut raw).map_err(|_| bad())?;
    let signature = Signature::from_bytes(&raw);
    let mut msg = SIG_DOMAIN.to_vec();
    msg.extend_from_slice(hash.as_bytes());
    key.verify(&msg, &signature).map_err(|_| bad())?;
    if !trusted.is_empty() && !trusted.iter().any(|t| t.as_bytes() == key.as_bytes()) {
        return Err(IdentityError::Untrusted {
            key_id: sig.key_id.clone(),
            trusted: trusted
                .iter()
                .map(proof::key_id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(sig.key_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(text: &str) -> String {
        policy_hash(&text.parse::<toml::Table>().unwrap()).unwrap()
    }

    #[test]
    fn canonical_form_ignores_order_whitespace_and_comments() {
        let a =
            "version = 1\n[teams.pay]\nprojects = [\"PAY\"]\ntools = [\"run\", \"read_file\"]\n";
        let b = "# a comment\nversion=1\n\n[teams.pay]   # inline\ntools=['run','read_file']\nprojects=[ \"PAY\" ]\n";
        let c = "version = 1\nteams = { pay = { tools = [\"run\", \"read_file\"], projects = [\"PAY\"] } }\n";
        assert_eq!(hash_of(a), hash_of(b));
        assert_eq!(hash_of(a), hash_of(c));
    }

    #[test]
    fn one_character_changes_the_hash() {
        let a = "version = 1\n[teams.pay]\nprojects = [\"PAY\"]\n";
        let b = "version = 1\n[teams.pay]\nprojects = [\"PAX\"]\n";
        assert_ne!(hash_of(a), hash_of(b));
        let canon = canonical_bytes(&a.parse().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(canon).unwrap(),
            r#"{"teams":{"pay":{"projects":["PAY"]}},"version":1}"#
        );
    }

    #[test]
    fn numbers_are_written_canonically() {
        let t: toml::Table = "a = 2.0\nb = 2\nc = 0.1\nd = -0.0\ne = 1e3\n"
            .parse()
            .unwrap();
        assert_eq!(
            String::from_utf8(canonical_bytes(&t).unwrap()).unwrap(),
            r#"{"a":2,"b":2,"c":0.1,"d":0,"e":1000}"#
        );
        let nan: toml::Table = "x = nan".parse().unwrap();
        assert!(matches!(canonical_bytes(&nan), Err(IdentityError::NotFinite(k)) if k == "x"));
    }

    #[test]
    fn signatures_verify_and_catch_tampering() {
        let key = RunnerKey::from_seed([7u8; 32]);
        let other = RunnerKey::from_seed([8u8; 32]);
        let hash = hash_of("version = 1\n");
        let sig = sign(&hash, &key);
        assert_eq!(verify(&sig, &hash, &[]).unwrap(), key.key_id());
        assert_eq!(
            verify(&sig, &hash, &[key.verifying_key()]).unwrap(),
            key.key_id()
        );
        // Another policy.
        let changed = hash_of("version = 2\n");
        assert!(matches!(
            verify(&sig, &changed, &[]),
            Err(IdentityError::HashMismatch { .. })
        ));
        // A signature edited to claim another hash.
        let mut forged = sig.clone();
        forged.policy_hash = changed.clone();
        assert!(matches!(
            verify(&forged, &changed, &[]),
            Err(IdentityError::BadSignature { .. })
        ));
        // Signed by a key the runner does not trust.
        assert!(matches!(
            verify(&sig, &hash, &[other.verifying_key()]),
            Err(IdentityError::Untrusted { .. })
        ));
        // A public key swapped in with its id: the signature no longer matches.
        let mut swapped = sig.clone();
        swapped.public_key = other.public_hex();
        swapped.key_id = other.key_id();
        assert!(matches!(
            verify(&swapped, &hash, &[]),
            Err(IdentityError::BadSignature { .. })
        ));
    }
}
