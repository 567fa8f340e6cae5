//! The write rules' cases, with the fixtures that build real git trees (modes, links, submodules, binary blobs)
//! for them: here the path rules; `tests/content.rs` the content, size and configuration cases.

use super::*;
use crate::repo::diff::{summarize, FileChange};
use git2::{Index, IndexEntry, IndexTime, Signature};
use git2::{Oid, Repository};

const REG: u32 = 0o100644;
const EXE: u32 = 0o100755;
const LINK: u32 = 0o120000;
const GITLINK: u32 = 0o160000;

/// A fresh repository in a temporary directory.
fn repo() -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repository::init(tmp.path()).unwrap();
    (tmp, repo)
}

/// A commit (no parents) whose tree holds exactly `entries` (path, mode, content). For a gitlink the content
/// is the hex id of the submodule commit.
fn commit(repo: &Repository, entries: &[(&str, u32, &[u8])]) -> Oid {
    let mut index = Index::new().unwrap();
    for (path, mode, content) in entries {
        let id = if *mode == GITLINK {
            Oid::from_str(std::str::from_utf8(content).unwrap()).unwrap()
        } else {
            repo.blob(content).unwrap()
        };
        index
            .add(&IndexEntry {
                ctime: IndexTime::new(0, 0),
                mtime: IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: *mode,
                uid: 0,
                gid: 0,
                file_size: 0,
                id,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            })
            .unwrap();
    }
    let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
    let sig = Signature::now("t", "t@example.com").unwrap();
    repo.commit(None, &sig, &sig, "c", &tree, &[]).unwrap()
}

/// The summary of going from `base` to `head` in a fresh repository.
fn diff(base: &[(&str, u32, &[u8])], head: &[(&str, u32, &[u8])]) -> DiffSummary {
    let (_tmp, repo) = repo();
    let b = commit(&repo, base);
    let h = commit(&repo, head);
    summarize(&repo, b, h).unwrap()
}

fn rules_of(violations: &[Violation]) -> Vec<(&str, Option<&str>)> {
    violations
        .iter()
        .map(|v| (v.rule.as_str(), v.path.as_deref()))
        .collect()
}

fn change(path: &str, status: ChangeStatus, mode: FileMode) -> FileChange {
    FileChange {
        path: path.into(),
        old_path: None,
        status,
        added: 1,
        removed: 0,
        binary: false,
        mode,
        old_mode: None,
    }
}

const README: (&str, u32, &[u8]) = ("README.md", REG, b"hello\n");
mod content;

#[test]
fn an_ordinary_change_is_allowed_and_summarized() {
    let s = diff(
        &[
            README,
            ("src/lib.rs", REG, b"a\nb\nc\n"),
            ("old.txt", REG, b"x\n"),
        ],
        &[
            README,
            ("src/lib.rs", REG, b"a\nB\nc\nd\n"),
            ("run.sh", EXE, b"#!/bin/sh\necho hi\n"),
        ],
    );
    assert_eq!(
        s.files,
        vec![
            FileChange {
                path: "old.txt".into(),
                old_path: None,
                status: ChangeStatus::Deleted,
                added: 0,
                removed: 1,
                binary: false,
                mode: FileMode::Regular,
                old_mode: Some(FileMode::Regular),
            },
            FileChange {
                path: "run.sh".into(),
                old_path: None,
                status: ChangeStatus::Added,
                added: 2,
                removed: 0,
                binary: false,
                mode: FileMode::Executable,
                old_mode: None,
            },
            FileChange {
                path: "src/lib.rs".into(),
                old_path: None,
                status: ChangeStatus::Modified,
                added: 2,
                removed: 1,
                binary: false,
                mode: FileMode::Regular,
                old_mode: Some(FileMode::Regular),
            },
        ]
    );
    assert_eq!(s.lines(), 6);
    assert!(check(&s, &WriteRules::default()).is_empty());
}

#[test]
fn editing_a_workflow_is_forbidden_by_default() {
    let wf = ".github/workflows/ci.yml";
    let s = diff(
        &[README, (wf, REG, b"on: push\n")],
        &[README, (wf, REG, b"on: [push, pull_request]\n")],
    );
    let v = check(&s, &WriteRules::default());
    assert_eq!(rules_of(&v), vec![(rule::FORBIDDEN_PATHS, Some(wf))]);
    assert_eq!(
        v[0].detail,
        "`.github/workflows/ci.yml` matches the forbidden path `.github/workflows/**`"
    );
    // Other files under .github are fine.
    let s = diff(
        &[README],
        &[README, (".github/ISSUE_TEMPLATE/bug.md", REG, b"x\n")],
    );
    assert!(check(&s, &WriteRules::default()).is_empty());
}

#[test]
fn every_default_glob_bites() {
    let rules = WriteRules::default();
    for path in [
        ".github/workflows/deep/er/x.yml",
        ".github/actions/setup/action.yml",
        ".gitlab-ci.yml",
        ".gitlab/ci/build.yml",
        ".circleci/config.yml",
        "Jenkinsfile",
        "azure-pipelines.yml",
        ".buildkite/pipeline.yml",
        ".drone.yml",
        "CODEOWNERS",
        ".github/CODEOWNERS",
        "docs/CODEOWNERS",
        ".gitmodules",
        // Unanchored (no `/`) globs match the name at any depth, as in .gitignore.
        "services/api/Jenkinsfile",
    ] {
        let err = check_path(&rules, path).unwrap_err();
        assert_eq!(err.rule, rule::FORBIDDEN_PATHS, "{path}");
        assert_eq!(err.path.as_deref(), Some(path));
    }
    for path in [
        "src/main.rs",
        "docs/CODEOWNERS.md",
        "github/workflows/x.yml",
        "ci/.github-workflows",
        "Jenkinsfile.md",
    ] {
        assert_eq!(check_path(&rules, path), Ok(()), "{path}");
    }
}

#[test]
fn path_tricks_are_normalised() {
    let rules = WriteRules::default();
    for path in [
        "./.github/workflows/x.yml",
        ".github//workflows/x.yml",
        ".GitHub/Workflows/x.yml",
        ".github\\workflows\\x.yml",
        "src/../.github/workflows/x.yml",
        "/.github/workflows/x.yml",
        ".github/./workflows/x.yml",
        "codeowners",
        ".GITMODULES",
    ] {
        let err = check_path(&rules, path).unwrap_err();
        assert_eq!(err.rule, rule::FORBIDDEN_PATHS, "{path}");
    }
    let err = check_path(&rules, "../outside.txt").unwrap_err();
    assert_eq!(err.rule, rule::PATH);
    let err = check_path(&rules, "src/../../x").unwrap_err();
    assert_eq!(err.rule, rule::PATH);
}

#[test]
fn case_is_ignored_in_the_diff_too() {
    let s = diff(
        &[README],
        &[README, (".GITHUB/WORKFLOWS/CI.YML", REG, b"x\n")],
    );
    assert_eq!(
        rules_of(&check(&s, &WriteRules::default())),
        vec![(rule::FORBIDDEN_PATHS, Some(".GITHUB/WORKFLOWS/CI.YML"))]
    );
}

#[test]
fn a_pattern_naming_a_directory_covers_its_contents() {
    let rules = WriteRules {
        forbidden_paths: vec!["secrets".into(), "/config/prod/".into(), "*.pem".into()],
        ..WriteRules::default()
    };
    for path in [
        "secrets/a.txt",
        "app/secrets/a/b.txt",
        "config/prod/db.toml",
        "keys/server.PEM",
    ] {
        assert!(check_path(&rules, path).is_err(), "{path}");
    }
    for path in [
        "app/config/prod/db.toml",
        "secretsfile",
        "config/production.toml",
    ] {
        assert_eq!(check_path(&rules, path), Ok(()), "{path}");
    }
}

#[test]
fn a_policy_list_replaces_the_defaults() {
    let rules = WriteRules {
        forbidden_paths: vec!["secrets/**".into()],
        ..WriteRules::default()
    };
    let s = diff(
        &[README],
        &[
            README,
            (".github/workflows/ci.yml", REG, b"x\n"),
            ("secrets/key.txt", REG, b"k\n"),
        ],
    );
    assert_eq!(
        rules_of(&check(&s, &rules)),
        vec![(rule::FORBIDDEN_PATHS, Some("secrets/key.txt"))]
    );
    let none = WriteRules {
        forbidden_paths: vec![],
        ..WriteRules::default()
    };
    assert!(check(&s, &none).is_empty());
}

#[test]
fn renaming_a_forbidden_file_away_or_into_place_is_forbidden() {
    let wf = ".github/workflows/ci.yml";
    let s = diff(
        &[README, (wf, REG, b"on: push\n")],
        &[README, ("ci/ci.yml", REG, b"on: push\n")],
    );
    // Rename detection is off: a deletion and an addition.
    assert_eq!(s.files.len(), 2);
    assert_eq!(
        rules_of(&check(&s, &WriteRules::default())),
        vec![(rule::FORBIDDEN_PATHS, Some(wf))]
    );
    let s = diff(
        &[README, ("ci/ci.yml", REG, b"on: push\n")],
        &[README, (wf, REG, b"on: push\n")],
    );
    assert_eq!(
        rules_of(&check(&s, &WriteRules::default())),
        vec![(rule::FORBIDDEN_PATHS, Some(wf))]
    );
    // A summary built elsewhere with a rename: both paths are checked.
    let mut renamed = change("ci/ci.yml", ChangeStatus::Renamed, FileMode::Regular);
    renamed.old_path = Some(wf.into());
    let v = check(
        &DiffSummary {
            files: vec![renamed],
        },
        &WriteRules::default(),
    );
    assert_eq!(rules_of(&v), vec![(rule::FORBIDDEN_PATHS, Some(wf))]);
}

#[test]
fn deleting_codeowners_is_forbidden() {
    let s = diff(&[README, ("CODEOWNERS", REG, b"* @team\n")], &[README]);
    let v = check(&s, &WriteRules::default());
    assert_eq!(
        rules_of(&v),
        vec![(rule::FORBIDDEN_PATHS, Some("CODEOWNERS"))]
    );
    assert_eq!(s.files[0].status, ChangeStatus::Deleted);
}

#[test]
fn symlinks_must_stay_inside_the_repository() {
    let link =
        |target: &'static str| diff(&[README], &[README, ("docs/link", LINK, target.as_bytes())]);
    let s = link("../README.md");
    assert_eq!(
        s.files[0].mode,
        FileMode::Symlink {
            target: "../README.md".into()
        }
    );
    assert!(check(&s, &WriteRules::default()).is_empty());
    for inside in ["guide.md", "./sub/./x", "", "../docs/x", "../src/main.rs"] {
        assert!(
            check(&link(inside), &WriteRules::default()).is_empty(),
            "{inside}"
        );
    }
    for outside in [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\etc\\passwd",
        "C:/Windows/System32",
        "../..",
        "x/../..",
        "../.git/config",
        "../.GIT/hooks/pre-commit",
    ] {
        let v = check(&link(outside), &WriteRules::default());
        assert_eq!(
            rules_of(&v),
            vec![(rule::SYMLINKS, Some("docs/link"))],
            "{outside}"
        );
    }
    let v = check(&link("../../etc/passwd"), &WriteRules::default());
    assert_eq!(
        v[0].detail,
        "`docs/link` is a symlink to `../../etc/passwd`, which climbs above the repository root"
    );
    // Turning a file into a link out is caught too; deleting such a link is fine.
    let s = diff(
        &[README, ("a", REG, b"x\n")],
        &[README, ("a", LINK, b"/etc/passwd")],
    );
    assert_eq!(s.files[0].status, ChangeStatus::TypeChanged);
    assert_eq!(
        rules_of(&check(&s, &WriteRules::default())),
        vec![(rule::SYMLINKS, Some("a"))]
    );
    let s = diff(&[README, ("a", LINK, b"/etc/passwd")], &[README]);
    assert!(check(&s, &WriteRules::default()).is_empty());
}

#[test]
fn a_symlink_cannot_stand_in_for_a_forbidden_directory() {
    for path in [".github", ".github/workflows", ".GitHub"] {
        let s = diff(
            &[README],
            &[
                README,
                (path, LINK, b"elsewhere"),
                ("elsewhere/x.yml", REG, b"x\n"),
            ],
        );
        let v = check(&s, &WriteRules::default());
        assert_eq!(rules_of(&v), vec![(rule::SYMLINKS, Some(path))], "{path}");
    }
    let s = diff(&[README], &[README, (".github/docs", LINK, b"../docs")]);
    assert!(check(&s, &WriteRules::default()).is_empty());
}

#[test]
fn submodules_may_not_be_added_changed_or_removed() {
    let one: &[u8] = b"0123456789012345678901234567890123456789";
    let two: &[u8] = b"89abcdef89abcdef89abcdef89abcdef89abcdef";
    let added = diff(&[README], &[README, ("vendor/lib", GITLINK, one)]);
    assert_eq!(added.files[0].mode, FileMode::Submodule);
    let changed = diff(
        &[README, ("vendor/lib", GITLINK, one)],
        &[README, ("vendor/lib", GITLINK, two)],
    );
    let removed = diff(&[README, ("vendor/lib", GITLINK, one)], &[README]);
    let replaced = diff(
        &[README, ("vendor/lib", GITLINK, one)],
        &[README, ("vendor/lib", REG, b"x\n")],
    );
    for (s, what) in [
        (added, "adds"),
        (changed, "changes"),
        (removed, "removes"),
        (replaced, "removes"),
    ] {
        let v = check(&s, &WriteRules::default());
        assert_eq!(
            rules_of(&v),
            vec![(rule::SUBMODULES, Some("vendor/lib"))],
            "{what}"
        );
        assert!(
            v[0].detail
                .starts_with(&format!("the change {what} the submodule `vendor/lib`")),
            "{}",
            v[0].detail
        );
    }
    // An untouched submodule is not a change.
    let s = diff(
        &[README, ("vendor/lib", GITLINK, one)],
        &[("README.md", REG, b"bye\n"), ("vendor/lib", GITLINK, one)],
    );
    assert!(check(&s, &WriteRules::default()).is_empty());
}
