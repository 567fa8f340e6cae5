//! Git through libgit2: clone, branch, commit, push.
//!
//! The model: one job gets one fresh clone of one allowlisted repository, checked out on its base branch; the job
//! works on a new `drafter/<ticket>-<slug>` branch, commits everything the agent changed as one commit (less the
//! build products the caller leaves out, [`commit_all_except`]), and pushes that branch (never force, never any
//! other ref) so [`crate::forge`] can open a draft pull request from it.
//!
//! Why it is shaped this way:
//! - **The token is only ever handed to libgit2's credential callback** (`x-access-token` + token, what GitHub
//!   documents for HTTPS with a token). It is never part of a URL, so it cannot land in `.git/config`, in the
//!   workspace the sandbox sees, in `git remote -v`, or in an error message. A URL that already carries
//!   `user:pass@` is refused rather than silently used.
//! - **Pushes go through an anonymous remote** (`Repository::remote_anonymous`), so pushing writes nothing to the
//!   clone's config, and a workspace whose `.git/config` was tampered with cannot redirect the push.
//! - **`Remote::push` can return `Ok` while the server refused the ref** (a protected branch, a hook): the
//!   `push_update_reference` callback is where the refusal shows up, so it is checked and turned into an error.
//! - git2 is blocking and `Repository` is `Send` but not `Sync`: every function here is synchronous and the caller
//!   runs it in `tokio::task::spawn_blocking`.
//!
//! Errors say whether retrying can help ([`RepoError::is_retryable`]): a dropped connection or a 5xx is worth
//! another try; a refused credential, a missing branch or a rejected push is not.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::Path;

use git2::{
    build::{CheckoutBuilder, RepoBuilder},
    Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, IndexAddOption, Oid, PushOptions,
    RemoteCallbacks, RemoteRedirect, Repository, Signature,
};

use crate::config::{CommitIdentity, Secret};

pub mod diff;
mod mirror;
mod remote;

pub use diff::{changed_files, changed_files_at, diff_digest};
pub use mirror::{MirrorCache, MirrorUse};
pub use remote::{clone, clone_with, push, refresh_remote_branch};

/// Prefix of every branch drafter creates, so humans and branch rules can recognise (and restrict) them.
pub const BRANCH_PREFIX: &str = "drafter/";

/// Longest slug taken from the ticket summary, in bytes (all ASCII).
const MAX_SLUG: usize = 40;

/// Bytes of server text kept for a push refusal message (the server is external input).
const MAX_REMOTE_TEXT: usize = 1024;

/// Username sent with the token over HTTPS; GitHub ignores it, and this is the one its docs use for tokens.
const TOKEN_USER: &str = "x-access-token";

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The remote URL is not acceptable (it embeds credentials, or is not a URL git can use).
    #[error("refusing remote URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it. Never contains the URL's userinfo.
        reason: String,
    },
    /// The remote refused the credential (HTTP 401/403, or libgit2 gave up asking). Not retryable: fix the token.
    #[error("authentication to {url} failed: {message} (check that github.token is valid and can read and push this repository)")]
    Auth {
        /// The remote (without credentials).
        url: String,
        /// What git reported.
        message: String,
    },
    /// The remote repository does not exist, or the token cannot see it (HTTP 404).
    #[error("repository {url} not found, or the token cannot see it: {message}")]
    RemoteNotFound {
        /// The remote.
        url: String,
        /// What git reported.
        message: String,
    },
    /// A connection problem or a server-side (5xx) error: worth retrying.
    #[error("network error talking to {url}: {message}")]
    Network {
        /// The remote.
        url: String,
        /// What git reported.
        message: String,
    },
    /// A branch that must exist does not (the base branch on the remote, or the branch to push locally).
    #[error("branch `{branch}` not found{}", if *.remote { " on the remote" } else { " in the local clone" })]
    BranchNotFound {
        /// The branch name.
        branch: String,
        /// Whether it was missing on the remote (`true`) or locally (`false`).
        remote: bool,
    },
    /// A branch name git would not accept.
    #[error("`{name}` is not a valid branch name")]
    InvalidBranchName {
        /// The name as given.
        name: String,
    },
    /// The server refused the pushed ref (protected branch, hook, non-fast-forward). Not retryable as is.
    #[error("the server rejected the push of `{branch}`: {message}")]
    PushRejected {
        /// The branch pushed.
        branch: String,
        /// The server's reason, as it sent it.
        message: String,
    },
    /// A local file operation failed (the mirror cache: its directory, locks, copying its objects).
    #[error("{context}: {source}")]
    Io {
        /// What drafter was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Any other libgit2 failure, with what was being done.
    #[error("git: {context}: {message}")]
    Git {
        /// What drafter was doing.
        context: String,
        /// libgit2's message.
        message: String,
        /// libgit2's error class, used to decide retryability.
        class: ErrorClass,
    },
}

impl RepoError {
    /// Whether retrying the same operation later can succeed: network failures and server errors, yes; refused
    /// credentials, missing branches, rejected pushes and local problems, no.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepoError::Network { .. } => true,
            RepoError::Git { class, .. } => *class == ErrorClass::Net,
            _ => false,
        }
    }
}

/// The branch name for a ticket: `drafter/<KEY>-<slug of summary>`, e.g. `drafter/DEMO-1-fix-the-greeting`.
///
/// The slug keeps lowercase ASCII letters and digits, turns every other run of characters into a single `-`, and
/// is cut to about 40 characters; an empty slug becomes `change`. The result is always a valid git ref name.
pub fn branch_name(ticket_key: &str, summary: &str) -> String {
    let key = slugify(ticket_key, false, 32);
    let key = if key.is_empty() {
        "ticket".to_string()
    } else {
        key
    };
    let slug = slugify(summary, true, MAX_SLUG);
    let slug = if slug.is_empty() {
        "change".to_string()
    } else {
        slug
    };
    let name = format!("{BRANCH_PREFIX}{key}-{slug}");
    if git2::Reference::is_valid_name(&format!("refs/heads/{name}")) {
        name
    } else {
        // Unreachable with the character set above; kept so the promise "always valid" holds even if it changes.
        format!("{BRANCH_PREFIX}{key}-change")
    }
}

/// ASCII letters and digits (lowercased when `lower`), every other run of characters as one `-`, trimmed of `-`,
/// at most `max` bytes.
fn slugify(text: &str, lower: bool, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(if lower { c.to_ascii_lowercase() } else { c });
        } else {
            dash = true;
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_string()
}

/// A commit message with a git trailer block: subject, blank line, body (if any), blank line, `Key: value` lines.
///
/// Subject and trailer values are folded onto one line, and trailer keys are reduced to letters, digits and `-`,
/// so the last paragraph parses as trailers (`git interpret-trailers --parse`) whatever the inputs were.
pub fn message_with_trailers(subject: &str, body: &str, trailers: &[(&str, &str)]) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let subject = one_line(subject);
    let mut msg = if subject.is_empty() {
        "Update".to_string()
    } else {
        subject
    };
    msg.push('\n');
    let body = body.trim();
    if !body.is_empty() {
        msg.push('\n');
        msg.push_str(body);
        msg.push('\n');
    }
    let lines: Vec<String> = trailers
        .iter()
        .filter_map(|(k, v)| {
            let key: String = k
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let key = key.trim_matches('-');
            let value = one_line(v);
            (!key.is_empty() && !value.is_empty()).then(|| format!("{key}: {value}"))
        })
        .collect();
    if !lines.is_empty() {
        msg.push('\n');
        for line in lines {
            msg.push_str(&line);
            msg.push('\n');
        }
    }
    msg
}

/// A local git failure, with what was being done.
pub fn git_error(context: &str, err: git2::Error) -> RepoError {
    local(context, err)
}

/// The commit the remote base branch points at in the clone (`refs/remotes/origin/<base>`).
pub fn remote_base(repo: &Repository, base: &str) -> Result<Oid, RepoError> {
    repo.refname_to_id(&format!("refs/remotes/origin/{base}"))
        .map_err(|_| RepoError::BranchNotFound {
            branch: base.to_string(),
            remote: true,
        })
}

fn local(context: &str, err: git2::Error) -> RepoError {
    RepoError::Git {
        context: context.to_string(),
        message: err.message().to_string(),
        class: err.class(),
    }
}

fn valid_branch(name: &str) -> Result<(), RepoError> {
    if git2::Reference::is_valid_name(&format!("refs/heads/{name}")) {
        Ok(())
    } else {
        Err(RepoError::InvalidBranchName {
            name: name.to_string(),
        })
    }
}

/// Creates `branch` at HEAD and checks it out. Fails if the branch already exists.
pub fn create_branch(repo: &Repository, branch: &str) -> Result<(), RepoError> {
    valid_branch(branch)?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| local("reading HEAD", e))?;
    repo.branch(branch, &head, false)
        .map_err(|e| local(&format!("creating branch {branch}"), e))?;
    repo.set_head(&format!("refs/heads/{branch}"))
        .map_err(|e| local(&format!("switching to branch {branch}"), e))?;
    // The tree is the same as HEAD's, so this only refreshes the index; `safe` never overwrites local changes.
    repo.checkout_head(Some(CheckoutBuilder::new().safe()))
        .map_err(|e| local(&format!("checking out {branch}"), e))?;
    Ok(())
}

/// A branch as the clone saw it on the remote (`refs/remotes/origin/<branch>`), with the job that made its tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBranch {
    /// The tip commit.
    pub tip: Oid,
    /// The `Drafter-Job` trailer of the tip commit, if it has one.
    pub job: Option<String>,
    /// The tip commit's full message.
    pub message: String,
}

/// The remote's `branch` as fetched by [`clone`], or `None` when the remote has no such branch. How a retried job
/// recognises the branch an earlier attempt of the same job already pushed (by the `Drafter-Job` trailer).
pub fn remote_branch(repo: &Repository, branch: &str) -> Result<Option<RemoteBranch>, RepoError> {
    valid_branch(branch)?;
    let reference = match repo.find_reference(&format!("refs/remotes/origin/{branch}")) {
        Ok(r) => r,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(local(&format!("reading origin/{branch}"), e)),
    };
    let commit = reference
        .peel_to_commit()
        .map_err(|e| local(&format!("reading origin/{branch}"), e))?;
    let message = commit.message().unwrap_or("").to_string();
    let job = message.lines().rev().find_map(|l| {
        l.strip_prefix("Drafter-Job:")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    Ok(Some(RemoteBranch {
        tip: commit.id(),
        job,
        message,
    }))
}

/// Creates local `branch` at the remote branch's tip and checks it out (reusing what an earlier attempt pushed).
pub fn checkout_remote_branch(repo: &Repository, branch: &str) -> Result<(), RepoError> {
    let Some(remote) = remote_branch(repo, branch)? else {
        return Err(RepoError::BranchNotFound {
            branch: branch.to_string(),
            remote: true,
        });
    };
    let commit = repo
        .find_commit(remote.tip)
        .map_err(|e| local(&format!("reading origin/{branch}"), e))?;
    repo.branch(branch, &commit, true)
        .map_err(|e| local(&format!("creating branch {branch}"), e))?;
    repo.set_head(&format!("refs/heads/{branch}"))
        .map_err(|e| local(&format!("switching to branch {branch}"), e))?;
    repo.checkout_head(Some(CheckoutBuilder::new().force()))
        .map_err(|e| local(&format!("checking out {branch}"), e))?;
    Ok(())
}

/// Commits everything in the work tree (new, modified and deleted files, honouring `.gitignore`) as one commit on
/// HEAD. Returns `None` when there is nothing to commit.
pub fn commit_all(
    repo: &Repository,
    identity: &CommitIdentity,
    message: &str,
) -> Result<Option<Oid>, RepoError> {
    let staged = stage_all(repo, &mut |_, _| false, true)?;
    commit_tree(repo, identity, message, staged.tree)
}

/// Like [`commit_all`], but untracked files for which `leave_out` is true are not committed (build products the
/// agent's commands left behind). Returns the commit, if anything changed, and the paths left out.
pub fn commit_all_except(
    repo: &Repository,
    identity: &CommitIdentity,
    message: &str,
    leave_out: &mut dyn FnMut(&str, &Tracked) -> bool,
) -> Result<(Option<Oid>, Vec<String>), RepoError> {
    let staged = stage_all(repo, leave_out, true)?;
    Ok((
        commit_tree(repo, identity, message, staged.tree)?,
        staged.left_out,
    ))
}

/// What the index tracks before staging (the base, in a fresh clone): answers "is this directory part of the
/// repository" for the build-product rules.
pub struct Tracked {
    files: HashSet<Vec<u8>>,
    dirs: HashSet<Vec<u8>>,
}

impl Tracked {
    fn of(index: &git2::Index) -> Tracked {
        let mut files = HashSet::new();
        let mut dirs = HashSet::new();
        for e in index.iter() {
            let mut at = 0;
            while let Some(i) = e.path[at..].iter().position(|&b| b == b'/') {
                at += i;
                dirs.insert(e.path[..at].to_vec());
                at += 1;
            }
            files.insert(e.path);
        }
        Tracked { files, dirs }
    }

    /// Whether any tracked file lies under `dir` (repository-relative, no trailing `/`).
    pub fn has_dir(&self, dir: &str) -> bool {
        self.dirs.contains(dir.as_bytes())
    }
}

/// A staged work tree: its tree (written to the object database, not committed) and the paths left out.
#[derive(Debug)]
pub struct Staged {
    /// The tree the commit would have.
    pub tree: Oid,
    /// Untracked files not staged because `leave_out` said so, sorted.
    pub left_out: Vec<String>,
}

/// Stages the work tree as `git add -A` does (`.gitignore` honoured, deletions recorded), except untracked files
/// for which `leave_out(path, tracked)` is true. With `persist` the index is written to disk (for a commit);
/// without, the repository's index file is left as it was and only the tree objects are written, so the check at
/// `finish` can see what would be committed without changing what the commit later starts from.
pub fn stage_all(
    repo: &Repository,
    leave_out: &mut dyn FnMut(&str, &Tracked) -> bool,
    persist: bool,
) -> Result<Staged, RepoError> {
    let mut index = repo.index().map_err(|e| local("opening the index", e))?;
    // Another handle may have written the index since this one read it.
    index
        .read(false)
        .map_err(|e| local("reading the index", e))?;
    let tracked = Tracked::of(&index);
    let mut left_out = Vec::new();
    {
        // Called for every file add_all would stage: 0 stages it, a positive value skips it.
        let mut decide = |path: &Path, _spec: &[u8]| -> i32 {
            let bytes = path.as_os_str().as_encoded_bytes();
            if tracked.files.contains(bytes) {
                return 0;
            }
            let p = String::from_utf8_lossy(bytes);
            if leave_out(&p, &tracked) {
                left_out.push(p.into_owned());
                1
            } else {
                0
            }
        };
        // add_all honours .gitignore (no FORCE flag); update_all records deletions of tracked files.
        index
            .add_all(["*"], IndexAddOption::DEFAULT, Some(&mut decide))
            .map_err(|e| local("staging changes", e))?;
    }
    index
        .update_all(["*"], None)
        .map_err(|e| local("staging deletions", e))?;
    let tree = index
        .write_tree()
        .map_err(|e| local("writing the tree", e))?;
    if persist {
        index.write().map_err(|e| local("writing the index", e))?;
    } else {
        // Drop the in-memory staging: the next reader starts from the file again.
        index
            .read(true)
            .map_err(|e| local("resetting the index", e))?;
    }
    left_out.sort();
    left_out.dedup();
    Ok(Staged { tree, left_out })
}

/// Commits `tree_id` on HEAD, unless it is HEAD's tree (`None`).
fn commit_tree(
    repo: &Repository,
    identity: &CommitIdentity,
    message: &str,
    tree_id: Oid,
) -> Result<Option<Oid>, RepoError> {
    let tree = repo
        .find_tree(tree_id)
        .map_err(|e| local("reading the new tree", e))?;
    let parent = match repo.head() {
        Ok(head) => Some(
            head.peel_to_commit()
                .map_err(|e| local("reading HEAD", e))?,
        ),
        Err(e) if e.code() == ErrorCode::UnbornBranch || e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(local("reading HEAD", e)),
    };
    let unchanged = match &parent {
        Some(p) => p.tree_id() == tree_id,
        None => tree.is_empty(),
    };
    if unchanged {
        return Ok(None);
    }
    let sig = Signature::now(&identity.name, &identity.email).map_err(|e| {
        local(
            "making the commit signature (check [commit] name and email)",
            e,
        )
    })?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let oid = repo
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .map_err(|e| local("committing", e))?;
    tracing::debug!(commit = %oid, "committed");
    Ok(Some(oid))
}

/// Opens the clone at `path` (a second handle, e.g. for the check at `finish` while the pipeline holds its own).
pub fn open(path: &Path) -> Result<Repository, RepoError> {
    Repository::open(path).map_err(|e| local("opening the workspace repository", e))
}

#[cfg(test)]
mod tests;
