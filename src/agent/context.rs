//! Keeping the conversation inside `agent.context_budget_tokens`: the oldest tool outputs are replaced by a
//! summary line and their SHA-256 (the tool-call statement's output digest).

use super::*;

/// What an old tool output shrinks to when the context budget needs room.
#[derive(Debug, Clone)]
pub(super) struct Elidable {
    /// Tool, what it was called on, and whether it succeeded.
    pub(super) summary: String,
    /// SHA-256 of the full output (the tool-call statement's `output` subject).
    pub(super) sha256: String,
    /// Its size.
    pub(super) bytes: usize,
}

/// Tokens for `bytes` bytes of prompt, estimated at 4 bytes a token.
pub(super) fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

pub(super) fn message_bytes(m: &Message) -> usize {
    m.content
        .iter()
        .map(|b| match b {
            Block::Text(t) => t.len(),
            Block::ToolUse { input, .. } => input.to_string().len() + 64,
            Block::ToolResult { content, .. } => content.len() + 64,
            Block::Opaque(v) => v.to_string().len(),
        })
        .sum()
}

/// Keeps the conversation's estimate within `budget` tokens: once it is over, the oldest tool outputs (never those
/// of the newest turn) are replaced by their summary and digest until it is under two thirds of the budget. Returns
/// how many were elided. Nothing else changes, so the model keeps every call it made and can run one again.
pub(super) fn fit_context(
    messages: &mut [Message],
    fixed_tokens: u64,
    budget: u64,
    elidable: &HashMap<String, Elidable>,
) -> usize {
    let mut estimate =
        fixed_tokens + estimate_tokens(messages.iter().map(message_bytes).sum::<usize>());
    if estimate <= budget {
        return 0;
    }
    let target = budget / 3 * 2;
    let keep_from = messages.len().saturating_sub(2);
    let mut elided = 0;
    'outer: for m in messages[..keep_from].iter_mut() {
        for b in m.content.iter_mut() {
            if estimate <= target {
                break 'outer;
            }
            let Block::ToolResult { id, content, .. } = b else {
                continue;
            };
            let Some(e) = elidable.get(id.as_str()) else {
                continue;
            };
            if content.len() < MIN_ELIDED_CHARS {
                continue;
            }
            let short = format!(
                "[output elided to stay within the context budget: {}; {} bytes, sha256:{}. Run the tool again if \
                 you need it.]",
                e.summary, e.bytes, e.sha256
            );
            estimate = estimate.saturating_sub(estimate_tokens(content.len()))
                + estimate_tokens(short.len());
            *content = short;
            elided += 1;
        }
    }
    elided
}
