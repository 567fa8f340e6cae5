//! The can't-merge check (see the module docs of [`super`]): permissions, rulesets, classic branch protection and
//! the account's teams, failing closed.

use serde_json::Value;

use super::{encode_branch, split_repo, ForgeError, GitHub};

/// The token's role on a repository when it can change or bypass branch rules (`admin`, `maintain`), as
/// `GET /repos/{o}/{r}` reports it in `permissions`.
pub(super) fn rule_changing_role(perms: &octocrab::models::Permissions) -> Option<&'static str> {
    if perms.admin {
        Some("admin")
    } else if perms.maintain {
        Some("maintain")
    } else {
        None
    }
}

impl GitHub {
    /// Proves that the service account cannot merge into `base` of `repo` (`owner/name`) on its own, or refuses
    /// with [`ForgeError::CanMerge`]. See the module docs for what counts as proof. Never modifies anything.
    pub async fn check_cannot_merge(&self, repo: &str, base: &str) -> Result<(), ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let fix_rule = format!(
            "add a branch ruleset or protection rule on `{base}` requiring at least 1 approving review, \
             with the service account not in the bypass list"
        );

        // 1. The token's role: admin and maintain can change or bypass rules, so no rule can prove anything.
        let info = self.repository(repo).await?;
        let (role, push) = match (&self.app_permissions, info.permissions) {
            // An installation token is no user: the repository reports no role for it (no `permissions`, or one
            // without push, https://github.com/semantic-release/github/issues/182). Its rights are its grant
            // (https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app):
            // Administration: write changes rules, Contents: write pushes. A role reported anyway still counts.
            (Some(granted), reported) => {
                let admin = granted.get("administration").is_some_and(|v| v == "write");
                let role = if admin {
                    Some("admin (Administration: write)")
                } else {
                    reported.as_ref().and_then(rule_changing_role)
                };
                (role, granted.get("contents").is_some_and(|v| v == "write"))
            }
            (None, Some(perms)) => (rule_changing_role(&perms), perms.push),
            (None, None) => {
                return Err(ForgeError::CanMerge {
                    repo: repo.to_string(),
                    reason: "GitHub did not report the token's permissions on the repository, so its role is unknown"
                        .into(),
                    fix: "use a personal access token of a machine user (GitHub reports `permissions` for user tokens) \
                          with write (push) permission only"
                        .into(),
                })
            }
        };
        if let Some(role) = role {
            return Err(ForgeError::CanMerge {
                repo: repo.to_string(),
                reason: format!(
                    "the token has the `{role}` role, which can merge and can bypass or change branch rules"
                ),
                fix: "give the service account write (push) permission only".into(),
            });
        }
        if !push {
            return Err(ForgeError::CannotPush {
                repo: repo.to_string(),
            });
        }

        let branch = encode_branch(base);
        // What was found, and for each way it fell short, what the operator can change.
        let mut notes: Vec<String> = Vec::new();
        let mut fixes: Vec<String> = Vec::new();

        // 2. Rulesets (readable with Metadata: read).
        // https://docs.github.com/en/rest/repos/rules#get-rules-for-a-branch
        let what = format!("reading the rules for `{base}` in {repo}");
        match self
            .get_json(
                &format!("/repos/{owner}/{name}/rules/branches/{branch}"),
                &what,
            )
            .await
        {
            Ok(rules) => {
                let guards = review_rules(&rules);
                if guards.is_empty() {
                    notes.push(format!(
                        "no active ruleset rule on `{base}` requires an approving review"
                    ));
                }
                for guard in guards {
                    match self.ruleset_bypass(repo, base, &guard).await? {
                        Bypass::Never => {
                            tracing::info!(
                                repo,
                                base,
                                count = guard.count,
                                "merge guarded by a ruleset review rule"
                            );
                            return Ok(());
                        }
                        Bypass::May { note, fix } => {
                            notes.push(note);
                            fixes.push(fix);
                        }
                    }
                }
            }
            // Older Enterprise Server versions have no rulesets API.
            Err(e @ ForgeError::NotFound { .. }) => {
                tracing::debug!(error = %e, "no rulesets API");
                notes.push("rulesets could not be read (404)".into());
            }
            Err(e @ ForgeError::Forbidden { .. }) => {
                tracing::debug!(error = %e, "rulesets not readable");
                notes.push(
                    "rulesets could not be read (403: the token needs Metadata: read)".into(),
                );
                fixes.push(format!("give the token Metadata: read on {repo}"));
            }
            Err(e) => return Err(e),
        }

        // 3. Classic branch protection (needs Administration: read).
        // https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection
        let what = format!("reading branch protection of `{base}` in {repo}");
        match self
            .get_json(&format!("/repos/{owner}/{name}/branches/{branch}/protection"), &what)
            .await
        {
            Ok(protection) => {
                let reviews = &protection["required_pull_request_reviews"];
                let count = reviews["required_approving_review_count"].as_u64().unwrap_or(0);
                if count == 0 {
                    notes.push(format!(
                        "branch protection on `{base}` does not require an approving review"
                    ));
                } else {
                    let bypasses = self
                        .classic_bypass(base, count, &reviews["bypass_pull_request_allowances"])
                        .await?;
                    if bypasses.is_empty() {
                        tracing::info!(repo, base, count, "merge guarded by branch protection");
                        return Ok(());
                    }
                    for bypass in bypasses {
                        if let Bypass::May { note, fix } = bypass {
                            notes.push(note);
                            fixes.push(fix);
                        }
                    }
                }
            }
            Err(ForgeError::NotFound { .. }) => {
                notes.push(format!("branch `{base}` has no classic branch protection (404)"))
            }
            Err(ForgeError::Forbidden { .. }) => notes.push(format!(
                "branch protection of `{base}` could not be read (403: the token needs Administration: read)"
            )),
            Err(e) => return Err(e),
        }

        Err(ForgeError::CanMerge {
            repo: repo.to_string(),
            reason: format!(
                "nothing proves that a rule stops it from merging into `{base}`: {}",
                notes.join("; ")
            ),
            fix: if fixes.is_empty() {
                fix_rule
            } else {
                fixes.join("; or ")
            },
        })
    }

    /// Whether the service account can bypass a ruleset's review rule: only `current_user_can_bypass == "never"`
    /// proves it cannot. `always` and `pull_requests_only` (which lets it merge a pull request past the rule) say it
    /// can; a ruleset that cannot be read, or that lacks the field, leaves it unknown, which counts as "may".
    /// https://docs.github.com/en/rest/repos/rules#get-a-repository-ruleset
    async fn ruleset_bypass(
        &self,
        repo: &str,
        base: &str,
        guard: &ReviewRule,
    ) -> Result<Bypass, ForgeError> {
        let (owner, name) = split_repo(repo)?;
        let rule = format!("requires {} approving review(s) on `{base}`", guard.count);
        let Some(id) = guard.ruleset_id else {
            return Ok(Bypass::May {
                note: format!(
                    "a ruleset rule {rule}, but GitHub did not name its ruleset, so whether the service account \
                     can bypass it (current_user_can_bypass) is unknown"
                ),
                fix: format!(
                    "require the review with classic branch protection on `{base}`, without bypass allowances"
                ),
            });
        };
        let what = format!("reading ruleset {id} of {repo}");
        let ruleset = match self
            .get_json(&format!("/repos/{owner}/{name}/rulesets/{id}"), &what)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "ruleset not readable: counted as one the service account may bypass");
                let (status, fix) = match e.status() {
                    Some(403) => (
                        "403".to_string(),
                        format!("give the token Metadata: read on {repo}, so drafter can read ruleset {id}"),
                    ),
                    Some(404) => (
                        "404: an organization or enterprise ruleset the token cannot see?".to_string(),
                        format!(
                            "let the token read ruleset {id} (Metadata: read on {repo}), or require the review \
                             in a repository ruleset"
                        ),
                    ),
                    _ => (
                        e.to_string(),
                        format!("let the token read ruleset {id} (Metadata: read on {repo})"),
                    ),
                };
                return Ok(Bypass::May {
                    note: format!(
                        "ruleset {id} {rule}, but it could not be read ({status}), so whether the service account \
                         can bypass it (current_user_can_bypass) is unknown"
                    ),
                    fix,
                });
            }
        };
        // An App may be a bypass actor of its own (actor_type "Integration", actor_id the App id):
        // https://docs.github.com/en/rest/repos/rules#get-a-repository-ruleset
        if let Some(app_id) = self.app_id {
            let listed = ruleset["bypass_actors"].as_array().is_some_and(|actors| {
                actors.iter().any(|a| {
                    a["actor_type"].as_str() == Some("Integration")
                        && a["actor_id"].as_u64() == Some(app_id)
                })
            });
            if listed {
                return Ok(Bypass::May {
                    note: format!("ruleset {id} {rule}, but the GitHub App {app_id} is one of its bypass actors"),
                    fix: format!("remove the GitHub App {app_id} from the bypass list of ruleset {id}"),
                });
            }
        }
        Ok(match ruleset["current_user_can_bypass"].as_str() {
            Some("never") => Bypass::Never,
            Some(mode) => Bypass::May {
                note: format!(
                    "ruleset {id} {rule}, but the service account can bypass it (current_user_can_bypass = {mode})"
                ),
                fix: format!(
                    "remove the service account, its teams and its role from the bypass list of ruleset {id}"
                ),
            },
            None => Bypass::May {
                note: format!(
                    "ruleset {id} {rule}, but GitHub did not say whether the service account can bypass it \
                     (no current_user_can_bypass in the ruleset: an older GitHub Enterprise Server?)"
                ),
                fix: format!(
                    "upgrade GitHub Enterprise Server to a version that reports current_user_can_bypass, or \
                     require the review with classic branch protection on `{base}`, without bypass allowances"
                ),
            },
        })
    }

    /// Who in classic protection's `bypass_pull_request_allowances` (`users`, `teams`, `apps`) is or may be the
    /// service account; empty when it provably is none of them. A user matches by login; a team when the account
    /// is in it or in a child team of it (`GET /user/teams`; if that cannot be read, or a team's ancestry is out of
    /// sight, membership is unknown, which counts as "may"); an app always counts (a token cannot prove it does
    /// not act for one).
    /// https://docs.github.com/en/rest/branches/branch-protection#get-branch-protection
    async fn classic_bypass(
        &self,
        base: &str,
        count: u64,
        allowances: &Value,
    ) -> Result<Vec<Bypass>, ForgeError> {
        let rule = format!("branch protection on `{base}` requires {count} approving review(s)");
        let names = |key: &str, field: &str| -> Vec<(Option<u64>, String)> {
            allowances[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            let name = x[field]
                                .as_str()
                                .or_else(|| x["name"].as_str())
                                .unwrap_or("?");
                            (x["id"].as_u64(), name.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (users, teams, apps) = (
            names("users", "login"),
            names("teams", "slug"),
            names("apps", "slug"),
        );
        let mut found = Vec::new();
        // An App's installation token is no user (and cannot read `/user`): only its own apps entry could match.
        if !users.is_empty() && self.app_id.is_none() {
            let login = match self
                .get_json("/user", "reading the service account's login")
                .await
            {
                Ok(me) => me["login"].as_str().map(str::to_string),
                Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
                Err(_) => None,
            };
            for (_, user) in &users {
                match &login {
                    Some(me) if !user.eq_ignore_ascii_case(me) => {}
                    Some(me) => found.push(Bypass::May {
                        note: format!("{rule}, but `{me}` is in its bypass allowances"),
                        fix: format!(
                            "remove `{me}` from the pull request review bypass allowances of `{base}`"
                        ),
                    }),
                    None => found.push(Bypass::May {
                        note: format!(
                            "{rule}, but user `{user}` may bypass it and drafter cannot read the service \
                             account's login (GET /user)"
                        ),
                        fix: format!(
                            "remove `{user}` from the pull request review bypass allowances of `{base}`"
                        ),
                    }),
                }
            }
        }
        if !teams.is_empty() {
            let mine = self.bot_teams().await?;
            for (id, slug) in &teams {
                let remove = format!(
                    "remove team `{slug}` from the pull request review bypass allowances of `{base}`"
                );
                let member = match (&mine, id) {
                    (Ok(mine), Some(id)) => mine.contains(*id),
                    _ => Membership::Unknown,
                };
                match (member, &mine) {
                    (Membership::No, _) => {}
                    (Membership::Yes, _) => found.push(Bypass::May {
                        note: format!(
                            "{rule}, but team `{slug}` is in its bypass allowances and the service account is a \
                             member of it"
                        ),
                        fix: format!("{remove}, or the service account from the team"),
                    }),
                    (Membership::Unknown, mine) => {
                        let why = match (mine, id) {
                            (Err(why), _) => why.clone(),
                            (Ok(_), None) => "the allowance gives no team id".to_string(),
                            (Ok(_), Some(_)) => {
                                "a team of the service account has a parent team drafter cannot see".to_string()
                            }
                        };
                        found.push(Bypass::May {
                            note: format!(
                                "{rule}, but team `{slug}` is in its bypass allowances and drafter cannot tell \
                                 whether the service account is in it ({why})"
                            ),
                            fix: format!(
                                "{remove}, or give the token the read:org scope so drafter can list the service \
                                 account's teams"
                            ),
                        });
                    }
                }
            }
        }
        for (_, app) in &apps {
            found.push(Bypass::May {
                note: format!(
                    "{rule}, but app `{app}` is in its bypass allowances and drafter cannot prove the token does \
                     not act for it"
                ),
                fix: format!("remove app `{app}` from the pull request review bypass allowances of `{base}`"),
            });
        }
        Ok(found)
    }

    /// The service account's teams (`GET /user/teams`, every page), or why they are unknown.
    /// https://docs.github.com/en/rest/teams/teams#list-teams-for-the-authenticated-user
    async fn bot_teams(&self) -> Result<Result<TeamSet, String>, ForgeError> {
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 10;
        let mut set = TeamSet::default();
        for page in 1..=MAX_PAGES {
            let route = format!("/user/teams?per_page={PER_PAGE}&page={page}");
            let listed = match self
                .get_json(&route, "listing the service account's teams")
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_retryable() || e.status() == Some(401) => return Err(e),
                Err(e) => {
                    let status = e
                        .status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string());
                    return Ok(Err(format!("GET /user/teams answered {status}")));
                }
            };
            let Some(items) = listed.as_array() else {
                return Ok(Err("GET /user/teams did not answer a list".into()));
            };
            for team in items {
                let Some(id) = team["id"].as_u64() else {
                    return Ok(Err("GET /user/teams listed a team without an id".into()));
                };
                set.teams.push(id);
                if let Some(parent) = team["parent"]["id"].as_u64() {
                    set.parents.push(parent);
                }
            }
            if items.len() < PER_PAGE {
                return Ok(Ok(set));
            }
        }
        Ok(Err(format!(
            "the service account is in more than {} teams",
            PER_PAGE * MAX_PAGES
        )))
    }
}

/// Whether the service account can bypass a review rule, as far as drafter can tell.
#[derive(Debug)]
pub(super) enum Bypass {
    /// Proven: it cannot.
    Never,
    /// It can, or drafter cannot tell: `note` says which, `fix` what the operator can change.
    May { note: String, fix: String },
}

/// Whether the service account is in a team.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Membership {
    Yes,
    No,
    Unknown,
}

/// The service account's teams as `GET /user/teams` lists them: each team's id and its parent's.
#[derive(Debug, Default)]
pub(super) struct TeamSet {
    pub(super) teams: Vec<u64>,
    pub(super) parents: Vec<u64>,
}

impl TeamSet {
    /// Membership of team `id`, directly or through a child team. A parent that is not itself listed has an
    /// ancestry drafter cannot see (a grandparent team would count too), so a miss is then unknown.
    pub(super) fn contains(&self, id: u64) -> Membership {
        if self.teams.contains(&id) || self.parents.contains(&id) {
            Membership::Yes
        } else if self.parents.iter().any(|p| !self.teams.contains(p)) {
            Membership::Unknown
        } else {
            Membership::No
        }
    }
}

/// A ruleset rule that requires approving reviews.
#[derive(Debug, PartialEq)]
pub(super) struct ReviewRule {
    /// The ruleset it comes from, to look up whether the account can bypass it.
    pub(super) ruleset_id: Option<u64>,
    /// Required approving reviews (>= 1).
    pub(super) count: u64,
}

/// The `pull_request` rules requiring at least one approval, from a `GET /rules/branches/{b}` answer (a JSON array
/// of rules; anything else yields none).
pub(super) fn review_rules(rules: &Value) -> Vec<ReviewRule> {
    rules
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter(|r| r["type"].as_str() == Some("pull_request"))
                .filter_map(|r| {
                    let count = r["parameters"]["required_approving_review_count"].as_u64()?;
                    (count >= 1).then(|| ReviewRule {
                        ruleset_id: r["ruleset_id"].as_u64(),
                        count,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
