//! Fast clones: one bare mirror per remote under a cache directory (`<data_dir>/mirrors`), fetched before each job,
//! and the job's workspace made from it locally.
//!
//! Why it is shaped this way:
//! - **One fetch serves concurrent jobs.** The fetch runs under an exclusive file lock on `<name>.lock`; a job
//!   that was waiting for the lock while another's fetch ran skips its own (that fetch finished after the job
//!   asked, so it is as fresh as one the job would have made). Workspaces are made under a shared lock, so they
//!   run side by side and never see a fetch or an eviction half done.
//! - **Nothing of the mirror reaches the workspace**, whose `.git` goes into the sandbox. The mirror holds every
//!   branch; the workspace only what the base and the job's branches reach, as a plain clone would. So the mirror
//!   keeps, per base branch, a *seed*: packs of exactly the objects the branch reaches (built once, then a small
//!   pack per move of the branch, rebuilt on a force-push), whose copies (not hard links, not
//!   `objects/info/alternates`) make the workspace self-contained: it works after the mirror is gone. Copying a
//!   pack and its index is what makes this fast: a clone's cost is mostly indexing the pack it receives. Its
//!   `origin` is the forge URL; only the base and the job's branches become refs.
//! - **The token stays in the credential callback** (see [`super::remote`]): the mirror's config holds the URL,
//!   which [`super::remote::check_url`] has checked carries no credential.
//! - **A corrupt mirror is re-cloned.** A fetch that fails for a local reason (not the network, not the
//!   credential), or a workspace that cannot be built from the mirror's objects, removes the mirror and clones it
//!   again once, logged.
//! - **The files are written ahead of time.** With spares on ([`MirrorCache::with_spares`], `spare.rs`), the
//!   workspace the next job of a repository needs is made in the background, and taken with a `rename`.
//! - **Bounded.** After each use the cache is trimmed to `max_bytes`, least recently used mirror first; a mirror
//!   another job holds is skipped, and the one just used is never evicted.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use git2::{AutotagOption, FetchPrune};
use sha2::{Digest, Sha256};

use super::remote::{callbacks, check_url, remote_error, AuthTrace};
use super::*;
use spare::Spares;
use workspace::{adopt_first_pack, update_seeds, workspace_from, Built};

mod spare;
mod workspace;

/// The mirror's refspec: every branch, as branches (a bare mirror), forced, so force-pushes and deletions (with
/// pruning) are reflected.
const MIRROR_SPEC: &str = "+refs/heads/*:refs/heads/*";

/// Packs a mirror may hold before they are rewritten as one: each fetch that brings anything adds a pack (and every
/// job's pushed branch comes back in the next fetch), and every workspace copies them all.
const MAX_PACKS: usize = 16;

/// Directory in the mirror holding one *seed* per base branch: packs of exactly the objects reachable from the
/// branch's tip, which workspaces copy (the mirror's own packs also hold every other branch's objects, which must
/// not reach a job's workspace, and with it the sandbox).
const SEEDS_DIR: &str = "drafter-seeds";

/// Packs a seed may grow to (one per move of its branch) before it is rebuilt as one.
const MAX_SEED_PACKS: usize = 32;

/// File in the mirror directory: when its last fetch finished (milliseconds since the epoch).
const FETCHED_FILE: &str = "drafter-fetched";

/// File in the mirror directory: when a workspace was last made from it (milliseconds since the epoch), for
/// least-recently-used eviction.
const USED_FILE: &str = "drafter-used";

/// A cache of bare mirrors, one per remote URL. Cheap to clone; every method is blocking.
#[derive(Debug, Clone)]
pub struct MirrorCache {
    root: PathBuf,
    max_bytes: u64,
    spares: Option<Spares>,
}

/// What [`MirrorCache::clone_with`] did besides making the workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorUse {
    /// The mirror was cloned from scratch (it was missing, or corrupt).
    pub cloned: bool,
    /// The mirror was fetched (an existing mirror brought up to date).
    pub fetched: bool,
    /// Another job's fetch, finished while this one waited for the lock, served this job.
    pub coalesced: bool,
    /// The mirror was found corrupt and re-cloned.
    pub repaired: bool,
    /// The workspace was a spare made ahead of time (see [`MirrorCache::with_spares`]).
    pub spare: bool,
}

impl MirrorCache {
    /// A cache under `root` (created on first use), trimmed to `max_bytes` after each use.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> MirrorCache {
        MirrorCache {
            root: root.into(),
            max_bytes,
            spares: None,
        }
    }

    /// Keeps a spare workspace per mirror and base branch in `dir`, made in the background after each use, so the
    /// next job of the repository takes its workspace with one `rename` instead of writing every file (see
    /// `spare.rs`). `dir` must be on the file system where workspaces are made, and private to this user (it is
    /// created with mode 0700; if it is not private, spares stay off, with a warning).
    pub fn with_spares(mut self, dir: impl Into<PathBuf>) -> MirrorCache {
        self.spares = Spares::open(dir.into());
        self
    }

    /// Waits for the spare workspaces being made in the background (for benchmarks and tests, which measure or
    /// look with nothing running).
    pub fn settle(&self) {
        if let Some(s) = &self.spares {
            s.settle();
        }
    }

    /// The directory holding the mirrors.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the mirror of `url` lives: a readable name from the URL's host and path plus a digest of the whole
    /// URL, so two URLs never share a mirror.
    pub fn mirror_path(&self, url: &str) -> PathBuf {
        self.root.join(format!("{}.git", mirror_name(url)))
    }

    /// [`super::clone_with`] through the mirror: brings the mirror of `url` up to date (or clones it), then makes
    /// the workspace at `dest` from it, with `origin` at `url`, `refs/remotes/origin/<b>` for the base and each
    /// branch of `also` the remote has, and the base checked out.
    pub fn clone_with(
        &self,
        url: &str,
        dest: &Path,
        base: &str,
        also: &[String],
        token: &Secret,
    ) -> Result<(Repository, MirrorUse), RepoError> {
        check_url(url)?;
        valid_branch(base)?;
        for b in also {
            valid_branch(b)?;
        }
        fs::create_dir_all(&self.root).map_err(io("creating the mirror directory", &self.root))?;
        let name = mirror_name(url);
        let dir = self.root.join(format!("{name}.git"));
        let lock_path = self.root.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening the mirror lock", &lock_path))?;
        let asked = now_ms();
        let mut used = MirrorUse::default();
        // The mirror can be evicted between the fetch (exclusive lock) and the workspace (shared lock): then again.
        for _ in 0..3 {
            flock(&lock, libc::LOCK_EX).map_err(io("locking the mirror", &lock_path))?;
            let refreshed = self.refresh(url, &dir, base, asked, token, &mut used);
            let _ = flock(&lock, libc::LOCK_UN);
            refreshed?;
            flock(&lock, libc::LOCK_SH).map_err(io("locking the mirror", &lock_path))?;
            if !dir.is_dir() {
                let _ = flock(&lock, libc::LOCK_UN);
                continue;
            }
            let built = match &self.spares {
                Some(spares) => match spares.take(&dir, url, dest, base, also) {
                    Ok(Some(repo)) => {
                        used.spare = true;
                        Ok(repo)
                    }
                    Ok(None) => workspace_from(&dir, url, dest, base, also, true),
                    Err(e) => Err(e),
                },
                None => workspace_from(&dir, url, dest, base, also, true),
            };
            if let Err(Built::Stale) = built {
                // The base moved (another job's fetch) between our refresh and now: refresh again.
                let _ = flock(&lock, libc::LOCK_UN);
                clear_dir(dest)?;
                continue;
            }
            let built = match built {
                Err(Built::Corrupt(err)) => {
                    let _ = flock(&lock, libc::LOCK_UN);
                    tracing::warn!(mirror = %dir.display(), error = %err, "the mirror cannot make a workspace; re-cloning it");
                    flock(&lock, libc::LOCK_EX).map_err(io("locking the mirror", &lock_path))?;
                    let recloned = self.reclone_seeded(url, &dir, base, token);
                    let _ = flock(&lock, libc::LOCK_UN);
                    recloned?;
                    used.repaired = true;
                    used.cloned = true;
                    flock(&lock, libc::LOCK_SH).map_err(io("locking the mirror", &lock_path))?;
                    clear_dir(dest)?;
                    workspace_from(&dir, url, dest, base, also, true).map_err(Built::into_error)
                }
                other => other.map_err(Built::into_error),
            };
            if built.is_ok() {
                write_stamp(&dir.join(USED_FILE), now_ms());
            }
            let _ = flock(&lock, libc::LOCK_UN);
            let repo = built?;
            if let Err(e) = self.evict(&dir) {
                tracing::warn!(error = %e, "trimming the mirror cache failed");
            }
            if let Some(spares) = &self.spares {
                spares.refill(&dir, &lock_path, url, base);
            }
            return Ok((repo, used));
        }
        Err(RepoError::Io {
            context: format!("mirror {} kept disappearing", dir.display()),
            source: std::io::Error::other("evicted while in use"),
        })
    }

    /// Under the exclusive lock: [`Self::sync`], then the seeds brought to their branches' tips (every seed after a
    /// fetch, else the job's base's). A mirror whose seeds cannot be built is re-cloned, once.
    fn refresh(
        &self,
        url: &str,
        dir: &Path,
        base: &str,
        asked: u64,
        token: &Secret,
        used: &mut MirrorUse,
    ) -> Result<(), RepoError> {
        let moved = self.sync(url, dir, base, asked, token, used)?;
        let seeded = Repository::open_bare(dir)
            .map_err(|e| local("opening the mirror", e))
            .and_then(|m| update_seeds(&m, dir, base, moved));
        if let Err(e) = seeded {
            tracing::warn!(mirror = %dir.display(), error = %e, "the mirror cannot seed workspaces; re-cloning it");
            self.reclone_seeded(url, dir, base, token)?;
            used.repaired = true;
            used.cloned = true;
        }
        Ok(())
    }

    /// [`Self::reclone`], then the seed of `base`.
    fn reclone_seeded(
        &self,
        url: &str,
        dir: &Path,
        base: &str,
        token: &Secret,
    ) -> Result<(), RepoError> {
        self.reclone(url, dir, base, token)?;
        let m = Repository::open_bare(dir).map_err(|e| local("opening the mirror", e))?;
        update_seeds(&m, dir, base, true)
    }

    /// Clones the mirror if missing, else fetches it unless a fetch finished after `asked`. `true` when its
    /// branches may have moved.
    fn sync(
        &self,
        url: &str,
        dir: &Path,
        base: &str,
        asked: u64,
        token: &Secret,
        used: &mut MirrorUse,
    ) -> Result<bool, RepoError> {
        let existing = if dir.is_dir() {
            match Repository::open_bare(dir) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(mirror = %dir.display(), error = %e.message(), "the mirror does not open; re-cloning it");
                    used.repaired = true;
                    None
                }
            }
        } else {
            None
        };
        let Some(mirror) = existing else {
            self.reclone(url, dir, base, token)?;
            used.cloned = true;
            return Ok(true);
        };
        if read_stamp(&dir.join(FETCHED_FILE)) >= asked {
            used.coalesced = true;
            return Ok(false);
        }
        match fetch_mirror(&mirror, url, token, MIRROR_SPEC) {
            Ok(()) => {
                write_stamp(&dir.join(FETCHED_FILE), now_ms());
                used.fetched = true;
                if pack_files(dir).len() > MAX_PACKS {
                    // Best effort: the old packs stay until the new one is whole.
                    match compact(&mirror, dir) {
                        Ok(n) => {
                            tracing::info!(mirror = %dir.display(), packs = n, "mirror packs rewritten as one")
                        }
                        Err(e) => {
                            tracing::warn!(mirror = %dir.display(), error = %e, "rewriting the mirror's packs failed")
                        }
                    }
                }
                Ok(true)
            }
            // The forge's answer: the mirror is not at fault.
            Err(e @ (RepoError::Auth { .. } | RepoError::RemoteNotFound { .. })) => Err(e),
            Err(e @ RepoError::Network { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(mirror = %dir.display(), error = %e, "fetching into the mirror failed; re-cloning it");
                drop(mirror);
                self.reclone(url, dir, base, token)?;
                used.repaired = true;
                used.cloned = true;
                Ok(true)
            }
        }
    }

    /// Replaces the mirror at `dir` with a fresh clone (made beside it, then renamed into place).
    ///
    /// `base` is fetched alone first: the pack the forge sends for it holds exactly what the branch reaches, indexed
    /// already, so it becomes the base's seed as it is (building one with libgit2's pack builder searches for deltas
    /// over the whole history: 20 s for the bench's repository). Then every branch.
    fn reclone(&self, url: &str, dir: &Path, base: &str, token: &Secret) -> Result<(), RepoError> {
        // One name: the exclusive lock is held, and what a killed process left there is cleared.
        let tmp = dir.with_extension("tmp");
        let _ = fs::remove_dir_all(&tmp);
        let made = (|| {
            let mirror =
                Repository::init_bare(&tmp).map_err(|e| local("creating the mirror", e))?;
            mirror
                .remote_with_fetch("origin", url, MIRROR_SPEC)
                .map_err(|e| local("configuring the mirror", e))?;
            let only_base = format!("+refs/heads/{base}:refs/heads/{base}");
            match fetch_mirror(&mirror, url, token, &only_base) {
                Ok(()) => adopt_first_pack(&mirror, &tmp, base)?,
                // E.g. no such branch: the job fails on it later, with the usual error; the mirror is fine.
                Err(RepoError::Git { .. }) => {}
                Err(e) => return Err(e),
            }
            fetch_mirror(&mirror, url, token, MIRROR_SPEC)?;
            write_stamp(&tmp.join(FETCHED_FILE), now_ms());
            Ok::<(), RepoError>(())
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io("removing the old mirror", dir))?;
        }
        fs::rename(&tmp, dir).map_err(io("moving the new mirror into place", dir))?;
        tracing::info!(mirror = %dir.display(), "mirror cloned");
        Ok(())
    }

    /// Removes least recently used mirrors (never `keep`, never one another job holds) until the cache is within
    /// its bound. Returns the mirrors removed.
    pub fn evict(&self, keep: &Path) -> Result<Vec<PathBuf>, RepoError> {
        let mut mirrors = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io("listing the mirrors", &self.root))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "git") && path.is_dir() {
                let spares = self.spares.as_ref().map_or(0, |s| s.bytes_of(&path));
                let size = dir_size(&path) + spares;
                let used = read_stamp(&path.join(USED_FILE));
                mirrors.push((used, size, path));
            }
        }
        let mut total: u64 = mirrors.iter().map(|m| m.1).sum();
        mirrors.sort();
        let mut removed = Vec::new();
        for (_, size, path) in mirrors {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            let lock_path = path.with_extension("lock");
            let Ok(lock) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
            else {
                continue;
            };
            // A mirror in use is skipped, not waited for.
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue;
            }
            let gone = fs::remove_dir_all(&path);
            if let Some(spares) = &self.spares {
                spares.remove_of(&path);
            }
            let _ = flock(&lock, libc::LOCK_UN);
            match gone {
                Ok(()) => {
                    tracing::info!(mirror = %path.display(), bytes = size, "mirror evicted (least recently used)");
                    total = total.saturating_sub(size);
                    removed.push(path);
                }
                Err(e) => {
                    tracing::warn!(mirror = %path.display(), error = %e, "evicting a mirror failed")
                }
            }
        }
        if total > self.max_bytes {
            tracing::warn!(
                bytes = total,
                max = self.max_bytes,
                "the mirror cache is over its bound (the mirror in use is never evicted)"
            );
        }
        Ok(removed)
    }

    /// Bytes the cache's mirrors take on disk (file sizes).
    pub fn size(&self) -> u64 {
        dir_size(&self.root)
    }
}

/// The mirror's pack files (`.pack`), by path.
fn pack_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir.join("objects").join("pack"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites every object reachable from the mirror's branches as one pack, then removes the packs it replaces (what
/// `git repack -a -d` does; objects of pruned branches go with them). Returns how many packs were replaced.
fn compact(mirror: &Repository, dir: &Path) -> Result<usize, RepoError> {
    let old = pack_files(dir);
    let pack_dir = dir.join("objects").join("pack");
    let mut walk = mirror
        .revwalk()
        .map_err(|e| local("listing the mirror's history", e))?;
    walk.push_glob("refs/heads/*")
        .map_err(|e| local("listing the mirror's history", e))?;
    let mut pb = mirror
        .packbuilder()
        .map_err(|e| local("repacking the mirror", e))?;
    pb.set_threads(0);
    pb.insert_walk(&mut walk)
        .map_err(|e| local("repacking the mirror", e))?;
    pb.write(&pack_dir, 0)
        .map_err(|e| local("repacking the mirror", e))?;
    let new = pb
        .name()
        .ok()
        .flatten()
        .map(|n| format!("pack-{n}"))
        .ok_or_else(|| RepoError::Git {
            context: "repacking the mirror".into(),
            message: "the new pack has no name".into(),
            class: ErrorClass::Odb,
        })?;
    let mut replaced = 0;
    for pack in old {
        if pack.file_stem().is_some_and(|s| s == new.as_str()) {
            continue;
        }
        // The index first: a pack without its index is ignored, an index without its pack is an error.
        let _ = fs::remove_file(pack.with_extension("idx"));
        let _ = fs::remove_file(pack.with_extension("rev"));
        let _ = fs::remove_file(&pack);
        replaced += 1;
    }
    Ok(replaced)
}

/// flock(2) on a lock file: `LOCK_EX`, `LOCK_SH`, `LOCK_UN`, with `LOCK_NB` to not wait (std's `File::lock` is
/// newer than the crate's minimum Rust). Held per open file, so two handles in one process exclude each other too.
fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor is borrowed from `file`, open for the whole call; flock reads no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `<host>_<path>-<12 hex of sha256(url)>`, the readable part cut to 80 characters.
fn mirror_name(url: &str) -> String {
    let readable = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .trim_end_matches('/')
        .trim_end_matches(".git");
    let mut name: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(80);
    let digest = Sha256::digest(url.as_bytes());
    format!("{name}-{}", &hex::encode(digest)[..12])
}

/// Fetches `spec` (every branch: [`MIRROR_SPEC`]) of `url` into the mirror, pruning branches the remote no longer
/// has.
fn fetch_mirror(
    mirror: &Repository,
    url: &str,
    token: &Secret,
    spec: &str,
) -> Result<(), RepoError> {
    let trace = AuthTrace::default();
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks(url, token, &trace))
        .follow_redirects(RemoteRedirect::None)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::None);
    // Anonymous: the URL checked here is the one fetched, whatever the mirror's config says.
    let mut remote = mirror
        .remote_anonymous(url)
        .map_err(|e| remote_error(e, url, token, &trace))?;
    tracing::debug!(url, "fetching into the mirror");
    remote
        .fetch(&[spec], Some(&mut opts), Some("drafter: mirror fetch"))
        .map_err(|e| remote_error(e, url, token, &trace))
}

/// Empties `dest` (for a second try at the workspace), leaving the directory.
fn clear_dir(dest: &Path) -> Result<(), RepoError> {
    if dest.exists() {
        fs::remove_dir_all(dest).map_err(io("clearing the workspace", dest))?;
    }
    Ok(())
}

/// Sum of file sizes under `path` (symlinks not followed).
fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A timestamp file's value; 0 when missing or unreadable.
fn read_stamp(path: &Path) -> u64 {
    read_text(path).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Writes a timestamp file (see [`write_text`]). Best effort: a lost stamp only makes eviction or coalescing less
/// exact.
fn write_stamp(path: &Path, ms: u64) {
    write_text(path, &ms.to_string());
}

/// A small file's text, trimmed; `None` when missing or unreadable.
fn read_text(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Writes a small file atomically (a unique temporary name, then a rename): jobs holding the shared lock write
/// stamps side by side, and a reader never sees half a file.
fn write_text(path: &Path, text: &str) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(file = %path.display(), error = %e, "writing a mirror file failed");
    }
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RepoError + 'a {
    move |source| RepoError::Io {
        context: format!("{context} ({})", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests;
