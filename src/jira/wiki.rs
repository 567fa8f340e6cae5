//! Jira wiki markup, both ways: ticket text to Markdown for the model ([`wiki_to_markdown`]), and drafter's notices
//! to wiki markup for Data Center ([`super::Notice::to_wiki`]).
//!
//! Jira Data Center stores descriptions, comments and rich-text fields as wiki markup (REST v2), and Jira Cloud's
//! webhooks carry it too. The notation is Atlassian's "Text Formatting Notation"
//! (<https://jira.atlassian.com/secure/WikiRendererHelpAction.jspa?section=all>): `h1.`-`h6.` headings, `bq.` and
//! `{quote}` quotes, `*`/`#`/`-` list lines (nesting by repetition: `#*`), `||head||` and `|cell|` table rows,
//! `{code[:lang]}` and `{noformat}` blocks, `{{monospace}}`, phrases `*strong*`, `_emphasis_`, `-deleted-`,
//! `+inserted+`, `^sup^`, `~sub~`, `??citation??`, links `[text|url]`, mentions `[~username]` (Cloud:
//! `[~accountid:...]`), images and attachments `!file.png!`, `\\` line breaks and `\X` escapes.
//!
//! Like the ADF walker, the reader treats its input as hostile: it never panics, bounds how far it looks for the
//! end of a phrase, link or macro (so a line full of openers stays linear), bounds nesting, and keeps the text of
//! macros it does not know (`{expand}...{expand}` becomes its content).
//!
//! The writer escapes every piece of text drafter did not write itself, so a reason or a branch name cannot turn
//! into a mention (`[~admin]`), a link, an image or a macro in the ticket, and writes the whole notice as one line
//! (breaks are `\\`), so nothing can start a heading, list or table.

use super::adf::{
    longest_backtick_run, one_line, quote, DEPTH_MARKER, HARD_BREAK, MAX_TABLE_COLUMNS,
};
use super::{clean_text, MAX_ADF_DEPTH};

mod inline;
mod table;
mod write;

use table::{split_row, table};
pub use write::escape_wiki;

/// How far (in bytes) a block macro's opening tag may run before its `}`.
const MAX_TAG_BYTES: usize = 500;
/// List nesting kept (deeper markers count as this deep).
const MAX_LIST_DEPTH: usize = 20;
/// Block macros whose body is verbatim code.
const CODE_MACROS: &[&str] = &["code", "noformat"];
/// Block macros whose body is more wiki markup, shown as a quote.
const QUOTE_MACROS: &[&str] = &["quote", "panel", "info", "note", "warning", "tip"];
/// Inline macros that are dropped even alone (their closing tag is optional or absent).
const DROPPED_MACROS: &[&str] = &["color", "anchor"];

/// Converts Jira wiki markup to Markdown. Never panics; control characters are removed.
pub fn wiki_to_markdown(text: &str) -> String {
    let text = clean_text(&text.replace("\r\n", "\n").replace('\r', "\n"));
    let paired = paired_macro_names(&text);
    Reader { paired }.blocks(&text, 0).trim().to_string()
}

/// A piece of the text between block macros.
enum Seg<'a> {
    Text(&'a str),
    Code {
        lang: String,
        body: &'a str,
    },
    Quote {
        label: Option<String>,
        body: &'a str,
    },
}

/// The lower-case names of macros that appear at least twice (an opening and a closing tag), plus the ones dropped
/// even alone. Only these tags are removed; a lone `{x}` in prose stays as typed.
fn paired_macro_names(text: &str) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find('{') {
        let at = i + off;
        if let Some((name, end)) = macro_tag(text, at) {
            let monospace = (at > 0 && bytes[at - 1] == b'{') || bytes.get(end) == Some(&b'}');
            if !monospace {
                *counts.entry(name).or_default() += 1;
            }
            i = end;
        } else {
            i = at + 1;
        }
    }
    let mut names: Vec<String> = counts
        .into_iter()
        .filter(|(n, c)| *c >= 2 || DROPPED_MACROS.contains(&n.as_str()))
        .map(|(n, _)| n)
        .collect();
    names.extend(DROPPED_MACROS.iter().map(|s| s.to_string()));
    names
}

/// A macro tag `{name}` or `{name:params}` starting at byte `at` (which holds `{`): its lower-case name and the
/// byte just after its `}`. Names are ASCII letters, digits, `-` and `_`, starting with a letter.
fn macro_tag(text: &str, at: usize) -> Option<(String, usize)> {
    let rest = text.get(at + 1..)?;
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        .count();
    if name_len == 0 || !rest.as_bytes()[0].is_ascii_alphabetic() {
        return None;
    }
    let after = &rest[name_len..];
    let close = match after.as_bytes().first() {
        Some(b'}') => 0,
        Some(b':') => after
            .bytes()
            .take(MAX_TAG_BYTES)
            .position(|b| b == b'}' || b == b'{' || b == b'\n')
            .filter(|&p| after.as_bytes()[p] == b'}')?,
        _ => return None,
    };
    Some((
        rest[..name_len].to_ascii_lowercase(),
        at + 1 + name_len + close + 1,
    ))
}

/// The parameters of a tag (`{code:java}` -> `java`), empty when none.
fn tag_params(tag: &str) -> &str {
    tag.trim_start_matches('{')
        .trim_end_matches('}')
        .split_once(':')
        .map(|(_, p)| p)
        .unwrap_or("")
}

/// Splits `text` at block macros (`{code}`, `{noformat}`, `{quote}`, `{panel}` and the panel-like ones). A macro
/// left open runs to the end of the text.
fn segments(text: &str) -> Vec<Seg<'_>> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(off) = text[i..].find('{') {
        let at = i + off;
        let Some((name, tag_end)) = macro_tag(text, at) else {
            i = at + 1;
            continue;
        };
        let code = CODE_MACROS.contains(&name.as_str());
        if !code && !QUOTE_MACROS.contains(&name.as_str()) {
            i = tag_end;
            continue;
        }
        if at > start {
            out.push(Seg::Text(&text[start..at]));
        }
        let closing = format!("{{{name}}}");
        let (body, next) = match lower[tag_end..].find(&closing) {
            Some(p) => (&text[tag_end..tag_end + p], tag_end + p + closing.len()),
            None => (&text[tag_end..], text.len()),
        };
        let params = tag_params(&text[at..tag_end]);
        if code {
            let lang = if name == "code" {
                code_language(params)
            } else {
                String::new()
            };
            out.push(Seg::Code { lang, body });
        } else {
            out.push(Seg::Quote {
                label: panel_label(&name, params),
                body,
            });
        }
        start = next;
        i = next;
    }
    if start < text.len() {
        out.push(Seg::Text(&text[start..]));
    }
    out
}

/// `{code:java}`, `{code:title=A.java|language=java}` -> `java`; only characters safe after a fence are kept.
fn code_language(params: &str) -> String {
    let lang = params
        .split('|')
        .find_map(|p| match p.split_once('=') {
            None => Some(p),
            Some((k, v)) if k.trim().eq_ignore_ascii_case("language") => Some(v),
            Some(_) => None,
        })
        .unwrap_or("");
    lang.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.#".contains(*c))
        .take(32)
        .collect()
}

/// The bold label a panel-like macro gets: its `title=`, else `Info`/`Note`/`Warning`/`Tip` (nothing for quotes and
/// untitled panels).
fn panel_label(name: &str, params: &str) -> Option<String> {
    let title = params.split('|').find_map(|p| {
        p.split_once('=')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("title"))
            .map(|(_, v)| one_line(v.trim()))
    });
    match (name, title) {
        (_, Some(t)) if !t.is_empty() => Some(t),
        ("quote" | "panel", _) => None,
        (other, _) => {
            let mut l = other.to_string();
            if let Some(f) = l.get_mut(0..1) {
                f.make_ascii_uppercase();
            }
            Some(l)
        }
    }
}

/// What one line of running text is.
enum Line<'a> {
    Blank,
    Heading(usize, &'a str),
    Quote(&'a str),
    Rule,
    Item(&'a str, &'a str),
    Row(&'a str),
    Text(&'a str),
}

fn classify(line: &str) -> Line<'_> {
    let t = line.trim();
    if t.is_empty() {
        return Line::Blank;
    }
    let b = t.as_bytes();
    if b.len() >= 3 && b[0] == b'h' && (b'1'..=b'6').contains(&b[1]) && b[2] == b'.' {
        return Line::Heading(usize::from(b[1] - b'0'), t[3..].trim());
    }
    if let Some(rest) = t.strip_prefix("bq.") {
        return Line::Quote(rest.trim());
    }
    if t.len() >= 4 && t.bytes().all(|c| c == b'-') {
        return Line::Rule;
    }
    let marker_len = t.bytes().take_while(|c| b"*#-".contains(c)).count();
    if marker_len > 0 && t[marker_len..].starts_with([' ', '\t']) {
        let marker = &t[..marker_len];
        // `-` makes a bullet only alone; `*` and `#` nest by repetition.
        if marker == "-" || !marker.contains('-') {
            return Line::Item(marker, t[marker_len..].trim());
        }
    }
    if t.starts_with('|') {
        return Line::Row(t);
    }
    Line::Text(t)
}

/// One level of an open list: bullet or numbered, and the number of its last item.
struct Level {
    ordered: bool,
    number: u64,
}

impl Level {
    /// How far the items below this level's current item are indented.
    fn width(&self) -> usize {
        if self.ordered {
            self.number.max(1).to_string().len() + 2
        } else {
            2
        }
    }
}

/// The block being collected from consecutive lines.
enum Open {
    None,
    Para(Vec<String>),
    List(Vec<Level>, Vec<String>),
    Table(Vec<(bool, Vec<String>)>),
}

struct Reader {
    /// Macro names whose tags are dropped (see [`paired_macro_names`]).
    paired: Vec<String>,
}

impl Reader {
    /// A wiki text as Markdown blocks separated by blank lines.
    fn blocks(&self, text: &str, depth: usize) -> String {
        if depth > MAX_ADF_DEPTH {
            return DEPTH_MARKER.to_string();
        }
        let mut parts: Vec<String> = Vec::new();
        for seg in segments(text) {
            match seg {
                Seg::Text(t) => self.text_blocks(t, depth, &mut parts),
                Seg::Code { lang, body } => {
                    let body = body.strip_prefix('\n').unwrap_or(body);
                    let body = body.strip_suffix('\n').unwrap_or(body);
                    if body.trim().is_empty() {
                        continue;
                    }
                    let fence = "`".repeat(longest_backtick_run(body).max(2) + 1);
                    parts.push(format!("{fence}{lang}\n{body}\n{fence}"));
                }
                Seg::Quote { label, body } => {
                    let inner = self.blocks(body, depth + 1);
                    let inner = match label {
                        Some(l) if inner.is_empty() => format!("**{l}:**"),
                        Some(l) => format!("**{l}:**\n{inner}"),
                        None => inner,
                    };
                    if !inner.trim().is_empty() {
                        parts.push(quote(inner.trim_end()));
                    }
                }
            }
        }
        parts.join("\n\n")
    }

    /// Running text (no block macros) line by line: headings, quotes, rules, lists, tables and paragraphs.
    fn text_blocks(&self, text: &str, depth: usize, parts: &mut Vec<String>) {
        let text = self.drop_macro_tags(text);
        let mut open = Open::None;
        for line in text.split('\n') {
            let kind = classify(line);
            let same = matches!(
                (&open, &kind),
                (Open::Para(_), Line::Text(_))
                    | (Open::List(..), Line::Item(..))
                    | (Open::Table(_), Line::Row(_))
            );
            if !same {
                self.flush(std::mem::replace(&mut open, Open::None), parts);
            }
            match kind {
                Line::Blank => {}
                Line::Heading(level, rest) => {
                    let h = one_line(&self.inline(rest, depth));
                    if !h.is_empty() {
                        parts.push(format!("{} {h}", "#".repeat(level)));
                    }
                }
                Line::Quote(rest) => {
                    let q = self.inline(rest, depth);
                    if !q.trim().is_empty() {
                        parts.push(quote(q.trim()));
                    }
                }
                Line::Rule => parts.push("---".to_string()),
                Line::Item(marker, rest) => {
                    if !matches!(open, Open::List(..)) {
                        open = Open::List(Vec::new(), Vec::new());
                    }
                    if let Open::List(levels, lines) = &mut open {
                        let item = self.inline(rest, depth);
                        lines.push(list_line(levels, marker, &item));
                    }
                }
                Line::Row(row) => {
                    if !matches!(open, Open::Table(_)) {
                        open = Open::Table(Vec::new());
                    }
                    if let Open::Table(rows) = &mut open {
                        let (header, cells) = split_row(row);
                        let cells = cells.iter().map(|c| self.cell(c, depth)).collect();
                        rows.push((header, cells));
                    }
                }
                Line::Text(t) => {
                    if !matches!(open, Open::Para(_)) {
                        open = Open::Para(Vec::new());
                    }
                    if let Open::Para(lines) = &mut open {
                        lines.push(self.inline(t, depth));
                    }
                }
            }
        }
        self.flush(open, parts);
    }

    fn flush(&self, open: Open, parts: &mut Vec<String>) {
        let block = match open {
            Open::None => return,
            // A line break inside a paragraph is a break in Jira too.
            Open::Para(lines) => lines.join(HARD_BREAK).trim().to_string(),
            Open::List(_, lines) => lines.join("\n"),
            Open::Table(rows) => table(rows),
        };
        if !block.trim().is_empty() {
            parts.push(block);
        }
    }

    /// Removes the tags of paired and dropped macros, keeping what is between them.
    fn drop_macro_tags(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while let Some(off) = text[i..].find('{') {
            let at = i + off;
            match macro_tag(text, at) {
                Some((name, end))
                    if self.paired.contains(&name)
                        && !(at > 0 && bytes[at - 1] == b'{')
                        && bytes.get(end) != Some(&b'}') =>
                {
                    out.push_str(&text[copied..at]);
                    copied = end;
                    i = end;
                }
                Some((_, end)) => i = end,
                None => i = at + 1,
            }
        }
        out.push_str(&text[copied..]);
        out
    }
}

/// The Markdown line of one list item, keeping `levels` (the open list levels) up to date.
fn list_line(levels: &mut Vec<Level>, marker: &str, item: &str) -> String {
    let marks: Vec<char> = marker.chars().take(MAX_LIST_DEPTH).collect();
    let depth = marks.len().max(1);
    levels.truncate(depth);
    while levels.len() < depth {
        let m = marks.get(levels.len()).copied().unwrap_or('*');
        levels.push(Level {
            ordered: m == '#',
            number: 0,
        });
    }
    let ordered = marks.last() == Some(&'#');
    let indent: usize = levels[..depth - 1].iter().map(Level::width).sum();
    let level = &mut levels[depth - 1];
    if level.ordered != ordered {
        *level = Level { ordered, number: 0 };
    }
    level.number = level.number.saturating_add(1);
    let bullet = if ordered {
        format!("{}. ", level.number)
    } else {
        "- ".to_string()
    };
    format!("{}{bullet}{}", " ".repeat(indent), item.trim())
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests;
