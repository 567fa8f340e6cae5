//! Intake's unit tests: the payload fixtures (Cloud and Data Center deliveries, search hits, comments) and the
//! webhook, poll and mention cases; the approval cases, which use the same fixtures, are in `tests/approval.rs`.

use super::*;
use crate::config::{JiraAuth, Secret};
use serde_json::json;

const BOT: &str = "712020:bot-0001";

fn cloud() -> JiraConfig {
    JiraConfig {
        base_url: "https://x.atlassian.net".into(),
        bot_account_id: BOT.into(),
        bot_username: None,
        flavor: JiraFlavor::Cloud,
        auth: JiraAuth::Basic {
            email: "bot@example.com".into(),
            token: Secret::new("t").into(),
        },
        acceptance_criteria_fields: Vec::new(),
    }
}

fn dc() -> JiraConfig {
    JiraConfig {
        bot_account_id: "JIRAUSER10100".into(),
        bot_username: Some("drafter".into()),
        flavor: JiraFlavor::Datacenter,
        ..cloud()
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn decide(p: &Value, header: Option<&str>, hint: Option<&str>, j: &JiraConfig) -> Verdict {
    from_webhook(p, header, hint, j, 5, now())
}

fn job(d: Verdict) -> NewJob {
    match d {
        Verdict::Trigger(j) => j,
        Verdict::Ignore(why) => panic!("ignored: {why}"),
    }
}

fn ignored(d: Verdict) -> String {
    match d {
        Verdict::Ignore(why) => why,
        Verdict::Trigger(j) => panic!("triggered: {j:?}"),
    }
}

/// The reference's Cloud assignment payload.
fn assigned(to: &str) -> Value {
    json!({"timestamp": 1740947640940u64, "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_assigned",
        "user": {"accountId": "712020:ben", "displayName": "Ben"},
        "issue": {"id": "10411", "key": "TM-100", "fields": {"summary": "s", "project": {"key": "TM"},
            "assignee": {"accountId": to}}},
        "changelog": {"id": "10518", "items": [{"field": "assignee", "fieldtype": "jira", "fieldId": "assignee",
            "from": null, "fromString": null, "to": to, "toString": "Bot", "tmpFromAccountId": null,
            "tmpToAccountId": to}]}})
}

fn comment(author: Value, body: Value) -> Value {
    json!({"webhookEvent": "comment_created",
        "comment": {"id": "10501", "self": "https://x.atlassian.net/rest/api/2/issue/10042/comment/10501",
            "author": author, "body": body},
        "issue": {"id": "10042", "key": "PROJ-17", "fields": {"summary": "s"}}})
}

#[test]
fn assignment_to_bot_triggers() {
    let j = job(decide(&assigned(BOT), Some("hdr-1"), None, &cloud()));
    assert_eq!(j.ticket, "TM-100");
    assert_eq!(j.project, "TM");
    assert_eq!(j.max_attempts, 5);
    assert_eq!(j.trigger.delivery, "changelog:10518");
    assert_eq!(j.trigger.source, "webhook:jira:issue_updated");
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ben"));
    assert_eq!(j.trigger.text, None);
    assert_eq!(j.trigger.at, now());
}

#[test]
fn assignment_matches_on_field_or_tmp_account() {
    let mut p = assigned(BOT);
    p["changelog"]["items"][0]["fieldId"] = Value::Null;
    assert!(matches!(
        decide(&p, None, None, &cloud()),
        Verdict::Trigger(_)
    ));
    let mut p = assigned(BOT);
    p["changelog"]["items"][0]["to"] = json!("something-else");
    assert!(matches!(
        decide(&p, None, None, &cloud()),
        Verdict::Trigger(_)
    ));
}

#[test]
fn assignment_to_someone_else_is_ignored() {
    let why = ignored(decide(&assigned("712020:ann"), None, None, &cloud()));
    assert_eq!(why, "assignee changed to someone else");
    let mut p = assigned(BOT);
    p["changelog"]["items"] = json!([{"field": "status", "fieldId": "status", "to": "3"}]);
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "issue update does not change the assignee"
    );
    p.as_object_mut().unwrap().remove("changelog");
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "issue update does not change the assignee"
    );
}

#[test]
fn delivery_key_fallbacks() {
    let mut p = assigned(BOT);
    p["changelog"].as_object_mut().unwrap().remove("id");
    let j = job(decide(&p, Some("a1b2-c3"), None, &cloud()));
    assert_eq!(j.trigger.delivery, "delivery:a1b2-c3");
    let j1 = job(decide(&p, None, None, &cloud()));
    let j2 = job(decide(&p, Some("  "), None, &cloud()));
    assert!(
        j1.trigger.delivery.starts_with("sha256:"),
        "{}",
        j1.trigger.delivery
    );
    assert_eq!(j1.trigger.delivery, j2.trigger.delivery);
    // A hostile id is not copied into a key.
    p["changelog"]["id"] = json!("1/../2 x");
    assert!(job(decide(&p, None, None, &cloud()))
        .trigger
        .delivery
        .starts_with("sha256:"));
    p["changelog"]["id"] = json!(10518);
    assert_eq!(
        job(decide(&p, None, None, &cloud())).trigger.delivery,
        "changelog:10518"
    );
}

#[test]
fn issue_created_assigned_to_bot() {
    let p = json!({"webhookEvent": "jira:issue_created", "user": {"accountId": "712020:ann"},
        "issue": {"id": "10500", "key": "TM-101", "fields": {"assignee": {"accountId": BOT}}}});
    let j = job(decide(&p, Some("h"), None, &cloud()));
    assert_eq!(j.trigger.delivery, "created:10500");
    assert_eq!(j.trigger.source, "webhook:jira:issue_created");
    let mut p2 = p.clone();
    p2["issue"]["fields"]["assignee"] = Value::Null;
    assert_eq!(
        ignored(decide(&p2, None, None, &cloud())),
        "new issue is not assigned to the bot"
    );
    p2["issue"]["fields"]["assignee"] = json!({"accountId": "712020:ann"});
    assert!(matches!(
        decide(&p2, None, None, &cloud()),
        Verdict::Ignore(_)
    ));
}

#[test]
fn wiki_comment_mention_triggers_with_text() {
    let p = comment(
        json!({"accountId": "712020:ann"}),
        json!(format!("[~accountid:{BOT}] please fix the *parser*")),
    );
    let j = job(decide(&p, Some("h"), None, &cloud()));
    assert_eq!(j.ticket, "PROJ-17");
    assert_eq!(j.trigger.delivery, "comment:10501");
    assert_eq!(j.trigger.source, "webhook:comment_created");
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ann"));
    assert_eq!(
        j.trigger.text.as_deref(),
        Some(format!("[~accountid:{BOT}] please fix the *parser*").as_str())
    );
}

#[test]
fn adf_comment_mention_triggers() {
    let body = json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "mention", "attrs": {"id": BOT, "text": "@drafter"}},
        {"type": "text", "text": " fix it "},
        {"type": "text", "text": "now", "marks": [{"type": "strong"}]}]}]});
    let j = job(decide(
        &comment(json!({"accountId": "712020:ann"}), body),
        None,
        None,
        &cloud(),
    ));
    assert_eq!(j.trigger.text.as_deref(), Some("@drafter fix it **now**"));
    // A mention of someone else is not a trigger.
    let other = json!({"type": "doc", "content": [{"type": "paragraph", "content": [
        {"type": "mention", "attrs": {"id": "712020:ann"}}]}]});
    assert_eq!(
        ignored(decide(
            &comment(json!({"accountId": "x"}), other),
            None,
            None,
            &cloud()
        )),
        "comment does not mention the bot"
    );
}

#[test]
fn comment_without_mention_or_by_bot_is_ignored() {
    let p = comment(
        json!({"accountId": "712020:ann"}),
        json!("looks good [~accountid:712020:ann]"),
    );
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "comment does not mention the bot"
    );
    let p = comment(
        json!({"accountId": BOT}),
        json!(format!("[~accountid:{BOT}] PR opened")),
    );
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "comment written by the bot"
    );
    let p = comment(json!({"accountId": "a"}), json!(42));
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "comment does not mention the bot"
    );
    let p = json!({"webhookEvent": "comment_created", "issue": {"key": "PROJ-1"}});
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "comment event without a comment"
    );
    // An unterminated mention does not panic or match.
    let p = comment(
        json!({"accountId": "a"}),
        json!("[~accountid:712020:bot-0001"),
    );
    assert!(matches!(
        decide(&p, None, None, &cloud()),
        Verdict::Ignore(_)
    ));
}

#[test]
fn long_comment_text_is_capped() {
    let body = format!("[~accountid:{BOT}] {}", "é".repeat(5000));
    let j = job(decide(
        &comment(json!({"accountId": "a"}), json!(body)),
        None,
        None,
        &cloud(),
    ));
    let text = j.trigger.text.unwrap();
    assert!(text.len() < MAX_TRIGGER_TEXT_BYTES + 100, "{}", text.len());
    assert!(text.ends_with("bytes]"), "{text}");
}

#[test]
fn data_center_payloads() {
    // DC: users by name/key, mentions as [~username], no issue in comment payloads (key from the URL hint).
    let p = json!({"webhookEvent": "comment_created",
        "comment": {"id": "20001", "self": "https://jira.example.com/rest/api/2/issue/10042/comment/20001",
            "author": {"name": "alice", "key": "JIRAUSER10000"}, "body": "[~Drafter] please have a look"}});
    let j = job(decide(&p, None, Some("OPS-7"), &dc()));
    assert_eq!(j.ticket, "OPS-7");
    assert_eq!(j.project, "OPS");
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("alice"));
    assert_eq!(j.trigger.delivery, "comment:20001");
    // No hint: ignored with advice.
    assert!(ignored(decide(&p, None, None, &dc())).contains("?issue=${issue.key}"));
    // A bad hint is refused.
    assert!(ignored(decide(&p, None, Some("../admin"), &dc())).contains("not a valid issue key"));
    // The bot's own comment (by name) never triggers.
    let mut own = p.clone();
    own["comment"]["author"] = json!({"name": "drafter", "key": "JIRAUSER10100"});
    assert_eq!(
        ignored(decide(&own, None, Some("OPS-7"), &dc())),
        "comment written by the bot"
    );

    // Assignment: `to` is the user key, or the name on old versions.
    let mut a = json!({"webhookEvent": "jira:issue_updated", "user": {"name": "alice", "key": "JIRAUSER10000"},
        "issue": {"id": "10042", "key": "OPS-7", "fields": {}},
        "changelog": {"id": 30010, "items": [{"field": "assignee", "fieldtype": "jira",
            "from": null, "to": "JIRAUSER10100", "toString": "drafter bot"}]}});
    let j = job(decide(&a, None, None, &dc()));
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("alice"));
    assert_eq!(j.trigger.delivery, "changelog:30010");
    a["changelog"]["items"][0]["to"] = json!("drafter");
    assert!(matches!(decide(&a, None, None, &dc()), Verdict::Trigger(_)));
    a["changelog"]["items"][0]["to"] = json!("bob");
    assert!(matches!(decide(&a, None, None, &dc()), Verdict::Ignore(_)));
    // The payload's key wins over the URL hint.
    a["changelog"]["items"][0]["to"] = json!("drafter");
    assert_eq!(
        job(decide(&a, None, Some("OTHER-1"), &dc())).ticket,
        "OPS-7"
    );
}

#[test]
fn other_events_and_bad_keys_are_ignored() {
    let p = json!({"webhookEvent": "jira:issue_deleted", "issue": {"key": "TM-1"}});
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "event jira:issue_deleted is not a trigger"
    );
    assert_eq!(
        ignored(decide(&json!({}), None, None, &cloud())),
        "payload has no webhookEvent"
    );
    assert_eq!(
        ignored(decide(&json!([1, 2]), None, None, &cloud())),
        "payload has no webhookEvent"
    );
    let mut p = assigned(BOT);
    p["issue"]["key"] = json!("tm-100");
    assert!(ignored(decide(&p, None, None, &cloud())).contains("not a valid issue key"));
    p["issue"]["key"] = json!(7);
    assert_eq!(
        ignored(decide(&p, None, Some("TM-1"), &cloud())),
        "issue.key is not a string"
    );
    let p = json!({"webhookEvent": "weird\u{1b}[31m"});
    assert_eq!(
        ignored(decide(&p, None, None, &cloud())),
        "event weird[31m is not a trigger"
    );
}

fn search_issue(histories: Value) -> Value {
    json!({"id": "10411", "key": "TM-100", "fields": {"assignee": {"accountId": BOT}, "project": {"key": "TM"}},
        "changelog": {"startAt": 0, "maxResults": 100, "total": 3, "histories": histories}})
}

fn assign_entry(id: Value, to: &str, by: &str) -> Value {
    json!({"id": id, "author": {"accountId": by}, "created": "2026-03-01T10:00:00.000+0000",
        "items": [{"field": "assignee", "fieldId": "assignee", "to": to, "tmpToAccountId": to}]})
}

#[test]
fn poll_key_is_the_latest_assignment() {
    let i = search_issue(json!([
        assign_entry(json!("100"), BOT, "712020:ann"),
        {"id": "150", "items": [{"field": "status", "to": "3"}]},
        assign_entry(json!("120"), "712020:ann", "712020:ann"),
        assign_entry(json!("130"), BOT, "712020:ben"),
    ]));
    let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
    assert_eq!(j.trigger.delivery, "changelog:130");
    assert_eq!(j.trigger.source, "poll");
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ben"));
    assert_eq!(j.project, "TM");
    assert_eq!(j.max_attempts, 3);
    // A status change or a comment later does not change the key.
    let mut i2 = i.clone();
    i2["changelog"]["histories"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "200", "items": [{"field": "status"}]}));
    i2["fields"]["updated"] = json!("2026-03-05T10:00:00.000+0000");
    assert_eq!(
        from_search_issue(&i2, &cloud(), 3, now())
            .unwrap()
            .trigger
            .delivery,
        "changelog:130"
    );
}

#[test]
fn poll_key_without_assignment_history_is_creation() {
    let j = from_search_issue(&search_issue(json!([])), &cloud(), 3, now()).unwrap();
    assert_eq!(j.trigger.delivery, "created:10411");
    let mut i = search_issue(json!([]));
    i.as_object_mut().unwrap().remove("id");
    i.as_object_mut().unwrap().remove("changelog");
    assert_eq!(
        from_search_issue(&i, &cloud(), 3, now())
            .unwrap()
            .trigger
            .delivery,
        "poll:TM-100"
    );
}

#[test]
fn poll_skips_foreign_or_invalid_issues() {
    let mut i = search_issue(json!([]));
    i["fields"]["assignee"] = json!({"accountId": "712020:ann"});
    assert!(from_search_issue(&i, &cloud(), 3, now()).is_none());
    let mut i = search_issue(json!([]));
    i["key"] = json!("../x");
    assert!(from_search_issue(&i, &cloud(), 3, now()).is_none());
    assert!(from_search_issue(&json!(null), &cloud(), 3, now()).is_none());
    // Data Center assignee by name.
    let i = json!({"id": "1", "key": "OPS-2", "fields": {"assignee": {"name": "drafter", "key": "JIRAUSER10100"}}});
    assert_eq!(
        from_search_issue(&i, &dc(), 3, now())
            .unwrap()
            .trigger
            .delivery,
        "created:1"
    );
}

#[test]
fn jql_is_quoted() {
    let cfg = PollConfig {
        enabled: true,
        interval_secs: 60,
        projects: vec!["PAY".into(), "OPS".into()],
        statuses: vec!["To Do".into(), "Sel\"ected\\".into()],
    };
    assert_eq!(
        poll_jql(&cfg, &cloud()),
        r#"assignee = "712020:bot-0001" AND project in ("PAY", "OPS") AND status in ("To Do", "Sel\"ected\\") ORDER BY updated DESC"#
    );
    let cfg = PollConfig {
        projects: vec![],
        statuses: vec![],
        ..cfg
    };
    assert_eq!(
        poll_jql(&cfg, &dc()),
        r#"assignee = "drafter" ORDER BY updated DESC"#
    );
    assert_eq!(jql_quote("a\") OR (x = \"y\n"), r#""a\") OR (x = \"y""#);
}

#[test]
fn poll_uses_the_creator_when_there_is_no_assignment() {
    let mut i = search_issue(json!([]));
    i["fields"]["creator"] = json!({"accountId": "712020:cid", "displayName": "Cid"});
    let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
    assert_eq!(j.trigger.delivery, "created:10411");
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:cid"));
    // An assignment in the history wins over the creator.
    let mut i = search_issue(json!([assign_entry(json!("100"), BOT, "712020:ann")]));
    i["fields"]["creator"] = json!({"accountId": "712020:cid"});
    let j = from_search_issue(&i, &cloud(), 3, now()).unwrap();
    assert_eq!(j.trigger.triggered_by.as_deref(), Some("712020:ann"));
}

mod approval;
