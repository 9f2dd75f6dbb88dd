//! The run's life against a fake API server: each handler and reconciler branch, each defect
//! of issue 13, and each crash window (a failed call, or a restart between two steps).

mod pods;
mod schedule;
mod stop;
mod workers;

use std::collections::BTreeSet;

use http::Method;

use crate::controller::fixtures::Harness;
use crate::protocol::{Body, Message, Outcome, RunFinished};

/// The distinct reports (run.finished / run.denied message ids) sent.
fn reports(sent: &[Message]) -> BTreeSet<ulid::Ulid> {
    sent.iter()
        .filter(|m| matches!(m.body.kind(), "run.finished" | "run.denied"))
        .map(|m| m.id)
        .collect()
}

/// The run.finished sent last.
fn finished(h: &Harness) -> RunFinished {
    h.sent()
        .into_iter()
        .rev()
        .find_map(|m| match m.body {
            Body::RunFinished(f) => Some(f),
            _ => None,
        })
        .expect("a run.finished")
}

/// The outcome and cause reported last.
fn reported(h: &Harness) -> (Outcome, Option<String>) {
    let f = finished(h);
    (
        f.outcome,
        f.cause
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
    )
}

/// How many run Pods were created (successful POSTs).
fn creates(h: &Harness) -> usize {
    h.api.count(Method::POST, "/pods")
}
