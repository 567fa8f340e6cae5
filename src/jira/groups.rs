//! Who people are, for the policy: the groups of a user and, on Data Center, the name and key they go by, cached per
//! account in a [`GroupCache`] shared by the client's clones; who the credential belongs to ([`JiraClient::whoami`])
//! and the bot identity learned from it ([`adopt_bot_identity`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cap_chars, clean_text, JiraClient, JiraError, MAX_NOTICE_FIELD_CHARS};
use crate::config::JiraConfig;

/// How long [`JiraClient::user_groups`] answers from its cache by default.
pub const DEFAULT_GROUP_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Users whose groups a [`GroupCache`] keeps at most; past this, expired entries are dropped, then all.
const MAX_GROUP_CACHE_ENTRIES: usize = 10_000;
/// Longest account id or user name accepted by [`JiraClient::user_groups`] (Cloud ids are at most 128 characters).
const MAX_ACCOUNT_CHARS: usize = 256;
/// Groups kept per user: a user in more is still answered, with the first ones only.
const MAX_GROUPS_PER_USER: usize = 1000;

/// Completes a Data Center bot identity from what `GET /rest/api/2/myself` says about the credential (`me`): a missing
/// `bot_username` becomes its name, and a `bot_account_id` that is only the name (the default when just
/// `bot_username` is configured) becomes its user key, which is what change history and assignment webhooks carry
/// (`JIRAUSER10100` for users made since Jira 8.4). Returns warnings for a configuration that names someone else;
/// it is then left as configured. Cloud configurations are not touched.
pub fn adopt_bot_identity(cfg: &mut JiraConfig, me: &JiraUser) -> Vec<String> {
    let mut warnings = Vec::new();
    if cfg.flavor != crate::config::JiraFlavor::Datacenter {
        return warnings;
    }
    let Some(name) = me.name.clone() else {
        warnings.push(
            "Jira's /myself answer has no user name; keeping the configured bot identity".into(),
        );
        return warnings;
    };
    match &cfg.bot_username {
        None => cfg.bot_username = Some(name.clone()),
        Some(u) if !u.eq_ignore_ascii_case(&name) => {
            warnings.push(format!(
                "jira.bot_username is {u:?}, but the credential belongs to {name:?}: drafter's comments are posted \
                 as {name:?} and tickets must be assigned to {u:?}"
            ));
            return warnings;
        }
        Some(_) => {}
    }
    if let Some(key) = &me.key {
        if cfg.bot_account_id.eq_ignore_ascii_case(&name) {
            cfg.bot_account_id = key.clone();
        } else if !cfg.bot_account_id.eq_ignore_ascii_case(key) {
            warnings.push(format!(
                "jira.bot_account_id is {:?}, but the bot's user key is {key:?}",
                cfg.bot_account_id
            ));
        }
    }
    warnings
}

impl JiraClient {
    /// The authenticated account's id (`GET <api>/myself`): its `accountId` on Cloud, its user key on Data Center.
    /// Lets a caller check that the configured bot account matches the credential.
    pub async fn myself(&self) -> Result<String, JiraError> {
        let me = self.whoami().await?;
        let id = if self.dialect.is_datacenter() {
            me.key.or(me.name)
        } else {
            me.account_id
        };
        id.ok_or_else(|| JiraError::InvalidResponse {
            action: "reading the bot account (myself)".into(),
            message: if self.dialect.is_datacenter() {
                "no key or name in the answer".into()
            } else {
                "no accountId in the answer".into()
            },
        })
    }

    /// Who the credential belongs to: `GET <api>/myself` (Cloud
    /// <https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-myself/#api-rest-api-3-myself-get>:
    /// `accountId`; Data Center
    /// <https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/myself-getUser>: `name` and `key`).
    pub async fn whoami(&self) -> Result<JiraUser, JiraError> {
        let action = "reading the bot account (myself)".to_string();
        let url = self.api_url("myself");
        let resp = self.send(self.http.get(url), &action, None).await?;
        let body = self.read_success(resp, &action).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| JiraError::InvalidResponse {
            action: action.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
        };
        Ok(JiraUser {
            account_id: field("accountId"),
            name: field("name"),
            key: field("key"),
            display_name: field("displayName"),
        })
    }

    /// The names of the groups `account` belongs to (nested groups included, as Jira reports them), at most
    /// 1000. Cloud: `GET /rest/api/3/user/groups?accountId=..` (an array of `{name, groupId, self}`). Data Center,
    /// where users are names: `GET /rest/api/2/user?username=..&expand=groups` (`groups.items[].name`); an account
    /// that is no user name but looks like a user key (`JIRAUSER10100`) is then looked up by `key=`.
    ///
    /// Answers come from the client's [`GroupCache`] while fresh (see [`JiraClient::with_group_ttl`]); concurrent
    /// calls for the same account wait for one request instead of each sending their own. A user Jira does not
    /// know (404) has no groups: `Ok(vec![])`, cached like any answer. Errors are not cached.
    pub async fn user_groups(&self, account: &str) -> Result<Vec<String>, JiraError> {
        Ok(self.user_info(account).await?.groups)
    }

    /// Every identifier `account` goes by, `account` first. On Data Center a person has a user name and a user key
    /// (`JIRAUSER10100` for users made since Jira 8.4, else the original name), and a policy may list either: both
    /// come from the same cached `GET /rest/api/2/user` answer as [`JiraClient::user_groups`]. On Cloud the account
    /// id is the only one, and no request is made.
    pub async fn identities(&self, account: &str) -> Result<Vec<String>, JiraError> {
        check_account(account)?;
        let mut ids = vec![account.to_string()];
        if self.dialect.is_datacenter() {
            for id in self.user_info(account).await?.ids {
                if !ids.iter().any(|known| self.dialect.same_user(known, &id)) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// What Jira says about `account`, from the cache while fresh.
    async fn user_info(&self, account: &str) -> Result<UserInfo, JiraError> {
        check_account(account)?;
        let slot = self.groups.slot(account);
        // Held across the request: a burst of jobs by one user makes one request, the others wait for its answer.
        let mut entry = slot.lock().await;
        if let Some((at, info)) = entry.as_ref() {
            if at.elapsed() < self.groups.ttl {
                return Ok(info.clone());
            }
        }
        let info = self.fetch_user(account).await?;
        *entry = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn fetch_user(&self, account: &str) -> Result<UserInfo, JiraError> {
        if !self.dialect.is_datacenter() {
            let list = self
                .get_user_resource("user/groups", &[("accountId", account)])
                .await?;
            let Some(v) = list else {
                // An unknown (or deleted) user is a member of nothing.
                return Ok(UserInfo::default());
            };
            let groups = v.as_array().ok_or_else(|| JiraError::InvalidResponse {
                action: "reading a user's groups".into(),
                message: "expected an array of groups".into(),
            })?;
            return Ok(UserInfo {
                ids: Vec::new(),
                groups: group_names(groups),
            });
        }
        let mut user = self
            .get_user_resource("user", &[("username", account), ("expand", "groups")])
            .await?;
        if user.is_none() && looks_like_user_key(account) {
            user = self
                .get_user_resource("user", &[("key", account), ("expand", "groups")])
                .await?;
        }
        let Some(v) = user else {
            return Ok(UserInfo::default());
        };
        let groups = v
            .pointer("/groups/items")
            .and_then(Value::as_array)
            .ok_or_else(|| JiraError::InvalidResponse {
                action: "reading a user's groups".into(),
                message: "the user has no `groups.items` list".into(),
            })?;
        Ok(UserInfo {
            ids: self
                .dialect
                .user_ids(&v)
                .into_iter()
                .map(|s| clean_text(&cap_chars(s, MAX_ACCOUNT_CHARS)))
                .collect(),
            groups: group_names(groups),
        })
    }

    /// `GET <api>/<path>?<query>` for a user resource; `None` when Jira does not know the user (404).
    async fn get_user_resource(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, JiraError> {
        let action = "reading a user's groups".to_string();
        let mut url = url::Url::parse(&self.api_url(path))
            .map_err(|e| JiraError::Config(format!("jira.base_url: {e}")))?;
        // The account comes from a webhook or the policy: only ever a query value, encoded.
        url.query_pairs_mut().extend_pairs(query);
        tracing::debug!(flavor = ?self.dialect.flavor(), path, "jira: GET user");
        let resp = match self.send(self.http.get(url), &action, None).await {
            Ok(r) => r,
            Err(JiraError::Rejected { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = self.read_success(resp, &action).await?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| JiraError::InvalidResponse {
                action,
                message: format!("not valid JSON: {e}"),
            })
    }
}

/// Group memberships by account, each kept for a TTL. Shared (in an `Arc`) by the clones of a [`JiraClient`], and
/// by several clients if given to [`JiraClient::with_group_cache`].
pub struct GroupCache {
    ttl: Duration,
    /// One slot per account; the async lock lets one request fill it while others wait.
    entries: Mutex<HashMap<String, Arc<GroupSlot>>>,
}

type GroupSlot = tokio::sync::Mutex<Option<(Instant, UserInfo)>>;

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCache")
            .field("ttl", &self.ttl)
            .field("accounts", &self.len())
            .finish()
    }
}

impl GroupCache {
    /// An empty cache whose answers live `ttl` (zero: every call asks Jira).
    pub fn new(ttl: Duration) -> GroupCache {
        GroupCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets every answer (e.g. after the policy's groups changed).
    pub fn clear(&self) {
        self.map().clear();
    }

    /// Accounts with a slot (answered, or being asked).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<GroupSlot>>> {
        // The map holds no invariant a panic could break: keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `account`, created if needed. A full map first drops slots nobody is using whose answer is
    /// stale or missing, then, if still full, every unused slot.
    fn slot(&self, account: &str) -> Arc<GroupSlot> {
        let mut map = self.map();
        if let Some(s) = map.get(account) {
            return s.clone();
        }
        if map.len() >= MAX_GROUP_CACHE_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock()
                        .map(|e| e.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl))
                        .unwrap_or(true)
            });
            if map.len() >= MAX_GROUP_CACHE_ENTRIES {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
        }
        map.entry(account.to_string()).or_default().clone()
    }
}

/// What Jira says about one user (see [`JiraClient::identities`], [`JiraClient::user_groups`]).
#[derive(Debug, Clone, Default)]
struct UserInfo {
    /// The identifiers the user goes by besides the one asked for: Data Center's name and key.
    ids: Vec<String>,
    /// The user's group names.
    groups: Vec<String>,
}

/// Who a credential belongs to ([`JiraClient::whoami`]). Each field is what the site sent, when it sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JiraUser {
    /// Cloud's `accountId`.
    pub account_id: Option<String>,
    /// Data Center's user name (what `[~name]` mentions and JQL use).
    pub name: Option<String>,
    /// Data Center's user key (what change history `to` values hold).
    pub key: Option<String>,
    /// The name shown to people.
    pub display_name: Option<String>,
}

/// Group names from a list of `{name, ...}` objects: cleaned, capped, at most [`MAX_GROUPS_PER_USER`].
fn group_names(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|g| g.get("name").and_then(Value::as_str))
        .map(|n| clean_text(&cap_chars(n, MAX_NOTICE_FIELD_CHARS)))
        .filter(|n| !n.is_empty())
        .take(MAX_GROUPS_PER_USER)
        .collect()
}

/// Whether a Data Center identifier looks like a generated user key (`JIRAUSER10100`, since Jira 8.4), which no
/// user-name lookup finds.
fn looks_like_user_key(account: &str) -> bool {
    match (account.get(..8), account.get(8..)) {
        (Some(prefix), Some(number)) => {
            prefix.eq_ignore_ascii_case("JIRAUSER")
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

fn check_account(account: &str) -> Result<(), JiraError> {
    if account.is_empty()
        || account.chars().count() > MAX_ACCOUNT_CHARS
        || account.chars().any(char::is_control)
    {
        return Err(JiraError::InvalidAccount(cap_chars(
            &clean_text(account),
            64,
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JiraAuth;

    #[test]
    fn data_center_bot_identity_is_learned_from_myself() {
        use crate::config::{JiraFlavor, Secret};
        let dc = |account: &str, username: Option<&str>| JiraConfig {
            base_url: "https://jira.example.com".into(),
            bot_account_id: account.into(),
            bot_username: username.map(str::to_string),
            flavor: JiraFlavor::Datacenter,
            auth: JiraAuth::Bearer {
                token: Secret::new("pat").into(),
            },
            acceptance_criteria_fields: Vec::new(),
        };
        let me = JiraUser {
            name: Some("drafter-bot".into()),
            key: Some("JIRAUSER10100".into()),
            ..JiraUser::default()
        };
        // Only the name configured (the key defaulted to it): the key is learned.
        let mut c = dc("drafter-bot", Some("drafter-bot"));
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_account_id, "JIRAUSER10100");
        // Only the key configured: the name is learned.
        let mut c = dc("JIRAUSER10100", None);
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_username.as_deref(), Some("drafter-bot"));
        // A credential of someone else: warned, nothing changed.
        let mut c = dc("other", Some("other"));
        let w = adopt_bot_identity(&mut c, &me);
        assert!(w[0].contains("belongs to \"drafter-bot\""), "{w:?}");
        assert_eq!(c.bot_account_id, "other");
        // A configured key that is not the bot's: warned, kept.
        let mut c = dc("JIRAUSER1", Some("drafter-bot"));
        assert_eq!(adopt_bot_identity(&mut c, &me).len(), 1);
        assert_eq!(c.bot_account_id, "JIRAUSER1");
        // Cloud is left alone.
        let mut c = dc("712020:x", None);
        c.flavor = JiraFlavor::Cloud;
        assert!(adopt_bot_identity(&mut c, &me).is_empty());
        assert_eq!(c.bot_username, None);
    }
}
