//! Jira's offset paging, written once: the client asks `startAt=N&maxResults=100` and each answer carries `startAt`,
//! `maxResults`, `total`, the page's array and, on the newer `PageBean` endpoints (Cloud's change history), `isLast`.
//! An issue's comments (all of them, or the newest until enough) and Cloud's change history are read this way; the
//! lists differ only in the array's name, which field ends them, and what happens past the page cap.

use serde_json::Value;

use super::{JiraClient, JiraError};

/// Page size asked for by every paged read and by [`JiraClient::search`] (Jira's usual maximum).
pub(super) const PAGE_SIZE: usize = 100;

/// One list Jira hands out in `startAt`/`maxResults` pages.
pub(super) struct Paged<'a> {
    /// What the client is doing, for errors: "listing comments of issue PROJ-1".
    pub action: &'a str,
    /// The issue the list belongs to (validated by the caller): a 404 is its `NotFound`.
    pub key: &'a str,
    /// The request path under the REST root, with any query of its own (`issue/KEY/comment?orderBy=-created`);
    /// `startAt` and `maxResults` are added to it.
    pub path: String,
    /// The page's array: `values` (a `PageBean`), `comments`.
    pub items: &'static str,
    /// The list's name in errors: "change history", "comment list".
    pub what: &'static str,
    /// Which field of a page says it was the last.
    pub end: LastPage,
    /// Most pages read: a server that pages forever must not keep a worker busy.
    pub max_pages: usize,
}

impl<'a> Paged<'a> {
    /// An issue's comment list (`GET <api>/issue/{key}/comment`, `comments[]`, ended by `total`), with `query`
    /// (`?orderBy=-created`, or empty) and at most `max_pages` pages.
    pub(super) fn comments(action: &'a str, key: &'a str, query: &str, max_pages: usize) -> Self {
        Paged {
            action,
            key,
            path: format!("issue/{key}/comment{query}"),
            items: "comments",
            what: "comment list",
            end: LastPage::Total,
            max_pages,
        }
    }
}

/// How the last page is known; an empty page always ends the list (no endless loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastPage {
    /// `isLast` when the page has it (a `PageBean`), else `startAt + items >= total`, else this page.
    IsLastElseTotal,
    /// `startAt + items >= total`, a missing `total` counting as 0 (the comment list has no `isLast`).
    Total,
}

impl LastPage {
    /// Whether `page`, which held `got` items and brought the count read to `read`, was the last one.
    fn reached(self, page: &Value, got: u64, read: u64) -> bool {
        let last = page.get("isLast").and_then(Value::as_bool);
        let total = page.get("total").and_then(Value::as_u64);
        got == 0
            || match (self, last, total) {
                (LastPage::IsLastElseTotal, Some(l), _) => l,
                (LastPage::IsLastElseTotal, None, Some(t)) => read >= t,
                (LastPage::IsLastElseTotal, None, None) => true,
                (LastPage::Total, _, t) => read >= t.unwrap_or(0),
            }
    }
}

/// How much of a list is read.
pub(super) enum Want<'a> {
    /// All of it: a page without its array is an error, and so is a list longer than the cap
    /// ("more than 10000 `noun`; refusing to page further").
    All { noun: &'static str },
    /// Items until `enough(read so far)` is true, the list ends or the cap is reached, then what was read; a page
    /// without its array ends the list.
    Until(&'a (dyn Fn(&[Value]) -> bool + Sync)),
}

impl JiraClient {
    /// The items of `list`'s pages in the order Jira sends them, as much as `want` asks for. Raw and untrusted.
    pub(super) async fn paged(
        &self,
        list: Paged<'_>,
        want: Want<'_>,
    ) -> Result<Vec<Value>, JiraError> {
        let Paged {
            action,
            key,
            path,
            items,
            what,
            end,
            max_pages,
        } = list;
        let invalid = |message: String| JiraError::InvalidResponse {
            action: action.to_string(),
            message,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all: Vec<Value> = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..max_pages {
            // The caller validated the key in `path`; the numbers are ours.
            let url = self.api_url(&format!(
                "{path}{sep}startAt={start}&maxResults={PAGE_SIZE}"
            ));
            tracing::debug!(issue = key, start, list = what, "jira: GET page");
            let resp = self.send(self.http.get(url), action, Some(key)).await?;
            let body = self.read_success(resp, action).await?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))?;
            let page = match (v.get(items).and_then(Value::as_array), &want) {
                (Some(page), _) => page.as_slice(),
                (None, Want::All { .. }) => {
                    return Err(invalid(format!("{what} has no `{items}` array")))
                }
                (None, Want::Until(_)) => &[],
            };
            let got = page.len() as u64;
            all.extend(page.iter().cloned());
            start = start.saturating_add(got);
            let done =
                end.reached(&v, got, start) || matches!(&want, Want::Until(enough) if enough(&all));
            if done {
                return Ok(all);
            }
        }
        match want {
            Want::All { noun } => Err(invalid(format!(
                "more than {} {noun}; refusing to page further",
                max_pages * PAGE_SIZE
            ))),
            Want::Until(_) => Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LastPage::{IsLastElseTotal, Total};
    use serde_json::json;

    #[test]
    fn the_last_page_is_known_by_is_last_then_total() {
        // `isLast` decides where the page has it, whatever `total` says.
        let more = json!({"isLast": false, "total": 3});
        assert!(!IsLastElseTotal.reached(&more, 3, 3));
        assert!(IsLastElseTotal.reached(&json!({"isLast": true, "total": 9}), 3, 3));
        // Without it, `total`; without either, the page is the last.
        assert!(!IsLastElseTotal.reached(&json!({"total": 9}), 3, 3));
        assert!(IsLastElseTotal.reached(&json!({"total": 9}), 3, 9));
        assert!(IsLastElseTotal.reached(&json!({}), 3, 3));
        // The comment list goes by `total` alone, a missing one counting as 0.
        assert!(Total.reached(&more, 3, 3));
        assert!(!Total.reached(&json!({"isLast": true, "total": 9}), 3, 3));
        assert!(Total.reached(&json!({}), 3, 3));
        // An empty page ends any list: a server that keeps saying "more" cannot loop the client.
        assert!(IsLastElseTotal.reached(&json!({"isLast": false}), 0, 3));
        assert!(Total.reached(&json!({"total": 9}), 0, 3));
    }
}
