//! What a worker writes down about a run stage attempt ([`FinishedRun`]) and the messages that
//! report it. Pure, and a leaf of the controller: it imports nothing of it but the pure
//! [`super::outcome`].
//!
//! Every report can be sent again as the same message: a finished or denied run under the
//! message id recorded with it, `run.accepted` and `run.podCreated` under an id derived from
//! the run stage attempt, its worker and when it was taken. The backend applies each message
//! id once, so a copy sent after a crash or a redelivery changes nothing there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ulid::Ulid;

use super::outcome::Ending;
use crate::crd::{CurrentRun, DeniedBy, FinishedOutcome, FinishedRun};
use crate::protocol::{
    Body, DenyReason, FailureCause, Message, Outcome, PodCreated, RunDenied, RunFinished, RunRef,
    limits,
};

/// Workers are named `<pool>-<lowercase worker ULID>`.
pub fn worker_name(pool: &str, worker: Ulid) -> String {
    format!("{pool}-{}", worker.to_string().to_lowercase())
}

/// The run stage attempt a worker holds.
pub fn run_of(current: &CurrentRun) -> RunRef {
    RunRef::new(&current.run_id, &current.stage, current.attempt)
}

/// What the worker reports about a run stage that ended with `ending`, under a fresh message id.
pub fn finished_record(
    run: &RunRef,
    pod_name: &str,
    ending: &Ending,
    at: Timestamp,
) -> FinishedRun {
    let outcome = match ending.outcome {
        Outcome::Succeeded => FinishedOutcome::Succeeded,
        Outcome::Failed => FinishedOutcome::Failed,
        Outcome::Stopped => FinishedOutcome::Stopped,
    };
    FinishedRun {
        cause: ending.cause.and_then(cause_name),
        message: limits::cap_detail(&ending.message),
        exit_code: ending.exit_code,
        ..new_record(run, pod_name, outcome, at)
    }
}

/// What the worker reports about a run stage whose Pod was refused, under a fresh message id.
pub fn denied_record(
    run: &RunRef,
    pod_name: &str,
    reasons: &[DenyReason],
    at: Timestamp,
) -> FinishedRun {
    FinishedRun {
        denied_by: limits::cap_reasons(reasons.to_vec())
            .into_iter()
            .map(|r| DeniedBy {
                hook: r.hook,
                message: r.message,
            })
            .collect(),
        ..new_record(run, pod_name, FinishedOutcome::Denied, at)
    }
}

/// A record of `run` with no detail yet, under a fresh message id.
fn new_record(
    run: &RunRef,
    pod_name: &str,
    outcome: FinishedOutcome,
    at: Timestamp,
) -> FinishedRun {
    FinishedRun {
        run_id: run.run_id.clone(),
        stage: run.stage.clone(),
        attempt: run.attempt,
        pod_name: pod_name.to_string(),
        message_id: Ulid::generate().to_string(),
        finished_at: Time(at),
        outcome,
        cause: None,
        message: String::new(),
        exit_code: None,
        denied_by: Vec::new(),
    }
}

/// The `run.finished` or `run.denied` a record stands for, under the record's message id: a
/// re-sent report is the same message, so a backend that applied it recognises the copy.
pub fn report_message(worker: Ulid, record: &FinishedRun) -> Message {
    let run = RunRef::new(&record.run_id, &record.stage, record.attempt);
    let outcome = match record.outcome {
        FinishedOutcome::Succeeded => Some(Outcome::Succeeded),
        FinishedOutcome::Failed => Some(Outcome::Failed),
        FinishedOutcome::Stopped => Some(Outcome::Stopped),
        FinishedOutcome::Denied => None,
    };
    let body = match outcome {
        Some(outcome) => Body::RunFinished(RunFinished::new(
            &run,
            outcome,
            record.cause.as_deref().and_then(parse_cause),
            &record.message,
            record.exit_code,
        )),
        None => Body::RunDenied(RunDenied::new(
            &run,
            record
                .denied_by
                .iter()
                .map(|r| DenyReason {
                    hook: r.hook.clone(),
                    message: r.message.clone(),
                })
                .collect(),
        )),
    };
    let mut message = Message::for_worker(worker, body);
    if let Ok(id) = record.message_id.parse() {
        message.id = id;
    }
    message
}

/// `run.accepted` for the run the worker holds, always under the same id.
pub fn accepted_message(worker: Ulid, current: &CurrentRun) -> Message {
    let mut message = Message::for_worker(worker, Body::RunAccepted(run_of(current)));
    message.id = derived_id("run.accepted", worker, current);
    message
}

/// `run.podCreated` for the run the worker holds, always under the same id.
pub fn pod_created_message(worker: Ulid, current: &CurrentRun, namespace: &str) -> Message {
    let body = Body::PodCreated(PodCreated {
        run_id: current.run_id.clone(),
        stage: current.stage.clone(),
        attempt: current.attempt,
        namespace: namespace.to_string(),
        pod_name: current.pod_name.clone(),
    });
    let mut message = Message::for_worker(worker, body);
    message.id = derived_id("run.podCreated", worker, current);
    message
}

/// A message id that is the same whenever the same report of the same run stage attempt is
/// made again: the second it was taken, then 80 bits of a SHA-256 over what names it.
fn derived_id(kind: &str, worker: Ulid, current: &CurrentRun) -> Ulid {
    let named = format!("{kind}/{worker}/{}", current.pod_name);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, named.as_bytes());
    let random = digest.as_ref()[..10]
        .iter()
        .fold(0u128, |acc, byte| (acc << 8) | u128::from(*byte));
    // Whole seconds: that is all a Kubernetes timestamp keeps of the time once recorded.
    let millis = u64::try_from(current.scheduled_at.0.as_second())
        .unwrap_or(0)
        .saturating_mul(1000);
    Ulid::from_parts(millis, random)
}

/// The outcome label of the run outcome metric.
pub fn outcome_label(outcome: FinishedOutcome) -> &'static str {
    match outcome {
        FinishedOutcome::Succeeded => "succeeded",
        FinishedOutcome::Failed => "failed",
        FinishedOutcome::Stopped => "stopped",
        FinishedOutcome::Denied => "denied",
    }
}

/// The cause label of the run outcome metric (`""` when there is none).
pub fn cause_label(record: &FinishedRun) -> String {
    record
        .cause
        .as_deref()
        .and_then(parse_cause)
        .map(|c| format!("{c:?}"))
        .unwrap_or_default()
}

/// A failure cause as the protocol spells it, e.g. "OOMKilled".
fn cause_name(cause: FailureCause) -> Option<String> {
    serde_json::to_value(cause)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

fn parse_cause(name: &str) -> Option<FailureCause> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRef {
        RunRef::new("01HN37WC3MCNE3CY9HAHWRF06K", "preparing", 2)
    }

    fn current() -> CurrentRun {
        CurrentRun {
            run_id: run().run_id,
            stage: "preparing".into(),
            attempt: 2,
            pod_name: run().pod_name(),
            scheduled_at: Time("2025-06-01T12:00:00Z".parse().unwrap()),
            pod_created: false,
            creator: None,
            ending: None,
        }
    }

    #[test]
    fn a_recorded_outcome_is_re_sent_as_the_same_message() {
        let ending = Ending {
            outcome: Outcome::Failed,
            cause: Some(FailureCause::OomKilled),
            message: "container init was OOMKilled".into(),
            exit_code: Some(137),
            abandon: false,
        };
        let record = finished_record(&run(), "p", &ending, Timestamp::UNIX_EPOCH);
        assert_eq!(record.cause.as_deref(), Some("OOMKilled"));
        assert_eq!(cause_label(&record), "OomKilled");
        let worker = Ulid::generate();
        let first = report_message(worker, &record);
        let again = report_message(worker, &record);
        assert_eq!(first.id, again.id, "a re-sent report keeps its message id");
        assert_eq!(first.id.to_string(), record.message_id);
        assert_eq!(
            first.body,
            Body::RunFinished(RunFinished {
                run_id: run().run_id,
                stage: "preparing".into(),
                attempt: 2,
                outcome: Outcome::Failed,
                cause: Some(FailureCause::OomKilled),
                message: "container init was OOMKilled".into(),
                exit_code: Some(137),
            })
        );
    }

    #[test]
    fn a_recorded_denial_is_re_sent_with_every_reason() {
        let reasons = vec![
            DenyReason {
                hook: "policy/initialization".into(),
                message: "pin a tag".into(),
            },
            DenyReason {
                hook: "kubernetes".into(),
                message: "forbidden".into(),
            },
        ];
        let record = denied_record(&run(), "p", &reasons, Timestamp::UNIX_EPOCH);
        let message = report_message(Ulid::generate(), &record);
        let Body::RunDenied(denied) = message.body else {
            panic!("{:?}", message.body)
        };
        assert_eq!((denied.attempt, denied.reasons), (2, reasons));
    }

    #[test]
    fn acceptance_and_pod_creation_are_reported_again_under_the_same_ids() {
        let worker: Ulid = "01HPS6K4BNB7BPHCDHDWFAMJNV".parse().unwrap();
        let accepted = accepted_message(worker, &current());
        assert_eq!(accepted.id, accepted_message(worker, &current()).id);
        let created = pod_created_message(worker, &current(), "default");
        assert_eq!(created.id, pod_created_message(worker, &current(), "ns").id);
        assert_ne!(accepted.id, created.id, "two reports, two ids");
        let other: Ulid = "01HPS6K4BNB7BPHCDHDWFAMJNW".parse().unwrap();
        assert_ne!(accepted.id, accepted_message(other, &current()).id);
        // The id's time is when the run was taken, so ids still sort by time.
        assert_eq!(
            accepted.id.timestamp_ms(),
            1_748_779_200_000,
            "2025-06-01T12:00:00Z"
        );
    }
}
