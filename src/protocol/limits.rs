//! Caps on what a worker reports, so that every `run.denied` and `run.finished` fits the
//! payload cap and can always be sent, and a Worker's `status.finishedRuns` stays small.
//!
//! A hook's reasons come from tenants (a Rego policy may deny with a thousand messages of a
//! megabyte each): unbounded, such a report would be refused by the link, never acknowledged,
//! and would hold one of the link's in-flight slots. Every report is built through
//! [`RunDenied::new`] / [`RunFinished::new`] (or capped with [`cap_reasons`] /
//! [`cap_detail`] before it is recorded), and [`Message::shrink_to_fit`] makes one fit a
//! smaller payload cap than the default.

use super::codec::{Message, encode};
use super::messages::{Body, DenyReason, FailureCause, Outcome, RunDenied, RunFinished, RunRef};

/// At most this many reasons per denial; the last one then says how many more there were.
pub const MAX_REASONS: usize = 10;
/// A reason's message is cut at this many bytes (UTF-8), marked with how much was cut.
pub const MAX_REASON_BYTES: usize = 1024;
/// A reason's hook name is cut at this many bytes.
pub const MAX_HOOK_BYTES: usize = 128;
/// A `run.finished` message (and a recorded outcome's) is cut at this many bytes.
pub const MAX_DETAIL_BYTES: usize = 2048;

/// `text` cut to at most `max` bytes at a character boundary, with a note of what was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    // The note is at most this long, as fewer bytes are left out than the text has.
    let note = format!("... ({} more bytes)", text.len());
    let keep = max.saturating_sub(note.len() + 4);
    let mut cut = keep.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} more bytes)", &text[..cut], text.len() - cut)
}

/// At most `max` of `items`, the last replaced by `more(n)` naming the `n` left out.
pub fn cap_count<T>(mut items: Vec<T>, max: usize, more: impl FnOnce(usize) -> T) -> Vec<T> {
    if items.len() <= max || max == 0 {
        return items;
    }
    let left_out = items.len() - (max - 1);
    items.truncate(max - 1);
    items.push(more(left_out));
    items
}

/// Messages (of a policy's `deny`) capped in count and length.
pub fn cap_messages(messages: Vec<String>) -> Vec<String> {
    let messages = cap_count(messages, MAX_REASONS, |n| format!("... and {n} more"));
    messages
        .into_iter()
        .map(|m| truncate(&m, MAX_REASON_BYTES))
        .collect()
}

/// Deny reasons capped in count and length: what every report and record carries.
pub fn cap_reasons(reasons: Vec<DenyReason>) -> Vec<DenyReason> {
    let last_hook = reasons.last().map(|r| r.hook.clone()).unwrap_or_default();
    let reasons = cap_count(reasons, MAX_REASONS, |n| DenyReason {
        hook: last_hook,
        message: format!("... and {n} more"),
    });
    reasons
        .into_iter()
        .map(|r| DenyReason {
            hook: truncate(&r.hook, MAX_HOOK_BYTES),
            message: truncate(&r.message, MAX_REASON_BYTES),
        })
        .collect()
}

/// A `run.finished` detail capped in length.
pub fn cap_detail(message: &str) -> String {
    truncate(message, MAX_DETAIL_BYTES)
}

impl RunDenied {
    /// A denial of `run` with `reasons`, capped in count and length.
    pub fn new(run: &RunRef, reasons: Vec<DenyReason>) -> Self {
        Self {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            reasons: cap_reasons(reasons),
        }
    }
}

impl RunFinished {
    /// How `run` ended, with its detail capped in length.
    pub fn new(
        run: &RunRef,
        outcome: Outcome,
        cause: Option<FailureCause>,
        message: &str,
        exit_code: Option<i32>,
    ) -> Self {
        Self {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            outcome,
            cause,
            message: cap_detail(message),
            exit_code,
        }
    }
}

impl Message {
    /// Makes a report fit `max` payload bytes by cutting its texts further (halving them until
    /// it fits); whether it fits now. Other messages are left as they are.
    pub fn shrink_to_fit(&mut self, max: usize) -> bool {
        let mut budget = MAX_REASON_BYTES.max(MAX_DETAIL_BYTES);
        while encode(self).len() > max {
            if budget < 16 {
                return false;
            }
            budget /= 2;
            match &mut self.body {
                Body::RunDenied(denied) => {
                    for reason in &mut denied.reasons {
                        reason.message = truncate(&reason.message, budget);
                        reason.hook = truncate(&reason.hook, budget.min(MAX_HOOK_BYTES));
                    }
                    if budget < 64 && denied.reasons.len() > 1 {
                        let n = denied.reasons.len();
                        denied.reasons =
                            cap_count(std::mem::take(&mut denied.reasons), 1, |_| DenyReason {
                                hook: String::new(),
                                message: format!("{n} reasons, too long to send"),
                            });
                    }
                }
                Body::RunFinished(finished) => {
                    finished.message = truncate(&finished.message, budget);
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use ulid::Ulid;

    use super::*;

    fn run() -> RunRef {
        RunRef::new("01HN37WC3MCNE3CY9HAHWRF06K", "planning", 1)
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_saying_how_much() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(1000), 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("... (1926 more bytes)"), "{cut}");
        assert_eq!(cut.len(), 74 + "... (1926 more bytes)".len());
    }

    #[test]
    fn a_denial_keeps_ten_reasons_and_says_how_many_more() {
        let reasons = (0..25)
            .map(|i| DenyReason {
                hook: "pool initialization policy/p".into(),
                message: format!("reason {i} {}", "x".repeat(5000)),
            })
            .collect();
        let denied = RunDenied::new(&run(), reasons);
        assert_eq!(denied.reasons.len(), MAX_REASONS);
        assert_eq!(denied.reasons[9].message, "... and 16 more");
        assert!(denied.reasons[0].message.starts_with("reason 0 xxx"));
        assert!(denied.reasons[0].message.len() <= MAX_REASON_BYTES);
        let message = Message::for_worker(Ulid::generate(), Body::RunDenied(denied));
        assert!(
            encode(&message).len() < 16 << 10,
            "{}",
            encode(&message).len()
        );
    }

    #[test]
    fn a_report_shrinks_to_fit_a_small_payload_cap() {
        let reasons = (0..10)
            .map(|i| DenyReason {
                hook: "h".into(),
                message: format!("{i}{}", "y".repeat(2000)),
            })
            .collect();
        let mut message = Message::for_worker(
            Ulid::generate(),
            Body::RunDenied(RunDenied::new(&run(), reasons)),
        );
        assert!(message.shrink_to_fit(2048));
        assert!(encode(&message).len() <= 2048);
        let mut finished = Message::for_worker(
            Ulid::generate(),
            Body::RunFinished(RunFinished::new(
                &run(),
                Outcome::Failed,
                None,
                &"z".repeat(10_000),
                Some(1),
            )),
        );
        assert!(finished.shrink_to_fit(1024));
        assert!(encode(&finished).len() <= 1024);
    }
}
