//! `pack`: the workspace out as one tar stream, in `chunk` frames (see [`super::super::proto::Op::Pack`]).
//!
//! The walk never follows a symlink and never leaves the workspace: every directory is opened relative to its
//! parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, every file relative to its directory with `O_NOFOLLOW`, and
//! each open is checked against the `lstat` it was chosen by (same device and inode), so a name swapped for a link
//! between the two is refused, not followed. It reads as the executor (root with `DAC_READ_SEARCH`, like the Docker
//! archive API it replaces), so a file the agent made unreadable still comes out. It runs between commands, when no
//! process of the agent is alive, so nothing races it in practice; the checks hold even if something did.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::super::proto::{FrameError, PACK_CHUNK};
use super::*;

/// Directories nested deeper than this are refused (each level holds a descriptor while the walk is below it).
pub(super) const PACK_MAX_DEPTH: usize = 4096;

/// What a finished pack sent.
pub(super) struct Packed {
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

/// Buffers the tar and sends it as `chunk` replies with the request's id. A failure to write a frame is the
/// connection's end, kept in `broken` for the serve loop (the tar writer only sees an I/O error).
pub(super) struct ChunkWriter<'a, W: Write> {
    id: u64,
    out: &'a mut W,
    buf: Vec<u8>,
    pub(super) broken: Option<FrameError>,
}

impl<'a, W: Write> ChunkWriter<'a, W> {
    pub(super) fn new(id: u64, out: &'a mut W) -> Self {
        ChunkWriter {
            id,
            out,
            buf: Vec::with_capacity(PACK_CHUNK),
            broken: None,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sent = write_frame(
            self.out,
            &Response {
                id: self.id,
                reply: Reply::Chunk,
            },
            &self.buf,
        );
        self.buf.clear();
        sent.map_err(|e| {
            let err = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
            self.broken = Some(e);
            err
        })
    }
}

impl<W: Write> Write for ChunkWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken.is_some() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(PACK_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PACK_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn c_name(name: &OsStr) -> Result<CString, Failure> {
    CString::new(name.as_bytes()).map_err(|_| (ErrorKind::BadPath, "a name with a NUL byte".into()))
}

/// `openat` relative to `dir`, never following a final symlink, close-on-exec.
fn open_at(dir: i32, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string and descriptor; the returned descriptor is owned by the caller.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_fd(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: `st` is written by fstat before it is read.
    unsafe {
        let mut st = std::mem::zeroed::<libc::stat>();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

fn lstat_at(dir: i32, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW stats a link itself.
    unsafe {
        let mut st = std::mem::zeroed::<libc::stat>();
        if libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

fn readlink_at(dir: i32, name: &CStr) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is valid for its length; readlinkat writes at most that many bytes.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// The names in the directory `dir` (without `.` and `..`), sorted; fails with [`ErrorKind::TooMany`] past `room`.
fn names_in(dir: &OwnedFd, room: u64) -> Result<Vec<OsString>, Failure> {
    // fdopendir takes the descriptor over, so give it a duplicate.
    let dup = dir
        .try_clone()
        .map_err(|e| io_failure("pack: listing", e))?;
    // SAFETY: `dup` is a directory descriptor we own; fdopendir owns it from here and closedir closes it.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io_failure("pack: listing", io::Error::last_os_error()));
    }
    std::mem::forget(dup);
    let mut names = Vec::new();
    let mut over = false;
    loop {
        // SAFETY: `stream` is a valid DIR*; the entry is read before the next readdir call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated array inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if names.len() as u64 >= room {
            over = true;
            break;
        }
        names.push(OsString::from_vec(name.to_vec()));
    }
    // SAFETY: closes the stream and its descriptor, once.
    unsafe { libc::closedir(stream) };
    if over {
        return Err((ErrorKind::TooMany, "pack: too many entries".into()));
    }
    names.sort();
    Ok(names)
}

fn is_git(name: &OsStr) -> bool {
    name.as_bytes().eq_ignore_ascii_case(b".git")
}

/// One directory being walked: its descriptor, its path in the archive, its names and how far through them.
struct Level {
    fd: OwnedFd,
    rel: PathBuf,
    names: Vec<OsString>,
    next: usize,
}

/// Writes the workspace as a tar into `out` within the limits (see [`super::super::proto::Op::Pack`]).
pub(super) fn pack(
    cfg: &DaemonConfig,
    max_bytes: u64,
    max_entries: u64,
    out: impl Write,
) -> Result<Packed, Failure> {
    let fail = |what: &str, e: io::Error| io_failure(&format!("pack {what}"), e);
    let root_path = c_name(cfg.workspace.as_os_str())?;
    let root = open_at(
        libc::AT_FDCWD,
        &root_path,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(|e| fail("workspace", e))?;
    let mut builder = tar::Builder::new(out);
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let names = names_in(&root, max_entries)?;
    let mut stack = vec![Level {
        fd: root,
        rel: PathBuf::from("workspace"),
        names,
        next: 0,
    }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.get(level.next).cloned() else {
            stack.pop();
            continue;
        };
        level.next += 1;
        if is_git(&name) {
            continue;
        }
        entries += 1;
        if entries > max_entries {
            return Err((
                ErrorKind::TooMany,
                format!("pack: more than {max_entries} entries"),
            ));
        }
        let dir = level.fd.as_raw_fd();
        let rel = level.rel.join(&name);
        let cname = c_name(&name)?;
        let shown = rel.display().to_string();
        let st = match lstat_at(dir, &cname) {
            Ok(st) => st,
            // Gone meanwhile: nothing to send.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(&shown, e)),
        };
        let mut header = tar::Header::new_gnu();
        header.set_uid(u64::from(st.st_uid));
        header.set_gid(u64::from(st.st_gid));
        header.set_mode(st.st_mode & 0o7777);
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if stack.len() >= PACK_MAX_DEPTH {
                    return Err((
                        ErrorKind::TooMany,
                        format!("pack: directories nested deeper than {PACK_MAX_DEPTH}"),
                    ));
                }
                let fd = open_at(dir, &cname, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| fail(&shown, e))?;
                same_inode(&fd, &st, &shown)?;
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel, io::empty())
                    .map_err(|e| fail(&shown, e))?;
                let names = names_in(&fd, max_entries - entries)?;
                stack.push(Level {
                    fd,
                    rel,
                    names,
                    next: 0,
                });
            }
            libc::S_IFLNK => {
                let target = readlink_at(dir, &cname).map_err(|e| fail(&shown, e))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                // The target byte for byte (the tar crate normalises a path it is given: `/` would become `//`);
                // a long one goes through its GNU long-name entry.
                let appended = if target.len() < 100 {
                    header
                        .set_link_name_literal(target.as_bytes())
                        .and_then(|()| builder.append_data(&mut header, &rel, io::empty()))
                } else {
                    builder.append_link(&mut header, &rel, Path::new(&target))
                };
                appended.map_err(|e| fail(&shown, e))?;
            }
            libc::S_IFREG => {
                let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
                // Counted before a byte is read: a sparse file of a terabyte is refused, not streamed.
                if bytes.saturating_add(size) > max_bytes {
                    return Err((
                        ErrorKind::TooLarge,
                        format!("pack: more than {max_bytes} bytes"),
                    ));
                }
                bytes += size;
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&key) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        builder
                            .append_link(&mut header, &rel, first)
                            .map_err(|e| fail(&shown, e))?;
                        continue;
                    }
                    links.insert(key, rel.clone());
                }
                let fd = open_at(dir, &cname, libc::O_RDONLY).map_err(|e| fail(&shown, e))?;
                same_inode(&fd, &st, &shown)?;
                let file = std::fs::File::from(fd);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                // Exactly the stat'ed length: a file that shrank meanwhile is padded, one that grew is cut.
                let data = file.take(size).chain(io::repeat(0)).take(size);
                builder
                    .append_data(&mut header, &rel, data)
                    .map_err(|e| fail(&shown, e))?;
            }
            // Fifos, sockets and devices are not workspace content, and opening one could block or do worse.
            _ => {}
        }
    }
    let mut out = builder.into_inner().map_err(|e| fail("archive", e))?;
    out.flush().map_err(|e| fail("archive", e))?;
    Ok(Packed { entries, bytes })
}

/// Refuses a descriptor that is not the inode `lstat` saw (the name was swapped between the two).
fn same_inode(fd: &OwnedFd, st: &libc::stat, shown: &str) -> Result<(), Failure> {
    let now = stat_fd(fd.as_raw_fd()).map_err(|e| io_failure(shown, e))?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err((
            ErrorKind::Io,
            format!("pack: `{shown}` changed while it was read"),
        ));
    }
    Ok(())
}
