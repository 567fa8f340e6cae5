//! The write rules, checked on the diff before anything is pushed (and on each path before the agent writes it).
//!
//! # Model
//! [`summarize`] turns two commits into a [`DiffSummary`]: one [`FileChange`] per path, with its status, line
//! counts, binary flag and modes. [`check`] lists every rule that summary breaks; an empty list means the change
//! may be pushed. [`check_path`] answers the narrower question the agent's write and edit tools ask before writing
//! one file. Rule names in [`Violation::rule`] are the policy keys (`write.forbidden_paths`, ...) so a ticket reader
//! can find the line of the policy that said no.
//!
//! # Why it is shaped this way
//! - **Tree to tree, rename detection off.** A rename is a deletion plus an addition, so both paths are checked:
//!   moving `.github/workflows/ci.yml` away is as forbidden as editing it.
//! - **Git attributes do not count.** The diff runs with `force_text`, and binary files are recognised from the
//!   blob bytes (a NUL in the first 8000 bytes, git's own test), not from `.gitattributes`: otherwise the change
//!   itself could add `* binary` to hide its line count, or `*.dat diff` to pass a binary file as text.
//! - **Paths are matched the strict way.** `\` counts as a separator, empty and `.` components are dropped, `..` is
//!   resolved, and matching ignores case (a checkout on macOS or Windows resolves `.GitHub/Workflows` to
//!   `.github/workflows`). Each glob is tried against the path and each of its parent directories, as gitignore
//!   does, so a pattern naming a directory covers everything below it. A symlink standing where a forbidden
//!   directory would be (`.github -> elsewhere`) is treated as that directory.
//! - **Globs are gitignore-like.** `**` spans directories, `*` and `?` do not cross `/`; a pattern with a `/` at
//!   its start or in its middle is anchored at the repository root, one without (`CODEOWNERS`, `*.pem`) matches a
//!   name at any depth. A trailing `/` is ignored.
//! - **Out of scope, on purpose.** Unicode lookalikes (`.githuƅ`) and normalisation forms (NFD on macOS) are not
//!   folded: they name different paths to git and to the forge, which do not run them as workflows. The `.git`
//!   component test does fold what checkouts themselves fold (NTFS trailing dots and spaces, the `git~1` short
//!   name, HFS+ ignorable code points), since those become the real `.git` on some machine.
//! - **Symlink targets are judged without following other links.** Leading `..` climb from the link's own
//!   directory, which in a git tree is a real directory; a `..` after a name (`x/../..`) is refused, because if `x`
//!   is itself a link only following it could tell where that ends. A link through a link that already exists on
//!   the base branch is trusted as much as that link is.
//! - **Non-UTF-8 paths** are checked in their lossy form: the replacement character never creates or removes a `/`
//!   or an ASCII letter, so a forbidden directory still matches.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use git2::{Delta, DiffOptions, Oid, Patch, Repository, Tree};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Built-in forbidden globs: CI definitions, code ownership and submodule wiring, the files that decide what runs
/// with the repository's secrets and who must review. They apply unless a policy lists its own `forbidden_paths`.
pub const DEFAULT_FORBIDDEN: &[&str] = &[
    ".github/workflows/**",
    ".github/actions/**",
    ".gitlab-ci.yml",
    ".gitlab/ci/**",
    ".circleci/**",
    "Jenkinsfile",
    "azure-pipelines.yml",
    ".buildkite/**",
    ".drone.yml",
    "CODEOWNERS",
    ".github/CODEOWNERS",
    "docs/CODEOWNERS",
    ".gitmodules",
];

/// Dependency lockfiles, forbidden at any depth when [`WriteRules::forbid_lockfiles`] is set.
pub const LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lock",
    "bun.lockb",
    "deno.lock",
    "poetry.lock",
    "Pipfile.lock",
    "uv.lock",
    "pdm.lock",
    "Gemfile.lock",
    "go.sum",
    "composer.lock",
    "mix.lock",
    "pubspec.lock",
    "Podfile.lock",
    "Package.resolved",
    "packages.lock.json",
    "gradle.lockfile",
    "flake.lock",
    "conan.lock",
];

/// Build products left out of the commit when only commands created them (see [`Exclusions`]): untracked files at
/// or under a path matching one of these globs. A policy's `write.exclude` adds to the list.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "__pycache__",
    "*.py[co]",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
    "target",
    ".gradle",
    ".coverage",
    "coverage",
    "*.class",
    "*.o",
];

/// Build output directories that some repositories commit (a bundled `dist/`): left out only where the base
/// tracks nothing under them.
pub const DEFAULT_EXCLUDE_UNTRACKED_DIRS: &[&str] = &["build", "dist"];

/// The value that turns a `max_files` / `max_lines` limit off in the policy file (TOML has no null).
pub const UNLIMITED: &str = "unlimited";

/// Names of the rules as they appear in [`Violation::rule`].
pub mod rule {
    /// A path matches a forbidden glob.
    pub const FORBIDDEN_PATHS: &str = "write.forbidden_paths";
    /// A lockfile changed while the policy forbids it.
    pub const LOCKFILES: &str = "write.forbid_lockfiles";
    /// Too many files changed.
    pub const MAX_FILES: &str = "write.max_files";
    /// Too many lines added and removed.
    pub const MAX_LINES: &str = "write.max_lines";
    /// A binary file changed while the policy allows none.
    pub const BINARY: &str = "write.allow_binary";
    /// A symlink leaves the repository (always enforced).
    pub const SYMLINKS: &str = "write.symlinks";
    /// A submodule was added, changed or removed (always enforced).
    pub const SUBMODULES: &str = "write.submodules";
    /// A path has a `.git` component (always enforced).
    pub const GIT_DIR: &str = "write.git_dir";
    /// A path is not inside the repository at all (`..` above the root).
    pub const PATH: &str = "write.path";
}

/// The write rules of a policy. [`Default`] is the safe default: the built-in forbidden paths, lockfiles allowed,
/// at most 100 files and 5000 lines (added + removed), no binary files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteRules {
    /// Forbidden path globs (see the module docs for the syntax), matched case-insensitively on the
    /// repository-relative path. Listing any replaces [`DEFAULT_FORBIDDEN`].
    pub forbidden_paths: Vec<String>,
    /// Whether the [`LOCKFILES`] are forbidden too.
    pub forbid_lockfiles: bool,
    /// Most files one change may touch; `None` (`"unlimited"` in the file) for no limit.
    #[serde(with = "limit")]
    pub max_files: Option<usize>,
    /// Most lines one change may add and remove together; `None` (`"unlimited"` in the file) for no limit.
    #[serde(with = "limit")]
    pub max_lines: Option<usize>,
    /// Whether binary files may be added or changed.
    pub allow_binary: bool,
    /// Globs of build products left out of the commit, in addition to [`DEFAULT_EXCLUDE`] (see [`Exclusions`]).
    pub exclude: Vec<String>,
}

impl Default for WriteRules {
    fn default() -> Self {
        WriteRules {
            forbidden_paths: DEFAULT_FORBIDDEN.iter().map(|s| s.to_string()).collect(),
            forbid_lockfiles: false,
            max_files: Some(100),
            max_lines: Some(5000),
            allow_binary: false,
            exclude: Vec::new(),
        }
    }
}

/// A limit is a non-negative integer or the string [`UNLIMITED`].
mod limit {
    use serde::{de, Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(value: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(n) => s.serialize_u64(*n as u64),
            None => s.serialize_str(super::UNLIMITED),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_any(Limit)
    }

    struct Limit;

    impl de::Visitor<'_> for Limit {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a non-negative integer or \"{}\"", super::UNLIMITED)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            usize::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == super::UNLIMITED {
                Ok(None)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
    }
}

/// A forbidden path glob the policy cannot use. The message names the glob; the policy parser adds the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write.forbidden_paths: `{glob}` is not a valid glob: {reason}")]
pub struct InvalidGlob {
    /// The glob as written in the policy.
    pub glob: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One rule a change (or a single write) breaks, worded for the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{detail}")]
pub struct Violation {
    /// The rule, as a policy key (see [`rule`]), e.g. `write.forbidden_paths`.
    pub rule: String,
    /// The path concerned, for rules about one path.
    pub path: Option<String>,
    /// One sentence a ticket reader understands.
    pub detail: String,
}

impl Violation {
    fn new(rule: &str, path: Option<&str>, detail: String) -> Self {
        Violation {
            rule: rule.to_string(),
            path: path.map(str::to_string),
            detail,
        }
    }
}

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

/// Every rule the change breaks (empty = allowed). A policy whose globs do not compile forbids everything.
pub fn check(summary: &DiffSummary, rules: &WriteRules) -> Vec<Violation> {
    match rules.compile() {
        Ok(compiled) => compiled.check(summary),
        Err(e) => vec![bad_policy(e)],
    }
}

/// For the agent's write and edit tools, before the write happens: `Err` if `path` (workspace-relative) is
/// forbidden. A policy whose globs do not compile forbids every write.
pub fn check_path(rules: &WriteRules, path: &str) -> Result<(), Violation> {
    rules.compile().map_err(bad_policy)?.check_path(path)
}

fn bad_policy(e: InvalidGlob) -> Violation {
    Violation::new(
        rule::FORBIDDEN_PATHS,
        None,
        format!(
            "the policy's forbidden path `{}` is not a valid glob ({}), so no change is allowed",
            e.glob, e.reason
        ),
    )
}

impl WriteRules {
    /// What the rules allow, in one paragraph for the model (told when its change breaks them).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.max_files, self.max_lines) {
            (Some(f), Some(l)) => parts.push(format!(
                "at most {f} changed files and {l} changed lines (added + removed)"
            )),
            (Some(f), None) => parts.push(format!("at most {f} changed files")),
            (None, Some(l)) => parts.push(format!("at most {l} changed lines (added + removed)")),
            (None, None) => {}
        }
        parts.push(if self.allow_binary {
            "binary files allowed".to_string()
        } else {
            "no binary files".to_string()
        });
        if self.forbid_lockfiles {
            parts.push("no dependency lockfiles".into());
        }
        if !self.forbidden_paths.is_empty() {
            parts.push(format!(
                "nothing matching {}",
                self.forbidden_paths
                    .iter()
                    .map(|g| format!("`{g}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        parts.push(
            "no submodule changes, no symlinks out of the repository, nothing under `.git`".into(),
        );
        format!("The change may contain {}.", parts.join("; "))
    }

    /// The build-product exclusions: [`DEFAULT_EXCLUDE`], [`DEFAULT_EXCLUDE_UNTRACKED_DIRS`] and `exclude`.
    pub fn exclusions(&self) -> Result<Exclusions, InvalidGlob> {
        let mut globs: Vec<String> = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        globs.extend(self.exclude.iter().cloned());
        Ok(Exclusions {
            always: Matcher::new(&globs)?,
        })
    }

    /// Validates and compiles the globs: the policy parser calls this so a bad glob is a configuration error
    /// naming the glob.
    pub fn compile(&self) -> Result<CompiledRules, InvalidGlob> {
        let forbidden = Matcher::new(&self.forbidden_paths)?;
        let lockfiles = if self.forbid_lockfiles {
            let list: Vec<String> = LOCKFILES.iter().map(|s| s.to_string()).collect();
            Some(Matcher::new(&list)?)
        } else {
            None
        };
        Ok(CompiledRules {
            rules: self.clone(),
            forbidden,
            lockfiles,
        })
    }
}

/// Which untracked files are build products, left out of the commit. The caller decides which files are
/// candidates at all (untracked at the base, and not written by the agent's write or edit tools); this says whether
/// such a file is a build product, and under what name to list it.
#[derive(Debug, Clone)]
pub struct Exclusions {
    always: Matcher,
}

impl Exclusions {
    /// `Some(listed)` when `path` (repository-relative) is a build product: `listed` is the outermost matching
    /// directory with a trailing `/` (`pkg/__pycache__/`), or the path itself. `tracks_dir(dir)` says whether the
    /// base tracks any file under `dir`; a `build/` or `dist/` directory it does is not build output.
    pub fn matches(&self, path: &str, tracks_dir: &dyn Fn(&str) -> bool) -> Option<String> {
        let comps = normalize(path)?;
        let listed = |end: usize| {
            if end == comps.len() {
                comps.join("/")
            } else {
                format!("{}/", comps[..end].join("/"))
            }
        };
        let always = self.always.first_end(&comps);
        // Only directories (not the file itself) for build/ and dist/: a file named `build` is a source file.
        let dirs = (1..comps.len()).find(|&end| {
            let name = comps[end - 1];
            DEFAULT_EXCLUDE_UNTRACKED_DIRS
                .iter()
                .any(|d| d.eq_ignore_ascii_case(name))
                && !tracks_dir(&comps[..end].join("/"))
        });
        match (always, dirs) {
            (Some(a), Some(d)) => Some(listed(a.min(d))),
            (Some(e), None) | (None, Some(e)) => Some(listed(e)),
            (None, None) => None,
        }
    }
}

/// [`WriteRules`] with their globs compiled, for checking many paths.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    rules: WriteRules,
    forbidden: Matcher,
    lockfiles: Option<Matcher>,
}

impl CompiledRules {
    /// The rules these were compiled from.
    pub fn rules(&self) -> &WriteRules {
        &self.rules
    }

    /// Every rule the change breaks, file by file in the summary's order, then the totals. Empty = allowed.
    pub fn check(&self, summary: &DiffSummary) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut push = |v: Violation, out: &mut Vec<Violation>| {
            let key = (v.rule.clone(), v.path.clone().unwrap_or_default());
            if seen.insert(key) {
                out.push(v);
            }
        };
        for f in &summary.files {
            let mut paths = vec![f.path.as_str()];
            if let Some(old) = f.old_path.as_deref() {
                if old != f.path {
                    paths.push(old);
                }
            }
            for p in paths {
                for v in self.path_violations(p) {
                    push(v, &mut out);
                }
            }
            if f.status != ChangeStatus::Deleted {
                if let FileMode::Symlink { target } = &f.mode {
                    if let Some(v) = self.symlink_violation(&f.path, target) {
                        push(v, &mut out);
                    }
                }
            }
            if f.mode == FileMode::Submodule || f.old_mode == Some(FileMode::Submodule) {
                let what = match f.status {
                    ChangeStatus::Added => "adds the submodule",
                    ChangeStatus::Deleted => "removes the submodule",
                    _ if f.mode != FileMode::Submodule => "removes the submodule",
                    _ if f.old_mode != Some(FileMode::Submodule) => "adds the submodule",
                    _ => "changes the submodule",
                };
                push(
                    Violation::new(
                        rule::SUBMODULES,
                        Some(&f.path),
                        format!(
                            "the change {what} `{}`, and submodules may not be added, changed or removed",
                            f.path
                        ),
                    ),
                    &mut out,
                );
            }
            if f.binary && !self.rules.allow_binary {
                push(
                    Violation::new(
                        rule::BINARY,
                        Some(&f.path),
                        format!(
                            "`{}` is a binary file, and the policy allows no binary files",
                            f.path
                        ),
                    ),
                    &mut out,
                );
            }
        }
        if let Some(max) = self.rules.max_files {
            let n = summary.files.len();
            if n > max {
                out.push(Violation::new(
                    rule::MAX_FILES,
                    None,
                    format!("the change touches {n} files, and the policy allows at most {max}"),
                ));
            }
        }
        if let Some(max) = self.rules.max_lines {
            let n = summary.lines();
            if n > max {
                out.push(Violation::new(
                    rule::MAX_LINES,
                    None,
                    format!(
                        "the change adds and removes {n} lines in total, and the policy allows at most {max}"
                    ),
                ));
            }
        }
        out
    }

    /// `Err` with the first rule a write to `path` (workspace-relative) would break.
    pub fn check_path(&self, path: &str) -> Result<(), Violation> {
        match self.path_violations(path).into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// The rules about a path alone: inside the repository, no `.git`, not forbidden, not a forbidden lockfile.
    fn path_violations(&self, path: &str) -> Vec<Violation> {
        let Some(comps) = normalize(path) else {
            return vec![Violation::new(
                rule::PATH,
                Some(path),
                format!("`{path}` is not a path inside the repository"),
            )];
        };
        let mut out = Vec::new();
        if comps.iter().any(|c| is_git_component(c)) {
            out.push(Violation::new(
                rule::GIT_DIR,
                Some(path),
                format!("`{path}` is inside a `.git` directory, which may never be written"),
            ));
        }
        if let Some(glob) = self.forbidden.first_match(&comps) {
            out.push(Violation::new(
                rule::FORBIDDEN_PATHS,
                Some(path),
                format!("`{path}` matches the forbidden path `{glob}`"),
            ));
        }
        if let Some(lockfiles) = &self.lockfiles {
            if let Some(glob) = lockfiles.first_match(&comps) {
                out.push(Violation::new(
                    rule::LOCKFILES,
                    Some(path),
                    format!(
                        "`{path}` is a lockfile (`{glob}`), and the policy forbids changing lockfiles"
                    ),
                ));
            }
        }
        out
    }

    /// A symlink breaks the rules when it leaves the repository, points into `.git`, or stands where a forbidden
    /// directory would be.
    fn symlink_violation(&self, path: &str, target: &str) -> Option<Violation> {
        let deny = |why: String| {
            Some(Violation::new(
                rule::SYMLINKS,
                Some(path),
                format!("`{path}` is a symlink to `{target}`, {why}"),
            ))
        };
        if let Some(why) = symlink_escape(path, target) {
            return deny(why.to_string());
        }
        let comps = normalize(path)?;
        if let Some(glob) = self.forbidden.shadowed(&comps) {
            return deny(format!(
                "which would stand in for a directory of the forbidden path `{glob}`"
            ));
        }
        None
    }
}

/// Why a symlink at `link` (repository-relative) pointing to `target` leaves the repository, or `None`.
fn symlink_escape(link: &str, target: &str) -> Option<&'static str> {
    let t = target.replace('\\', "/");
    let b = t.as_bytes();
    if t.starts_with('/') || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':') {
        return Some("an absolute path outside the repository");
    }
    let mut dir = normalize(link)?;
    dir.pop();
    let mut descended = false;
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." if descended => {
                return Some("which climbs with `..` after a directory name, so where it ends depends on other links")
            }
            ".." => {
                if dir.pop().is_none() {
                    return Some("which climbs above the repository root");
                }
            }
            c if is_git_component(c) => return Some("which points into a `.git` directory"),
            c => {
                descended = true;
                dir.push(c);
            }
        }
    }
    None
}

/// The path's components as matched: `\` is a separator, empty and `.` components are dropped, `..` removes the
/// previous one. `None` when `..` climbs above the root. A leading `/` is read as the repository root.
fn normalize(path: &str) -> Option<Vec<&str>> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whether a path component is, or becomes on some checkout, `.git`: any case, with the trailing dots and spaces
/// Windows drops, the `git~1` short name, and the code points HFS+ ignores (what git's own `protectNTFS` and
/// `protectHFS` guard against).
fn is_git_component(c: &str) -> bool {
    let folded: String = c
        .chars()
        .filter(|ch| {
            !matches!(ch, '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
        })
        .collect::<String>()
        .to_lowercase();
    let trimmed = folded.trim_end_matches(['.', ' ']);
    trimmed == ".git" || trimmed == "git~1"
}

/// A compiled list of gitignore-like globs.
#[derive(Debug, Clone)]
struct Matcher {
    set: GlobSet,
    /// The globs as written, by index in `set`.
    globs: Vec<String>,
    /// Per glob, the lowercased literal directories it is anchored under (`.github/workflows/**` ->
    /// [`.github`, `workflows`]); empty for unanchored globs.
    prefixes: Vec<Vec<String>>,
}

impl Matcher {
    fn new(globs: &[String]) -> Result<Matcher, InvalidGlob> {
        let mut builder = GlobSetBuilder::new();
        let mut prefixes = Vec::with_capacity(globs.len());
        for glob in globs {
            let invalid = |reason: String| InvalidGlob {
                glob: glob.clone(),
                reason,
            };
            let (source, prefix) = glob_source(glob).map_err(|r| invalid(r.to_string()))?;
            let compiled = GlobBuilder::new(&source)
                .case_insensitive(true)
                .literal_separator(true)
                .backslash_escape(false)
                .build()
                .map_err(|e| invalid(e.kind().to_string()))?;
            builder.add(compiled);
            prefixes.push(prefix);
        }
        let set = builder.build().map_err(|e| InvalidGlob {
            glob: e.glob().unwrap_or("").to_string(),
            reason: e.kind().to_string(),
        })?;
        Ok(Matcher {
            set,
            globs: globs.to_vec(),
            prefixes,
        })
    }

    /// The first glob (in policy order) matching the path or one of its parent directories.
    fn first_match(&self, comps: &[&str]) -> Option<&str> {
        let mut best: Option<usize> = None;
        for end in 1..=comps.len() {
            let candidate = comps[..end].join("/");
            if let Some(&i) = self.set.matches(&candidate).iter().min() {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
        }
        best.map(|i| self.globs[i].as_str())
    }

    /// The shortest prefix of the path (as a component count) that some glob matches.
    fn first_end(&self, comps: &[&str]) -> Option<usize> {
        (1..=comps.len()).find(|&end| self.set.is_match(comps[..end].join("/")))
    }

    /// The first anchored glob whose literal directory part passes through `comps` (so a symlink at `comps`
    /// would redirect paths the glob forbids).
    fn shadowed(&self, comps: &[&str]) -> Option<&str> {
        let lower: Vec<String> = comps.iter().map(|c| c.to_lowercase()).collect();
        self.prefixes
            .iter()
            .position(|p| {
                !lower.is_empty() && lower.len() <= p.len() && p[..lower.len()] == lower[..]
            })
            .map(|i| self.globs[i].as_str())
    }
}

/// The globset source for a policy glob (unanchored ones get `**/`) and its literal anchored directories.
fn glob_source(glob: &str) -> Result<(String, Vec<String>), &'static str> {
    let g = glob.trim();
    if g.is_empty() {
        return Err("it is empty");
    }
    if g.contains('\\') {
        return Err("use `/` to separate directories; `\\` is not supported");
    }
    let mut comps: Vec<&str> = Vec::new();
    for c in g.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("`..` cannot name a path inside the repository"),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        return Err("it names no path");
    }
    // gitignore: a slash at the start or in the middle anchors the pattern at the root.
    let anchored = g.starts_with('/') || comps.len() > 1;
    let body = comps.join("/");
    if !anchored {
        return Ok((format!("**/{body}"), Vec::new()));
    }
    let prefix: Vec<String> = comps
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[', ']', '{', '}']))
        .map(|c| c.to_lowercase())
        .collect();
    // A fully literal pattern names a path, not a directory to protect from being symlinked.
    let prefix = if prefix.len() == comps.len() {
        prefix[..prefix.len() - 1].to_vec()
    } else {
        prefix
    };
    Ok((body, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Index, IndexEntry, IndexTime, Signature};

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
        let link = |target: &'static str| {
            diff(&[README], &[README, ("docs/link", LINK, target.as_bytes())])
        };
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
}
