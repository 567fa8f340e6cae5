//! [`Notice`], the comments drafter posts on a ticket, and their ADF (Cloud); the wiki markup (Data Center) is in
//! [`super::wiki`].

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::adf::one_line;
use super::{cap_chars, clean_text, MAX_NOTICE_FIELD_CHARS, MAX_NOTICE_TEXT_CHARS};
use super::{mentions, JiraClient, JiraError, JiraUser};
use crate::ids::JobId;

/// Where a job's proof bundle is, for the ticket comment that ends the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofRef {
    /// The job id (`drafter jobs bundle <id>` fetches the bundle).
    pub job_id: String,
    /// SHA-256 of the bundle file.
    pub digest: String,
}

/// Which notice a comment is, in a form a program finds again: `drafter:<job id>:<kind>`, where the kind is
/// `started`, `approval` (asking for approval, first or again), `pr-<number>`, `no-changes`, `refused` or `failed`.
/// Every notice with a job ends with its key as inline code (ADF code mark on Cloud, `{{...}}` on Data Center), so a
/// retried attempt asks [`super::JiraClient::has_notice`] instead of searching comments for words. A key says
/// nothing about who wrote the comment: the matching also demands the bot as its author.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey(String);

impl DedupKey {
    /// Not checked here: a key of a job id that is no [`JobId`] is never rendered (see [`Notice::dedup_key`]), so
    /// it matches nothing.
    fn new(job_id: &str, kind: &str) -> DedupKey {
        DedupKey(format!("drafter:{job_id}:{kind}"))
    }

    /// The key of a job's "started working on this" notice.
    pub fn started(job_id: &str) -> DedupKey {
        DedupKey::new(job_id, "started")
    }

    /// The key of a job's requests for approval ([`Notice::ApprovalNeeded`], [`Notice::ApprovalOutdated`]).
    pub fn approval(job_id: &str) -> DedupKey {
        DedupKey::new(job_id, "approval")
    }

    /// The key of a job's "finished without changes" notice (only a job's first run can end so: a review
    /// iteration that changes nothing still answers on its pull request).
    pub fn no_changes(job_id: &str) -> DedupKey {
        DedupKey::new(job_id, "no-changes")
    }

    /// The key of a job's "draft pull request opened" notice for pull request `number` (`iteration` 0), or of its
    /// "updated after review" notice for a follow-up iteration.
    pub fn pr_opened(job_id: &str, number: u64, iteration: u32) -> DedupKey {
        DedupKey::new(job_id, &pr_kind(number, iteration))
    }

    /// The key as written in the comment.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a comment, as Markdown ([`super::Dialect::markdown`] of its ADF or wiki markup), carries this key
    /// as inline code of its own: `` `drafter:j1:started` ``, not a longer key that starts alike.
    pub fn is_in(&self, markdown: &str) -> bool {
        markdown.contains(&format!("`{}`", self.0))
    }
}

impl std::fmt::Display for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What drafter tells the ticket. Rendered to ADF by [`Notice::to_adf`], or to text by [`Notice::plain_text`].
///
/// All fields are untrusted text: control characters are removed and lengths are capped (reasons and summaries at
/// 1000 characters). The caller must not put secrets in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job was accepted and is running.
    Started {
        /// The job id.
        job_id: String,
        /// `owner/name` of the repository.
        repo: String,
    },
    /// A draft pull request was opened.
    PrOpened {
        /// The pull request's web URL.
        url: String,
        /// `owner/name`.
        repo: String,
        /// Pull request number.
        number: u64,
        /// The branch pushed.
        branch: String,
        /// The follow-up iteration on review comments that updated it (0: opened).
        iteration: u32,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// The agent finished but changed nothing.
    NoChanges {
        /// The agent's own summary.
        summary: String,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// drafter would not take the ticket (not allowlisted, no repository, ...).
    Refused {
        /// Why, in plain text.
        reason: String,
        /// The proof bundle (it records the rule that refused the ticket).
        proof: Option<ProofRef>,
    },
    /// The job failed.
    Failed {
        /// The job id.
        job_id: String,
        /// Why, in plain text.
        reason: String,
        /// The proof bundle.
        proof: Option<ProofRef>,
    },
    /// The policy wants a person to approve the job before it runs.
    ApprovalNeeded {
        /// The job id.
        job_id: String,
        /// Which rule asks for approval.
        reason: String,
        /// Who may approve.
        approvers: String,
        /// How long the job waits.
        ttl_hours: u64,
    },
    /// An approved job's ticket changed before it ran: the approval no longer holds, and the job waits again.
    ApprovalOutdated {
        /// The job id.
        job_id: String,
        /// Who approved it.
        approved_by: String,
        /// What changed since, in words (the ticket's content, the repository, the base branch).
        changed: Vec<String>,
        /// Who may approve.
        approvers: String,
        /// How long the job waits.
        ttl_hours: u64,
    },
}

/// A piece of a comment paragraph.
pub(super) enum Span {
    Text(String),
    Code(String),
    Link { text: String, href: String },
    Break,
}

/// Untrusted text for a comment: control characters removed, capped.
fn notice_field(s: &str) -> String {
    one_line(&clean_text(&cap_chars(s, MAX_NOTICE_FIELD_CHARS)))
}

/// A multi-line untrusted text as spans with line breaks.
fn text_spans(s: &str, out: &mut Vec<Span>) {
    let s = clean_text(&cap_chars(s.trim(), MAX_NOTICE_TEXT_CHARS));
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push(Span::Break);
        }
        out.push(Span::Text(line.to_string()));
    }
}

fn is_web_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

impl Notice {
    pub(super) fn spans(&self) -> Vec<Span> {
        use Span::*;
        let mut v = Vec::new();
        match self {
            Notice::Started { job_id, repo } => {
                v.push(Text("drafter started working on this (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!("), repository {}.", notice_field(repo))));
            }
            Notice::PrOpened {
                url,
                repo,
                number,
                branch,
                iteration,
                ..
            } => {
                v.push(Text(if *iteration > 0 {
                    format!("Pull request updated after review (iteration {iteration}): ")
                } else {
                    "Draft pull request opened: ".to_string()
                }));
                let text = format!("{}#{}", notice_field(repo), number);
                let url = url.trim();
                if is_web_url(url) && url.len() <= 2048 {
                    v.push(Link {
                        text,
                        href: url.to_string(),
                    });
                } else {
                    v.push(Text(text));
                }
                v.push(Text(" (branch ".into()));
                v.push(Code(notice_field(branch)));
                v.push(Text("). A human must review and merge it.".into()));
            }
            Notice::NoChanges { summary, .. } => {
                v.push(Text(
                    "drafter finished without changing any file, so no pull request was opened."
                        .into(),
                ));
                if !summary.trim().is_empty() {
                    v.push(Text(" Summary: ".into()));
                    text_spans(summary, &mut v);
                }
            }
            Notice::Refused { reason, .. } => {
                v.push(Text("drafter refused this ticket: ".into()));
                text_spans(reason, &mut v);
            }
            Notice::Failed { job_id, reason, .. } => {
                v.push(Text("drafter failed (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text("): ".into()));
                text_spans(reason, &mut v);
            }
            Notice::ApprovalNeeded {
                job_id,
                reason,
                approvers,
                ttl_hours,
            } => {
                v.push(Text("drafter needs approval before it starts (job ".into()));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!(
                    "): {}. An approver ({}) can comment ",
                    notice_field(reason),
                    notice_field(approvers)
                )));
                v.push(Code("drafter approve".into()));
                v.push(Text(format!(
                    " on this ticket. Without approval the job expires in {ttl_hours} hours."
                )));
            }
            Notice::ApprovalOutdated {
                job_id,
                approved_by,
                changed,
                approvers,
                ttl_hours,
            } => {
                let changed: Vec<String> = changed.iter().map(|c| notice_field(c)).collect();
                v.push(Text(
                    "drafter needs approval again before it starts (job ".into(),
                ));
                v.push(Code(notice_field(job_id)));
                v.push(Text(format!(
                    "): {} changed after {} approved it, so that approval no longer holds and nothing ran. \
                     An approver ({}) can comment ",
                    changed.join(", "),
                    notice_field(approved_by),
                    notice_field(approvers)
                )));
                v.push(Code("drafter approve".into()));
                v.push(Text(format!(
                    " on this ticket to approve it as it is now. Without approval the job expires in {ttl_hours} \
                     hours."
                )));
            }
        }
        if let Notice::PrOpened { proof: Some(p), .. }
        | Notice::NoChanges { proof: Some(p), .. }
        | Notice::Refused { proof: Some(p), .. }
        | Notice::Failed { proof: Some(p), .. } = self
        {
            v.push(Break);
            v.push(Text("Proof bundle ".into()));
            v.push(Code(format!("sha256:{}", notice_field(&p.digest))));
            v.push(Text(" (".into()));
            v.push(Code(format!(
                "drafter jobs bundle {}",
                notice_field(&p.job_id)
            )));
            v.push(Text(", then ".into()));
            v.push(Code("drafter verify".into()));
            v.push(Text(").".into()));
        }
        // Last, so the words people read come first; as code, so it reads as an identifier and survives both formats.
        if let Some(k) = self.dedup_key() {
            v.push(Text(" ".into()));
            v.push(Code(k.0));
        }
        v
    }

    /// The key that says which job and what kind of notice this is ([`DedupKey`]): `None` for a notice without a
    /// job (a refusal or an empty result reported without a proof bundle), or whose job id is not a [`JobId`].
    pub fn dedup_key(&self) -> Option<DedupKey> {
        let proof_job = |p: &Option<ProofRef>| p.as_ref().map(|p| p.job_id.clone());
        let (job, kind) = match self {
            Notice::Started { job_id, .. } => (Some(job_id.clone()), "started".to_string()),
            Notice::PrOpened {
                number,
                iteration,
                proof,
                ..
            } => (proof_job(proof), pr_kind(*number, *iteration)),
            Notice::NoChanges { proof, .. } => (proof_job(proof), "no-changes".into()),
            Notice::Refused { proof, .. } => (proof_job(proof), "refused".into()),
            Notice::Failed { job_id, .. } => (Some(job_id.clone()), "failed".into()),
            // Both ask the approvers to look at the job: one kind, so either answers "have they been asked?".
            Notice::ApprovalNeeded { job_id, .. } | Notice::ApprovalOutdated { job_id, .. } => {
                (Some(job_id.clone()), "approval".into())
            }
        };
        // A job id is a few safe characters ([`JobId`]): nothing that could end the code span or the key's fields.
        let job = job.filter(|j| JobId::is_valid(j))?;
        Some(DedupKey::new(&job, &kind))
    }

    /// Whether a comment's text (as Markdown or wiki markup) starts like one of drafter's notices.
    pub fn is_notice_text(text: &str) -> bool {
        const OPENINGS: &[&str] = &[
            "drafter started working on this (job ",
            "Draft pull request opened: ",
            "Pull request updated after review (iteration ",
            "drafter finished without changing any file",
            "drafter refused this ticket: ",
            "drafter failed (job ",
            "drafter needs approval before it starts (job ",
            "drafter needs approval again before it starts (job ",
        ];
        let t = text.trim_start();
        OPENINGS.iter().any(|o| t.starts_with(o))
    }

    /// The notice as an ADF document: one paragraph; job ids and branches as code, the pull request as a link.
    pub fn to_adf(&self) -> Value {
        let mut content: Vec<Value> = Vec::new();
        for span in self.spans() {
            // ADF forbids empty text nodes: Jira answers 400 to them.
            match span {
                Span::Text(t) if !t.is_empty() => content.push(json!({"type": "text", "text": t})),
                Span::Code(t) if !t.is_empty() => content.push(json!({
                    "type": "text", "text": t, "marks": [{"type": "code"}]
                })),
                Span::Link { text, href } if !text.is_empty() => content.push(json!({
                    "type": "text", "text": text, "marks": [{"type": "link", "attrs": {"href": href}}]
                })),
                Span::Break => content.push(json!({"type": "hardBreak"})),
                _ => {}
            }
        }
        json!({
            "type": "doc",
            "version": 1,
            "content": [{"type": "paragraph", "content": content}],
        })
    }

    /// The same words as plain text (for logs and the CLI); a link is followed by its URL in parentheses.
    pub fn plain_text(&self) -> String {
        let mut s = String::new();
        for span in self.spans() {
            match span {
                Span::Text(t) | Span::Code(t) => s.push_str(&t),
                Span::Link { text, href } => {
                    let _ = write!(s, "{text} ({href})");
                }
                Span::Break => s.push('\n'),
            }
        }
        s
    }
}

impl JiraClient {
    /// Whether the ticket already has the notice `dedup` names ([`DedupKey`]): a comment carrying the key whose
    /// author is the bot, that is the configured bot account or the account of this client's credential (the one
    /// drafter's comments are posted as; asked once per client, and only when a comment with the key is by someone
    /// else). Comments are read as [`JiraClient::comments`] lists them: ADF on Cloud, wiki markup on Data Center.
    /// Anyone else's comment with the key, and a comment that only has the words of a notice, do not count.
    pub async fn has_notice(&self, key: &str, dedup: &DedupKey) -> Result<bool, JiraError> {
        let comments = self.comments(key).await?;
        if comments.iter().any(|c| self.is_notice(c, dedup, None)) {
            return Ok(true);
        }
        if !comments.iter().any(|c| self.carries(c, dedup)) {
            return Ok(false);
        }
        let me = self.me.get_or_try_init(|| self.whoami()).await?;
        Ok(comments.iter().any(|c| self.is_notice(c, dedup, Some(me))))
    }

    /// Whether comment `c` (as listed: `author`, `body`) is the notice `dedup` names: it carries the key, and its
    /// author is the configured bot or, if given, `me`.
    pub(super) fn is_notice(&self, c: &Value, dedup: &DedupKey, me: Option<&JiraUser>) -> bool {
        let Some(author) = c.get("author") else {
            return false;
        };
        let by_bot = mentions::is_bot_user(author, &self.cfg)
            || me.is_some_and(|me| self.is_user(author, me));
        by_bot && self.carries(c, dedup)
    }

    fn carries(&self, c: &Value, dedup: &DedupKey) -> bool {
        c.get("body")
            .is_some_and(|b| dedup.is_in(&self.dialect.markdown(b)))
    }

    /// Whether a user object (a comment's `author`) is `me`: Cloud's account id; Data Center's name or key.
    fn is_user(&self, user: &Value, me: &JiraUser) -> bool {
        let mine: Vec<&str> = if self.dialect.is_datacenter() {
            [&me.name, &me.key]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect()
        } else {
            me.account_id.iter().map(String::as_str).collect()
        };
        self.dialect
            .user_ids(user)
            .iter()
            .any(|id| mine.iter().any(|m| self.dialect.same_user(id, m)))
    }
}

#[cfg(test)]
mod tests;

/// The dedup kind of a pull request notice: `pr-<n>` when opened, `pr-<n>-iteration-<i>` for a follow-up.
fn pr_kind(number: u64, iteration: u32) -> String {
    if iteration == 0 {
        format!("pr-{number}")
    } else {
        format!("pr-{number}-iteration-{iteration}")
    }
}
