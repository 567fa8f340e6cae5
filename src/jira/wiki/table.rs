//! Wiki tables (`||head||` and `|cell|` rows) as Markdown tables.

use std::fmt::Write as _;

use super::MAX_TABLE_COLUMNS;

/// A table row's cells and whether it is a header row (`||a||b||`). Pipes inside `[...]` and `{{...}}` do not split.
pub(super) fn split_row(row: &str) -> (bool, Vec<String>) {
    let header = row.starts_with("||");
    let c: Vec<char> = row.chars().collect();
    let mut cells = Vec::new();
    let mut cur = String::new();
    let (mut bracket, mut mono) = (false, false);
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' if i + 1 < c.len() => {
                cur.push(c[i]);
                cur.push(c[i + 1]);
                i += 2;
                continue;
            }
            '[' if !mono => bracket = true,
            ']' if !mono => bracket = false,
            '{' if c.get(i + 1) == Some(&'{') && !mono => {
                mono = true;
                cur.push_str("{{");
                i += 2;
                continue;
            }
            '}' if c.get(i + 1) == Some(&'}') && mono => {
                mono = false;
                cur.push_str("}}");
                i += 2;
                continue;
            }
            '|' if !bracket && !mono => {
                cells.push(std::mem::take(&mut cur));
                if c.get(i + 1) == Some(&'|') {
                    i += 1;
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        cur.push(c[i]);
        i += 1;
    }
    cells.push(cur);
    // The text before the first pipe and after the last one is not a cell.
    if !cells.is_empty() {
        cells.remove(0);
    }
    if cells.last().is_some_and(|l| l.trim().is_empty()) {
        cells.pop();
    }
    cells.truncate(MAX_TABLE_COLUMNS);
    (header, cells)
}

/// Rows as a Markdown table; the first row is the header when it is a header row, else the header is empty.
pub(super) fn table(mut rows: Vec<(bool, Vec<String>)>) -> String {
    let ncols = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    if ncols == 0 {
        return String::new();
    }
    for (_, r) in &mut rows {
        r.resize(ncols, String::new());
    }
    let header = if rows.first().is_some_and(|(h, _)| *h) {
        rows.remove(0).1
    } else {
        vec![String::new(); ncols]
    };
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for c in cells {
            let _ = write!(s, " {c} |");
        }
        s
    };
    let mut out = vec![line(&header), format!("|{}", " --- |".repeat(ncols))];
    out.extend(rows.iter().map(|(_, r)| line(r)));
    out.join("\n")
}
