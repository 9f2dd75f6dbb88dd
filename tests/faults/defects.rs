//! The defects of issue 13, one test each, on the real system: each failed before the run's
//! life became one state machine (run them against an older binary with
//! `WORKERPOOL_OPERATOR_BIN`), and each closes with the books.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use workerpool_operator::backend::client::stop_run;
use workerpool_operator::backend::store::RunView;
use workerpool_operator::controller::FINALIZER;
use workerpool_operator::crd::{LABEL_RUN_ID, WorkerState};
use workerpool_operator::protocol::{Body, Message, RunSchedule, WorkerDeregistered};

use crate::admission::Faults;
use crate::bench::{AUTO_FINISH, Bench, shared};
use crate::books::balance;
use crate::stack::{Stack, WAIT};
use crate::support::wait_for;

/// Waits until the API server refused `resource` writes of the operator at least once.
async fn refused(bench: &Bench, resource: &str) -> anyhow::Result<()> {
    wait_for(&format!("a refused {resource} write"), WAIT, || async {
        let n = bench
            .audit
            .refused(&bench.stack.ns.name, &bench.user, resource)?;
        Ok((n > 0).then_some(()))
    })
    .await
    .with_context(|| bench.stack.diagnostics())?;
    // What a wrong order would do next takes a moment: give it that moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

fn busy(worker: &workerpool_operator::crd::Worker) -> bool {
    worker.status.as_ref().and_then(|s| s.state) != Some(WorkerState::Idle)
}

#[tokio::test]
async fn a_stopped_run_is_reported_stopped_only_once_its_pod_is_gone() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let bench = Bench::with_pool("d-stop", "stop", 1, "", &[]).await?;
    let faults = Faults::install(&bench.stack.ns.name, &bench.user).await?;
    let run = bench
        .stack
        .submit("stop", crate::bench::RUNNER, &[])
        .await?;
    let pod = bench.stack.wait_run_pod(&run.id).await?;
    faults.refuse(&["pods:DELETE"]).await?;
    stop_run(&bench.stack.backend_url, &run.id).await?;
    refused(&bench, "pods").await?;
    let seen = bench.stack.run(&run.id).await?;
    ensure!(
        seen.state != "stopped",
        "reported stopped while its Pod runs on"
    );
    ensure!(bench.stack.pods().get_opt(&pod.name_any()).await?.is_some());
    ensure!(
        busy(&bench.stack.worker_list().await?[0]),
        "the worker was freed while its Pod runs: the backend would give it a second run"
    );
    faults.refuse(&[]).await?;
    bench.stack.wait_run(&run.id, "stopped").await?;
    bench
        .stack
        .wait_pod_gone("the stopped Pod", &pod.name_any())
        .await?;
    balance("defect: stop", &bench.stack, &bench.audit, 1).await?;
    drop(faults);
    bench.stack.ns.cleanup().await
}

#[tokio::test]
async fn an_abandoned_pod_is_gone_before_its_run_is_reported_failed() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let nowhere = "  pod:\n    nodeSelector:\n      no-such-label: x\n";
    let bench = Bench::with_pool("d-abandon", "nowhere", 1, nowhere, &[]).await?;
    let faults = Faults::install(&bench.stack.ns.name, &bench.user).await?;
    faults.refuse(&["pods:DELETE"]).await?;
    let run = bench
        .stack
        .submit("nowhere", crate::bench::RUNNER, &[])
        .await?;
    // The operator gives up on it after --unschedulable-timeout (5 s) and must delete it.
    refused(&bench, "pods").await?;
    let seen = bench.stack.run(&run.id).await?;
    ensure!(
        seen.state != "failed",
        "reported failed while its Pod may still start when a node appears"
    );
    let pods = bench
        .stack
        .pods()
        .list(&ListParams::default().labels(&format!("{LABEL_RUN_ID}={}", run.id)))
        .await?;
    ensure!(pods.items.len() == 1);
    faults.refuse(&[]).await?;
    let failed = bench.stack.wait_run(&run.id, "failed").await?;
    ensure!(
        failed.cause.as_deref() == Some("Unschedulable"),
        "{failed:?}"
    );
    bench
        .stack
        .wait_pod_gone("the abandoned Pod", &pods.items[0].name_any())
        .await?;
    balance("defect: abandoned Pod", &bench.stack, &bench.audit, 1).await?;
    drop(faults);
    bench.stack.ns.cleanup().await
}

/// The schedule of `run` as the backend dispatched it, under its original message id.
fn original_schedule(run: &RunView) -> anyhow::Result<Message> {
    let id = run
        .events
        .iter()
        .find(|e| e.kind == "dispatched")
        .and_then(|e| e.detail["messageId"].as_str())
        .context("the run's dispatch")?
        .parse()?;
    let schedule = RunSchedule {
        run_id: run.id.clone(),
        stage: run.stage.clone(),
        attempt: run.attempt,
        runner_image: run.runner_image.clone(),
        launcher_image: run.launcher_image.clone(),
        launcher_endpoint: None,
        run_timeout_seconds: None,
        logs_timeout_seconds: None,
        metadata: Default::default(),
    };
    let worker = run.worker_id.clone().context("the run's worker")?.parse()?;
    let mut message = Message::for_worker(worker, Body::RunSchedule(schedule));
    message.id = id;
    Ok(message)
}

/// Waits until the operator has handled `run`'s redelivered schedule: it says so, or a Pod
/// for it appears.
async fn redelivery_handled(stack: &Stack, run: &str) -> anyhow::Result<()> {
    let selector = format!("{LABEL_RUN_ID}={run}");
    wait_for("the redelivered schedule handled", WAIT, || async {
        let pods = stack
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?;
        let log = stack.operator_log();
        let answered = log.contains("a copy of a run that ended long ago")
            || log.contains("already finished: re-sending its report");
        Ok((answered || !pods.items.is_empty()).then_some(()))
    })
    .await
    .with_context(|| stack.diagnostics())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

#[tokio::test]
async fn a_schedule_redelivered_eleven_runs_later_creates_no_pod() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let mut bench = Bench::with_pool("d-eleven", "eleven", 1, AUTO_FINISH, &[]).await?;
    let pool = bench.stack.worker_list().await?[0]
        .labels()
        .get(workerpool_operator::crd::LABEL_WORKERPOOL)
        .cloned()
        .context("the pool label")?;
    let first = bench
        .stack
        .submit("eleven", crate::bench::RUNNER, &[])
        .await?;
    let first = bench.stack.wait_run(&first.id, "succeeded").await?;
    for id in bench.submit("eleven", 11).await? {
        bench.stack.wait_run(&id, "succeeded").await?;
    }
    // A restarted operator forgot which messages it handled; the first schedule comes back.
    bench.stack.restart_operator()?;
    bench.stack.wait_registered("eleven", 1).await?;
    bench
        .stack
        .publish_as_backend(pool.parse()?, &original_schedule(&first)?)
        .await?;
    redelivery_handled(&bench.stack, &first.id).await?;
    let pod = first.pod_name.clone().unwrap_or_default();
    let creates = bench.audit.pod_creates(&bench.stack.ns.name)?;
    ensure!(
        creates.get(&pod) == Some(&1),
        "run {} ended long ago, yet its Pod was created {:?} times",
        first.id,
        creates.get(&pod)
    );
    balance(
        "defect: redelivery after ten runs",
        &bench.stack,
        &bench.audit,
        1,
    )
    .await?;
    bench.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_schedule_redelivered_after_its_pod_was_deleted_while_the_operator_was_down_creates_none()
-> anyhow::Result<()> {
    let _cluster = shared().await;
    let mut bench = Bench::with_pool("d-down", "down", 1, "", &[]).await?;
    let run = bench
        .stack
        .submit("down", crate::bench::RUNNER, &[])
        .await?;
    let pod = bench.stack.wait_run_pod(&run.id).await?;
    let run = bench.stack.run(&run.id).await?;
    let pool = run.pool_id.parse()?;
    bench.stack.kill_operator();
    let pods: kube::Api<Pod> = bench.stack.pods();
    pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await?;
    bench
        .stack
        .wait_pod_gone("the Pod deleted", &pod.name_any())
        .await?;
    bench
        .stack
        .publish_as_backend(pool, &original_schedule(&run)?)
        .await?;
    bench.stack.restart_operator()?;
    let failed = bench.stack.wait_run(&run.id, "failed").await?;
    ensure!(failed.cause.as_deref() == Some("PodDeleted"), "{failed:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let creates = bench.audit.pod_creates(&bench.stack.ns.name)?;
    ensure!(
        creates.get(&pod.name_any()) == Some(&1),
        "its Pod was created again: {creates:?}"
    );
    balance(
        "defect: redelivery after a deletion",
        &bench.stack,
        &bench.audit,
        1,
    )
    .await?;
    bench.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_run_the_backend_heard_denied_never_gets_a_pod() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let mut bench = Bench::with_pool("d-denied", "denied", 1, AUTO_FINISH, &[]).await?;
    let faults = Faults::install(&bench.stack.ns.name, &bench.user).await?;
    // The Pod is refused, and so is the write that would free its worker.
    faults
        .refuse(&["pods:CREATE", "workers/status:RELEASE"])
        .await?;
    let run = bench
        .stack
        .submit("denied", crate::bench::RUNNER, &[])
        .await?;
    refused(&bench, "workers/status").await?;
    faults.refuse(&[]).await?;
    // Whatever the operator still holds unacknowledged comes back after a restart.
    bench.stack.restart_operator()?;
    let ended = wait_for("the run ended", WAIT, || async {
        let run = bench.stack.run(&run.id).await?;
        // Denied (and never created), or created after all (nothing was said before), or
        // failed by the restarted process, which cannot know the Pod was never created.
        Ok(matches!(run.state.as_str(), "denied" | "succeeded" | "failed").then_some(run))
    })
    .await
    .with_context(|| bench.stack.diagnostics())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let creates = bench.audit.pod_creates(&bench.stack.ns.name)?;
    let pod = format!(
        "{}-{}-{}",
        run.id.to_lowercase(),
        ended.stage,
        ended.attempt
    );
    if bench.stack.run(&run.id).await?.state == "denied" {
        ensure!(
            !creates.contains_key(&pod),
            "the backend heard the run denied, and then its Pod was created"
        );
    }
    balance("defect: denied then created", &bench.stack, &bench.audit, 1).await?;
    drop(faults);
    bench.stack.ns.cleanup().await
}

#[tokio::test]
async fn worker_deregistered_for_a_live_worker_keeps_its_finalizer() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let bench = Bench::with_pool("d-dereg", "live", 1, "", &[]).await?;
    let worker = bench.stack.worker_list().await?.remove(0);
    let pool = worker
        .labels()
        .get(workerpool_operator::crd::LABEL_WORKERPOOL)
        .context("the pool label")?
        .parse()?;
    let id = worker
        .labels()
        .get(workerpool_operator::crd::LABEL_ULID)
        .context("the worker label")?
        .parse()?;
    let message = Message::for_worker(id, Body::WorkerDeregistered(WorkerDeregistered {}));
    bench.stack.publish_as_backend(pool, &message).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = bench.stack.workers().get(&worker.name_any()).await?;
    ensure!(
        after.finalizers().iter().any(|f| f == FINALIZER),
        "a live Worker lost its deregistration finalizer"
    );
    bench.stack.wait_registered("live", 1).await?;
    bench.stack.ns.cleanup().await
}
