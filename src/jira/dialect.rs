//! The one place that knows Jira Cloud from Jira Data Center: which REST API a call goes to, what text bodies look
//! like in each direction, and how people are named. Every call of [`super::JiraClient`] builds its URL with
//! [`Dialect::path`] and its bodies with [`Dialect::notice_body`] / [`Dialect::markdown`]; nothing else in the
//! client compares flavors for these.
//!
//! | | Cloud | Data Center / Server |
//! |---|---|---|
//! | REST | `/rest/api/3` | `/rest/api/2` (v3 does not exist; `latest` is 2) |
//! | text in and out | ADF documents | wiki-markup strings |
//! | a person | `accountId` | `name` (case-insensitive) and `key` |
//! | search | `GET /search/jql`, `nextPageToken` | `GET /search`, `startAt`/`total` |
//! | a user's groups | `GET /user/groups?accountId=` | `GET /user?username=&expand=groups` |
//! | change history | `GET /issue/{key}/changelog`, paged | `GET /issue/{key}?expand=changelog` |
//!
//! References: Cloud <https://developer.atlassian.com/cloud/jira/platform/rest/v3/intro/>; Data Center
//! <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/> (issue, comment, myself, user, search) and
//! personal access tokens <https://confluence.atlassian.com/enterprise/using-personal-access-tokens-1026032365.html>.

use serde_json::Value;

use super::{adf_to_markdown, clean_text, wiki::wiki_to_markdown, JiraError, Notice};
use crate::config::JiraFlavor;

/// How a site writes rich text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// Atlassian Document Format (Cloud REST v3).
    Adf,
    /// Jira wiki markup (Data Center REST v2; also every Cloud webhook body).
    Wiki,
}

/// The REST version and text format of one Jira site (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    flavor: JiraFlavor,
}

impl Dialect {
    /// The dialect of a `jira.flavor`.
    pub fn new(flavor: JiraFlavor) -> Dialect {
        Dialect { flavor }
    }

    /// Cloud or Data Center.
    pub fn flavor(&self) -> JiraFlavor {
        self.flavor
    }

    /// Whether this is Data Center (or Server).
    pub fn is_datacenter(&self) -> bool {
        self.flavor == JiraFlavor::Datacenter
    }

    /// The REST API root: `/rest/api/3` on Cloud, `/rest/api/2` on Data Center.
    pub fn api(&self) -> &'static str {
        match self.flavor {
            JiraFlavor::Cloud => "/rest/api/3",
            JiraFlavor::Datacenter => "/rest/api/2",
        }
    }

    /// `<api>/<rest>`: e.g. `path("issue/DEMO-1/comment")` is `/rest/api/2/issue/DEMO-1/comment` on Data Center.
    pub fn path(&self, rest: &str) -> String {
        format!("{}/{}", self.api(), rest.trim_start_matches('/'))
    }

    /// The JQL search resource: Cloud's `search/jql` (the old `search` answers 410 there since 2025), Data
    /// Center's `search`.
    pub fn search_path(&self) -> String {
        match self.flavor {
            JiraFlavor::Cloud => self.path("search/jql"),
            JiraFlavor::Datacenter => self.path("search"),
        }
    }

    /// How the site writes rich text.
    pub fn text_format(&self) -> TextFormat {
        match self.flavor {
            JiraFlavor::Cloud => TextFormat::Adf,
            JiraFlavor::Datacenter => TextFormat::Wiki,
        }
    }

    /// A notice as a comment body for this site: an ADF document (Cloud) or a wiki-markup string (Data Center).
    pub fn notice_body(&self, notice: &Notice) -> Value {
        match self.text_format() {
            TextFormat::Adf => notice.to_adf(),
            TextFormat::Wiki => Value::String(notice.to_wiki()),
        }
    }

    /// Checks that a comment body is what the site accepts: Cloud's v3 answers 400 to anything but an ADF
    /// document; Data Center's v2 stores a string as wiki markup and refuses an object.
    pub fn check_body(&self, body: &Value) -> Result<(), JiraError> {
        match self.text_format() {
            TextFormat::Adf if body.get("type").and_then(Value::as_str) == Some("doc") => Ok(()),
            TextFormat::Adf => Err(JiraError::NotAdf),
            TextFormat::Wiki if body.is_string() => Ok(()),
            TextFormat::Wiki => Err(JiraError::NotWiki),
        }
    }

    /// Rich text the site's REST API sent, as Markdown: an ADF document is walked, and on Data Center a string is
    /// wiki markup. On Cloud a string (a plain-text field) is kept as it is: v3 sends rich text as ADF.
    pub fn markdown(&self, v: &Value) -> String {
        match (v, self.text_format()) {
            (Value::String(s), TextFormat::Wiki) => wiki_to_markdown(s),
            (Value::String(s), TextFormat::Adf) => clean_text(s).trim().to_string(),
            _ => adf_to_markdown(v),
        }
    }

    /// Whether two user identifiers name the same person without asking Jira: Cloud account ids exactly; Data
    /// Center user names and keys regardless of letter case (Jira treats them so).
    pub fn same_user(&self, a: &str, b: &str) -> bool {
        match self.flavor {
            JiraFlavor::Cloud => a == b,
            JiraFlavor::Datacenter => a.eq_ignore_ascii_case(b),
        }
    }

    /// A user object's identifiers as this site names people: `[accountId]` on Cloud; `[name, key]` on Data Center
    /// (either may be missing). Empty strings are left out.
    pub fn user_ids<'a>(&self, user: &'a Value) -> Vec<&'a str> {
        let fields: &[&str] = match self.flavor {
            JiraFlavor::Cloud => &["accountId"],
            JiraFlavor::Datacenter => &["name", "key"],
        };
        fields
            .iter()
            .filter_map(|f| user.get(*f).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_place_decides_version_and_format() {
        let cloud = Dialect::new(JiraFlavor::Cloud);
        let dc = Dialect::new(JiraFlavor::Datacenter);
        assert_eq!(cloud.path("issue/A-1"), "/rest/api/3/issue/A-1");
        assert_eq!(
            dc.path("/issue/A-1/comment"),
            "/rest/api/2/issue/A-1/comment"
        );
        assert_eq!(cloud.search_path(), "/rest/api/3/search/jql");
        assert_eq!(dc.search_path(), "/rest/api/2/search");

        let n = Notice::Started {
            job_id: "j1".into(),
            repo: "a/b".into(),
        };
        assert_eq!(cloud.notice_body(&n)["type"], "doc");
        assert!(cloud.check_body(&cloud.notice_body(&n)).is_ok());
        let wiki = dc.notice_body(&n);
        assert_eq!(
            wiki,
            json!("drafter started working on this (job {{j1}}), repository a/b. {{drafter:j1:started}}")
        );
        assert!(dc.check_body(&wiki).is_ok());
        assert!(matches!(cloud.check_body(&wiki), Err(JiraError::NotAdf)));
        assert!(matches!(
            dc.check_body(&cloud.notice_body(&n)),
            Err(JiraError::NotWiki)
        ));

        assert_eq!(dc.markdown(&json!("*bold* {{x}}")), "**bold** `x`");
        assert_eq!(cloud.markdown(&json!("*plain* text")), "*plain* text");
        let adf = json!({"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "b", "marks": [{"type": "strong"}]}]}]});
        assert_eq!(cloud.markdown(&adf), "**b**");
        assert_eq!(dc.markdown(&adf), "**b**");

        let u = json!({"accountId": "712020:a", "name": "ann", "key": "JIRAUSER1"});
        assert_eq!(cloud.user_ids(&u), ["712020:a"]);
        assert_eq!(dc.user_ids(&u), ["ann", "JIRAUSER1"]);
        assert!(dc.same_user("Ann", "ann"));
        assert!(!cloud.same_user("712020:A", "712020:a"));
    }
}
