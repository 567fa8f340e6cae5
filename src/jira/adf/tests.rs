use super::*;
use serde_json::json;

fn doc(content: Value) -> Value {
    json!({"type": "doc", "version": 1, "content": content})
}
fn p(content: Value) -> Value {
    json!({"type": "paragraph", "content": content})
}
fn t(s: &str) -> Value {
    json!({"type": "text", "text": s})
}
fn tm(s: &str, marks: Value) -> Value {
    json!({"type": "text", "text": s, "marks": marks})
}
fn md(content: Value) -> String {
    adf_to_markdown(&doc(content))
}

#[test]
fn paragraphs_and_marks() {
    let out = md(json!([
        p(json!([
            t("plain "),
            tm("bold", json!([{"type": "strong"}])),
            t(" "),
            tm("it", json!([{"type": "em"}])),
            t(" "),
            tm("x()", json!([{"type": "code"}])),
            t(" "),
            tm("gone", json!([{"type": "strike"}])),
            t(" "),
            tm(
                "site",
                json!([{"type": "link", "attrs": {"href": "https://e.com/a b"}}])
            ),
            t(" "),
            tm(
                "u",
                json!([{"type": "underline"}, {"type": "textColor", "attrs": {"color": "#f00"}}])
            ),
        ])),
        p(json!([tm(
            " both ",
            json!([{"type": "strong"}, {"type": "em"}])
        )])),
    ]));
    assert_eq!(
        out,
        "plain **bold** _it_ `x()` ~~gone~~ [site](https://e.com/a%20b) u\n\n**_both_**"
    );
}

#[test]
fn code_mark_with_backticks() {
    let out = md(json!([p(json!([tm("a`b", json!([{"type": "code"}]))]))]));
    assert_eq!(out, "``a`b``");
    let out = md(json!([p(json!([tm("`x`", json!([{"type": "code"}]))]))]));
    assert_eq!(out, "`` `x` ``");
}

#[test]
fn headings() {
    let out = md(json!([
        {"type": "heading", "attrs": {"level": 2}, "content": [t("Steps")]},
        {"type": "heading", "attrs": {"level": 9}, "content": [t("deep")]},
        {"type": "heading", "content": [t("no level")]},
        {"type": "heading", "attrs": {"level": 3}, "content": []},
    ]));
    assert_eq!(out, "## Steps\n\n###### deep\n\n# no level");
}

#[test]
fn nested_lists() {
    let out = md(json!([
        {"type": "bulletList", "content": [
            {"type": "listItem", "content": [
                p(json!([t("one")])),
                {"type": "orderedList", "attrs": {"order": 3}, "content": [
                    {"type": "listItem", "content": [p(json!([t("three")]))]},
                    {"type": "listItem", "content": [p(json!([t("four")])),
                        {"type": "bulletList", "content": [
                            {"type": "listItem", "content": [p(json!([t("deep")]))]}
                        ]}
                    ]}
                ]}
            ]},
            {"type": "listItem", "content": [p(json!([t("two")]))]},
        ]},
        {"type": "orderedList", "content": [
            {"type": "listItem", "content": [p(json!([t("a")]))]},
            {"type": "listItem", "content": [p(json!([t("b")]))]},
        ]},
    ]));
    assert_eq!(
        out,
        "- one\n  3. three\n  4. four\n     - deep\n- two\n\n1. a\n2. b"
    );
}

#[test]
fn code_blocks_choose_a_long_enough_fence() {
    let out = md(json!([
        {"type": "codeBlock", "attrs": {"language": "rust"}, "content": [t("fn main() {}\n")]},
        {"type": "codeBlock", "content": [t("a ```` b")]},
        {"type": "codeBlock", "attrs": {"language": "x\n```evil"}, "content": [t("y")]},
    ]));
    assert_eq!(
        out,
        "```rust\nfn main() {}\n```\n\n`````\na ```` b\n`````\n\n```xevil\ny\n```"
    );
}

#[test]
fn quotes_rules_breaks() {
    let out = md(json!([
        {"type": "blockquote", "content": [p(json!([t("said")])), p(json!([t("twice")]))]},
        {"type": "rule"},
        p(json!([t("a"), {"type": "hardBreak"}, t("b")])),
    ]));
    assert_eq!(out, "> said\n>\n> twice\n\n---\n\na\\\nb");
}

#[test]
fn inline_nodes() {
    let out = md(json!([p(json!([
        {"type": "mention", "attrs": {"id": "712020:abc", "text": "@Ben"}}, t(" "),
        {"type": "mention", "attrs": {"id": "712020:abc", "text": "Ann"}}, t(" "),
        {"type": "mention", "attrs": {"id": "712020:xyz"}}, t(" "),
        {"type": "emoji", "attrs": {"shortName": ":smile:", "id": "1f604", "text": "😄"}}, t(" "),
        {"type": "date", "attrs": {"timestamp": "1582152559000"}}, t(" "),
        {"type": "date", "attrs": {"timestamp": 0}}, t(" "),
        {"type": "date", "attrs": {"timestamp": "soon"}}, t(" "),
        {"type": "status", "attrs": {"text": "IN PROGRESS", "color": "blue"}}, t(" "),
        {"type": "inlineCard", "attrs": {"url": "https://x.atlassian.net/browse/A-1"}},
    ]))]));
    assert_eq!(
        out,
        "@Ben @Ann @712020:xyz :smile: 2020-02-19 1970-01-01 [date] IN PROGRESS https://x.atlassian.net/browse/A-1"
    );
}

#[test]
fn cards_panels_media_expand() {
    let out = md(json!([
        {"type": "blockCard", "attrs": {"url": "https://github.com/a/b"}},
        {"type": "panel", "attrs": {"panelType": "warning"}, "content": [p(json!([t("careful")]))]},
        {"type": "mediaSingle", "attrs": {"layout": "center"}, "content": [
            {"type": "media", "attrs": {"id": "abc", "type": "file", "collection": "c"}}
        ]},
        {"type": "mediaGroup", "content": [
            {"type": "media", "attrs": {"id": "d", "type": "file", "alt": "log.txt"}}
        ]},
        {"type": "expand", "attrs": {"title": "More"}, "content": [p(json!([t("hidden")]))]},
    ]));
    assert_eq!(
        out,
        "https://github.com/a/b\n\n> **Warning:**\n> careful\n\n[attachment]\n\n[attachment: log.txt]\n\n**More**\n\nhidden"
    );
}

#[test]
fn tables() {
    let cell =
        |kind: &str, s: &str| json!({"type": kind, "attrs": {}, "content": [p(json!([t(s)]))]});
    let out = md(
        json!([{"type": "table", "attrs": {"isNumberColumnEnabled": false}, "content": [
            {"type": "tableRow", "content": [cell("tableHeader", "Name"), cell("tableHeader", "Value")]},
            {"type": "tableRow", "content": [cell("tableCell", "a|b"), {"type": "tableCell", "content": [
                p(json!([t("x"), {"type": "hardBreak"}, t("y")]))
            ]}]},
            {"type": "tableRow", "content": [cell("tableCell", "short")]},
        ]}]),
    );
    assert_eq!(
        out,
        "| Name | Value |\n| --- | --- |\n| a\\|b | x<br>y |\n| short |  |"
    );
    // No header row: an empty header keeps every row as data.
    let out = md(json!([{"type": "table", "content": [
        {"type": "tableRow", "content": [cell("tableCell", "1")]},
    ]}]));
    assert_eq!(out, "|  |\n| --- |\n| 1 |");
}

#[test]
fn task_lists() {
    let out = md(
        json!([{"type": "taskList", "attrs": {"localId": "l"}, "content": [
            {"type": "taskItem", "attrs": {"localId": "1", "state": "DONE"}, "content": [t("done")]},
            {"type": "taskItem", "attrs": {"localId": "2", "state": "TODO"}, "content": [t("todo")]},
            {"type": "taskList", "content": [
                {"type": "taskItem", "attrs": {"state": "TODO"}, "content": [t("sub")]}
            ]},
        ]}]),
    );
    assert_eq!(out, "- [x] done\n- [ ] todo\n  - [ ] sub");
}

#[test]
fn unknown_nodes_keep_their_text() {
    let out = md(json!([
        {"type": "layoutSection", "content": [
            {"type": "layoutColumn", "attrs": {"width": 50}, "content": [p(json!([t("left")]))]},
            {"type": "layoutColumn", "content": [p(json!([t("right")]))]},
        ]},
        {"type": "decisionList", "content": [
            {"type": "decisionItem", "content": [t("we decided")]}
        ]},
        p(json!([{"type": "fancyInline", "content": [t("inner")]}])),
    ]));
    assert_eq!(out, "left\n\nright\n\nwe decided\n\ninner");
}

#[test]
fn malformed_input_never_panics() {
    let cases = [
        json!(null),
        json!(42),
        json!("plain *wiki* string"),
        json!([]),
        json!({}),
        json!({"type": "doc"}),
        json!({"type": "doc", "content": "nope"}),
        json!({"type": "doc", "content": [1, "x", null, [], {"type": 5}]}),
        json!({"type": "doc", "content": [{"type": "text"}]}),
        json!({"type": "doc", "content": [{"type": "text", "text": 5, "marks": "bold"}]}),
        json!({"type": "doc", "content": [{"type": "text", "text": "x", "marks": [1, {"type": "link"}]}]}),
        json!({"type": "doc", "content": [{"type": "heading", "attrs": {"level": "two"}, "content": [t("h")]}]}),
        json!({"type": "doc", "content": [{"type": "orderedList", "attrs": {"order": -3}, "content": [p(json!([t("x")]))]}]}),
        json!({"type": "doc", "content": [{"type": "table", "content": [{"type": "tableRow"}, 7]}]}),
        json!({"type": "doc", "content": [{"type": "date", "attrs": {"timestamp": 1e300}}]}),
        json!({"type": "doc", "content": [{"type": "mention", "attrs": null}]}),
        json!({"type": "doc", "content": [{"type": "codeBlock", "attrs": {"language": 3}, "content": [{"type": "hardBreak"}]}]}),
    ];
    for c in &cases {
        let _ = adf_to_markdown(c);
    }
    assert_eq!(
        adf_to_markdown(&json!("plain\u{1b}[31m text")),
        "plain[31m text"
    );
    assert_eq!(
        adf_to_markdown(&json!({"type": "doc", "content": [{"type": "text", "text": "loose"}]})),
        "loose"
    );
    assert_eq!(
        adf_to_markdown(&json!({"type": "doc", "content": [{"type": "text"}]})),
        ""
    );
}

#[test]
fn deep_nesting_is_cut_not_crashed() {
    let mut node = p(json!([t("bottom")]));
    for _ in 0..500 {
        node = json!({"type": "blockquote", "content": [node]});
    }
    let out = adf_to_markdown(&doc(json!([node, p(json!([t("after")]))])));
    assert!(out.contains(DEPTH_MARKER));
    assert!(!out.contains("bottom"));
    assert!(out.ends_with("after"));
    assert_eq!(out.matches(DEPTH_MARKER).count(), 1);

    let mut node = t("leaf");
    for _ in 0..500 {
        node = json!({"type": "bulletList", "content": [{"type": "listItem", "content": [node]}]});
    }
    let _ = adf_to_markdown(&doc(json!([node])));
}

#[test]
fn control_characters_are_stripped() {
    let out = md(json!([p(json!([t("a\u{0}b\u{7}c\r\nd")]))]));
    assert_eq!(out, "abc\nd");
}
