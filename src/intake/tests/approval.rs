//! The approval command (`drafter approve` in a comment), from webhooks and in plain text, over the fixtures of the
//! parent module.

use super::*;

fn approve_payload(author: Value, body: Value) -> Value {
    let mut p = comment(author.clone(), body);
    p["comment"]["updateAuthor"] = author;
    p["comment"]["created"] = json!("2025-03-02T10:35:00.123+0100");
    p
}

fn created_at() -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(1_740_908_100_123)
}

#[test]
fn jira_times_parse() {
    assert_eq!(jira_time("2025-03-02T10:35:00.123+0100"), created_at());
    assert_eq!(jira_time("2025-03-02T09:35:00.123Z"), created_at());
    assert_eq!(jira_time("yesterday"), None);
}

#[test]
fn payloads_name_their_issue_by_key_or_id() {
    let cloud = comment(json!({"accountId": "a"}), json!("x"));
    assert_eq!(payload_issue(&cloud), PayloadIssue::Key("PROJ-17".into()));
    let dc = json!({"webhookEvent": "comment_created",
        "comment": {"id": "20002", "self": "https://jira.example.com/jira/rest/api/2/issue/10042/comment/20002"}});
    assert_eq!(payload_issue(&dc), PayloadIssue::Id("10042".into()));
    let by_id = json!({"issue": {"id": 10043}});
    assert_eq!(payload_issue(&by_id), PayloadIssue::Id("10043".into()));
    for unnamed in [
        json!({"webhookEvent": "comment_created", "comment": {"id": "1"}}),
        json!({"comment": {"self": "https://j.example.com/rest/api/2/issue/OPS-7/comment/1"}}),
        json!({"comment": {"self": "not a url"}}),
    ] {
        assert_eq!(payload_issue(&unnamed), PayloadIssue::Unnamed, "{unnamed}");
    }
}

fn para(content: Value) -> Value {
    json!({"type": "paragraph", "content": content})
}

fn adf(blocks: Value) -> Value {
    json!({"type": "doc", "version": 1, "content": blocks})
}

#[test]
fn wiki_approve_command_is_an_approval() {
    let ann = json!({"accountId": "712020:ann", "displayName": "Ann"});
    for body in [
        "drafter approve".to_string(),
        "  DRAFTER   Approve \t".to_string(),
        format!("[~accountid:{BOT}] drafter approve"),
        format!("[~accountid:{BOT}]: drafter approve"),
        format!("Looks right to me.\r\n[~accountid:{BOT}] drafter approve\r\nThanks"),
    ] {
        let p = approve_payload(ann.clone(), json!(body));
        assert_eq!(
            approval_from_webhook(&p, None, &cloud()),
            Some(ApprovalComment {
                ticket: "PROJ-17".into(),
                project: "PROJ".into(),
                author: "712020:ann".into(),
                comment_id: "10501".into(),
                created: created_at(),
            }),
            "{body:?}"
        );
        // Never a new job as well.
        assert_eq!(
            ignored(decide(&p, Some("h"), None, &cloud())),
            "comment is the approval command (drafter approve), not a trigger",
            "{body:?}"
        );
    }
}

#[test]
fn adf_approve_command_is_an_approval() {
    let ann = json!({"accountId": "712020:ann"});
    let bodies = [
        adf(json!([para(
            json!([{"type": "text", "text": "drafter approve"}])
        )])),
        adf(json!([para(json!([
            {"type": "mention", "attrs": {"id": BOT, "text": "@drafter bot"}},
            {"type": "text", "text": " Drafter "},
            {"type": "text", "text": "approve", "marks": [{"type": "strong"}]}]))])),
        adf(json!([
            para(json!([{"type": "text", "text": "Scope checked."}])),
            para(
                json!([{"type": "text", "text": "ok"}, {"type": "hardBreak"},
                {"type": "text", "text": "drafter approve"}])
            ),
        ])),
    ];
    for body in &bodies {
        let p = approve_payload(ann.clone(), body.clone());
        let a = approval_from_webhook(&p, None, &cloud()).unwrap_or_else(|| panic!("{body}"));
        assert_eq!(a.author, "712020:ann");
        assert!(matches!(
            decide(&p, None, None, &cloud()),
            Verdict::Ignore(_)
        ));
        // The same comment as `GET .../comment` lists it.
        assert_eq!(
            approval_from_comment(&p["comment"], "PROJ-17", &cloud()),
            Some(a)
        );
    }
    // The Markdown of a plain ADF command, as a poll would see it through `adf_to_markdown`.
    assert!(approval_in_comment(&adf_to_markdown(&bodies[0])));
    assert!(approval_in_comment(&adf_to_markdown(&bodies[2])));
}

#[test]
fn sentences_quotes_and_code_are_not_commands() {
    let ann = json!({"accountId": "712020:ann"});
    let wiki = [
        "please drafter approve this".to_string(),
        "I will approve it tomorrow".to_string(),
        "drafter approve!".to_string(),
        "drafter approves".to_string(),
        "drafter: approve".to_string(),
        "[~accountid:712020:ben] drafter approve".to_string(),
        "{quote}\ndrafter approve\n{quote}".to_string(),
        "{code:bash}\ndrafter approve\n{code}".to_string(),
        "{noformat}drafter approve{noformat}".to_string(),
        "bq. drafter approve".to_string(),
        "```\ndrafter approve\n```".to_string(),
        format!("[~accountid:{BOT}] please drafter approve"),
        "[~accountid:712020:bot-0001 drafter approve".to_string(),
        "approve".to_string(),
        "".to_string(),
    ];
    for body in &wiki {
        let p = approve_payload(ann.clone(), json!(body));
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None, "{body:?}");
        assert!(!approval_in_body(&json!(body), &cloud()), "{body:?}");
    }
    // A sentence mentioning the bot and "approve" is still an ordinary trigger.
    let p = approve_payload(
        ann.clone(),
        json!(format!(
            "[~accountid:{BOT}] can you approve the plan and fix it"
        )),
    );
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    assert!(matches!(
        decide(&p, None, None, &cloud()),
        Verdict::Trigger(_)
    ));
    // ADF: quotes, code blocks, other inline nodes on the line, someone else's mention.
    for body in [
        adf(json!([{"type": "blockquote", "content": [
            para(json!([{"type": "text", "text": "drafter approve"}]))]}])),
        adf(
            json!([{"type": "codeBlock", "content": [{"type": "text", "text": "drafter approve"}]}]),
        ),
        adf(json!([para(
            json!([{"type": "text", "text": "drafter approve "},
            {"type": "emoji", "attrs": {"shortName": ":tada:"}}])
        )])),
        adf(json!([para(
            json!([{"type": "mention", "attrs": {"id": "712020:ben"}},
            {"type": "text", "text": " drafter approve"}])
        )])),
        adf(json!([para(
            json!([{"type": "text", "text": "please drafter approve"}])
        )])),
    ] {
        let p = approve_payload(ann.clone(), body.clone());
        assert_eq!(approval_from_webhook(&p, None, &cloud()), None, "{body}");
    }
    // Not a comment event, or no usable ids.
    let mut p = approve_payload(ann.clone(), json!("drafter approve"));
    p["webhookEvent"] = json!("comment_updated");
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    let mut p = approve_payload(ann.clone(), json!("drafter approve"));
    p["comment"]["id"] = json!("1/../2");
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    let mut p = approve_payload(ann, json!("drafter approve"));
    p["issue"]["key"] = json!("../x");
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
}

#[test]
fn the_bots_own_or_someone_elses_edit_never_approves() {
    let p = approve_payload(json!({"accountId": BOT}), json!("drafter approve"));
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "comment written by the bot"
    );
    // Written by Ann, edited by Ben into an approval: nobody's approval.
    let mut p = approve_payload(json!({"accountId": "712020:ann"}), json!("drafter approve"));
    p["comment"]["updateAuthor"] = json!({"accountId": "712020:ben"});
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
    // Still not a trigger.
    assert!(matches!(
        decide(&p, None, None, &cloud()),
        Verdict::Ignore(_)
    ));
    // No author at all.
    let mut p = approve_payload(json!({"accountId": "712020:ann"}), json!("drafter approve"));
    p["comment"].as_object_mut().unwrap().remove("author");
    assert_eq!(approval_from_webhook(&p, None, &cloud()), None);
}

#[test]
fn data_center_approvals() {
    let p = json!({"webhookEvent": "comment_created",
        "comment": {"id": "20002", "self": "https://jira.example.com/rest/api/2/issue/10042/comment/20002",
            "author": {"name": "alice", "key": "JIRAUSER10000"},
            "updateAuthor": {"name": "alice", "key": "JIRAUSER10000"},
            "body": "[~Drafter] drafter approve"}});
    // Without `created` it is still recognised, but carries no time (and so approves nothing).
    assert_eq!(
        approval_from_webhook(&p, Some("OPS-7"), &dc()),
        Some(ApprovalComment {
            ticket: "OPS-7".into(),
            project: "OPS".into(),
            author: "alice".into(),
            comment_id: "20002".into(),
            created: None,
        })
    );
    assert!(matches!(
        decide(&p, None, Some("OPS-7"), &dc()),
        Verdict::Ignore(_)
    ));
    // No key anywhere: no approval (and no job).
    assert_eq!(approval_from_webhook(&p, None, &dc()), None);
    // The bot by name.
    let mut own = p.clone();
    own["comment"]["author"] = json!({"name": "DRAFTER", "key": "JIRAUSER10100"});
    own["comment"]["updateAuthor"] = own["comment"]["author"].clone();
    assert_eq!(approval_from_webhook(&own, Some("OPS-7"), &dc()), None);
    // A listed v2 comment.
    assert_eq!(
        approval_from_comment(&p["comment"], "OPS-7", &dc()).map(|a| a.author),
        Some("alice".to_string())
    );
    assert_eq!(approval_from_comment(&p["comment"], "bad", &dc()), None);
}

#[test]
fn approval_in_plain_text() {
    assert!(approval_in_comment("drafter approve"));
    assert!(approval_in_comment("LGTM\n  Drafter Approve  \n"));
    assert!(approval_in_comment("@drafter drafter approve"));
    assert!(approval_in_comment("[~accountid:anyone] drafter approve"));
    assert!(!approval_in_comment("@drafter please drafter approve"));
    assert!(!approval_in_comment("we should drafter approve soon"));
    assert!(!approval_in_comment("> drafter approve"));
    assert!(!approval_in_comment("```\ndrafter approve\n```"));
    assert!(!approval_in_comment("drafter approve drafter approve"));
    assert!(!approval_in_comment(""));
}
