//! The code's own rules, checked as a unit test (after rust-analyzer's `tidy`): the module dependency table in
//! ARCHITECTURE.md is what the code does, and files stay small enough to read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files over this many lines need a reason at their top (a `//! Long file:` line) or a place in [`DEBT`].
const MAX_LINES: usize = 750;

/// Files that were already long when the rule came in (issue 14), with the length they may not grow past. Each is
/// to be split along its seams; the test fails when one is split (or grows), so the list only shrinks.
const DEBT: &[(&str, usize)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The table between `<!-- tidy:module-deps -->` and the end of the code block after it.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    table_lines().into_iter().collect()
}

/// The table's lines in order: module and the modules it may use.
fn table_lines() -> Vec<(String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = text
        .find("<!-- tidy:module-deps -->")
        .expect("ARCHITECTURE.md has a `<!-- tidy:module-deps -->` table");
    let block = &text[start..];
    let open = block
        .find("```text\n")
        .expect("the table is a ```text block")
        + 8;
    let close = open + block[open..].find("```").expect("the table's block ends");
    let mut lines: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in block[open..close].lines().filter(|l| !l.trim().is_empty()) {
        let (module, deps) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("table line `{line}` is not `module: deps`"));
        let module = module.trim().to_string();
        assert!(
            lines.iter().all(|(m, _)| *m != module),
            "`{module}` is listed twice"
        );
        lines.push((
            module,
            deps.split_whitespace().map(str::to_string).collect(),
        ));
    }
    lines
}

/// The top-level module a file belongs to; `None` for the binary edge (`main.rs`, `cli/`, `bin/`) and the crate root.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.strip_prefix("src").ok()?.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    match name.as_str() {
        "main" | "cli" | "lib" | "bin" | "tidy" => None,
        _ => Some(name),
    }
}

/// Every `crate::<module>` a line of code (not a comment) names, with its line number.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + 7..];
            // `drafter::crate::` never occurs; a preceding identifier char means another path (`$crate::`).
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((i + 1, name));
            }
        }
    }
    out
}

#[test]
fn imports_follow_the_module_table() {
    let table = table();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut modules = BTreeSet::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        modules.insert(module.clone());
        let text = std::fs::read_to_string(f).unwrap();
        for (line, dep) in crate_refs(&text) {
            if dep == module {
                continue;
            }
            let allowed = table.get(&module).is_some_and(|d| d.contains(&dep));
            if !allowed {
                wrong.push(format!("{}:{line}: {module} -> {dep}", rel.display()));
            }
            used.insert((module.clone(), dep));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against ARCHITECTURE.md's module table (fix the code, or change the table if the edge is \
         right and points downwards):\n{}",
        wrong.join("\n")
    );
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        listed, modules,
        "the table lists exactly the top-level modules of src/"
    );
    let unused: Vec<String> = table
        .iter()
        .flat_map(|(m, deps)| deps.iter().map(move |d| (m.clone(), d.clone())))
        .filter(|e| !used.contains(e))
        .map(|(m, d)| format!("{m} -> {d}"))
        .collect();
    assert!(
        unused.is_empty(),
        "edges no code uses (drop them from the table): {unused:?}"
    );
}

#[test]
fn the_module_table_has_no_cycle_and_reads_bottom_up() {
    let lines = table_lines();
    // Each module's dependencies are listed on earlier lines: then there can be no cycle.
    for (i, (m, deps)) in lines.iter().enumerate() {
        for d in deps {
            match lines.iter().position(|(n, _)| n == d) {
                None => panic!("`{m}` depends on `{d}`, which the table does not list"),
                Some(j) => assert!(
                    j < i,
                    "`{m}` depends on `{d}`, listed after it: a cycle or a misordered table"
                ),
            }
        }
    }
}

#[test]
fn source_files_stay_readable() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let lines = text.lines().count();
        let debt = DEBT.iter().find(|(p, _)| *p == rel).map(|(_, n)| *n);
        let reason = text
            .lines()
            .take(10)
            .any(|l| l.starts_with("//! Long file:"));
        match debt {
            Some(ceiling) if lines > ceiling => {
                problems.push(format!("{rel}: {lines} lines, grew past its {ceiling}: split it"))
            }
            Some(_) if lines <= MAX_LINES => {
                problems.push(format!("{rel}: now {lines} lines: take it off DEBT in src/tidy.rs"))
            }
            None if lines > MAX_LINES && !reason => problems.push(format!(
                "{rel}: {lines} lines: split it along its seams, or say why not in a `//! Long file:` line"
            )),
            _ => {}
        }
    }
    for (p, _) in DEBT {
        if !root().join(p).exists() {
            problems.push(format!("{p}: gone: take it off DEBT in src/tidy.rs"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
