//! Spare workspaces: per mirror and base branch, one workspace made ahead of time, checked out and self-contained,
//! that the next job of that repository takes with one `rename`.
//!
//! Why: with a warm mirror, what is left of a job's clone is writing the files, and that is the whole cost (about
//! 1.5 s for 20,000 files, however the objects arrived). Like the sandbox's warm pool, the spare moves that work off
//! the job's path: after a job takes the spare (or makes its workspace without one), a background thread makes the
//! next one from the mirror's seed, at low priority.
//!
//! How it stays correct and private:
//! - **Only the base's objects.** A spare is made exactly like a job's workspace ([`super::workspace`]): the
//!   base's seed, `origin` at the forge URL, nothing of other branches. The job's own branches are added when it
//!   takes the spare, under the mirror's lock.
//! - **At the base's tip, or moved there.** A spare records the URL and the commit it holds. The taker compares
//!   that with the mirror's base: the same, it is used as is; an ancestor (the base moved forward), the seed's newer
//!   packs are copied in and only the files that changed are rewritten; anything else (a force-push, another URL),
//!   it is thrown away and the workspace made as usual.
//! - **Fresh and whole, or not used.** A spare made more than a day ago is not used (temporary-directory cleaners
//!   remove old files), nor one whose pack files are not the ones it was made with (names and sizes). Any error
//!   while adopting a spare throws it away and makes the workspace as usual; a damaged spare never costs the
//!   mirror a re-clone.
//! - **Taken once.** Taking is a `rename` of the spare onto the job's workspace path: of two jobs, one wins; the
//!   other finds nothing and makes its own. A spare is only put in place, by `rename`, once whole.
//! - **Private.** Spares live beside the jobs' workspaces (a `rename` cannot cross file systems), in a directory
//!   that must be owned by this user, not a symbolic link, and closed to everyone else; otherwise spares are off,
//!   with a warning, because a workspace planted there would reach a job.
//! - **Bounded.** A spare counts toward its mirror's size, and goes when the mirror is evicted; spares whose mirror
//!   is gone, and half-made ones a killed process left, are swept before each build.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use super::workspace::{copy_packs, point_refs, seed_dir, tips, workspace_from, Built};
use super::*;

/// Changed paths up to which bringing a spare forward names them to the checkout (past it, the whole tree is
/// compared).
const MAX_NAMED_PATHS: usize = 2000;

/// Age past which a spare is not used: systemd-tmpfiles and tmpreaper remove files from temporary directories by
/// age (10 days by default), which would leave a spare short of files without a trace a quick check could see.
const MAX_AGE_MS: u64 = 24 * 3600 * 1000;

/// The file in a spare's `.git` that says what it holds; removed when a job takes it.
const MARKER: &str = "drafter-spare";

/// Where spares live, and the background builds not yet joined.
#[derive(Debug, Clone)]
pub(super) struct Spares {
    root: PathBuf,
    builds: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// What a spare holds, from its marker.
struct Marker {
    url: String,
    tip: Oid,
    mirror: PathBuf,
    bytes: u64,
    /// When it was made (milliseconds since the epoch).
    made: u64,
    /// Its pack files as made: `name:size` each.
    packs: String,
}

impl Marker {
    fn read(git_dir: &Path) -> Option<Marker> {
        let text = fs::read_to_string(git_dir.join(MARKER)).ok()?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Marker {
            url: field("url")?,
            tip: Oid::from_str(&field("tip")?).ok()?,
            mirror: PathBuf::from(field("mirror")?),
            bytes: field("bytes")?.parse().ok()?,
            made: field("made")?.parse().ok()?,
            packs: field("packs")?,
        })
    }

    /// `name:size` of each pack file under `git_dir`, sorted, comma-separated.
    fn packs_of(git_dir: &Path) -> String {
        let mut packs: Vec<String> = fs::read_dir(git_dir.join("objects").join("pack"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let size = e.metadata().ok()?.len();
                        Some(format!("{}:{size}", e.file_name().to_string_lossy()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        packs.sort();
        packs.join(",")
    }

    /// Why the spare at `git_dir` must not be used, if it must not: made too long ago (a temporary directory's
    /// cleaner may have taken files from it by now), or its packs are not as made (lost, truncated, added).
    fn spoiled(&self, git_dir: &Path) -> Option<&'static str> {
        if now_ms().saturating_sub(self.made) > MAX_AGE_MS {
            return Some("made more than a day ago");
        }
        (Marker::packs_of(git_dir) != self.packs).then_some("its packs are not as they were made")
    }

    fn write(&self, git_dir: &Path) -> std::io::Result<()> {
        fs::write(
            git_dir.join(MARKER),
            format!(
                "url={}\ntip={}\nmirror={}\nbytes={}\nmade={}\npacks={}\n",
                self.url,
                self.tip,
                self.mirror.display(),
                self.bytes,
                self.made,
                self.packs
            ),
        )
    }
}

/// Spares being built by this process (by final path): one build per spare at a time.
fn building() -> &'static Mutex<HashSet<PathBuf>> {
    static BUILDING: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    BUILDING.get_or_init(Default::default)
}

impl Spares {
    /// Spares under `root`, which is created (mode 0700) if missing. `None`, with a warning, when `root` is not a
    /// private directory of this user.
    pub(super) fn open(root: PathBuf) -> Option<Spares> {
        match private_dir(&root) {
            Ok(()) => Some(Spares {
                root,
                builds: Arc::default(),
            }),
            Err(why) => {
                tracing::warn!(dir = %root.display(), why, "spare workspaces are off");
                None
            }
        }
    }

    /// The spare of `base` for the mirror at `mirror`: named by digests of both.
    fn path(&self, mirror: &Path, base: &str) -> PathBuf {
        self.root.join(format!(
            "{}-{}",
            prefix(mirror),
            hex::encode(&Sha256::digest(base.as_bytes())[..8])
        ))
    }

    /// Takes the spare of `base` onto `dest`, brought to the mirror's tips (the caller holds the mirror's shared
    /// lock). `Ok(None)` when there is no usable spare: `dest` is then absent, for the usual path.
    pub(super) fn take(
        &self,
        dir: &Path,
        url: &str,
        dest: &Path,
        base: &str,
        also: &[String],
    ) -> Result<Option<Repository>, Built> {
        let spare = self.path(dir, base);
        match fs::rename(&spare, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!(spare = %spare.display(), dest = %dest.display(), error = %e, "a spare workspace cannot be moved to the job");
                return Ok(None);
            }
        }
        match self.adopt(dir, url, dest, base, also) {
            Ok(Some(repo)) => Ok(Some(repo)),
            Ok(None) => {
                self.discard(dest);
                Ok(None)
            }
            Err(Built::Stale) => {
                self.discard(dest);
                Err(Built::Stale)
            }
            // A damaged spare is only a spare: the usual path follows, and judges the mirror itself.
            Err(Built::Corrupt(e) | Built::Other(e)) => {
                tracing::warn!(base, error = %e, "a spare workspace could not be used; making the workspace as usual");
                self.discard(dest);
                Ok(None)
            }
        }
    }

    /// The spare now at `dest`, brought to the mirror's tips; `None` when it cannot be (another URL, a base that
    /// was force-pushed, no marker).
    fn adopt(
        &self,
        dir: &Path,
        url: &str,
        dest: &Path,
        base: &str,
        also: &[String],
    ) -> Result<Option<Repository>, Built> {
        let git_dir = dest.join(".git");
        let Some(marker) = Marker::read(&git_dir) else {
            tracing::warn!(dest = %dest.display(), "a spare workspace without its marker was thrown away");
            return Ok(None);
        };
        if fs::remove_file(git_dir.join(MARKER)).is_err() || marker.url != url {
            return Ok(None);
        }
        if let Some(why) = marker.spoiled(&git_dir) {
            tracing::warn!(base, why, "a spare workspace was thrown away");
            return Ok(None);
        }
        let mirror = Repository::open_bare(dir)
            .map_err(|e| Built::Corrupt(local("opening the mirror", e)))?;
        let tips = tips(&mirror, base, also)?;
        let tip = tips[0].1;
        let moved = marker.tip != tip;
        if moved {
            if !mirror.graph_descendant_of(tip, marker.tip).unwrap_or(false) {
                tracing::debug!(
                    base,
                    "the spare workspace's base was force-pushed: not used"
                );
                return Ok(None);
            }
            // The base moved forward: the seed's packs the spare lacks hold what it gained.
            let seed = seed_dir(dir, base);
            if read_text(&seed.join("tip")).as_deref() != Some(tip.to_string().as_str()) {
                return Err(Built::Stale);
            }
            let pack_dir = git_dir.join("objects").join("pack");
            copy_packs(&seed, &pack_dir, |name| !pack_dir.join(name).exists())
                .map_err(Built::Corrupt)?;
        }
        let pack_dir = git_dir.join("objects").join("pack");
        super::workspace::pack_branches(&mirror, &tips, &pack_dir)?;
        drop(mirror);
        // Opened now, so the object database sees every pack copied in.
        let repo = Repository::open(dest)
            .map_err(|e| Built::Other(local("opening the spare workspace", e)))?;
        if moved {
            // Before HEAD moves: the checkout's baseline is then the spare's tree, so files the base deleted go too,
            // and only what changed is written.
            let corrupt = |e| Built::Corrupt(local("bringing the spare workspace to the base", e));
            let commit = repo.find_commit(tip).map_err(corrupt)?;
            let old = repo
                .find_commit(marker.tip)
                .and_then(|c| c.tree())
                .map_err(corrupt)?;
            let diff = repo
                .diff_tree_to_tree(Some(&old), Some(&commit.tree().map_err(corrupt)?), None)
                .map_err(corrupt)?;
            let mut checkout = git2::build::CheckoutBuilder::new();
            checkout.force();
            if diff.deltas().len() <= MAX_NAMED_PATHS {
                // Only the paths that changed are looked at: the spare is as it was made, so the rest of its
                // 20,000 files need not be compared one by one.
                checkout.disable_pathspec_match(true);
                for d in diff.deltas() {
                    for p in [d.old_file().path(), d.new_file().path()]
                        .into_iter()
                        .flatten()
                    {
                        checkout.path(p);
                    }
                }
            }
            repo.checkout_tree(commit.as_object(), Some(&mut checkout))
                .map_err(corrupt)?;
        }
        point_refs(&repo, url, &tips)?;
        tracing::debug!(base, moved, "workspace taken from a spare");
        Ok(Some(repo))
    }

    /// Moves an unusable workspace out of the way at once and removes it in the background (20,000 files take a
    /// while).
    fn discard(&self, dest: &Path) {
        let trash = self.root.join(format!("trash-{}", unique()));
        let gone = match fs::rename(dest, &trash) {
            Ok(()) => trash,
            Err(_) => dest.to_path_buf(),
        };
        if gone == dest {
            let _ = fs::remove_dir_all(&gone);
        } else {
            self.background(move || {
                let _ = fs::remove_dir_all(&gone);
            });
        }
    }

    /// Starts making the spare of `base` for the mirror at `dir` (locked through `lock_path`), unless there is one
    /// or one is being made.
    pub(super) fn refill(&self, dir: &Path, lock_path: &Path, url: &str, base: &str) {
        let spare = self.path(dir, base);
        if spare.exists() {
            return;
        }
        match building().lock() {
            Ok(mut set) => {
                if !set.insert(spare.clone()) {
                    return;
                }
            }
            Err(_) => return,
        }
        let (dir, lock_path, url, base) = (
            dir.to_path_buf(),
            lock_path.to_path_buf(),
            url.to_string(),
            base.to_string(),
        );
        let root = self.root.clone();
        self.background(move || {
            sweep(&root);
            if let Err(e) = build(&dir, &lock_path, &url, &base, &spare) {
                tracing::debug!(spare = %spare.display(), error = %e, "no spare workspace made");
            }
            if let Ok(mut set) = building().lock() {
                set.remove(&spare);
            }
        });
    }

    /// Runs `f` on a low-priority thread, kept so [`Self::settle`] can wait for it.
    fn background(&self, f: impl FnOnce() + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("drafter-spare".into())
            .spawn(move || {
                // A spare is never urgent: the jobs running now come first (10 is what `nice` uses).
                // SAFETY: setpriority on this thread's own id reads no memory of ours.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
                f()
            });
        match (spawned, self.builds.lock()) {
            (Ok(handle), Ok(mut builds)) => {
                builds.retain(|h| !h.is_finished());
                builds.push(handle);
            }
            (Err(e), _) => tracing::warn!(error = %e, "cannot start a spare workspace's thread"),
            (Ok(_), Err(_)) => {}
        }
    }

    /// Waits for the background work started so far (benchmarks and tests measure with none running).
    pub(super) fn settle(&self) {
        let handles: Vec<_> = match self.builds.lock() {
            Ok(mut b) => b.drain(..).collect(),
            Err(_) => return,
        };
        for h in handles {
            let _ = h.join();
        }
    }

    /// Bytes the spares of the mirror at `dir` hold (from their markers).
    pub(super) fn bytes_of(&self, dir: &Path) -> u64 {
        self.of(dir)
            .iter()
            .filter_map(|p| Marker::read(&p.join(".git")))
            .map(|m| m.bytes)
            .sum()
    }

    /// Removes the spares of the mirror at `dir` (it is being evicted).
    pub(super) fn remove_of(&self, dir: &Path) {
        for p in self.of(dir) {
            let _ = fs::remove_dir_all(p);
        }
    }

    /// The spares of the mirror at `dir`.
    fn of(&self, dir: &Path) -> Vec<PathBuf> {
        let prefix = format!("{}-", prefix(dir));
        fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .filter(|e| !e.file_name().to_string_lossy().contains(".tmp-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Makes the spare: the workspace from the mirror under its shared lock (objects and refs: quick), then the files
/// written without the lock, so no fetch waits for them; then renamed into place.
fn build(
    dir: &Path,
    lock_path: &Path,
    url: &str,
    base: &str,
    spare: &Path,
) -> Result<(), RepoError> {
    let tmp = spare.with_extension(format!("tmp-{}", unique()));
    let lock = File::open(lock_path).map_err(io("opening the mirror lock", lock_path))?;
    flock(&lock, libc::LOCK_SH).map_err(io("locking the mirror", lock_path))?;
    let made = if dir.is_dir() {
        workspace_from(dir, url, &tmp, base, &[], false).map_err(Built::into_error)
    } else {
        Err(RepoError::Io {
            context: format!("mirror {}", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    };
    let _ = flock(&lock, libc::LOCK_UN);
    let finished = made.and_then(|repo| {
        repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .map_err(|e| local("writing a spare workspace's files", e))?;
        let tip = repo
            .refname_to_id("HEAD")
            .map_err(|e| local("reading a spare workspace's HEAD", e))?;
        let marker = Marker {
            url: url.to_string(),
            tip,
            mirror: dir.to_path_buf(),
            bytes: dir_size(&tmp),
            made: now_ms(),
            packs: Marker::packs_of(repo.path()),
        };
        marker
            .write(repo.path())
            .map_err(io("marking a spare workspace", &tmp))?;
        // A spare that appeared meanwhile (another process) wins; ours goes.
        fs::rename(&tmp, spare).map_err(io("putting a spare workspace in place", spare))?;
        tracing::debug!(spare = %spare.display(), %tip, bytes = marker.bytes, "spare workspace ready");
        Ok(())
    });
    if finished.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    finished
}

/// Removes what is of no use under `root`: spares whose mirror is gone, half-made spares and trash of processes
/// that no longer run.
fn sweep(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let owner_gone = |tag: &str| {
            name.rsplit_once(tag)
                .and_then(|(_, rest)| rest.split('-').next()?.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                })
        };
        let useless = if name.contains(".tmp-") {
            owner_gone(".tmp-")
        } else if name.starts_with("trash-") {
            owner_gone("trash-")
        } else {
            Marker::read(&e.path().join(".git")).is_some_and(|m| !m.mirror.is_dir())
        };
        if useless {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `<pid>-<sequence>`: unique among this process's temporary names, and says whose they are.
fn unique() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The part of a spare's name that says which mirror it belongs to.
fn prefix(mirror: &Path) -> String {
    hex::encode(&Sha256::digest(mirror.as_os_str().as_encoded_bytes())[..8])
}

/// Creates `root` (mode 0700) if missing, and checks it is a directory of this user that no one else can use.
fn private_dir(root: &Path) -> Result<(), &'static str> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = root.parent() {
        let _ = fs::create_dir_all(parent);
    }
    match fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return Err("the directory cannot be created"),
    }
    let meta = fs::symlink_metadata(root).map_err(|_| "the directory cannot be read")?;
    if !meta.file_type().is_dir() {
        return Err("it is not a directory (a symbolic link?)");
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err("it belongs to another user");
    }
    if meta.mode() & 0o077 != 0 {
        return Err("others can use it (its mode must be 0700)");
    }
    Ok(())
}
