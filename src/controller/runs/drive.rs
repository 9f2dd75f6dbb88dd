//! The run a worker holds, moved on by whoever notices a change (its Pod's reconciler, the
//! Worker's, a message handler): under the worker's lock, the Worker and the Pod are read
//! afresh, [`machine::step`] says what comes next, that is done, and so on until nothing is
//! left but waiting. A Pod its worker does not hold is settled by [`settle_pod`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::super::error::Error;
use super::super::machine::{self, Leftover, Step};
use super::super::records::{cause_label, outcome_label, report_message};
use super::super::workers::{delete_worker, state_message, update_status, worker_ulid};
use super::super::{Context, PoolHandle, pods};
use crate::crd::{FinishedOutcome, FinishedRun, LABEL_WORKERPOOL, Worker, WorkerState};

/// At most this many steps in one call; the next change or recheck takes the rest.
const MAX_STEPS: usize = 8;

/// Moves on the run Worker `name` holds, if it holds one. Returns when to look again.
pub async fn advance(
    ctx: &Arc<Context>,
    namespace: &str,
    name: &str,
) -> Result<Option<Duration>, Error> {
    let (_guard, worker) = ctx.locked_worker(namespace, name).await?;
    match worker {
        Some(worker) => advance_locked(ctx, worker).await,
        None => Ok(None),
    }
}

/// [`advance`] for a caller that holds the worker's lock and read `worker` under it.
pub async fn advance_locked(
    ctx: &Arc<Context>,
    mut worker: Worker,
) -> Result<Option<Duration>, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    for _ in 0..MAX_STEPS {
        let Some(current) = worker.status.as_ref().and_then(|s| s.current_run.clone()) else {
            return Ok(None);
        };
        let seen = pods::seen(ctx, &namespace, &current.pod_name).await?;
        match machine::step(&current, &seen, Timestamp::now(), &ctx.instance) {
            Step::Wait(recheck) => return Ok(recheck),
            Step::RecordEnding(record) => {
                tracing::info!(worker = %name, pod = %current.pod_name, outcome = ?record.outcome, cause = ?record.cause, "the run's end is decided; its Pod goes first: {}", record.message);
                let recorded = update_status(ctx, &namespace, &name, |status| {
                    machine::record_ending(status, &current.pod_name, (*record).clone())
                })
                .await?;
                match recorded {
                    Some(updated) => worker = updated,
                    None => return Ok(Some(Duration::from_secs(1))),
                }
            }
            Step::DeletePod { force } => {
                if force {
                    tracing::warn!(worker = %name, pod = %current.pod_name, "the run Pod outlived its grace period (its node does not answer): removing it by force");
                }
                pods::delete(ctx, &namespace, &current.pod_name, force).await?;
            }
            Step::Release(record) => {
                let link = link_of(ctx, &worker)?;
                release_and_report(ctx, &link, &worker, &record).await?;
                return Ok(None);
            }
        }
    }
    Ok(Some(Duration::from_secs(1)))
}

/// Settles run Pod `pod` of Worker `worker_name`: the run it holds moves on
/// ([`advance_locked`]), or a Pod it does not hold is marked or removed
/// ([`machine::leftover`]). Returns when to look again, and whether the Pod's run is over (so
/// retention applies).
pub async fn settle_pod(
    ctx: &Arc<Context>,
    pod: &Pod,
    worker_name: &str,
) -> Result<(Option<Duration>, bool), Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    let (_guard, worker) = ctx.locked_worker(&namespace, worker_name).await?;
    // The Worker is gone: its Pods go with it (owner references).
    let Some(worker) = worker else {
        return Ok((None, false));
    };
    let status = worker.status.clone().unwrap_or_default();
    match machine::leftover(&status, &pod_name, pods::reported(pod)) {
        None => {
            let recheck = advance_locked(ctx, worker).await?;
            Ok((recheck, false))
        }
        Some(Leftover::Reported) => Ok((None, true)),
        Some(Leftover::Mark(record)) => {
            // Released, but the report may have died with a process before it was sent: it
            // goes again (the backend applies a message id once), then the Pod says so.
            let link = link_of(ctx, &worker)?;
            link.send(&report_message(worker_ulid(&worker)?, &record))
                .await?;
            mark(ctx, &namespace, &record).await?;
            Ok((None, true))
        }
        Some(Leftover::Orphan) => {
            // Deleting a Pod is decided on the API server's copy of the Worker, never on a
            // cached one that may not show the run that made the Pod yet.
            let Some(worker) = ctx.fresh_worker(&namespace, worker_name).await? else {
                return Ok((None, false));
            };
            let status = worker.status.clone().unwrap_or_default();
            if !matches!(
                machine::leftover(&status, &pod_name, pods::reported(pod)),
                Some(Leftover::Orphan)
            ) {
                return Ok((Some(Duration::from_secs(1)), false));
            }
            let note = format!(
                "run Pod {pod_name} stands for no run of worker {worker_name} (its run ended before the Pod was created, or it was made by hand): deleted, so that it cannot run"
            );
            tracing::warn!(pod = %pod_name, "{note}");
            ctx.event(
                &worker,
                EventType::Warning,
                "OrphanRunPod",
                "DeleteRunPod",
                note,
            )
            .await;
            pods::delete(ctx, &namespace, &pod_name, false).await?;
            Ok((None, false))
        }
    }
}

/// Frees the worker of the run `record` reports, recording the report in the same status
/// update, then sends it and the worker's state (a DRAINING worker is deleted instead), and
/// marks the Pod if it is still there. Nothing happens when the worker no longer holds it.
pub async fn release_and_report(
    ctx: &Context,
    link: &PoolHandle,
    worker: &Worker,
    record: &FinishedRun,
) -> Result<(), Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let released = update_status(ctx, &namespace, &name, |status| {
        machine::release(status, record)
    })
    .await?;
    let Some(updated) = released else {
        return Ok(());
    };
    tracing::info!(worker = %name, pod = %record.pod_name, outcome = ?record.outcome, cause = ?record.cause, "run ended: {}", record.message);
    count_outcome(ctx, link, record);
    note_on_worker(ctx, &updated, record).await;
    link.send(&report_message(worker_ulid(&updated)?, record))
        .await?;
    if updated.status.as_ref().and_then(|s| s.state) == Some(WorkerState::Draining) {
        delete_worker(ctx, &namespace, &name).await?;
    } else {
        link.send(&state_message(&updated)?).await?;
    }
    if record.outcome != FinishedOutcome::Denied {
        mark(ctx, &namespace, record).await?;
    }
    Ok(())
}

async fn mark(ctx: &Context, namespace: &str, record: &FinishedRun) -> Result<(), Error> {
    pods::mark_reported(
        ctx,
        namespace,
        &record.pod_name,
        outcome_label(record.outcome),
        record.finished_at.0,
    )
    .await
}

/// Counts a reported end, once: when it is recorded.
pub fn count_outcome(ctx: &Context, link: &PoolHandle, record: &FinishedRun) {
    ctx.metrics
        .run_outcomes
        .with_label_values(&[
            &link.pool_id.to_string(),
            outcome_label(record.outcome),
            &cause_label(record),
        ])
        .inc();
}

/// A failed or denied run leaves an event on its Worker.
pub async fn note_on_worker(ctx: &Context, worker: &Worker, record: &FinishedRun) {
    match record.outcome {
        FinishedOutcome::Failed => {
            ctx.event(
                worker,
                EventType::Warning,
                "RunFailed",
                "ReportRun",
                format!("run Pod {} failed: {}", record.pod_name, record.message),
            )
            .await;
        }
        FinishedOutcome::Denied => {
            let reasons = record
                .denied_by
                .iter()
                .map(|r| format!("{}: {}", r.hook, r.message))
                .collect::<Vec<_>>()
                .join("; ");
            ctx.event(
                worker,
                EventType::Warning,
                "RunDenied",
                "CreateRunPod",
                format!("run {} denied: {reasons}", record.pod_name),
            )
            .await;
        }
        FinishedOutcome::Succeeded | FinishedOutcome::Stopped => {}
    }
}

/// The backend link of the Worker's pool.
fn link_of(ctx: &Context, worker: &Worker) -> Result<Arc<PoolHandle>, Error> {
    let pool = worker
        .labels()
        .get(LABEL_WORKERPOOL)
        .cloned()
        .unwrap_or_default();
    ctx.links.by_pool_id(&pool).ok_or(Error::NoLink { pool })
}
