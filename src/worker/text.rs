//! What the job writes for people on the forge: the draft PR's description and its proof footer.

use crate::agent::AgentOutcome;
use crate::jira::Ticket;

/// The first `n` characters of `s`.
pub(crate) fn cap(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Marks where the proof footer of a PR body starts.
const PROOF_MARKER: &str = "<!-- drafter:proof -->";

/// The PR body's last lines: the bundle digest and how to check it (`None`: not sealed yet).
pub fn proof_footer(job_id: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d) => format!(
            "\n{PROOF_MARKER}\nProof bundle `sha256:{d}`: fetch it with `drafter jobs bundle {job_id}` and check it with \
             `drafter verify` (see the README's \"Auditing a run\").\n"
        ),
        None => format!("\n{PROOF_MARKER}\nProof bundle: written when the job ends.\n"),
    }
}

/// `body` without its proof footer.
pub(crate) fn strip_proof_footer(body: &str) -> &str {
    match body.find(PROOF_MARKER) {
        Some(i) => body[..i].trim_end_matches('\n'),
        None => body,
    }
}

/// Text from the model or the ticket must not ping people or teams on the forge: `@` becomes an HTML entity, which
/// GitHub renders as `@` without a mention.
fn no_mentions(text: &str) -> String {
    text.replace('@', "&#64;")
}

/// The draft PR's description: where it came from, what the model said and did, and the proof digest.
pub fn pr_body(
    ticket: &Ticket,
    job_id: &str,
    outcome: &AgentOutcome,
    changed: &[String],
    left_out: &[String],
    digest: &str,
    policy_hash: &str,
) -> String {
    let reporter = ticket
        .reporter
        .as_deref()
        .map(|r| {
            format!(
                " (reported by {})",
                no_mentions(&r.replace(['[', ']', '<', '>'], ""))
            )
        })
        .unwrap_or_default();
    let mut b = format!(
        "Draft opened by drafter for [{key}]({url}){reporter}. **A human must review this change; drafter cannot \
         merge.**\n\n### Summary from the model\n\n{summary}\n\n### Files changed\n\n",
        key = ticket.key,
        url = ticket.url,
        summary = no_mentions(&outcome.summary.replace("\n#", "\n\\#")),
    );
    for f in changed.iter().take(100) {
        b.push_str(&format!("- `{f}`\n"));
    }
    if !left_out.is_empty() {
        b.push_str(
            "\n### Left out\n\nBuild products the agent's commands created, not committed (the policy's \
             `write.exclude` and the built-in list):\n\n",
        );
        for l in left_out.iter().take(100) {
            b.push_str(&format!("- {}\n", no_mentions(l)));
        }
        if left_out.len() > 100 {
            b.push_str(&format!("- ... and {} more\n", left_out.len() - 100));
        }
    }
    b.push_str("\n<details><summary>Tool calls</summary>\n\n");
    for c in outcome.tool_calls.iter().take(200) {
        b.push_str(&format!(
            "- `{}` {}{}\n",
            c.name,
            no_mentions(&c.detail.replace('`', "'")),
            if c.ok { "" } else { " (failed)" }
        ));
    }
    b.push_str(&format!(
        "\n</details>\n\n---\nJob `{job_id}` · {turns} model calls · {tokens} tokens · chain head at commit `sha256:{digest}` \
         · policy `{policy_hash}`\n",
        turns = outcome.turns,
        tokens = outcome.tokens,
    ));
    b
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::agent::ToolCallRecord;
    use crate::policy::write;
    use crate::worker::phases::finish::LeaveOut;

    fn ticket() -> Ticket {
        Ticket {
            key: "DEMO-1".into(),
            project: "DEMO".into(),
            summary: "s".into(),
            url: "u".into(),
            ..Ticket::default()
        }
    }

    #[test]
    fn pr_body_links_the_ticket_and_pings_nobody() {
        let mut t = ticket();
        t.reporter = Some("Ada @admins".into());
        let outcome = AgentOutcome {
            summary: "Fixed it. cc @org/everyone".into(),
            turns: 3,
            tool_calls: vec![ToolCallRecord {
                name: "run".into(),
                detail: "echo `@x`".into(),
                ok: false,
            }],
            tokens: 120,
            written: BTreeSet::new(),
            finish_refusals: 0,
        };
        let body = pr_body(
            &t,
            "j1",
            &outcome,
            &["a.py".into()],
            &[],
            "ab12",
            "sha256:p0",
        );
        assert!(!body.contains("Left out"), "{body}");
        let mut leave = LeaveOut::new(&write::WriteRules::default(), &BTreeSet::new()).unwrap();
        leave.listed.insert("__pycache__/".into(), 2);
        leave.listed.insert("@team`x`.pyc".into(), 1);
        let left = leave.lines();
        assert_eq!(left, ["`@team?x?.pyc`", "`__pycache__/` (2 files)"]);
        let body = pr_body(
            &t,
            "j1",
            &outcome,
            &["a.py".into()],
            &left,
            "ab12",
            "sha256:p0",
        );
        assert!(body.contains("### Left out"), "{body}");
        assert!(body.contains("- `__pycache__/` (2 files)\n"), "{body}");
        assert!(body.contains("[DEMO-1](u)"), "{body}");
        assert!(!body.contains('@'), "{body}");
        assert!(body.contains("- `a.py`"));
        assert!(body.contains("(failed)"));
        assert!(body.contains("sha256:ab12"));
        assert!(body.contains("3 model calls"));
        assert!(body.contains("policy `sha256:p0`"));
    }
}
