//! OpenTofu runs end to end: plan, confirm, apply from the saved plan, state kept by the
//! backend, logs in order, stop during an apply.

use std::collections::BTreeSet;

use anyhow::Context as _;
use serde_json::Value;
use workerpool_operator::backend::client;

use super::{RUN_WAIT, RealRuns};
use crate::support::wait_for;

/// The instances of a resource address (`terraform_data.worker`) in a state document.
fn instances(state: &Value, resource: &str) -> usize {
    let (kind, name) = resource.split_once('.').unwrap_or_default();
    state["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"] == kind && r["name"] == name)
        .map(|r| r["instances"].as_array().map_or(0, Vec::len))
        .sum()
}

#[tokio::test]
async fn a_tracked_run_plans_waits_for_confirmation_and_applies_its_saved_plan()
-> anyhow::Result<()> {
    let Some(runs) = RealRuns::start(
        "real-tofu",
        "tofu",
        2,
        "",
        "    securityContext: {fsGroup: 1983}\n",
    )
    .await?
    else {
        return Ok(());
    };
    runs.create_stack("hello", "tofu", "hello", None, &["TF_VAR_greeting=hi"])
        .await?;
    let run = runs.trigger("hello", false).await?;
    let planned = runs.wait_state(&run.id, &["unconfirmed"]).await?;
    assert_eq!(planned.stage, "planning");
    let plan_log = runs.log_text(&run.id, "planning").await?;
    assert!(
        plan_log.contains("Plan: 4 to add, 0 to change, 0 to destroy"),
        "{plan_log}"
    );

    // Every line reached the backend once, in order: init's part, then the worker's, each
    // numbered from 0 without a gap.
    let lines = runs.logs(&run.id).await?;
    let parts: Vec<&str> = lines.iter().map(|l| l.part.as_str()).collect();
    let first_worker = parts
        .iter()
        .position(|p| *p == "worker")
        .expect("worker lines");
    assert!(
        parts[..first_worker].iter().all(|p| *p == "init"),
        "{parts:?}"
    );
    assert!(
        parts[first_worker..].iter().all(|p| *p == "worker"),
        "{parts:?}"
    );
    for part in ["init", "worker"] {
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| l.part == part)
            .map(|l| l.seq)
            .collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "{part} seqs"
        );
    }
    let init_at = plan_log
        .find("$ tofu init")
        .expect("the init command is logged");
    let plan_at = plan_log
        .find("$ tofu plan")
        .expect("the plan command is logged");
    assert!(init_at < plan_at);

    // The source changes after the plan: the apply must still apply what was planned.
    runs.update_source("hello", "hello-more").await?;
    runs.confirm(&run.id).await?;
    let done = runs.wait_state(&run.id, &["succeeded"]).await?;
    assert_eq!(done.stage, "applying");
    let apply_log = runs.log_text(&run.id, "applying").await?;
    assert!(
        apply_log.contains("Apply complete! Resources: 4 added, 0 changed, 0 destroyed."),
        "the apply used the saved plan, not the changed source: {apply_log}"
    );
    // uid/gid 1983 (the seed's user) and fsGroup 1983 on the workspace, as the worker sees it.
    assert!(
        apply_log.contains("applied as 1983:1983, workspace 0:1983 drwxrwsrwx"),
        "{apply_log}"
    );
    let state = runs.state("hello").await?;
    assert_eq!(instances(&state, "terraform_data.worker"), 3);
    assert_eq!(state["outputs"]["workers"]["value"]["a"], "hi from a");

    // The state survives to the next run, which plans only the difference.
    let next = runs.trigger("hello", true).await?;
    runs.wait_state(&next.id, &["succeeded"]).await?;
    let next_log = runs.log_text(&next.id, "planning").await?;
    assert!(next_log.contains("Plan: 1 to add"), "{next_log}");
    // Two stages ran in two Pods (possibly on both workers); each was reported once.
    let events = client::get_run(&runs.stack.backend_url, &run.id)
        .await?
        .events;
    let created: BTreeSet<String> = events
        .iter()
        .filter(|e| e.kind == "run.podCreated")
        .map(|e| e.detail["podName"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        created,
        BTreeSet::from([
            format!("{}-planning-1", run.id.to_lowercase()),
            format!("{}-applying-1", run.id.to_lowercase())
        ])
    );
    runs.stack.ns.cleanup().await
}

/// Autoscaling (issue 15): a tracked run whose plan waits for a person's confirmation does not
/// hold an autoscaled pool up. The pool grows from 0 for the plan, goes back to 0 while the
/// run waits (pending, not schedulable), and grows again for the apply once confirmed.
#[tokio::test]
async fn a_plan_waiting_for_confirmation_does_not_hold_an_autoscaled_pool_up() -> anyhow::Result<()>
{
    let Some(runs) = RealRuns::start(
        "real-wait",
        "waiting",
        0,
        "  autoscaling:\n    maxPoolSize: 2\n    scaleDownDelay: 2s\n",
        "    securityContext: {fsGroup: 1983}\n",
    )
    .await?
    else {
        return Ok(());
    };
    runs.create_stack("waits", "waiting", "hello", None, &[])
        .await?;
    let run = runs.trigger("waits", false).await?;
    runs.wait_state(&run.id, &["unconfirmed"]).await?;
    let pools = runs.stack.pools();
    let status = wait_for(
        "the pool back to 0 while the plan waits for confirmation",
        RUN_WAIT,
        || {
            let pools = pools.clone();
            async move {
                let pool = pools.get("waiting").await?;
                let autoscaling = pool.status.and_then(|s| s.autoscaling);
                Ok(autoscaling.filter(|a| {
                    pool.spec.pool_size == 0
                        && a.pending_runs == Some(1)
                        && a.schedulable_runs == Some(0)
                }))
            }
        },
    )
    .await
    .with_context(|| runs.stack.diagnostics())?;
    assert_eq!(status.busy_workers, 0, "{status:?}");
    // No Worker is kept for a run that waits on a person: the last one deregisters and goes.
    wait_for("no Worker left while the plan waits", RUN_WAIT, || async {
        Ok(runs.stack.worker_list().await?.is_empty().then_some(()))
    })
    .await
    .with_context(|| runs.stack.diagnostics())?;

    runs.confirm(&run.id).await?;
    let done = runs.wait_state(&run.id, &["succeeded"]).await?;
    assert_eq!(done.stage, "applying");
    let apply_log = runs.log_text(&run.id, "applying").await?;
    assert!(apply_log.contains("Apply complete!"), "{apply_log}");
    runs.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_stop_during_an_apply_interrupts_tofu_saves_its_state_and_ends_stopped()
-> anyhow::Result<()> {
    let Some(runs) = RealRuns::start("real-stop", "stopper", 1, "", "").await? else {
        return Ok(());
    };
    runs.create_stack("slow", "stopper", "slow-apply", None, &[])
        .await?;
    let run = runs.trigger("slow", false).await?;
    runs.wait_state(&run.id, &["unconfirmed"]).await?;
    runs.confirm(&run.id).await?;
    let url = runs.stack.backend_url.clone();
    let id = run.id.clone();
    crate::support::wait_for("the slow apply to start", super::RUN_WAIT, || {
        let (url, id) = (url.clone(), id.clone());
        async move {
            let page = client::run_logs(&url, &id, Some("applying"), 0).await?;
            Ok(page
                .lines
                .iter()
                .any(|l| l.text.contains("slow apply started"))
                .then_some(()))
        }
    })
    .await?;
    client::stop_run(&runs.stack.backend_url, &run.id).await?;
    let stopped = runs.wait_state(&run.id, &["stopped"]).await?;
    assert_eq!(stopped.stage, "applying");
    let log = runs.log_text(&run.id, "applying").await?;
    assert!(
        log.contains("Interrupt received"),
        "tofu got a graceful interrupt: {log}"
    );
    // The command's own output line, not the "Executing: [...]" line that quotes it.
    assert!(
        !log.lines()
            .any(|l| l.ends_with("(local-exec): slow apply done")),
        "{log}"
    );
    // What the apply had done before the stop is in the state it saved on the interrupt.
    let state = runs.state("slow").await?;
    assert_eq!(instances(&state, "terraform_data.first"), 1, "{state}");
    // A stop is done when the Pod is gone.
    let pod = format!("{}-applying-1", run.id.to_lowercase());
    runs.stack
        .wait_pod_gone("the stopped run's Pod", &pod)
        .await?;
    runs.stack.ns.cleanup().await
}
