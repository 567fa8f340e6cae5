use super::remote::*;
use super::*;
use std::fs;

fn identity() -> CommitIdentity {
    CommitIdentity {
        name: "drafter".into(),
        email: "drafter@example.com".into(),
    }
}

fn token() -> Secret {
    Secret::new("local-token-unused")
}

/// A bare repository with one commit on `main` holding `files`.
fn bare_with(dir: &Path, files: &[(&str, &str)]) -> Repository {
    let bare = Repository::init_bare(dir).unwrap();
    let mut index = git2::Index::new().unwrap();
    for (path, content) in files {
        let blob = bare.blob(content.as_bytes()).unwrap();
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).unwrap();
    }
    let tree_id = index.write_tree_to(&bare).unwrap();
    {
        let tree = bare.find_tree(tree_id).unwrap();
        let sig = Signature::now("seed", "seed@example.com").unwrap();
        bare.commit(Some("refs/heads/main"), &sig, &sig, "seed", &tree, &[])
            .unwrap();
    }
    bare.set_head("refs/heads/main").unwrap();
    bare
}

fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository, Repository, String) {
    let tmp = tempfile::tempdir().unwrap();
    let bare = bare_with(&tmp.path().join("origin.git"), files);
    let url = format!("file://{}", tmp.path().join("origin.git").display());
    let work = clone(&url, &tmp.path().join("work"), "main", &token()).unwrap();
    (tmp, bare, work, url)
}

#[test]
fn branch_names() {
    assert_eq!(
        branch_name("DEMO-1", "Fix the greeting"),
        "drafter/DEMO-1-fix-the-greeting"
    );
    assert_eq!(
        branch_name("DEMO-2", "  Don't crash on: \"weird\" input!!  "),
        "drafter/DEMO-2-don-t-crash-on-weird-input"
    );
    assert_eq!(
        branch_name("DEMO-3", "Überprüfe die Grüße 🎉"),
        "drafter/DEMO-3-berpr-fe-die-gr-e"
    );
    assert_eq!(branch_name("DEMO-4", ""), "drafter/DEMO-4-change");
    assert_eq!(
        branch_name("DEMO-5", "🎉🎉 ... ///"),
        "drafter/DEMO-5-change"
    );
    assert_eq!(branch_name("", "x"), "drafter/ticket-x");
    assert_eq!(
        branch_name("../evil key", "a.lock"),
        "drafter/evil-key-a-lock"
    );
    let long = branch_name("DEMO-6", &"word ".repeat(50));
    let slug = long.strip_prefix("drafter/DEMO-6-").unwrap();
    assert!(slug.len() <= MAX_SLUG, "{long}");
    assert!(!slug.ends_with('-'), "{long}");
    for name in [
        long,
        branch_name("X", "a..b"),
        branch_name("X", "@{upstream}"),
        branch_name("X", "-leading"),
        branch_name("X~^:?*[\\", "end."),
    ] {
        assert!(
            git2::Reference::is_valid_name(&format!("refs/heads/{name}")),
            "{name}"
        );
    }
}

#[test]
fn trailers_form_a_block() {
    let msg = message_with_trailers(
        "Fix the greeting\nsecond line",
        "Body text.\n\nMore.\n",
        &[
            ("Drafter-Job", "j-1"),
            ("Co-authored-by", "Ann <a@x.org>"),
            ("bad key:", "v\nw"),
            ("Empty", ""),
        ],
    );
    assert_eq!(
        msg,
        "Fix the greeting second line\n\nBody text.\n\nMore.\n\nDrafter-Job: j-1\nCo-authored-by: Ann <a@x.org>\nbad-key: v w\n"
    );
    assert_eq!(message_with_trailers("S", "", &[]), "S\n");
    assert_eq!(
        message_with_trailers("S", " ", &[("K", "v")]),
        "S\n\nK: v\n"
    );
}

#[test]
fn refuses_urls_with_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    for url in [
        "https://x-access-token:ghp_abc@github.com/o/r.git",
        "https://user@github.com/o/r.git",
    ] {
        let err = clone(url, &tmp.path().join("w"), "main", &token())
            .err()
            .unwrap();
        assert!(matches!(err, RepoError::InvalidUrl { .. }), "{err}");
        assert!(!err.to_string().contains("ghp_abc"), "{err}");
        assert!(!err.is_retryable());
    }
    assert!(!tmp.path().join("w").exists());
}

#[test]
fn clone_checks_out_base_and_missing_base_is_reported() {
    let (tmp, _bare, work, url) = setup(&[("README.md", "hello\n")]);
    assert_eq!(
        fs::read_to_string(work.workdir().unwrap().join("README.md")).unwrap(),
        "hello\n"
    );
    assert_eq!(work.head().unwrap().shorthand().ok(), Some("main"));
    let err = clone(&url, &tmp.path().join("w2"), "nope", &token())
        .err()
        .unwrap();
    assert!(
        matches!(&err, RepoError::BranchNotFound { branch, remote: true } if branch == "nope"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn commit_all_stages_new_modified_deleted_but_not_ignored() {
    let (_tmp, _bare, work, _url) = setup(&[
        ("README.md", "hello\n"),
        ("old.txt", "bye\n"),
        (".gitignore", "*.log\ntarget/\n"),
        ("src/lib.rs", "fn a() {}\n"),
    ]);
    let wd = work.workdir().unwrap().to_path_buf();
    create_branch(&work, "drafter/T-1-x").unwrap();
    assert_eq!(work.head().unwrap().shorthand().ok(), Some("drafter/T-1-x"));

    fs::write(wd.join("README.md"), "hello, world\n").unwrap();
    fs::remove_file(wd.join("old.txt")).unwrap();
    fs::create_dir_all(wd.join("src/deep")).unwrap();
    fs::write(wd.join("src/deep/new.rs"), "fn b() {}\n").unwrap();
    fs::write(wd.join("debug.log"), "noise\n").unwrap();
    fs::create_dir_all(wd.join("target")).unwrap();
    fs::write(wd.join("target/out"), "bin\n").unwrap();

    let oid = commit_all(&work, &identity(), "Change things\n")
        .unwrap()
        .unwrap();
    let commit = work.find_commit(oid).unwrap();
    assert_eq!(commit.author().name().ok(), Some("drafter"));
    assert_eq!(commit.author().email().ok(), Some("drafter@example.com"));
    assert_eq!(commit.message().ok(), Some("Change things\n"));
    let tree = commit.tree().unwrap();
    let blob = |p: &str| {
        tree.get_path(Path::new(p))
            .ok()
            .map(|e| work.find_blob(e.id()).unwrap().content().to_vec())
    };
    assert_eq!(blob("README.md").unwrap(), b"hello, world\n");
    assert_eq!(blob("src/deep/new.rs").unwrap(), b"fn b() {}\n");
    assert!(blob("old.txt").is_none(), "deletion staged");
    assert!(blob("debug.log").is_none(), "ignored file not staged");
    assert!(blob("target/out").is_none(), "ignored dir not staged");
    assert_eq!(work.head().unwrap().target(), Some(oid));

    assert_eq!(
        changed_files(&work, "main").unwrap(),
        vec!["README.md", "old.txt", "src/deep/new.rs"]
    );

    // Nothing changed since: no commit.
    assert_eq!(commit_all(&work, &identity(), "again").unwrap(), None);
    assert_eq!(work.head().unwrap().target(), Some(oid));
}

#[test]
fn untracked_files_can_be_left_out_and_a_dry_staging_changes_no_index() {
    let (_tmp, _bare, work, _url) = setup(&[("app.py", "x = 1\n"), ("dist/keep.js", "1\n")]);
    let wd = work.workdir().unwrap().to_path_buf();
    create_branch(&work, "drafter/T-1-x").unwrap();
    let head_tree = work.head().unwrap().peel_to_tree().unwrap().id();
    fs::create_dir_all(wd.join("__pycache__")).unwrap();
    fs::write(wd.join("__pycache__/app.cpython-311.pyc"), b"\0\x01").unwrap();
    fs::write(wd.join("dist/new.js"), "2\n").unwrap();
    let mut asked = Vec::new();
    let mut leave = |p: &str, t: &Tracked| {
        asked.push((p.to_string(), t.has_dir("dist"), t.has_dir("__pycache__")));
        p.starts_with("__pycache__/")
    };
    // Only build products: the dry staging's tree is HEAD's plus dist/new.js, and the index file is untouched.
    let staged = stage_all(&work, &mut leave, false).unwrap();
    assert_eq!(staged.left_out, ["__pycache__/app.cpython-311.pyc"]);
    assert_ne!(staged.tree, head_tree);
    assert_eq!(
        asked,
        [
            ("__pycache__/app.cpython-311.pyc".to_string(), true, false),
            ("dist/new.js".to_string(), true, false)
        ]
    );
    assert!(work
        .index()
        .unwrap()
        .get_path(Path::new("dist/new.js"), 0)
        .is_none());
    fs::remove_file(wd.join("dist/new.js")).unwrap();
    let staged = stage_all(&work, &mut |p, _| p.starts_with("__pycache__/"), false).unwrap();
    assert_eq!(staged.tree, head_tree, "only build products: HEAD's tree");
    let (commit, left) = commit_all_except(&work, &identity(), "m", &mut |p, _| {
        p.starts_with("__pycache__/")
    })
    .unwrap();
    assert_eq!(commit, None);
    assert_eq!(left, ["__pycache__/app.cpython-311.pyc"]);
    // A modified tracked file is never asked about.
    fs::write(wd.join("app.py"), "x = 2\n").unwrap();
    let (commit, _) = commit_all_except(&work, &identity(), "m", &mut |p, _| {
        assert_ne!(p, "app.py", "a tracked file was asked about");
        true
    })
    .unwrap();
    let tree = work.find_commit(commit.unwrap()).unwrap().tree().unwrap();
    assert!(tree.get_path(Path::new("__pycache__")).is_err());
    assert!(tree.get_path(Path::new("app.py")).is_ok());
}

#[test]
fn empty_diff_is_none() {
    let (_tmp, _bare, work, _url) = setup(&[("a.txt", "a\n")]);
    let before = work.head().unwrap().target();
    // Only an ignored-by-default thing: nothing.
    assert_eq!(commit_all(&work, &identity(), "nothing").unwrap(), None);
    assert_eq!(work.head().unwrap().target(), before);
    assert!(changed_files(&work, "main").unwrap().is_empty());
}

#[test]
fn push_creates_ref_with_expected_tree_and_writes_no_config() {
    let (_tmp, bare, work, url) = setup(&[("a.txt", "a\n")]);
    let config_before = fs::read_to_string(work.path().join("config")).unwrap();
    create_branch(&work, "drafter/T-2-y").unwrap();
    fs::write(work.workdir().unwrap().join("b.txt"), "b\n").unwrap();
    let oid = commit_all(&work, &identity(), "add b").unwrap().unwrap();
    push(&work, &url, "drafter/T-2-y", &token()).unwrap();

    let pushed = bare.find_reference("refs/heads/drafter/T-2-y").unwrap();
    assert_eq!(pushed.target(), Some(oid));
    let tree = pushed.peel_to_tree().unwrap();
    assert!(tree.get_path(Path::new("b.txt")).is_ok());
    assert_eq!(
        tree.id(),
        work.find_commit(oid).unwrap().tree_id(),
        "same tree on the remote"
    );
    // main untouched
    assert_ne!(bare.refname_to_id("refs/heads/main").unwrap(), oid);
    assert_eq!(
        fs::read_to_string(work.path().join("config")).unwrap(),
        config_before,
        "push wrote nothing to config"
    );
}

#[test]
fn push_of_missing_branch_is_refused_locally() {
    let (_tmp, _bare, work, url) = setup(&[("a.txt", "a\n")]);
    let err = push(&work, &url, "drafter/none", &token()).err().unwrap();
    assert!(
        matches!(err, RepoError::BranchNotFound { remote: false, .. }),
        "{err:?}"
    );
    let err = push(&work, &url, "bad..name", &token()).err().unwrap();
    assert!(
        matches!(err, RepoError::InvalidBranchName { .. }),
        "{err:?}"
    );
}

#[test]
fn token_only_goes_to_the_configured_host() {
    assert_eq!(
        origin_of("https://GitHub.com/o/r.git").as_deref(),
        Some("github.com:443")
    );
    assert_eq!(
        origin_of("http://127.0.0.1:8080/o/r.git").as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(origin_of("/tmp/x"), None);
    let token = token();
    let up = CredentialType::USER_PASS_PLAINTEXT;
    let expected = origin_of("https://github.com/o/r.git");
    let trace = AuthTrace::default();
    // After a redirect to another host: no token.
    assert!(credential(
        expected.as_deref(),
        "https://evil.example/o/r.git",
        up,
        &token,
        &trace
    )
    .is_err());
    let trace = AuthTrace::default();
    assert!(credential(
        expected.as_deref(),
        "https://github.com/o/r.git",
        up,
        &token,
        &trace
    )
    .is_ok());
    // Asked again: the first was refused; stop instead of looping.
    assert!(credential(
        expected.as_deref(),
        "https://github.com/o/r.git",
        up,
        &token,
        &trace
    )
    .is_err());
    let trace = AuthTrace::default();
    assert!(credential(
        expected.as_deref(),
        "https://github.com/o/r.git",
        CredentialType::SSH_KEY,
        &token,
        &trace
    )
    .is_err());
}

#[test]
fn http_status_is_parsed() {
    assert_eq!(http_status("unexpected http status code: 502"), Some(502));
    assert_eq!(http_status("unexpected HTTP status code: 404"), Some(404));
    assert_eq!(http_status("something else"), None);
    let err = RepoError::Network {
        url: "u".into(),
        message: "m".into(),
    };
    assert!(err.is_retryable());
}
