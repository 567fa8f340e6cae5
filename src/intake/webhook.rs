//! Webhook deliveries: what a Jira admin webhook's payload asks for (see the module docs of [`super`] for what
//! triggers a job and how deliveries are keyed).

use super::*;

/// Decides what a webhook payload means (see the module docs for what triggers).
///
/// - `delivery_header`: `X-Atlassian-Webhook-Identifier`, if sent (Cloud).
/// - `issue_key_hint`: the issue key from the webhook URL (`?issue=${issue.key}`), for Data Center comment payloads
///   that carry no `issue`. Used only when the payload names no issue key: the signed body wins over the unsigned
///   URL (and the server refuses a delivery whose hint disagrees with the payload, see [`payload_issue`]).
pub fn from_webhook(
    payload: &Value,
    delivery_header: Option<&str>,
    issue_key_hint: Option<&str>,
    jira: &JiraConfig,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Verdict {
    let event = payload
        .get("webhookEvent")
        .and_then(Value::as_str)
        .unwrap_or("");
    let event_name = clean_id(event);
    let (ticket, project) = match issue_key(payload, issue_key_hint) {
        Ok(k) => k,
        Err(why)
            if matches!(
                event,
                "jira:issue_updated" | "jira:issue_created" | "comment_created"
            ) =>
        {
            return Verdict::Ignore(why)
        }
        Err(_) => (String::new(), String::new()),
    };
    let job = |delivery: String, triggered_by: Option<String>, text: Option<String>| {
        Verdict::Trigger(NewJob {
            ticket: ticket.clone(),
            project: project.clone(),
            trigger: Trigger {
                delivery,
                source: format!("webhook:{event_name}"),
                triggered_by,
                text,
                at: now,
                review: None,
            },
            max_attempts,
        })
    };
    let fallback_key = || delivery_fallback(delivery_header, payload);

    match event {
        "jira:issue_updated" => {
            let items = payload
                .pointer("/changelog/items")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let assignee_items: Vec<&Value> =
                items.iter().filter(|i| is_assignee_item(i)).collect();
            if assignee_items.is_empty() {
                return Verdict::Ignore("issue update does not change the assignee".into());
            }
            if !assignee_items.iter().any(|i| assigns_bot(i, jira)) {
                return Verdict::Ignore("assignee changed to someone else".into());
            }
            let delivery = payload
                .pointer("/changelog/id")
                .and_then(id_string)
                .map(|id| format!("changelog:{id}"))
                .unwrap_or_else(fallback_key);
            job(delivery, payload.get("user").and_then(user_id), None)
        }
        "jira:issue_created" => {
            let assignee = payload.pointer("/issue/fields/assignee");
            if !assignee.is_some_and(|a| is_bot_user(a, jira)) {
                return Verdict::Ignore("new issue is not assigned to the bot".into());
            }
            let delivery = payload
                .pointer("/issue/id")
                .and_then(id_string)
                .map(|id| format!("created:{id}"))
                .unwrap_or_else(fallback_key);
            job(delivery, payload.get("user").and_then(user_id), None)
        }
        "comment_created" => {
            let Some(comment) = payload.get("comment").filter(|c| c.is_object()) else {
                return Verdict::Ignore("comment event without a comment".into());
            };
            if comment.get("author").is_some_and(|a| is_bot_user(a, jira)) {
                return Verdict::Ignore("comment written by the bot".into());
            }
            let body = comment.get("body").unwrap_or(&Value::Null);
            // Checked before the mention: `[~bot] drafter approve` mentions the bot but asks for no new job.
            if approval_in_body(body, jira) {
                return Verdict::Ignore(
                    "comment is the approval command (drafter approve), not a trigger".into(),
                );
            }
            if !mentions_bot(body, jira) {
                return Verdict::Ignore("comment does not mention the bot".into());
            }
            let delivery = comment
                .get("id")
                .and_then(id_string)
                .map(|id| format!("comment:{id}"))
                .unwrap_or_else(fallback_key);
            let text = cap_text(&adf_to_markdown(body));
            job(
                delivery,
                comment.get("author").and_then(user_id),
                (!text.is_empty()).then_some(text),
            )
        }
        "" => Verdict::Ignore("payload has no webhookEvent".into()),
        _ => Verdict::Ignore(format!("event {event_name} is not a trigger")),
    }
}

/// How a webhook payload names its issue, to check the unsigned `?issue=` hint against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadIssue {
    /// `issue.key`.
    Key(String),
    /// Only an issue id: `issue.id`, or the one in `comment.self` (`.../issue/<id>/comment/<id>`, as Data Center
    /// comment payloads carry it).
    Id(String),
    /// Nothing: only the hint can say.
    Unnamed,
}

/// What the (signed) payload says its issue is; see [`PayloadIssue`].
pub fn payload_issue(payload: &Value) -> PayloadIssue {
    if let Some(Value::String(k)) = payload.pointer("/issue/key") {
        return PayloadIssue::Key(k.clone());
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(id) = payload
        .pointer("/issue/id")
        .and_then(id_string)
        .filter(|id| digits(id))
    {
        return PayloadIssue::Id(id);
    }
    let from_self = payload
        .pointer("/comment/self")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| {
            let segs: Vec<String> = u.path_segments()?.map(str::to_string).collect();
            let at = segs.iter().rposition(|s| s == "issue")?;
            segs.get(at + 1).filter(|id| digits(id)).cloned()
        });
    match from_self {
        Some(id) => PayloadIssue::Id(id),
        None => PayloadIssue::Unnamed,
    }
}

/// The ticket key and project: `issue.key` when present (it must be valid), else the URL hint.
pub(super) fn issue_key(payload: &Value, hint: Option<&str>) -> Result<(String, String), String> {
    let key = match payload.pointer("/issue/key") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("issue.key is not a string".into()),
        None => match hint {
            Some(h) => h,
            None => {
                return Err(
                    "payload names no issue (on Data Center, add ?issue=${issue.key} to the webhook URL)"
                        .into(),
                )
            }
        },
    };
    match project_of(key) {
        Some(project) => Ok((key.to_string(), project.to_string())),
        None => Err(format!("{:?} is not a valid issue key", cap_chars(key, 40))),
    }
}

pub(super) fn is_assignee_item(item: &Value) -> bool {
    let named = |k: &str| item.get(k).and_then(Value::as_str) == Some("assignee");
    named("fieldId") || named("field")
}

/// Whether a changelog item sets the assignee to the bot: Cloud `to`/`tmpToAccountId` is the account id; Data Center
/// `to` is the user key (configured as `bot_account_id`) or, on old versions, the user name.
pub(super) fn assigns_bot(item: &Value, jira: &JiraConfig) -> bool {
    if !is_assignee_item(item) {
        return false;
    }
    let s = |k: &str| {
        item.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let is_id = |v: Option<&str>| v.is_some_and(|v| v == jira.bot_account_id);
    let is_name = |v: Option<&str>| {
        v.zip(jira.bot_username.as_deref())
            .is_some_and(|(v, n)| v.eq_ignore_ascii_case(n))
    };
    is_id(s("to")) || is_id(s("tmpToAccountId")) || is_name(s("to"))
}
