use super::*;
use crate::sandboxd::proto::encode;
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

/// Serves one `pack` request; returns the tar the chunks carried and the closing reply.
fn pack_over_serve(cfg: &DaemonConfig, max_bytes: u64, max_entries: u64) -> (Vec<u8>, Reply) {
    let input = encode(
        &Request {
            id: 9,
            op: Op::Pack {
                max_bytes,
                max_entries,
            },
        },
        b"",
    )
    .unwrap();
    let mut output = Vec::new();
    serve(cfg, io::Cursor::new(input), &mut output).unwrap();
    let mut cur = io::Cursor::new(output);
    let mut tar = Vec::new();
    loop {
        let (resp, body) = read_frame::<Response>(&mut cur).unwrap().unwrap();
        assert_eq!(resp.id, 9);
        match resp.reply {
            Reply::Chunk => {
                assert!(body.len() <= crate::sandboxd::proto::PACK_CHUNK);
                tar.extend(body);
            }
            other => {
                assert!(read_frame::<Response>(&mut cur).unwrap().is_none());
                return (tar, other);
            }
        }
    }
}

/// `(type, path, link target or size)` per entry.
fn tar_entries(tar: &[u8]) -> Vec<(char, String, String)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            match kind {
                tar::EntryType::Directory => ('d', path, String::new()),
                tar::EntryType::Regular => ('f', path, e.size().to_string()),
                tar::EntryType::Symlink => ('l', path, link.unwrap()),
                tar::EntryType::Link => ('h', path, link.unwrap()),
                other => panic!("unexpected entry type {other:?}"),
            }
        })
        .collect()
}

/// A hostile workspace going out: links to the executor's own secrets are sent as links, never followed (neither as
/// a file nor as a directory); a fifo is skipped without blocking; `.git` stays in; a second name of a file is a
/// hard-link entry (the host copies it, counted); a huge sparse file and an entry flood are refused before they are
/// read.
#[test]
fn pack_sends_links_as_links_and_stops_at_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let cfg = cfg(ws);
    std::fs::create_dir_all(ws.join("src/deep")).unwrap();
    std::fs::write(ws.join("src/deep/a.rs"), b"fn a() {}").unwrap();
    std::fs::write(ws.join("README"), b"hello").unwrap();
    std::fs::hard_link(ws.join("README"), ws.join("README.copy")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", ws.join("shadow")).unwrap();
    std::os::unix::fs::symlink("/", ws.join("root")).unwrap();
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    std::fs::write(ws.join(".git/hooks/pre-commit"), b"evil").unwrap();
    std::fs::create_dir_all(ws.join("sub/.GIT")).unwrap();
    let fifo = CString::new(ws.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let (tar, end) = pack_over_serve(&cfg, 1 << 20, 1000);
    assert!(
        matches!(
            end,
            Reply::Packed {
                entries: 9,
                bytes: 19
            }
        ),
        "{end:?}"
    );
    assert_eq!(
        tar_entries(&tar),
        [
            ('f', "workspace/README", "5"),
            ('h', "workspace/README.copy", "workspace/README"),
            ('l', "workspace/root", "/"),
            ('l', "workspace/shadow", "/etc/shadow"),
            ('d', "workspace/src", ""),
            ('d', "workspace/src/deep", ""),
            ('f', "workspace/src/deep/a.rs", "9"),
            ('d', "workspace/sub", ""),
        ]
        .map(|(k, p, l)| (k, p.to_string(), l.to_string()))
    );

    // A terabyte of holes: refused on its length, before a byte is read.
    std::fs::File::create(ws.join("huge"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let t = Instant::now();
    let (_, end) = pack_over_serve(&cfg, 1 << 30, 1000);
    assert!(
        matches!(
            end,
            Reply::Error {
                kind: ErrorKind::TooLarge,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    std::fs::remove_file(ws.join("huge")).unwrap();
    // Each hard link costs its copy: the file is 5 bytes, its second name 5 more.
    let (_, end) = pack_over_serve(&cfg, 17, 1000);
    assert!(
        matches!(
            end,
            Reply::Error {
                kind: ErrorKind::TooLarge,
                ..
            }
        ),
        "{end:?}"
    );

    // An entry flood stops at the limit, without listing the whole directory.
    std::fs::create_dir(ws.join("flood")).unwrap();
    for i in 0..500 {
        std::fs::write(ws.join(format!("flood/{i}")), b"").unwrap();
    }
    let (_, end) = pack_over_serve(&cfg, 1 << 20, 100);
    assert!(
        matches!(
            end,
            Reply::Error {
                kind: ErrorKind::TooMany,
                ..
            }
        ),
        "{end:?}"
    );
    // Many chunks for a big file, reassembled exactly.
    std::fs::remove_dir_all(ws.join("flood")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(ws.join("big"), &big).unwrap();
    let (tar, end) = pack_over_serve(&cfg, 1 << 30, 1000);
    assert!(matches!(end, Reply::Packed { .. }), "{end:?}");
    let mut archive = tar::Archive::new(&tar[..]);
    let mut found = false;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new("workspace/big") {
            let mut got = Vec::new();
            e.read_to_end(&mut got).unwrap();
            assert!(got == big);
            found = true;
        }
    }
    assert!(found);
}

/// Many files are written by several threads; every byte lands, and an archive naming a path twice is refused.
#[test]
fn unpack_writes_many_files_and_refuses_a_path_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let mut b = tar::Builder::new(Vec::new());
    for d in 0..7 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("d{d}"), io::empty()).unwrap();
    }
    for i in 0..100 {
        let data = format!("file {i}\n").repeat(i);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("d{}/f{i}", i % 7), data.as_bytes())
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let (reply, _) = handle(&cfg, Op::Unpack, tar.clone());
    assert_eq!(reply, Reply::Unpacked { entries: 107 });
    for i in 0..100 {
        let got = std::fs::read_to_string(dir.path().join(format!("d{}/f{i}", i % 7))).unwrap();
        assert_eq!(got, format!("file {i}\n").repeat(i));
    }

    let mut b = tar::Builder::new(Vec::new());
    for target in ["/etc", ""] {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        if target.is_empty() {
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "twice", io::empty()).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, "twice", target).unwrap();
        }
    }
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
}
