//! What a change is, as git sees it: the per-file summary of a base..head diff that the write rules judge
//! ([`crate::policy::write`]), the changed paths, and the diff digest the proof records.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use git2::{Delta, DiffOptions, Oid, Patch, Repository, Tree};
use serde::{Deserialize, Serialize};

use super::*;

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChangeStatus {
    /// New path.
    Added,
    /// Same kind of entry, new content or mode.
    Modified,
    /// Path removed.
    Deleted,
    /// The kind of entry changed (file to symlink, submodule to file, ...).
    TypeChanged,
    /// Moved (only from summaries built elsewhere: [`summarize`] reports a rename as a deletion and an addition).
    Renamed,
}

/// What a path is in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileMode {
    /// A regular file (mode 100644).
    Regular,
    /// An executable file (mode 100755).
    Executable,
    /// A symbolic link (mode 120000) and what it points to.
    Symlink {
        /// The link's target as stored (lossy UTF-8).
        target: String,
    },
    /// A submodule: a gitlink (mode 160000) to a commit of another repository.
    Submodule,
    /// Any other raw mode git reported.
    Other(u32),
}

impl FileMode {
    fn is_blob_file(&self) -> bool {
        matches!(self, FileMode::Regular | FileMode::Executable)
    }
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// The path after the change (for a deletion, the deleted path).
    pub path: String,
    /// The path before the change, when it differs from `path`.
    pub old_path: Option<String>,
    /// How it changed.
    pub status: ChangeStatus,
    /// Lines added (0 for binary files).
    pub added: usize,
    /// Lines removed (0 for binary files).
    pub removed: usize,
    /// Whether the old or the new content is binary.
    pub binary: bool,
    /// The entry after the change (for a deletion, the entry that was deleted).
    pub mode: FileMode,
    /// The entry before the change; `None` for an addition.
    pub old_mode: Option<FileMode>,
}

/// Everything a change does, one entry per path, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// The changed paths.
    pub files: Vec<FileChange>,
}

impl DiffSummary {
    /// Lines added plus lines removed, over all files.
    pub fn lines(&self) -> usize {
        self.files.iter().fold(0usize, |n, f| {
            n.saturating_add(f.added).saturating_add(f.removed)
        })
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// The unified diff of `head` against `base` as text (what a reviewer sees), cut at `cap` bytes on a line
/// boundary; `true` when it was cut. Binary files show as one line naming them.
pub fn patch_text(
    repo: &Repository,
    base: Oid,
    head: Oid,
    cap: usize,
) -> Result<(String, bool), git2::Error> {
    let base_tree = repo.find_commit(base)?.tree()?;
    let head_tree = repo.find_commit(head)?.tree()?;
    let mut opts = DiffOptions::new();
    opts.context_lines(3).ignore_submodules(true);
    let diff = repo.diff_tree_to_tree(Some(&base_tree), Some(&head_tree), Some(&mut opts))?;
    let mut out = String::new();
    let mut cut = false;
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        let prefix = match line.origin() {
            c @ ('+' | '-' | ' ') => c.to_string(),
            _ => String::new(),
        };
        let text = format!("{prefix}{}", String::from_utf8_lossy(line.content()));
        if out.len() + text.len() > cap {
            cut = true;
            return false;
        }
        out.push_str(&text);
        true
    })
    .or_else(|e| if cut { Ok(()) } else { Err(e) })?;
    Ok((out, cut))
}

/// What `head` changes relative to `base` (two commits, or trees, in `repo`): a tree-to-tree diff with rename
/// detection off, so a rename is a deletion plus an addition and both paths are checked.
pub fn summarize(repo: &Repository, base: Oid, head: Oid) -> Result<DiffSummary, git2::Error> {
    let base_tree = repo.find_object(base, None)?.peel_to_tree()?;
    let head_tree = repo.find_object(head, None)?.peel_to_tree()?;
    let mut opts = DiffOptions::new();
    // force_text: line counts must not depend on .gitattributes the change itself can edit.
    opts.force_text(true)
        .context_lines(0)
        .include_typechange(true)
        .ignore_submodules(false);
    let diff = repo.diff_tree_to_tree(Some(&base_tree), Some(&head_tree), Some(&mut opts))?;
    let mut files = Vec::new();
    for (idx, delta) in diff.deltas().enumerate() {
        let status = match delta.status() {
            Delta::Added => ChangeStatus::Added,
            Delta::Deleted => ChangeStatus::Deleted,
            Delta::Typechange => ChangeStatus::TypeChanged,
            Delta::Renamed => ChangeStatus::Renamed,
            // Tree-to-tree diffs without copy detection produce nothing else.
            _ => ChangeStatus::Modified,
        };
        let old_bytes = delta.old_file().path_bytes();
        let new_bytes = delta.new_file().path_bytes();
        let old = match status {
            ChangeStatus::Added => None,
            _ => side(repo, &base_tree, old_bytes)?,
        };
        let new = match status {
            ChangeStatus::Deleted => None,
            _ => side(repo, &head_tree, new_bytes)?,
        };
        let lossy = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let old_path = lossy(old_bytes);
        let new_path = lossy(new_bytes);
        let path = match status {
            ChangeStatus::Deleted => old_path.clone(),
            _ => new_path.clone(),
        }
        .or_else(|| new_path.clone())
        .or_else(|| old_path.clone())
        .unwrap_or_default();
        let binary =
            old.as_ref().is_some_and(|s| s.binary) || new.as_ref().is_some_and(|s| s.binary);
        let (added, removed) = if binary {
            (0, 0)
        } else {
            match Patch::from_diff(&diff, idx)? {
                Some(patch) => {
                    let (_context, added, removed) = patch.line_stats()?;
                    (added, removed)
                }
                None => (0, 0),
            }
        };
        let old_mode = old.map(|s| s.mode);
        let mode = match new {
            Some(s) => s.mode,
            None => old_mode.clone().unwrap_or(FileMode::Other(0)),
        };
        files.push(FileChange {
            old_path: old_path.filter(|p| *p != path),
            path,
            status,
            added,
            removed,
            binary,
            mode,
            old_mode,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(DiffSummary { files })
}

/// One side of a delta, read from its tree.
struct Side {
    mode: FileMode,
    binary: bool,
}

fn side(
    repo: &Repository,
    tree: &Tree<'_>,
    path: Option<&[u8]>,
) -> Result<Option<Side>, git2::Error> {
    let Some(path) = path else {
        return Ok(None);
    };
    let entry = tree.get_path(Path::new(OsStr::from_bytes(path)))?;
    // The raw mode, classified here: git2's DiffFile::mode panics on modes it does not know.
    let raw = entry.filemode_raw() as u32;
    let mode = match raw & 0o170000 {
        0o100000 if raw & 0o100 != 0 => FileMode::Executable,
        0o100000 => FileMode::Regular,
        0o120000 => {
            let blob = repo.find_blob(entry.id())?;
            FileMode::Symlink {
                target: String::from_utf8_lossy(blob.content()).into_owned(),
            }
        }
        0o160000 => FileMode::Submodule,
        _ => FileMode::Other(raw),
    };
    let binary = mode.is_blob_file() && repo.find_blob(entry.id())?.is_binary();
    Ok(Some(Side { mode, binary }))
}

/// Paths changed between the base and HEAD, sorted, for the pull request body.
///
/// `base_ref` is a branch name (looked up as `refs/remotes/origin/<base>`, then as a local branch) or anything
/// `git rev-parse` understands (a commit id). A rename shows as its old and its new path.
pub fn changed_files(repo: &Repository, base_ref: &str) -> Result<Vec<String>, RepoError> {
    let head =
        repo.head()
            .ok()
            .and_then(|h| h.target())
            .ok_or_else(|| RepoError::BranchNotFound {
                branch: "HEAD".into(),
                remote: false,
            })?;
    changed_files_at(repo, base_ref, head)
}

/// [`changed_files`] between the base and `commit` instead of HEAD.
pub fn changed_files_at(
    repo: &Repository,
    base_ref: &str,
    commit: Oid,
) -> Result<Vec<String>, RepoError> {
    let base = [
        format!("refs/remotes/origin/{base_ref}"),
        format!("refs/heads/{base_ref}"),
        base_ref.to_string(),
    ]
    .iter()
    .find_map(|spec| repo.revparse_single(spec).ok())
    .ok_or_else(|| RepoError::BranchNotFound {
        branch: base_ref.to_string(),
        remote: false,
    })?;
    let base_tree = base
        .peel_to_tree()
        .map_err(|e| local(&format!("reading the tree of {base_ref}"), e))?;
    let head_tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| local(&format!("reading commit {commit}"), e))?;
    let diff = repo
        .diff_tree_to_tree(Some(&base_tree), Some(&head_tree), None)
        .map_err(|e| local("diffing against the base", e))?;
    let mut paths: Vec<String> = Vec::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(p) = file.path() {
                let p = p.to_string_lossy().into_owned();
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// [`crate::proof::format::diff_digest`] (what a run statement records as the change's `diff` digest), with
/// repo's errors.
pub fn diff_digest(repo: &Repository, base: Oid, commit: Oid) -> Result<String, RepoError> {
    crate::proof::format::diff_digest(repo, base, commit)
        .map_err(|e| local("diffing the change", e))
}
