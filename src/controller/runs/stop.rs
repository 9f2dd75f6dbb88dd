//! A `run.stop` arrives: the stop is recorded on the Worker as the run's end
//! ([`machine::fit_stop`]) before the Pod is deleted with its grace period (the tool gets its
//! interrupt); `stopped` is reported, and the worker freed, only once the Pod is gone
//! ([`super::drive`]). A failed delete or a crash in between leaves the record, and whoever
//! looks next deletes the Pod again: a stopped run never keeps running.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use ulid::Ulid;

use super::super::error::Error;
use super::super::machine::{self, StopFit};
use super::super::records::{report_message, worker_name};
use super::super::workers::update_status;
use super::super::{Context, PoolHandle, pods};
use super::drive::advance_locked;
use crate::protocol::RunStop;

pub async fn on_stop(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    worker_id: Ulid,
    stop: &RunStop,
) -> Result<(), Error> {
    let namespace = pool.key.namespace.clone();
    let name = worker_name(&pool.key.name, worker_id);
    let (_guard, worker) = ctx.locked_worker(&namespace, &name).await?;
    let Some(worker) = worker else {
        tracing::info!(pool = %pool.key, worker = %name, run = %stop.run_id, "stop for a worker that does not exist: nothing to stop");
        return Ok(());
    };
    let status = worker.status.clone().unwrap_or_default();
    let seen = match machine::stopped_run(&status, stop) {
        Some(current) => Some(pods::seen(ctx, &namespace, &current.pod_name).await?),
        None => None,
    };
    match machine::fit_stop(&status, stop, seen.as_ref(), Timestamp::now()) {
        StopFit::NotHeld(Some(record)) => {
            tracing::info!(pool = %pool.key, worker = %name, run = %stop.run_id, "stop for a run the worker finished: re-sending its report");
            pool.send(&report_message(worker_id, &record)).await
        }
        StopFit::NotHeld(None) => {
            tracing::info!(pool = %pool.key, worker = %name, run = %stop.run_id, "stop for a run the worker is not processing: nothing to stop");
            Ok(())
        }
        StopFit::Settling => {
            settle(ctx, worker).await;
            Ok(())
        }
        StopFit::Record(record) => {
            tracing::info!(pool = %pool.key, worker = %name, pod = %record.pod_name, "stopping the run: {}", record.message);
            let pod_name = record.pod_name.clone();
            let recorded = update_status(ctx, &namespace, &name, |status| {
                machine::record_ending(status, &pod_name, (*record).clone())
            })
            .await?;
            if let Some(updated) = recorded {
                settle(ctx, updated).await;
            }
            Ok(())
        }
    }
}

/// Moves the stopped run on now if it can. The stop is recorded, so the message is done with
/// either way: if the Pod cannot be deleted yet, the Worker's reconciler tries again.
async fn settle(ctx: &Arc<Context>, worker: crate::crd::Worker) {
    if let Err(err) = advance_locked(ctx, worker).await {
        tracing::warn!(error = %err, "the stop is recorded; deleting its run Pod failed for now and is retried");
    }
}
