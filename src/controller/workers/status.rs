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

/// Changes a Worker's status with `change` (None: nothing to do), conditional on the version
/// it was computed from. Returns the updated Worker, or None when it does not exist or nothing
/// changed.
pub async fn update_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    change: impl Fn(&WorkerStatus) -> Option<WorkerStatus>,
) -> Result<Option<Worker>, Error> {
    let write = Write {
        step: Step::WriteWorkerStatus,
        status: true,
    };
    patch_worker(ctx, namespace, name, write, |worker| {
        let status = change(&worker.status.clone().unwrap_or_default())?;
        Some(status_patch(worker, &status))
    })
    .await
}

/// What a [`patch_worker`] writes: the status subresource or the object, and the step it is.
pub(super) struct Write {
    pub step: Step,
    pub status: bool,
}

/// Writes the merge patch `change` computes from the Worker (None: nothing to do), which must
/// name the resourceVersion it was computed from. The first try computes it from the cache
/// (no request), every try after a conflict from a fresh read. Returns the updated Worker, or
/// None when it does not exist or nothing changed.
pub(super) async fn patch_worker(
    ctx: &Context,
    namespace: &str,
    name: &str,
    write: Write,
    change: impl Fn(&Worker) -> Option<serde_json::Value>,
) -> Result<Option<Worker>, Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    let object = format!("{namespace}/{name}");
    let mut conflicted = false;
    for _ in 0..5 {
        let worker = if conflicted {
            ctx.fresh_worker(namespace, name).await?
        } else {
            ctx.read_worker(namespace, name).await?
        };
        let Some(worker) = worker else {
            return Ok(None);
        };
        let Some(patch) = change(&worker) else {
            return Ok(None);
        };
        let written = if write.status {
            api.patch_status(name, &patch_params(), &Patch::Merge(&patch))
                .await
        } else {
            api.patch(name, &patch_params(), &Patch::Merge(&patch))
                .await
        };
        match written {
            Ok(updated) => {
                ctx.caches.wrote_worker(&updated);
                return Ok(Some(updated));
            }
            Err(err) if is_conflict(&err) => conflicted = true,
            Err(err) if is_not_found(&err) => {
                ctx.caches.forget_worker(namespace, name);
                return Ok(None);
            }
            Err(err) => return Err(Error::api(write.step, &object)(err)),
        }
    }
    Err(Error::Conflict {
        object: format!("Worker {object}"),
    })
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
