//! Message decoding: any payload on any topic is refused or read, never a panic; every valid
//! message of every type round-trips on its own topic; the payload cap holds whatever the
//! payload; and every report the operator builds (however long the hooks' reasons) fits it.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use ulid::Ulid;
use workerpool_operator::protocol::limits::{MAX_REASON_BYTES, truncate};
use workerpool_operator::protocol::{
    Body, DEFAULT_MAX_PAYLOAD, DenyReason, Direction, FailureCause, Message, Outcome, PodCreated,
    PoolStatus, Reason, RunDenied, RunFinished, RunRef, RunSchedule, RunStop, WorkerDeregister,
    WorkerDeregistered, WorkerRegister, WorkerRegistered, WorkerState, WorkerStatus, decode,
    encode,
};

use crate::config;

fn ulid() -> impl Strategy<Value = Ulid> {
    any::<u128>().prop_map(Ulid::from)
}

fn run_id() -> impl Strategy<Value = String> {
    ulid().prop_map(|u| u.to_string())
}

fn stage() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?"
}

fn attempt() -> impl Strategy<Value = u32> {
    1u32..=u32::MAX
}

fn run_ref() -> impl Strategy<Value = RunRef> {
    (run_id(), stage(), attempt())
        .prop_map(|(id, stage, attempt)| RunRef::new(&id, &stage, attempt))
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

fn schedule() -> impl Strategy<Value = RunSchedule> {
    (
        (run_id(), stage(), attempt()),
        option::of(text()),
        "[a-z0-9./:-]{0,40}[a-z0-9]",
        option::of("https://[a-z0-9.-]{1,40}(:[0-9]{1,5})?"),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        metadata(),
    )
        .prop_map(
            |(
                (run_id, stage, attempt),
                runner_image,
                launcher_image,
                endpoint,
                run,
                logs,
                metadata,
            )| {
                RunSchedule {
                    run_id,
                    stage,
                    attempt,
                    runner_image,
                    launcher_image,
                    launcher_endpoint: endpoint,
                    run_timeout_seconds: run,
                    logs_timeout_seconds: logs,
                    metadata,
                }
            },
        )
}

fn cause() -> impl Strategy<Value = FailureCause> {
    prop_oneof![
        Just(FailureCause::Error),
        Just(FailureCause::OomKilled),
        Just(FailureCause::Evicted),
        Just(FailureCause::DeadlineExceeded),
        Just(FailureCause::ImagePullBackOff),
        Just(FailureCause::CreateContainerError),
        Just(FailureCause::NodeLost),
        Just(FailureCause::Unschedulable),
        Just(FailureCause::PodDeleted),
        Just(FailureCause::Unknown),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Succeeded),
        Just(Outcome::Failed),
        Just(Outcome::Stopped)
    ]
}

fn reasons() -> impl Strategy<Value = Vec<DenyReason>> {
    vec(
        (text(), text()).prop_map(|(hook, message)| DenyReason { hook, message }),
        0..4,
    )
}

/// Every body type, with every optional field present or not.
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (text(), text(), metadata()).prop_map(|(name, public_key, metadata)| {
            Body::WorkerRegister(WorkerRegister {
                name,
                public_key,
                metadata,
            })
        }),
        Just(Body::WorkerRegistered(WorkerRegistered {})),
        text().prop_map(|reason| Body::WorkerDeregister(WorkerDeregister { reason })),
        Just(Body::WorkerDeregistered(WorkerDeregistered {})),
        (
            prop_oneof![
                Just(WorkerStatus::Idle),
                Just(WorkerStatus::Busy),
                Just(WorkerStatus::Draining)
            ],
            option::of(run_ref())
        )
            .prop_map(|(state, current_run)| Body::WorkerState(WorkerState { state, current_run })),
        schedule().prop_map(Body::RunSchedule),
        (run_id(), option::of(stage()), text()).prop_map(|(run_id, stage, reason)| Body::RunStop(
            RunStop {
                run_id,
                stage,
                reason
            }
        )),
        run_ref().prop_map(Body::RunAccepted),
        (run_ref(), text(), text()).prop_map(|(run, namespace, pod_name)| {
            Body::PodCreated(PodCreated {
                run_id: run.run_id,
                stage: run.stage,
                attempt: run.attempt,
                namespace,
                pod_name,
            })
        }),
        (run_ref(), reasons()).prop_map(|(run, reasons)| Body::RunDenied(RunDenied {
            run_id: run.run_id,
            stage: run.stage,
            attempt: run.attempt,
            reasons,
        })),
        (
            run_ref(),
            outcome(),
            option::of(cause()),
            text(),
            option::of(any::<i32>())
        )
            .prop_map(|(run, outcome, cause, message, exit_code)| {
                Body::RunFinished(RunFinished {
                    run_id: run.run_id,
                    stage: run.stage,
                    attempt: run.attempt,
                    outcome,
                    cause,
                    message,
                    exit_code,
                })
            }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            option::of(any::<u32>())
        )
            .prop_map(|(workers, idle, busy, draining, pending_runs)| {
                Body::PoolStatus(PoolStatus {
                    workers,
                    idle,
                    busy,
                    draining,
                    pending_runs,
                })
            }),
    ]
}

/// A valid message with the topic it travels on.
fn message_on_its_topic() -> impl Strategy<Value = (String, Message)> {
    (
        body(),
        ulid(),
        ulid(),
        ulid(),
        0i64..4_000_000_000,
        0i32..1_000_000_000,
        "[a-z][a-z0-9_-]{0,15}",
        any::<bool>(),
    )
        .prop_map(
            |(body, id, pool, worker, seconds, nanos, namespace, to_pool)| {
                let direction = match (&body, to_pool) {
                    (Body::PoolStatus(_), true) => Direction::ToPool,
                    (Body::PoolStatus(_), false) => Direction::ToBackend,
                    (body, _) if body.allowed(Direction::ToPool) => Direction::ToPool,
                    _ => Direction::ToBackend,
                };
                let mut message = match body {
                    Body::PoolStatus(_) => Message::for_pool(body),
                    _ => Message::for_worker(worker, body),
                };
                message.id = id;
                message.sent_at = jiff::Timestamp::new(seconds, nanos).unwrap_or_default();
                let topic = message
                    .topic(&namespace, pool, direction)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                (topic, message)
            },
        )
}

/// Topics the operator and the backend read, and near misses.
fn any_topic() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            ulid(),
            option::of(ulid()),
            "(readonly|writeonly|other)",
            "[a-z$#+]{0,6}"
        )
            .prop_map(|(pool, worker, direction, namespace)| match worker {
                Some(worker) => format!("{namespace}/{direction}/{pool}/{worker}"),
                None => format!("{namespace}/{direction}/{pool}"),
            }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_payload_on_any_topic_is_refused_or_read_never_a_panic(
        topic in any_topic(),
        payload in vec(any::<u8>(), 0..2048),
    ) {
        let _ = decode(&topic, &payload, DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn any_json_value_as_a_payload_is_refused_or_read_never_a_panic(
        (topic, message) in message_on_its_topic(),
        field in "[a-zA-Z]{1,10}",
        value in any::<Option<(bool, i64, String)>>(),
    ) {
        // A valid envelope with one field replaced or added: a sender that is almost right.
        let mut document: serde_json::Value = serde_json::from_slice(&encode(&message)).unwrap_or_default();
        let replacement = match value {
            Some((true, number, _)) => serde_json::json!(number),
            Some((false, _, text)) => serde_json::json!(text),
            None => serde_json::Value::Null,
        };
        if let Some(object) = document.as_object_mut() {
            object.insert(field.clone(), replacement.clone());
            if let Some(body) = object.get_mut("body").and_then(|b| b.as_object_mut()) {
                body.insert(field, replacement);
            }
        }
        let payload = serde_json::to_vec(&document).unwrap_or_default();
        let _ = decode(&topic, &payload, DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn every_valid_message_round_trips_on_its_own_topic((topic, message) in message_on_its_topic()) {
        let payload = encode(&message);
        prop_assert_eq!(decode(&topic, &payload, payload.len()), Ok(message));
    }

    #[test]
    fn a_payload_over_the_cap_is_refused_as_oversized_whatever_it_holds(
        (topic, message) in message_on_its_topic(),
        junk in vec(any::<u8>(), 1..512),
        use_junk in any::<bool>(),
    ) {
        let payload = if use_junk { junk } else { encode(&message) };
        let cap = payload.len() - 1;
        let refused = decode(&topic, &payload, cap).map_err(|e| e.reason);
        prop_assert_eq!(refused, Err(Reason::Oversized { size: payload.len(), max: cap }));
    }

    #[test]
    fn every_denial_the_operator_reports_fits_the_payload_cap(
        run in run_ref(),
        worker in ulid(),
        reasons in vec(
            (".{0,200}", ".{0,5000}").prop_map(|(hook, message)| DenyReason { hook, message }),
            0..40,
        ),
    ) {
        let message = Message::for_worker(worker, Body::RunDenied(RunDenied::new(&run, reasons)));
        prop_assert!(encode(&message).len() <= DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn every_report_shrinks_to_fit_any_cap_of_a_kilobyte_or_more(
        run in run_ref(),
        worker in ulid(),
        reasons in vec(
            (".{0,200}", ".{0,3000}").prop_map(|(hook, message)| DenyReason { hook, message }),
            1..20,
        ),
        detail in ".{0,5000}",
        denied in any::<bool>(),
        cap in 1024usize..16384,
    ) {
        let body = if denied {
            Body::RunDenied(RunDenied::new(&run, reasons))
        } else {
            Body::RunFinished(RunFinished::new(&run, Outcome::Failed, Some(FailureCause::Error), &detail, Some(1)))
        };
        let mut message = Message::for_worker(worker, body);
        prop_assert!(message.shrink_to_fit(cap), "did not fit {cap}");
        prop_assert!(encode(&message).len() <= cap);
    }

    #[test]
    fn a_cut_text_is_a_prefix_within_its_bound_and_says_how_much_was_cut(
        text in ".{0,3000}",
        max in 32usize..4096,
    ) {
        let cut = truncate(&text, max);
        prop_assert!(cut.len() <= max, "{} > {max}", cut.len());
        if cut != text {
            let (kept, note) = cut.rsplit_once("... (").unwrap_or_default();
            prop_assert!(text.starts_with(kept));
            prop_assert_eq!(note, format!("{} more bytes)", text.len() - kept.len()));
        }
        prop_assert_eq!(truncate(&text, MAX_REASON_BYTES.max(text.len())), text);
    }
}
