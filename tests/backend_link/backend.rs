//! The reference backend: CLI, durable queue, dispatch, reconciliation and metrics.

use std::process::Command;
use std::time::Duration;

use ulid::Ulid;
use workerpool_operator::backend::client;
use workerpool_operator::backend::store::SubmitRun;
use workerpool_operator::credentials::decode_credentials;
use workerpool_operator::protocol::{Body, Outcome, RunRef, WorkerStatus};

use crate::broker::{Broker, backend_binary};
use crate::harness::{FakeWorker, cli, start_backend, wait_for_run_state};
use crate::{new_pool, next};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_queue_survives_its_own_restart_with_nothing_lost() {
    let broker = Broker::start();
    // `pool create` prints the Secret values and writes the seed's Secret.
    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = out.path().to_string_lossy().into_owned();
    let stdout = cli(
        &broker,
        &[
            "pool",
            "create",
            "--name",
            "pool-a",
            "--key-bits",
            "2048",
            "--out-dir",
            &out_dir,
        ],
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} printed in {stdout}"))
            .to_string()
    };
    let (token, private_key) = (value("token"), value("privateKey"));
    let secret = std::fs::read_to_string(out.path().join("pool-a-secret.yaml")).expect("secret");
    assert_eq!(
        secret,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: pool-a\ntype: Opaque\nstringData:\n  token: {token}\n  privateKey: {private_key}\n"
        )
    );
    let pool = decode_credentials(token.as_bytes(), private_key.as_bytes()).expect("decode");
    assert_eq!(
        pool.broker.port, broker.port,
        "the token names the configured broker"
    );

    // Three runs are queued while no worker exists; the backend restarts.
    let server = start_backend(&broker).await;
    let base = format!("http://{}", server.addr);
    let mut submitted = Vec::new();
    for _ in 0..2 {
        let run = client::submit_run(
            &base,
            &SubmitRun {
                pool: "pool-a".into(),
                runner_image: Some("alpine:3".into()),
                ..SubmitRun::default()
            },
        )
        .await
        .expect("submit");
        assert_eq!(run.state, "queued");
        submitted.push(run.id);
    }
    let via_cli = Command::new(backend_binary())
        .args([
            "run",
            "submit",
            "--pool",
            "pool-a",
            "--image",
            "alpine:3",
            "--backend-url",
            &base,
        ])
        .output()
        .expect("run submit");
    assert!(
        via_cli.status.success(),
        "{}",
        String::from_utf8_lossy(&via_cli.stderr)
    );
    submitted.push(String::from_utf8_lossy(&via_cli.stdout).trim().to_string());
    server.shutdown().await;

    let server = start_backend(&broker).await;
    let base = format!("http://{}", server.addr);
    let listed = Command::new(backend_binary())
        .args(["run", "list", "--backend-url", &base])
        .output()
        .expect("run list");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for id in &submitted {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("queued")),
            "{id} still queued after the restart:\n{listed}"
        );
    }

    // One worker registers and works through the queue, oldest first.
    let mut worker = FakeWorker::register(&pool).await;
    let (first, schedule) = worker.next_schedule().await;
    assert_eq!(schedule.run_id, submitted[0]);
    first.ack().await.expect("ack");
    worker.run_to_end(&schedule, Outcome::Succeeded).await;
    wait_for_run_state(&base, &submitted[0], "succeeded").await;

    // The second schedule arrives; the backend restarts before the worker accepts it. After
    // the restart it sends the schedule again (same message id); the link hands it over once.
    let (second, schedule) = worker.next_schedule().await;
    assert_eq!(schedule.run_id, submitted[1]);
    server.shutdown().await;
    let server = start_backend(&broker).await;
    let base = format!("http://{}", server.addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    second.ack().await.expect("ack");
    worker.run_to_end(&schedule, Outcome::Succeeded).await;
    wait_for_run_state(&base, &submitted[1], "succeeded").await;

    let (third, schedule) = worker.next_schedule().await;
    assert_eq!(schedule.run_id, submitted[2], "no run twice, none skipped");
    third.ack().await.expect("ack");
    worker.run_to_end(&schedule, Outcome::Succeeded).await;
    wait_for_run_state(&base, &submitted[2], "succeeded").await;
    while let Some(extra) = next(&mut worker.inbound, Duration::from_secs(2)).await {
        assert!(
            matches!(
                extra.message.body,
                Body::PoolStatus(_) | Body::PoolDemand(_)
            ),
            "nothing delivered twice: {:?}",
            extra.message.body
        );
        extra.ack().await.expect("ack");
    }

    // Every event was recorded, in order.
    let run = client::list_runs(&base, Some("pool-a"))
        .await
        .expect("list")
        .into_iter()
        .find(|r| r.id == submitted[1])
        .expect("run");
    let kinds: Vec<&str> = run.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "dispatched",
            "run.accepted",
            "worker.state",
            "run.podCreated",
            "run.finished",
        ],
        "{kinds:?}"
    );
    assert_eq!(
        run.pod_name.as_deref(),
        Some(RunRef::new(&run.id, "preparing", 1).pod_name().as_str())
    );

    // /metrics has the seed's pool gauges.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let pool_label = format!(
        "worker_pool_id=\"{}\",worker_pool_name=\"pool-a\"",
        pool.pool_id
    );
    for line in [
        format!("spacelift_worker_pool_runs_pending{{{pool_label}}} 0"),
        format!("spacelift_worker_pool_workers{{{pool_label}}} 1"),
        format!("spacelift_worker_pool_workers_busy{{{pool_label}}} 0"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_fails_lost_runs_and_stops_phantom_ones() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let server = start_backend(&broker).await;
    let base = format!("http://{}", server.addr);
    let mut worker = FakeWorker::register(&pool).await;

    // Lost: the worker accepts a run, then reports IDLE without finishing it.
    let run = client::submit_run(
        &base,
        &SubmitRun {
            pool: pool.pool_id.to_string(),
            ..SubmitRun::default()
        },
    )
    .await
    .expect("submit");
    let (delivery, schedule) = worker.next_schedule().await;
    delivery.ack().await.expect("ack");
    let reference = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
    worker.send(Body::RunAccepted(reference.clone())).await;
    worker.state(WorkerStatus::Busy, Some(reference)).await;
    worker.state(WorkerStatus::Idle, None).await;
    wait_for_run_state(&base, &run.id, "failed").await;
    let runs = client::list_runs(&base, None).await.expect("list");
    assert_eq!(runs[0].cause.as_deref(), Some("WorkerLost"));

    // Phantom: the worker reports a run the backend never gave it.
    let phantom = RunRef::new(&Ulid::generate().to_string(), "planning", 1);
    worker
        .state(WorkerStatus::Busy, Some(phantom.clone()))
        .await;
    let stop = worker.next().await;
    let Body::RunStop(stop_body) = &stop.message.body else {
        panic!("expected run.stop, got {:?}", stop.message.body);
    };
    assert_eq!(stop_body.run_id, phantom.run_id);
    stop.ack().await.expect("ack");

    // A stop request through the API reaches the worker running the run.
    worker.state(WorkerStatus::Idle, None).await;
    let run = client::submit_run(
        &base,
        &SubmitRun {
            pool: "pool-a".into(),
            ..SubmitRun::default()
        },
    )
    .await
    .expect("submit");
    let (delivery, _) = worker.next_schedule().await;
    delivery.ack().await.expect("ack");
    client::stop_run(&base, &run.id).await.expect("stop");
    let stop = worker.next().await;
    assert!(matches!(&stop.message.body, Body::RunStop(s) if s.run_id == run.id));
    stop.ack().await.expect("ack");
    server.shutdown().await;
}
