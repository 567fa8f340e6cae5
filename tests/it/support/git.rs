//! Reading the stand-in forge's bare repositories, for tests that assert what was pushed.

use std::path::Path;

/// `git --git-dir <bare> <args>`: its stdout, failing the test when git fails.
pub fn git(bare: &Path, args: &[&str]) -> String {
    run("--git-dir", bare, args)
}

/// `git -C <dir> <args>` (a work tree, or a bare repository): its stdout, failing the test when git fails.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    run("-C", dir, args)
}

fn run(flag: &str, path: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg(flag)
        .arg(path)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every branch of the bare repository, short names.
pub fn branches(bare: &Path) -> Vec<String> {
    git(
        bare,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The branches drafter pushed (`drafter/...`), short names.
pub fn drafter_branches(bare: &Path) -> Vec<String> {
    branches(bare)
        .into_iter()
        .filter(|b| b.starts_with("drafter/"))
        .collect()
}

/// Writes into `repo` a tree holding exactly `files` (path, content; regular files, parent directories implied).
pub fn tree_of(repo: &git2::Repository, files: &[(&str, &str)]) -> git2::Oid {
    let mut index = git2::Index::new().expect("index");
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).expect("blob");
        index
            .add(&git2::IndexEntry {
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
            })
            .expect("index add");
    }
    index.write_tree_to(repo).expect("tree")
}
