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

/// Refuses URLs with `user[:pass]@`: a credential there would be written to `.git/config`.
fn check_url(url: &str) -> Result<(), RepoError> {
    if url.contains('\0') {
        return Err(RepoError::InvalidUrl {
            reason: "the URL contains a NUL byte".into(),
        });
    }
    // Plain paths (tests, local mirrors) are not URLs and carry no credentials.
    if let Ok(parsed) = url::Url::parse(url) {
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(RepoError::InvalidUrl {
                reason: format!(
                    "{}://{}/... embeds credentials (user:pass@); give the token through github.token instead",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or("")
                ),
            });
        }
    }
    Ok(())
}

/// What the credential callback saw, so a failure can be classified without parsing libgit2's prose.
#[derive(Default)]
struct AuthTrace {
    /// How many times libgit2 asked for credentials. A second ask means the first was refused.
    asks: Cell<u32>,
}

/// `host:port` of a URL, to check where the token would go. `None` for plain paths.
fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?
    ))
}

/// Callbacks that hand over the token (once, and only to the host of `url`) and record what happened.
fn callbacks<'a>(url: &str, token: &'a Secret, trace: &'a AuthTrace) -> RemoteCallbacks<'a> {
    let expected = origin_of(url);
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |asked_url, _user, allowed| {
        credential(expected.as_deref(), asked_url, allowed, token, trace)
    });
    cb
}

/// The credential callback's decision: the token for the expected host, on the first ask only.
fn credential(
    expected: Option<&str>,
    asked_url: &str,
    allowed: CredentialType,
    token: &Secret,
    trace: &AuthTrace,
) -> Result<Cred, git2::Error> {
    let n = trace.asks.get() + 1;
    trace.asks.set(n);
    if origin_of(asked_url).as_deref() != expected {
        // Off-site redirects are disabled as well; this makes sure the token only goes where it was meant to.
        return Err(git2::Error::new(
            ErrorCode::Auth,
            ErrorClass::Http,
            "refusing to send the token to a host other than the configured remote",
        ));
    }
    if n > 1 {
        // libgit2 asks again when the server answered 401 to our credential; asking forever would loop.
        return Err(git2::Error::new(
            ErrorCode::Auth,
            ErrorClass::Http,
            "the remote rejected the credential",
        ));
    }
    if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
        return Err(git2::Error::new(
            ErrorCode::Auth,
            ErrorClass::Http,
            "the remote does not accept username/password (token) authentication",
        ));
    }
    Cred::userpass_plaintext(TOKEN_USER, token.expose())
}

/// Classifies a libgit2 error from a network operation against `url`.
fn remote_error(err: git2::Error, url: &str, token: &Secret, trace: &AuthTrace) -> RepoError {
    let message = redact(err.message(), token);
    let url = url.to_string();
    if err.code() == ErrorCode::Auth || trace.asks.get() > 1 {
        return RepoError::Auth { url, message };
    }
    match http_status(&message) {
        Some(401) | Some(403) => return RepoError::Auth { url, message },
        Some(404) => return RepoError::RemoteNotFound { url, message },
        Some(s) if s >= 500 || s == 429 => return RepoError::Network { url, message },
        Some(_) => {
            return RepoError::Git {
                context: format!("talking to {url}"),
                message,
                class: err.class(),
            }
        }
        None => {}
    }
    match err.class() {
        ErrorClass::Net | ErrorClass::Ssl | ErrorClass::Http | ErrorClass::Os => {
            RepoError::Network { url, message }
        }
        class => RepoError::Git {
            context: format!("talking to {url}"),
            message,
            class,
        },
    }
}

/// The HTTP status in libgit2's "unexpected http status code: 404" style messages.
fn http_status(message: &str) -> Option<u16> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("status code: ")? + "status code: ".len();
    lower[at..].get(..3)?.parse().ok()
}

/// Belt and braces: the token is never in a URL, but make sure no message can carry it.
fn redact(message: &str, token: &Secret) -> String {
    let t = token.expose();
    if t.is_empty() {
        message.to_string()
    } else {
        message.replace(t, "[redacted]")
    }
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

/// Clones `url` into `dest` (which must not exist or be empty) and checks out `base`.
///
/// The token goes only to the credential callback; `url` must not carry credentials itself.
pub fn clone(url: &str, dest: &Path, base: &str, token: &Secret) -> Result<Repository, RepoError> {
    check_url(url)?;
    valid_branch(base)?;
    let trace = AuthTrace::default();
    let mut fetch = FetchOptions::new();
    fetch
        .remote_callbacks(callbacks(url, token, &trace))
        .follow_redirects(RemoteRedirect::None);
    let mut builder = RepoBuilder::new();
    builder.fetch_options(fetch).branch(base);
    tracing::debug!(url, base, dest = %dest.display(), "cloning");
    builder.clone(url, dest).map_err(|err| {
        // Asking for a branch the remote lacks fails after the fetch, at the lookup of the remote-tracking ref.
        if err.code() == ErrorCode::NotFound && err.class() == ErrorClass::Reference {
            RepoError::BranchNotFound {
                branch: base.to_string(),
                remote: true,
            }
        } else {
            remote_error(err, url, token, &trace)
        }
    })
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

/// Fetches the remote's `branch` again (into `refs/remotes/origin/<branch>`) and returns it as [`remote_branch`]
/// does: after a push was refused, whether the branch now holds this job's work (another worker of the same job got
/// there first) or someone else's.
pub fn refresh_remote_branch(
    repo: &Repository,
    url: &str,
    branch: &str,
    token: &Secret,
) -> Result<Option<RemoteBranch>, RepoError> {
    check_url(url)?;
    valid_branch(branch)?;
    let trace = AuthTrace::default();
    let mut fetch = FetchOptions::new();
    fetch
        .remote_callbacks(callbacks(url, token, &trace))
        .follow_redirects(RemoteRedirect::None);
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| remote_error(e, url, token, &trace))?;
    let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    match remote.fetch(&[spec.as_str()], Some(&mut fetch), None) {
        Ok(()) => remote_branch(repo, branch),
        // The branch is not there (any more): nothing of anyone's.
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(remote_error(e, url, token, &trace)),
    }
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

/// Paths changed between the base and HEAD, sorted, for the pull request body.
///
/// `base_ref` is a branch name (looked up as `refs/remotes/origin/<base>`, then as a local branch) or anything
/// `git rev-parse` understands (a commit id). A rename shows as its old and its new path.
pub fn changed_files(repo: &Repository, base_ref: &str) -> Result<Vec<String>, RepoError> {
    let head =
        repo.head()
            .ok()
            .and_then(|h| h.target())
            .ok_or_else(|| RepoError::BranchNotFound {
                branch: "HEAD".into(),
                remote: false,
            })?;
    changed_files_at(repo, base_ref, head)
}

/// [`changed_files`] between the base and `commit` instead of HEAD.
pub fn changed_files_at(
    repo: &Repository,
    base_ref: &str,
    commit: Oid,
) -> Result<Vec<String>, RepoError> {
    let base = [
        format!("refs/remotes/origin/{base_ref}"),
        format!("refs/heads/{base_ref}"),
        base_ref.to_string(),
    ]
    .iter()
    .find_map(|spec| repo.revparse_single(spec).ok())
    .ok_or_else(|| RepoError::BranchNotFound {
        branch: base_ref.to_string(),
        remote: false,
    })?;
    let base_tree = base
        .peel_to_tree()
        .map_err(|e| local(&format!("reading the tree of {base_ref}"), e))?;
    let head_tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| local(&format!("reading commit {commit}"), e))?;
    let diff = repo
        .diff_tree_to_tree(Some(&base_tree), Some(&head_tree), None)
        .map_err(|e| local("diffing against the base", e))?;
    let mut paths: Vec<String> = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(p) = file.path() {
                let p = p.to_string_lossy().into_owned();
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// SHA-256 (hex) of the patch from `base` to `commit`: what a run statement records as the change's `diff`
/// digest and `drafter verify --repo` recomputes. The patch is libgit2's unified format with full 40-character
/// object ids, binary contents included, no rename detection and three lines of context, so the same two commits
/// give the same bytes on any host.
pub fn diff_digest(repo: &Repository, base: Oid, commit: Oid) -> Result<String, RepoError> {
    use sha2::Digest as _;
    let tree = |oid: Oid, what: &str| {
        repo.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| local(&format!("reading the {what} commit {oid}"), e))
    };
    let (old, new) = (tree(base, "base")?, tree(commit, "pushed")?);
    let mut opts = git2::DiffOptions::new();
    opts.show_binary(true).id_abbrev(40).context_lines(3);
    let diff = repo
        .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))
        .map_err(|e| local("diffing the change", e))?;
    let mut hasher = sha2::Sha256::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        // Content lines come without their origin marker; header lines carry their own text.
        if matches!(line.origin(), '+' | '-' | ' ') {
            hasher.update([line.origin() as u8]);
        }
        hasher.update(line.content());
        true
    })
    .map_err(|e| local("printing the diff", e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Pushes `refs/heads/<branch>` to the same name at `url` (never forced), authenticating with `token` through the
/// credential callback, via an anonymous remote so nothing is written to the clone's config.
///
/// A ref the server refused (protected branch, hook, non-fast-forward) is an error, even though libgit2 reports
/// the push itself as successful.
pub fn push(repo: &Repository, url: &str, branch: &str, token: &Secret) -> Result<(), RepoError> {
    check_url(url)?;
    valid_branch(branch)?;
    let refname = format!("refs/heads/{branch}");
    if repo.find_reference(&refname).is_err() {
        return Err(RepoError::BranchNotFound {
            branch: branch.to_string(),
            remote: false,
        });
    }
    let trace = AuthTrace::default();
    let rejected: RefCell<Option<String>> = RefCell::new(None);
    // What the server printed (hooks, GitHub's "GH006: Protected branch update failed"): the useful half of a refusal.
    let remote_said: RefCell<String> = RefCell::new(String::new());
    let mut cb = callbacks(url, token, &trace);
    cb.sideband_progress(|data| {
        let mut said = remote_said.borrow_mut();
        if said.len() < MAX_REMOTE_TEXT {
            said.push_str(&String::from_utf8_lossy(data));
        }
        true
    });
    cb.push_update_reference(|name, status| {
        if let Some(msg) = status {
            let mut slot = rejected.borrow_mut();
            if slot.is_none() {
                *slot = Some(format!("{name}: {msg}"));
            }
        }
        Ok(())
    });
    let mut opts = PushOptions::new();
    opts.remote_callbacks(cb)
        .follow_redirects(RemoteRedirect::None);
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| remote_error(e, url, token, &trace))?;
    tracing::debug!(url, branch, "pushing");
    // No leading `+`: a non-fast-forward update is refused rather than overwriting someone's work.
    remote
        .push(&[format!("{refname}:{refname}")], Some(&mut opts))
        .map_err(|e| remote_error(e, url, token, &trace))?;
    drop(opts);
    if let Some(mut message) = rejected.into_inner() {
        let said = remote_said.into_inner();
        let said: Vec<&str> = said
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !said.is_empty() {
            message = format!("{message} (remote: {})", said.join(" / "));
        }
        if message.len() > MAX_REMOTE_TEXT {
            let mut end = MAX_REMOTE_TEXT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        return Err(RepoError::PushRejected {
            branch: branch.to_string(),
            message: redact(&message, token),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn identity() -> CommitIdentity {
        CommitIdentity {
            name: "drafter".into(),
            email: "drafter@example.com".into(),
        }
    }

    fn token() -> Secret {
        Secret::new("local-token-unused")
    }

    /// A bare repository with one commit on `main` holding `files`.
    fn bare_with(dir: &Path, files: &[(&str, &str)]) -> Repository {
        let bare = Repository::init_bare(dir).unwrap();
        let mut index = git2::Index::new().unwrap();
        for (path, content) in files {
            let blob = bare.blob(content.as_bytes()).unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: content.len() as u32,
                id: blob,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
        }
        let tree_id = index.write_tree_to(&bare).unwrap();
        {
            let tree = bare.find_tree(tree_id).unwrap();
            let sig = Signature::now("seed", "seed@example.com").unwrap();
            bare.commit(Some("refs/heads/main"), &sig, &sig, "seed", &tree, &[])
                .unwrap();
        }
        bare.set_head("refs/heads/main").unwrap();
        bare
    }

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository, Repository, String) {
        let tmp = tempfile::tempdir().unwrap();
        let bare = bare_with(&tmp.path().join("origin.git"), files);
        let url = format!("file://{}", tmp.path().join("origin.git").display());
        let work = clone(&url, &tmp.path().join("work"), "main", &token()).unwrap();
        (tmp, bare, work, url)
    }

    #[test]
    fn branch_names() {
        assert_eq!(
            branch_name("DEMO-1", "Fix the greeting"),
            "drafter/DEMO-1-fix-the-greeting"
        );
        assert_eq!(
            branch_name("DEMO-2", "  Don't crash on: \"weird\" input!!  "),
            "drafter/DEMO-2-don-t-crash-on-weird-input"
        );
        assert_eq!(
            branch_name("DEMO-3", "Überprüfe die Grüße 🎉"),
            "drafter/DEMO-3-berpr-fe-die-gr-e"
        );
        assert_eq!(branch_name("DEMO-4", ""), "drafter/DEMO-4-change");
        assert_eq!(
            branch_name("DEMO-5", "🎉🎉 ... ///"),
            "drafter/DEMO-5-change"
        );
        assert_eq!(branch_name("", "x"), "drafter/ticket-x");
        assert_eq!(
            branch_name("../evil key", "a.lock"),
            "drafter/evil-key-a-lock"
        );
        let long = branch_name("DEMO-6", &"word ".repeat(50));
        let slug = long.strip_prefix("drafter/DEMO-6-").unwrap();
        assert!(slug.len() <= MAX_SLUG, "{long}");
        assert!(!slug.ends_with('-'), "{long}");
        for name in [
            long,
            branch_name("X", "a..b"),
            branch_name("X", "@{upstream}"),
            branch_name("X", "-leading"),
            branch_name("X~^:?*[\\", "end."),
        ] {
            assert!(
                git2::Reference::is_valid_name(&format!("refs/heads/{name}")),
                "{name}"
            );
        }
    }

    #[test]
    fn trailers_form_a_block() {
        let msg = message_with_trailers(
            "Fix the greeting\nsecond line",
            "Body text.\n\nMore.\n",
            &[
                ("Drafter-Job", "j-1"),
                ("Co-authored-by", "Ann <a@x.org>"),
                ("bad key:", "v\nw"),
                ("Empty", ""),
            ],
        );
        assert_eq!(
            msg,
            "Fix the greeting second line\n\nBody text.\n\nMore.\n\nDrafter-Job: j-1\nCo-authored-by: Ann <a@x.org>\nbad-key: v w\n"
        );
        assert_eq!(message_with_trailers("S", "", &[]), "S\n");
        assert_eq!(
            message_with_trailers("S", " ", &[("K", "v")]),
            "S\n\nK: v\n"
        );
    }

    #[test]
    fn refuses_urls_with_credentials() {
        let tmp = tempfile::tempdir().unwrap();
        for url in [
            "https://x-access-token:ghp_abc@github.com/o/r.git",
            "https://user@github.com/o/r.git",
        ] {
            let err = clone(url, &tmp.path().join("w"), "main", &token())
                .err()
                .unwrap();
            assert!(matches!(err, RepoError::InvalidUrl { .. }), "{err}");
            assert!(!err.to_string().contains("ghp_abc"), "{err}");
            assert!(!err.is_retryable());
        }
        assert!(!tmp.path().join("w").exists());
    }

    #[test]
    fn clone_checks_out_base_and_missing_base_is_reported() {
        let (tmp, _bare, work, url) = setup(&[("README.md", "hello\n")]);
        assert_eq!(
            fs::read_to_string(work.workdir().unwrap().join("README.md")).unwrap(),
            "hello\n"
        );
        assert_eq!(work.head().unwrap().shorthand().ok(), Some("main"));
        let err = clone(&url, &tmp.path().join("w2"), "nope", &token())
            .err()
            .unwrap();
        assert!(
            matches!(&err, RepoError::BranchNotFound { branch, remote: true } if branch == "nope"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn commit_all_stages_new_modified_deleted_but_not_ignored() {
        let (_tmp, _bare, work, _url) = setup(&[
            ("README.md", "hello\n"),
            ("old.txt", "bye\n"),
            (".gitignore", "*.log\ntarget/\n"),
            ("src/lib.rs", "fn a() {}\n"),
        ]);
        let wd = work.workdir().unwrap().to_path_buf();
        create_branch(&work, "drafter/T-1-x").unwrap();
        assert_eq!(work.head().unwrap().shorthand().ok(), Some("drafter/T-1-x"));

        fs::write(wd.join("README.md"), "hello, world\n").unwrap();
        fs::remove_file(wd.join("old.txt")).unwrap();
        fs::create_dir_all(wd.join("src/deep")).unwrap();
        fs::write(wd.join("src/deep/new.rs"), "fn b() {}\n").unwrap();
        fs::write(wd.join("debug.log"), "noise\n").unwrap();
        fs::create_dir_all(wd.join("target")).unwrap();
        fs::write(wd.join("target/out"), "bin\n").unwrap();

        let oid = commit_all(&work, &identity(), "Change things\n")
            .unwrap()
            .unwrap();
        let commit = work.find_commit(oid).unwrap();
        assert_eq!(commit.author().name().ok(), Some("drafter"));
        assert_eq!(commit.author().email().ok(), Some("drafter@example.com"));
        assert_eq!(commit.message().ok(), Some("Change things\n"));
        let tree = commit.tree().unwrap();
        let blob = |p: &str| {
            tree.get_path(Path::new(p))
                .ok()
                .map(|e| work.find_blob(e.id()).unwrap().content().to_vec())
        };
        assert_eq!(blob("README.md").unwrap(), b"hello, world\n");
        assert_eq!(blob("src/deep/new.rs").unwrap(), b"fn b() {}\n");
        assert!(blob("old.txt").is_none(), "deletion staged");
        assert!(blob("debug.log").is_none(), "ignored file not staged");
        assert!(blob("target/out").is_none(), "ignored dir not staged");
        assert_eq!(work.head().unwrap().target(), Some(oid));

        assert_eq!(
            changed_files(&work, "main").unwrap(),
            vec!["README.md", "old.txt", "src/deep/new.rs"]
        );

        // Nothing changed since: no commit.
        assert_eq!(commit_all(&work, &identity(), "again").unwrap(), None);
        assert_eq!(work.head().unwrap().target(), Some(oid));
    }

    #[test]
    fn untracked_files_can_be_left_out_and_a_dry_staging_changes_no_index() {
        let (_tmp, _bare, work, _url) = setup(&[("app.py", "x = 1\n"), ("dist/keep.js", "1\n")]);
        let wd = work.workdir().unwrap().to_path_buf();
        create_branch(&work, "drafter/T-1-x").unwrap();
        let head_tree = work.head().unwrap().peel_to_tree().unwrap().id();
        fs::create_dir_all(wd.join("__pycache__")).unwrap();
        fs::write(wd.join("__pycache__/app.cpython-311.pyc"), b"\0\x01").unwrap();
        fs::write(wd.join("dist/new.js"), "2\n").unwrap();
        let mut asked = Vec::new();
        let mut leave = |p: &str, t: &Tracked| {
            asked.push((p.to_string(), t.has_dir("dist"), t.has_dir("__pycache__")));
            p.starts_with("__pycache__/")
        };
        // Only build products: the dry staging's tree is HEAD's plus dist/new.js, and the index file is untouched.
        let staged = stage_all(&work, &mut leave, false).unwrap();
        assert_eq!(staged.left_out, ["__pycache__/app.cpython-311.pyc"]);
        assert_ne!(staged.tree, head_tree);
        assert_eq!(
            asked,
            [
                ("__pycache__/app.cpython-311.pyc".to_string(), true, false),
                ("dist/new.js".to_string(), true, false)
            ]
        );
        assert!(work
            .index()
            .unwrap()
            .get_path(Path::new("dist/new.js"), 0)
            .is_none());
        fs::remove_file(wd.join("dist/new.js")).unwrap();
        let staged = stage_all(&work, &mut |p, _| p.starts_with("__pycache__/"), false).unwrap();
        assert_eq!(staged.tree, head_tree, "only build products: HEAD's tree");
        let (commit, left) = commit_all_except(&work, &identity(), "m", &mut |p, _| {
            p.starts_with("__pycache__/")
        })
        .unwrap();
        assert_eq!(commit, None);
        assert_eq!(left, ["__pycache__/app.cpython-311.pyc"]);
        // A modified tracked file is never asked about.
        fs::write(wd.join("app.py"), "x = 2\n").unwrap();
        let (commit, _) = commit_all_except(&work, &identity(), "m", &mut |p, _| {
            assert_ne!(p, "app.py", "a tracked file was asked about");
            true
        })
        .unwrap();
        let tree = work.find_commit(commit.unwrap()).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("__pycache__")).is_err());
        assert!(tree.get_path(Path::new("app.py")).is_ok());
    }

    #[test]
    fn empty_diff_is_none() {
        let (_tmp, _bare, work, _url) = setup(&[("a.txt", "a\n")]);
        let before = work.head().unwrap().target();
        // Only an ignored-by-default thing: nothing.
        assert_eq!(commit_all(&work, &identity(), "nothing").unwrap(), None);
        assert_eq!(work.head().unwrap().target(), before);
        assert!(changed_files(&work, "main").unwrap().is_empty());
    }

    #[test]
    fn push_creates_ref_with_expected_tree_and_writes_no_config() {
        let (_tmp, bare, work, url) = setup(&[("a.txt", "a\n")]);
        let config_before = fs::read_to_string(work.path().join("config")).unwrap();
        create_branch(&work, "drafter/T-2-y").unwrap();
        fs::write(work.workdir().unwrap().join("b.txt"), "b\n").unwrap();
        let oid = commit_all(&work, &identity(), "add b").unwrap().unwrap();
        push(&work, &url, "drafter/T-2-y", &token()).unwrap();

        let pushed = bare.find_reference("refs/heads/drafter/T-2-y").unwrap();
        assert_eq!(pushed.target(), Some(oid));
        let tree = pushed.peel_to_tree().unwrap();
        assert!(tree.get_path(Path::new("b.txt")).is_ok());
        assert_eq!(
            tree.id(),
            work.find_commit(oid).unwrap().tree_id(),
            "same tree on the remote"
        );
        // main untouched
        assert_ne!(bare.refname_to_id("refs/heads/main").unwrap(), oid);
        assert_eq!(
            fs::read_to_string(work.path().join("config")).unwrap(),
            config_before,
            "push wrote nothing to config"
        );
    }

    #[test]
    fn push_of_missing_branch_is_refused_locally() {
        let (_tmp, _bare, work, url) = setup(&[("a.txt", "a\n")]);
        let err = push(&work, &url, "drafter/none", &token()).err().unwrap();
        assert!(
            matches!(err, RepoError::BranchNotFound { remote: false, .. }),
            "{err:?}"
        );
        let err = push(&work, &url, "bad..name", &token()).err().unwrap();
        assert!(
            matches!(err, RepoError::InvalidBranchName { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn token_only_goes_to_the_configured_host() {
        assert_eq!(
            origin_of("https://GitHub.com/o/r.git").as_deref(),
            Some("github.com:443")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/o/r.git").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(origin_of("/tmp/x"), None);
        let token = token();
        let up = CredentialType::USER_PASS_PLAINTEXT;
        let expected = origin_of("https://github.com/o/r.git");
        let trace = AuthTrace::default();
        // After a redirect to another host: no token.
        assert!(credential(
            expected.as_deref(),
            "https://evil.example/o/r.git",
            up,
            &token,
            &trace
        )
        .is_err());
        let trace = AuthTrace::default();
        assert!(credential(
            expected.as_deref(),
            "https://github.com/o/r.git",
            up,
            &token,
            &trace
        )
        .is_ok());
        // Asked again: the first was refused; stop instead of looping.
        assert!(credential(
            expected.as_deref(),
            "https://github.com/o/r.git",
            up,
            &token,
            &trace
        )
        .is_err());
        let trace = AuthTrace::default();
        assert!(credential(
            expected.as_deref(),
            "https://github.com/o/r.git",
            CredentialType::SSH_KEY,
            &token,
            &trace
        )
        .is_err());
    }

    #[test]
    fn http_status_is_parsed() {
        assert_eq!(http_status("unexpected http status code: 502"), Some(502));
        assert_eq!(http_status("unexpected HTTP status code: 404"), Some(404));
        assert_eq!(http_status("something else"), None);
        let err = RepoError::Network {
            url: "u".into(),
            message: "m".into(),
        };
        assert!(err.is_retryable());
    }
}
