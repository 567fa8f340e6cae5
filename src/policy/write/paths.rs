//! Paths as the write rules read them: normalised the strict way (`\\` a separator, `..` resolved, `.git` in every
//! spelling a checkout folds to it), symlink targets judged without following other links, and the policy's
//! gitignore-like globs compiled into a [`Matcher`] tried against a path and each of its parent directories (see the
//! parent module's notes for why).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::InvalidGlob;

/// Why a symlink at `link` (repository-relative) pointing to `target` leaves the repository, or `None`.
pub(super) fn symlink_escape(link: &str, target: &str) -> Option<&'static str> {
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
pub(super) fn normalize(path: &str) -> Option<Vec<&str>> {
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
pub(super) fn is_git_component(c: &str) -> bool {
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
pub(super) struct Matcher {
    set: GlobSet,
    /// The globs as written, by index in `set`.
    globs: Vec<String>,
    /// Per glob, the lowercased literal directories it is anchored under (`.github/workflows/**` ->
    /// [`.github`, `workflows`]); empty for unanchored globs.
    prefixes: Vec<Vec<String>>,
}

impl Matcher {
    pub(super) fn new(globs: &[String]) -> Result<Matcher, InvalidGlob> {
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
    pub(super) fn first_match(&self, comps: &[&str]) -> Option<&str> {
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
    pub(super) fn first_end(&self, comps: &[&str]) -> Option<usize> {
        (1..=comps.len()).find(|&end| self.set.is_match(comps[..end].join("/")))
    }

    /// The first anchored glob whose literal directory part passes through `comps` (so a symlink at `comps`
    /// would redirect paths the glob forbids).
    pub(super) fn shadowed(&self, comps: &[&str]) -> Option<&str> {
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
