//! Writing: drafter's notices as wiki markup for Data Center, every piece of untrusted text escaped.

use std::fmt::Write as _;

use super::super::adf::clean_href;
use super::super::notice::Span;
use super::super::Notice;

/// Text as wiki markup that renders as exactly that text (inside a line: the caller starts every line itself, so a
/// `h1.` or `|` cannot begin one): brackets, braces, pipes and `!` always escaped; phrase
/// markers (`* _ - + ^ ~`) unless they sit inside a word (`DEMO-1-fix`, `snake_case` stay readable, and a job id
/// stays findable in the comment's source); `(` when it could open an icon such as `(x)`; `??`. A backslash
/// becomes `＼` (U+FF3C): in Jira's notation `\\` is a line break and `\` escapes the next character, so a literal
/// one cannot be written safely. Line breaks become spaces: the caller writes breaks as `\\`.
pub fn escape_wiki(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let word = |i: Option<usize>| {
        i.and_then(|i| c.get(i))
            .is_some_and(|x| x.is_alphanumeric())
    };
    for (i, &ch) in c.iter().enumerate() {
        match ch {
            '\\' => out.push('\u{ff3c}'),
            '\n' | '\r' => out.push(' '),
            '[' | ']' | '{' | '}' | '|' | '!' => {
                out.push('\\');
                out.push(ch);
            }
            '*' | '_' | '-' | '+' | '^' | '~' => {
                if !(word(i.checked_sub(1)) && word(Some(i + 1))) {
                    out.push('\\');
                }
                out.push(ch);
            }
            '?' => {
                if c.get(i + 1) == Some(&'?') || (i > 0 && c[i - 1] == '?') {
                    out.push('\\');
                }
                out.push(ch);
            }
            '(' => {
                // Icons are short: `(x)`, `(on)`, `(off)`, `(*r)`.
                if c.iter().skip(i + 1).take(4).any(|&x| x == ')') {
                    out.push('\\');
                }
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    out
}

/// A URL as a wiki link target: characters that would end or split the link are percent-encoded.
fn wiki_href(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    for ch in clean_href(h).chars() {
        match ch {
            '[' => out.push_str("%5B"),
            ']' => out.push_str("%5D"),
            '|' => out.push_str("%7C"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '!' => out.push_str("%21"),
            c => out.push(c),
        }
    }
    out
}

impl Notice {
    /// The notice as Jira wiki markup, for Data Center's REST v2 (`{"body": "<wiki>"}`): job ids, branches and
    /// commands as `{{monospace}}`, the pull request as `[text|url]`, line breaks as `\\`, and every other piece of
    /// text escaped ([`escape_wiki`]). One physical line.
    pub fn to_wiki(&self) -> String {
        let mut out = String::new();
        for span in self.spans() {
            match span {
                Span::Text(t) => out.push_str(&escape_wiki(&t)),
                Span::Code(t) if !t.trim().is_empty() => {
                    // `{{` right after `{{` or before `}}` would be read as part of the marker.
                    let _ = write!(out, "{{{{{}}}}}", escape_wiki(t.trim()));
                }
                Span::Link { text, href } if !text.is_empty() => {
                    let _ = write!(out, "[{}|{}]", escape_wiki(&text), wiki_href(&href));
                }
                Span::Break => out.push_str(" \\\\ "),
                _ => {}
            }
        }
        out.trim().to_string()
    }
}
