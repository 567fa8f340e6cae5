//! The ticket as the model reads it ([`Ticket`]): built from Jira's issue JSON, with the comments that are ticket
//! text (not drafter's own, not approval commands, not restricted ones) and the acceptance-criteria fields.

use serde_json::Value;

use super::{
    adf_to_markdown, cap_chars, cap_markdown, cap_text, clean_text, mentions, project_of,
    valid_issue_key, Dialect, JiraClient, JiraError, Notice, MAX_NOTICE_FIELD_CHARS,
    MAX_NOTICE_TEXT_CHARS,
};

/// Comments given to the model at most: the newest ones.
pub const MAX_TICKET_COMMENTS: usize = 20;
/// One comment's Markdown past this (bytes) is cut, and the cut is said in the text.
pub const MAX_COMMENT_BYTES: usize = 4 * 1024;
/// All comments' Markdown together: older comments past this are left out (and counted).
pub const MAX_COMMENTS_TOTAL_BYTES: usize = 32 * 1024;
/// One acceptance-criteria field's Markdown past this (bytes) is cut, and the cut is said in the text.
pub const MAX_CRITERIA_BYTES: usize = 16 * 1024;
/// Linked issues and attachments listed at most (each).
pub const MAX_TICKET_LIST: usize = 50;

/// A Jira issue as drafter uses it. All text is untrusted ticket content. Serialised (canonically) for the digest
/// of what the job was given, which the run statement records.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ticket {
    /// The issue key as Jira answered it (it differs from the one asked for if the issue was moved).
    pub key: String,
    /// The project key, taken from [`Ticket::key`].
    pub project: String,
    /// The summary (title), control characters removed.
    pub summary: String,
    /// The description as Markdown, at most [`super::MAX_DESCRIPTION_BYTES`] plus a note when cut; empty when none.
    pub description: String,
    /// The reporter's display name, when Jira shows it.
    pub reporter: Option<String>,
    /// The issue's labels.
    pub labels: Vec<String>,
    /// The issue type's name (`Bug`, `Task`, ...), when Jira sent it.
    pub issue_type: Option<String>,
    /// `<base>/browse/<KEY>`.
    pub url: String,
    /// The newest comments people wrote, oldest first (newest last), at most [`MAX_TICKET_COMMENTS`] and
    /// [`MAX_COMMENTS_TOTAL_BYTES`]. Left out: drafter's own comments (by the bot account), `drafter approve`
    /// commands, and comments restricted to a group or role (or internal on a service desk).
    pub comments: Vec<TicketComment>,
    /// Comments not shown because of the caps: older ones. When the issue has more comments than Jira sent and
    /// drafter read, the unread ones count too, whoever wrote them.
    pub comments_left_out: u64,
    /// The configured acceptance-criteria fields that have a value, in configuration order.
    pub acceptance_criteria: Vec<FieldText>,
    /// Linked issues, at most [`MAX_TICKET_LIST`].
    pub links: Vec<IssueLink>,
    /// Attachments by name and size, at most [`MAX_TICKET_LIST`]. Never downloaded.
    pub attachments: Vec<Attachment>,
}

/// One comment of a [`Ticket`]. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TicketComment {
    /// The author's display name (their user name when Jira shows no display name).
    pub author: String,
    /// When it was written, as Jira says it (`2025-03-02T10:35:00.000+0000`).
    pub created: Option<String>,
    /// The body as Markdown (from ADF on Cloud, from wiki markup on Data Center), cut at [`MAX_COMMENT_BYTES`].
    pub body: String,
}

/// The text of one issue field (acceptance criteria). Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldText {
    /// The field id, as configured (`customfield_10042`).
    pub field: String,
    /// Its value as Markdown (from ADF, or from wiki markup on Data Center) or text (plain text, a selected option),
    /// cut at [`MAX_CRITERIA_BYTES`].
    pub text: String,
}

/// A link from the ticket to another issue, read from this side. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssueLink {
    /// How this ticket relates to the other: the link type's outward (`blocks`) or inward (`is blocked by`) text.
    pub relation: String,
    /// The other issue's key.
    pub key: String,
    /// The other issue's summary, when Jira sent it.
    pub summary: Option<String>,
}

/// An attachment of the ticket, listed only. Untrusted ticket content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// The file name.
    pub filename: String,
    /// Its size in bytes, when Jira said.
    pub size: Option<u64>,
    /// Its MIME type, when Jira said.
    pub mime_type: Option<String>,
}

impl JiraClient {
    /// Whether a comment belongs in the ticket given to the model: not the bot's own, not a `drafter approve`
    /// command (addressed to drafter, and posted after the approval request it answers, so it must not change what
    /// was approved), not restricted to a group or role, not internal on a service desk.
    pub(super) fn comment_is_ticket_text(&self, c: &Value) -> bool {
        let by_bot = c
            .get("author")
            .is_some_and(|a| mentions::is_bot_user(a, &self.cfg));
        // drafter's notices are recognised by their words too: the account that posts them may not be the
        // configured one, and treating a look-alike as a notice only hides it (from the model and the approval).
        let notice = c
            .get("body")
            .is_some_and(|b| Notice::is_notice_text(&self.dialect.markdown(b)));
        let by_bot = by_bot || notice;
        let restricted = c.get("visibility").is_some_and(|v| !v.is_null())
            || c.get("jsdPublic").and_then(Value::as_bool) == Some(false);
        let approval = c
            .get("body")
            .is_some_and(|b| mentions::approval_in_body(b, &self.cfg));
        !(by_bot || restricted || approval)
    }

    /// From comments newest first (`total` of them on the issue, some perhaps not read): the newest that fit the
    /// caps, oldest first, and how many were left out.
    pub(super) fn pick_comments<'a>(
        &self,
        newest_first: impl Iterator<Item = &'a Value>,
        total: u64,
    ) -> (Vec<TicketComment>, u64) {
        let (mut shown, mut bytes, mut read, mut dropped) = (Vec::new(), 0usize, 0u64, 0u64);
        for c in newest_first {
            read += 1;
            if !self.comment_is_ticket_text(c) {
                continue;
            }
            if shown.len() >= MAX_TICKET_COMMENTS || bytes >= MAX_COMMENTS_TOTAL_BYTES {
                dropped += 1;
                continue;
            }
            let body = match c.get("body") {
                None | Some(Value::Null) => String::new(),
                Some(b) => cap_text(self.dialect.markdown(b), MAX_COMMENT_BYTES, "comment"),
            };
            let author = c
                .get("author")
                .and_then(|a| {
                    ["displayName", "name"]
                        .iter()
                        .find_map(|k| a.get(*k).and_then(Value::as_str))
                })
                .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "(unknown)".to_string());
            let created = c
                .get("created")
                .and_then(Value::as_str)
                .map(|s| clean_text(&cap_chars(s, 40)));
            bytes += body.len();
            shown.push(TicketComment {
                author,
                created,
                body,
            });
        }
        shown.reverse();
        (shown, dropped + total.saturating_sub(read))
    }

    pub(super) fn ticket_from_json(
        &self,
        asked: &str,
        v: &Value,
        action: &str,
    ) -> Result<Ticket, JiraError> {
        let fields = v.get("fields").filter(|f| f.is_object()).ok_or_else(|| {
            JiraError::InvalidResponse {
                action: action.to_string(),
                message: "issue has no `fields` object".into(),
            }
        })?;
        // Jira answers with the current key when an issue was moved; trust it only if it is a key.
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| valid_issue_key(k))
            .unwrap_or(asked)
            .to_string();
        let project = project_of(&key).unwrap_or_default().to_string();
        let summary = fields
            .get("summary")
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_TEXT_CHARS)))
            .unwrap_or_default();
        let description = match fields.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(d) => cap_markdown(self.dialect.markdown(d)),
        };
        let reporter = fields
            .get("reporter")
            .and_then(|r| r.get("displayName"))
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
            .filter(|s| !s.is_empty());
        let labels = fields
            .get("labels")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
                    .filter(|s| !s.is_empty())
                    .take(100)
                    .collect()
            })
            .unwrap_or_default();
        let issue_type = fields
            .get("issuetype")
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
            .filter(|s| !s.is_empty());
        let acceptance_criteria = self
            .cfg
            .acceptance_criteria_fields
            .iter()
            .filter_map(|f| {
                let text = cap_text(
                    field_text(fields.get(f)?, self.dialect),
                    MAX_CRITERIA_BYTES,
                    "field",
                );
                (!text.trim().is_empty()).then(|| FieldText {
                    field: f.clone(),
                    text,
                })
            })
            .collect();
        let short = |v: Option<&Value>, max: usize| {
            v.and_then(Value::as_str)
                .map(|s| clean_text(&cap_chars(s, max)))
                .filter(|s| !s.trim().is_empty())
        };
        let links = fields
            .get("issuelinks")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                // The other issue is the link's outward one (this ticket `blocks` it) or its inward one.
                let (other, side) = match (l.get("outwardIssue"), l.get("inwardIssue")) {
                    (Some(o), _) if o.is_object() => (o, "outward"),
                    (_, Some(i)) if i.is_object() => (i, "inward"),
                    _ => return None,
                };
                let key = other
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| valid_issue_key(k))?;
                let ty = l.get("type");
                let relation = short(ty.and_then(|t| t.get(side)), 100)
                    .or_else(|| short(ty.and_then(|t| t.get("name")), 100))
                    .unwrap_or_else(|| "relates to".to_string());
                Some(IssueLink {
                    relation,
                    key: key.to_string(),
                    summary: short(other.get("fields").and_then(|f| f.get("summary")), 200),
                })
            })
            .take(MAX_TICKET_LIST)
            .collect();
        let attachments = fields
            .get("attachment")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| {
                Some(Attachment {
                    filename: short(a.get("filename"), MAX_NOTICE_FIELD_CHARS)?,
                    size: a.get("size").and_then(Value::as_u64),
                    mime_type: short(a.get("mimeType"), 100),
                })
            })
            .take(MAX_TICKET_LIST)
            .collect();
        Ok(Ticket {
            url: self.browse_url(&key),
            key,
            project,
            summary,
            description,
            reporter,
            labels,
            issue_type,
            comments: Vec::new(),
            comments_left_out: 0,
            acceptance_criteria,
            links,
            attachments,
        })
    }
}

/// An issue field's value as text: rich text as Markdown (ADF on Cloud, wiki markup on Data Center, per the
/// [`Dialect`]), plain strings as they are, a selected option by its value, a list one item per line.
fn field_text(v: &Value, dialect: Dialect) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(_) => dialect.markdown(v),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| field_text(i, dialect))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(o) => match (o.get("type"), o.get("value").or_else(|| o.get("name"))) {
            (Some(_), _) => adf_to_markdown(v),
            (None, Some(x)) if !x.is_object() => field_text(x, dialect),
            _ => adf_to_markdown(v),
        },
    }
}
