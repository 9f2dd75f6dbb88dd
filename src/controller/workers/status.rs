//! A Worker's status, the durable record of its run's life: every change is a pure function
//! of the current status ([`super::super::machine`]) applied with optimistic concurrency, and
//! what the status tells the backend (`worker.state`).

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use ulid::Ulid;

use super::super::error::{Error, Step, is_conflict, is_not_found};
use super::super::{Context, MANAGER};
use crate::crd::{LABEL_ULID, Worker, WorkerState, WorkerStatus};
use crate::protocol::{self, Body, Message, RunRef};

/// The parameters of every merge patch: written under the operator's one field manager.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The parameters of every create.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    }
}

/// Changes a Worker's status with `change` (None: nothing to do), re-reading it and trying
/// again on conflicts. Returns the updated Worker, or None when it does not exist or nothing
/// changed.
pub async fn update_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    change: impl Fn(&WorkerStatus) -> Option<WorkerStatus>,
) -> Result<Option<Worker>, Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    let object = format!("{namespace}/{name}");
    for _ in 0..5 {
        let Some(worker) = api
            .get_opt(name)
            .await
            .map_err(Error::api(Step::ReadWorker, &object))?
        else {
            return Ok(None);
        };
        let Some(status) = change(&worker.status.clone().unwrap_or_default()) else {
            return Ok(None);
        };
        let patch = status_patch(&worker, &status);
        match api
            .patch_status(name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => return Ok(Some(updated)),
            Err(err) if is_conflict(&err) => continue,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(Error::api(Step::WriteWorkerStatus, &object)(err)),
        }
    }
    Err(Error::Conflict {
        object: format!("Worker {object}"),
    })
}

/// Replaces a new Worker's status, failing on a concurrent change.
pub async fn write_status(
    ctx: &Context,
    worker: &Worker,
    status: &WorkerStatus,
) -> Result<Worker, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = status_patch(worker, status);
    api.patch_status(&worker.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(Error::api(
            Step::WriteWorkerStatus,
            format!("{namespace}/{}", worker.name_any()),
        ))
}

/// A merge patch that sets `status` on the version of `worker` that was read. A merge patch
/// cannot remove a field by leaving it out: what the status no longer has is written as null.
fn status_patch(worker: &Worker, status: &WorkerStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if status.current_run.is_none() {
        value["currentRun"] = serde_json::Value::Null;
        value["currentRunID"] = serde_json::Value::Null;
    }
    json!({"metadata": {"resourceVersion": worker.resource_version()}, "status": value})
}

/// The worker's ULID, from its label.
pub fn worker_ulid(worker: &Worker) -> Result<Ulid, Error> {
    worker
        .labels()
        .get(LABEL_ULID)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| Error::Unlabelled {
            object: format!(
                "Worker {}/{}",
                worker.namespace().unwrap_or_default(),
                worker.name_any()
            ),
            label: LABEL_ULID,
        })
}

/// The worker's state as the protocol reports it.
pub fn state_message(worker: &Worker) -> Result<Message, Error> {
    let status = worker.status.clone().unwrap_or_default();
    let state = match status.state.unwrap_or_default() {
        WorkerState::Idle => protocol::WorkerStatus::Idle,
        WorkerState::Busy => protocol::WorkerStatus::Busy,
        WorkerState::Draining => protocol::WorkerStatus::Draining,
    };
    let current_run = status
        .current_run
        .map(|r| RunRef::new(&r.run_id, &r.stage, r.attempt));
    Ok(Message::for_worker(
        worker_ulid(worker)?,
        Body::WorkerState(protocol::WorkerState { state, current_run }),
    ))
}

/// Whether the Worker takes no new run: being deleted, or DRAINING.
pub fn leaving(worker: &Worker) -> bool {
    worker.meta().deletion_timestamp.is_some()
        || worker.status.as_ref().and_then(|s| s.state) == Some(WorkerState::Draining)
}
