use std::collections::BTreeMap;

use ulid::Ulid;

use super::*;

const POOL: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";
const WORKER: &str = "01HPS6K4BNB7BPHCDHDWFAMJNV";
const RUN: &str = "01HN37WC3MCNE3CY9HAHWRF06K";

fn pool() -> Ulid {
    Ulid::from_string(POOL).expect("ulid")
}

fn worker() -> Ulid {
    Ulid::from_string(WORKER).expect("ulid")
}

fn to_worker() -> String {
    format!("spacelift/readonly/{POOL}/{WORKER}")
}

fn from_worker() -> String {
    format!("spacelift/writeonly/{POOL}/{WORKER}")
}

fn schedule() -> RunSchedule {
    RunSchedule {
        run_id: RUN.to_string(),
        stage: "preparing".to_string(),
        attempt: 1,
        runner_image: Some("public.ecr.aws/spacelift/runner-terraform:latest".to_string()),
        launcher_image: "public.ecr.aws/spacelift/launcher:abc".to_string(),
        launcher_endpoint: Some("https://10.213.0.1:8443".to_string()),
        run_timeout_seconds: Some(3600),
        logs_timeout_seconds: Some(600),
        metadata: BTreeMap::from([("stack".to_string(), "prod-vpc".to_string())]),
    }
}

fn run_ref() -> RunRef {
    RunRef::new(RUN, "preparing", 1)
}

/// One message of every type, with the direction it travels.
fn every_message() -> Vec<(Message, Direction)> {
    let w = |body| Message::for_worker(worker(), body);
    vec![
        (
            w(Body::WorkerRegister(WorkerRegister {
                name: format!("local-pool-{}", WORKER.to_lowercase()),
                public_key: "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n".into(),
                metadata: BTreeMap::new(),
            })),
            Direction::ToBackend,
        ),
        (
            w(Body::WorkerRegistered(WorkerRegistered {})),
            Direction::ToPool,
        ),
        (
            w(Body::WorkerDeregister(WorkerDeregister {
                reason: "scaled down".into(),
            })),
            Direction::ToBackend,
        ),
        (
            w(Body::WorkerDeregistered(WorkerDeregistered {})),
            Direction::ToPool,
        ),
        (
            w(Body::WorkerState(WorkerState {
                state: WorkerStatus::Busy,
                current_run: Some(run_ref()),
            })),
            Direction::ToBackend,
        ),
        (w(Body::RunSchedule(schedule())), Direction::ToPool),
        (
            w(Body::RunStop(RunStop {
                run_id: RUN.into(),
                stage: None,
                reason: "stopped by user".into(),
            })),
            Direction::ToPool,
        ),
        (w(Body::RunAccepted(run_ref())), Direction::ToBackend),
        (
            w(Body::PodCreated(PodCreated {
                run_id: RUN.into(),
                stage: "preparing".into(),
                attempt: 1,
                namespace: "default".into(),
                pod_name: run_ref().pod_name(),
            })),
            Direction::ToBackend,
        ),
        (
            w(Body::RunDenied(RunDenied {
                run_id: RUN.into(),
                stage: "preparing".into(),
                attempt: 1,
                reasons: vec![DenyReason {
                    hook: "policy/require-labels".into(),
                    message: "pods must carry a team label".into(),
                }],
            })),
            Direction::ToBackend,
        ),
        (
            w(Body::RunFinished(RunFinished {
                run_id: RUN.into(),
                stage: "preparing".into(),
                attempt: 1,
                outcome: Outcome::Failed,
                cause: Some(FailureCause::OomKilled),
                message: "init container was OOMKilled".into(),
                exit_code: Some(137),
            })),
            Direction::ToBackend,
        ),
        (
            Message::for_pool(Body::PoolStatus(PoolStatus {
                workers: 2,
                idle: 1,
                busy: 1,
                draining: 0,
                pending_runs: None,
            })),
            Direction::ToBackend,
        ),
        (
            Message::for_pool(Body::PoolStatus(PoolStatus {
                pending_runs: Some(3),
                ..PoolStatus::default()
            })),
            Direction::ToPool,
        ),
        (
            Message::for_pool(Body::PoolDemand(PoolDemand {
                pending_runs: 5,
                schedulable_runs: 3,
                dispatched_workers: vec![WORKER.to_string()],
            })),
            Direction::ToPool,
        ),
    ]
}

#[test]
fn every_message_type_round_trips_on_its_topic() {
    let messages = every_message();
    let kinds: std::collections::BTreeSet<_> =
        messages.iter().map(|(m, _)| m.body.kind()).collect();
    assert_eq!(
        kinds.len(),
        KNOWN_TYPES.len(),
        "a test message for every type"
    );
    for (message, direction) in messages {
        let topic = message
            .topic("spacelift", pool(), direction)
            .expect("routable");
        let payload = encode(&message);
        let decoded = decode(&topic.to_string(), &payload, DEFAULT_MAX_PAYLOAD)
            .unwrap_or_else(|err| panic!("{}: {err}", message.body.kind()));
        assert_eq!(decoded, message);
    }
}

#[test]
fn the_envelope_has_the_documented_shape() {
    let mut message = Message::for_worker(worker(), Body::RunAccepted(run_ref()));
    message.id = Ulid::from_string("01J9Z8Q3M5V6W7X8Y9Z0A1B2C3").expect("ulid");
    message.sent_at = "2025-06-01T12:00:00Z".parse().expect("timestamp");
    let json: serde_json::Value = serde_json::from_slice(&encode(&message)).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "version": 1,
            "id": "01J9Z8Q3M5V6W7X8Y9Z0A1B2C3",
            "sentAt": "2025-06-01T12:00:00Z",
            "worker": WORKER,
            "type": "run.accepted",
            "body": {"runId": RUN, "stage": "preparing", "attempt": 1}
        })
    );
}

fn envelope(kind: &str, body: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "id": "01J9Z8Q3M5V6W7X8Y9Z0A1B2C3",
        "sentAt": "2025-06-01T12:00:00Z",
        "worker": WORKER,
        "type": kind,
        "body": body,
    })
}

fn schedule_json() -> serde_json::Value {
    serde_json::json!({
        "runId": RUN, "stage": "preparing", "attempt": 1,
        "launcherImage": "public.ecr.aws/spacelift/launcher:abc"
    })
}

#[test]
fn bad_payloads_are_refused_with_topic_and_reason() {
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut json = envelope("run.schedule", schedule_json());
        change(&mut json);
        json.to_string().into_bytes()
    };
    let oversized = vec![b' '; DEFAULT_MAX_PAYLOAD + 1];
    let cases: Vec<(&str, String, Vec<u8>, DropReason, String)> = vec![
        (
            "oversized",
            to_worker(),
            oversized,
            DropReason::Oversized,
            "payload of 262145 bytes exceeds the 262144-byte limit".into(),
        ),
        (
            "not JSON",
            to_worker(),
            b"{\"version\": 1,".to_vec(),
            DropReason::Malformed,
            "payload is not valid JSON at line 1 column 14: EOF while parsing a value".into(),
        ),
        (
            "not an object",
            to_worker(),
            b"[1,2]".to_vec(),
            DropReason::Malformed,
            "field (envelope): must be a JSON object".into(),
        ),
        (
            "no version",
            to_worker(),
            with(&|j| {
                j.as_object_mut().map(|o| o.remove("version"));
            }),
            DropReason::Malformed,
            "field version: missing".into(),
        ),
        (
            "a future version, whatever its body",
            to_worker(),
            br#"{"version": 2, "type": "run.teleport", "body": 7}"#.to_vec(),
            DropReason::UnknownVersion,
            "unsupported protocol version 2 (this build speaks 1)".into(),
        ),
        (
            "unknown type",
            to_worker(),
            with(&|j| j["type"] = "run.teleport".into()),
            DropReason::UnknownType,
            "unknown message type \"run.teleport\"".into(),
        ),
        (
            "unknown envelope field",
            to_worker(),
            with(&|j| j["priority"] = 5.into()),
            DropReason::Malformed,
            "field priority: unknown envelope field".into(),
        ),
        (
            "bad id",
            to_worker(),
            with(&|j| j["id"] = "42".into()),
            DropReason::Malformed,
            "field id: \"42\" is not a ULID (invalid length)".into(),
        ),
        (
            "body field missing",
            to_worker(),
            with(&|j| {
                j["body"].as_object_mut().map(|o| o.remove("launcherImage"));
            }),
            DropReason::Malformed,
            "field body.launcherImage: missing".into(),
        ),
        (
            "body field of the wrong type",
            to_worker(),
            with(&|j| j["body"]["attempt"] = "one".into()),
            DropReason::Malformed,
            "field body.attempt: invalid type: string \"one\", expected u32".into(),
        ),
        (
            "run id is not a ULID",
            to_worker(),
            with(&|j| j["body"]["runId"] = "run-1".into()),
            DropReason::Malformed,
            "field body.runId: \"run-1\" is not a ULID (invalid length)".into(),
        ),
        (
            "stage is not Pod-name safe",
            to_worker(),
            with(&|j| j["body"]["stage"] = "Planning!".into()),
            DropReason::Malformed,
            "field body.stage: \"Planning!\" must be 1-30 lowercase letters, digits or '-'".into(),
        ),
        (
            "attempt 0",
            to_worker(),
            with(&|j| j["body"]["attempt"] = 0.into()),
            DropReason::Malformed,
            "field body.attempt: must be 1 or more".into(),
        ),
        (
            "a schedule sent the wrong way",
            from_worker(),
            with(&|_| {}),
            DropReason::WrongTopic,
            "run.schedule may not be sent on a writeonly topic".into(),
        ),
        (
            "a schedule for another worker",
            format!("spacelift/readonly/{POOL}/01HPS7FRV3JJWWVJ1P9RQ7JN2N"),
            with(&|_| {}),
            DropReason::WrongTopic,
            format!(
                "envelope worker {WORKER} does not match topic worker 01HPS7FRV3JJWWVJ1P9RQ7JN2N"
            ),
        ),
        (
            "a schedule on the pool topic",
            format!("spacelift/readonly/{POOL}"),
            with(&|_| {}),
            DropReason::WrongTopic,
            "run.schedule belongs on a worker topic, not the pool topic".into(),
        ),
        (
            "a schedule without a worker",
            to_worker(),
            with(&|j| {
                j.as_object_mut().map(|o| o.remove("worker"));
            }),
            DropReason::Malformed,
            "field worker: missing (required for run.schedule)".into(),
        ),
        (
            "not a protocol topic",
            "spacelift/other".into(),
            with(&|_| {}),
            DropReason::WrongTopic,
            "topic not understood: expected <namespace>/<readonly|writeonly>/<pool>[/<worker>], got 2 levels"
                .into(),
        ),
    ];
    for (name, topic, payload, drop_reason, reason) in cases {
        let err = decode(&topic, &payload, DEFAULT_MAX_PAYLOAD)
            .expect_err(&format!("case {name} should be refused"));
        assert_eq!(err.reason.to_string(), reason, "case: {name}");
        assert_eq!(err.drop_reason(), drop_reason, "case: {name}");
        assert_eq!(
            err.to_string(),
            format!("message on topic {topic} refused: {reason}"),
            "case: {name}"
        );
    }
}

#[test]
fn unknown_body_fields_are_refused() {
    let mut body = schedule_json();
    body["priority"] = 1.into();
    let payload = envelope("run.schedule", body).to_string();
    let err = decode(&to_worker(), payload.as_bytes(), DEFAULT_MAX_PAYLOAD).expect_err("refused");
    assert_eq!(err.drop_reason(), DropReason::Malformed);
    assert_eq!(
        err.reason.to_string(),
        "field body.priority: unknown field `priority`, expected one of `runId`, `stage`, `attempt`, `runnerImage`, `launcherImage`, `launcherEndpoint`, `runTimeoutSeconds`, `logsTimeoutSeconds`, `metadata`"
    );
}

#[test]
fn the_cap_is_configurable() {
    let payload = envelope("run.schedule", schedule_json()).to_string();
    assert!(decode(&to_worker(), payload.as_bytes(), payload.len()).is_ok());
    let err = decode(&to_worker(), payload.as_bytes(), payload.len() - 1).expect_err("cap");
    assert_eq!(err.drop_reason(), DropReason::Oversized);
}

/// A cheap deterministic fuzzer: random bytes and random mutations of valid payloads must be
/// refused (or accepted) without a panic.
#[test]
fn decode_never_panics_on_garbage() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid: Vec<Vec<u8>> = every_message()
        .into_iter()
        .map(|(message, _)| encode(&message))
        .collect();
    for round in 0..20_000 {
        let mut payload = if round % 2 == 0 {
            valid[(next() as usize) % valid.len()].clone()
        } else {
            (0..(next() % 64)).map(|_| next() as u8).collect()
        };
        for _ in 0..(next() % 4) {
            if payload.is_empty() {
                break;
            }
            let at = (next() as usize) % payload.len();
            match next() % 3 {
                0 => payload[at] = next() as u8,
                1 => {
                    payload.remove(at);
                }
                _ => payload.insert(at, b"{}[]\":,0-e\\"[(next() % 11) as usize]),
            }
        }
        let _ = decode(&to_worker(), &payload, DEFAULT_MAX_PAYLOAD);
        let _ = decode(&from_worker(), &payload, DEFAULT_MAX_PAYLOAD);
    }
}

#[test]
fn redelivered_schedules_share_a_dedup_key_whatever_their_id() {
    let first = Message::for_worker(worker(), Body::RunSchedule(schedule()));
    let resent = Message::for_worker(worker(), Body::RunSchedule(schedule()));
    assert_ne!(first.id, resent.id);
    assert_eq!(first.dedup_key(), resent.dedup_key());
    let mut next_attempt = schedule();
    next_attempt.attempt = 2;
    let retry = Message::for_worker(worker(), Body::RunSchedule(next_attempt));
    assert_ne!(first.dedup_key(), retry.dedup_key());
    // The same run given to another worker (the first refused it) is another message.
    let elsewhere = Message::for_worker(Ulid::generate(), Body::RunSchedule(schedule()));
    assert_ne!(first.dedup_key(), elsewhere.dedup_key());
    let stop = Message::for_worker(
        worker(),
        Body::RunStop(RunStop {
            run_id: RUN.into(),
            stage: None,
            reason: String::new(),
        }),
    );
    assert_eq!(stop.dedup_key(), format!("id/{}", stop.id));
}

#[test]
fn run_pod_names_follow_the_seed() {
    assert_eq!(
        run_ref().pod_name(),
        "01hn37wc3mcne3cy9hahwrf06k-preparing-1"
    );
}

/// Every JSON example in docs/protocol.md that is preceded by `<!-- topic: ... -->` decodes on
/// that topic, so the document cannot drift from the code.
#[test]
fn documented_examples_decode() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let Ok(doc) = std::fs::read_to_string(doc_path) else {
        panic!("{doc_path} is missing");
    };
    let mut checked = std::collections::BTreeSet::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(topic) = line
            .trim()
            .strip_prefix("<!-- topic: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```json",
            "a json block follows the topic marker {topic}"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let payload = block.join("\n");
        let message = decode(topic, payload.as_bytes(), DEFAULT_MAX_PAYLOAD)
            .unwrap_or_else(|err| panic!("docs/protocol.md example on {topic}: {err}"));
        checked.insert(message.body.kind());
    }
    let missing: Vec<_> = KNOWN_TYPES
        .iter()
        .filter(|k| !checked.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md has no example of {missing:?}"
    );
}

#[test]
fn a_demand_with_more_schedulable_than_pending_runs_is_refused() {
    let mut json = envelope(
        "pool.demand",
        serde_json::json!({"pendingRuns": 2, "schedulableRuns": 3}),
    );
    json.as_object_mut().expect("object").remove("worker");
    let topic = format!("spacelift/readonly/{POOL}");
    let err =
        decode(&topic, json.to_string().as_bytes(), DEFAULT_MAX_PAYLOAD).expect_err("refused");
    assert_eq!(err.drop_reason(), DropReason::Malformed);
    assert!(
        err.to_string().contains("body.schedulableRuns")
            && err.to_string().contains("must not exceed pendingRuns (2)"),
        "{err}"
    );
}

#[test]
fn a_demand_travels_only_from_the_backend_to_the_pool() {
    let mut json = envelope(
        "pool.demand",
        serde_json::json!({"pendingRuns": 2, "schedulableRuns": 1}),
    );
    json.as_object_mut().expect("object").remove("worker");
    let payload = json.to_string();
    assert!(
        decode(
            &format!("spacelift/readonly/{POOL}"),
            payload.as_bytes(),
            DEFAULT_MAX_PAYLOAD
        )
        .is_ok()
    );
    let err = decode(
        &format!("spacelift/writeonly/{POOL}"),
        payload.as_bytes(),
        DEFAULT_MAX_PAYLOAD,
    )
    .expect_err("a pool may not send a demand");
    assert_eq!(err.drop_reason(), DropReason::WrongTopic);
}
