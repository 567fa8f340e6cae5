use super::*;
use crate::config::{JiraAuth, JiraConfig, JiraFlavor, Secret};
use crate::jira::adf::{children, collect_text, node_type};
use crate::jira::{adf_to_markdown, wiki_to_markdown, Dialect};

fn texts(adf: &Value) -> String {
    let mut s = String::new();
    collect_text(adf, &mut s, 0, 0);
    s
}

#[test]
fn notices_render() {
    let n = Notice::Started {
        job_id: "J1".into(),
        repo: "acme/widgets".into(),
    };
    assert_eq!(
        n.plain_text(),
        "drafter started working on this (job J1), repository acme/widgets. drafter:J1:started"
    );
    assert_eq!(
        adf_to_markdown(&n.to_adf()),
        "drafter started working on this (job `J1`), repository acme/widgets. `drafter:J1:started`"
    );

    let n = Notice::PrOpened {
        url: "https://github.com/acme/widgets/pull/3".into(),
        repo: "acme/widgets".into(),
        number: 3,
        branch: "drafter/DEMO-1-fix-x".into(),
        iteration: 0,
        proof: None,
    };
    assert_eq!(
        adf_to_markdown(&n.to_adf()),
        "Draft pull request opened: [acme/widgets#3](https://github.com/acme/widgets/pull/3) (branch `drafter/DEMO-1-fix-x`). A human must review and merge it."
    );
    assert_eq!(
        n.plain_text(),
        "Draft pull request opened: acme/widgets#3 (https://github.com/acme/widgets/pull/3) (branch drafter/DEMO-1-fix-x). A human must review and merge it."
    );

    // A non-web URL is not made a link.
    let n = Notice::PrOpened {
        url: "javascript:alert(1)".into(),
        repo: "a/b".into(),
        number: 1,
        branch: "b".into(),
        iteration: 0,
        proof: None,
    };
    assert!(!n.to_adf().to_string().contains("javascript"));

    let n = Notice::Failed {
        job_id: "J2".into(),
        reason: format!("line1\nline2\u{1b}{}", "z".repeat(5000)),
        proof: None,
    };
    let adf = n.to_adf();
    let text = texts(&adf);
    assert!(text.starts_with("drafter failed (job J2): line1\nline2z"));
    assert!(text.chars().count() < 1100);
    assert!(!text.contains('\u{1b}'));
    assert!(adf.to_string().contains("hardBreak"));

    let n = Notice::NoChanges {
        summary: "".into(),
        proof: None,
    };
    assert_eq!(
        n.plain_text(),
        "drafter finished without changing any file, so no pull request was opened."
    );
    let n = Notice::Refused {
        reason: "project X is not allowlisted".into(),
        proof: None,
    };
    assert_eq!(
        n.plain_text(),
        "drafter refused this ticket: project X is not allowlisted"
    );
    // The proof bundle follows on its own line, digest and commands as code.
    let n = Notice::Refused {
        reason: "no".into(),
        proof: Some(ProofRef {
            job_id: "j1".into(),
            digest: "ab12".into(),
        }),
    };
    assert_eq!(
        adf_to_markdown(&n.to_adf()),
        "drafter refused this ticket: no\\\nProof bundle `sha256:ab12` (`drafter jobs bundle j1`, then `drafter verify`). `drafter:j1:refused`"
    );
}

#[test]
fn notices_never_have_empty_text_nodes() {
    fn check(v: &Value) {
        if node_type(v) == "text" {
            assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
        }
        for c in children(v) {
            check(c);
        }
    }
    for n in [
        Notice::Started {
            job_id: "".into(),
            repo: "".into(),
        },
        Notice::Failed {
            job_id: "".into(),
            reason: "".into(),
            proof: Some(ProofRef {
                job_id: "".into(),
                digest: "".into(),
            }),
        },
        Notice::Refused {
            reason: "\n\n".into(),
            proof: None,
        },
        Notice::NoChanges {
            summary: "a\n\nb".into(),
            proof: None,
        },
    ] {
        check(&n.to_adf());
    }
}

fn proof(job: &str) -> Option<ProofRef> {
    Some(ProofRef {
        job_id: job.into(),
        digest: "ab12".into(),
    })
}

/// Every notice with a job carries its key, which reads back from both formats; one without a job has none.
#[test]
fn dedup_keys_are_rendered_and_found_in_adf_and_wiki() {
    let job = "j20260101T000000-1a2b3c4d";
    let cases = [
        (
            Notice::Started {
                job_id: job.into(),
                repo: "a/b".into(),
            },
            DedupKey::started(job),
        ),
        (
            Notice::PrOpened {
                url: "https://github.com/a/b/pull/7".into(),
                repo: "a/b".into(),
                number: 7,
                branch: "drafter/DEMO-1-x".into(),
                iteration: 0,
                proof: proof(job),
            },
            DedupKey::pr_opened(job, 7, 0),
        ),
        (
            Notice::ApprovalNeeded {
                job_id: job.into(),
                reason: "label x".into(),
                approvers: "lin".into(),
                ttl_hours: 24,
            },
            DedupKey::approval(job),
        ),
        (
            Notice::ApprovalOutdated {
                job_id: job.into(),
                approved_by: "lin".into(),
                changed: vec!["the ticket's content".into()],
                approvers: "lin".into(),
                ttl_hours: 24,
            },
            DedupKey::approval(job),
        ),
    ];
    for (n, key) in &cases {
        assert_eq!(n.dedup_key().as_ref(), Some(key), "{n:?}");
        assert!(key.as_str().starts_with("drafter:j2026"), "{key}");
        let md = adf_to_markdown(&n.to_adf());
        assert!(key.is_in(&md), "{md}");
        assert!(md.ends_with(&format!("`{key}`")), "{md}");
        let wiki = n.to_wiki();
        assert!(wiki.ends_with(&format!("{{{{{key}}}}}")), "{wiki}");
        assert!(key.is_in(&wiki_to_markdown(&wiki)), "{wiki}");
        assert!(n.plain_text().ends_with(key.as_str()));
    }
    // Kinds and jobs do not stand in for each other, nor does a longer key that starts alike.
    let started = adf_to_markdown(&cases[0].0.to_adf());
    assert!(!DedupKey::approval(job).is_in(&started));
    assert!(!DedupKey::started("j2").is_in(&started));
    assert!(!DedupKey::pr_opened(job, 7, 0).is_in("`drafter:j1:pr-70`"));
    assert!(!DedupKey::started(job).is_in(&format!("drafter:{job}:started")));
    // The other notices: a key when they name their job (through the proof bundle), none otherwise.
    let failed = Notice::Failed {
        job_id: "J9".into(),
        reason: "x".into(),
        proof: None,
    };
    assert_eq!(
        failed.dedup_key().map(|k| k.to_string()).as_deref(),
        Some("drafter:J9:failed")
    );
    let refused = |proof| Notice::Refused {
        reason: "no".into(),
        proof,
    };
    assert_eq!(refused(None).dedup_key(), None);
    assert_eq!(
        refused(proof("J9"))
            .dedup_key()
            .map(|k| k.to_string())
            .as_deref(),
        Some("drafter:J9:refused")
    );
    let empty = Notice::NoChanges {
        summary: String::new(),
        proof: proof("J9"),
    };
    assert_eq!(
        empty.dedup_key().map(|k| k.to_string()).as_deref(),
        Some("drafter:J9:no-changes")
    );
    assert_eq!(empty.dedup_key(), Some(DedupKey::no_changes("J9")));
    // A job id that is no job id (a backtick, a colon, braces) gets no key rather than a key that could break out.
    for bad in ["j`1", "j:1", "j}}1", ""] {
        let n = Notice::Started {
            job_id: bad.into(),
            repo: "a/b".into(),
        };
        assert_eq!(n.dedup_key(), None, "{bad:?}");
        assert!(!n.plain_text().contains("drafter:"), "{bad:?}");
    }
}

fn client(flavor: JiraFlavor) -> JiraClient {
    JiraClient::new(&JiraConfig {
        base_url: "https://jira.example.com".into(),
        bot_account_id: match flavor {
            JiraFlavor::Cloud => "712020:bot".into(),
            JiraFlavor::Datacenter => "JIRAUSER10100".into(),
        },
        bot_username: (flavor == JiraFlavor::Datacenter).then(|| "drafter-bot".into()),
        flavor,
        auth: JiraAuth::Bearer {
            token: Secret::new("t").into(),
        },
        acceptance_criteria_fields: Vec::new(),
    })
    .expect("client")
}

/// A comment as Jira lists it back: the body as posted (ADF on Cloud's v3, wiki markup on Data Center's v2).
fn listed(author: Value, body: Value) -> Value {
    json!({"id": "1", "author": author, "body": body, "created": "2026-03-01T10:00:00.000+0000"})
}

/// Only a comment by the bot that carries the key counts: not the words of a notice without the key (what older
/// drafters matched), and not someone else's comment that pastes the key.
#[test]
fn a_notice_is_the_bots_comment_with_the_key() {
    let job = "j20260101T000000-1a2b3c4d";
    let started = Notice::Started {
        job_id: job.into(),
        repo: "a/b".into(),
    };
    let key = DedupKey::started(job);
    for flavor in [JiraFlavor::Cloud, JiraFlavor::Datacenter] {
        let c = client(flavor);
        let dialect = Dialect::new(flavor);
        let (bot, someone) = match flavor {
            JiraFlavor::Cloud => (
                json!({"accountId": "712020:bot"}),
                json!({"accountId": "712020:eve"}),
            ),
            JiraFlavor::Datacenter => (
                json!({"name": "Drafter-Bot", "key": "JIRAUSER10100"}),
                json!({"name": "eve", "key": "JIRAUSER10200"}),
            ),
        };
        let posted = dialect.notice_body(&started);
        assert!(
            c.is_notice(&listed(bot.clone(), posted.clone()), &key, None),
            "{flavor:?}"
        );
        assert!(!c.is_notice(
            &listed(bot.clone(), posted.clone()),
            &DedupKey::approval(job),
            None
        ));
        // Someone else posts the very same body, key included: not drafter's notice.
        assert!(
            !c.is_notice(&listed(someone.clone(), posted.clone()), &key, None),
            "{flavor:?}"
        );
        let pasted = match flavor {
            JiraFlavor::Cloud => {
                json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
                {"type": "text", "text": "see "},
                {"type": "text", "text": key.as_str(), "marks": [{"type": "code"}]}]}]})
            }
            JiraFlavor::Datacenter => json!(format!("see {{{{{key}}}}}")),
        };
        assert!(!c.is_notice(&listed(someone.clone(), pasted.clone()), &key, None));
        assert!(
            c.is_notice(&listed(bot.clone(), pasted), &key, None),
            "the key, by the bot"
        );
        // The bot's comment with a notice's words and the job id, but no key (an older drafter's): not counted.
        let words = match flavor {
            JiraFlavor::Cloud => {
                json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
                {"type": "text", "text": format!("drafter started working on this (job {job}), repository a/b.")}]}]})
            }
            JiraFlavor::Datacenter => json!(format!(
                "drafter started working on this (job {{{{{job}}}}}), repository a/b."
            )),
        };
        assert!(
            !c.is_notice(&listed(bot.clone(), words), &key, None),
            "{flavor:?}"
        );
        // No author, or an anonymous one: not the bot.
        assert!(!c.is_notice(&json!({"body": posted.clone()}), &key, None));
        assert!(!c.is_notice(&listed(json!({}), posted.clone()), &key, None));
    }
    // The credential's own account counts too when it is not the configured one (as `whoami` says).
    let c = client(JiraFlavor::Cloud);
    let poster = json!({"accountId": "557058:poster"});
    let posted = Dialect::new(JiraFlavor::Cloud).notice_body(&started);
    let me = JiraUser {
        account_id: Some("557058:poster".into()),
        ..JiraUser::default()
    };
    assert!(!c.is_notice(&listed(poster.clone(), posted.clone()), &key, None));
    assert!(c.is_notice(&listed(poster.clone(), posted.clone()), &key, Some(&me)));
    let eve = JiraUser {
        account_id: Some("712020:eve".into()),
        ..JiraUser::default()
    };
    assert!(!c.is_notice(&listed(poster, posted), &key, Some(&eve)));
    let dc = client(JiraFlavor::Datacenter);
    let me = JiraUser {
        name: Some("svc-drafter".into()),
        key: Some("JIRAUSER20000".into()),
        ..JiraUser::default()
    };
    let posted = Dialect::new(JiraFlavor::Datacenter).notice_body(&started);
    assert!(dc.is_notice(
        &listed(json!({"key": "JIRAUSER20000"}), posted.clone()),
        &key,
        Some(&me)
    ));
    assert!(dc.is_notice(
        &listed(json!({"name": "SVC-drafter"}), posted),
        &key,
        Some(&me)
    ));
}
