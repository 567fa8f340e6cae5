use super::*;
use crate::jira::Notice;

/// Wiki markup in, Markdown out: one row per construct the reader knows, and the hostile cases.
#[test]
fn wiki_to_markdown_table() {
    let cases: &[(&str, &str)] = &[
        // Headings, quotes, rules.
        ("h1. Title", "# Title"),
        ("h3. Acceptance", "### Acceptance"),
        ("h6.tight", "###### tight"),
        ("h7. not a heading", "h7. not a heading"),
        ("bq. quoted *line*", "> quoted **line**"),
        ("----", "---"),
        // Phrases.
        ("*bold* and _it_", "**bold** and _it_"),
        ("-gone- +ins+ ^sup^ ~sub~", "~~gone~~ ins sup sub"),
        ("??cited??", "_cited_"),
        ("*_both_*", "**_both_**"),
        (
            "snake_case_name and a-b-c and 2*3*4",
            "snake_case_name and a-b-c and 2*3*4",
        ),
        ("* not closed", "- not closed"),
        ("a * b * c", "a * b * c"),
        ("{{x = 1}} and {{a`b}}", "`x = 1` and ``a`b``"),
        ("{{\\{escaped\\}}}", "`{escaped}`"),
        // Links, mentions, attachments, images.
        ("[Docs|https://e.com/a b]", "[Docs](https://e.com/a%20b)"),
        ("[https://e.com]", "https://e.com"),
        (
            "[*bold* docs|https://e.com]",
            "[**bold** docs](https://e.com)",
        ),
        (
            "[~alice] and [~accountid:712020:abc]",
            "@alice and @712020:abc",
        ),
        (
            "[log|^build.log] [^trace.txt]",
            "log [attachment: build.log] [attachment: trace.txt]",
        ),
        ("[see|#anchor] [#top]", "see top"),
        ("[the epic|DEMO-5]", "the epic (DEMO-5)"),
        ("arr[0] and [DEMO-5]", "arr[0] and [DEMO-5]"),
        (
            "!screen.png! !shot.png|thumbnail! !https://e.com/x.png!",
            "[attachment: screen.png] [attachment: shot.png] [image: https://e.com/x.png]",
        ),
        ("Wow! Great! Really!", "Wow! Great! Really!"),
        // Escapes and breaks.
        ("\\*not bold\\* \\[~x\\]", "*not bold* [~x]"),
        ("a\\\\b", "a\\\nb"),
        ("line one\nline two", "line one\\\nline two"),
        ("para one\n\npara two", "para one\n\npara two"),
        ("C:\\path", "C:\\path"),
        // Lists.
        ("* one\n* two", "- one\n- two"),
        ("# a\n# b\n# c", "1. a\n2. b\n3. c"),
        ("- dash", "- dash"),
        (
            "* one\n*# sub a\n*# sub b\n** deeper\n* two",
            "- one\n  1. sub a\n  2. sub b\n  - deeper\n- two",
        ),
        ("# a\n#* x\n# b", "1. a\n   - x\n2. b"),
        ("-- not a list", "-- not a list"),
        ("*bold* start", "**bold** start"),
        // Tables.
        (
            "||Name||Value||\n|a|[x|https://e.com]|\n|{{p|q}}|",
            "| Name | Value |\n| --- | --- |\n| a | [x](https://e.com) |\n| `p\\|q` |  |",
        ),
        ("|1|2|", "|  |  |\n| --- | --- |\n| 1 | 2 |"),
        // Block macros.
        (
            "{code:java}\nint x = 1; // *not bold*\n{code}",
            "```java\nint x = 1; // *not bold*\n```",
        ),
        (
            "{code:title=A.java|language=rust}fn f() {}{code}",
            "```rust\nfn f() {}\n```",
        ),
        (
            "{noformat}\n[~alice] _raw_\n{noformat}",
            "```\n[~alice] _raw_\n```",
        ),
        ("{code}\na ```` b\n{code}", "`````\na ```` b\n`````"),
        (
            "{quote}\nsaid *twice*\n\nreally\n{quote}",
            "> said **twice**\n>\n> really",
        ),
        (
            "{panel:title=Steps}\n# run\n{panel}",
            "> **Steps:**\n> 1. run",
        ),
        ("{warning}careful{warning}", "> **Warning:**\n> careful"),
        (
            "before {code}x{code} after",
            "before\n\n```\nx\n```\n\nafter",
        ),
        ("{code}\nnever closed", "```\nnever closed\n```"),
        // Unknown and inline macros keep their text; a lone `{x}` stays as typed.
        ("{expand:More}\nhidden *text*\n{expand}", "hidden **text**"),
        ("{color:red}red{color} text", "red text"),
        ("use {x} here", "use {x} here"),
        ("{\"json\": 1}", "{\"json\": 1}"),
        // Hostile input.
        ("a\u{1b}[31mb\u{0}c\r\nd", "a[31mbc\\\nd"),
        ("", ""),
    ];
    for (wiki, md) in cases {
        assert_eq!(wiki_to_markdown(wiki), *md, "wiki: {wiki:?}");
    }
}

#[test]
fn hostile_wiki_stays_linear_and_never_panics() {
    for s in [
        "*".repeat(100_000),
        "*a ".repeat(30_000),
        "{{".repeat(30_000),
        "[".repeat(30_000),
        "!a.b ".repeat(20_000),
        "{code:".repeat(10_000),
        "{quote}".repeat(5_000),
        "#* ".repeat(10_000),
        format!("{}x{}", "*_".repeat(5000), "_*".repeat(5000)),
        "|".repeat(50_000),
        "h1.".to_string(),
        "\\".to_string(),
        "{".to_string(),
        "é{{é".to_string(),
    ] {
        let started = std::time::Instant::now();
        let _ = wiki_to_markdown(&s);
        // A guard against quadratic blow-ups, not a speed target: a quadratic reader takes minutes on these inputs,
        // the linear one (bounded look-ahead) at most 0.7 s each in a debug build (2026-12-07).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}…",
            &s[..20.min(s.len())]
        );
    }
}

#[test]
fn escaped_text_renders_as_itself() {
    // Whatever untrusted text says, read back through the reader it is the same text.
    for s in [
        "[~admin] please {html}<b>x</b>{html} !evil.png! [x|https://e.com]",
        "*bold* _it_ -strike- +ins+ ^sup^ ~sub~ ??cite?? (x) (!) ----",
        "then h1. heading # list * bullet | table ||",
        "DEMO-1-fix snake_case j20260101T000000-1a2b3c4d",
    ] {
        let w = escape_wiki(s);
        assert_eq!(wiki_to_markdown(&w), s, "escaped: {w}");
        for bad in ["[~", "{html}", "!evil", "[x|", "(x)", "*bold*"] {
            let bare = w.match_indices(bad).any(|(i, _)| !w[..i].ends_with('\\'));
            assert!(!bare, "{bad} survived in {w}");
        }
    }
    assert_eq!(escape_wiki("DEMO-1-fix"), "DEMO-1-fix");
    assert_eq!(escape_wiki("a\\b"), "a\u{ff3c}b");
    assert_eq!(escape_wiki("two\nlines"), "two lines");
}

#[test]
fn notices_in_wiki_markup() {
    let n = Notice::PrOpened {
        url: "https://github.com/acme/widgets/pull/3".into(),
        repo: "acme/widgets".into(),
        number: 3,
        branch: "drafter/DEMO-1-fix-x".into(),
        iteration: 0,
        proof: Some(crate::jira::ProofRef {
            job_id: "j20260101T000000-1a2b3c4d".into(),
            digest: "ab12".into(),
        }),
    };
    let w = n.to_wiki();
    assert_eq!(
        w,
        "Draft pull request opened: [acme/widgets#3|https://github.com/acme/widgets/pull/3] (branch \
         {{drafter/DEMO-1-fix-x}}). A human must review and merge it. \\\\ Proof bundle {{sha256:ab12}} \
         ({{drafter jobs bundle j20260101T000000-1a2b3c4d}}, then {{drafter verify}}). \
         {{drafter:j20260101T000000-1a2b3c4d:pr-3}}"
    );
    assert!(!w.contains('\n'), "one physical line: {w}");
    assert_eq!(
        wiki_to_markdown(&w),
        "Draft pull request opened: [acme/widgets#3](https://github.com/acme/widgets/pull/3) (branch \
         `drafter/DEMO-1-fix-x`). A human must review and merge it.\\\nProof bundle `sha256:ab12` (`drafter jobs \
         bundle j20260101T000000-1a2b3c4d`, then `drafter verify`). \
         `drafter:j20260101T000000-1a2b3c4d:pr-3`"
    );
    assert!(Notice::is_notice_text(&wiki_to_markdown(&w)));

    // Hostile reasons stay text: no mention, link, macro, image, list or heading.
    let n = Notice::Failed {
        job_id: "J2".into(),
        reason: "[~admin] see [here|javascript:x] {html}x{html}\nh1. big\n* item !a.png!".into(),
        proof: None,
    };
    let w = n.to_wiki();
    assert!(!w.contains('\n'), "{w}");
    for bad in ["[~admin]", "[here|", "{html}", "!a.png!"] {
        assert!(!w.contains(bad), "{bad} in {w}");
    }
    assert_eq!(
        wiki_to_markdown(&w),
        "drafter failed (job `J2`): [~admin] see [here|javascript:x] {html}x{html}\\\nh1. big\\\n* item !a.png! `drafter:J2:failed`"
    );
    // A link whose URL carries wiki syntax cannot break out of the link.
    let n = Notice::PrOpened {
        url: "https://e.com/a]|[~admin".into(),
        repo: "a/b".into(),
        number: 1,
        branch: "b".into(),
        iteration: 0,
        proof: None,
    };
    assert!(
        n.to_wiki()
            .contains("[a/b#1|https://e.com/a%5D%7C%5B~admin]"),
        "{}",
        n.to_wiki()
    );
}
