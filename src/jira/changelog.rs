//! Who assigned an issue to the bot, from its change history (Cloud's paged `changelog`, Data Center's
//! `expand=changelog`), so a job found by the JQL poll knows who triggered it.

use serde_json::Value;

use super::paging::{LastPage, Paged, Want};
use super::{cap_chars, check_key, clean_text, JiraClient, JiraError, MAX_NOTICE_FIELD_CHARS};

/// Pages of an issue's change history [`JiraClient::assigned_by`] reads on Cloud before giving up (100 x 100 entries).
const MAX_CHANGELOG_PAGES: usize = 100;

impl JiraClient {
    /// Who most recently assigned issue `key` to `assignee` (the bot), from the issue's change history: the
    /// author's `accountId` on Cloud, its user name (else key) on Data Center; `None` when no history entry
    /// assigns the issue to `assignee` (e.g. it was created already assigned) or the last one has no author.
    ///
    /// `assignee` is compared with each assignee item's `to` (and Cloud's `tmpToAccountId`): the account id on
    /// Cloud, the user key (or, on old versions, the name) on Data Center, there case-insensitively. See
    /// [`JiraClient::assigned_by_any`] to accept either of the bot's key and name.
    ///
    /// Cloud: `GET /rest/api/3/issue/{key}/changelog?startAt=N&maxResults=100`, every page (`isLast`, `values[]`
    /// oldest first). Data Center: `GET /rest/api/2/issue/{key}?fields=assignee&expand=changelog`
    /// (`changelog.histories[]`).
    pub async fn assigned_by(
        &self,
        key: &str,
        assignee: &str,
    ) -> Result<Option<String>, JiraError> {
        self.assigned_by_any(key, &[assignee]).await
    }

    /// [`JiraClient::assigned_by`] for an assignee known by several identifiers (a Data Center user's key and name).
    /// Empty identifiers are ignored.
    pub async fn assigned_by_any(
        &self,
        key: &str,
        assignees: &[&str],
    ) -> Result<Option<String>, JiraError> {
        check_key(key)?;
        let assignees: Vec<&str> = assignees
            .iter()
            .copied()
            .filter(|a| !a.is_empty())
            .collect();
        let dc = self.dialect.is_datacenter();
        let histories = if dc {
            self.changelog_dc(key).await?
        } else {
            self.changelog_cloud(key).await?
        };
        Ok(last_assignment_author(&histories, &assignees, dc))
    }

    /// Every change history entry of an issue on Cloud, in the order Jira lists them (oldest first).
    async fn changelog_cloud(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        let action = format!("reading the change history of issue {key}");
        let list = Paged {
            action: &action,
            key,
            path: format!("issue/{key}/changelog"),
            items: "values",
            what: "change history",
            end: LastPage::IsLastElseTotal,
            max_pages: MAX_CHANGELOG_PAGES,
        };
        let want = Want::All {
            noun: "change history entries",
        };
        self.paged(list, want).await
    }

    /// Every change history entry of an issue on Data Center (`expand=changelog` on the issue).
    async fn changelog_dc(&self, key: &str) -> Result<Vec<Value>, JiraError> {
        let action = format!("reading the change history of issue {key}");
        tracing::debug!(issue = key, "jira: GET issue with changelog");
        let v = self
            .issue_json(key, "fields=assignee&expand=changelog", &action)
            .await?;
        v.pointer("/changelog/histories")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| JiraError::InvalidResponse {
                action,
                message: "issue has no `changelog.histories` list".into(),
            })
    }
}

/// The author of the latest history entry that assigns the issue to one of `assignees`: by `created` when every
/// such entry has a readable date (ties: list order), else by list order (Jira lists oldest first). `None` when there
/// is no such entry, or the latest one has no usable author (an anonymous or system change is nobody's trigger; an
/// older entry's author is not substituted).
fn last_assignment_author(
    histories: &[Value],
    assignees: &[&str],
    case_insensitive: bool,
) -> Option<String> {
    let matches = |v: &str| {
        assignees.iter().any(|a| {
            if case_insensitive {
                v.eq_ignore_ascii_case(a)
            } else {
                v == *a
            }
        })
    };
    let assigns = |h: &Value| {
        h.get("items")
            .and_then(Value::as_array)
            .is_some_and(|items| {
                items.iter().any(|i| {
                    let named = |k: &str| i.get(k).and_then(Value::as_str) == Some("assignee");
                    (named("fieldId") || named("field"))
                        && ["to", "tmpToAccountId"]
                            .iter()
                            .any(|k| i.get(*k).and_then(Value::as_str).is_some_and(matches))
                })
            })
    };
    let hits: Vec<(usize, &Value)> = histories
        .iter()
        .enumerate()
        .filter(|(_, h)| assigns(h))
        .collect();
    let dates: Option<Vec<chrono::DateTime<chrono::FixedOffset>>> = hits
        .iter()
        .map(|(_, h)| {
            h.get("created")
                .and_then(Value::as_str)
                .and_then(parse_jira_time)
        })
        .collect();
    let latest = match dates {
        Some(dates) => hits
            .iter()
            .zip(dates)
            .max_by_key(|((pos, _), at)| (*at, *pos))
            .map(|((_, h), _)| *h),
        None => hits.last().map(|(_, h)| *h),
    }?;
    let author = latest.get("author")?;
    ["accountId", "name", "key"]
        .iter()
        .find_map(|k| {
            author
                .get(*k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(|s| cap_chars(&clean_text(s), MAX_NOTICE_FIELD_CHARS))
        .filter(|s| !s.is_empty())
}

/// Jira's timestamps: `2026-03-01T10:00:00.000+0000` (also with `Z` or `+00:00`).
fn parse_jira_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_assignment_is_by_date_then_list_order() {
        let entry = |id: &str, by: Value, created: &str, to: &str| {
            json!({"id": id, "author": by, "created": created,
                "items": [{"field": "assignee", "fieldtype": "jira", "fieldId": "assignee", "to": to}]})
        };
        let ann = json!({"accountId": "a"});
        let ben = json!({"accountId": "b"});
        // Listed newest first: the date decides.
        let h = [
            entry("3", ben.clone(), "2026-03-02T10:00:00.000+0000", "bot"),
            entry("2", ann.clone(), "2026-03-01T10:00:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("b")
        );
        // Offsets are honoured: 09:00-0200 is 11:00 UTC, after 10:30 UTC.
        let h = [
            entry("2", ann.clone(), "2026-03-01T09:00:00.000-0200", "bot"),
            entry("3", ben.clone(), "2026-03-01T10:30:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("a")
        );
        // An unreadable date: list order (Jira lists oldest first).
        let h = [
            entry("3", ben.clone(), "yesterday", "bot"),
            entry("2", ann.clone(), "2026-03-01T10:00:00.000+0000", "bot"),
        ];
        assert_eq!(
            last_assignment_author(&h, &["bot"], false).as_deref(),
            Some("a")
        );
        // Case: exact on Cloud, case-insensitive on Data Center; a Data Center author by name.
        let h = [entry(
            "1",
            json!({"name": "alice", "key": "JIRAUSER1"}),
            "2026-03-01T10:00:00.000+0000",
            "Drafter",
        )];
        assert_eq!(last_assignment_author(&h, &["drafter"], false), None);
        assert_eq!(
            last_assignment_author(&h, &["drafter"], true).as_deref(),
            Some("alice")
        );
        // Garbage never panics.
        let garbage = json!([1, null, {"items": "x"}, {"items": [{"field": "assignee", "to": 5}]}]);
        assert_eq!(
            last_assignment_author(garbage.as_array().unwrap(), &["bot"], false),
            None
        );
    }
}
