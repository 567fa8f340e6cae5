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
//!   (and `-doTransition`). `GET` lists the transitions open from the issue's status, each with its `to` status
//!   (`name`, `statusCategory{key,name}`; Cloud adds flags such as `isAvailable` and `isLooped`, Data Center has
//!   none of them); `POST {"transition":{"id":..}}` applies one (204), or answers 400 with
//!   `{"errorMessages":[],"errors":{"<field>":".."}}` when the transition's screen requires a field. Where the issue
//!   is comes from `GET <api>/issue/{key}?fields=status` (`fields.status`, the same status object).

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
    /// The link's `globalId`: `drafter:<repo>#<number>`, so posting it again updates the one link. The repository
    /// is in lower case: GitHub's names ignore case, and a webhook spells them as GitHub does, not as the policy.
    pub fn global_id(&self) -> String {
        format!("drafter:{}#{}", self.repo.to_ascii_lowercase(), self.number)
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

/// A workflow status as Jira describes it (an issue's `fields.status`, a transition's `to`): `{self, description,
/// iconUrl, name, id, statusCategory:{self, id, key, colorName, name}}`. Only the name and the category are read;
/// whatever is missing reads as empty (and then matches nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Its name (`In Review`).
    pub name: String,
    /// Its category's key (`new`, `indeterminate`, `done`).
    pub category_key: String,
    /// Its category's name (`To Do`, `In Progress`, `Done`).
    pub category_name: String,
}

impl Status {
    fn from_json(v: &Value) -> Status {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Status {
            name: s(&v["name"]),
            category_key: s(&v["statusCategory"]["key"]),
            category_name: s(&v["statusCategory"]["name"]),
        }
    }

    /// Whether `target` is this status's name.
    fn is_named(&self, target: &str) -> bool {
        same(&self.name, target)
    }

    /// Whether `target` is this status's category, by key or by name.
    fn is_in(&self, target: &str) -> bool {
        same(&self.category_key, target) || same(&self.category_name, target)
    }
}

/// Whether a status text is `target`, ignoring case (any script: status names are the site's language) and the
/// spaces around either; an empty text is nothing.
fn same(text: &str, target: &str) -> bool {
    let (text, target) = (text.trim(), target.trim());
    !text.is_empty() && (text == target || text.to_lowercase() == target.to_lowercase())
}

/// One transition the workflow offers from the issue's current status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Its id (differs per workflow).
    pub id: String,
    /// Its own name (`Start progress`).
    pub name: String,
    /// The status it leads to.
    pub to: Status,
}

impl Transition {
    /// A transition of the listing; `None` without an `id` or a `to`, or when Jira says it is not available
    /// (`isAvailable: false`, listed only on request). The other flags (`hasScreen`, `isGlobal`, `isLooped` ...)
    /// are Cloud's alone and not needed: Data Center lists none of them.
    fn from_json(v: &Value) -> Option<Transition> {
        if v.get("isAvailable").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        let id = match v.get("id")? {
            Value::String(id) if !id.is_empty() => id.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(Transition {
            id,
            name: v["name"].as_str().unwrap_or_default().to_string(),
            to: Status::from_json(v.get("to").filter(|to| to.is_object())?),
        })
    }
}

/// What reaching a target status takes ([`plan_transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan<'a> {
    /// The issue is there already.
    Stay,
    /// This transition leads there.
    Take(&'a Transition),
    /// The workflow offers no way there from where the issue is.
    NoWay,
}

/// How issue in status `current` (when known) reaches `target`, a status name or a status category's key or name,
/// all ignoring case. A name goes first: the issue in a status of that name stays, else the first transition to
/// such a status is taken. Then the category, likewise: an issue already in a status of the category stays (a
/// retried job, a review iteration, or a person who moved it first), else the first transition into the category is
/// taken. So a transition that loops back to the issue's own status (`isLooped`) is never taken.
pub fn plan_transition<'a>(
    current: Option<&Status>,
    offered: &'a [Transition],
    target: &str,
) -> Plan<'a> {
    if current.is_some_and(|c| c.is_named(target)) {
        return Plan::Stay;
    }
    if let Some(t) = offered.iter().find(|t| t.to.is_named(target)) {
        return Plan::Take(t);
    }
    if current.is_some_and(|c| c.is_in(target)) {
        return Plan::Stay;
    }
    match offered.iter().find(|t| t.to.is_in(target)) {
        Some(t) => Plan::Take(t),
        None => Plan::NoWay,
    }
}

/// What [`JiraClient::transition_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Applied the transition leading to this status.
    Applied {
        /// The status the issue is in now.
        status: String,
    },
    /// The issue is in the target status (or its category) already; nothing was done.
    Already {
        /// The status it is in.
        status: String,
    },
    /// The workflow offers no transition to the target from where the issue is; nothing was done.
    NoSuchTransition {
        /// The status the issue is in (empty when Jira did not say).
        from: String,
        /// The statuses it does offer. None at all is what Jira answers a bot without the *Transition issues*
        /// permission, as well as for an issue in a status with no way out.
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
        // Jira echoes the link's id and self URL (201 new, 200 updated); drafter does not need them.
        let _ = self.read_success(resp, &action).await;
        Ok(())
    }

    /// Issue `key`'s status: `GET <api>/issue/{key}?fields=status` (`fields.status`); `None` when the answer has
    /// none.
    pub async fn status(&self, key: &str) -> Result<Option<Status>, JiraError> {
        check_key(key)?;
        let action = format!("reading the status of issue {key}");
        let v = self.issue_json(key, "fields=status", &action).await?;
        Ok(v["fields"]
            .get("status")
            .filter(|s| s.is_object())
            .map(Status::from_json))
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

    /// Moves issue `key` to `target` (a status name or category, see [`plan_transition`]) unless it is there
    /// already, when its workflow offers such a transition: `POST <api>/issue/{key}/transitions
    /// {"transition":{"id":..}}` (204).
    pub async fn transition_to(&self, key: &str, target: &str) -> Result<Moved, JiraError> {
        let current = self.status(key).await?;
        let offered = self.transitions(key).await?;
        let t = match plan_transition(current.as_ref(), &offered, target) {
            Plan::Stay => {
                return Ok(Moved::Already {
                    status: current.map(|c| c.name).unwrap_or_default(),
                })
            }
            Plan::NoWay => {
                return Ok(Moved::NoSuchTransition {
                    from: current.map(|c| c.name).unwrap_or_default(),
                    offered: offered.into_iter().map(|t| t.to.name).collect(),
                })
            }
            Plan::Take(t) => t,
        };
        let action = format!("moving issue {key} to {}", t.to.name);
        let url = self.api_url(&format!("issue/{key}/transitions"));
        let body = json!({"transition": {"id": t.id}});
        let resp = self
            .send(self.http.post(url).json(&body), &action, Some(key))
            .await?;
        let _ = self.read_success(resp, &action).await;
        Ok(Moved::Applied {
            status: t.to.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, key: &str, cat: &str) -> Status {
        Status {
            name: name.into(),
            category_key: key.into(),
            category_name: cat.into(),
        }
    }

    fn t(id: &str, to: &str, key: &str, cat: &str) -> Transition {
        Transition {
            id: id.into(),
            name: format!("to {to}"),
            to: status(to, key, cat),
        }
    }

    fn taken(plan: Plan<'_>) -> Option<&str> {
        match plan {
            Plan::Take(t) => Some(&t.id),
            _ => None,
        }
    }

    #[test]
    fn transitions_match_by_status_name_then_category() {
        let offered = [
            t("11", "Selected", "new", "To Do"),
            t("21", "Doing", "indeterminate", "In Progress"),
            t("31", "In Review", "indeterminate", "In Progress"),
        ];
        let plan = |target| plan_transition(None, &offered, target);
        assert_eq!(taken(plan("in review")), Some("31"));
        assert_eq!(taken(plan("indeterminate")), Some("21"));
        assert_eq!(taken(plan(" In Progress ")), Some("21"));
        assert_eq!(plan("Done"), Plan::NoWay);
        assert_eq!(plan_transition(None, &[], "Done"), Plan::NoWay);
        // Status names are in the site's language: case is ignored beyond ASCII too.
        let german = [t("51", "Überprüfung", "indeterminate", "In Arbeit")];
        assert_eq!(
            taken(plan_transition(None, &german, "ÜBERPRÜFUNG")),
            Some("51")
        );
    }

    #[test]
    fn an_issue_already_there_stays() {
        let offered = [
            t("21", "In Progress", "indeterminate", "In Progress"),
            // A looped transition back to the issue's own status (`isLooped`).
            t("931", "In Review", "indeterminate", "In Progress"),
            t("41", "Done", "done", "Done"),
        ];
        let in_review = status("In Review", "indeterminate", "In Progress");
        let plan = |target| plan_transition(Some(&in_review), &offered, target);
        assert_eq!(plan("IN REVIEW"), Plan::Stay);
        assert_eq!(plan("indeterminate"), Plan::Stay);
        // A status name wins over a category: "In Progress" is a status of its own.
        assert_eq!(taken(plan("In Progress")), Some("21"));
        assert_eq!(taken(plan("done")), Some("41"));
        assert_eq!(plan("Blocked"), Plan::NoWay);
        // An unknown status (no `fields.status`) matches nothing.
        assert_eq!(
            plan_transition(Some(&Status::default()), &offered, "in review"),
            Plan::Take(&offered[1])
        );
    }

    #[test]
    fn transitions_are_read_in_both_products_shapes() {
        // Cloud, shaped like the documented example
        // (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-transitions-get):
        // flags on each transition, a full `to` status with its category.
        let cloud = json!({"expand": "transitions", "transitions": [
            {"id": "2", "name": "Close Issue", "hasScreen": false, "isGlobal": false, "isInitial": false,
             "isAvailable": true, "isConditional": false, "isLooped": false,
             "to": {"self": "https://x.atlassian.net/rest/api/3/status/10000", "description": "",
                    "iconUrl": "https://x.atlassian.net/images/icons/progress.gif", "name": "In Progress",
                    "id": "10000", "statusCategory": {"self": "https://x.atlassian.net/rest/api/3/statuscategory/4",
                    "id": 4, "key": "indeterminate", "colorName": "yellow", "name": "In Progress"}}},
            {"id": "711", "name": "QA Review", "hasScreen": true, "isAvailable": false,
             "to": {"name": "Closed", "id": "5", "statusCategory": {"id": 3, "key": "done"}}}]});
        // Data Center (https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/issue-getTransitions):
        // none of the flags, `opsbarSequence`; an old site's status may have no category at all.
        let dc = json!({"expand": "transitions", "transitions": [
            {"id": "31", "name": "Review", "opsbarSequence": 10,
             "to": {"self": "https://jira.example/rest/api/2/status/3", "name": "In Review", "id": "3",
                    "statusCategory": {"id": 4, "key": "indeterminate", "colorName": "yellow"}}},
            {"id": 41, "name": "Old", "to": {"name": "Closed", "id": "6"}},
            {"id": "51", "name": "No status"},
            {"name": "No id", "to": {"name": "Done"}}]});
        let read = |v: &Value| -> Vec<Transition> {
            v["transitions"]
                .as_array()
                .map(|l| l.iter().filter_map(Transition::from_json).collect())
                .unwrap_or_default()
        };
        let cloud = read(&cloud);
        // Not available (listed only when asked for): left out.
        assert_eq!(cloud.len(), 1);
        assert_eq!(
            cloud[0].to,
            status("In Progress", "indeterminate", "In Progress")
        );
        let dc = read(&dc);
        let ids: Vec<&str> = dc.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["31", "41"]);
        assert_eq!(dc[0].to, status("In Review", "indeterminate", ""));
        assert_eq!(dc[1].to, status("Closed", "", ""));
        assert_eq!(
            taken(plan_transition(None, &dc, "indeterminate")),
            Some("31")
        );
        assert_eq!(taken(plan_transition(None, &dc, "closed")), Some("41"));
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
        let shouted = PrLink {
            repo: "Acme/Widgets".into(),
            ..link.clone()
        };
        assert_eq!(shouted.global_id(), link.global_id());
        assert_eq!(shouted.body()["object"]["title"], "Acme/Widgets#7");
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
