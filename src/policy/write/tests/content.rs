//! The write rules' content, size and configuration cases (binaries, line and file caps, lockfiles, `.git`, globs,
//! defaults, build products), on the fixtures of [`super`].

use super::*;

#[test]
fn binary_files_need_allow_binary() {
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\n\n\n";
    let s = diff(&[README], &[README, ("logo.png", REG, png)]);
    assert!(s.files[0].binary);
    assert_eq!((s.files[0].added, s.files[0].removed), (0, 0));
    let v = check(&s, &WriteRules::default());
    assert_eq!(rules_of(&v), vec![(rule::BINARY, Some("logo.png"))]);
    assert_eq!(
        v[0].detail,
        "`logo.png` is a binary file, and the policy allows no binary files"
    );
    let allow = WriteRules {
        allow_binary: true,
        ..WriteRules::default()
    };
    assert!(check(&s, &allow).is_empty());
    // Replacing a binary file by text is still a binary change; a text file is not.
    let s = diff(
        &[README, ("a.bin", REG, b"\0\0")],
        &[README, ("a.bin", REG, b"text\n")],
    );
    assert!(s.files[0].binary);
    let s = diff(&[README], &[README, ("a.txt", REG, b"plain\ntext\n")]);
    assert!(!s.files[0].binary);
}

#[test]
fn gitattributes_cannot_hide_lines_or_binaries() {
    // A work tree whose attributes claim everything is binary, and that .txt files are text.
    let (tmp, repo) = repo();
    let attrs: &[u8] = b"* binary\n*.dat diff\n";
    std::fs::write(tmp.path().join(".gitattributes"), attrs).unwrap();
    let base = commit(&repo, &[README, (".gitattributes", REG, attrs)]);
    let head = commit(
        &repo,
        &[
            ("README.md", REG, b"hello\nworld\n"),
            (".gitattributes", REG, attrs),
            ("x.dat", REG, b"\0\x01\x02"),
        ],
    );
    let s = summarize(&repo, base, head).unwrap();
    let readme = s.files.iter().find(|f| f.path == "README.md").unwrap();
    assert_eq!((readme.added, readme.removed, readme.binary), (1, 0, false));
    let dat = s.files.iter().find(|f| f.path == "x.dat").unwrap();
    assert!(dat.binary);
}

#[test]
fn max_lines_counts_added_plus_removed() {
    let base: Vec<String> = (0..10).map(|i| format!("line {i}\n")).collect();
    let head: Vec<String> = (0..10).map(|i| format!("LINE {i}\n")).collect();
    let s = diff(
        &[("a.txt", REG, base.concat().as_bytes())],
        &[("a.txt", REG, head.concat().as_bytes())],
    );
    assert_eq!(s.lines(), 20);
    let at = |n| WriteRules {
        max_lines: n,
        ..WriteRules::default()
    };
    assert!(check(&s, &at(Some(20))).is_empty());
    assert!(check(&s, &at(None)).is_empty());
    let v = check(&s, &at(Some(19)));
    assert_eq!(rules_of(&v), vec![(rule::MAX_LINES, None)]);
    assert_eq!(
        v[0].detail,
        "the change adds and removes 20 lines in total, and the policy allows at most 19"
    );
}

#[test]
fn max_files_counts_paths() {
    let names: Vec<String> = (0..5).map(|i| format!("f{i}.txt")).collect();
    let head: Vec<(&str, u32, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), REG, &b"x\n"[..]))
        .collect();
    let s = diff(&[README], &head); // 5 added + README deleted
    assert_eq!(s.files.len(), 6);
    let at = |n| WriteRules {
        max_files: n,
        ..WriteRules::default()
    };
    assert!(check(&s, &at(Some(6))).is_empty());
    assert!(check(&s, &at(None)).is_empty());
    let v = check(&s, &at(Some(5)));
    assert_eq!(rules_of(&v), vec![(rule::MAX_FILES, None)]);
    assert_eq!(
        v[0].detail,
        "the change touches 6 files, and the policy allows at most 5"
    );
}

#[test]
fn lockfiles_only_when_forbidden() {
    let s = diff(
        &[README, ("Cargo.lock", REG, b"a\n")],
        &[
            README,
            ("Cargo.lock", REG, b"b\n"),
            ("web/package-lock.json", REG, b"{}\n"),
            ("go.SUM", REG, b"x\n"),
        ],
    );
    assert!(check(&s, &WriteRules::default()).is_empty());
    let strict = WriteRules {
        forbid_lockfiles: true,
        ..WriteRules::default()
    };
    let v = check(&s, &strict);
    assert_eq!(
        rules_of(&v),
        vec![
            (rule::LOCKFILES, Some("Cargo.lock")),
            (rule::LOCKFILES, Some("go.SUM")),
            (rule::LOCKFILES, Some("web/package-lock.json")),
        ]
    );
    assert_eq!(
        v[0].detail,
        "`Cargo.lock` is a lockfile (`Cargo.lock`), and the policy forbids changing lockfiles"
    );
    assert_eq!(
        check_path(&strict, "yarn.lock").unwrap_err().rule,
        rule::LOCKFILES
    );
    assert_eq!(check_path(&WriteRules::default(), "yarn.lock"), Ok(()));
}

#[test]
fn no_dot_git_component_anywhere() {
    // libgit2 refuses to build such trees, so the summary is built by hand: the check must not rely on that.
    for path in [
        ".git/config",
        "vendor/.git/hooks/pre-commit",
        "x/.GIT/config",
        "x/.git./config",
        "x/.git /config",
        "x/GIT~1/config",
        "x/.g\u{200c}it/config",
    ] {
        let s = DiffSummary {
            files: vec![change(path, ChangeStatus::Added, FileMode::Regular)],
        };
        let v = check(&s, &WriteRules::default());
        assert_eq!(rules_of(&v), vec![(rule::GIT_DIR, Some(path))], "{path}");
        assert_eq!(
            check_path(&WriteRules::default(), path).unwrap_err().rule,
            rule::GIT_DIR
        );
    }
    for path in [
        ".github/x",
        "x/.gitignore",
        "x/.gitkeep",
        "git/x",
        "x.git/y",
    ] {
        assert_eq!(check_path(&WriteRules::default(), path), Ok(()), "{path}");
    }
}

#[test]
fn all_broken_rules_are_listed_once() {
    let mut s = diff(
        &[README],
        &[
            README,
            (".github/workflows/a.yml", REG, b"\0bin"),
            ("docs/l", LINK, b"/etc"),
        ],
    );
    s.files.push(s.files[0].clone());
    let rules = WriteRules {
        max_files: Some(1),
        ..WriteRules::default()
    };
    assert_eq!(
        rules_of(&check(&s, &rules)),
        vec![
            (rule::FORBIDDEN_PATHS, Some(".github/workflows/a.yml")),
            (rule::BINARY, Some(".github/workflows/a.yml")),
            (rule::SYMLINKS, Some("docs/l")),
            (rule::MAX_FILES, None),
        ]
    );
}

#[test]
fn bad_globs_are_config_errors_and_fail_closed() {
    for (glob, reason) in [
        ("src/[abc", "unclosed"),
        ("", "empty"),
        ("  ", "empty"),
        ("../x", "`..`"),
        ("/", "no path"),
        (".github\\workflows\\**", "`/`"),
    ] {
        let rules = WriteRules {
            forbidden_paths: vec!["ok/**".into(), glob.into()],
            ..WriteRules::default()
        };
        let err = rules.compile().unwrap_err();
        assert_eq!(err.glob, glob);
        assert!(err.reason.contains(reason), "{glob}: {}", err.reason);
        assert!(err.to_string().contains(&format!("`{glob}`")), "{err}");
        let v = check(&DiffSummary::default(), &rules);
        assert_eq!(rules_of(&v), vec![(rule::FORBIDDEN_PATHS, None)]);
        assert_eq!(
            check_path(&rules, "src/main.rs").unwrap_err().rule,
            rule::FORBIDDEN_PATHS
        );
    }
    assert!(WriteRules::default().compile().is_ok());
}

#[test]
fn deserializes_with_safe_defaults() {
    let rules: WriteRules = toml::from_str("").unwrap();
    assert_eq!(rules, WriteRules::default());
    assert_eq!(rules.max_files, Some(100));
    assert_eq!(rules.max_lines, Some(5000));
    assert!(!rules.allow_binary && !rules.forbid_lockfiles);
    assert_eq!(rules.forbidden_paths.len(), DEFAULT_FORBIDDEN.len());

    let rules: WriteRules = toml::from_str(
        "forbidden_paths = [\"infra/**\"]\nforbid_lockfiles = true\nmax_files = 3\nmax_lines = \"unlimited\"\n",
    )
    .unwrap();
    assert_eq!(rules.forbidden_paths, vec!["infra/**"]);
    assert_eq!((rules.max_files, rules.max_lines), (Some(3), None));
    // Round trip through JSON (what a canonical form would use).
    let json = serde_json::to_string(&rules).unwrap();
    assert!(json.contains("\"max_lines\":\"unlimited\""), "{json}");
    assert_eq!(serde_json::from_str::<WriteRules>(&json).unwrap(), rules);

    for bad in [
        "max_files = -1",
        "max_lines = \"lots\"",
        "max_file = 3",
        "allow_binary = \"yes\"",
    ] {
        assert!(toml::from_str::<WriteRules>(bad).is_err(), "{bad}");
    }
    let err = toml::from_str::<WriteRules>("\n\nmax_lines = \"lots\"").unwrap_err();
    assert!(err.to_string().contains("unlimited"), "{err}");
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn build_products_are_recognised_and_listed_by_their_outermost_directory() {
    let ex = WriteRules::default().exclusions().unwrap();
    let none = |_: &str| false;
    for (path, listed) in [
        ("__pycache__/calc.cpython-311.pyc", "__pycache__/"),
        (
            "pkg/sub/__pycache__/m.cpython-312.pyc",
            "pkg/sub/__pycache__/",
        ),
        ("legacy/m.pyc", "legacy/m.pyc"),
        (".pytest_cache/v/cache/nodeids", ".pytest_cache/"),
        ("web/node_modules/left-pad/index.js", "web/node_modules/"),
        ("target/debug/app", "target/"),
        (".coverage", ".coverage"),
        ("coverage/lcov.info", "coverage/"),
        ("src/Main.class", "src/Main.class"),
        ("build/lib/x.py", "build/"),
        ("DIST/x.whl", "DIST/"),
        ("./.MYPY_CACHE/x", ".MYPY_CACHE/"),
    ] {
        assert_eq!(ex.matches(path, &none).as_deref(), Some(listed), "{path}");
    }
    for path in [
        "src/app.py",
        "build",
        "src/build.rs",
        "docs/dist.md",
        "src/targets.rs",
    ] {
        assert_eq!(ex.matches(path, &none), None, "{path}");
    }
    // A `dist/` the base tracks is part of the repository, not build output; `node_modules/` always is.
    let tracks_dist = |d: &str| d == "dist";
    assert_eq!(ex.matches("dist/bundle.js", &tracks_dist), None);
    assert_eq!(
        ex.matches("web/dist/bundle.js", &tracks_dist).as_deref(),
        Some("web/dist/")
    );
    // The policy's globs add to the defaults.
    let more = WriteRules {
        exclude: vec!["*.log".into(), "/out/".into()],
        ..WriteRules::default()
    }
    .exclusions()
    .unwrap();
    assert_eq!(
        more.matches("logs/test.log", &none).as_deref(),
        Some("logs/test.log")
    );
    assert_eq!(more.matches("out/a/b", &none).as_deref(), Some("out/"));
    assert_eq!(more.matches("src/out/a", &none), None);
    assert!(more.matches("__pycache__/x.pyc", &none).is_some());
    assert!(WriteRules {
        exclude: vec!["a/../b".into()],
        ..WriteRules::default()
    }
    .exclusions()
    .is_err());
}

#[test]
fn describe_names_what_is_allowed() {
    let d = WriteRules::default().describe();
    assert!(
        d.contains("at most 100 changed files and 5000 changed lines"),
        "{d}"
    );
    assert!(d.contains("no binary files"), "{d}");
    assert!(d.contains("`.github/workflows/**`"), "{d}");
}
