//! What a job keeps besides its signed statements, and for how long.
//!
//! The statements in a bundle hold only digests, so content lives apart from them: with `bodies = "full"` every
//! model request and response body, tool arguments, tool output and the ticket as fetched are written to
//! `<job dir>/bodies/<sha256 hex>` (content-addressed: the file name is the digest the statement names, so an
//! auditor checks a body with `sha256sum`). With `bodies = "digests"` (zero retention, the default) no body is ever
//! written anywhere under the data directory. `max_age_days` removes a job's `bodies/` once the job's last run
//! statement is that old; the bundle stays and still verifies.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{bundle, sha256_hex, ProofError};

/// The directory of retained bodies inside a job directory.
pub const BODIES_DIR: &str = "bodies";

/// Whether bodies are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bodies {
    /// Request/response bodies, tool arguments and outputs are kept for audit.
    Full,
    /// Only digests and usage: bodies never touch disk.
    #[default]
    Digests,
}

impl Bodies {
    /// `full` or `digests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bodies::Full => "full",
            Bodies::Digests => "digests",
        }
    }
}

/// A policy's retention rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Whether bodies are kept.
    pub bodies: Bodies,
    /// Days after a job's end when its bodies are removed (digests stay); `None` keeps them.
    pub max_age_days: Option<u64>,
}

/// Writes `bytes` to `<dir>/<sha256>` unless it is already there; returns the digest. The file is written under a
/// temporary name and renamed, so a body file is either complete or absent.
pub(crate) fn store(dir: &Path, bytes: &[u8]) -> Result<String, ProofError> {
    let digest = sha256_hex(bytes);
    let path = dir.join(&digest);
    if path.exists() {
        return Ok(digest);
    }
    let io = |source| ProofError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{digest}.{}.tmp", super::unique_suffix()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(digest)
}

/// One job whose bodies were (or would be) removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// The job directory.
    pub dir: PathBuf,
    /// Body files removed.
    pub files: u64,
    /// Bytes removed.
    pub bytes: u64,
}

/// Removes `bodies/` from every job under `<data_dir>/jobs` whose last run statement ended more than its
/// `retention.max_age_days` before `now`. The bundle is not verified here (that is `drafter verify`'s job); a job
/// whose bundle cannot be read is left alone and reported in the log. With `dry_run` nothing is removed.
pub fn purge(data_dir: &Path, now: DateTime<Utc>, dry_run: bool) -> Vec<Purged> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join("jobs")) else {
        return out;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let bodies = dir.join(BODIES_DIR);
        if !bodies.is_dir() {
            continue;
        }
        let last = match bundle::last_run(&dir.join(bundle::BUNDLE_FILE)) {
            Ok(Some(run)) => run,
            // A job still running (no run statement yet), or a bundle that cannot be read: keep the bodies.
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the bundle; its bodies are kept");
                continue;
            }
        };
        let Some(days) = last.retention.max_age_days else {
            continue;
        };
        let Ok(finished) = DateTime::parse_from_rfc3339(&last.finished_at) else {
            continue;
        };
        let age = now.signed_duration_since(finished.with_timezone(&Utc));
        if age < chrono::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400_000)) {
            continue;
        }
        let (mut files, mut bytes) = (0, 0);
        if let Ok(list) = std::fs::read_dir(&bodies) {
            for f in list.flatten() {
                files += 1;
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        if !dry_run {
            if let Err(e) = std::fs::remove_dir_all(&bodies) {
                tracing::warn!(dir = %bodies.display(), error = %e, "could not remove expired bodies");
                continue;
            }
            tracing::info!(dir = %dir.display(), files, bytes, max_age_days = days, "removed expired bodies");
        }
        out.push(Purged { dir, files, bytes });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}
