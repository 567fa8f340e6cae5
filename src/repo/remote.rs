//! The only part of `repo` that talks to a remote: clone, fetch of a pushed branch, push, and the credential
//! callback that is the one place the token is handed to libgit2 (see the module docs of [`super`] for why).

use super::*;

/// Refuses URLs with `user[:pass]@`: a credential there would be written to `.git/config`.
pub(super) fn check_url(url: &str) -> Result<(), RepoError> {
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
pub(super) struct AuthTrace {
    /// How many times libgit2 asked for credentials. A second ask means the first was refused.
    asks: Cell<u32>,
}

/// `host:port` of a URL, to check where the token would go. `None` for plain paths.
pub(super) fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?
    ))
}

/// Callbacks that hand over the token (once, and only to the host of `url`) and record what happened.
pub(super) fn callbacks<'a>(
    url: &str,
    token: &'a Secret,
    trace: &'a AuthTrace,
) -> RemoteCallbacks<'a> {
    let expected = origin_of(url);
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |asked_url, _user, allowed| {
        credential(expected.as_deref(), asked_url, allowed, token, trace)
    });
    cb
}

/// The credential callback's decision: the token for the expected host, on the first ask only.
pub(super) fn credential(
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
pub(super) fn remote_error(
    err: git2::Error,
    url: &str,
    token: &Secret,
    trace: &AuthTrace,
) -> RepoError {
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
pub(super) fn http_status(message: &str) -> Option<u16> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("status code: ")? + "status code: ".len();
    lower[at..].get(..3)?.parse().ok()
}

/// Belt and braces: the token is never in a URL, but make sure no message can carry it.
pub(super) fn redact(message: &str, token: &Secret) -> String {
    let t = token.expose();
    if t.is_empty() {
        message.to_string()
    } else {
        message.replace(t, "[redacted]")
    }
}

/// Clones `url` into `dest` (which must not exist or be empty) and checks out `base`.
///
/// The token goes only to the credential callback; `url` must not carry credentials itself.
pub fn clone(url: &str, dest: &Path, base: &str, token: &Secret) -> Result<Repository, RepoError> {
    clone_with(url, dest, base, &[], token)
}

/// [`clone`], also fetching the branches in `also` (into `refs/remotes/origin/`) where the remote has them: the
/// branches a job may reuse or must not overwrite. No other branch is fetched.
pub fn clone_with(
    url: &str,
    dest: &Path,
    base: &str,
    also: &[String],
    token: &Secret,
) -> Result<Repository, RepoError> {
    check_url(url)?;
    valid_branch(base)?;
    for b in also {
        valid_branch(b)?;
    }
    let trace = AuthTrace::default();
    let mut fetch = FetchOptions::new();
    fetch
        .remote_callbacks(callbacks(url, token, &trace))
        .follow_redirects(RemoteRedirect::None);
    let mut builder = RepoBuilder::new();
    // Only the base branch and `also`: a repository drafter has worked on for a while holds one branch per job, and
    // fetching them all made every clone slower than the last (a 1,000-job burst slowed to 0.5 jobs/s).
    let specs: Vec<String> = std::iter::once(base)
        .chain(also.iter().map(String::as_str))
        .map(|b| format!("+refs/heads/{b}:refs/remotes/origin/{b}"))
        .collect();
    builder
        .fetch_options(fetch)
        .branch(base)
        .remote_create(move |repo, name, url| {
            repo.remote_with_fetch(name, url, &specs[0])?;
            for spec in &specs[1..] {
                repo.remote_add_fetch(name, spec)?;
            }
            // The remote as configured now (with every refspec), for the clone's fetch.
            repo.find_remote(name)
        });
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
