//! Workers: creation with their own key pair, registration and deregistration with the backend,
//! state changes (always with optimistic concurrency), and the Worker reconciler that repairs
//! what a crash or a deleted Pod left behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use ulid::Ulid;

use super::keys::WorkerKey;
use super::{
    Context, Error, FINALIZER, MANAGER, PoolHandle, ignore_not_found, is_conflict, is_not_found,
};
use crate::crd::{
    ANNOTATION_WORKERPOOL_NAME, CurrentRun, FINISHED_RUNS_KEPT, FinishedRun, LABEL_ULID,
    LABEL_WORKERPOOL, Worker, WorkerPool, WorkerSpec, WorkerState, WorkerStatus,
};
use crate::protocol::{self, Body, Message, RunRef, WorkerDeregister, WorkerRegister};

/// Key of the worker's private key in its Secret.
pub const SECRET_PRIVATE_KEY: &str = "privateKey";
/// Key of the worker's public key in its Secret.
pub const SECRET_PUBLIC_KEY: &str = "publicKey";
/// A Worker that is BUSY but whose Pod was never created is released after this long.
const POD_CREATION_GRACE: Duration = Duration::from_secs(120);

/// The parameters of every merge patch: written under the operator's one field manager.
pub(super) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    }
}

/// Creates one Worker of `pool`: its key pair, the Worker, the Secret holding the key (owned
/// by the Worker), then registers it with the backend.
pub async fn create_worker(
    ctx: &Arc<Context>,
    pool: &WorkerPool,
    link: &PoolHandle,
) -> Result<(), Error> {
    let started = Instant::now();
    let result = create_worker_inner(ctx, pool, link).await;
    match &result {
        Ok(()) => ctx
            .metrics
            .worker_creation_duration
            .observe(started.elapsed().as_secs_f64()),
        Err(err) => {
            ctx.metrics.worker_creation_errors.inc();
            tracing::error!(pool = %link.key, error = %err, "creating a worker failed");
        }
    }
    result
}

async fn create_worker_inner(
    ctx: &Arc<Context>,
    pool: &WorkerPool,
    link: &PoolHandle,
) -> Result<(), Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let key = ctx.keys.take(&link.pool_id.to_string()).await?;
    let ulid = Ulid::generate();
    let name = format!("{}-{}", pool.name_any(), ulid.to_string().to_lowercase());
    let owner = pool.controller_owner_ref(&()).into_iter().collect();
    let labels = BTreeMap::from([
        (LABEL_WORKERPOOL.to_string(), link.pool_id.to_string()),
        (LABEL_ULID.to_string(), ulid.to_string()),
    ]);
    let worker = Worker {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_WORKERPOOL_NAME.to_string(),
                pool.name_any(),
            )])),
            owner_references: Some(owner),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..ObjectMeta::default()
        },
        spec: WorkerSpec::default(),
        status: None,
    };
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    // Held until the registration is sent: the Worker reconciler, which sees the new Worker at
    // once, must not take it for one whose key Secret was lost (see `register_again`).
    let _guard = ctx.worker_lock(&namespace, &name).await;
    let worker = workers.create(&post_params(), &worker).await?;

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match secrets
        .create(&post_params(), &key_secret(&worker, &key))
        .await
    {
        Ok(_) => {}
        Err(err) if is_conflict(&err) => {}
        Err(err) => return Err(err.into()),
    }
    write_status(
        ctx,
        &worker,
        WorkerStatus {
            state: Some(WorkerState::Idle),
            registered: Some(false),
            replicas: Some(0),
            ..WorkerStatus::default()
        },
    )
    .await?;
    register(link, &worker, &key.public_key_pem).await?;
    tracing::info!(pool = %link.key, worker = %name, "worker created");
    Ok(())
}

/// The Secret holding a worker's key pair, named after the Worker and owned by it.
fn key_secret(worker: &Worker, key: &WorkerKey) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(worker.name_any()),
            namespace: worker.namespace(),
            labels: Some(worker.labels().clone()),
            owner_references: worker.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                SECRET_PRIVATE_KEY.to_string(),
                ByteString(key.private_key_pem.clone().into_bytes()),
            ),
            (
                SECRET_PUBLIC_KEY.to_string(),
                ByteString(key.public_key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Sends the worker's registration. The backend answers `worker.registered`, which sets
/// `status.registered` (see [`super::runs`]).
async fn register(link: &PoolHandle, worker: &Worker, public_key: &str) -> Result<(), Error> {
    let body = Body::WorkerRegister(WorkerRegister {
        name: worker.name_any(),
        public_key: public_key.to_string(),
        metadata: BTreeMap::from([
            (
                "namespace".to_string(),
                worker.namespace().unwrap_or_default(),
            ),
            (
                "workerpool".to_string(),
                worker
                    .annotations()
                    .get(ANNOTATION_WORKERPOOL_NAME)
                    .cloned()
                    .unwrap_or_default(),
            ),
            (
                "controller".to_string(),
                format!("workerpool-operator {}", env!("CARGO_PKG_VERSION")),
            ),
        ]),
    });
    link.publish(&Message::for_worker(worker_ulid(worker)?, body))
        .await?;
    Ok(())
}

/// The worker's ULID, from its label.
pub fn worker_ulid(worker: &Worker) -> Result<Ulid, Error> {
    worker
        .labels()
        .get(LABEL_ULID)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| {
            Error::Unlabelled(format!(
                "Worker {} has no valid {LABEL_ULID} label",
                worker.name_any()
            ))
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

/// Re-sends every worker's state (and the registration of unregistered ones) so the backend can
/// reconcile after a reconnect or a controller restart: no lost or phantom runs. Each worker is
/// re-read under its lock, so a state sent here is never older than a run message sent by a
/// handler (a stale IDLE after `run.accepted` would make the backend fail the run).
///
/// After a (re)connection (`reconnected`), the reports of the worker's recently finished runs
/// go first, under their original message ids: a report still queued in a process that
/// crashed was lost with it, and must reach the backend before the IDLE state that would
/// otherwise make it fail the run as lost. A backend that has them already ignores the copies.
pub async fn report_all_states(
    ctx: &Arc<Context>,
    link: &Arc<PoolHandle>,
    reconnected: bool,
) -> Result<(), Error> {
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), &link.key.namespace);
    let selector = format!("{LABEL_WORKERPOOL}={}", link.pool_id);
    let names: Vec<String> = workers
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for name in names {
        let (_guard, worker) = ctx.locked_worker(&link.key.namespace, &name).await?;
        let Some(worker) = worker else {
            continue;
        };
        if worker.meta().deletion_timestamp.is_some() {
            continue;
        }
        if worker.status.as_ref().and_then(|s| s.registered) != Some(true) {
            register_again(ctx, link, &worker).await?;
        } else {
            if reconnected {
                let worker_id = worker_ulid(&worker)?;
                for finished in worker.status.iter().flat_map(|s| &s.finished_runs) {
                    link.publish(&super::runs::report_message(worker_id, finished))
                        .await?;
                }
            }
            link.publish(&state_message(&worker)?).await?;
        }
    }
    Ok(())
}

/// Sends the registration of a worker the backend has not confirmed yet. The caller holds the
/// worker's lock and read `worker` under it.
///
/// A worker without its key Secret never registered: the Secret is created before the first
/// registration is sent, under the same lock. It is left by an operator stopped between creating
/// the Worker and its Secret (or by someone deleting the Secret before the backend answered).
/// The planner counts such a Worker as one of the pool's, so it must heal here: it gets a new
/// key pair, which the backend takes as the worker's key on registration.
async fn register_again(ctx: &Context, link: &PoolHandle, worker: &Worker) -> Result<(), Error> {
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let secret = secrets.get_opt(&worker.name_any()).await?;
    let public_key = match secret.as_ref().and_then(public_key_of) {
        Some(public_key) => public_key,
        None => recreate_key(ctx, link, &secrets, worker, secret.is_some()).await?,
    };
    register(link, worker, &public_key).await
}

fn public_key_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(SECRET_PUBLIC_KEY)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .filter(|k| !k.is_empty())
}

/// Gives a never-registered worker a new key pair in its Secret (created, or rewritten when it
/// exists without a public key), records why, and returns the public key.
async fn recreate_key(
    ctx: &Context,
    link: &PoolHandle,
    secrets: &Api<Secret>,
    worker: &Worker,
    secret_exists: bool,
) -> Result<String, Error> {
    let key = ctx.keys.take(&link.pool_id.to_string()).await?;
    let secret = key_secret(worker, &key);
    if secret_exists {
        let patch = json!({"data": secret.data});
        secrets
            .patch(&worker.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await?;
    } else {
        secrets.create(&post_params(), &secret).await?;
    }
    let note = format!(
        "the key Secret of worker {} was missing before the worker ever registered (the operator stopped between creating the Worker and its key, or the Secret was deleted); generated a new key pair and registered the worker with it",
        worker.name_any()
    );
    tracing::warn!(worker = %worker.name_any(), "{note}");
    ctx.event(
        worker,
        EventType::Warning,
        "WorkerKeyRecreated",
        "RegisterWorker",
        note,
    )
    .await;
    Ok(key.public_key_pem)
}

/// Replaces a Worker's status, failing on a concurrent change (the caller re-reads).
async fn write_status(
    ctx: &Context,
    worker: &Worker,
    status: WorkerStatus,
) -> Result<Worker, Error> {
    let api: Api<Worker> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"resourceVersion": worker.resource_version()},
        "status": status,
    });
    Ok(api
        .patch_status(&worker.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?)
}

/// Changes a Worker's status with `change` (None: nothing to do), retrying on conflicts with
/// a fresh read. Returns the updated Worker, or None when it does not exist or nothing changed.
pub async fn update_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    change: impl Fn(&Worker) -> Option<WorkerStatus>,
) -> Result<Option<Worker>, Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    for _ in 0..5 {
        let Some(worker) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let Some(status) = change(&worker) else {
            return Ok(None);
        };
        // A merge patch cannot remove `currentRun` by omission: write null explicitly.
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        if status.current_run.is_none() {
            value["currentRun"] = serde_json::Value::Null;
            value["currentRunID"] = serde_json::Value::Null;
        }
        let patch =
            json!({"metadata": {"resourceVersion": worker.resource_version()}, "status": value});
        match api
            .patch_status(name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => return Ok(Some(updated)),
            Err(err) if is_conflict(&err) => continue,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::Conflict(format!("Worker {namespace}/{name}")))
}

/// The status of a worker that has finished (or given up) the run of `finished.pod_name`: IDLE,
/// or still DRAINING (the pool controller then deletes it), with `finished` at the end of its
/// finished runs (the oldest forgotten beyond [`FINISHED_RUNS_KEPT`]).
pub fn released(worker: &Worker, finished: &FinishedRun) -> Option<WorkerStatus> {
    let status = worker.status.clone().unwrap_or_default();
    let current = status.current_run.as_ref()?;
    if current.pod_name != finished.pod_name {
        return None;
    }
    let state = match status.state {
        Some(WorkerState::Draining) => WorkerState::Draining,
        _ => WorkerState::Idle,
    };
    let mut finished_runs: Vec<FinishedRun> = status
        .finished_runs
        .iter()
        .filter(|r| r.pod_name != finished.pod_name)
        .cloned()
        .chain([finished.clone()])
        .collect();
    let excess = finished_runs.len().saturating_sub(FINISHED_RUNS_KEPT);
    finished_runs.drain(..excess);
    Some(WorkerStatus {
        state: Some(state),
        replicas: Some(0),
        current_run_id: None,
        current_run: None,
        finished_runs,
        ..status
    })
}

/// Frees a worker from the run of `finished.pod_name`, recording what was reported about it in
/// the same status update, and tells the backend. A DRAINING worker is deleted.
pub async fn release(
    ctx: &Arc<Context>,
    link: Option<&PoolHandle>,
    namespace: &str,
    worker: &str,
    finished: FinishedRun,
) -> Result<(), Error> {
    let Some(updated) = update_status(ctx, namespace, worker, |w| released(w, &finished)).await?
    else {
        return Ok(());
    };
    if updated.status.as_ref().and_then(|s| s.state) == Some(WorkerState::Draining) {
        delete_worker(ctx, namespace, worker).await?;
    } else if let Some(link) = link {
        link.publish(&state_message(&updated)?).await?;
    }
    Ok(())
}

/// Marks a busy worker DRAINING (scale-down), or takes a draining one back (scale-up).
pub async fn set_draining(
    ctx: &Arc<Context>,
    link: &PoolHandle,
    namespace: &str,
    name: &str,
    draining: bool,
) -> Result<(), Error> {
    let _guard = ctx.worker_lock(namespace, name).await;
    let updated = update_status(ctx, namespace, name, |worker| {
        let status = worker.status.clone().unwrap_or_default();
        let state = match (draining, status.current_run.is_some()) {
            (true, _) => WorkerState::Draining,
            (false, true) => WorkerState::Busy,
            (false, false) => WorkerState::Idle,
        };
        (status.state != Some(state)).then_some(WorkerStatus {
            state: Some(state),
            ..status
        })
    })
    .await?;
    if let Some(worker) = updated {
        link.publish(&state_message(&worker)?).await?;
    }
    Ok(())
}

async fn delete_worker(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    ignore_not_found(api.delete(name, &Default::default()).await)
}

/// Drops the deregistration finalizer (the backend confirmed, or the deadline passed).
pub async fn remove_finalizer(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    for _ in 0..5 {
        let Some(worker) = api.get_opt(name).await? else {
            return Ok(());
        };
        let finalizers: Vec<String> = worker
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if finalizers.len() == worker.finalizers().len() {
            return Ok(());
        }
        let patch = json!({"metadata": {"resourceVersion": worker.resource_version(), "finalizers": finalizers}});
        match api
            .patch(name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) if is_conflict(&err) => continue,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::Conflict(format!("Worker {namespace}/{name}")))
}

/// The Worker reconciler: deregistration on deletion (bounded by a deadline), registration
/// retries, and repairs after a crash (a BUSY worker whose Pod is gone).
pub async fn reconcile(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let link = worker
        .labels()
        .get(LABEL_WORKERPOOL)
        .and_then(|ulid| ctx.links.by_pool_id(ulid));

    if let Some(deleted) = &worker.meta().deletion_timestamp {
        if !worker.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        return deregister(&ctx, &worker, link.as_deref(), deleted.0).await;
    }
    let Some(link) = link else {
        // The pool's credentials are not (yet) accepted: nothing can be sent.
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let status = worker.status.clone().unwrap_or_default();
    if status.registered != Some(true) {
        // Under the lock, read again: the worker may be in the middle of its creation, or
        // registered since this (cached) copy was taken.
        let (_guard, fresh) = ctx.locked_worker(&namespace, &name).await?;
        if let Some(fresh) = fresh
            && fresh.meta().deletion_timestamp.is_none()
            && fresh.status.as_ref().and_then(|s| s.registered) != Some(true)
        {
            register_again(&ctx, &link, &fresh).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    if let Some(run) = &status.current_run {
        return check_run_pod(&ctx, &link, &worker, run).await;
    }
    if status.state == Some(WorkerState::Draining) {
        delete_worker(&ctx, &namespace, &name).await?;
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// A BUSY worker must have its Pod. If the Pod is gone without its outcome reported (deleted
/// with `--force`, or lost while the controller was down), the run is failed; if the Pod was
/// never created (a crash between accepting the run and creating it) and the backend does not
/// redeliver the schedule in time, the worker is released.
///
/// `worker` comes from the cache, which may not show yet that the run's outcome was reported
/// and the worker freed (a successful Pod is deleted right after): before failing the run, the
/// Worker and the Pod are read again under the worker's lock, which the Pod reconciler holds
/// from its report until the worker is freed.
async fn check_run_pod(
    ctx: &Arc<Context>,
    link: &Arc<PoolHandle>,
    worker: &Worker,
    run: &CurrentRun,
) -> Result<Action, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if pods.get_opt(&run.pod_name).await?.is_some() {
        return Ok(Action::requeue(ctx.config.resync));
    }
    let (_guard, fresh) = ctx.locked_worker(&namespace, &name).await?;
    let Some(fresh) = fresh else {
        return Ok(Action::await_change());
    };
    let Some(run) = still_holds(&fresh, run) else {
        // Reported and freed meanwhile (or on to another run): nothing is missing.
        return Ok(Action::requeue(ctx.config.resync));
    };
    if pods.get_opt(&run.pod_name).await?.is_some() {
        return Ok(Action::requeue(ctx.config.resync));
    }
    let waited = Timestamp::now()
        .duration_since(run.scheduled_at.0)
        .unsigned_abs();
    let (cause, message) = if run.pod_created {
        (
            protocol::FailureCause::PodDeleted,
            format!(
                "the run Pod {} was deleted before its outcome was seen",
                run.pod_name
            ),
        )
    } else if waited >= POD_CREATION_GRACE {
        (
            protocol::FailureCause::Unknown,
            format!("the run Pod {} was never created", run.pod_name),
        )
    } else {
        return Ok(Action::requeue(
            POD_CREATION_GRACE.saturating_sub(waited) + Duration::from_secs(1),
        ));
    };
    let ending = super::outcome::Ending {
        outcome: protocol::Outcome::Failed,
        cause: Some(cause),
        message: message.clone(),
        exit_code: None,
        abandon: false,
    };
    let run_ref = RunRef::new(&run.run_id, &run.stage, run.attempt);
    let record = super::runs::finished_record(&run_ref, &run.pod_name, &ending, Timestamp::now());
    super::runs::report_finished(ctx, link, worker_ulid(&fresh)?, &record).await?;
    ctx.event(
        &fresh,
        EventType::Warning,
        "RunPodMissing",
        "ReportRun",
        message,
    )
    .await;
    release(ctx, Some(link), &namespace, &name, record).await?;
    Ok(Action::requeue(ctx.config.resync))
}

/// The run `fresh` (a Worker read again) holds, if it is still `seen`, the run whose Pod was
/// found missing in an older copy. Its own copy is returned: `podCreated` may have changed.
fn still_holds(fresh: &Worker, seen: &CurrentRun) -> Option<CurrentRun> {
    fresh.status.as_ref()?.current_run.clone().filter(|run| {
        run.pod_name == seen.pod_name
            && run.run_id == seen.run_id
            && run.stage == seen.stage
            && run.attempt == seen.attempt
    })
}

async fn deregister(
    ctx: &Arc<Context>,
    worker: &Worker,
    link: Option<&PoolHandle>,
    deleted_at: Timestamp,
) -> Result<Action, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let waited = Timestamp::now().duration_since(deleted_at).unsigned_abs();
    let timeout = ctx.config.deregistration_timeout;
    if waited >= timeout {
        let note = format!(
            "the backend did not confirm the deregistration of worker {name} within {}s; removed it anyway (the backend will drop the worker when it next reconciles)",
            timeout.as_secs()
        );
        tracing::warn!(worker = %name, "{note}");
        ctx.event(
            worker,
            EventType::Warning,
            "DeregistrationTimedOut",
            "Deregister",
            note,
        )
        .await;
        remove_finalizer(ctx, &namespace, &name).await?;
        return Ok(Action::await_change());
    }
    if let Some(link) = link {
        let body = Body::WorkerDeregister(WorkerDeregister {
            reason: "the Worker was deleted".into(),
        });
        if let Err(err) = link
            .publish(&Message::for_worker(worker_ulid(worker)?, body))
            .await
        {
            tracing::warn!(worker = %name, error = %err, "could not send the deregistration yet");
        }
    }
    // The backend's `worker.deregistered` removes the finalizer (see runs.rs); until then, retry.
    Ok(Action::requeue(
        (timeout - waited).min(Duration::from_secs(5)) + Duration::from_millis(100),
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::FinishedOutcome;

    fn record(pod_name: &str) -> FinishedRun {
        FinishedRun {
            run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
            stage: "preparing".into(),
            attempt: 1,
            pod_name: pod_name.into(),
            message_id: Ulid::generate().to_string(),
            finished_at: Time(Timestamp::UNIX_EPOCH),
            outcome: FinishedOutcome::Succeeded,
            cause: None,
            message: String::new(),
            exit_code: None,
            denied_by: Vec::new(),
        }
    }

    fn busy_with(pod_name: &str, state: WorkerState, finished: usize) -> Worker {
        let mut worker = Worker::new("w", WorkerSpec::default());
        worker.status = Some(WorkerStatus {
            state: Some(state),
            current_run_id: Some("01HN37WC3MCNE3CY9HAHWRF06K".into()),
            replicas: Some(1),
            current_run: Some(CurrentRun {
                run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
                stage: "preparing".into(),
                attempt: 1,
                pod_name: pod_name.into(),
                scheduled_at: Time(Timestamp::UNIX_EPOCH),
                pod_created: true,
            }),
            finished_runs: (0..finished).map(|i| record(&format!("old-{i}"))).collect(),
            ..WorkerStatus::default()
        });
        worker
    }

    #[test]
    fn releasing_a_worker_records_the_finished_run_in_the_same_status() {
        let finished = record("p");
        let released = released(&busy_with("p", WorkerState::Busy, 0), &finished).unwrap();
        assert_eq!(released.state, Some(WorkerState::Idle));
        assert_eq!(
            (released.current_run, released.current_run_id),
            (None, None)
        );
        assert_eq!(released.replicas, Some(0));
        assert_eq!(released.finished_runs, vec![finished]);
    }

    #[test]
    fn a_draining_worker_stays_draining_when_released() {
        let released = released(&busy_with("p", WorkerState::Draining, 0), &record("p")).unwrap();
        assert_eq!(released.state, Some(WorkerState::Draining));
    }

    #[test]
    fn finished_runs_are_bounded_oldest_forgotten_first() {
        let worker = busy_with("p", WorkerState::Busy, FINISHED_RUNS_KEPT);
        let released = released(&worker, &record("p")).unwrap();
        let names: Vec<&str> = released
            .finished_runs
            .iter()
            .map(|r| r.pod_name.as_str())
            .collect();
        assert_eq!(names.len(), FINISHED_RUNS_KEPT);
        assert_eq!(names.first(), Some(&"old-1"), "old-0 is forgotten");
        assert_eq!(names.last(), Some(&"p"));
    }

    #[test]
    fn only_the_run_the_worker_holds_releases_it() {
        assert_eq!(
            released(&busy_with("p", WorkerState::Busy, 0), &record("other")),
            None
        );
        let mut idle = busy_with("p", WorkerState::Idle, 0);
        idle.status = Some(WorkerStatus::default());
        assert_eq!(released(&idle, &record("p")), None);
    }

    #[test]
    fn a_missing_pod_fails_only_the_run_the_worker_still_holds() {
        let seen = busy_with("p", WorkerState::Busy, 0)
            .status
            .and_then(|s| s.current_run)
            .unwrap();
        // The Pod reconciler reported the run and freed the worker after the cached copy.
        let freed = released(&busy_with("p", WorkerState::Busy, 0), &record("p")).unwrap();
        let mut fresh = Worker::new("w", WorkerSpec::default());
        fresh.status = Some(freed);
        assert_eq!(still_holds(&fresh, &seen), None);
        // On to the next run already.
        assert_eq!(
            still_holds(&busy_with("next", WorkerState::Busy, 1), &seen),
            None
        );
        // Still holding it: its Pod is missing indeed.
        assert_eq!(
            still_holds(&busy_with("p", WorkerState::Busy, 0), &seen),
            Some(seen)
        );
    }
}
