//! The human summary `drafter verify` prints for a bundle that verified.

use super::*;

/// The human summary `drafter verify` prints for a bundle that verified.
pub fn render(s: &Summary, policy_file: Option<&Path>, repo: Option<(&Path, String)>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let run_count = s.runs;
    let _ = writeln!(
        o,
        "ok: proof bundle of job {} (ticket {}) verified: {} statements, chain intact, every signature valid",
        s.job_id, s.ticket, s.count
    );
    if !s.complete {
        let _ = writeln!(
            o,
            "  INCOMPLETE:    the last attempt has no run statement yet (still running, or cut short); accepted \
             because of --allow-incomplete"
        );
    }
    let _ = writeln!(
        o,
        "  signed by:     key {}{}{}",
        s.key_ids.join(", "),
        if s.signer_changes.is_empty() {
            String::new()
        } else {
            let lines: Vec<String> = s.signer_changes.iter().map(usize::to_string).collect();
            format!(" (the signer changes at line {})", lines.join(", "))
        },
        if s.pinned {
            " (pinned)"
        } else {
            " (NOT pinned: pass --key to check who signed)"
        }
    );
    let _ = writeln!(
        o,
        "  policy:        {}{}",
        s.policy_hashes.join(", "),
        policy_file
            .map(|f| format!(" (matches {})", f.display()))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "  calls:         {} model calls, {} tool calls, {} attempt(s)",
        s.totals.model_calls, s.totals.tool_calls, run_count
    );
    let u = &s.totals.usage;
    let _ = writeln!(
        o,
        "  tokens:        {} in, {} out{}",
        u.input_tokens,
        u.output_tokens,
        if s.totals.estimated_calls > 0 {
            format!(
                " ({} call(s) without reported usage, estimated from bytes)",
                s.totals.estimated_calls
            )
        } else {
            String::new()
        }
    );
    if u.cache_read_tokens + u.cache_write_tokens > 0 {
        let prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        let _ = writeln!(
            o,
            "  prompt cache:  {} read, {} written ({:.0}% of {} prompt tokens read from the cache)",
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.cache_read_tokens as f64 * 100.0 / prompt.max(1) as f64,
            prompt
        );
    }
    let _ = writeln!(
        o,
        "  cost:          {}",
        if s.totals.cost_micros > 0 {
            format!("${:.4}", s.totals.cost_micros as f64 / 1_000_000.0)
        } else {
            "not priced (no price for the model in the policy)".into()
        }
    );
    if !s.tools.is_empty() {
        let failed = s.tools.iter().filter(|(_, ok)| !ok).count();
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in &s.tools {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let _ = writeln!(
            o,
            "  tools:         {} ({failed} failed or refused)",
            names.join(", ")
        );
    }
    if let Some(r) = &s.last_run {
        let _ = writeln!(
            o,
            "  ticket:        {}{}",
            s.ticket,
            s.ticket_sha256
                .as_deref()
                .map(|d| format!(" (content sha256:{d})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  trigger:       {} via {}{}",
            r.trigger.by,
            r.trigger.event,
            r.trigger
                .approved_by
                .as_deref()
                .map(|a| format!(", approved by {a}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  worker:        {} (drafter {})",
            r.worker.id, r.worker.version
        );
        if let Some(img) = &r.sandbox_image {
            let _ = writeln!(
                o,
                "  sandbox:       {img} ({})",
                r.sandbox_image_digest
                    .as_deref()
                    .unwrap_or("digest unknown")
            );
        }
        if let Some(net) = &r.network {
            let denied = net.connections.iter().filter(|c| !c.allowed).count();
            let _ = writeln!(
                o,
                "  network:       {} ({} requests, {denied} denied{})",
                net.mode,
                net.connections.len() as u64 + net.dropped,
                if net.dropped > 0 {
                    format!(", {} not listed", net.dropped)
                } else {
                    String::new()
                }
            );
            for c in &net.connections {
                let _ = writeln!(
                    o,
                    "    {} {} {}:{} ({} B out, {} B in) {}",
                    if c.allowed { "allowed" } else { "denied " },
                    c.method,
                    c.host,
                    c.port,
                    c.bytes_out,
                    c.bytes_in,
                    c.rule
                );
            }
        }
        if let Some(repo_name) = &r.repo {
            let _ = writeln!(
                o,
                "  repository:    {repo_name} (base {}, branch {})",
                r.base.as_deref().unwrap_or("?"),
                r.branch.as_deref().unwrap_or("none")
            );
        }
        if let Some(c) = &r.change {
            let _ = writeln!(
                o,
                "  change:        commit {} against {}, {} file(s), diff sha256:{}",
                c.commit, c.base_commit, c.files, c.diff_sha256
            );
        }
        if let Some((_, line)) = &repo {
            let _ = writeln!(o, "  repository ok: {line}");
        }
        let _ = writeln!(
            o,
            "  retention:     {}{}",
            r.retention.bodies.as_str(),
            r.retention
                .max_age_days
                .map(|d| format!(", bodies kept {d} days"))
                .unwrap_or_default()
        );
        let outcome = &r.outcome;
        let detail = match outcome.result.as_str() {
            "pull_request" => outcome.pr_url.clone().unwrap_or_default(),
            _ => {
                let rule = outcome
                    .rule
                    .as_deref()
                    .map(|x| format!("rule `{x}`: "))
                    .unwrap_or_default();
                format!("{rule}{}", outcome.reason.as_deref().unwrap_or(""))
            }
        };
        let _ = writeln!(
            o,
            "  outcome:       {} {} ({}, {} ms)",
            outcome.result, detail, r.finished_at, r.duration_ms
        );
    }
    let _ = writeln!(o, "  bundle digest: sha256:{}", s.digest);
    if let Some(m) = &s.digest_match {
        let later = s.count as usize - m.line;
        let _ = writeln!(
            o,
            "  digest:        sha256:{} matches {}",
            m.digest,
            if later == 0 {
                format!(
                    "the whole bundle (run statement of attempt {}, line {})",
                    m.attempt, m.line
                )
            } else {
                format!(
                    "the bundle through line {} (run statement of attempt {}); {later} later statement(s) follow, \
                     chained to it",
                    m.line, m.attempt
                )
            }
        );
    }
    o
}
