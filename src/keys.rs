//! Ed25519 public keys as drafter writes them (64 lowercase hex characters) and their short ids. A leaf: the
//! configuration checks pinned keys with it, the policy its signer, the proof its bundles' signers.

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// A short, stable name for a public key: the first 16 hex characters of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// Parses a 64-character hex public key (as in `runner.pub`).
pub fn parse_public_key(hex_str: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_str.trim(), &mut bytes)
        .map_err(|_| "a public key is 64 hex characters".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())
}
