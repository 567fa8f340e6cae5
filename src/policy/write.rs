//! The write rules, checked on the diff before anything is pushed (and on each path before the agent writes it).
//!
//! # Model
//! [`crate::repo::diff::summarize`] turns two commits into a [`DiffSummary`]: one `FileChange` per path, with its status, line
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

use serde::{Deserialize, Serialize};

use crate::repo::diff::{ChangeStatus, DiffSummary, FileMode};

mod paths;

use paths::{is_git_component, normalize, symlink_escape, Matcher};

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

#[cfg(test)]
mod tests;
