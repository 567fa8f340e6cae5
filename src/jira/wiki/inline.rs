//! Inline wiki markup as Markdown: phrases (`*strong*`, `??cite??` ...), `{{monospace}}`, links and mentions
//! (`[text|url]`, `[~user]`), images and attachments (`!file.png!`), `\\` breaks and `\X` escapes, each looking no
//! further than [`MAX_SPAN_CHARS`] for its end and nesting no deeper than [`MAX_INLINE_DEPTH`].

use super::super::adf::{cell_line, clean_href, inline_code, one_line, HARD_BREAK};
use super::Reader;

/// Phrases nested deeper than this are left as they are.
const MAX_INLINE_DEPTH: usize = 16;
/// How far (in characters) a phrase, link, image or monospace looks for its end.
const MAX_SPAN_CHARS: usize = 2000;
/// Characters a backslash escapes in Jira's renderer (`BackslashEscapeRendererComponent`).
const ESCAPABLE: &str = "-#*_+?^~|%{}[]()!@";

impl Reader {
    /// One table cell on one line, pipes escaped.
    pub(super) fn cell(&self, c: &str, depth: usize) -> String {
        cell_line(&self.inline(c.trim(), depth))
    }

    /// Inline markup of one line as Markdown.
    pub(super) fn inline(&self, s: &str, depth: usize) -> String {
        let c: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < c.len() {
            let ch = c[i];
            match ch {
                '\\' => match c.get(i + 1) {
                    Some('\\') => {
                        // `a \\ b` is a break between `a` and `b`: the spaces around it are not text.
                        while out.ends_with(' ') {
                            out.pop();
                        }
                        out.push_str(HARD_BREAK);
                        i += 2;
                        while c.get(i) == Some(&' ') {
                            i += 1;
                        }
                    }
                    Some(&n) if ESCAPABLE.contains(n) => {
                        out.push(n);
                        i += 2;
                    }
                    _ => {
                        out.push('\\');
                        i += 1;
                    }
                },
                '{' if c.get(i + 1) == Some(&'{') => match find_pair(&c, i + 2, '}', '}') {
                    Some(end) => {
                        let inner: String = c[i + 2..end].iter().collect();
                        let inner = unescape(&inner);
                        if !inner.trim().is_empty() {
                            out.push_str(&inline_code(&inner));
                        }
                        i = end + 2;
                    }
                    None => {
                        out.push_str("{{");
                        i += 2;
                    }
                },
                '[' => match find_char(&c, i + 1, ']') {
                    Some(end) => {
                        let inner: String = c[i + 1..end].iter().collect();
                        out.push_str(&self.link(&inner, depth));
                        i = end + 1;
                    }
                    None => {
                        out.push('[');
                        i += 1;
                    }
                },
                '!' => match image(&c, i) {
                    Some((text, end)) => {
                        out.push_str(&text);
                        i = end + 1;
                    }
                    None => {
                        out.push('!');
                        i += 1;
                    }
                },
                '?' if c.get(i + 1) == Some(&'?') => match self.phrase(&c, i, 2, depth) {
                    Some((text, end)) => {
                        out.push_str(&text);
                        i = end;
                    }
                    None => {
                        out.push_str("??");
                        i += 2;
                    }
                },
                '*' | '_' | '-' | '+' | '^' | '~' => match self.phrase(&c, i, 1, depth) {
                    Some((text, end)) => {
                        out.push_str(&text);
                        i = end;
                    }
                    None => {
                        out.push(ch);
                        i += 1;
                    }
                },
                _ => {
                    out.push(ch);
                    i += 1;
                }
            }
        }
        out
    }

    /// A phrase (`*strong*`, `??cite??` ...) opening at `i` with a marker `len` characters long: its Markdown and the
    /// index after its closing marker. The opening marker follows a non-word character and precedes a non-space;
    /// the closing one follows a non-space and precedes a non-word character, within [`MAX_SPAN_CHARS`].
    fn phrase(&self, c: &[char], i: usize, len: usize, depth: usize) -> Option<(String, usize)> {
        let m = c[i];
        if depth >= MAX_INLINE_DEPTH {
            return None;
        }
        if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == m) {
            return None;
        }
        let first = *c.get(i + len)?;
        if first.is_whitespace() || first == m {
            return None;
        }
        let limit = c.len().min(i + len + MAX_SPAN_CHARS);
        let mut j = i + len + 1;
        while j + len <= limit {
            let closes = c[j..j + len].iter().all(|&x| x == m)
                && !c[j - 1].is_whitespace()
                && c.get(j + len)
                    .is_none_or(|n| !n.is_alphanumeric() && *n != m);
            if closes {
                let inner: String = c[i + len..j].iter().collect();
                let inner = self.inline(&inner, depth + 1);
                let md = match m {
                    '*' => format!("**{inner}**"),
                    '_' | '?' => format!("_{inner}_"),
                    '-' => format!("~~{inner}~~"),
                    // Inserted, superscript and subscript have no Markdown: their text stays.
                    _ => inner,
                };
                return Some((md, j + len));
            }
            j += 1;
        }
        None
    }

    /// The inside of `[...]`: a mention, a link, an attachment or anchor reference, or (anything else, such as
    /// `arr[0]`) the brackets as typed.
    fn link(&self, inner: &str, depth: usize) -> String {
        let t = inner.trim();
        if let Some(user) = t.strip_prefix('~') {
            let user = user.trim();
            let user = user
                .strip_prefix("accountid:")
                .or_else(|| user.strip_prefix("accountId:"))
                .unwrap_or(user)
                .trim();
            return if user.is_empty() {
                "@someone".to_string()
            } else {
                format!("@{user}")
            };
        }
        let (text, target) = match t.split_once('|') {
            Some((text, rest)) => (
                Some(text.trim()),
                rest.split('|').next().unwrap_or("").trim(),
            ),
            None => (None, t),
        };
        let text = text
            .map(|x| self.inline(x, depth + 1))
            .filter(|x| !x.trim().is_empty());
        if is_url(target) {
            let href = clean_href(target);
            return match text {
                Some(text) => format!("[{text}]({href})"),
                None => href,
            };
        }
        if let Some(file) = target.strip_prefix('^') {
            let file = one_line(file.trim());
            return match text {
                Some(text) => format!("{text} [attachment: {file}]"),
                None => format!("[attachment: {file}]"),
            };
        }
        match (text, target.strip_prefix('#')) {
            (Some(text), Some(_)) => text,
            (Some(text), None) if !target.is_empty() => format!("{text} ({target})"),
            (Some(text), None) => text,
            (None, Some(anchor)) if !anchor.is_empty() => anchor.to_string(),
            (None, _) => format!("[{}]", self.inline(inner, depth + 1)),
        }
    }
}

/// `!file.png!`, `!file.png|thumbnail!`, `!https://x/y.png!` at `i`: its placeholder and the index of the closing
/// `!`. Prose exclamations (`Wow! Great!`) are not images: the name must start right after the `!` and look like a
/// file (a dot) or a URL.
fn image(c: &[char], i: usize) -> Option<(String, usize)> {
    let end = find_char(c, i + 1, '!')?;
    let inner: String = c[i + 1..end].iter().collect();
    let name = inner.split('|').next().unwrap_or("");
    if name.is_empty()
        || name.starts_with(char::is_whitespace)
        || name.ends_with(char::is_whitespace)
    {
        return None;
    }
    if is_url(name) {
        return Some((format!("[image: {}]", clean_href(name)), end));
    }
    if !name.contains('.') {
        return None;
    }
    Some((format!("[attachment: {}]", one_line(name)), end))
}

fn is_url(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    ["http://", "https://", "ftp://", "mailto:", "file:"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// The index of `ch` in `c` from `from`, within [`MAX_SPAN_CHARS`]; escaped characters (`\]`) do not count.
fn find_char(c: &[char], from: usize, ch: char) -> Option<usize> {
    let limit = c.len().min(from.saturating_add(MAX_SPAN_CHARS));
    let mut i = from;
    while i < limit {
        if c[i] == '\\' {
            i += 2;
            continue;
        }
        if c[i] == ch {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The index of the pair `a b` in `c` from `from`, within [`MAX_SPAN_CHARS`]; escaped characters do not count.
fn find_pair(c: &[char], from: usize, a: char, b: char) -> Option<usize> {
    let limit = c.len().min(from.saturating_add(MAX_SPAN_CHARS));
    let mut i = from;
    while i + 1 < limit {
        if c[i] == '\\' {
            i += 2;
            continue;
        }
        if c[i] == a && c[i + 1] == b {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `\X` escapes resolved (inside monospace, where the text is shown as code).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(ch) = it.next() {
        if ch == '\\' {
            if let Some(&n) = it.peek() {
                if ESCAPABLE.contains(n) {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(ch);
    }
    out
}
