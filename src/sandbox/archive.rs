//! The workspace as tar streams: what goes into the container and, checked entry by entry, what comes back.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

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

pub(super) fn unpack_workspace(reader: impl Read, dest: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let ctx = || format!("unpacking the workspace into {}", dest.display());
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(io_err(ctx()))?;
    for entry in entries {
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
                ensure_parents(dest, &rel)?;
                clear_slot(&target, false)?;
                // create_new: O_EXCL never follows a symlink that appeared meanwhile.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                io::copy(&mut entry, &mut file)
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
                let is_file = std::fs::symlink_metadata(&src)
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                if !is_file {
                    return Err(SandboxError::UnsafeArchive {
                        entry: raw.display().to_string(),
                        reason: "hard link to something other than an unpacked regular file",
                    });
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
                io::copy(&mut from, &mut file)
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
        let err = unpack_workspace(&data[..], dest.path()).unwrap_err();
        assert!(matches!(err, SandboxError::UnsafeArchive { .. }), "{err}");
        assert!(!outside.path().join("pwned").exists());
        assert!(std::fs::symlink_metadata(dest.path().join("out"))
            .unwrap()
            .is_symlink());
    }
}
