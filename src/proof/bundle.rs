//! The bundle format, and the writer that appends to it.
//!
//! # Format
//! `bundle.jsonl` holds one line per statement, each ending in `\n`. A line is a DSSE v1 JSON envelope, compact,
//! members in the order `payload`, `payloadType`, `signatures`:
//!
//! ```text
//! {"payload":"<base64>","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"<key id>","sig":"<base64>"}]}
//! ```
//!
//! - `payload` is standard padded base64 of an in-toto Statement v1 written as canonical JSON (object keys sorted
//!   by byte, no whitespace, integers only), so every statement has exactly one valid spelling.
//! - `sig` is the Ed25519 signature over DSSE's `PAE(payloadType, payload)`, made with the runner key. `keyid` is
//!   the key's id (the first 16 hex characters of the SHA-256 of the public key; see [`super::key_id`]), and the
//!   statement's `predicate.chain.signer` carries the whole public key, so a verifier knows which key to use and an
//!   auditor can pin it; a rotated key keeps its id, so old bundles still verify against it.
//! - Three predicate types, all with a `chain` object (`seq` from 0, `prev` = hex SHA-256 of the previous line's
//!   bytes without its `\n`, or 64 zeros; `job_id`; `ticket`; `signer`) and the job's `policy_hash`:
//!   - [`MODEL_CALL`]: subjects `request` and `response` (SHA-256 of the exact body bytes sent and received);
//!     provider, model, endpoint, HTTP status, token usage, cost (micro-dollars, when the policy prices the model),
//!     latency, start time.
//!   - [`TOOL_CALL`]: subjects `arguments` (SHA-256 of the arguments' JSON as the model sent them) and `output`
//!     (SHA-256 of the tool's full output); tool name, model turn, exit code, whether it succeeded or the policy
//!     refused it (and by which rule), duration, output size, and the size and SHA-256 of the part shown to the
//!     model (which is cut at 48 KiB).
//!   - [`RUN`]: one per attempt, last in the file. Subjects: the `policy`, the `ticket:<KEY>` as fetched (SHA-256
//!     of its canonical JSON), the `chain` head before it (when there is one), and for a pushed change the
//!     `commit` (`sha1`) and its `diff` against the base (`sha256`). The predicate names the trigger (who and which
//!     event, who approved), the worker (id, version, key id), the sandbox image digest, the repository, base and
//!     branch, timings, counts and usage over the whole bundle, the retention, every policy decision, and the
//!     outcome (`pull_request` with its URL, `no_changes`, `refused` with the rule, `failed`, `awaiting_approval`).
//!
//! The *bundle digest* printed in the pull request and on the ticket is the SHA-256 of the whole file
//! (`sha256sum bundle.jsonl`).
//!
//! Here: the constants, canonical JSON and the envelope lines. `statement.rs` holds the statement and predicate
//! types (what a verifier reads back), `writer.rs` the [`BundleWriter`] and its inputs.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::format::{Decision, Price};
use super::retention::{self, Retention, BODIES_DIR};
use super::{sha256_hex, ProofError, RunnerKey};

mod statement;
mod writer;

pub use statement::*;
pub use writer::*;

/// The bundle file's name inside a job directory.
pub const BUNDLE_FILE: &str = "bundle.jsonl";

/// The DSSE payload type of every envelope.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The in-toto Statement v1 `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// Predicate type of a model-call statement.
pub const MODEL_CALL: &str = "https://drafter.dev/attestation/model-call/v1";

/// Predicate type of a tool-call statement.
pub const TOOL_CALL: &str = "https://drafter.dev/attestation/tool-call/v1";

/// Predicate type of a run statement.
pub const RUN: &str = "https://drafter.dev/attestation/run/v1";

/// `chain.prev` of the first statement.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical JSON: object keys sorted by their bytes, no whitespace, strings as `serde_json` escapes them. Floats
/// are refused (no statement has one), so the encoding is the same in every implementation.
pub fn canonical_json(v: &Value) -> Result<Vec<u8>, String> {
    fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => {
                if n.is_f64() {
                    return Err(format!("number {n} is not an integer"));
                }
                out.extend_from_slice(n.to_string().as_bytes());
            }
            Value::String(s) => out.extend_from_slice(
                serde_json::to_string(s)
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            ),
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out)?;
                }
                out.push(b']');
            }
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(
                        serde_json::to_string(k)
                            .map_err(|e| e.to_string())?
                            .as_bytes(),
                    );
                    out.push(b':');
                    write(&m[k], out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    write(v, &mut out)?;
    Ok(out)
}

/// Signs one statement and returns its envelope line (without `\n`).
pub(crate) fn envelope_line(
    key: &RunnerKey,
    key_id: &str,
    subject: Vec<Subject>,
    predicate_type: &str,
    predicate: &impl Serialize,
) -> Result<Vec<u8>, ProofError> {
    let enc = |e: String| ProofError::Encode(e);
    let statement = Statement {
        type_: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: predicate_type.to_string(),
        predicate: serde_json::to_value(predicate).map_err(|e| enc(e.to_string()))?,
    };
    let value = serde_json::to_value(&statement).map_err(|e| enc(e.to_string()))?;
    let payload = canonical_json(&value).map_err(enc)?;
    let signer = Signer { key, key_id };
    let envelope = dsse::sign(PAYLOAD_TYPE, &payload, &signer).map_err(|e| enc(e.to_string()))?;
    envelope.to_json().map_err(|e| enc(e.to_string()))
}

/// The runner key as a DSSE signer.
struct Signer<'a> {
    key: &'a RunnerKey,
    key_id: &'a str,
}

impl dsse::Signer for Signer<'_> {
    fn sign(&self, message: &[u8]) -> dsse::Result<Vec<u8>> {
        Ok(self.key.sign(message).to_bytes().to_vec())
    }

    fn key_id(&self) -> Option<String> {
        Some(self.key_id.to_string())
    }
}

/// Standard padded base64, as every envelope member is written.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every statement of a bundle with its parsed predicate, read without verifying (for tests and listings; use
/// [`super::verify`] before trusting any of it).
pub fn read_statements(bytes: &[u8]) -> Result<Vec<(Statement, Predicate)>, String> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(read_line)
        .collect()
}

/// One envelope line's statement and predicate, unverified.
fn read_line(line: &[u8]) -> Result<(Statement, Predicate), String> {
    let envelope = dsse::Envelope::from_json(line).map_err(|e| e.to_string())?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&envelope.payload)
        .map_err(|e| e.to_string())?;
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    let predicate = Predicate::parse(&statement.predicate_type, &statement.predicate)?;
    Ok((statement, predicate))
}

/// The last run statement of a bundle, read without verifying (for housekeeping such as [`super::retention::purge`]
/// and listings); `None` when the bundle is empty or does not end with one.
pub fn last_run(path: &Path) -> Result<Option<Run>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let Some(line) = bytes.split(|&b| b == b'\n').rev().find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    match read_line(line)?.1 {
        Predicate::Run(r) => Ok(Some(*r)),
        _ => Ok(None),
    }
}
