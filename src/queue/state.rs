//! The job state machine's decisions, as pure functions both backends call: given what a backend read (a row's
//! state and attempts, an approval request, how many rows an update touched) and what was asked, what happens next
//! and in what words. The backends keep only the SQL that reads and writes; the diagram is in the module docs of
//! [`crate::queue`].
//!
//! The state sets the SQL filters on are here too, as literals for `concat!` ([`open_states!`],
//! [`reopenable_states!`]), checked against [`JobState`] by the tests below. (`jobs_one_open_per_ticket`, the partial
//! index in `migrations/`, names the open states as well; a query that relies on it must use the same text.)

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Approved, Failure, JobState, QueueError};

/// The open states (see [`JobState::is_open`]) as an SQL list.
macro_rules! open_states {
    () => {
        "('queued', 'running', 'awaiting_approval')"
    };
}

/// The states [`Admin::retry`](super::Admin::retry) queues a job again from, as an SQL list.
macro_rules! reopenable_states {
    () => {
        "('failed', 'cancelled')"
    };
}

/// The most triggers one job keeps (its first plus later ones absorbed while it is open). Anyone who can comment
/// on a ticket can add one, so an open job must not grow without bound.
pub const MAX_TRIGGERS: usize = 20;

/// The most triggers a job keeps once review comments reopen it (every iteration adds at least one): the iteration
/// cap bounds how often it reopens, this bounds the comments one iteration may gather.
pub const MAX_REVIEW_TRIGGERS: usize = 100;

/// Backoff after the `attempt`-th failed attempt (1-based): 30 s, 60 s, 120 s, ... capped at 30 minutes. A
/// `Retry-After` longer than that wins.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = Duration::from_secs(30u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16)))
        .min(Duration::from_secs(30 * 60));
    match retry_after {
        Some(r) if r > exp => r.min(Duration::from_secs(6 * 3600)),
        _ => exp,
    }
}

/// Who calls a lease-holder method: `worker#generation` (a claim's [`Job::lease_token`](super::Job::lease_token),
/// which only that claim matches), or a bare worker id (matches whatever claim that worker holds; for tools and
/// tests that act as the owner). Worker ids contain no `#`. The SQL matches `lease_owner = owner AND lease_gen =
/// COALESCE(gen, lease_gen)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder<'a> {
    pub owner: &'a str,
    pub gen: Option<i64>,
}

pub(crate) fn holder(token: &str) -> Holder<'_> {
    match token.rsplit_once('#') {
        Some((owner, gen)) => match gen.parse::<i64>() {
            Ok(gen) => Holder {
                owner,
                gen: Some(gen),
            },
            // Not a generation: the whole token is the id, which then matches nothing a claim wrote.
            Err(_) => Holder {
                owner: token,
                gen: None,
            },
        },
        None => Holder {
            owner: token,
            gen: None,
        },
    }
}

/// Why a lease-holder-only update touched no row: the job is missing, or the caller does not hold its lease.
pub(crate) fn not_held(job_id: &str, exists: bool) -> QueueError {
    if exists {
        QueueError::LeaseLost(job_id.to_string())
    } else {
        QueueError::NotFound(job_id.to_string())
    }
}

/// What an operator's update ([`Admin::cancel`](super::Admin::cancel), [`Admin::retry`](super::Admin::retry))
/// that changed nothing means: the job is not in a state it applies to (`Ok(false)`), or there is no such job.
pub(crate) fn unchanged(job_id: &str, exists: bool) -> Result<bool, QueueError> {
    if exists {
        Ok(false)
    } else {
        Err(QueueError::NotFound(job_id.to_string()))
    }
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AfterFailure {
    /// `queued` (a retry is scheduled) or `failed`.
    pub state: JobState,
    /// The job's `last_error`.
    pub error: String,
    /// How long from now until it may be claimed again (`not_before`); zero once failed.
    pub wait: Duration,
}

/// The `attempts`-th attempt (of `max_attempts`) failed with `failure`: retry after a backoff while attempts are left
/// and the failure is retryable, else fail for good.
pub(crate) fn after_failure(attempts: u32, max_attempts: u32, failure: Failure) -> AfterFailure {
    match failure {
        Failure::Retryable { error, retry_after } if attempts < max_attempts => AfterFailure {
            state: JobState::Queued,
            error,
            wait: backoff(attempts, retry_after),
        },
        Failure::Retryable { error, .. } => AfterFailure {
            state: JobState::Failed,
            error: gave_up(&error, attempts),
            wait: Duration::ZERO,
        },
        Failure::Permanent { error } => AfterFailure {
            state: JobState::Failed,
            error,
            wait: Duration::ZERO,
        },
    }
}

/// Whether a job may be approved now; `Err` says why not (and nothing changes). `state` is the stored one (`None`
/// if unknown), `live` whether its request has not expired by the backend's clock, `requested_at` when the request
/// was made and `comment_created` when the approving comment was (if it came by comment), both at the precision the
/// backend stores instants in. Whether the comment was used before is the backend's check, after this one.
pub(crate) fn may_approve(
    state: Option<JobState>,
    live: bool,
    requested_at: Option<DateTime<Utc>>,
    comment_created: Option<DateTime<Utc>>,
) -> Result<(), Approved> {
    if state != Some(JobState::AwaitingApproval) || !live {
        return Err(Approved::NotAwaiting);
    }
    match comment_created {
        // A comment approves only what was asked before it was written.
        Some(created) if requested_at.is_none_or(|r| created <= r) => {
            Err(Approved::CommentBeforeRequest)
        }
        _ => Ok(()),
    }
}

/// `last_error` of a job that failed for good: the attempt's reason and how many attempts were made.
pub(crate) fn gave_up(error: &str, attempts: u32) -> String {
    format!("{error} (gave up after {attempts} attempts)")
}

/// `last_error` of a job whose lease expired (its worker died) on its last allowed attempt: it is failed instead of
/// run again, because a job that keeps killing its worker should not take the next one down too.
pub(crate) fn worker_lost(attempts: u32, max_attempts: u32) -> String {
    gave_up(
        &format!("worker lost: the lease expired during attempt {attempts} of {max_attempts}"),
        attempts,
    )
}

/// `last_error` of a job whose approval request lapsed.
pub(crate) fn approval_expired(reason: &str, expires_at: DateTime<Utc>) -> String {
    format!(
        "approval expired: nobody approved by {} ({reason})",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_list(states: impl Iterator<Item = JobState>) -> String {
        let names: Vec<String> = states.map(|s| format!("'{}'", s.as_str())).collect();
        format!("({})", names.join(", "))
    }

    #[test]
    fn the_sql_state_lists_are_the_states() {
        assert_eq!(
            open_states!(),
            sql_list(JobState::ALL.into_iter().filter(|s| s.is_open()))
        );
        assert_eq!(
            reopenable_states!(),
            sql_list([JobState::Failed, JobState::Cancelled].into_iter())
        );
        // The finished states: a retry reopens two of them; a succeeded job is never run again.
        let finished: Vec<JobState> = JobState::ALL.into_iter().filter(|s| !s.is_open()).collect();
        assert_eq!(
            finished,
            [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, None), Duration::from_secs(30));
        assert_eq!(backoff(2, None), Duration::from_secs(60));
        assert_eq!(backoff(3, None), Duration::from_secs(120));
        assert_eq!(backoff(40, None), Duration::from_secs(1800));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        assert_eq!(
            backoff(3, Some(Duration::from_secs(5))),
            Duration::from_secs(120)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(6 * 3600),
            "a Retry-After is believed up to six hours"
        );
        assert_eq!(backoff(0, None), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, None), Duration::from_secs(1800));
    }

    #[test]
    fn holder_tokens() {
        assert_eq!(
            holder("host-1-ab#7"),
            Holder {
                owner: "host-1-ab",
                gen: Some(7)
            }
        );
        assert_eq!(
            holder("host-1-ab"),
            Holder {
                owner: "host-1-ab",
                gen: None
            }
        );
        // Not a generation after the `#`: the whole token is the owner, which no claim wrote.
        assert_eq!(
            holder("w#x"),
            Holder {
                owner: "w#x",
                gen: None
            }
        );
        assert_eq!(
            holder("a#b#3"),
            Holder {
                owner: "a#b",
                gen: Some(3)
            }
        );
    }

    #[test]
    fn a_retryable_failure_backs_off_until_attempts_run_out() {
        let retryable = |after: Option<u64>| Failure::Retryable {
            error: "502 from the model".into(),
            retry_after: after.map(Duration::from_secs),
        };
        assert_eq!(
            after_failure(1, 3, retryable(None)),
            AfterFailure {
                state: JobState::Queued,
                error: "502 from the model".into(),
                wait: Duration::from_secs(30)
            }
        );
        assert_eq!(
            after_failure(2, 3, retryable(Some(600))).wait,
            Duration::from_secs(600)
        );
        assert_eq!(
            after_failure(3, 3, retryable(Some(600))),
            AfterFailure {
                state: JobState::Failed,
                error: "502 from the model (gave up after 3 attempts)".into(),
                wait: Duration::ZERO
            }
        );
        // More attempts than allowed (max_attempts lowered meanwhile): failed too.
        assert_eq!(after_failure(5, 3, retryable(None)).state, JobState::Failed);
    }

    #[test]
    fn a_permanent_failure_fails_at_once_with_its_reason() {
        assert_eq!(
            after_failure(
                1,
                3,
                Failure::Permanent {
                    error: "refused".into()
                }
            ),
            AfterFailure {
                state: JobState::Failed,
                error: "refused".into(),
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn approval_needs_a_live_request_and_a_later_comment() {
        let at = |s: i64| DateTime::from_timestamp(1_767_261_600 + s, 0).unwrap();
        let awaiting = Some(JobState::AwaitingApproval);
        assert_eq!(may_approve(awaiting, true, Some(at(0)), None), Ok(()));
        assert_eq!(
            may_approve(awaiting, true, Some(at(0)), Some(at(1))),
            Ok(())
        );
        assert_eq!(
            may_approve(awaiting, true, Some(at(0)), Some(at(0))),
            Err(Approved::CommentBeforeRequest),
            "a comment from the same instant predates nothing"
        );
        assert_eq!(
            may_approve(awaiting, true, Some(at(0)), Some(at(-1))),
            Err(Approved::CommentBeforeRequest)
        );
        assert_eq!(
            may_approve(awaiting, true, None, Some(at(1))),
            Err(Approved::CommentBeforeRequest),
            "no recorded request: no comment can be after it"
        );
        assert_eq!(may_approve(awaiting, true, None, None), Ok(()));
        assert_eq!(
            may_approve(awaiting, false, Some(at(0)), None),
            Err(Approved::NotAwaiting)
        );
        for state in JobState::ALL
            .into_iter()
            .filter(|s| *s != JobState::AwaitingApproval)
            .map(Some)
            .chain([None])
        {
            assert_eq!(
                may_approve(state, true, Some(at(0)), Some(at(1))),
                Err(Approved::NotAwaiting),
                "{state:?}"
            );
        }
    }

    #[test]
    fn outcomes_of_updates_that_touched_nothing() {
        assert!(matches!(not_held("j1", true), QueueError::LeaseLost(id) if id == "j1"));
        assert!(matches!(not_held("j1", false), QueueError::NotFound(id) if id == "j1"));
        assert!(!unchanged("j1", true).unwrap());
        assert!(matches!(unchanged("j1", false), Err(QueueError::NotFound(id)) if id == "j1"));
    }

    #[test]
    fn failure_reasons_are_worded_once() {
        assert_eq!(
            worker_lost(3, 3),
            "worker lost: the lease expired during attempt 3 of 3 (gave up after 3 attempts)"
        );
        let at = DateTime::from_timestamp(1_767_261_600, 0).unwrap();
        assert_eq!(
            approval_expired("label needs-approval", at),
            "approval expired: nobody approved by 2026-01-01T10:00:00Z (label needs-approval)"
        );
    }
}
