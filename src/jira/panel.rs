//! The ticket's development panel: the draft PR as a remote link (what Jira's own integrations show under "Web
//! links"/"Development"), and status transitions matched by name or category. Both calls have the same JSON on
//! Cloud (v3) and Data Center (v2): no rich text is involved, only the path's version differs ([`super::Dialect`]).
//!
//! References:
//! - Remote links, Cloud: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-remote-links/#api-rest-api-3-issue-issueidorkey-remotelink-post>;
//!   Data Center: <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue/{issueIdOrKey}/remotelink-createOrUpdateRemoteIssueLink>;
//!   the object's fields: <https://developer.atlassian.com/server/jira/platform/jira-rest-api-for-remote-issue-links/>.
//!   A POST with a `globalId` already on the issue updates that link instead of adding one (201 new, 200 updated).
//! - Transitions, Cloud: <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get>
//!   (and `-post`); Data Center: <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getTransitions>
//!   (and `-doTransition`). `GET` lists the transitions open from the status, each with its `to` status
//!   (`name`, `statusCategory{key,name}`); `POST {"transition":{"id":..}}` applies one (204).

use serde_json::{json, Value};

use super::{cap_chars, check_key, JiraClient, JiraError, MAX_NOTICE_FIELD_CHARS};

/// The icon Jira shows beside the link.
const GITHUB_ICON: &str = "https://github.com/favicon.ico";

/// Where a pull request stands, for the link's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrState {
    /// Open (drafter opens drafts).
    Open,
    /// Merged: the link shows as resolved.
    Merged,
    /// Closed without merging: also resolved (struck through in Jira).
    Closed,
}

impl PrState {
    fn title(self) -> &'static str {
        match self {
            PrState::Open => "Open",
            PrState::Merged => "Merged",
            PrState::Closed => "Closed",
        }
    }
}

/// A pull request as a remote link on its ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrLink {
    /// `owner/name`.
    pub repo: String,
    /// The PR's number.
    pub number: u64,
    /// Its web URL.
    pub url: String,
    /// Its title.
    pub title: String,
    /// Where it stands.
    pub state: PrState,
}

impl PrLink {
    /// The link's `globalId`: `drafter:<repo>#<number>`, so posting it again updates the one link.
    pub fn global_id(&self) -> String {
        format!("drafter:{}#{}", self.repo, self.number)
    }

    /// The remote link request body (the same on v2 and v3).
    pub fn body(&self) -> Value {
        let state = self.state;
        json!({
            "globalId": self.global_id(),
            "application": {"type": "com.github", "name": "GitHub"},
            "relationship": "Pull request",
            "object": {
                "url": self.url,
                "title": cap_chars(&format!("{}#{}", self.repo, self.number), MAX_NOTICE_FIELD_CHARS),
                "summary": cap_chars(&self.title, 255),
                "icon": {"url16x16": GITHUB_ICON, "title": "GitHub"},
                "status": {
                    "resolved": state != PrState::Open,
                    "icon": {"url16x16": GITHUB_ICON, "title": state.title(), "link": self.url},
                },
            },
        })
    }
}

/// One transition the workflow offers from the current status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Its id (differs per workflow).
    pub id: String,
    /// Its own name (`Start progress`).
    pub name: String,
    /// The status it leads to.
    pub to_name: String,
    /// That status's category key (`new`, `indeterminate`, `done`).
    pub to_category_key: String,
    /// That status's category name (`To Do`, `In Progress`, `Done`).
    pub to_category_name: String,
}

impl Transition {
    fn from_json(v: &Value) -> Option<Transition> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let id = match v.get("id")? {
            Value::String(id) => id.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let to = v.get("to")?;
        Some(Transition {
            id,
            name: s(&v["name"]),
            to_name: s(&to["name"]),
            to_category_key: s(&to["statusCategory"]["key"]),
            to_category_name: s(&to["statusCategory"]["name"]),
        })
    }
}

/// The transition to `target`: the first whose status name is `target` (ignoring case), else the first whose
/// status category key or name is.
pub fn pick_transition<'a>(offered: &'a [Transition], target: &str) -> Option<&'a Transition> {
    let target = target.trim();
    let is = |s: &str| !s.is_empty() && s.eq_ignore_ascii_case(target);
    offered.iter().find(|t| is(&t.to_name)).or_else(|| {
        offered
            .iter()
            .find(|t| is(&t.to_category_key) || is(&t.to_category_name))
    })
}

/// What [`JiraClient::transition_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Applied the transition leading to this status.
    Applied {
        /// The status the issue is in now.
        status: String,
    },
    /// The workflow offers no transition to the target from where the issue is; nothing was done.
    NoSuchTransition {
        /// The statuses it does offer.
        offered: Vec<String>,
    },
}

impl JiraClient {
    /// Links the PR to issue `key`, or updates the link (same `globalId`): `POST <api>/issue/{key}/remotelink`.
    pub async fn upsert_remote_link(&self, key: &str, link: &PrLink) -> Result<(), JiraError> {
        check_key(key)?;
        let action = format!("linking {} to issue {key}", link.global_id());
        let url = self.api_url(&format!("issue/{key}/remotelink"));
        let resp = self
            .send(self.http.post(url).json(&link.body()), &action, Some(key))
            .await?;
        // Jira echoes the link's id and self URL; drafter does not need them.
        let _ = self.read_success(resp, &action).await;
        Ok(())
    }

    /// The transitions open from issue `key`'s status: `GET <api>/issue/{key}/transitions`.
    pub async fn transitions(&self, key: &str) -> Result<Vec<Transition>, JiraError> {
        check_key(key)?;
        let action = format!("listing the transitions of issue {key}");
        let url = self.api_url(&format!("issue/{key}/transitions"));
        let resp = self.send(self.http.get(url), &action, Some(key)).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("transitions are not valid JSON: {e}"),
        })?;
        let list = v["transitions"]
            .as_array()
            .ok_or_else(|| JiraError::InvalidResponse {
                action,
                message: "no `transitions` list".into(),
            })?;
        Ok(list.iter().filter_map(Transition::from_json).collect())
    }

    /// Moves issue `key` to `target` (a status name or category, see [`pick_transition`]) when its workflow offers
    /// such a transition: `POST <api>/issue/{key}/transitions {"transition":{"id":..}}`.
    pub async fn transition_to(&self, key: &str, target: &str) -> Result<Moved, JiraError> {
        let offered = self.transitions(key).await?;
        let Some(t) = pick_transition(&offered, target) else {
            return Ok(Moved::NoSuchTransition {
                offered: offered.into_iter().map(|t| t.to_name).collect(),
            });
        };
        let action = format!("moving issue {key} to {}", t.to_name);
        let url = self.api_url(&format!("issue/{key}/transitions"));
        let body = json!({"transition": {"id": t.id}});
        let resp = self
            .send(self.http.post(url).json(&body), &action, Some(key))
            .await?;
        let _ = self.read_success(resp, &action).await;
        Ok(Moved::Applied {
            status: t.to_name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, to: &str, key: &str, cat: &str) -> Transition {
        Transition {
            id: id.into(),
            name: format!("to {to}"),
            to_name: to.into(),
            to_category_key: key.into(),
            to_category_name: cat.into(),
        }
    }

    #[test]
    fn transitions_match_by_status_name_then_category() {
        let offered = [
            t("11", "Selected", "new", "To Do"),
            t("21", "Doing", "indeterminate", "In Progress"),
            t("31", "In Review", "indeterminate", "In Progress"),
        ];
        assert_eq!(
            pick_transition(&offered, "in review").map(|t| &*t.id),
            Some("31")
        );
        assert_eq!(
            pick_transition(&offered, "indeterminate").map(|t| &*t.id),
            Some("21")
        );
        assert_eq!(
            pick_transition(&offered, " In Progress ").map(|t| &*t.id),
            Some("21")
        );
        assert_eq!(pick_transition(&offered, "Done"), None);
        assert_eq!(pick_transition(&[], "Done"), None);
        let v = json!({"id": "5", "name": "Start", "to": {"name": "Doing",
            "statusCategory": {"key": "indeterminate", "name": "In Progress"}}});
        assert_eq!(
            Transition::from_json(&v).map(|t| t.to_name),
            Some("Doing".into())
        );
        assert_eq!(Transition::from_json(&json!({"id": 5})), None);
    }

    #[test]
    fn a_link_is_keyed_by_the_pr_and_shows_its_state() {
        let mut link = PrLink {
            repo: "acme/widgets".into(),
            number: 7,
            url: "https://github.com/acme/widgets/pull/7".into(),
            title: "[DEMO-1] Greet".into(),
            state: PrState::Open,
        };
        let open = link.body();
        assert_eq!(open["globalId"], "drafter:acme/widgets#7");
        assert_eq!(open["object"]["url"], link.url.as_str());
        assert_eq!(open["object"]["title"], "acme/widgets#7");
        assert_eq!(open["object"]["summary"], "[DEMO-1] Greet");
        assert_eq!(open["object"]["icon"]["title"], "GitHub");
        assert_eq!(open["object"]["status"]["resolved"], false);
        link.state = PrState::Merged;
        let merged = link.body();
        assert_eq!(merged["globalId"], open["globalId"]);
        assert_eq!(merged["object"]["status"]["resolved"], true);
        assert_eq!(merged["object"]["status"]["icon"]["title"], "Merged");
        link.state = PrState::Closed;
        assert_eq!(link.body()["object"]["status"]["icon"]["title"], "Closed");
    }
}
