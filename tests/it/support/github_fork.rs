//! Forks in the GitHub stand-in: the service account's fork of an upstream repository, "Sync fork", and pull
//! requests across repositories. Shapes from the public docs:
//! - a fork's `GET /repos/{o}/{r}` carries `"fork": true` and the `parent` and `source` repositories
//!   (<https://docs.github.com/en/rest/repos/repos#get-a-repository>);
//! - `POST /repos/{o}/{r}/merge-upstream {"branch"}` answers 200 with `message`, `merge_type` and `base_branch`,
//!   409 on a conflict (<https://docs.github.com/en/rest/branches/branches#sync-a-fork-branch-with-the-upstream-repository>);
//! - `POST /repos/{o}/{r}/pulls` takes `head` as `owner:branch` across repositories, plus `head_repo` when both
//!   have the same owner; the PR's `head.repo` is the fork, and GitHub copies the head into the base repository as
//!   `refs/pull/{n}/head` (<https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request>);
//! - pushing without write access answers 403 ("Permission to o/r denied to user").

use std::path::PathBuf;

use serde_json::{json, Value};

use super::github::{json_response, Inner, RepoState};

/// What `create_pull` needs to know about where the head branch lives.
pub(super) struct HeadRepo {
    /// The head repository's full name (the base repository itself, or the fork).
    pub full_name: String,
    /// Its bare repository.
    pub bare: PathBuf,
}

/// A repository's `fork`, `parent` and `source` fields, for `GET /repos/{o}/{r}`.
pub(super) fn fork_fields(st: &Inner, repo: &RepoState, api: &str) -> Value {
    match &repo.fork_of {
        None => json!({"fork": false}),
        Some(up) => {
            let id = st.repos.get(up).map_or(0, |r| r.id);
            let parent = json!({"id": id, "full_name": up, "name": up.split('/').nth(1),
                                "url": format!("{api}/repos/{up}"), "fork": false});
            json!({"fork": true, "parent": parent, "source": parent})
        }
    }
}

/// Answers `POST /repos/{fork}/merge-upstream`: fast-forwards the fork's `branch` to upstream's, or 409.
pub(super) fn sync(st: &mut Inner, full: &str, body: &[u8]) -> axum::response::Response {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return json_response(400, json!({"message": "Problems parsing JSON"}));
    };
    let Some(branch) = req["branch"].as_str() else {
        return json_response(
            422,
            json!({"message": "Invalid request.\n\n\"branch\" wasn't supplied."}),
        );
    };
    let Some(up) = st.repos.get(full).and_then(|r| r.fork_of.clone()) else {
        return json_response(422, json!({"message": "This repository is not a fork."}));
    };
    st.fork_syncs.push((full.to_string(), branch.to_string()));
    let (fork_bare, up_bare) = (st.repos[full].bare.clone(), st.repos[&up].bare.clone());
    let refname = format!("refs/heads/{branch}");
    let (Ok(fork), Ok(upstream)) = (
        git2::Repository::open_bare(&fork_bare),
        git2::Repository::open_bare(&up_bare),
    ) else {
        return json_response(500, json!({"message": "stand-in cannot open repo"}));
    };
    let Ok(up_tip) = upstream.refname_to_id(&refname) else {
        return json_response(
            422,
            json!({"message": format!("Upstream has no branch {branch}.")}),
        );
    };
    let up_owner = up.split('/').next().unwrap_or("");
    let base_branch = format!("{up_owner}:{branch}");
    // Bring upstream's objects over, then decide like GitHub: equal -> none, behind -> fast-forward, else conflict.
    let fetched = fork
        .remote_anonymous(&up_bare.to_string_lossy())
        .and_then(|mut r| {
            r.fetch(
                &[format!("+{refname}:refs/drafter-standin/upstream")],
                None,
                None,
            )
        });
    if fetched.is_err() {
        return json_response(500, json!({"message": "stand-in fetch failed"}));
    }
    let fork_tip = fork.refname_to_id(&refname).ok();
    let merge_type = match fork_tip {
        Some(t) if t == up_tip => "none",
        Some(t) if !fork.graph_descendant_of(up_tip, t).unwrap_or(false) => {
            return json_response(
                409,
                json!({"message": "There are merge conflicts", "documentation_url":
                       "https://docs.github.com/rest/branches/branches#sync-a-fork-branch-with-the-upstream-repository"}),
            )
        }
        _ => "fast-forward",
    };
    if merge_type != "none" && fork.reference(&refname, up_tip, true, "sync fork").is_err() {
        return json_response(500, json!({"message": "stand-in cannot update the branch"}));
    }
    json_response(
        200,
        json!({"message": format!("Successfully fetched and fast-forwarded from upstream {base_branch}."),
               "merge_type": merge_type, "base_branch": base_branch}),
    )
}

/// Where the head of a new pull request into `full` lives: `head` is `branch`, or `owner:branch` naming a fork of
/// `full` owned by `owner` (or `head_repo` when the fork has the base's owner). `None` when no such fork exists.
pub(super) fn head_repo(st: &Inner, full: &str, req: &Value) -> Option<HeadRepo> {
    let head = req["head"].as_str()?;
    let base_owner = full.split('/').next().unwrap_or("");
    let Some((owner, _)) = head.split_once(':') else {
        return st.repos.get(full).map(|r| HeadRepo {
            full_name: full.to_string(),
            bare: r.bare.clone(),
        });
    };
    if owner == base_owner && req["head_repo"].as_str().is_none() {
        return st.repos.get(full).map(|r| HeadRepo {
            full_name: full.to_string(),
            bare: r.bare.clone(),
        });
    }
    st.repos
        .iter()
        .find(|(name, r)| {
            r.fork_of.as_deref() == Some(full)
                && name.split('/').next() == Some(owner)
                && req["head_repo"]
                    .as_str()
                    .is_none_or(|hr| name.split('/').nth(1) == Some(hr))
        })
        .map(|(name, r)| HeadRepo {
            full_name: name.clone(),
            bare: r.bare.clone(),
        })
}

/// Copies `branch` of the head repository into the base repository as `refs/pull/{number}/head`, as GitHub does,
/// so the base can compare it with its own branches. Returns the head's tip.
pub(super) fn copy_head(
    base_bare: &std::path::Path,
    head: &HeadRepo,
    branch: &str,
    number: u64,
) -> Option<git2::Oid> {
    let base = git2::Repository::open_bare(base_bare).ok()?;
    let target = format!("refs/pull/{number}/head");
    base.remote_anonymous(&head.bare.to_string_lossy())
        .and_then(|mut r| r.fetch(&[format!("+refs/heads/{branch}:{target}")], None, None))
        .ok()?;
    base.refname_to_id(&target).ok()
}

/// Makes `fork_full` a fork of `upstream`: a bare copy of every branch, pushable by the service account.
pub(super) fn create(st: &mut Inner, upstream: &str, fork_full: &str) -> PathBuf {
    let up_bare = st.repos[upstream].bare.clone();
    let bare = st.root.join(format!("{fork_full}.git"));
    let repo = git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&up_bare.to_string_lossy(), &bare)
        .expect("clone the fork");
    // A fork has every branch of its upstream at the time of forking.
    for b in repo
        .branches(Some(git2::BranchType::Remote))
        .expect("branches")
    {
        let (b, _) = b.expect("branch");
        let name = b.name().ok().flatten().unwrap_or("").to_string();
        if let (Some(short), Some(oid)) = (name.strip_prefix("origin/"), b.get().target()) {
            if short != "HEAD" {
                repo.reference(&format!("refs/heads/{short}"), oid, true, "fork")
                    .expect("branch");
            }
        }
    }
    repo.remote_delete("origin").expect("no origin");
    let mut cfg = repo.config().expect("config");
    cfg.set_bool("http.receivepack", true).expect("receivepack");
    bare
}
