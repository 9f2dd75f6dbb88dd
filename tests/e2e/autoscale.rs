//! Queue-driven autoscaling on the real stack (docs/autoscaling.md): the reference backend
//! pushes `pool.demand`, the operator sizes the pool through the scale subresource.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::ResourceExt;
use kube::api::ListParams;
use workerpool_operator::crd::LABEL_RUN_ID;

use crate::RUNNER;
use crate::stack::{Stack, pool_yaml};
use crate::support::{self, Outcome};

/// How long the whole burst may take, from the first submit to every run ended.
const BURST: Duration = Duration::from_secs(240);

#[tokio::test]
async fn a_burst_of_30_runs_scales_to_max_across_a_restart_drains_the_queue_and_returns_to_min()
-> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-autoscale").await?;
    stack.create_credentials("burst", "burst")?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml(
        "burst",
        "burst",
        0,
        "  autoscaling:\n    minPoolSize: 0\n    maxPoolSize: 20\n    scaleDownDelay: 3s\n",
    ))?;

    let mut runs = Vec::new();
    for _ in 0..30 {
        runs.push(stack.submit("burst", RUNNER, &[]).await?.id);
    }
    // Once the pool has grown to maxPoolSize, finish each run's Pod as it starts (as a
    // kubelet would); until then every run holds its Worker, so the demand stays at 30 however
    // slowly this machine submits. Watch the Workers throughout: never more than
    // maxPoolSize, at any moment, also across an operator restart (SIGTERM, as a rollout
    // does) while the pool is at its maximum with runs still queued. (A crash, SIGKILL, in
    // the middle of a dispatch fails that run by design, so that it never runs twice: the
    // fault suite covers that, tests/faults/operator_kill.rs.)
    let started = Instant::now();
    let mut finished = BTreeSet::new();
    let mut restarted = false;
    let (mut most_workers, mut largest_size) = (0, 0);
    loop {
        let workers = stack.worker_list().await?.len();
        most_workers = most_workers.max(workers);
        largest_size = largest_size.max(stack.pools().get("burst").await?.spec.pool_size);
        assert!(workers <= 20, "{workers} Workers: more than maxPoolSize 20");
        let pods = stack
            .pods()
            .list(&ListParams::default().labels(LABEL_RUN_ID))
            .await?;
        for pod in pods
            .items
            .iter()
            .filter(|p| largest_size >= 20 && support::pod_running(p))
        {
            if finished.insert(pod.name_any()) {
                stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
            }
        }
        if !restarted && finished.len() >= 5 {
            stack.roll_operator().await?;
            restarted = true;
        }
        let ended =
            workerpool_operator::backend::client::list_runs(&stack.backend_url, None).await?;
        let states: Vec<&str> = ended
            .iter()
            .filter(|r| runs.contains(&r.id))
            .map(|r| r.state.as_str())
            .collect();
        if let Some(bad) = states
            .iter()
            .find(|s| !["queued", "dispatched", "accepted", "running", "succeeded"].contains(s))
        {
            bail!(
                "a run ended {bad}: no run may fail or be killed{}",
                stack.diagnostics()
            );
        }
        if states.iter().filter(|s| **s == "succeeded").count() == runs.len() {
            break;
        }
        if started.elapsed() > BURST {
            bail!(
                "the queue did not drain in {BURST:?}: {states:?}{}",
                stack.diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        largest_size, 20,
        "30 runs for at most 20 workers scale the pool to 20"
    );
    assert!(most_workers <= 20);
    assert!(restarted, "the operator was restarted during the burst");

    // Idle for scaleDownDelay, every Worker goes: back to minPoolSize 0.
    support::wait_for(
        "the pool back to 0 Workers",
        Duration::from_secs(90),
        || async {
            let pool = stack.pools().get("burst").await?;
            let workers = stack.worker_list().await?;
            assert!(workers.len() <= 20);
            Ok((pool.spec.pool_size == 0 && workers.is_empty()).then_some(()))
        },
    )
    .await
    .with_context(|| stack.diagnostics())?;

    let pool = stack.pools().get("burst").await?;
    let status = pool.status.clone().unwrap_or_default();
    let autoscaling = status.autoscaling.context("status.autoscaling")?;
    assert_eq!(autoscaling.desired_pool_size, 0);
    assert_eq!(autoscaling.pending_runs, Some(0));
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Autoscaling")
        .context("an Autoscaling condition")?;
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "OwnsPoolSize")
    );
    let events = event_notes(&stack, "burst", "ScaledUp")?
        + "\n"
        + &event_notes(&stack, "burst", "ScaledDown")?;
    // The runs arrive one after the other, so the pool may grow in a few steps to 20.
    assert!(
        events.contains(" -> 20: ") && events.contains("maxPoolSize 20"),
        "{events}"
    );
    assert!(
        events.contains("-> 0: 0 runs pending, 0 busy, minIdle 0"),
        "{events}"
    );

    // The operator owns poolSize: kubectl scale is undone, with a warning.
    stack
        .ns
        .kubectl(["scale", "workerpools", "burst", "--replicas=3"])?;
    support::wait_for(
        "poolSize set back to 0",
        Duration::from_secs(30),
        || async { Ok((stack.pools().get("burst").await?.spec.pool_size == 0).then_some(())) },
    )
    .await?;
    let warnings = event_notes(&stack, "burst", "PoolSizeOverridden")?;
    assert!(
        warnings.contains("spec.poolSize was set to 3 by someone else"),
        "{warnings}"
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn min_idle_keeps_warm_workers_and_a_window_keeps_its_minimum() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-warm").await?;
    stack.create_credentials("warm", "warm")?;
    stack.start_operator(&[])?;
    // A window open now (it opens every minute and closes only on 1 January).
    stack.apply(&pool_yaml(
        "warm",
        "warm",
        0,
        "  autoscaling:\n    maxPoolSize: 10\n    minIdle: 2\n    scaleDownDelay: 2s\n    windows:\n      - name: always\n        start: \"* * * * *\"\n        end: \"0 0 1 1 *\"\n        minPoolSize: 3\n",
    ))?;
    stack.wait_registered("warm", 3).await?;
    // One run: one busy plus two warm stays within the window's 3.
    let run = stack.submit("warm", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stack.pools().get("warm").await?.spec.pool_size, 3);
    // Two more: three busy and two warm.
    let more = [
        stack.submit("warm", RUNNER, &[]).await?,
        stack.submit("warm", RUNNER, &[]).await?,
    ];
    for run in &more {
        stack.wait_run_pod(&run.id).await?;
    }
    stack.wait_registered("warm", 5).await?;
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    stack.wait_run(&run.id, "succeeded").await?;
    support::wait_for(
        "two busy plus two warm",
        Duration::from_secs(60),
        || async { Ok((stack.pools().get("warm").await?.spec.pool_size == 4).then_some(())) },
    )
    .await
    .with_context(|| stack.diagnostics())?;
    stack.ns.cleanup().await
}

/// The notes of the events with `reason` about pool `pool`, one a line.
fn event_notes(stack: &Stack, pool: &str, reason: &str) -> anyhow::Result<String> {
    let all = stack.ns.kubectl([
        "get",
        "events.v1.events.k8s.io",
        "-o",
        "jsonpath={range .items[*]}{.regarding.name} {.reason} {.note}{\"\\n\"}{end}",
    ])?;
    let prefix = format!("{pool} {reason} ");
    Ok(all
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join("\n"))
}
