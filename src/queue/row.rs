//! The job row both backends read: one [`JobRow`] deriving `sqlx::FromRow`, turned into a [`Job`] in one place.
//!
//! The backends store two things differently, and each is decoded by a type that knows both forms:
//! - instants: SQLite keeps integer Unix milliseconds (one host, one clock, compared as numbers), PostgreSQL
//!   `timestamptz`; both decode as a [`Stamp`];
//! - JSON: SQLite keeps TEXT, PostgreSQL `jsonb`; both decode through `sqlx::types::Json`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::types::Json;
use sqlx::{Decode, Postgres, Sqlite, Type};

use super::{Approval, ApprovalSubject, Job, JobState, QueueError, Trigger};

/// The job columns [`JobRow`] reads, as a literal so queries stay `&'static str` (`concat!`).
macro_rules! job_columns {
    () => {
        "id, ticket, project, state, attempts, max_attempts, not_before, lease_owner, lease_expires, triggers, \
         last_error, outcome, progress, created_at, updated_at, policy_hash, approval_reason, approval_approvers, \
         approval_requested_at, approval_expires_at, approved_by, approved_at, lease_gen, \
         approval_ticket_sha256, approval_repo, approval_base, approval_comment_id, iterations"
    };
}

/// An instant as a backend stores it: SQLite integer Unix milliseconds, PostgreSQL `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(pub DateTime<Utc>);

impl Type<Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Sqlite> for Stamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let ms = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_millis(ms)
            .map(Stamp)
            .ok_or_else(|| format!("stored instant {ms} is not a valid instant").into())
    }
}

impl Type<Postgres> for Stamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Stamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Stamp)
    }
}

/// One row of `jobs`, as selected by [`job_columns!`] (or returned by a claim).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    id: String,
    ticket: String,
    project: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    not_before: Stamp,
    lease_owner: Option<String>,
    lease_expires: Option<Stamp>,
    triggers: Json<Vec<Trigger>>,
    last_error: Option<String>,
    outcome: Option<Json<Value>>,
    progress: Json<Value>,
    created_at: Stamp,
    updated_at: Stamp,
    policy_hash: Option<String>,
    approval_reason: Option<String>,
    approval_approvers: Option<Json<Vec<String>>>,
    approval_requested_at: Option<Stamp>,
    approval_expires_at: Option<Stamp>,
    approved_by: Option<String>,
    approved_at: Option<Stamp>,
    lease_gen: i64,
    approval_ticket_sha256: Option<String>,
    approval_repo: Option<String>,
    approval_base: Option<String>,
    approval_comment_id: Option<String>,
    iterations: i32,
}

impl TryFrom<JobRow> for Job {
    type Error = QueueError;

    fn try_from(row: JobRow) -> Result<Job, QueueError> {
        let state = JobState::parse(&row.state).ok_or_else(|| {
            QueueError::Database(format!("stored state `{}` is unknown", row.state))
        })?;
        // A request is shown only when all of it was stored.
        let approval = match (
            row.approval_reason,
            row.approval_requested_at,
            row.approval_expires_at,
        ) {
            (Some(reason), Some(requested_at), Some(expires_at)) => Some(Approval {
                reason,
                approvers: row.approval_approvers.map(|a| a.0).unwrap_or_default(),
                requested_at: requested_at.0,
                expires_at: expires_at.0,
                approved_by: row.approved_by,
                approved_at: row.approved_at.map(|t| t.0),
                subject: subject(
                    row.approval_ticket_sha256,
                    row.approval_repo,
                    row.approval_base,
                ),
                comment_id: row.approval_comment_id,
            }),
            _ => None,
        };
        Ok(Job {
            id: row.id,
            ticket: row.ticket,
            project: row.project,
            state,
            attempts: count(row.attempts, "attempts")?,
            max_attempts: count(row.max_attempts, "max_attempts")?,
            not_before: row.not_before.0,
            lease_owner: row.lease_owner,
            lease_expires: row.lease_expires.map(|t| t.0),
            lease_gen: super::to_u64(row.lease_gen, "lease_gen")?,
            iterations: count(row.iterations, "iterations")?,
            triggers: row.triggers.0,
            last_error: row.last_error,
            outcome: row.outcome.map(|o| o.0),
            progress: row.progress.0,
            policy_hash: row.policy_hash,
            approval,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        })
    }
}

/// A stored attempt count back to `u32`.
pub(crate) fn count(v: i32, column: &str) -> Result<u32, QueueError> {
    u32::try_from(v)
        .map_err(|_| QueueError::Database(format!("stored {column} {v} is out of range")))
}

/// The approval's subject, when all of it was stored (requests stored before approvals were bound have none).
fn subject(
    ticket_sha256: Option<String>,
    repo: Option<String>,
    base: Option<String>,
) -> Option<ApprovalSubject> {
    Some(ApprovalSubject {
        ticket_sha256: ticket_sha256?,
        repo: repo?,
        base: base?,
    })
}
