//! A Worker's life around its runs: created with its own key pair and registered with the
//! backend, taken back or drained by scaling, and on deletion deregistered once its run has
//! ended (a deletion kills no run), its finalizer dropped when the backend confirms or a
//! deadline passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use ulid::Ulid;

use super::super::error::{Error, Step, ignore_not_found, is_conflict};
use super::super::keys::WorkerKey;
use super::super::machine::{self, Leave};
use super::super::{Context, FINALIZER, PoolHandle};
use super::status::{
    Write, patch_params, patch_worker, post_params, state_message, update_status, worker_ulid,
};
use crate::crd::{
    ANNOTATION_WORKERPOOL_NAME, LABEL_ULID, LABEL_WORKERPOOL, WORKER_SECRET_PRIVATE_KEY,
    WORKER_SECRET_PUBLIC_KEY, Worker, WorkerPool, WorkerSpec, WorkerState, WorkerStatus,
};
use crate::protocol::{Body, Message, WorkerDeregister, WorkerRegister};

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
    let key = take_key(ctx, link).await?;
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
    let object = format!("{namespace}/{name}");
    // Held until the registration is sent: the Worker reconciler, which sees the new Worker at
    // once, must not take it for one whose key Secret was lost (see `register_again`), nor
    // register it a second time (see `Registrations`).
    let _guard = ctx.worker_lock(&namespace, &name).await;
    let worker = workers
        .create(&post_params(), &worker)
        .await
        .map_err(Error::api(Step::CreateWorker, &object))?;
    // Counted by the pool's next plan even before the watch delivers it.
    ctx.caches.wrote_worker(&worker);

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match secrets
        .create(&post_params(), &key_secret(&worker, &key))
        .await
    {
        Ok(_) => {}
        Err(err) if is_conflict(&err) => {}
        Err(err) => return Err(Error::api(Step::WriteKeySecret, &object)(err)),
    }
    // No status yet: a Worker without one is IDLE and unregistered (printed empty until the
    // backend confirms), and `worker.registered` writes the first.
    register(ctx, link, &worker, &key.public_key_pem).await?;
    tracing::info!(pool = %link.key, worker = %name, "worker created");
    Ok(())
}

/// A fresh key pair for a worker of `link`'s pool, from the reserve.
async fn take_key(ctx: &Context, link: &PoolHandle) -> Result<WorkerKey, Error> {
    ctx.keys
        .take(&link.pool_id.to_string())
        .await
        .map_err(|source| Error::Key {
            pool: link.key.to_string(),
            source,
        })
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
                WORKER_SECRET_PRIVATE_KEY.to_string(),
                ByteString(key.private_key_pem.clone().into_bytes()),
            ),
            (
                WORKER_SECRET_PUBLIC_KEY.to_string(),
                ByteString(key.public_key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Sends the worker's registration. The backend answers `worker.registered`
/// ([`on_registered`]).
async fn register(
    ctx: &Context,
    link: &PoolHandle,
    worker: &Worker,
    public_key: &str,
) -> Result<(), Error> {
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
    link.send(&Message::for_worker(worker_ulid(worker)?, body))
        .await?;
    ctx.registrations
        .sent(&worker.namespace().unwrap_or_default(), &worker.name_any());
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
pub async fn register_again(
    ctx: &Context,
    link: &PoolHandle,
    worker: &Worker,
) -> Result<(), Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&worker.name_any())
        .await
        .map_err(Error::api(
            Step::ReadSecret,
            format!("{namespace}/{}", worker.name_any()),
        ))?;
    let public_key = match secret.as_ref().and_then(public_key_of) {
        Some(public_key) => public_key,
        None => recreate_key(ctx, link, &secrets, worker, secret.is_some()).await?,
    };
    register(ctx, link, worker, &public_key).await
}

fn public_key_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(WORKER_SECRET_PUBLIC_KEY)
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
    let key = take_key(ctx, link).await?;
    let secret = key_secret(worker, &key);
    let object = format!(
        "{}/{}",
        worker.namespace().unwrap_or_default(),
        worker.name_any()
    );
    let written = if secret_exists {
        let patch = json!({"data": secret.data});
        secrets
            .patch(&worker.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    } else {
        secrets.create(&post_params(), &secret).await.map(|_| ())
    };
    written.map_err(Error::api(Step::WriteKeySecret, object))?;
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

/// The backend recorded the worker: it may be sent runs.
pub async fn on_registered(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    update_status(ctx, namespace, name, |status| {
        (status.registered != Some(true)).then(|| WorkerStatus {
            registered: Some(true),
            state: status.state.or(Some(WorkerState::Idle)),
            replicas: status.replicas.or(Some(0)),
            ..status.clone()
        })
    })
    .await?;
    Ok(())
}

/// The backend forgot the worker. A Worker being deleted, done with its runs, may go; a live
/// one (the backend dropped it by itself) registers again, and its finalizer stays, so that
/// its deletion is still told to the backend.
pub async fn on_deregistered(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let (_guard, worker) = ctx.locked_worker(namespace, name).await?;
    let Some(worker) = worker else {
        return Ok(());
    };
    let holds_run = worker
        .status
        .as_ref()
        .is_some_and(|s| s.current_run.is_some());
    if worker.meta().deletion_timestamp.is_some() {
        if holds_run {
            tracing::warn!(worker = %name, "the backend confirmed the deregistration of a worker whose run has not ended; the worker stays until it has");
            return Ok(());
        }
        return remove_finalizer(ctx, namespace, name).await;
    }
    tracing::warn!(worker = %name, "the backend forgot a live worker; it registers again");
    update_status(ctx, namespace, name, |status| {
        (status.registered == Some(true)).then(|| WorkerStatus {
            registered: Some(false),
            ..status.clone()
        })
    })
    .await?;
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
    set_draining_locked(ctx, link, namespace, name, draining).await
}

/// [`set_draining`] for a caller that holds the worker's lock.
async fn set_draining_locked(
    ctx: &Context,
    link: &PoolHandle,
    namespace: &str,
    name: &str,
    draining: bool,
) -> Result<(), Error> {
    let updated = update_status(ctx, namespace, name, |status| {
        let state = match (draining, status.current_run.is_some()) {
            (true, _) => WorkerState::Draining,
            (false, true) => WorkerState::Busy,
            (false, false) => WorkerState::Idle,
        };
        (status.state != Some(state)).then(|| WorkerStatus {
            state: Some(state),
            ..status.clone()
        })
    })
    .await?;
    if let Some(worker) = updated {
        link.send(&state_message(&worker)?).await?;
    }
    Ok(())
}

/// Deletes a Worker (NotFound is done).
pub async fn delete_worker(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    ignore_not_found(api.delete(name, &Default::default()).await).map_err(Error::api(
        Step::DeleteWorker,
        format!("{namespace}/{name}"),
    ))
}

/// Drops the deregistration finalizer (the backend confirmed, or the deadline passed).
pub async fn remove_finalizer(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let write = Write {
        step: Step::RemoveFinalizer,
        status: false,
    };
    patch_worker(ctx, namespace, name, write, |worker| {
        let finalizers: Vec<String> = worker
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        (finalizers.len() != worker.finalizers().len()).then(|| {
            json!({"metadata": {"resourceVersion": worker.resource_version(), "finalizers": finalizers}})
        })
    })
    .await?;
    Ok(())
}

/// A deleted Worker's way out ([`machine::leave`]): its run ends first, then it deregisters
/// until the backend confirms or the deadline passes. Read again under the worker's lock.
pub async fn leave(
    ctx: &Context,
    link: Option<&PoolHandle>,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let (_guard, worker) = ctx.locked_worker(namespace, name).await?;
    let Some(worker) = worker else {
        return Ok(Action::await_change());
    };
    let Some(deleted) = worker.meta().deletion_timestamp.clone() else {
        return Ok(Action::await_change());
    };
    if !worker.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = worker.status.clone().unwrap_or_default();
    let timeout = ctx.config.deregistration_timeout;
    match machine::leave(&status, deleted.0, Timestamp::now(), timeout) {
        Leave::WaitForRun { drain } => {
            if let (true, Some(link)) = (drain, link) {
                tracing::info!(worker = %name, "deleted while busy: draining until its run ends");
                set_draining_locked(ctx, link, namespace, name, true).await?;
            }
            // The run's own end (its Pod's changes) moves it on; look again now and then.
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Leave::DropFinalizer => {
            let note = format!(
                "the backend did not confirm the deregistration of worker {name} within {}s; removed it anyway (the backend will drop the worker when it next reconciles)",
                timeout.as_secs()
            );
            tracing::warn!(worker = %name, "{note}");
            ctx.event(
                &worker,
                EventType::Warning,
                "DeregistrationTimedOut",
                "Deregister",
                note,
            )
            .await;
            remove_finalizer(ctx, namespace, name).await?;
            Ok(Action::await_change())
        }
        Leave::Deregister { retry_in } => {
            if let Some(link) = link {
                let body = Body::WorkerDeregister(WorkerDeregister {
                    reason: "the Worker was deleted".into(),
                });
                let message = Message::for_worker(worker_ulid(&worker)?, body);
                if let Err(err) = link.send(&message).await {
                    tracing::warn!(worker = %name, error = %err, "could not send the deregistration yet");
                }
            }
            // The backend's `worker.deregistered` removes the finalizer; until then, retry.
            Ok(Action::requeue(retry_in))
        }
    }
}
