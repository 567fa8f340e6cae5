//! What a Jira comment says to the bot (for intake, and for leaving drafter's own and approval comments out of the
//! ticket text): whether it mentions the bot (wiki markup or ADF), whether a user object is the
//! bot, and whether a line of it is the approval command.

use serde_json::Value;

use crate::config::JiraConfig;

/// The approval command, matched case-insensitively on a line of its own (see [`approval_in_comment`]).
pub const APPROVE_COMMAND: &str = "drafter approve";
/// ADF nesting walked when looking for a mention.
const MAX_MENTION_DEPTH: usize = super::MAX_ADF_DEPTH;

/// Whether a comment body (a wiki-markup string, or an ADF document) contains the approval command, with only the
/// bot accepted as the leading mention. See [`approval_from_webhook`] for the exact rule.
pub fn approval_in_body(body: &Value, jira: &JiraConfig) -> bool {
    let bot = |target: &str| wiki_target_is_bot(target, jira);
    match body {
        Value::String(s) => text_has_approval(s, &bot, false),
        Value::Object(_) | Value::Array(_) => {
            let mut text = String::new();
            adf_command_text(body, 0, &mut text);
            text_has_approval(&text, &bot, false)
        }
        _ => false,
    }
}

/// Whether plain comment text (wiki markup, or Markdown as [`super::adf_to_markdown`] renders ADF) has a line that is the
/// approval command `drafter approve` (see [`approval_from_webhook`]). Without the Jira settings it cannot tell
/// whose mention leads the line, so it accepts one leading mention of anyone: `[~...]`, or an `@name` word as the
/// Markdown of an ADF mention has it (display names with spaces are not recognised: use [`approval_in_body`] on the
/// ADF itself for those).
pub fn approval_in_comment(body_text: &str) -> bool {
    text_has_approval(body_text, &|_| true, true)
}

/// The line rule over every line outside quote and code blocks. `mention_ok` judges a leading `[~target]`;
/// `at_mentions` also allows a leading `@word`.
pub fn text_has_approval(text: &str, mention_ok: &dyn Fn(&str) -> bool, at_mentions: bool) -> bool {
    // The block that is open, by its opening tag; its lines are quotations or code, not commands.
    let mut open: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            open = match open {
                Some("```") => None,
                None => Some("```"),
                other => other,
            };
            continue;
        }
        let lower = t.to_lowercase();
        let mut tagged = false;
        for tag in ["{quote}", "{code", "{noformat"] {
            let n = lower.matches(tag).count();
            tagged |= n > 0;
            if n % 2 == 1 {
                open = match open {
                    Some(o) if o == tag => None,
                    None => Some(tag),
                    other => other,
                };
            }
        }
        if open.is_none() && !tagged && approval_line(t, mention_ok, at_mentions) {
            return true;
        }
    }
    false
}

fn approval_line(line: &str, mention_ok: &dyn Fn(&str) -> bool, at_mentions: bool) -> bool {
    let mut rest = line.trim();
    if let Some(after) = rest.strip_prefix("[~") {
        let Some(end) = after.find(']') else {
            return false;
        };
        if !mention_ok(&after[..end]) {
            return false;
        }
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
    } else if let Some(after) = rest.strip_prefix('@').filter(|_| at_mentions) {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        rest = after[end..].trim_start();
        rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
    }
    let mut words = rest.split_whitespace();
    APPROVE_COMMAND
        .split_whitespace()
        .all(|c| words.next().is_some_and(|w| w.eq_ignore_ascii_case(c)))
        && words.next().is_none()
}

/// The text of an ADF body as lines for [`text_has_approval`]: text nodes as they are, a mention as
/// `[~accountid:<id>]`, other inline nodes as a placeholder (so a line with them is never the bare command), one
/// line per block and per hard break; quotes and code blocks left out.
pub fn adf_command_text(node: &Value, depth: usize, out: &mut String) {
    if depth > MAX_MENTION_DEPTH {
        return;
    }
    match node {
        Value::Array(nodes) => {
            for n in nodes {
                adf_command_text(n, depth + 1, out);
            }
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => {
                if let Some(t) = o.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
            "mention" => {
                let id = node
                    .pointer("/attrs/id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // A `]` in an id would end the mention early; such an id is never the bot's anyway.
                out.push_str(&format!("[~accountid:{}]", id.replace(']', "")));
            }
            "hardBreak" => out.push('\n'),
            "codeBlock" | "blockquote" => out.push('\n'),
            t if INLINE_NODE_TYPES.contains(&t) => out.push('\u{fffc}'),
            _ => {
                // A block: its own lines.
                out.push('\n');
                if let Some(c) = o.get("content") {
                    adf_command_text(c, depth + 1, out);
                }
                out.push('\n');
            }
        },
        _ => {}
    }
}

/// Inline ADF nodes other than text, mentions and hard breaks.
const INLINE_NODE_TYPES: &[&str] = &[
    "emoji",
    "date",
    "status",
    "inlineCard",
    "mediaInline",
    "placeholder",
    "inlineExtension",
];

/// Whether a user object (`assignee`, `author`, `user`) is the bot: Cloud `accountId`; Data Center `key` or `name`.
pub fn is_bot_user(user: &Value, jira: &JiraConfig) -> bool {
    let s = |k: &str| {
        user.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    if s("accountId").is_some_and(|v| v == jira.bot_account_id)
        || s("key").is_some_and(|v| v == jira.bot_account_id)
    {
        return true;
    }
    // Data Center user names are case-insensitive.
    s("name").is_some_and(|n| {
        n.eq_ignore_ascii_case(&jira.bot_account_id)
            || jira
                .bot_username
                .as_deref()
                .is_some_and(|b| n.eq_ignore_ascii_case(b))
    })
}

/// Whether a comment body mentions the bot: a wiki-markup string (`[~accountid:<id>]` on Cloud webhooks,
/// `[~username]` on Data Center), or an ADF document with a `mention` node whose `attrs.id` is the bot.
pub fn mentions_bot(body: &Value, jira: &JiraConfig) -> bool {
    match body {
        Value::String(s) => wiki_mentions_bot(s, jira),
        Value::Object(_) | Value::Array(_) => adf_mentions_bot(body, jira, 0),
        _ => false,
    }
}

fn wiki_mentions_bot(text: &str, jira: &JiraConfig) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("[~") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(']') else {
            return false;
        };
        if wiki_target_is_bot(&after[..end], jira) {
            return true;
        }
        rest = &after[end..];
    }
    false
}

/// Whether the inside of a wiki mention `[~...]` names the bot: `accountid:<id>` (Cloud), or the bot's user name
/// (case-insensitive) or key (Data Center).
pub fn wiki_target_is_bot(target: &str, jira: &JiraConfig) -> bool {
    let target = target.trim();
    if target.is_empty() {
        return false;
    }
    let by_id = target
        .strip_prefix("accountid:")
        .or_else(|| target.strip_prefix("accountId:"))
        .map_or(target == jira.bot_account_id, |id| {
            id.trim() == jira.bot_account_id
        });
    let by_name = jira
        .bot_username
        .as_deref()
        .is_some_and(|n| target.eq_ignore_ascii_case(n));
    by_id || by_name
}

fn adf_mentions_bot(node: &Value, jira: &JiraConfig, depth: usize) -> bool {
    if depth > MAX_MENTION_DEPTH {
        return false;
    }
    match node {
        Value::Array(nodes) => nodes.iter().any(|n| adf_mentions_bot(n, jira, depth + 1)),
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("mention")
                && node
                    .pointer("/attrs/id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id == jira.bot_account_id)
            {
                return true;
            }
            o.get("content")
                .is_some_and(|c| adf_mentions_bot(c, jira, depth + 1))
        }
        _ => false,
    }
}
