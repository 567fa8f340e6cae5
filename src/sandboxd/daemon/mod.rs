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
//! the host side's `sandbox::Sandbox`), and the agent can neither signal nor trace it. Each command drops to the agent's uid and gid
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
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod command;
mod files;
mod pack;

use super::proto::{
    read_frame, write_frame, ErrorKind, ExecReply, FrameError, Limit, Op, OutputCap, Reply,
    Request, Response, VERSION,
};
use command::*;
use files::*;
use pack::{pack, ChunkWriter};

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
        Some(ids) => lockdown(&cfg.workspace, ids),
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
        if let (
            Ok(_),
            Op::Pack {
                max_bytes,
                max_entries,
            },
        ) = (&lockdown, &req.op)
        {
            // Streamed: chunks as the tar grows, then the closing reply (never delegated: it reads as the
            // executor, see `pack`).
            let mut chunks = ChunkWriter::new(req.id, &mut output);
            let packed = pack(cfg, *max_bytes, *max_entries, &mut chunks);
            if let Some(broken) = chunks.broken.take() {
                return Err(broken);
            }
            let reply = match packed {
                Ok(p) => Reply::Packed {
                    entries: p.entries,
                    bytes: p.bytes,
                },
                Err((kind, message)) => Reply::Error { kind, message },
            };
            write_frame(&mut output, &Response { id: req.id, reply }, &[])?;
            continue;
        }
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
/// done as the agent), the capability bounding set (every command inherits it), `CAP_SETPCAP` and `CAP_CHOWN`. Before
/// that it hands the workspace to the agent: Docker creates the volume without copying the image's directory into
/// it (no copy-up process per container), so it starts as root's. Then probes how file operations can take the
/// agent's ids.
fn lockdown(workspace: &Path, (uid, gid): (u32, u32)) -> Lockdown {
    drop_supplementary_groups()?;
    give_workspace(workspace, uid, gid)?;
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

/// Makes the (empty, root's) workspace directory the agent's, unless it already is.
fn give_workspace(workspace: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(workspace)
        .map_err(|e| format!("reading {}: {e}", workspace.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", workspace.display()));
    }
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(workspace, Some(uid), Some(gid))
            .map_err(|e| format!("handing {} to the agent: {e}", workspace.display()))?;
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
        // Streamed by the serve loop, never as one reply.
        Op::Pack { .. } => Err((
            ErrorKind::BadRequest,
            "pack is only served on the executor's own stream".into(),
        )),
    };
    match result {
        Ok(r) => r,
        Err((kind, message)) => (Reply::Error { kind, message }, Vec::new()),
    }
}

/// Linux capability numbers used here (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_SETPCAP: u32 = 8;
const CAP_LAST: u32 = 63;

/// Empties the capability bounding set, which every command inherits (so the agent's `CapBnd` is 0 as well as its
/// `CapEff`), then gives up `CAP_SETPCAP`, which only this needed, and `CAP_CHOWN`, which only [`give_workspace`]
/// needed. The executor keeps its other capabilities: the
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
    let dropped = (1u32 << CAP_SETPCAP) | (1u32 << CAP_CHOWN);
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
        data[0].effective &= !dropped;
        data[0].permitted &= !dropped;
        checked(
            "capset",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
        )?;
        let mut now = [Data::default(); 2];
        checked(
            "capget",
            libc::syscall(libc::SYS_capget, &mut header, now.as_mut_ptr()),
        )?;
        if (now[0].effective | now[0].permitted) & dropped != 0 {
            return Err("capset left CAP_SETPCAP or CAP_CHOWN in place".into());
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
    // The raw descriptor, not `io::stdout()`: that one is line-buffered and would split a frame at its last newline
    // into two writes (two chunks for Docker to relay); a frame is written whole and needs no buffer.
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("stdout: {e}"))?;
    serve(&cfg, io::BufReader::new(stdin), stdout).map_err(|e| e.to_string())
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: `{v}` is not a number"))
}

#[cfg(test)]
mod tests;
