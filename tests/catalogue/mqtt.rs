//! MQTT payloads a faulty backend could send a pool: oversized, not JSON, another protocol
//! version, an unknown type, missing and invalid fields, a message on the wrong topic, a run
//! for another pool's worker, and a flood of them. Each is dropped (acknowledged, so never
//! redelivered) with a log line naming the topic and the reason; the pool then still runs a
//! run, and the bystander pool runs throughout.

use kube::ResourceExt;
use serde_json::json;
use ulid::Ulid;
use workerpool_operator::crd::LABEL_ULID;
use workerpool_operator::protocol::{
    Body, Direction, Message, Outcome as RunOutcome, RunFinished, RunRef, RunSchedule, Topic,
    encode,
};

use crate::harness::{BYSTANDER, Catalogue, RUNNER, Seen, verdict};
use crate::stack::pool_yaml;
use crate::support::Outcome;

const TARGET: &str = "target";

fn schedule() -> RunSchedule {
    RunSchedule {
        run_id: Ulid::generate().to_string(),
        stage: "preparing".into(),
        attempt: 1,
        runner_image: Some(RUNNER.into()),
        launcher_image: "public.ecr.aws/spacelift/launcher:v1".into(),
        ..RunSchedule::default()
    }
}

/// A schedule envelope for `worker` as JSON, to be broken.
fn envelope(worker: Ulid) -> serde_json::Value {
    let message = Message::for_worker(worker, Body::RunSchedule(schedule()));
    serde_json::from_slice(&encode(&message)).unwrap_or_default()
}

struct PayloadCase {
    name: &'static str,
    payload: Vec<u8>,
    /// The log line's `reason=... detail=...`.
    logged: String,
}

fn cases(worker: Ulid, other_worker: Ulid) -> Vec<PayloadCase> {
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut document = envelope(worker);
        edit(&mut document);
        serde_json::to_vec(&document).unwrap_or_default()
    };
    let case = |name, payload, reason: &str, detail: &str| PayloadCase {
        name,
        payload,
        logged: format!("reason=\"{reason}\" detail={detail}"),
    };
    let finished = Message::for_worker(
        worker,
        Body::RunFinished(RunFinished::new(
            &RunRef::new(&Ulid::generate().to_string(), "preparing", 1),
            RunOutcome::Succeeded,
            None,
            "",
            Some(0),
        )),
    );
    vec![
        case(
            "a payload of 300 KB",
            vec![b'x'; 300_000],
            "oversized",
            "payload of 300000 bytes exceeds the 262144-byte limit",
        ),
        case(
            "a payload that is not JSON",
            b"run it!".to_vec(),
            "malformed",
            "payload is not valid JSON at line 1 column 1: expected value",
        ),
        case(
            "a JSON array",
            b"[1,2,3]".to_vec(),
            "malformed",
            "field (envelope): must be a JSON object",
        ),
        case(
            "protocol version 2",
            with(&|d| d["version"] = json!(2)),
            "unknown_version",
            "unsupported protocol version 2 (this build speaks 1)",
        ),
        case(
            "an unknown type",
            with(&|d| d["type"] = json!("run.explode")),
            "unknown_type",
            "unknown message type \"run.explode\"",
        ),
        case(
            "a schedule without a run id",
            with(&|d| {
                if let Some(body) = d["body"].as_object_mut() {
                    body.remove("runId");
                }
            }),
            "malformed",
            "field body.runId: missing",
        ),
        case(
            "a schedule whose stage cannot be part of a Pod name",
            with(&|d| d["body"]["stage"] = json!("Plan_1")),
            "malformed",
            "field body.stage: \"Plan_1\" must be 1-30 lowercase letters, digits or '-'",
        ),
        case(
            "a schedule with an unknown field",
            with(&|d| d["body"]["privileged"] = json!(true)),
            "malformed",
            "field body.privileged: unknown field `privileged`, expected one of `runId`, `stage`, `attempt`, `runnerImage`, `launcherImage`, `launcherEndpoint`, `runTimeoutSeconds`, `logsTimeoutSeconds`, `metadata`",
        ),
        case(
            "a report sent the wrong way",
            encode(&finished),
            "wrong_topic",
            "run.finished may not be sent on a readonly topic",
        ),
        case(
            "an envelope naming another worker than its topic",
            with(&|d| d["worker"] = json!(other_worker.to_string())),
            "wrong_topic",
            &format!("envelope worker {other_worker} does not match topic worker {worker}"),
        ),
    ]
}

#[tokio::test]
async fn bad_payloads_are_dropped_and_logged_and_the_pool_runs_on() -> anyhow::Result<()> {
    let cat = Catalogue::new("cat-mqtt", &[]).await?;
    let pool_id: Ulid = cat.stack.create_credentials(TARGET, TARGET)?.parse()?;
    cat.stack.apply(&pool_yaml(TARGET, TARGET, 1, ""))?;
    cat.stack.wait_registered(TARGET, 1).await?;
    let ulid_of = |pool: &str| {
        let workers = cat.stack.worker_list();
        let pool = pool.to_string();
        async move {
            let workers = workers.await?;
            let worker = workers
                .iter()
                .find(|w| w.name_any().starts_with(&format!("{pool}-")))
                .and_then(|w| w.labels().get(LABEL_ULID).cloned())
                .unwrap_or_default();
            anyhow::Ok(worker.parse::<Ulid>()?)
        }
    };
    let worker = ulid_of(TARGET).await?;
    let bystanders_worker = ulid_of(BYSTANDER).await?;
    let state = workerpool_operator::backend::state::StateDir::new(&cat.stack.broker.state_dir);
    let namespace = state.config()?.topic_namespace;
    let namespace = namespace.as_str();
    let topic = Topic::worker(namespace, Direction::ToPool, pool_id, worker);
    let checks = async {
        let cases = cases(worker, bystanders_worker);
        let mut failures = Vec::new();
        for case in &cases {
            cat.stack
                .backend
                .publish_payload_unrecorded(&topic, case.payload.clone())
                .await?;
            let logged = format!("topic={topic} {}", case.logged);
            if let Err(err) = cat.check(TARGET, "", &Seen::Log(logged)).await {
                failures.push(format!("{}: {err:#}", case.name));
            }
        }
        // Another pool's worker, addressed consistently on this pool's topic: the envelope is
        // fine, but the worker is not this pool's, and the run is refused.
        let stray = Topic::worker(namespace, Direction::ToPool, pool_id, bystanders_worker);
        let message = Message::for_worker(bystanders_worker, Body::RunSchedule(schedule()));
        cat.stack
            .backend
            .publish_payload_unrecorded(&stray, encode(&message))
            .await?;
        let refused =
            format!("worker {bystanders_worker} is not a Worker of WorkerPool {{ns}}/{TARGET}");
        if let Err(err) = cat.check(TARGET, "", &Seen::Log(refused)).await {
            failures.push(format!("a run for another pool's worker: {err:#}"));
        }
        // A flood: 2000 bad payloads, each dropped; then the pool takes its next run.
        for i in 0..2000u32 {
            let payload = format!("{{\"flood\": {i}").into_bytes();
            cat.stack
                .backend
                .publish_payload_unrecorded(&topic, payload)
                .await?;
        }
        let last = format!(
            "topic={topic} reason=\"malformed\" detail=payload is not valid JSON at line 1 column 14: EOF while parsing an object"
        );
        if let Err(err) = cat.check(TARGET, "", &Seen::Log(last)).await {
            failures.push(format!("a flood of bad payloads: {err:#}"));
        }
        let run = cat.submit(TARGET).await?;
        let pod = cat.stack.wait_run_pod(&run).await?;
        cat.stack
            .finish(&pod.name_any(), Outcome::Succeeded)
            .await?;
        cat.stack.wait_run(&run, "succeeded").await?;
        verdict("MQTT payload", cases.len() + 2, failures)
    };
    cat.alongside(checks).await?;
    cat.end().await
}
