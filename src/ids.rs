//! Job ids. The queue mints them, and they become a directory name (`<data>/jobs/<id>`), a container name
//! (`drafter-<id>`) and a label value; one rule, [`JobId::is_valid`], says which strings are ids wherever one comes in
//! (the CLI, the sandbox).

use std::fmt;

use chrono::Utc;

/// A job id: 1 to [`JobId::MAX_LEN`] ASCII letters, digits, `-`, `_` or `.`, the first a letter or digit. So never
/// `.` or `..`, never a path (no `/`), never read as an option (no leading `-`), and always a valid Docker container
/// name once prefixed (Docker allows `[a-zA-Z0-9][a-zA-Z0-9_.-]*`). Every id drafter mints is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

/// A string that is not a [`JobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid job id `{0}`: use 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
)]
pub struct BadJobId(pub String);

impl JobId {
    /// The longest id.
    pub const MAX_LEN: usize = 64;

    /// A new id: time-ordered and unique (`j20261123T101500-1a2b3c4d`).
    pub fn mint() -> JobId {
        let mut rnd = [0u8; 4];
        // A failed random read only makes ids less unique; the timestamp still orders them.
        let _ = getrandom::fill(&mut rnd);
        JobId(format!(
            "j{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S"),
            hex::encode(rnd)
        ))
    }

    /// `id` as a job id, if it is one.
    pub fn parse(id: &str) -> Result<JobId, BadJobId> {
        if JobId::is_valid(id) {
            Ok(JobId(id.to_string()))
        } else {
            Err(BadJobId(id.to_string()))
        }
    }

    /// The rule (see [`JobId`]).
    pub fn is_valid(id: &str) -> bool {
        let mut bytes = id.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id.len() <= JobId::MAX_LEN
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// A new job id (see [`JobId::mint`]), as a string.
pub fn new_job_id() -> String {
    JobId::mint().into()
}

/// Whether `id` is a job id (see [`JobId`]).
pub fn valid_job_id(id: &str) -> bool {
    JobId::is_valid(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_ids_and_distinct() {
        let a = JobId::mint();
        let b = JobId::mint();
        assert!(JobId::is_valid(a.as_str()), "{a}");
        assert_eq!(a.as_str().len(), "j20261123T101500-1a2b3c4d".len());
        assert_ne!(a, b);
        assert_eq!(JobId::parse(a.as_str()), Ok(a.clone()));
        assert!(valid_job_id(&new_job_id()));
    }

    #[test]
    fn the_one_rule_accepts_ids_and_refuses_paths_options_and_oddities() {
        for ok in [
            "j20261123T101500-1a2b3c4d",
            "job-1_a.b",
            "test-stale-0a1b2c3d",
            "J42",
            "x",
            &"a".repeat(JobId::MAX_LEN),
        ] {
            assert!(JobId::is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "-x",
            "--help",
            "_x",
            ".hidden",
            "a b",
            "a\nb",
            "a\0b",
            "jé",
            "a:b",
            "a\\b",
            &"a".repeat(JobId::MAX_LEN + 1),
        ] {
            assert!(!JobId::is_valid(bad), "{bad:?}");
            assert_eq!(JobId::parse(bad), Err(BadJobId(bad.to_string())));
        }
    }
}
