//! File operations (read, write, unpack, list, search, disk usage), each done with the agent's filesystem ids.

use super::*;

// files -----------------------------------------------------------------------------------------------------

/// Opens `path` without following a final symlink and without blocking on a fifo, and insists on a regular file.
pub(super) fn open_regular(
    opts: &mut OpenOptions,
    path: &Path,
    rel: &str,
) -> Result<(std::fs::File, std::fs::Metadata), Failure> {
    let file = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_failure(rel, e))?;
    let meta = file.metadata().map_err(|e| io_failure(rel, e))?;
    if !meta.is_file() {
        return Err((
            ErrorKind::NotRegularFile,
            format!("`{rel}` is not a regular file"),
        ));
    }
    Ok((file, meta))
}

pub(super) fn read(cfg: &DaemonConfig, rel: &str, max_bytes: u64) -> Result<Vec<u8>, Failure> {
    let path = resolve(cfg, rel, false)?;
    // O_NOFOLLOW: a final symlink is refused; O_NONBLOCK: a fifo planted by the agent cannot hang the executor.
    let (mut file, meta) = open_regular(OpenOptions::new().read(true), &path, rel)?;
    if meta.len() > max_bytes {
        return Err((
            ErrorKind::TooLarge,
            format!("`{rel}` is larger than {max_bytes} bytes"),
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // Read one byte past the limit so a file growing meanwhile is still refused.
    (&mut file)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| io_failure(rel, e))?;
    if data.len() as u64 > max_bytes {
        return Err((
            ErrorKind::TooLarge,
            format!("`{rel}` is larger than {max_bytes} bytes"),
        ));
    }
    Ok(data)
}

pub(super) fn write(cfg: &DaemonConfig, rel: &str, data: &[u8]) -> Result<u64, Failure> {
    let path = resolve(cfg, rel, false)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_failure(rel, e))?;
    }
    // Truncated only once it is known to be a regular file.
    let (mut file, _) = open_regular(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644),
        &path,
        rel,
    )?;
    file.set_len(0).map_err(|e| io_failure(rel, e))?;
    file.write_all(data).map_err(|e| io_failure(rel, e))?;
    Ok(data.len() as u64)
}

/// Unpacks a tar into the workspace: regular files, directories and symlinks only, with their modes and mtimes,
/// owned by whoever the thread's filesystem ids say (the agent). Entry paths must be relative without `..`; files
/// are created with `O_EXCL | O_NOFOLLOW` (an existing file is replaced, never written through). Lean on purpose:
/// the tar crate's `unpack_in` canonicalises every parent per entry, which made this most of a warm start.
///
/// Directories are made first, in archive order; then the files, by [`UNPACK_THREADS`] threads (creating a file
/// costs a journal round on the host's disk, about half a millisecond on a busy ext4, and those waits overlap);
/// then the symlinks, so no file is ever written below a link the archive made. An archive naming a path twice is
/// refused (the worker's never does; with it, the order of the entries would matter).
pub(super) fn unpack(cfg: &DaemonConfig, tar: &[u8]) -> Result<u64, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, e: io::Error| io_failure(&format!("unpack {what}"), e);
    let mut archive = tar::Archive::new(io::Cursor::new(tar));
    let mut n = 0;
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let entries = archive.entries().map_err(|e| fail("archive", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| fail("archive", e))?;
        let raw = entry.path().map_err(|e| fail("archive", e))?.into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => {
                    return Err((
                        ErrorKind::BadRequest,
                        format!("unpack: entry `{}` leaves the workspace", raw.display()),
                    ))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        if !seen.insert(rel.clone()) {
            return Err((
                ErrorKind::BadRequest,
                format!("unpack: entry `{}` comes twice", raw.display()),
            ));
        }
        let target = cfg.workspace.join(&rel);
        let shown = rel.display().to_string();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry.header().mtime().ok();
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match std::fs::create_dir(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(fail(&shown, e)),
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| fail(&shown, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let start = usize::try_from(entry.raw_file_position()).unwrap_or(usize::MAX);
                let len = usize::try_from(entry.size()).unwrap_or(usize::MAX);
                let Some(data) = start.checked_add(len).and_then(|end| tar.get(start..end)) else {
                    return Err((
                        ErrorKind::BadRequest,
                        format!("unpack: entry `{shown}` runs past the archive"),
                    ));
                };
                files.push(FileJob {
                    target,
                    shown,
                    mode,
                    mtime,
                    data,
                });
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| fail(&shown, e))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                links.push((target, shown, link));
            }
            _ => continue,
        }
        n += 1;
    }
    if files.len() >= UNPACK_PARALLEL_FROM {
        let per = files.len().div_ceil(UNPACK_THREADS);
        std::thread::scope(|scope| {
            let mut results = Vec::new();
            let mut handles = Vec::new();
            for chunk in files.chunks(per) {
                // Each thread takes the agent's filesystem ids itself: Linux keeps them per thread.
                let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
                    let _agent = AsAgent::enter(cfg);
                    write_file_jobs(chunk)
                });
                match spawned {
                    Ok(h) => handles.push(h),
                    // No thread (the pids limit): this thread, already the agent, writes the chunk.
                    Err(_) => results.push(write_file_jobs(chunk)),
                }
            }
            for h in handles {
                results.push(
                    h.join().unwrap_or_else(|_| {
                        Err((ErrorKind::Io, "unpack: a writer panicked".into()))
                    }),
                );
            }
            results.into_iter().collect::<Result<Vec<()>, Failure>>()
        })?;
    } else {
        write_file_jobs(&files)?;
    }
    make_links(links)?;
    Ok(n)
}

/// Threads writing the files of one unpack.
pub(super) const UNPACK_THREADS: usize = 4;
/// Fewer files than this are written by the calling thread alone.
pub(super) const UNPACK_PARALLEL_FROM: usize = 32;

/// A regular file of the archive, its bytes a slice of it.
pub(super) struct FileJob<'a> {
    target: PathBuf,
    shown: String,
    mode: u32,
    mtime: Option<u64>,
    data: &'a [u8],
}

fn write_file_jobs(jobs: &[FileJob<'_>]) -> Result<(), Failure> {
    let fail = |what: &str, e: io::Error| io_failure(&format!("unpack {what}"), e);
    for job in jobs {
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(job.mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&job.target)
        };
        let mut file = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&job.target).map_err(|e| fail(&job.shown, e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| fail(&job.shown, e))?;
        file.write_all(job.data).map_err(|e| fail(&job.shown, e))?;
        if let Some(t) = job.mtime {
            let _ = file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(t));
        }
    }
    Ok(())
}

fn make_links(links: Vec<(PathBuf, String, PathBuf)>) -> Result<(), Failure> {
    for (target, shown, link) in links {
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(&link, &target)
            .map_err(|e| io_failure(&format!("unpack {shown}"), e))?;
    }
    Ok(())
}

/// Directory entries sorted by name, `.git` left out.
pub(super) fn sorted_entries(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".git")
        .collect();
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

pub(super) fn list(
    cfg: &DaemonConfig,
    rel: &str,
    max_depth: u32,
    max_entries: u32,
) -> Result<(Vec<u8>, bool), Failure> {
    let root = resolve(cfg, rel, true)?;
    let meta = std::fs::metadata(&root).map_err(|e| io_failure(rel, e))?;
    if !meta.is_dir() {
        return Err((
            ErrorKind::NotRegularFile,
            format!("`{rel}` is not a directory"),
        ));
    }
    let mut out = Vec::new();
    let mut count = 0u32;
    let truncated = list_into(
        &root,
        &root,
        1,
        max_depth,
        max_entries,
        &mut count,
        &mut out,
    );
    Ok((out, truncated))
}

/// Depth-first in name order, each directory followed by its contents, so the listing reads like a tree. Returns
/// whether the entry limit cut it short. Recursion depth is bounded by `max_depth` (at most 10 from the agent).
pub(super) fn list_into(
    root: &Path,
    dir: &Path,
    depth: u32,
    max_depth: u32,
    max_entries: u32,
    count: &mut u32,
    out: &mut Vec<u8>,
) -> bool {
    let Ok(entries) = sorted_entries(dir) else {
        return false;
    };
    for e in entries {
        if *count >= max_entries {
            return true;
        }
        let Ok(ft) = e.file_type() else { continue };
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else {
            'f'
        };
        let path = e.path();
        let shown_path = path.strip_prefix(root).unwrap_or(&path);
        out.extend_from_slice(format!("{kind} {}\n", shown_path.to_string_lossy()).as_bytes());
        *count += 1;
        if ft.is_dir()
            && depth < max_depth
            && list_into(root, &path, depth + 1, max_depth, max_entries, count, out)
        {
            return true;
        }
    }
    false
}

/// Files bigger than this are not searched.
pub(super) const SEARCH_MAX_FILE: u64 = 8 << 20;
/// Bytes searched per request, at most.
pub(super) const SEARCH_MAX_TOTAL: u64 = 512 << 20;
/// Characters of a matching line shown.
pub(super) const SEARCH_LINE_CHARS: usize = 300;

pub(super) fn search(
    cfg: &DaemonConfig,
    pattern: &str,
    rel: &str,
    max_matches: u32,
) -> Result<(Vec<u8>, bool), Failure> {
    let re = regex::bytes::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| (ErrorKind::BadRequest, format!("bad pattern: {e}")))?;
    let root = resolve(cfg, rel, true)?;
    std::fs::symlink_metadata(&root).map_err(|e| io_failure(rel, e))?;
    let mut out = Vec::new();
    let mut matches = 0u32;
    let mut scanned = 0u64;
    let mut stack = vec![root];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = sorted_entries(&path) {
                stack.extend(entries.into_iter().rev().map(|e| e.path()));
            }
            continue;
        }
        if !meta.is_file() || meta.len() > SEARCH_MAX_FILE {
            continue;
        }
        if scanned + meta.len() > SEARCH_MAX_TOTAL {
            return Ok((out, true));
        }
        let Ok(data) = read_nonblocking(&path) else {
            continue;
        };
        scanned += data.len() as u64;
        // Like grep -I: a NUL in the first block marks a binary file.
        if data[..data.len().min(8192)].contains(&0) {
            continue;
        }
        let name = shown(cfg, &path);
        for (n, line) in data.split(|&b| b == b'\n').enumerate() {
            if !re.is_match(line) {
                continue;
            }
            if matches >= max_matches {
                return Ok((out, true));
            }
            let text = String::from_utf8_lossy(line);
            let text: String = text.chars().take(SEARCH_LINE_CHARS).collect();
            out.extend_from_slice(format!("{name}:{}:{text}\n", n + 1).as_bytes());
            matches += 1;
        }
    }
    Ok((out, false))
}

pub(super) fn read_nonblocking(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok(data)
}

/// Entries walked at most by [`disk_usage`]; past it the count is what it is (and surely over any limit).
pub(super) const USAGE_MAX_ENTRIES: u64 = 5_000_000;

/// Bytes under `root` and entries seen. Each entry counts the larger of its allocated blocks and its apparent size,
/// once per name: a sparse file counts what it would take once copied out, and every hard link counts as the copy
/// the host makes of it. Symlinks are not followed, unreadable directories are skipped (with `DAC_READ_SEARCH` none
/// are).
pub(super) fn disk_usage(root: &Path) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            entries += 1;
            if entries > USAGE_MAX_ENTRIES {
                return (bytes, entries);
            }
            let Ok(meta) = e.metadata() else { continue };
            let allocated = meta.blocks().saturating_mul(512);
            bytes = bytes.saturating_add(allocated.max(meta.len()));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, entries)
}
