//! The JQL poll: search hits become jobs, for sites Jira's webhooks cannot reach (see [`super`] for poll dedup).

use super::*;

/// Turns one issue from the poll's search into a job, if it is assigned to the bot and has a valid key. The delivery
/// key is `changelog:<id>` of the newest visible history entry that assigned the bot, else `created:<issue id>`
/// (see the module docs for why this dedups correctly). `triggered_by` is whoever made that assignment, or the
/// issue's creator (`fields.creator`) when there is none. [`poll_once`] may replace it with the author of the latest
/// assignment in the full change history.
pub fn from_search_issue(
    issue: &Value,
    jira: &JiraConfig,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Option<NewJob> {
    let key = issue
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| valid_issue_key(k))?;
    let project = project_of(key)?.to_string();
    // The JQL asked for this already; a stale or odd answer must not start a job anyway.
    if !issue
        .pointer("/fields/assignee")
        .is_some_and(|a| is_bot_user(a, jira))
    {
        return None;
    }
    let latest = issue
        .pointer("/changelog/histories")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|h| {
            h.get("items")
                .and_then(Value::as_array)
                .is_some_and(|items| items.iter().any(|i| assigns_bot(i, jira)))
        })
        .filter_map(|h| {
            let id = h.get("id").and_then(id_string)?;
            let n: u64 = id.parse().ok()?;
            Some((n, h))
        })
        .max_by_key(|(n, _)| *n);
    let (delivery, triggered_by) = match latest {
        Some((n, h)) => (format!("changelog:{n}"), h.get("author").and_then(user_id)),
        // Created already assigned: whoever created it chose the assignee (the webhook path takes the
        // `jira:issue_created` event's `user`, the same person).
        None => {
            let creator = issue.pointer("/fields/creator").and_then(user_id);
            match issue.get("id").and_then(id_string) {
                Some(id) => (format!("created:{id}"), creator),
                None => (format!("poll:{key}"), creator),
            }
        }
    };
    Some(NewJob {
        ticket: key.to_string(),
        project,
        trigger: Trigger {
            delivery,
            source: "poll".into(),
            triggered_by,
            text: None,
            at: now,
            review: None,
        },
        max_attempts,
    })
}

/// The poll's JQL: `assignee = "<bot>" [AND project in ("A", "B")] [AND status in ("x")] ORDER BY updated DESC`.
/// Every value from the configuration is a quoted, escaped JQL string. The bot is its account id on Cloud and its
/// user name (else its key) on Data Center. An empty project list polls every project (the worker refuses tickets
/// of projects that are not allowlisted).
pub fn poll_jql(cfg: &PollConfig, jira: &JiraConfig) -> String {
    let bot = match (jira.flavor, &jira.bot_username) {
        (JiraFlavor::Datacenter, Some(name)) => name.as_str(),
        _ => jira.bot_account_id.as_str(),
    };
    let mut jql = format!("assignee = {}", jql_quote(bot));
    let list = |values: &[String]| {
        values
            .iter()
            .map(|v| jql_quote(v))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !cfg.projects.is_empty() {
        jql.push_str(&format!(" AND project in ({})", list(&cfg.projects)));
    }
    if !cfg.statuses.is_empty() {
        jql.push_str(&format!(" AND status in ({})", list(&cfg.statuses)));
    }
    jql.push_str(" ORDER BY updated DESC");
    jql
}

/// A JQL string literal: double quotes, with `"` and `\` escaped and control characters dropped, so a value from the
/// configuration can never end the string and add clauses.
pub fn jql_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Issues the search returned.
    pub issues: usize,
    /// New jobs.
    pub created: usize,
    /// Assignments already seen.
    pub duplicate: usize,
    /// Triggers recorded on an open job.
    pub absorbed: usize,
    /// Issues that did not make a job (bad key, not assigned to the bot).
    pub skipped: usize,
}

/// Why one poll failed (the loop logs it and tries again next interval).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The search failed.
    #[error("poll: {0}")]
    Jira(#[from] JiraError),
    /// The queue refused a job.
    #[error("poll: {0}")]
    Queue(#[from] QueueError),
    /// The search's paging misbehaved (a repeated token, too many pages).
    #[error("poll: {0}")]
    Paging(String),
}

impl PollError {
    /// How long Jira asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Jira(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// One poll: runs [`poll_jql`] through every page (with `expand=changelog`) and enqueues each hit. For a hit whose
/// delivery key the queue has not seen, `triggered_by` is set from [`JiraClient::assigned_by_any`] (one request);
/// if that fails, the search's own answer stays (see [`from_search_issue`]). Stops at the first queue error (the
/// next poll enqueues again; dedup makes that safe).
pub async fn poll_once(
    jira: &JiraClient,
    cfg: &PollConfig,
    jira_cfg: &JiraConfig,
    queue: &dyn Queue,
    max_attempts: u32,
) -> Result<PollStats, PollError> {
    let jql = poll_jql(cfg, jira_cfg);
    let mut stats = PollStats::default();
    let mut token: Option<String> = None;
    for _ in 0..MAX_POLL_PAGES {
        let page = jira
            .search_expanded(&jql, POLL_FIELDS, &["changelog"], token.as_deref())
            .await?;
        stats.issues += page.issues.len();
        for issue in &page.issues {
            let Some(mut job) = from_search_issue(issue, jira_cfg, max_attempts, Utc::now()) else {
                stats.skipped += 1;
                continue;
            };
            // Only a delivery the queue has not seen costs a request: a ticket stays assigned (and found) for days.
            if is_new_delivery(queue, &job).await? {
                fill_assigner(jira, jira_cfg, &mut job).await;
            }
            let ticket = job.ticket.clone();
            let delivery = job.trigger.delivery.clone();
            match queue.enqueue(job).await? {
                Enqueued::Created(id) => {
                    stats.created += 1;
                    tracing::info!(target: "audit", ticket, delivery, job = id, "poll: job created");
                }
                Enqueued::Absorbed(id) => {
                    stats.absorbed += 1;
                    tracing::info!(target: "audit", ticket, delivery, job = id, "poll: trigger absorbed by open job");
                }
                Enqueued::Duplicate(_) => stats.duplicate += 1,
                Enqueued::Overflow(id) => {
                    stats.duplicate += 1;
                    tracing::warn!(target: "audit", ticket, delivery, job = id,
                        "poll: trigger not kept: the open job already keeps the most triggers a job may");
                }
            }
        }
        match page.next {
            None => return Ok(stats),
            Some(next) if token.as_deref() == Some(next.as_str()) => {
                return Err(PollError::Paging(
                    "Jira returned the same page token twice".into(),
                ))
            }
            Some(next) => token = Some(next),
        }
    }
    Err(PollError::Paging(format!(
        "more than {MAX_POLL_PAGES} pages of results; narrow the poll's projects or statuses"
    )))
}

/// Polls every `cfg.interval_secs` (at least 1 s; the first poll runs at once) until `shutdown` completes, which
/// stops it promptly, also in the middle of a poll (an enqueue is one transaction, so nothing is left half done).
/// Failures are logged and retried next interval, or after Jira's `Retry-After` when that is longer. Returns at once
/// when `cfg.enabled` is false.
pub async fn poll_loop(
    jira: JiraClient,
    cfg: PollConfig,
    jira_cfg: JiraConfig,
    queue: Arc<dyn Queue>,
    max_attempts: u32,
    shutdown: impl Future<Output = ()>,
) {
    if !cfg.enabled {
        tracing::info!("poll: disabled");
        return;
    }
    let interval = Duration::from_secs(cfg.interval_secs.max(1));
    tracing::info!(
        interval_secs = interval.as_secs(),
        jql = %poll_jql(&cfg, &jira_cfg),
        "poll: started"
    );
    tokio::pin!(shutdown);
    loop {
        let wait = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = poll_once(&jira, &cfg, &jira_cfg, queue.as_ref(), max_attempts) => match r {
                Ok(s) => {
                    tracing::info!(
                        issues = s.issues, created = s.created, duplicate = s.duplicate,
                        absorbed = s.absorbed, skipped = s.skipped, "poll: done"
                    );
                    interval
                }
                Err(e) => {
                    let wait = e.retry_after().map_or(interval, |ra| ra.max(interval));
                    tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "poll: failed");
                    wait
                }
            },
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("poll: stopped");
}

/// Whether no job of the ticket has recorded this delivery key yet (the queue would create or absorb it). Reads the
/// ticket's newest jobs; an older job holding the key only costs one needless lookup.
pub(super) async fn is_new_delivery(queue: &dyn Queue, job: &NewJob) -> Result<bool, QueueError> {
    let jobs = queue
        .list(&JobFilter {
            ticket: Some(job.ticket.clone()),
            ..JobFilter::default()
        })
        .await?;
    Ok(!jobs.iter().any(|j| {
        j.triggers
            .iter()
            .any(|t| t.delivery == job.trigger.delivery)
    }))
}

/// Sets `triggered_by` to the author of the latest assignment to the bot in the issue's full change history. The
/// search's histories may be cut short by Jira, so they may miss the latest one; when the full history has no
/// answer (none, or the request failed), what the search said stays.
pub(super) async fn fill_assigner(jira: &JiraClient, cfg: &JiraConfig, job: &mut NewJob) {
    let mut bot: Vec<&str> = vec![cfg.bot_account_id.as_str()];
    if cfg.flavor == JiraFlavor::Datacenter {
        // Old Data Center versions record the assignee by name instead of key.
        bot.extend(cfg.bot_username.as_deref());
    }
    match jira.assigned_by_any(&job.ticket, &bot).await {
        Ok(Some(by)) => job.trigger.triggered_by = Some(clean_id(&by)),
        Ok(None) => tracing::debug!(
            ticket = %job.ticket,
            triggered_by = ?job.trigger.triggered_by,
            "poll: no assignment to the bot in the change history"
        ),
        Err(e) => tracing::warn!(
            ticket = %job.ticket,
            error = %e,
            triggered_by = ?job.trigger.triggered_by,
            "poll: cannot read who assigned the ticket; keeping the search's answer"
        ),
    }
}
