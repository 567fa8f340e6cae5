//! `drafter-sandboxd`: the executor inside each job container, serving [`super::proto`] on stdin/stdout.
//!
//! # Why an executor in the container
//! A `docker exec` costs a round trip through the daemon, containerd and a fresh runc process per tool call (tens to
//! hundreds of milliseconds), and processes it starts are not bounded by the container's pids limit under runc. This
//! executor is started once with the container; a tool call is one frame each way over the attach stream already
//! open, and every command it starts is its own child, inside the container's cgroup and pid namespace.
//!
//! # Privilege
//! In the container it runs as root with only `SETUID`, `SETGID`, `KILL` and `DAC_READ_SEARCH` (see
//! [`super::Sandbox`]), and the agent can neither signal nor trace it. Each command drops to the agent's uid and gid
//! before `exec`, which clears every capability; file operations switch the thread's filesystem ids to the agent's
//! for their duration ([`AsAgent`]), so they have exactly the agent's permissions and create files it owns.
//! `DAC_READ_SEARCH` is for [`disk_usage`] only, so a directory the agent made unreadable still counts.
//!
//! # Commands and their limits
//! A command runs in its own process group with stdout and stderr on one pipe (so they interleave as written), the
//! environment given at start (never the host's), its OOM score raised to the maximum (the kernel picks it, not the
//! executor) and, when a workspace limit is set, `RLIMIT_FSIZE` at that size. One thread polls the pipe and the
//! child; no helper threads, so a fork bomb at the pids limit cannot stop the executor from supervising. Ends:
//! - the wall time: SIGTERM to the group, SIGKILL after the grace;
//! - the output limit (an infinite-output command): SIGKILL at once;
//! - the workspace limit, checked every two seconds while it runs: SIGKILL;
//! - and always, when the group leader exits, SIGKILL to what is left of its group and, before the reply, to every
//!   process of the agent's uid (a detached one too), in rounds until `/proc` shows none: nothing the agent starts
//!   outlives its command. If one survived anyway the command's reply is an error, which fails the job.
//!
//! # Lockdown
//! At start the executor drops root's supplementary groups, empties the capability bounding set and gives up
//! `CAP_SETPCAP`, checking each call and reading each result back. If any step fails it answers every request with
//! an error saying why, and runs nothing.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proto::{
    read_frame, write_frame, ErrorKind, ExecReply, FrameError, Limit, Op, OutputCap, Reply,
    Request, Response, VERSION,
};

/// How the executor runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The workspace every path is relative to.
    pub workspace: PathBuf,
    /// The agent's uid and gid: commands run as it, file operations use it. `None` runs everything as the
    /// executor's own user (tests on the host); then nothing is swept by uid either.
    pub agent: Option<(u32, u32)>,
    /// The whole environment of every command (plus what a request adds).
    pub env: Vec<(String, String)>,
    /// Workspace disk limit in bytes: `RLIMIT_FSIZE` for commands, and checked while they run.
    pub workspace_limit: Option<u64>,
}

/// A request that failed, as sent back.
type Failure = (ErrorKind, String);

fn io_failure(what: &str, e: io::Error) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ if e.raw_os_error() == Some(libc::ELOOP) => ErrorKind::NotRegularFile,
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => ErrorKind::NotFound,
        _ if e.raw_os_error() == Some(libc::EISDIR) => ErrorKind::NotRegularFile,
        // A fifo without a reader, opened for writing without blocking.
        _ if e.raw_os_error() == Some(libc::ENXIO) => ErrorKind::NotRegularFile,
        _ => ErrorKind::Io,
    };
    (kind, format!("{what}: {e}"))
}

/// Serves requests until the input ends. Frame errors end the loop (the worker gives up on the container then).
pub fn serve(cfg: &DaemonConfig, input: impl Read, output: impl Write) -> Result<(), FrameError> {
    let lockdown = match cfg.agent {
        Some(ids) => lockdown(ids),
        None => Ok(None),
    };
    if let Err(why) = &lockdown {
        eprintln!("drafter-sandboxd: {why}; refusing every request");
    }
    serve_locked_down(cfg, lockdown, input, output)
}

/// What the start-up lockdown left: `Ok(Some(ids))` when file operations must run in a child with the agent's ids
/// (see [`delegated`]), `Err(why)` when the executor could not give up its own privileges.
type Lockdown = Result<Option<(u32, u32)>, String>;

/// [`serve`] after the lockdown. A failed lockdown answers every request, the ping included, with an error saying
/// why: nothing runs with privileges that should have been dropped, and the worker fails the job with the reason.
fn serve_locked_down(
    cfg: &DaemonConfig,
    lockdown: Lockdown,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<(), FrameError> {
    while let Some((req, body)) = read_frame::<Request>(&mut input)? {
        let is_file_op = matches!(
            req.op,
            Op::Read { .. } | Op::Write { .. } | Op::List { .. } | Op::Search { .. } | Op::Unpack
        );
        let (reply, out) = match &lockdown {
            Err(why) => (
                Reply::Error {
                    kind: ErrorKind::Io,
                    message: format!("drafter-sandboxd refuses to run anything: {why}"),
                },
                Vec::new(),
            ),
            Ok(Some(ids)) if is_file_op => delegated(cfg, *ids, req.op, body),
            Ok(_) => handle(cfg, req.op, body),
        };
        write_frame(&mut output, &Response { id: req.id, reply }, &out)?;
    }
    Ok(())
}

/// Gives up what the executor must not keep before it serves anything, checking every step (a failure would
/// otherwise leave privileges in place silently): root's supplementary groups (they would leak into file operations
/// done as the agent), the capability bounding set (every command inherits it) and `CAP_SETPCAP`. Then probes how
/// file operations can take the agent's ids.
fn lockdown((uid, gid): (u32, u32)) -> Lockdown {
    drop_supplementary_groups()?;
    empty_bounding_set()?;
    if fsuid_switch_works(uid, gid) {
        Ok(None)
    } else {
        // Some kernels (gVisor's) do not switch filesystem ids per thread: file operations then run in a
        // short-lived child that has become the agent, which costs a process per call but keeps the rule.
        eprintln!(
            "drafter-sandboxd: no per-thread filesystem ids here; file operations run in a child"
        );
        Ok(Some((uid, gid)))
    }
}

/// `Err` naming the call and the OS error when `rc` says it failed.
fn checked(what: &str, rc: libc::c_long) -> Result<(), String> {
    if rc == -1 {
        Err(format!("{what} failed: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn drop_supplementary_groups() -> Result<(), String> {
    // SAFETY: plain syscalls; a null list of length 0.
    checked(
        "setgroups",
        unsafe { libc::setgroups(0, std::ptr::null()) }.into(),
    )?;
    // SAFETY: as above; with size 0 only the count is returned.
    let left = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    checked("getgroups", left.into())?;
    if left != 0 {
        return Err(format!(
            "setgroups left {left} supplementary groups in place"
        ));
    }
    Ok(())
}

/// Whether `setfsuid`/`setfsgid` take effect on this kernel (probed once at start, then restored).
fn fsuid_switch_works(uid: u32, gid: u32) -> bool {
    // SAFETY: plain syscalls on this thread's credentials; an invalid id (-1) changes nothing and returns the
    // current one.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        let fsuid = libc::setfsuid(u32::MAX);
        let fsgid = libc::setfsgid(u32::MAX);
        libc::setfsuid(libc::geteuid());
        libc::setfsgid(libc::getegid());
        fsuid as u32 == uid && fsgid as u32 == gid
    }
}

/// Runs one file operation in a child process (this binary, `file-op` mode) that has dropped to the agent's ids.
fn delegated(
    cfg: &DaemonConfig,
    (uid, gid): (u32, u32),
    op: Op,
    body: Vec<u8>,
) -> (Reply, Vec<u8>) {
    let failed = |message: String| {
        (
            Reply::Error {
                kind: ErrorKind::Io,
                message,
            },
            Vec::new(),
        )
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return failed(format!("locating the executor: {e}")),
    };
    let mut child = match Command::new(exe)
        .arg("file-op")
        .arg("--workspace")
        .arg(&cfg.workspace)
        .env_clear()
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the file-op helper: {e}")),
    };
    let frame = match super::proto::encode(&Request { id: 0, op }, &body) {
        Ok(f) => f,
        Err(e) => return failed(e.to_string()),
    };
    // Write from a thread: a large reply could otherwise fill the pipe while the request is still going in.
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&frame);
        }
        drop(stdin);
    });
    let reply = child
        .stdout
        .take()
        .map(|mut out| read_frame::<Response>(&mut out));
    let _ = writer.join();
    let _ = child.wait();
    match reply {
        Some(Ok(Some((resp, body)))) => (resp.reply, body),
        Some(Ok(None)) => failed("the file-op helper answered nothing".into()),
        Some(Err(e)) => failed(format!("the file-op helper: {e}")),
        None => failed("the file-op helper has no stdout".into()),
    }
}

/// Executes one request.
pub fn handle(cfg: &DaemonConfig, op: Op, body: Vec<u8>) -> (Reply, Vec<u8>) {
    let result = match op {
        Op::Ping => Ok((
            Reply::Pong {
                version: VERSION,
                pid: std::process::id(),
            },
            Vec::new(),
        )),
        Op::Exec {
            argv,
            cwd,
            env,
            timeout_ms,
            kill_grace_ms,
            output_cap,
            output_limit,
        } => exec(
            cfg,
            &ExecSpec {
                argv,
                cwd: cwd.unwrap_or_else(|| ".".into()),
                env,
                timeout: Duration::from_millis(timeout_ms.max(1)),
                grace: Duration::from_millis(kill_grace_ms),
                output_cap: usize::try_from(output_cap).unwrap_or(usize::MAX),
                output_limit,
            },
            body,
        ),
        Op::Read { path, max_bytes } => {
            let _agent = AsAgent::enter(cfg);
            read(cfg, &path, max_bytes).map(|data| (Reply::Data, data))
        }
        Op::Write { path } => {
            let _agent = AsAgent::enter(cfg);
            write(cfg, &path, &body).map(|bytes| (Reply::Written { bytes }, Vec::new()))
        }
        Op::List {
            path,
            max_depth,
            max_entries,
        } => {
            let _agent = AsAgent::enter(cfg);
            list(cfg, &path, max_depth, max_entries)
                .map(|(text, truncated)| (Reply::Listing { truncated }, text))
        }
        Op::Search {
            pattern,
            path,
            max_matches,
        } => {
            let _agent = AsAgent::enter(cfg);
            search(cfg, &pattern, &path, max_matches)
                .map(|(text, truncated)| (Reply::Listing { truncated }, text))
        }
        Op::Unpack => {
            let _agent = AsAgent::enter(cfg);
            unpack(cfg, &body).map(|entries| (Reply::Unpacked { entries }, Vec::new()))
        }
        Op::DiskUsage => {
            let (bytes, entries) = disk_usage(&cfg.workspace);
            Ok((Reply::Usage { bytes, entries }, Vec::new()))
        }
    };
    match result {
        Ok(r) => r,
        Err((kind, message)) => (Reply::Error { kind, message }, Vec::new()),
    }
}

/// Linux capability numbers used here (linux/capability.h).
const CAP_SETPCAP: u32 = 8;
const CAP_LAST: u32 = 63;

/// Empties the capability bounding set, which every command inherits (so the agent's `CapBnd` is 0 as well as its
/// `CapEff`), then gives up `CAP_SETPCAP`, which only this needed. The executor keeps its other capabilities: the
/// bounding set only limits what an `execve` can gain. Each step is read back, not only its result checked.
fn empty_bounding_set() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let setpcap = 1u32 << CAP_SETPCAP;
    // SAFETY: prctl/capget/capset with correctly laid out arguments for this thread.
    unsafe {
        for cap in 0..=CAP_LAST {
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            // Numbers past the kernel's last capability are EINVAL: there is nothing to drop.
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                checked(&format!("PR_CAPBSET_DROP of capability {cap}"), rc.into())?;
            }
        }
        for cap in 0..=CAP_LAST {
            // 1: still in the set; 0: dropped; -1 (EINVAL): no such capability.
            if libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1 {
                return Err(format!(
                    "PR_CAPBSET_DROP left capability {cap} in the bounding set"
                ));
            }
        }
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        checked(
            "capget",
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
        )?;
        data[0].effective &= !setpcap;
        data[0].permitted &= !setpcap;
        checked(
            "capset",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
        )?;
        let mut now = [Data::default(); 2];
        checked(
            "capget",
            libc::syscall(libc::SYS_capget, &mut header, now.as_mut_ptr()),
        )?;
        if (now[0].effective | now[0].permitted) & setpcap != 0 {
            return Err("capset left CAP_SETPCAP in place".into());
        }
    }
    Ok(())
}

/// While alive, this thread's filesystem uid and gid are the agent's (Linux keeps them per thread), which also drops
/// the filesystem capabilities from the effective set; dropping it restores root's.
struct AsAgent(bool);

impl AsAgent {
    fn enter(cfg: &DaemonConfig) -> AsAgent {
        match cfg.agent {
            Some((uid, gid)) => {
                // SAFETY: plain syscalls on this thread's credentials.
                unsafe {
                    libc::setfsgid(gid);
                    libc::setfsuid(uid);
                }
                AsAgent(true)
            }
            None => AsAgent(false),
        }
    }
}

impl Drop for AsAgent {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: as above; back to the process's own ids (root), which the kernel always allows.
            unsafe {
                libc::setfsuid(libc::geteuid());
                libc::setfsgid(libc::getegid());
            }
        }
    }
}

/// `rel` under the workspace: relative, no `..`, no NUL. `allow_root` admits `.` (the workspace itself).
fn resolve(cfg: &DaemonConfig, rel: &str, allow_root: bool) -> Result<PathBuf, Failure> {
    let bad = |why: &str| {
        (
            ErrorKind::BadPath,
            format!("invalid workspace path `{rel}`: {why}"),
        )
    };
    if rel.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if rel.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    let mut out = cfg.workspace.clone();
    let mut depth = 0;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                depth += 1;
            }
            Component::CurDir => {}
            _ => return Err(bad("must not contain `..`")),
        }
    }
    if depth == 0 && !allow_root {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// The path as shown back: relative to the workspace, `/`-separated.
fn shown(cfg: &DaemonConfig, p: &Path) -> String {
    p.strip_prefix(&cfg.workspace)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

// ---- files -----------------------------------------------------------------------------------------------------

/// Opens `path` without following a final symlink and without blocking on a fifo, and insists on a regular file.
fn open_regular(
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

fn read(cfg: &DaemonConfig, rel: &str, max_bytes: u64) -> Result<Vec<u8>, Failure> {
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

fn write(cfg: &DaemonConfig, rel: &str, data: &[u8]) -> Result<u64, Failure> {
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
fn unpack(cfg: &DaemonConfig, tar: &[u8]) -> Result<u64, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, e: io::Error| io_failure(&format!("unpack {what}"), e);
    let mut archive = tar::Archive::new(io::Cursor::new(tar));
    let mut n = 0;
    let entries = archive.entries().map_err(|e| fail("archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail("archive", e))?;
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
                let create = || {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&target)
                };
                let mut file = match create() {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        std::fs::remove_file(&target).map_err(|e| fail(&shown, e))?;
                        create()
                    }
                    other => other,
                }
                .map_err(|e| fail(&shown, e))?;
                io::copy(&mut entry, &mut file).map_err(|e| fail(&shown, e))?;
                if let Some(t) = mtime {
                    let _ = file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(t));
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| fail(&shown, e))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(&link, &target).map_err(|e| fail(&shown, e))?;
            }
            _ => continue,
        }
        n += 1;
    }
    Ok(n)
}

/// Directory entries sorted by name, `.git` left out.
fn sorted_entries(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".git")
        .collect();
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

fn list(
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
fn list_into(
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
const SEARCH_MAX_FILE: u64 = 8 << 20;
/// Bytes searched per request, at most.
const SEARCH_MAX_TOTAL: u64 = 512 << 20;
/// Characters of a matching line shown.
const SEARCH_LINE_CHARS: usize = 300;

fn search(
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

fn read_nonblocking(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok(data)
}

/// Entries walked at most by [`disk_usage`]; past it the count is what it is (and surely over any limit).
const USAGE_MAX_ENTRIES: u64 = 5_000_000;

/// Bytes under `root` and entries seen. Each entry counts the larger of its allocated blocks and its apparent size,
/// once per name: a sparse file counts what it would take once copied out, and every hard link counts as the copy
/// the host makes of it. Symlinks are not followed, unreadable directories are skipped (with `DAC_READ_SEARCH` none
/// are).
pub fn disk_usage(root: &Path) -> (u64, u64) {
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

// ---- commands --------------------------------------------------------------------------------------------------

struct ExecSpec {
    argv: Vec<String>,
    cwd: String,
    env: Vec<(String, String)>,
    timeout: Duration,
    grace: Duration,
    output_cap: usize,
    output_limit: u64,
}

/// How often the workspace is measured while a command runs (only with a workspace limit).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);
/// After the group leader exits: how long the pipe may stay open before the agent's other processes are killed.
const LINGER: Duration = Duration::from_millis(300);
/// And how long after that before the executor stops waiting for the pipe at all.
const ABANDON: Duration = Duration::from_secs(3);

fn exec(
    cfg: &DaemonConfig,
    spec: &ExecSpec,
    stdin_data: Vec<u8>,
) -> Result<(Reply, Vec<u8>), Failure> {
    let Some(program) = spec.argv.first() else {
        return Err((ErrorKind::BadRequest, "empty argv".into()));
    };
    let cwd = resolve(cfg, &spec.cwd, true)?;
    let (reader, writer) = io::pipe().map_err(|e| io_failure("pipe", e))?;
    let stdout = writer.try_clone().map_err(|e| io_failure("pipe", e))?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin_data.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(stdout)
        .stderr(writer)
        .process_group(0);
    if let Some((uid, gid)) = cfg.agent {
        // std drops the supplementary groups too when it changes ids as root.
        cmd.uid(uid).gid(gid);
    }
    let fsize = cfg.workspace_limit;
    // SAFETY: only async-signal-safe calls (open, write, close, setrlimit) on constant data.
    unsafe {
        cmd.pre_exec(move || {
            prepare_child(fsize);
            Ok(())
        });
    }
    let oom_before = oom_kills();
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        (
            ErrorKind::Spawn,
            format!("could not start `{program}`: {e}"),
        )
    })?;
    // Our copies of the pipe's write end went with `cmd`; drop it so EOF means the command's side is closed.
    drop(cmd);
    let pgid = child.id() as i32;
    let mut sup = Supervisor {
        cfg,
        pgid,
        out: OutputCap::new(spec.output_cap),
        stopped_by: None,
    };
    let status = sup.run(&mut child, reader, stdin_data, spec, started);
    let duration_ms = started.elapsed().as_millis() as u64;
    // Whatever way the command ended, nothing it started may outlive it: a detached process could keep writing
    // between disk checks, burn CPU past the timeout, or (under gVisor) reach the file helper's descriptors.
    let survivors = sweep(cfg);
    if survivors > 0 {
        return Err((
            ErrorKind::Io,
            format!("{survivors} of the command's processes survived being killed"),
        ));
    }
    let mut reply = ExecReply {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stopped_by: sup.stopped_by,
        truncated: false,
        output_bytes: sup.out.total(),
        duration_ms,
    };
    if reply.stopped_by.is_none() && reply.signal == Some(libc::SIGKILL) && oom_kills() > oom_before
    {
        reply.stopped_by = Some(Limit::Memory);
    }
    let (output, truncated) = sup.out.finish_bytes();
    reply.truncated = truncated;
    Ok((Reply::Exec(reply), output))
}

/// Runs in the child between fork and exec (after the id change).
fn prepare_child(fsize: Option<u64>) {
    // SAFETY (for the whole body): async-signal-safe syscalls only.
    unsafe {
        // The OOM killer picks the agent's processes, never the executor.
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        if let Some(limit) = fsize {
            let fsize = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &fsize);
        }
    }
}

/// The container's OOM-kill count (cgroup v2 `memory.events`, else v1 `memory.oom_control`); 0 when unknown.
fn oom_kills() -> u64 {
    for file in [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
            {
                return n;
            }
        }
    }
    0
}

struct Supervisor<'a> {
    cfg: &'a DaemonConfig,
    pgid: i32,
    out: OutputCap,
    stopped_by: Option<Limit>,
}

impl Supervisor<'_> {
    fn signal_group(&self, sig: i32) {
        // SAFETY: a plain kill(2) on the command's process group.
        unsafe { libc::kill(-self.pgid, sig) };
    }

    fn stop(&mut self, why: Limit) {
        if self.stopped_by.is_none() {
            self.stopped_by = Some(why);
        }
        self.signal_group(libc::SIGKILL);
        let _ = sweep(self.cfg);
    }

    /// Polls the output pipe, feeds stdin, watches the clock and the child; returns the leader's exit status.
    fn run(
        &mut self,
        child: &mut Child,
        reader: io::PipeReader,
        stdin_data: Vec<u8>,
        spec: &ExecSpec,
        started: Instant,
    ) -> Option<std::process::ExitStatus> {
        set_nonblocking(reader.as_raw_fd());
        let mut reader = Some(reader);
        let mut stdin = child.stdin.take();
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd());
        }
        let mut fed = 0usize;
        let deadline = started + spec.timeout;
        let mut term_at: Option<Instant> = None;
        let mut hard_killed = false;
        let mut next_disk_check = started + DISK_CHECK_EVERY;
        let mut status = None;
        let mut exited_at: Option<Instant> = None;
        let mut swept_after_exit = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Wait for output or stdin room; a short tick otherwise, to notice the exit and the clock.
            let tick = if exited_at.is_some() || started.elapsed() < Duration::from_millis(50) {
                1
            } else {
                20
            };
            let mut fds = Vec::with_capacity(2);
            if let Some(r) = &reader {
                fds.push(libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if let Some(s) = &stdin {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
            // SAFETY: `fds` is a valid array of the given length for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tick) };

            if let Some(r) = reader.as_mut() {
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => {
                            reader = None;
                            break;
                        }
                        Ok(n) => {
                            self.out.push(&buf[..n]);
                            if self.out.total() > spec.output_limit && self.stopped_by.is_none() {
                                self.stop(Limit::Output);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break, // WouldBlock: nothing more for now
                    }
                }
            }
            if let Some(s) = stdin.as_mut() {
                match s.write(&stdin_data[fed..]) {
                    Ok(n) => {
                        fed += n;
                        if fed >= stdin_data.len() {
                            stdin = None; // closing it is the command's EOF
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => stdin = None, // the command closed its stdin
                }
            }

            if status.is_none() {
                if let Ok(Some(s)) = child.try_wait() {
                    status = Some(s);
                    exited_at = Some(Instant::now());
                    // Whatever the leader left behind in its group goes with it.
                    self.signal_group(libc::SIGKILL);
                }
            }
            let now = Instant::now();
            if let Some(at) = exited_at {
                if reader.is_none() {
                    break;
                }
                // Something outside the group (setsid) still holds the pipe.
                if now - at > LINGER && !swept_after_exit {
                    swept_after_exit = true;
                    let _ = sweep(self.cfg);
                }
                if now - at > ABANDON {
                    break;
                }
                continue;
            }
            if now >= deadline && term_at.is_none() {
                if self.stopped_by.is_none() {
                    self.stopped_by = Some(Limit::Timeout);
                }
                self.signal_group(libc::SIGTERM);
                term_at = Some(now);
            }
            if let Some(t) = term_at {
                if !hard_killed && now - t >= spec.grace {
                    hard_killed = true;
                    self.signal_group(libc::SIGKILL);
                    let _ = sweep(self.cfg);
                }
            }
            if let Some(limit) = self.cfg.workspace_limit {
                if now >= next_disk_check {
                    next_disk_check = now + DISK_CHECK_EVERY;
                    if disk_usage(&self.cfg.workspace).0 > limit {
                        self.stop(Limit::Disk);
                    }
                }
            }
        }
        if status.is_none() {
            status = child.wait().ok();
        }
        status
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// How long [`sweep`] keeps killing before it reports survivors.
const SWEEP_FOR: Duration = Duration::from_secs(3);

/// SIGKILLs every process of the agent's uid, in rounds until none is left (a fork bomb keeps forking while the
/// first round lands), for at most [`SWEEP_FOR`]. Returns how many were still alive in the last round (0: none
/// survives). Only with an agent uid, i.e. in the container, where that uid is the agent's alone.
fn sweep(cfg: &DaemonConfig) -> usize {
    let Some((uid, _)) = cfg.agent else { return 0 };
    let me = std::process::id();
    let until = Instant::now() + SWEEP_FOR;
    loop {
        let Ok(proc_dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut found = 0;
        for e in proc_dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid != me && is_live_agent_process(pid, uid) {
                found += 1;
                // SAFETY: kill(2) on a pid read from /proc.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if found == 0 || Instant::now() >= until {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs with `uid` as any of its ids and is not a zombie (which no longer runs; init reaps it). Read
/// from its status, not from who owns `/proc/<pid>`: a process that made itself non-dumpable shows that as root's.
fn is_live_agent_process(pid: u32, uid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mut ours = false;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            if state.trim_start().starts_with(['Z', 'X']) {
                return false;
            }
        } else if let Some(ids) = line.strip_prefix("Uid:") {
            ours = ids.split_whitespace().any(|id| id.parse() == Ok(uid));
        }
    }
    ours
}

/// The command line of `drafter-sandboxd`: `--workspace DIR [--uid N --gid N] [--workspace-limit BYTES]`. The
/// environment of commands is the executor's own (which the worker set from constants when it created the
/// container).
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> Result<(), String> {
    let mut args = args.into_iter().peekable();
    // `file-op`: one file request on stdin, its reply on stdout, as whoever started us (see `delegated`).
    let file_op = args.peek().map(String::as_str) == Some("file-op");
    if file_op {
        args.next();
    }
    let mut workspace = None;
    let mut uid = None;
    let mut gid = None;
    let mut workspace_limit = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--workspace" => workspace = Some(PathBuf::from(value("--workspace")?)),
            "--uid" => uid = Some(parse_num::<u32>("--uid", &value("--uid")?)?),
            "--gid" => gid = Some(parse_num::<u32>("--gid", &value("--gid")?)?),
            "--workspace-limit" => {
                workspace_limit = Some(parse_num::<u64>(
                    "--workspace-limit",
                    &value("--workspace-limit")?,
                )?)
            }
            "--version" => {
                println!(
                    "drafter-sandboxd {} (protocol {VERSION})",
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let workspace = workspace.ok_or("--workspace is required")?;
    let agent = match (uid, gid, file_op) {
        (Some(u), Some(g), false) => Some((u, g)),
        (None, None, _) => None,
        (_, _, true) => return Err("file-op runs as whoever starts it: no --uid/--gid".into()),
        _ => return Err("--uid and --gid go together".into()),
    };
    let cfg = DaemonConfig {
        workspace,
        agent,
        env: std::env::vars().collect(),
        workspace_limit,
    };
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    serve(&cfg, io::BufReader::new(stdin), stdout).map_err(|e| e.to_string())
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: `{v}` is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::proto::encode;
    use std::ffi::CString;

    fn cfg(dir: &Path) -> DaemonConfig {
        DaemonConfig {
            workspace: dir.to_path_buf(),
            agent: None,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            workspace_limit: None,
        }
    }

    fn run(cfg: &DaemonConfig, cmd: &str, timeout_ms: u64, limit: u64) -> (ExecReply, String) {
        let op = Op::Exec {
            argv: vec!["bash".into(), "-c".into(), cmd.into()],
            cwd: None,
            env: vec![("EXTRA".into(), "1".into())],
            timeout_ms,
            kill_grace_ms: 200,
            output_cap: 1000,
            output_limit: limit,
        };
        match handle(cfg, op, Vec::new()) {
            (Reply::Exec(r), out) => (r, String::from_utf8_lossy(&out).into_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_exit_codes_env_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let (r, out) = run(
            &cfg,
            "echo out; echo err >&2; echo $EXTRA; env | wc -l; exit 3",
            5000,
            1 << 20,
        );
        assert_eq!(r.exit_code, Some(3));
        // Only the configured environment plus the request's (bash adds PWD, SHLVL and _).
        assert_eq!(out, "out\nerr\n1\n5\n");

        // Wall time: TERM ignored, KILL after the grace, with the background child.
        let t = Instant::now();
        let (r, _) = run(&cfg, "trap '' TERM; sleep 30 & sleep 30", 300, 1 << 20);
        assert_eq!(r.stopped_by, Some(Limit::Timeout));
        assert_eq!(r.signal, Some(libc::SIGKILL));
        // Far below the 30 s the command would take; loose enough for a loaded CI machine.
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

        // Output limit.
        let (r, out) = run(&cfg, "yes", 30_000, 100_000);
        assert_eq!(r.stopped_by, Some(Limit::Output));
        assert!(r.truncated && out.len() < 1100);

        // A background job holding the pipe does not hold the command (its group is killed at exit).
        let t = Instant::now();
        let (r, out) = run(&cfg, "sleep 30 & echo done", 30_000, 1 << 20);
        assert_eq!((r.exit_code, out.as_str()), (Some(0), "done\n"));
        assert!(t.elapsed() < Duration::from_secs(5));

        // stdin is fed; a missing program is a spawn error, not a crash.
        let op = Op::Exec {
            argv: vec!["wc".into(), "-c".into()],
            cwd: None,
            env: vec![],
            timeout_ms: 5000,
            kill_grace_ms: 100,
            output_cap: 100,
            output_limit: 1000,
        };
        let (reply, out) = handle(&cfg, op.clone(), vec![b'x'; 300_000]);
        assert!(matches!(reply, Reply::Exec(_)));
        assert_eq!(String::from_utf8_lossy(&out).trim(), "300000");
        let mut op = op;
        if let Op::Exec { argv, .. } = &mut op {
            argv[0] = "/nonexistent".into();
        }
        assert!(matches!(
            handle(&cfg, op, vec![]).0,
            Reply::Error {
                kind: ErrorKind::Spawn,
                ..
            }
        ));
    }

    #[test]
    fn files_list_search_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let w = |p: &str, d: &[u8]| handle(&cfg, Op::Write { path: p.into() }, d.to_vec()).0;
        assert_eq!(
            w("a/b/c.txt", b"hello\nworld\n"),
            Reply::Written { bytes: 12 }
        );
        w("a/bin.dat", b"x\0hello");
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/hello"), "hello").unwrap();
        let read = |p: &str, max| {
            handle(
                &cfg,
                Op::Read {
                    path: p.into(),
                    max_bytes: max,
                },
                vec![],
            )
        };
        assert_eq!(
            read("a/b/c.txt", 100),
            (Reply::Data, b"hello\nworld\n".to_vec())
        );
        for (path, kind) in [
            ("a/b/c.txt", ErrorKind::TooLarge),
            ("nope", ErrorKind::NotFound),
            ("a", ErrorKind::NotRegularFile),
            ("../x", ErrorKind::BadPath),
            ("/etc/passwd", ErrorKind::BadPath),
        ] {
            match read(path, 5).0 {
                Reply::Error { kind: k, .. } => assert_eq!(k, kind, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        // A symlink is not followed; a fifo does not hang the executor.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("pw")).unwrap();
        assert!(matches!(
            read("pw", 1 << 20).0,
            Reply::Error {
                kind: ErrorKind::NotRegularFile,
                ..
            }
        ));
        let fifo = CString::new(dir.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            read("fifo", 100).0,
            Reply::Error {
                kind: ErrorKind::NotRegularFile,
                ..
            }
        ));
        assert!(matches!(
            w("fifo", b"x"),
            Reply::Error {
                kind: ErrorKind::NotRegularFile,
                ..
            }
        ));

        let (reply, text) = handle(
            &cfg,
            Op::List {
                path: ".".into(),
                max_depth: 5,
                max_entries: 100,
            },
            vec![],
        );
        assert_eq!(reply, Reply::Listing { truncated: false });
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "d a\nd a/b\nf a/b/c.txt\nf a/bin.dat\nf fifo\nl pw\n"
        );
        let (reply, _) = handle(
            &cfg,
            Op::List {
                path: ".".into(),
                max_depth: 5,
                max_entries: 2,
            },
            vec![],
        );
        assert_eq!(reply, Reply::Listing { truncated: true });

        let search = |pattern: &str| {
            handle(
                &cfg,
                Op::Search {
                    pattern: pattern.into(),
                    path: ".".into(),
                    max_matches: 10,
                },
                vec![],
            )
        };
        // Binary files and .git are skipped.
        let (_, text) = search("hel+o");
        assert_eq!(String::from_utf8(text).unwrap(), "a/b/c.txt:1:hello\n");
        assert!(matches!(
            search("(").0,
            Reply::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ));

        let (reply, _) = handle(&cfg, Op::DiskUsage, vec![]);
        let Reply::Usage { bytes, entries } = reply else {
            panic!("{reply:?}")
        };
        assert!(bytes > 0 && entries >= 6, "{bytes} {entries}");
    }

    #[test]
    fn unpack_keeps_modes_links_and_refuses_escapes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "src", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(2);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, "src/run.sh", &b"hi"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "src/run.sh").unwrap();
        let tar = b.into_inner().unwrap();
        // Twice: the second run replaces what the first made.
        for _ in 0..2 {
            let (reply, _) = handle(&cfg, Op::Unpack, tar.clone());
            assert_eq!(reply, Reply::Unpacked { entries: 3 });
        }
        let meta = std::fs::metadata(dir.path().join("src/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.modified().unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(1_000_000)
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("link")).unwrap(),
            Path::new("src/run.sh")
        );

        // An entry that climbs out is refused (the tar crate will not even write one, so forge the header).
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..6].copy_from_slice(b"../evi");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        let (reply, _) = handle(&cfg, Op::Unpack, b.into_inner().unwrap());
        assert!(
            matches!(
                reply,
                Reply::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
        assert!(!dir.path().parent().unwrap().join("evi").exists());
    }

    /// A lockdown that failed (any of setgroups, PR_CAPBSET_DROP, capset): every request is refused with the
    /// reason, and nothing runs or is written.
    #[test]
    fn a_failed_lockdown_refuses_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let ops = [
            Op::Ping,
            Op::Exec {
                argv: vec!["touch".into(), "ran".into()],
                cwd: None,
                env: vec![],
                timeout_ms: 5000,
                kill_grace_ms: 100,
                output_cap: 100,
                output_limit: 1000,
            },
            Op::Write {
                path: "written".into(),
            },
            Op::DiskUsage,
        ];
        let mut input = Vec::new();
        for (id, op) in ops.into_iter().enumerate() {
            input.extend(encode(&Request { id: id as u64, op }, b"x").unwrap());
        }
        let mut output = Vec::new();
        let failed = Err("capset failed: Operation not permitted (os error 1)".to_string());
        serve_locked_down(&cfg, failed, io::Cursor::new(input), &mut output).unwrap();
        let mut cur = io::Cursor::new(output);
        for id in 0..4 {
            let (resp, _) = read_frame::<Response>(&mut cur).unwrap().unwrap();
            assert_eq!(resp.id, id);
            match resp.reply {
                Reply::Error {
                    kind: ErrorKind::Io,
                    message,
                } => assert_eq!(
                    message,
                    "drafter-sandboxd refuses to run anything: capset failed: Operation not permitted (os error 1)"
                ),
                other => panic!("request {id} was served: {other:?}"),
            }
        }
        assert!(!dir.path().join("ran").exists());
        assert!(!dir.path().join("written").exists());
        // The same requests are served after a lockdown that held.
        let mut input = Vec::new();
        input.extend(
            encode(
                &Request {
                    id: 1,
                    op: Op::Ping,
                },
                b"",
            )
            .unwrap(),
        );
        let mut output = Vec::new();
        serve_locked_down(&cfg, Ok(None), io::Cursor::new(input), &mut output).unwrap();
        let (resp, _) = read_frame::<Response>(&mut io::Cursor::new(output))
            .unwrap()
            .unwrap();
        assert!(matches!(resp.reply, Reply::Pong { .. }), "{resp:?}");
    }

    #[test]
    fn failed_privilege_calls_are_errors() {
        assert_eq!(checked("capset", 0), Ok(()));
        // SAFETY: a syscall that fails: setgroups with a bad pointer and a huge count.
        let rc = unsafe { libc::setgroups(usize::MAX, std::ptr::null()) };
        let err = checked("setgroups", rc.into()).unwrap_err();
        assert!(err.starts_with("setgroups failed: "), "{err}");
    }

    /// Apparent sizes count: a sparse file as its length, each hard link again.
    #[test]
    fn disk_usage_counts_sparse_files_and_every_link() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        for i in 0..10 {
            std::fs::hard_link(&big, dir.path().join(format!("l{i}"))).unwrap();
        }
        let (bytes, entries) = disk_usage(dir.path());
        assert_eq!(entries, 11);
        assert!(bytes >= 11 * (4 << 20), "{bytes}");
    }

    #[test]
    fn serve_answers_in_order_and_stops_on_a_bad_frame() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let mut input = Vec::new();
        input.extend(
            encode(
                &Request {
                    id: 1,
                    op: Op::Ping,
                },
                b"",
            )
            .unwrap(),
        );
        input.extend(
            encode(
                &Request {
                    id: 2,
                    op: Op::Write { path: "f".into() },
                },
                b"abc",
            )
            .unwrap(),
        );
        let mut output = Vec::new();
        serve(&cfg, io::Cursor::new(input.clone()), &mut output).unwrap();
        let mut cur = io::Cursor::new(output);
        let (r1, _) = read_frame::<Response>(&mut cur).unwrap().unwrap();
        let (r2, _) = read_frame::<Response>(&mut cur).unwrap().unwrap();
        assert!(matches!(
            r1,
            Response {
                id: 1,
                reply: Reply::Pong {
                    version: VERSION,
                    ..
                }
            }
        ));
        assert_eq!(
            r2,
            Response {
                id: 2,
                reply: Reply::Written { bytes: 3 }
            }
        );

        input.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 0, b'{', b'x']);
        let mut output = Vec::new();
        assert!(serve(&cfg, io::Cursor::new(input), &mut output).is_err());
    }
}
