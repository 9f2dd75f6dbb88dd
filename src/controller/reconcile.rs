//! The Worker and run Pod reconcilers: thin calls into the run's life ([`runs::drive`]) and
//! the Worker's ([`workers`]), so that what a crash or a missed message left behind is found
//! and moved on from the cluster's records.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::context::REGISTRATION_PATIENCE;
use super::{Context, Error, pods, runs, workers};
use crate::crd::{LABEL_WORKERPOOL, Worker, WorkerState};

/// A Worker: deregistered after its run when deleted, registered again while the backend has
/// not confirmed it, its run moved on, and deleted when it drained.
pub async fn worker(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let link = worker
        .labels()
        .get(LABEL_WORKERPOOL)
        .and_then(|ulid| ctx.links.by_pool_id(ulid));
    let status = worker.status.clone().unwrap_or_default();

    if worker.meta().deletion_timestamp.is_some() {
        if status.current_run.is_some() {
            runs::drive::advance(&ctx, &namespace, &name).await?;
        }
        return workers::leave(&ctx, link.as_deref(), &namespace, &name).await;
    }
    let Some(link) = link else {
        // The pool's credentials are not (yet) accepted: nothing can be sent.
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    if status.registered != Some(true) {
        // A registration sent a moment ago (the worker's creation) is waited for, not sent
        // again: a worker registers once unless the backend does not answer.
        if let Some(wait) = ctx.registrations.wait_before_resending(&namespace, &name) {
            return Ok(Action::requeue(wait + Duration::from_secs(1)));
        }
        // Under the lock, look again: the worker may be in the middle of its creation (which
        // holds the lock until its registration is sent), or registered since.
        let (_guard, current) = ctx.locked_worker(&namespace, &name).await?;
        if ctx
            .registrations
            .wait_before_resending(&namespace, &name)
            .is_none()
            && let Some(current) = current
            && current.meta().deletion_timestamp.is_none()
            && current.status.as_ref().and_then(|s| s.registered) != Some(true)
        {
            workers::register_again(&ctx, &link, &current).await?;
        }
        return Ok(Action::requeue(REGISTRATION_PATIENCE));
    }
    if status.current_run.is_some() {
        let recheck = runs::drive::advance(&ctx, &namespace, &name).await?;
        return Ok(requeue(&ctx, recheck));
    }
    if status.state == Some(WorkerState::Draining) {
        workers::delete_worker(&ctx, &namespace, &name).await?;
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// A run Pod: its run moved on, or, when its worker no longer holds it, marked or removed;
/// then the pool's retention applied to the worker's finished Pods.
pub async fn pod(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(worker_name) = pods::owner_worker(&pod) else {
        return Ok(Action::await_change()); // not ours
    };
    let pool_ulid = pod
        .labels()
        .get(LABEL_WORKERPOOL)
        .cloned()
        .unwrap_or_default();
    pods::observe_start(&ctx, &pod, &pool_ulid, Timestamp::now());
    let (recheck, over) = runs::drive::settle_pod(&ctx, &pod, &worker_name).await?;
    if !over {
        return Ok(recheck.map_or_else(Action::await_change, Action::requeue));
    }
    pods::retention(&ctx, &pod, &worker_name).await
}

fn requeue(ctx: &Context, recheck: Option<Duration>) -> Action {
    Action::requeue(recheck.map_or(ctx.config.resync, |r| r.min(ctx.config.resync)))
}
