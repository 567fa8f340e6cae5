//! The workspace as tar streams: what goes into the container and, checked entry by entry, what comes back.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{io_err, SandboxError, AGENT_UID};

// ---- tar streaming helpers -------------------------------------------------------------------------------------

pub(super) const CHUNK: usize = 256 * 1024;

/// Blocking `Write` that sends chunks to an async channel (the upload body).
pub(super) struct ChannelWriter {
    pub(super) tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    pub(super) buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// A `Vec` that refuses to grow past a cap (with [`io::ErrorKind::FileTooLarge`]).
pub(super) struct CappedVec {
    buf: Vec<u8>,
    cap: usize,
}

impl CappedVec {
    pub(super) fn new(cap: usize) -> Self {
        CappedVec {
            buf: Vec::new(),
            cap,
        }
    }

    pub(super) fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

impl io::Write for CappedVec {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "over the in-memory cap",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Blocking `Read` over chunks arriving on an async channel (the download body).
pub(super) struct ChannelReader {
    pub(super) rx: tokio::sync::mpsc::Receiver<Bytes>,
    pub(super) current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Writes `root`'s tree as a tar (paths relative to `root`, owner 1000:1000, no setuid/setgid/sticky bits).
pub(super) fn write_dir_tar(root: &Path, writer: impl io::Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&full)?;
            let ft = meta.file_type();
            let mut header = tar::Header::new_gnu();
            header.set_uid(AGENT_UID);
            header.set_gid(AGENT_UID);
            header.set_mtime(mtime_of(&meta));
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode_of(&meta) | 0o700);
                header.set_size(0);
                builder.append_data(&mut header, &rel_path, io::empty())?;
                stack.push(rel_path);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &rel_path, &target)?;
            } else if ft.is_file() {
                let file = std::fs::File::open(&full)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode_of(&meta) | 0o600);
                header.set_size(meta.len());
                // Take exactly the stat'ed length, so a file growing meanwhile cannot corrupt the archive.
                builder.append_data(&mut header, &rel_path, file.take(meta.len()))?;
            } else {
                tracing::debug!(path = %rel_path.display(), "skipping special file in upload");
            }
        }
    }
    let mut writer = builder.into_inner()?;
    io::Write::flush(&mut writer)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

fn mtime_of(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deletes everything directly inside `dest` except `.git` (never following symlinks).
pub(super) fn clear_except_git(dest: &Path) -> Result<(), SandboxError> {
    let entries = std::fs::read_dir(dest).map_err(io_err(format!("listing {}", dest.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dest.display())))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(io_err(format!("reading {}", path.display())))?;
        let removed = if ft.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("deleting {}", path.display())))?;
    }
    Ok(())
}

/// A tar entry's path with the archive's root directory (`workspace/`) stripped, checked to stay inside the
/// destination. `Ok(None)` for the root itself.
pub(super) fn entry_rel_path(raw: &Path) -> Result<Option<PathBuf>, SandboxError> {
    let unsafe_entry = |reason| SandboxError::UnsafeArchive {
        entry: raw.display().to_string(),
        reason,
    };
    let mut comps = raw.components().filter(|c| !matches!(c, Component::CurDir));
    match comps.next() {
        Some(Component::Normal(_)) => {}
        None => return Ok(None),
        Some(_) => return Err(unsafe_entry("absolute path or `..`")),
    }
    let mut rel = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(p) => rel.push(p),
            _ => return Err(unsafe_entry("absolute path or `..`")),
        }
    }
    if rel.as_os_str().is_empty() {
        Ok(None)
    } else {
        Ok(Some(rel))
    }
}

/// Whether any component is `.git` (any case: case-insensitive filesystems would resolve `.GIT` to `.git`).
pub(super) fn touches_git(rel: &Path) -> bool {
    rel.components()
        .any(|c| matches!(c, Component::Normal(p) if p.eq_ignore_ascii_case(".git")))
}

/// Makes sure every parent of `dest/rel` is a real directory (created as needed, never a symlink).
fn ensure_parents(dest: &Path, rel: &Path) -> Result<(), SandboxError> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SandboxError::UnsafeArchive {
                    entry: rel.display().to_string(),
                    reason: "a parent is a symlink or file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(io_err(format!("creating {}", cur.display())))?
            }
            Err(e) => return Err(io_err(format!("reading {}", cur.display()))(e)),
        }
    }
    Ok(())
}

/// Removes whatever non-directory is at `path` so a new entry can be created without following it.
fn clear_slot(path: &Path, keep_dir: bool) -> Result<(), SandboxError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(io_err(format!("deleting {}", path.display())))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io_err(format!("deleting {}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// What the workspace coming back out of the container may cost the host. The container's own check counts apparent
/// sizes, but it runs between tool calls and under another transport differently: this is what actually holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReturnBudget {
    /// Bytes written into files, each hard link counted as the copy the host makes of it.
    pub(super) bytes: u64,
    /// Archive entries read, of every kind (skipped ones cost reading too).
    pub(super) entries: u64,
    /// The whole download and unpack.
    pub(super) time: Duration,
    /// When `time` runs out.
    pub(super) deadline: Instant,
}

/// Time for bringing the workspace out: a base, plus a second per this many bytes of the workspace limit.
const RETURN_TIME_BASE: Duration = Duration::from_secs(60);
const RETURN_BYTES_PER_SEC: u64 = 8 << 20;
/// Entries allowed per byte of the workspace limit (one per KiB: a file with content takes at least a 4 KiB block in
/// the container), within these bounds.
const RETURN_BYTES_PER_ENTRY: u64 = 1024;
const RETURN_MIN_ENTRIES: u64 = 10_000;
const RETURN_MAX_ENTRIES: u64 = 1_000_000;

impl ReturnBudget {
    /// The budget for a workspace limit of `bytes`, starting now.
    pub(super) fn for_limit(bytes: u64) -> ReturnBudget {
        let time = RETURN_TIME_BASE + Duration::from_secs(bytes / RETURN_BYTES_PER_SEC);
        ReturnBudget {
            bytes,
            entries: (bytes / RETURN_BYTES_PER_ENTRY).clamp(RETURN_MIN_ENTRIES, RETURN_MAX_ENTRIES),
            time,
            deadline: Instant::now() + time,
        }
    }

    fn over(limit: String) -> SandboxError {
        SandboxError::WorkspaceOverBudget { limit }
    }

    pub(super) fn over_bytes(&self) -> SandboxError {
        let shown = if self.bytes.is_multiple_of(1 << 20) {
            format!("{} MiB", self.bytes >> 20)
        } else {
            format!("{} bytes", self.bytes)
        };
        Self::over(format!(
            "{shown} written on the host (each hard link counts as a copy)"
        ))
    }

    pub(super) fn over_entries(&self) -> SandboxError {
        Self::over(format!("{} archive entries", self.entries))
    }

    pub(super) fn over_time(&self) -> SandboxError {
        let shown = if self.time >= Duration::from_secs(1) {
            format!("{} s", self.time.as_secs())
        } else {
            format!("{} ms", self.time.as_millis())
        };
        Self::over(format!("{shown} to bring it out"))
    }
}

/// Copies exactly `len` bytes (or until `from` ends) and returns how many.
fn copy_at_most(from: impl Read, to: &mut std::fs::File, len: u64) -> io::Result<u64> {
    io::copy(&mut from.take(len), to)
}

/// Unpacks the workspace tar into `dest` (see [`super::Container::download_workspace`]), within `budget`: an entry
/// that would take the bytes written past it is refused before anything of it is written.
pub(super) fn unpack_workspace(
    reader: impl Read,
    dest: &Path,
    budget: &ReturnBudget,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let ctx = || format!("unpacking the workspace into {}", dest.display());
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(io_err(ctx()))?;
    let mut written = 0u64;
    let mut seen = 0u64;
    for entry in entries {
        seen += 1;
        if seen > budget.entries {
            return Err(budget.over_entries());
        }
        if Instant::now() >= budget.deadline {
            return Err(budget.over_time());
        }
        let mut entry = entry.map_err(io_err(ctx()))?;
        let raw = entry.path().map_err(io_err(ctx()))?.into_owned();
        let Some(rel) = entry_rel_path(&raw)? else {
            continue;
        };
        if touches_git(&rel) {
            continue;
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                ensure_parents(dest, &rel)?;
                clear_slot(&target, true)?;
                if std::fs::symlink_metadata(&target).is_err() {
                    std::fs::create_dir(&target)
                        .map_err(io_err(format!("creating {}", target.display())))?;
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(format!("chmod {}", target.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if written.saturating_add(size) > budget.bytes {
                    return Err(budget.over_bytes());
                }
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                // create_new: O_EXCL never follows a symlink that appeared meanwhile.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                written += copy_at_most(&mut entry, &mut file, size)
                    .map_err(io_err(format!("writing {}", target.display())))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err(ctx()))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_err(format!("creating symlink {}", target.display())))?;
            }
            tar::EntryType::Link => {
                // A hard link inside the archive: copy the already-unpacked file, refusing anything but a regular
                // file reached through real directories.
                let link = entry
                    .link_name()
                    .map_err(io_err(ctx()))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let Some(src_rel) = entry_rel_path(&link)? else {
                    continue;
                };
                if touches_git(&src_rel) {
                    continue;
                }
                ensure_parents(dest, &src_rel)?;
                let src = dest.join(&src_rel);
                let src_len = match std::fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => m.len(),
                    _ => {
                        return Err(SandboxError::UnsafeArchive {
                            entry: raw.display().to_string(),
                            reason: "hard link to something other than an unpacked regular file",
                        })
                    }
                };
                // Copied, so it costs what a file of its own would.
                if written.saturating_add(src_len) > budget.bytes {
                    return Err(budget.over_bytes());
                }
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                let mut from = std::fs::File::open(&src)
                    .map_err(io_err(format!("reading {}", src.display())))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                written += copy_at_most(&mut from, &mut file, src_len)
                    .map_err(io_err(format!("writing {}", target.display())))?;
            }
            // PAX/GNU extension headers are consumed by the tar crate; devices and fifos are not workspace content.
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_confined() {
        assert_eq!(entry_rel_path(Path::new("workspace/")).unwrap(), None);
        assert_eq!(
            entry_rel_path(Path::new("workspace/a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert!(entry_rel_path(Path::new("/etc/passwd")).is_err());
        assert!(entry_rel_path(Path::new("workspace/../../x")).is_err());
        assert!(touches_git(Path::new(".git/hooks/evil")));
        assert!(touches_git(Path::new("sub/.GIT/config")));
        assert!(!touches_git(Path::new("a/.gitignore")));
    }

    /// A hostile archive: a symlink to outside, then a file "through" it. Nothing may land outside `dest`.
    #[test]
    fn unpack_never_writes_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "workspace/out", outside.path())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "workspace/out/pwned", &b"hi"[..])
            .unwrap();
        let data = b.into_inner().unwrap();
        let err = unpack_workspace(&data[..], dest.path(), &ReturnBudget::for_limit(1 << 20))
            .unwrap_err();
        assert!(matches!(err, SandboxError::UnsafeArchive { .. }), "{err}");
        assert!(!outside.path().join("pwned").exists());
        assert!(std::fs::symlink_metadata(dest.path().join("out"))
            .unwrap()
            .is_symlink());
    }

    fn budget(bytes: u64, entries: u64, time: Duration) -> ReturnBudget {
        ReturnBudget {
            bytes,
            entries,
            time,
            deadline: Instant::now() + time,
        }
    }

    /// `workspace/big` with `len` bytes, then `links` hard links to it.
    fn linked_tar(len: usize, links: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(len as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "workspace/big", &vec![0u8; len][..])
            .unwrap();
        for i in 0..links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, format!("workspace/l{i}"), "workspace/big")
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn written(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// Every hard link costs a copy: the unpacking stops before the copy that would pass the budget.
    #[test]
    fn hard_links_count_against_the_byte_budget() {
        let dest = tempfile::tempdir().unwrap();
        let tar = linked_tar(1000, 50);
        let err = unpack_workspace(
            &tar[..],
            dest.path(),
            &budget(10_500, 1000, Duration::from_secs(60)),
        )
        .unwrap_err();
        assert!(
            matches!(err, SandboxError::WorkspaceOverBudget { .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the workspace coming back out of the sandbox is over its limit of 10500 bytes written on the host \
             (each hard link counts as a copy)"
        );
        assert_eq!(written(dest.path()), 10_000);
        // Within the budget the links are files of their own, as before.
        let dest = tempfile::tempdir().unwrap();
        unpack_workspace(
            &tar[..],
            dest.path(),
            &budget(51_000, 1000, Duration::from_secs(60)),
        )
        .unwrap();
        assert_eq!(written(dest.path()), 51_000);
        assert_eq!(std::fs::read(dest.path().join("l49")).unwrap().len(), 1000);
        // A regular file over the budget is refused before a byte of it is written.
        let dest = tempfile::tempdir().unwrap();
        let err = unpack_workspace(
            &tar[..],
            dest.path(),
            &budget(999, 1000, Duration::from_secs(60)),
        )
        .unwrap_err();
        assert!(
            matches!(err, SandboxError::WorkspaceOverBudget { .. }),
            "{err}"
        );
        assert_eq!(written(dest.path()), 0);
    }

    #[test]
    fn entries_and_time_are_budgeted() {
        let tar = linked_tar(0, 100);
        let dest = tempfile::tempdir().unwrap();
        let err = unpack_workspace(
            &tar[..],
            dest.path(),
            &budget(1 << 20, 20, Duration::from_secs(60)),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("over its limit of 20 archive entries"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 20);

        /// A stream that trickles in.
        struct Slow<R>(R);
        impl<R: Read> Read for Slow<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                let n = buf.len().min(512);
                self.0.read(&mut buf[..n])
            }
        }
        let dest = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let err = unpack_workspace(
            Slow(&tar[..]),
            dest.path(),
            &budget(1 << 20, 1000, Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("over its limit of 300 ms to bring it out"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn budgets_follow_the_workspace_limit() {
        let b = ReturnBudget::for_limit(64 << 20);
        assert_eq!(
            (b.bytes, b.entries, b.time.as_secs()),
            (64 << 20, 65_536, 68)
        );
        let b = ReturnBudget::for_limit(1 << 20);
        assert_eq!(b.entries, 10_000);
        let b = ReturnBudget::for_limit(4096 << 20);
        assert_eq!((b.entries, b.time.as_secs()), (1_000_000, 572));
    }
}
