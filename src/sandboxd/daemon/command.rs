//! Commands: one child in its own process group, supervised by one thread until it and everything of the agent's
//! uid is gone (see the module docs of [`super`] for the limits and why).

use super::*;

// ---- commands --------------------------------------------------------------------------------------------------

pub(super) struct ExecSpec {
    pub(super) argv: Vec<String>,
    pub(super) cwd: String,
    pub(super) env: Vec<(String, String)>,
    pub(super) timeout: Duration,
    pub(super) grace: Duration,
    pub(super) output_cap: usize,
    pub(super) output_limit: u64,
}

/// How often the workspace is measured while a command runs (only with a workspace limit).
pub(super) const DISK_CHECK_EVERY: Duration = Duration::from_secs(2);
/// After the group leader exits: how long the pipe may stay open before the agent's other processes are killed.
pub(super) const LINGER: Duration = Duration::from_millis(300);
/// And how long after that before the executor stops waiting for the pipe at all.
pub(super) const ABANDON: Duration = Duration::from_secs(3);

pub(super) fn exec(
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
pub(super) fn prepare_child(fsize: Option<u64>) {
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
pub(super) fn oom_kills() -> u64 {
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

pub(super) struct Supervisor<'a> {
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
        // Readable once the leader has exited: the poll wakes at the exit itself rather than at the next tick (the
        // pipe's end-of-file comes first, while the exiting process is not yet reapable). Without pidfds (older
        // kernels, some sandboxes) the tick notices it.
        let exit_fd = pidfd(child.id());
        loop {
            // Wait for output or stdin room; a short tick otherwise, to notice the exit and the clock.
            let tick = if exit_fd.is_some() && status.is_none() {
                20
            } else if exited_at.is_some() || started.elapsed() < Duration::from_millis(50) {
                1
            } else {
                20
            };
            let mut fds = Vec::with_capacity(3);
            if let (Some(fd), None) = (&exit_fd, &status) {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
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

/// A pidfd for `pid` (Linux 5.3+), `None` where the kernel has none.
fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall; on success the descriptor is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: just opened, owned by nothing else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

pub(super) fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// How long [`sweep`] keeps killing before it reports survivors.
pub(super) const SWEEP_FOR: Duration = Duration::from_secs(3);

/// SIGKILLs every process of the agent's uid, in rounds until none is left (a fork bomb keeps forking while the
/// first round lands), for at most [`SWEEP_FOR`]. Returns how many were still alive in the last round (0: none
/// survives). Only with an agent uid, i.e. in the container, where that uid is the agent's alone.
pub(super) fn sweep(cfg: &DaemonConfig) -> usize {
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
pub(super) fn is_live_agent_process(pid: u32, uid: u32) -> bool {
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
