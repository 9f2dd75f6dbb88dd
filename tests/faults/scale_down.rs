//! Scaling a pool down to nothing, and deleting one, while its workers are busy: no run is
//! killed, nothing is orphaned.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::ResourceExt;
use workerpool_operator::crd::WorkerState;

use crate::bench::{Bench, scaled, shared};
use crate::books::balance;
use crate::support::{Outcome, wait_for};

#[tokio::test]
async fn scaling_a_pool_to_zero_with_runs_in_flight_kills_none() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let (size, in_flight) = (scaled(10, 50), scaled(4, 20));
    let bench = Bench::with_pool("f-scale", "scale", size as i32, "", &[]).await?;
    bench.submit("scale", in_flight).await?;
    let pods = bench.running_pods(in_flight).await?;
    bench
        .stack
        .ns
        .kubectl(["scale", "workerpools", "scale", "--replicas=0"])?;
    wait_for(
        "only the busy workers left, DRAINING",
        Duration::from_secs(120),
        || async {
            let workers = bench.stack.worker_list().await?;
            let draining = workers
                .iter()
                .filter(|w| w.status.as_ref().and_then(|s| s.state) == Some(WorkerState::Draining))
                .count();
            Ok((workers.len() == in_flight && draining == in_flight).then_some(()))
        },
    )
    .await
    .with_context(|| bench.stack.diagnostics())?;
    for pod in &pods {
        ensure!(
            bench.stack.pods().get_opt(pod).await?.is_some(),
            "run Pod {pod} was killed"
        );
        bench.stack.finish(pod, Outcome::Succeeded).await?;
    }
    let figures = balance("scaled to 0 while busy", &bench.stack, &bench.audit, 1).await?;
    ensure!(
        figures.outcomes.get("succeeded") == Some(&in_flight),
        "every run in flight succeeded: {:?}",
        figures.outcomes
    );
    wait_for("no Worker left", Duration::from_secs(60), || async {
        Ok(bench.stack.worker_list().await?.is_empty().then_some(()))
    })
    .await?;
    bench.stack.ns.cleanup().await
}

#[tokio::test]
async fn deleting_a_pool_with_busy_workers_lets_their_runs_finish_first() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let bench = Bench::with_pool("f-delete", "doomed", 3, "", &[]).await?;
    bench.submit("doomed", 2).await?;
    let pods = bench.running_pods(2).await?;
    bench
        .stack
        .ns
        .kubectl(["delete", "workerpool", "doomed", "--wait=false"])?;
    // The idle worker goes; the busy ones drain, their runs untouched.
    wait_for(
        "the busy workers draining",
        Duration::from_secs(60),
        || async {
            let workers = bench.stack.worker_list().await?;
            let draining = workers.iter().all(|w| {
                w.metadata.deletion_timestamp.is_some()
                    && w.status.as_ref().and_then(|s| s.state) == Some(WorkerState::Draining)
            });
            Ok((workers.len() == 2 && draining).then_some(()))
        },
    )
    .await
    .with_context(|| bench.stack.diagnostics())?;
    tokio::time::sleep(Duration::from_secs(8)).await; // past the deregistration timeout (5 s)
    for pod in &pods {
        let still = bench.stack.pods().get_opt(pod).await?;
        ensure!(
            still.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
            "run Pod {pod} was killed"
        );
        bench.stack.finish(pod, Outcome::Succeeded).await?;
    }
    let figures = balance("pool deleted while busy", &bench.stack, &bench.audit, 1).await?;
    ensure!(
        figures.outcomes.get("succeeded") == Some(&2),
        "the runs of a deleted pool finish: {:?}",
        figures.outcomes
    );
    wait_for(
        "the Workers gone with their keys",
        Duration::from_secs(120),
        || async {
            let workers = bench.stack.worker_list().await?;
            let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = bench.stack.ns.api();
            let keys = secrets
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|s| s.name_any().starts_with("doomed-"))
                .count();
            Ok((workers.is_empty() && keys == 0).then_some(()))
        },
    )
    .await?;
    bench.stack.ns.cleanup().await
}
