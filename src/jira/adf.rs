//! ADF (Atlassian Document Format, Cloud's rich text) to Markdown for the model: [`adf_to_markdown`]. Ticket
//! text is hostile input: the walker never panics, stops at [`MAX_ADF_DEPTH`] levels and strips control characters.

use std::cell::Cell;

use serde_json::Value;

use super::{cap_chars, clean_text, MAX_ADF_DEPTH, MAX_NOTICE_FIELD_CHARS};

/// A hard line break inside a paragraph (CommonMark backslash form, visible and unambiguous).
pub(super) const HARD_BREAK: &str = "\\\n";
/// Columns kept per table row.
pub(super) const MAX_TABLE_COLUMNS: usize = 64;
pub(super) const DEPTH_MARKER: &str = "[content nested too deeply: omitted]";

/// Node types that are inline content (children of paragraphs, headings, task items).
const INLINE_TYPES: &[&str] = &[
    "text",
    "hardBreak",
    "mention",
    "emoji",
    "date",
    "status",
    "inlineCard",
    "mediaInline",
    "placeholder",
    "inlineExtension",
];

/// Converts an ADF document (or any ADF node, or a plain string as found in v2/webhook payloads) to Markdown.
///
/// Known nodes are rendered as their Markdown equivalents; unknown nodes are unwrapped so their text survives.
/// Malformed input never panics: missing or mistyped fields are skipped, and nesting beyond [`MAX_ADF_DEPTH`] is
/// replaced by a marker.
pub fn adf_to_markdown(doc: &Value) -> String {
    let r = Renderer {
        depth_marked: Cell::new(false),
    };
    let out = match doc {
        Value::String(s) => clean_text(s),
        Value::Array(nodes) => r.blocks(nodes, 0),
        Value::Object(_) if node_type(doc) == "doc" => r.blocks(children(doc), 0),
        Value::Object(_) => r.blocks(std::slice::from_ref(doc), 0),
        _ => String::new(),
    };
    out.trim().to_string()
}

pub(super) fn node_type(n: &Value) -> &str {
    n.get("type").and_then(Value::as_str).unwrap_or("")
}

pub(super) fn children(n: &Value) -> &[Value] {
    n.get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn attr<'a>(n: &'a Value, name: &str) -> Option<&'a Value> {
    n.get("attrs").and_then(|a| a.get(name))
}

fn attr_str<'a>(n: &'a Value, name: &str) -> Option<&'a str> {
    attr(n, name).and_then(Value::as_str)
}

fn is_inline(n: &Value) -> bool {
    INLINE_TYPES.contains(&node_type(n))
}

fn is_list(n: &Value) -> bool {
    matches!(node_type(n), "bulletList" | "orderedList" | "taskList")
}

/// Prefixes the first line with `first` and the others with `rest` (empty lines stay empty).
fn prefix_lines(body: &str, first: &str, rest: &str) -> String {
    let mut out = String::with_capacity(body.len() + first.len());
    for (i, line) in body.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == 0 {
            out.push_str(first);
            out.push_str(line);
        } else if !line.is_empty() {
            out.push_str(rest);
            out.push_str(line);
        }
    }
    out.trim_end().to_string()
}

pub(super) fn quote(body: &str) -> String {
    body.split('\n')
        .map(|l| {
            if l.is_empty() {
                ">".to_string()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for c in s.chars() {
        if c == '`' {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

pub(super) fn inline_code(s: &str) -> String {
    let fence = "`".repeat(longest_backtick_run(s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Makes a link target safe inside `(...)`: no whitespace, parentheses or angle brackets.
pub(super) fn clean_href(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    for c in h.trim().chars() {
        match c {
            ' ' => out.push_str("%20"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            c if c.is_control() || c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

pub(super) fn one_line(s: &str) -> String {
    s.replace(HARD_BREAK, " ")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A table cell's Markdown on one line: line breaks become `<br>`, pipes are escaped (ADF and wiki tables alike).
pub(super) fn cell_line(body: &str) -> String {
    body.replace(HARD_BREAK, "\n")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("<br>")
        .replace('|', "\\|")
}

struct Renderer {
    /// The depth marker is written once, not once per sibling.
    depth_marked: Cell<bool>,
}

impl Renderer {
    fn too_deep(&self, depth: usize) -> Option<String> {
        if depth <= MAX_ADF_DEPTH {
            return None;
        }
        if self.depth_marked.replace(true) {
            Some(String::new())
        } else {
            Some(DEPTH_MARKER.to_string())
        }
    }

    /// Block content separated by blank lines.
    fn blocks(&self, nodes: &[Value], depth: usize) -> String {
        self.block_parts(nodes, depth)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// Renders a block sequence; runs of stray inline nodes become a paragraph. The flag marks lists.
    fn block_parts(&self, nodes: &[Value], depth: usize) -> Vec<(String, bool)> {
        let mut parts = Vec::new();
        let mut run = String::new();
        let flush = |run: &mut String, parts: &mut Vec<(String, bool)>| {
            let t = run.trim();
            if !t.is_empty() {
                parts.push((t.to_string(), false));
            }
            run.clear();
        };
        for n in nodes.iter().filter(|n| n.is_object()) {
            if is_inline(n) {
                run.push_str(&self.inline(n, depth + 1));
                continue;
            }
            flush(&mut run, &mut parts);
            let s = self.block(n, depth + 1);
            if !s.trim().is_empty() {
                parts.push((s, is_list(n)));
            }
        }
        flush(&mut run, &mut parts);
        parts
    }

    fn inlines(&self, nodes: &[Value], depth: usize) -> String {
        nodes
            .iter()
            .filter(|n| n.is_object())
            .map(|n| self.inline(n, depth + 1))
            .collect()
    }

    fn block(&self, n: &Value, depth: usize) -> String {
        if let Some(m) = self.too_deep(depth) {
            return m;
        }
        let kids = children(n);
        match node_type(n) {
            "paragraph" => self.inlines(kids, depth).trim().to_string(),
            "heading" => {
                let level = attr(n, "level")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .clamp(1, 6) as usize;
                let text = one_line(&self.inlines(kids, depth));
                if text.is_empty() {
                    String::new()
                } else {
                    format!("{} {}", "#".repeat(level), text)
                }
            }
            "bulletList" => self.list(kids, None, depth),
            "orderedList" => {
                let start = attr(n, "order")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .min(999_999_999);
                self.list(kids, Some(start), depth)
            }
            "taskList" => self.task_list(kids, depth),
            "codeBlock" => {
                let mut code = String::new();
                collect_text(n, &mut code, depth, 0);
                let code = clean_text(&code);
                let lang: String = attr_str(n, "language")
                    .unwrap_or("")
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || "+-_.#".contains(*c))
                    .take(32)
                    .collect();
                let fence = "`".repeat(longest_backtick_run(&code).max(2) + 1);
                let nl = if code.ends_with('\n') || code.is_empty() {
                    ""
                } else {
                    "\n"
                };
                format!("{fence}{lang}\n{code}{nl}{fence}")
            }
            "blockquote" => {
                let body = self.blocks(kids, depth);
                if body.is_empty() {
                    body
                } else {
                    quote(&body)
                }
            }
            "rule" => "---".to_string(),
            "panel" => {
                let kind: String = attr_str(n, "panelType")
                    .unwrap_or("info")
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(20)
                    .collect();
                let mut label = kind.clone();
                if let Some(f) = label.get_mut(0..1) {
                    f.make_ascii_uppercase();
                }
                if label.is_empty() {
                    label = "Info".into();
                }
                let body = self.blocks(kids, depth);
                quote(format!("**{label}:**\n{body}").trim_end())
            }
            "table" => self.table(kids, depth),
            "media" => media_placeholder(n),
            "expand" | "nestedExpand" => {
                let title = one_line(&clean_text(attr_str(n, "title").unwrap_or("")));
                let body = self.blocks(kids, depth);
                match (title.is_empty(), body.is_empty()) {
                    (true, _) => body,
                    (false, true) => format!("**{title}**"),
                    (false, false) => format!("**{title}**\n\n{body}"),
                }
            }
            "blockCard" | "embedCard" => attr_str(n, "url").map(clean_href).unwrap_or_default(),
            "listItem" | "taskItem" => self.blocks(kids, depth),
            // doc, mediaSingle, mediaGroup, layoutSection, layoutColumn, bodiedExtension, decisionList and
            // anything unknown: drop the wrapper, keep the content.
            _ => self.blocks(kids, depth),
        }
    }

    fn inline(&self, n: &Value, depth: usize) -> String {
        if let Some(m) = self.too_deep(depth) {
            return m;
        }
        match node_type(n) {
            "text" => text_with_marks(n),
            "hardBreak" => HARD_BREAK.to_string(),
            "mention" => {
                let text = clean_text(attr_str(n, "text").unwrap_or("").trim());
                if text.starts_with('@') {
                    text
                } else if !text.is_empty() {
                    format!("@{text}")
                } else {
                    let id = clean_text(attr_str(n, "id").unwrap_or("").trim());
                    if id.is_empty() {
                        "@someone".into()
                    } else {
                        format!("@{id}")
                    }
                }
            }
            "emoji" => clean_text(
                attr_str(n, "shortName")
                    .or_else(|| attr_str(n, "text"))
                    .unwrap_or(""),
            ),
            "date" => render_date(attr(n, "timestamp")),
            "status" => clean_text(attr_str(n, "text").unwrap_or("")),
            "inlineCard" => attr_str(n, "url").map(clean_href).unwrap_or_default(),
            "mediaInline" | "media" => media_placeholder(n),
            "placeholder" => String::new(),
            // A block where inline content was expected (e.g. a paragraph inside a table cell flattened), or an
            // unknown node: keep its text.
            _ => {
                let kids = children(n);
                let parts: Vec<String> = kids
                    .iter()
                    .filter(|k| k.is_object())
                    .map(|k| self.inline(k, depth + 1))
                    .filter(|s| !s.is_empty())
                    .collect();
                if is_inline(n) || kids.iter().all(is_inline) {
                    parts.concat()
                } else {
                    parts.join(" ")
                }
            }
        }
    }

    fn list(&self, items: &[Value], start: Option<u64>, depth: usize) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut num = start.unwrap_or(1);
        for item in items.iter().filter(|i| i.is_object()) {
            let marker = match start {
                Some(_) => format!("{num}. "),
                None => "- ".to_string(),
            };
            let body = if node_type(item) == "listItem" {
                self.item_body(children(item), depth + 1)
            } else {
                // Malformed: something other than a listItem directly in a list. Keep it as an item.
                self.block_parts(std::slice::from_ref(item), depth)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            };
            out.push(prefix_lines(&body, &marker, &" ".repeat(marker.len())));
            num = num.saturating_add(1);
        }
        out.join("\n")
    }

    /// An item's blocks: a nested list follows its paragraph directly, other blocks are separated by a blank line.
    fn item_body(&self, kids: &[Value], depth: usize) -> String {
        let mut body = String::new();
        for (i, (s, list)) in self.block_parts(kids, depth).into_iter().enumerate() {
            if i > 0 {
                body.push_str(if list { "\n" } else { "\n\n" });
            }
            body.push_str(&s);
        }
        body
    }

    fn task_list(&self, items: &[Value], depth: usize) -> String {
        let mut out: Vec<String> = Vec::new();
        for item in items.iter().filter(|i| i.is_object()) {
            match node_type(item) {
                // ADF nests task lists as siblings of the items they belong under.
                "taskList" => {
                    let nested = self.task_list(children(item), depth + 1);
                    if !nested.is_empty() {
                        out.push(prefix_lines(&nested, "  ", "  "));
                    }
                }
                _ => {
                    let done = attr_str(item, "state") == Some("DONE");
                    let marker = if done { "- [x] " } else { "- [ ] " };
                    let body = self.item_body(children(item), depth + 1);
                    out.push(prefix_lines(&body, marker, "  "));
                }
            }
        }
        out.join("\n")
    }

    fn table(&self, rows: &[Value], depth: usize) -> String {
        let mut grid: Vec<Vec<String>> = Vec::new();
        let mut header_first = false;
        for (i, row) in rows.iter().filter(|r| r.is_object()).enumerate() {
            if let Some(m) = self.too_deep(depth + 1) {
                grid.push(vec![m]);
                continue;
            }
            let cells: Vec<&Value> = children(row)
                .iter()
                .filter(|c| c.is_object())
                .take(MAX_TABLE_COLUMNS)
                .collect();
            if i == 0 {
                header_first =
                    !cells.is_empty() && cells.iter().all(|c| node_type(c) == "tableHeader");
            }
            grid.push(cells.iter().map(|c| self.cell(c, depth + 2)).collect());
        }
        let ncols = grid.iter().map(Vec::len).max().unwrap_or(0);
        if ncols == 0 {
            return String::new();
        }
        for row in &mut grid {
            row.resize(ncols, String::new());
        }
        let header = if header_first {
            grid.remove(0)
        } else {
            vec![String::new(); ncols]
        };
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for c in cells {
                s.push(' ');
                s.push_str(c);
                s.push_str(" |");
            }
            s
        };
        let mut out = vec![line(&header), format!("|{}", " --- |".repeat(ncols))];
        out.extend(grid.iter().map(|r| line(r)));
        out.join("\n")
    }

    /// A table cell on one line: line breaks become `<br>`, pipes are escaped.
    fn cell(&self, c: &Value, depth: usize) -> String {
        let body = if is_inline(c) {
            self.inline(c, depth)
        } else {
            self.blocks(children(c), depth)
        };
        cell_line(&body)
    }
}

/// Text of a subtree, marks ignored (for code blocks).
pub(super) fn collect_text(n: &Value, out: &mut String, base: usize, depth: usize) {
    if base + depth > MAX_ADF_DEPTH {
        return;
    }
    for k in children(n) {
        match node_type(k) {
            "text" => out.push_str(k.get("text").and_then(Value::as_str).unwrap_or("")),
            "hardBreak" => out.push('\n'),
            _ => collect_text(k, out, base, depth + 1),
        }
    }
}

fn text_with_marks(n: &Value) -> String {
    let t = clean_text(n.get("text").and_then(Value::as_str).unwrap_or(""));
    let core = t.trim();
    if core.is_empty() {
        return t;
    }
    let (lead, trail) = {
        let start = t.len() - t.trim_start().len();
        let end = t.trim_end().len();
        (&t[..start], &t[end..])
    };
    let (mut code, mut strong, mut em, mut strike) = (false, false, false, false);
    let mut link: Option<String> = None;
    for m in n
        .get("marks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match node_type(m) {
            "code" => code = true,
            "strong" => strong = true,
            "em" => em = true,
            "strike" => strike = true,
            "link" => {
                link = attr_str(m, "href")
                    .map(clean_href)
                    .filter(|h| !h.is_empty())
            }
            _ => {}
        }
    }
    let mut s = if code {
        inline_code(core)
    } else {
        core.to_string()
    };
    if strike {
        s = format!("~~{s}~~");
    }
    if em {
        s = format!("_{s}_");
    }
    if strong {
        s = format!("**{s}**");
    }
    if let Some(h) = link {
        s = format!("[{s}]({h})");
    }
    format!("{lead}{s}{trail}")
}

fn render_date(ts: Option<&Value>) -> String {
    let ms = match ts {
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    };
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "[date]".to_string())
}

fn media_placeholder(n: &Value) -> String {
    let alt = one_line(&clean_text(attr_str(n, "alt").unwrap_or("")));
    if alt.is_empty() {
        "[attachment]".to_string()
    } else {
        format!("[attachment: {}]", cap_chars(&alt, MAX_NOTICE_FIELD_CHARS))
    }
}

#[cfg(test)]
mod tests;
